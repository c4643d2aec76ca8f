"""Nyström attention: offline module against an independent float64 implementation,
continual fixed / updated landmarks against their offline forms, the stream contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cojax.layers.nystrom import (
    ContinualNystromAttention,
    NystromAttention,
    NystromLayer,
    iterative_pinv,
    middle_kernel,
    nystrom_attention,
    nystrom_with_landmarks,
    segment_matrix,
)
from cojax.testing import streamed_outputs, verify_contract

E, H, N, M = 16, 2, 8, 4


def _variables(module, seed=0, scale=1.0):
    """Random variables with non-zero biases; `scale` multiplies the q/k kernels."""
    dummy = jnp.zeros((N, E))
    variables = jax.tree_util.tree_map(
        lambda a: a, dict(module.init(jax.random.PRNGKey(seed), dummy))
    )
    key = jax.random.PRNGKey(seed + 1)
    params = {}
    for name, dense in variables["params"].items():
        key, k1 = jax.random.split(key)
        factor = scale if name in ("query", "key") else 1.0
        params[name] = {
            "kernel": dense["kernel"] * factor,
            "bias": 0.2 * jax.random.normal(k1, dense["bias"].shape),
        }
    return {**variables, "params": params}


def _qkv64(variables, x):
    """Projections in float64 numpy, q and k scaled by d^(-1/4): `(n, H, d)` each."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    d = E // H
    out = []
    for name in ("query", "key", "value"):
        y = np.asarray(x, np.float64) @ p[name]["kernel"] + p[name]["bias"]
        out.append(y.reshape(len(x), H, d))
    q, k, v = out
    return q * d**-0.25, k * d**-0.25, v


def _softmax(a):
    a = a - a.max(-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(-1, keepdims=True)


def _pinv64(a, iterations):
    z = np.swapaxes(a, -1, -2) / (np.abs(a).sum(-2).max() * np.abs(a).sum(-1).max())
    eye = np.eye(a.shape[-1])
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _nystrom64(variables, window, m, iterations=6, landmarks=None, rows=None):
    """Nyström attention in float64 numpy (segment means unless `landmarks` given)."""
    q, k, v = _qkv64(variables, window)
    qh, kh, vh = (np.swapaxes(a, 0, 1) for a in (q, k, v))  # (H, n, d)
    if landmarks is None and m >= len(window):
        out = _softmax(qh @ np.swapaxes(kh, -1, -2)) @ vh
    else:
        if landmarks is None:
            seg = segment_matrix(len(window), m).astype(np.float64)
            q_land, k_land = seg @ qh, seg @ kh
        else:
            q_land, k_land = (np.asarray(a, np.float64) for a in landmarks)
        kernel = _pinv64(_softmax(q_land @ np.swapaxes(k_land, -1, -2)), iterations)
        left = _softmax(qh @ np.swapaxes(k_land, -1, -2))
        right = _softmax(q_land @ np.swapaxes(kh, -1, -2)) @ vh
        out = left @ kernel @ right
    out = np.swapaxes(out, 0, 1).reshape(len(window), E)
    p = variables["params"]["out"]
    out = out @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)
    return out if rows is None else out[rows]


def _clip(T, seed=3, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), (T, E))


def _stream(layer, variables, x):
    with jax.default_matmul_precision("highest"):
        ys, first = streamed_outputs(layer, variables, x)
    assert first == layer.delay == N - 1
    return ys


def _assert_close(got, expected, rtol=1e-5):
    np.testing.assert_allclose(got, expected, atol=rtol * np.abs(expected).max())


# --------------------------------------------------------------------------- offline


def test_segments_split_unevenly_like_the_reference():
    with pytest.raises(ValueError, match="1 <= m <= n"):
        segment_matrix(3, 4)
    weights = segment_matrix(10, 4)
    assert [int(round(1 / w.max())) for w in weights] == [3, 3, 2, 2]
    np.testing.assert_allclose(weights.sum(1), 1.0)
    assert np.count_nonzero(weights) == 10


