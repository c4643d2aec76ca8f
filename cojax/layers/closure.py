"""Stateless closures: `Identity`, `Lambda`, `Add`, `Multiply`, `Constant`, `Zero`,
`One`, and `Reshape` of each frame.

All have delay 0 and receptive field 1. Frames `(*F)`, clips `(T, *F)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from numbers import Number
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cojax.core import (
    Array,
    FrameLayer,
    Layer,
    Params,
    PyTree,
    State,
    StepOutput,
    as_int_tuple,
    check_array,
    check_array_leaves,
    check_config,
    layer_name,
)

ConstantValue = float | tuple


def _freeze(layer: Any, value: Any) -> ConstantValue:
    """A number or array-like -> a hashable float or nested tuple of floats."""
    if isinstance(value, Number) and not isinstance(value, complex):
        return float(value)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{layer_name(layer)}: the constant must be a real number or an array of them, "
            f"got {type(value).__name__}."
        ) from None
    if arr.ndim == 0:
        return float(arr)
    return _nested_tuple(arr.tolist())


def _nested_tuple(value: Any) -> Any:
    return tuple(_nested_tuple(v) for v in value) if isinstance(value, list) else value


def _constant_like(constant: ConstantValue, x: Array) -> Array:
    return jnp.asarray(constant, dtype=x.dtype)


@dataclasses.dataclass(frozen=True, init=False)
class Identity(FrameLayer):
    """Returns its input. Like torch's `nn.Identity`, ignores any constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def apply(self, params: Params, x: Array) -> Array:
        return x


@dataclasses.dataclass(frozen=True)
class Add(FrameLayer):
    """`y = x + constant`; `constant` a number or an array broadcast against each frame."""

    constant: ConstantValue

    def __post_init__(self):
        object.__setattr__(self, "constant", _freeze(self, self.constant))

    def apply(self, params: Params, x: Array) -> Array:
        return x + _constant_like(self.constant, x)


@dataclasses.dataclass(frozen=True)
class Multiply(FrameLayer):
    """`y = factor * x`; `factor` a number or an array broadcast against each frame."""

    factor: ConstantValue

    def __post_init__(self):
        object.__setattr__(self, "factor", _freeze(self, self.factor))

    def apply(self, params: Params, x: Array) -> Array:
        return x * _constant_like(self.factor, x)


@dataclasses.dataclass(frozen=True)
class Constant(FrameLayer):
    """`y = constant * ones_like(x)` (the reference's `co.Constant`): ignores the values."""

    constant: ConstantValue

    def __post_init__(self):
        object.__setattr__(self, "constant", _freeze(self, self.constant))

    def apply(self, params: Params, x: Array) -> Array:
        return _constant_like(self.constant, x) * jnp.ones_like(x)


@dataclasses.dataclass(frozen=True)
class Zero(FrameLayer):
    """`y = zeros_like(x)`."""

    def apply(self, params: Params, x: Array) -> Array:
        return jnp.zeros_like(x)


@dataclasses.dataclass(frozen=True)
class One(FrameLayer):
    """`y = ones_like(x)`."""

    def apply(self, params: Params, x: Array) -> Array:
        return jnp.ones_like(x)


# --------------------------------------------------------------------------- Lambda


def _time_lengths(tree: PyTree) -> set[int | None]:
    return {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree_util.tree_leaves(tree)}


