"""SPLoRA: structured-pruning low-rank adapters for dense and convolution layers.

`W' = W + down · up` (Flax layout: kernel `(in, out)`, down `(in, r)`, up `(r, out)`;
the reference's `C·R` with R = downᵀ, C = upᵀ). The base kernel W is frozen (train only
"adapter" leaves and biases: `adapter_optimizer`), the bias trains. For convolutions
the adapter is a pointwise term added at the kernel's centre tap (odd, equal kernel
sizes). Channel masks (collection "masks": "in" `(in,)`, "out" `(out,)`, bool, all
True at init) prune for real: a masked input channel's column and a masked output
channel's row and bias are zero in the forward pass; `fuse_dense` / `fuse_conv` export
the physically smaller plain layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from cojax.core import Array, check_array, check_config

DEFAULT_RANK = 16
DEFAULT_INIT_RANGE = 1e-4


def adapter_rank(rank: float, out_features: int) -> int:
    """The reference's rule: rank < 1 is a fraction of the output features."""
    return round(out_features * rank) if rank < 1 else round(rank)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _masks(module: nn.Module, in_features: int, out_features: int) -> tuple[Array, Array]:
    keep_in = module.variable("masks", "in", lambda: jnp.ones((in_features,), bool))
    keep_out = module.variable("masks", "out", lambda: jnp.ones((out_features,), bool))
    return keep_in.value, keep_out.value


def _low_rank(module: nn.Module, in_features: int, out_features: int, rank: int, init_range: float):
    """down `(in, r)` kaiming-uniform over fan-in r·in, up `(r, out)` U(±init_range)."""
    down = module.param(
        "adapter_down", _uniform(1 / math.sqrt(rank * in_features)), (in_features, rank)
    )
    up = module.param("adapter_up", _uniform(init_range), (rank, out_features))
    return down, up


class SPLoRADense(nn.Module):
    """Dense layer with a low-rank structured-pruning adapter: `(..., in)` -> `(..., out)`.

    `fused=True` (inference) multiplies by the adapted, masked kernel; `fused=False`
    (training, low memory) adds the adapter path `((x·in) · down) · up` instead; the
    two agree to round-off. Params: "kernel" `(in, out)` (frozen), "bias",
    "adapter_down" `(in, r)`, "adapter_up" `(r, out)`. `kernel_init` / `bias_init`
    default to torch's `nn.Linear` (U(±1/√in)).
    """

    features: int
    rank: float = DEFAULT_RANK
    use_bias: bool = True
    init_range: float = DEFAULT_INIT_RANGE
    kernel_init: Callable | None = None
    bias_init: Callable | None = None

    @nn.compact
    def __call__(self, x: Array, fused: bool = True) -> Array:
        check_array(self, x, layout="(..., in)")
        n_in, n_out = x.shape[-1], self.features
        rank = adapter_rank(self.rank, n_out)
        check_config(rank >= 1, self, f"rank {self.rank} gives {rank} < 1 for {n_out} outputs.")
        bound = 1 / math.sqrt(n_in)
        kernel = self.param("kernel", self.kernel_init or _uniform(bound), (n_in, n_out))
        down, up = _low_rank(self, n_in, n_out, rank, self.init_range)
        keep_in, keep_out = _masks(self, n_in, n_out)
        mask = keep_in[:, None] & keep_out[None, :]
        if fused:
            y = x @ jnp.where(mask, kernel + down @ up, 0.0)
        else:
            y = x @ jnp.where(mask, kernel, 0.0) + jnp.where(
                keep_out, (jnp.where(keep_in, x, 0.0) @ down) @ up, 0.0
            )
        if self.use_bias:
            bias = self.param("bias", self.bias_init or _uniform(bound), (n_out,))
            y = y + jnp.where(keep_out, bias, 0.0)
        return y


