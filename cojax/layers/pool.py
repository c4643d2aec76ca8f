"""Continual pooling: `AvgPool1d/2d/3d`, `MaxPool1d/2d/3d` and adaptive pools.

For ONE stream, channels-last: clip `(T, *spatial, C)`, frame `(*spatial, C)`; 1d frames
are `(C,)`, 2d frames `(W, C)`, 3d frames `(H, W, C)` (time is torch's first pooled dim).

A step pools the frame spatially, keeps the last `receptive_field - 1` spatially pooled
frames in a `WindowState` ring and reduces every `dilation`-th frame of the window over
time. Max pools pad with -inf and average pools with zeros, as torch does. The clip
`forward` pools all axes in one pass of strided slices, axis after axis (max and sum are
separable over a box window); on XLA:CPU this is ~10x faster than `lax.reduce_window`,
and unlike `reduce_window_max` it has gradients with dilation.

`receptive_field` is `dilation * (kernel - 1) + 1` and the first output comes after
`receptive_field - 1 - padding` frames; continual-inference 1.2.4 reports `dilation *
kernel` and gets dilated pools wrong (specs, defect 4).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cojax.core import (
    Array,
    Layer,
    Params,
    advance_counter,
    advance_counter_block,
    as_int,
    as_int_tuple,
    as_spec,
    check_array,
    check_config,
    empty_outputs,
    field_alias,
    fill_invalid,
    forward_per_clip,
    zero_invalid,
    zero_unless,
)
from cojax.layers.window import WindowState, init_window, push_window, push_window_block

_FRAME_LAYOUTS = {1: "(C,)", 2: "(W, C)", 3: "(H, W, C)"}
_FILL = {"max": -math.inf, "avg": 0.0}


class MaskedWindowState(NamedTuple):
    """A `WindowState` that also marks which buffered frames are real (not padding).

    Used by average pools with `count_include_pad=False` and temporal padding, whose
    divisor counts only the real frames of the window.
    """

    frames: Array  # (n, *pooled_frame_shape)
    count: Array  # int32 scalar, see `cojax.core.advance_counter`
    real: Array  # (n,) bool


PoolState = WindowState | MaskedWindowState


# --------------------------------------------------------------------------- helpers


def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a window (kernel k, stride s, padding p, dilation d) over n."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _tap_counts(n: int, k: int, s: int, p: int, d: int) -> np.ndarray:
    """Per output position, how many of its k taps fall inside [0, n) (not padding)."""
    starts = np.arange(_out_size(n, k, s, p, d)) * s - p
    taps = starts[:, None] + d * np.arange(k)[None, :]
    return ((taps >= 0) & (taps < n)).sum(axis=1)


def _real_counts(shape: Sequence[int], kernel, strides, padding, dilation) -> np.ndarray:
    """Number of real (non-padding) elements of each output window: `(*out_shape, 1)`."""
    counts = np.ones((), np.float64)
    for args in zip(shape, kernel, strides, padding, dilation):
        counts = np.multiply.outer(counts, _tap_counts(*args))
    return counts[..., None]


def _window_pool(x: Array, kind: str, axes, kernel, strides, padding, dilation) -> Array:
    """Max (kind "max") or sum ("avg") over a dilated box window on `axes` of `x`.

    Padding uses the pool's fill (-inf / 0). Each axis is reduced in turn over its k
    strided slices; XLA fuses the slices into one loop per axis.
    """
    pads = [(0, 0)] * x.ndim
    for axis, p in zip(axes, padding):
        pads[axis] = (p, p)
    if any(p for p in padding):
        x = jnp.pad(x, pads, constant_values=_FILL[kind])
    combine = jnp.maximum if kind == "max" else jnp.add
    for axis, k, s, d in zip(axes, kernel, strides, dilation):
        if k == 1 and s == 1:
            continue
        n = _out_size(x.shape[axis], k, s, 0, d)
        stop = s * (n - 1) + 1
        parts = [lax.slice_in_dim(x, j * d, j * d + stop, s, axis) for j in range(k)]
        x = functools.reduce(combine, parts)
    return x


def _adaptive_bins(n: int, m: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling bins: output i covers [floor(i n / m), ceil((i+1) n / m))."""
    return [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]


