"""`continualize`: a clip function turned into an exact continual layer, from its jaxpr.

    layer = co.continualize(fn, frame, params=params)

`fn(params, clip)` is any pure JAX function of one stream's clip `(T, *frame_shape)`
returning a clip `(T', ...)` (a Flax `apply`, an Equinox model wrapped to take params,
plain `jax.numpy` / `lax` code). Like `vmap` tracks a batch axis, `continualize` tracks
the time axis through `fn`'s jaxpr and gives every operation that mixes time a ring
buffer of its input frames:

- `conv_general_dilated` with time as a spatial axis, `reduce_window_{sum,max,min}`
  over time, padding and slicing of the time axis: a *window* op. It keeps the last
  `K` frames of its input (`K` = the dilated kernel extent) and runs the same primitive
  on them with the time stride and padding removed: one output frame per step.
- `scan` over time (recurrent cells): the carry is the state, one body call per frame.
- everything per-frame (elementwise maths, reductions / contractions / reshapes /
  transposes that leave time alone, convolutions with time as their batch axis): the
  same primitive on the frame, given a time axis of length 1.

Schedules. Every time-varying value `v` of `fn` gets a static schedule: its frame `j`
is computed at input step `start_v + every_v * j` (the step at which the last input
frame it depends on arrives), and its clip length is a chain of window formulas of
the input length, `L <- (L + pl + pr - K) // s + 1`. One step counter drives all of
them. Values combined by an elementwise op (a residual add, a concatenation of
branches) are aligned: the earlier one waits in a small ring until the later one
arrives, as cojax's containers do.

Padding at the start of the stream fills each window op's ring with its padding value
(zeros for convolutions, -inf for max pools); padding at the end is what `flush`
releases: past the end, every value's frames are known to be beyond its clip length,
and each window op takes its end padding in their place.

Two traces. `fn` is traced at two clip lengths; the time axis of a value is the axis
whose size differs. This tells a slice `x[2:]` (from the start) from `x[-3:]` (from
the end) and finds constants that depend on the clip length (`x / T`, `jnp.arange(T)`).

What cannot be continual — a reduction over the whole time axis, attention across
time, data-dependent time indexing, cumulative sums — raises `ContinualizeError`
naming the primitive and the line of `fn` it came from, and says what to use instead.
A refused value only raises when it reaches the output: dead code (a scan's final
carry nobody reads) is fine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax._src import source_info_util

from cojax.core import Array, Layer, Params, as_spec, nonnegative, zero_unless

__all__ = ["Continualized", "ContinualizeError", "ContinualizedState", "continualize"]


class ContinualizeError(ValueError):
    """`fn` does something a continual layer cannot do on an endless stream."""


# --------------------------------------------------------------------------- schedules


@dataclasses.dataclass(frozen=True)
class Timing:
    """When a time-varying value's frames exist (see the module docstring).

    `start`: the input step (0-based) at which frame 0 is computed; `every`: steps
    between frames; `chain`: `((offset, stride), ...)`, its clip length from the input
    length by `L <- (L + offset) // stride + 1`; `span`: input frames one frame depends
    on, counted back from the step that computes it (its receptive field).
    """

    start: int
    every: int
    chain: tuple[tuple[int, int], ...]
    span: int
    latest: bool = False  # one frame per clip: `fn` of the latest window (`_Latest`)

    def length(self, n: int | Array) -> int | Array:
        """Clip length of this value for an input clip of `n` frames."""
        for offset, stride in self.chain:
            longer = nonnegative((n + offset) // stride + 1)
            n = (0 if n == 0 else longer) if isinstance(n, int) else jnp.where(n == 0, 0, longer)
        if self.latest:
            return min(n, 1) if isinstance(n, int) else jnp.minimum(n, 1)
        return n

    def end(self, n: int | Array) -> int | Array:
        """The first step at which this value has no frame of an `n`-frame clip."""
        return self.start + self.every * self.length(n)

    def then(self, window: int, left: int, right: int, stride: int) -> Timing:
        """The schedule of a window op (extent `window`, time padding `left`/`right`,
        time stride `stride`) on this value: its frame j is computed when the last
        frame of padded window j arrives."""
        return Timing(
            start=self.start + self.every * (window - 1 - left),
            every=self.every * stride,
            chain=(*self.chain, (left + right - window, stride)),
            span=self.span + (window - 1) * self.every,
        )


INPUT_TIMING = Timing(start=0, every=1, chain=(), span=1)


# --------------------------------------------------------------------------- values


@dataclasses.dataclass(frozen=True)
class _Static:
    """A value that does not depend on the clip. `shapes`: its shape in both traces
    (they differ where it is shaped by the clip length, e.g. a broadcast to `(T, C)`);
    `constant_axes`: axes along which it is known to be constant (broadcasts)."""

    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    dtype: Any
    constant_axes: frozenset
    known: Any = None  # its value, where the analysis can tell (literals)

    @property
    def time_axis(self) -> int | None:
        return _changed_axis(*self.shapes)


@dataclasses.dataclass(frozen=True)
class _Time:
    """A value computed from the clip: `axis` is its time axis in the clip function."""

    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    dtype: Any
    axis: int
    timing: Timing

    @property
    def frame_shape(self) -> tuple[int, ...]:
        shape = self.shapes[0]
        return shape[: self.axis] + shape[self.axis + 1 :]


@dataclasses.dataclass(frozen=True)
class _Latest:
    """A value of the latest frames only: a trailing window of the clip (`x[-W:]`) and
    what is computed from it. Its shape does not change with the clip length; a step
    recomputes it from a ring of the last frames. `timing`: when it first exists."""

    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    dtype: Any
    timing: Timing


@dataclasses.dataclass(frozen=True)
class _Refused:
    """A value `continualize` cannot stream; `message` says why (raised at the output)."""

    message: str


def _changed_axis(shape1: tuple, shape2: tuple) -> int | None:
    changed = [i for i, (a, b) in enumerate(zip(shape1, shape2)) if a != b]
    return changed[0] if len(changed) == 1 and len(shape1) == len(shape2) else None


def _shapes(v1: Any, v2: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(v1.aval.shape), tuple(v2.aval.shape)


def _where(eqn: Any) -> str:
    return source_info_util.summarize(eqn.source_info)


def _defined_at(fn: Callable) -> str:
    """Where `fn` was defined (`file:line (name)`), for messages about its outputs."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:
        return getattr(fn, "__name__", type(fn).__name__)
    return f"{code.co_filename}:{code.co_firstlineno} ({code.co_name})"


# --------------------------------------------------------------------------- the program


class _Runtime:
    """What one step (or the init / a flush tick) of the program sees."""

    def __init__(self, env: dict, tick: Array | None, state: dict, end: Array | None = None):
        self.env = env  # value id -> array (time-varying values: this step's frame)
        self.tick = tick  # input frames seen before this one (None: init_state)
        self.state = state  # op key -> its state (updated in place as ops run)
        self.end = end  # flush: frames of the stream (ticks >= end are past it)

    def computes(self, timing: Timing) -> Array:
        """Whether a value of `timing` has a frame at this step."""
        ok = self.tick >= timing.start
        if timing.every > 1:
            ok = jnp.logical_and(ok, (self.tick - timing.start) % timing.every == 0)
        return ok

    def is_end_padding(self, timing: Timing, frames: int) -> Array:
        """In a flush: whether this step's frame of a value of `timing` is one of the
        first `frames` frames past its clip's end."""
        end = timing.end(self.end)
        return jnp.logical_and(self.tick >= end, self.tick < end + timing.every * frames)


