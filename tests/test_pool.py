"""Continual pools: contract, parity with torch.nn.functional, dilation, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cojax.core import forward_steps, valid_outputs
from cojax.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaskedWindowState,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from cojax.layers.window import WindowState
from cojax.testing import verify_contract

C = 2
FRAMES = {1: (C,), 2: (6, C), 3: (5, 6, C)}
MAX = {1: MaxPool1d, 2: MaxPool2d, 3: MaxPool3d}
AVG = {1: AvgPool1d, 2: AvgPool2d, 3: AvgPool3d}
TORCH_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
TORCH_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def to_torch(clip):
    """cojax clip (T, *S, C) -> torch (1, C, T, *S)."""
    return torch.movedim(torch.from_numpy(np.array(clip)), -1, 0).unsqueeze(0)


def from_torch(y):
    """torch (1, C, T, *S) -> (T, *S, C)."""
    return torch.movedim(y[0], 0, -1).numpy()


def random_clip(shape, seed=1):
    return 2.0 * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def assert_close(ours, theirs, tol=1e-5):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert np.max(np.abs(ours - theirs), initial=0.0) <= tol


def torch_pool(layer, clip):
    """The torch.nn.functional pool with the layer's configuration, on the clip."""
    n = layer.num_dims
    k, s, p, d = layer.kernel_size, layer.stride_nd, layer.padding_nd, layer.dilation_nd
    with torch.no_grad():
        if layer.kind == "max":
            y = TORCH_MAX[n](to_torch(clip), k, s, p, dilation=d)
        else:
            assert set(d) == {1}, "torch's average pools have no dilation"
            extra = {} if n == 1 else {"divisor_override": layer.divisor_override}
            y = TORCH_AVG[n](
                to_torch(clip), k, s, p, count_include_pad=layer.count_include_pad, **extra
            )
    return from_torch(y)


def streamed(layer, clip):
    """All outputs of a stream with end padding, jitted as one program."""

    @jax.jit
    def run(c):
        state = layer.init_state({}, c[0])
        return forward_steps(layer, {}, state, c, pad_end=True)[1:]

    return valid_outputs(*run(clip))


# --------------------------------------------------------------------------- contract

CONTRACT_CASES = [
    (MaxPool1d(3, stride=1, padding=1), FRAMES[1]),
    (AvgPool2d((3, 2), stride=(2, 2), padding=(1, 1), count_include_pad=False), FRAMES[2]),
    (MaxPool2d((3, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1)), FRAMES[2]),
    (MaxPool3d((2, 3, 2), stride=(2, 1, 2), padding=(1, 1, 0)), FRAMES[3]),
    (AvgPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), FRAMES[3]),
    (AdaptiveAvgPool3d((1, 1), 3, padding=1), FRAMES[3]),
    (AdaptiveMaxPool2d((1, 2), 2, stride=2), FRAMES[2]),
]


@pytest.mark.parametrize("layer, frame", CONTRACT_CASES, ids=lambda c: repr(c)[:60])
def test_contract(layer, frame):
    # Pools have no parameters: the random inputs are all the harness needs.
    verify_contract(layer, frame, num_streams=2)


def test_static_metadata():
    m = MaxPool3d((3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), dilation=(2, 1, 1))
    # The true extent of a dilated window is d*(k-1)+1 = 5 (the reference says d*k = 6).
    assert (m.receptive_field, m.delay, m.stride, m.padding) == (5, 3, 2, 1)
    assert MaxPool2d(3).stride == 3  # stride defaults to kernel_size, as in torch
    a = AdaptiveAvgPool2d((1, 4), 3, stride=1, padding=1)
    assert (a.receptive_field, a.delay, a.stride, a.padding) == (3, 1, 1, 1)
    assert a.output_size == (1, 4) and AdaptiveAvgPool3d((2, 2), 1).output_size == (1, 2, 2)
    assert hash(MaxPool2d(3)) == hash(MaxPool2d((3, 3), stride=3))


def test_state_types():
    frame = jax.ShapeDtypeStruct(FRAMES[3], jnp.float32)
    state = MaxPool3d((3, 3, 3), padding=1).init_state({}, frame)
    assert isinstance(state, WindowState) and state.frames.shape == (2, 2, 2, C)
    assert np.all(np.asarray(state.frames) == -np.inf)  # max pools start from -inf
    masked = AvgPool3d(3, padding=1, count_include_pad=False).init_state({}, frame)
    assert isinstance(masked, MaskedWindowState) and masked.real.shape == (2,)


