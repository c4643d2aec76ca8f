"""One layer style: validated fields, `repr`/`replace` round-trips, and a `step` that
checks the state, frame and clip it is given (the contract's input checks)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cojax as co


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: co.Conv3d(True, 4, 3), "Conv3d: in_channels must be an int, got True"),
        (lambda: co.Conv3d(3, 4, kernel_size=True), "Conv3d: kernel_size must be an int or"),
        (lambda: co.Conv1d(3, 4, 3, stride=(1.0,)), "Conv1d: stride must be an int, got 1.0"),
        (lambda: co.Linear(True, 4), "Linear: in_features must be an int, got True"),
        (lambda: co.Linear(3.5, 4), r"Linear: in_features must be an int, got 3.5 \(float\)"),
        (lambda: co.BatchNorm3d(True), "BatchNorm3d: num_features must be an int, got True"),
        (lambda: co.LSTM(True, 4), "LSTM: input_size must be an int, got True"),
        (lambda: co.Delay(True), "Delay: delay_frames must be an int, got True"),
        (lambda: co.Delay(2.5), "Delay: delay_frames must be an int, got 2.5"),
        (lambda: co.MaxPool2d(2, padding=False), "MaxPool2d: padding must be an int"),
        (lambda: co.Linear(3, 4, bias=1), "Linear: bias must be a bool, got 1"),
        (lambda: co.Dropout(p=True), "Dropout: p must be a number, got True"),
        (lambda: co.Reshape(2, True), "Reshape: shape must be an int, got True"),
        (lambda: co.Conv1d(3, 4, 3, stride=2, stride_nd=(2,)), "pass stride or stride_nd"),
    ],
)
def test_bad_field_types_raise_at_construction(build, message):
    with pytest.raises(TypeError, match=message):
        build()


def test_numpy_ints_are_ints():
    a = co.Conv3d(np.int64(3), 4, kernel_size=np.int64(3), stride=(1, np.int32(2), 2))
    b = co.Conv3d(3, 4, 3, stride=(1, 2, 2))
    assert a == b and type(a.in_channels) is int and type(a.kernel_size[0]) is int
    assert co.Linear(np.int64(3), 4) == co.Linear(3, 4)
    assert type(co.BatchNorm1d(4, eps=np.float32(1e-3)).eps) is float


CATALOGUE = [
    co.Conv1d(3, 4, 3, padding=1),
    co.Conv2d(3, 6, (3, 1), stride=(2, 1), groups=3, bias=False, padding_mode="replicate"),
    co.Conv3d(3, 4, (3, 3, 3), dilation=(2, 1, 1), temporal_fill="replicate"),
    co.MaxPool3d((2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)),
    co.AvgPool2d(3, padding=1, count_include_pad=False),
    co.AvgPool1d(2, divisor_override=3),
    co.AdaptiveAvgPool3d((1, 1, 1), 4, stride=2),
    co.AdaptiveMaxPool2d((1, 2), 3),
    co.Linear(3, 4, bias=False),
    co.BatchNorm2d(4, momentum=None),
    co.GroupNorm(2, 4),
    co.LayerNorm(4),
    co.Dropout3d(0.25),
    co.LeakyReLU(0.2),
    co.Reshape(4, -1, channels_first=True),
    co.Delay(2, auto_shrink=True),
    co.Skip(3),
    co.LSTM(3, 4, num_layers=2),
    co.RecyclingPositionalEncoding(4, 8),
    co.SingleOutputMultiheadAttention(4, 2, 5),
    co.Sequential(co.Conv1d(3, 4, 3), co.ReLU(), co.Linear(4, 2)),
    co.BroadcastReduce(co.Conv1d(3, 4, 3), co.Conv1d(3, 4, 1), reduce="mul"),
    # Aligned shortcuts (Skip / Delay added at construction) are not added twice.
    co.Residual(co.SingleOutputMultiheadAttention(4, 2, 3, query_index=-2)),
    co.Parallel(co.Identity(), co.SingleOutputMultiheadAttention(4, 2, 3)),
]


@pytest.mark.parametrize("layer", CATALOGUE, ids=lambda layer: type(layer).__name__)
def test_fields_are_constructor_arguments(layer):
    """`dataclasses.replace` re-runs the constructor with the fields; `repr` evaluates
    back to an equal layer."""
    assert dataclasses.replace(layer) == layer
    assert eval(repr(layer), vars(co)) == layer


def test_replace_changes_a_field_and_revalidates():
    conv = co.Conv1d(3, 4, 3)
    assert co.core.replace(conv, stride_nd=(2,)).stride == 2
    with pytest.raises(TypeError, match="out_channels must be an int"):
        co.core.replace(conv, out_channels=4.0)


# --------------------------------------------------------------------------- state check


def state_for(layer, frame_shape):
    params = layer.init(jax.random.PRNGKey(0))
    return params, layer.init_state(params, jax.ShapeDtypeStruct(frame_shape, jnp.float32))


def test_a_state_of_another_kernel_size_is_rejected():
    layer = co.Conv3d(2, 3, 3)
    params, _ = state_for(layer, (6, 6, 2))
    _, other = state_for(co.Conv3d(2, 3, 5), (6, 6, 2))
    frame = jnp.ones((6, 6, 2))
    message = (
        r"Conv3d: the state does not belong to this layer: expected a state like "
        r"PartialSums\(sums=\('float32\[4, 4, 3\]', 'float32\[4, 4, 3\]'\).* "
        r"got PartialSums\(sums=\('float32\[2, 2, 3\]', 'float32\[2, 2, 3\]', "
    )
    with pytest.raises(ValueError, match=message):
        layer.step(params, other, frame)
    with pytest.raises(ValueError, match=message):  # at trace time under jit too
        jax.jit(layer.step)(params, other, frame)


def test_a_state_of_another_stride_is_rejected():
    """Same shapes: the stride is in the state's tree structure (`Schedule`)."""
    layer = co.Conv1d(2, 3, 3, stride=3)
    params, _ = state_for(layer, (2,))
    _, other = state_for(co.Conv1d(2, 3, 3), (2,))
    with pytest.raises(
        ValueError, match="Conv1d: the state does not belong to this layer.*stride=3"
    ):
        layer.step(params, other, jnp.ones((2,)))


