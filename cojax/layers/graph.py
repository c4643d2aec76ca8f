"""Per-frame graph layers of the ST-GCN family: `GraphConv`, `AdaptiveGraphConv` and
`SpatialAttention` (S-TR). Frames `(*P, V, C)`: any leading axes (persons M), then
joints V, then channels C; every person is computed independently. The temporal
convolutions and residuals of a block are ordinary cojax layers and containers
(`cojax.models.stgcn`). Adjacency conventions: `cojax.graphs`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from cojax.core import Array, FrameLayer, Params, check_array, check_config
from cojax.graphs import PARTITIONS, SKELETONS, adjacency
from cojax.layers.linear import uniform_init

EDGE_WEIGHTS = ("multiply", "add", "none")
BIAS_PLACES = ("after_graph", "before_graph")


def _check_graph(layer: Any) -> None:
    check_config(
        layer.graph in SKELETONS,
        layer,
        f"graph must be one of {tuple(SKELETONS)}, got {layer.graph!r}.",
    )
    check_config(
        layer.partition in PARTITIONS,
        layer,
        f"partition must be one of {PARTITIONS}, got {layer.partition!r}.",
    )
    for name in ("in_channels", "out_channels"):
        value = getattr(layer, name)
        check_config(value > 0, layer, f"{name} must be > 0, got {value}.")


def _check_joint_frame(layer: Any, frame: Any) -> None:
    joints = SKELETONS[layer.graph].num_joints
    check_array(layer, frame, channels=layer.in_channels, layout="(*P, V, C_in)")
    if len(frame.shape) < 2 or frame.shape[-2] != joints:
        raise ValueError(
            f"{type(layer).__name__}: expected {joints} joints (graph {layer.graph!r}) in "
            f"the second-to-last axis of the frame (*P, V, C), got shape {tuple(frame.shape)}."
        )


def _subset_kernels(key: Array, k: int, c_in: int, c_out: int) -> tuple[Array, Array]:
    """torch's default 1×1 conv init per subset: kernel `(K, C_in, C_out)`, bias `(K, C_out)`."""
    k_w, k_b = jax.random.split(key)
    return uniform_init(k_w, (k, c_in, c_out), c_in), uniform_init(k_b, (k, c_out), c_in)


@dataclasses.dataclass(frozen=True)
class GraphConv(FrameLayer):
    """ST-GCN's spatial graph convolution on every frame, `Σ_k (x ⋆ Â_k) W_k + b_k`.

    `Â_k` is the fixed adjacency "A" `(K, V, V)` combined with the learned "edge"
    weights `(K, V, V)` (init 1): `edge_weights="multiply"` gives `A ∘ edge`
    (continual-skeletons' `graph_attn`, ST-GCN's `edge_importance`), "add" gives
    `A + edge` (2s-AGCN's B), "none" uses A alone (no "edge" leaf). `x ⋆ Â` contracts
    the joint axis: `y[w] = Σ_v x[v] Â[v, w]`. `bias_place="after_graph"`
    (continual-skeletons: one bias per subset conv, added after the graph product) or
    "before_graph" (the original ST-GCN: the conv's bias is multiplied by Â too, so it
    varies by joint). Frames `(*P, V, C_in)` -> `(*P, V, C_out)`.
    Params: "A" (not trainable), "edge", "kernel" `(K, C_in, C_out)`, "bias" `(K, C_out)`.
    """

    in_channels: int
    out_channels: int
    graph: str = "ntu"
    partition: str = "inward_outward"
    edge_weights: str = "multiply"
    bias_place: str = "after_graph"

    def __post_init__(self):
        _check_graph(self)
        check_config(
            self.edge_weights in EDGE_WEIGHTS,
            self,
            f"edge_weights must be one of {EDGE_WEIGHTS}, got {self.edge_weights!r}.",
        )
        check_config(
            self.bias_place in BIAS_PLACES,
            self,
            f"bias_place must be one of {BIAS_PLACES}, got {self.bias_place!r}.",
        )

    def init(self, key: Array) -> Params:
        a = jnp.asarray(adjacency(self.graph, self.partition))
        kernel, bias = _subset_kernels(key, a.shape[0], self.in_channels, self.out_channels)
        params = {"A": a, "kernel": kernel, "bias": bias}
        if self.edge_weights != "none":
            params["edge"] = jnp.ones_like(a)
        return params

    def trainable(self, params: Params) -> Params:
        """The adjacency "A" is fixed; the edge weights, kernel and bias are learned."""
        return {k: k != "A" for k in params}

    def check_frame(self, frame: Any) -> None:
        _check_joint_frame(self, frame)

    def graph_matrix(self, params: Params) -> Array:
        """`Â`, `(K, V, V)`: the adjacency with its learned edge weights."""
        a = params["A"]
        if self.edge_weights == "multiply":
            return a * params["edge"]
        if self.edge_weights == "add":
            return a + params["edge"]
        return a

    def apply(self, params: Params, x: Array) -> Array:
        dtype = x.dtype
        a = self.graph_matrix(params).astype(dtype)
        kernel, bias = params["kernel"].astype(dtype), params["bias"].astype(dtype)
        if self.bias_place == "before_graph":
            z = jnp.einsum("...vc,kco->...kvo", x, kernel) + bias[:, None, :]
            return jnp.einsum("...kvo,kvw->...wo", z, a)
        mixed = jnp.einsum("...vc,kvw->...kwc", x, a)
        return jnp.einsum("...kwc,kco->...wo", mixed, kernel) + bias.sum(0)


