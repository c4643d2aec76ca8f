"""`RecyclingPositionalEncoding`: add one row of a cyclic table of embeddings per frame.

The continual transformers' positional encoding (Hedegaard et al., ICLR 2023): frame t
of a stream gets `pe[t mod num_embeds]`, so an endless stream recycles a finite table.
The table is learned, or the fixed "cyclic positional encoding" of Ma et al. (2021,
arXiv 2110.02544), computed by `cyclic_positional_table`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cojax.core import Array, Layer, Params, check_array, check_config, layer_name

# Resolution of the continuous pattern that the table's rows are sampled from.
_GRID_STEP = 0.01


class PositionState(NamedTuple):
    """State of `RecyclingPositionalEncoding`: the table row of the next frame."""

    index: Array  # int32 scalar in [0, num_embeds)


# --------------------------------------------------------------------------- fixed table


def _column_period(column: int, num_embeds: int, embed_dim: int) -> int:
    """The period (in rows) of one column; columns share periods in groups of three."""
    half = embed_dim // 2
    base = np.power(float(num_embeds), 1.0 / half)
    periods = np.linspace(base, num_embeds, half).astype(np.int64)  # floor (all >= 1)
    group = column // 3 * 3 + 1
    return int(periods[group] if group < half else periods[-1])


def _cyclic_column(column: int, num_embeds: int, embed_dim: int) -> np.ndarray:
    """One column of the raw (un-pooled) cyclic pattern, float64 `(num_embeds,)`."""
    half = embed_dim // 2
    period = _column_period(column, num_embeds, embed_dim)
    if num_embeds > period:
        extent = np.ceil(num_embeds / period) * period  # whole periods covering the rows
    else:
        extent = period = num_embeds
    # The rows sample a fine grid over [0, extent] at evenly spread grid points.
    grid = np.arange(0.0, extent + _GRID_STEP, _GRID_STEP)
    picks = np.linspace(0, len(grid) - 1, num_embeds + 1).astype(np.int64)[:num_embeds]
    z = grid[picks]
    omega = 2 * np.pi / period
    wave_period = 2 * np.pi / omega
    phase = 0.0 if column <= half else 2 * np.pi * (half - column) / half
    # A triangle fold of z (period 2 * wave_period) makes the pattern run forth and back.
    folded = np.abs(np.mod(z, 2 * wave_period) - wave_period)
    wave = np.cos if column % 2 else np.sin
    return wave(omega * folded + phase)


@functools.lru_cache(maxsize=64)
def _cached_table(num_embeds: int, embed_dim: int) -> np.ndarray:
    raw = np.stack([_cyclic_column(c, num_embeds, embed_dim) for c in range(embed_dim)], 1)
    raw = raw.astype(np.float32).astype(np.float64)
    # Mean over the 5 cyclic neighbours of each row, then remove each column's mean.
    pooled = sum(np.roll(raw, -shift, axis=0) for shift in range(-2, 3)) / 5.0
    table = (pooled - raw.mean(axis=0)).astype(np.float32)
    table.flags.writeable = False
    return table


def cyclic_positional_table(num_embeds: int, embed_dim: int) -> np.ndarray:
    """The fixed cyclic positional encoding of Ma et al. (2021): `(num_embeds, embed_dim)`.

    float32, deterministic in `(num_embeds, embed_dim)`; equal (to float32 round-off)
    to continual-inference's `CyclicPositionalEncoding(num_embeds, embed_dim).pattern`
    (with its default 5-row mean pooling). Needs `num_embeds >= 1`, `embed_dim >= 2`.
    """
    if int(num_embeds) < 1:
        raise ValueError(f"cyclic_positional_table: num_embeds must be >= 1, got {num_embeds}.")
    if int(embed_dim) < 2:
        raise ValueError(
            f"cyclic_positional_table: embed_dim must be >= 2 (the pattern pairs columns; "
            f"it is undefined for {embed_dim}), got {embed_dim}."
        )
    return np.array(_cached_table(int(num_embeds), int(embed_dim)))


# --------------------------------------------------------------------------- the layer


@dataclasses.dataclass(frozen=True)
class RecyclingPositionalEncoding(Layer):
    """`y[t] = x[t] + pe[(t + offset) mod num_embeds]`; the reference's co module.

    Frames `(embed_dim,)`, clips `(T, embed_dim)` with `T <= num_embeds`. The table `pe`
    `(num_embeds, embed_dim)` is the param "embedding" (`learned=True`, drawn N(0, 1)
    like `nn.Embedding`) or the constant `cyclic_positional_table` (`learned=False`,
    params `{}`). A step adds `pe[index]` and advances `index` modulo `num_embeds`;
    a fresh state starts at row 0, like `forward` with `offset=0`.

    The reference shifts the start row of each training `forward` by a hidden mutable
    counter (`forward_update_index_steps`). cojax's `forward` is stateless: pass the
    start row as `offset` instead (e.g. a random integer per batch), which is what the
    reference's forward computes after its counter has reached `offset`.
    The recommended `num_embeds` for windows of N tokens is `2 * N - 1`. Unlike the
    reference, `forward` accepts clips longer than `num_embeds`: the rows wrap exactly
    as the steps over that stream do (any N <= num_embeds consecutive frames still see
    distinct rows).
    """

    embed_dim: int
    num_embeds: int
    learned: bool = True

    def __post_init__(self):
        check_config(self.embed_dim >= 1, self, f"embed_dim must be >= 1, got {self.embed_dim}.")
        check_config(self.num_embeds >= 1, self, f"num_embeds must be >= 1, got {self.num_embeds}.")
        check_config(
            isinstance(self.learned, bool), self, f"learned must be a bool, got {self.learned!r}."
        )
        check_config(
            self.learned or self.embed_dim >= 2,
            self,
            f"the fixed cyclic table needs embed_dim >= 2, got {self.embed_dim}. "
            "Use learned=True for a single channel.",
        )

    def init(self, key: Array) -> Params:
        if not self.learned:
            return {}
        shape = (self.num_embeds, self.embed_dim)
        return {"embedding": jax.random.normal(key, shape, jnp.float32)}

    def embeddings(self, params: Params) -> Array:
        """The table `pe`, `(num_embeds, embed_dim)`."""
        if not self.learned:
            return jnp.asarray(_cached_table(self.num_embeds, self.embed_dim))
        table = params.get("embedding") if isinstance(params, dict) else None
        expected = (self.num_embeds, self.embed_dim)
        if table is None or tuple(table.shape) != expected:
            got = "nothing" if table is None else f"shape {tuple(table.shape)}"
            raise ValueError(
                f"{layer_name(self)}: expected params {{'embedding': array of shape "
                f"{expected}}}, got {got}. Create them with layer.init(key)."
            )
        return table

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, ndim=1, channels=self.embed_dim, layout="(E,)")

    def check_clip(self, clip: Any) -> None:
        check_array(self, clip, ndim=2, channels=self.embed_dim, what="clip", layout="(T, E)")

    def forward(self, params: Params, clip: Array, offset: int | Array = 0) -> Array:
        """`clip + pe[(arange(T) + offset) mod num_embeds]`; `offset` an int scalar."""
        offset = jnp.asarray(offset)
        if offset.ndim != 0 or not jnp.issubdtype(offset.dtype, jnp.integer):
            raise TypeError(
                f"{layer_name(self)}: offset must be an integer scalar, got dtype "
                f"{offset.dtype} and shape {offset.shape}."
            )
        rows = (jnp.arange(clip.shape[0]) + offset % self.num_embeds) % self.num_embeds
        return clip + self.embeddings(params)[rows].astype(clip.dtype)

    def init_state(self, params: Params, frame: Any) -> PositionState:
        return PositionState(index=jnp.zeros((), jnp.int32))

    def step(self, params: Params, state: PositionState, frame: Array):
        y = frame + self.embeddings(params)[state.index].astype(frame.dtype)
        index = (state.index + 1) % self.num_embeds
        return PositionState(index=index.astype(jnp.int32)), (y, jnp.ones((), bool))
