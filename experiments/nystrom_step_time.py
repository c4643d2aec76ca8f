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
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import cojax as co

E, H, SIZES, LANDMARKS = 256, 4, (64, 256, 1024), (4, 16)
RESULTS = Path(__file__).resolve().parent / "results"


def step_ms(layer: co.Layer, params, calls: int = 50) -> float:
    """Median ms of a donated, jitted step (the state fed back each call)."""
    frame = jnp.ones((E,), jnp.float32)
    step = jax.jit(layer.step, donate_argnums=1)
    state = layer.init_state(params, frame)
    for _ in range(3):
        state, _ = step(params, state, frame)
    jax.block_until_ready(state)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        state, (y, _) = step(params, state, frame)
        jax.block_until_ready(y)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


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
    RESULTS.mkdir(exist_ok=True)
    meta = {"jax": jax.__version__, "load_average": os.getloadavg(), "E": E, "heads": H}
    (RESULTS / "nystrom_step_time.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    print("| method | m | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for method, m in [("continual single-output attention", None)] + [
        ("continual Nyström fixed, single-output", m) for m in LANDMARKS
    ]:
        cells = [f"{r['ms']:.3f}" for r in rows if r["method"] == method and r["m"] == m]
        print(f"| {method} | {m or '—'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
