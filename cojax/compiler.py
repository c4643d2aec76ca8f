"""XLA:CPU compile options for a program, chosen from the convolutions it runs.

`jax.jit(fn, compiler_options=co.compiler_options(fn, *args))`. XLA:CPU (jaxlib 0.10)
hands every float32 2D convolution to YNNPACK by default; for the shapes continual
networks run it is usually the slower of XLA's two convolution libraries. Measured on
2 cores (`python experiments/xla_conv_wall.py`, "YNNPACK vs Eigen" table in
experiments/README.md): Eigen's convolution is 1.2-2.3x faster for 16 to 256 input
channels at 16 to 64 streams (the anchor network's step 1.6x at 64 streams), 0.64-1.6x
at one stream. A 3-channel RGB stem (160x160, stride 2) went either way on two
machines (YNNPACK 2x faster on one, Eigen 4x on the other): stems stay on the default.

`compiler_options` traces `fn`, weighs the program's 2D convolutions by their FLOPs,
and routes them to Eigen (every other YNNPACK offload stays on) when the convolutions
with at least `MIN_EIGEN_CHANNELS` input channels per group carry at least half of
them. It returns `{}` (XLA's defaults) for programs without such convolutions, on
other backends, and when the user's `XLA_FLAGS` set the YNNPACK option themselves.

`donating_jit(fn, state_argnum=1)` is `jax.jit` with the state donated leaf by leaf
(`donated_leaves`): every leaf but the partial sums of a dense convolution's step
(`PartialSums.sums`). Those are rewritten whole each step, shifted one slot, and a
donated shift makes XLA copy every sum in and out. Measured at 64 streams, one anchor
layer's step 1.09-1.11x faster with the sums not donated (`python
experiments/xla_conv_wall.py`, the "whole state donated" row) and the 10-layer anchor
network's 1.22x (its `network_donation`: one process per variant). The windows of the
other convolutions shift too, but not donating them was 2.1x slower for CoX3D-S at 64
streams (fresh buffers for its 1 GB of state every step) and no faster at one stream.
docs/api.md, "Compiling a step".
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU's default YNNPACK offloads (jaxlib 0.10.2) without INDIVIDUAL_CONVOLUTION:
# the same programs as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
# (tests/test_compiler.py compares the two, so a jaxlib with other defaults fails there).
EIGEN_CONVOLUTIONS = {
    YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}
MIN_EIGEN_CHANNELS = 16  # measured: 16 and more faster on Eigen, 3 (RGB) on YNNPACK


def compiler_options(
    fn: Callable, *args: Any, backend: str | None = None, **kwargs: Any
) -> dict[str, str]:
    """`compiler_options` for `jax.jit(fn, ...)` called on `args` (arrays or
    ShapeDtypeStructs): `EIGEN_CONVOLUTIONS` or `{}`, see the module docstring.

    `backend` defaults to `jax.default_backend()`; only "cpu" gets options.
    """
    if (backend or jax.default_backend()) != "cpu":
        return {}
    if YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}  # the user chose; per-program options would override them
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    eigen = ynn = 0.0
    for eqn in _convolutions(closed.jaxpr):
        channels, flops = _conv_channels_and_flops(eqn)
        if channels is None:
            continue
        if channels >= MIN_EIGEN_CHANNELS:
            eigen += flops
        else:
            ynn += flops
    return dict(EIGEN_CONVOLUTIONS) if eigen > 0 and eigen >= ynn else {}


def _convolutions(jaxpr) -> Iterator[Any]:
    """Every `conv_general_dilated` equation, nested jaxprs (jit, scan, vmap) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _convolutions(sub)


def _conv_channels_and_flops(eqn) -> tuple[int | None, float]:
    """(input channels per group, FLOPs) of a float 2D convolution YNNPACK would take,
    (None, 0) for any other (3D convs and 16-bit ones never go to YNNPACK)."""
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out = eqn.outvars[0].aval
    lhs_spec, rhs_spec, _ = eqn.params["dimension_numbers"]
    if len(lhs_spec) != 4 or lhs.dtype not in (jnp.float32, jnp.float64):
        return None, 0.0
    channels = lhs.shape[lhs_spec[1]] // eqn.params["feature_group_count"]
    taps = math.prod(rhs.shape[d] for d in rhs_spec[2:]) * rhs.shape[rhs_spec[1]]
    return channels, 2.0 * math.prod(out.shape) * taps


