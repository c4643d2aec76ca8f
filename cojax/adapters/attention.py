"""SPLoRA multi-head attention: torch-style attention whose q, k, v and output
projections are separate `SPLoRADense` layers (spec: "separate adapted q, k, v
projections; trainable in-projection bias; adapted out-projection").

Each projection has its own channel masks ("masks" / "q_proj" / "in", "out", …), so a
pruned query/key channel drops out of every head's dot products and a pruned value
channel out of the heads' outputs. `fuse_attention` exports the adapted, masked weights
in cojax's packed layout, ready for the continual `RetroactiveMultiheadAttention` /
`SingleOutputMultiheadAttention`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cojax.adapters.lora import DEFAULT_INIT_RANGE, DEFAULT_RANK, SPLoRADense, adapted_kernel
from cojax.core import Array, check_array, check_config
from cojax.layers.attention import attend

PROJECTIONS = ("q_proj", "k_proj", "v_proj")


class SPLoRAMultiHeadAttention(nn.Module):
    """`query (..., L, E)`, `key (..., S, Ek)`, `value (..., S, Ev)` -> `(..., L, E)`.

    key and value default to query (self-attention). `mask` `(..., H or 1, L, S)` bool,
    True = may attend (Flax's convention). Submodules "q_proj", "k_proj", "v_proj",
    "out_proj" (`SPLoRADense`); q/k/v kernels start Xavier-uniform and every bias at
    zero, as in the reference. Queries are scaled by 1/√(E/H) after their bias.
    """

    embed_dim: int
    num_heads: int
    rank: float = DEFAULT_RANK
    use_bias: bool = True
    init_range: float = DEFAULT_INIT_RANGE

    @nn.compact
    def __call__(
        self,
        query: Array,
        key: Array | None = None,
        value: Array | None = None,
        mask: Array | None = None,
        fused: bool = True,
    ) -> Array:
        E, H = self.embed_dim, self.num_heads
        check_config(E % H == 0, self, f"embed_dim {E} must be divisible by num_heads {H}.")
        key = query if key is None else key
        value = key if value is None else value
        check_array(self, query, layout="(..., L, E)")
        check_config(query.shape[-1] == E, self, f"query has {query.shape[-1]} features, not {E}.")
        check_config(
            key.shape[:-1] == value.shape[:-1],
            self,
            f"key {key.shape} and value {value.shape} must hold the same tokens.",
        )

        def projection(name: str, in_proj: bool) -> SPLoRADense:
            return SPLoRADense(
                E,
                rank=self.rank,
                use_bias=self.use_bias,
                init_range=self.init_range,
                kernel_init=nn.initializers.xavier_uniform() if in_proj else None,
                bias_init=nn.initializers.zeros,
                name=name,
            )

        q = projection("q_proj", True)(query, fused)
        k = projection("k_proj", True)(key, fused)
        v = projection("v_proj", True)(value, fused)
        q, k, v = (a.reshape(a.shape[:-1] + (H, E // H)) for a in (q, k, v))
        q = q / math.sqrt(E // H)
        if mask is None:
            o = attend(q, k, v)
        else:
            scores = jnp.einsum("...lhd,...shd->...hls", q, k)
            weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
            o = jnp.einsum("...hls,...shd->...lhd", weights, v)
        o = o.reshape(o.shape[:-2] + (E,))
        return projection("out_proj", False)(o, fused)


def _adapted(variables: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The masked, adapted kernel `(in, out)` and bias of one projection."""
    p, masks = variables["params"][name], variables["masks"][name]
    keep_in, keep_out = np.asarray(masks["in"]), np.asarray(masks["out"])
    kernel = np.asarray(adapted_kernel(p))
    kernel = np.where(keep_in[:, None] & keep_out[None, :], kernel, 0.0)
    bias = np.where(keep_out, np.asarray(p["bias"]), 0.0) if "bias" in p else None
    return kernel, bias


def fuse_attention(variables: Any) -> dict:
    """Plain attention params in cojax's packed layout: {"in_proj": {"kernel" `(E, 3E)`,
    "bias" `(3E,)`}, "out_proj": {"kernel" `(E, E)`, "bias"}} (torch's
    `in_proj_weight.T` …), for self-attention (Ek = Ev = E).

    Masked channels become zero rows/columns: the heads keep their widths, because
    plain (torch or cojax) attention has one head width; physically smaller exports
    are `fuse_dense` of the projections one by one.
    """
    parts = [_adapted(variables, name) for name in PROJECTIONS]
    E = parts[0][0].shape[1]
    for name, (kernel, _) in zip(PROJECTIONS, parts):
        if kernel.shape[0] != E:
            raise ValueError(
                f"fuse_attention: the packed layout needs self-attention, but {name} takes "
                f"{kernel.shape[0]} features, not {E}."
            )
    in_proj = {"kernel": jnp.asarray(np.concatenate([k for k, _ in parts], axis=1))}
    if parts[0][1] is not None:
        in_proj["bias"] = jnp.asarray(np.concatenate([b for _, b in parts]))
    out_kernel, out_bias = _adapted(variables, "out_proj")
    out_proj = {"kernel": jnp.asarray(out_kernel)}
    if out_bias is not None:
        out_proj["bias"] = jnp.asarray(out_bias)
    return {"in_proj": in_proj, "out_proj": out_proj}