def _adaptive_pool_axis(x: Array, kind: str, axis: int, m: int) -> Array:
    n = x.shape[axis]
    if m == n:
        return x
    reduce = jnp.max if kind == "max" else jnp.mean
    parts = [
        reduce(lax.slice_in_dim(x, lo, hi, axis=axis), axis=axis, keepdims=True)
        for lo, hi in _adaptive_bins(n, m)
    ]
    return jnp.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------- base


class _Pool(Layer):
    """Shared streaming machinery of all pools (subclasses are frozen dataclasses).

    Subclasses set `num_dims` (1, 2, 3) and `kind` ("max"/"avg") and implement
    `_temporal` -> (k_t, s_t, p_t, d_t) and `_pool_space(x)` for `x` of shape
    `(..., *spatial, C)` (for "avg" pools a spatial mean, or a sum when a fixed
    divisor is applied at the end).
    """

    num_dims: ClassVar[int] = 1
    kind: ClassVar[str] = "max"

    @property
    def _temporal(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def _pool_space(self, x: Array) -> Array:
        raise NotImplementedError

    def _time_divisor(self) -> int:
        """The temporal divisor of an average pool when it is a constant."""
        return self._temporal[0]

    @property
    def _masks_padding(self) -> bool:
        """Whether the temporal divisor counts real frames only (then state is masked)."""
        return False

    # --- static temporal metadata --------------------------------------------
    @property
    def receptive_field(self) -> int:
        k, _, _, d = self._temporal
        return d * (k - 1) + 1

    @property
    def stride(self) -> int:
        return self._temporal[1]

    @property
    def padding(self) -> int:
        return self._temporal[2]

    # --- checks ---------------------------------------------------------------
    def _check_temporal(self) -> None:
        k, _, p, _ = self._temporal
        check_config(
            p <= k // 2,
            self,
            f"temporal padding must be at most half the temporal kernel size (as torch "
            f"requires), got padding {p} for kernel size {k}.",
        )

    def check_frame(self, frame) -> None:
        check_array(self, frame, ndim=self.num_dims, layout=_FRAME_LAYOUTS[self.num_dims])

    def check_clip(self, clip) -> None:
        super().check_clip(clip)
        T = clip.shape[0]
        check_config(
            T + 2 * self.padding >= self.receptive_field,
            self,
            f"the clip has {T} frames, fewer than the receptive field "
            f"{self.receptive_field} minus twice the temporal padding {self.padding}; "
            f"no output frame fits.",
        )

    def _pool_clip(self, clip: Array) -> Array:
        raise NotImplementedError

    @property
    def end_fill(self) -> str:
        return "-inf" if self.kind == "max" else "zeros"

    def forward_train(self, params, clips, mask, key):
        if not self._masks_padding:
            return super().forward_train(params, clips, mask, key)
        # count_include_pad=False counts the real frames of each (truncated) clip:
        # pool the zero-filled clip and the mask of real positions; the layer's own
        # divisor cancels in the ratio, leaving sum(x) / count over the real frames.
        real = fill_invalid(jnp.ones_like(clips), mask, "zeros")
        num, out_mask, _ = forward_per_clip(self, params, clips, mask)
        den = jax.vmap(lambda c: self.forward(params, c))(real)
        ys = num / jnp.where(den > 0, den, 1).astype(num.dtype)
        return zero_invalid(ys, out_mask), out_mask, params

    def forward(self, params: Params, clip: Array) -> Array:
        """The torch pool on the clip `(T, *spatial, C)` -> `(T_out, *spatial_out, C)`."""
        return _jit_pool_clip(self, clip)

    # --- streaming ------------------------------------------------------------
    def init_state(self, params: Params, frame) -> PoolState:
        """A ring of `receptive_field - 1` spatially pooled frames of start padding."""
        pooled = jax.eval_shape(self._pool_space, as_spec(frame))
        n = self.receptive_field - 1
        window = init_window(n, pooled, _FILL[self.kind], (self.delay, self.stride))
        if self._masks_padding:
            return MaskedWindowState(window.frames, window.count, jnp.zeros((n,), bool))
        return window

    def step(self, params: Params, state: PoolState, frame: Array):
        """Frame `(*spatial, C)` in; `(state, (y, valid))` out, `y` `(*spatial_out, C)`."""
        return _jit_advance(self, state, frame, True)

    def _advance(self, state, frame, real: bool):
        """One step; `real=False` marks `frame` as end padding (for the divisor)."""
        _, s, _, d = self._temporal
        window, frames = push_window(state, self._pool_space(frame), "zeros")
        taps = window[::d]
        valid, count = advance_counter(state.count, self.delay, s)
        new_state = state._replace(frames=frames, count=count)
        if self.kind == "max":
            y = jnp.max(taps, axis=0)
        elif self._masks_padding:
            marks = jnp.concatenate([state.real, jnp.full((1,), real)])
            new_state = new_state._replace(real=marks[1:])
            y = jnp.sum(taps, axis=0) / jnp.sum(marks[::d]).astype(taps.dtype)
        else:
            y = jnp.sum(taps, axis=0) / self._time_divisor()
        return new_state, (zero_unless(valid, y), valid)

    def step_block_masked(self, params: Params, state: PoolState, frames: Array, valid_in):
        """k frames at once: the buffered window and the block's real frames reduced
        over time as one clip computation (stride 1, the strided outputs masked)."""
        if self._masks_padding:  # the divisor's marks: step by step
            return super().step_block_masked(params, state, frames, valid_in)
        k_t, s, _, d = self._temporal
        k = frames.shape[0]
        seq, buffer, rank = push_window_block(state, self._pool_space(frames), valid_in, "zeros")
        taps = jnp.stack([seq[j * d : j * d + k] for j in range(k_t)])
        if self.kind == "max":
            ys = jnp.max(taps, axis=0)
        else:
            ys = jnp.sum(taps, axis=0) / self._time_divisor()
        valid, count = advance_counter_block(state.count, self.delay, s, valid_in)
        new_state = state._replace(frames=buffer, count=count)
        return new_state, (zero_invalid(ys[rank], valid), valid)

    def flush(self, params: Params, state: PoolState, frame) -> tuple[Array, Array]:
        """Feed the `padding` frames of end padding (-inf / zeros)."""
        if self.padding == 0:
            return empty_outputs(self, params, state, frame)
        fill = jnp.full(frame.shape, _FILL[self.kind], frame.dtype)

        def body(s, _):
            return _jit_advance(self, s, fill, False)

        _, (ys, valid) = lax.scan(body, state, None, length=self.padding)
        return ys, valid


# One compiled program per layer and shape when called eagerly (inlined under jit);
# without it every slice of an eager `forward` is compiled on its own.
@functools.partial(jax.jit, static_argnums=0)
def _jit_pool_clip(layer: _Pool, clip: Array) -> Array:
    return layer._pool_clip(clip)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_advance(layer: _Pool, state, frame: Array, real: bool):
    return layer._advance(state, frame, real)


# --------------------------------------------------------------------------- window pools


@dataclasses.dataclass(frozen=True, init=False)
class _WindowPoolNd(_Pool):
    """Pool over a (dilated) box window; tuples are temporal first."""

    kernel_size: tuple[int, ...]
    stride_nd: tuple[int, ...]
    padding_nd: tuple[int, ...]
    dilation_nd: tuple[int, ...]

    def _configure(self, kernel_size, stride, padding, dilation, fields) -> None:
        """Set the tuples from torch's arguments or their field spellings `fields`
        (`stride_nd`, `padding_nd`, `dilation_nd`: what `repr`/`replace` pass)."""
        stride = field_alias(self, "stride", stride, None, "stride_nd", fields[0])
        padding = field_alias(self, "padding", padding, 0, "padding_nd", fields[1])
        dilation = field_alias(self, "dilation", dilation, 1, "dilation_nd", fields[2])
        n = self.num_dims
        k = as_int_tuple(self, "kernel_size", kernel_size, n, 1)
        s = k if stride is None else as_int_tuple(self, "stride", stride, n, 1)
        p = as_int_tuple(self, "padding", padding, n, 0)
        d = as_int_tuple(self, "dilation", dilation, n, 1)
        for name, value in zip(
            ("kernel_size", "stride_nd", "padding_nd", "dilation_nd"), (k, s, p, d)
        ):
            object.__setattr__(self, name, value)
        check_config(
            all(pi <= ki // 2 for pi, ki in zip(p, k)),
            self,
            f"padding must be at most half the kernel size in every dim (as torch "
            f"requires), got padding {p} for kernel_size {k}.",
        )

    @property
    def _temporal(self) -> tuple[int, int, int, int]:
        return self.kernel_size[0], self.stride_nd[0], self.padding_nd[0], self.dilation_nd[0]

    def _spatial_args(self):
        return self.kernel_size[1:], self.stride_nd[1:], self.padding_nd[1:], self.dilation_nd[1:]

    def check_frame(self, frame) -> None:
        super().check_frame(frame)
        spatial = tuple(frame.shape[:-1])
        outs = [_out_size(n, *args) for n, *args in zip(spatial, *self._spatial_args())]
        check_config(
            all(o >= 1 for o in outs),
            self,
            f"frame {_FRAME_LAYOUTS[self.num_dims]} of shape {tuple(frame.shape)} is too "
            f"small for the spatial kernel {self.kernel_size[1:]} with padding "
            f"{self.padding_nd[1:]} and dilation {self.dilation_nd[1:]}.",
        )

    def _pool_space(self, x: Array) -> Array:
        nd = self.num_dims - 1
        axes = range(x.ndim - 1 - nd, x.ndim - 1)
        pooled = _window_pool(x, self.kind, axes, *self._spatial_args())
        if self.kind == "max" or self._fixed_divisor:
            return pooled
        return pooled / self._space_divisor(x.shape[x.ndim - 1 - nd : -1]).astype(x.dtype)

    # Average pools override these; max pools never divide.
    @property
    def _fixed_divisor(self) -> bool:
        return False

    def _space_divisor(self, spatial: Sequence[int]) -> np.ndarray:
        return np.asarray(float(np.prod(self.kernel_size[1:], dtype=np.int64)))

    def _clip_divisor(self, shape: Sequence[int]) -> np.ndarray:
        return np.asarray(float(np.prod(self.kernel_size, dtype=np.int64)))

    def _pool_clip(self, clip: Array) -> Array:
        """torch's pool on the clip `(T, *spatial, C)` -> `(T_out, *spatial_out, C)`."""
        axes = range(clip.ndim - 1)
        args = (self.kernel_size, self.stride_nd, self.padding_nd, self.dilation_nd)
        pooled = _window_pool(clip, self.kind, axes, *args)
        if self.kind == "max":
            return pooled
        return pooled / self._clip_divisor(clip.shape[:-1]).astype(clip.dtype)


def _reject(layer: Layer, ceil_mode: bool, return_indices: bool = False) -> None:
    check_config(
        not ceil_mode,
        layer,
        "ceil_mode=True is not supported: a continual pool cannot emit the partial "
        "window past the end of an endless stream. Use ceil_mode=False (and add end "
        "padding if needed).",
    )
    check_config(not return_indices, layer, "return_indices=True is not supported.")


@dataclasses.dataclass(frozen=True, init=False)
class _MaxPoolNd(_WindowPoolNd):
    """Continual max pooling; torch's arguments, `stride` defaults to `kernel_size`.

    Padding is -inf (in time: the start fill of the ring and the end padding of
    `flush`). Clip `(T, *spatial, C)` -> `(T_out, *spatial_out, C)`.
    """

    kind: ClassVar[str] = "max"

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        *,
        stride_nd: Sequence[int] | None = None,
        padding_nd: Sequence[int] | None = None,
        dilation_nd: Sequence[int] | None = None,
    ) -> None:
        _reject(self, ceil_mode, return_indices)
        self._configure(
            kernel_size, stride, padding, dilation, (stride_nd, padding_nd, dilation_nd)
        )


@dataclasses.dataclass(frozen=True, init=False)
class _AvgPoolNd(_WindowPoolNd):
    """Continual average pooling; torch's arguments, `stride` defaults to `kernel_size`.

    Padding is zeros, counted in the mean when `count_include_pad` (torch's default);
    `divisor_override` replaces the divisor. `dilation` (keyword only, not in torch's
    average pools; continual-inference accepts a temporal one) dilates the window.
    Clip `(T, *spatial, C)` -> `(T_out, *spatial_out, C)`.
    """

    count_include_pad: bool
    divisor_override: int | None

    kind: ClassVar[str] = "avg"

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        *,
        dilation: int | Sequence[int] = 1,
        stride_nd: Sequence[int] | None = None,
        padding_nd: Sequence[int] | None = None,
        dilation_nd: Sequence[int] | None = None,
    ) -> None:
        _reject(self, ceil_mode)
        if divisor_override is not None:
            divisor_override = as_int(self, "divisor_override", divisor_override, 1)
        object.__setattr__(self, "count_include_pad", count_include_pad)
        object.__setattr__(self, "divisor_override", divisor_override)
        self._configure(
            kernel_size, stride, padding, dilation, (stride_nd, padding_nd, dilation_nd)
        )

    @property
    def _fixed_divisor(self) -> bool:
        return self.divisor_override is not None

    @property
    def _masks_padding(self) -> bool:
        return not self.count_include_pad and not self._fixed_divisor and self.padding > 0

    def _time_divisor(self) -> int:
        return self.divisor_override or self.kernel_size[0]

    def _space_divisor(self, spatial: Sequence[int]) -> np.ndarray:
        if self.count_include_pad:
            return super()._space_divisor(spatial)
        return _real_counts(spatial, *self._spatial_args())

    def _clip_divisor(self, shape: Sequence[int]) -> np.ndarray:
        if self.divisor_override is not None:
            return np.asarray(float(self.divisor_override))
        if self.count_include_pad:
            return super()._clip_divisor(shape)
        args = (self.kernel_size, self.stride_nd, self.padding_nd, self.dilation_nd)
        return _real_counts(shape, *args)


