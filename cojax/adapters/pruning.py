"""Pruning criteria and masks at a target sparsity for structured pruning adapters.

Scores are per output channel (channel-SPA) or per block position (block-SPA), from the
adapted weight `w` and, for the gradient criteria, the loss gradient `g` with respect
to it (same shape):
- "magnitude": ‖w_c‖₂ of the channel's weights;
- "gradient": ‖g_c‖₂;
- "taylor": |Σ w_c · g_c|, the first-order Taylor estimate of the loss change when
  the channel is removed (Molchanov et al., 2019).
`channel_masks` turns scores of several layers into keep-masks that prune a target
fraction of the weights, with one global threshold or per layer.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def block_scores(pos: Array, grad: Array | None = None, criterion: str = "magnitude") -> np.ndarray:
    """Importance of each SPLoPA position weight `(P, out/p, in/q)` (elementwise)."""
    if criterion not in CRITERIA:
        raise ValueError(f"block_scores: criterion must be one of {CRITERIA}, got {criterion!r}.")
    p = np.asarray(pos, np.float64)
    if criterion == "magnitude":
        return np.abs(p)
    if grad is None or np.shape(grad) != p.shape:
        raise ValueError(
            f"block_scores: criterion {criterion!r} needs a gradient shaped {p.shape}."
        )
    g = np.asarray(grad, np.float64)
    return np.abs(g) if criterion == "gradient" else np.abs(p * g)


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
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"channel_masks: sparsity must be in [0, 1), got {sparsity}.")
    if scope not in ("global", "layer"):
        raise ValueError(f"channel_masks: scope must be 'global' or 'layer', got {scope!r}.")
    if scope == "layer":
        return {
            name: _prune({name: s}, {name: weights_per_channel[name]}, sparsity)[name]
            for name, s in scores.items()
        }
    return _prune(scores, weights_per_channel, sparsity)


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
