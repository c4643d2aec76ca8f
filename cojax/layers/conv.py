"""Continual convolutions `Conv1d`, `Conv2d`, `Conv3d` (time is the first torch axis).

One generic layer over 0, 1 or 2 spatial dimensions. For ONE stream, channels-last:
clip `(T, *spatial, C_in)`, frame `(*spatial, C_in)`; `Conv1d` frames are `(C,)`,
`Conv2d` frames `(W, C)`, `Conv3d` frames `(H, W, C)`. Beyond the reference: temporal
dilation (receptive field `d_t * (k_t - 1) + 1`, every `d_t`-th frame of the window).

Two step formulations (`step_path`):

- "window": the state is a ring of the last `receptive_field - 1` input frames
  (`WindowState`, stored spatially padded). A step appends the new frame and runs one
  *window kernel* `(k_t frames) -> output frame`.
- "partials" (dense kernels, groups 1, temporal stride 1, zero temporal fill): the state
  holds the partial sums of the next `receptive_field - 1` outputs (`PartialSums`). A
  step convolves only the new frame with all k_t temporal taps at once
  (`C_in -> k_t * C_out`, one spatial conv) and adds each tap's share to the output it
  belongs to. No window is copied or folded per step; at 64 streams of the anchor layer
  this runs at the speed of the bare convolution (experiments/xla_conv_wall.py).

The clip `forward` takes the k_t strided temporal views of the padded clip and runs the
window kernel batched over all T_out windows, so the clip path costs per output what a
step costs. The kernel is chosen per configuration (measurements:
experiments/bench_conv_kernels.py, tabled in experiments/README.md):

- "depthwise" (groups == in_channels > 1): shifted slices x per-channel weights, summed;
  XLA fuses it into one loop (lax.conv with feature_group_count=C is ~100x slower on CPU).
- "pointwise" (every spatial kernel size 1, incl. all of Conv1d): one einsum over the
  taps folded into channels, `(..., k_t * C_in) @ (k_t * C_in, C_out)` (per group).
- "dense" (everything else): the k_t taps folded into channels (each group contiguous)
  and ONE spatial `lax.conv_general_dilated` (2D for Conv3d, 1D for Conv2d) per group.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cojax.core import (
    Array,
    Layer,
    Params,
    accumulation_dtype,
    advance_counter,
    advance_counter_block,
    as_int_tuple,
    as_spec,
    check_array,
    check_config,
    empty_outputs,
    field_alias,
    new_counter,
    scan_fill,
    validate_fields,
    zero_invalid,
    zero_unless,
)
from cojax.layers.window import (
    TEMPORAL_FILLS,
    WindowState,
    end_fill_frame,
    init_window,
    push_window,
    push_window_block,
)

PADDING_MODES = ("zeros", "replicate")
KERNEL_PATHS = ("depthwise", "pointwise", "dense")
STEP_PATHS = ("window", "partials")
_FRAME_LAYOUTS = {0: "(C,)", 1: "(W, C)", 2: "(H, W, C)"}
_SPATIAL_LETTERS = "DHW"
_MAX_SPLIT_GROUPS = 16  # dense groups up to this run as separate convs


class PartialSums(NamedTuple):
    """State of a "partials" step: what the frames seen so far add to coming outputs.

    `sums[i]` is the partial sum (no bias) of the output whose window ends `i` frames
    after the next input frame, `i = 0 .. receptive_field - 2`. Separate arrays, not one stack: a
    stacked state under `vmap` costs XLA a relayout copy per step (measured 1.6x slower
    at 64 streams of the anchor layer).
    """

    sums: tuple[Array, ...]  # receptive_field - 1 arrays (*spatial_out, C_out)
    count: Array  # int32 scalar or `Schedule`, see `cojax.core.advance_counter`


@dataclasses.dataclass(frozen=True, init=False)
class _ConvNd(Layer):
    """Continual N-d convolution; `num_spatial` is the number of non-temporal dims.

    Tuples (`kernel_size`, `stride_nd`, `padding_nd`, `dilation_nd`) are temporal first.
    The fields are `stride_nd` etc. because `stride`/`padding` are every layer's
    temporal ints; the constructor takes both spellings, so `repr` and
    `dataclasses.replace` round-trip.
    params: {"kernel": (k_t, *k_spatial, C_in // groups, C_out), "bias": (C_out,)}.
    Temporal padding of `forward` follows `temporal_fill` (start: zeros or the first
    frame; end: zeros or the last frame) so `forward` == `step`; spatial padding follows
    `padding_mode`.
    """

    num_spatial: ClassVar[int] = 0

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride_nd: tuple[int, ...]
    padding_nd: tuple[int, ...]
    dilation_nd: tuple[int, ...]
    groups: int
    bias: bool
    padding_mode: str
    temporal_fill: str

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        temporal_fill: str = "zeros",
        *,
        stride_nd: Sequence[int] | None = None,
        padding_nd: Sequence[int] | None = None,
        dilation_nd: Sequence[int] | None = None,
    ):
        n = self.num_spatial + 1
        stride = field_alias(self, "stride", stride, 1, "stride_nd", stride_nd)
        padding = field_alias(self, "padding", padding, 0, "padding_nd", padding_nd)
        dilation = field_alias(self, "dilation", dilation, 1, "dilation_nd", dilation_nd)
        values = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=as_int_tuple(self, "kernel_size", kernel_size, n),
            stride_nd=as_int_tuple(self, "stride", stride, n),
            padding_nd=as_int_tuple(self, "padding", padding, n),
            dilation_nd=as_int_tuple(self, "dilation", dilation, n),
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            temporal_fill=temporal_fill,
        )
        for field, value in values.items():
            object.__setattr__(self, field, value)
        validate_fields(self)
        self._check_config()

    def _check_config(self) -> None:
        for what in ("in_channels", "out_channels", "groups"):
            v = getattr(self, what)
            check_config(isinstance(v, int) and v > 0, self, f"{what} must be > 0, got {v!r}.")
        check_config(
            self.in_channels % self.groups == 0,
            self,
            f"in_channels ({self.in_channels}) must be divisible by groups ({self.groups}).",
        )
        check_config(
            self.out_channels % self.groups == 0,
            self,
            f"out_channels ({self.out_channels}) must be divisible by groups ({self.groups}).",
        )
        check_config(
            min(self.kernel_size) >= 1, self, f"kernel_size must be >= 1: {self.kernel_size}"
        )
        check_config(min(self.stride_nd) >= 1, self, f"stride must be >= 1: {self.stride_nd}")
        check_config(min(self.dilation_nd) >= 1, self, f"dilation must be >= 1: {self.dilation_nd}")
        check_config(min(self.padding_nd) >= 0, self, f"padding must be >= 0: {self.padding_nd}")
        check_config(
            self.padding_mode in PADDING_MODES,
            self,
            f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}.",
        )
        check_config(
            self.temporal_fill in TEMPORAL_FILLS,
            self,
            f"temporal_fill must be one of {TEMPORAL_FILLS}, got {self.temporal_fill!r}.",
        )
        check_config(
            self.padding <= self.receptive_field - 1,
            self,
            f"temporal padding {self.padding} exceeds receptive_field - 1 = "
            f"{self.receptive_field - 1} (kernel {self.kernel_size[0]}, dilation "
            f"{self.dilation_nd[0]}); a continual layer cannot emit outputs before its "
            "first input frame. Use padding <= dilation * (kernel_size - 1).",
        )

    # --- static temporal metadata ------------------------------------------------
    @property
    def receptive_field(self) -> int:
        return self.dilation_nd[0] * (self.kernel_size[0] - 1) + 1

    @property
    def stride(self) -> int:
        return self.stride_nd[0]

    @property
    def padding(self) -> int:
        return self.padding_nd[0]

    @property
    def end_fill(self) -> str:
        return self.temporal_fill

    @property
    def kernel_path(self) -> str:
        """Which window kernel this configuration runs: one of `KERNEL_PATHS`."""
        if self.groups == self.in_channels and self.groups > 1:
            return "depthwise"
        if all(k == 1 for k in self.kernel_size[1:]):
            return "pointwise"
        return "dense"

    @property
    def step_path(self) -> str:
        """How `step` computes float32 frames: "partials" or "window" (module docstring).

        Partial sums need a linear start (zero temporal fill), one output per input
        frame (temporal stride 1) and one conv (groups 1); they pay off where the
        window kernel is a spatial conv whose per-step window fold costs a copy.
        16-bit frames always take the window path: states keep the input dtype
        (docs/api.md, "Dtypes"), and 16-bit partial sums would round at every step.
        """
        partials = (
            self.kernel_path == "dense"
            and self.groups == 1
            and self.stride == 1
            and self.temporal_fill == "zeros"
            and self.receptive_field > 1
        )
        return "partials" if partials else "window"

    # --- parameters and state ----------------------------------------------------
    def init(self, key: Array) -> Params:
        """torch's default: uniform(+-1/sqrt(fan_in)) for kernel and bias."""
        c_in = self.in_channels // self.groups
        fan_in = c_in * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        k_kernel, k_bias = jax.random.split(key)
        shape = (*self.kernel_size, c_in, self.out_channels)
        params = {"kernel": jax.random.uniform(k_kernel, shape, jnp.float32, -bound, bound)}
        if self.bias:
            params["bias"] = jax.random.uniform(
                k_bias, (self.out_channels,), jnp.float32, -bound, bound
            )
        return params

    def check_frame(self, frame) -> None:
        layout = _FRAME_LAYOUTS.get(self.num_spatial, "(*spatial, C)")
        check_array(
            self, frame, ndim=self.num_spatial + 1, channels=self.in_channels, layout=layout
        )
        spatial = tuple(frame.shape[:-1])
        out = self._spatial_out(spatial)
        if any(o < 1 for o in out):
            raise ValueError(
                f"{type(self).__name__}: frame spatial size {spatial} is too small for "
                f"kernel {self.kernel_size[1:]}, dilation {self.dilation_nd[1:]} and "
                f"padding {self.padding_nd[1:]} (output size {out})."
            )

    def _spatial_out(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return self._out_size([n + 2 * p for n, p in zip(spatial, self.padding_nd[1:])])

    def init_state(self, params: Params, frame) -> WindowState | PartialSums:
        """ "window": a ring of the last `receptive_field - 1` frames, stored spatially
        padded; "partials": zero partial sums of the next `receptive_field - 1` outputs."""
        schedule = (self.delay, self.stride)
        if self._uses_partials(as_spec(frame).dtype):
            padded = self._padded_spec(frame)
            out = jax.eval_shape(
                lambda x: self._conv(x[None], self._partials_kernel(params, x.dtype), 1)[0],
                padded,
            )
            shape = (*out.shape[:-1], self.out_channels)
            sums = tuple(jnp.zeros(shape, out.dtype) for _ in range(self.receptive_field - 1))
            return PartialSums(sums, new_counter(*schedule))
        return init_window(self.receptive_field - 1, self._padded_spec(frame), schedule=schedule)

    def _padded_spec(self, frame) -> jax.ShapeDtypeStruct:
        return jax.eval_shape(lambda x: self._pad_spatial(x[None])[0], as_spec(frame))

    # --- computation -----------------------------------------------------------
    def forward(self, params: Params, clip: Array) -> Array:
        """The torch convolution on a whole clip `(T, *spatial, C_in)` -> `(T_out, ..., C_out)`."""
        s, d, k = self.stride, self.dilation_nd[0], self.kernel_size[0]
        clip = self._pad_spatial(self._pad_time(clip))  # (no-op where the conv pads)
        t_out = max(0, (clip.shape[0] - self.receptive_field) // s + 1)
        if t_out == 0:
            one = [jax.ShapeDtypeStruct((1, *clip.shape[1:]), clip.dtype)] * k
            spec = jax.eval_shape(self._kernel, params, one)
            return jnp.zeros((0, *spec.shape[1:]), spec.dtype)
        # Tap j of output t is padded frame t * s + j * d: k strided views of the clip.
        taps = [clip[j * d : j * d + (t_out - 1) * s + 1 : s] for j in range(k)]
        return self._kernel(params, taps)

    def step(self, params: Params, state: WindowState | PartialSums, frame: Array):
        if isinstance(state, PartialSums):
            return self._partials_step(params, state, frame)
        # The ring holds padded frames: each frame is padded once, and the kernel reads
        # the ring in place (2x faster at 64 streams than padding the window each step).
        window, frames = push_window(state, self._pad_spatial(frame[None])[0], self.temporal_fill)
        d = self.dilation_nd[0]
        y = self._kernel(params, [window[j * d : j * d + 1] for j in range(self.kernel_size[0])])
        y = y[0]
        valid, count = advance_counter(state.count, self.delay, self.stride)
        return WindowState(frames=frames, count=count), (zero_unless(valid, y), valid)

    def step_block_masked(self, params: Params, state, frames: Array, valid_in):
        """k frames as one clip computation: the buffered window and the block's real
        frames, convolved at temporal stride 1 (k outputs, the strided ones masked),
        with the kernel a step uses, batched over the k windows ("partials": the k
        frames' taps in one conv, summed into the k outputs and the next partial sums)."""
        if isinstance(state, PartialSums):
            return self._partials_block(params, state, frames, valid_in)
        k, d = frames.shape[0], self.dilation_nd[0]
        xs = self._pad_spatial(frames)
        seq, buffer, rank = push_window_block(state, xs, valid_in, self.temporal_fill)
        ys = self._kernel(params, [seq[j * d : j * d + k] for j in range(self.kernel_size[0])])
        valid, count = advance_counter_block(state.count, self.delay, self.stride, valid_in)
        return WindowState(frames=buffer, count=count), (zero_invalid(ys[rank], valid), valid)

    # --- the "partials" step ------------------------------------------------------
    def _uses_partials(self, dtype) -> bool:
        return self.step_path == "partials" and accumulation_dtype(dtype) is None

    def _partials_kernel(self, params: Params, dtype) -> Array:
        """`(k_t, *ks, C_in, C_out)` -> `(*ks, C_in, k_t * C_out)`, NEWEST tap first:
        channel block b is the new frame's share of the output that ends b·d_t frames on."""
        kernel = params["kernel"].astype(dtype)[::-1]
        return jnp.moveaxis(kernel, 0, -2).reshape(*kernel.shape[1:-1], -1)

    def _taps_of_frames(self, params: Params, frames: Array) -> list[Array]:
        """Padded frames `(B, *spatial, C_in)` -> the k_t blocks `(B, *spatial_out, C_out)`."""
        z = self._conv(self._pad_spatial(frames), self._partials_kernel(params, frames.dtype), 1)
        c = self.out_channels
        return [z[..., b * c : (b + 1) * c] for b in range(self.kernel_size[0])]

    def _finish(self, params: Params, y: Array, dtype) -> Array:
        if self.bias:
            y = y + params["bias"].astype(y.dtype)
        return y.astype(dtype)

    def _partials_step(self, params: Params, state: PartialSums, frame: Array):
        # Output ending m frames on (m = 0 .. R-1) gets the sum so far plus, when m is a
        # multiple of d_t, tap k_t-1-m/d_t of the new frame. m = 0 is complete: emit it.
        n, d = self.receptive_field - 1, self.dilation_nd[0]
        sums = list(state.sums)
        for b, block in enumerate(self._taps_of_frames(params, frame[None])):
            if b * d < n:
                sums[b * d] = sums[b * d] + block[0]
            else:  # the oldest tap starts the output that ends R-1 frames on
                sums.append(block[0])
        y = self._finish(params, sums[0], frame.dtype)
        valid, count = advance_counter(state.count, self.delay, self.stride)
        return PartialSums(tuple(sums[1:]), count), (zero_unless(valid, y), valid)

    def _partials_block(self, params: Params, state: PartialSums, frames: Array, valid_in):
        # The real frames first (in order), the others' taps zeroed. total[u] is the
        # output ending at the block's u-th real frame (u >= block length: later ones).
        k, n = frames.shape[0], self.receptive_field - 1
        order = jnp.argsort(jnp.logical_not(valid_in), stable=True)
        real = jnp.sum(valid_in.astype(jnp.int32))
        keep = (jnp.arange(k) < real).reshape(-1, *[1] * (frames.ndim - 1))
        total = jnp.stack(state.sums)
        total = jnp.pad(total, [(0, k)] + [(0, 0)] * (total.ndim - 1))
        for b, block in enumerate(self._taps_of_frames(params, frames[order])):
            shift = b * self.dilation_nd[0]
            block = jnp.where(keep, block, 0).astype(total.dtype)
            pads = [(shift, n - shift)] + [(0, 0)] * (block.ndim - 1)
            total = total + jnp.pad(block, pads)
        sums = tuple(lax.dynamic_slice_in_dim(total, real, n, axis=0))
        rank = jnp.clip(jnp.cumsum(valid_in.astype(jnp.int32)) - 1, 0, k - 1)
        ys = self._finish(params, total[:k][rank], frames.dtype)
        valid, count = advance_counter_block(state.count, self.delay, self.stride, valid_in)
        return PartialSums(sums, count), (zero_invalid(ys, valid), valid)

    def flush(self, params: Params, state, frame):
        if self.padding == 0:
            return empty_outputs(self, params, state, frame)
        fill = end_fill_frame(state, self._padded_spec(frame), self.temporal_fill)
        return scan_fill(self, params, state, self._unpad(fill), self.padding)

    def _unpad(self, x: Array) -> Array:
        """Inverse of `_pad_spatial` for one stored frame `(*spatial_padded, C)`."""
        pads = self.padding_nd[1:]
        if self._conv_pads or not any(pads):
            return x
        return x[tuple(slice(p, x.shape[i] - p) for i, p in enumerate(pads))]

    def _pad_time(self, clip: Array) -> Array:
        """Temporal padding of `forward`: `temporal_fill`, the same fill as the steps.

        The reference (continual-inference 1.2.4) pads time in `forward` with
        `padding_mode` but fills its step state with `temporal_fill`, so its forward and
        steps differ when the two disagree; here both follow `temporal_fill`.
        """
        p = self.padding
        if p == 0:
            return clip
        if self.temporal_fill == "replicate":
            start = jnp.broadcast_to(clip[:1], (p, *clip.shape[1:]))
            end = jnp.broadcast_to(clip[-1:], (p, *clip.shape[1:]))
        else:
            start = end = jnp.zeros((p, *clip.shape[1:]), clip.dtype)
        return jnp.concatenate([start, clip, end], axis=0)

    @property
    def _conv_pads(self) -> bool:
        """Whether the dense kernel's lax.conv applies the (zeros) spatial padding.

        Measured (jax 0.10.2, CPU): XLA's default conv with the padding inside stays at
        ~0.45 ms per 28x28x96->32 frame at any batch, on a pre-padded input it degrades
        to ~2 ms per frame from batch 16 on; so zero padding is left to the conv.
        """
        return self.kernel_path == "dense" and self.padding_mode == "zeros"

    def _pad_spatial(self, x: Array) -> Array:
        """Spatial padding of `x (B, *spatial, C)` before the kernel (unless the conv pads)."""
        pads = [(0, 0), *((p, p) for p in self.padding_nd[1:]), (0, 0)]
        if self._conv_pads or not any(p for p, _ in pads):
            return x
        mode = "edge" if self.padding_mode == "replicate" else "constant"
        return jnp.pad(x, pads, mode=mode)

    # --- window kernels -----------------------------------------------------------
    # `taps`: the k_t window frames after `_pad_spatial`, each `(B, *spatial, C_in)` with
    # B = 1 for a step and T_out for a clip -> `(B, *spatial_out, C_out)`.
    def _kernel(self, params: Params, taps: list[Array]) -> Array:
        kernel = params["kernel"].astype(taps[0].dtype)
        if self.kernel_path == "depthwise":
            y = self._depthwise(kernel, taps)
        elif self.kernel_path == "pointwise":
            y = self._pointwise(kernel, taps)
        else:
            y = self._dense(kernel, taps)
        if self.bias:  # y is float32 for 16-bit inputs (accumulation_dtype)
            y = y + params["bias"].astype(y.dtype)
        return y.astype(taps[0].dtype)

    def _out_size(self, padded: Sequence[int]) -> tuple[int, ...]:
        """Spatial output size of an already padded input."""
        dims = zip(padded, self.kernel_size[1:], self.stride_nd[1:], self.dilation_nd[1:])
        return tuple((n - d * (k - 1) - 1) // s + 1 for n, k, s, d in dims)

    def _shift(self, x: Array, offsets: Sequence[int]) -> Array:
        """`x (B, *padded, C)` read at spatial kernel offsets: `(B, *spatial_out, C)`."""
        out = self._out_size(x.shape[1:-1])
        start = [o * d for o, d in zip(offsets, self.dilation_nd[1:])]
        limit = [a + (n - 1) * s + 1 for a, n, s in zip(start, out, self.stride_nd[1:])]
        return lax.slice(
            x, [0, *start, 0], [x.shape[0], *limit, x.shape[-1]], [1, *self.stride_nd[1:], 1]
        )

    def _fold(self, taps: list[Array]) -> Array:
        """Taps -> channels `(B, *S, g * k_t * c_in)`, each group's channels contiguous."""
        if len(taps) == 1:
            return taps[0]
        g = self.groups
        x = jnp.stack([t.reshape(*t.shape[:-1], g, -1) for t in taps], axis=-2)
        return x.reshape(*x.shape[:-3], -1)

    def _folded_kernel(self, kernel: Array) -> Array:
        """`(k_t, *ks, c_in, C_out)` -> `(*ks, k_t * c_in, C_out)` matching `_fold`."""
        n = self.num_spatial
        return jnp.moveaxis(kernel, 0, n).reshape(*kernel.shape[1 : n + 1], -1, kernel.shape[-1])

    def _depthwise(self, kernel: Array, taps: list[Array]) -> Array:
        """Shifted slices x per-channel weights, summed (one fused loop in XLA)."""
        mult = self.out_channels // self.in_channels
        acc = None
        for j, tap in enumerate(taps):
            for offsets in itertools.product(*(range(k) for k in self.kernel_size[1:])):
                x = self._shift(tap, offsets)
                w = kernel[(j, *offsets, 0)]  # (C_out,); output o reads input o // mult
                if mult > 1:
                    x = (x[..., :, None] * w.reshape(-1, mult)).reshape(*x.shape[:-1], -1)
                else:
                    x = x * w
                acc = x if acc is None else acc + x
        return acc

    def _pointwise(self, kernel: Array, taps: list[Array]) -> Array:
        """Spatial kernel 1: a (grouped) contraction over (k_t, c_in) of the folded taps."""
        g = self.groups
        x = self._fold([self._shift(t, [0] * self.num_spatial) for t in taps])
        w = self._folded_kernel(kernel).reshape(-1, g, self.out_channels // g)
        acc = accumulation_dtype(x.dtype)
        if g == 1:
            return jnp.einsum("...i,io->...o", x, w[:, 0], preferred_element_type=acc)
        x = x.reshape(*x.shape[:-1], g, -1)
        y = jnp.einsum("...gi,igo->...go", x, w, preferred_element_type=acc)
        return y.reshape(*y.shape[:-2], self.out_channels)

    def _dense(self, kernel: Array, taps: list[Array]) -> Array:
        """Temporal taps folded into channels + ONE spatial conv (2D for Conv3d) per group.

        A few groups run as separate convs, concatenated: on CPU that is 2-10x faster than
        lax.conv with feature_group_count (measured, groups 2-8).
        """
        x, w = self._fold(taps), self._folded_kernel(kernel)
        g = self.groups
        if 1 < g <= _MAX_SPLIT_GROUPS:
            pairs = zip(jnp.split(x, g, axis=-1), jnp.split(w, g, axis=-1))
            return jnp.concatenate([self._conv(xg, wg, 1) for xg, wg in pairs], axis=-1)
        return self._conv(x, w, g)

    def _conv(self, x: Array, w: Array, groups: int) -> Array:
        letters = _SPATIAL_LETTERS[-self.num_spatial :]
        dims = lax.conv_dimension_numbers(
            x.shape, w.shape, (f"N{letters}C", f"{letters}IO", f"N{letters}C")
        )
        return lax.conv_general_dilated(
            x,
            w,
            window_strides=self.stride_nd[1:],
            padding=[(p, p) if self._conv_pads else (0, 0) for p in self.padding_nd[1:]],
            rhs_dilation=self.dilation_nd[1:],
            dimension_numbers=dims,
            feature_group_count=groups,
            preferred_element_type=accumulation_dtype(x.dtype),
        )


class Conv1d(_ConvNd):
    """Continual 1D convolution over time. Frame `(C_in,)`, clip `(T, C_in)`."""

    num_spatial: ClassVar[int] = 0


class Conv2d(_ConvNd):
    """Continual 2D convolution over (time, width). Frame `(W, C_in)`, clip `(T, W, C_in)`."""

    num_spatial: ClassVar[int] = 1


class Conv3d(_ConvNd):
    """Continual 3D convolution over (time, height, width). Frame `(H, W, C_in)`, clip `(T, H, W, C_in)`."""

    num_spatial: ClassVar[int] = 2
