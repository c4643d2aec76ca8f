"""Attention and transformer encoders: PyTorch -> cojax.

- `from_continual` (via the handlers here) converts continual-inference's
  `RetroactiveMultiheadAttention`, `SingleOutputMultiheadAttention`, its encoder layers
  (the `co.Sequential`s built by `SingleOutputTransformerEncoderLayer` /
  `RetroactiveTransformerEncoderLayer`) and `TransformerEncoder`.
- `from_torch_transformer(module, sequence_len)` converts a plain
  `torch.nn.MultiheadAttention`, `TransformerEncoderLayer` or `TransformerEncoder`
  into its continual form over windows of `sequence_len` tokens.

Weights: torch's packed `in_proj_weight` `(3E, E)` -> "in_proj" "kernel" `(E, 3E)`,
linear weights transposed, LayerNorm weight -> "scale". The reference's known defects
are not copied: its string "gelu" builds ReLU (we convert the activation the module
really runs), and its 2-block encoder's residual drifts after ~2N - 2 steps (ours
does not).
"""

from __future__ import annotations

from typing import Any

from cojax.core import Layer
from cojax.layers.attention import RetroactiveMultiheadAttention, SingleOutputMultiheadAttention
from cojax.layers.pointwise import GELU
from cojax.layers.transformer import (
    RetroactiveTransformerEncoderLayer,
    SingleOutputTransformerEncoderLayer,
    TransformerEncoder,
)
from conversion._common import array, fail, join

Converted = tuple[Layer, Any]


# --------------------------------------------------------------------------- pieces


def mha_params(module: Any, path: str = "") -> dict:
    """Params of a torch multi-head attention (self-attention, packed projection)."""
    if not getattr(module, "_qkv_same_embed_dim", True):
        raise fail(module, path, "kdim/vdim differ from embed_dim; cojax attends one stream.")
    if module.bias_k is not None or module.bias_v is not None:
        raise fail(module, path, "add_bias_kv=True is not supported.")
    if module.add_zero_attn:
        raise fail(module, path, "add_zero_attn=True is not supported.")
    in_proj = {"kernel": array(module.in_proj_weight).T}
    out_proj = {"kernel": array(module.out_proj.weight).T}
    if module.in_proj_bias is not None:
        in_proj["bias"] = array(module.in_proj_bias)
    if module.out_proj.bias is not None:
        out_proj["bias"] = array(module.out_proj.bias)
    if ("bias" in in_proj) != ("bias" in out_proj):
        raise fail(module, path, "in- and out-projection must both have biases or neither.")
    return {"in_proj": in_proj, "out_proj": out_proj}


def _norm(module: Any, path: str) -> dict:
    if module.weight is None or module.bias is None:
        raise fail(module, path, "LayerNorm without elementwise affine weights and bias.")
    return {"scale": array(module.weight), "bias": array(module.bias)}


def _linear(module: Any) -> dict:
    return {"kernel": array(module.weight).T, "bias": array(module.bias)}


def _activation(fn: Any, path: str) -> str | Layer:
    """The torch activation (module or function) as the encoder's activation."""
    import torch.nn.functional as F
    from torch import nn

    fn = getattr(fn, "fn", fn)  # co.Lambda wraps modules and functions
    if isinstance(fn, nn.ReLU) or fn is F.relu:
        return "relu"
    if fn is F.gelu or (isinstance(fn, nn.GELU) and fn.approximate == "none"):
        return "gelu"
    if isinstance(fn, nn.GELU) and fn.approximate == "tanh":
        return GELU(approximate="tanh")
    raise fail(fn, path, "the feed-forward activation must be ReLU or GELU (exact or tanh).")


def _block_params(mha: Any, parts: dict[str, Any], path: str) -> dict:
    return {
        "self_attn": mha_params(mha, join(path, "self_attn")),
        "linear1": _linear(parts["linear1"]),
        "linear2": _linear(parts["linear2"]),
        "norm1": _norm(parts["norm1"], join(path, "norm1")),
        "norm2": _norm(parts["norm2"], join(path, "norm2")),
    }


def _one_rate(module: Any, path: str, attention: float, *feedforward: float) -> float:
    """The block's dropout rate: the attention weights' and the feed-forward's must agree
    (one `dropout` field, as torch's constructor argument)."""
    rates = {float(attention), *map(float, feedforward)}
    if len(rates) != 1:
        raise fail(
            module,
            path,
            f"dropout rates {sorted(rates)} differ between the attention weights and the "
            "feed-forward: cojax's encoder layers take one rate (and a separate "
            "attention_output_dropout).",
        )
    return rates.pop()


def _check_block(module: Any, path: str, norm1: Any, norm2: Any, linear1: Any) -> None:
    if norm1.eps != norm2.eps:
        raise fail(module, path, "norm1 and norm2 have different eps.")
    if linear1.bias is None:
        raise fail(module, path, "feed-forward linears without bias are not supported.")