class _StaticOp(NamedTuple):
    """An equation of values that do not depend on the clip: evaluated as it is."""

    eqn: Any
    ins: tuple
    outs: tuple

    def run(self, rt: _Runtime) -> None:
        args = [rt.env[i] for i in self.ins]
        params = self.eqn.primitive.get_bind_params(self.eqn.params)
        if isinstance(params, tuple):  # jax < 0.5: (subfuns, params)
            subfuns, params = params
            args = [*subfuns, *args]
        with self.eqn.ctx.manager:
            out = self.eqn.primitive.bind(*args, **params)
        out = out if self.eqn.primitive.multiple_results else [out]
        rt.env.update(zip(self.outs, out))


class _LatestOp(NamedTuple):
    """An equation of latest-frames values (`_Latest`): evaluated as it is, each step
    (not when the state is made: the values do not exist yet)."""

    eqn: Any
    ins: tuple
    outs: tuple

    def run(self, rt: _Runtime) -> None:
        _StaticOp.run(self, rt)


class _FrameOp(NamedTuple):
    """A per-frame equation: the primitive on this step's frames, each given back its
    time axis with length 1 (`in_axes`, None for values without one); the results'
    time axes (`out_axes`) are removed again."""

    primitive: Any
    params: dict
    ins: tuple
    in_axes: tuple  # per input: ("frame", axis) | ("slice", axis) | None
    outs: tuple
    out_axes: tuple

    def run(self, rt: _Runtime) -> None:
        args = []
        for i, how in zip(self.ins, self.in_axes):
            x = rt.env[i]
            if how is not None:
                kind, axis = how
                x = jnp.expand_dims(x, axis) if kind == "frame" else _take_first(x, axis)
            args.append(x)
        out = self.primitive.bind(*args, **self.params)
        out = out if self.primitive.multiple_results else [out]
        for i, y, axis in zip(self.outs, out, self.out_axes):
            rt.env[i] = jnp.squeeze(y, axis)


def _take_first(x: Array, axis: int) -> Array:
    return jax.lax.slice_in_dim(x, 0, 1, axis=axis)


class _WindowOp(NamedTuple):
    """A ring of the last `size` frames of value `src` (oldest first) and a kernel that
    turns the ring into this step's frame of `dst`. `fill`: the start padding (a value
    id or a number); `end_padding`: frames of padding the end of the stream adds."""

    key: str
    src: int
    dst: int
    size: int
    src_timing: Timing
    frame: jax.ShapeDtypeStruct
    fill: Any
    end_padding: int
    kernel: Callable[[dict, Array], Array]
    # Push every step, also before `src`'s first frame: exact where `src` has a frame
    # every step and nothing is written into the ring at the start (no start padding),
    # as the garbage is shifted out before the first output reads the ring.
    always_push: bool = False

    def fill_value(self, env: dict) -> Array:
        value = env[self.fill] if isinstance(self.fill, int) else self.fill
        return jnp.asarray(value, self.frame.dtype)

    def init(self, rt: _Runtime) -> None:
        shape = (self.size, *self.frame.shape)
        rt.state[self.key] = jnp.broadcast_to(self.fill_value(rt.env), shape)

    def run(self, rt: _Runtime) -> None:
        x = rt.env[self.src]
        if rt.end is not None and self.end_padding:
            pad = rt.is_end_padding(self.src_timing, self.end_padding)
            x = jnp.where(pad, self.fill_value(rt.env), x)
        ring = rt.state[self.key]
        pushed = jnp.concatenate([ring[1:], x[None].astype(ring.dtype)], axis=0)
        if not self.always_push:
            pushed = jnp.where(rt.computes(self.src_timing), pushed, ring)
        ring = pushed
        rt.state[self.key] = ring
        rt.env[self.dst] = self.kernel(rt.env, ring)


def _oldest(env: dict, ring: Array) -> Array:
    del env
    return ring[0]


class _ScanOp(NamedTuple):
    """`lax.scan` over time: the carry is the state; one body call per input frame."""

    key: str
    body: Any  # ClosedJaxpr
    consts: tuple
    carry: tuple
    xs: tuple
    ys: tuple
    timing: Timing

    def init(self, rt: _Runtime) -> None:
        rt.state[self.key] = tuple(rt.env[i] for i in self.carry)

    def run(self, rt: _Runtime) -> None:
        carry = rt.state[self.key]
        args = [rt.env[i] for i in self.consts] + list(carry) + [rt.env[i] for i in self.xs]
        out = jcore.jaxpr_as_fun(self.body)(*args)
        new_carry, ys = out[: len(carry)], out[len(carry) :]
        on = rt.computes(self.timing)
        rt.state[self.key] = tuple(jnp.where(on, n, c) for n, c in zip(new_carry, carry))
        rt.env.update(zip(self.ys, ys))


# --------------------------------------------------------------------------- primitives

