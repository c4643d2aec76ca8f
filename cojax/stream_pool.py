"""A stream pool: many live streams joining and leaving, served by one compiled step.

`StreamPool(layer, params, capacity, frame)` holds `capacity` stream slots (one
batched state, leading axis = slot) and one jit-compiled tick. Callers name streams by
their own ids (any hashable): `open(id)` takes a free slot (its state is reset at the
next tick: the stream's *start* flag), `push({id: frame, ...})` steps every slot at
once and returns `{id: (y, valid)}` for the streams that sent a frame (`valid`: the
*ready* flag, False during a stream's warm-up), `close(id)` frees the slot (the
stream's *end*). Streams without a frame in a tick are masked: their state is kept as
it is. The compiled tick depends only on the capacity, so any mix of arrivals runs
without retracing; the state buffers are donated to it (updated in place, see
`co.donating_jit`). `grow(n)`
enlarges the pool once (one new compilation), carrying every open stream's state.
`push_block({id: frames (n, ...)}, k)` is a tick of up to k frames per stream
(`layer.step_block`), equal to n `push` ticks for each stream.

`pool.save(directory, step)` checkpoints the params, every slot's state and the open
streams (orbax, atomic; `cojax.checkpoint`); `StreamPool.restore(directory, layer,
frame)` rebuilds the pool in a fresh process and it continues bit-identically.
Restoring into another layer or configuration raises a ValueError naming it.

Semantics match a serving system's sequence batcher (start / end / ready per stream);
a stream's outputs equal those of the same frames fed alone through `layer.step`.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cojax.compiler import compiler_options, donating_jit
from cojax.core import Layer, Params, PyTree, State, as_int, as_spec, layer_name, select_tree
from cojax.streams import replicate, shard_streams


def _slot_mask(flags: jax.Array, leaf: jax.Array) -> jax.Array:
    return flags.reshape(flags.shape + (1,) * (leaf.ndim - 1))


class StreamPool:
    """A fixed-capacity, jit-compiled batch of stream slots (see the module docstring).

    `frame`: ONE stream's frame `(*spatial, C)` (array or ShapeDtypeStruct; a pytree
    for layers that take one). `mesh`: a `jax.sharding.Mesh` with a "streams" axis
    (`co.streams_mesh()`): the slots are split over its devices, params replicated
    (capacity a multiple of the axis size). `traces` counts compilations of the tick
    (1 after the first `push`, +1 per `grow`). `compiler_options`: what the tick is
    compiled with, `co.compiler_options` of the layer's step (`cojax.compiler`).
    """

    def __init__(
        self, layer: Layer, params: Params, capacity: int, frame: PyTree, mesh: Any = None
    ) -> None:
        self.layer, self.mesh = layer, mesh
        self.params = params if mesh is None else replicate(params, mesh)
        self.frame_spec = jax.tree_util.tree_map(as_spec, frame)
        self._capacity = as_int(layer, "capacity", capacity, 1)
        self._fresh = layer.init_state(params, self.frame_spec)  # one stream's start state
        self._states = self._place(self._fresh_states(self._capacity))
        self._slots: dict[Hashable, int] = {}
        self._free = list(range(self._capacity))
        self._reset = np.zeros(self._capacity, bool)
        self.traces = 0
        # XLA:CPU options for the layer's convolutions (`cojax.compiler`), from one step.
        self.compiler_options = compiler_options(layer.step, params, self._fresh, self.frame_spec)
        # The state is donated leaf by leaf (`co.donating_jit`: not a conv's partial sums).
        jit = functools.partial(
            donating_jit, state_argnum=1, compiler_options=self.compiler_options
        )
        self._tick = jit(self._tick_fn)
        self._block_tick = jit(self._block_tick_fn)

    # ------------------------------------------------------------------ introspection

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ids(self) -> list[Hashable]:
        """The open streams, in the order they were opened."""
        return list(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, stream_id: Hashable) -> bool:
        return stream_id in self._slots

    def slot(self, stream_id: Hashable) -> int:
        return self._slot(stream_id, "slot")

    @property
    def states(self) -> State:
        """The batched state of all slots (leading axis = slot)."""
        return self._states

    # ------------------------------------------------------------------ lifecycle

    def open(self, stream_id: Hashable) -> int:
        """Start a stream in a free slot (its state is fresh at its first frame);
        returns the slot."""
        if stream_id in self._slots:
            raise ValueError(f"StreamPool: stream {stream_id!r} is already open.")
        if not self._free:
            raise RuntimeError(
                f"StreamPool: all {self._capacity} slots are in use; close a stream or "
                f"grow(capacity) the pool."
            )
        slot = self._free.pop(0)
        self._slots[stream_id] = slot
        self._reset[slot] = True
        return slot

    def close(self, stream_id: Hashable) -> None:
        """End a stream: its slot is free for the next `open` (which resets it)."""
        slot = self._slot(stream_id, "close")
        del self._slots[stream_id]
        self._reset[slot] = False
        self._free.append(slot)
        self._free.sort()

    def grow(self, capacity: int) -> None:
        """Enlarge the pool to `capacity` slots, keeping every open stream's state and
        slot (the tick compiles once more for the new size)."""
        capacity = as_int(self.layer, "capacity", capacity, 1)
        if capacity < self._capacity:
            raise ValueError(
                f"StreamPool: grow to {capacity} slots, fewer than the {self._capacity} it has."
            )
        extra = capacity - self._capacity
        if extra == 0:
            return
        more = self._fresh_states(extra)
        self._states = self._place(
            jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), self._states, more)
        )
        self._free += list(range(self._capacity, capacity))
        self._reset = np.concatenate([self._reset, np.zeros(extra, bool)])
        self._capacity = capacity

    # ------------------------------------------------------------------ stepping

    def push(self, frames: Mapping[Hashable, Any]) -> dict[Hashable, tuple[Any, bool]]:
        """One tick: a frame for each stream that has one (`{id: frame}`); returns
        `{id: (y, valid)}` for those streams (NumPy values). Absent streams keep their
        state; unknown ids raise."""
        present = np.zeros(self._capacity, bool)
        batch = jax.tree_util.tree_map(
            lambda s: np.zeros((self._capacity, *s.shape), s.dtype), self.frame_spec
        )
        slots = {}
        for stream_id, frame in frames.items():
            slot = self._slot(stream_id, "push")
            self._write(batch, slot, frame, stream_id)
            present[slot] = True
            slots[stream_id] = slot
        batch, present, reset = self._place((batch, present, self._reset.copy()))
        self._states, ys, valid = self._tick(self.params, self._states, batch, present, reset)
        self._reset[:] = False
        ys = jax.tree_util.tree_map(np.asarray, ys)
        valid = np.asarray(valid)
        return {
            i: (jax.tree_util.tree_map(lambda a, s=s: a[s], ys), bool(valid[s]))
            for i, s in slots.items()
        }

    def push_block(
        self, blocks: Mapping[Hashable, Any], k: int | None = None
    ) -> dict[Hashable, tuple[Any, np.ndarray]]:
        """One tick of up to `k` frames per stream (`{id: frames (n, *frame)}`, n <= k,
        default k the longest block): every slot steps its block at once with
        `layer.step_block` (temporal kernels see all k frames as one clip), streams with
        fewer frames are masked after theirs. Returns `{id: (ys (n, ...), valid (n,))}`,
        what n `push` ticks would give that stream. One compilation per distinct k."""
        frames_of = {i: self._block(i, f) for i, f in blocks.items()}
        lengths = {i: jax.tree_util.tree_leaves(f)[0].shape[0] for i, f in frames_of.items()}
        k = max(lengths.values(), default=1) if k is None else as_int(self.layer, "k", k, 1)
        if any(n > k for n in lengths.values()):
            raise ValueError(f"StreamPool.push_block: a block is longer than k = {k} frames.")
        present = np.zeros((self._capacity, k), bool)
        batch = jax.tree_util.tree_map(
            lambda s: np.zeros((self._capacity, k, *s.shape), s.dtype), self.frame_spec
        )
        slots = {}
        for stream_id, frames in frames_of.items():
            slot, n = self._slot(stream_id, "push_block"), lengths[stream_id]
            for target, leaf in zip(
                jax.tree_util.tree_leaves(batch), jax.tree_util.tree_leaves(frames)
            ):
                target[slot, :n] = leaf
            present[slot, :n] = True
            slots[stream_id] = slot
        batch, present, reset = self._place((batch, present, self._reset.copy()))
        self._states, ys, valid = self._block_tick(self.params, self._states, batch, present, reset)
        self._reset[:] = False
        ys = jax.tree_util.tree_map(np.asarray, ys)
        valid = np.asarray(valid)
        return {
            i: (
                jax.tree_util.tree_map(lambda a, s=s, n=lengths[i]: a[s, :n], ys),
                valid[s, : lengths[i]],
            )
            for i, s in slots.items()
        }

    def _block(self, stream_id: Hashable, frames: Any) -> Any:
        """Check one stream's block `(n, *frame)` against the frame spec."""
        self._slot(stream_id, "push_block")
        leaves, tree = jax.tree_util.tree_flatten(frames)
        specs, spec_tree = jax.tree_util.tree_flatten(self.frame_spec)
        leaves = [np.asarray(a) for a in leaves]
        n = leaves[0].shape[0] if leaves and leaves[0].ndim else None
        if tree != spec_tree or any(
            a.shape != (n, *s.shape) or a.dtype != s.dtype for a, s in zip(leaves, specs)
        ):
            raise ValueError(
                f"StreamPool.push_block ({layer_name(self.layer)}): stream {stream_id!r} sent "
                f"{[f'{a.dtype}{list(a.shape)}' for a in leaves]}, expected frames "
                f"(n, *frame) with frame {[f'{s.dtype}{list(s.shape)}' for s in specs]}."
            )
        return jax.tree_util.tree_unflatten(tree, leaves)

    def _block_tick_fn(self, params, states, frames, present, reset):
        self.traces += 1
        states = self._reset_slots(states, reset)
        states, (ys, valid) = jax.vmap(self.layer.step_block_masked, in_axes=(None, 0, 0, 0))(
            params, states, frames, present
        )
        return states, ys, jnp.logical_and(valid, present)

    def _reset_slots(self, states, reset):
        """The slots marked in `reset` back to a fresh stream's state."""
        return jax.tree_util.tree_map(
            lambda s, f: jnp.where(_slot_mask(reset, s), f[None], s).astype(s.dtype),
            states,
            self._fresh,
        )

    def _tick_fn(self, params, states, frames, present, reset):
        self.traces += 1  # runs when the tick is traced, not when it runs
        states = self._reset_slots(states, reset)
        stepped, (ys, valid) = jax.vmap(self.layer.step, in_axes=(None, 0, 0))(
            params, states, frames
        )
        states = jax.vmap(select_tree)(present, stepped, states)
        return states, ys, jnp.logical_and(valid, present)

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path, step: int, max_to_keep: int | None = None) -> None:
        """Checkpoint the params, all slot states and the open streams (ids must be
        str or int) as step `step` of `directory` (atomically)."""
        from cojax.checkpoint import save_checkpoint

        for stream_id in self._slots:
            if not isinstance(stream_id, (str, int)) or isinstance(stream_id, bool):
                raise TypeError(
                    f"StreamPool.save: stream ids must be str or int to be saved, got "
                    f"{stream_id!r}."
                )
        metadata = {
            "capacity": self._capacity,
            "streams": [[i, s] for i, s in self._slots.items()],
            "reset": self._reset.tolist(),
        }
        tree = {"params": self.params, "states": self._states}
        save_checkpoint(
            directory, step, tree, layer=self.layer, metadata=metadata, max_to_keep=max_to_keep
        )

    @classmethod
    def restore(
        cls,
        directory: str | Path,
        layer: Layer,
        frame: PyTree,
        step: int | None = None,
        mesh: Any = None,
    ) -> StreamPool:
        """The pool saved in `directory` (step `step`, default the latest), for `layer`
        and one stream's `frame`; raises if the checkpoint is of another layer,
        configuration or frame."""
        from cojax.checkpoint import read_metadata, restore_checkpoint

        step, meta = read_metadata(directory, step)
        capacity = meta["user"]["capacity"]
        params = jax.eval_shape(layer.init, jax.random.PRNGKey(0))
        spec = jax.tree_util.tree_map(as_spec, frame)
        one = jax.eval_shape(layer.init_state, params, spec)
        states = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct((capacity, *a.shape), a.dtype), one
        )
        tree, user = restore_checkpoint(
            directory, {"params": params, "states": states}, step=step, layer=layer
        )
        pool = cls(layer, tree["params"], capacity, frame, mesh)
        pool._states = pool._place(tree["states"])
        pool._slots = {i: s for i, s in user["streams"]}
        pool._free = sorted(set(range(capacity)) - set(pool._slots.values()))
        pool._reset = np.asarray(user["reset"], bool)
        return pool

    # ------------------------------------------------------------------ helpers

    def _fresh_states(self, n: int) -> State:
        # a real copy per slot (not a broadcast view), so donation can reuse it
        return jax.tree_util.tree_map(
            lambda a: jnp.tile(a[None], (n,) + (1,) * a.ndim), self._fresh
        )

    def _place(self, tree: PyTree) -> PyTree:
        """Per-slot arrays on the mesh (split over its streams axis), if there is one."""
        return tree if self.mesh is None else shard_streams(tree, self.mesh)

    def _slot(self, stream_id: Hashable, what: str) -> int:
        try:
            return self._slots[stream_id]
        except KeyError:
            raise KeyError(
                f"StreamPool.{what}: stream {stream_id!r} is not open (open it first; open: "
                f"{list(self._slots)[:10]}{'…' if len(self._slots) > 10 else ''})."
            ) from None

    def _write(self, batch, slot: int, frame: Any, stream_id: Hashable) -> None:
        leaves, tree = jax.tree_util.tree_flatten(frame)
        specs, spec_tree = jax.tree_util.tree_flatten(self.frame_spec)
        if tree != spec_tree:
            raise ValueError(
                f"StreamPool ({layer_name(self.layer)}): stream {stream_id!r}'s frame has "
                f"structure {tree}, expected {spec_tree}."
            )
        for target, leaf, spec in zip(jax.tree_util.tree_leaves(batch), leaves, specs):
            leaf = np.asarray(leaf)
            if leaf.shape != spec.shape or leaf.dtype != spec.dtype:
                raise ValueError(
                    f"StreamPool ({layer_name(self.layer)}): stream {stream_id!r} sent a "
                    f"frame {leaf.dtype}{list(leaf.shape)}, expected "
                    f"{spec.dtype}{list(spec.shape)}."
                )
            target[slot] = leaf
