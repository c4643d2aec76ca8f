"""Load test of `co.StreamPool`: many simulated streams with random arrivals.

For each model and capacity, `--streams` simulated streams arrive over time (each opens
at a random tick, sends `--frames` frames, one per tick with probability 0.8, then
closes); a stream waits while the pool is full. Every tick pushes the frames of the
open streams that have one. Measured: wall time per tick (p50 / p99 / max, ms, after
the compiling first tick), throughput (frames / s over the run after that tick, host
work included) and the outputs of a
sample of streams (`--check` of them) against the same frames fed alone through
`layer.step`: nothing dropped (every pushed frame gets an output), nothing mixed up.

Models: the demo's small X3D-like CNN (32×32 frames), CoX3D-S (`co.x3d("S")`, 64×64
frames and a tenth of the streams, to keep a 2-core run short) and the CoOadTR-b1
encoder (N 64, E 1024), random weights.

    python experiments/pool_load.py [--streams 1000] [--frames 40] [--check 8]

Writes experiments/results/pool_load.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from harness import environment, write_json

import cojax as co
from cojax.demo_models import init_random, small_x3d_like

RESULTS = Path(__file__).resolve().parent / "results"


def models() -> dict:
    encoder = co.TransformerEncoder(1024, 8, 64, num_layers=1, dim_feedforward=1024)
    return {
        "small CNN (32x32)": (small_x3d_like(num_classes=10), (32, 32, 3), (16, 64, 256)),
        "CoX3D-S (64x64)": (co.x3d("S", 400), (64, 64, 3), (4, 16, 64)),
        "CoOadTR-b1 encoder": (encoder, (1024,), (16, 64, 256)),
    }


def simulate(layer, params, frame_shape, capacity, args, rng) -> dict:
    pool = co.StreamPool(layer, params, capacity, jnp.zeros(frame_shape))
    n, frames_each = args.streams, args.frames
    arrival = np.sort(rng.integers(0, n * frames_each // capacity + 1, n))
    sample = set(rng.choice(n, size=min(args.check, n), replace=False).tolist())
    waiting, sent, times, total, pushed = list(range(n)), {}, [], 0, 0
    recorded: dict[int, list] = {i: [] for i in sample}
    tick, start = 0, time.perf_counter()
    while waiting or len(pool):
        while waiting and arrival[waiting[0]] <= tick and len(pool) < capacity:
            sid = waiting.pop(0)
            pool.open(sid)
            sent[sid] = 0
        frames = {}
        for sid in pool.ids:
            if rng.random() < 0.8:
                x = rng.standard_normal(frame_shape).astype(np.float32)
                frames[sid] = x
                if sid in sample:
                    recorded[sid].append(x)
        t0 = time.perf_counter()
        out = pool.push(frames)
        times.append(1e3 * (time.perf_counter() - t0))
        assert set(out) == set(frames)  # nothing dropped
        for sid, (y, valid) in out.items():
            if sid in sample:
                recorded[sid][-1] = (recorded[sid][-1], y, valid)
            sent[sid] += 1
            pushed += 1
            if sent[sid] == frames_each:
                pool.close(sid)
        total += len(frames)
        if tick == 0:
            first_frames = len(frames)
        tick += 1
    # steady state: the first tick (which compiles) is left out of the throughput
    wall = time.perf_counter() - start - times[0] / 1e3
    step = jax.jit(layer.step)
    worst = 0.0
    for items in recorded.values():  # nothing mixed up
        state = layer.init_state(params, jnp.zeros(frame_shape))
        for x, y, valid in items:
            state, (y1, v1) = step(params, state, x)
            assert bool(v1) == valid
            worst = max(worst, float(np.abs(np.asarray(y1) - y).max()))
    lat = np.asarray(times[1:])
    return {
        "capacity": capacity,
        "ticks": tick,
        "frames": total,
        "frames_per_s": (total - first_frames) / wall,
        "tick_ms_p50": float(np.percentile(lat, 50)),
        "tick_ms_p99": float(np.percentile(lat, 99)),
        "tick_ms_max": float(lat.max()),
        "first_tick_ms (compiles)": times[0],
        "traces": pool.traces,
        "checked_streams": len(recorded),
        "max_abs_diff_vs_alone": worst,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in results.items():
        caps = [r["capacity"] for r in rows]
        axes[0].plot(caps, [r["frames_per_s"] for r in rows], "o-", label=name)
        axes[1].plot(caps, [r["tick_ms_p99"] for r in rows], "o-", label=name)
    for ax, label in zip(axes, ("frames / s", "p99 ms per tick")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("pool capacity (slots)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("co.StreamPool load test (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--check", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=None, help="a subset of the model names")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    for name, (layer, frame_shape, capacities) in models().items():
        if args.models and not any(m in name for m in args.models):
            continue
        try:  # random BatchNorm statistics where there are any
            params = init_random(layer, jax.random.PRNGKey(0))
        except ValueError:  # layers init_random has no rule for (LayerNorm): their init
            params = layer.init(jax.random.PRNGKey(0))
        results[name] = []
        # CoX3D-S costs ~0.4 GFLOP a frame: a tenth of the streams keeps the run short
        run_args = argparse.Namespace(**vars(args))
        if "CoX3D" in name:
            run_args.streams = max(args.streams // 10, 1)
        for capacity in capacities:
            row = simulate(layer, params, frame_shape, capacity, run_args, rng)
            row["streams"] = run_args.streams
            results[name].append(row)
            print(f"{name}, {capacity} slots: {json.dumps(row)}", flush=True)
    meta = environment(streams=args.streams, frames_per_stream=args.frames)
    write_json("pool_load", {"meta": meta, "results": results})
    plot(results, RESULTS / "pool_load.png")
    print("\n| model | slots | frames/s | tick p50 / p99 / max ms | checked streams, max |Δ| |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            print(f"| {name} | {r['capacity']} | {r['frames_per_s']:.0f} | {r['tick_ms_p50']:.2f} / "
                  f"{r['tick_ms_p99']:.2f} / {r['tick_ms_max']:.2f} | {r['checked_streams']}, "
                  f"{r['max_abs_diff_vs_alone']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