@dataclasses.dataclass(frozen=True, init=False)
class MaxPool1d(_MaxPoolNd):
    """Continual `torch.nn.MaxPool1d`: clip `(T, C)`, frame `(C,)`."""

    num_dims: ClassVar[int] = 1


@dataclasses.dataclass(frozen=True, init=False)
class MaxPool2d(_MaxPoolNd):
    """Continual `torch.nn.MaxPool2d` over (T, W): clip `(T, W, C)`, frame `(W, C)`."""

    num_dims: ClassVar[int] = 2


@dataclasses.dataclass(frozen=True, init=False)
class MaxPool3d(_MaxPoolNd):
    """Continual `torch.nn.MaxPool3d` over (T, H, W): clip `(T, H, W, C)`, frame `(H, W, C)`."""

    num_dims: ClassVar[int] = 3


@dataclasses.dataclass(frozen=True, init=False)
class AvgPool1d(_AvgPoolNd):
    """Continual `torch.nn.AvgPool1d`: clip `(T, C)`, frame `(C,)`."""

    num_dims: ClassVar[int] = 1


@dataclasses.dataclass(frozen=True, init=False)
class AvgPool2d(_AvgPoolNd):
    """Continual `torch.nn.AvgPool2d` over (T, W): clip `(T, W, C)`, frame `(W, C)`."""

    num_dims: ClassVar[int] = 2


