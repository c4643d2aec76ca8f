"""A per-stream buffer of the last `n` frames: the state of temporal kernels."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cojax.core import Array, frames_seen, new_counter

TEMPORAL_FILLS = ("zeros", "replicate")


class WindowState(NamedTuple):
    """The last `n` input frames, oldest first, and the number of frames seen."""

    frames: Array  # (n, *frame_shape)
    count: Array  # int32 scalar or `Schedule`, see `cojax.core.advance_counter`


def init_window(
    n: int, frame: jax.ShapeDtypeStruct, fill_value: float = 0.0, schedule: tuple = ()
) -> WindowState:
    """A window of `n` frames filled with `fill_value` (the start padding); the
    counter is a `Schedule` of `schedule = (delay, stride)` when given."""
    frames = jnp.full((n, *frame.shape), fill_value, frame.dtype)
    return WindowState(frames=frames, count=new_counter(*schedule))


def push_window(state: WindowState, x: Array, fill: str) -> tuple[Array, Array]:
    """Append frame `x`: returns the full window `(n + 1, ...)` and the next buffer.

    With `fill == "replicate"` the start padding is the first frame itself, written
    into the buffer when the first frame arrives (replicate padding of the input).
    """
    frames = state.frames
    if fill == "replicate" and frames.shape[0] > 0:
        first = jnp.broadcast_to(x, frames.shape).astype(frames.dtype)
        frames = jnp.where(frames_seen(state.count) == 0, first, frames)
    window = jnp.concatenate([frames, x[None].astype(frames.dtype)], axis=0)
    return window, window[1:]


def end_fill_frame(state: WindowState, like: Array, fill: str, fill_value: float = 0.0):
    """The frame that pads the end of a stream: zeros/`fill_value`, or the last frame."""
    if fill == "replicate" and state.frames.shape[0] > 0:
        return state.frames[-1]
    return jnp.full(like.shape, fill_value, like.dtype)