def test_iterative_pinv_converges_and_is_per_stream():
    # a well-conditioned softmax matrix (diagonally dominant), as landmark kernels are
    noise = np.random.default_rng(0).standard_normal((2, 5, 5))
    a = _softmax(4 * np.eye(5) + 0.5 * noise)
    z = np.asarray(iterative_pinv(jnp.asarray(a, jnp.float32), 12))
    np.testing.assert_allclose(z, np.linalg.pinv(a), atol=1e-3)
    # the initial scale comes from this stream only: vmap == one call per stream
    b = np.stack([a, 10 * a])
    batched = jax.vmap(lambda t: iterative_pinv(t, 6))(jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(
        batched[1], iterative_pinv(jnp.asarray(10 * a, jnp.float32), 6), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("n", "m"), [pytest.param(8, 4, marks=pytest.mark.slow), (10, 4), (8, 8), (8, 12)]
)
def test_offline_equals_float64_reference(n, m):
    module = NystromAttention(E, H, m)
    variables = _variables(module)
    window = _clip(n)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(module.apply(variables, window))
    _assert_close(got, _nystrom64(variables, window, m))


@pytest.mark.slow
def test_offline_approaches_softmax_attention_as_m_grows():
    n = 16
    window = _clip(n, seed=5)
    errors = []
    for m in (2, 4, 8, 15):
        module = NystromAttention(E, H, m, pinv_iterations=20)
        variables = _variables(module, scale=0.5)
        exact = _nystrom64(variables, window, n)  # m >= n: softmax attention
        with jax.default_matmul_precision("highest"):
            errors.append(float(np.abs(np.asarray(module.apply(variables, window)) - exact).max()))
    assert errors[-1] < 0.1 * max(errors[:2]), errors
    # m = n landmarks (every token its own segment) with enough iterations: the
    # Nyström product A · pinv(A) · A V is softmax attention A V.
    q, k, v = (jnp.asarray(a, jnp.float32) for a in _qkv64(variables, window))
    lands = (jnp.swapaxes(q, 0, 1), jnp.swapaxes(k, 0, 1))
    with jax.default_matmul_precision("highest"):
        kernel = middle_kernel(*lands, iterations=40)
        got = nystrom_with_landmarks(q, k, v, *lands, kernel)
        exact = nystrom_attention(q, k, v, n)  # m >= n falls back to softmax attention
    np.testing.assert_allclose(got, exact, atol=1e-3 * float(np.abs(exact).max()))


# --------------------------------------------------------------------------- continual


def _layer(landmarks, retroactive, n=N, m=M):
    module = ContinualNystromAttention(
        E, H, m, sequence_len=n, landmarks=landmarks, retroactive=retroactive
    )
    return NystromLayer(module)


@pytest.mark.parametrize(
    "landmarks, retroactive",
    [
        pytest.param("fixed", False, marks=pytest.mark.slow),
        pytest.param("updated", True, marks=pytest.mark.slow),
        # The mixed pairs add no new code path; `pytest -m slow` (CI) runs them.
        pytest.param("fixed", True, marks=pytest.mark.slow),
        pytest.param("updated", False, marks=pytest.mark.slow),
    ],
    ids=["fixed-single", "updated-retroactive", "fixed-retroactive", "updated-single"],
)
def test_contract(landmarks, retroactive):
    layer = _layer(landmarks, retroactive)
    verify_contract(
        layer, (E,), params=_variables(layer.module), num_frames=3 * N + 2, num_streams=2
    )


@pytest.mark.parametrize("retroactive", [False, True], ids=["single", "retroactive"])
def test_fixed_landmarks_equal_offline_fixed_nystrom_at_every_step(retroactive):
    layer = _layer("fixed", retroactive)
    variables = _variables(layer.module)
    x = _clip(5 * N)
    got = _stream(layer, variables, x)
    lands = (variables["landmarks"]["queries"], variables["landmarks"]["keys"])
    for i, t in enumerate(range(N - 1, len(x))):
        rows = None if retroactive else -1
        _assert_close(
            got[i], _nystrom64(variables, x[t - N + 1 : t + 1], M, landmarks=lands, rows=rows)
        )


@pytest.mark.parametrize("retroactive", [False, True], ids=["single", "retroactive"])
def test_updated_landmarks_equal_offline_nystrom_at_update_steps(retroactive):
    layer = _layer("updated", retroactive)
    variables = _variables(layer.module)
    x = _clip(5 * N)
    got = _stream(layer, variables, x)
    segment, checked = N // M, 0
    for i, t in enumerate(range(N - 1, len(x))):
        if (t + 1) % segment == 0:
            rows = None if retroactive else -1
            _assert_close(got[i], _nystrom64(variables, x[t - N + 1 : t + 1], M, rows=rows))
            checked += 1
    assert checked == (len(x) - N) // segment + 1


def test_large_logits_do_not_overflow():
    layer = _layer("fixed", True)
    variables = _variables(layer.module, scale=8.0)
    x = _clip(4 * N, scale=4.0)
    q, k, _ = _qkv64(variables, x)
    assert np.abs(np.einsum("thd,shd->ths", q, k)).max() > 100
    got = _stream(layer, variables, x)
    assert np.isfinite(got).all()
    lands = (variables["landmarks"]["queries"], variables["landmarks"]["keys"])
    for i, t in enumerate(range(N - 1, len(x))):
        _assert_close(
            got[i], _nystrom64(variables, x[t - N + 1 : t + 1], M, landmarks=lands), rtol=1e-4
        )


def test_bad_configs_raise():
    x = jnp.zeros((N, E))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        NystromAttention(10, 3, 2).init(jax.random.PRNGKey(0), jnp.zeros((N, 10)))
    with pytest.raises(ValueError, match="multiple of num_landmarks"):
        ContinualNystromAttention(E, H, 3, sequence_len=N, landmarks="updated").init(
            jax.random.PRNGKey(0), x
        )
    with pytest.raises(ValueError, match="landmarks must be one of"):
        ContinualNystromAttention(E, H, M, sequence_len=N, landmarks="moving").init(
            jax.random.PRNGKey(0), x
        )
    layer = _layer("fixed", False)
    variables = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"expected 16 channels"):
        layer.init_state(variables, jnp.zeros((E + 1,)))
    with pytest.raises(ValueError, match="fewer than sequence_len"):
        layer.forward(variables, jnp.zeros((N - 1, E)))
