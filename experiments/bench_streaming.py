"""Streaming benchmark: continual step vs sliding-window clip, cojax vs PyTorch.

The anchor network: 10 × (Conv3d 3×3×3, 32 → 32 channels, padding (0, 1, 1),
BatchNorm3d, ReLU) on 28×28 frames. Temporal padding 0, so delay 20 and receptive
field 21: a clip of 21 frames gives exactly the one output frame a step gives.

Rows, each for 1 stream and 64 streams (`jax.vmap` for cojax, a torch batch of 64):
- cojax step (jit, `co.step_streams` for 64 streams)
- cojax sliding-window clip: `forward` on the latest 21 frames (jit, same kernels)
- PyTorch continual-inference `forward_step` (buffer already full)
- PyTorch clip forward of the same network (`torch.nn`) on 21 frames
plus torch at batch 1 on one thread, and cojax step rows rerun under XLA CPU flags in
fresh processes (XNNPACK, oneDNN). All outputs are cross-checked (cojax step == cojax
clip == torch forward_step == torch clip).

The torch rows run in their own process (no XLA thread pool beside torch's OpenMP
threads) with OMP_WAIT_POLICY=PASSIVE by default: on this shared 2-core machine, with
the default (spinning) policy a torch forward_step took ~550 ms instead of ~30 ms
whenever another process held a core. `--omp-wait-policy default` keeps torch's own.

Times: wall ms per call after warm-up, median over repeats (each call blocked until
ready). GFLOP/s use the ANALYTIC count (2 × multiply-adds of the convolutions,
padding taps included; BN/ReLU not counted) and are compared with the peak of a large
f32 matmul measured in the same run in XLA and in torch. XLA's cost-analysis FLOPs of
the compiled step and clip are reported beside them.

    .venv/bin/python experiments/bench_streaming.py [--budget 1.0] [--no-flags]

Writes experiments/results/streaming.json and streaming.png. The machine may be shared:
the load average at the start and end is printed and saved.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    environment,
    matmul_gflops,
    max_diff,
    run_torch_process,
    timeit,
    torch_report,
)
from harness import no_sync as _no_sync  # noqa: E402

import cojax as co  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS, CHANNELS, SIZE, STREAMS = 10, 32, 28, 64
MATMUL_N = 2048
# continual-inference at batch 1, measured earlier on this machine
ANCHORS_MS = {"torch forward_step": 21.9, "torch clip forward": 90.1}
FLAG_VARIANTS = {
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
}


# --------------------------------------------------------------------------- networks


def cojax_network() -> co.Sequential:
    """The anchor network as a cojax `Sequential` (frame `(28, 28, 32)`)."""
    blocks = []
    for _ in range(LAYERS):
        conv = co.Conv3d(CHANNELS, CHANNELS, 3, padding=(0, 1, 1))
        blocks += [conv, co.BatchNorm3d(CHANNELS), co.ReLU()]
    return co.Sequential(*blocks)


def numpy_params(seed: int = 0) -> dict:
    """torch-default conv weights and random BN statistics (NumPy, float32), keyed like
    `cojax_network()`'s children: conv "3i", BatchNorm "3i+1", ReLU "3i+2"."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(27 * CHANNELS)
    params = {}
    for i in range(LAYERS):
        params[str(3 * i)] = {
            "kernel": rng.uniform(-bound, bound, (3, 3, 3, CHANNELS, CHANNELS)),
            "bias": rng.uniform(-bound, bound, (CHANNELS,)),
        }
        params[str(3 * i + 1)] = {
            "mean": 0.1 * rng.standard_normal(CHANNELS),
            "var": rng.uniform(0.5, 1.5, CHANNELS),
            "scale": rng.uniform(0.5, 1.5, CHANNELS),
            "bias": 0.1 * rng.standard_normal(CHANNELS),
        }
        params[str(3 * i + 2)] = {}
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def torch_modules(params: dict, conv_type) -> list[torch.nn.Module]:
    """The network as torch modules with the same weights (`conv_type`: torch.nn.Conv3d
    or continual.Conv3d)."""
    modules = []
    for i in range(LAYERS):
        conv_p = {k: torch.from_numpy(v.copy()) for k, v in params[str(3 * i)].items()}
        bn_p = {k: torch.from_numpy(v.copy()) for k, v in params[str(3 * i + 1)].items()}
        conv = conv_type(CHANNELS, CHANNELS, 3, padding=(0, 1, 1))
        # cojax (k_t, k_h, k_w, C_in, C_out) -> torch (C_out, C_in, k_t, k_h, k_w)
        conv.weight.data = conv_p["kernel"].permute(4, 3, 0, 1, 2).contiguous()
        conv.bias.data = conv_p["bias"]
        bn = torch.nn.BatchNorm3d(CHANNELS)
        bn.running_mean.data, bn.running_var.data = bn_p["mean"], bn_p["var"]
        bn.weight.data, bn.bias.data = bn_p["scale"], bn_p["bias"]
        modules += [conv, bn, torch.nn.ReLU()]
    return modules


