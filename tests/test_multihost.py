"""Multi-host: `examples/multihost.py` in 2 processes on 127.0.0.1 (`jax.distributed`,
2 CPU devices each, one global mesh of 4), each process holding half of the streams
and half of the training batch, gives what 1 process on 1 device gives: the streams'
outputs (through `step_streams` on the global mesh and through one stream pool per
process) and the data-parallel clip-mode training (BatchNorm statistics over the
global batch) with its losses and trained params."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "multihost.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_two_processes(out: Path) -> list[str]:
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--coordinator", coordinator, "--num-processes", "2"]
            + ["--process-id", str(i), "--out", str(out)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-3000:]
    return logs


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one = tmp_path / "one.npz"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(one)],
        env=_env(1),
        check=True,
        capture_output=True,
        timeout=240,
    )
    two = tmp_path / "two.npz"
    logs = _run_two_processes(two)
    assert "process 0 of 2: 4 devices" in logs[0] and "process 1 of 2: 4 devices" in logs[1]
    a, b = np.load(one), np.load(two)
    assert sorted(a.files) == sorted(b.files)
    # The streams: 8 streams x 12 frames, 4 per process; every stream emitted.
    assert a["ys"].shape == (12, 8, 4) and a["valid"].any(axis=0).all()
    np.testing.assert_array_equal(a["valid"], b["valid"])
    np.testing.assert_allclose(b["ys"], a["ys"], rtol=0, atol=1e-5)
    # One pool per process (its 4 streams on its 2 devices) gives the same outputs.
    np.testing.assert_allclose(b["pool_ys"], a["ys"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(a["pool_ys"], a["ys"], rtol=0, atol=1e-5)
    # Training: the same losses and the same params after 3 SGD steps (the BatchNorm
    # running statistics among them), only possible with global batch statistics.
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)
    for name in a.files:
        if name.startswith("param_"):
            np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
    params = [n for n in a.files if n.startswith("param_")]
    print(  # the figures docs/streams.md quotes (pytest -m slow -s tests/test_multihost.py)
        f"2 processes vs 1: streams {np.abs(b['ys'] - a['ys']).max():.2g}, pools "
        f"{np.abs(b['pool_ys'] - a['ys']).max():.2g}, losses "
        f"{np.abs(b['losses'] - a['losses']).max():.2g}, params "
        f"{max(np.abs(b[n] - a[n]).max() for n in params):.2g}"
    )


@pytest.mark.slow
def test_half_batch_statistics_differ_from_the_global_ones():
    """What the comparison above rules out: BatchNorm moved with one process's half of
    the batch gives running statistics far from the global batch's."""
    import jax

    import cojax as co
    from cojax.demo_models import init_random

    spec = importlib.util.spec_from_file_location("multihost", SCRIPT)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    layer = example.network()
    params = init_random(layer, jax.random.PRNGKey(0))
    _, clips, _ = example.data(layer)
    key = jax.random.PRNGKey(0)
    _, whole = co.train_forward(layer, params, clips, key)
    _, half = co.train_forward(layer, params, clips[: len(clips) // 2], key)
    moved = [
        float(np.abs(np.asarray(w) - np.asarray(h)).max())
        for w, h in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(half))
    ]
    assert max(moved) > 1e-3
