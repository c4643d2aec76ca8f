"""The contract machinery itself: counters, Delay/Skip, and that the harness catches
broken layers (a harness that cannot fail proves nothing)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cojax as co
from cojax.core import advance_counter, check_array, new_counter
from cojax.layers.window import init_window, push_window
from cojax.testing import verify_contract


@pytest.mark.parametrize(
    "layer",
    [
        co.Delay(0),
        co.Delay(1),
        co.Delay(3),
        co.Delay(2, temporal_fill="replicate"),
        co.Delay(2, auto_shrink=True),
        co.Delay(2, auto_shrink="lagging"),
    ],
    ids=repr,
)
def test_delay_contract(layer):
    verify_contract(layer, (2, 3), check_delay=not layer.auto_shrink)


def test_centered_delay_first_output():
    # A centered shrink lines up with a module of delay 2·d: first output at 2·d.
    layer = co.Delay(2, auto_shrink="centered")
    clip = jnp.arange(10.0)[:, None]
    _, ys, valid = co.forward_steps(layer, {}, layer.init_state({}, clip[0]), clip)
    assert int(np.argmax(np.asarray(valid))) == 4
    np.testing.assert_array_equal(np.asarray(ys)[np.asarray(valid)][:, 0], np.arange(2.0, 8.0))


def test_skip_contract():
    verify_contract(co.Skip(3), (4,), check_delay=False)


@pytest.mark.parametrize("delay,stride", [(0, 1), (3, 1), (0, 3), (2, 4)])
def test_counter_is_bounded_and_periodic(delay, stride):
    count, pattern = new_counter(), []
    for _ in range(delay + 6 * stride):
        valid, count = advance_counter(count, delay, stride)
        pattern.append(bool(valid))
        assert 0 <= int(count) <= delay + stride
    expected = [t >= delay and (t - delay) % stride == 0 for t in range(len(pattern))]
    assert pattern == expected


def test_replicate_window_fills_with_first_frame():
    state = init_window(2, jax.ShapeDtypeStruct((3,), jnp.float32))
    x = jnp.array([1.0, 2.0, 3.0])
    window, frames = push_window(state, x, "replicate")
    np.testing.assert_array_equal(np.asarray(window), np.tile(np.asarray(x), (3, 1)))


# --------------------------------------------------------------------------- errors


def test_check_array_messages():
    layer = co.Delay(1)
    with pytest.raises(TypeError, match="Delay: expected a floating-point frame, got dtype int32"):
        check_array(layer, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="one dimension too many.*jax.vmap"):
        check_array(layer, jnp.zeros((2, 3, 4)), ndim=2, layout="(W, C)")
    with pytest.raises(ValueError, match="expected 4 channels .* got 3"):
        check_array(layer, jnp.zeros((5, 3)), channels=4, layout="(W, C)")


def test_delay_rejects_bad_config():
    with pytest.raises(ValueError, match="Delay: delay must be >= 0"):
        co.Delay(-1)
    with pytest.raises(ValueError, match="temporal_fill must be one of"):
        co.Delay(1, temporal_fill="reflect")
    with pytest.raises(ValueError, match="auto_shrink must be one of"):
        co.Delay(1, auto_shrink="both")
    with pytest.raises(ValueError, match="Skip: steps must be > 0"):
        co.Skip(0)


def test_delay_rejects_int_frames():
    layer = co.Delay(1)
    with pytest.raises(TypeError, match="floating-point"):
        layer.init_state({}, jnp.zeros((3,), jnp.int32))


# --------------------------------------------------------------------------- the harness bites


@dataclasses.dataclass(frozen=True)
class _LateDelay(co.Delay):
    """Claims one frame less delay than it has."""

    @property
    def delay(self) -> int:
        return self.delay_frames - 1


@dataclasses.dataclass(frozen=True)
class _NoFlush(co.Delay):
    """Forgets to release its buffered frames at the end of a clip."""

    def flush(self, params, state, frame):
        return co.Layer.flush(self, params, state, frame)


@dataclasses.dataclass(frozen=True)
class _WrongValue(co.Delay):
    """Emits the right frames scaled by 1.01."""

    def step(self, params, state, frame):
        state, (y, valid) = super().step(params, state, frame)
        return state, (y * 1.01, valid)


@dataclasses.dataclass(frozen=True)
class _NonZeroGaps(co.Delay):
    """Emits garbage instead of zeros before its delay."""

    def step(self, params, state, frame):
        state, (y, valid) = super().step(params, state, frame)
        return state, (y + 1.0, valid)


@pytest.mark.parametrize(
    "broken,match",
    [
        (_LateDelay(2), "first valid output at step 2, but layer.delay = 1"),
        (_NoFlush(2), "pad_end=True emitted"),
        (_WrongValue(2), "step != forward"),
        (_NonZeroGaps(2), "step != forward|invalid steps must emit zeros"),
    ],
)
def test_harness_catches_broken_layers(broken, match):
    with pytest.raises(AssertionError, match=match):
        verify_contract(broken, (3,))
