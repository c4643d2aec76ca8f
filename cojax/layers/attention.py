"""Continual multi-head self-attention over a sliding window of `sequence_len` tokens.

One stream, channels-last: a frame is one token `(E,)`, a clip `(T, E)`. Both layers
keep torch's `nn.MultiheadAttention` parameters (packed in-projection, scale 1/√d
applied after the bias) and their `forward` is ordinary multi-head self-attention on
every window of `N = sequence_len` consecutive tokens:

- `SingleOutputMultiheadAttention`: the output row of one query (`query_index`, the
  newest by default) of each window: clip `(T, E)` -> `(T - N + 1, E)`. A step attends
  the selected query to the N keys of the window: O(N·d) per head.
- `RetroactiveMultiheadAttention`: all N output rows of each window, updated as each
  token arrives: clip `(T, E)` -> `(T - N + 1, N, E)`, step `(E,)` -> `(N, E)`.

Both emit their first output when the N-th token arrives (delay N - 1). `dropout`
(default 0) is torch's dropout on the attention weights: active only in train mode
(`co.train_forward`); `forward` and `step` are the inference computation.

Retroactive attention (Continual Transformers, Hedegaard et al., ICLR 2023, Sec. 3)
updates the softmax sums of the N - 1 earlier rows by removing the leaving key and adding
the arriving one. Subtracting the leaving key's term cancels catastrophically when that
key dominated a row (logits of ~100 overflow `exp` outright in the reference). Here
nothing is ever subtracted: every row is a log-sum-exp aggregate `(max, sum, weighted
values)` of two parts, both built only by stable additions,

    row r at age a = suffix_r[a]  ⊕  grow_r,

where `suffix_r[a]` aggregates the keys of the row's first window that are still in the
window (positions a..N-1 of that window, computed once, by a reverse scan, when the row's
query arrives) and `grow_r` the keys that arrived after it (one ⊕ per step). A step costs
O(N·d) per head like the reference; the price is memory: the suffix tables of the N - 1
live rows, O(N²·d) per head, kept in a ring written at one slot per step (in place under
`lax.scan` or with a donated state). Every row lives N steps, so errors cannot pile up
over an endless stream.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cojax.core import (
    Array,
    Layer,
    Params,
    advance_counter,
    as_spec,
    check_array,
    check_config,
    check_positive_ints,
    forward_per_clip,
    new_counter,
    zero_unless,
)

# --------------------------------------------------------------------------- maths


def project_qkv(params: Params, x: Array, num_heads: int) -> tuple[Array, Array, Array]:
    """torch's packed in-projection: `x (..., E)` -> q, k, v `(..., H, d)`.

    q is scaled by 1/√d after the bias, as `nn.MultiheadAttention` does.
    """
    y = _in_projection(params, x, 0, 3)
    q, k, v = (_heads(a, num_heads) for a in jnp.split(y, 3, axis=-1))
    return q / math.sqrt(q.shape[-1]), k, v


def project_q(params: Params, x: Array, num_heads: int) -> Array:
    """Only the (scaled) queries of `x (..., E)`: `(..., H, d)`."""
    q = _heads(_in_projection(params, x, 0, 1), num_heads)
    return q / math.sqrt(q.shape[-1])


def project_kv(params: Params, x: Array, num_heads: int) -> tuple[Array, Array]:
    """Only the keys and values of `x (..., E)`: `(..., H, d)` each."""
    k, v = jnp.split(_in_projection(params, x, 1, 3), 2, axis=-1)
    return _heads(k, num_heads), _heads(v, num_heads)


def _in_projection(params: Params, x: Array, first: int, stop: int) -> Array:
    """Parts `first` … `stop - 1` (0 q, 1 k, 2 v) of the packed in-projection of x."""
    proj = params["in_proj"]
    E = proj["kernel"].shape[0]
    y = jnp.einsum("...e,ef->...f", x, proj["kernel"][:, first * E : stop * E].astype(x.dtype))
    if "bias" in proj:
        y = y + proj["bias"][first * E : stop * E].astype(x.dtype)
    return y


def _heads(a: Array, num_heads: int) -> Array:
    return a.reshape(a.shape[:-1] + (num_heads, a.shape[-1] // num_heads))


def project_out(params: Params, o: Array) -> Array:
    """Merge heads `(..., H, d)` -> `(..., E)` and apply the output projection."""
    o = o.reshape(o.shape[:-2] + (o.shape[-2] * o.shape[-1],))
    proj = params["out_proj"]
    y = jnp.einsum("...e,ef->...f", o, proj["kernel"].astype(o.dtype))
    if "bias" in proj:
        y = y + proj["bias"].astype(o.dtype)
    return y


def drop(x: Array, rate: float, key: Array | None) -> Array:
    """Train-mode dropout (torch's): each element zeroed with probability `rate`, the
    rest scaled by 1 / (1 - rate). The identity when `key` is None or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def attend(q: Array, k: Array, v: Array, dropout: float = 0.0, key: Array | None = None) -> Array:
    """Softmax attention, max-subtracted: q `(..., L, H, d)`, k, v `(..., S, H, d)`
    -> `(..., L, H, d)`. With a `key`, dropout on the attention weights (torch's
    `nn.MultiheadAttention(dropout=p)` in train mode)."""
    scores = jnp.einsum("...lhd,...shd->...hls", q, k)
    weights = drop(jax.nn.softmax(scores, axis=-1), dropout, key)
    return jnp.einsum("...hls,...shd->...lhd", weights, v)


def attend_one(q: Array, k: Array, v: Array) -> Array:
    """`attend` for one query against head-major keys / values: q `(H, d)`, k, v
    `(H, S, d)` -> `(H, d)`."""
    weights = jax.nn.softmax(jnp.einsum("hd,hsd->hs", q, k), axis=-1)
    return jnp.einsum("hs,hsd->hd", weights, v)


def multihead_self_attention(params: Params, window: Array, num_heads: int) -> Array:
    """Ordinary multi-head self-attention on one window `(N, E)` -> `(N, E)`."""
    q, k, v = project_qkv(params, window, num_heads)
    return project_out(params, attend(q, k, v))


def _windows(x: Array, n: int) -> Array:
    """`(T, ...)` -> `(T - n + 1, n, ...)`: every run of n consecutive entries."""
    index = jnp.arange(x.shape[0] - n + 1)[:, None] + jnp.arange(n)[None, :]
    return x[index]


def check_dropout(layer: Any, rate: float) -> None:
    check_config(0.0 <= rate <= 1.0, layer, f"dropout must be in [0, 1], got {rate}.")


def check_window_clip(layer: Any, clip: Any, sequence_len: int) -> None:
    """A clip of tokens must hold at least one window of `sequence_len`."""
    check_config(
        clip.shape[0] >= sequence_len,
        layer,
        f"the clip has {clip.shape[0]} tokens, fewer than sequence_len {sequence_len}: "
        "no window fits.",
    )


class Aggregate(NamedTuple):
    """A log-sum-exp partial softmax: `total = exp(m) * sum`, `values = Σ w·v / exp(m)`.

    `m` `(...)` running max of the logits, `sum` `(...)` Σ exp(logit - m), `values`
    `(..., d)` Σ exp(logit - m)·v. The empty aggregate has m = -inf, sum = values = 0.
    """

    m: Array
    sum: Array
    values: Array


def combine(x: Aggregate, y: Aggregate) -> Aggregate:
    """x ⊕ y: the aggregate of both sets of keys. Associative; only adds positives."""
    m = jnp.maximum(x.m, y.m)
    finite = jnp.where(jnp.isneginf(m), jnp.zeros_like(m), m)
    wx, wy = jnp.exp(x.m - finite), jnp.exp(y.m - finite)
    return Aggregate(
        m,
        x.sum * wx + y.sum * wy,
        x.values * wx[..., None] + y.values * wy[..., None],
    )


def _single_key(logit: Array, value: Array) -> Aggregate:
    return Aggregate(
        logit, jnp.ones_like(logit), jnp.broadcast_to(value, logit.shape + value.shape[-1:])
    )


def _empty(shape: tuple[int, ...], head_dim: int, dtype) -> Aggregate:
    return Aggregate(
        jnp.full(shape, -jnp.inf, dtype),
        jnp.zeros(shape, dtype),
        jnp.zeros((*shape, head_dim), dtype),
    )


def _normalise(total: Aggregate) -> Array:
    safe = jnp.where(total.sum > 0, total.sum, jnp.ones_like(total.sum))
    return total.values / safe[..., None]


# --------------------------------------------------------------------------- base


@dataclasses.dataclass(frozen=True)
class _WindowAttention(Layer):
    """Shared configuration, parameters and checks of the continual attentions."""

    embed_dim: int
    num_heads: int
    sequence_len: int
    bias: bool = True
    dropout: float = 0.0

    def __post_init__(self):
        check_positive_ints(self, "embed_dim", "num_heads", "sequence_len")
        check_dropout(self, self.dropout)
        check_config(
            self.embed_dim % self.num_heads == 0,
            self,
            f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}.",
        )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def receptive_field(self) -> int:
        return self.sequence_len

    def init(self, key: Array) -> Params:
        """torch's initialisation: xavier-uniform in-projection, U(±1/√E) output
        projection, zero biases."""
        k_in, k_out = jax.random.split(key)
        E = self.embed_dim
        bound = math.sqrt(6.0 / (E + 3 * E))  # xavier on torch's (3E, E) weight
        in_proj = {"kernel": jax.random.uniform(k_in, (E, 3 * E), jnp.float32, -bound, bound)}
        out_bound = 1.0 / math.sqrt(E)
        out_proj = {"kernel": jax.random.uniform(k_out, (E, E), jnp.float32, -out_bound, out_bound)}
        if self.bias:
            in_proj["bias"] = jnp.zeros((3 * E,), jnp.float32)
            out_proj["bias"] = jnp.zeros((E,), jnp.float32)
        return {"in_proj": in_proj, "out_proj": out_proj}

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, ndim=1, channels=self.embed_dim, layout="(E,)")

    def check_clip(self, clip: Any) -> None:
        super().check_clip(clip)
        check_window_clip(self, clip, self.sequence_len)

    def _qkv_memory(self, n: int, dtype) -> Array:
        return jnp.zeros((n, self.num_heads, self.head_dim), dtype)

    def forward(self, params: Params, clip: Array) -> Array:
        return self._forward(params, clip)

    def forward_train(self, params, clips, mask, key):
        """Train mode: dropout on the attention weights (`dropout`), a key per clip."""
        if self.dropout == 0.0:
            return super().forward_train(params, clips, mask, key)
        return forward_per_clip(self, params, clips, mask, key, self._forward)


