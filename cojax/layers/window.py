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


def push_window_block(
    state: WindowState, xs: Array, valid_in: Array, fill: str
) -> tuple[Array, Array, Array]:
    """Append the real frames of a block `xs` `(k, ...)` (those marked in `valid_in`).

    Returns `(seq, frames, rank)`: `seq` `(n + k, ...)` is the buffer followed by the
    real frames in order (then the others), so the window of the i-th real frame is
    `seq[i : i + n + 1]`; `frames` is the next buffer (the last n frames of the buffer
    and the real frames); `rank` `(k,)` is each frame's index among the real ones
    (where a block kernel's i-th output lands). All static shapes, exact for any mask.
    """
    buffer, n = state.frames, state.frames.shape[0]
    order = jnp.argsort(jnp.logical_not(valid_in), stable=True)  # real frames first
    compact = xs[order].astype(buffer.dtype)
    real = jnp.sum(valid_in.astype(jnp.int32))
    if fill == "replicate" and n > 0:
        start = jnp.logical_and(frames_seen(state.count) == 0, real > 0)
        buffer = jnp.where(start, jnp.broadcast_to(compact[0], buffer.shape), buffer)
    seq = jnp.concatenate([buffer, compact], axis=0)
    frames = jax.lax.dynamic_slice_in_dim(seq, real, n, axis=0)
    rank = jnp.clip(jnp.cumsum(valid_in.astype(jnp.int32)) - 1, 0, xs.shape[0] - 1)
    return seq, frames, rank
