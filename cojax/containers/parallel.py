"""Parallel branches: `Broadcast`, `Parallel`, `ParallelDispatch`, `Reduce`,
`BroadcastReduce` and the `Residual` shorthand."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cojax.containers.sequential import Children, Container, Sequential, named_children
from cojax.core import FrameLayer, Layer, as_spec, check_config, layer_name, zero_invalid
from cojax.layers.delay import Delay, Skip


@dataclasses.dataclass(frozen=True)
class Broadcast(FrameLayer):
    """One frame in, a tuple of `num_streams` copies out (for a following `Parallel`).

    `num_streams=None` is filled in by `Sequential` from the next `Parallel`.
    """

    num_streams: int | None = None

    def apply(self, params, x):
        check_config(self.num_streams is not None, self, "num_streams is unknown.")
        return tuple(x for _ in range(self.num_streams))


def _align_delays(children: Children, auto_delay: bool, owner: str) -> Children:
    """Append `Delay(max − own)` to shorter branches; check that strides agree."""
    if not children:
        raise ValueError(f"{owner}: needs at least one branch.")
    strides = [layer.stride for _, layer in children]
    if len(set(strides)) != 1:
        raise ValueError(
            f"{owner}: all branches must have the same temporal stride, got "
            f"{dict((n, s) for (n, _), s in zip(children, strides))}. Put the strided "
            "layer after the parallel block, or give every branch the same stride."
        )
    if not auto_delay:
        return children
    aligned = align_by_alignment(children)
    if aligned is not None:
        return aligned
    top = max(layer.delay for _, layer in children)
    return tuple((name, _delayed(layer, top - layer.delay)) for name, layer in children)


def _delayed(layer: Layer, frames: int) -> Layer:
    """`layer` with `frames` more input frames of delay. A trailing `Delay` counts at
    the layer's output rate (`stride` input frames each), so a strided layer gets
    `Delay(frames // stride)` after it when that divides, else `Delay(frames)` before."""
    if frames == 0:
        return layer
    if frames % layer.stride == 0:
        return Sequential(layer, Delay(frames // layer.stride))
    return Sequential(Delay(frames), layer)


def _unpadded(layer: Layer, n: int = 10_000) -> bool:
    """Declares its alignment and `forward` returns `n - delay` frames (no padding)."""
    return layer.alignment is not None and layer.output_length(n) == n - layer.delay


def align_by_alignment(children: Children) -> Children | None:
    """Line branches up by the frame each output stands for (`alignment`), not by delay.

    Used when every branch is unpadded (`forward` returns `T - delay` frames) and one
    has a delay, e.g. `BroadcastReduce(Identity(), SingleOutputMultiheadAttention(...))`
    with the attention standing for its query token. Branch i (delay d, alignment a)
    gets `Skip(D - d - (A - a))` then `Delay(A - a, auto_shrink="lagging")` with
    A = max a and D = max (d + A - a): at step t >= D every branch emits the output
    for input frame t - A, and every clip output has `T - D` frames. None when the
    rule does not apply (padded or undeclared branches keep the delay rule).
    """
    layers = [layer for _, layer in children]
    if not all(_unpadded(layer) for layer in layers) or all(layer.delay == 0 for layer in layers):
        return None
    top_alignment = max(layer.alignment for layer in layers)
    top_delay = max(layer.delay + top_alignment - layer.alignment for layer in layers)
    aligned = []
    for name, layer in children:
        lag = top_alignment - layer.alignment
        skip = top_delay - layer.delay - lag
        parts = [layer]
        if skip:
            parts.append(Skip(skip))
        if lag:
            parts.append(Delay(lag, auto_shrink="lagging"))
        aligned.append((name, layer if len(parts) == 1 else Sequential(*parts)))
    return tuple(aligned)


def _compact(ys, valid):
    """Move valid outputs to the front (stable), so flushed branches line up."""
    order = jnp.argsort(jnp.logical_not(valid), stable=True)
    return jax.tree_util.tree_map(lambda a: a[order], ys), valid[order]


def pad_time(ys, valid, length: int):
    extra = length - valid.shape[0]
    ys = jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a, jnp.zeros((extra, *a.shape[1:]), a.dtype)]), ys
    )
    return ys, jnp.concatenate([valid, jnp.zeros((extra,), bool)])


class _Branches(Container):
    """Shared behaviour of containers that run `children` side by side."""

    children: Children

    @property
    def stride(self) -> int:
        return self.children[0][1].stride

    @property
    def delay(self) -> int:
        return max(layer.delay for _, layer in self.children)

    @property
    def alignment(self) -> int | None:
        """The branches' common alignment; None when they stand for different frames."""
        found = {layer.alignment for _, layer in self.children}
        return found.pop() if len(found) == 1 else None

    @property
    def receptive_field(self) -> int:
        return max(layer.receptive_field for _, layer in self.children)

    @property
    def padding(self) -> int:
        return max(layer.padding for _, layer in self.children)

    def _branch_inputs(self, x) -> tuple:
        raise NotImplementedError

    def _combine(self, outputs: tuple):
        raise NotImplementedError

    def _branch_specs(self, frame) -> tuple:
        return self._branch_inputs(as_spec(frame))

    def forward(self, params, clip):
        inputs = self._branch_inputs(clip)
        outs = tuple(
            layer.forward(params[name], x) for (name, layer), x in zip(self.children, inputs)
        )
        lengths = {
            name: jax.tree_util.tree_leaves(o)[0].shape[0]
            for (name, _), o in zip(self.children, outs)
        }
        if not isinstance(self, Parallel) and len(set(lengths.values())) > 1:
            raise ValueError(
                f"{layer_name(self)}: branch outputs have different clip lengths {lengths}; "
                "give the branches the same temporal padding, or use Residual's "
                "residual_shrink / a Delay with auto_shrink on the shorter path."
            )
        return self._combine(outs)

    def output_length(self, n):
        lengths = [layer.output_length(n) for _, layer in self.children]
        return functools.reduce(_minimum, lengths)

    def forward_train(self, params, clips, mask, key):
        inputs, keys = self._branch_inputs(clips), self.child_keys(key)
        outs, masks, new = [], [], {}
        for (name, layer), x in zip(self.children, inputs):
            y, m, new[name] = layer.forward_train(params[name], x, mask, keys[name])
            outs.append(y)
            masks.append(m)
        if len({m.shape[1] for m in masks}) > 1:
            raise NotImplementedError(
                f"{layer_name(self)}: branch outputs have different clip lengths "
                f"{[m.shape[1] for m in masks]}; train mode needs branches of equal length."
            )
        out_mask = functools.reduce(jnp.logical_and, masks)
        return zero_invalid(self._combine(tuple(outs)), out_mask), out_mask, new

    def init_state(self, params, frame):
        specs = self._branch_specs(frame)
        return {
            name: layer.init_state(params[name], spec)
            for (name, layer), spec in zip(self.children, specs)
        }

    def _block_inputs(self, frames) -> tuple:
        return self._branch_inputs(frames)

    def step_block_masked(self, params, state, frames, valid_in):
        # Every branch steps the block its own way; an output is valid where all are.
        new_state, outs, valid = {}, [], valid_in
        for (name, layer), x in zip(self.children, self._block_inputs(frames)):
            new_state[name], (y, v) = layer.step_block_masked(
                params[name], state[name], x, valid_in
            )
            outs.append(y)
            valid = jnp.logical_and(valid, v)
        return new_state, (zero_invalid(self._combine(tuple(outs)), valid), valid)

    def step(self, params, state, frame):
        inputs = self._branch_inputs(frame)
        new_state, outs, valid = {}, [], jnp.ones((), bool)
        for (name, layer), x in zip(self.children, inputs):
            new_state[name], (y, v) = layer.step_unchecked(params[name], state[name], x)
            outs.append(y)
            valid = jnp.logical_and(valid, v)
        y = jax.tree_util.tree_map(lambda a: jnp.where(valid, a, 0), self._combine(tuple(outs)))
        return new_state, (y, valid)

    def flush(self, params, state, frame):
        specs = self._branch_specs(frame)
        flushed = [
            _compact(*layer.flush(params[name], state[name], spec))
            for (name, layer), spec in zip(self.children, specs)
        ]
        length = max(v.shape[0] for _, v in flushed)
        flushed = [pad_time(ys, v, length) for ys, v in flushed]
        valid = functools.reduce(jnp.logical_and, [v for _, v in flushed])
        outs = tuple(ys for ys, _ in flushed)
        ys = jax.vmap(self._combine)(outs) if length else self._combine_empty(outs)
        ys = jax.tree_util.tree_map(
            lambda a: jnp.where(valid.reshape((-1,) + (1,) * (a.ndim - 1)), a, 0), ys
        )
        return ys, valid

    def _combine_empty(self, outs):
        spec = jax.eval_shape(jax.vmap(self._combine), _pad_one(outs))
        return jax.tree_util.tree_map(lambda s: jnp.zeros((0, *s.shape[1:]), s.dtype), spec)


