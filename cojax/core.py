"""The continual layer contract.

Every cojax layer is an immutable, hashable object holding only static configuration.
Parameters and state are explicit pytrees. For ONE stream, channels-last:

    params = layer.init(key)
    y      = layer.forward(params, clip)          # clip (T, *spatial, C)
    state  = layer.init_state(params, frame)      # frame (*spatial, C) or ShapeDtypeStruct
    state, (y_t, valid) = layer.step(params, state, frame)
    ys, valid = layer.flush(params, state, frame) # outputs of the end padding

`step` is pure and a valid `lax.scan` body. `valid` is a bool scalar; where it is False
`y_t` holds zeros. Static temporal metadata (`delay`, `receptive_field`, `stride`,
`padding`) is plain Python.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
Params = Any
State = Any
StepOutput = tuple[PyTree, Array]


class NoState(NamedTuple):
    """State of a layer that keeps nothing between frames."""


class Counter(NamedTuple):
    """State of a layer that only counts frames (e.g. `Skip`)."""

    count: Array


def layer_name(layer: Any) -> str:
    return type(layer).__name__


def as_spec(x: PyTree) -> PyTree:
    """Array / ShapeDtypeStruct pytree -> ShapeDtypeStruct pytree."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), x)


def zeros_from_spec(spec: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), spec)


def select_tree(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leaf-wise `jnp.where(pred, on_true, on_false)` for a scalar bool `pred`."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def zero_unless(valid: Array, y: PyTree) -> PyTree:
    """Zeros where not `valid` (the contract's output for steps that emit nothing)."""
    return jax.tree_util.tree_map(lambda a: jnp.where(valid, a, jnp.zeros_like(a)), y)


def advance_counter(count: Array, delay: int, stride: int) -> tuple[Array, Array]:
    """Validity of the current step and the next counter value.

    `count` is the number of frames seen before this one, wrapped into
    `[0, delay + stride]` so it never overflows on endless streams and is 0 only before
    the first frame. The step is valid on the `delay`-th frame and every `stride`
    frames after it.
    """
    valid = jnp.logical_or(count == delay, count == delay + stride)
    nxt = count + 1
    nxt = jnp.where(nxt > delay + stride, nxt - stride, nxt)
    return valid, nxt.astype(count.dtype)


def new_counter() -> Array:
    return jnp.zeros((), jnp.int32)


def stack_time(trees: list[PyTree]) -> PyTree:
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=0), *trees)


# --------------------------------------------------------------------------- errors


def check_config(cond: bool, layer: Any, message: str) -> None:
    """Raise a `ValueError` naming the layer when a static configuration is invalid."""
    if not cond:
        raise ValueError(f"{layer_name(layer)}: {message}")


def is_int_at_least(value: Any, minimum: int) -> bool:
    """A Python int (a bool is not one) >= `minimum`: a valid static size or count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_positive_ints(layer: Any, *names: str) -> None:
    """Each named field of `layer` must be a positive int."""
    for name in names:
        value = getattr(layer, name)
        check_config(
            is_int_at_least(value, 1), layer, f"{name} must be a positive int, got {value!r}."
        )


def check_array(
    layer: Any,
    x: Any,
    *,
    ndim: int | None = None,
    channels: int | None = None,
    what: str = "frame",
    layout: str = "",
) -> None:
    """Check one stream's frame or clip, raising a clear error for the user.

    `ndim` counts the dimensions of `x` as given; `channels` is the size of the last
    dimension; `layout` names the expected axes, e.g. "(H, W, C)".
    """
    name = layer_name(layer)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array as {what}, got {type(x).__name__}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name}: expected a floating-point {what}, got dtype {x.dtype}. "
            f"Cast the input, e.g. x.astype(jnp.float32)."
        )
    shape = tuple(x.shape)
    if ndim is not None and len(shape) != ndim:
        hint = ""
        if len(shape) == ndim + 1:
            hint = (
                " It has one dimension too many: a layer sees ONE stream; "
                "use jax.vmap for a batch of streams."
            )
        raise ValueError(
            f"{name}: expected a {what} with {ndim} dimensions {layout}, got shape {shape}.{hint}"
        )
    if channels is not None and (len(shape) == 0 or shape[-1] != channels):
        got = shape[-1] if shape else None
        raise ValueError(
            f"{name}: expected {channels} channels in the last dimension of the {what} "
            f"{layout}, got {got} (shape {shape}). cojax is channels-last."
        )


# --------------------------------------------------------------------------- layers


class Layer:
    """Base of every continual layer (mixed into frozen dataclasses).

    Subclasses override `forward`, `step`, and where they keep state `init_state` and
    `flush`. The defaults describe a stateless per-frame layer with no temporal extent.
    """

    # --- static temporal metadata (plain Python ints) ---------------------------
    @property
    def receptive_field(self) -> int:
        return 1

    @property
    def stride(self) -> int:
        return 1

    @property
    def padding(self) -> int:
        return 0

    @property
    def delay(self) -> int:
        return self.receptive_field - 1 - self.padding

    # --- parameters and state ---------------------------------------------------
    def init(self, key: Array) -> Params:
        """Random parameters (a plain pytree). Stateless layers return `{}`."""
        del key
        return {}

    def init_state(self, params: Params, frame: PyTree) -> State:
        """Fresh state for one stream; `frame` may be a `jax.ShapeDtypeStruct`."""
        del params
        self.check_frame(frame)
        return NoState()

    def check_frame(self, frame: PyTree) -> None:
        """Raise a clear error when `frame` does not fit this layer."""
        if not isinstance(frame, (tuple, list, dict)):
            check_array(self, frame)

    def check_clip(self, clip: PyTree) -> None:
        if not isinstance(clip, (tuple, list, dict)):
            check_array(self, clip, what="clip")
            if clip.ndim < 1:
                raise ValueError(f"{layer_name(self)}: a clip needs a time axis, got a scalar.")
            self.check_frame(jax.ShapeDtypeStruct(clip.shape[1:], clip.dtype))

    # --- computation ----------------------------------------------------------
    def forward(self, params: Params, clip: PyTree) -> PyTree:
        """The ordinary (non-continual) layer on a whole clip `(T, *spatial, C)`."""
        raise NotImplementedError

    def step(self, params: Params, state: State, frame: PyTree) -> tuple[State, StepOutput]:
        """One frame in, `(state, (y, valid))` out. Pure; a `lax.scan` body."""
        raise NotImplementedError

    def flush(self, params: Params, state: State, frame: PyTree) -> tuple[PyTree, Array]:
        """Outputs that the end padding releases: `(ys, valid)` with a time axis.

        `frame` (array or ShapeDtypeStruct) describes the input frames. The state after
        the padding is discarded, so a stream can continue after `pad_end=True`.
        The default (no end padding) returns zero-length outputs.
        """
        return empty_outputs(self, params, state, frame)

    # --- conveniences ---------------------------------------------------------
    def output_spec(self, params: Params, frame: PyTree) -> PyTree:
        """ShapeDtypeStruct of one step output for the given input frame."""
        state = jax.eval_shape(self.init_state, params, as_spec(frame))
        _, (y, _) = jax.eval_shape(self.step, params, state, as_spec(frame))
        return y

    def state_spec(self, params: Params, frame: PyTree) -> PyTree:
        """ShapeDtypeStruct pytree of one stream's state (its memory footprint)."""
        return jax.eval_shape(self.init_state, params, as_spec(frame))