@dataclasses.dataclass(frozen=True, init=False)
class AvgPool3d(_AvgPoolNd):
    """Continual `torch.nn.AvgPool3d` over (T, H, W): clip `(T, H, W, C)`, frame `(H, W, C)`."""

    num_dims: ClassVar[int] = 3


# --------------------------------------------------------------------------- adaptive


@dataclasses.dataclass(frozen=True, init=False)
class _AdaptivePoolNd(_Pool):
    """Adaptive spatial pooling to `output_size`, then a temporal window pool.

    `output_size` is torch's tuple with time first, which must be 1 (e.g. `(1, 7, 7)`),
    or the spatial sizes only (`(7, 7)`); `None` keeps an input size. Time is pooled
    over windows of `temporal_kernel_size` frames (continual-inference's `kernel_size`)
    with `stride`, `padding` (-inf / zeros, counted in the mean) and `dilation`: on a
    clip of exactly `temporal_kernel_size` frames, `forward` is torch's adaptive pool.
    Clip `(T, *spatial, C)` -> `(T_out, *output_size[1:], C)`.
    """

    output_size: tuple[int | None, ...]
    temporal_kernel_size: int
    temporal_stride: int
    temporal_padding: int
    temporal_dilation: int

    def __init__(
        self,
        output_size: int | Sequence[int | None],
        temporal_kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        *,
        temporal_stride: int | None = None,
        temporal_padding: int | None = None,
        temporal_dilation: int | None = None,
    ) -> None:
        object.__setattr__(self, "output_size", self._parse_output_size(output_size))
        for name, value, minimum in (
            ("temporal_kernel_size", temporal_kernel_size, 1),
            (
                "temporal_stride",
                field_alias(self, "stride", stride, 1, "temporal_stride", temporal_stride),
                1,
            ),
            (
                "temporal_padding",
                field_alias(self, "padding", padding, 0, "temporal_padding", temporal_padding),
                0,
            ),
            (
                "temporal_dilation",
                field_alias(self, "dilation", dilation, 1, "temporal_dilation", temporal_dilation),
                1,
            ),
        ):
            object.__setattr__(self, name, as_int(self, name, value, minimum))
        self._check_temporal()

    def _parse_output_size(self, output_size) -> tuple[int | None, ...]:
        n = self.num_dims
        torch_form, spatial_form = {
            2: ("(1, W_out)", "(W_out,)"),
            3: ("(1, H_out, W_out)", "(H_out, W_out)"),
        }[n]
        hint = (
            f"output_size must be torch's tuple {torch_form} (time is pooled over "
            f"temporal_kernel_size frames into 1) or the spatial {spatial_form}"
        )
        if output_size is None or isinstance(output_size, int):
            sizes = (output_size,) * n
        else:
            sizes = tuple(output_size)
            if len(sizes) == n - 1:
                sizes = (1, *sizes)
        check_config(len(sizes) == n, self, f"{hint}; got {output_size!r}.")
        check_config(sizes[0] == 1, self, f"{hint}; got {output_size!r} (time size != 1).")
        check_config(
            all(m is None or (isinstance(m, int) and m >= 1) for m in sizes[1:]),
            self,
            f"{hint}; spatial sizes must be positive ints or None, got {output_size!r}.",
        )
        return sizes

    @property
    def _temporal(self) -> tuple[int, int, int, int]:
        return (
            self.temporal_kernel_size,
            self.temporal_stride,
            self.temporal_padding,
            self.temporal_dilation,
        )

    def check_frame(self, frame) -> None:
        super().check_frame(frame)
        check_config(
            all(n >= 1 for n in frame.shape[:-1]),
            self,
            f"frame of shape {tuple(frame.shape)} has an empty spatial dimension.",
        )

    def _pool_space(self, x: Array) -> Array:
        sizes = self.output_size[1:]
        first = x.ndim - 1 - len(sizes)
        for i, m in enumerate(sizes):
            if m is not None:
                x = _adaptive_pool_axis(x, self.kind, first + i, m)
        return x

    def _pool_clip(self, clip: Array) -> Array:
        """Adaptive spatial pool of every frame, then the temporal window pool."""
        k, s, p, d = self._temporal
        pooled = _window_pool(self._pool_space(clip), self.kind, (0,), (k,), (s,), (p,), (d,))
        return pooled if self.kind == "max" else pooled / k


