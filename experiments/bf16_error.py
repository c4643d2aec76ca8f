"""bfloat16 deployment: the stream pool and the exported step in bfloat16 vs float32.

For each model, `--streams` streams send random frames (the warm-up of `delay` frames,
then `--frames` more) through a
`co.StreamPool` with float32 frames and one with bfloat16 frames (float32 params,
cast by each layer; state and outputs bfloat16; BatchNorm statistics float32; convs
and linear layers accumulate in float32). Reported per model: the largest and the
mean absolute error of the bfloat16 outputs, both relative to the float32 outputs'
largest magnitude, and the error of the exported bfloat16 step (`cojax.export`,
`streams="n"`, run through `load_step`) against the in-process bfloat16 pool.

Models: the demo's small X3D-like CNN (32²), the anchor network (10 × Conv3d + BN +
ReLU, 28²), CoX3D-S (64²) and the CoOadTR-b1 encoder (E 1024, N 64), random weights.

    python experiments/bf16_error.py [--streams 4] [--frames 24]

Writes experiments/results/bf16_error.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_streaming import cojax_network
from harness import environment, write_json

import cojax as co
from cojax.demo_models import init_random, small_x3d_like
from cojax.export import export_step, load_step

RESULTS = Path(__file__).resolve().parent / "results"


def models() -> dict:
    encoder = co.TransformerEncoder(1024, 8, 64, num_layers=1, dim_feedforward=1024)
    return {
        "small CNN (32²)": (small_x3d_like(), (32, 32, 3)),
        "anchor (10 × Conv3d, 28²)": (cojax_network(), (28, 28, 32)),
        "CoX3D-S (64²)": (co.x3d("S"), (64, 64, 3)),
        "CoOadTR-b1 encoder": (encoder, (1024,)),
    }


def params_for(layer):
    try:
        return init_random(layer, jax.random.PRNGKey(0))  # BatchNorm statistics drawn
    except ValueError:
        return layer.init(jax.random.PRNGKey(0))


def run_pool(layer, params, frames: np.ndarray, dtype) -> np.ndarray:
    """All streams' outputs `(T, S, ...)` (float32 numpy) through a pool in `dtype`."""
    steps, streams = frames.shape[:2]
    pool = co.StreamPool(layer, params, streams, jnp.zeros(frames.shape[2:], dtype))
    for i in range(streams):
        pool.open(i)
    ys = []
    for t in range(steps):
        out = pool.push({i: frames[t, i].astype(dtype) for i in range(streams)})
        ys.append(np.stack([np.asarray(out[i][0], np.float32) for i in range(streams)]))
    return np.stack(ys)


def run_export(layer, params, frames: np.ndarray, dtype) -> np.ndarray:
    with tempfile.TemporaryDirectory() as directory:
        export_step(layer, params, jnp.zeros(frames.shape[2:], dtype), directory, streams="n")
        step, one = load_step(directory)
        state = [np.repeat(a[None], frames.shape[1], axis=0) for a in one]
        ys = []
        for x in frames:
            state, (y,), _ = step(state, jnp.asarray(x, dtype))
            ys.append(np.asarray(y, np.float32))
    return np.stack(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    rows = []
    for name, (layer, shape) in models().items():
        params = params_for(layer)
        rng = np.random.default_rng(0)
        steps = layer.delay + args.frames  # the warm-up, then --frames outputs per stream
        frames = rng.standard_normal((steps, args.streams, *shape)).astype(np.float32)
        y32 = run_pool(layer, params, frames, jnp.float32)
        y16 = run_pool(layer, params, frames, jnp.bfloat16)
        exported = run_export(layer, params, frames, jnp.bfloat16)
        # compare the outputs after the warm-up (every model here has stride 1)
        y32, y16, exported = (a[layer.delay :] for a in (y32, y16, exported))
        scale = float(np.abs(y32).max())
        if scale == 0:
            raise RuntimeError(f"{name}: no non-zero outputs to compare")
        err = np.abs(y16 - y32)
        rows.append(
            {
                "model": name,
                "outputs_compared": int(y32.size),
                "float32_max_abs": scale,
                "bf16_max_abs_error": float(err.max()),
                "bf16_max_error_relative": float(err.max()) / scale,
                "bf16_mean_error_relative": float(err.mean()) / scale,
                "exported_bf16_vs_pool_bf16_max_abs": float(np.abs(exported - y16).max()),
            }
        )
        r = rows[-1]
        print(
            f"{name:28s} max rel {r['bf16_max_error_relative']:.2e}  mean rel "
            f"{r['bf16_mean_error_relative']:.2e}  exported vs pool "
            f"{r['exported_bf16_vs_pool_bf16_max_abs']:.2e}",
            flush=True,
        )
    meta = environment(streams=args.streams, frames=args.frames)
    print("wrote", write_json("bf16_error", {"meta": meta, "rows": rows}))


if __name__ == "__main__":
    main()