# Per-frame primitives that act element by element (operands broadcast, no axes).
_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp clz complex conj
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2
    expm1 floor ge gt igamma igammac imag integer_pow is_finite le lgamma log log1p
    logistic lt max min mul ne neg nextafter not or polygamma population_count pow
    real reduce_precision rem round rsqrt select_n shift_left shift_right_arithmetic
    shift_right_logical sign sin sinh sqrt square stop_gradient sub tan tanh xor
    zeta""".split()
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor "
    "argmax argmin".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_WINDOW_REDUCTIONS = {"reduce_window_sum": 0.0, "reduce_window_max": -np.inf}
_WINDOW_REDUCTIONS["reduce_window_min"] = np.inf
_CALL_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
# Calls whose body is inlined (a scan or a while also has a jaxpr, and rules of its own).
_CALLS = frozenset(
    "jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr "
    "remat remat2 checkpoint".split()
)
_INDEXING = frozenset(
    "gather scatter scatter-add scatter_add dynamic_slice dynamic_update_slice".split()
)

_HINT_WINDOW = (
    "A continual layer sees an endless stream: use a windowed op over time instead "
    "(lax.reduce_window / flax.linen.avg_pool with a fixed window, or a mean over a "
    "fixed trailing window)."
)
_HINT_ATTENTION = (
    "Attention across time has no fixed window of frames to buffer: use a cojax "
    "attention layer (co.SingleOutputMultiheadAttention, co.co_transformer) for it."
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (np.ndarray, np.generic, float)) or isinstance(b, (np.ndarray, np.generic)):
        try:
            return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
        except TypeError:
            return np.array_equal(np.asarray(a), np.asarray(b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable params (callables, jaxprs)
        return a is b


class _Builder:
    """Walks the jaxprs of `fn` at two clip lengths in lockstep and writes the program.

    `values[id]` is a `_Static`, `_Time` or `_Refused`; `constants[id]` holds literals
    and closed-over arrays; `ops` is the program in order."""

    def __init__(self):
        self.values: dict[int, Any] = {}
        self.constants: dict[int, Any] = {}
        self.ops: list = []
        self.lazy: dict[int, Callable[[], None]] = {}  # ops made only if used
        self.time_pads: dict[int, tuple] = {}  # padded value id -> (src, lo, hi, fill)
        self.calls: list[str] = []  # where the calls being inlined were made

    def where(self, eqn: Any) -> str:
        """`fn`'s source line of an equation (that of its enclosing call inside jax's
        own functions, which have none of the user's)."""
        here = _where(eqn)
        if (not here or "site-packages" in here) and self.calls:
            return self.calls[-1]
        return here

    # --- ids --------------------------------------------------------------------
    def new(self, value: Any) -> int:
        i = len(self.values)
        self.values[i] = value
        return i

    def key(self, name: str) -> str:
        return f"{len(self.ops):03d}_{name}"

    def use(self, i: int) -> int:
        """Make the op behind value `i` if it was left to be made on first use."""
        make = self.lazy.pop(i, None)
        if make is not None:
            make()
        return i

    def ref(self, local: dict, v1: Any, v2: Any, eqn: Any = None) -> int:
        if isinstance(v1, jcore.Literal):
            known = None if not _same(v1.val, v2.val) else v1.val
            shape = tuple(np.shape(v1.val))
            dtype = v1.aval.dtype
            if known is None:
                where = "" if eqn is None else f"{eqn.primitive.name} at {self.where(eqn)}: "
                message = (
                    f"{where}a constant of the clip function differs between clip "
                    f"lengths ({v1.val} vs {v2.val}): it depends on the clip length T "
                    f"(e.g. x / T or a mean over time). {_HINT_WINDOW}"
                )
                return self.new(_Refused(message))
            i = self.new(_Static((shape, shape), dtype, frozenset(range(len(shape))), known))
            self.constants[i] = v1.val
            return i
        return local[v1]

    # --- jaxprs ------------------------------------------------------------------
    def run_jaxpr(self, jaxpr1: Any, jaxpr2: Any, consts: list, args: list) -> list:
        if len(jaxpr1.eqns) != len(jaxpr2.eqns):
            raise ContinualizeError(
                "the clip function's program changes with the clip length (a Python "
                "branch on the number of frames?): continualize needs one program for "
                "every length."
            )
        local = dict(zip(jaxpr1.constvars, consts))
        local.update(zip(jaxpr1.invars, args))
        for e1, e2 in zip(jaxpr1.eqns, jaxpr2.eqns):
            if e1.primitive is not e2.primitive:
                raise ContinualizeError(
                    f"the clip function's program changes with the clip length "
                    f"({e1.primitive} vs {e2.primitive} at {self.where(e1)})."
                )
            ins = [self.ref(local, a, b, e1) for a, b in zip(e1.invars, e2.invars)]
            outs = self.equation(e1, e2, ins)
            local.update(zip(e1.outvars, outs))
        return [self.ref(local, a, b) for a, b in zip(jaxpr1.outvars, jaxpr2.outvars)]

    def closed(self, closed1: Any, closed2: Any, args: list) -> list:
        jaxpr1 = getattr(closed1, "jaxpr", closed1)
        jaxpr2 = getattr(closed2, "jaxpr", closed2)
        consts = []
        for c in getattr(closed1, "consts", ()):
            shape = tuple(np.shape(c))
            i = self.new(_Static((shape, shape), jnp.result_type(c), frozenset()))
            self.constants[i] = c
            consts.append(i)
        return self.run_jaxpr(jaxpr1, jaxpr2, consts, args)

    # --- one equation ------------------------------------------------------------
    def equation(self, e1: Any, e2: Any, ins: list) -> list:
        vals = [self.values[i] for i in ins]
        refused = [v for v in vals if isinstance(v, _Refused)]
        if refused:
            return [self.new(refused[0]) for _ in e1.outvars]
        name = e1.primitive.name
        call = next((p for p in _CALL_JAXPR_PARAMS if p in e1.params), None)
        call = call if name in _CALLS else None
        timed = any(isinstance(v, _Time) for v in vals)
        latest = [v for v in vals if isinstance(v, _Latest)]
        if timed and latest:
            return self.refuse(
                e1,
                "it combines the frames of the clip with a value of its latest frames "
                "(a trailing window x[-W:]): earlier frames would see later ones.",
            )
        if latest:
            return self.latest(e1, e2, ins, latest)
        if call is not None and timed:
            self.calls.append(self.where(e1))
            try:
                return self.closed(e1.params[call], e2.params[call], ins)
            finally:
                self.calls.pop()
        if not timed:
            return self.static(e1, e2, ins, vals)
        rule = _RULES.get(name)
        if rule is None and name in _ELEMENTWISE:
            rule = _Builder.per_frame
        if rule is None:
            return self.refuse(e1, self.unsupported(e1, vals))
        return rule(self, e1, e2, ins, vals)

    def unsupported(self, e1: Any, vals: list) -> str:
        name = e1.primitive.name
        if name in _INDEXING:
            return (
                f"{name} indexes a time-varying value by data: the frames a continual "
                "layer would need are not known ahead. Index with static slices."
            )
        return (
            f"{name} on a time-varying value is not supported by continualize "
            "(see docs/continualize.md for the supported operations)."
        )

    def refuse(self, e1: Any, message: str) -> list:
        where = self.where(e1)
        text = f"{e1.primitive.name} at {where}: {message}"
        return [self.new(_Refused(text)) for _ in e1.outvars]

    def latest(self, e1: Any, e2: Any, ins: list, latest: list) -> list:
        """An equation of latest-frames values (and constants): recomputed each step."""
        everies = {v.timing.every for v in latest}
        if len(everies) > 1:
            return self.refuse(e1, "it combines trailing windows of values at different rates.")
        timing = max((v.timing for v in latest), key=lambda t: t.start)
        timing = dataclasses.replace(timing, span=max(v.timing.span for v in latest))
        outs = [
            self.new(_Latest(_shapes(v1, v2), v1.aval.dtype, timing))
            for v1, v2 in zip(e1.outvars, e2.outvars)
        ]
        for i in ins:
            self.use(i)
        self.ops.append(_LatestOp(e1, tuple(ins), tuple(outs)))
        return outs

    def static(self, e1: Any, e2: Any, ins: list, vals: list) -> list:
        outs = []
        for v1, v2 in zip(e1.outvars, e2.outvars):
            shapes = _shapes(v1, v2)
            axes = _constant_axes(e1, vals, shapes[0])
            outs.append(self.new(_Static(shapes, v1.aval.dtype, axes, _known(e1, vals))))
        for i in ins:
            self.use(i)
        self.ops.append(_StaticOp(e1, tuple(ins), tuple(outs)))
        return outs

    # --- alignment ---------------------------------------------------------------
    def align(self, e1: Any, ins: list) -> tuple[list, Timing] | str:
        """Delay the time-varying inputs that come earlier so that all have their frame
        j at the same step. Returns the new ids and their timing, or why not."""
        timed = [
            (k, self.values[i]) for k, i in enumerate(ins) if isinstance(self.values[i], _Time)
        ]
        everies = {v.timing.every for _, v in timed}
        if len(everies) > 1:
            return (
                f"it combines time-varying values computed at different rates (every "
                f"{sorted(everies)} frames): strided branches must meet at one rate."
            )
        late = max((v.timing for _, v in timed), key=lambda t: t.start)
        ins = list(ins)
        for k, v in timed:
            if v.timing.start == late.start:
                continue
            ahead = late.start - v.timing.start
            timing = dataclasses.replace(late, chain=v.timing.chain, span=v.timing.span + ahead)
            dst = self.new(dataclasses.replace(v, timing=timing))
            frame = jax.ShapeDtypeStruct(v.frame_shape, v.dtype)
            self.use(ins[k])
            self.ops.append(
                _WindowOp(
                    self.key("align"), ins[k], dst, ahead // v.timing.every + 1, v.timing,
                    frame, 0.0, 0, _oldest, always_push=v.timing.every == 1,
                )
            )  # fmt: skip
            ins[k] = dst
        spans = max(self.values[i].timing.span for i in ins if isinstance(self.values[i], _Time))
        return ins, dataclasses.replace(late, span=spans)

    # --- per-frame rules ---------------------------------------------------------
    def per_frame(self, e1: Any, e2: Any, ins: list, vals: list, params: dict | None = None):
        """The primitive on this step's frames (see `_FrameOp`)."""
        aligned = self.align(e1, ins)
        if isinstance(aligned, str):
            return self.refuse(e1, aligned)
        ins, timing = aligned
        in_axes = []
        for i in ins:
            v = self.values[i]
            if isinstance(v, _Time):
                in_axes.append(("frame", v.axis))
            elif v.time_axis is not None:
                if v.time_axis not in v.constant_axes:
                    return self.refuse(
                        e1,
                        "it combines the clip with a value that changes along time but "
                        "does not come from the clip (e.g. jnp.arange(T) or positional "
                        "encodings of the whole clip): a continual layer has no clip "
                        "positions. Use co.RecyclingPositionalEncoding.",
                    )
                in_axes.append(("slice", v.time_axis))
            else:
                in_axes.append(None)
        outs, out_axes = [], []
        for v1, v2 in zip(e1.outvars, e2.outvars):
            shapes = _shapes(v1, v2)
            axis = _changed_axis(*shapes)
            if axis is None:
                return self.refuse(
                    e1, f"it reduces or mixes the time axis of its input. {_HINT_WINDOW}"
                )
            outs.append(self.new(_Time(shapes, v1.aval.dtype, axis, timing)))
            out_axes.append(axis)
        for i in ins:
            self.use(i)
        params = dict(e1.params) if params is None else params
        self.ops.append(
            _FrameOp(e1.primitive, params, tuple(ins), tuple(in_axes), tuple(outs), tuple(out_axes))
        )
        return outs

    def time_axes(self, vals: list) -> list:
        return [v.axis if isinstance(v, _Time) else None for v in vals]

    def axis_param(self, e1, e2, ins, vals, param: str, what: str, hint: str):
        axes = e1.params[param]
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        time = self.time_axes(vals)[0]
        if time in axes:
            return self.refuse(e1, f"it {what} the time axis. {hint}")
        return self.per_frame(e1, e2, ins, vals)

    def shaped(self, e1, e2, ins, vals, param: str):
        """reshape / broadcast_in_dim: the output's time entry of `param` becomes 1."""
        size1, size2 = tuple(e1.params[param]), tuple(e2.params[param])
        axis = _changed_axis(size1, size2)
        if axis is None:
            return self.refuse(e1, "it moves the time axis into other axes.")
        if e1.primitive.name == "reshape":
            src = vals[0]
            before_in = math.prod(src.shapes[0][: src.axis])
            if before_in != math.prod(size1[:axis]) or e1.params.get("dimensions") is not None:
                return self.refuse(
                    e1, "it merges the time axis with other axes: keep time its own axis."
                )
        params = dict(e1.params)
        params[param] = size1[:axis] + (1,) + size1[axis + 1 :]
        return self.per_frame(e1, e2, ins, vals, params)

    def dot_general(self, e1, e2, ins, vals):
        (lc, rc), (lb, rb) = e1.params["dimension_numbers"]
        lt, rt = self.time_axes(vals)
        if (lt is not None and lt in lc) or (rt is not None and rt in rc):
            return self.refuse(
                e1, f"it contracts the time axis (a sum over time). {_HINT_ATTENTION}"
            )
        if lt is not None and rt is not None:
            paired = lt in lb and rt in rb and lb.index(lt) == rb.index(rt)
            if not paired:
                return self.refuse(e1, f"it pairs every frame with every other. {_HINT_ATTENTION}")
        return self.per_frame(e1, e2, ins, vals)

    def top_k(self, e1, e2, ins, vals):
        if vals[0].axis == len(vals[0].shapes[0]) - 1:
            return self.refuse(e1, f"it sorts along the time axis. {_HINT_WINDOW}")
        return self.per_frame(e1, e2, ins, vals)

    # --- window rules ------------------------------------------------------------
    def window(
        self,
        e1: Any,
        e2: Any,
        src: int,
        size: int,
        left: int,
        right: int,
        stride: int,
        fill: Any,
        kernel: Callable,
        name: str,
        eager: bool = True,
    ) -> list:
        """A window op on value `src` (see `_WindowOp`); `left`/`right`: time padding."""
        v = self.values[src]
        if left > size - 1:
            return self.refuse(
                e1,
                f"its start padding ({left}) is longer than its window ({size}): it "
                "would emit frames made only of padding before the stream starts.",
            )
        if right < 0:
            return self.refuse(
                e1, "it crops the end of the clip (negative end padding): not causal."
            )
        timing = v.timing.then(size, left, right, stride)
        shapes = _shapes(e1.outvars[0], e2.outvars[0])
        axis = _changed_axis(*shapes)
        if axis is None:
            return self.refuse(e1, "its output has no time axis of its own.")
        dst = self.new(_Time(shapes, e1.outvars[0].aval.dtype, axis, timing))
        frame = jax.ShapeDtypeStruct(v.frame_shape, v.dtype)

        def make():
            self.use(src)
            if isinstance(fill, int):
                self.use(fill)
            self.ops.append(
                _WindowOp(
                    self.key(name),
                    src,
                    dst,
                    size,
                    v.timing,
                    frame,
                    fill,
                    right,
                    kernel,
                    always_push=v.timing.every == 1 and left <= 0,
                )
            )

        if eager:
            make()
        else:
            self.lazy[dst] = make
        return [dst]

    def fused_source(
        self, src: int, fill_known: Any, size: int, left: int
    ) -> tuple[int, int, int, Any]:
        """A window op (extent `size`, start padding `left`) whose input is a time pad
        of another value takes the padding itself (`(source, lo, hi, fill)`), so the
        pad adds no delay; otherwise `(src, 0, 0, None)`. `fill_known`: the window
        op's own padding value where it pads too (the pad's must be the same)."""
        pad = self.time_pads.get(src)
        if pad is None or left + pad[1] > size - 1:
            return src, 0, 0, None
        source, lo, hi, fill_id = pad
        known = self.values[fill_id].known if isinstance(fill_id, int) else fill_id
        if fill_known is not None and (known is None or not _same(known, fill_known)):
            return src, 0, 0, None
        return source, lo, hi, fill_id

    def conv(self, e1, e2, ins, vals):
        lhs, rhs = vals
        if isinstance(rhs, _Time):
            return self.refuse(e1, "its kernel changes with time (a kernel made from the clip).")
        dn = e1.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        if lhs.axis == lhs_spec[0]:
            return self.per_frame(e1, e2, ins, vals)  # time is the conv's batch axis
        if lhs.axis == lhs_spec[1]:
            return self.refuse(e1, "it convolves over channels that include time.")
        s = lhs_spec[2:].index(lhs.axis)
        if e1.params["lhs_dilation"][s] != 1:
            return self.refuse(
                e1, "a transposed (input-dilated) convolution over time upsamples it."
            )
        k = rhs.shapes[0][rhs_spec[2 + s]]
        dilation = e1.params["rhs_dilation"][s]
        size = (k - 1) * dilation + 1
        stride = e1.params["window_strides"][s]
        left, right = e1.params["padding"][s]
        params = dict(e1.params)
        params["window_strides"] = _set(params["window_strides"], s, 1)
        params["padding"] = _set(tuple(params["padding"]), s, (0, 0))
        time_in, time_out, rhs_id = lhs.axis, out_spec[2 + s], ins[1]
        own = None if (left, right) == (0, 0) else 0.0
        src, lo, hi, fill = self.fused_source(ins[0], own, size, left)
        fill = 0.0 if fill is None else fill

        def kernel(env: dict, ring: Array) -> Array:
            y = e1.primitive.bind(jnp.moveaxis(ring, 0, time_in), env[rhs_id], **params)
            return jnp.squeeze(y, time_out)

        tuned = _tuned_conv(e1.params, lhs, rhs.shapes[0], s)
        if tuned is not None:

            def kernel(env: dict, ring: Array) -> Array:  # noqa: F811 - the tuned one
                taps = [tuned._pad_spatial(ring[j * dilation]) for j in range(k)]
                return tuned._kernel({"kernel": env[rhs_id]}, taps)

        self.use(rhs_id)
        return self.window(e1, e2, src, size, left + lo, right + hi, stride, fill, kernel, "conv")

    def reduce_window(self, e1, e2, ins, vals):
        v = vals[0]
        a = v.axis
        p = e1.params
        if p["base_dilation"][a] != 1:
            return self.refuse(e1, "an input-dilated window over time upsamples it.")
        k, stride, dilation = (
            p["window_dimensions"][a],
            p["window_strides"][a],
            p["window_dilation"][a],
        )
        left, right = p["padding"][a]
        if (k, stride, left, right) == (1, 1, 0, 0):
            return self.per_frame(e1, e2, ins, vals)
        params = dict(p)
        params["window_strides"] = _set(p["window_strides"], a, 1)
        params["padding"] = _set(tuple(p["padding"]), a, (0, 0))
        fill = _WINDOW_REDUCTIONS[e1.primitive.name]
        own = None if (left, right) == (0, 0) else fill
        size = (k - 1) * dilation + 1
        src, lo, hi, pad_fill = self.fused_source(ins[0], own, size, left)
        fill = fill if pad_fill is None else pad_fill

        def kernel(env: dict, ring: Array) -> Array:
            del env
            return jnp.squeeze(e1.primitive.bind(jnp.moveaxis(ring, 0, a), **params), a)

        return self.window(e1, e2, src, size, left + lo, right + hi, stride, fill, kernel, "pool")

    def pad(self, e1, e2, ins, vals):
        v = vals[0]
        a = v.axis
        config1, config2 = e1.params["padding_config"], e2.params["padding_config"]
        lo, hi, interior = (int(c) for c in config1[a])
        if not _same(tuple(map(int, config1[a])), tuple(map(int, config2[a]))):
            return self.refuse(e1, "its time padding depends on the clip length.")
        if (lo, hi, interior) == (0, 0, 0):
            return self.per_frame(e1, e2, ins, vals)
        if interior or lo < 0 or hi < 0:
            return self.refuse(e1, "it dilates or crops the time axis (use a slice to crop).")
        if any(int(c) for j, cfg in enumerate(config1) if j != a for c in cfg):
            return self.refuse(e1, "pad the time axis and the other axes in two steps.")
        # Padded frame j (a pad for j < lo) is emitted when input frame j arrives: a
        # window of lo + 1 frames whose oldest is the output (end padding hi + lo so
        # that all L + lo + hi frames come out). A window op right after takes the
        # padding itself instead (`fused_source`), with no delay.
        outs = self.window(
            e1, e2, ins[0], lo + 1, lo, hi + lo, 1, ins[1], _oldest, "pad", eager=False
        )
        self.time_pads[outs[0]] = (ins[0], lo, hi, ins[1])
        return outs

    def slice(self, e1, e2, ins, vals):
        v = vals[0]
        a = v.axis
        (l1, l2) = (v.shapes[0][a], v.shapes[1][a])
        b1, b2 = e1.params["start_indices"][a], e2.params["start_indices"][a]
        s1, s2 = e1.params["limit_indices"][a], e2.params["limit_indices"][a]
        stride = (e1.params["strides"] or (1,) * len(v.shapes[0]))[a]
        if b1 != b2:
            if l1 - b1 == l2 - b2 and l1 - s1 == l2 - s2:
                return self.trailing(e1, e2, ins, v, s1 - b1, l1 - s1, stride)
            return self.refuse(
                e1,
                "it slices frames counted from the end of the clip and from its start: "
                "a continual layer sees an endless stream.",
            )
        if l1 - s1 != l2 - s2:
            return self.refuse(
                e1,
                "it keeps a fixed number of frames from the start of the clip (x[:k]): a "
                "continual layer sees an endless stream.",
            )
        crop_end = l1 - s1
        if (b1, crop_end, stride) == (0, 0, 1):  # a slice of other axes, per frame
            params = dict(e1.params)
            params["limit_indices"] = _set(params["limit_indices"], a, 1)
            return self.per_frame(e1, e2, ins, vals, params)
        params = dict(e1.params)
        params["start_indices"] = _set(params["start_indices"], a, 0)
        params["limit_indices"] = _set(params["limit_indices"], a, 1)
        if params["strides"] is not None:
            params["strides"] = _set(params["strides"], a, 1)

        def kernel(env: dict, ring: Array) -> Array:
            del env  # the slice of the other axes, on the frame
            return jnp.squeeze(e1.primitive.bind(jnp.expand_dims(ring[0], a), **params), a)

        return self.window(e1, e2, ins[0], crop_end + 1, -b1, 0, stride, 0.0, kernel, "slice")

    def trailing(self, e1, e2, ins, v: _Time, frames: int, crop_end: int, stride: int):
        """A trailing window `x[T-frames-crop_end : T-crop_end : stride]`: a ring of the
        last `frames + crop_end` frames, read whole each step (a `_Latest` value)."""
        a = v.axis
        size = frames + crop_end
        params = dict(e1.params)
        params["start_indices"] = _set(params["start_indices"], a, 0)
        params["limit_indices"] = _set(params["limit_indices"], a, frames)

        def kernel(env: dict, ring: Array) -> Array:
            del env
            return e1.primitive.bind(jnp.moveaxis(ring, 0, a), **params)

        timing = v.timing.then(size, 0, 0, 1)
        dst = self.new(_Latest(_shapes(e1.outvars[0], e2.outvars[0]), v.dtype, timing))
        frame = jax.ShapeDtypeStruct(v.frame_shape, v.dtype)
        self.use(ins[0])
        self.ops.append(
            _WindowOp(self.key("trailing"), ins[0], dst, size, v.timing, frame, 0.0, 0, kernel,
                      always_push=v.timing.every == 1)
        )  # fmt: skip
        return [dst]

    def scan(self, e1, e2, ins, vals):
        p = e1.params
        if p["reverse"]:
            return self.refuse(e1, "a reverse scan over time needs the future.")
        n_consts, n_carry = p["num_consts"], p["num_carry"]
        consts, carry, xs = (
            ins[:n_consts],
            ins[n_consts : n_consts + n_carry],
            ins[n_consts + n_carry :],
        )
        if any(isinstance(self.values[i], _Time) for i in consts + carry):
            return self.refuse(e1, "its constants or initial carry come from the clip.")
        for i in xs:
            v = self.values[i]
            if not isinstance(v, _Time) or v.axis != 0:
                return self.refuse(e1, "it scans over an axis that is not time.")
        aligned = self.align(e1, xs)
        if isinstance(aligned, str):
            return self.refuse(e1, aligned)
        xs, timing = aligned
        outs = []
        for k, (v1, v2) in enumerate(zip(e1.outvars, e2.outvars)):
            if k < n_carry:
                message = (
                    f"scan at {self.where(e1)}: its final carry depends on the whole clip; "
                    "a continual layer can only return the per-frame outputs (ys)."
                )
                outs.append(self.new(_Refused(message)))
            else:
                shapes = _shapes(v1, v2)
                outs.append(self.new(_Time(shapes, v1.aval.dtype, 0, timing)))
        for i in consts + carry + xs:
            self.use(i)
        self.ops.append(
            _ScanOp(self.key("scan"), p["jaxpr"], tuple(consts), tuple(carry), tuple(xs),
                    tuple(outs[n_carry:]), timing)
        )  # fmt: skip
        return outs