def torch_networks(params: dict):
    """(continual-inference network, torch.nn clip network), eval mode, same weights."""
    import continual

    clip_net = torch.nn.Sequential(*torch_modules(params, torch.nn.Conv3d)).eval()
    co_net = continual.Sequential(*torch_modules(params, continual.Conv3d)).eval()
    return co_net, clip_net


def analytic_flops() -> tuple[float, float]:
    """(step, 21-frame clip) FLOPs: 2 × MACs of the convolutions."""
    per_frame = 2.0 * 27 * CHANNELS * CHANNELS * SIZE * SIZE
    window = 2 * LAYERS + 1
    clip_frames = sum(window - 2 * (i + 1) for i in range(LAYERS))
    return LAYERS * per_frame, clip_frames * per_frame


# --------------------------------------------------------------------------- timing


def stream_frames(streams: int, seed: int = 1) -> np.ndarray:
    """Random frames `(streams, 21, 28, 28, 32)`, float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((streams, 2 * LAYERS + 1, SIZE, SIZE, CHANNELS)).astype(np.float32)


def warm_cojax_step(net, params, clips: np.ndarray):
    """Jitted multi-stream step and the states after the first 20 frames (buffers full)."""
    step = jax.jit(functools.partial(co.step_streams, net))
    states = co.init_streams(net, params, clips[0, 0], clips.shape[0])
    for t in range(clips.shape[1] - 1):
        states, _ = step(params, states, clips[:, t])
    return step, states


def bench_cojax(net, params, streams: int, budget: float) -> tuple[list[dict], dict]:
    clips = stream_frames(streams)
    step, states = warm_cojax_step(net, params, clips)
    last = jnp.asarray(clips[:, -1])
    ms_step, min_step = timeit(step, params, states, last, budget_s=budget)
    _, (y_step, valid) = step(params, states, last)
    forward = jax.jit(jax.vmap(net.forward, in_axes=(None, 0)))
    windows = jnp.asarray(clips)
    ms_clip, min_clip = timeit(forward, params, windows, budget_s=budget)
    y_clip = forward(params, windows)[:, 0]
    outputs = {"valid": bool(np.all(valid)), "step": np.asarray(y_step), "clip": np.asarray(y_clip)}
    rows = [
        row("cojax step (jit)", streams, ms_step, min_step),
        row("cojax sliding-window clip (jit)", streams, ms_clip, min_clip),
    ]
    return rows, outputs


def bench_torch(co_net, clip_net, streams: int, budget: float) -> tuple[list[dict], dict]:
    clips = torch.from_numpy(stream_frames(streams)).permute(0, 4, 1, 2, 3).contiguous()
    last = clips[:, :, -1].contiguous()
    with torch.inference_mode():
        co_net.clean_state()
        for t in range(clips.shape[2] - 1):
            co_net.forward_step(clips[:, :, t])
        y_step = co_net.forward_step(last)  # the first output: frames 0..20
        # The buffer is full: every further step emits (the stream just continues).
        ms_step, min_step = timeit(co_net.forward_step, last, budget_s=budget, sync=_no_sync)
        ms_clip, min_clip = timeit(clip_net, clips, budget_s=budget, sync=_no_sync)
        y_clip = clip_net(clips)[:, :, 0]
    to_cl = lambda y: y.permute(0, 2, 3, 1).numpy()  # noqa: E731  (B, C, H, W) -> (B, H, W, C)
    rows = [
        row("torch continual-inference forward_step", streams, ms_step, min_step),
        row("torch clip forward (torch.nn)", streams, ms_clip, min_clip),
    ]
    return rows, {"step": to_cl(y_step), "clip": to_cl(y_clip)}


def torch_one_thread_rows(co_net, clip_net, budget: float) -> list[dict]:
    """torch at batch 1 on ONE thread: OpenMP's barriers suffer most when another
    process shares the cores, so this row shows how much of the gap is contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows, _ = bench_torch(co_net, clip_net, 1, budget)
    finally:
        torch.set_num_threads(threads)
    for r in rows:
        r["impl"] += " [1 thread]"
    return rows


def row(impl: str, streams: int, ms: float, best: float) -> dict:
    step_flops, clip_flops = analytic_flops()
    flops = clip_flops if "clip" in impl else step_flops
    return {
        "impl": impl,
        "streams": streams,
        "ms_per_call": ms,
        "ms_per_stream": ms / streams,
        "min_ms_per_stream": best / streams,
        "analytic_gflop_per_call": flops * streams / 1e9,
        "gflops_per_s": flops * streams / ms / 1e6,
    }


