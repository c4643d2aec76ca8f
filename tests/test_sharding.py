"""Streams sharded over a device mesh: `co.step_streams` on `shard_streams` states and
a `StreamPool(mesh=...)` equal the unsharded runs. Run in a subprocess with 8
host-platform CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`,
which must be set before jax starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import cojax as co
    from cojax.demo_models import init_random
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    layer = co.Sequential(co.Conv1d(3, 4, 3), co.BatchNorm1d(4), co.ReLU(),
                          co.Residual(co.Conv1d(4, 4, 3, padding=1)), co.Conv1d(4, 2, 2, stride=2))
    params = init_random(layer, jax.random.PRNGKey(0))
    frames = np.random.default_rng(0).standard_normal((10, 16, 3)).astype(np.float32)
    step = jax.jit(lambda p, s, x: co.step_streams(layer, p, s, x), donate_argnums=1)

    def run(states, params, place):
        ys = []
        for x in frames:
            states, (y, valid) = step(params, states, place(x))
            ys.append(np.asarray(y))
        return states, np.stack(ys)

    _, plain = run(co.init_streams(layer, params, frames[0, 0], 16), params, lambda x: x)
    mesh = co.streams_mesh()
    states = co.shard_streams(co.init_streams(layer, params, frames[0, 0], 16), mesh)
    states, sharded = run(states, co.replicate(params, mesh), lambda x: co.shard_streams(x, mesh))
    leaf = jax.tree_util.tree_leaves(states)[0]
    report = {"step_streams_max_diff": float(np.abs(plain - sharded).max()),
              "state_devices": len(leaf.sharding.device_set),
              "state_spec": str(leaf.sharding.spec)}

    rng = np.random.default_rng(1)
    pools = [co.StreamPool(layer, params, 8, jnp.zeros(3)),
             co.StreamPool(layer, params, 8, jnp.zeros(3), mesh=mesh)]
    diff, compared = 0.0, 0
    for t in range(300):
        if t == 150:
            for pool in pools:
                pool.grow(16)
        if len(pools[0]) < pools[0].capacity and rng.random() < 0.3:
            for pool in pools:
                pool.open(t)
        if len(pools[0]) and rng.random() < 0.05:
            gone = pools[0].ids[rng.integers(len(pools[0]))]
            for pool in pools:
                pool.close(gone)
        sent = {i: rng.standard_normal(3).astype(np.float32) for i in pools[0].ids if rng.random() < 0.7}
        a, b = (pool.push(sent) for pool in pools)
        for i in sent:
            assert a[i][1] == b[i][1]
            diff = max(diff, float(np.abs(a[i][0] - b[i][0]).max()))
            compared += 1
    leaf = jax.tree_util.tree_leaves(pools[1].states)[0]
    report.update(pool_max_diff=diff, pool_compared=compared,
                  pool_state_devices=len(leaf.sharding.device_set), pool_traces=pools[1].traces)
    try:
        co.StreamPool(layer, params, 12, jnp.zeros(3), mesh=mesh)
    except ValueError as error:
        report["bad_capacity_error"] = str(error)
    print(json.dumps(report))
    """
)


@pytest.mark.slow
def test_sharded_streams_equal_the_unsharded_run(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["state_devices"] == 8 and "streams" in report["state_spec"]
    assert report["step_streams_max_diff"] <= 1e-6
    assert report["pool_state_devices"] == 8 and report["pool_traces"] == 2
    assert report["pool_compared"] > 1000 and report["pool_max_diff"] <= 1e-6
    assert "multiple of 8" in report["bad_capacity_error"]
