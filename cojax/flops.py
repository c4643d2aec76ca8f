"""FLOPs measured from XLA's cost analysis of the compiled step / clip function."""

from __future__ import annotations

from typing import Any

import jax

from cojax.core import Layer, Params, PyTree, as_spec


def compiled_flops(compiled: Any) -> float:
    """FLOPs of an already compiled program (`jax.jit(f).lower(...).compile()`), as
    XLA's cost analysis counts them: reuse the executable you run instead of compiling
    again (what `flops` / `clip_flops` do)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    if not cost or "flops" not in cost:
        raise RuntimeError("XLA's cost analysis reported no 'flops' for this backend.")
    return float(cost["flops"])


def flops(layer: Layer, params: Params, frame: PyTree) -> float:
    """FLOPs of one `layer.step` on a frame shaped like `frame` (one stream).

    Counted by XLA on the compiled program (multiplies and adds count one each),
    so it includes whatever the chosen kernels really do.
    """
    spec = as_spec(frame)
    state = jax.eval_shape(layer.init_state, params, spec)
    lowered = jax.jit(layer.step).lower(params, state, spec)
    return compiled_flops(lowered.compile())


def clip_flops(layer: Layer, params: Params, clip: PyTree) -> float:
    """FLOPs of `layer.forward` on a clip shaped like `clip` `(T, *spatial, C)`."""
    lowered = jax.jit(layer.forward).lower(params, as_spec(clip))
    return compiled_flops(lowered.compile())
