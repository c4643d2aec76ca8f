"""`load_stgcn`: ST-GCN-family checkpoints (PyTorch state dicts) -> `cojax.models.stgcn`.

Two layouts, told apart by their keys (docs/stgcn.md):
- continual-skeletons (`data_bn`, `layers.layer{i}.{gcn,tcn,residual}`, `fc`): ST-GCN,
  AGCN and S-TR, regular and * ("mod") checkpoints, with or without the continual
  containers' digits (`layers.layer2.0.1.gcn…`, `layers.layer5.0.0.residual…`).
- the original ST-GCN / mmskeleton `ST_GCN_18` (`A`, `data_bn`,
  `st_gcn_networks.{i}.{gcn.conv,tcn.{0,2,3},residual.{0,1}}`, `edge_importance.{i}`,
  `fcn`): its "spatial" partition, its BN → ReLU → conv TCN, its GCN bias before the
  graph product, a 1×1 conv head.
The widths, the number of blocks, the input channels, the persons and `num_classes`
come from the checkpoint. The adjacency stored in it is what the model uses; it must
equal the chosen graph's partition (else a ValueError says where they differ).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cojax.graphs import adjacency, skeleton
from cojax.models.stgcn import S_TR_FIRST_ATTENTION, VARIANTS, SkeletonNet, skeleton_net
from conversion.x3d import _numpy

Params = dict[str, Any]
_LISTED = 8
_NESTED = ("state_dict", "model_state_dict", "model")


def load_stgcn(
    source: Any,
    variant: str = "st_gcn",
    graph: str = "ntu",
    mod: bool = False,
    *,
    weights_only: bool = True,
    check_graph: bool = True,
    **kwargs: Any,
) -> tuple[SkeletonNet, Params]:
    """`(model, params)` from a checkpoint file or state dict.

    `variant`: "st_gcn", "a_gcn" or "s_tr"; `graph`: "ntu" or "kinetics"; `mod`: the
    * variant's checkpoint. `kwargs` go to `cojax.models.stgcn.skeleton_net`
    (`num_frames`, default 300: the clip length the head pools over). The file is read
    with `torch.load(weights_only=True)` unless `weights_only=False` (trusted files
    only). A checkpoint that does not fit raises one ValueError listing the missing,
    unexpected and mis-shaped keys.
    """
    if variant not in VARIANTS:
        raise ValueError(f"load_stgcn: variant must be one of {VARIANTS}, got {variant!r}.")
    state = _state_dict(source, weights_only)
    layout = "st_gcn" if any(k.startswith("st_gcn_networks.") for k in state) else "continual"
    if layout == "st_gcn" and variant != "st_gcn":
        raise ValueError(
            f"load_stgcn: the checkpoint has the original ST-GCN layout (st_gcn_networks.*), "
            f"which holds an ST-GCN, not variant {variant!r}."
        )
    if layout == "continual":
        state = {_strip_container_digits(k): v for k, v in state.items()}
    joints = skeleton(graph).num_joints
    config = _config_from_keys(state, layout, joints)
    config.update(kwargs)
    model = skeleton_net(
        variant, graph, mod=mod, layout="st_gcn" if layout == "st_gcn" else "continual_skeletons",
        **config,
    )  # fmt: skip
    specs = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    reader = _Reader(state, layout)
    params = (_fill_original if layout == "st_gcn" else _fill_continual)(model, specs, reader)
    reader.finish()
    if check_graph:
        _check_adjacency(params, graph, "spatial" if layout == "st_gcn" else "inward_outward")
    return model, params


# --------------------------------------------------------------------------- reading


def _state_dict(source: Any, weights_only: bool) -> dict[str, Any]:
    if isinstance(source, (str, os.PathLike)):
        import pickle

        import torch

        try:
            source = torch.load(os.fspath(source), map_location="cpu", weights_only=weights_only)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"load_stgcn: {os.fspath(source)!r} holds objects that "
                f"torch.load(weights_only=True) refuses ({err}). If you trust the file, "
                "pass weights_only=False."
            ) from err
    if not isinstance(source, Mapping):
        raise TypeError(
            f"load_stgcn: source must be a checkpoint path or a state dict, got "
            f"{type(source).__name__}."
        )
    while any(isinstance(source.get(k), Mapping) for k in _NESTED):
        source = next(source[k] for k in _NESTED if isinstance(source.get(k), Mapping))
    state = {str(k): v for k, v in source.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _strip_container_digits(key: str) -> str:
    """`layers.layer2.0.1.gcn…` -> `layers.layer2.gcn…`; `….0.0.residual…` -> `….residual…`."""
    key = re.sub(r"^(layers\.layer\d+)\.0\.1\.", r"\1.", key)
    return re.sub(r"^(layers\.layer\d+)\.0\.0\.residual\.", r"\1.residual.", key)


def _config_from_keys(state: Mapping[str, Any], layout: str, joints: int) -> dict[str, Any]:
    """Block widths, input channels, persons, classes and S-TR's first attending block."""
    if layout == "st_gcn":
        tcn = lambda i: f"st_gcn_networks.{i}.tcn.2.weight"  # noqa: E731
        first_gcn, head = "st_gcn_networks.0.gcn.conv.weight", "fcn.weight"
    else:
        tcn = lambda i: f"layers.layer{i + 1}.tcn.t_conv.weight"  # noqa: E731
        first_gcn, head = "layers.layer1.gcn.g_conv.0.weight", "fc.weight"
    widths = []
    while tcn(len(widths)) in state:
        widths.append(int(np.shape(state[tcn(len(widths))])[0]))
    config: dict[str, Any] = {}
    if widths:
        config["widths"] = tuple(widths)
    if first_gcn in state:
        config["in_channels"] = int(np.shape(state[first_gcn])[1])
    if head in state:
        config["num_classes"] = int(np.shape(state[head])[0])
    if layout == "continual" and "data_bn.weight" in state and "in_channels" in config:
        features = int(np.shape(state["data_bn.weight"])[0])
        config["num_persons"] = max(1, features // (joints * config["in_channels"]))
    attending = [
        i
        for i in range(len(widths))
        if f"layers.layer{i + 1}.gcn.attention_conv.qkv_conv.weight" in state
    ]
    config["first_attention"] = attending[0] if attending else S_TR_FIRST_ATTENTION
    return config


class _Reader:
    """Takes tensors by key, recording missing and mis-shaped ones; `finish` raises."""

    def __init__(self, state: Mapping[str, Any], layout: str):
        self.state, self.layout = state, layout
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def take(self, key: str, spec: Any, transform: Callable[[np.ndarray], np.ndarray]):
        if key not in self.state:
            self.missing.append(key)
            return jnp.zeros(spec.shape, spec.dtype)
        self.used.add(key)
        value = transform(_numpy(self.state[key]).astype(np.float32))
        if value.shape != tuple(spec.shape):
            self.misshaped.append(f"{key} {tuple(np.shape(self.state[key]))}")
            return jnp.zeros(spec.shape, spec.dtype)
        return jnp.asarray(value, spec.dtype)

    def finish(self) -> None:
        unexpected = sorted(
            k for k in self.state if k not in self.used and not k.endswith("num_batches_tracked")
        )
        if self.missing or unexpected or self.misshaped:
            parts = [f"load_stgcn: the checkpoint ({self.layout} layout) does not fit the model."]
            for what, keys in (
                ("missing keys", self.missing),
                ("unexpected keys", unexpected),
                ("mis-shaped keys (torch shapes)", self.misshaped),
            ):
                if keys:
                    more = f", ... ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
                    parts.append(f"{len(keys)} {what}: {', '.join(keys[:_LISTED])}{more}.")
            parts.append("Check variant, graph and mod against the checkpoint.")
            raise ValueError(" ".join(parts))


# --------------------------------------------------------------------------- transforms


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _dense(a: np.ndarray) -> np.ndarray:
    """torch 1×1 conv `(out, in, 1, 1)` or Linear `(out, in)` -> `(in, out)`."""
    return a.reshape(a.shape[0], -1).T


def _temporal_kernel(a: np.ndarray) -> np.ndarray:
    """torch Conv2d `(out, in, kt, 1)` -> cojax Conv3d `(kt, 1, 1, in, out)`."""
    return a[..., 0].transpose(2, 1, 0)[:, None, None]


def _bn(reader: _Reader, prefix: str, specs: Params) -> Params:
    names = {"mean": "running_mean", "var": "running_var", "scale": "weight", "bias": "bias"}
    return {k: reader.take(f"{prefix}.{names[k]}", s, _same) for k, s in specs.items()}


def _bn_permuted(reader: _Reader, prefix: str, specs: Params, channels: int) -> Params:
    """A BatchNorm1d over (c, v)-ordered features -> cojax's (v, c) order."""
    reorder = lambda a: a.reshape(channels, -1).T.reshape(-1)  # noqa: E731
    names = {"mean": "running_mean", "var": "running_var", "scale": "weight", "bias": "bias"}
    return {k: reader.take(f"{prefix}.{names[k]}", s, reorder) for k, s in specs.items()}


def _conv(reader: _Reader, prefix: str, specs: Params, kernel=_temporal_kernel) -> Params:
    return {
        "kernel": reader.take(f"{prefix}.weight", specs["kernel"], kernel),
        "bias": reader.take(f"{prefix}.bias", specs["bias"], _same),
    }


def _stack(reader: _Reader, prefix: str, kind: str, count: int, spec: Any, transform) -> jax.Array:
    """Subset tensors `prefix.{k}.{kind}` stacked along a new first axis."""
    one = jax.ShapeDtypeStruct(spec.shape[1:], spec.dtype)
    return jnp.stack([reader.take(f"{prefix}.{k}.{kind}", one, transform) for k in range(count)])


# --------------------------------------------------------------------------- continual-skeletons


def _fill_continual(model: SkeletonNet, specs: Params, reader: _Reader) -> Params:
    data_bn = {"flatten": {}, "unflatten": {}, "bn": _bn(reader, "data_bn", specs["data_bn"]["bn"])}
    params: Params = {"data_bn": data_bn}
    layers = {}
    for name, block in specs["layers"].items():
        prefix = f"layers.{name}"
        if "sum" in block:
            both = block["sum"]
            main = _continual_main(reader, prefix, both["main"])
            layers[name] = {
                "sum": {"residual": _shortcut(reader, prefix, both["residual"]), "main": main},
                "relu": {},
            }
        else:
            layers[name] = dict(_continual_main(reader, prefix, block), relu={})
    params["layers"] = layers
    head = specs["head"]
    params["head"] = {"pool": {}, "flatten": {}, "fc": _conv(reader, "fc", head["fc"], _dense)}
    return params


def _continual_main(reader: _Reader, prefix: str, specs: Params) -> Params:
    tcn = specs["tcn"]
    return {
        "gcn": _continual_unit(reader, f"{prefix}.gcn", specs["gcn"]),
        "tcn": {"conv": _conv(reader, f"{prefix}.tcn.t_conv", tcn["conv"]),
                "bn": _bn(reader, f"{prefix}.tcn.bn", tcn["bn"])},
    }  # fmt: skip


def _shortcut(reader: _Reader, prefix: str, specs: Params) -> Params:
    if "conv" not in specs:
        return {}
    return {
        "conv": _conv(reader, f"{prefix}.residual.t_conv", specs["conv"]),
        "bn": _bn(reader, f"{prefix}.residual.bn", specs["bn"]),
        "align": {},
    }


def _continual_unit(reader: _Reader, prefix: str, specs: Params) -> Params:
    if "attend" in specs:
        return _attention_unit(reader, prefix, specs)
    graph_specs = specs["sum"]["graph"]["conv"]
    k = graph_specs["A"].shape[0]
    conv = {
        "A": reader.take(f"{prefix}.A", graph_specs["A"], _same),
        "edge": reader.take(f"{prefix}.graph_attn", graph_specs["edge"], _same),
    }
    # AGCN: a_conv = θ, b_conv = φ
    subsets = {"kernel": "g_conv", "bias": "g_conv", "theta_kernel": "a_conv",
               "theta_bias": "a_conv", "phi_kernel": "b_conv", "phi_bias": "b_conv"}  # fmt: skip
    for ours, theirs in subsets.items():
        if ours in graph_specs:
            kind = "weight" if ours.endswith("kernel") else "bias"
            conv[ours] = _stack(
                reader, f"{prefix}.{theirs}", kind, k, graph_specs[ours],
                _dense if kind == "weight" else _same,
            )  # fmt: skip
    residual_specs = specs["sum"]["residual"]
    residual = {}
    if "conv" in residual_specs:
        residual = {
            "conv": _conv(reader, f"{prefix}.gcn_residual.0", residual_specs["conv"], _dense),
            "bn": _bn(reader, f"{prefix}.gcn_residual.1", residual_specs["bn"]),
        }
    graph = {"conv": conv, "bn": _bn(reader, f"{prefix}.bn", specs["sum"]["graph"]["bn"])}
    return {"sum": {"graph": graph, "residual": residual}, "relu": {}}


def _attention_unit(reader: _Reader, prefix: str, specs: Params) -> Params:
    attend = specs["attend"]
    inner = attend["attention"] if "skip" in attend else attend
    bn_specs = inner["data_bn"]["bn"]
    channels = inner["attention"]["qkv"]["kernel"].shape[0]
    reader.used.add(f"{prefix}.A")  # S-TR keeps the graph but does not use it (adjacency=False)
    attention = {
        "data_bn": {"flatten": {}, "unflatten": {},
                    "bn": _bn_permuted(reader, f"{prefix}.data_bn", bn_specs, channels)},
        "attention": {
            "qkv": _conv(reader, f"{prefix}.attention_conv.qkv_conv", inner["attention"]["qkv"], _dense),
            "out": _conv(reader, f"{prefix}.attention_conv.attn_out", inner["attention"]["out"], _dense),
        },
    }  # fmt: skip
    attend_params = {"attention": attention, "skip": {}} if "skip" in attend else attention
    return {"attend": attend_params, "bn": _bn(reader, f"{prefix}.bn", specs["bn"]), "relu": {}}


# --------------------------------------------------------------------------- original ST-GCN


def _fill_original(model: SkeletonNet, specs: Params, reader: _Reader) -> Params:
    params: Params = {
        "data_bn": {"flatten": {}, "unflatten": {}, "bn": _bn(reader, "data_bn", specs["data_bn"]["bn"])}
    }  # fmt: skip
    layers = {}
    for i, (name, block) in enumerate(specs["layers"].items()):
        prefix = f"st_gcn_networks.{i}"
        main_specs = block["sum"]["main"] if "sum" in block else block
        gcn_specs = main_specs["gcn"]
        k, c_out = gcn_specs["kernel"].shape[0], gcn_specs["kernel"].shape[2]
        split_kernel = lambda a, k=k, c=c_out: a.reshape(k, c, -1).transpose(0, 2, 1)  # noqa: E731
        split_bias = lambda a, k=k, c=c_out: a.reshape(k, c)  # noqa: E731
        gcn = {
            "A": reader.take("A", gcn_specs["A"], _same),
            "edge": reader.take(f"edge_importance.{i}", gcn_specs["edge"], _same),
            "kernel": reader.take(f"{prefix}.gcn.conv.weight", gcn_specs["kernel"], split_kernel),
            "bias": reader.take(f"{prefix}.gcn.conv.bias", gcn_specs["bias"], split_bias),
        }
        tcn_specs = main_specs["tcn"]
        tcn = {
            "bn1": _bn(reader, f"{prefix}.tcn.0", tcn_specs["bn1"]), "relu": {},
            "conv": _conv(reader, f"{prefix}.tcn.2", tcn_specs["conv"]),
            "bn2": _bn(reader, f"{prefix}.tcn.3", tcn_specs["bn2"]), "drop": {},
        }  # fmt: skip
        if "sum" not in block:
            layers[name] = {"gcn": gcn, "tcn": tcn, "relu": {}}
            continue
        short_specs = block["sum"]["residual"]
        shortcut = {}
        if "conv" in short_specs:
            shortcut = {
                "conv": _conv(reader, f"{prefix}.residual.0", short_specs["conv"]),
                "bn": _bn(reader, f"{prefix}.residual.1", short_specs["bn"]),
                "align": {},
            }
        layers[name] = {"sum": {"residual": shortcut, "main": {"gcn": gcn, "tcn": tcn}}, "relu": {}}
    params["layers"] = layers
    params["head"] = {
        "pool": {},
        "flatten": {},
        "fc": _conv(reader, "fcn", specs["head"]["fc"], _dense),
    }
    return params


def _check_adjacency(params: Params, graph: str, partition: str) -> None:
    expected = adjacency(graph, partition)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if getattr(path[-1], "key", None) != "A":
            continue
        where = "/".join(str(getattr(p, "key", p)) for p in path)
        got = np.asarray(leaf)
        if got.shape != expected.shape or np.abs(got - expected).max() > 1e-5:
            raise ValueError(
                f"load_stgcn: the checkpoint's adjacency at {where} is not graph {graph!r} "
                f"with the {partition!r} partition (max difference "
                f"{np.abs(got - expected).max() if got.shape == expected.shape else 'shape ' + str(got.shape)}). "
                "Pick the graph the model was trained on, or pass check_graph=False to use "
                "the stored adjacency as it is."
            )