def _tuned_conv(params: dict, lhs: _Time, rhs_shape: tuple, time_spatial: int) -> Any:
    """cojax's own convolution layer for a conv of the clip function, for its window
    kernel (the measured depthwise / pointwise / fold-into-channels paths, see
    `cojax.layers.conv`): where the conv is channels-last (`N T ... C`, `T ... I O`)
    with time its first spatial axis, symmetric spatial padding and default precision.
    None otherwise (then the primitive itself runs on the window)."""
    from cojax.layers.conv import Conv1d, Conv2d, Conv3d

    dn = params["dimension_numbers"]
    rank = len(dn.lhs_spec)
    n = rank - 2
    channels_last = (0, rank - 1, *range(1, rank - 1))
    if dn.lhs_spec != channels_last or dn.out_spec != channels_last or time_spatial != 0:
        return None
    if dn.rhs_spec != (rank - 1, rank - 2, *range(rank - 2)) or n > 3:
        return None
    pads = params["padding"][1:]
    if any(lo != hi or lo < 0 for lo, hi in pads) or params["batch_group_count"] != 1:
        return None
    if params["precision"] is not None or any(d != 1 for d in params["lhs_dilation"]):
        return None
    if params["preferred_element_type"] not in (None, lhs.dtype):
        return None
    layer = (Conv1d, Conv2d, Conv3d)[n - 1]
    return layer(
        lhs.shapes[0][-1],
        rhs_shape[-1],
        tuple(rhs_shape[:n]),
        stride=(1, *params["window_strides"][1:]),
        padding=(0, *(lo for lo, _ in pads)),
        dilation=tuple(params["rhs_dilation"]),
        groups=params["feature_group_count"],
        bias=False,
    )