def cojax_step_rows(budget: float) -> list[dict]:
    """Only the cojax step rows (run in the XLA_FLAGS subprocesses)."""
    net = cojax_network()
    params = jax.tree_util.tree_map(jnp.asarray, numpy_params())
    rows = []
    for streams in (1, STREAMS):
        clips = stream_frames(streams)
        step, states = warm_cojax_step(net, params, clips)
        last = jnp.asarray(clips[:, -1])
        ms, best = timeit(step, params, states, last, budget_s=budget)
        rows.append(row("cojax step (jit)", streams, ms, best))
    return rows


def torch_only(budget: float, out: str) -> dict:
    """All torch rows (run in a subprocess that never starts XLA's thread pool)."""
    co_net, clip_net = torch_networks(numpy_params())
    rows, outputs = [], {}
    for streams in (1, STREAMS):
        r, o = bench_torch(co_net, clip_net, streams, budget)
        rows += r
        outputs.update({f"{k}_{streams}": v for k, v in o.items()})
    rows += torch_one_thread_rows(co_net, clip_net, budget)
    np.savez(out, **outputs)
    return torch_report(rows, budget, MATMUL_N)


def run_torch(budget: float, omp_wait_policy: str) -> tuple[dict, dict]:
    """Run `torch_only` in a fresh process; returns its report and the outputs."""
    env = dict(os.environ)
    if omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "torch_outputs.npz")
        return run_torch_process(__file__, [], out, budget, env, timeout=400)


