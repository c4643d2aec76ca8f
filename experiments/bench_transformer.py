"""Continual transformer encoder speed: step vs sliding-window clip, cojax vs PyTorch.

The CoOadTR encoder (Continual Transformers, Hedegaard et al., ICLR 2023): windows of
N = 64 tokens, E = 1024, 8 heads, feed-forward 1024, exact GELU, post-norm, dropout 0,
with b = 1 block (one single-output layer) and b = 2 blocks (a retroactive layer, then
a single-output one). Built with continual-inference (`TransformerEncoderLayerFactory`,
`TransformerEncoder`; LayerNorm affine and attention biases randomised) and converted
with `conversion.from_continual`, so every row runs the same weights. Rows, each at 1
stream and 64 streams (`co.step_streams` / `jax.vmap` for cojax, a torch batch of 64):
- cojax step (jit): one token `(E,)` in, one output token out; the state holds ≥ N
  tokens; also with the state donated (`donate_argnums=1`, each call's state fed to
  the next), which lets XLA update the state's rings in place instead of copying the
  whole state (b = 2: ~17 MiB per stream) every call
- cojax sliding-window clip (jit): `forward` on the latest N tokens -> one output
- PyTorch continual-inference `forward_step` of the reference module (state warmed
  with N steps, `torch.no_grad()`)
- PyTorch `nn.TransformerEncoder` (batch_first, same weights) on the latest window
  `(B, 64, 1024)`, last row
Each call gives one prediction per stream, so "ms per prediction per stream" compares
all rows directly.

FLOPs: XLA's cost analysis of the compiled, timed 1-stream cojax step / clip
executables; torch rows use the count of their cojax counterpart. Cross-checks (max
absolute differences, in the JSON): cojax step vs cojax clip, cojax step vs the
reference `forward_step` (only its first N + 8 steps: its 2-block encoder drifts after
~2N - 2 steps, a known defect), cojax clip vs `nn.TransformerEncoder`, at 1 and 64
streams. The torch rows run in a subprocess with OMP_WAIT_POLICY=PASSIVE (see
bench_streaming.py). Times: wall ms per call, median after one warm-up call.

    .venv/bin/python experiments/bench_transformer.py [--budget 1.0]

Writes experiments/results/transformer_speed.json and transformer_speed.png; prints
the load average (the machine may be shared).
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

import cojax as co  # noqa: E402
from cojax.flops import compiled_flops  # noqa: E402
from conversion import from_continual  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N, E, HEADS, FF = 64, 1024, 8, 1024
STREAMS, EXTRA, BLOCKS = 64, 8, (1, 2)
MATMUL_N = 2048
# CoOadTR (whole model, Kinetics features), MFLOPs per frame: OadTR-b / CoOadTR-b.
PAPER_FLOP_RATIO = {1: 673.0 / 10.6, 2: 1075.7 / 411.9}
STEP, STEP_DONATED, CLIP, TORCH_STEP, TORCH_CLIP = (
    "cojax step (jit)",
    "cojax step (jit, donated state)",
    "cojax sliding-window clip (jit)",
    "torch continual-inference forward_step",
    "torch nn.TransformerEncoder clip",
)
IMPLS = (STEP, STEP_DONATED, CLIP, TORCH_STEP, TORCH_CLIP)


# --------------------------------------------------------------------------- networks


def reference_encoder(blocks: int) -> torch.nn.Module:
    """continual-inference's CoOadTR encoder with `blocks` layers (eval mode)."""
    import continual

    factory = continual.TransformerEncoderLayerFactory(
        d_model=E,
        nhead=HEADS,
        dim_feedforward=FF,
        dropout=0.0,
        sequence_len=N,
        activation=torch.nn.GELU(),
    )
    return continual.TransformerEncoder(factory, num_layers=blocks).eval()


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random LayerNorm affine and attention biases (torch initialises them to the
    identity and zero, which would leave parts of the checks trivial)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.data = torch.rand(m.normalized_shape, generator=gen) + 0.5
            m.bias.data = 0.1 * torch.randn(m.normalized_shape, generator=gen)
        if isinstance(getattr(m, "in_proj_bias", None), torch.Tensor):
            m.in_proj_bias.data = 0.02 * torch.randn(m.in_proj_bias.shape, generator=gen)
            m.out_proj.bias.data = 0.02 * torch.randn(m.out_proj.bias.shape, generator=gen)
    return module.eval()