def _minimum(a, b):
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.minimum(a, b)


def _pad_one(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), tree)


@dataclasses.dataclass(frozen=True, init=False)
class Parallel(_Branches):
    """Apply branch i to stream i of a tuple input; outputs a tuple.

    With `auto_delay` (default) the branches are lined up: by the input frame each
    output stands for when every branch is unpadded and declares it
    (`align_by_alignment`), otherwise shorter branches get a trailing `Delay` so all
    emit in step. `children=` (the field spelling that `repr` and
    `dataclasses.replace` use) takes the branches exactly as given. All branches must
    share one temporal stride.
    """

    children: Children

    def __init__(self, *layers: Any, auto_delay: bool = True, children: Children | None = None):
        auto_delay = auto_delay and children is None  # the field spelling is already aligned
        children = named_children(layers, "Parallel", children)
        object.__setattr__(self, "children", _align_delays(children, auto_delay, "Parallel"))

    def check_frame(self, frame):
        if not isinstance(frame, (tuple, list)) or len(frame) != len(self.children):
            got = len(frame) if isinstance(frame, (tuple, list)) else type(frame).__name__
            raise ValueError(
                f"Parallel: expected a tuple of {len(self.children)} streams (one per "
                f"branch; use Broadcast before it), got {got}."
            )

    def _branch_inputs(self, x):
        self.check_frame(x)
        return tuple(x)

    def _block_inputs(self, frames):
        return tuple(frames)  # checked as frames by step_block

    def _combine(self, outputs):
        return tuple(outputs)


