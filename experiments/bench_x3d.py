"""X3D-S speed: CoX3D-S step vs sliding-window clip inference, cojax vs PyTorch.

One X3D-S (13 × 160², 400 classes, softmax head): random weights from pytorchvideo's
`create_x3d()` (torch.manual_seed(0); BN affine and statistics randomised), loaded into
cojax with `conversion.load_x3d`, so both sides run the same weights. Rows, at 1 stream
and 8 streams (`jax.vmap` / `co.step_streams` for cojax, a torch batch of 8):
- CoX3D-S `step` (jit), se_scope "frame" (the reference CoX3D's per-frame SE) and
  se_scope "clip" (X3D's SE exactly, 180 frames more delay): one frame in, one
  prediction out
- cojax sliding-window clip: `forward` (se_scope "clip", i.e. X3D exactly) on the
  latest 13-frame clip (jit, same kernels)
- PyTorch X3D-S clip model (`create_x3d`, eval, no_grad) on the same 13-frame clip
Each row produces one prediction per stream per call, so "ms per prediction" compares
them directly (the paper's CPU: CoX3D-S 13.2 vs X3D-S 2.23 evaluations/s, 5.9×).

Also: state memory per stream (bytes of the leaves of `jax.eval_shape(init_state)`),
FLOPs counted by XLA's cost analysis of the compiled step / clip programs (the count
`co.flops` / `co.clip_flops` give, read from the very executables timed here to avoid
compiling X3D twice), achieved GFLOP/s against a 2048² f32 matmul measured in the same
run, and the measured speed-up (clip ms / step ms) against the FLOP reduction
(clip FLOPs / step FLOPs). Cross-checks: the cojax clip-SE forward, and the clip-SE
steps over the 13-frame clip with its end padding flushed (`pad_end=True`), against
torch X3D-S; the frame-SE forward against torch with a per-frame SE.

The torch rows run in a subprocess (OMP_WAIT_POLICY=PASSIVE, see bench_streaming.py).
Times: wall ms per call, median after one warm-up call, few repeats (`--budget` s each).

    .venv/bin/python experiments/bench_x3d.py [--budget 2.0]

Writes experiments/results/x3d_speed.json and x3d_speed.png; prints the load average.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (  # noqa: E402
    compiled,
    environment,
    matmul_gflops,
    max_diff,
    run_torch_process,
    timeit,
    torch_report,
)
from harness import no_sync as _no_sync  # noqa: E402

import cojax as co  # noqa: E402
from cojax.demo_models import num_params  # noqa: E402
from cojax.flops import compiled_flops  # noqa: E402
from conversion import load_x3d  # noqa: E402
from conversion.pytorchvideo import require_create_x3d  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FRAMES, CROP, CLASSES, STREAMS = 13, 160, 400, 8
MATMUL_N = 2048
PAPER = {"CoX3D-S evals/s": 13.2, "X3D-S evals/s": 2.23, "speed-up": 13.2 / 2.23}
STEP, STEP_CLIP_SE, CLIP, TORCH = (
    "CoX3D-S step, frame SE (cojax, jit)",
    "CoX3D-S step, clip SE = X3D (cojax, jit)",
    "X3D-S clip (cojax forward, jit)",
    "X3D-S clip (PyTorch create_x3d)",
)
IMPLS = (STEP, STEP_CLIP_SE, CLIP, TORCH)


# --------------------------------------------------------------------------- torch side


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN affine and statistics: create_x3d zero-initialises each block's last BN
    (norm_c), which would make every residual branch (and the checks) vanish."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen) * 0.1
            m.running_mean = torch.randn(n, generator=gen) * 0.1
            m.running_var = torch.rand(n, generator=gen) + 0.5
    return model.eval()


def per_frame_se(module: torch.nn.Module) -> None:
    """Make every SqueezeExcitation pool each frame's (H, W) (cojax se_scope "frame")."""

    def forward(self, x):
        return x * self.block(x.mean((3, 4), keepdim=True))

    for m in module.modules():
        if type(m).__name__ == "SqueezeExcitation":
            m.forward = types.MethodType(forward, m)


