"""Per-frame layers: activations, inference-form normalisations and dropout.

All act on each frame independently (delay 0, receptive field 1, no state) and use
the channels-last layout: frame `(*F, C)`, clip `(T, *F, C)`. Axis arguments count
from the end of the frame (`-1` is the channel axis, torch's `dim=1`), so one layer
serves frames and clips alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from cojax.core import (
    Array,
    FrameLayer,
    Layer,
    Params,
    PyTree,
    State,
    StepOutput,
    check_array,
    check_config,
    fill_invalid,
    layer_name,
    zero_invalid,
)

# --------------------------------------------------------------------------- base


class Activation(FrameLayer):
    """Base of the parameter-free activations: subclasses implement `activate(x)`.

    `activate` must act element-wise or along a negative axis, so that it serves
    frames `(*F, C)` and clips `(T, *F, C)`.
    """

    def activate(self, x: Array) -> Array:
        raise NotImplementedError

    def apply(self, params: Params, x: Array) -> Array:
        return self.activate(x)


def _check_axis(layer, axis: int) -> None:
    check_config(
        isinstance(axis, int) and axis < 0,
        layer,
        f"axis must be a negative int counting from the end of the frame (channels-last: "
        f"-1 is the channel axis, torch's dim=1), got {axis!r}. A non-negative axis would "
        f"mean different things for a frame and a clip.",
    )


def _check_axis_fits(layer, frame, axis: int) -> None:
    check_array(layer, frame)
    if len(frame.shape) < -axis:
        raise ValueError(
            f"{layer_name(layer)}: axis {axis} needs a frame with at least {-axis} "
            f"dimensions, got shape {tuple(frame.shape)}."
        )


# --------------------------------------------------------------------------- activations


@dataclasses.dataclass(frozen=True)
class ReLU(Activation):
    """`max(x, 0)`."""

    def activate(self, x: Array) -> Array:
        return jax.nn.relu(x)


@dataclasses.dataclass(frozen=True)
class ReLU6(Activation):
    """`min(max(x, 0), 6)`."""

    def activate(self, x: Array) -> Array:
        return jnp.clip(x, 0.0, 6.0)


@dataclasses.dataclass(frozen=True)
class LeakyReLU(Activation):
    """`x` for `x >= 0`, else `negative_slope * x`."""

    negative_slope: float = 0.01

    def activate(self, x: Array) -> Array:
        return jnp.where(x >= 0, x, self.negative_slope * x)


@dataclasses.dataclass(frozen=True)
class RReLU(Activation):
    """Randomised leaky ReLU in inference form: slope `(lower + upper) / 2`."""

    lower: float = 1.0 / 8.0
    upper: float = 1.0 / 3.0

    def __post_init__(self):
        check_config(
            self.lower <= self.upper,
            self,
            f"lower must be <= upper, got {self.lower} and {self.upper}.",
        )

    def activate(self, x: Array) -> Array:
        slope = (self.lower + self.upper) / 2.0
        return jnp.where(x >= 0, x, slope * x)

    def forward_train(self, params, clips, mask, key):
        """torch's train mode: each negative element gets a slope ~ U(lower, upper)."""
        clips = fill_invalid(clips, mask, "zeros")
        slope = jax.random.uniform(key, clips.shape, jnp.float32, self.lower, self.upper)
        ys = jnp.where(clips >= 0, clips, slope.astype(clips.dtype) * clips)
        return zero_invalid(ys, mask), mask, params


@dataclasses.dataclass(frozen=True)
class PReLU(FrameLayer):
    """Leaky ReLU with a learnable slope, per channel or shared.

    Params: "weight" `(num_parameters,)`, torch's default 0.25. With
    `num_parameters > 1` it must equal the channel count (last axis).
    """

    num_parameters: int = 1
    init_value: float = 0.25

    def __post_init__(self):
        check_config(
            self.num_parameters >= 1,
            self,
            f"num_parameters must be >= 1, got {self.num_parameters}.",
        )

    def init(self, key: Array) -> Params:
        del key
        return {"weight": jnp.full((self.num_parameters,), self.init_value, jnp.float32)}

    def check_frame(self, frame: Any) -> None:
        channels = self.num_parameters if self.num_parameters > 1 else None
        check_array(self, frame, channels=channels, layout="(*F, C)")

    def apply(self, params: Params, x: Array) -> Array:
        w = params["weight"].astype(x.dtype)
        return jnp.where(x >= 0, x, w * x)