def _reduce_sum(xs):
    return functools.reduce(jnp.add, xs)


def _reduce_mul(xs):
    return functools.reduce(jnp.multiply, xs)


def _reduce_max(xs):
    return functools.reduce(jnp.maximum, xs)


def _reduce_concat(xs):
    return jnp.concatenate(xs, axis=-1)


REDUCTIONS = {"sum": _reduce_sum, "concat": _reduce_concat, "mul": _reduce_mul, "max": _reduce_max}


def _reduction(reduce: str | Callable, owner: str) -> Callable:
    if callable(reduce):
        return reduce
    if reduce not in REDUCTIONS:
        raise ValueError(
            f"{owner}: reduce must be one of {sorted(REDUCTIONS)} or a callable, got {reduce!r}."
        )
    return REDUCTIONS[reduce]


@dataclasses.dataclass(frozen=True)
class Reduce(FrameLayer):
    """Reduce a tuple of streams to one: "sum", "concat" (channels), "mul", "max",
    or a callable `fn(tuple_of_arrays) -> array`."""

    reduce: str | Callable = "sum"

    def __post_init__(self):
        _reduction(self.reduce, "Reduce")

    def check_frame(self, frame):
        if not isinstance(frame, (tuple, list)) or len(frame) < 1:
            raise ValueError(f"Reduce: expected a tuple of streams, got {type(frame).__name__}.")

    def check_clip(self, clip):
        self.check_frame(clip)

    def apply(self, params, x):
        return _reduction(self.reduce, "Reduce")(tuple(x))


@dataclasses.dataclass(frozen=True)
class ParallelDispatch(FrameLayer):
    """Reorder, copy and group streams: `[1, 0]` swaps, `[0, 0, 1]` copies stream 0,
    `[[0, 1], 2]` groups streams 0 and 1 into a nested tuple."""

    dispatch_mapping: tuple

    def __post_init__(self):
        mapping = _freeze(self.dispatch_mapping, self)
        object.__setattr__(self, "dispatch_mapping", mapping)

    def check_frame(self, frame):
        if not isinstance(frame, (tuple, list)):
            raise ValueError(f"ParallelDispatch: expected a tuple of streams, got {frame!r}.")
        top = max(_indices(self.dispatch_mapping))
        if top >= len(frame):
            raise ValueError(
                f"ParallelDispatch: mapping uses stream {top} but the input has "
                f"{len(frame)} streams."
            )

    def check_clip(self, clip):
        self.check_frame(clip)

    def apply(self, params, x):
        return _dispatch(self.dispatch_mapping, tuple(x))


def _freeze(mapping, layer):
    if isinstance(mapping, int):
        return mapping
    if isinstance(mapping, Sequence) and not isinstance(mapping, str):
        return tuple(_freeze(m, layer) for m in mapping)
    raise ValueError(
        f"{layer_name(layer)}: dispatch_mapping must be ints or nested sequences of ints, "
        f"got {mapping!r}."
    )


def _indices(mapping):
    if isinstance(mapping, int):
        yield mapping
    else:
        for m in mapping:
            yield from _indices(m)


