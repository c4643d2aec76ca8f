"""`structured-pruning-adapters` (0.7.1, import `sp_adapters`) -> cojax adapter modules.

`from_sp_adapters(module)` returns `(flax_module, variables)`: the same adapter with
the same weights in Flax's layouts (kernels `(…, in, out)`, channels-last inputs), and
all-True masks (the reference keeps no masks on its modules). Conversions:

| torch | cojax |
|---|---|
| `SPLoRALinear` | `SPLoRADense` |
| `SPLoRAConv1d/2d/3d` | `SPLoRAConv` |
| `SPPaRAConv1d/2d/3d` | `SPPaRAConv` |
| `SPLoRAMultiheadAttention` | `SPLoRAMultiHeadAttention` (inputs `(…, L, E)`) |
| `SPLoPALinear` | `AdapterSequential` owning the layer's prototypes |
| `nn.Sequential` of these, plain activations, `nn.Dropout`, `nn.Identity` | `AdapterSequential`; SPLoPA layers whose prototypes are one torch module share one prototype set |
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cojax.adapters import (
    SPLoPADense,
    SPLoPAPrototypes,
    SPLoRAConv,
    SPLoRADense,
    SPLoRAMultiHeadAttention,
    SPPaRAConv,
)
from cojax.adapters.sequential import AdapterSequential
from conversion._common import array, join, where


def from_sp_adapters(module: Any) -> tuple[Any, dict]:
    """Convert an `sp_adapters` layer (or an `nn.Sequential` of them) to
    `(flax_module, variables)`; `flax_module.apply(variables, x)` equals `module(x)`
    with x channels-last (and batch-first for attention). Unsupported modules or options
    raise `NotImplementedError` naming the module's path."""
    import sp_adapters as sp
    import torch

    if isinstance(module, torch.nn.Sequential):
        return _sequential(module, "")
    if isinstance(module, sp.SPLoPALinear):
        return _sequential(torch.nn.Sequential(module), "")
    return _layer(module, "")


def _fail(module: Any, path: str, why: str) -> NotImplementedError:
    return NotImplementedError(
        f"from_sp_adapters: cannot convert {type(module).__name__} at {where(path)}: {why}"
    )


def _layer(module: Any, path: str) -> tuple[Any, dict]:
    import sp_adapters as sp

    if isinstance(module, sp.SPLoRALinear):
        return _splora_linear(module)
    if isinstance(module, sp.SPLoRAMultiheadAttention):
        return _attention(module, path)
    splora = (sp.SPLoRAConv1d, sp.SPLoRAConv2d, sp.SPLoRAConv3d)
    sppara = (sp.SPPaRAConv1d, sp.SPPaRAConv2d, sp.SPPaRAConv3d)
    if isinstance(module, splora + sppara):
        return _conv(module, path, isinstance(module, splora))
    raise _fail(
        module,
        path,
        "supported are SPLoRALinear, SPLoRAConv1d/2d/3d, SPPaRAConv1d/2d/3d, "
        "SPLoRAMultiheadAttention, SPLoPALinear and nn.Sequential of these.",
    )


def _low_rank(adapter: Any) -> dict:
    """The reference's `LowRankMatrix` (rows (1, r, in), cols (1, out, r)) -> down, up."""
    return {
        "adapter_down": array(adapter.rows[0]).T,  # (in, r)
        "adapter_up": array(adapter.cols[0]).T,  # (r, out)
    }


def _splora_linear(module: Any, bias: Any = None) -> tuple[Any, dict]:
    params = {"kernel": array(module.weight).T, **_low_rank(module.adapter)}
    bias = module.bias if bias is None else bias
    if bias is not None:
        params["bias"] = array(bias)
    flax_module = SPLoRADense(
        module.out_features,
        rank=params["adapter_down"].shape[1],
        use_bias=bias is not None,
    )
    masks = {"in": np.ones(module.in_features, bool), "out": np.ones(module.out_features, bool)}
    return flax_module, {"params": params, "masks": masks}


