"""Flax both ways: a cojax network inside a `flax.linen` model (`co.flax_module(layer)`)
and a continual Flax module as a cojax layer (`co.from_flax(module)`).

    module = co.flax_module(layer)
    variables = module.init({"params": key}, clips)          # {"params", "batch_stats"}
    ys, updates = module.apply(variables, clips, train=True,
                               rngs={"dropout": key}, mutable=["batch_stats"])

The learned leaves of `layer.init(key)` live in the "params" collection and the rest
(`co.trainable_mask` False: BatchNorm running statistics, fixed tables) in
"batch_stats", so Flax's usual `TrainState` recipe trains it: gradients w.r.t.
"params" only, "batch_stats" replaced by the mutated collection. `train=True` is
`co.train_forward` (batch statistics, dropout from the "dropout" rng); `train=False`
is `forward` clip by clip. Clips `(B, T, *spatial, C)`; `lengths` `(B,)` for ragged
batches. The module's `init_state` / `step` methods stream one frame at a time.

    layer = co.from_flax(module)          # module: __call__(clip), init_state, step
    params = layer.init(key)              # the module's Flax variables
    co.Sequential(co.Linear(3, 8), layer)  # composes like any cojax layer
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cojax.core import (
    Array,
    Layer,
    Params,
    as_spec,
    check_array,
    check_config,
    forward_per_clip,
    layer_name,
    length_mask,
)
from cojax.training import train_forward, trainable_mask

_NAME = "layer"


def split_params(layer: Layer, params: Params) -> tuple[dict, dict]:
    """`params` -> (learned, statistics) nested dicts (the Flax collections)."""
    mask = traverse_util.flatten_dict(_as_dict(trainable_mask(layer, params)))
    flat = traverse_util.flatten_dict(_as_dict(params), keep_empty_nodes=True)
    learned = {k: v for k, v in flat.items() if mask.get(k, True)}
    stats = {k: v for k, v in flat.items() if not mask.get(k, True)}
    return traverse_util.unflatten_dict(learned), traverse_util.unflatten_dict(stats)


def merge_params(learned: Any, stats: Any) -> dict:
    """The inverse of `split_params`."""
    flat = traverse_util.flatten_dict(_as_dict(learned), keep_empty_nodes=True)
    flat.update(traverse_util.flatten_dict(_as_dict(stats)))
    return traverse_util.unflatten_dict(flat)


def _as_dict(tree: Any) -> Any:
    if hasattr(tree, "unfreeze"):
        return tree.unfreeze()
    if isinstance(tree, dict):
        return {k: _as_dict(v) for k, v in tree.items()}
    return tree


class CojaxModule(nn.Module):
    """A cojax `layer` as a linen module (see the module docstring)."""

    layer: Layer

    def setup(self) -> None:
        # One key for both collections, so fixed random tables match their params. (Flax
        # also calls the param initialiser under eval_shape in `apply`, to check shapes.)
        key = self.make_rng("params") if self.is_initializing() else None

        def init_part(rng: Any, part: int) -> dict:
            return split_params(self.layer, self.layer.init(rng if key is None else key))[part]

        self.learned = self.param(_NAME, init_part, 0)
        self.stats = self.variable("batch_stats", _NAME, lambda: init_part(key, 1))

    def _params(self) -> tuple[dict, Any]:
        return merge_params(self.learned, self.stats.value), self.stats

    def __call__(self, clips: Any, train: bool = False, lengths: Any = None) -> Any:
        """Clips `(B, T, *spatial, C)` -> outputs `(B, T_out, ...)`."""
        params, stats = self._params()
        if train:
            ys, new = train_forward(self.layer, params, clips, self.make_rng("dropout"), lengths)
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                stats.value = split_params(self.layer, new)[1]
            return ys
        batch, length = jax.tree_util.tree_leaves(clips)[0].shape[:2]
        full = jnp.full((batch,), length) if lengths is None else jnp.asarray(lengths)
        ys, _, _ = forward_per_clip(self.layer, params, clips, length_mask(full, length))
        return ys

    def init_state(self, frame: Any) -> Any:
        """Fresh state of one stream for frames like `frame` (array or ShapeDtypeStruct)."""
        params, _ = self._params()
        return self.layer.init_state(params, frame)

    def step(self, state: Any, frame: Any) -> Any:
        """One frame of one stream: `(state, (y, valid))`, as `layer.step`."""
        params, _ = self._params()
        return self.layer.step(params, state, frame)


def flax_module(layer: Layer) -> CojaxModule:
    """`layer` as a `flax.linen.Module` with collections "params" and "batch_stats"."""
    if not isinstance(layer, Layer):
        raise TypeError(f"flax_module: expected a cojax layer, got {type(layer).__name__}.")
    return CojaxModule(layer)


# --------------------------------------------------------------------------- Flax -> cojax


@dataclasses.dataclass(frozen=True)
class FlaxLayer(Layer):
    """A continual Flax module as a cojax layer: what `co.from_flax(module)` returns.

    The module provides `__call__(clip)` (clip `(T, *frame_shape)` -> one output per
    complete window, `(T - window + 1, ...)`), and the methods `init_state(frame)` and
    `step(state, frame) -> (state, (y, valid))`. The layer derives the temporal
    metadata from the window, so the module declares none: receptive field `window`,
    delay `window - 1`, stride 1, no padding. `window` defaults to the module's
    `sequence_len`, `frame_shape` to `(input_dim,)` or `(embed_dim,)`. `params` are the
    module's Flax variables; only the "params" collection is learned (`trainable`),
    other collections (e.g. fixed Nyström "landmarks") are not.
    """

    module: nn.Module
    frame_shape: tuple[int, ...] | None = None
    window: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise TypeError(
                f"FlaxLayer: expected a flax.linen Module, got {type(self.module).__name__}."
            )
        for method in ("init_state", "step"):
            check_config(
                callable(getattr(self.module, method, None)),
                self,
                f"{type(self.module).__name__} has no {method} method: a continual Flax "
                "module needs __call__(clip), init_state(frame) and step(state, frame).",
            )
        if self.window is None:
            window = getattr(self.module, "sequence_len", None)
            check_config(window is not None, self, "pass window= (the module has no sequence_len).")
            object.__setattr__(self, "window", window)
        if self.frame_shape is None:
            channels = getattr(self.module, "input_dim", None) or getattr(
                self.module, "embed_dim", None
            )
            check_config(
                channels is not None, self, "pass frame_shape= (no input_dim / embed_dim)."
            )
            object.__setattr__(self, "frame_shape", (channels,))
        super().__post_init__()
        check_config(self.window >= 1, self, f"window must be >= 1, got {self.window}.")

    @property
    def receptive_field(self) -> int:
        return self.window

    @property
    def channels(self) -> int:
        """The frame's channel count (its last axis)."""
        return self.frame_shape[-1]

    def init(self, key: Array) -> Params:
        dummy = jnp.zeros((self.window, *self.frame_shape), jnp.float32)
        return dict(self.module.init(key, dummy))

    def check_frame(self, frame: Any) -> None:
        shape = tuple(self.frame_shape)
        check_array(self, frame, ndim=len(shape), channels=shape[-1] if shape else None)
        if tuple(frame.shape) != tuple(self.frame_shape):
            raise ValueError(
                f"{layer_name(self)}: expected a frame of shape {tuple(self.frame_shape)} "
                f"for {type(self.module).__name__}, got {tuple(frame.shape)}."
            )

    def trainable(self, params: Params) -> Params:
        """Only the Flax "params" collection is learned."""
        return {
            col: jax.tree_util.tree_map(lambda _, c=col: c == "params", tree)
            for col, tree in params.items()
        }

    def forward(self, params: Params, clip: Array) -> Array:
        return self.module.apply(params, clip)

    def init_state(self, params: Params, frame: Any):
        return self.module.apply(params, as_spec(frame), method="init_state")

    def step(self, params: Params, state, frame: Array):
        return self.module.apply(params, state, frame, method="step")


def from_flax(
    module: nn.Module, frame_shape: tuple[int, ...] | None = None, window: int | None = None
) -> FlaxLayer:
    """A continual Flax module as a cojax layer (see `FlaxLayer`)."""
    return FlaxLayer(module, None if frame_shape is None else tuple(frame_shape), window)