def _dispatch(mapping, xs):
    if isinstance(mapping, int):
        return xs[mapping]
    return tuple(_dispatch(m, xs) for m in mapping)


@dataclasses.dataclass(frozen=True, init=False)
class BroadcastReduce(_Branches):
    """Feed one input to every branch and reduce their outputs:
    `Sequential(Broadcast(), Parallel(*branches), Reduce(reduce))` in one layer.

    `auto_delay` and `children=` as in `Parallel`."""

    children: Children
    reduce: str | Callable

    def __init__(
        self,
        *layers: Any,
        reduce: str | Callable = "sum",
        auto_delay: bool = True,
        children: Children | None = None,
    ):
        auto_delay = auto_delay and children is None  # the field spelling is already aligned
        children = named_children(layers, "BroadcastReduce", children)
        if len(children) < 2:
            raise ValueError("BroadcastReduce: pass at least two branches.")
        _reduction(reduce, "BroadcastReduce")
        object.__setattr__(self, "children", _align_delays(children, auto_delay, "BroadcastReduce"))
        object.__setattr__(self, "reduce", reduce)

    def check_frame(self, frame):
        self.children[0][1].check_frame(frame)

    def _branch_inputs(self, x):
        return tuple(x for _ in self.children)

    def _combine(self, outputs):
        return _reduction(self.reduce, "BroadcastReduce")(tuple(outputs))


RESIDUAL_SHRINKS = (False, True, "centered", "lagging", "leading")


def _shortens(module: Layer, n: int = 10_000) -> bool:
    """Whether `forward` returns fewer frames than it is given (e.g. not a plain Delay)."""
    return module.output_length(n) != n


def _aligned_shortcut(delay: int, alignment: int, fill: str) -> Layer:
    """Input frame `t - alignment` at step `t >= delay`; on a clip `clip[delay - a : T - a]`."""
    if not 0 <= alignment <= delay:
        raise ValueError(f"Residual: alignment {alignment} outside [0, delay {delay}].")
    lag = Delay(alignment, fill, auto_shrink="lagging")
    if alignment == delay:
        return lag
    skip = Skip(delay - alignment)
    return skip if alignment == 0 else Sequential(skip, lag)


def Residual(  # noqa: N802  (a constructor, named like the layer it builds)
    module: Layer,
    temporal_fill: str | None = None,
    reduce: str | Callable = "sum",
    residual_shrink: bool | str = False,
) -> BroadcastReduce:
    """`module(x) + x` with the skip path delayed to line up with `module`.

    Plain: skip path `Delay(module.delay)`. When `module` shortens the clip (its
    receptive field is not `2·padding + 1`), each output adds the input frame the
    module's output stands for, `module.alignment` (e.g. a single-output attention's
    query token: the newest for `query_index=-1`, as continual-inference's Residual
    does); `residual_shrink` overrides it, or is needed when the module declares no
    alignment: "centered"/True (`Delay(delay // 2)`, delay must be even), "lagging"
    (the oldest frame of the window), "leading" (the newest: `Skip(delay)`).
    `module` must have temporal stride 1.
    """
    if not isinstance(module, Layer):
        raise TypeError(f"Residual: expected a cojax layer, got {type(module).__name__}.")
    if module.stride != 1:
        raise ValueError(
            f"Residual: the wrapped module has temporal stride {module.stride}; a residual "
            "needs stride 1. Build strided shortcuts with BroadcastReduce(shortcut, module)."
        )
    if residual_shrink not in RESIDUAL_SHRINKS:
        raise ValueError(
            f"Residual: residual_shrink must be one of {RESIDUAL_SHRINKS}, got {residual_shrink!r}."
        )
    fill = temporal_fill or getattr(module, "temporal_fill", "replicate")
    delay = module.delay
    if module.receptive_field - 2 * module.padding == 1:
        residual_shrink = False
    elif residual_shrink is False and module.alignment is not None and _shortens(module):
        shortcut = _aligned_shortcut(delay, module.alignment, fill)
        return BroadcastReduce(shortcut, module, reduce=reduce, auto_delay=False)
    if residual_shrink in (True, "centered"):
        if delay % 2:
            raise ValueError(
                f"Residual: a centered shrink needs an even delay, the module has {delay}."
            )
        delay //= 2
    if residual_shrink == "leading":
        shortcut = Skip(delay) if delay > 0 else Delay(0)
    else:
        shortcut = Delay(delay, fill, auto_shrink=residual_shrink)
    return BroadcastReduce(shortcut, module, reduce=reduce, auto_delay=False)