def test_a_state_of_another_layer_or_frame_is_rejected():
    conv = co.Conv2d(2, 3, 3, padding=(0, 1))
    params, _ = state_for(conv, (5, 2))
    _, lstm_state = state_for(co.LSTM(2, 3), (2,))
    with pytest.raises(ValueError, match="Conv2d: the state does not belong to this layer"):
        conv.step(params, lstm_state, jnp.ones((5, 2)))
    _, state = state_for(conv, (5, 2))
    with pytest.raises(
        ValueError,
        match=r"Conv2d: state leaf \.sums\[0\] is float32\[5, 3\].*frame float32\[6, 2\]",
    ):
        conv.step(params, state, jnp.ones((6, 2)))  # a frame of another spatial size
    with pytest.raises(ValueError, match="Conv2d: expected a frame with 2 dimensions"):
        conv.step(params, state, jnp.ones((5, 5, 2)))


def test_a_state_of_another_dtype_is_rejected():
    conv = co.Conv1d(2, 3, 3)
    params, state = state_for(conv, (2,))
    half = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float16) if a.dtype == jnp.float32 else a, state
    )
    with pytest.raises(
        ValueError, match=r"state leaf \.frames is float16\[2, 2\].*float32\[2, 2\]"
    ):
        conv.step(params, half, jnp.ones((2,), jnp.float32))


def test_containers_check_the_nested_state_once():
    net = co.Sequential(co.Conv1d(2, 3, 3), co.ReLU(), co.Conv1d(3, 3, 3, stride=2))
    params, state = state_for(net, (2,))
    wrong = dict(state)
    wrong["2"] = state_for(co.Conv1d(3, 3, 3), (3,))[1]
    with pytest.raises(ValueError, match="Sequential: the state does not belong.*stride=2"):
        net.step(params, wrong, jnp.ones((2,)))
    _, (y, _) = jax.jit(net.step)(params, state, jnp.ones((2,)))
    assert y.shape == (3,)


def test_stateless_layers_take_any_empty_state():
    relu = co.ReLU()
    for empty in ((), {}, None, co.core.NoState()):
        _, (y, valid) = relu.step({}, empty, -jnp.ones((3,)))
        assert float(y.sum()) == 0.0 and bool(valid)
    with pytest.raises(ValueError, match="ReLU: the state does not belong"):
        relu.step({}, (jnp.zeros(3),), jnp.ones((3,)))