def flat_params(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested cojax params -> {"layers/0/self_attn/in_proj/kernel": array, …}."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def torch_clip_encoder(flat: dict[str, np.ndarray], blocks: int) -> torch.nn.Module:
    """`nn.TransformerEncoder` (batch_first) with the converted weights `flat`
    (cojax kernels `(in, out)` are torch weights transposed)."""
    layer = torch.nn.TransformerEncoderLayer(
        E, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True
    )
    encoder = torch.nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
    names = {  # torch name -> (cojax name, transpose)
        "self_attn.in_proj_weight": ("self_attn/in_proj/kernel", True),
        "self_attn.in_proj_bias": ("self_attn/in_proj/bias", False),
        "self_attn.out_proj.weight": ("self_attn/out_proj/kernel", True),
        "self_attn.out_proj.bias": ("self_attn/out_proj/bias", False),
        "linear1.weight": ("linear1/kernel", True),
        "linear1.bias": ("linear1/bias", False),
        "linear2.weight": ("linear2/kernel", True),
        "linear2.bias": ("linear2/bias", False),
        "norm1.weight": ("norm1/scale", False),
        "norm1.bias": ("norm1/bias", False),
        "norm2.weight": ("norm2/scale", False),
        "norm2.bias": ("norm2/bias", False),
    }
    state = {}
    for i in range(blocks):
        for torch_name, (name, transpose) in names.items():
            value = flat[f"layers/{i}/{name}"]
            state[f"layers.{i}.{torch_name}"] = torch.from_numpy(
                np.ascontiguousarray(value.T if transpose else value)
            )
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def stream_tokens(seed: int = 1) -> np.ndarray:
    """Random tokens `(64 streams, N + 8, E)`, float32: stream 0's N + 8 tokens feed the
    1-stream rows, every stream's first N tokens the 64-stream rows."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((STREAMS, N + EXTRA, E)).astype(np.float32)


# --------------------------------------------------------------------------- rows


def row(impl: str, blocks: int, streams: int, ms: float, best: float, flops: float | None) -> dict:
    """One timing row; `flops`: XLA-counted FLOPs of one stream's prediction."""
    return {
        "impl": impl,
        "blocks": blocks,
        "streams": streams,
        "ms_per_call": ms,
        "ms_per_prediction_per_stream": ms / streams,
        "min_ms_per_stream": best / streams,
        "predictions_per_s": 1e3 * streams / ms,
        "xla_gflop_per_prediction": None if flops is None else flops / 1e9,
        "gflops_per_s": None if flops is None else flops * streams / ms / 1e6,
    }


# --------------------------------------------------------------------------- torch side


def torch_steps(ref: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Run `forward_step` over `x` `(B, T, E)` from a clean state; the emitted outputs
    `(B, T - N + 1, E)`."""
    ref.clean_state()
    outputs = []
    for t in range(x.shape[1]):
        y = ref.forward_step(x[:, t])
        if y is not None:
            outputs.append(y.numpy())
    return np.stack(outputs, axis=1)


def bench_torch_blocks(workdir: Path, blocks: int, budget: float) -> tuple[list[dict], dict]:
    """The torch rows of the `blocks`-layer encoder at 1 and 64 streams, and outputs."""
    ref = reference_encoder(blocks)
    ref.load_state_dict(torch.load(workdir / f"ref_b{blocks}.pt"))
    with np.load(workdir / f"params_b{blocks}.npz") as data:
        clip_net = torch_clip_encoder({k: data[k] for k in data.files}, blocks)
    tokens = torch.from_numpy(stream_tokens())
    rows, outputs = [], {}
    with torch.no_grad():
        for streams in (1, STREAMS):
            x = tokens[:1] if streams == 1 else tokens[:, :N]
            outputs[f"step_{streams}"] = torch_steps(ref, x)  # state now holds >= N tokens
            ms, best = timeit(ref.forward_step, x[:, -1], budget_s=budget, sync=_no_sync)
            rows.append(row(TORCH_STEP, blocks, streams, ms, best, None))
            window = x[:, -N:].contiguous()
            ms, best = timeit(clip_net, window, budget_s=budget, sync=_no_sync)
            rows.append(row(TORCH_CLIP, blocks, streams, ms, best, None))
            outputs[f"clip_{streams}"] = clip_net(window)[:, -1].numpy()
    return rows, outputs


def torch_only(workdir: str, out: str, budget: float) -> dict:
    """All torch rows (run in a fresh process that never starts XLA's thread pool)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows, outputs = [], {}
    for blocks in BLOCKS:
        r, o = bench_torch_blocks(Path(workdir), blocks, budget)
        rows += r
        outputs.update({f"b{blocks}_{k}": v for k, v in o.items()})
    np.savez(out, **outputs)
    return torch_report(rows, budget, MATMUL_N)


def run_torch(refs: dict, params: dict, budget: float) -> tuple[dict, dict]:
    """Save the reference modules and converted params, run `torch_only` in a fresh
    process (OMP_WAIT_POLICY=PASSIVE); its report and outputs."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    with tempfile.TemporaryDirectory() as tmp:
        for blocks in BLOCKS:
            torch.save(refs[blocks].state_dict(), Path(tmp) / f"ref_b{blocks}.pt")
            np.savez(Path(tmp) / f"params_b{blocks}.npz", **flat_params(params[blocks]))
        out = str(Path(tmp) / "torch_outputs.npz")
        return run_torch_process(__file__, [tmp], out, budget, env, timeout=600)


# --------------------------------------------------------------------------- cojax side


def run_steps(step, params, state, frames: jnp.ndarray, axis: int = 0):
    """Feed the tokens of `frames` along `axis` to `step`; (state, emitted outputs
    stacked along `axis`)."""
    outputs = []
    for t in range(frames.shape[axis]):
        state, (y, valid) = step(params, state, jnp.take(frames, t, axis=axis))
        if bool(np.all(valid)):
            outputs.append(np.asarray(y))
    return state, np.stack(outputs, axis=axis)


def bench_one_stream(layer, params, blocks: int, budget: float) -> tuple[list, dict, dict]:
    """1-stream rows: step, donated step and clip; outputs, info."""
    x = jnp.asarray(stream_tokens()[0])  # (N + 8, E)
    info: dict = {"compile_s": {}, "flops": {}}
    state = layer.init_state(params, x[0])
    step, info["compile_s"]["step_1"] = compiled(layer.step, params, state, x[0])
    info["flops"]["step"] = compiled_flops(step)
    state, y_steps = run_steps(step, params, state, x)  # 9 outputs, state holds N + 8
    ms, best = timeit(step, params, state, x[-1], budget_s=budget)
    rows = [row(STEP, blocks, 1, ms, best, info["flops"]["step"])]
    donating, info["compile_s"]["step_1_donated"] = compiled(
        layer.step, params, state, x[-1], donate=True
    )
    call, honoured = donated_calls(donating, params, copy_tree(state), x[-1])
    ms, best = timeit(call, budget_s=budget)
    info["donation_honoured_1"] = honoured()
    rows.append(row(STEP_DONATED, blocks, 1, ms, best, info["flops"]["step"]))
    clip, info["compile_s"]["clip_1"] = compiled(layer.forward, params, x[-N:])
    info["flops"]["clip"] = compiled_flops(clip)
    ms, best = timeit(clip, params, x[-N:], budget_s=budget)
    rows.append(row(CLIP, blocks, 1, ms, best, info["flops"]["clip"]))
    outputs = {
        "step_1": y_steps,
        "clip_all_1": np.asarray(jax.jit(layer.forward)(params, x)),  # (9, E)
        "clip_1": np.asarray(clip(params, x[-N:]))[-1],
    }
    return rows, outputs, info


def bench_many_streams(layer, params, blocks: int, flops: dict, budget: float):
    """64-stream rows (`co.step_streams`, vmapped clip); outputs, info. The states are
    filled with each stream's first N tokens by the donating step (in place)."""
    xs = jnp.asarray(stream_tokens()[:, :N])  # (64, N, E)
    info: dict = {"compile_s": {}}
    fn = functools.partial(co.step_streams, layer)
    states = co.init_streams(layer, params, xs[0, 0], STREAMS)
    donating, info["compile_s"]["step_64_donated"] = compiled(
        fn, params, states, xs[:, 0], donate=True
    )
    states, y_steps = run_steps(donating, params, states, xs, axis=1)  # one output each
    step, info["compile_s"]["step_64"] = compiled(fn, params, states, xs[:, -1])
    ms, best = timeit(step, params, states, xs[:, -1], budget_s=budget)
    rows = [row(STEP, blocks, STREAMS, ms, best, flops["step"])]
    call, honoured = donated_calls(donating, params, copy_tree(states), xs[:, -1])
    ms, best = timeit(call, budget_s=budget)
    info["donation_honoured_64"] = honoured()
    rows.append(row(STEP_DONATED, blocks, STREAMS, ms, best, flops["step"]))
    clip_fn = jax.vmap(layer.forward, in_axes=(None, 0))
    clip, info["compile_s"]["clip_64"] = compiled(clip_fn, params, xs)
    ms, best = timeit(clip, params, xs, budget_s=budget)
    rows.append(row(CLIP, blocks, STREAMS, ms, best, flops["clip"]))
    outputs = {"step_64": y_steps[:, 0], "clip_64": np.asarray(clip(params, xs))[:, 0]}
    return rows, outputs, info


def state_bytes(layer, params) -> int:
    spec = jax.ShapeDtypeStruct((E,), jnp.float32)
    state = jax.eval_shape(layer.init_state, params, spec)
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state))


def checks(blocks: int, ours: dict, theirs: dict) -> dict:
    """Max absolute differences between the rows' outputs (see the module docstring)."""
    t = {k[len(f"b{blocks}_") :]: v for k, v in theirs.items() if k.startswith(f"b{blocks}_")}
    return {
        "max |y| (cojax step, 1 stream)": float(np.abs(ours["step_1"]).max()),
        "max |cojax step - cojax clip| (1 stream, 9 windows)": max_diff(
            ours["step_1"], ours["clip_all_1"]
        ),
        "max |cojax step - reference forward_step| (1 stream, its first 9 outputs)": max_diff(
            ours["step_1"], t["step_1"][0]
        ),
        "max |cojax clip - torch nn clip| (1 stream)": max_diff(ours["clip_1"], t["clip_1"][0]),
        "max |cojax step - cojax clip| (64 streams)": max_diff(ours["step_64"], ours["clip_64"]),
        "max |cojax step - reference forward_step| (64 streams, first output)": max_diff(
            ours["step_64"], t["step_64"][:, 0]
        ),
        "max |cojax clip - torch nn clip| (64 streams)": max_diff(ours["clip_64"], t["clip_64"]),
        "max |cojax 64-stream step [0] - 1-stream step| (same window)": max_diff(
            ours["step_64"][0], ours["step_1"][0]
        ),
    }


# --------------------------------------------------------------------------- reporting


def _get(rows: list[dict], impl: str, blocks: int, streams: int) -> dict | None:
    match = (r for r in rows if (r["impl"], r["blocks"], r["streams"]) == (impl, blocks, streams))
    return next(match, None)


def ratios(rows: list[dict], flops: dict) -> dict:
    """Speed-ups (ratios of ms per call) and FLOP ratios, per number of blocks."""
    out = {}
    for b in BLOCKS:

        def ms(impl, streams, b=b):
            return _get(rows, impl, b, streams)["ms_per_call"]

        r = {}
        for s in (1, STREAMS):
            r[f"cojax clip / cojax step ({s})"] = ms(CLIP, s) / ms(STEP, s)
            r[f"torch forward_step / cojax step ({s})"] = ms(TORCH_STEP, s) / ms(STEP, s)
            r[f"torch clip / cojax step ({s})"] = ms(TORCH_CLIP, s) / ms(STEP, s)
            r[f"torch clip / cojax clip ({s})"] = ms(TORCH_CLIP, s) / ms(CLIP, s)
            r[f"cojax step / donated step ({s})"] = ms(STEP, s) / ms(STEP_DONATED, s)
            r[f"cojax clip / donated step ({s})"] = ms(CLIP, s) / ms(STEP_DONATED, s)
            r[f"torch forward_step / donated step ({s})"] = ms(TORCH_STEP, s) / ms(STEP_DONATED, s)
        r["XLA FLOP ratio clip / step"] = flops[b]["clip"] / flops[b]["step"]
        r["paper FLOP ratio OadTR / CoOadTR (whole model)"] = PAPER_FLOP_RATIO[b]
        out[f"b{b}"] = r
    return out


def _fmt(r: dict | None, key: str, fmt: str) -> str:
    return "–" if r is None or r[key] is None else fmt.format(r[key])


def table(rows: list[dict], peak: dict) -> str:
    """Markdown table: one line per (blocks, implementation)."""
    lines = [
        "| b | implementation | 1 stream: ms | 1 stream: pred/s | 64 streams: ms / call "
        "| 64 streams: ms / pred / stream | 64 streams: pred/s | XLA GFLOP / pred "
        "| GFLOP/s (1 / 64) | % of matmul peak (1 / 64) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in BLOCKS:
        for impl in IMPLS:
            one, many = _get(rows, impl, b, 1), _get(rows, impl, b, STREAMS)
            if one is None and many is None:
                continue
            top = peak["torch_gflops_per_s" if impl.startswith("torch") else "xla_gflops_per_s"]
            pct = [
                "–" if r is None else f"{100 * r['gflops_per_s'] / top:.0f}%" for r in (one, many)
            ]
            lines.append(
                f"| {b} | {impl} | {_fmt(one, 'ms_per_call', '{:.2f}')} | "
                f"{_fmt(one, 'predictions_per_s', '{:.0f}')} | "
                f"{_fmt(many, 'ms_per_call', '{:.1f}')} | "
                f"{_fmt(many, 'ms_per_prediction_per_stream', '{:.2f}')} | "
                f"{_fmt(many, 'predictions_per_s', '{:.0f}')} | "
                f"{_fmt(one, 'xla_gflop_per_prediction', '{:.3f}')} | "
                f"{_fmt(one, 'gflops_per_s', '{:.1f}')} / "
                f"{_fmt(many, 'gflops_per_s', '{:.1f}')} | {pct[0]} / {pct[1]} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], speedups: dict, path: Path) -> None:
    """Grouped horizontal bars of ms per prediction per stream (log), one panel per b."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7.5))
    for ax, b in zip(axes, BLOCKS):
        impls = [i for i in IMPLS if _get(rows, i, b, 1) is not None]
        y = np.arange(len(impls))
        for k, (streams, color) in enumerate(((1, "tab:blue"), (STREAMS, "tab:orange"))):
            vals = [_get(rows, i, b, streams)["ms_per_prediction_per_stream"] for i in impls]
            bars = ax.barh(
                y + (k - 0.5) * 0.4, vals, 0.4, color=color, label=f"{streams} stream(s)"
            )
            ax.bar_label(bars, [f"{v:.2f} ms" for v in vals], padding=3, fontsize=8)
        ax.set_yticks(y, impls)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(right=ax.get_xlim()[1] * 3)
        s = speedups[f"b{b}"]
        ax.set_title(
            f"b = {b}: cojax clip / step {s['cojax clip / cojax step (1)']:.1f}× (1 stream), "
            f"{s[f'cojax clip / cojax step ({STREAMS})']:.1f}× ({STREAMS}); XLA FLOP ratio "
            f"{s['XLA FLOP ratio clip / step']:.1f}×",
            fontsize=10,
        )
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("ms per prediction per stream (median, log scale)")
    fig.suptitle(f"Continual transformer encoder, N = {N}, E = {E}, {HEADS} heads, ff {FF}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def build(blocks: int) -> tuple:
    """(reference module, cojax layer, cojax params) of the `blocks`-layer encoder."""
    torch.manual_seed(blocks)
    ref = randomize(reference_encoder(blocks), seed=blocks)
    layer, params = from_continual(ref)
    return ref, layer, jax.tree_util.tree_map(jnp.asarray, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per row")
    parser.add_argument("--torch-only", nargs=2, metavar=("DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        print(json.dumps(torch_only(*args.torch_only, args.budget)))
        return

    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.perf_counter()
    load_start = os.getloadavg()
    print(f"load average at start: {load_start}; cpus {os.cpu_count()}, "
          f"jax {jax.__version__}, torch {torch.__version__}", flush=True)  # fmt: skip
    built = {b: build(b) for b in BLOCKS}
    refs = {b: built[b][0] for b in BLOCKS}
    memory = {f"b{b}": state_bytes(*built[b][1:]) for b in BLOCKS}
    print(f"state bytes per stream {memory}", flush=True)

    torch_report, torch_out = run_torch(refs, {b: built[b][2] for b in BLOCKS}, args.budget)
    peak = {
        "n": MATMUL_N,
        "xla_gflops_per_s": matmul_gflops(MATMUL_N, args.budget, "jax"),
        "torch_gflops_per_s": torch_report["torch_matmul_gflops_per_s"],
    }
    print(f"torch rows done ({time.perf_counter() - started:.0f} s); matmul peak {peak}",
          flush=True)  # fmt: skip

    rows, info, flops, check = [], {}, {}, {}
    for b in BLOCKS:
        _, layer, params = built[b]
        rows_1, out_1, info_1 = bench_one_stream(layer, params, b, args.budget)
        flops[b] = info_1.pop("flops")
        rows_64, out_64, info_64 = bench_many_streams(layer, params, b, flops[b], args.budget)
        rows += rows_1 + rows_64
        compile_s = {**info_1.pop("compile_s"), **info_64.pop("compile_s")}
        info[f"b{b}"] = {**info_1, **info_64, "compile_s": compile_s}
        check[f"b{b}"] = checks(b, {**out_1, **out_64}, torch_out)
        print(f"  cojax b={b} done ({time.perf_counter() - started:.0f} s): "
              f"{json.dumps(info[f'b{b}'])}", flush=True)  # fmt: skip
    for r in torch_report["rows"]:  # the XLA count of the cojax counterpart
        count = flops[r["blocks"]]["clip" if r["impl"] == TORCH_CLIP else "step"]
        r.update(row(r["impl"], r["blocks"], r["streams"], r["ms_per_call"],
                     r["min_ms_per_stream"] * r["streams"], count))  # fmt: skip
    rows += torch_report["rows"]
    speedups = ratios(rows, flops)

    print("\n" + table(rows, peak))
    for b in BLOCKS:
        print(f"\nb={b}: XLA FLOPs step {flops[b]['step'] / 1e6:.1f} M, clip "
              f"{flops[b]['clip'] / 1e6:.1f} M; state {memory[f'b{b}'] / 2**20:.2f} MiB "
              f"per stream")  # fmt: skip
        print("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in speedups[f"b{b}"].items()))
        print("  checks: " + ", ".join(f"{k} {v:.2e}" for k, v in check[f"b{b}"].items()))

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "description": __doc__.split("\n\n")[0],
        "network": f"continual TransformerEncoder, N={N}, E={E}, heads={HEADS}, ff={FF}, "
        "exact GELU, post-norm, dropout 0; b = 1 and 2 blocks",
        "timing": "ms per call, median after one warm-up call; one prediction per stream per call",
        "flops_basis": "XLA cost analysis of the compiled, timed 1-stream cojax step / clip "
        "executables; torch rows use the count of their cojax counterpart",
        "xla_flops": {f"b{b}": flops[b] for b in BLOCKS},
        "state_bytes_per_stream": memory,
        "peak_matmul": peak,
        "speedups": speedups,
        "checks": check,
        "info": info,
        "rows": rows,
        **environment(torch_report),
    }
    (RESULTS / "transformer_speed.json").write_text(json.dumps(result, indent=2))
    plot(rows, speedups, RESULTS / "transformer_speed.png")
    print(f"\nwrote {RESULTS / 'transformer_speed.json'} and transformer_speed.png "
          f"({result['runtime_s']:.0f} s; load average at end {result['load_average_end']})")  # fmt: skip


if __name__ == "__main__":
    main()
