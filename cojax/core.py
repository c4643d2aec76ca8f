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
import functools
from collections.abc import Callable
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


def accumulation_dtype(dtype: Any) -> Any:
    """The `preferred_element_type` of a contraction on inputs of `dtype`: float32 for
    16-bit floats (a bfloat16 conv or matmul sums in float32, then casts back), None
    (the input's own) otherwise."""
    return jnp.float32 if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else None


def zero_unless(valid: Array, y: PyTree) -> PyTree:
    """Zeros where not `valid` (the contract's output for steps that emit nothing)."""
    return jax.tree_util.tree_map(lambda a: jnp.where(valid, a, jnp.zeros_like(a)), y)


@jax.tree_util.register_pytree_with_keys_class
class Schedule:
    """A frame counter (see `advance_counter`) tagged with its static `delay` and
    `stride`: they are part of the tree structure, so `check_state` tells a state of
    a layer with another schedule (a stride-1 state in a stride-3 conv) at trace time."""

    __slots__ = ("count", "delay", "stride")

    def __init__(self, count: Array, delay: int, stride: int):
        self.count, self.delay, self.stride = count, delay, stride

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("count"), self.count),), (self.delay, self.stride)

    def tree_flatten(self):
        return (self.count,), (self.delay, self.stride)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def __repr__(self) -> str:
        return f"Schedule(count={self.count}, delay={self.delay}, stride={self.stride})"


def advance_counter(count: Array | Schedule, delay: int, stride: int):
    """Validity of the current step and the next counter value.

    `count` is the number of frames seen before this one, wrapped into
    `[0, delay + stride]` so it never overflows on endless streams and is 0 only before
    the first frame. The step is valid on the `delay`-th frame and every `stride`
    frames after it. A `Schedule` comes back as a `Schedule`.
    """
    if isinstance(count, Schedule):
        if (count.delay, count.stride) != (delay, stride):
            raise ValueError(
                f"a counter of delay {count.delay}, stride {count.stride} was given to a "
                f"layer of delay {delay}, stride {stride}: the state is another layer's."
            )
        valid, nxt = advance_counter(count.count, delay, stride)
        return valid, Schedule(nxt, delay, stride)
    valid = jnp.logical_or(count == delay, count == delay + stride)
    nxt = count + 1
    nxt = jnp.where(nxt > delay + stride, nxt - stride, nxt)
    return valid, nxt.astype(count.dtype)


def new_counter(delay: int | None = None, stride: int | None = None) -> Array | Schedule:
    """A zero counter; a `Schedule` when the layer's `delay` and `stride` are given."""
    count = jnp.zeros((), jnp.int32)
    return count if delay is None else Schedule(count, delay, 1 if stride is None else stride)


def frames_seen(count: Array | Schedule) -> Array:
    """The counter value of a plain or `Schedule` counter (0 before the first frame)."""
    return count.count if isinstance(count, Schedule) else count


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


# --------------------------------------------------------------------------- config values
# One set of validators for every layer's configuration. `validate_fields` applies them
# to a dataclass layer's fields by their annotation, so every layer gets them.


def as_int(layer: Any, name: str, value: Any, minimum: int | None = None) -> int:
    """A static int (a Python or NumPy integer; never a bool or a float) -> `int`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{layer_name(layer)}: {name} must be an int, got {value!r} ({type(value).__name__})."
        )
    value = int(value)
    if minimum is not None:
        check_config(value >= minimum, layer, f"{name} must be >= {minimum}, got {value}.")
    return value


def as_int_tuple(
    layer: Any, name: str, value: Any, n: int | None = None, minimum: int | None = None
) -> tuple[int, ...]:
    """An int (repeated `n` times) or a sequence of ints (of length `n` if given)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if n is None:
            raise TypeError(f"{layer_name(layer)}: {name} must be a tuple of ints, got {value!r}.")
        value = (value,) * n
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        want = "an int or a tuple of ints" if n is not None else "a tuple of ints"
        raise TypeError(f"{layer_name(layer)}: {name} must be {want}, got {value!r}.")
    value = tuple(value)
    if n is not None and len(value) != n:
        raise ValueError(
            f"{layer_name(layer)}: {name} must be an int or a tuple of {n} ints, got {value!r}."
        )
    return tuple(as_int(layer, name, v, minimum) for v in value)