@dataclasses.dataclass(frozen=True)
class AdaptiveGraphConv(FrameLayer):
    """2s-AGCN's adaptive graph convolution, per frame (the continual CoA-GCN form).

    `Σ_k (x ⋆ (A_k + B_k + C_k)) W_k + b_k` with B_k the learned "edge" `(K, V, V)`
    (additive, init 1 as in continual-skeletons) and the data-dependent
    `C_k[v, w] = softmax_v(θ_k(x)[v] · φ_k(x)[w] / inter_channels)`, θ_k, φ_k 1×1
    convs to `inter_channels = out_channels // embed_factor`. The clip AGCN's C_k
    attends over all T frames of a clip (`θ·φ` summed over frames, scaled by
    `1 / (inter_channels · T)`), which no per-frame network can stream; here each
    frame's C_k uses that frame alone, which is what continual-skeletons' CoA-GCN
    computes step by step (there T = 1) and what its AGCN* meant to compute (its
    einsum `nctv,nvwt->nctv` does not mix joints; this layer mixes them).
    Frames `(*P, V, C_in)` -> `(*P, V, C_out)`. Params as `GraphConv` ("A", "edge",
    "kernel", "bias") plus "theta_kernel", "phi_kernel" `(K, C_in, inter)` and
    "theta_bias", "phi_bias" `(K, inter)`.
    """

    in_channels: int
    out_channels: int
    graph: str = "ntu"
    partition: str = "inward_outward"
    embed_factor: int = 4

    def __post_init__(self):
        _check_graph(self)
        check_config(
            self.embed_factor > 0 and self.out_channels // self.embed_factor > 0,
            self,
            f"out_channels // embed_factor must be >= 1, got {self.out_channels} // "
            f"{self.embed_factor}.",
        )

    @property
    def inter_channels(self) -> int:
        return self.out_channels // self.embed_factor

    def init(self, key: Array) -> Params:
        a = jnp.asarray(adjacency(self.graph, self.partition))
        k_g, k_t, k_p = jax.random.split(key, 3)
        k = a.shape[0]
        kernel, bias = _subset_kernels(k_g, k, self.in_channels, self.out_channels)
        theta, theta_b = _subset_kernels(k_t, k, self.in_channels, self.inter_channels)
        phi, phi_b = _subset_kernels(k_p, k, self.in_channels, self.inter_channels)
        return {
            "A": a, "edge": jnp.ones_like(a), "kernel": kernel, "bias": bias,
            "theta_kernel": theta, "theta_bias": theta_b, "phi_kernel": phi, "phi_bias": phi_b,
        }  # fmt: skip

    def trainable(self, params: Params) -> Params:
        return {k: k != "A" for k in params}

    def check_frame(self, frame: Any) -> None:
        _check_joint_frame(self, frame)

    def attention(self, params: Params, x: Array) -> Array:
        """`C`, `(*P, K, V, V)`: softmax over the source joint v (axis -2)."""
        dtype = x.dtype
        theta = jnp.einsum("...vc,kci->...kvi", x, params["theta_kernel"].astype(dtype))
        phi = jnp.einsum("...vc,kci->...kvi", x, params["phi_kernel"].astype(dtype))
        theta = theta + params["theta_bias"].astype(dtype)[:, None, :]
        phi = phi + params["phi_bias"].astype(dtype)[:, None, :]
        logits = jnp.einsum("...kvi,...kwi->...kvw", theta, phi) / self.inter_channels
        return jax.nn.softmax(logits, axis=-2)

    def apply(self, params: Params, x: Array) -> Array:
        dtype = x.dtype
        fixed = (params["A"] + params["edge"]).astype(dtype)
        a = fixed + self.attention(params, x)
        mixed = jnp.einsum("...vc,...kvw->...kwc", x, a)
        out = jnp.einsum("...kwc,kco->...wo", mixed, params["kernel"].astype(dtype))
        return out + params["bias"].astype(dtype).sum(0)


