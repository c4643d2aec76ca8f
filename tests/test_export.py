"""`cojax.export`: the step (one stream, and a symbolic number of streams) and the clip
forward serialized with `jax.export`, reloaded and run in a fresh process that imports
only jax and numpy; outputs equal the in-process layer's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cojax as co
from cojax.demo_models import init_random
from cojax.export import export_forward, export_step, load_forward, load_step

FRAME = (3,)
T = 12

RUNNER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from jax import export
    directory, inputs, out = sys.argv[1:]
    meta = json.load(open(f"{directory}/meta.json"))
    with np.load(f"{directory}/params.npz") as d:
        params = [d[str(i)] for i in range(len(d.files))]
    data = dict(np.load(inputs))
    result = {}
    if meta["kind"] == "forward":
        fn = export.deserialize(bytearray(open(f"{directory}/forward.jaxexport", "rb").read()))
        result["y"] = np.asarray(fn.call(params, data["clip"]))
    else:
        fn = export.deserialize(bytearray(open(f"{directory}/step.jaxexport", "rb").read()))
        with np.load(f"{directory}/state.npz") as d:
            one = [d[str(i)] for i in range(len(d.files))]
        for name, frames in data.items():  # frames (T, *frame) or (T, N, *frame)
            lead = frames.shape[1:-len(meta["frame"]["shape"])]
            state = [np.broadcast_to(a, (*lead, *a.shape)).copy() for a in one]
            ys, valids = [], []
            for x in frames:
                state, y, valid = fn.call(params, state, x)
                ys.append(np.asarray(y[0]))
                valids.append(np.asarray(valid))
            result[name + "_y"], result[name + "_valid"] = np.stack(ys), np.stack(valids)
    assert not any(m.startswith("cojax") or m.startswith("conversion") for m in sys.modules)
    np.savez(out, **result)
    """
)


def net() -> co.Sequential:
    return co.Sequential(
        co.Conv1d(3, 4, 3),
        co.BatchNorm1d(4),
        co.ReLU(),
        co.Residual(co.Conv1d(4, 4, 3, padding=1)),
        co.Conv1d(4, 2, 2, stride=2),
    )


def run_fresh(tmp_path, directory, inputs: dict) -> dict:
    script, data, out = tmp_path / "runner.py", tmp_path / "in.npz", tmp_path / "out.npz"
    script.write_text(RUNNER)
    np.savez(data, **inputs)
    cmd = [sys.executable, str(script), str(directory), str(data), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


def reference_steps(layer, params, frames):
    """`(T, N?, ...)` outputs and valid flags of the in-process step."""
    states = co.init_streams(layer, params, frames[0, 0], frames.shape[1])
    step = jax.jit(lambda p, s, x: co.step_streams(layer, p, s, x))
    ys, valids = [], []
    for x in frames:
        states, (y, valid) = step(params, states, x)
        ys.append(np.asarray(y))
        valids.append(np.asarray(valid))
    return np.stack(ys), np.stack(valids)


@pytest.mark.slow
def test_an_exported_step_runs_without_the_model_code_for_any_number_of_streams(tmp_path):
    layer = net()
    params = init_random(layer, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    one = export_step(layer, params, jnp.zeros(FRAME), tmp_path / "one")
    many = export_step(layer, params, jnp.zeros(FRAME), tmp_path / "many", streams="n")
    single = rng.standard_normal((T, *FRAME)).astype(np.float32)
    out = run_fresh(tmp_path, one, {"single": single})
    y, valid = reference_steps(layer, params, single[:, None])
    np.testing.assert_allclose(out["single_y"], y[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["single_valid"], valid[:, 0])
    assert 0 < valid.sum() < T
    inputs = {f"n{n}": rng.standard_normal((T, n, *FRAME)).astype(np.float32) for n in (3, 5)}
    out = run_fresh(tmp_path, many, inputs)
    for name, frames in inputs.items():
        y, valid = reference_steps(layer, params, frames)
        np.testing.assert_allclose(out[name + "_y"], y, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out[name + "_valid"], valid)
    # the in-process loader gives the same
    step, state = load_step(one)
    state, y_leaves, valid0 = step(state, single[0])
    assert not bool(valid0) and len(y_leaves) == 1


def test_an_exported_forward_runs_without_the_model_code(tmp_path):
    layer = net()
    params = init_random(layer, jax.random.PRNGKey(1))
    clip = np.random.default_rng(1).standard_normal((T, *FRAME)).astype(np.float32)
    directory = export_forward(layer, params, jnp.asarray(clip), tmp_path / "fwd")
    out = run_fresh(tmp_path, directory, {"clip": clip})
    expected = np.asarray(jax.jit(layer.forward)(params, clip))
    np.testing.assert_allclose(out["y"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(load_forward(directory)(clip), expected, rtol=1e-6, atol=1e-6)


def test_a_bfloat16_step_exports_and_reloads_bit_identically(tmp_path):
    """bfloat16 state leaves survive the .npz files (stored as their bits) and the
    exported bfloat16 step equals the in-process one exactly."""
    layer = co.Sequential(co.Conv1d(3, 4, 3), co.BatchNorm1d(4), co.ReLU(), co.Linear(4, 2))
    params = init_random(layer, jax.random.PRNGKey(0))
    frame = jnp.zeros(3, jnp.bfloat16)
    export_step(layer, params, frame, tmp_path, streams="n")
    step, one = load_step(tmp_path)
    assert {a.dtype for a in one if a.dtype.kind in "fV"} == {jnp.dtype(jnp.bfloat16)}
    n = 3
    state = [np.repeat(a[None], n, axis=0) for a in one]
    states = co.init_streams(layer, params, frame, n)
    frames = np.random.default_rng(0).standard_normal((6, n, 3)).astype(jnp.bfloat16)
    for x in frames:
        state, (y,), valid = step(state, jnp.asarray(x))
        states, (y_ref, valid_ref) = co.step_streams(layer, params, states, jnp.asarray(x))
        assert y.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(valid), np.asarray(valid_ref))
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