def _set(values: tuple, index: int, value: Any) -> tuple:
    values = tuple(values)
    return values[:index] + (value,) + values[index + 1 :]


def _constant_axes(eqn: Any, vals: list, shape: tuple) -> frozenset:
    """Axes along which a static result is constant, where the equation tells."""
    name = eqn.primitive.name
    if name == "broadcast_in_dim":
        src = vals[0]
        dims = eqn.params["broadcast_dimensions"]
        axes = {a for a in range(len(shape)) if a not in dims}
        for d_in, d_out in enumerate(dims):
            if d_in in src.constant_axes or src.shapes[0][d_in] == 1:
                axes.add(d_out)
        return frozenset(axes)
    if name in _ELEMENTWISE:
        axes = set(range(len(shape)))
        for v in vals:
            if len(v.shapes[0]) == 0:
                continue
            axes &= {a for a in range(len(shape)) if a in v.constant_axes or v.shapes[0][a] == 1}
        return frozenset(axes)
    return frozenset()


def _known(eqn: Any, vals: list) -> Any:
    """The value of a static result the analysis can compute (casts of literals)."""
    if eqn.primitive.name == "convert_element_type" and vals[0].known is not None:
        return np.asarray(vals[0].known).astype(eqn.params["new_dtype"])
    return None