@dataclasses.dataclass(frozen=True)
class SpatialAttention(FrameLayer):
    """S-TR's spatial self-attention over the joints of each frame (arXiv 2012.06399).

    1×1 "qkv" projection to `2·dk + dv` channels (q, k, v in that order; each split
    into `num_heads` heads of consecutive channels), `q` scaled by `(dk / heads)^-½`,
    softmax over the keys (joints), and a 1×1 "out" projection `dv -> dv`, with
    `dk = int(out_channels · dk_factor)` and `dv = out_channels`. Exactly continual:
    it attends within a frame. Frames `(*P, V, C_in)` -> `(*P, V, C_out)`.
    Params: "qkv" {"kernel" `(C_in, 2dk+dv)`, "bias"}, "out" {"kernel" `(dv, dv)`, "bias"}.
    """

    in_channels: int
    out_channels: int
    num_heads: int = 8
    dk_factor: float = 0.25

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "num_heads"):
            value = getattr(self, name)
            check_config(value > 0, self, f"{name} must be > 0, got {value}.")
        dk, dv = self.key_channels, self.out_channels
        check_config(
            dk > 0 and dk % self.num_heads == 0 and dv % self.num_heads == 0,
            self,
            f"num_heads {self.num_heads} must divide dk = {dk} (> 0) and dv = {dv}.",
        )

    @property
    def key_channels(self) -> int:
        return int(self.out_channels * self.dk_factor)

    def init(self, key: Array) -> Params:
        dk, dv = self.key_channels, self.out_channels
        k1, k2, k3, k4 = jax.random.split(key, 4)
        width = 2 * dk + dv
        return {
            "qkv": {
                "kernel": uniform_init(k1, (self.in_channels, width), self.in_channels),
                "bias": uniform_init(k2, (width,), self.in_channels),
            },
            "out": {
                "kernel": uniform_init(k3, (dv, dv), dv),
                "bias": uniform_init(k4, (dv,), dv),
            },
        }

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, channels=self.in_channels, layout="(*P, V, C_in)")
        check_config(len(frame.shape) >= 2, self, "frames need a joint axis: (*P, V, C).")

    def apply(self, params: Params, x: Array) -> Array:
        dtype = x.dtype
        dk, h = self.key_channels, self.num_heads
        qkv = x @ params["qkv"]["kernel"].astype(dtype) + params["qkv"]["bias"].astype(dtype)
        q, k, v = jnp.split(qkv, [dk, 2 * dk], axis=-1)
        heads = lambda t: t.reshape(*t.shape[:-1], h, t.shape[-1] // h)  # noqa: E731
        q, k, v = heads(q) * (1.0 / math.sqrt(dk // h)), heads(k), heads(v)
        weights = jax.nn.softmax(jnp.einsum("...vhd,...whd->...hvw", q, k), axis=-1)
        out = jnp.einsum("...hvw,...whd->...vhd", weights, v).reshape(*x.shape[:-1], -1)
        return out @ params["out"]["kernel"].astype(dtype) + params["out"]["bias"].astype(dtype)
