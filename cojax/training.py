"""Train in clip mode, stream in step mode.

    ys, new_params = co.train_forward(layer, params, clips, key, lengths=None)
    mask = co.trainable_mask(layer, params)   # for optax.masked / multi_transform

`train_forward` is torch's train mode on a batch of clips `(B, T, *spatial, C)`:
BatchNorm normalises with the batch statistics of the real frames and returns moved
running statistics in `new_params`; every dropout and RReLU is random, driven by `key`.
Ragged batches pass `lengths` `(B,)`: frames past a clip's end are never read (they
act as the clip's end padding), and outputs past it are zero; `output_lengths` says
how many outputs of each clip are real. The trained `params` stream with `step`
exactly as `forward` (inference mode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cojax.core import Array, Layer, Params, PyTree, length_mask, time_length


def _check_batch(layer: Layer, clips: PyTree, lengths: Array | None) -> tuple[int, int]:
    leaves = jax.tree_util.tree_leaves(clips)
    if not leaves or any(getattr(a, "ndim", 0) < 2 for a in leaves):
        raise ValueError(
            f"{type(layer).__name__}: train_forward expects a batch of clips (B, T, ...), "
            f"got shapes {[getattr(a, 'shape', None) for a in leaves]}."
        )
    batch, length = leaves[0].shape[:2]
    if any(a.shape[:2] != (batch, length) for a in leaves):
        raise ValueError(
            f"{type(layer).__name__}: every stream needs the same (B, T), got "
            f"{[tuple(a.shape[:2]) for a in leaves]}."
        )
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(
                f"{type(layer).__name__}: lengths must be an int array of shape ({batch},), "
                f"got {lengths.dtype}{tuple(lengths.shape)}."
            )
    return batch, length


def train_forward(
    layer: Layer,
    params: Params,
    clips: PyTree,
    key: Array,
    lengths: Array | None = None,
) -> tuple[PyTree, Params]:
    """Train-mode forward of a batch `(B, T, *spatial, C)` -> `(ys, new_params)`.

    `ys` `(B, T_out, ...)`; `new_params` equals `params` except BatchNorm running
    statistics (momentum update, unbiased variance, as torch). With `lengths` `(B,)`
    clip b has `lengths[b]` real frames; its outputs from `output_lengths(...)[b]` on
    are zero, and nothing past its end (even NaN) reaches a real output or a gradient.
    """
    batch, length = _check_batch(layer, clips, lengths)
    if lengths is None:
        mask = jnp.ones((batch, length), bool)
    else:
        mask = length_mask(jnp.clip(jnp.asarray(lengths), 0, length), length)
    ys, _, new_params = layer.forward_train(params, clips, mask, key)
    return ys, new_params


def output_lengths(layer: Layer, lengths: Array) -> Array:
    """The number of real outputs `forward` gives for clips of `lengths` frames."""
    return jnp.asarray(layer.output_length(jnp.asarray(lengths)))


def output_mask(layer: Layer, lengths: Array, ys: PyTree) -> Array:
    """`(B, T_out)` bool: the real outputs in `ys` from `train_forward(..., lengths)`."""
    return length_mask(output_lengths(layer, lengths), time_length(ys))


def trainable_mask(layer: Layer, params: Params) -> PyTree:
    """Bool pytree like `params`: True where an optimiser should update the leaf.

    False for BatchNorm running statistics, fixed Nyström landmarks and anything
    else that is not learned. Ready for `optax.masked(tx, mask)` or, with
    `statistics_label`, `optax.multi_transform`.
    """
    try:
        mask = layer.trainable(params)
    except (KeyError, TypeError, AttributeError):
        mask = None
    if mask is None or (jax.tree_util.tree_structure(mask) != jax.tree_util.tree_structure(params)):
        raise ValueError(
            f"{type(layer).__name__}: params do not have this layer's structure; "
            "create them with layer.init(key)."
        )
    return mask


def statistics_label(layer: Layer, params: Params) -> PyTree:
    """`"trainable"` / `"frozen"` labels for `optax.multi_transform`."""
    return jax.tree_util.tree_map(
        lambda t: "trainable" if t else "frozen", trainable_mask(layer, params)
    )


def masked_optimizer(tx, layer: Layer, params: Params):
    """`tx` on the learned leaves only; the others get zero updates.

    `optax.masked(tx, mask)` passes the masked-out leaves' updates (their raw
    gradients) through unchanged, so an optimiser for cojax params is
    `optax.multi_transform` with `optax.set_to_zero()` for the statistics, which is
    what this returns. Apply it to the params *before* `train_forward` moved the
    statistics: `optax.apply_updates(new_params, updates)` keeps both changes.
    """
    import optax

    return optax.multi_transform(
        {"trainable": tx, "frozen": optax.set_to_zero()}, statistics_label(layer, params)
    )