def _centre_tap(kernel_shape: Sequence[int], delta: Array) -> Array:
    """A kernel `(*k, in, out)` that is `delta` `(in, out)` at the centre tap, 0 else."""
    full = jnp.zeros(kernel_shape, delta.dtype)
    centre = tuple(k // 2 for k in kernel_shape[:-2])
    return full.at[centre].set(delta)


def _conv(x: Array, kernel: Array, strides, padding, groups: int) -> Array:
    """Channels-last convolution of one example `(*spatial, C)` or a batch."""
    nd = kernel.ndim - 2
    single = x.ndim == nd + 1
    xb = x[None] if single else x
    letters = "DHW"[-nd:]
    spec = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
    pads = [(p, p) for p in padding]
    y = lax.conv_general_dilated(
        xb, kernel, strides, pads, dimension_numbers=spec, feature_group_count=groups
    )
    return y[0] if single else y


class _AdaptedConv(nn.Module):
    """Shared machinery of SPLoRA / SPPaRA convolutions (channels-last, 1d-3d)."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] | None = None
    padding: Sequence[int] | None = None
    feature_group_count: int = 1
    use_bias: bool = True
    init_range: float = DEFAULT_INIT_RANGE

    def _adapter(self, n_in: int, n_out: int) -> Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = tuple(self.kernel_size)
        nd = len(k)
        check_config(1 <= nd <= 3, self, f"kernel_size must have 1-3 dims, got {k}.")
        check_config(
            len(set(k)) == 1 and k[0] % 2 == 1,
            self,
            f"the adapter sits at the centre tap: kernel sizes must be odd and equal, got {k}.",
        )
        check_array(self, x, layout="([N,] *spatial, C)")
        check_config(
            x.ndim in (nd + 1, nd + 2), self, f"expected {nd} spatial dims, got shape {x.shape}."
        )
        groups = self.feature_group_count
        n_in, n_out = x.shape[-1], self.features
        check_config(
            n_in % groups == 0 and n_out % groups == 0, self, "channels must divide by the groups."
        )
        fan_in = n_in // groups * math.prod(k)
        kernel = self.param("kernel", _uniform(1 / math.sqrt(fan_in)), (*k, n_in // groups, n_out))
        delta = self._adapter(n_in // groups, n_out)
        keep_in, keep_out = _masks(self, n_in, n_out)
        mask = _kernel_mask(keep_in, keep_out, groups)  # (in/g, out)
        adapted = jnp.where(mask, kernel + _centre_tap(kernel.shape, delta), 0.0)
        strides = tuple(self.strides or (1,) * nd)
        padding = tuple(self.padding or (0,) * nd)
        y = _conv(x, adapted, strides, padding, groups)
        if self.use_bias:
            y = y + jnp.where(
                keep_out, self.param("bias", _uniform(1 / math.sqrt(fan_in)), (n_out,)), 0.0
            )
        return y


class SPLoRAConv(_AdaptedConv):
    """Convolution (1d-3d, channels-last) with a low-rank adapter `down · up`
    `(in/groups, out)` at the centre tap; kernel `(*k, in/groups, out)` frozen."""

    rank: float = DEFAULT_RANK

    def _adapter(self, n_in: int, n_out: int) -> Array:
        rank = adapter_rank(self.rank, n_out)
        check_config(rank >= 1, self, f"rank {self.rank} gives {rank} < 1 for {n_out} outputs.")
        down, up = _low_rank(self, n_in, n_out, rank, self.init_range)
        return down @ up


# --------------------------------------------------------------------------- fuse, count


def _kept(mask: Array) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask))


def keep_mask(keep: Any, n: int, what: str = "input_keep") -> np.ndarray:
    """A keep spec over `n` channels -> a bool mask `(n,)`.

    Either a bool mask of length `n`, or integer indices of the kept channels (what
    the `fuse_*` functions return as `kept_out`, so a producer's `kept_out` is its
    consumer's `input_keep` as it is). Anything else raises: an index array is never
    read as a mask or the other way round.
    """
    arr = np.asarray(keep)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise ValueError(f"{what}: a bool mask must have shape ({n},), got {arr.shape}.")
        return arr
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise TypeError(
            f"{what}: expected a bool mask ({n},) or an int array of kept channel indices, "
            f"got {arr.dtype}{list(arr.shape)}."
        )
    if arr.size and (arr.min() < 0 or arr.max() >= n or len(np.unique(arr)) != arr.size):
        raise ValueError(
            f"{what}: kept indices must be distinct and in [0, {n}), got {arr.tolist()}."
        )
    mask = np.zeros(n, bool)
    mask[arr] = True
    return mask


def adapted_kernel(params: Any) -> Array:
    """W + ΔW of an SPLoRA / SPPaRA dense or convolution layer's params (masks not
    applied): `(in, out)` or `(*k, in/groups, out)`, the adapter at the centre tap."""
    kernel = params["kernel"]
    if "adapter" in params:
        delta = params["adapter"]
    else:
        delta = params["adapter_down"] @ params["adapter_up"]
    return kernel + delta if kernel.ndim == 2 else kernel + _centre_tap(kernel.shape, delta)


def fuse_dense(
    variables: Any, input_keep: Array | None = None
) -> tuple[dict, np.ndarray, np.ndarray]:
    """A plain `nn.Dense(len(kept_out))` for an `SPLoRADense`: `(params, kept_in,
    kept_out)`, the kernel `(|kept_in|, |kept_out|)`.

    Inputs: the layer's "in" mask, or, when given, `input_keep` (the producer's kept
    outputs: its `kept_out` indices or a bool mask, see `keep_mask`; inputs this layer
    masks itself become zero rows). A consumer of this layer takes `kept_out` as its
    `input_keep`.
    """
    p, masks = variables["params"], variables["masks"]
    own_in = np.asarray(masks["in"])
    keep_in = own_in if input_keep is None else keep_mask(input_keep, own_in.shape[0])
    kept_in, kept_out = _kept(keep_in), _kept(masks["out"])
    adapted = jnp.where(own_in[:, None], adapted_kernel(p), 0.0)
    params = {"kernel": adapted[kept_in][:, kept_out]}
    if "bias" in p:
        params["bias"] = p["bias"][kept_out]
    return params, kept_in, kept_out


def _kernel_mask(keep_in: Array, keep_out: Array, groups: int) -> Array:
    """`(in/groups, out)` keep-mask of a grouped kernel: a kernel entry connects output o
    to input channel (group of o)·in/groups + i."""
    in_of_kernel = jnp.asarray(keep_in).reshape(groups, -1)
    out_group = jnp.arange(keep_out.shape[0]) // (keep_out.shape[0] // groups)
    return in_of_kernel[out_group].T & jnp.asarray(keep_out)[None, :]


def fuse_conv(
    variables: Any, input_keep: Array | None = None
) -> tuple[dict, np.ndarray, np.ndarray]:
    """A plain convolution for an SPLoRA / SPPaRA convolution, grouped or not:
    `(params, kept_in, kept_out)`, kernel `(*k, |kept_in|/g', |kept_out|)` with
    g' = `len(kept_in) // kernel.shape[-2]` groups left.

    Inputs: the layer's "in" mask, or, when given, `input_keep` (the producer's kept
    outputs: its `kept_out` indices or a bool mask, see `keep_mask`; inputs this layer
    masks itself become zero rows). A group whose inputs and outputs are all pruned is removed; the kept groups must
    keep equally many inputs and outputs each (one plain grouped convolution), e.g. a
    depthwise convolution prunes an output channel together with its input channel.
    """
    p, masks = variables["params"], variables["masks"]
    kernel = p["kernel"]
    own_in, keep_out = np.asarray(masks["in"]), np.asarray(masks["out"])
    groups = own_in.shape[0] // kernel.shape[-2]
    mask = _kernel_mask(own_in, keep_out, groups)
    adapted = np.asarray(jnp.where(mask, adapted_kernel(p), 0.0))
    keep_in = own_in if input_keep is None else keep_mask(input_keep, own_in.shape[0])
    in_groups, out_groups = keep_in.reshape(groups, -1), keep_out.reshape(groups, -1)
    kept_groups = np.flatnonzero(in_groups.any(1) | out_groups.any(1))
    counts = {(int(in_groups[j].sum()), int(out_groups[j].sum())) for j in kept_groups}
    if groups > 1 and (len(counts) > 1 or any(0 in c for c in counts)):
        raise ValueError(
            f"fuse_conv: the masks keep (inputs, outputs) per group {sorted(counts)} in "
            f"a {groups}-group convolution; one plain grouped convolution needs the same "
            "nonzero counts in every kept group (prune a depthwise output channel together "
            "with its input channel)."
        )
    out_per_group = keep_out.shape[0] // groups
    pieces = [
        adapted[..., np.flatnonzero(in_groups[j]), :][
            ..., j * out_per_group + np.flatnonzero(out_groups[j])
        ]
        for j in kept_groups
    ]
    params = {"kernel": jnp.asarray(np.concatenate(pieces, axis=-1))}
    kept_out = _kept(keep_out)
    if "bias" in p:
        params["bias"] = p["bias"][kept_out]
    return params, _kept(keep_in), kept_out


def splora_parameter_count(variables: Any) -> int:
    """Learned parameters of a masked SPLoRA layer: r·|in| + r·|out| + |out| (bias)."""
    p, masks = variables["params"], variables["masks"]
    rank = p["adapter_down"].shape[1]
    n_in, n_out = int(np.sum(masks["in"])), int(np.sum(masks["out"]))
    return rank * n_in + rank * n_out + (n_out if "bias" in p else 0)


def sppara_parameter_count(variables: Any) -> int:
    """Learned parameters of a masked SPPaRA convolution: the adapter entries between
    kept channels (|in|·|out| ungrouped, |in|·|out|/groups grouped) + |out| (bias)."""
    p, masks = variables["params"], variables["masks"]
    groups = masks["in"].shape[0] // p["adapter"].shape[0]
    kept_out = int(np.sum(masks["out"]))
    entries = int(np.sum(_kernel_mask(masks["in"], masks["out"], groups)))
    return entries + (kept_out if "bias" in p else 0)


# --------------------------------------------------------------------------- training


ADAPTER_LEAVES = ("adapter", "adapter_down", "adapter_up", "pos")


def adapter_labels(params: Any) -> Any:
    """ "freeze" for the base kernel of every adapted layer (a params dict holding an
    adapter: "adapter", "adapter_down"/"adapter_up" or SPLoPA's "pos"), "train" for
    everything else: adapters, biases, prototypes, and plain layers such as a new
    task head."""

    def walk(tree: Any) -> Any:
        if not isinstance(tree, Mapping):
            return "train"
        adapted = any(name in tree for name in ADAPTER_LEAVES)
        labels = {
            name: "freeze" if adapted and name == "kernel" else walk(sub)
            for name, sub in tree.items()
        }
        return labels if isinstance(tree, dict) else type(tree)(labels)

    return walk(params)


def adapter_optimizer(optimizer: optax.GradientTransformation, params: Any):
    """`optimizer` on everything but the adapted layers' base kernels, which get no
    update (`adapter_labels`)."""
    return optax.multi_transform(
        {"train": optimizer, "freeze": optax.set_to_zero()}, adapter_labels(params)
    )
