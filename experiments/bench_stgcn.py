"""Continual ST-GCN speed and memory: step vs sliding-window clip, cojax vs PyTorch.

CoST-GCN and CoST-GCN* at full size on the NTU RGB+D graph (25 joints, 2 persons,
3 channels, 60 classes, widths 64·4, 128·3, 256·3; the regular model strides 2 at
blocks 5 and 8 and predicts every 4 frames, the * model every frame). One PyTorch clip
model per variant (`tests/stgcn_torch.py`'s `ContinualSkeletonsNet`, written from the
spec for the parity tests; random weights and BN statistics) is saved in the
continual-skeletons layout and loaded with `conversion.load_stgcn`, so every row runs
the same weights. Rows, each at 1 and 64 streams (`co.step_streams` for cojax, a torch
batch of 64):
- cojax step (jit, donated state): one frame `(M, V, C)` in; a prediction costs
  `stride` steps (4 for CoST-GCN: cojax runs the strided blocks every frame and masks,
  see docs/stgcn.md), so ms per prediction = stride × ms per step;
- cojax sliding-window clip (jit): `forward` on the latest 300 frames, last row;
- torch clip: the PyTorch model on the latest 300 frames `(B, 3, 300, 25, 2)`.
A PyTorch continual step is not in the table: continual-inference has no graph
convolution, and its networks (continual-skeletons) are not a package dependency.

Memory per stream (bytes, from XLA's memory analysis of the compiled 1-stream
programs; parameters are shared by both and counted apart): step = state + the step's
temporaries + the frame; clip = the 300-frame input + the clip's temporaries.

Checks (max abs differences, in the JSON): cojax clip vs torch clip (last row, 1 and
64 streams); `co.forward_steps(pad_end=True)` over a 300-frame clip vs `forward`.
Times: wall ms per call, median after one warm-up call (torch in a fresh process with
OMP_WAIT_POLICY=PASSIVE, see bench_streaming.py).

    python experiments/bench_stgcn.py [--budget 1.0]

Writes experiments/results/stgcn_speed.{json,md,png}.
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
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import (  # noqa: E402
    compiled,
    copy_tree,
    donated_calls,
    environment,
    matmul_gflops,
    max_diff,
    run_torch_process,
    timeit,
    torch_report,
)
from harness import no_sync as _no_sync  # noqa: E402
from stgcn_torch import ContinualSkeletonsNet, randomize  # noqa: E402

import cojax as co  # noqa: E402
from cojax.flops import compiled_flops  # noqa: E402
from conversion import load_stgcn  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
STRIDES = {False: (1, 1, 1, 1, 2, 1, 1, 2, 1, 1), True: (1,) * 10}
FRAMES, PERSONS, JOINTS, CHANNELS, CLASSES = 300, 2, 25, 3, 60
STREAMS, MATMUL_N = 64, 2048
MODELS = {"CoST-GCN": False, "CoST-GCN*": True}
PAPER_MEMORY_SAVING = 0.52  # "52 % less" peak memory for a continual step (paper)
STEP, CLIP, TORCH_CLIP = (
    "cojax step (jit, donated state)",
    "cojax sliding-window clip (jit)",
    "torch clip (PyTorch ST-GCN)",
)
IMPLS = (STEP, CLIP, TORCH_CLIP)


def torch_model(mod: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = ContinualSkeletonsNet("st_gcn", "ntu", CLASSES, WIDTHS, STRIDES[mod], mod=mod)
    return randomize(net, seed)


def clips(streams: int, seed: int = 1) -> np.ndarray:
    """Random skeleton clips `(streams, T, M, V, C)`, float32 (cojax's layout)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((streams, FRAMES, PERSONS, JOINTS, CHANNELS)).astype(np.float32)


def to_torch(x: np.ndarray) -> torch.Tensor:
    """`(B, T, M, V, C)` -> the reference's `(B, C, T, V, M)`."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 3, 2)))


def row(impl: str, model: str, streams: int, ms: float, best: float, per_pred: int, flops):
    """One timing row; `per_pred`: calls per prediction; `flops`: one stream's
    prediction (XLA count of the cojax program)."""
    ms_pred = ms * per_pred / streams
    return {
        "impl": impl,
        "model": model,
        "streams": streams,
        "ms_per_call": ms,
        "calls_per_prediction": per_pred,
        "ms_per_prediction_per_stream": ms_pred,
        "min_ms_per_prediction_per_stream": best * per_pred / streams,
        "predictions_per_s": 1e3 / ms_pred,
        "xla_gflop_per_prediction": flops / 1e9,
        "gflops_per_s": flops / ms_pred / 1e6,
    }


# --------------------------------------------------------------------------- torch side


def torch_only(workdir: str, out: str, budget: float) -> dict:
    """The torch rows (a fresh process that never starts XLA's thread pool)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows, outputs = [], {}
    with torch.no_grad():
        for name, mod in MODELS.items():
            net = torch_model(mod)
            net.load_state_dict(torch.load(Path(workdir) / f"{mod}.pt"))
            for streams in (1, STREAMS):
                x = to_torch(clips(streams))
                ms, best = timeit(net, x, budget_s=budget, sync=_no_sync, min_repeats=1)
                rows.append({"impl": TORCH_CLIP, "model": name, "streams": streams,
                             "ms": ms, "best": best})  # fmt: skip
                outputs[f"{mod}_{streams}"] = net(x).numpy()
    np.savez(out, **outputs)
    return torch_report(rows, budget, MATMUL_N)


def run_torch(budget: float) -> tuple[dict, dict]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    with tempfile.TemporaryDirectory() as tmp:
        for mod in MODELS.values():
            torch.save(torch_model(mod).state_dict(), Path(tmp) / f"{mod}.pt")
        out = str(Path(tmp) / "torch_outputs.npz")
        return run_torch_process(__file__, [tmp], out, budget, env, timeout=1800)


# --------------------------------------------------------------------------- cojax side


def tree_bytes(tree) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in leaves)


def bench_model(name: str, mod: bool, budget: float) -> tuple[list[dict], dict]:
    """cojax rows of one model at 1 and 64 streams, FLOPs, memory and checks."""
    model, params = load_stgcn(torch_model(mod).state_dict(), "st_gcn", "ntu", mod=mod)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    x = jnp.asarray(clips(1)[0])
    state = model.init_state(params, x[0])
    step, _ = compiled(model.step, params, state, x[0])
    donating, _ = compiled(model.step, params, state, x[0], donate=True)
    clip, _ = compiled(model.forward, params, x)
    flops = {"step": compiled_flops(step), "clip": compiled_flops(clip)}
    per_pred = model.stride
    step_mem, clip_mem = step.memory_analysis(), clip.memory_analysis()
    memory = {
        "params": tree_bytes(params),
        "state": tree_bytes(state),
        "step_temporaries": int(step_mem.temp_size_in_bytes),
        "frame": tree_bytes(x[0]),
        "clip_input": tree_bytes(x),
        "clip_temporaries": int(clip_mem.temp_size_in_bytes),
    }
    memory["step_total"] = memory["state"] + memory["step_temporaries"] + memory["frame"]
    memory["clip_total"] = memory["clip_input"] + memory["clip_temporaries"]
    memory["step_saving"] = 1 - memory["step_total"] / memory["clip_total"]
    memory["step_saving_with_params"] = 1 - (memory["step_total"] + memory["params"]) / (
        memory["clip_total"] + memory["params"]
    )

    rows, outputs = [], {}
    call, honoured = donated_calls(donating, params, copy_tree(state), x[0])
    ms, best = timeit(call, budget_s=budget)
    rows.append(row(STEP, name, 1, ms, best, per_pred, flops["step"] * per_pred))
    ms, best = timeit(clip, params, x, budget_s=budget)
    rows.append(row(CLIP, name, 1, ms, best, 1, flops["clip"]))
    outputs["clip_1"] = np.asarray(clip(params, x))[-1:]
    steps = jax.jit(functools.partial(co.forward_steps, model, pad_end=True))
    _, ys, valid = steps(params, state, x)
    forward = np.asarray(clip(params, x))
    emitted = np.asarray(ys)[np.asarray(valid)]
    check = {"max |cojax steps (pad_end) - cojax forward| (1 stream, 300 frames)": max_diff(
        emitted, forward)}  # fmt: skip

    xs = jnp.asarray(clips(STREAMS))
    states = co.init_streams(model, params, xs[0, 0], STREAMS)
    fn = functools.partial(co.step_streams, model)
    donating, _ = compiled(fn, params, states, xs[:, 0], donate=True)
    call, honoured_64 = donated_calls(donating, params, copy_tree(states), xs[:, 0])
    ms, best = timeit(call, budget_s=budget)
    rows.append(row(STEP, name, STREAMS, ms, best, per_pred, flops["step"] * per_pred))
    many, _ = compiled(jax.vmap(model.forward, in_axes=(None, 0)), params, xs)
    ms, best = timeit(many, params, xs, budget_s=budget, min_repeats=1)
    rows.append(row(CLIP, name, STREAMS, ms, best, 1, flops["clip"]))
    outputs[f"clip_{STREAMS}"] = np.asarray(many(params, xs))[:, -1]
    info = {
        "flops": flops,
        "memory_bytes": memory,
        "steps_per_prediction": per_pred,
        "donation_honoured": [honoured(), honoured_64()],
        "checks": check,
    }
    return rows, {"outputs": outputs, "info": info}


# --------------------------------------------------------------------------- reporting


def _get(rows, impl, model, streams):
    return next((r for r in rows if (r["impl"], r["model"], r["streams"]) ==
                 (impl, model, streams)), None)  # fmt: skip


def table(rows: list[dict], peak: dict) -> str:
    lines = [
        "| model | implementation | 1 stream: ms / pred | 64 streams: ms / pred / stream "
        "| XLA GFLOP / pred | % of matmul peak (1 / 64) |",
        "|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for impl in IMPLS:
            one, many = _get(rows, impl, model, 1), _get(rows, impl, model, STREAMS)
            top = peak["torch_gflops_per_s" if impl.startswith("torch") else "xla_gflops_per_s"]
            pct = " / ".join(f"{100 * r['gflops_per_s'] / top:.1f}%" for r in (one, many))
            lines.append(
                f"| {model} | {impl} | {one['ms_per_prediction_per_stream']:.2f} | "
                f"{many['ms_per_prediction_per_stream']:.2f} | "
                f"{one['xla_gflop_per_prediction']:.3f} | {pct} |"
            )
    return "\n".join(lines)


def memory_table(info: dict) -> str:
    lines = [
        "| model | state | step temporaries | step total | clip input + temporaries "
        "| step saving | with params (both) | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mib = 2**20
    for model in MODELS:
        m = info[model]["memory_bytes"]
        lines.append(
            f"| {model} | {m['state'] / mib:.2f} MiB | {m['step_temporaries'] / mib:.2f} MiB | "
            f"{m['step_total'] / mib:.2f} MiB | {m['clip_total'] / mib:.1f} MiB | "
            f"{100 * m['step_saving']:.0f}% | {100 * m['step_saving_with_params']:.0f}% | "
            f"{100 * PAPER_MEMORY_SAVING:.0f}% |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    out = {}
    for model in MODELS:
        for s in (1, STREAMS):
            step = _get(rows, STEP, model, s)["ms_per_prediction_per_stream"]
            for impl in (CLIP, TORCH_CLIP):
                other = _get(rows, impl, model, s)["ms_per_prediction_per_stream"]
                out[f"{model}: {impl} / cojax step ({s})"] = other / step
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(MODELS), 1, figsize=(9, 6))
    for ax, model in zip(axes, MODELS):
        y = np.arange(len(IMPLS))
        for k, (streams, color) in enumerate(((1, "tab:blue"), (STREAMS, "tab:orange"))):
            vals = [_get(rows, i, model, streams)["ms_per_prediction_per_stream"] for i in IMPLS]
            bars = ax.barh(
                y + (k - 0.5) * 0.4, vals, 0.4, color=color, label=f"{streams} stream(s)"
            )
            ax.bar_label(bars, [f"{v:.2f} ms" for v in vals], padding=3, fontsize=8)
        ax.set_yticks(y, IMPLS)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(right=ax.get_xlim()[1] * 3)
        ax.set_title(model, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("ms per prediction per stream (median, log scale)")
    fig.suptitle("Continual ST-GCN, NTU RGB+D graph, 300-frame windows")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per row")
    parser.add_argument("--torch-only", nargs=2, metavar=("DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        print(json.dumps(torch_only(*args.torch_only, args.budget)))
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    started, load_start = time.perf_counter(), os.getloadavg()
    print(f"load average at start: {load_start}; cpus {os.cpu_count()}", flush=True)
    report, torch_out = run_torch(args.budget)
    peak = {
        "n": MATMUL_N,
        "xla_gflops_per_s": matmul_gflops(MATMUL_N, args.budget, "jax"),
        "torch_gflops_per_s": report["torch_matmul_gflops_per_s"],
    }
    print(f"torch rows done ({time.perf_counter() - started:.0f} s); peak {peak}", flush=True)
    rows, info = [], {}
    for name, mod in MODELS.items():
        r, extra = bench_model(name, mod, args.budget)
        rows += r
        info[name] = extra["info"]
        ours = extra["outputs"]
        for s in (1, STREAMS):
            theirs = torch_out[f"{mod}_{s}"]
            info[name]["checks"][f"max |cojax clip - torch clip| ({s})"] = max_diff(
                ours[f"clip_{s}"].reshape(theirs.shape), theirs
            )
        info[name]["checks"]["max |torch clip logits|"] = float(np.abs(torch_out[f"{mod}_1"]).max())
        print(f"  {name} done ({time.perf_counter() - started:.0f} s): "
              f"{json.dumps(info[name])}", flush=True)  # fmt: skip
    for t in report["rows"]:
        flops = info[t["model"]]["flops"]["clip"]
        rows.append(row(t["impl"], t["model"], t["streams"], t["ms"], t["best"], 1, flops))
    speedups = ratios(rows)
    text = table(rows, peak) + "\n\n" + memory_table(info)
    print("\n" + text)
    print("\nratios: " + ", ".join(f"{k} {v:.2f}" for k, v in speedups.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "description": __doc__.split("\n\n")[0],
        "timing": "ms per call, median after one warm-up call; ms per prediction = ms per "
        "call x calls per prediction / streams",
        "flops_basis": "XLA cost analysis of the compiled 1-stream cojax programs; torch "
        "rows use the cojax clip's count",
        "peak_matmul": peak,
        "speedups": speedups,
        "info": info,
        "rows": rows,
        **environment(report),
    }
    (RESULTS / "stgcn_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "stgcn_speed.md").write_text(
        "Written by `python experiments/bench_stgcn.py`.\n\n" + text + "\n"
    )
    plot(rows, RESULTS / "stgcn_speed.png")
    print("wrote experiments/results/stgcn_speed.{json,md,png}")


if __name__ == "__main__":
    main()
