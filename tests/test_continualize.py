"""`co.continualize`: clip functions (plain JAX, Flax, Equinox) as exact continual layers.

Every supported operation passes the contract harness (steps == the clip function on
every valid output, chunking, vmap with NaN streams, jit without retrace, pad_end,
state checks); its inferred delay / stride / receptive field are checked against the
hand-computed ones; every refused operation raises `ContinualizeError` naming the
primitive and the line of the test that wrote it.
"""

import continualize_networks as networks
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import cojax as co
from cojax.continualize import ContinualizeError, continualize
from cojax.testing import verify_contract

F32 = jnp.float32


def _normal(seed: int, shape: tuple) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F32)


def _conv_time(x, w, stride=1, padding=(0, 0), dilation=1, groups=1):
    """A temporal conv of one stream, channels-last, over (T, *spatial, C) with the
    same spatial padding as `w` needs ("SAME" for odd kernels)."""
    spatial = x.ndim - 2
    letters = "DHW"[3 - spatial :] if spatial else ""
    spec = "NT" + letters + "C"
    pads = [padding] + [((k - 1) // 2, (k - 1) // 2) for k in w.shape[1:-2]]
    y = lax.conv_general_dilated(
        x[None],
        w,
        (stride,) + (1,) * spatial,
        pads,
        rhs_dilation=(dilation,) + (1,) * spatial,
        dimension_numbers=(spec, "T" + letters + "IO", spec),
        feature_group_count=groups,
    )
    return y[0]


def _check(fn, params, frame, *, delay=None, stride=None, receptive_field=None, **kw):
    kw.setdefault("check_grad", False)  # forward is fn itself: its gradients are JAX's
    layer = continualize(fn, jax.ShapeDtypeStruct(frame, F32), params=params)
    if delay is not None:
        assert layer.delay == delay
    if stride is not None:
        assert layer.stride == stride
    if receptive_field is not None:
        assert layer.receptive_field == receptive_field
    verify_contract(layer, frame, params=params, **kw)
    return layer


# --------------------------------------------------------------------------- convolutions


@pytest.mark.parametrize(
    "frame, kernel, stride, padding, dilation, groups, delay, rf",
    [
        ((3,), 3, 1, (2, 0), 1, 1, 0, 3),  # causal Conv1d
        ((3,), 3, 2, (1, 1), 2, 1, 3, 5),  # symmetric, strided, dilated
        ((5, 4), 2, 1, (0, 0), 1, 2, 1, 2),  # 1 spatial dim, groups
        ((4, 4, 4), 3, 1, (1, 1), 1, 1, 1, 3),  # 2 spatial dims (Conv3d-like)
        ((3, 3, 3, 2), 2, 2, (1, 0), 1, 1, 0, 2),  # 3 spatial dims: a 4D conv
    ],
)
def test_conv_over_time(frame, kernel, stride, padding, dilation, groups, delay, rf):
    c_in = frame[-1]
    spatial = (3,) * (len(frame) - 1)
    params = {"w": _normal(0, (kernel, *spatial, c_in // groups, 6)), "b": _normal(1, (6,))}

    def fn(p, x):
        return _conv_time(x, p["w"], stride, padding, dilation, groups) + p["b"]

    _check(fn, params, frame, delay=delay, stride=stride, receptive_field=rf)


def test_conv_stack_schedule():
    """Causal conv, then a strided dilated conv, then a max pool: delays add up in
    input frames, strides multiply (hand-computed: 0 + 3 + 2, 2, 1 + 2 + 4 + 2)."""

    def fn(p, x):
        y = jax.nn.relu(_conv_time(x, p["w1"], padding=(2, 0)) + p["b1"])
        z = _conv_time(y, p["w2"], stride=2, padding=(1, 1), dilation=2)
        z = lax.reduce_window(z, -jnp.inf, lax.max, (2, 1), (1, 1), [(0, 0), (0, 0)])
        return z @ p["w3"]

    params = {
        "w1": _normal(0, (3, 4, 8)),
        "b1": _normal(1, (8,)),
        "w2": _normal(2, (3, 8, 6)),
        "w3": _normal(3, (6, 5)),
    }
    layer = _check(fn, params, (4,), delay=5, stride=2, receptive_field=9, check_grad=True)
    assert layer.output_length(20) == fn(params, jnp.zeros((20, 4))).shape[0]


def test_time_as_the_batch_axis_is_per_frame():
    """A 2D conv over (H, W) with time as its batch axis mixes no frames: delay 0."""

    def fn(p, x):  # (T, H, W, C)
        return lax.conv_general_dilated(
            x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    layer = _check(fn, {"w": _normal(0, (3, 3, 2, 4))}, (5, 5, 2), delay=0, receptive_field=1)
    assert layer.plan().ops and all(type(op).__name__ != "_WindowOp" for op in layer.plan().ops)


# --------------------------------------------------------------------------- pools


@pytest.mark.parametrize(
    "kind, window, stride, padding, delay",
    [
        ("avg", 3, 1, (2, 0), 0),
        ("max", 2, 2, (0, 0), 1),
        ("min", 3, 1, (1, 1), 1),
        ("sum", 4, 3, (1, 2), 2),
    ],
)
def test_pools_over_time(kind, window, stride, padding, delay):
    reducer = {"avg": (0.0, lax.add), "sum": (0.0, lax.add), "max": (-jnp.inf, lax.max)}
    reducer["min"] = (jnp.inf, lax.min)
    init, op = reducer[kind]

    def fn(p, x):  # (T, W, C)
        y = lax.reduce_window(
            x, init, op, (window, 1, 1), (stride, 1, 1), [padding, (0, 0), (0, 0)]
        )
        return y / window if kind == "avg" else y

    _check(fn, {}, (3, 2), delay=delay, stride=stride)


def test_flax_pools():
    import flax.linen as nn

    def fn(p, x):
        y = nn.max_pool(x, (3,), strides=(1,), padding=((2, 0),))
        return nn.avg_pool(y, (2,), strides=(2,)) * p["scale"]

    _check(fn, {"scale": _normal(0, (3,))}, (3,), delay=1, stride=2, receptive_field=4)


# --------------------------------------------------------------------------- per-frame ops


def test_per_frame_ops():
    """Normalisation over channels, einsum, reshape / transpose that keep time leading,
    reductions over non-time axes, softmax, where, integer casts."""

    def fn(p, x):  # (T, H, W, C)
        t = x.shape[0]
        h = jnp.einsum("thwc,cd->thwd", x, p["w"])
        h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5)
        h = jnp.transpose(h, (0, 2, 1, 3)).reshape(t, -1, 2)
        h = jax.nn.softmax(h, axis=-1) + jnp.where(h > 0, h, 0.1 * h)
        h = h.max(axis=1) + jnp.floor(h.sum(axis=1)).astype(jnp.int32).astype(F32)
        h = jnp.pad(h[:, 1:], ((0, 0), (1, 0)))  # slices and pads of other axes
        return jax.nn.gelu(h)

    _check(fn, {"w": _normal(0, (3, 4))}, (2, 3, 3), delay=0, receptive_field=1)


def test_time_moved_to_another_axis_and_back():
    def fn(p, x):  # (T, C)
        y = jnp.transpose(x)[None]  # (1, C, T)
        y = y * p["s"][None, :, None]
        return jnp.transpose(y[0])

    _check(fn, {"s": _normal(0, (3,))}, (3,), delay=0)


# --------------------------------------------------------------------------- branches


def test_residual_of_branches_with_different_delays_is_aligned():
    """x + conv(x) with a symmetric conv (delay 2): the skip waits 2 frames."""

    def fn(p, x):
        return x + _conv_time(x, p["w"], padding=(2, 2))

    _check(fn, {"w": _normal(0, (5, 3, 3))}, (3,), delay=2, receptive_field=5)


def test_concatenated_branches_and_strided_merge():
    """Two branches of different delays concatenated on channels, then a strided
    conv whose output is added to a strided slice of its input (same rate)."""

    def fn(p, x):
        a = _conv_time(x, p["a"], padding=(1, 1))  # delay 1
        b = _conv_time(x, p["b"], padding=(4, 0))  # delay 0
        h = jnp.concatenate([a, b], axis=-1)
        y = _conv_time(h, p["c"], stride=2, padding=(1, 1))
        return y + h[::2] @ p["d"]

    params = {
        "a": _normal(0, (3, 2, 3)),
        "b": _normal(1, (5, 2, 3)),
        "c": _normal(2, (3, 6, 4)),
        "d": _normal(3, (6, 4)),
    }
    _check(fn, params, (2,), stride=2)


def test_a_pytree_of_outputs_with_different_delays():
    """Outputs come together: the earlier one waits for the later one."""

    def fn(p, x):
        return {"now": jnp.tanh(x), "smooth": _conv_time(x, p["w"], padding=(1, 1))}

    layer = _check(fn, {"w": _normal(0, (3, 2, 2))}, (2,), delay=1, receptive_field=3)
    state = layer.init_state({"w": _normal(0, (3, 2, 2))}, jnp.zeros(2))
    _, (y, _) = layer.step({"w": _normal(0, (3, 2, 2))}, state, jnp.zeros(2))
    assert set(y) == {"now", "smooth"}


def test_time_slices_and_pads():
    """x[2:] + x[:-2] (a crop at each end), a strided slice, and a zero pad of the
    time axis whose padding frames come out first."""

    def fn(p, x):
        y = x[2:] * p["s"] + x[:-2]
        y = jnp.pad(y, ((3, 1), (0, 0)))
        return jnp.tanh(y)[1::2]

    _check(fn, {"s": _normal(0, (2,))}, (2,), stride=2)


def test_pad_then_conv_is_fused_into_a_causal_conv():
    """Flax's causal padding (a pad of the time axis, then a VALID conv) has delay 0
    and one buffer: the conv takes the pad itself."""
    import flax.linen as nn

    model = nn.Conv(4, (3,), padding="CAUSAL")
    params = model.init(jax.random.PRNGKey(0), jnp.ones((8, 2)))
    layer = _check(model.apply, params, (2,), delay=0, receptive_field=3)
    windows = [op for op in layer.plan().ops if type(op).__name__ == "_WindowOp"]
    assert len(windows) == 1


# --------------------------------------------------------------------------- recurrences


def test_scan_over_time():
    """A GRU-like cell written with lax.scan: the carry is the state."""

    def fn(p, x):
        def cell(h, xt):
            z = jax.nn.sigmoid(xt @ p["wz"] + h @ p["uz"])
            h = (1 - z) * h + z * jnp.tanh(xt @ p["wh"] + h @ p["uh"])
            return h, h

        _, hs = lax.scan(cell, jnp.zeros(4), x)
        return hs @ p["out"]

    params = {k: _normal(i, s) for i, (k, s) in enumerate(
        [("wz", (3, 4)), ("uz", (4, 4)), ("wh", (3, 4)), ("uh", (4, 4)), ("out", (4, 2))]
    )}  # fmt: skip
    layer = _check(fn, params, (3,), delay=0, num_frames=12)
    assert layer.finite_memory is False  # the carry holds the whole stream so far


def test_scan_after_a_conv():
    def fn(p, x):
        y = _conv_time(x, p["w"], padding=(1, 1))
        _, hs = lax.scan(lambda h, yt: (0.5 * h + yt, h + yt), jnp.zeros(3), y)
        return hs

    _check(fn, {"w": _normal(0, (3, 2, 3))}, (2,), delay=1, num_frames=12)


# --------------------------------------------------------------------------- trailing windows


def _causal_cnn(p, x):
    return jax.nn.relu(_conv_time(x, p["w"], padding=(2, 0)))


def _trailing_params():
    return {"w": _normal(0, (3, 2, 4)), "head": _normal(1, (4, 3))}


@pytest.mark.parametrize("crop_end", [0, 2])
def test_mean_over_a_fixed_trailing_window(crop_end):
    """A classifier over the last 5 frames, `h[-5:].mean(0, keepdims=True) @ head`:
    each step emits the clip function on the stream so far (one frame), from the
    step its window is full on; a crop of the end (`h[-7:-2]`) adds its frames."""

    def fn(p, x):
        h = _causal_cnn(p, x)
        window = h[h.shape[0] - 5 - crop_end : h.shape[0] - crop_end]
        return window.mean(0, keepdims=True) @ p["head"]

    params = _trailing_params()
    layer = continualize(fn, jax.ShapeDtypeStruct((2,), F32), params=params)
    assert (layer.delay, layer.receptive_field) == (4 + crop_end, 7 + crop_end)
    assert (layer.output_length(3 + crop_end), layer.output_length(40)) == (0, 1)
    verify_contract(layer, (2,), params=params, num_frames=layer.delay + 1)
    clip = _normal(2, (14, 2))
    _, ys, valid = co.forward_steps(layer, params, layer.init_state(params, clip[0]), clip)
    assert np.asarray(valid).tolist() == [t >= layer.delay for t in range(14)]
    for t in range(layer.delay, 14):
        np.testing.assert_allclose(ys[t], fn(params, clip[: t + 1])[0], atol=1e-5)


def test_a_trailing_window_mixed_with_the_frames_is_refused():
    def fn(p, x):
        return x - x[-3:].mean(0, keepdims=True)

    _refused(fn, {}, (2,), "earlier frames would see later ones")
    _refused(lambda p, x: x[-3:].mean(0), {}, (2,), "keepdims=True")


# --------------------------------------------------------------------------- refusals


def _refused(fn, params, frame, *words):
    with pytest.raises(ContinualizeError) as info:
        continualize(fn, jax.ShapeDtypeStruct(frame, F32), params=params)
    message = str(info.value)
    assert "test_continualize.py" in message, message  # the user's line
    for word in words:
        assert word in message, message
    return message


def test_refuses_a_reduction_over_the_whole_time_axis():
    _refused(lambda p, x: x.mean(0, keepdims=True), {}, (3,), "reduce_sum", "windowed")


def test_refuses_attention_across_time():
    def fn(p, x):
        a = jax.nn.softmax(x @ x.T, axis=-1)
        return a @ x

    _refused(fn, {}, (3,), "dot_general", "SingleOutputMultiheadAttention")


def test_refuses_data_dependent_time_indexing():
    def fn(p, x):
        i = jnp.argmax(x[:, 0] > 0)
        return lax.dynamic_slice_in_dim(x, i, 2, axis=0)

    _refused(fn, {}, (3,), "argmax")


def test_refuses_indexing_time_with_an_index_array():
    # jnp first wraps negative indices by adding T (refused: a constant of the clip
    # length); lax.gather itself is refused as data-dependent indexing.
    message = _refused(lambda p, x: x[p["frames"]], {"frames": jnp.array([0, 2])}, (3,))
    assert "clip length" in message

    def gather(p, x):
        dims = lax.GatherDimensionNumbers(
            offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0,)
        )
        return lax.gather(x, p["frames"][:, None], dims, (1, 3))

    _refused(gather, {"frames": jnp.array([0, 2])}, (3,), "gather", "static slices")


def test_refuses_cumsum_slices_from_the_end_and_clip_positions():
    _refused(lambda p, x: jnp.cumsum(x, axis=0), {}, (2,), "cumsum")
    _refused(lambda p, x: x[-3:], {}, (2,), "keepdims=True")  # a window, not a frame
    _refused(lambda p, x: x[:4], {}, (2,), "slice", "start of the clip")
    _refused(lambda p, x: x + jnp.arange(x.shape[0])[:, None], {}, (2,), "RecyclingPositional")
    _refused(lambda p, x: x / x.shape[0], {}, (2,), "clip length")


def test_a_refused_value_that_is_not_returned_is_fine():
    """A scan's final carry depends on the whole clip; nobody reads it here."""

    def fn(p, x):
        last, hs = lax.scan(lambda h, xt: (h + xt, h * xt), jnp.zeros(2), x)
        del last
        return hs

    _check(fn, {}, (2,), delay=0, num_frames=9)
    _refused(
        lambda p, x: lax.scan(lambda h, xt: (h + xt, h), jnp.zeros(2), x)[0][None],
        {},
        (2,),
        "final carry",
    )


def test_bad_inputs_get_clear_errors():
    params = {"w": _normal(0, (3, 2, 4))}

    def fn(p, x):
        return _conv_time(x, p["w"], padding=(2, 0))

    layer = continualize(fn, jax.ShapeDtypeStruct((2,), F32), params=params)
    with pytest.raises(ValueError, match="expected frames float32\\[2\\]"):
        layer.init_state(params, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="ONE stream"):
        layer.init_state(params, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="params leaf 0"):
        layer.init_state({"w": _normal(0, (3, 2, 5))}, jnp.zeros((2,)))
    other = continualize(lambda p, x: x * 2.0, jax.ShapeDtypeStruct((2,), F32), params={})
    with pytest.raises(ValueError, match="state"):
        layer.step(params, other.init_state({}, jnp.zeros((2,))), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="params=params"):
        _ = continualize(fn, jax.ShapeDtypeStruct((2,), F32)).delay
    with pytest.raises(ContinualizeError, match="trace_length"):
        continualize(fn, jax.ShapeDtypeStruct((2,), F32), params={"w": _normal(0, (40, 2, 4))})


# --------------------------------------------------------------------------- real networks


def _step_vs_clip(layer, params, clip) -> float:
    """Max |steps - the clip function| over the valid outputs of one stream."""
    _, ys, valid = co.forward_steps(layer, params, layer.init_state(params, clip[0]), clip)
    valid = np.asarray(valid)
    out = np.asarray(layer.forward(params, clip))
    assert out.std() > 1e-2  # the input-dependent part, not only biases
    return float(np.abs(np.asarray(ys)[valid] - out[: int(valid.sum())]).max())


@pytest.mark.slow
def test_flax_temporal_cnn():
    """Conv over (T, H, W) + BatchNorm (eval mode, random statistics) + ReLU + pool +
    a causal conv + Dense head."""
    fn, variables, frame = networks.flax_temporal_cnn()
    layer = _check(fn, variables, frame, delay=2, receptive_field=5)
    assert _step_vs_clip(layer, variables, _normal(1, (12, *frame))) < 1e-5


@pytest.mark.slow
def test_equinox_1d_cnn():
    fn, params, frame = networks.equinox_1d_cnn()
    layer = _check(fn, params, frame, delay=2, stride=2, receptive_field=7)
    assert _step_vs_clip(layer, params, _normal(1, (20, *frame))) < 1e-5


@pytest.mark.slow
def test_plain_jax_anchor_network_equals_the_hand_built_one():
    """The anchor network (10 x Conv3d + BN + ReLU) in plain JAX, continualized, against
    the same network built from cojax layers with the same random params."""
    from cojax.demo_models import init_random

    blocks = []
    for _ in range(10):
        blocks += [co.Conv3d(4, 4, 3, padding=(0, 1, 1)), co.BatchNorm3d(4), co.ReLU()]
    hand = co.Sequential(*blocks)
    params = init_random(hand, jax.random.PRNGKey(0))
    layer = _check(
        networks.plain_anchor, params, (5, 5, 4), delay=20, receptive_field=21, num_frames=26
    )
    clip = _normal(1, (28, 5, 5, 4))
    assert _step_vs_clip(layer, params, clip) < 1e-5
    _, ys_hand, valid_hand = co.forward_steps(hand, params, hand.init_state(params, clip[0]), clip)
    _, ys, valid = co.forward_steps(layer, params, layer.init_state(params, clip[0]), clip)
    np.testing.assert_array_equal(valid, valid_hand)
    np.testing.assert_allclose(ys, ys_hand, atol=1e-5)


# --------------------------------------------------------------------------- integration


def test_streams_and_pool():
    params = {"w": _normal(0, (3, 2, 4))}

    def fn(p, x):
        return jnp.tanh(_conv_time(x, p["w"], padding=(1, 1)))

    layer = continualize(fn, jax.ShapeDtypeStruct((2,), F32), params=params)
    clips = _normal(1, (3, 9, 2))
    states = co.init_streams(layer, params, jnp.zeros((2,)), 3)
    outs, step = [], jax.jit(co.step_streams, static_argnums=0)
    for t in range(9):
        states, (y, v) = step(layer, params, states, clips[:, t])
        outs.append((np.asarray(y), np.asarray(v)))
    for s in range(3):
        ys = np.stack([o[0][s] for o in outs])[np.array([o[1][s] for o in outs])]
        np.testing.assert_allclose(ys, fn(params, clips[s])[: len(ys)], atol=1e-5)


def test_stream_pool_and_exported_step():
    """A continualized layer in the stream pool and as a `jax.export` artefact: both
    equal its single-stream steps."""
    from cojax.export import export_step, load_step

    params = _trailing_params()
    layer = continualize(_causal_cnn, jax.ShapeDtypeStruct((2,), F32), params=params)
    clips = _normal(3, (2, 6, 2))
    pool = co.StreamPool(layer, params, capacity=2, frame=jnp.zeros(2))
    pool.open("a")
    pool.open("b")
    pooled = [pool.push({"a": clips[0, t], "b": clips[1, t]}) for t in range(6)]
    reference = [_causal_cnn(params, c) for c in clips]
    for t, out in enumerate(pooled):
        for s, key in enumerate("ab"):
            y, valid = out[key]
            assert valid
            np.testing.assert_allclose(y, reference[s][t], atol=1e-5)

    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        export_step(layer, params, jnp.zeros(2), directory)
        step, state = load_step(directory)
        for t in range(6):
            state, ys, valid = step(state, clips[0, t])
            np.testing.assert_allclose(ys[0], reference[0][t], atol=1e-5)


@pytest.mark.slow
def test_training_checks_of_the_harness():
    """Gradients through forward == through the steps, the receptive field measured
    from gradients, train mode on a ragged batch (a causal conv, then a centred one)."""

    def fn(p, x):
        y = jnp.tanh(_conv_time(x, p["w"], padding=(2, 0)) + p["b"])
        return _conv_time(y, p["w2"], padding=(1, 1))

    params = {"w": _normal(0, (3, 2, 4)), "b": _normal(1, (4,)), "w2": _normal(2, (3, 4, 3))}
    _check(fn, params, (2,), delay=1, receptive_field=5, check_training=True, check_grad=True)


@pytest.mark.slow
def test_onnx_export(tmp_path):
    """The step of a continualized causal CNN as ONNX, run in onnxruntime, equals the
    clip function (export_onnx_step itself checks it against the step first)."""
    from cojax.onnx_export import export_onnx_step, load_onnx_step

    params = _trailing_params()
    layer = continualize(_causal_cnn, jax.ShapeDtypeStruct((2,), F32), params=params)
    export_onnx_step(layer, params, jnp.zeros(2), tmp_path)
    step, state = load_onnx_step(tmp_path)
    clip = _normal(4, (6, 2))
    reference = np.asarray(_causal_cnn(params, clip))
    for t in range(6):
        state, ys, valid = step(state, np.asarray(clip[t]))
        assert bool(valid)
        np.testing.assert_allclose(ys[0], reference[t], atol=1e-5)


SHARDED = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax import lax
import cojax as co
jax.config.update("jax_default_matmul_precision", "highest")
assert jax.device_count() == 8

def fn(p, x):
    y = lax.conv_general_dilated(x[None], p["w"], (1,), [(1, 1)], dimension_numbers=("NTC", "TIO", "NTC"))[0]
    return jnp.tanh(y) + x[:, :1]

params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((3, 2, 4)), jnp.float32)}
layer = co.continualize(fn, jax.ShapeDtypeStruct((2,), jnp.float32), params=params)
frames = np.random.default_rng(1).standard_normal((9, 16, 2)).astype(np.float32)
step = jax.jit(lambda p, s, x: co.step_streams(layer, p, s, x))
mesh = co.streams_mesh()
plain = co.init_streams(layer, params, frames[0, 0], 16)
sharded = co.shard_streams(co.init_streams(layer, params, frames[0, 0], 16), mesh)
diff = 0.0
for x in frames:
    plain, (a, _) = step(params, plain, x)
    sharded, (b, _) = step(co.replicate(params, mesh), sharded, co.shard_streams(x, mesh))
    diff = max(diff, float(np.abs(np.asarray(a) - np.asarray(b)).max()))
leaf = jax.tree_util.tree_leaves(sharded)[0]
print(json.dumps({"diff": diff, "devices": len(leaf.sharding.device_set)}))
"""


@pytest.mark.slow
def test_sharded_streams(tmp_path):
    """16 streams of a continualized layer sharded over 8 CPU devices == unsharded."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8 and report["diff"] <= 1e-6


# --------------------------------------------------------------------------- property test

_OPS = ("conv", "pool", "act", "residual", "slice", "pad", "dense")


@st.composite
def _programs(draw):
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(_OPS))
        if kind in ("conv", "residual"):
            k = draw(st.integers(1, 3))
            dilation = draw(st.integers(1, 2))
            extent = (k - 1) * dilation + 1
            left = draw(st.integers(0, extent - 1))
            right = draw(st.integers(0, extent - 1)) if kind == "conv" else extent - 1 - left
            stride = draw(st.integers(1, 2)) if kind == "conv" else 1
            ops.append((kind, k, dilation, left, right, stride))
        elif kind == "pool":
            k = draw(st.integers(1, 3))
            ops.append(
                (kind, k, draw(st.integers(1, 2)), draw(st.integers(0, k - 1)), draw(st.booleans()))
            )
        elif kind == "slice":
            ops.append((kind, draw(st.integers(0, 2)), draw(st.integers(0, 2))))
        elif kind == "pad":
            ops.append((kind, draw(st.integers(0, 2)), draw(st.integers(0, 2))))
        else:
            ops.append((kind,))
    return ops


def _program_fn(ops):
    def fn(p, x):
        for i, op in enumerate(ops):
            kind = op[0]
            if kind in ("conv", "residual"):
                _, k, dilation, left, right, stride = op
                y = _conv_time(x, p[i], stride, (left, right), dilation)
                x = x + y if kind == "residual" else y
            elif kind == "pool":
                _, k, stride, left, is_max = op
                init, red = (-jnp.inf, lax.max) if is_max else (0.0, lax.add)
                x = lax.reduce_window(x, init, red, (k, 1), (stride, 1), [(left, 0), (0, 0)])
            elif kind == "slice":
                x = x[op[1] : x.shape[0] - op[2]]
            elif kind == "pad":
                x = jnp.pad(x, ((op[1], op[2]), (0, 0)), constant_values=0.5)
            elif kind == "act":
                x = jax.nn.silu(x)
            else:
                x = x @ p[i]
        return x

    return fn


@pytest.mark.slow
@settings(max_examples=16, deadline=None, suppress_health_check=list(HealthCheck))
@given(_programs())
def test_random_compositions(ops):
    c = 3
    params = {i: _normal(i, (op[1], c, c) if op[0] in ("conv", "residual") else (c, c))
              for i, op in enumerate(ops) if op[0] in ("conv", "residual", "dense")}  # fmt: skip
    fn = _program_fn(ops)
    layer = continualize(fn, jax.ShapeDtypeStruct((c,), F32), params=params)
    T = 3 * layer.receptive_field + 2 * layer.stride + 8
    assert layer.output_length(T) == fn(params, jnp.zeros((T, c))).shape[0]
    verify_contract(layer, (c,), params=params, check_grad=False)
