"""`co.continualize` against the hand-built layers: the anchor network both ways.

    python experiments/bench_continualize.py [--streams 1,64] [--budget 2] [--rounds 3]

The anchor network (10 × Conv3d 3×3×3 + BatchNorm + ReLU, frames 28×28×32) written
in plain JAX (`lax.conv_general_dilated`, the BatchNorm formula, `jax.nn.relu`) and
continualized, next to the same network built from cojax layers
(`bench_streaming.cojax_network`), with the same weights. Both steps run through
`co.step_streams`, jitted with the state donated, timed in alternating rounds in one
run (the machine is noisy: each round times both once). Reports ms per call, the ratio
continualized / hand-built per stream count, and the largest difference between the
two steps' outputs over a stream. Writes results/bench_continualize.{json,png}.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # the plain-JAX network (a test helper)

import continualize_networks as networks  # noqa: E402
from bench_streaming import CHANNELS, SIZE, cojax_network, numpy_params  # noqa: E402
from continualize_networks import plain_anchor  # noqa: E402
from harness import (  # noqa: E402
    compiled,
    copy_tree,
    donated_calls,
    environment,
    figure,
    markdown_table,
    matmul_gflops,
    max_diff,
    save_figure,
    timeit,
    write_json,
)

import cojax as co  # noqa: E402


def step_exe(layer, params, streams: int, frame: jax.Array):
    spec = jax.ShapeDtypeStruct((SIZE, SIZE, CHANNELS), jnp.float32)
    states = co.init_streams(layer, params, spec, streams)
    exe, seconds = compiled(
        functools.partial(co.step_streams, layer), params, states, frame, donate=True
    )
    call, honoured = donated_calls(exe, params, copy_tree(states), frame)
    return call, honoured, seconds


def step_vs_clip(layer, params, clip) -> tuple[float, float]:
    """(max |steps - the clip function| over one stream's valid outputs, the clip
    outputs' std: the scale the difference is small against)."""
    run = jax.jit(co.forward_steps, static_argnums=0)
    _, ys, valid = run(layer, params, layer.init_state(params, clip[0]), clip)
    valid = np.asarray(valid)
    out = np.asarray(layer.forward(params, clip))
    return max_diff(np.asarray(ys)[valid], out[: int(valid.sum())]), float(out.std())


def parity(hand, plain, params) -> dict:
    """Steps vs clip outputs of the three real networks (Flax, Equinox, plain-JAX
    anchor; random weights and BatchNorm statistics), and the continualized anchor's
    steps vs the hand-built one's, in float32 at default precision."""
    rng = np.random.default_rng(1)
    report = {}
    for name, build in (("flax temporal CNN", networks.flax_temporal_cnn),
                        ("equinox 1D CNN", networks.equinox_1d_cnn)):  # fmt: skip
        fn, p, frame = build()
        layer = co.continualize(fn, jax.ShapeDtypeStruct(frame, jnp.float32), params=p)
        clip = jnp.asarray(rng.standard_normal((24, *frame)), jnp.float32)
        report[name] = step_vs_clip(layer, p, clip)
    clip = jnp.asarray(rng.standard_normal((24, SIZE, SIZE, CHANNELS)), jnp.float32)
    report["plain-JAX anchor"] = step_vs_clip(plain, params, clip)
    run = jax.jit(co.forward_steps, static_argnums=0)
    _, ys_hand, _ = run(hand, params, hand.init_state(params, clip[0]), clip)
    _, ys_plain, _ = run(plain, params, plain.init_state(params, clip[0]), clip)
    report["anchor: continualized vs hand-built steps"] = (max_diff(ys_plain, ys_hand), None)
    for name, (diff, scale) in report.items():
        print(
            f"  {name}: max |difference| {diff:.2e}"
            + (f" (outputs' std {scale:.2f})" if scale else "")
        )
    return {name: dict(max_diff=d, output_std=s) for name, (d, s) in report.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,64")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per timing")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]

    params = jax.tree_util.tree_map(jnp.asarray, numpy_params())
    hand = cojax_network()
    frame = jax.ShapeDtypeStruct((SIZE, SIZE, CHANNELS), jnp.float32)
    plain = co.continualize(plain_anchor, frame, params=params)
    assert (plain.delay, plain.receptive_field) == (hand.delay, hand.receptive_field)
    print("parity (steps vs the clip function):")
    agreement = parity(hand, plain, params)
    diff = agreement["anchor: continualized vs hand-built steps"]["max_diff"]
    peak = matmul_gflops(2048, budget=2.0)
    print(f"XLA matmul peak {peak:.0f} GFLOP/s")

    rng = np.random.default_rng(0)
    rows, table = [], []
    for s in streams:
        x = jnp.asarray(rng.standard_normal((s, SIZE, SIZE, CHANNELS)), jnp.float32)
        calls = {
            name: step_exe(layer, params, s, x)
            for name, layer in (("hand-built", hand), ("continualized", plain))
        }
        times = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, (call, _, _) in calls.items():
                times[name].append(timeit(call, budget_s=args.budget / args.rounds)[0])
        for name, (_, honoured, _) in calls.items():
            assert honoured(), f"{name}: the state was not donated"
        ms = {name: float(np.median(t)) for name, t in times.items()}
        ratio = ms["continualized"] / ms["hand-built"]
        rows.append(dict(streams=s, ms=ms, rounds=times, compile_s={n: c[2] for n, c in calls.items()},
                         ratio_continualized_over_hand=ratio))  # fmt: skip
        table.append([s, f"{ms['hand-built']:.2f}", f"{ms['continualized']:.2f}", f"{ratio:.3f}"])
        print(f"{s} stream(s): hand-built {ms['hand-built']:.2f} ms, continualized "
              f"{ms['continualized']:.2f} ms per call: ratio {ratio:.3f}", flush=True)  # fmt: skip

    print(
        markdown_table(["streams", "hand-built ms/call", "continualized ms/call", "ratio"], table)
    )
    within = all(r["ratio_continualized_over_hand"] <= 1.10 for r in rows)
    verdict = "within 10 % of the hand-built layers" if within else "NOT within 10 %"
    print(f"verdict: the continualized anchor network is {verdict}")
    write_json(
        "bench_continualize",
        dict(environment=environment(), matmul_gflops=peak, max_step_difference=diff,
             parity=agreement,
             rows=rows, within_10_percent=within, verdict=verdict),
    )  # fmt: skip
    fig, (ax,) = figure(width=5.0, height=3.5)
    x = np.arange(len(rows))
    for k, name in enumerate(("hand-built", "continualized")):
        ax.bar(x + 0.4 * k, [r["ms"][name] / r["streams"] for r in rows], 0.4, label=name)
    ax.set_xticks(x + 0.2, [f"{r['streams']} stream(s)" for r in rows])
    ax.set_ylabel("ms per stream per step")
    ax.set_title("anchor network: co.continualize vs cojax layers")
    ax.legend()
    save_figure(fig, "bench_continualize")


if __name__ == "__main__":
    main()