def _rule_axes(param: str, what: str, hint: str):
    return lambda b, e1, e2, ins, vals: b.axis_param(e1, e2, ins, vals, param, what, hint)


_RULES: dict[str, Callable] = {
    "reshape": lambda b, e1, e2, ins, vals: b.shaped(e1, e2, ins, vals, "new_sizes"),
    "broadcast_in_dim": lambda b, e1, e2, ins, vals: b.shaped(e1, e2, ins, vals, "shape"),
    "transpose": _Builder.per_frame,
    "squeeze": _rule_axes("dimensions", "squeezes", ""),
    "concatenate": lambda b, e1, e2, ins, vals: b.axis_param(
        e1, e2, ins, vals, "dimension", "concatenates along", "Concatenate frames, not clips."
    ),
    "split": _rule_axes("axis", "splits", ""),
    "rev": _rule_axes("dimensions", "reverses", "A continual layer cannot see the future."),
    "sort": _rule_axes("dimension", "sorts along", _HINT_WINDOW),
    "top_k": _Builder.top_k,
    "dot_general": _Builder.dot_general,
    "conv_general_dilated": _Builder.conv,
    "pad": _Builder.pad,
    "slice": _Builder.slice,
    "scan": _Builder.scan,
    **{name: _Builder.reduce_window for name in _WINDOW_REDUCTIONS},
    **{name: _rule_axes("axes", "reduces over", _HINT_WINDOW) for name in _REDUCTIONS},
    **{name: _rule_axes("axis", "accumulates along", _HINT_WINDOW) for name in _CUMULATIVE},
}


# --------------------------------------------------------------------------- the plan


