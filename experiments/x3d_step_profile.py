"""Where CoX3D-S's one-stream step spends its time: each block's step on its own.

    python experiments/x3d_step_profile.py [--budget 1.0]

CoX3D-S (random weights and BatchNorm statistics, 160², one stream) is cut into its
stem layers, residual blocks and head layers; each part's step is jitted alone, fed the
previous part's output, run to a steady state (50 steps) and timed: ms, XLA FLOPs,
GFLOP/s and HLO instructions (its donation: `xla_conv_wall.py`, `network_donation`).
Writes `experiments/results/x3d_step_profile.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cox3d  # noqa: E402
from harness import (  # noqa: E402
    environment,
    markdown_table,
    matmul_gflops,
    timeit,
    write_json,
)

import cojax as co  # noqa: E402

WARM_STEPS = 50


def parts(net: co.Layer, params) -> list[tuple[str, co.Layer, dict]]:
    """(name, layer, params) of every stage's children (blocks, stem and head layers)."""
    return [
        (f"{stage}.{name}", child, params[stage][name])
        for stage, seq in net.children
        for name, child in seq.children
    ]


def entry_text(exe) -> str:
    return exe.as_text().split("ENTRY")[1]


def part_rows(net, params, frame_shape: tuple, budget: float) -> list[dict]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(frame_shape), jnp.float32)
    rows = []
    for name, layer, p in parts(net, params):
        spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
        state = layer.init_state(p, spec)
        exe = jax.jit(layer.step).lower(p, state, spec).compile()
        for _ in range(WARM_STEPS):  # past every warm-up: the steady state
            state, (y, _) = exe(p, state, x)
        ms, _ = timeit(lambda exe=exe, p=p, state=state, x=x: exe(p, state, x), budget_s=budget)
        flops = float((exe.cost_analysis() or {}).get("flops", 0.0))
        rows.append({"part": name, "layer": type(layer).__name__, "input": list(x.shape),
                     "ms": ms, "mflops": flops / 1e6, "gflops_per_s": flops / ms / 1e6,
                     "hlo_instructions": entry_text(exe).count("\n") - 1})  # fmt: skip
        print(f"  {rows[-1]}", flush=True)
        x = y
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per part")
    args = parser.parse_args()
    fam = cox3d()  # the family of `python -m experiments.bench`: random weights and BN
    rows = part_rows(fam.layer, fam.params, fam.frame_shape, args.budget)
    peak = matmul_gflops(2048, args.budget, "jax")
    table = markdown_table(
        ["part", "layer", "input", "ms", "MFLOP", "GFLOP/s", "HLO instructions"],
        [[r["part"], r["layer"], "×".join(map(str, r["input"])), f"{r['ms']:.3f}",
          f"{r['mflops']:.1f}", f"{r['gflops_per_s']:.1f}", r["hlo_instructions"]]
         for r in rows],
    )  # fmt: skip
    total = sum(r["ms"] for r in rows)
    print("\n" + table + f"\nparts' sum {total:.2f} ms; matmul peak {peak:.0f}")
    out = {"description": __doc__.split("\n\n")[0], "parts": rows, "parts_total_ms": total,
           "matmul_peak_gflops_per_s": peak, "table": table,
           **environment()}  # fmt: skip
    print("wrote", write_json("x3d_step_profile", out))


if __name__ == "__main__":
    main()
