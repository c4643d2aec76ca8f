"""Nyström attention (Nyströmformer) and its continual form, as Flax modules.

One stream, channels-last: a window / clip is `(n, E)` / `(T, E)`, a frame one token
`(E,)`. Queries and keys are scaled by d^(-1/4) each (so q·k carries 1/√d). With m
landmarks Q̃, K̃ `(m, d)` per head,

    attention ≈ softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ) V,

the pseudo-inverse by the iteration Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))) from
Z₀ = Aᵀ / (max colsum|A| · max rowsum|A|) (Xiong et al., AAAI 2021, Eq. 14). The
offline landmarks are segment means of Q and K over m segments (the first n mod m
segments one token longer); with m >= n it is plain softmax attention.

Continual Nyström (Continual Low-Rank Scaled Dot-product Attention, Hedegaard et al.
2025): `softmax(Q̃ Kᵀ) V` over the sliding window is kept per landmark row as a
log-sum-exp aggregate in a segment tree over a ring of the window's n keys. A step
writes the arriving key's leaf (it replaces the leaving key's) and re-combines its
log2(n) ancestors; the root is the window's aggregate. Nothing is subtracted, so logits
of any size neither overflow nor cancel, and nothing drifts.

- `landmarks="fixed"`: Q̃, K̃ are constants (variables collection "landmarks", e.g. from
  `fit_landmarks`); pinv(softmax(Q̃ K̃ᵀ)) is computed once in `init_state`. A step costs
  O(m·d·log n + m²) per head, whatever n (the paper's O(m·d) up to the tree's log n).
- `landmarks="updated"`: every l = n/m steps a new landmark pair (the means of the last
  l scaled queries and keys) replaces the oldest, the tree's landmark rows and the
  pseudo-inverse are recomputed (O(n·m·d) once per l steps); at those steps the output
  equals offline Nyström on the window, between them it uses the current landmarks.
- `retroactive=True` returns all n rows of the window each step, else the newest row.

Both continual forms keep the cojax layer contract through `NystromLayer`
(`co.NystromLayer(module)` is a cojax layer: `forward`, `init_state`, `step`, `delay`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cojax.core import (
    Array,
    Params,
    advance_counter,
    as_spec,
    check_array,
    check_config,
    is_int_at_least,
    new_counter,
    zero_unless,
)
from cojax.flax_bridge import FlaxLayer
from cojax.layers.attention import Aggregate, check_window_clip, combine

LANDMARK_MODES = ("fixed", "updated")

# --------------------------------------------------------------------------- maths


def segment_matrix(n: int, m: int) -> np.ndarray:
    """`(m, n)` averaging matrix of m contiguous segments; the first n mod m segments
    take ⌈n/m⌉ tokens, the others ⌊n/m⌋."""
    if not 1 <= m <= n:
        raise ValueError(f"segment_matrix: need 1 <= m <= n segments, got m={m} for n={n}.")
    sizes = [n // m + (i < n % m) for i in range(m)]
    out = np.zeros((m, n), np.float32)
    start = 0
    for i, size in enumerate(sizes):
        out[i, start : start + size] = 1.0 / size
        start += size
    return out


def segment_means(x: Array, m: int) -> Array:
    """Landmarks of `x` `(n, H, d)`: means of m segments, `(H, m, d)`."""
    weights = jnp.asarray(segment_matrix(x.shape[0], m), x.dtype)
    return jnp.einsum("mn,nhd->hmd", weights, x)


def iterative_pinv(a: Array, iterations: int = 6) -> Array:
    """Moore-Penrose pseudo-inverse of `a` `(H, m, m)` by Newton-Schulz-type iteration.

    Z₀ = Aᵀ / (max colsum|A| · max rowsum|A|), the maxima over this stream's heads
    (the reference takes them over the whole batch, coupling streams).
    """
    absolute = jnp.abs(a)
    scale = jnp.max(jnp.sum(absolute, axis=-2)) * jnp.max(jnp.sum(absolute, axis=-1))
    z = jnp.swapaxes(a, -1, -2) / scale
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _softmax_logits(x: Array, y: Array) -> Array:
    """softmax over the last axis of `x · yᵀ` per head: x `(..., r, H, d)` or
    `(H, r, d)`; here both are `(H, r, d)` / `(H, c, d)` -> `(H, r, c)`."""
    return jax.nn.softmax(jnp.einsum("hrd,hcd->hrc", x, y), axis=-1)


def middle_kernel(q_land: Array, k_land: Array, iterations: int) -> Array:
    """pinv(softmax(Q̃ K̃ᵀ)): `(H, m, m)`."""
    return iterative_pinv(_softmax_logits(q_land, k_land), iterations)


def nystrom_with_landmarks(
    q: Array, k: Array, v: Array, q_land: Array, k_land: Array, kernel: Array
) -> Array:
    """softmax(Q K̃ᵀ) · kernel · softmax(Q̃ Kᵀ) V for q `(r, H, d)`, k, v `(n, H, d)`,
    landmarks `(H, m, d)`, kernel `(H, m, m)` -> `(r, H, d)`."""
    left = _softmax_logits(jnp.swapaxes(q, 0, 1), k_land)  # (H, r, m)
    right = _softmax_logits(q_land, jnp.swapaxes(k, 0, 1)) @ jnp.swapaxes(v, 0, 1)  # (H, m, d)
    return jnp.swapaxes(left @ kernel @ right, 0, 1)


def nystrom_attention(q: Array, k: Array, v: Array, m: int, iterations: int = 6) -> Array:
    """Offline Nyström attention with segment-mean landmarks: `(n, H, d)` each ->
    `(n, H, d)`; plain softmax attention when m >= n."""
    n = q.shape[0]
    if m >= n:
        weights = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q, k), axis=-1)
        return jnp.einsum("hqk,khd->qhd", weights, v)
    q_land, k_land = segment_means(q, m), segment_means(k, m)
    return nystrom_with_landmarks(
        q, k, v, q_land, k_land, middle_kernel(q_land, k_land, iterations)
    )


def nystrom_attention_rows(
    q: Array, k: Array, v: Array, m: int, iterations: int = 6, rows: int = -1
) -> Array:
    """Offline Nyström attention `(n, H, d)` -> one row `(H, d)` (`rows` its index):
    the landmarks are those of the whole window, only that query is attended."""
    n = q.shape[0]
    q_row = q[rows][None]
    if m >= n:
        weights = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q_row, k), axis=-1)
        return jnp.einsum("hqk,khd->qhd", weights, v)[0]
    q_land, k_land = segment_means(q, m), segment_means(k, m)
    kernel = middle_kernel(q_land, k_land, iterations)
    return nystrom_with_landmarks(q_row, k, v, q_land, k_land, kernel)[0]


# --------------------------------------------------------------------------- segment tree


def _tree_size(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _leaf(logits: Array, value: Array) -> Aggregate:
    """One key's aggregate for every landmark row: logits `(H, m)`, value `(H, d)`."""
    return Aggregate(
        logits,
        jnp.ones_like(logits),
        jnp.broadcast_to(value[:, None], logits.shape + value.shape[-1:]),
    )