# --------------------------------------------------------------------------- continual-inference


def continual_mha(module: Any, path: str, ctx: Any = None) -> Converted:
    """`co.RetroactiveMultiheadAttention` / `co.SingleOutputMultiheadAttention`."""
    import continual as co

    bias = module.in_proj_bias is not None
    config = (module.embed_dim, module.num_heads, int(module.sequence_len))
    dropout = float(module.dropout)
    if isinstance(module, co.RetroactiveMultiheadAttention):
        layer: Layer = RetroactiveMultiheadAttention(*config, bias=bias, dropout=dropout)
    else:
        layer = SingleOutputMultiheadAttention(
            *config, bias=bias, query_index=int(module.query_index), dropout=dropout
        )
    return layer, mha_params(module, path)


def _reference_layer_parts(module: Any, path: str) -> tuple[Any, dict[str, Any]] | None:
    """(attention, {norm1, norm2, linear1, linear2, activation}) of a reference encoder
    layer (the Sequential its factory functions build), or None if `module` is not one."""
    import continual as co
    from torch import nn

    if not isinstance(module, nn.Module):
        return None
    children = list(module.children())
    if len(children) != 2 or not isinstance(children[0], co.BroadcastReduce):
        return None
    branches = dict(children[0].named_children())
    mha = branches.get("self_attn")
    if set(branches) != {"residual", "self_attn"} or not isinstance(
        mha, (co.RetroactiveMultiheadAttention, co.SingleOutputMultiheadAttention)
    ):
        return None
    parts: dict[str, Any] = {}
    for name, sub in children[1].named_modules():
        leaf = name.split(".")[-1]
        inner = getattr(sub, "fn", None) if isinstance(sub, co.Lambda) else sub
        if leaf in ("norm1", "norm2") and isinstance(inner, nn.LayerNorm):
            parts[leaf] = inner
        elif leaf in ("linear1", "linear2") and isinstance(sub, nn.Linear):
            parts[leaf] = sub
        elif leaf == "activation":
            parts[leaf] = sub
        elif leaf in ("dropout", "dropout2") and isinstance(sub, nn.Dropout):
            parts[leaf] = sub
    missing = {"norm1", "norm2", "linear1", "linear2", "activation", "dropout", "dropout2"}
    missing -= set(parts)
    if missing:
        raise fail(module, path, f"an encoder layer without {sorted(missing)}.")
    return mha, parts


def _layer_from_parts(mha: Any, parts: dict[str, Any], path: str, query_index: int | None):
    """The cojax encoder layer for a reference layer's parts (retroactive if
    `query_index` is None). The reference block has no dropout on the attention output
    (torch's dropout1): `attention_output_dropout=0`."""
    _check_block(mha, path, parts["norm1"], parts["norm2"], parts["linear1"])
    rate = _one_rate(mha, path, mha.dropout, parts["dropout"].p, parts["dropout2"].p)
    config = dict(
        d_model=mha.embed_dim,
        nhead=mha.num_heads,
        sequence_len=int(mha.sequence_len),
        dim_feedforward=parts["linear1"].out_features,
        activation=_activation(parts["activation"], join(path, "activation")),
        layer_norm_eps=parts["norm1"].eps,
        dropout=rate,
        attention_output_dropout=0.0,
    )
    if query_index is None:
        layer: Layer = RetroactiveTransformerEncoderLayer(**config)
    else:
        layer = SingleOutputTransformerEncoderLayer(**config, query_index=query_index)
    return layer, config


def continual_encoder_layer(module: Any, path: str) -> Converted | None:
    """A reference encoder layer (a `co.Sequential`), or None when it is not one."""
    import continual as co

    found = _reference_layer_parts(module, path)
    if found is None:
        return None
    mha, parts = found
    retro = isinstance(mha, co.RetroactiveMultiheadAttention)
    query = None if retro else int(mha.query_index)
    layer, _ = _layer_from_parts(mha, parts, path, query)
    return layer, _block_params(mha, parts, path)


def continual_encoder(module: Any, path: str, ctx: Any = None) -> Converted:
    """`co.TransformerEncoder` (1 or 2 layers; the reference cannot build more)."""
    import continual as co

    roots = []  # the encoder layers, possibly wrapped in the reference's Lambdas
    for name, sub in module.named_modules():
        candidate = sub.fn if isinstance(sub, co.Lambda) else sub
        seen = any(candidate is root for _, root in roots)  # a Lambda and its fn
        if (
            not seen
            and isinstance(candidate, co.Sequential)
            and _reference_layer_parts(candidate, name)
        ):
            roots.append((name, candidate))
    if not roots:
        raise fail(module, path, "no encoder layers found.")
    layer_params, config = {}, None
    for i, (name, root) in enumerate(roots):
        mha, parts = _reference_layer_parts(root, name)
        _, config_i = _layer_from_parts(mha, parts, join(path, name), -1)
        if config is not None and config_i != config:
            raise fail(module, path, "encoder layers with different hyper-parameters.")
        config = config_i
        layer_params[str(i)] = _block_params(mha, parts, join(path, name))
    last_mha = _reference_layer_parts(roots[-1][1], roots[-1][0])[0]
    query_index = int(getattr(last_mha, "query_index", -1))
    norm = getattr(module, "norm", None)
    norm = getattr(norm, "fn", norm)
    layer = TransformerEncoder(
        **config, num_layers=len(roots), norm=norm is not None, query_index=query_index
    )
    params = {"layers": layer_params, "norm": {} if norm is None else _norm(norm, "norm")}
    return layer, params