# --------------------------------------------------------------------------- torch parity

TORCH_CASES = [
    MaxPool1d(2),
    AvgPool1d(3, stride=1, padding=1, count_include_pad=False),
    MaxPool2d((3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 2)),
    AvgPool2d((2, 3), stride=(2, 1), padding=(1, 1), divisor_override=4),
    MaxPool3d(3, stride=(1, 2, 2), padding=1, dilation=(3, 1, 2)),
    AvgPool3d((2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)),
    AvgPool3d((3, 2, 3), stride=(2, 1, 1), padding=(1, 1, 1), count_include_pad=False),
]


@pytest.mark.parametrize("layer", TORCH_CASES, ids=lambda c: repr(c)[:60])
def test_forward_and_stream_match_torch(layer):
    clip = random_clip((9, *FRAMES[layer.num_dims]))
    theirs = torch_pool(layer, clip)
    assert_close(layer.forward({}, clip), theirs)
    assert_close(streamed(layer, clip), theirs)


def test_temporal_dilation_streams_like_torch():
    # Reference defect 4: continual-inference's dilated pools index a d(k-1)+1 buffer
    # modulo k and report a delay d-1 too large. We compare the stream with the plain
    # clip computation, torch.nn.functional.max_pool3d with dilation.
    layer = MaxPool3d((3, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0), dilation=(2, 1, 1))
    clip = random_clip((10, *FRAMES[3]), seed=4)
    with torch.no_grad():
        theirs = from_torch(
            F.max_pool3d(to_torch(clip), (3, 2, 2), (1, 2, 2), (1, 0, 0), (2, 1, 1))
        )
    state = layer.init_state({}, clip[0])
    _, ys, valid = forward_steps(layer, {}, state, clip, pad_end=True)
    assert int(np.argmax(np.asarray(valid))) == layer.delay == 3
    assert_close(valid_outputs(ys, valid), theirs)


def naive_avg_pool(clip, k, s, p, d):
    """Brute-force dilated average pool (zero padding counted) over all but the last axis."""
    x = np.pad(np.asarray(clip), [(q, q) for q in p] + [(0, 0)])
    for axis in range(len(k)):
        n = (x.shape[axis] - d[axis] * (k[axis] - 1) - 1) // s[axis] + 1
        idx = np.arange(n)[:, None] * s[axis] + d[axis] * np.arange(k[axis])[None]
        x = np.take(x, idx, axis=axis).mean(axis=axis + 1)
    return x


def test_avg_pool_temporal_dilation():
    # torch's average pools have no dilation (continual-inference accepts a temporal
    # one): compare with the brute-force sliding window.
    layer = AvgPool2d((3, 2), stride=(1, 1), padding=(1, 1), dilation=(2, 1))
    clip = random_clip((9, *FRAMES[2]), seed=5)
    theirs = naive_avg_pool(clip, (3, 2), (1, 1), (1, 1), (2, 1))
    assert_close(layer.forward({}, clip), theirs)
    assert_close(streamed(layer, clip), theirs)


def torch_adaptive(layer, clip):
    """torch's adaptive pool (time size 1) on every temporal window of the padded clip."""
    k, s, p, d = layer._temporal
    fill = -np.inf if layer.kind == "max" else 0.0
    x = np.pad(np.asarray(clip), [(p, p)] + [(0, 0)] * (clip.ndim - 1), constant_values=fill)
    fn = {
        ("avg", 2): F.adaptive_avg_pool2d,
        ("avg", 3): F.adaptive_avg_pool3d,
        ("max", 2): F.adaptive_max_pool2d,
        ("max", 3): F.adaptive_max_pool3d,
    }[(layer.kind, layer.num_dims)]
    size = tuple(layer.output_size)
    outs = []
    for t in range(0, x.shape[0] - d * (k - 1), s):
        with torch.no_grad():
            outs.append(from_torch(fn(to_torch(x[t : t + d * (k - 1) + 1 : d]), size)))
    return np.concatenate(outs)