def _empty_tree(size: int, heads: int, m: int, d: int, dtype) -> Aggregate:
    shape = (2 * size, heads, m)
    return Aggregate(
        jnp.full(shape, -jnp.inf, dtype), jnp.zeros(shape, dtype), jnp.zeros((*shape, d), dtype)
    )


def _tree_set(tree: Aggregate, size: int, index: Array, leaf: Aggregate) -> Aggregate:
    """Write leaf `index` and re-combine its ancestors (heap layout, root at node 1).

    The path's siblings are read first (the step does not change them), the new path
    values follow from them, and one scatter writes the path: the writes depend on the
    reads, so XLA updates the tree in place (with a donated state or in lax.scan).
    """
    levels = size.bit_length() - 1
    path = (size + index) >> jnp.arange(levels + 1)  # leaf, parent, …, root (node 1)
    siblings = jax.tree_util.tree_map(lambda t: t[path[:-1] ^ 1], tree)
    values, value = [leaf], leaf
    for level in range(levels):
        value = combine(value, jax.tree_util.tree_map(lambda t, i=level: t[i], siblings))
        values.append(value)
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *values)
    return jax.tree_util.tree_map(
        lambda t, x: t.at[path].set(x, unique_indices=True), tree, stacked
    )


def _tree_build(leaves: Aggregate, size: int) -> Aggregate:
    """A whole tree from `size` leaves `(size, H, m[, d])` (unused leaves empty)."""
    levels = [leaves]
    while levels[-1].m.shape[0] > 1:
        level = levels[-1]
        levels.append(
            combine(*(jax.tree_util.tree_map(lambda t, s=s: t[s::2], level) for s in (0, 1)))
        )
    # heap order: [unused node 0, root, level 1, ..., leaves]
    pad = jax.tree_util.tree_map(lambda t: jnp.zeros_like(t[:1]), leaves)
    ordered = [pad] + levels[::-1]
    return jax.tree_util.tree_map(lambda *ts: jnp.concatenate(ts), *ordered)