def _conv(module: Any, path: str, low_rank: bool) -> tuple[Any, dict]:
    if module.padding_mode != "zeros":
        raise _fail(module, path, f"padding_mode {module.padding_mode!r} (only 'zeros').")
    if any(d != 1 for d in module.dilation):
        raise _fail(module, path, f"dilation {module.dilation} (the adapters take 1).")
    if isinstance(module.padding, str):
        raise _fail(module, path, f"padding {module.padding!r}: give the pixels as integers.")
    weight = array(module.weight)  # (out, in/g, *k)
    params = {"kernel": jnp.moveaxis(weight, (0, 1), (-1, -2))}
    if low_rank:
        params.update(_low_rank(module.adapter))
    else:
        params["adapter"] = array(module.adapter).T  # (in/g, out)
    if module.bias is not None:
        params["bias"] = array(module.bias)
    cls = SPLoRAConv if low_rank else SPPaRAConv
    extra = {"rank": params["adapter_down"].shape[1]} if low_rank else {}
    flax_module = cls(
        module.out_channels,
        tuple(module.kernel_size),
        strides=tuple(module.stride),
        padding=tuple(module.padding),
        feature_group_count=module.groups,
        use_bias=module.bias is not None,
        **extra,
    )
    masks = {"in": np.ones(module.in_channels, bool), "out": np.ones(module.out_channels, bool)}
    return flax_module, {"params": params, "masks": masks}


def _attention(module: Any, path: str) -> tuple[Any, dict]:
    if module.bias_k is not None or module.add_zero_attn:
        raise _fail(module, path, "add_bias_kv / add_zero_attn are not supported.")
    if (module.in_proj_bias is None) != (module.out_proj.bias is None):
        raise _fail(module, path, "in- and out-projection biases must both exist or not.")
    in_bias = [None] * 3 if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
    variables = {"params": {}, "masks": {}}
    for name, bias in zip(("q_proj", "k_proj", "v_proj"), in_bias):
        _, v = _splora_linear(getattr(module, name), bias)
        variables["params"][name], variables["masks"][name] = v["params"], v["masks"]
    _, v = _splora_linear(module.out_proj)
    variables["params"]["out_proj"], variables["masks"]["out_proj"] = v["params"], v["masks"]
    flax_module = SPLoRAMultiHeadAttention(
        module.embed_dim,
        module.num_heads,
        rank=variables["params"]["q_proj"]["adapter_down"].shape[1],
        use_bias=module.in_proj_bias is not None,
    )
    return flax_module, variables


def _activation(module: Any) -> Any:
    import torch

    nn = torch.nn
    if isinstance(module, nn.GELU):
        return functools.partial(jax.nn.gelu, approximate=module.approximate == "tanh")
    table = {
        nn.ReLU: jax.nn.relu,
        nn.Tanh: jnp.tanh,
        nn.Sigmoid: jax.nn.sigmoid,
        nn.SiLU: jax.nn.silu,
        nn.Identity: _identity,
        nn.Dropout: _identity,  # inference
    }
    return next((fn for cls, fn in table.items() if type(module) is cls), None)


def _identity(x: Any) -> Any:
    return x


def _sequential(module: Any, path: str) -> tuple[Any, dict]:
    import sp_adapters as sp

    layers, prototype_index, prototypes, shared = [], [], [], {}
    variables: dict = {"params": {}, "masks": {}}
    for name, child in module.named_children():
        child_path = join(path, name)
        i = len(layers)
        if isinstance(child, sp.SPLoPALinear):
            flax_layer, v, protos = _splopa(child)
            key = id(child.adapter.prototypes)
            if key not in shared:
                shared[key] = len(prototypes)
                proto_module, proto_params = protos
                variables["params"][f"prototypes_{len(prototypes)}"] = proto_params
                prototypes.append(proto_module)
            prototype_index.append(shared[key])
        else:
            activation = _activation(child)
            if activation is not None:
                layers.append(activation)
                prototype_index.append(None)
                continue
            flax_layer, v = _layer(child, child_path)
            prototype_index.append(None)
        layers.append(flax_layer)
        variables["params"][f"layers_{i}"] = v["params"]
        variables["masks"][f"layers_{i}"] = v["masks"]
    flax_module = AdapterSequential(tuple(layers), tuple(prototypes), tuple(prototype_index))
    return flax_module, variables


def _splopa(module: Any) -> tuple[Any, dict, tuple[Any, dict]]:
    adapter = module.adapter
    pos = adapter.pos_weights
    protos = adapter.prototypes
    up, down = array(protos.cols), array(protos.rows)  # (P, p, r), (P, r, q)
    P, p, r = up.shape
    q = down.shape[2]
    params = {"kernel": array(module.weight).T, "pos": array(pos)}
    if module.bias is not None:
        params["bias"] = array(module.bias)
    layer = SPLoPADense(module.out_features, use_bias=module.bias is not None)
    proto_module = SPLoPAPrototypes(P, (p, q), rank=r)
    masks = {"blocks": np.ones(pos.shape, bool)}
    return layer, {"params": params, "masks": masks}, (proto_module, {"up": up, "down": down})
