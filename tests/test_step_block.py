"""Block steps: `layer.step_block(params, state, frames (k, ...))` equals k `step`s.

Streams are cut into blocks of random sizes; outputs, valid flags and the final state
match stepping frame by frame. The masked form (`step_block_masked`, how containers
pass a strided child's gaps) matches `masked_step` frame by frame for random masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cojax as co
from cojax.core import scan_masked_steps
from cojax.demo_models import init_random, small_x3d_like

jax.config.update("jax_default_matmul_precision", "highest")

LAYERS = {
    "Conv1d": (lambda: co.Conv1d(3, 4, 3), (3,)),
    "Conv1d stride 2, dilation 2, padding 2": (
        lambda: co.Conv1d(3, 4, 3, stride=2, dilation=2, padding=2),
        (3,),
    ),
    "Conv1d replicate fill": (
        lambda: co.Conv1d(3, 4, 3, padding=1, temporal_fill="replicate"),
        (3,),
    ),
    "Conv2d grouped": (lambda: co.Conv2d(4, 6, (2, 3), groups=2, padding=(0, 1)), (5, 4)),
    "Conv3d depthwise": (lambda: co.Conv3d(4, 4, 3, groups=4, padding=(1, 1, 1)), (5, 5, 4)),
    "Conv3d dense, spatial stride": (
        lambda: co.Conv3d(3, 5, (3, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        (6, 6, 3),
    ),
    "MaxPool1d stride 2": (lambda: co.MaxPool1d(3, stride=2, padding=1), (3,)),
    "AvgPool3d": (lambda: co.AvgPool3d((2, 2, 2), stride=(1, 2, 2)), (4, 4, 3)),
    "AvgPool1d count_include_pad=False (scans)": (
        lambda: co.AvgPool1d(3, stride=1, padding=1, count_include_pad=False),
        (3,),
    ),
    "Sequential with strided and pooled children": (
        lambda: co.Sequential(
            co.Conv1d(3, 4, 3, stride=2),
            co.BatchNorm1d(4),
            co.ReLU(),
            co.MaxPool1d(2),
            co.Conv1d(4, 4, 3, padding=1, stride=3),
            co.Linear(4, 2),
        ),
        (3,),
    ),
    "Residual": (
        lambda: co.Sequential(co.Conv1d(3, 4, 3), co.Residual(co.Conv1d(4, 4, 3, padding=1))),
        (3,),
    ),
    "Delay replicate, Skip": (
        lambda: co.Sequential(co.Delay(3, temporal_fill="replicate"), co.Skip(2)),
        (3,),
    ),
    "Parallel of a conv and a delay, concatenated": (
        lambda: co.Sequential(
            co.Broadcast(2),
            co.Parallel(co.Conv1d(3, 2, 3), co.Delay(2)),
            co.Reduce("concat"),
        ),
        (3,),
    ),
    "SingleOutputMultiheadAttention (scans)": (
        lambda: co.SingleOutputMultiheadAttention(8, 2, 4),
        (8,),
    ),
}
SLOW_LAYERS = {  # many kernels to compile per block size: `pytest -m slow` (CI)
    "small X3D-like CNN": (lambda: small_x3d_like(), (16, 16, 3)),
    "CoX3D-XS": (lambda: co.x3d("XS"), (32, 32, 3)),
}
LAYERS.update(SLOW_LAYERS)
# The fast set keeps one case of each mechanism (dilated strided conv, dense Conv3d,
# strided pipeline, residual, parallel branches); `pytest -m slow` (CI) runs them all.
FAST = {
    "Conv1d stride 2, dilation 2, padding 2",
    "Conv3d dense, spatial stride",
    "Sequential with strided and pooled children",
    "Residual",
    "Parallel of a conv and a delay, concatenated",
}
CASES = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in LAYERS]


def _params(layer):
    try:
        return init_random(layer, jax.random.PRNGKey(0))
    except ValueError:
        return layer.init(jax.random.PRNGKey(0))


def _assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("name", CASES)
def test_blocks_of_random_sizes_equal_single_steps(name):
    make, shape = LAYERS[name]
    layer = make()
    params = _params(layer)
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((layer.delay + 23, *shape)).astype(np.float32)
    state0 = layer.init_state(params, jnp.zeros(shape))
    state, ys, valid = co.forward_steps(layer, params, state0, jnp.asarray(frames))

    block = jax.jit(layer.step_block)
    sizes = [layer.delay, 1, 4, 2, 7, 3, 5, 1]  # the warm-up, then 23 frames
    state_b, ys_b, valid_b, t = state0, [], [], 0
    for k in sizes:
        state_b, (y, v) = block(params, state_b, jnp.asarray(frames[t : t + k]))
        ys_b.append(np.asarray(y))
        valid_b.append(np.asarray(v))
        t += k
    np.testing.assert_array_equal(np.concatenate(valid_b), np.asarray(valid))
    assert np.asarray(valid).any()
    np.testing.assert_allclose(np.concatenate(ys_b), np.asarray(ys), rtol=1e-5, atol=1e-5)
    _assert_trees_close(state_b, state, 1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "Conv1d stride 2, dilation 2, padding 2",
        pytest.param("Conv1d replicate fill", marks=pytest.mark.slow),
        "MaxPool1d stride 2",
        pytest.param("Delay replicate, Skip", marks=pytest.mark.slow),
        pytest.param("Parallel of a conv and a delay, concatenated", marks=pytest.mark.slow),
    ],
)
def test_masked_blocks_equal_masked_steps(name):
    make, shape = LAYERS[name]
    layer = make()
    params = _params(layer)
    rng = np.random.default_rng(1)
    state = layer.init_state(params, jnp.zeros(shape))
    ref = state
    for _ in range(5):
        frames = jnp.asarray(rng.standard_normal((6, *shape)).astype(np.float32))
        mask = jnp.asarray(rng.random(6) < 0.6)
        state, (y, v) = layer.step_block_masked(params, state, frames, mask)
        ref, (y_ref, v_ref) = scan_masked_steps(layer, params, ref, frames, mask)
        np.testing.assert_array_equal(np.asarray(v), np.asarray(v_ref))
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-6)
    _assert_trees_close(state, ref, 1e-6)


def test_block_steps_vmap_over_streams():
    layer = co.Sequential(co.Conv1d(3, 4, 3, stride=2), co.ReLU(), co.Conv1d(4, 2, 2))
    params = _params(layer)
    frames = jnp.asarray(np.random.default_rng(2).standard_normal((5, 8, 3)), jnp.float32)
    states = co.init_streams(layer, params, jnp.zeros(3), 5)
    block = jax.jit(jax.vmap(layer.step_block, in_axes=(None, 0, 0)))
    states_b, (ys, valid) = block(params, states, frames)
    for i in range(5):
        one = layer.init_state(params, jnp.zeros(3))
        _, y_ref, v_ref = co.forward_steps(layer, params, one, frames[i])
        np.testing.assert_array_equal(np.asarray(valid[i]), np.asarray(v_ref))
        np.testing.assert_allclose(np.asarray(ys[i]), np.asarray(y_ref), rtol=1e-5, atol=1e-6)


def test_block_with_a_wrong_state_or_frames_raises():
    layer = co.Conv1d(3, 4, 3)
    params = _params(layer)
    other = co.Conv1d(3, 4, 5).init_state(params, jnp.zeros(3))
    with pytest.raises(ValueError, match="state"):
        layer.step_block(params, other, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="channels|C_in|3"):
        layer.step_block(params, layer.init_state(params, jnp.zeros(3)), jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="step_block takes frames"):
        layer.step_block(params, layer.init_state(params, jnp.zeros(3)), jnp.zeros(()))


def _primitives_inside_loops(jaxpr, inside=False, found=None):
    found = set() if found is None else found
    for eqn in jaxpr.eqns:
        if inside:
            found.add(eqn.primitive.name)
        loop = inside or eqn.primitive.name in ("scan", "while")
        for value in eqn.params.values():
            sub = getattr(value, "jaxpr", None)
            if sub is not None:
                _primitives_inside_loops(sub if hasattr(sub, "eqns") else sub.jaxpr, loop, found)
    return found


@pytest.mark.slow
def test_the_block_is_one_clip_computation_not_a_loop_of_steps():
    """In the small X3D-like CNN's block (convs, pools, BatchNorm, residuals) no
    convolution or matmul runs inside a loop: only the frame counters are scanned."""
    layer = small_x3d_like()
    params = _params(layer)
    state = layer.init_state(params, jnp.zeros((16, 16, 3)))
    jaxpr = jax.make_jaxpr(lambda s, x: layer.step_block(params, s, x))(
        state, jnp.zeros((4, 16, 16, 3))
    )
    looped = _primitives_inside_loops(jaxpr.jaxpr)
    assert looped and not looped & {"conv_general_dilated", "dot_general", "reduce_max"}
    # while a scanning layer's block does loop over its heavy ops
    attention = co.SingleOutputMultiheadAttention(8, 2, 4)
    p = attention.init(jax.random.PRNGKey(0))
    jaxpr = jax.make_jaxpr(lambda s, x: attention.step_block(p, s, x))(
        attention.init_state(p, jnp.zeros(8)), jnp.zeros((4, 8))
    )
    assert "dot_general" in _primitives_inside_loops(jaxpr.jaxpr)
