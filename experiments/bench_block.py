"""Block steps: frames/s of `layer.step_block` on k = 1, 4, 16 frames per call.

Models: the anchor network (10 × Conv3d 3×3×3 + BN + ReLU, 32 channels, 28×28 frames,
from bench_streaming.py) and CoX3D-S (`co.x3d("S")`, 64×64 frames to keep a 2-core
run short), random weights, 1 stream and `--streams` streams (vmap). Each row is one
jitted, state-donating call on k frames per stream: ms per call (median), frames/s
(k × streams / time), XLA's FLOPs of the compiled call, GFLOP/s and % of an f32
2048² matmul measured in the same run. k = 1 is `layer.step`; every block's outputs
are checked against k single steps (max abs difference).

    python experiments/bench_block.py [--streams 8] [--budget 2]

Writes experiments/results/block_steps.{json,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_streaming import cojax_network
from harness import environment, matmul_gflops, timeit, write_json

import cojax as co
from cojax.demo_models import init_random

RESULTS = Path(__file__).resolve().parent / "results"
BLOCKS = (1, 4, 16)


def models() -> dict:
    return {
        "anchor (10 × Conv3d, 28²)": (cojax_network(), (28, 28, 32)),
        "CoX3D-S (64²)": (co.x3d("S"), (64, 64, 3)),
    }


def call(layer, k: int, streams: int):
    """A jitted, donating call on k frames per stream (k = 1: `step`)."""
    if k == 1:
        one = lambda p, s, x: layer.step(p, s, x[0])  # noqa: E731
    else:
        one = layer.step_block
    fn = one if streams == 1 else jax.vmap(one, in_axes=(None, 0, 0))
    return jax.jit(fn, donate_argnums=1)


def state_for(layer, params, shape, streams: int):
    if streams == 1:
        return layer.init_state(params, jnp.zeros(shape))
    return co.init_streams(layer, params, jnp.zeros(shape), streams)


def check(layer, params, shape, k: int) -> float:
    """Max abs difference between one block of k frames (after a warm-up block that
    fills the buffers) and k single steps, one stream."""
    rng = np.random.default_rng(0)
    warm = jnp.asarray(rng.standard_normal((layer.delay + 1, *shape)), jnp.float32)
    frames = jnp.asarray(rng.standard_normal((k, *shape)), jnp.float32)
    state, _, _ = co.forward_steps(layer, params, layer.init_state(params, jnp.zeros(shape)), warm)
    _, (ys, _) = jax.jit(layer.step_block)(params, state, frames)
    _, ref, _ = co.forward_steps(layer, params, state, frames)
    return float(jnp.abs(ys - ref).max())


def bench(name, layer, shape, streams_list, budget: float, peak: float) -> list[dict]:
    params = init_random(layer, jax.random.PRNGKey(0))
    rows = []
    for streams in streams_list:
        for k in BLOCKS:
            fn = call(layer, k, streams)
            lead = (k,) if streams == 1 else (streams, k)
            frames = jnp.asarray(
                np.random.default_rng(1).standard_normal((*lead, *shape)), jnp.float32
            )
            state = state_for(layer, params, shape, streams)
            flops = co.compiled_flops(fn.lower(params, state, frames).compile())
            holder = {"state": state}

            def run(holder=holder, fn=fn, frames=frames):
                holder["state"], out = fn(params, holder["state"], frames)
                return out

            ms, _ = timeit(run, budget_s=budget)
            gflops = flops / ms / 1e6
            rows.append(
                {
                    "model": name,
                    "streams": streams,
                    "block": k,
                    "ms_per_call": ms,
                    "frames_per_s": k * streams / ms * 1e3,
                    "xla_flops_per_call": flops,
                    "gflop_per_s": gflops,
                    "pct_of_matmul_peak": 100 * gflops / peak,
                    "max_abs_diff_vs_steps": None if k == 1 else check(layer, params, shape, k),
                }
            )
            r = rows[-1]
            print(
                f"{name:28s} streams {streams:3d} k {k:2d}: {ms:8.2f} ms/call "
                f"{r['frames_per_s']:8.1f} frames/s {gflops:6.1f} GFLOP/s "
                f"({r['pct_of_matmul_peak']:.0f}%) diff {r['max_abs_diff_vs_steps']}",
                flush=True,
            )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6))
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        for streams in sorted({r["streams"] for r in rows}):
            sel = [r for r in rows if r["model"] == name and r["streams"] == streams]
            ax.plot(
                [r["block"] for r in sel],
                [r["frames_per_s"] for r in sel],
                "o-",
                label=f"{streams} stream(s)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(BLOCKS, [str(k) for k in BLOCKS])
        ax.set_xlabel("frames per call (k)")
        ax.set_ylabel("frames / s")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per row")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    peak = matmul_gflops(2048, args.budget, "jax")
    print(f"XLA f32 2048² matmul: {peak:.0f} GFLOP/s")
    rows = []
    for name, (layer, shape) in models().items():
        rows += bench(name, layer, shape, (1, args.streams), args.budget, peak)
    RESULTS.mkdir(exist_ok=True)
    meta = {**environment(), "matmul_peak_gflop_per_s": peak}
    write_json("block_steps", {"meta": meta, "rows": rows})
    plot(rows, RESULTS / "block_steps.png")
    print(f"wrote {RESULTS / 'block_steps.json'} and block_steps.png")


if __name__ == "__main__":
    main()