def as_float(layer: Any, name: str, value: Any) -> float:
    """A real number (int or float, Python or NumPy; never a bool) -> `float`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(
            f"{layer_name(layer)}: {name} must be a number, got {value!r} ({type(value).__name__})."
        )
    return float(value)


def as_bool(layer: Any, name: str, value: Any) -> bool:
    """A bool (Python or NumPy; never an int) -> `bool`."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{layer_name(layer)}: {name} must be a bool, got {value!r} ({type(value).__name__})."
        )
    return bool(value)


def as_str(layer: Any, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{layer_name(layer)}: {name} must be a string, got {value!r}.")
    return value


def field_alias(
    layer: Any, arg: str, value: Any, default: Any, field: str, field_value: Any
) -> Any:
    """Constructor argument `arg` or its field spelling `field` (what `repr` and
    `dataclasses.replace` pass), not both."""
    if field_value is None:
        return value
    if value != default:
        raise TypeError(f"{layer_name(layer)}: pass {arg} or {field}, not both.")
    return field_value


def _optional(check):
    return lambda layer, name, value: None if value is None else check(layer, name, value)


_FIELD_CHECKS = {
    "int": as_int,
    "float": as_float,
    "bool": as_bool,
    "str": as_str,
    "tuple[int, ...]": as_int_tuple,
    "int | None": _optional(as_int),
    "float | None": _optional(as_float),
    "tuple[int, ...] | None": _optional(as_int_tuple),
}


def validate_fields(layer: Any) -> None:
    """Check and normalise a dataclass layer's fields by their annotations.

    `int` fields take Python or NumPy ints (never bools or floats), `float` fields
    any real number, `bool` fields only bools, `tuple[int, ...]` sequences of ints.
    """
    for field in dataclasses.fields(layer):
        check = _FIELD_CHECKS.get(field.type if isinstance(field.type, str) else "")
        if check is not None:
            object.__setattr__(
                layer, field.name, check(layer, field.name, getattr(layer, field.name))
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


def check_state(layer: Any, params: Params, state: State, frame: PyTree) -> None:
    """Raise unless `state` is what `layer.init_state(params, frame)` would make.

    Compares tree structure, leaf shapes and dtypes with `jax.eval_shape`, so under
    `jit` it costs nothing at run time. Catches a state from another layer or
    configuration, or one made for frames of another shape or dtype.
    """
    expected = jax.eval_shape(layer.init_state, params, as_spec(frame))
    name = layer_name(layer)
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(state)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(expected)
    if not got_leaves and not want_leaves:
        return  # a stateless layer takes any empty state: (), {}, None or NoState()
    if got_def != want_def:
        raise ValueError(
            f"{name}: the state does not belong to this layer: expected a state like "
            f"{_describe(expected)}, got {_describe(state)}. Make it with "
            "layer.init_state(params, frame) for this layer and frame shape."
        )
    for (path, got), (_, want) in zip(got_leaves, want_leaves):
        shape, dtype = tuple(np.shape(got)), jnp.result_type(got)
        if (shape, dtype) != (tuple(want.shape), want.dtype):
            raise ValueError(
                f"{name}: state leaf {jax.tree_util.keystr(path) or '(root)'} is "
                f"{dtype}{list(shape)}, but for a frame {jnp.result_type(frame)}"
                f"{list(np.shape(frame))} this layer's init_state makes "
                f"{want.dtype}{list(want.shape)}: the state was made by another layer, "
                "configuration or frame shape/dtype."
            )


def check_array_leaves(layer: Any, tree: PyTree, what: str = "frame") -> None:
    """Raise a TypeError naming the layer unless every leaf of `tree` is an array."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(
                f"{layer_name(layer)}: expected arrays in the {what}, got {type(leaf).__name__}."
            )


def _describe(tree: PyTree) -> str:
    text = str(jax.tree_util.tree_map(lambda a: f"{jnp.result_type(a)}{list(np.shape(a))}", tree))
    return text if len(text) <= 300 else text[:300] + "..."


def _check_input_frame(layer: Any, frame: PyTree) -> None:
    if isinstance(frame, (tuple, list, dict)):
        check_array_leaves(layer, frame)
    else:
        check_array(layer, frame)
    layer.check_frame(frame)


def _frame_checked(method, position: int):
    """`step` / `init_state` that first checks the frame, the positional argument at
    `position` after `params` (`layer.check_frame`)."""
    if getattr(method, "checks_frame", False):
        return method

    @functools.wraps(method)
    def checked(self, params, *args, **kwargs):
        _check_input_frame(self, args[position])
        return method(self, params, *args, **kwargs)

    checked.checks_frame = True
    return checked


def _state_checked(step):
    """The public `step`: checks the frame, then the state (`check_state`)."""

    @functools.wraps(step)
    def checked(self, params, state, frame):
        _check_input_frame(self, frame)
        check_state(self, params, state, frame)
        return step(self, params, state, frame)

    checked.checks_state = True
    return checked


def _clip_checked(forward):
    """`forward` that first checks the clip (`layer.check_clip`)."""
    if getattr(forward, "checks_clip", False):
        return forward

    @functools.wraps(forward)
    def checked(self, params, clip, *args, **kwargs):
        self.check_clip(clip)
        return forward(self, params, clip, *args, **kwargs)

    checked.checks_clip = True
    return checked


def _validating_post_init(post_init):
    @functools.wraps(post_init)
    def wrapped(self):
        validate_fields(self)
        post_init(self)

    wrapped.validates = True
    return wrapped


def _validating_init(init):
    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if dataclasses.is_dataclass(self):
            validate_fields(self)

    wrapped.validates = True
    return wrapped


class Layer:
    """Base of every continual layer (mixed into frozen dataclasses).

    Subclasses override `forward`, `step`, and where they keep state `init_state` and
    `flush`. The defaults describe a stateless per-frame layer with no temporal extent.
    Every subclass's `step` first checks the state it is given (`check_state`).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Every configuration passes the shared validators (`validate_fields`) before
        # the layer's own checks: generated `__init__`s call `__post_init__`, which
        # validates first; hand-written `__init__`s validate once they have set fields.
        post_init = cls.__dict__.get("__post_init__")
        if post_init is not None and not getattr(post_init, "validates", False):
            cls.__post_init__ = _validating_post_init(post_init)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "validates", False):
            cls.__init__ = _validating_init(init)
        # Every layer's inputs are checked here, once, not by hand in each method:
        # `forward` checks the clip, `init_state` and `step` the frame, and `step` the
        # state it is given. Containers call their children's `step_unchecked` (frame
        # checked, state not): the outermost step checks the whole nested state once.
        if "forward" in cls.__dict__:
            cls.forward = _clip_checked(cls.__dict__["forward"])
        if "init_state" in cls.__dict__:
            cls.init_state = _frame_checked(cls.__dict__["init_state"], 0)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "checks_state", False):
            cls.step_unchecked = _frame_checked(step, 1)
            cls.step = _state_checked(step)

    def __post_init__(self) -> None:
        validate_fields(self)

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

    @property
    def alignment(self) -> int | None:
        """Which input frame an output stands for: the output emitted at step t stands
        for input frame `t - alignment`. Separate from `delay` (the warm-up before the
        first output): a single-output attention emits after `sequence_len - 1` frames
        but stands for its query's token. A layer that keeps the clip length
        (`receptive_field == 2 * padding + 1`) stands for the frame `delay` back, the
        centre of its window; one that shortens the clip declares it, or has None (then
        `Residual` needs an explicit `residual_shrink`)."""
        if self.receptive_field - 2 * self.padding == 1:
            return self.delay
        return None

    @property
    def finite_memory(self) -> bool:
        """False where an output depends on the whole stream so far (recurrent layers):
        then `receptive_field` is not the span of frames an output depends on."""
        return True

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

    def step_unchecked(self, params: Params, state: State, frame: PyTree):
        """`step` without `check_state` (containers use it on their children)."""
        return self.step(params, state, frame)

    def step_block(self, params: Params, state: State, frames: PyTree):
        """k frames in one call: frames `(k, *frame)` -> `(state, (ys (k, ...), valid (k,)))`,
        exactly k `step`s. Temporal convolutions and pools compute the block as one clip
        computation over their buffered window (large kernels for accelerators); other
        layers scan their step. Pure; jit-able for a fixed k."""
        leaves = jax.tree_util.tree_leaves(frames)
        if not leaves or any(getattr(a, "ndim", 0) < 1 for a in leaves):
            raise ValueError(f"{layer_name(self)}: step_block takes frames (k, *frame).")
        k = leaves[0].shape[0]
        frame = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), frames)
        self.check_frame(frame)
        check_state(self, params, state, frame)
        return self.step_block_masked(params, state, frames, jnp.ones((k,), bool))

    def step_block_masked(self, params: Params, state: State, frames: PyTree, valid_in: Array):
        """`step_block` where only the frames marked in `valid_in` `(k,)` are real: the
        others leave the state as it is and give invalid (zero) outputs, as
        `masked_step` (how containers pass a strided child's gaps on). The default
        scans `masked_step`; layers with a block kernel override it."""
        return scan_masked_steps(self, params, state, frames, valid_in)

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
        _, (y, _) = jax.eval_shape(self.step_unchecked, params, state, as_spec(frame))
        return y

    def state_spec(self, params: Params, frame: PyTree) -> PyTree:
        """ShapeDtypeStruct pytree of one stream's state (its memory footprint)."""
        return jax.eval_shape(self.init_state, params, as_spec(frame))

    # --- training (the public entry points are in `cojax.training`) ------------
    def output_length(self, n: int | Array) -> int | Array:
        """Frames `forward` returns for a clip of `n` frames (an int or an int array).

        torch's rule: `(n + 2 * padding - receptive_field) // stride + 1`, at least 0.
        """
        return nonnegative((n + 2 * self.padding - self.receptive_field) // self.stride + 1)

    @property
    def end_fill(self) -> str:
        """What stands for the frames past a ragged clip's end: its end padding.

        "zeros", "replicate" (the clip's last frame) or "-inf" (max pools).
        """
        return "zeros"

    def forward_train(
        self, params: Params, clips: PyTree, mask: Array, key: Array
    ) -> tuple[PyTree, Array, Params]:
        """Train-mode `forward` on a batch: `(ys, out_mask, new_params)`.

        `clips` `(B, T, *spatial, C)`; `mask` `(B, T)` marks each clip's real frames (a
        prefix). `ys` `(B, T_out, ...)` is zero where `out_mask` is False. The default
        is `forward` clip by clip (no batch statistics, no randomness); BatchNorm,
        dropout, RReLU and the containers override it.
        """
        del key
        return forward_per_clip(self, params, clips, mask)

    def trainable(self, params: Params) -> PyTree:
        """Bool pytree like `params`: True for the leaves an optimiser should update."""
        return jax.tree_util.tree_map(lambda _: True, params)


def empty_outputs(layer: Layer, params: Params, state: State, frame: PyTree):
    """Zero-length `(ys, valid)` with the layer's output shapes."""
    _, (y, _) = jax.eval_shape(layer.step_unchecked, params, state, as_spec(frame))
    ys = jax.tree_util.tree_map(lambda s: jnp.zeros((0, *s.shape), s.dtype), y)
    return ys, jnp.zeros((0,), bool)


def scan_fill(layer: Layer, params: Params, state: State, fill: PyTree, n: int):
    """Feed `n` copies of the fill frame `fill` through `layer.step`; returns (ys, valid)."""
    if n == 0:
        return empty_outputs(layer, params, state, fill)

    def body(s, _):
        s, (y, v) = layer.step_unchecked(params, s, fill)
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
        return self.apply(params, clip)

    def step(self, params: Params, state: State, frame: PyTree):
        return state, (self.apply(params, frame), jnp.ones((), bool))

    def step_block_masked(self, params: Params, state: State, frames: PyTree, valid_in: Array):
        # A per-frame layer's block is its clip forward (one batched computation).
        return state, (zero_invalid(self.forward(params, frames), valid_in), valid_in)


# --------------------------------------------------------------------------- driving


def masked_step(layer: Layer, params: Params, state: State, x: PyTree, valid_in: Array):
    """`layer.step` on an input that may be invalid.

    An invalid input leaves the state unchanged and yields an invalid (zero) output;
    this is how containers keep a strided child's gaps from reaching later children.
    """
    new_state, (y, valid) = layer.step_unchecked(params, state, x)
    state = select_tree(valid_in, new_state, state)
    valid = jnp.logical_and(valid, valid_in)
    return state, (zero_unless(valid, y), valid)


def scan_masked_steps(layer: Layer, params: Params, state: State, frames: PyTree, valid_in: Array):
    """`masked_step` over the leading axis of `frames`: `(state, (ys, valid))`."""

    def body(s, inputs):
        x, v = inputs
        s, (y, v) = masked_step(layer, params, s, x, v)
        return s, (y, v)

    return jax.lax.scan(body, state, (frames, valid_in))


def advance_counter_block(count: Array | Schedule, delay: int, stride: int, valid_in: Array):
    """`advance_counter` over a block: only the frames marked in `valid_in` `(k,)`
    count. Returns the validity of each of the k steps and the final counter."""

    def body(c, v):
        ok, nxt = advance_counter(c, delay, stride)
        return select_tree(v, nxt, c), jnp.logical_and(ok, v)

    count, valid = jax.lax.scan(body, count, valid_in)
    return valid, count


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


# --------------------------------------------------------------------------- batches


def nonnegative(n: int | Array) -> int | Array:
    """`max(n, 0)` for a Python int or an int array."""
    return max(n, 0) if isinstance(n, int) else jnp.maximum(n, 0)


def time_length(clips: PyTree) -> int:
    """The time axis (axis 1) of a batch of clips `(B, T, ...)`."""
    return jax.tree_util.tree_leaves(clips)[0].shape[1]


def _expand(mask: Array, a: Array) -> Array:
    return mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))