@dataclasses.dataclass(frozen=True)
class ELU(Activation):
    """`x` for `x > 0`, else `alpha * (exp(x) - 1)`."""

    alpha: float = 1.0

    def activate(self, x: Array) -> Array:
        return jnp.where(x > 0, x, self.alpha * jnp.expm1(jnp.minimum(x, 0.0)))


@dataclasses.dataclass(frozen=True)
class CELU(Activation):
    """`max(0, x) + min(0, alpha * (exp(x / alpha) - 1))`."""

    alpha: float = 1.0

    def __post_init__(self):
        check_config(self.alpha != 0, self, "alpha must be non-zero.")

    def activate(self, x: Array) -> Array:
        neg = self.alpha * jnp.expm1(jnp.minimum(x, 0.0) / self.alpha)
        return jnp.where(x > 0, x, neg)


@dataclasses.dataclass(frozen=True)
class SELU(Activation):
    """Scaled ELU with torch's (and the paper's) constants."""

    def activate(self, x: Array) -> Array:
        return jax.nn.selu(x)


@dataclasses.dataclass(frozen=True)
class GELU(Activation):
    """Gaussian error linear unit: exact (erf) by default, `approximate="tanh"`."""

    approximate: str = "none"

    def __post_init__(self):
        check_config(
            self.approximate in ("none", "tanh"),
            self,
            f'approximate must be "none" or "tanh", got {self.approximate!r}.',
        )

    def activate(self, x: Array) -> Array:
        return jax.nn.gelu(x, approximate=self.approximate == "tanh")


@dataclasses.dataclass(frozen=True)
class Sigmoid(Activation):
    """`1 / (1 + exp(-x))`."""

    def activate(self, x: Array) -> Array:
        return jax.nn.sigmoid(x)


@dataclasses.dataclass(frozen=True)
class Hardsigmoid(Activation):
    """`relu6(x + 3) / 6`."""

    def activate(self, x: Array) -> Array:
        return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


@dataclasses.dataclass(frozen=True)
class Tanh(Activation):
    """`tanh(x)`."""

    def activate(self, x: Array) -> Array:
        return jnp.tanh(x)


@dataclasses.dataclass(frozen=True)
class SiLU(Activation):
    """`x * sigmoid(x)` (swish)."""

    def activate(self, x: Array) -> Array:
        return jax.nn.silu(x)


@dataclasses.dataclass(frozen=True)
class Hardswish(Activation):
    """`x * relu6(x + 3) / 6`."""

    def activate(self, x: Array) -> Array:
        return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


@dataclasses.dataclass(frozen=True)
class Mish(Activation):
    """`x * tanh(softplus(x))`."""

    def activate(self, x: Array) -> Array:
        return x * jnp.tanh(jax.nn.softplus(x))


@dataclasses.dataclass(frozen=True)
class Softplus(Activation):
    """`log(1 + exp(beta * x)) / beta`, linear where `beta * x > threshold` (as torch)."""

    beta: float = 1.0
    threshold: float = 20.0

    def __post_init__(self):
        check_config(self.beta != 0, self, "beta must be non-zero.")

    def activate(self, x: Array) -> Array:
        bx = self.beta * x
        return jnp.where(bx > self.threshold, x, jax.nn.softplus(bx) / self.beta)


