"""Checkpoints with orbax (`cojax.checkpoint`, `StreamPool.save` / `restore`): a pool
resumed in a fresh process continues bit-identically; a save killed midway leaves the
previous step readable; another layer, configuration or frame raises naming what
differs; params-only checkpoints round-trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cojax as co
from cojax.checkpoint import latest_step, restore_checkpoint, save_checkpoint
from cojax.demo_models import init_random

FRAME = (3,)


def net(kernel: int = 3) -> co.Sequential:
    return co.Sequential(
        co.Conv1d(3, 4, kernel),
        co.ReLU(),
        co.Residual(co.Conv1d(4, 4, 3, padding=1)),
        co.Conv1d(4, 2, 2, stride=2),
    )


def schedule(seed: int, ticks: int, ids: list[str]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {i: rng.standard_normal(FRAME).astype(np.float32) for i in ids if rng.random() < 0.7}
        for _ in range(ticks)
    ]


def run(pool, ticks):
    outputs = []
    for frames in ticks:
        out = pool.push(frames)
        outputs.append({i: (np.asarray(y), v) for i, (y, v) in sorted(out.items())})
    return outputs


RESUME = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import cojax as co
    from cojax import *  # noqa: F403  (the layer's repr names cojax classes)
    directory, layer_repr, ticks_file, out_file = sys.argv[1:]
    layer = eval(layer_repr)
    pool = co.StreamPool.restore(directory, layer, np.zeros({frame}, np.float32))
    ticks = json.load(open(ticks_file))
    outputs = []
    for frames in ticks:
        out = pool.push({{i: np.asarray(f, np.float32) for i, f in frames.items()}})
        outputs.append({{i: [np.asarray(y).tolist(), bool(v)] for i, (y, v) in out.items()}})
    json.dump({{"outputs": outputs, "ids": pool.ids, "traces": pool.traces}}, open(out_file, "w"))
    """
).format(frame=FRAME)


@pytest.mark.slow
def test_a_pool_resumed_in_a_fresh_process_continues_bit_identically(tmp_path):
    layer = net()
    params = init_random(layer, jax.random.PRNGKey(0))
    pool = co.StreamPool(layer, params, 4, jnp.zeros(FRAME))
    for i in ("a", "b", "c"):
        pool.open(i)
    run(pool, schedule(0, 25, ["a", "b", "c"]))
    pool.close("b")
    pool.open("d")  # reset pending at save time: it must survive the restore
    pool.save(tmp_path / "ckpt", step=25)
    later = schedule(1, 30, ["a", "c", "d"])
    expected = run(pool, later)

    ticks_file, out_file = tmp_path / "ticks.json", tmp_path / "out.json"
    ticks_file.write_text(json.dumps([{i: f.tolist() for i, f in t.items()} for t in later]))
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    cmd = [sys.executable, str(script), str(tmp_path / "ckpt"), repr(layer), str(ticks_file), str(out_file)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out_file.read_text())
    assert result["ids"] == ["a", "c", "d"]
    valid = 0
    for ours, theirs in zip(expected, result["outputs"]):
        assert set(ours) == set(theirs)
        for i, (y, v) in ours.items():
            assert v == theirs[i][1]
            np.testing.assert_array_equal(y, np.asarray(theirs[i][0], np.float32))  # bitwise
            valid += v
    assert valid > 10


def test_restoring_into_another_layer_config_or_frame_raises(tmp_path):
    layer = net()
    pool = co.StreamPool(layer, layer.init(jax.random.PRNGKey(0)), 2, jnp.zeros(FRAME))
    pool.open(1)
    pool.push({1: np.ones(FRAME, np.float32)})
    pool.save(tmp_path, step=0)
    with pytest.raises(ValueError, match=r"layer: the checkpoint's is .*kernel_size=\(3,\)") as e:
        co.StreamPool.restore(tmp_path, net(kernel=5), jnp.zeros(FRAME))
    assert "leaf ['params']['0']['kernel']" in str(e.value)
    assert "checkpoint float32[3, 3, 4], expected float32[5, 3, 4]" in str(e.value)
    wider = co.Sequential(
        co.Conv1d(5, 4, 3), co.ReLU(), co.Residual(co.Conv1d(4, 4, 3, padding=1)),
        co.Conv1d(4, 2, 2, stride=2),
    )  # fmt: skip
    with pytest.raises(ValueError, match="does not fit"):
        co.StreamPool.restore(tmp_path, wider, jnp.zeros((5,)))
    with pytest.raises(FileNotFoundError, match="step 3"):
        co.StreamPool.restore(tmp_path, layer, jnp.zeros(FRAME), step=3)
    pool.open(("tuple", "id"))
    with pytest.raises(TypeError, match="str or int"):
        pool.save(tmp_path, step=1)


def test_params_only_checkpoints_round_trip_exactly(tmp_path):
    layer = net()
    params = init_random(layer, jax.random.PRNGKey(1))
    save_checkpoint(tmp_path, 7, params, layer=layer, metadata={"epoch": 3})
    target = jax.eval_shape(layer.init, jax.random.PRNGKey(0))
    restored, meta = restore_checkpoint(tmp_path, target, layer=layer)
    assert meta == {"epoch": 3} and latest_step(tmp_path) == 7
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        restore_checkpoint(tmp_path, {**target, "extra": jax.ShapeDtypeStruct((2,), jnp.float32)})


KILLED = textwrap.dedent(
    """
    import sys
    import numpy as np
    from cojax.checkpoint import save_checkpoint
    directory = sys.argv[1]
    save_checkpoint(directory, 0, {"w": np.arange(10, dtype=np.float32)})
    print("saved 0", flush=True)
    big = {f"w{i}": np.random.default_rng(i).standard_normal(8_000_000, dtype=np.float32)
           for i in range(12)}  # ~380 MB
    print("saving 1", flush=True)
    save_checkpoint(directory, 1, big)
    print("saved 1", flush=True)
    """
)


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_step_readable(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    directory = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory)], stdout=subprocess.PIPE, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("saving 1"):
            time.sleep(0.5)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert lines[:2] == ["saved 0", "saving 1"] and proc.returncode == -signal.SIGKILL
    assert latest_step(directory) == 0  # the partial step 1 is not a checkpoint
    restored, _ = restore_checkpoint(directory, {"w": jax.ShapeDtypeStruct((10,), jnp.float32)})
    np.testing.assert_array_equal(restored["w"], np.arange(10, dtype=np.float32))
    leftovers = [p.name for p in directory.iterdir()]
    assert "1" not in leftovers  # only a temporary directory, if anything