def clips(streams: int, seed: int = 1) -> np.ndarray:
    """Random clips `(streams, 13, 160, 160, 3)`, float32 (channels-last)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((streams, FRAMES, CROP, CROP, 3)).astype(np.float32)


def torch_only(state_path: str, out: str, budget: float) -> dict:
    """The torch rows (run in a fresh process that never starts XLA's thread pool)."""
    model = require_create_x3d()().eval()
    model.load_state_dict(torch.load(state_path))
    rows, outputs = [], {}
    with torch.no_grad():
        for streams in (1, STREAMS):
            x = torch.from_numpy(clips(streams)).permute(0, 4, 1, 2, 3).contiguous()
            ms, best = timeit(model, x, budget_s=budget, min_repeats=3, sync=_no_sync)
            rows.append(row(TORCH, streams, ms, best))
            outputs[f"clip_se_{streams}"] = model(x).numpy()
        # Logits for the checks (random weights: the softmax is ~uniform).
        model.blocks[-1].activation = None
        x = torch.from_numpy(clips(STREAMS)).permute(0, 4, 1, 2, 3).contiguous()
        outputs["clip_se_logits"] = model(x).numpy()
        per_frame_se(model)
        outputs["frame_se_logits"] = model(x).numpy()
    np.savez(out, **outputs)
    return torch_report(rows, budget, MATMUL_N)


def run_torch(state_path: str, budget: float) -> tuple[dict, dict]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "torch_outputs.npz")
        return run_torch_process(__file__, [state_path], out, budget, env, timeout=300)


# --------------------------------------------------------------------------- cojax side


def row(impl: str, streams: int, ms: float, best: float, flops: float | None = None) -> dict:
    """`flops`: XLA-counted FLOPs of one stream's call (None: not counted)."""
    return {
        "impl": impl,
        "streams": streams,
        "ms_per_call": ms,
        "ms_per_prediction_per_stream": ms / streams,
        "min_ms_per_stream": best / streams,
        "predictions_per_s": 1e3 * streams / ms,
        "xla_gflop_per_stream": None if flops is None else flops / 1e9,
        "gflops_per_s": None if flops is None else flops * streams / ms / 1e6,
    }


def bench_cojax(models: dict, budget: float) -> tuple[list[dict], dict, dict]:
    """Step rows (frame and clip SE) and clip rows at 1 and 8 streams, XLA FLOPs
    (1 stream), compile seconds. `models`: se_scope -> (model, params)."""
    rows, outputs, flops, compile_s = [], {}, {}, {}
    frame = jax.ShapeDtypeStruct((CROP, CROP, 3), jnp.float32)
    for streams in (1, STREAMS):
        data = jnp.asarray(clips(streams))
        x_step, x_clip = (data[0, -1], data[0]) if streams == 1 else (data[:, -1], data)
        for scope, impl in (("frame", STEP), ("clip", STEP_CLIP_SE)):
            model, params = models[scope]
            if streams == 1:
                state, step_fn = model.init_state(params, frame), model.step
            else:
                state = co.init_streams(model, params, frame, streams)
                step_fn = functools.partial(co.step_streams, model)
            key = f"step_{scope}_se_{streams}"
            step, compile_s[key] = compiled(step_fn, params, state, x_step)
            if streams == 1:
                flops[f"step_{scope}_se"] = compiled_flops(step)
            # Fill the step state with the clip's frames (timing does not depend on it).
            for t in range(FRAMES):
                state, _ = step(params, state, data[:, t] if streams > 1 else data[0, t])
            ms, best = timeit(step, params, state, x_step, budget_s=budget)
            rows.append(row(impl, streams, ms, best, flops[f"step_{scope}_se"]))
        model, params = models["clip"]
        clip_fn = model.forward if streams == 1 else jax.vmap(model.forward, in_axes=(None, 0))
        clip, compile_s[f"clip_{streams}"] = compiled(clip_fn, params, x_clip)
        if streams == 1:
            flops["clip"] = compiled_flops(clip)
        ms, best = timeit(clip, params, x_clip, budget_s=budget)
        rows.append(row(CLIP, streams, ms, best, flops["clip"]))
        outputs[f"clip_{streams}"] = np.asarray(clip(params, x_clip)).reshape(streams, -1)
        print(f"  cojax {streams} stream(s) done; compile s {compile_s}", flush=True)
    return rows, outputs, {"flops": flops, "compile_s": compile_s}