def _root_values(tree: Aggregate) -> Array:
    """softmax(Q̃ Kᵀ) V over the keys in the tree: `(H, m, d)`."""
    root = jax.tree_util.tree_map(lambda t: t[1], tree)
    safe = jnp.where(root.sum > 0, root.sum, jnp.ones_like(root.sum))
    return root.values / safe[..., None]


# --------------------------------------------------------------------------- modules


class NystromAttention(nn.Module):
    """Offline multi-head Nyström self-attention on one window: `(n, E)` -> `(n, E)`.

    Dense projections "query", "key", "value", "out" (features E, `use_bias`); m =
    `num_landmarks` segment-mean landmarks; `pinv_iterations` of the pseudo-inverse.
    """

    embed_dim: int
    num_heads: int
    num_landmarks: int
    pinv_iterations: int = 6
    use_bias: bool = True

    def setup(self):
        _check_attention(self)
        dense = lambda name: nn.Dense(self.embed_dim, use_bias=self.use_bias, name=name)  # noqa: E731
        self.query, self.key, self.value, self.out = (
            dense(n) for n in ("query", "key", "value", "out")
        )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def project(self, x: Array) -> tuple[Array, Array, Array]:
        """`x (..., E)` -> q, k, v `(..., H, d)`; q and k scaled by d^(-1/4)."""
        shape = x.shape[:-1] + (self.num_heads, self.head_dim)
        scale = self.head_dim**-0.25
        q, k, v = (f(x).reshape(shape) for f in (self.query, self.key, self.value))
        return q * scale, k * scale, v

    def merge(self, o: Array) -> Array:
        """Heads `(..., H, d)` -> output projection `(..., E)`."""
        return self.out(o.reshape(o.shape[:-2] + (self.embed_dim,)))

    def __call__(self, window: Array) -> Array:
        check_array(self, window, ndim=2, channels=self.embed_dim, what="window", layout="(n, E)")
        q, k, v = self.project(window)
        return self.merge(nystrom_attention(q, k, v, self.num_landmarks, self.pinv_iterations))


def _check_attention(module: Any) -> None:
    for name in ("embed_dim", "num_heads", "num_landmarks", "pinv_iterations"):
        value = getattr(module, name)
        minimum = 0 if name == "pinv_iterations" else 1
        check_config(
            is_int_at_least(value, minimum),
            module,
            f"{name} must be an int >= {minimum}, got {value!r}.",
        )
    check_config(
        module.embed_dim % module.num_heads == 0,
        module,
        f"embed_dim {module.embed_dim} must be divisible by num_heads {module.num_heads}.",
    )


class FixedState(NamedTuple):
    """Continual Nyström state with fixed landmarks (per head)."""

    tree: Aggregate  # segment tree of softmax(Q̃ Kᵀ) V over the window's keys
    kernel: Array  # (H, m, m) pinv(softmax(Q̃ K̃ᵀ))
    rows: Array  # (n, H, m) softmax(q K̃ᵀ) of the window's queries (ring); (0, H, m)
    # with a single output, which needs only the newest row
    slot: Array  # int32: ring slot of the next token
    count: Array


class UpdatedState(NamedTuple):
    """Continual Nyström state with updated landmarks (per head)."""

    tree: Aggregate
    kernel: Array  # (H, m, m)
    q_land: Array  # (H, m, d) landmark ring
    k_land: Array  # (H, m, d)
    queries: Array  # (n, H, d) ring of the window's scaled queries
    keys: Array  # (n, H, d)
    values: Array  # (n, H, d)
    q_sum: Array  # (H, d) sums over the current segment
    k_sum: Array  # (H, d)
    slot: Array  # int32: ring slot of the next token
    phase: Array  # int32: tokens of the current segment so far
    landmark: Array  # int32: landmark slot replaced next
    count: Array