@dataclasses.dataclass(frozen=True)
class Softsign(Activation):
    """`x / (1 + |x|)`."""

    def activate(self, x: Array) -> Array:
        return x / (1.0 + jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class Tanhshrink(Activation):
    """`x - tanh(x)`."""

    def activate(self, x: Array) -> Array:
        return x - jnp.tanh(x)


@dataclasses.dataclass(frozen=True)
class Hardtanh(Activation):
    """`clip(x, min_val, max_val)`."""

    min_val: float = -1.0
    max_val: float = 1.0

    def __post_init__(self):
        check_config(
            self.max_val > self.min_val,
            self,
            f"max_val must be > min_val, got {self.min_val} and {self.max_val}.",
        )

    def activate(self, x: Array) -> Array:
        return jnp.clip(x, self.min_val, self.max_val)


@dataclasses.dataclass(frozen=True)
class Hardshrink(Activation):
    """`x` where `|x| > lambd`, else 0."""

    lambd: float = 0.5

    def activate(self, x: Array) -> Array:
        return jnp.where(jnp.abs(x) > self.lambd, x, jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class Softshrink(Activation):
    """`x - lambd` above `lambd`, `x + lambd` below `-lambd`, else 0."""

    lambd: float = 0.5

    def __post_init__(self):
        check_config(self.lambd >= 0, self, f"lambd must be >= 0, got {self.lambd}.")

    def activate(self, x: Array) -> Array:
        shrunk = x - jnp.sign(x) * self.lambd
        return jnp.where(jnp.abs(x) > self.lambd, shrunk, jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class Threshold(Activation):
    """`x` where `x > threshold`, else `value`."""

    threshold: float
    value: float

    def activate(self, x: Array) -> Array:
        return jnp.where(x > self.threshold, x, jnp.full_like(x, self.value))


@dataclasses.dataclass(frozen=True)
class LogSigmoid(Activation):
    """`log(sigmoid(x))`, computed stably."""

    def activate(self, x: Array) -> Array:
        return jax.nn.log_sigmoid(x)


@dataclasses.dataclass(frozen=True)
class Softmax(Activation):
    """Softmax along `axis` of the frame (default the channels, torch's `dim=1`)."""

    axis: int = -1

    def __post_init__(self):
        _check_axis(self, self.axis)

    def check_frame(self, frame: Any) -> None:
        _check_axis_fits(self, frame, self.axis)

    def activate(self, x: Array) -> Array:
        return jax.nn.softmax(x, axis=self.axis)


@dataclasses.dataclass(frozen=True)
class LogSoftmax(Softmax):
    """`log(softmax(x))` along `axis`, computed stably."""

    def activate(self, x: Array) -> Array:
        return jax.nn.log_softmax(x, axis=self.axis)


@dataclasses.dataclass(frozen=True)
class Softmin(Softmax):
    """`softmax(-x)` along `axis`."""

    def activate(self, x: Array) -> Array:
        return jax.nn.softmax(-x, axis=self.axis)


@dataclasses.dataclass(frozen=True)
class Softmax2d(Activation):
    """Softmax over the channels at every location (torch's `nn.Softmax2d`)."""

    def activate(self, x: Array) -> Array:
        return jax.nn.softmax(x, axis=-1)


@dataclasses.dataclass(frozen=True)
class GLU(Activation):
    """Gated linear unit: halves `a, b` of `axis`, output `a * sigmoid(b)`."""

    axis: int = -1

    def __post_init__(self):
        _check_axis(self, self.axis)

    def check_frame(self, frame: Any) -> None:
        _check_axis_fits(self, frame, self.axis)
        size = frame.shape[self.axis]
        if size % 2:
            raise ValueError(
                f"{layer_name(self)}: axis {self.axis} must have an even size to halve, got "
                f"{size} (frame shape {tuple(frame.shape)})."
            )

    def activate(self, x: Array) -> Array:
        a, b = jnp.split(x, 2, axis=self.axis)
        return a * jax.nn.sigmoid(b)


# --------------------------------------------------------------------------- norms


_FRAME_LAYOUTS = {1: "(C,)", 2: "(W, C)", 3: "(H, W, C)"}


@dataclasses.dataclass(frozen=True)
class BatchNorm(FrameLayer):
    """Batch normalisation in inference form (running statistics), per channel.

    `y = (x - mean) / sqrt(var + eps) * scale + bias` on the channel (last) axis.
    Params: "mean", "var" `(C,)` (torch's running stats) and, with `affine=True`,
    "scale", "bias" `(C,)`. `init` gives torch's defaults (zeros/ones). Frames
    `(*F, C)`; the aliases `BatchNorm1d/2d/3d` require frames `(C,)`, `(W, C)`,
    `(H, W, C)` like the torch layers' `(B, C, T)`, `(B, C, T, W)`, `(B, C, T, H, W)`.
    In train mode (`cojax.training.train_forward`) it normalises with batch statistics
    and moves "mean"/"var" by `momentum`; they are not trainable (`trainable_mask`).
    `instance=True` is a converted torch InstanceNorm with running statistics: the
    same inference form; in train mode each clip is normalised with its own
    statistics over (T, *F), and the running statistics move by the mean over clips of
    the per-clip statistics (torch's InstanceNorm with `track_running_stats=True`).
    """

    num_features: int
    eps: float = 1e-5
    affine: bool = True
    momentum: float | None = 0.1
    instance: bool = False
    frame_ndim: ClassVar[int | None] = None

    def __post_init__(self):
        check_config(
            self.num_features > 0, self, f"num_features must be > 0, got {self.num_features}."
        )
        check_config(self.eps >= 0, self, f"eps must be >= 0, got {self.eps}.")
        check_config(
            self.momentum is None or 0.0 <= self.momentum <= 1.0,
            self,
            f"momentum must be None or in [0, 1], got {self.momentum}.",
        )

    def init(self, key: Array) -> Params:
        del key
        c = self.num_features
        params = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        if self.affine:
            params["scale"] = jnp.ones((c,), jnp.float32)
            params["bias"] = jnp.zeros((c,), jnp.float32)
        return params

    def check_frame(self, frame: Any) -> None:
        layout = _FRAME_LAYOUTS.get(self.frame_ndim, "(*F, C)")
        check_array(self, frame, ndim=self.frame_ndim, channels=self.num_features, layout=layout)

    def apply(self, params: Params, x: Array) -> Array:
        dtype = x.dtype
        inv = jax.lax.rsqrt(params["var"].astype(dtype) + self.eps)
        if self.affine:
            inv = inv * params["scale"].astype(dtype)
        y = (x - params["mean"].astype(dtype)) * inv
        if self.affine:
            y = y + params["bias"].astype(dtype)
        return y

    def trainable(self, params: Params) -> Params:
        """The running statistics "mean" and "var" are not learned."""
        return {k: k not in ("mean", "var") for k in params}

    def forward_train(self, params, clips, mask, key):
        """torch's train mode: normalise with the statistics of the batch's real frames
        over (B, T, *F) (`instance=True`: of each clip's real frames over (T, *F)), and
        move the running statistics by `momentum` (running variance unbiased,
        `n / (n - 1)`; for instances the mean over clips of their statistics).
        Statistics are accumulated in float32."""
        del key
        check_config(
            self.momentum is not None,
            self,
            "momentum=None (torch's cumulative average over all batches) needs a batch "
            "counter cojax does not keep; give a momentum to train with it.",
        )
        self.check_clip(jax.ShapeDtypeStruct(clips.shape[1:], clips.dtype))
        dtype = clips.dtype
        x = fill_invalid(clips, mask, "zeros").astype(jnp.float32)
        m = mask.reshape(mask.shape + (1,) * (x.ndim - 2)).astype(jnp.float32)
        per_frame = x.size // (m.size * x.shape[-1])  # locations per frame
        # statistics over (B, T, *F), or per clip over (T, *F) for an InstanceNorm
        axes = tuple(range(1 if self.instance else 0, x.ndim - 1))
        n = jnp.sum(m, axis=axes, keepdims=True) * per_frame
        mean = jnp.sum(x * m, axis=axes, keepdims=True) / jnp.maximum(n, 1)
        var = jnp.sum(jnp.square((x - mean) * m), axis=axes, keepdims=True) / jnp.maximum(n, 1)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.affine:
            y = y * params["scale"] + params["bias"]
        new = dict(params)
        unbiased = var * n / jnp.maximum(n - 1, 1)
        real = (n > 0).astype(jnp.float32)  # clips (or the batch) with real frames
        count = jnp.sum(real)
        mean, unbiased = (
            jnp.sum(a * real, axis=tuple(range(x.ndim - 1))) / jnp.maximum(count, 1)
            for a in (mean, unbiased)
        )
        for name, batch in (("mean", mean), ("var", unbiased)):
            old = params[name]
            moved = (1 - self.momentum) * old + self.momentum * batch
            # A batch without real frames (e.g. a branch no clip took) moves nothing.
            new[name] = jax.lax.stop_gradient(jnp.where(count > 0, moved, old).astype(old.dtype))
        return zero_invalid(y.astype(dtype), mask), mask, new


@dataclasses.dataclass(frozen=True)
class BatchNorm1d(BatchNorm):
    """`BatchNorm` for frames `(C,)` (torch input `(B, C, T)`)."""

    frame_ndim: ClassVar[int | None] = 1


@dataclasses.dataclass(frozen=True)
class BatchNorm2d(BatchNorm):
    """`BatchNorm` for frames `(W, C)` (torch input `(B, C, T, W)`)."""

    frame_ndim: ClassVar[int | None] = 2


@dataclasses.dataclass(frozen=True)
class BatchNorm3d(BatchNorm):
    """`BatchNorm` for frames `(H, W, C)` (torch input `(B, C, T, H, W)`)."""

    frame_ndim: ClassVar[int | None] = 3


@dataclasses.dataclass(frozen=True)
class LayerNorm(FrameLayer):
    """Layer normalisation over the trailing `len(normalized_shape)` axes of each frame.

    Channels-last: `LayerNorm(C)` normalises the channels of every location;
    `LayerNorm((W, C))` normalises a frame `(W, C)` as a whole (note the channels-last
    order of `normalized_shape`, unlike torch's channels-first `(C, W)`).
    Params with `elementwise_affine=True`: "scale" and (with `bias=True`) "bias",
    both shaped `normalized_shape`. Biased variance, as torch.
    """

    normalized_shape: int | tuple[int, ...]
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def __post_init__(self):
        shape = self.normalized_shape
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        object.__setattr__(self, "normalized_shape", shape)
        check_config(
            len(shape) > 0 and all(isinstance(d, int) and d > 0 for d in shape),
            self,
            f"normalized_shape must be positive ints, got {shape}.",
        )

    def init(self, key: Array) -> Params:
        del key
        if not self.elementwise_affine:
            return {}
        params = {"scale": jnp.ones(self.normalized_shape, jnp.float32)}
        if self.bias:
            params["bias"] = jnp.zeros(self.normalized_shape, jnp.float32)
        return params

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame)
        n = len(self.normalized_shape)
        got = tuple(frame.shape[-n:]) if len(frame.shape) >= n else tuple(frame.shape)
        if got != self.normalized_shape:
            raise ValueError(
                f"{layer_name(self)}: expected a frame ending in normalized_shape "
                f"{self.normalized_shape} (channels-last), got shape {tuple(frame.shape)}."
            )

    def apply(self, params: Params, x: Array) -> Array:
        axes = tuple(range(-len(self.normalized_shape), 0))
        y = _standardize(x, axes, self.eps)
        if self.elementwise_affine:
            y = y * params["scale"].astype(x.dtype)
            if self.bias:
                y = y + params["bias"].astype(x.dtype)
        return y


def _standardize(x: Array, axes: tuple[int, ...], eps: float) -> Array:
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = jnp.mean(jnp.square(centered), axis=axes, keepdims=True)
    return centered * jax.lax.rsqrt(var + eps)


@dataclasses.dataclass(frozen=True)
class GroupNorm(Layer):
    """Group normalisation of each frame over its spatial axes and a channel group.

    Frames `(*S, C)` with `C = num_channels`; clips `(T, *S, C)` are normalised frame
    by frame (in `forward` too). This is the continual form: torch's `GroupNorm` on a
    whole clip `(B, C, T, *S)` would also average over time, so `forward` here equals
    torch's `GroupNorm` applied to each frame separately (the reference wraps it per
    frame only in step mode, so its forward and steps disagree). Params with
    `affine=True`: "scale", "bias" `(C,)`.
    """

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True

    def __post_init__(self):
        check_config(
            self.num_groups > 0 and self.num_channels > 0,
            self,
            f"num_groups and num_channels must be > 0, got {self.num_groups} and "
            f"{self.num_channels}.",
        )
        check_config(
            self.num_channels % self.num_groups == 0,
            self,
            f"num_channels ({self.num_channels}) must be divisible by num_groups "
            f"({self.num_groups}).",
        )

    def init(self, key: Array) -> Params:
        del key
        if not self.affine:
            return {}
        c = self.num_channels
        return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, channels=self.num_channels, layout="(*S, C)")

    def normalize(self, params: Params, x: Array, time_axes: int) -> Array:
        """Normalise `x` `(*lead, *S, C)`, where the first `time_axes` axes are not reduced."""
        g = self.num_groups
        grouped = x.reshape(*x.shape[:-1], g, self.num_channels // g)
        # Reduce the spatial axes and the within-group channels, keep the group axis.
        axes = (*range(time_axes, grouped.ndim - 2), grouped.ndim - 1)
        y = _standardize(grouped, axes, self.eps).reshape(x.shape)
        if self.affine:
            y = y * params["scale"].astype(x.dtype) + params["bias"].astype(x.dtype)
        return y

    def forward(self, params: Params, clip: PyTree) -> PyTree:
        return self.normalize(params, clip, 1)

    def step(self, params: Params, state: State, frame: PyTree) -> tuple[State, StepOutput]:
        return state, (self.normalize(params, frame, 0), jnp.ones((), bool))


# --------------------------------------------------------------------------- dropout


@dataclasses.dataclass(frozen=True)
class Dropout(FrameLayer):
    """Dropout: the identity in `forward`/`step` (inference), active in train mode.

    `forward_train` zeroes each element with probability `p` and scales the rest by
    `1 / (1 - p)`, as torch's `nn.Dropout` in train mode.
    """

    p: float = 0.5
    channelwise: ClassVar[bool] = False
    alpha: ClassVar[bool] = False

    def __post_init__(self):
        check_config(0.0 <= self.p <= 1.0, self, f"p must be in [0, 1], got {self.p}.")

    def apply(self, params: Params, x: Array) -> Array:
        return x

    def forward_train(self, params, clips, mask, key):
        ys = jax.tree_util.tree_map(lambda a, k: self._drop(a, k), clips, _split_like(key, clips))
        return zero_invalid(ys, mask), mask, params

    def _drop(self, x: Array, key: Array) -> Array:
        # A channel dropout keeps or drops each (clip, channel) for the whole clip:
        # torch's Dropout1d/2d/3d on (B, C, T, *F) draw one number per (B, C).
        shape = (x.shape[0], *(1,) * (x.ndim - 2), x.shape[-1]) if self.channelwise else x.shape
        if self.p == 0.0:
            return x
        keep = jax.random.bernoulli(key, 1.0 - self.p, shape)
        if self.p == 1.0 and not self.alpha:
            return jnp.zeros_like(x)
        if not self.alpha:
            return jnp.where(keep, x / (1.0 - self.p), 0).astype(x.dtype)
        # Alpha dropout (Klambauer et al. 2017, eq. 6-7, torch's constants): dropped
        # units take the SELU saturation value, then an affine map keeps mean and
        # variance; kept units: a * x + alpha' * a * p, dropped: alpha' * a * (p - 1).
        a = 1.0 / math.sqrt((_SELU_SAT**2 * self.p + 1.0) * (1.0 - self.p))
        kept = a * x + _SELU_SAT * a * self.p
        return jnp.where(keep, kept, _SELU_SAT * a * (self.p - 1.0)).astype(x.dtype)


_SELU_SAT = 1.7580993408473766  # -SELU(-inf) = scale * alpha of SELU


def _split_like(key: Array, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, list(jax.random.split(key, len(leaves))))


@dataclasses.dataclass(frozen=True)
class Dropout1d(Dropout):
    """Channel dropout: identity in inference; in train mode drops whole channels of a
    clip (frames `(C,)`)."""

    channelwise: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class Dropout2d(Dropout):
    """Channel dropout: identity in inference; in train mode drops whole channels of a
    clip (frames `(W, C)`)."""

    channelwise: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class Dropout3d(Dropout):
    """Channel dropout: identity in inference; in train mode drops whole channels of a
    clip (frames `(H, W, C)`)."""

    channelwise: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class AlphaDropout(Dropout):
    """Alpha dropout (for SELU nets): identity in inference, torch's rule in train mode."""

    alpha: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class FeatureAlphaDropout(Dropout):
    """Alpha dropout of whole channels: identity in inference, torch's rule in train."""

    channelwise: ClassVar[bool] = True
    alpha: ClassVar[bool] = True