# --------------------------------------------------------------------------- plain torch


def from_torch_transformer(
    module: Any, sequence_len: int, *, retroactive: bool = False, query_index: int = -1
) -> Converted:
    """A plain torch `MultiheadAttention`, `TransformerEncoderLayer` or
    `TransformerEncoder` as its continual form over windows of `sequence_len` tokens.

    `MultiheadAttention` and `TransformerEncoderLayer` become the single-output layer
    (row `query_index` of each window) or, with `retroactive=True`, the retroactive one
    (all rows); `TransformerEncoder` becomes `cojax.TransformerEncoder` with the same
    number of layers, whose step equals the torch encoder on the latest window at row
    `query_index`. Masks are not supported (windows are attended in full).
    Returns `(layer, params)`.
    """
    from torch import nn

    if isinstance(module, nn.MultiheadAttention):
        bias = module.in_proj_bias is not None
        config = (module.embed_dim, module.num_heads, sequence_len)
        extra = dict(bias=bias, dropout=float(module.dropout))
        if retroactive:
            layer: Layer = RetroactiveMultiheadAttention(*config, **extra)
        else:
            layer = SingleOutputMultiheadAttention(*config, **extra, query_index=query_index)
        return layer, mha_params(module)
    if isinstance(module, nn.TransformerEncoderLayer):
        layer, params = _torch_layer(module, sequence_len, None if retroactive else query_index)
        return layer, params
    if isinstance(module, nn.TransformerEncoder):
        if retroactive:
            raise fail(module, "", "retroactive=True applies to single layers only.")
        layers = list(module.layers)
        converted = [_torch_layer(m, sequence_len, -1, f"layers.{i}") for i, m in enumerate(layers)]
        configs = {_config_key(layer) for layer, _ in converted}
        if len(configs) != 1:
            raise fail(module, "", "encoder layers with different hyper-parameters.")
        first = converted[0][0]
        norm = module.norm
        layer = TransformerEncoder(
            d_model=first.d_model,
            nhead=first.nhead,
            sequence_len=sequence_len,
            num_layers=len(layers),
            dim_feedforward=first.dim_feedforward,
            activation=first.activation,
            layer_norm_eps=first.layer_norm_eps,
            norm_first=first.norm_first,
            norm=norm is not None,
            query_index=query_index,
            dropout=first.dropout,
            attention_output_dropout=first.attention_output_dropout,
        )
        params = {
            "layers": {str(i): p for i, (_, p) in enumerate(converted)},
            "norm": {} if norm is None else _norm(norm, "norm"),
        }
        return layer, params
    raise fail(
        module,
        "",
        "from_torch_transformer takes nn.MultiheadAttention, nn.TransformerEncoderLayer "
        "or nn.TransformerEncoder.",
    )


def _config_key(layer: Any) -> tuple:
    return (
        layer.d_model,
        layer.nhead,
        layer.dim_feedforward,
        layer.activation,
        layer.layer_norm_eps,
        layer.norm_first,
        layer.dropout,
        layer.attention_output_dropout,
    )


def _torch_layer(module: Any, sequence_len: int, query_index: int | None, path: str = ""):
    """An `nn.TransformerEncoderLayer` as a continual layer (retroactive if
    `query_index` is None)."""
    _check_block(module, path, module.norm1, module.norm2, module.linear1)
    config = dict(
        d_model=module.self_attn.embed_dim,
        nhead=module.self_attn.num_heads,
        sequence_len=sequence_len,
        dim_feedforward=module.linear1.out_features,
        activation=_activation(module.activation, join(path, "activation")),
        layer_norm_eps=module.norm1.eps,
        norm_first=bool(module.norm_first),
        dropout=_one_rate(
            module, path, module.self_attn.dropout, module.dropout.p, module.dropout2.p
        ),
    )
    if module.dropout1.p != config["dropout"]:
        config["attention_output_dropout"] = float(module.dropout1.p)
    if query_index is None:
        layer: Layer = RetroactiveTransformerEncoderLayer(**config)
    else:
        layer = SingleOutputTransformerEncoderLayer(**config, query_index=query_index)
    parts = {n: getattr(module, n) for n in ("norm1", "norm2", "linear1", "linear2")}
    return layer, _block_params(module.self_attn, parts, path)