# --------------------------------------------------------------------------- single output


class SingleOutputState(NamedTuple):
    """Keys and values of the window's tokens in a ring (token t in slot t mod N; the
    softmax does not depend on their order) and the queries after the selected one.

    The rings are head-major, `(H, N, d)`: the step's two contractions are then
    batched over leading (stream, head) axes with contiguous `(N, d)` operands, which
    XLA:CPU runs ~7× faster at 64 streams than the token-major `(N, H, d)` layout (it
    transposes the whole ring for every step; experiments/bench.py)."""

    keys: Array  # (H, N, d)
    values: Array  # (H, N, d)
    queries: Array  # (n_q, H, d), scaled
    slot: Array  # int32 in [0, N - 1]: the slot of the next token
    count: Array  # int32, see `cojax.core.advance_counter`


@dataclasses.dataclass(frozen=True)
class SingleOutputMultiheadAttention(_WindowAttention):
    """Continual single-output multi-head self-attention (torch's packed layout).

    Each window of `sequence_len` tokens gives the attention output of the query at
    `query_index` (-1: the newest; negative counts from the newest). Step: token `(E,)`
    -> `(E,)`; forward: `(T, E)` -> `(T - N + 1, E)`. Params: "in_proj" {"kernel"
    `(E, 3E)` (torch's `in_proj_weight.T`), "bias" `(3E,)`} and "out_proj" {"kernel"
    `(E, E)`, "bias" `(E,)`}.
    """

    query_index: int = -1

    def __post_init__(self):
        super().__post_init__()
        N = self.sequence_len
        check_config(
            isinstance(self.query_index, int) and -N <= self.query_index < N,
            self,
            f"query_index must be an int in [-{N}, {N - 1}], got {self.query_index!r}.",
        )

    @property
    def query_position(self) -> int:
        """The selected query's position in its window, 0 (oldest) … N - 1 (newest)."""
        return self.query_index % self.sequence_len

    @property
    def alignment(self) -> int:
        """The output stands for its query's token: `N - 1 - query_position` frames
        before the newest (0 for the default `query_index=-1`)."""
        return self.sequence_len - 1 - self.query_position

    def _forward(self, params: Params, clip: Array, key: Array | None = None) -> Array:
        N, p = self.sequence_len, self.query_position
        q, k, v = project_qkv(params, clip, self.num_heads)
        W = clip.shape[0] - N + 1
        selected = q[p : p + W, None]  # (W, 1, H, d)
        out = attend(selected, _windows(k, N), _windows(v, N), self.dropout, key)[:, 0]
        return project_out(params, out)

    def init_state(self, params: Params, frame: Any) -> SingleOutputState:
        dtype = as_spec(frame).dtype
        N = self.sequence_len
        ring = jnp.zeros((self.num_heads, N, self.head_dim), dtype)
        return SingleOutputState(
            ring,
            ring,
            self._qkv_memory(N - 1 - self.query_position, dtype),
            jnp.zeros((), jnp.int32),
            new_counter(self.delay, 1),
        )

    def step(self, params: Params, state: SingleOutputState, frame: Array):
        q, k, v = project_qkv(params, frame, self.num_heads)
        # The arriving token replaces the leaving one in the ring: one slot written
        # (in place with a donated state or in lax.scan), not the window shifted.
        keys = lax.dynamic_update_index_in_dim(state.keys, k, state.slot, 1)
        values = lax.dynamic_update_index_in_dim(state.values, v, state.slot, 1)
        queries = jnp.concatenate([state.queries, q[None]])
        out = attend_one(queries[0], keys, values)
        y = project_out(params, out)
        valid, count = advance_counter(state.count, self.delay, 1)
        slot = (state.slot + 1) % self.sequence_len
        new_state = SingleOutputState(keys, values, queries[1:], slot, count)
        return new_state, (zero_unless(valid, y), valid)