def zero_invalid(ys: PyTree, mask: Array) -> PyTree:
    """Zeros wherever `mask` `(B, T)` is False (never NaN: `where`, not a product)."""
    return jax.tree_util.tree_map(lambda a: jnp.where(_expand(mask, a), a, 0).astype(a.dtype), ys)


def fill_invalid(clips: PyTree, mask: Array, fill: str) -> PyTree:
    """Replace the frames past each clip's end by `fill` ("zeros", "replicate", "-inf")."""

    def one(a):
        m = _expand(mask, a)
        if fill == "replicate":
            last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
            ends = jnp.take_along_axis(a, last.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)
            return jnp.where(m, a, ends)
        value = -jnp.inf if fill == "-inf" else 0
        return jnp.where(m, a, jnp.asarray(value, a.dtype))

    return jax.tree_util.tree_map(one, clips)


def length_mask(lengths: Array, length: int) -> Array:
    """`(B,)` valid lengths -> `(B, length)` bool mask of the valid prefix."""
    return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


def output_mask(layer: Layer, mask: Array, ys: PyTree) -> Array:
    """The valid outputs of `layer` for input frames `mask` `(B, T)`, checked."""
    t_in, t_out = mask.shape[1], time_length(ys)
    expected = layer.output_length(t_in)
    if expected != t_out:
        raise NotImplementedError(
            f"{layer_name(layer)}: forward returned {t_out} frames for a clip of {t_in}, "
            f"but output_length says {expected}; override output_length to train it."
        )
    return length_mask(layer.output_length(jnp.sum(mask, axis=1)), t_out)


def forward_per_clip(
    layer: Layer,
    params: Params,
    clips: PyTree,
    mask: Array,
    key: Array | None = None,
    forward: Callable[[Params, PyTree, Array], PyTree] | None = None,
):
    """`forward` clip by clip with the ragged ends padded: `(ys, out_mask, params)`.

    With `forward(params, clip, key)` (a random train-mode forward, e.g. attention
    dropout) each clip gets its own key split from `key`.
    """
    clips = fill_invalid(clips, mask, layer.end_fill)
    if forward is None:
        ys = jax.vmap(lambda c: layer.forward(params, c))(clips)
    else:
        keys = jax.random.split(key, mask.shape[0])
        ys = jax.vmap(lambda c, k: forward(params, c, k))(clips, keys)
    out_mask = output_mask(layer, mask, ys)
    return zero_invalid(ys, out_mask), out_mask, params


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