def flag_rows(budget: float) -> list[dict]:
    rows = []
    for name, flag in FLAG_VARIANTS.items():
        env = dict(os.environ, XLA_FLAGS=flag)
        cmd = [sys.executable, __file__, "--cojax-step-only", "--budget", str(budget)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            print(f"  XLA_FLAGS={flag}: timed out")
            continue
        if proc.returncode != 0:
            print(f"  XLA_FLAGS={flag}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        for r in json.loads(proc.stdout.strip().splitlines()[-1]):
            r["impl"] = f"cojax step (jit), XLA_FLAGS {name}"
            r["xla_flags"] = flag
            rows.append(r)
    return rows


# --------------------------------------------------------------------------- reporting


def _cell(r: dict | None, key: str, fmt: str) -> str:
    return fmt.format(r[key]) if r else "–"


def _pct(r: dict | None, peak: float) -> str:
    return f"{100 * r['gflops_per_s'] / peak:.0f}%" if r else "–"


def table(rows: list[dict], peak: dict) -> str:
    """Markdown table; % of peak against XLA's matmul for cojax rows, torch's for torch."""
    lines = [
        "| implementation | 1 stream: ms | 64 streams: ms / call | 64 streams: ms / stream "
        "| GFLOP/s (1 / 64) | % of matmul peak (1 / 64) |",
        "|---|---|---|---|---|---|",
    ]
    for impl in dict.fromkeys(r["impl"] for r in rows):
        by = {r["streams"]: r for r in rows if r["impl"] == impl}
        one, many = by.get(1), by.get(STREAMS)
        top = peak["torch_gflops_per_s" if impl.startswith("torch") else "xla_gflops_per_s"]
        lines.append(
            f"| {impl} | {_cell(one, 'ms_per_call', '{:.2f}')} | "
            f"{_cell(many, 'ms_per_call', '{:.1f}')} | {_cell(many, 'ms_per_stream', '{:.2f}')} | "
            f"{_cell(one, 'gflops_per_s', '{:.1f}')} / {_cell(many, 'gflops_per_s', '{:.1f}')} | "
            f"{_pct(one, top)} / {_pct(many, top)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(impls) + 1.8))
    y = np.arange(len(impls))
    for k, (streams, color) in enumerate(((1, "tab:blue"), (STREAMS, "tab:orange"))):
        vals = [
            next(
                (r["ms_per_stream"] for r in rows if r["impl"] == i and r["streams"] == streams), 0
            )
            for i in impls
        ]
        ax.barh(y + (k - 0.5) * 0.4, vals, 0.4, color=color, label=f"{streams} stream(s)")
    ax.set_yticks(y, impls)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per stream per frame (median, log scale)")
    ax.set_title(
        f"{LAYERS} × (Conv3d 3×3×3, {CHANNELS} ch, {SIZE}×{SIZE}, BN, ReLU): one output frame"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per row")
    parser.add_argument("--no-flags", action="store_true", help="skip the XLA_FLAGS rows")
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for the torch process: PASSIVE (default), ACTIVE, or 'default' "
        "(leave the environment as it is)",
    )
    parser.add_argument("--cojax-step-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-only", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cojax_step_only:
        print(json.dumps(cojax_step_rows(args.budget)))
        return
    if args.torch_only:
        print(json.dumps(torch_only(args.budget, args.torch_only)))
        return

    load_start = os.getloadavg()
    print(f"load average at start: {load_start}; cpus {os.cpu_count()}, "
          f"jax {jax.__version__}, torch {torch.__version__}", flush=True)  # fmt: skip
    net = cojax_network()
    assert (net.delay, net.receptive_field) == (2 * LAYERS, 2 * LAYERS + 1)
    params = jax.tree_util.tree_map(jnp.asarray, numpy_params())

    frame = jax.ShapeDtypeStruct((SIZE, SIZE, CHANNELS), jnp.float32)
    window = jax.ShapeDtypeStruct((net.receptive_field, SIZE, SIZE, CHANNELS), jnp.float32)
    xla = {"step": co.flops(net, params, frame), "clip": co.clip_flops(net, params, window)}
    step_flops, clip_flops = analytic_flops()
    print(f"FLOPs per output frame: analytic step {step_flops / 1e6:.1f} M, clip "
          f"{clip_flops / 1e6:.1f} M; XLA-measured step {xla['step'] / 1e6:.1f} M, clip "
          f"{xla['clip'] / 1e6:.1f} M", flush=True)  # fmt: skip

    torch_report, torch_out = run_torch(args.budget, args.omp_wait_policy)
    peak = {
        "n": MATMUL_N,
        "xla_gflops_per_s": matmul_gflops(MATMUL_N, args.budget, "jax"),
        "torch_gflops_per_s": torch_report["torch_matmul_gflops_per_s"],
    }
    print(f"matmul peak ({MATMUL_N}², f32): XLA {peak['xla_gflops_per_s']:.1f} GFLOP/s, torch "
          f"{peak['torch_gflops_per_s']:.1f} GFLOP/s; torch threads "
          f"{torch_report['torch_threads']}, OMP_WAIT_POLICY "
          f"{torch_report['omp_wait_policy']}", flush=True)  # fmt: skip

    rows, checks = [], {}
    for streams in (1, STREAMS):
        r_jax, out = bench_cojax(net, params, streams, args.budget)
        rows += r_jax
        checks[streams] = {
            "cojax step valid": out["valid"],
            "max |cojax step - cojax clip|": max_diff(out["step"], out["clip"]),
            "max |cojax step - torch forward_step|": max_diff(
                out["step"], torch_out[f"step_{streams}"]
            ),
            "max |cojax clip - torch clip|": max_diff(out["clip"], torch_out[f"clip_{streams}"]),
        }
        print(f"  checks ({streams} streams): {checks[streams]}", flush=True)
    rows += torch_report["rows"]
    if not args.no_flags:
        rows += flag_rows(args.budget)
    for r in rows:
        print(f"  {r['impl']:52s} streams={r['streams']:3d} {r['ms_per_call']:10.2f} ms/call "
              f"{r['ms_per_stream']:8.2f} ms/stream")  # fmt: skip

    print("\n" + table(rows, peak))
    one = {r["impl"]: r["ms_per_call"] for r in rows if r["streams"] == 1}
    print(f"\nspec anchors (batch 1): torch forward_step {ANCHORS_MS['torch forward_step']} ms, "
          f"clip {ANCHORS_MS['torch clip forward']} ms; measured here "
          f"{one['torch continual-inference forward_step']:.1f} ms and "
          f"{one['torch clip forward (torch.nn)']:.1f} ms")  # fmt: skip

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "description": __doc__.split("\n\n")[0],
        "network": f"{LAYERS} x (Conv3d 3x3x3 {CHANNELS}->{CHANNELS}, padding (0,1,1), "
        f"BatchNorm3d, ReLU), frame {SIZE}x{SIZE}x{CHANNELS}, delay {net.delay}, "
        f"receptive field {net.receptive_field}",
        "timing": "ms per call, median after warm-up; per stream = call / streams",
        "gflops_basis": "analytic: 2 x multiply-adds of the convolutions incl. padding taps",
        "analytic_flops": {"step": step_flops, "clip": clip_flops},
        "xla_cost_analysis_flops": xla,
        "peak_matmul": peak,
        "anchors_ms_batch1": ANCHORS_MS,
        "checks": {str(k): v for k, v in checks.items()},
        "rows": rows,
        **environment(torch_report),
    }
    (RESULTS / "streaming.json").write_text(json.dumps(result, indent=2))
    plot(rows, RESULTS / "streaming.png")
    print(f"\nwrote {RESULTS / 'streaming.json'} and streaming.png "
          f"({result['runtime_s']:.0f} s; load average at end {result['load_average_end']})")  # fmt: skip


if __name__ == "__main__":
    main()
