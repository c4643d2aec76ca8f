"""Streams and data-parallel training across processes (hosts) with `jax.distributed`.

Every process holds its own share of the streams of one global device mesh: it feeds
its streams' frames (`co.shard_local_streams`), all processes step together in one
jitted `co.step_streams`, and `co.gather_streams` collects every stream's outputs.
Each process also serves its streams with its own `co.StreamPool` over its local
devices. Then the same mesh trains the network in clip mode, data parallel: each process
holds its part of the batch, the params are replicated, and BatchNorm normalises with
the statistics of the global batch (the jitted step computes over the global arrays;
XLA inserts the cross-process reductions).

On two hosts (the coordinator's address is host 0's; run the same command on each,
with its own --process-id):

    python examples/multihost.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
    python examples/multihost.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1

On one machine, two processes with two CPU devices each (tests/test_multihost.py does
this and compares with one process):

    export XLA_FLAGS=--xla_force_host_platform_device_count=2
    python examples/multihost.py --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0 &
    python examples/multihost.py --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 1

Process 0 writes the gathered outputs and the trained params to `--out` (.npz).
"""

from __future__ import annotations

import argparse

import jax

STREAMS, FRAMES, BATCH, CLIP_FRAMES, TRAIN_STEPS = 8, 12, 8, 10, 3


def network():
    import cojax as co

    return co.Sequential(
        co.Conv1d(3, 8, 3),
        co.BatchNorm1d(8),
        co.ReLU(),
        co.Residual(co.Conv1d(8, 8, 3, padding=1)),
        co.Conv1d(8, 4, 2, stride=2),
    )


def data(layer):
    """The global frames, clips and targets (every process draws the same)."""
    import numpy as np

    rng = np.random.default_rng(0)
    frames = rng.standard_normal((FRAMES, STREAMS, 3)).astype(np.float32)
    clips = rng.standard_normal((BATCH, CLIP_FRAMES, 3)).astype(np.float32)
    targets = rng.standard_normal((BATCH, layer.output_length(CLIP_FRAMES), 4))
    targets = targets.astype(np.float32)
    return frames, clips, targets


def run(mesh) -> dict:
    """Stream and train on `mesh` (None: one device, no sharding); the results as numpy."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    import cojax as co
    from cojax.demo_models import init_random

    layer = network()
    params = init_random(layer, jax.random.PRNGKey(0))
    frames, clips, targets = data(layer)
    share = slice(None)
    if mesh is not None:
        n = jax.process_count()
        per = STREAMS // n
        share = slice(jax.process_index() * per, (jax.process_index() + 1) * per)

    def local(a):  # this process's streams / clips, placed on the global mesh
        return a if mesh is None else co.shard_local_streams(a[share], mesh)

    place_params = (lambda p: p) if mesh is None else (lambda p: co.replicate(p, mesh))

    # Streaming: each process feeds its own streams' frames.
    step = jax.jit(lambda p, s, x: co.step_streams(layer, p, s, x), donate_argnums=1)
    per_process = STREAMS if mesh is None else STREAMS // jax.process_count()
    states = co.init_streams(layer, params, jnp.zeros(3), per_process)
    states = states if mesh is None else co.shard_local_streams(states, mesh)
    stream_params = place_params(params)
    ys, valid = [], []
    for t in range(FRAMES):
        states, (y, v) = step(stream_params, states, local(frames[t]))
        y, v = co.gather_streams((y, v))
        ys.append(y)
        valid.append(v)

    # A stream pool per process, over the process's own devices, serving its streams.
    local_mesh = None if mesh is None else co.streams_mesh(jax.local_devices())
    pool = co.StreamPool(layer, params, per_process, jnp.zeros(3), mesh=local_mesh)
    ids = range(STREAMS)[share]
    for i in ids:
        pool.open(i)
    pool_ys = []
    for t in range(FRAMES):
        out = pool.push({i: frames[t, i] for i in ids})
        pool_ys.append(np.stack([np.asarray(out[i][0]) for i in ids]))
    pool_ys = np.stack(pool_ys)  # (FRAMES, this process's streams, ...)
    if mesh is not None:
        from jax.experimental import multihost_utils

        every = multihost_utils.process_allgather(pool_ys)  # (processes, FRAMES, ...)
        pool_ys = np.concatenate(list(every), axis=1)

    # Data-parallel clip-mode training: BatchNorm statistics over the global batch.
    # SGD, not Adam: the conv bias before BatchNorm has a gradient of pure round-off,
    # which Adam would scale up to a full step (different in every device layout).
    tx = co.masked_optimizer(optax.sgd(0.1, momentum=0.9), layer, params)

    def loss_fn(p, x, target, key):
        out, moved = co.train_forward(layer, p, x, key)
        return jnp.mean((out - target) ** 2), moved

    @jax.jit
    def train_step(p, opt_state, x, target, key):
        (loss, moved), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, target, key)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(moved, updates), opt_state, loss

    p = place_params(params)
    opt_state = tx.init(p)
    losses = []
    for i in range(TRAIN_STEPS):
        p, opt_state, loss = train_step(
            p, opt_state, local(clips), local(targets), jax.random.PRNGKey(i)
        )
        losses.append(co.gather_streams(loss))
    leaves = co.gather_streams(jax.tree_util.tree_leaves(p))
    return {
        "ys": np.stack(ys),
        "valid": np.stack(valid),
        "pool_ys": pool_ys,
        "losses": np.asarray(losses),
        **{f"param_{i}": a for i, a in enumerate(leaves)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default="127.0.0.1:1234")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--out", default=None, help="npz of the results (process 0)")
    args = parser.parse_args()
    mesh = None
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
        import cojax as co

        mesh = co.streams_mesh()  # every process's devices, in process order
    results = run(mesh)
    print(
        f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.device_count()} devices, final loss {results['losses'][-1]:.6f}"
    )
    if args.out and jax.process_index() == 0:
        import numpy as np

        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