def logits_cojax(state_dict: dict, se_scope: str) -> np.ndarray:
    """Logits `(8, 400)` of the cojax clip forward (no softmax) on the 8 clips."""
    model, params = load_x3d(state_dict, "S", head_activation=None, se_scope=se_scope)
    forward = jax.jit(jax.vmap(model.forward, in_axes=(None, 0)))
    return np.asarray(forward(params, jnp.asarray(clips(STREAMS)))).reshape(STREAMS, -1)


def streamed_logits(state_dict: dict) -> tuple[np.ndarray, float]:
    """Clip-SE CoX3D-S logits `(1, 400)` from steps over the first 13-frame clip, end
    padding flushed (`pad_end=True`), and the compile + run seconds."""
    model, params = load_x3d(state_dict, "S", head_activation=None, se_scope="clip")
    clip = jnp.asarray(clips(STREAMS)[0])
    t0 = time.perf_counter()
    state = model.init_state(params, clip[0])
    run = jax.jit(co.forward_steps, static_argnums=0, static_argnames="pad_end")
    _, ys, valid = run(model, params, state, clip, pad_end=True)
    valid = np.asarray(valid)
    if valid.sum() != 1:
        raise RuntimeError(f"expected one streamed prediction, got {valid.sum()}")
    return np.asarray(ys)[valid], time.perf_counter() - t0


def state_bytes(model, params) -> int:
    spec = jax.ShapeDtypeStruct((CROP, CROP, 3), jnp.float32)
    state = jax.eval_shape(model.init_state, params, spec)
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state))


# --------------------------------------------------------------------------- reporting


def _get(rows, impl, streams):
    return next(r for r in rows if r["impl"] == impl and r["streams"] == streams)


