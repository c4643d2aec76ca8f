"""ONNX export of steps (`cojax.onnx_export`, jax2onnx + onnxruntime).

Every export is checked against `layer.step` before it is written; here the artefact
also runs in a fresh process that imports neither jax nor cojax (onnxruntime and numpy
only) and matches the in-process step to 1e-5. Layers whose step jax2onnx cannot
convert raise `OnnxExportError` naming the layer and the operation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cojax as co
from cojax.demo_models import init_random
from cojax.onnx_export import OnnxExportError, export_onnx_step, load_onnx_step


def conv_network():
    return co.Sequential(
        co.Conv1d(3, 4, 3),
        co.BatchNorm1d(4),
        co.ReLU(),
        co.Residual(co.Conv1d(4, 4, 3, padding=1)),
        co.Conv1d(4, 2, 2, stride=2),
    )


def _params(layer):
    try:
        return init_random(layer, jax.random.PRNGKey(0))  # BatchNorm statistics drawn too
    except ValueError:
        return layer.init(jax.random.PRNGKey(0))


def _reference(layer, params, frames):
    """`layer.step` frame by frame: the outputs (leaves) and valid flags."""
    state = layer.init_state(params, frames[0])
    step = jax.jit(layer.step)
    ys, valid = [], []
    for x in frames:
        state, (y, v) = step(params, state, x)
        ys.append([np.asarray(a) for a in jax.tree_util.tree_leaves(y)])
        valid.append(bool(v))
    return ys, valid


FRESH = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort
    directory, frames_path = sys.argv[1], sys.argv[2]
    meta = json.load(open(directory + "/meta.json"))
    session = ort.InferenceSession(directory + "/step.onnx", providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    with np.load(directory + "/state.npz") as data:
        state = [data[str(i)] for i in range(meta["state_leaves"])]
    k = meta["state_leaves"]
    ys, valid = [], []
    for x in np.load(frames_path):
        out = session.run(None, dict(zip(names, [*state, x])))
        state, y, v = out[:k], out[k:-1], out[-1]
        ys.append([a.tolist() for a in y])
        valid.append(bool(v))
    assert "jax" not in sys.modules and "cojax" not in sys.modules
    print(json.dumps({"ys": ys, "valid": valid}))
    """
)


@pytest.mark.slow
def test_exported_step_runs_in_a_fresh_process_without_jax(tmp_path):
    layer = conv_network()
    params = _params(layer)
    frames = np.random.default_rng(1).standard_normal((20, 3)).astype(np.float32)
    directory = export_onnx_step(layer, params, jnp.zeros(3), tmp_path / "onnx")
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["max_abs_diff_at_export"] <= 1e-5
    np.save(tmp_path / "frames.npy", frames)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    done = subprocess.run(
        [sys.executable, str(script), str(directory), str(tmp_path / "frames.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    ys, valid = _reference(layer, params, frames)
    assert got["valid"] == valid and sum(valid) == 8  # 20 frames: delay 5, stride 2
    diff = max(
        float(np.abs(np.asarray(g, np.float32) - r).max())
        for gs, rs in zip(got["ys"], ys, strict=True)
        for g, r in zip(gs, rs, strict=True)
    )
    assert diff <= 1e-5


# Layers whose step exports (one stream), each with the largest difference to
# `layer.step` that export_onnx_step measured over 8 random frames.
EXPORTS = {
    "Conv2d (dilated, padded)": (
        lambda: co.Conv2d(3, 4, (3, 3), dilation=(2, 1), padding=(0, 1)),
        (5, 3),
    ),
    "MaxPool1d + AvgPool1d": (
        lambda: co.Sequential(co.MaxPool1d(3, stride=1), co.AvgPool1d(2)),
        (4,),
    ),
    "SingleOutputMultiheadAttention": (lambda: co.SingleOutputMultiheadAttention(16, 2, 6), (16,)),
    "GRU": (lambda: co.GRU(3, 5), (3,)),
    "LSTM": (lambda: co.LSTM(3, 5), (3,)),
    "Delay": (lambda: co.Delay(3), (3,)),
    "RecyclingPositionalEncoding": (lambda: co.RecyclingPositionalEncoding(8, 6), (8,)),
}


# The fast set converts one (the GRU, a scan); `pytest -m slow` (CI) all of them.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n == "GRU" else pytest.mark.slow) for n in EXPORTS]
)
def test_layer_exports_and_reloads(name, tmp_path):
    make, shape = EXPORTS[name]
    layer = make()
    params = _params(layer)
    directory = export_onnx_step(layer, params, jnp.zeros(shape), tmp_path)
    step, state = load_onnx_step(directory)
    frames = np.random.default_rng(2).standard_normal((10, *shape)).astype(np.float32)
    ys, valid = _reference(layer, params, frames)
    for x, y_ref, v_ref in zip(frames, ys, valid, strict=True):
        state, y, v = step(state, x)
        assert bool(v) == v_ref
        for a, b in zip(y, y_ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "streams", [pytest.param(4, marks=pytest.mark.slow), pytest.param("n", marks=pytest.mark.slow)]
)
def test_multi_stream_export(streams, tmp_path):
    layer = conv_network()
    params = _params(layer)
    directory = export_onnx_step(layer, params, jnp.zeros(3), tmp_path, streams=streams)
    step, one = load_onnx_step(directory)
    n = 4 if streams == 4 else 6  # "n": any number of streams
    state = [np.repeat(a[None], n, axis=0) for a in one]
    frames = np.random.default_rng(3).standard_normal((10, n, 3)).astype(np.float32)
    states = co.init_streams(layer, params, jnp.zeros(3), n)
    for x in frames:
        state, (y,), v = step(state, x)
        states, (y_ref, v_ref) = co.step_streams(layer, params, states, jnp.asarray(x))
        np.testing.assert_array_equal(v, np.asarray(v_ref))
        np.testing.assert_allclose(y, np.asarray(y_ref), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "make, shape, streams, names",
    [
        # lax.associative_scan pads with interior padding, which ONNX's Pad lacks.
        (lambda: co.RetroactiveMultiheadAttention(16, 2, 6), (16,), None, "interior padding"),
        # A ring write at a per-stream index becomes a scatter under vmap.
        pytest.param(
            lambda: co.SingleOutputMultiheadAttention(16, 2, 6),
            (16,),
            4,
            "scatter",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_unsupported_layers_raise_a_clear_error(make, shape, streams, names, tmp_path):
    layer = make()
    with pytest.raises(OnnxExportError, match=type(layer).__name__) as info:
        export_onnx_step(layer, _params(layer), jnp.zeros(shape), tmp_path, streams=streams)
    assert names in str(info.value) and "export_step" in str(info.value)
    assert not (tmp_path / "step.onnx").exists()


def test_a_difference_above_atol_is_refused_and_nothing_is_written(tmp_path):
    layer = conv_network()
    with pytest.raises(OnnxExportError, match="differs from layer.step by"):
        export_onnx_step(layer, _params(layer), jnp.zeros(3), tmp_path, atol=0.0)
    assert not (tmp_path / "step.onnx").exists()


def test_a_tuple_frame_is_refused(tmp_path):
    layer = co.ReLU()
    with pytest.raises(OnnxExportError, match="one array frame"):
        export_onnx_step(layer, {}, (jnp.zeros(2), jnp.zeros(2)), tmp_path)