class ContinualNystromAttention(NystromAttention):
    """Continual multi-head Nyström self-attention over windows of `sequence_len`
    tokens (see the module docstring). Same parameters as `NystromAttention`.

    `__call__(clip (T, E))` -> `(T - n + 1, E)` (`(T - n + 1, n, E)` retroactive): the
    output each step gives. `init_state(frame)` and `step(state, frame)` -> `(state,
    (y, valid))` stream it (call them through `module.apply(..., method=...)`, or wrap
    the module in `NystromLayer`). Fixed landmarks live in the "landmarks" collection
    ("queries", "keys", `(H, m, d)`, in the scaled q / k space).
    """

    sequence_len: int = 1
    landmarks: str = "fixed"
    retroactive: bool = False

    def setup(self):
        super().setup()
        n, m = self.sequence_len, self.num_landmarks
        check_config(isinstance(n, int) and n >= 1, self, f"sequence_len must be >= 1, got {n!r}.")
        check_config(
            self.landmarks in LANDMARK_MODES,
            self,
            f"landmarks must be one of {LANDMARK_MODES}, got {self.landmarks!r}.",
        )
        check_config(
            self.landmarks == "fixed" or (n % m == 0 and m < n),
            self,
            f"updated landmarks need sequence_len a multiple of num_landmarks (and larger), "
            f"got {n} and {m}.",
        )
        if self.landmarks == "fixed":
            shape = (self.num_heads, m, self.head_dim)
            scale = self.head_dim**-0.25
            init = lambda name: self.variable(  # noqa: E731
                "landmarks", name, lambda: scale * jax.random.normal(self.make_rng("params"), shape)
            )
            self.q_land, self.k_land = init("queries"), init("keys")

    # --- static metadata (the window, delay etc. are `co.from_flax`'s to derive) --
    @property
    def segment(self) -> int:
        return self.sequence_len // self.num_landmarks

    # --- clip ------------------------------------------------------------------
    def __call__(self, clip: Array) -> Array:
        n = self.sequence_len
        check_array(self, clip, ndim=2, channels=self.embed_dim, what="clip", layout="(T, E)")
        check_window_clip(self, clip, n)
        q, k, v = self.project(clip)
        T = clip.shape[0]
        ends = np.arange(n - 1, T)
        windows = ends[:, None] - n + 1 + np.arange(n)[None]
        if self.landmarks == "fixed":
            kernel = middle_kernel(self.q_land.value, self.k_land.value, self.pinv_iterations)
            lands = (self.q_land.value, self.k_land.value)

            def one(idx, _):
                rows = idx if self.retroactive else idx[-1:]
                return nystrom_with_landmarks(q[rows], k[idx], v[idx], *lands, kernel)

            out = jax.vmap(one)(jnp.asarray(windows), jnp.asarray(ends))
        else:
            # Landmarks of the latest update step u <= t: the segments of the window
            # ending at u (update steps: t + 1 a multiple of the segment length).
            updates = ends - (ends + 1) % self.segment
            land_windows = updates[:, None] - n + 1 + np.arange(n)[None]

            def one(idx, land_idx):
                q_land, k_land = (
                    segment_means(q[land_idx], self.num_landmarks),
                    segment_means(k[land_idx], self.num_landmarks),
                )
                kernel = middle_kernel(q_land, k_land, self.pinv_iterations)
                rows = idx if self.retroactive else idx[-1:]
                return nystrom_with_landmarks(q[rows], k[idx], v[idx], q_land, k_land, kernel)

            out = jax.vmap(one)(jnp.asarray(windows), jnp.asarray(land_windows))
        out = self.merge(out)
        return out if self.retroactive else out[:, 0]

    # --- streaming -----------------------------------------------------------
    def init_state(self, frame: Any) -> FixedState | UpdatedState:
        check_array(self, frame, ndim=1, channels=self.embed_dim, layout="(E,)")
        dtype = as_spec(frame).dtype
        n, m, H, d = self.sequence_len, self.num_landmarks, self.num_heads, self.head_dim
        size = _tree_size(n)
        tree = _empty_tree(size, H, m, d, dtype)
        zero = jnp.zeros((), jnp.int32)
        if self.landmarks == "fixed":
            kernel = middle_kernel(self.q_land.value, self.k_land.value, self.pinv_iterations)
            rows = jnp.zeros((n if self.retroactive else 0, H, m), dtype)
            return FixedState(
                tree, kernel.astype(dtype), rows, zero, new_counter(self.sequence_len - 1, 1)
            )
        ring = jnp.zeros((n, H, d), dtype)
        land = jnp.zeros((H, m, d), dtype)
        return UpdatedState(
            tree, jnp.zeros((H, m, m), dtype), land, land, ring, ring, ring,
            jnp.zeros((H, d), dtype), jnp.zeros((H, d), dtype), zero, zero, zero, new_counter(self.sequence_len - 1, 1),
        )  # fmt: skip

    def step(self, state: FixedState | UpdatedState, frame: Array):
        check_array(self, frame, ndim=1, channels=self.embed_dim, layout="(E,)")
        q, k, v = self.project(frame)  # (H, d)
        if self.landmarks == "fixed":
            return self._step_fixed(state, q, k, v)
        return self._step_updated(state, q, k, v)

    def _output(self, left: Array, tree: Aggregate, kernel: Array, slot: Array) -> Array:
        """Output rows from their left factors softmax(q K̃ᵀ): the ring `(n, H, m)` of
        the window's rows (retroactive; the newest at `slot`) or the newest `(H, m)`."""
        root = _root_values(tree)  # (H, m, d)
        if self.retroactive:  # n rows: kernel · root once (m²·d), then n·m·d
            ordered = jnp.roll(left, -(slot + 1), axis=0)  # oldest first
            out = jnp.einsum("nhm,hmd->nhd", ordered, kernel @ root)
        else:  # one row: (row · kernel) · root, m² + m·d
            out = jnp.einsum("hm,hmd->hd", jnp.einsum("hk,hkm->hm", left, kernel), root)
        return self.merge(out)

    def _step_fixed(self, state: FixedState, q: Array, k: Array, v: Array):
        n = self.sequence_len
        size = _tree_size(n)
        q_land, k_land = self.q_land.value, self.k_land.value
        logits = jnp.einsum("hmd,hd->hm", q_land, k)
        tree = _tree_set(state.tree, size, state.slot, _leaf(logits, v))
        left = jax.nn.softmax(jnp.einsum("hd,hmd->hm", q, k_land), axis=-1)
        rows = state.rows
        if self.retroactive:
            rows = lax.dynamic_update_index_in_dim(rows, left, state.slot, 0)
        y = self._output(rows if self.retroactive else left, tree, state.kernel, state.slot)
        valid, count = advance_counter(state.count, self.sequence_len - 1, 1)
        new = FixedState(tree, state.kernel, rows, (state.slot + 1) % n, count)
        return new, (zero_unless(valid, y), valid)

    def _step_updated(self, state: UpdatedState, q: Array, k: Array, v: Array):
        n, m, seg = self.sequence_len, self.num_landmarks, self.segment
        size = _tree_size(n)
        write = lambda ring, x: lax.dynamic_update_index_in_dim(ring, x, state.slot, 0)  # noqa: E731
        queries, keys, values = (
            write(state.queries, q),
            write(state.keys, k),
            write(state.values, v),
        )
        q_sum, k_sum = state.q_sum + q, state.k_sum + k
        complete = state.phase == seg - 1

        def replace(_):
            q_land = state.q_land.at[:, state.landmark].set(q_sum / seg)
            k_land = state.k_land.at[:, state.landmark].set(k_sum / seg)
            # The window's keys in ring order: leaf j holds the key of slot j.
            logits = jnp.einsum("hmd,nhd->nhm", q_land, keys)
            leaves = _leaf_rows(logits, values, size)
            return (
                _tree_build(leaves, size),
                middle_kernel(q_land, k_land, self.pinv_iterations),
                q_land,
                k_land,
            )

        def keep(_):
            logits = jnp.einsum("hmd,hd->hm", state.q_land, k)
            return (
                _tree_set(state.tree, size, state.slot, _leaf(logits, v)),
                state.kernel,
                state.q_land,
                state.k_land,
            )

        tree, kernel, q_land, k_land = lax.cond(complete, replace, keep, None)
        # Left factors softmax(q K̃ᵀ): every row's (they change with K̃) or the newest.
        rows = queries if self.retroactive else queries[state.slot]
        left = jax.nn.softmax(jnp.einsum("...hd,hmd->...hm", rows, k_land), axis=-1)
        y = self._output(left, tree, kernel, state.slot)
        valid, count = advance_counter(state.count, self.sequence_len - 1, 1)
        zero = jnp.zeros_like(q_sum)
        new = UpdatedState(
            tree, kernel, q_land, k_land, queries, keys, values,
            jnp.where(complete, zero, q_sum), jnp.where(complete, zero, k_sum),
            (state.slot + 1) % n, jnp.where(complete, 0, state.phase + 1),
            jnp.where(complete, (state.landmark + 1) % m, state.landmark), count,
        )  # fmt: skip
        return new, (zero_unless(valid, y), valid)