@dataclasses.dataclass(frozen=True, init=False)
class AdaptiveAvgPool2d(_AdaptivePoolNd):
    """Continual `torch.nn.AdaptiveAvgPool2d((1, W_out))`: clip `(T, W, C)`, frame `(W, C)`."""

    num_dims: ClassVar[int] = 2
    kind: ClassVar[str] = "avg"


@dataclasses.dataclass(frozen=True, init=False)
class AdaptiveAvgPool3d(_AdaptivePoolNd):
    """Continual `torch.nn.AdaptiveAvgPool3d((1, H_out, W_out))`: frame `(H, W, C)`."""

    num_dims: ClassVar[int] = 3
    kind: ClassVar[str] = "avg"


@dataclasses.dataclass(frozen=True, init=False)
class AdaptiveMaxPool2d(_AdaptivePoolNd):
    """Continual `torch.nn.AdaptiveMaxPool2d((1, W_out))`: clip `(T, W, C)`, frame `(W, C)`."""

    num_dims: ClassVar[int] = 2
    kind: ClassVar[str] = "max"


@dataclasses.dataclass(frozen=True, init=False)
class AdaptiveMaxPool3d(_AdaptivePoolNd):
    """Continual `torch.nn.AdaptiveMaxPool3d((1, H_out, W_out))`: frame `(H, W, C)`."""

    num_dims: ClassVar[int] = 3
    kind: ClassVar[str] = "max"