class _Plan(NamedTuple):
    """The program of one clip function for one params structure."""

    ops: tuple
    constants: dict
    param_ids: tuple
    clip_id: int
    outputs: tuple  # value ids of the output leaves (aligned)
    out_tree: Any
    timing: Timing  # of the outputs
    flush_steps: int
    wrap: tuple[int, int]  # (limit, period) of the step counter

    def env(self, params: Params) -> dict:
        env = dict(self.constants)
        env.update(zip(self.param_ids, jax.tree_util.tree_leaves(params)))
        return env


def _trace(fn: Callable, params_spec: Any, frame: jax.ShapeDtypeStruct, length: int):
    clip = jax.ShapeDtypeStruct((length, *frame.shape), frame.dtype)
    try:
        return jax.make_jaxpr(fn, return_shape=True)(params_spec, clip)
    except Exception as error:  # noqa: BLE001 - re-raised with the context
        raise ContinualizeError(
            f"continualize: tracing the clip function on a clip of {length} frames "
            f"{tuple(clip.shape)} failed: {type(error).__name__}: {error}. If its "
            "receptive field is longer, pass a larger trace_length."
        ) from error


def build_plan(fn: Callable, frame: jax.ShapeDtypeStruct, params_spec: Any, length: int) -> _Plan:
    """Analyse `fn` (see the module docstring) for params shaped like `params_spec`."""
    (closed1, shape1), (closed2, shape2) = (
        _trace(fn, params_spec, frame, n) for n in (length, 2 * length + 3)
    )
    builder = _Builder()
    leaves = jax.tree_util.tree_leaves(params_spec)
    param_ids = []
    for leaf in leaves:
        shape = tuple(leaf.shape)
        param_ids.append(builder.new(_Static((shape, shape), leaf.dtype, frozenset())))
    shapes = ((length, *frame.shape), (2 * length + 3, *frame.shape))
    clip_id = builder.new(_Time(shapes, frame.dtype, 0, INPUT_TIMING))
    outs = builder.closed(closed1, closed2, [*param_ids, clip_id])
    try:
        return _outputs_plan(builder, outs, shape1, shape2, param_ids, clip_id, length)
    except ContinualizeError as error:
        raise ContinualizeError(f"{error} (the clip function: {_defined_at(fn)})") from None


def _outputs_plan(builder, outs, shape1, shape2, param_ids, clip_id, length) -> _Plan:
    """The plan for the clip function's output values `outs` (see `build_plan`)."""
    latest = [builder.values[i] for i in outs if isinstance(builder.values[i], _Latest)]
    if latest:
        return _latest_plan(builder, outs, shape1, param_ids, clip_id, length)
    for i in outs:
        v = builder.values[i]
        if isinstance(v, _Refused):
            raise ContinualizeError(f"continualize: {v.message}")
        if isinstance(v, _Static):
            raise ContinualizeError(
                "continualize: an output of the clip function does not depend on the clip."
            )
        if v.axis != 0:
            raise ContinualizeError(
                f"continualize: an output has its time axis at {v.axis}: the clip "
                "function must return clips with time leading, (T', ...)."
            )
    aligned = builder.align(None, outs)
    if isinstance(aligned, str):
        raise ContinualizeError(f"continualize: the outputs: {aligned}")
    outs, timing = aligned
    for i in outs:
        builder.use(i)
    _check_lengths(builder, shape1, shape2, length)
    return _make_plan(builder, outs, shape1, param_ids, clip_id, timing)


def _latest_plan(builder: _Builder, outs: list, shape1: Any, param_ids, clip_id, length) -> _Plan:
    """The plan of a clip function whose outputs summarise a trailing window: each
    step emits `fn` of the latest window, one frame (the outputs' leading axis of 1)."""
    for i in outs:
        v = builder.values[i]
        if isinstance(v, _Refused):
            raise ContinualizeError(f"continualize: {v.message}")
        if not isinstance(v, _Latest):
            raise ContinualizeError(
                "continualize: the clip function returns both per-frame clips and "
                "summaries of a trailing window; return one kind."
            )
        if v.shapes[0][:1] != (1,):
            raise ContinualizeError(
                f"continualize: an output of the latest frames has shape {v.shapes[0]}: "
                "return one frame with time leading, e.g. x[-W:].mean(0, keepdims=True)."
            )
    timings = [builder.values[i].timing for i in outs]
    if len({t.every for t in timings}) > 1:
        raise ContinualizeError("continualize: the outputs come at different rates.")
    timing = max(timings, key=lambda t: t.start)
    timing = dataclasses.replace(timing, span=max(t.span for t in timings), latest=True)
    firsts = []  # the outputs' one frame each
    for i in outs:
        builder.use(i)
        firsts.append(builder.new(None))
        builder.ops.append(_TakeFirst(i, firsts[-1]))
    return _make_plan(builder, firsts, shape1, param_ids, clip_id, timing)


def _make_plan(builder: _Builder, outputs, shape1, param_ids, clip_id, timing: Timing) -> _Plan:
    """The plan of the built program: the step counter wraps by the period of every
    value's schedule once all have started; the flush runs until the last output frame
    the end padding releases (none for trailing-window outputs)."""
    timings = [v.timing for v in builder.values.values() if isinstance(v, (_Time, _Latest))]
    period = math.lcm(*(t.every for t in timings))
    horizon = max(t.start for t in timings) + 1
    flush = 0
    for n in range(1, horizon + 3 * period):
        if timing.length(n) > 0:
            flush = max(flush, timing.end(n) - timing.every + 1 - n)
    return _Plan(
        ops=tuple(builder.ops),
        constants=builder.constants,
        param_ids=tuple(param_ids),
        clip_id=clip_id,
        outputs=tuple(outputs),
        out_tree=jax.tree_util.tree_structure(shape1),
        timing=timing,
        flush_steps=flush,
        wrap=(horizon + 2 * period, period),
    )


class _TakeFirst(NamedTuple):
    """The output frame of a one-frame output `(1, ...)`."""

    src: int
    dst: int

    def run(self, rt: _Runtime) -> None:
        rt.env[self.dst] = rt.env[self.src][0]


def _check_lengths(builder: _Builder, shape1: Any, shape2: Any, length: int) -> None:
    """The schedules' clip lengths equal the traced ones (a check of the analysis)."""
    for v in builder.values.values():
        if isinstance(v, _Time):
            if v.shapes[0][v.axis] < 2:
                raise ContinualizeError(
                    f"continualize: a value of the clip function has {v.shapes[0][v.axis]} "
                    f"frames for a clip of trace_length={length} frames: the receptive "
                    "field or the stride is too long for it; pass a larger trace_length."
                )
            for n, shape in zip((length, 2 * length + 3), v.shapes):
                if v.timing.length(n) != shape[v.axis]:
                    raise AssertionError(
                        f"continualize: internal error: a value of {shape} was scheduled "
                        f"for {v.timing.length(n)} frames."
                    )


# --------------------------------------------------------------------------- the layer


class ContinualizedState(NamedTuple):
    """`steps`: input frames seen (wrapped, see `_Plan.wrap`); `ops`: each window op's
    ring of frames and each scan's carry, keyed by op."""

    steps: Array
    ops: dict


