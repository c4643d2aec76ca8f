"""Adapted, pruned layers as continual cojax layers.

A structured-pruning adapter trained on clips (a Flax `SPLoRAConv` / `SPPaRAConv` /
`SPLoRADense`) streams like any cojax layer once fused: `continual_conv` turns its
variables into a physically smaller `cojax.Conv1d/2d/3d` (time = the first kernel
axis), `continual_linear` into a smaller `cojax.Linear`. Chain layers by passing each
layer's kept output channels as the next one's `input_keep`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cojax.adapters.lora import fuse_conv, fuse_dense
from cojax.core import Layer, Params
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
