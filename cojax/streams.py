"""Many streams at once: vmap a layer's step over N streams, with per-stream resets,
and streams sharded over a device mesh (`shard_streams`), across hosts too: with
`jax.distributed` each process holds its own streams (`shard_local_streams`) of one
global mesh, and `gather_streams` collects every process's results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cojax.core import Array, Layer, Params, PyTree, State, as_int, as_spec

STREAMS_AXIS = "streams"


def init_streams(layer: Layer, params: Params, frame: PyTree, num_streams: int) -> State:
    """Fresh states for `num_streams` streams (leading axis N on every leaf).

    `frame` describes ONE stream's frame `(*spatial, C)` (array or ShapeDtypeStruct).
    """
    num_streams = as_int(layer, "num_streams", num_streams, 1)
    one = layer.init_state(params, as_spec(frame))
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (num_streams, *a.shape)), one)


def _reset_mask(reset: Array, leaf: Array) -> Array:
    return reset.reshape(reset.shape + (1,) * (leaf.ndim - 1))


def step_streams(
    layer: Layer,
    params: Params,
    states: State,
    frames: PyTree,
    reset: Array | None = None,
) -> tuple[State, tuple[PyTree, Array]]:
    """One step of N streams: `frames` `(N, *spatial, C)` -> `(states, (ys, valid))`.

    `reset` (bool `(N,)`) re-initialises the selected streams' state before this
    frame, so the frame starts a new stream there; the other streams are untouched.
    Pure and jit-able; params are shared by all streams.
    """
    n = jax.tree_util.tree_leaves(frames)[0].shape[0]
    if reset is not None:
        reset = jnp.asarray(reset)
        if reset.shape != (n,) or reset.dtype != jnp.bool_:
            raise ValueError(
                f"step_streams: reset must be a bool array of shape ({n},), "
                f"got {reset.dtype}{tuple(reset.shape)}."
            )
        spec = jax.tree_util.tree_map(lambda f: jax.ShapeDtypeStruct(f.shape[1:], f.dtype), frames)
        fresh = layer.init_state(params, spec)
        states = jax.tree_util.tree_map(
            lambda s, f: jnp.where(_reset_mask(reset, s), f[None], s).astype(s.dtype), states, fresh
        )
    return jax.vmap(layer.step, in_axes=(None, 0, 0))(params, states, frames)


def streams_mesh(devices=None, axis: str = STREAMS_AXIS) -> Mesh:
    """A 1-D mesh over `devices` (default: all) with one axis named `axis`."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def shard_streams(tree: PyTree, mesh: Mesh, axis: str = STREAMS_AXIS) -> PyTree:
    """Place a per-stream tree (states or frames, leading axis = stream) on `mesh`,
    streams split over `axis`: `NamedSharding(mesh, P(axis))`. The number of streams
    must be a multiple of the axis size."""
    size = mesh.shape[axis]

    def put(a):
        a = jnp.asarray(a)
        if a.ndim == 0 or a.shape[0] % size:
            raise ValueError(
                f"shard_streams: a leaf of shape {tuple(a.shape)} cannot be split over "
                f"{size} devices along its leading (stream) axis; use a multiple of {size} "
                "streams."
            )
        return jax.device_put(a, NamedSharding(mesh, PartitionSpec(axis)))

    return jax.tree_util.tree_map(put, tree)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a tree (e.g. params) whole on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_local_streams(tree: PyTree, mesh: Mesh, axis: str = STREAMS_AXIS) -> PyTree:
    """This process's streams (leading axis = its local streams) as the process's part
    of global arrays sharded over `axis` of `mesh` (multi-host, after
    `jax.distributed.initialize`): the global arrays hold every process's streams in
    process order. On one process this is `shard_streams`. Every process passes the
    same number of streams, a multiple of its devices on the mesh."""
    size = mesh.shape[axis]
    local = size // jax.process_count()
    sharding = NamedSharding(mesh, PartitionSpec(axis))

    def put(a):
        a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] % local:
            raise ValueError(
                f"shard_local_streams: a leaf of shape {tuple(a.shape)} cannot be split over "
                f"this process's {local} devices along its leading (stream) axis; use a "
                f"multiple of {local} streams per process."
            )
        return jax.make_array_from_process_local_data(sharding, a)

    return jax.tree_util.tree_map(put, tree)


def gather_streams(tree: PyTree) -> PyTree:
    """Every process's streams of sharded (possibly multi-host) arrays, as numpy
    arrays on every process (`process_allgather`); replicated leaves come back whole."""
    from jax.experimental import multihost_utils

    def get(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.sharding.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(get, tree)