# --------------------------------------------------------------------------- donation


def donated_leaves(state: Any) -> Any:
    """The pytree of `state` with True on the leaves worth donating to a step: all but
    the partial sums of a dense conv's step (`PartialSums.sums`, see the module
    docstring)."""
    from cojax.layers.conv import PartialSums

    def mark(node: Any) -> Any:
        if isinstance(node, PartialSums):
            count = jax.tree_util.tree_map(lambda _: True, node.count)
            return PartialSums(tuple(False for _ in node.sums), count)
        return True

    return jax.tree_util.tree_map(mark, state, is_leaf=lambda n: isinstance(n, PartialSums))


class _Structure(NamedTuple):  # static: how to rebuild the state from its two halves
    treedef: Any
    donated: tuple[bool, ...]


def _split(state: Any, masks: dict) -> tuple[_Structure, list, list]:
    """(structure, donated leaves, kept leaves); `masks` memoises `donated_leaves` per
    tree structure and leaf shapes (recomputing it costs ~1 ms a call for CoX3D-S)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    key = (treedef, tuple(getattr(leaf, "shape", ()) for leaf in leaves))
    if key not in masks:
        masks[key] = tuple(jax.tree_util.tree_leaves(donated_leaves(state)))
    mask = masks[key]
    donated = [leaf for leaf, d in zip(leaves, mask) if d]
    kept = [leaf for leaf, d in zip(leaves, mask) if not d]
    return _Structure(treedef, mask), donated, kept


def _join(structure: _Structure, donated: list, kept: list) -> Any:
    donated, kept = iter(donated), iter(kept)
    leaves = [next(donated) if d else next(kept) for d in structure.donated]
    return jax.tree_util.tree_unflatten(structure.treedef, leaves)


def _arguments(args: tuple, state_argnum: int, masks: dict) -> tuple:
    """A step's arguments as the jitted `inner` of `DonatingJit` takes them:
    (structure, donated leaves, kept leaves, *the other arguments)."""
    structure, donated, kept = _split(args[state_argnum], masks)
    return structure, donated, kept, *args[:state_argnum], *args[state_argnum + 1 :]


class DonatingJit:
    """`jax.jit(fn, **jit_kwargs)` donating argument `state_argnum` leaf by leaf
    (`donated_leaves`); called like `fn`. `compile(*args)` returns the compiled step,
    called like `fn` too, with XLA's `cost_analysis()` and `as_text()`."""

    def __init__(self, fn: Callable, state_argnum: int = 1, **jit_kwargs: Any) -> None:
        self.state_argnum = state_argnum

        def inner(structure: _Structure, donated: list, kept: list, *rest: Any) -> Any:
            args = list(rest)
            args.insert(state_argnum, _join(structure, donated, kept))
            return fn(*args)

        self._jitted = jax.jit(inner, static_argnums=0, donate_argnums=1, **jit_kwargs)
        self._masks: dict = {}  # what to donate, per state structure (like jit's cache)

    def __call__(self, *args: Any) -> Any:
        return self._jitted(*_arguments(args, self.state_argnum, self._masks))

    def lower(self, *args: Any) -> Any:
        return self._jitted.lower(*_arguments(args, self.state_argnum, self._masks))

    def compile(self, *args: Any) -> CompiledDonatingStep:
        return CompiledDonatingStep(self.lower(*args).compile(), self.state_argnum, self._masks)


class CompiledDonatingStep:
    """A compiled `DonatingJit`: called with the step's own arguments."""

    def __init__(self, compiled: Any, state_argnum: int, masks: dict) -> None:
        self.compiled, self.state_argnum, self._masks = compiled, state_argnum, masks

    def __call__(self, *args: Any) -> Any:
        # the structure is static: compiled into the executable, not passed
        return self.compiled(*_arguments(args, self.state_argnum, self._masks)[1:])

    def cost_analysis(self) -> Any:
        return self.compiled.cost_analysis()

    def as_text(self) -> str:
        return self.compiled.as_text()


def donating_jit(fn: Callable, state_argnum: int = 1, **jit_kwargs: Any) -> DonatingJit:
    """`jax.jit(fn, donate_argnums=state_argnum, **jit_kwargs)`, but donating only the
    state's leaves XLA updates in place (`donated_leaves`; see the module docstring)."""
    return DonatingJit(fn, state_argnum, **jit_kwargs)