def _leaf_rows(logits: Array, values: Array, size: int) -> Aggregate:
    """Leaves for all ring slots: logits `(n, H, m)`, values `(n, H, d)`, padded to
    `size` with empty leaves."""
    n = logits.shape[0]
    leaves = Aggregate(
        logits,
        jnp.ones_like(logits),
        jnp.broadcast_to(values[:, :, None], logits.shape + values.shape[-1:]),
    )
    if size == n:
        return leaves
    pad = _empty_tree(size - n, *logits.shape[1:], values.shape[-1], logits.dtype)
    pad = jax.tree_util.tree_map(lambda t: t[: size - n], pad)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), leaves, pad)


# --------------------------------------------------------------------------- cojax layer


# `NystromLayer(module)` is `co.from_flax(module)`: the general bridge for any continual
# Flax module (see `cojax.flax_bridge.FlaxLayer`).
NystromLayer = FlaxLayer


# --------------------------------------------------------------------------- landmarks


def fit_landmarks(
    module: ContinualNystromAttention,
    variables: Params,
    tokens: Array,
    seed: int = 0,
) -> Params:
    """Fixed landmarks for `module` from training tokens, by k-means (scikit-learn).

    `tokens` `(..., E)`: inputs of this attention layer seen in training (any leading
    shape, flattened). Each head's scaled queries and keys are clustered into
    `num_landmarks` centres. Returns `variables` with a "landmarks" collection
    ({"queries", "keys"} `(H, m, d)`), for a module with `landmarks="fixed"`.

    The paper's schedule: train with `landmarks="updated"`, fit the landmarks on the
    training tokens with this function, then fine-tune with `landmarks="fixed"`
    (`with_fixed_landmarks(module)`; the parameters carry over unchanged).
    """
    try:
        from sklearn.cluster import KMeans
    except ImportError as error:  # an optional dependency
        raise ImportError(
            "fit_landmarks needs scikit-learn: pip install 'cojax[fit]' (or scikit-learn)."
        ) from error
    flat = jnp.reshape(jnp.asarray(tokens), (-1, module.embed_dim))
    m = module.num_landmarks
    check_config(
        flat.shape[0] >= m,
        module,
        f"fit_landmarks needs at least num_landmarks = {m} tokens, got {flat.shape[0]}.",
    )
    projections = NystromAttention(module.embed_dim, module.num_heads, m, use_bias=module.use_bias)
    q, k, _ = projections.apply({"params": variables["params"]}, flat, method="project")

    def centres(x: Array) -> np.ndarray:
        x = np.asarray(x, np.float64)  # (S, H, d)
        fits = [
            KMeans(n_clusters=m, n_init=4, random_state=seed).fit(x[:, h]).cluster_centers_
            for h in range(x.shape[1])
        ]
        return np.stack(fits).astype(np.float32)  # (H, m, d)

    landmarks = {"queries": jnp.asarray(centres(q)), "keys": jnp.asarray(centres(k))}
    return {**variables, "landmarks": landmarks}


def with_fixed_landmarks(module: ContinualNystromAttention) -> ContinualNystromAttention:
    """The same attention with `landmarks="fixed"` (for fine-tuning after training
    with updated landmarks; the parameters are unchanged)."""
    return module.clone(landmarks="fixed")
