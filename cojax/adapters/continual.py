"""Adapted, pruned layers as continual cojax layers.

Two routes. `AdapterConv(module, in_channels)` streams an `SPLoRAConv` / `SPPaRAConv`
(and `AdapterDense(module, in_features)` an `SPLoRADense`, per frame) directly, inside
`co.Sequential` like any layer, with the adapter's own Flax variables
as its params (the masked adapted kernel is formed in each call, so it trains with
optax and streams with `step`; only the adapter and bias are trainable).

A structured-pruning adapter trained on clips (a Flax `SPLoRAConv` / `SPPaRAConv` /
`SPLoRADense`) streams like any cojax layer once fused: `continual_conv` turns its
variables into a physically smaller `cojax.Conv1d/2d/3d` (time = the first kernel
axis), `continual_linear` into a smaller `cojax.Linear`. Chain layers by passing each
layer's kept output channels as the next one's `input_keep`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cojax.adapters.lora import (
    SPLoRADense,
    _AdaptedConv,
    _kernel_mask,
    adapted_kernel,
    adapter_labels,
    fuse_conv,
    fuse_dense,
)
from cojax.core import Array, FrameLayer, Layer, Params, check_array, check_config
from cojax.layers.conv import Conv1d, Conv2d, Conv3d
from cojax.layers.linear import Linear

_CONVS = {1: Conv1d, 2: Conv2d, 3: Conv3d}


def continual_conv(
    variables: Any,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    temporal_fill: str = "zeros",
    input_keep: Any = None,
) -> tuple[Layer, Params, np.ndarray]:
    """A fused, pruned adapter convolution as a cojax continual convolution.

    `variables` of an `SPLoRAConv` / `SPPaRAConv` (grouped or not, see `fuse_conv`)
    whose first kernel axis is time; `stride` / `padding` as the cojax conv takes them
    (temporal first).
    Returns `(layer, params, kept_out)`.
    """
    params, kept_in, kept_out = fuse_conv(variables, input_keep)
    kernel = params["kernel"]
    nd = kernel.ndim - 2
    layer = _CONVS[nd](
        len(kept_in),
        len(kept_out),
        kernel.shape[:nd],
        stride=stride,
        padding=padding,
        groups=len(kept_in) // kernel.shape[-2],
        bias="bias" in params,
        temporal_fill=temporal_fill,
    )
    return layer, params, kept_out


def continual_linear(variables: Any, input_keep: Any = None) -> tuple[Layer, Params, np.ndarray]:
    """A fused, pruned `SPLoRADense` as a cojax `Linear`: `(layer, params, kept_out)`."""
    params, kept_in, kept_out = fuse_dense(variables, input_keep)
    return Linear(len(kept_in), len(kept_out), bias="bias" in params), params, kept_out


@dataclasses.dataclass(frozen=True)
class AdapterConv(Layer):
    """An `SPLoRAConv` / `SPPaRAConv` (time = its first kernel axis) as a continual
    layer: clip `(T, *spatial, in_channels)` -> `(T_out, *spatial_out, features)`.

    `params` are the module's variables (`{"params", "masks"}`, from `init` or a
    trained adapter). Every call forms the adapted kernel `W + ΔW` with the masks
    applied and runs the continual convolution of the module's kernel size, strides,
    padding and groups, so `forward` equals the module on the clip and `step` streams
    it. `trainable`: the adapter and bias, not the frozen base kernel or the masks.
    """

    module: nn.Module
    in_channels: int
    temporal_fill: str = "zeros"

    def __post_init__(self) -> None:
        if not isinstance(self.module, _AdaptedConv):
            raise TypeError(
                f"AdapterConv: expected an SPLoRAConv or SPPaRAConv, got {type(self.module).__name__}."
            )
        super().__post_init__()
        k = tuple(self.module.kernel_size)
        check_config(1 <= len(k) <= 3, self, f"kernel_size must have 1-3 dims, got {k}.")

    @property
    def conv(self) -> Layer:
        """The plain continual convolution the adapted kernel runs in."""
        m = self.module
        nd = len(m.kernel_size)
        return _CONVS[nd](
            self.in_channels,
            m.features,
            tuple(m.kernel_size),
            stride=tuple(m.strides or (1,) * nd),
            padding=tuple(m.padding or (0,) * nd),
            groups=m.feature_group_count,
            bias=m.use_bias,
            temporal_fill=self.temporal_fill,
        )

    # temporal metadata: the convolution's
    @property
    def receptive_field(self) -> int:
        return self.conv.receptive_field

    @property
    def stride(self) -> int:
        return self.conv.stride

    @property
    def padding(self) -> int:
        return self.conv.padding

    def init(self, key: Array) -> Params:
        dummy = jnp.zeros((1, *self.module.kernel_size, self.in_channels), jnp.float32)
        return jax.tree_util.tree_map(lambda a: a, dict(self.module.init(key, dummy)))

    def conv_params(self, params: Params) -> Params:
        """The masked adapted kernel (and bias) in the layout of `self.conv`."""
        p, masks = params["params"], params["masks"]
        mask = _kernel_mask(masks["in"], masks["out"], self.module.feature_group_count)
        out = {"kernel": jnp.where(mask, adapted_kernel(p), 0.0)}
        if self.module.use_bias:
            out["bias"] = jnp.where(masks["out"], p["bias"], 0.0)
        return out

    def trainable(self, params: Params) -> Params:
        return {
            "params": {name: name != "kernel" for name in params["params"]},
            "masks": jax.tree_util.tree_map(lambda _: False, params["masks"]),
        }

    def check_frame(self, frame: Any) -> None:
        self.conv.check_frame(frame)

    def forward(self, params: Params, clip: Array) -> Array:
        return self.conv.forward(self.conv_params(params), clip)

    def init_state(self, params: Params, frame: Any):
        return self.conv.init_state(self.conv_params(params), frame)

    def step(self, params: Params, state, frame: Array):
        return self.conv.step_unchecked(self.conv_params(params), state, frame)

    def flush(self, params: Params, state, frame: Any):
        return self.conv.flush(self.conv_params(params), state, frame)


@dataclasses.dataclass(frozen=True)
class AdapterDense(FrameLayer):
    """An `SPLoRADense` as a per-frame continual layer: frame `(*F, in_features)` ->
    `(*F, features)` (a clip likewise, frame by frame).

    `params` are the module's variables (`{"params", "masks"}`, from `init` or a
    trained adapter); every call applies the module (the masked adapted kernel), so
    the same params train with `co.train_forward` and stream with `step`.
    `trainable`: the adapters and bias, not the frozen base kernel or the masks.
    """

    module: nn.Module
    in_features: int

    def __post_init__(self) -> None:
        if not isinstance(self.module, SPLoRADense):
            raise TypeError(
                f"AdapterDense: expected an SPLoRADense, got {type(self.module).__name__} "
                "(convolutions: AdapterConv)."
            )
        super().__post_init__()

    def init(self, key: Array) -> Params:
        dummy = jnp.zeros((1, self.in_features), jnp.float32)
        return jax.tree_util.tree_map(lambda a: a, dict(self.module.init(key, dummy)))

    def trainable(self, params: Params) -> Params:
        labels = adapter_labels(params["params"])
        return {
            "params": jax.tree_util.tree_map(lambda label: label == "train", labels),
            "masks": jax.tree_util.tree_map(lambda _: False, params["masks"]),
        }

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, channels=self.in_features, layout="(*F, in_features)")

    def apply(self, params: Params, x: Array) -> Array:
        return self.module.apply(params, x).astype(x.dtype)
