"""Wall time of one continual Nyström step vs window length n (fixed landmarks,
single output, E = 256, 4 heads), next to continual exact single-output attention.

XLA's cost analysis counts the segment tree's gather / scatter differently as the tree
grows (see nystrom_flops.md); this measures what a step really costs. The step is
jitted with its state donated (updated in place), median of 50 calls after warm-up.

    .venv/bin/python experiments/nystrom_step_time.py

Writes experiments/results/nystrom_step_time.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    compiled,
    copy_tree,
    donated_calls,
    environment,
    markdown_table,
    timeit,
    write_json,
)

import cojax as co  # noqa: E402

E, H, SIZES, LANDMARKS = 256, 4, (64, 256, 1024), (4, 16)
RESULTS = Path(__file__).resolve().parent / "results"


def step_ms(layer: co.Layer, params, budget: float = 0.5) -> float:
    """Median ms of a donated, jitted step (the state fed back each call)."""
    frame = jnp.ones((E,), jnp.float32)
    state = layer.init_state(params, frame)
    exe, _ = compiled(layer.step, params, state, frame, donate=True)
    call, honoured = donated_calls(exe, params, copy_tree(state), frame)
    ms, _ = timeit(call, budget_s=budget)
    if not honoured():
        raise RuntimeError(f"{type(layer).__name__}: the state was not donated")
    return ms


def main() -> None:
    rows = []
    for n in SIZES:
        exact = co.SingleOutputMultiheadAttention(E, H, n)
        rows.append({"method": "continual single-output attention", "m": None, "n": n,
                     "ms": step_ms(exact, exact.init(jax.random.PRNGKey(0)))})  # fmt: skip
        for m in LANDMARKS:
            layer = co.NystromLayer(
                co.ContinualNystromAttention(E, H, m, sequence_len=n, landmarks="fixed")
            )
            rows.append({"method": "continual Nyström fixed, single-output", "m": m, "n": n,
                         "ms": step_ms(layer, layer.init(jax.random.PRNGKey(0)))})  # fmt: skip
        print(json.dumps(rows[-3:]), flush=True)
    write_json("nystrom_step_time", {"meta": environment(E=E, heads=H), "rows": rows})
    table = []
    for method, m in [("continual single-output attention", None)] + [
        ("continual Nyström fixed, single-output", m) for m in LANDMARKS
    ]:
        cells = [f"{r['ms']:.3f}" for r in rows if r["method"] == method and r["m"] == m]
        table.append([method, m or "—", *cells])
    print(markdown_table(["method", "m", *(f"n = {n}" for n in SIZES)], table))


if __name__ == "__main__":
    main()
