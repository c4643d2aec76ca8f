"""SPLoPA: block structured-pruning adapters with prototypes shared between layers.

`ΔW = Σ_k kron(pos_k, proto_k)` in torch's `(out, in)` orientation: P prototypes
`proto_k = up_k · down_k` of block shape (p, q) and rank r, position weights `pos`
`(P, out/p, in/q)` per layer. The prototypes are a module of their own
(`SPLoPAPrototypes`), owned by a parent and passed explicitly to every `SPLoPADense` of
that block shape: no hidden process-wide cache (the reference keeps one).
Block masks (collection "masks": "blocks" `(P, out/p, in/q)` bool) remove position
weights; a block whose P entries are all masked is pruned whole (base included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cojax.adapters.lora import DEFAULT_INIT_RANGE, _uniform, keep_mask
from cojax.core import Array, check_array, check_config


class SPLoPAPrototypes(nn.Module):
    """P prototypes of block shape (p, q) and rank r: `__call__()` -> `(P, p, q)`.

    Params "up" `(P, p, r)` U(±init_range), "down" `(P, r, q)` kaiming-uniform over
    fan-in r·q (the reference's LowRankMatrix).
    """

    num_prototypes: int = 64
    block_shape: Sequence[int] = (32, 32)
    rank: int = 1
    init_range: float = DEFAULT_INIT_RANGE

    @nn.compact
    def __call__(self) -> Array:
        P, (p, q), r = self.num_prototypes, tuple(self.block_shape), self.rank
        up = self.param("up", _uniform(self.init_range), (P, p, r))
        down = self.param("down", _uniform(1 / math.sqrt(r * q)), (P, r, q))
        return up @ down


def block_kron(pos: Array, prototypes: Array) -> Array:
    """Σ_k kron(pos_k, proto_k): pos `(P, a, b)`, prototypes `(P, p, q)` -> `(a·p, b·q)`."""
    P, a, b = pos.shape
    _, p, q = prototypes.shape
    return jnp.einsum("kab,kpq->apbq", pos, prototypes).reshape(a * p, b * q)


class SPLoPADense(nn.Module):
    """Dense layer `(..., in)` -> `(..., out)` with a block prototype adapter.

    `__call__(x, prototypes)`: `prototypes` `(P, p, q)` from the parent's shared
    `SPLoPAPrototypes`. in and out must be divisible by q and p (the reference leaves
    other layers plain). Params: "kernel" `(in, out)` (frozen), "bias", "pos".
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array, prototypes: Array) -> Array:
        check_array(self, x, layout="(..., in)")
        P, p, q = prototypes.shape
        n_in, n_out = x.shape[-1], self.features
        check_config(
            n_out % p == 0 and n_in % q == 0,
            self,
            f"weight (out {n_out}, in {n_in}) is not divisible by the block shape ({p}, {q}).",
        )
        bound = 1 / math.sqrt(n_in)
        kernel = self.param("kernel", _uniform(bound), (n_in, n_out))
        a, b = n_out // p, n_in // q
        pos = self.param("pos", _uniform(1 / math.sqrt(a * b)), (P, a, b))
        keep = self.variable("masks", "blocks", lambda: jnp.ones((P, a, b), bool)).value
        y = x @ _block_adapted(kernel, pos, keep, prototypes)
        if self.use_bias:
            y = y + self.param("bias", _uniform(bound), (n_out,))
        return y


def splopa_adapted_kernel(variables: Any, prototypes: Array) -> Array:
    """The adapted, block-masked kernel `(in, out)` of an `SPLoPADense` (pruned blocks
    zero), given the shared `prototypes` `(P, p, q)`."""
    p = variables["params"]
    return _block_adapted(p["kernel"], p["pos"], variables["masks"]["blocks"], prototypes)


def _block_adapted(kernel: Array, pos: Array, keep: Array, prototypes: Array) -> Array:
    """kernel `(in, out)` + Σ_k kron(pos_k, proto_k)ᵀ over the kept position weights;
    blocks with no kept position are zero, base included."""
    _, p, q = prototypes.shape
    delta = block_kron(jnp.where(keep, pos, 0.0), prototypes)
    block_kept = jnp.any(keep, axis=0)
    mask = jnp.repeat(jnp.repeat(block_kept, p, axis=0), q, axis=1)
    return jnp.where(mask.T, kernel + delta.T, 0.0)


def fuse_splopa(
    variables: Any, prototypes: Array, input_keep: Array | None = None
) -> tuple[dict, np.ndarray, np.ndarray]:
    """A plain dense layer for an `SPLoPADense`: `(params, kept_in, kept_out)`.

    Pruned blocks are zeros of the plain kernel. Inputs: those some kept block reads,
    or, when given, `input_keep` (the producer's kept outputs, so the layers chain, as
    with `fuse_dense`). Outputs that only pruned blocks feed are removed when the layer
    has no bias (a biased one still emits its bias).
    """
    kernel = np.asarray(splopa_adapted_kernel(variables, prototypes))
    used = kernel != 0.0
    keep_in = np.any(used, axis=1) if input_keep is None else keep_mask(input_keep, used.shape[0])
    has_bias = "bias" in variables["params"]
    keep_out = np.ones(kernel.shape[1], bool) if has_bias else np.any(used, axis=0)
    kept_in, kept_out = np.flatnonzero(keep_in), np.flatnonzero(keep_out)
    params = {"kernel": jnp.asarray(kernel[kept_in][:, kept_out])}
    if has_bias:
        params["bias"] = variables["params"]["bias"]
    return params, kept_in, kept_out


def splopa_parameter_count(variables: Any, prototypes: Any | None = None) -> int:
    """Learned parameters (the paper's count, docs/adapters.md): kept position weights,
    plus P·p·r + P·r·q for the prototype params `prototypes` (counted once per
    shared set). The formula leaves the bias out; `adapter_optimizer` trains it (as
    the reference's `from_module` does), which adds |out|."""
    count = int(np.sum(variables["masks"]["blocks"]))
    if prototypes is not None:
        count += prototypes["up"].size + prototypes["down"].size
    return count