@dataclasses.dataclass(frozen=True, eq=False)
class Lambda(Layer):
    """A stateless function of the stream, applied frame by frame.

    `takes_time=False`: `fn(frame)` on each frame `(*F)` (`forward` maps it over the
    clip's time axis with `vmap`). `takes_time=True`: `fn(clip)` on a whole clip
    `(T, *F)`; a step applies it to a length-1 clip `(1, *F)`. Either way `fn` must act
    on each time step on its own (it cannot delay, shorten or mix frames); a
    `takes_time` function that changes the clip length raises a `ValueError`.
    Frames and outputs may be pytrees of arrays of any dtype. Equality and hashing
    go by the identity of `fn`: define the function once and reuse it, or jit
    retraces for each new `Lambda(lambda ...)`.
    """

    fn: Callable[[Any], Any]
    takes_time: bool = False

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Lambda: fn must be callable, got {type(self.fn).__name__}.")

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.fn is self.fn
            and other.takes_time == self.takes_time
        )

    def __hash__(self) -> int:
        return hash((type(self), id(self.fn), self.takes_time))

    def check_frame(self, frame: Any) -> None:
        check_array_leaves(self, frame, "frame")

    def check_clip(self, clip: PyTree) -> None:
        check_array_leaves(self, clip, "clip")
        lengths = _time_lengths(clip)
        if None in lengths or len(lengths) != 1:
            raise ValueError(
                f"{layer_name(self)}: every leaf of a clip needs the same leading time axis, "
                f"got {jax.tree_util.tree_map(jnp.shape, clip)}."
            )

    def forward(self, params: Params, clip: PyTree) -> PyTree:
        if not self.takes_time:
            return jax.vmap(self.fn)(clip)
        out = self.fn(clip)
        self._check_same_length(out, _time_lengths(clip).pop())
        return out

    def step(self, params: Params, state: State, frame: PyTree) -> tuple[State, StepOutput]:
        if not self.takes_time:
            return state, (self.fn(frame), jnp.ones((), bool))
        out = self.fn(jax.tree_util.tree_map(lambda a: a[None], frame))
        self._check_same_length(out, 1)
        return state, (jax.tree_util.tree_map(lambda a: a[0], out), jnp.ones((), bool))

    def _check_same_length(self, out: PyTree, length: int) -> None:
        check_array_leaves(self, out, "output of fn")
        lengths = _time_lengths(out)
        if lengths != {length}:
            raise ValueError(
                f"{layer_name(self)}: with takes_time=True, fn must keep the time axis (axis 0) "
                f"of length {length}, but it returned shapes "
                f"{jax.tree_util.tree_map(jnp.shape, out)}. A Lambda acts on each frame on its "
                f"own; use a temporal layer (e.g. a pool or conv) to change the time axis."
            )


# --------------------------------------------------------------------------- Reshape


@dataclasses.dataclass(frozen=True, init=False)
class Reshape(Layer):
    """Reshape every frame to `shape` (one entry may be -1); time is untouched.

    `Reshape(4, 6)` or `Reshape((4, 6))`. `shape` excludes the time axis and, unlike
    the reference's `co.Reshape`, the batch axis (one stream per call).

    `channels_first=False` (default): a row-major reshape of the channels-last frame,
    `frame.reshape(shape)`; e.g. `Reshape(-1)` flattens `(H, W, C)` to `(H*W*C,)` in
    H, W, C order.
    `channels_first=True`: torch's element order. The frame `(*S, C)` is read as
    torch's `(C, *S)`, reshaped to `shape` given in torch's channels-first order
    `(C', *S')`, and returned channels-last `(*S', C')`; this reproduces
    `co.Reshape(B, *shape)` on `(B, C, T, *S)` data after the layout change.
    """

    shape: tuple[int, ...]
    channels_first: bool

    def __init__(
        self,
        *dims: int | tuple[int, ...],
        channels_first: bool = False,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        if shape is not None:  # the field spelling (what `repr` / `replace` pass)
            check_config(not dims, self, "pass the shape positionally or as shape=, not both.")
            dims = (shape,)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        shape = as_int_tuple(self, "shape", dims)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "channels_first", channels_first)
        check_config(
            len(shape) > 0 and all(d > 0 or d == -1 for d in shape),
            self,
            f"shape must be positive ints with at most one -1, got {self.shape}.",
        )
        check_config(shape.count(-1) <= 1, self, f"at most one -1 in shape, got {self.shape}.")

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame)
        size = math.prod(frame.shape)
        known = math.prod(d for d in self.shape if d != -1)
        fits = size % known == 0 if -1 in self.shape else size == known
        if self.channels_first and len(frame.shape) == 0:
            fits = False
        if not fits:
            raise ValueError(
                f"{layer_name(self)}: cannot reshape a frame of shape {tuple(frame.shape)} "
                f"({size} elements) to {self.shape}."
            )

    def _reshape(self, x: Array, lead: int) -> Array:
        head = x.shape[:lead]
        if not self.channels_first:
            return x.reshape(*head, *self.shape)
        x = jnp.moveaxis(x, -1, lead).reshape(*head, *self.shape)
        return jnp.moveaxis(x, lead, -1)

    def forward(self, params: Params, clip: PyTree) -> PyTree:
        return self._reshape(clip, 1)

    def step(self, params: Params, state: State, frame: PyTree) -> tuple[State, StepOutput]:
        return state, (self._reshape(frame, 0), jnp.ones((), bool))
