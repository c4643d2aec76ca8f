"""Deployable artefacts: a layer's step (one stream, or any number of streams) and its
clip `forward`, serialized with `jax.export`, loadable without the model code.

`export_step(layer, params, frame, directory, streams=None)` writes a directory:
- `step.jaxexport`: the serialized `jax.export.Exported` of a flat step
  `(params_leaves, state_leaves, frames) -> (state_leaves, y_leaves, valid)`; with
  `streams="n"` the leading axis of the state and the frames is symbolic (one
  artefact for any number of streams, `co.step_streams` semantics);
- `params.npz`, `state.npz`: the params and one stream's initial state, as leaves
  "0", "1", ... (bfloat16 leaves as their uint16 bits);
- `meta.json`: frame shape and dtype, leaf counts and dtypes, the layer's `repr`.
`export_forward(layer, params, clip, directory)` does the same for `forward` on clips
shaped like `clip` (`forward.jaxexport`). `load_step` / `load_forward` read them back
with only jax and numpy (a serving process needs neither cojax's layers nor the
model's code) and return a callable plus the initial state. Flat leaves keep the
artefact free of cojax's pytree classes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

from cojax.core import Layer, Params, PyTree, as_spec

STEP, FORWARD = "step.jaxexport", "forward.jaxexport"


def _save_leaves(path: Path, leaves: list) -> list[str]:
    """Leaves as `.npz` entries "0", "1", ...; a dtype numpy cannot store (bfloat16) is
    stored as its bits (uint16). Returns every leaf's dtype name (kept in meta.json)."""
    arrays = [np.asarray(a) for a in leaves]
    np.savez(
        path,
        **{
            str(i): a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "V" else a
            for i, a in enumerate(arrays)
        },
    )
    return [a.dtype.name for a in arrays]


def _load_leaves(path: Path, dtypes: list[str] | None = None) -> list[np.ndarray]:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy; a jax dependency)

    with np.load(path) as data:
        leaves = [data[str(i)] for i in range(len(data.files))]
    if dtypes is None:
        return leaves
    return [a if a.dtype.name == n else a.view(np.dtype(n)) for a, n in zip(leaves, dtypes)]


def _spec(a: Any, lead: tuple = ()) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*lead, *np.shape(a)), a.dtype)


def export_step(
    layer: Layer,
    params: Params,
    frame: PyTree,
    directory: str | Path,
    streams: int | str | None = None,
) -> Path:
    """Export `layer.step` (see the module docstring); `streams`: None (one stream),
    an int (that many) or a symbol name such as "n" (any number). Returns the
    directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frame_spec = as_spec(frame)
    state = layer.init_state(params, frame_spec)
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)
    s_leaves, s_tree = jax.tree_util.tree_flatten(state)
    lead: tuple = ()
    if isinstance(streams, str):
        lead = jax_export.symbolic_shape(streams)
    elif streams is not None:
        lead = (int(streams),)

    def one(p, s, x):
        s, (y, valid) = layer.step(p, s, x)
        return s, y, valid

    def flat(p_flat, s_flat, x):
        p = jax.tree_util.tree_unflatten(p_tree, p_flat)
        s = jax.tree_util.tree_unflatten(s_tree, s_flat)
        fn = one if not lead else jax.vmap(one, in_axes=(None, 0, 0))
        s, y, valid = fn(p, s, x)
        return jax.tree_util.tree_leaves(s), jax.tree_util.tree_leaves(y), valid

    args = (
        [_spec(a) for a in p_leaves],
        [_spec(a, lead) for a in s_leaves],
        jax.ShapeDtypeStruct((*lead, *frame_spec.shape), frame_spec.dtype),
    )
    exported = jax_export.export(jax.jit(flat))(*args)
    (directory / STEP).write_bytes(exported.serialize())
    p_dtypes = _save_leaves(directory / "params.npz", p_leaves)
    s_dtypes = _save_leaves(directory / "state.npz", s_leaves)
    meta = {
        "kind": "step",
        "layer": repr(layer),
        "frame": {"shape": list(frame_spec.shape), "dtype": np.dtype(frame_spec.dtype).name},
        "streams": streams,
        "params_leaves": len(p_leaves),
        "state_leaves": len(s_leaves),
        "params_dtypes": p_dtypes,
        "state_dtypes": s_dtypes,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return directory


def export_forward(layer: Layer, params: Params, clip: Any, directory: str | Path) -> Path:
    """Export `layer.forward` on clips shaped like `clip` (`forward.jaxexport`,
    `params.npz`, `meta.json`). Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)

    def flat(p_flat, x):
        return layer.forward(jax.tree_util.tree_unflatten(p_tree, p_flat), x)

    spec = as_spec(clip)
    exported = jax_export.export(jax.jit(flat))([_spec(a) for a in p_leaves], spec)
    (directory / FORWARD).write_bytes(exported.serialize())
    p_dtypes = _save_leaves(directory / "params.npz", p_leaves)
    meta = {
        "kind": "forward",
        "layer": repr(layer),
        "clip": {"shape": list(spec.shape), "dtype": np.dtype(spec.dtype).name},
        "params_leaves": len(p_leaves),
        "params_dtypes": p_dtypes,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return directory


def load_step(directory: str | Path) -> tuple[Callable, list[np.ndarray]]:
    """`(step, state)`: `step(state, frames) -> (state, y_leaves, valid)` on the flat
    state leaves (params bound), and one stream's initial state leaves (tile them
    along a new leading axis for an N-stream artefact)."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    exported = jax_export.deserialize(bytearray((directory / STEP).read_bytes()))
    params = _load_leaves(directory / "params.npz", meta.get("params_dtypes"))

    def step(state, frames):
        return exported.call(params, list(state), frames)

    return step, _load_leaves(directory / "state.npz", meta.get("state_dtypes"))


def load_forward(directory: str | Path) -> Callable:
    """`forward(clip) -> y` of an exported clip network (params bound)."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    exported = jax_export.deserialize(bytearray((directory / FORWARD).read_bytes()))
    params = _load_leaves(directory / "params.npz", meta.get("params_dtypes"))
    return lambda clip: exported.call(params, clip)
