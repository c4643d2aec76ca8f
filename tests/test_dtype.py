"""The dtype policy (docs/api.md, "Dtypes"): a layer computes in its input's floating
dtype, keeps its state in that dtype and casts its (float32) parameters to it; BatchNorm
statistics and their updates stay float32. bfloat16 compute with float32 parameters is a
supported training configuration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cojax as co

jax.config.update("jax_default_matmul_precision", "highest")

LAYERS = [
    (co.Conv2d(3, 4, 3, padding=(1, 1), temporal_fill="replicate"), (5, 3)),
    (co.AvgPool1d(3, stride=1, padding=1, count_include_pad=False), (3,)),
    (co.MaxPool2d(2, stride=(1, 2)), (4, 3)),
    (co.BatchNorm1d(3), (3,)),
    (co.LayerNorm(3), (3,)),
    (co.Delay(2), (3,)),
    (co.LSTM(3, 4), (3,)),
    (co.SingleOutputMultiheadAttention(4, 2, 5), (4,)),
    (co.RetroactiveTransformerEncoderLayer(4, 2, 5, dim_feedforward=8), (4,)),
    (co.Sequential(co.Conv1d(3, 4, 3, padding=1), co.ReLU(), co.Linear(4, 2)), (3,)),
]
IDS = [type(layer).__name__ for layer, _ in LAYERS]


# float16 takes the code paths of bfloat16: the fast set runs three layers in float16,
# `pytest -m slow` (CI) the rest.
FLOAT16_FAST = {"Conv2d", "LSTM", "SingleOutputMultiheadAttention"}
BFLOAT16_SLOW = {"RetroactiveTransformerEncoderLayer"}  # 8 s here
CASES = [
    pytest.param(layer, frame, dtype, id=f"{name}-{jnp.dtype(dtype).name}", marks=marks)
    for (layer, frame), name in zip(LAYERS, IDS)
    for dtype, marks in [
        (jnp.bfloat16, pytest.mark.slow if name in BFLOAT16_SLOW else ()),
        (jnp.float16, () if name in FLOAT16_FAST else pytest.mark.slow),
    ]
]


@pytest.mark.parametrize("layer, frame, dtype", CASES)
def test_outputs_and_state_keep_the_input_dtype(layer, frame, dtype):
    params = layer.init(jax.random.PRNGKey(0))  # float32 parameters
    clip = jax.random.normal(jax.random.PRNGKey(1), (10, *frame)).astype(dtype)
    state = layer.init_state(params, clip[0])
    assert {a.dtype for a in jax.tree.leaves(state) if jnp.issubdtype(a.dtype, jnp.floating)} <= {
        jnp.dtype(dtype)
    }
    # `forward_steps` is a lax.scan: a step that changed its state's dtype would fail here.
    _, ys, valid = co.forward_steps(layer, params, state, clip, pad_end=True)
    assert ys.dtype == dtype and layer.forward(params, clip).dtype == dtype
    got = np.asarray(co.valid_outputs(ys, valid), np.float32)
    ref = np.asarray(layer.forward(params, clip.astype(jnp.float32)))
    assert got.shape == ref.shape and got.size > 0
    tol = 3e-2 if dtype == jnp.bfloat16 else 4e-3
    np.testing.assert_allclose(got, ref, atol=tol * (np.abs(ref).max() + 1))


def test_a_frame_of_another_dtype_than_the_state_is_rejected():
    conv = co.Conv1d(3, 4, 3)
    params = conv.init(jax.random.PRNGKey(0))
    state16 = conv.init_state(params, jax.ShapeDtypeStruct((3,), jnp.float16))
    with pytest.raises(ValueError, match=r"state leaf \.frames is float16\[2, 3\].*float32"):
        conv.step(params, state16, jnp.ones((3,), jnp.float32))
    state32 = conv.init_state(params, jax.ShapeDtypeStruct((3,), jnp.float32))
    with pytest.raises(ValueError, match=r"state leaf \.frames is float32\[2, 3\].*float16"):
        conv.step(params, state32, jnp.ones((3,), jnp.float16))


def test_step_streams_with_resets_keeps_the_state_dtype_in_a_scan():
    layer = co.Sequential(co.Conv1d(2, 3, 3, padding=1), co.BatchNorm1d(3), co.ReLU())
    params = layer.init(jax.random.PRNGKey(0))
    n, T = 4, 9
    frames = jax.random.normal(jax.random.PRNGKey(1), (T, n, 2)).astype(jnp.bfloat16)
    resets = jax.random.bernoulli(jax.random.PRNGKey(2), 0.3, (T, n))
    states = co.init_streams(layer, params, jax.ShapeDtypeStruct((2,), jnp.bfloat16), n)

    def body(s, xr):
        s, (y, v) = co.step_streams(layer, params, s, xr[0], xr[1])
        return s, y

    final, ys = jax.lax.scan(body, states, (frames, resets))
    assert ys.dtype == jnp.bfloat16
    assert [a.dtype for a in jax.tree.leaves(final)] == [a.dtype for a in jax.tree.leaves(states)]


@pytest.mark.slow
def test_bfloat16_compute_with_float32_parameters_trains():
    """Mixed precision: bf16 clips, f32 params, f32 gradients and statistics; one optax
    step close to the all-f32 step (bf16 has 8 mantissa bits)."""
    net = co.Sequential(
        co.Conv1d(3, 8, 3, padding=1, bias=False),
        co.BatchNorm1d(8),
        co.ReLU(),
        co.Dropout(0.0),
        co.Linear(8, 2),
    )
    params = net.init(jax.random.PRNGKey(0))
    clips = jax.random.normal(jax.random.PRNGKey(1), (4, 12, 3))
    target = jax.random.normal(jax.random.PRNGKey(2), (4, 12, 2))
    tx = co.masked_optimizer(optax.sgd(0.1), net, params)

    def step(params, clips):
        def loss(p):
            ys, new = co.train_forward(net, p, clips, jax.random.PRNGKey(3))
            return jnp.mean(jnp.square(ys.astype(jnp.float32) - target)), new

        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(new, updates), grads, value

    p32, g32, l32 = step(params, clips)
    p16, g16, l16 = step(params, clips.astype(jnp.bfloat16))
    assert {a.dtype for a in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
    assert {a.dtype for a in jax.tree.leaves(p16)} == {jnp.dtype(jnp.float32)}
    assert p16["1"]["mean"].dtype == jnp.float32 and p16["1"]["var"].dtype == jnp.float32
    assert abs(float(l16) - float(l32)) <= 2e-2 * abs(float(l32))
    # The whole gradient within bf16's rounding (relative norm error, measured 3.5%
    # through the bf16 BatchNorm; a wrong gradient is off by ~100%), and no element
    # beyond 10% of the largest gradient.
    flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])  # noqa: E731
    a, b = flat(g16), flat(g32)
    assert np.linalg.norm(a - b) <= 6e-2 * np.linalg.norm(b)
    assert np.abs(a - b).max() <= 0.1 * np.abs(b).max()
    # The trained params stream in bf16 like their bf16 forward.
    clip = clips[0].astype(jnp.bfloat16)
    _, ys, valid = co.forward_steps(net, p16, net.init_state(p16, clip[0]), clip, pad_end=True)
    np.testing.assert_allclose(
        np.asarray(co.valid_outputs(ys, valid), np.float32),
        np.asarray(net.forward(p16, clip), np.float32),
        atol=3e-2,
    )