def empty_outputs(layer: Layer, params: Params, state: State, frame: PyTree):
    """Zero-length `(ys, valid)` with the layer's output shapes."""
    _, (y, _) = jax.eval_shape(layer.step, params, state, as_spec(frame))
    ys = jax.tree_util.tree_map(lambda s: jnp.zeros((0, *s.shape), s.dtype), y)
    return ys, jnp.zeros((0,), bool)


def scan_fill(layer: Layer, params: Params, state: State, fill: PyTree, n: int):
    """Feed `n` copies of the fill frame `fill` through `layer.step`; returns (ys, valid)."""
    if n == 0:
        return empty_outputs(layer, params, state, fill)

    def body(s, _):
        s, (y, v) = layer.step(params, s, fill)
        return s, (y, v)

    _, (ys, valid) = jax.lax.scan(body, state, None, length=n)
    return ys, valid


class FrameLayer(Layer):
    """A layer that acts on each frame independently (delay 0, no state).

    Subclasses implement `apply(params, x)` for `x` of shape `(..., *frame_shape)`;
    it must act on the trailing frame dimensions only, so it serves clips and frames.
    """

    def apply(self, params: Params, x: Array) -> Array:
        raise NotImplementedError

    def forward(self, params: Params, clip: PyTree) -> PyTree:
        self.check_clip(clip)
        return self.apply(params, clip)

    def step(self, params: Params, state: State, frame: PyTree):
        self.check_frame(frame)
        return state, (self.apply(params, frame), jnp.ones((), bool))


# --------------------------------------------------------------------------- driving


def masked_step(layer: Layer, params: Params, state: State, x: PyTree, valid_in: Array):
    """`layer.step` on an input that may be invalid.

    An invalid input leaves the state unchanged and yields an invalid (zero) output;
    this is how containers keep a strided child's gaps from reaching later children.
    """
    new_state, (y, valid) = layer.step(params, state, x)
    state = select_tree(valid_in, new_state, state)
    valid = jnp.logical_and(valid, valid_in)
    return state, (zero_unless(valid, y), valid)


def forward_steps(
    layer: Layer, params: Params, state: State, clip: PyTree, pad_end: bool = False
) -> tuple[State, PyTree, Array]:
    """Stream a whole clip through `layer.step` with `lax.scan`.

    Returns `(state, ys, valid)`: `ys` has one entry per input frame (zeros where
    nothing is emitted) and `valid` marks the real outputs. With `pad_end=True` the
    end padding's outputs are appended (so `ys[valid]` equals `layer.forward(clip)`),
    while the returned state is the one before the padding: the stream can continue.
    """

    def body(s, x):
        s, (y, v) = layer.step(params, s, x)
        return s, (y, v)

    state, (ys, valid) = jax.lax.scan(body, state, clip)
    if pad_end:
        frame = jax.tree_util.tree_map(lambda c: jax.ShapeDtypeStruct(c.shape[1:], c.dtype), clip)
        tail_ys, tail_valid = layer.flush(params, state, frame)
        ys = stack_time([ys, tail_ys])
        valid = jnp.concatenate([valid, tail_valid])
    return state, ys, valid


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (raw `PRNGKey` or typed key).

    For random values drawn on the host: on XLA:CPU, compiling a `jax.random` draw for
    each new set of shapes can cost more than the work that uses them.
    """
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(key) if typed else key
    return np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())


def valid_outputs(ys: PyTree, valid: Array) -> PyTree:
    """Select the emitted outputs (host-side helper; not for use under jit)."""
    mask = np.asarray(valid)
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[mask], ys)


def replace(layer: Layer, **changes: Any) -> Layer:
    """A copy of a (dataclass) layer with some configuration changed."""
    return dataclasses.replace(layer, **changes)