def _params_spec(params: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(as_spec(params))
    return treedef, tuple(leaves)


@dataclasses.dataclass(frozen=True)
class Continualized(Layer):
    """A clip function as a continual layer (made by `continualize`).

    `fn(params, clip (T, *frame.shape)) -> (T', ...)`; `frame`: one frame's
    `ShapeDtypeStruct`; `params_spec`: `(treedef, leaf specs)` of the params the static
    metadata (`delay`, `receptive_field`, `stride`, `padding`) is inferred for;
    `init_fn(key) -> params`, optional; `trace_length`: the clip length `fn` is traced
    at (also traced at `2 * trace_length + 3`), longer than its receptive field.
    """

    fn: Callable
    frame: jax.ShapeDtypeStruct
    params_spec: tuple | None = None
    init_fn: Callable | None = None
    trace_length: int = 32

    def __post_init__(self):
        if not isinstance(self.frame, jax.ShapeDtypeStruct):
            raise TypeError(
                f"continualize: frame must be a jax.ShapeDtypeStruct (one frame's shape "
                f"and dtype), got {type(self.frame).__name__}."
            )
        if not callable(self.fn):
            raise TypeError(f"continualize: fn must be callable, got {type(self.fn).__name__}.")
        if self.trace_length < 1:
            raise ValueError(f"continualize: trace_length must be >= 1, got {self.trace_length}.")

    # --- the analysis --------------------------------------------------------------
    def plan(self, params: Params | None = None) -> _Plan:
        """The program for `params` (or the params this layer was made with)."""
        if params is None:
            if self.params_spec is None:
                raise ValueError(
                    "continualize: the delay, receptive field and stride are inferred "
                    "from fn's program, which needs the params' shapes: make the layer "
                    "with continualize(fn, frame, params=params)."
                )
            spec = jax.tree_util.tree_unflatten(*self.params_spec)
        else:
            self.check_params(params)
            spec = as_spec(params)
        return build_plan(self.fn, self.frame, spec, self.trace_length)

    def check_params(self, params: Params) -> None:
        """Raise unless `params` has the structure and shapes this layer was made for."""
        if self.params_spec is None:
            return
        treedef, leaves = self.params_spec
        got_def, got = _params_spec(params)
        if got_def != treedef:
            raise ValueError(
                f"continualize: the params do not have the structure the layer was made "
                f"with: expected {treedef}, got {got_def}."
            )
        for k, (want, have) in enumerate(zip(leaves, got)):
            if (want.shape, want.dtype) != (have.shape, have.dtype):
                raise ValueError(
                    f"continualize: params leaf {k} is {have.dtype}{list(have.shape)}, "
                    f"the layer was made for {want.dtype}{list(want.shape)}."
                )

    @property
    def delay(self) -> int:
        return self.plan().timing.start

    @property
    def stride(self) -> int:
        return self.plan().timing.every

    @property
    def receptive_field(self) -> int:
        return self.plan().timing.span

    @property
    def padding(self) -> int:
        timing = self.plan().timing
        return timing.span - 1 - timing.start

    @property
    def finite_memory(self) -> bool:
        """False where `fn` scans over time (its outputs depend on the whole stream)."""
        return not any(isinstance(op, _ScanOp) for op in self.plan().ops)

    def output_length(self, n: int | Array) -> int | Array:
        return self.plan().timing.length(n)

    # --- the contract ----------------------------------------------------------------
    def init(self, key: Array) -> Params:
        if self.init_fn is None:
            raise TypeError(
                "continualize: this layer has no initialiser; use your model's params "
                "(e.g. variables = model.init(key, clip)) or pass init_fn=."
            )
        return self.init_fn(key)

    def check_frame(self, frame: Any) -> None:
        shape, dtype = tuple(np.shape(frame)), jnp.result_type(frame)
        if (shape, dtype) != (tuple(self.frame.shape), self.frame.dtype):
            hint = ""
            if len(shape) == len(self.frame.shape) + 1:
                hint = " A layer sees ONE stream; use jax.vmap for a batch of streams."
            raise ValueError(
                f"Continualized: expected frames {self.frame.dtype}{list(self.frame.shape)} "
                f"(the frame it was made for), got {dtype}{list(shape)}.{hint}"
            )

    def forward(self, params: Params, clip: Array) -> Any:
        """`fn` itself on a clip `(T, *frame.shape)`."""
        return self.fn(params, clip)

    def init_state(self, params: Params, frame: Any) -> ContinualizedState:
        plan = self.plan(params)
        rt = _Runtime(plan.env(params), None, {})
        for op in plan.ops:
            if isinstance(op, _StaticOp):
                op.run(rt)
            elif hasattr(op, "init"):
                op.init(rt)
        return ContinualizedState(jnp.zeros((), jnp.int32), rt.state)

    def _tick(self, plan: _Plan, params: Params, state: ContinualizedState, frame, tick, end):
        rt = _Runtime(plan.env(params), tick, dict(state.ops), end)
        rt.env[plan.clip_id] = frame
        for op in plan.ops:
            op.run(rt)
        valid = rt.computes(plan.timing)
        if end is not None:
            valid = jnp.logical_and(valid, tick < plan.timing.end(end))
        ys = [rt.env[i] for i in plan.outputs]
        y = jax.tree_util.tree_unflatten(plan.out_tree, ys)
        return rt.state, (zero_unless(valid, y), valid)

    def step(self, params: Params, state: ContinualizedState, frame: Array):
        plan = self.plan(params)
        ops, out = self._tick(plan, params, state, frame, state.steps, None)
        limit, period = plan.wrap
        steps = state.steps + 1
        steps = jnp.where(steps >= limit, steps - period, steps)
        return ContinualizedState(steps, ops), out

    def flush(self, params: Params, state: ContinualizedState, frame: Any):
        plan = self.plan(params)
        zeros = jnp.zeros(self.frame.shape, self.frame.dtype)

        def body(carry, _):
            ops, tick = carry
            ops, out = self._tick(
                plan, params, ContinualizedState(tick, ops), zeros, tick, state.steps
            )
            return (ops, tick + 1), out

        if plan.flush_steps == 0:
            return super().flush(params, state, frame)
        _, (ys, valid) = jax.lax.scan(body, (state.ops, state.steps), None, length=plan.flush_steps)
        return ys, valid


def continualize(
    fn: Callable,
    frame: jax.ShapeDtypeStruct | Array,
    *,
    params: Params | None = None,
    init_fn: Callable | None = None,
    trace_length: int = 32,
) -> Continualized:
    """Turn the clip function `fn(params, clip (T, *frame_shape)) -> (T', ...)` into a
    continual layer whose steps equal `fn` on every window (see the module docstring).

    `frame`: one frame (`jax.ShapeDtypeStruct` or an array). `params`: the params (or
    their `ShapeDtypeStruct`s) the static metadata is inferred for; without them
    `init_state` / `step` still work but `delay` etc. raise. Unsupported operations
    raise `ContinualizeError` here, naming the primitive and `fn`'s line.
    """
    if not isinstance(frame, jax.ShapeDtypeStruct):
        frame = jax.ShapeDtypeStruct(np.shape(frame), jnp.result_type(frame))
    spec = None if params is None else _params_spec(params)
    layer = Continualized(fn, frame, spec, init_fn, trace_length)
    if params is not None:
        layer.plan()  # refuse unsupported programs now, with fn's line
    return layer
