"""A chain of adapted convolutions feeding a dense head: masks, pruning, export and counts.

The structured-pruning workflow of Structured Pruning Adapters (arXiv 2211.10155) on
a network `conv_0 → conv_1 → … → head` whose convolutions are `SPLoRAConv` /
`SPPaRAConv` modules: each conv's input channels are its producer's output channels,
so pruning an output channel of one conv also removes an input column of the next.

A `Masks` value is the Flax "masks" collection of the chain, in order:
`{name: {"in": bool (in,), "out": bool (out,)}}`, where `masks[c]["in"]` is the
producer's `masks[p]["out"]` (`chain_masks` builds it). `taps` is the number of kernel
weights per (input, output) channel pair: k·k for a k×k conv, one int or one per conv.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cojax.adapters.lora import (
    adapted_kernel,
    fuse_conv,
    splora_parameter_count,
    sppara_parameter_count,
)
from cojax.adapters.pruning import chain_channel_masks, chain_sparsity

Masks = dict[str, dict[str, np.ndarray]]
METHODS = ("finetune", "splora", "sppara")


def chain_masks(out_masks: Mapping[str, Any], in_channels: int) -> Masks:
    """The masks collection of a chain from each conv's output keep-mask (in order):
    the first conv reads all `in_channels`, every other conv its producer's outputs."""
    masks, producer = {}, np.ones(in_channels, bool)
    for name, out in out_masks.items():
        out = np.asarray(out)
        if out.dtype != np.bool_ or out.ndim != 1:
            raise TypeError(f"chain_masks: {name}'s output mask must be a 1-D bool array.")
        masks[name] = {"in": producer, "out": out}
        producer = out
    return masks


def _taps(masks: Masks, taps: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(taps, Mapping):
        if list(taps) != list(masks):
            raise ValueError(f"taps name {list(taps)}, the masks {list(masks)} (same order).")
        return dict(taps)
    return {name: int(taps) for name in masks}


def _in_channels(masks: Masks) -> int:
    return len(next(iter(masks.values()))["in"])


def kernel_sparsity(masks: Masks, taps: int | Mapping[str, int]) -> float:
    """Fraction of the convs' kernel weights the masks remove (biases and head not
    counted), input columns removed upstream included (`chain_sparsity`)."""
    outs = {name: m["out"] for name, m in masks.items()}
    return chain_sparsity(outs, _taps(masks, taps), _in_channels(masks))


def prune_to(
    scores: Mapping[str, Any],
    masks: Masks,
    target: float,
    taps: int | Mapping[str, int],
    scope: str = "layer",
) -> Masks:
    """Masks that remove at least `target` of the kernel weights (`kernel_sparsity`),
    pruning the lowest-scored output channels (`scores[name]`: `(out,)`), and a
    superset of what `masks` already prunes: a pruned channel is never regrown.
    `scope`: "layer" (every conv loses the same fraction) or "global"
    (`chain_channel_masks`)."""
    if list(scores) != list(masks):
        raise ValueError(f"scores name {list(scores)}, the masks {list(masks)} (same order).")
    before = {name: masks[name]["out"] for name in masks}
    scores = {n: np.where(before[n], np.asarray(scores[n]), -np.inf) for n in masks}
    outs = chain_channel_masks(scores, _taps(masks, taps), _in_channels(masks), target, scope)
    return chain_masks({n: outs[n] & before[n] for n in masks}, _in_channels(masks))


def adapted_kernels(params: Mapping[str, Any], masks: Masks) -> dict[str, np.ndarray]:
    """Each conv's effective kernel `(*k, in, out)`: base + centre-tap adapter
    (`adapted_kernel`), the entries between pruned channels zero."""
    out = {}
    for name, m in masks.items():
        keep = m["in"][:, None] & m["out"][None, :]
        out[name] = np.where(keep, np.asarray(adapted_kernel(params[name])), 0.0)
    return out


def export(
    params: Mapping[str, Any], masks: Masks, head: str = "head"
) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The physically smaller plain network: `(convs, head)`, each conv's params
    `{"kernel": (*k, |kept in|, |kept out|), "bias": (|kept out|,)}` (`fuse_conv`
    chained through `input_keep`) and the dense head's kept rows
    `{"kernel": (|kept last|, classes), "bias": (classes,)}`."""
    if not masks:
        raise ValueError("export: the masks name no convolution.")
    convs, producer = [], None
    for name, m in masks.items():
        fused, _, kept_out = fuse_conv({"params": params[name], "masks": m}, producer)
        convs.append({k: np.asarray(v) for k, v in fused.items()})
        producer = kept_out
    last = np.zeros(len(m["out"]), bool)
    last[producer] = True
    dense = params[head]
    return convs, {"kernel": np.asarray(dense["kernel"])[last], "bias": np.asarray(dense["bias"])}


def learned_parameters(
    method: str,
    params: Mapping[str, Any],
    masks: Masks,
    taps: int | Mapping[str, int],
    head: str = "head",
) -> dict[str, int]:
    """Learned parameters per layer of a pruned chain trained by `method`:
    "finetune" (pruning + fine-tuning: taps·|in|·|out| + |out| per conv), "splora"
    (`splora_parameter_count`: r·|in| + r·|out| + |out|) or "sppara"
    (`sppara_parameter_count`); the head's kept rows (|kept last|·classes + classes)
    count in every method."""
    if method not in METHODS:
        raise ValueError(f"learned_parameters: method must be one of {METHODS}, got {method!r}.")
    taps = _taps(masks, taps)
    counts = {}
    for name, m in masks.items():
        variables = {"params": params[name], "masks": m}
        n_in, n_out = int(m["in"].sum()), int(m["out"].sum())
        if method == "finetune":
            counts[name] = taps[name] * n_in * n_out + n_out
        elif method == "splora":
            counts[name] = splora_parameter_count(variables)
        else:
            counts[name] = sppara_parameter_count(variables)
    classes = int(np.shape(params[head]["bias"])[0])
    last = masks[list(masks)[-1]]["out"]
    counts[head] = int(last.sum()) * classes + classes
    return counts
