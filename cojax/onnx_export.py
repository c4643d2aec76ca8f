"""ONNX export of a layer's step, for runtimes outside JAX (onnxruntime, TensorRT, ...).

`export_onnx_step(layer, params, frame, directory, streams=None)` converts the step
with jax2onnx and writes a directory:
- `step.onnx`: inputs the k state leaves and the frame, in that order; outputs the k
  new state leaves, the output leaves and `valid`; the params are baked in as
  initializers. With `streams="n"` (any string) the leading axis of the
  state and the frames is dynamic (`co.step_streams` semantics), with an int it is
  that many streams;
- `state.npz`: one stream's initial state leaves; `meta.json`: frame, leaf counts,
  the layer's `repr` and the largest difference measured at export.

The export is checked before it is written: the ONNX model runs in onnxruntime on
`check_frames` random frames beside `layer.step`, and a difference above `atol`
raises `OnnxExportError` (never a silently wrong artefact). A layer whose step uses
an operation jax2onnx cannot convert raises `OnnxExportError` naming the layer and the
operation. `load_onnx_step(directory)` returns `(step, state)` running the model in
onnxruntime with only numpy (no JAX, no model code). Needs the `onnx` extra
(`pip install "cojax[onnx]"`: jax2onnx, onnx, onnxruntime). Which layers export is
listed in docs/streams.md (the ONNX section) and tested in tests/test_onnx_export.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax import export as jax_export

from cojax.core import Layer, Params, PyTree, as_spec, layer_name

STEP_ONNX = "step.onnx"


class OnnxExportError(ValueError):
    """A layer's step cannot be exported to ONNX, or the export computes wrongly."""


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs {module}: pip install 'cojax[onnx]' (jax2onnx, onnx, onnxruntime)."
        ) from error


def _flat_step(layer: Layer, params: Params, state_tree, batched: bool) -> Callable:
    """`(*state_leaves, frames) -> (*state_leaves, *y_leaves, valid)` with params bound."""

    def one(s, x):
        s, (y, valid) = layer.step(params, s, x)
        return s, y, valid

    fn = jax.vmap(one) if batched else one

    def flat(*args):
        s = jax.tree_util.tree_unflatten(state_tree, list(args[:-1]))
        s, y, valid = fn(s, args[-1])
        return (*jax.tree_util.tree_leaves(s), *jax.tree_util.tree_leaves(y), valid)

    return flat


def _input_spec(lead: tuple, shape: tuple, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*lead, *shape), dtype)


