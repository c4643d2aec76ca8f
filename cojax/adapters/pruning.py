"""Pruning criteria and masks at a target sparsity for structured pruning adapters.

Scores are per output channel (channel-SPA) or per weight block (block-SPA), from the
adapted weight `w` and, for the gradient criteria, the loss gradient `g` with respect
to it (same shape):
- "magnitude": ‖w_c‖₂ of the channel's weights;
- "gradient": ‖g_c‖₂;
- "taylor": |Σ w_c · g_c|, the first-order Taylor estimate of the loss change when
  the channel is removed (Molchanov et al., 2019).
`channel_masks` / `block_masks` turn scores of several layers into keep-masks that prune
a target fraction of the weights, with one global threshold or per layer;
`chain_channel_masks` does so for a chain of layers, counting the input columns that
removing a channel also removes from the next layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from cojax.core import Array

CRITERIA = ("magnitude", "gradient", "taylor")


def channel_scores(
    weight: Array, grad: Array | None = None, criterion: str = "magnitude"
) -> np.ndarray:
    """Importance of each output channel (the last axis) of a kernel `(..., out)`."""
    if criterion not in CRITERIA:
        raise ValueError(f"channel_scores: criterion must be one of {CRITERIA}, got {criterion!r}.")
    w = np.asarray(weight, np.float64).reshape(-1, np.shape(weight)[-1])
    if criterion == "magnitude":
        return np.linalg.norm(w, axis=0)
    if grad is None or np.shape(grad) != np.shape(weight):
        raise ValueError(
            f"channel_scores: criterion {criterion!r} needs the gradient of the loss with "
            f"respect to the adapted weight, shaped {np.shape(weight)}; got "
            f"{None if grad is None else np.shape(grad)}."
        )
    g = np.asarray(grad, np.float64).reshape(w.shape)
    if criterion == "gradient":
        return np.linalg.norm(g, axis=0)
    return np.abs(np.sum(w * g, axis=0))


def block_scores(
    weight: Array,
    block_shape: tuple[int, int],
    grad: Array | None = None,
    criterion: str = "magnitude",
) -> np.ndarray:
    """Importance of each block of an adapted dense kernel `(in, out)` (Flax layout).

    `block_shape` (p, q) in torch's `(out, in)` orientation, as SPLoPA takes it; returns
    `(out/p, in/q)`, the layout of an SPLoPA layer's block masks (the criteria as for
    channels, over each block's p·q weights).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"block_scores: criterion must be one of {CRITERIA}, got {criterion!r}.")
    n_in, n_out = np.shape(weight)
    p, q = block_shape
    if n_out % p or n_in % q:
        raise ValueError(
            f"block_scores: weight (out {n_out}, in {n_in}) is not divisible by the block "
            f"shape ({p}, {q})."
        )

    def blocks(a: Array) -> np.ndarray:  # (in, out) -> (out/p, in/q, p·q)
        a = np.asarray(a, np.float64).T.reshape(n_out // p, p, n_in // q, q)
        return a.transpose(0, 2, 1, 3).reshape(n_out // p, n_in // q, p * q)

    w = blocks(weight)
    if criterion == "magnitude":
        return np.linalg.norm(w, axis=-1)
    if grad is None or np.shape(grad) != np.shape(weight):
        raise ValueError(
            f"block_scores: criterion {criterion!r} needs the gradient of the loss with "
            f"respect to the adapted weight, shaped {np.shape(weight)}; got "
            f"{None if grad is None else np.shape(grad)}."
        )
    g = blocks(grad)
    if criterion == "gradient":
        return np.linalg.norm(g, axis=-1)
    return np.abs(np.sum(w * g, axis=-1))


def block_masks(
    scores: Mapping[str, np.ndarray],
    weights_per_block: Mapping[str, int],
    sparsity: float,
    scope: str = "global",
) -> dict[str, np.ndarray]:
    """Keep-masks `(out/p, in/q)` (bool per block) pruning about `sparsity` of the
    weights, lowest scores first, as `channel_masks` does for channels.

    An SPLoPA layer takes one as its "blocks" mask broadcast over the prototypes:
    `np.broadcast_to(mask, (P, out/p, in/q))`.
    """
    flat = channel_masks(
        {name: np.ravel(s) for name, s in scores.items()}, weights_per_block, sparsity, scope
    )
    return {name: flat[name].reshape(np.shape(s)) for name, s in scores.items()}


def channel_masks(
    scores: Mapping[str, np.ndarray],
    weights_per_channel: Mapping[str, int],
    sparsity: float,
    scope: str = "global",
) -> dict[str, np.ndarray]:
    """Keep-masks (bool per output channel) pruning about `sparsity` of the weights.

    `scores[name]` `(out,)`; `weights_per_channel[name]` weights removed with one of its
    channels. Lowest scores go first; "global" ranks all layers' channels together,
    "layer" prunes each layer to the sparsity. Every layer keeps at least one channel.
    """
    _check_target(sparsity, scope)
    if set(scores) != set(weights_per_channel):
        raise ValueError(
            f"masks: scores name layers {sorted(scores)} but the weight counts name "
            f"{sorted(weights_per_channel)}."
        )
    if scope == "layer":
        return {
            name: _prune({name: s}, {name: weights_per_channel[name]}, sparsity)[name]
            for name, s in scores.items()
        }
    return _prune(scores, weights_per_channel, sparsity)


def _check_target(sparsity: float, scope: str) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"masks: sparsity must be in [0, 1), got {sparsity}.")
    if scope not in ("global", "layer"):
        raise ValueError(f"masks: scope must be 'global' or 'layer', got {scope!r}.")


def _prune(scores, sizes, sparsity) -> dict[str, np.ndarray]:
    entries = [(float(s), name, c) for name, layer in scores.items() for c, s in enumerate(layer)]
    entries.sort()
    total = sum(sizes[name] * len(layer) for name, layer in scores.items())
    masks = {name: np.ones(len(layer), bool) for name, layer in scores.items()}
    pruned = 0
    for _, name, c in entries:
        if pruned >= sparsity * total:
            break
        if masks[name].sum() == 1:  # never remove a layer's last channel
            continue
        masks[name][c] = False
        pruned += sizes[name]
    return masks


def chain_sparsity(
    keep_out: Mapping[str, np.ndarray], taps: Mapping[str, int], in_channels: int
) -> float:
    """Fraction of the weights of a chain of layers (in the mapping's order) that output
    masks remove, with the cascade: layer i holds taps_i·|in_i|·|out_i| weights, where
    |in_i| is the previous layer's kept outputs (`in_channels` for the first)."""
    kept = total = 0
    kept_in, full_in = in_channels, in_channels
    for name, mask in keep_out.items():
        kept += taps[name] * kept_in * int(np.sum(mask))
        total += taps[name] * full_in * len(mask)
        kept_in, full_in = int(np.sum(mask)), len(mask)
    return 1.0 - kept / total


def chain_channel_masks(
    scores: Mapping[str, np.ndarray],
    taps: Mapping[str, int],
    in_channels: int,
    sparsity: float,
    scope: str = "global",
) -> dict[str, np.ndarray]:
    """Keep-masks for a chain of layers, each feeding the next (the mapping's order),
    that remove at least `sparsity` of the chain's weights counting the cascade: an
    output channel removed from layer i also removes its input column from layer i+1
    (`chain_sparsity`). `taps[name]`: weights per (input, output) channel pair (k·k
    for a k×k convolution).

    "global": the lowest-scored channels of all layers go first. "layer": every layer
    loses the same fraction of its channels (its lowest), the smallest fraction that
    reaches the target. Channels scored -inf (e.g. pruned before) go first. Every layer
    keeps at least one channel.
    """
    _check_target(sparsity, scope)
    if list(scores) != list(taps):
        raise ValueError(
            f"masks: scores name layers {list(scores)} but taps name {list(taps)} (same order)."
        )
    order = {name: np.argsort(np.asarray(s), kind="stable") for name, s in scores.items()}
    masks = {name: np.ones(len(s), bool) for name, s in scores.items()}
    if scope == "global":
        entries = sorted(
            (float(s), i, c)
            for i, layer in enumerate(scores.values())
            for c, s in enumerate(np.asarray(layer))
        )
        names = list(scores)
        for _, i, c in entries:
            if chain_sparsity(masks, taps, in_channels) >= sparsity:
                break
            if masks[names[i]].sum() > 1:
                masks[names[i]][c] = False
        return masks
    sizes = {name: len(s) for name, s in scores.items()}
    fractions = sorted({Fraction(k, n) for n in sizes.values() for k in range(n)})
    for fraction in fractions:
        for name, n in sizes.items():
            masks[name] = np.ones(n, bool)
            masks[name][order[name][: min(math.ceil(fraction * n), n - 1)]] = False
        if chain_sparsity(masks, taps, in_channels) >= sparsity:
            break
    return masks
