"""`from_continual`: a PyTorch `continual-inference` network -> a cojax layer and params.

The conversion walks the torch module tree and builds the same structure in cojax:
containers keep their children's names (an `OrderedDict` name in a `co.Sequential`
is the cojax child name), so `params` is a nested dict whose keys follow torch's module
paths. The delays that the reference inserted to align branches (its
`co.Sequential(module, co.Delay(n))` wrappers) are already part of the torch tree, so
cojax containers take the branches as converted (`children=`) and nothing is added
twice; only a residual shortcut beside a branch that shortens the clip gets the `Skip`
that lines its clip up (`_line_up_shortcuts`).

Layout: torch `(B, C, T, *S)` <-> cojax one stream `(T, *S, C)`. Torch is imported
lazily; `cojax` itself never imports it. Every layer is converted in inference form
(BatchNorm with its running statistics, dropout as the identity).

Torch functions inside the network (a `co.Lambda`, a `co.Conditional` predicate, a
custom `co.Reduce`) cannot be translated; pass their JAX versions by module path
(the names of `module.named_modules()`, "" for the root):

    layer, params = from_continual(net, lambdas={"2": jnp.tanh})
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from cojax.containers import (
    Broadcast,
    BroadcastReduce,
    Conditional,
    Parallel,
    ParallelDispatch,
    Reduce,
    Sequential,
)
from cojax.containers.parallel import align_by_alignment
from cojax.core import Layer
from cojax.layers import closure, conv, pool, recurrent
from cojax.layers.delay import Delay, Skip
from cojax.layers.linear import Linear
from conversion._common import array, fail, join, where

Converted = tuple[Layer, Any]


@dataclass(frozen=True)
class _Context:
    """User-supplied JAX replacements for torch functions, keyed by module path."""

    lambdas: Mapping[str, Any] = field(default_factory=dict)
    predicates: Mapping[str, Callable] = field(default_factory=dict)
    reductions: Mapping[str, Callable] = field(default_factory=dict)


def from_continual(
    module: Any,
    *,
    lambdas: Mapping[str, Callable | Layer] | None = None,
    conditional_predicates: Mapping[str, Callable] | None = None,
    reductions: Mapping[str, Callable] | None = None,
) -> Converted:
    """Convert a `continual-inference` network (or a supported `torch.nn` layer).

    Returns `(layer, params)`. `layer.step` reproduces the reference's `forward_step`,
    and `layer.forward(params, clip)` on one stream `(T, *S, C)` its `forward` on
    `(1, C, T, *S)`, except where the reference's `forward` is not the sliding-window
    maths of its steps: an adaptive pool pools windows of its temporal `kernel_size`
    (torch pools the whole clip; equal on a clip of exactly that length), GroupNorm
    normalises each frame (torch's clip forward also averages over time), and the
    reference's known defects (docs/continual-inference.md) are not copied.

    `lambdas` maps the path of a `co.Lambda` to a JAX function of one channels-last
    frame (or to a cojax layer used as is); `conditional_predicates` maps the path of a
    `co.Conditional` to a JAX predicate of the frame/clip; `reductions` maps the path of
    a `co.Reduce`/`co.BroadcastReduce` with a custom torch reduce to a JAX function of
    a tuple of arrays. Paths are those of `module.named_modules()` ("" is the root).
    Unsupported modules raise `NotImplementedError` naming the type and its path.
    """
    ctx = _Context(
        lambdas=dict(lambdas or {}),
        predicates=dict(conditional_predicates or {}),
        reductions=dict(reductions or {}),
    )
    return _convert(module, "", ctx)


# --------------------------------------------------------------------------- dispatch


def _convert(module: Any, path: str, ctx: _Context) -> Converted:
    handlers = _handlers()
    for cls in type(module).__mro__:
        if cls in handlers:
            return handlers[cls](module, path, ctx)
    raise NotImplementedError(
        f"from_continual: no conversion for {type(module).__module__}."
        f"{type(module).__qualname__} at {where(path)}. Supported: continual-inference "
        "containers, convolutions, pools, Linear(channel_dim=1), RNN/GRU/LSTM, Delay, Skip, "
        "Reshape, closures, the continual attentions, transformer encoders and recycling "
        "positional encoding, and the per-frame torch.nn activations, norms and dropouts. "
        "Build this part in cojax directly."
    )


@functools.cache
def _handlers() -> dict[type, Callable[[Any, str, _Context], Converted]]:
    """Torch class -> converter (looked up along the module's MRO)."""
    import continual as co
    from torch import nn

    from conversion import transformer
    from conversion.positional import convert_recycling_positional_encoding
    from conversion.torch_layers import frame_layer_handlers

    table: dict[type, Callable[[Any, str, _Context], Converted]] = {
        co.BroadcastReduce: _broadcast_reduce,
        co.Sequential: _sequential,
        nn.Sequential: _sequential,
        co.Parallel: _parallel,
        co.Broadcast: lambda m, p, c: (Broadcast(m.num_streams), {}),
        co.Reduce: _reduce,
        co.ParallelDispatch: _dispatch,
        co.Conditional: _conditional,
        co.Delay: _delay,
        co.Skip: lambda m, p, c: (Skip(int(m.steps)), {}),
        co.Reshape: _reshape,
        co.Lambda: _lambda,
        co.Linear: _linear,
        nn.Linear: _linear,
        co.Conv1d: _conv,
        co.Conv2d: _conv,
        co.Conv3d: _conv,
        co.RNN: _recurrent,
        co.GRU: _recurrent,
        co.LSTM: _recurrent,
        nn.Identity: lambda m, p, c: (closure.Identity(), {}),
    }
    for cls in (
        co.MaxPool1d,
        co.MaxPool2d,
        co.MaxPool3d,
        co.AvgPool1d,
        co.AvgPool2d,
        co.AvgPool3d,
    ):
        table[cls] = _pool
    for cls in (
        co.AdaptiveAvgPool2d,
        co.AdaptiveAvgPool3d,
        co.AdaptiveMaxPool2d,
        co.AdaptiveMaxPool3d,
    ):
        table[cls] = _adaptive_pool
    # Plain torch layers that co.continual converts (an adaptive pool needs a
    # temporal kernel size, so it must be a co module already).
    for cls in (
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.MaxPool3d,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AvgPool3d,
        nn.RNN,
        nn.GRU,
        nn.LSTM,
    ):
        table[cls] = _via_co_continual
    for cls in (
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d,
        nn.AdaptiveMaxPool2d,
        nn.AdaptiveMaxPool3d,
    ):
        table[cls] = _plain_adaptive_pool
    table.update(frame_layer_handlers())
    table.update(
        {
            co.RetroactiveMultiheadAttention: transformer.continual_mha,
            co.SingleOutputMultiheadAttention: transformer.continual_mha,
            co.TransformerEncoder: transformer.continual_encoder,
            co.RecyclingPositionalEncoding: convert_recycling_positional_encoding,
        }
    )
    return table


def _via_co_continual(module: Any, path: str, ctx: _Context) -> Converted:
    import continual as co

    return _convert(co.continual(module), path, ctx)


def _plain_adaptive_pool(module: Any, path: str, ctx: _Context) -> Converted:
    name = type(module).__name__
    raise fail(
        module,
        path,
        f"a plain nn.{name} pools the whole clip; a continual one needs a temporal window. "
        f"Use co.{name}(output_size, kernel_size=...) (the temporal kernel size).",
    )


# --------------------------------------------------------------------------- containers


def _children(module: Any, path: str, ctx: _Context) -> tuple[dict, dict]:
    layers, params = {}, {}
    for name, child in module._modules.items():
        layers[name], params[name] = _convert(child, join(path, name), ctx)
    return layers, params


def _sequential(module: Any, path: str, ctx: _Context) -> Converted:
    from conversion.transformer import continual_encoder_layer

    encoder_layer = continual_encoder_layer(module, path)  # the reference's layer factories
    if encoder_layer is not None:
        return encoder_layer
    layers, params = _children(module, path, ctx)
    return Sequential(layers), params


def _line_up_shortcuts(layers: dict, params: dict) -> tuple[dict, dict]:
    """The reference's branches in step mode as they are, with a clip `forward` too.

    The reference aligns a residual's `Delay(k)` shortcut with a branch that shortens
    the clip (a single-output attention reports its query's offset, k, as its delay):
    step t adds input frame t - k to the window ending at t. cojax's attention has the
    same alignment k but a delay (warm-up) of `sequence_len - 1`, so the shortcut
    becomes `Delay(k, auto_shrink="lagging")` plus a `Skip` up to that warm-up: the same
    step outputs, and `forward` returns clips of one length. Only when every branch
    then stands for the same frame and only parameter-free branches change (the
    params keep torch's module paths); otherwise the branches are kept as converted.
    """
    n = 10_000
    if not any(layer.output_length(n) < n for layer in layers.values()):
        return layers, params
    swapped = {
        name: Delay(layer.delay_frames, layer.temporal_fill, auto_shrink="lagging")
        if isinstance(layer, Delay) and not layer.auto_shrink
        else layer
        for name, layer in layers.items()
    }
    if len({layer.alignment for layer in swapped.values()}) != 1:
        return layers, params
    aligned = align_by_alignment(tuple(swapped.items()))
    if aligned is None:
        return layers, params
    aligned = dict(aligned)
    changed = [name for name in layers if aligned[name] is not swapped[name]]
    if any(jax.tree_util.tree_leaves(params[name]) for name in changed):
        return layers, params
    params = dict(params)
    for name in changed:
        params[name] = {child: {} for child, _ in aligned[name].children}
    return aligned, params


def _parallel(module: Any, path: str, ctx: _Context) -> Converted:
    layers, params = _line_up_shortcuts(*_children(module, path, ctx))
    return Parallel(children=tuple(layers.items())), params


def _broadcast_reduce(module: Any, path: str, ctx: _Context) -> Converted:
    layers, params = _line_up_shortcuts(*_children(module, path, ctx))
    reduce = _reduction(module, path, ctx)
    return BroadcastReduce(children=tuple(layers.items()), reduce=reduce), params


def _reduce(module: Any, path: str, ctx: _Context) -> Converted:
    return Reduce(_reduction(module, path, ctx)), {}


def _reduction(module: Any, path: str, ctx: _Context) -> str | Callable:
    """The reference's reduce function -> a cojax reduce name (or the user's function)."""
    from continual import container

    if path in ctx.reductions:
        return ctx.reductions[path]
    fn = getattr(module.reduce, "__wrapped__", module.reduce)  # unwrap `nonempty`
    known = {
        container.reduce_sum: "sum",
        container.reduce_concat: "concat",
        container.reduce_mul: "mul",
        container.reduce_max: "max",
    }
    if fn in known:
        return known[fn]
    raise fail(
        module,
        path,
        f"its reduce is the custom torch function {getattr(fn, '__name__', fn)!r}, "
        "which cannot be translated. Write it in JAX (a function of a tuple of "
        "channels-last arrays) and pass reductions={"
        f"{path!r}: fn}}, or build this block in cojax with that function.",
    )


def _dispatch(module: Any, path: str, ctx: _Context) -> Converted:
    return ParallelDispatch(module.dispatch_mapping), {}


def _conditional(module: Any, path: str, ctx: _Context) -> Converted:
    if path not in ctx.predicates:
        raise fail(
            module,
            path,
            "its predicate is a torch function of (module, tensor), which cannot be "
            "translated. Pass a JAX predicate of the channels-last frame/clip as "
            f"conditional_predicates={{{path!r}: fn}}; it may return a Python bool or a "
            "traced bool scalar.",
        )
    on_true, p_true = _convert(module._modules["0"], join(path, "0"), ctx)
    on_false, p_false = None, None
    if "1" in module._modules:
        on_false, p_false = _convert(module._modules["1"], join(path, "1"), ctx)
    layer = Conditional(ctx.predicates[path], on_true, on_false)
    if on_false is None:
        p_false = layer.on_false.init(jax.random.PRNGKey(0))  # stateless Delay chain
    return layer, {
        "on_true": _aligned_params(layer.on_true, on_true, p_true),
        "on_false": _aligned_params(
            layer.on_false, layer.on_false if on_false is None else on_false, p_false
        ),
    }


def _aligned_params(built: Layer, child: Layer, params: Any) -> Any:
    """Params of `child` after `Conditional` may have wrapped it as Sequential(Delay, child)."""
    if built is child:
        return params
    return {"0": {}, "1": params}


# --------------------------------------------------------------------------- utilities


def _temporal_fill(module: Any) -> str:
    """The reference's `_make_padding` function -> "zeros" / "replicate" / "neg_inf"."""
    import torch
    from continual.utils import neginf_like

    fill = module._make_padding
    if fill is torch.clone:
        return "replicate"
    if fill is neginf_like:
        return "neg_inf"
    return "zeros"


def _delay(module: Any, path: str, ctx: _Context) -> Converted:
    fill = _temporal_fill(module)
    return Delay(int(module.delay), fill, auto_shrink=module.auto_shrink), {}


def _reshape(module: Any, path: str, ctx: _Context) -> Converted:
    shape = tuple(module.shape)
    if len(shape) < 2:
        raise fail(
            module,
            path,
            f"co.Reshape{shape} includes the batch size first and needs at least one more "
            "entry (the channels).",
        )
    # The reference reshapes each torch frame (B, C, *S) to `shape` (batch first); one
    # cojax stream drops the batch entry and keeps torch's element order.
    return closure.Reshape(*shape[1:], channels_first=True), {}


def _lambda(module: Any, path: str, ctx: _Context) -> Converted:
    if path in ctx.lambdas:
        replacement = ctx.lambdas[path]
        if isinstance(replacement, Layer):
            return replacement, replacement.init(jax.random.PRNGKey(0))  # its own params
        return closure.Lambda(replacement), {}
    only = (module.forward_only_fn, module.forward_step_only_fn, module.forward_steps_only_fn)
    layer = None if any(f is not None for f in only) else _known_closure(module.fn)
    if layer is None:
        raise fail(
            module,
            path,
            f"it wraps the torch function {getattr(module.fn, '__name__', module.fn)!r}, "
            "which cannot be translated. Pass a JAX function of one channels-last frame "
            f"(*S, C) as lambdas={{{path!r}: fn}} (or a cojax layer).",
        )
    return layer, {}


def _known_closure(fn: Any) -> Layer | None:
    """The closures of `continual.closure` (Add, Multiply, Identity, Constant, Zero, One)."""
    import torch
    from continual import closure as ref

    if isinstance(fn, functools.partial) and not fn.args:
        value = _scalar(next(iter(fn.keywords.values()), None))
        if value is not None and fn.func is ref._add:
            return closure.Add(value)
        if value is not None and fn.func is ref._multiply:
            return closure.Multiply(value)
        return None
    if fn is ref._unity:
        return closure.Identity()
    if fn is torch.zeros_like:
        return closure.Zero()
    if fn is torch.ones_like:
        return closure.One()
    if getattr(fn, "__qualname__", "") == "Constant.<locals>.<lambda>" and fn.__closure__:
        value = _scalar(fn.__closure__[0].cell_contents)
        return None if value is None else closure.Constant(value)
    return None


def _scalar(value: Any) -> float | None:
    """A Python number or a one-element tensor -> float (tensors of other shapes: None,
    their torch layout cannot be mapped to channels-last without knowing the input)."""
    import torch

    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    return None


# --------------------------------------------------------------------------- linear, conv


def _linear(module: Any, path: str, ctx: _Context) -> Converted:
    channel_dim = getattr(module, "channel_dim", -1)
    if channel_dim != 1:
        raise fail(
            module,
            path,
            f"it projects torch axis {channel_dim}, not the channels (axis 1): the last "
            "axis of a (B, C, T) clip is time (so the reference's forward and forward_step "
            "project different axes), of a (B, C, T, *S) clip the last spatial axis. A "
            "plain nn.Linear becomes this. Use co.Linear(..., channel_dim=1), which is "
            "cojax's Linear on the channels-last axis.",
        )
    has_bias = module.bias is not None
    layer = Linear(module.in_features, module.out_features, bias=has_bias)
    params = {"kernel": array(module.weight).T}
    if has_bias:
        params["bias"] = array(module.bias)
    return layer, params


def _conv(module: Any, path: str, ctx: _Context) -> Converted:
    import continual as co

    cls = {co.Conv1d: conv.Conv1d, co.Conv2d: conv.Conv2d, co.Conv3d: conv.Conv3d}[
        next(c for c in type(module).__mro__ if c in (co.Conv1d, co.Conv2d, co.Conv3d))
    ]
    if module.padding_mode not in conv.PADDING_MODES:
        raise fail(
            module,
            path,
            f"padding_mode {module.padding_mode!r} is not supported (use one of "
            f"{conv.PADDING_MODES}).",
        )
    if isinstance(module.padding, str):
        raise fail(module, path, f"string padding {module.padding!r} is not supported.")
    has_bias = module.bias is not None
    layer = cls(
        module.in_channels,
        module.out_channels,
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        dilation=tuple(module.dilation),
        groups=module.groups,
        bias=has_bias,
        padding_mode=module.padding_mode,
        temporal_fill=module.t_padding_mode,
    )
    weight = array(module.weight)  # (C_out, C_in / g, k_t, *k_sp)
    params = {"kernel": jnp.transpose(weight, (*range(2, weight.ndim), 1, 0))}
    if has_bias:
        params["bias"] = array(module.bias)
    return layer, params


# --------------------------------------------------------------------------- pools


def _check_pool_fill(module: Any, path: str, padding: int) -> None:
    """A pool's temporal fill only shows with temporal padding; cojax pads like torch
    (-inf for max, zeros for average), so a replicate fill cannot be kept."""
    if padding > 0 and _temporal_fill(module) == "replicate":
        raise fail(
            module,
            path,
            "temporal_fill='replicate' with temporal padding is not supported: cojax pools "
            "pad time like torch (-inf for max, zeros for average).",
        )


def _pool(module: Any, path: str, ctx: _Context) -> Converted:
    import continual as co

    kinds = {
        co.MaxPool1d: pool.MaxPool1d,
        co.MaxPool2d: pool.MaxPool2d,
        co.MaxPool3d: pool.MaxPool3d,
        co.AvgPool1d: pool.AvgPool1d,
        co.AvgPool2d: pool.AvgPool2d,
        co.AvgPool3d: pool.AvgPool3d,
    }
    cls = kinds[next(c for c in type(module).__mro__ if c in kinds)]
    _check_pool_fill(module, path, module.padding[0])
    args = dict(
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        dilation=tuple(module.dilation),
        ceil_mode=bool(module.ceil_mode),
    )
    if cls.kind == "avg":
        args.update(
            count_include_pad=bool(module.count_include_pad),
            divisor_override=getattr(module, "divisor_override", None),
        )
    return cls(**args), {}


def _adaptive_pool(module: Any, path: str, ctx: _Context) -> Converted:
    import continual as co

    kinds = {
        co.AdaptiveAvgPool2d: pool.AdaptiveAvgPool2d,
        co.AdaptiveAvgPool3d: pool.AdaptiveAvgPool3d,
        co.AdaptiveMaxPool2d: pool.AdaptiveMaxPool2d,
        co.AdaptiveMaxPool3d: pool.AdaptiveMaxPool3d,
    }
    cls = kinds[next(c for c in type(module).__mro__ if c in kinds)]
    _check_pool_fill(module, path, module.padding[0])
    layer = cls(
        tuple(module.output_size),
        int(module.kernel_size[0]),
        stride=int(module.stride[0]),
        padding=int(module.padding[0]),
        dilation=int(module.dilation[0]),
    )
    return layer, {}


# --------------------------------------------------------------------------- recurrent


def _recurrent(module: Any, path: str, ctx: _Context) -> Converted:
    import continual as co

    if module.bidirectional:
        raise fail(module, path, "bidirectional recurrences cannot run continually.")
    sizes = dict(
        input_size=module.input_size,
        hidden_size=module.hidden_size,
        num_layers=module.num_layers,
        bias=bool(module.bias),
    )
    if isinstance(module, co.LSTM):
        layer = recurrent.LSTM(**sizes, proj_size=int(getattr(module, "proj_size", 0)))
    elif isinstance(module, co.GRU):
        layer = recurrent.GRU(**sizes)
    else:
        layer = recurrent.RNN(**sizes, nonlinearity=module.nonlinearity)
    layers = []
    for k in range(module.num_layers):
        p = {
            "w_ih": array(getattr(module, f"weight_ih_l{k}")).T,
            "w_hh": array(getattr(module, f"weight_hh_l{k}")).T,
        }
        if module.bias:
            p["b_ih"] = array(getattr(module, f"bias_ih_l{k}"))
            p["b_hh"] = array(getattr(module, f"bias_hh_l{k}"))
        if getattr(module, "proj_size", 0):
            p["w_hr"] = array(getattr(module, f"weight_hr_l{k}")).T
        layers.append(p)
    return layer, {"layers": layers}
