"""`load_x3d`: an X3D checkpoint (PyTorch) -> a cojax `x3d` model and its params.

Two key layouts are recognised from the keys (docs/x3d.md, "Checkpoint key layouts"):

- SlowFast / co3d: `s1.pathway0_stem.{conv_xy, conv, bn}`,
  `s{i}.pathway0_res{j}.{branch1, branch1_bn, branch2.{a, a_bn, b, b_bn, se.fc1, se.fc2,
  c, c_bn}}`, `head.{conv_5, conv_5_bn, lin_5, projection}`.
- pytorchvideo `create_x3d` (hub files `X3D_{XS,S,M,L}.pyth`): `blocks.0.conv.conv_t`
  (the spatial 1×3×3 conv, despite its name), `blocks.0.conv.conv_xy` (the temporal
  5×1×1), `blocks.0.norm`, `blocks.{i}.res_blocks.{j}.{branch1_conv, branch1_norm,
  branch2.{conv_a, norm_a, conv_b, norm_b.0, norm_b.1.block.{0, 2}, conv_c, norm_c}}`,
  `blocks.5.pool.{pre_conv, pre_norm, post_conv}`, `blocks.5.proj`. pytorchvideo has no
  shortcut BN where a block keeps its width (stage 2's first block): it loads as an
  identity BN.

Weights: torch conv `(O, I/g, kt, kh, kw)` -> cojax `(kt, kh, kw, I/g, O)`, Linear
`(O, I)` -> `(I, O)`, BN `weight, bias, running_mean, running_var` -> `scale, bias,
mean, var` (`num_batches_tracked` is ignored). Torch is imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cojax.core import Params
from cojax.models.x3d import BN_EPS, X3D, x3d

SLOWFAST = "SlowFast/co3d"
PYTORCHVIDEO = "pytorchvideo"
_NESTED = ("model_state", "state_dict")
_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_IGNORED_SUFFIX = ".num_batches_tracked"
_LISTED = 20  # keys listed per kind in the error message


def load_x3d(
    source: str | os.PathLike | Mapping[str, Any],
    size: str = "S",
    *,
    weights_only: bool = True,
    **x3d_kwargs: Any,
) -> tuple[X3D, Params]:
    """Load an X3D checkpoint into `x3d(size, **x3d_kwargs)`; returns `(model, params)`.

    `source`: a checkpoint file (read with `torch.load(map_location="cpu",
    weights_only=weights_only)`; pass `weights_only=False` only for files you trust) or
    a state dict (torch tensors or arrays); a dict nested under "model_state" or
    "state_dict" is unwrapped, a common "module." prefix dropped. The key layout
    (SlowFast/co3d or pytorchvideo) is detected from the keys. `x3d_kwargs` go to
    `cojax.models.x3d` (e.g. `head_pool_frames`, `widths`, `depths`, `head_width`);
    `num_classes` defaults to the rows of the checkpoint's projection weight.
    A checkpoint that does not fit the model raises one ValueError listing the missing,
    unexpected and mis-shaped keys; nothing is loaded partially.
    """
    state = _state_dict(source, weights_only)
    layout = _detect_layout(state)
    if "num_classes" not in x3d_kwargs:
        projection = _LAYOUTS[layout](("head", "projection"))
        weight = state.get(f"{projection}.weight")
        if weight is not None and len(np.shape(weight)) == 2:
            x3d_kwargs["num_classes"] = int(np.shape(weight)[0])
    model = x3d(size, **x3d_kwargs)
    # Only the tree of `init` (nothing is computed); every leaf comes from the checkpoint.
    specs = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return model, _fill(specs, state, layout)


# --------------------------------------------------------------------------- reading


def _state_dict(source: Any, weights_only: bool) -> dict[str, Any]:
    """The flat `{key: tensor}` dict of a checkpoint file or (nested) dict."""
    if isinstance(source, (str, os.PathLike)):
        source = _torch_load(os.fspath(source), weights_only)
    if not isinstance(source, Mapping):
        raise TypeError(
            "load_x3d: source must be a checkpoint path or a state dict, got "
            f"{type(source).__name__}."
        )
    while True:
        nested = [k for k in _NESTED if isinstance(source.get(k), Mapping)]
        if not nested:
            break
        source = source[nested[0]]
    state = {str(k): v for k, v in source.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _torch_load(path: str, weights_only: bool) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"load_x3d: {path!r} holds objects that torch.load(weights_only=True) refuses "
            f"({err}). If you trust the file, pass weights_only=False."
        ) from err


def _detect_layout(state: Mapping[str, Any]) -> str:
    if any(k.startswith("blocks.0.") for k in state):
        return PYTORCHVIDEO
    if any(k.startswith("s1.") for k in state):
        return SLOWFAST
    sample = ", ".join(repr(k) for k in list(state)[:5]) or "none"
    raise ValueError(
        "load_x3d: unknown checkpoint key layout: expected SlowFast/co3d keys "
        "('s1.pathway0_stem...') or pytorchvideo keys ('blocks.0.conv...'); "
        f"first keys: {sample}."
    )


# --------------------------------------------------------------------------- key maps


def _slowfast_module(path: tuple[str, ...]) -> str:
    """cojax module path (`s2`, `res0`, `sum`, `branch2`, `a`) -> SlowFast key prefix."""
    stage, rest = path[0], path[1:]
    if stage == "s1":
        return f"s1.pathway0_stem.{rest[0]}"
    if stage == "head":
        return "head." + ".".join(rest)
    block, (branch, *layer) = rest[0], rest[2:]
    prefix = f"{stage}.pathway0_{block}"
    if branch == "branch1":
        return f"{prefix}.branch1" + ("_bn" if layer == ["bn"] else "")
    if layer[0] == "se":  # se.scale.fc1 -> se.fc1
        return f"{prefix}.branch2.se.{layer[-1]}"
    return f"{prefix}.branch2.{layer[0]}"


_PTV_STEM = {"conv_xy": "conv.conv_t", "conv": "conv.conv_xy", "bn": "norm"}
_PTV_BRANCH2 = {
    "a": "conv_a",
    "a_bn": "norm_a",
    "b": "conv_b",
    "b_bn": "norm_b.0",
    "fc1": "norm_b.1.block.0",
    "fc2": "norm_b.1.block.2",
    "c": "conv_c",
    "c_bn": "norm_c",
}
_PTV_HEAD = {
    "conv_5": "pool.pre_conv",
    "conv_5_bn": "pool.pre_norm",
    "lin_5": "pool.post_conv",
    "projection": "proj",
}


def _pytorchvideo_module(path: tuple[str, ...]) -> str:
    """cojax module path -> pytorchvideo `create_x3d` key prefix."""
    stage, rest = path[0], path[1:]
    if stage == "s1":
        return f"blocks.0.{_PTV_STEM[rest[0]]}"
    if stage == "head":
        return f"blocks.5.{_PTV_HEAD[rest[0]]}"
    block, (branch, *layer) = rest[0], rest[2:]
    prefix = f"blocks.{int(stage[1:]) - 1}.res_blocks.{block[len('res') :]}"
    if branch == "branch1":
        return f"{prefix}.branch1_{'norm' if layer == ['bn'] else 'conv'}"
    return f"{prefix}.branch2.{_PTV_BRANCH2[layer[-1]]}"


_LAYOUTS: dict[str, Callable[[tuple[str, ...]], str]] = {
    SLOWFAST: _slowfast_module,
    PYTORCHVIDEO: _pytorchvideo_module,
}


# --------------------------------------------------------------------------- filling


def _fill(specs: Params, state: Mapping[str, Any], layout: str) -> Params:
    """Every leaf of `specs` from `state`; one ValueError for all that does not fit."""
    module_key = _LAYOUTS[layout]
    used: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []

    def leaf(path, spec: jax.ShapeDtypeStruct):
        names = tuple(p.key for p in path)
        module, name = names[:-1], names[-1]
        key, to_torch, from_torch = _torch_param(module_key(module), name, spec.shape)
        if key not in state:
            if layout == PYTORCHVIDEO and _identity_shortcut_bn(module, specs, state, key):
                return _identity_bn(name, spec)
            missing.append(key)
            return None
        used.add(key)
        value = _numpy(state[key])
        if value.shape != to_torch:
            misshaped.append(f"{key}: expected {to_torch}, got {value.shape}")
            return None
        return jnp.asarray(from_torch(value), dtype=spec.dtype)

    params = jax.tree_util.tree_map_with_path(leaf, specs)
    unexpected = [k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIX)]
    if missing or unexpected or misshaped:
        raise ValueError(_mismatch_message(layout, missing, unexpected, misshaped))
    return params


def _torch_param(prefix: str, name: str, shape: tuple[int, ...]):
    """(torch key, torch shape, torch -> cojax array) for one cojax leaf."""
    if name in ("scale", "mean", "var"):
        return f"{prefix}.{_BN_NAMES[name]}", shape, np.asarray
    if name == "bias":
        return f"{prefix}.bias", shape, np.asarray
    if len(shape) == 2:  # Linear: (in, out) <- (out, in)
        return f"{prefix}.weight", shape[::-1], np.transpose
    # Conv: (kt, kh, kw, I/g, O) <- (O, I/g, kt, kh, kw)
    torch_shape = (shape[-1], shape[-2], *shape[:-2])
    return f"{prefix}.weight", torch_shape, lambda w: np.transpose(w, (2, 3, 4, 1, 0))


def _identity_shortcut_bn(
    module: tuple[str, ...], specs: Params, state: Mapping[str, Any], key: str
) -> bool:
    """pytorchvideo omits `branch1_norm` of a shortcut conv that keeps the width (all
    of its keys absent; a partly present BN is reported as missing keys)."""
    if len(module) != 5 or module[3:] != ("branch1", "bn"):
        return False
    prefix = key.rsplit(".", 1)[0] + "."
    if any(k.startswith(prefix) for k in state):
        return False
    conv = specs[module[0]][module[1]]["sum"]["branch1"]["conv"]["kernel"]
    return conv.shape[-2] == conv.shape[-1]


def _identity_bn(name: str, spec: jax.ShapeDtypeStruct) -> jax.Array:
    # var = 1 - eps makes (x - 0) / sqrt(var + eps) exactly x.
    value = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0 - BN_EPS}[name]
    return jnp.full(spec.shape, value, spec.dtype)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (bfloat16 has no numpy dtype)
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _mismatch_message(
    layout: str, missing: list[str], unexpected: list[str], misshaped: list[str]
) -> str:
    parts = [f"load_x3d: the checkpoint ({layout} layout) does not fit the model."]
    for what, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("mis-shaped keys (torch shapes)", misshaped),
    ):
        if keys:
            listed = ", ".join(keys[:_LISTED])
            more = f", ... ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
            parts.append(f"{len(keys)} {what}: {listed}{more}.")
    parts.append("Check the size and the x3d options (widths, depths, head_width, num_classes).")
    return " ".join(parts)