@pytest.mark.parametrize(
    "layer",
    [
        AdaptiveAvgPool2d((1, 4), 3, padding=1),
        AdaptiveMaxPool2d((1, None), 2, stride=2, dilation=2),
        AdaptiveAvgPool3d((3, 4), 2),
        AdaptiveMaxPool3d((1, 1, 2), 3, padding=1),
    ],
    ids=lambda c: repr(c)[:60],
)
def test_adaptive_matches_torch(layer):
    clip = random_clip((8, *FRAMES[layer.num_dims]), seed=2)
    theirs = torch_adaptive(layer, clip)
    assert_close(layer.forward({}, clip), theirs)
    assert_close(streamed(layer, clip), theirs)


def test_adaptive_whole_clip_is_torch_adaptive_pool():
    layer = AdaptiveMaxPool3d(1, 4)
    clip = random_clip((4, *FRAMES[3]), seed=3)
    with torch.no_grad():
        theirs = from_torch(F.adaptive_max_pool3d(to_torch(clip), (1, 1, 1)))
    assert_close(layer.forward({}, clip), theirs)


# --------------------------------------------------------------------------- random configs


@st.composite
def pool_configs(draw):
    n = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["max", "avg"]))
    k = [draw(st.integers(1, 3)) for _ in range(n)]
    s = [draw(st.integers(1, 2)) for _ in range(n)]
    p = [draw(st.integers(0, ki // 2)) for ki in k]
    d = [draw(st.integers(1, 2)) if kind == "max" else 1 for _ in range(n)]
    if kind == "max":
        layer = MAX[n](tuple(k), tuple(s), tuple(p), tuple(d))
    else:
        layer = AVG[n](tuple(k), tuple(s), tuple(p), count_include_pad=draw(st.booleans()))
    T = layer.receptive_field + draw(st.integers(0, 5))
    return layer, (T, *FRAMES[n])


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(pool_configs())
def test_random_configs_match_torch(config):
    layer, shape = config
    clip = random_clip(shape, seed=shape[0])
    theirs = torch_pool(layer, clip)
    assert_close(layer.forward({}, clip), theirs)
    assert_close(streamed(layer, clip), theirs)


# --------------------------------------------------------------------------- bad inputs


def test_bad_frames_and_clips():
    layer = MaxPool3d(3, padding=1)
    state = layer.init_state({}, jnp.zeros(FRAMES[3]))
    with pytest.raises(ValueError, match=r"MaxPool3d: expected a frame with 3 dimensions"):
        layer.step({}, state, jnp.zeros(FRAMES[2]))
    with pytest.raises(ValueError, match="one dimension too many"):
        layer.forward({}, jnp.zeros((2, 4, *FRAMES[3])))
    with pytest.raises(TypeError, match="floating-point"):
        layer.step({}, state, jnp.zeros(FRAMES[3], jnp.int32))
    with pytest.raises(ValueError, match="too small for the spatial kernel"):
        MaxPool3d((1, 5, 5)).init_state({}, jnp.zeros((2, 2, C)))
    with pytest.raises(ValueError, match="no output frame fits"):
        AvgPool1d(4).forward({}, jnp.zeros((3, C)))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MaxPool2d(3, padding=2), "at most half the kernel size"),
        (lambda: AvgPool3d((2, 3, 3), padding=(2, 1, 1)), "at most half the kernel size"),
        (lambda: MaxPool2d(2, ceil_mode=True), "ceil_mode=True is not supported"),
        (lambda: AvgPool1d(2, ceil_mode=True), "ceil_mode=True is not supported"),
        (lambda: MaxPool1d(2, return_indices=True), "return_indices"),
        (lambda: MaxPool3d((3, 3)), r"kernel_size must be an int or a tuple of 3 ints"),
        (lambda: AvgPool2d(0), "kernel_size must be >= 1"),
        (lambda: AvgPool2d(2, divisor_override=0), "divisor_override"),
        (lambda: AdaptiveAvgPool3d((2, 1, 1), 3), r"torch's tuple \(1, H_out, W_out\)"),
        (lambda: AdaptiveMaxPool2d(4, 3), r"\(1, W_out\)"),
        (lambda: AdaptiveMaxPool3d((1, 1, 1, 1), 3), "output_size"),
        (lambda: AdaptiveAvgPool2d((1, 0), 3), "positive ints or None"),
        (lambda: AdaptiveAvgPool2d((1, 1), 2, padding=2), "temporal padding must be at most"),
        (lambda: AdaptiveAvgPool2d((1, 1), 0), "temporal_kernel_size must be >= 1, got 0"),
    ],
)
def test_bad_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()