def table(rows: list[dict], peak: dict) -> str:
    lines = [
        "| implementation | 1 stream: ms / prediction | 1 stream: predictions/s "
        f"| {STREAMS} streams: ms / call | {STREAMS} streams: ms / prediction / stream "
        f"| {STREAMS} streams: predictions/s (all) | GFLOP/s XLA-counted (1 / {STREAMS}) "
        "| % of matmul peak (1 / 8) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for impl in IMPLS:
        one, many = _get(rows, impl, 1), _get(rows, impl, STREAMS)
        top = peak["torch_gflops_per_s" if "PyTorch" in impl else "xla_gflops_per_s"]
        rates = [r["gflops_per_s"] for r in (one, many)]
        lines.append(
            f"| {impl} | {one['ms_per_call']:.1f} | {one['predictions_per_s']:.2f} | "
            f"{many['ms_per_call']:.1f} | {many['ms_per_prediction_per_stream']:.1f} | "
            f"{many['predictions_per_s']:.2f} | {rates[0]:.1f} / {rates[1]:.1f} | "
            f"{100 * rates[0] / top:.0f}% / {100 * rates[1] / top:.0f}% |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], speedups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = list(IMPLS)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    y = np.arange(len(impls))
    for k, (streams, color) in enumerate(((1, "tab:blue"), (STREAMS, "tab:orange"))):
        vals = [_get(rows, i, streams)["ms_per_prediction_per_stream"] for i in impls]
        bars = ax.barh(y + (k - 0.5) * 0.4, vals, 0.4, color=color, label=f"{streams} stream(s)")
        ax.bar_label(bars, [f"{v:.0f} ms" for v in vals], padding=3, fontsize=8)
    ax.set_yticks(y, impls)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per prediction per stream (median, log scale)")
    ax.set_title(
        f"X3D-S 13×160², 400 classes: cojax clip / frame-SE step {speedups['cojax_1']:.1f}× "
        f"(1 stream), {speedups['cojax_8']:.1f}× (8); clip-SE step "
        f"{speedups['cojax_clip_se_1']:.1f}× / {speedups['cojax_clip_se_8']:.1f}×\n"
        f"XLA-counted FLOP ratio {speedups['flop_ratio']:.1f}× (frame SE), "
        f"{speedups['flop_ratio_clip_se']:.1f}× (clip SE); paper CPU 5.9×",
        fontsize=10,
    )
    ax.set_xlim(right=ax.get_xlim()[1] * 2)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per row")
    parser.add_argument("--torch-only", nargs=2, metavar=("STATE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        print(json.dumps(torch_only(*args.torch_only, args.budget)))
        return

    try:  # the torch rows and the shared weights come from pytorchvideo
        create_x3d = require_create_x3d()
    except ImportError as error:
        sys.exit(f"bench_x3d: {error}")
    load_start = os.getloadavg()
    print(f"load average at start: {load_start}; cpus {os.cpu_count()}, "
          f"jax {jax.__version__}, torch {torch.__version__}", flush=True)  # fmt: skip
    torch.manual_seed(0)
    state_dict = randomize_bn(create_x3d()).state_dict()  # X3D-S, random weights
    models = {scope: load_x3d(state_dict, "S", se_scope=scope) for scope in ("frame", "clip")}
    model, params = models["frame"]  # softmax head
    n_params = num_params(params)  # learned, BatchNorm statistics apart
    memory = {scope: state_bytes(*models[scope]) for scope in models}
    delays = {scope: models[scope][0].delay for scope in models}
    print(f"params {n_params.learned / 1e6:.2f} M (+ {n_params.statistics:,} BatchNorm "
          f"statistics); state per stream (bytes) {memory}; "
          f"delay {delays}", flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        state_path = str(Path(tmp) / "x3d_s.pt")
        torch.save(state_dict, state_path)
        torch_report, torch_out = run_torch(state_path, args.budget)
    peak = {
        "n": MATMUL_N,
        "xla_gflops_per_s": matmul_gflops(MATMUL_N, args.budget, "jax"),
        "torch_gflops_per_s": torch_report["torch_matmul_gflops_per_s"],
    }
    print(f"torch done; matmul peak {peak}", flush=True)

    rows, out, info = bench_cojax(models, args.budget)
    flops = info["flops"]
    for r in torch_report["rows"]:  # XLA's count of the same clip computation
        r.update(row(r["impl"], r["streams"], r["ms_per_call"],
                     r["min_ms_per_stream"] * r["streams"], flops["clip"]))  # fmt: skip
    rows += torch_report["rows"]
    logits = {scope: logits_cojax(state_dict, scope) for scope in models}
    streamed, info["compile_s"]["streamed_pad_end"] = streamed_logits(state_dict)
    x3d_logits = torch_out["clip_se_logits"]
    scale = float(np.abs(x3d_logits).max())
    checks = {
        "max |cojax clip-SE forward - torch X3D| logits / max |logit|": max_diff(
            logits["clip"], x3d_logits
        )
        / scale,
        "max |cojax clip-SE steps (pad_end) - torch X3D| logits / max |logit|": max_diff(
            streamed, x3d_logits[:1]
        )
        / scale,
        "max |cojax frame-SE forward - torch per-frame-SE| logits / max |logit|": max_diff(
            logits["frame"], torch_out["frame_se_logits"]
        )
        / float(np.abs(torch_out["frame_se_logits"]).max()),
        "max |cojax frame-SE forward - torch X3D| logits / max |logit| (approximation)": (
            max_diff(logits["frame"], x3d_logits) / scale
        ),
        "top-1 agreement frame-SE vs X3D, 8 clips": float(
            np.mean(logits["frame"].argmax(-1) == x3d_logits.argmax(-1))
        ),
        "max |cojax softmax - torch softmax| (8 clips, clip SE)": max_diff(
            out[f"clip_{STREAMS}"], torch_out[f"clip_se_{STREAMS}"]
        ),
        "max |cojax clip 8 streams [0] - 1 stream| (softmax)": max_diff(
            out[f"clip_{STREAMS}"][0], out["clip_1"][0]
        ),
    }
    ms = {(r["impl"], r["streams"]): r["ms_per_call"] for r in rows}
    speedups = {
        "cojax_1": ms[CLIP, 1] / ms[STEP, 1],
        "cojax_8": ms[CLIP, STREAMS] / ms[STEP, STREAMS],
        "cojax_clip_se_1": ms[CLIP, 1] / ms[STEP_CLIP_SE, 1],
        "cojax_clip_se_8": ms[CLIP, STREAMS] / ms[STEP_CLIP_SE, STREAMS],
        "torch_clip_vs_cojax_step_1": ms[TORCH, 1] / ms[STEP, 1],
        "torch_clip_vs_cojax_step_8": ms[TORCH, STREAMS] / ms[STEP, STREAMS],
        "torch_clip_vs_cojax_clip_se_step_1": ms[TORCH, 1] / ms[STEP_CLIP_SE, 1],
        "torch_clip_vs_cojax_clip_se_step_8": ms[TORCH, STREAMS] / ms[STEP_CLIP_SE, STREAMS],
        "flop_ratio": flops["clip"] / flops["step_frame_se"],
        "flop_ratio_clip_se": flops["clip"] / flops["step_clip_se"],
        "paper_cpu": PAPER["speed-up"],
    }

    print("\n" + table(rows, peak))
    print(
        f"\nXLA-counted FLOPs: step {flops['step_frame_se'] / 1e9:.3f} G (frame SE), "
        f"{flops['step_clip_se'] / 1e9:.3f} G (clip SE), clip {flops['clip'] / 1e9:.3f} G "
        f"-> FLOP reduction {speedups['flop_ratio']:.2f}x / "
        f"{speedups['flop_ratio_clip_se']:.2f}x"
    )
    print(
        f"measured speed-up clip / step: cojax frame SE {speedups['cojax_1']:.2f}x (1 "
        f"stream), {speedups['cojax_8']:.2f}x ({STREAMS}); clip SE "
        f"{speedups['cojax_clip_se_1']:.2f}x / {speedups['cojax_clip_se_8']:.2f}x; "
        f"PyTorch clip / cojax frame-SE step {speedups['torch_clip_vs_cojax_step_1']:.2f}x"
        f" / {speedups['torch_clip_vs_cojax_step_8']:.2f}x; paper CPU 13.2 vs 2.23 "
        f"evals/s = {PAPER['speed-up']:.1f}x"
    )
    print(f"matmul peak {MATMUL_N}² f32: XLA {peak['xla_gflops_per_s']:.1f}, torch "
          f"{peak['torch_gflops_per_s']:.1f} GFLOP/s; state per stream {memory} bytes; "
          f"checks {json.dumps(checks, indent=1)}")  # fmt: skip

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "description": __doc__.split("\n\n")[0],
        "network": f"X3D-S {FRAMES}x{CROP}x{CROP}, {CLASSES} classes, softmax head, "
        f"params {n_params.learned} (+ {n_params.statistics} BatchNorm statistics); "
        f"CoX3D-S delay {delays} by se_scope",
        "timing": "ms per call, median after one warm-up call; one prediction per stream per call",
        "flops_basis": "XLA cost analysis of the compiled, timed 1-stream step / clip "
        "executables (co.flops / co.clip_flops count); torch rows use the clip count",
        "xla_flops": flops,
        "state_bytes_per_stream": memory,
        "delay_frames": delays,
        "peak_matmul": peak,
        "speedups": speedups,
        "paper": PAPER,
        "checks": checks,
        "compile_s": info["compile_s"],
        "rows": rows,
        **environment(torch_report),
    }
    (RESULTS / "x3d_speed.json").write_text(json.dumps(result, indent=2))
    plot(rows, speedups, RESULTS / "x3d_speed.png")
    print(f"\nwrote {RESULTS / 'x3d_speed.json'} and x3d_speed.png "
          f"({result['runtime_s']:.0f} s; load average at end {result['load_average_end']})")  # fmt: skip


if __name__ == "__main__":
    main()
