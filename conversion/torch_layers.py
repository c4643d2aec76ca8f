"""Converters for the per-frame `torch.nn` layers that continual-inference accepts:
activations, norms (inference form) and dropouts.

Torch's `dim=1` is the channel axis, cojax's last axis (`-1`); a negative torch `dim`
counts spatial axes from the end and becomes `dim - 1` in the channels-last frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import cojax.layers.pointwise as pw
from cojax.containers import Sequential
from cojax.core import Layer
from cojax.layers.closure import Lambda
from conversion._common import array, fail

Handler = Callable[[Any, str, Any], tuple[Layer, Any]]


def frame_layer_handlers() -> dict[type, Handler]:
    """torch.nn class -> converter, for every per-frame layer."""
    from torch import nn

    def fixed(cls: type) -> Handler:
        return lambda m, path, ctx: (cls(), {})

    def configured(cls: type, *attrs: str) -> Handler:
        return lambda m, path, ctx: (cls(*(getattr(m, a) for a in attrs)), {})

    table: dict[type, Handler] = {
        nn.ReLU: fixed(pw.ReLU),
        nn.ReLU6: fixed(pw.ReLU6),
        nn.Sigmoid: fixed(pw.Sigmoid),
        nn.Hardsigmoid: fixed(pw.Hardsigmoid),
        nn.Tanh: fixed(pw.Tanh),
        nn.SiLU: fixed(pw.SiLU),
        nn.Hardswish: fixed(pw.Hardswish),
        nn.SELU: fixed(pw.SELU),
        nn.Mish: fixed(pw.Mish),
        nn.Softsign: fixed(pw.Softsign),
        nn.Tanhshrink: fixed(pw.Tanhshrink),
        nn.LogSigmoid: fixed(pw.LogSigmoid),
        nn.Softmax2d: fixed(pw.Softmax2d),
        nn.LeakyReLU: configured(pw.LeakyReLU, "negative_slope"),
        nn.RReLU: configured(pw.RReLU, "lower", "upper"),
        nn.ELU: configured(pw.ELU, "alpha"),
        nn.CELU: configured(pw.CELU, "alpha"),
        nn.GELU: configured(pw.GELU, "approximate"),
        nn.Softplus: configured(pw.Softplus, "beta", "threshold"),
        nn.Hardtanh: configured(pw.Hardtanh, "min_val", "max_val"),
        nn.Hardshrink: configured(pw.Hardshrink, "lambd"),
        nn.Softshrink: configured(pw.Softshrink, "lambd"),
        nn.Threshold: configured(pw.Threshold, "threshold", "value"),
        nn.PReLU: _prelu,
        nn.Softmax: _along_dim(pw.Softmax),
        nn.LogSoftmax: _along_dim(pw.LogSoftmax),
        nn.Softmin: _along_dim(pw.Softmin),
        nn.GLU: _along_dim(pw.GLU),
        nn.BatchNorm1d: _batch_norm(pw.BatchNorm1d),
        nn.BatchNorm2d: _batch_norm(pw.BatchNorm2d),
        nn.BatchNorm3d: _batch_norm(pw.BatchNorm3d),
        nn.InstanceNorm1d: _batch_norm(pw.BatchNorm1d),
        nn.InstanceNorm2d: _batch_norm(pw.BatchNorm2d),
        nn.InstanceNorm3d: _batch_norm(pw.BatchNorm3d),
        nn.GroupNorm: _group_norm,
        nn.LayerNorm: _layer_norm,
    }
    dropouts = {
        nn.Dropout: pw.Dropout,
        nn.Dropout1d: pw.Dropout1d,
        nn.Dropout2d: pw.Dropout2d,
        nn.Dropout3d: pw.Dropout3d,
        nn.AlphaDropout: pw.AlphaDropout,
        nn.FeatureAlphaDropout: pw.FeatureAlphaDropout,
    }
    for torch_cls, cls in dropouts.items():
        table[torch_cls] = configured(cls, "p")
    return table


def _prelu(module: Any, path: str, ctx: Any):
    layer = pw.PReLU(num_parameters=module.num_parameters)
    return layer, {"weight": array(module.weight)}


def _frame_axis(module: Any, path: str, dim: Any) -> int:
    """torch `dim` of a `(B, C, T, *S)` clip -> the axis of a channels-last frame."""
    if dim == 1:
        return -1
    if isinstance(dim, int) and dim < 0:
        return dim - 1
    raise fail(
        module,
        path,
        f"dim={dim!r} cannot be mapped to a channels-last frame. Use dim=1 (channels) or a "
        "negative dim counting spatial axes from the end (dim=2 is time, which a per-frame "
        "layer cannot mix).",
    )


def _along_dim(cls: type) -> Handler:
    def convert(module: Any, path: str, ctx: Any):
        return cls(axis=_frame_axis(module, path, module.dim)), {}

    return convert


def _batch_norm(cls: type) -> Handler:
    """BatchNorm (and InstanceNorm with running statistics) in eval form."""

    def convert(module: Any, path: str, ctx: Any):
        if module.running_mean is None or module.running_var is None:
            raise fail(
                module,
                path,
                "track_running_stats=False normalises with statistics over the whole clip "
                "(time included), which a continual layer cannot compute. Use running "
                "statistics.",
            )
        momentum = None if module.momentum is None else float(module.momentum)
        layer = cls(
            module.num_features,
            eps=float(module.eps),
            affine=bool(module.affine),
            momentum=momentum,
            instance=type(module).__name__.startswith("InstanceNorm"),
        )
        params = {"mean": array(module.running_mean), "var": array(module.running_var)}
        if module.affine:
            params["scale"] = array(module.weight)
            params["bias"] = array(module.bias)
        return layer, params

    return convert


def _group_norm(module: Any, path: str, ctx: Any):
    """Per-frame GroupNorm: the reference's step semantics (its clip forward would also
    average over time)."""
    layer = pw.GroupNorm(
        module.num_groups, module.num_channels, eps=float(module.eps), affine=bool(module.affine)
    )
    params = {}
    if module.affine:
        params = {"scale": array(module.weight), "bias": array(module.bias)}
    return layer, params


def channels_first(x: jax.Array) -> jax.Array:
    """A frame `(*S, C)` -> torch's frame order `(C, *S)`."""
    return jnp.moveaxis(x, -1, 0)


def channels_last(x: jax.Array) -> jax.Array:
    """A frame `(C, *S)` -> `(*S, C)`."""
    return jnp.moveaxis(x, 0, -1)


def _layer_norm(module: Any, path: str, ctx: Any):
    """torch LayerNorm over trailing spatial axes of `(B, C, T, *S)` (all the reference
    supports in step mode), i.e. per channel: cojax's LayerNorm between two transposes."""
    shape = tuple(module.normalized_shape)
    affine = bool(module.elementwise_affine)
    has_bias = module.bias is not None
    norm = pw.LayerNorm(shape, eps=float(module.eps), elementwise_affine=affine, bias=has_bias)
    params = {}
    if affine:
        params["scale"] = array(module.weight)
        if has_bias:
            params["bias"] = array(module.bias)
    layer = Sequential(
        {
            "channels_first": Lambda(channels_first),
            "norm": norm,
            "channels_last": Lambda(channels_last),
        }
    )
    return layer, {"channels_first": {}, "norm": params, "channels_last": {}}