def _session(model_bytes: bytes):
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; equal infinities (a max pool's empty window) agree,
    a NaN or a shape mismatch on one side is infinitely far."""
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max())


def _largest_difference(
    flat: Callable, session, state: list[np.ndarray], frame_shape: tuple, dtype, n: int
) -> float:
    """Run `n` random frames through the jitted JAX step and the ONNX model from the
    same state; the largest absolute difference over every output and state leaf."""
    rng = np.random.default_rng(0)
    step = jax.jit(flat)
    names = [i.name for i in session.get_inputs()]
    ref_state, onnx_state, worst = list(state), list(state), 0.0
    for _ in range(n):
        x = rng.standard_normal(frame_shape).astype(dtype)
        ref = [np.asarray(a) for a in step(*ref_state, x)]
        out = session.run(None, dict(zip(names, [*onnx_state, x], strict=True)))
        for a, b in zip(ref, out, strict=True):
            worst = max(worst, _difference(a, np.asarray(b)))
        ref_state, onnx_state = ref[: len(state)], list(out[: len(state)])
    return worst


def export_onnx_step(
    layer: Layer,
    params: Params,
    frame: PyTree,
    directory: str | Path,
    streams: int | str | None = None,
    atol: float = 1e-5,
    check_frames: int = 8,
) -> Path:
    """Export `layer.step` to ONNX (see the module docstring). `streams`: None (one
    stream, frames `frame.shape`), an int N (frames `(N, *frame.shape)`) or a name such
    as "n" (a dynamic number of streams). Returns the directory."""
    jax2onnx = _require("jax2onnx")
    onnx = _require("onnx")
    frame_spec = as_spec(frame)
    if not isinstance(frame_spec, jax.ShapeDtypeStruct):
        raise OnnxExportError(
            f"{layer_name(layer)}: ONNX export takes one array frame, got {frame_spec}."
        )
    state = layer.init_state(params, frame_spec)
    s_leaves, s_tree = jax.tree_util.tree_flatten(state)
    lead: tuple = ()
    if isinstance(streams, str):
        lead = jax_export.symbolic_shape(streams)
    elif streams is not None:
        lead = (int(streams),)
    flat = _flat_step(layer, params, s_tree, batched=bool(lead))
    typed = [_input_spec(lead, np.shape(a), np.asarray(a).dtype) for a in s_leaves]
    typed.append(_input_spec(lead, frame_spec.shape, frame_spec.dtype))
    y_count = len(jax.tree_util.tree_leaves(layer.output_spec(params, frame_spec)))
    try:
        model = jax2onnx.to_onnx(flat, typed, model_name=layer_name(layer))
    except Exception as error:  # jax2onnx raises several types for unconverted primitives
        raise OnnxExportError(
            f"{layer_name(layer)}: its step does not convert to ONNX with jax2onnx "
            f"({type(error).__name__}: {_first_line(error)}). Export it with "
            "cojax.export.export_step (jax.export) instead, which runs every layer."
        ) from error
    try:
        session = _session(model.SerializeToString())
    except Exception as error:
        raise OnnxExportError(
            f"{layer_name(layer)}: jax2onnx converted its step, but onnxruntime cannot load "
            f"the model ({type(error).__name__}: {_first_line(error)}). Export it with "
            "cojax.export.export_step (jax.export) instead."
        ) from error
    count = 1 if not lead else (lead[0] if isinstance(lead[0], int) else 3)  # 3: symbolic
    check_state = [np.asarray(a) for a in s_leaves]
    shape = frame_spec.shape
    if lead:
        check_state = [np.repeat(a[None], count, axis=0) for a in check_state]
        shape = (count, *shape)
    try:
        worst = _largest_difference(
            flat, session, check_state, shape, np.dtype(frame_spec.dtype), check_frames
        )
    except Exception as error:
        raise OnnxExportError(
            f"{layer_name(layer)}: jax2onnx converted its step, but onnxruntime fails to run "
            f"it ({type(error).__name__}: {_first_line(error)}). Export it with "
            "cojax.export.export_step (jax.export) instead."
        ) from error
    if not worst <= atol:
        raise OnnxExportError(
            f"{layer_name(layer)}: the ONNX step differs from layer.step by {worst:.3g} "
            f"(> atol {atol:g}) over {check_frames} random frames; not written."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, directory / STEP_ONNX)
    np.savez(directory / "state.npz", **{str(i): np.asarray(a) for i, a in enumerate(s_leaves)})
    meta = {
        "kind": "onnx_step",
        "layer": repr(layer),
        "frame": {"shape": list(frame_spec.shape), "dtype": np.dtype(frame_spec.dtype).name},
        "streams": streams,
        "state_leaves": len(s_leaves),
        "output_leaves": y_count,
        "checked_frames": check_frames,
        "max_abs_diff_at_export": worst,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return directory


def load_onnx_step(directory: str | Path) -> tuple[Callable, list[np.ndarray]]:
    """`(step, state)`: `step(state, frames) -> (state, y_leaves, valid)` running
    `step.onnx` in onnxruntime (numpy in, numpy out), and one stream's initial state
    leaves (stack them along a new leading axis for a multi-stream export)."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    session = _session((directory / STEP_ONNX).read_bytes())
    names = [i.name for i in session.get_inputs()]
    k = meta["state_leaves"]

    def step(state, frames):
        out = session.run(None, dict(zip(names, [*state, frames], strict=True)))
        return out[:k], out[k:-1], out[-1]

    with np.load(directory / "state.npz") as data:
        state = [data[str(i)] for i in range(k)]
    return step, state
