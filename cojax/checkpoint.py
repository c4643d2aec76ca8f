"""Checkpoints of parameters and stream states with orbax, checked on restore.

`save_checkpoint(directory, step, tree, layer=...)` writes any pytree (params, a
batched stream state, both) as step `step` of an orbax `CheckpointManager` directory,
with a description of every leaf (path, shape, dtype) and the layer's `repr`. Orbax
writes each step to a temporary directory and renames it when complete, so a crash
mid-save leaves the earlier steps readable (`latest_step` ignores the partial one).

`restore_checkpoint(directory, target, layer=...)` restores into the structure of
`target` (arrays or `ShapeDtypeStruct`s, e.g. `jax.eval_shape(layer.init, key)` or a
fresh `init_streams`), after comparing the stored description with the target's: a
checkpoint of another layer, configuration or tree raises one ValueError naming the
layer and every leaf that differs — never a silently wrong stream. Values come back
bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cojax.core import PyTree


def describe(tree: PyTree) -> dict[str, str]:
    """`{leaf path: "dtype[shape]"}` of a pytree of arrays or ShapeDtypeStructs."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"
        for path, leaf in leaves
    }


def _manager(directory: str | Path, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_checkpoint(
    directory: str | Path,
    step: int,
    tree: PyTree,
    *,
    layer: Any = None,
    metadata: dict | None = None,
    max_to_keep: int | None = None,
) -> None:
    """Save `tree` as step `step` (atomically) with its leaf description, the layer's
    `repr` and JSON-able `metadata`."""
    meta = {
        "leaves": describe(tree),
        "structure": str(jax.tree_util.tree_structure(tree)),
        "layer": None if layer is None else repr(layer),
        "user": metadata or {},
    }
    with _manager(directory, max_to_keep) as manager:
        manager.save(
            int(step),
            args=ocp.args.Composite(tree=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        )
        manager.wait_until_finished()


def latest_step(directory: str | Path) -> int | None:
    """The newest complete step in `directory` (None if there is none)."""
    with _manager(directory) as manager:
        return manager.latest_step()


def _differences(stored: dict, target: PyTree, layer: Any) -> list[str]:
    problems = []
    if layer is not None and stored["layer"] is not None and stored["layer"] != repr(layer):
        problems.append(f"layer: the checkpoint's is {stored['layer']}, this one is {layer!r}")
    want, have = describe(target), stored["leaves"]
    for path in sorted(set(want) | set(have)):
        if path not in have:
            problems.append(f"leaf {path}: missing from the checkpoint (expected {want[path]})")
        elif path not in want:
            problems.append(f"leaf {path}: in the checkpoint ({have[path]}) but not expected")
        elif want[path] != have[path]:
            problems.append(f"leaf {path}: checkpoint {have[path]}, expected {want[path]}")
    if not problems and stored["structure"] != str(jax.tree_util.tree_structure(target)):
        problems.append(
            "tree structure differs (e.g. a state of another delay/stride): checkpoint "
            f"{stored['structure'][:300]}, expected "
            f"{str(jax.tree_util.tree_structure(target))[:300]}"
        )
    return problems


def read_metadata(directory: str | Path, step: int | None = None) -> tuple[int, dict]:
    """`(step, metadata)` of step `step` (default: the latest complete one): the leaf
    description, structure, layer `repr` and the user's metadata ("user")."""
    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else int(step)
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(
                f"no complete checkpoint step {'' if step is None else step} in "
                f"{directory} (steps: {list(manager.all_steps())})."
            )
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return step, meta["meta"]


def restore_checkpoint(
    directory: str | Path, target: PyTree, *, step: int | None = None, layer: Any = None
) -> tuple[PyTree, dict]:
    """`(tree, metadata)` of step `step` (default: the latest), restored into the
    structure, shapes and dtypes of `target`; raises ValueError listing every
    difference (and the layer, when both it and the checkpoint name one)."""
    step, meta = read_metadata(directory, step)
    problems = _differences(meta, target, layer)
    if problems:
        raise ValueError(
            f"restore_checkpoint: step {step} of {directory} does not fit: "
            + "; ".join(problems)
            + "."
        )
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), target)
    with _manager(directory) as manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(tree=ocp.args.StandardRestore(abstract))
        )["tree"]
    restored = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(target), jax.tree_util.tree_leaves(restored)
    )
    return restored, meta["user"]