# --------------------------------------------------------------------------- retroactive


class RetroactiveState(NamedTuple):
    """State of `RetroactiveMultiheadAttention` (per head; rows oldest first).

    The N - 1 earlier rows' queries, the keys and values of the last N - 1 tokens,
    each row's aggregate over the keys that arrived after it (`grow`), the suffix
    entry each row needs at the next step (`pending`), and a ring of suffix tables:
    slot s holds, for the row written there, the aggregates over positions a..N-1 of
    its first window, a = 1 … N-1 (`suffix.m` `(N-1, N-1, H)`).
    """

    queries: Array  # (N - 1, H, d), scaled
    keys: Array  # (N - 1, H, d)
    values: Array  # (N - 1, H, d)
    grow: Aggregate  # (N - 1, H) / (N - 1, H, d)
    pending: Aggregate  # (N - 1, H) / (N - 1, H, d)
    suffix: Aggregate  # (N - 1 slots, N - 1 ages, H) / (..., d)
    slot: Array  # int32 in [0, N - 2]: the slot the next row is written to
    count: Array  # int32, see `cojax.core.advance_counter`


@dataclasses.dataclass(frozen=True)
class RetroactiveMultiheadAttention(_WindowAttention):
    """Continual retroactive multi-head self-attention (torch's packed layout).

    Every step returns all N rows of the attention over the latest window, the earlier
    rows updated for the arriving token. Step: token `(E,)` -> `(N, E)`; forward:
    `(T, E)` -> `(T - N + 1, N, E)`. Params as `SingleOutputMultiheadAttention`.
    Exact and overflow-free for any logit size (no subtraction, see the module
    docstring); state O(N²·E) per stream. `sequence_len` >= 2.
    """

    def __post_init__(self):
        super().__post_init__()
        check_config(
            self.sequence_len >= 2,
            self,
            f"sequence_len must be >= 2 for retroactive attention, got {self.sequence_len} "
            "(with one token use SingleOutputMultiheadAttention).",
        )

    def _forward(self, params: Params, clip: Array, key: Array | None = None) -> Array:
        N = self.sequence_len
        q, k, v = (_windows(a, N) for a in project_qkv(params, clip, self.num_heads))
        return project_out(params, attend(q, k, v, self.dropout, key))

    def init_state(self, params: Params, frame: Any) -> RetroactiveState:
        dtype = as_spec(frame).dtype
        n, H, d = self.sequence_len - 1, self.num_heads, self.head_dim
        return RetroactiveState(
            self._qkv_memory(n, dtype),
            self._qkv_memory(n, dtype),
            self._qkv_memory(n, dtype),
            _empty((n, H), d, dtype),
            _empty((n, H), d, dtype),
            _empty((n, n, H), d, dtype),
            jnp.zeros((), jnp.int32),
            new_counter(self.delay, 1),
        )

    def step(self, params: Params, state: RetroactiveState, frame: Array):
        n = self.sequence_len - 1
        q, k, v = project_qkv(params, frame, self.num_heads)
        keys = jnp.concatenate([state.keys, k[None]])  # the window's N keys
        values = jnp.concatenate([state.values, v[None]])

        # Earlier rows: their suffix (read at the end of the last step) and their
        # growth, now with the arriving key.
        grow = combine(state.grow, _single_key(jnp.einsum("rhd,hd->rh", state.queries, k), v))
        earlier = combine(state.pending, grow)

        # The new row: suffix aggregates of its window, positions a..N-1 for every a.
        logits = jnp.einsum("nhd,hd->nh", keys, q)
        suffixes = lax.associative_scan(combine, _single_key(logits, values), reverse=True)

        rows = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[:1]]), earlier, suffixes)
        y = project_out(params, _normalise(rows))  # (N, E)

        # Write the new row's suffixes into its slot, then read what every live row
        # needs at the next step (its age a = n - r there, row r = 0 the oldest). The
        # ring is only read after it is written, so XLA updates it in place (with a
        # donated state or in lax.scan); reading first would force a copy of it.
        ring = jax.tree_util.tree_map(
            lambda table, new: lax.dynamic_update_index_in_dim(table, new[1:], state.slot, 0),
            state.suffix,
            suffixes,
        )
        ages = n - jnp.arange(n)
        slots = (state.slot + 1 - ages) % n
        pending = jax.tree_util.tree_map(lambda table: table[slots, ages - 1], ring)
        empty = _empty((1, self.num_heads), self.head_dim, frame.dtype)
        new_state = RetroactiveState(
            queries=jnp.concatenate([state.queries[1:], q[None]]),
            keys=keys[1:],
            values=values[1:],
            grow=jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[1:], b]), grow, empty),
            pending=pending,
            suffix=ring,
            slot=(state.slot + 1) % n,
            count=state.count,
        )
        valid, count = advance_counter(state.count, self.delay, 1)
        return new_state._replace(count=count), (zero_unless(valid, y), valid)
