"""`Delay` and `Skip`: shift a stream in time, or drop its first frames."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cojax.core import (
    Counter,
    Layer,
    NoState,
    advance_counter,
    advance_counter_block,
    as_spec,
    check_config,
    empty_outputs,
    new_counter,
    nonnegative,
    scan_fill,
    zero_invalid,
    zero_unless,
)
from cojax.layers.window import (
    TEMPORAL_FILLS,
    end_fill_frame,
    init_window,
    push_window,
    push_window_block,
)

SHRINKS = (False, True, "centered", "lagging")


@dataclasses.dataclass(frozen=True)
class Delay(Layer):
    """Delay a stream by `delay` frames (identity in `forward`).

    `auto_shrink` makes `forward` drop frames so that a residual path lines up with a
    module that shortens the clip: True/"centered" drops `delay` frames at both ends
    (and steps emit from frame `2 * delay`), "lagging" drops the last `delay` frames.
    Frames: any shape `(*F)`; clip `(T, *F)`.
    """

    delay_frames: int
    temporal_fill: str = "zeros"
    auto_shrink: bool | str = False

    def __post_init__(self):
        check_config(self.delay_frames >= 0, self, f"delay must be >= 0, got {self.delay_frames}.")
        check_config(
            self.temporal_fill in TEMPORAL_FILLS,
            self,
            f"temporal_fill must be one of {TEMPORAL_FILLS}, got {self.temporal_fill!r}.",
        )
        check_config(
            self.auto_shrink in SHRINKS,
            self,
            f"auto_shrink must be one of {SHRINKS}, got {self.auto_shrink!r}.",
        )

    @property
    def delay(self) -> int:
        return self.delay_frames

    @property
    def receptive_field(self) -> int:
        return self.delay_frames + 1

    @property
    def alignment(self) -> int:
        """The output at step t is input frame t - delay, whatever the shrink."""
        return self.delay_frames

    @property
    def _centered(self) -> bool:
        return self.auto_shrink is True or self.auto_shrink == "centered"

    @property
    def _first_output(self) -> int:
        return 2 * self.delay_frames if self._centered else self.delay_frames

    def output_length(self, n):
        d = self.delay_frames
        if not self.auto_shrink or d == 0:
            return n
        return nonnegative(n - d if self.auto_shrink == "lagging" else n - 2 * d)

    def forward(self, params, clip):
        d = self.delay_frames
        if not self.auto_shrink or d == 0:
            return clip
        if self.auto_shrink == "lagging":
            return clip[: clip.shape[0] - d]
        return clip[d : clip.shape[0] - d]

    def init_state(self, params, frame):
        if self.delay_frames == 0:
            return NoState()
        return init_window(self.delay_frames, as_spec(frame), schedule=(self._first_output, 1))

    def step(self, params, state, frame):
        if self.delay_frames == 0:
            return state, (frame, jnp.ones((), bool))
        window, frames = push_window(state, frame, self.temporal_fill)
        valid, count = advance_counter(state.count, self._first_output, 1)
        return state._replace(frames=frames, count=count), (zero_unless(valid, window[0]), valid)

    def step_block_masked(self, params, state, frames, valid_in):
        if self.delay_frames == 0:
            return state, (zero_invalid(frames, valid_in), valid_in)
        # The i-th real frame's output is the oldest frame of its window, seq[i].
        seq, buffer, rank = push_window_block(state, frames, valid_in, self.temporal_fill)
        valid, count = advance_counter_block(state.count, self._first_output, 1, valid_in)
        ys = seq[: frames.shape[0]][rank]
        return state._replace(frames=buffer, count=count), (zero_invalid(ys, valid), valid)

    def flush(self, params, state, frame):
        if self.delay_frames == 0 or self.auto_shrink:
            return empty_outputs(self, params, state, frame)
        fill = end_fill_frame(state, frame, self.temporal_fill)
        return scan_fill(self, params, state, fill, self.delay_frames)


@dataclasses.dataclass(frozen=True)
class Skip(Layer):
    """Drop the first `steps` frames: `forward` returns `clip[steps:]`.

    Reports delay 0 and receptive field 1 like the reference, although steps emit
    nothing for the first `steps` frames.
    """

    steps: int

    def __post_init__(self):
        check_config(self.steps > 0, self, f"steps must be > 0, got {self.steps}.")

    @property
    def delay(self) -> int:
        return 0

    def output_length(self, n):
        return nonnegative(n - self.steps)

    def forward(self, params, clip):
        return jax.tree_util.tree_map(lambda c: c[self.steps :], clip)

    def init_state(self, params, frame):
        return Counter(count=new_counter(self.steps, 1))

    def step(self, params, state, frame):
        valid, count = advance_counter(state.count, self.steps, 1)
        return Counter(count=count), (zero_unless(valid, frame), valid)

    def step_block_masked(self, params, state, frames, valid_in):
        valid, count = advance_counter_block(state.count, self.steps, 1, valid_in)
        return Counter(count=count), (zero_invalid(frames, valid), valid)
