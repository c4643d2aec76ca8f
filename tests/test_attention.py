"""Continual multi-head attention: contract, parity with torch's `nn.MultiheadAttention`
on every window, large logits, and no drift on long streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cojax.layers.attention import (
    RetroactiveMultiheadAttention,
    SingleOutputMultiheadAttention,
    multihead_self_attention,
)
from cojax.testing import streamed_outputs, verify_contract

E, H, N = 8, 2, 5


def _random_params(layer, seed=0, scale=1.0):
    """`init` with random (non-zero) biases; `scale` multiplies the in-projection,
    i.e. the logits by ~scale²."""
    params = layer.init(jax.random.PRNGKey(seed))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 8))
    params["in_proj"]["bias"] = 0.3 * jax.random.normal(next(keys), (3 * E,))
    params["out_proj"]["bias"] = 0.3 * jax.random.normal(next(keys), (E,))
    params["in_proj"]["kernel"] = params["in_proj"]["kernel"] * scale
    return params


def _tokens(T, seed=2, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), (T, E))


def _sliding_windows(params, x, n=N, heads=H):
    """The plain computation: ordinary MHA on every window, `(T - n + 1, n, E)`."""
    return np.stack(
        [multihead_self_attention(params, x[t : t + n], heads) for t in range(len(x) - n + 1)]
    )


def _stream(layer, params, x):
    with jax.default_matmul_precision("highest"):
        ys, first = streamed_outputs(layer, params, x)
    assert first == layer.delay == N - 1
    return ys


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(RetroactiveMultiheadAttention(E, H, N), marks=pytest.mark.slow),
        SingleOutputMultiheadAttention(E, H, N),
        SingleOutputMultiheadAttention(E, H, N, query_index=1),
        SingleOutputMultiheadAttention(E, 1, N, query_index=-3, bias=False),
    ],
    ids=["retroactive", "single", "single-q1", "single-q-3-nobias"],
)
def test_contract(layer):
    params = _random_params(layer) if layer.bias else layer.init(jax.random.PRNGKey(0))
    verify_contract(layer, (E,), params=params, num_frames=4 * N + 3)


# --------------------------------------------------------------------------- torch parity


def _torch_mha(params, heads=H):
    mha = torch.nn.MultiheadAttention(E, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(np.asarray(params["in_proj"]["kernel"]).T))
        mha.in_proj_bias.copy_(torch.tensor(np.asarray(params["in_proj"]["bias"])))
        mha.out_proj.weight.copy_(torch.tensor(np.asarray(params["out_proj"]["kernel"]).T))
        mha.out_proj.bias.copy_(torch.tensor(np.asarray(params["out_proj"]["bias"])))
    return mha


def test_forward_and_steps_equal_torch_mha_on_every_window():
    layer = RetroactiveMultiheadAttention(E, H, N)
    params = _random_params(layer)
    batch = np.stack([np.asarray(_tokens(5 * N, seed=s)) for s in (3, 4)])  # 2 streams
    windows = torch.from_numpy(batch).unfold(1, N, 1).permute(0, 1, 3, 2)  # (2, W, N, E)
    with torch.no_grad():
        x = windows.reshape(-1, N, E)
        expected = _torch_mha(params)(x, x, x, need_weights=False)[0]
    expected = expected.reshape(2, -1, N, E).numpy()
    single = SingleOutputMultiheadAttention(E, H, N)
    for b in range(2):
        clip = jnp.asarray(batch[b])
        with jax.default_matmul_precision("highest"):
            np.testing.assert_allclose(layer.forward(params, clip), expected[b], atol=2e-6)
            np.testing.assert_allclose(single.forward(params, clip), expected[b, :, -1], atol=2e-6)
        np.testing.assert_allclose(_stream(layer, params, clip), expected[b], atol=2e-6)
        np.testing.assert_allclose(_stream(single, params, clip), expected[b, :, -1], atol=2e-6)


@pytest.mark.parametrize("query_index", [0, 2, -1, -2, -5])
def test_single_output_query_index_selects_that_row(query_index):
    layer = SingleOutputMultiheadAttention(E, H, N, query_index=query_index)
    params = _random_params(layer)
    x = _tokens(3 * N)
    expected = _sliding_windows(params, x)[:, query_index]
    np.testing.assert_allclose(_stream(layer, params, x), expected, atol=2e-6)


# --------------------------------------------------------------------------- stability


def test_large_logits_stay_exact_where_the_reference_overflows():
    import continual as co

    layer = RetroactiveMultiheadAttention(E, H, N)
    params = _random_params(layer, scale=6.0)
    x = _tokens(6 * N, scale=4.0)
    q, k, _ = (np.asarray(a) for a in jax.vmap(lambda t: _qkv(params, t))(x))
    logits = np.einsum("thd,shd->ths", q, k)
    assert np.abs(logits).max() > 300  # logits of several hundred

    # float64 sliding-window reference
    params64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    expected = np.stack(
        [_mha_numpy(params64, np.asarray(x, np.float64)[t : t + N]) for t in range(len(x) - N + 1)]
    )
    got = _stream(layer, params, x)
    assert np.isfinite(got).all()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale)
    single = _stream(SingleOutputMultiheadAttention(E, H, N), params, x)
    np.testing.assert_allclose(single, expected[:, -1], atol=1e-5 * scale)

    # continual-inference 1.2.4 takes raw exponentials: inf / NaN at this scale.
    ref = co.RetroactiveMultiheadAttention(E, H, sequence_len=N, batch_first=True)
    ref.load_state_dict(_torch_mha(params).state_dict())
    with torch.no_grad():
        out = ref.forward_steps(torch.from_numpy(np.asarray(x))[None])
    assert not torch.isfinite(out).all()


def _qkv(params, token):
    from cojax.layers.attention import project_qkv

    return project_qkv(params, token, H)


def _mha_numpy(params, window, heads=H):
    """Multi-head self-attention in float64 numpy (max-subtracted softmax)."""
    y = window @ params["in_proj"]["kernel"] + params["in_proj"]["bias"]
    q, k, v = (a.reshape(len(window), heads, -1) for a in np.split(y, 3, axis=-1))
    s = np.einsum("lhd,shd->hls", q / np.sqrt(q.shape[-1]), k)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("hls,shd->lhd", w, v).reshape(len(window), -1)
    return o @ params["out_proj"]["kernel"] + params["out_proj"]["bias"]


def test_no_drift_over_a_long_stream():
    # Every row is rebuilt from scratch within N steps, so the error after 3000 steps
    # is that of a single window (the 100 000-step run: experiments/attention_drift.py).
    layer = RetroactiveMultiheadAttention(E, H, N)
    params = _random_params(layer, scale=2.0)
    x = _tokens(3000, seed=7, scale=2.0)
    got = _stream(layer, params, x)
    for t in (0, 1000, 2995):
        expected = multihead_self_attention(params, x[t : t + N], H)
        np.testing.assert_allclose(got[t], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


# --------------------------------------------------------------------------- errors


def test_bad_configs_and_inputs_raise():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        RetroactiveMultiheadAttention(10, 3, 4)
    with pytest.raises(ValueError, match="sequence_len must be >= 2"):
        RetroactiveMultiheadAttention(E, H, 1)
    with pytest.raises(ValueError, match="sequence_len must be a positive int"):
        SingleOutputMultiheadAttention(E, H, 0)
    with pytest.raises(ValueError, match=r"query_index must be an int in \[-5, 4\]"):
        SingleOutputMultiheadAttention(E, H, N, query_index=5)
    layer = RetroactiveMultiheadAttention(E, H, N)
    params = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"expected 8 channels .* \(E,\)"):
        layer.init_state(params, jnp.zeros((E + 1,)))
    with pytest.raises(ValueError, match="fewer than sequence_len 5"):
        layer.forward(params, jnp.zeros((N - 1, E)))
    with pytest.raises(ValueError, match="one dimension too many"):
        layer.step(params, layer.init_state(params, jnp.zeros((E,))), jnp.zeros((2, E)))


@pytest.mark.parametrize("query_index", list(range(-3, 3)))
def test_residual_adds_the_token_the_output_stands_for(query_index):
    """`alignment`: a single-output attention stands for its query's token, so
    `Residual` adds that token (continual-inference's Residual adds the query token);
    the delay (warm-up) stays N - 1. Checked against the plain computation."""
    import cojax as co

    N = 3
    attention = co.SingleOutputMultiheadAttention(4, 2, N, query_index=query_index)
    position = query_index % N
    assert attention.delay == N - 1 and attention.alignment == N - 1 - position
    layer = co.Residual(attention)
    params = layer.init(jax.random.PRNGKey(0))
    clip = jax.random.normal(jax.random.PRNGKey(1), (9, 4))
    attended = attention.forward(params["1"], clip)
    expected = attended + clip[position : position + attended.shape[0]]
    np.testing.assert_allclose(layer.forward(params, clip), expected, atol=1e-5)
    if query_index in (-1, 0, 1):  # the three shortcut forms: Skip, Delay, Skip + Delay
        verify_contract(layer, (4,), params=params)
    # Composed: a per-frame layer before it keeps the alignment; a Delay adds to it.
    assert co.Sequential(co.Linear(4, 4), attention).alignment == attention.alignment
    assert co.Sequential(co.Delay(2), attention).alignment == attention.alignment + 2
