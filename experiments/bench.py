"""Every model family side by side, at 1 and 64 streams, in one run.

    python -m experiments.bench [--families anchor,cooadtr-b1,...] [--streams 1,64]
                                [--budget 0.5] [--quick] [--name bench]

Per family and stream count: the cojax step (jit, `co.compiler_options`, state donated
leaf by leaf with `co.donating_jit`, as `co.StreamPool` runs it), the cojax
sliding-window clip (jit: the clip network re-run on the latest window for every
prediction), PyTorch continual-inference's `forward_step` (where it can express the
model) and the PyTorch clip network. Columns: ms per prediction per stream,
predictions/s, XLA FLOPs per prediction, achieved GFLOP/s and % of the f32 matmul
peak measured in the same run (XLA's for cojax rows, torch's for torch rows; GFLOP/s of
torch rows use XLA's count of the same computation). The torch rows run in a fresh
process (`--torch-only`), so torch's OpenMP threads never share the two cores with
XLA's pool. Weights are random and not shared between the frameworks: this script
times; the per-family scripts (bench_streaming, bench_transformer, bench_x3d,
bench_stgcn) check that the outputs agree.

Families: the 10×Conv3d anchor network (bench_streaming), the CoOadTR-b1 / b2 encoders
(N 64, E 1024; bench_transformer), CoX3D-S (160², 13-frame clip), a continual
Nyströmformer (one block, E 128, m 16, n 256) and CoST-GCN (NTU, 300-frame clip).
Writes `experiments/results/<name>.json` / `.png` (default `bench`) and prints the
summary table that `experiments/README.md` shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness import (  # noqa: E402
    compiled,
    copy_tree,
    donated_calls,
    environment,
    figure,
    markdown_table,
    matmul_gflops,
    no_sync,
    run_torch_process,
    save_figure,
    timeit,
    torch_report,
    torch_timeit,
    write_json,
)

import cojax as co  # noqa: E402
from cojax.demo_models import init_random  # noqa: E402
from cojax.flops import compiled_flops  # noqa: E402

MATMUL_N = 2048
STEP, CLIP = "cojax step", "cojax clip"
TORCH_STEP, TORCH_CLIP = "torch continual-inference step", "torch clip"
IMPLS = (STEP, CLIP, TORCH_STEP, TORCH_CLIP)


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: the cojax layer, its frame, and the clip the regular network
    re-runs for every prediction (`window` frames)."""

    name: str
    layer: Any
    params: Any
    frame_shape: tuple[int, ...]
    window: int
    steps_per_prediction: int = 1
    clip_outputs: str = "last"  # the prediction a clip gives: its "last" output


# --------------------------------------------------------------------------- families


def _params(layer, seed: int = 0):
    try:  # random BatchNorm statistics where there are any
        return init_random(layer, jax.random.PRNGKey(seed))
    except ValueError:  # a layer init_random has no rule for (LayerNorm, Flax modules)
        return layer.init(jax.random.PRNGKey(seed))


def anchor() -> Family:
    from bench_streaming import CHANNELS, SIZE, cojax_network, numpy_params

    net = cojax_network()
    params = jax.tree_util.tree_map(jnp.asarray, numpy_params())
    return Family("anchor 10×Conv3d", net, params, (SIZE, SIZE, CHANNELS), net.receptive_field)


def cooadtr(blocks: int) -> Family:
    from bench_transformer import FF, HEADS, E, N

    layer = co.TransformerEncoder(E, HEADS, N, blocks, dim_feedforward=FF, activation="gelu")
    return Family(f"CoOadTR-b{blocks} encoder", layer, _params(layer), (E,), N)


def cox3d() -> Family:
    layer = co.x3d("S")
    return Family("CoX3D-S", layer, _params(layer), (160, 160, 3), 13)


NYSTROM = dict(input_dim=128, num_classes=10, embed_dim=128, num_heads=4, num_landmarks=16,
               sequence_len=256, dim_feedforward=256)  # fmt: skip


def nystrom() -> Family:
    from cojax.models import NystromformerClassifier

    layer = co.from_flax(NystromformerClassifier(**NYSTROM, landmarks="fixed"))
    return Family("continual Nyströmformer", layer, _params(layer), (NYSTROM["input_dim"],), 256)


def cost_gcn() -> Family:
    from cojax.models.stgcn import st_gcn

    layer = st_gcn("ntu", 60)
    return Family("CoST-GCN", layer, _params(layer), (2, 25, 3), 300, layer.stride)


FAMILIES = {
    "anchor": anchor,
    "cooadtr-b1": functools.partial(cooadtr, 1),
    "cooadtr-b2": functools.partial(cooadtr, 2),
    "cox3d-s": cox3d,
    "nystrom": nystrom,
    "cost-gcn": cost_gcn,
}


# --------------------------------------------------------------------------- torch side


def torch_family(key: str):
    """(continual step function or None, clip function, step input, clip input) makers
    for `streams`: the PyTorch side of family `key`."""
    import torch

    torch.manual_seed(0)
    if key == "anchor":
        from bench_streaming import numpy_params, torch_networks

        step_net, clip_net = torch_networks(numpy_params())
        return (
            step_net.forward_step,
            clip_net,
            lambda s: torch.randn(s, 32, 28, 28),
            lambda s, w: torch.randn(s, 32, w, 28, 28),
        )
    if key.startswith("cooadtr"):
        from bench_transformer import FF, HEADS, E, reference_encoder

        blocks = int(key[-1])
        layer = torch.nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, "gelu", batch_first=True)
        clip = torch.nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False).eval()
        return (
            reference_encoder(blocks).forward_step,
            clip,
            lambda s: torch.randn(s, E),
            lambda s, w: torch.randn(s, w, E),
        )
    if key == "cox3d-s":
        from conversion.pytorchvideo import require_create_x3d

        model = require_create_x3d()().eval()
        return None, model, None, lambda s, w: torch.randn(s, 3, w, 160, 160)
    if key == "nystrom":
        from online_classification import Config, torch_models

        cfg = Config(window=256, width=128, heads=4, feedforward=256, landmarks=16)
        model = torch_models()["nystrom"](NYSTROM["input_dim"], 10, cfg).eval()
        return (
            None,
            lambda x: model(x, torch.zeros(len(x), dtype=torch.long)),
            None,
            lambda s, w: torch.randn(s, w, NYSTROM["input_dim"]),
        )
    if key == "cost-gcn":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from bench_stgcn import STRIDES, WIDTHS
        from stgcn_torch import ContinualSkeletonsNet, randomize

        net = randomize(ContinualSkeletonsNet("st_gcn", "ntu", 60, WIDTHS, STRIDES[False])).eval()
        return None, net, None, lambda s, w: torch.randn(s, 3, w, 25, 2)
    raise KeyError(key)


def torch_rows(keys: list[str], streams: list[int], windows: dict, budget: float, max_call_s):
    """All torch rows (in the `--torch-only` process)."""
    import torch

    rows = []
    for key in keys:
        for s in streams:
            try:  # fresh modules per stream count: continual-inference keeps its buffers
                step, clip, step_input, clip_input = torch_family(key)
            except ImportError as error:  # e.g. pytorchvideo missing
                rows.append({"family": key, "impl": TORCH_CLIP, "skipped": str(error)})
                break
            with torch.inference_mode():
                if step is not None:
                    x = step_input(s)
                    for _ in range(windows[key]):  # fill the buffers
                        step(x)
                    ms, best = torch_timeit(step, x, budget_s=budget)
                    rows.append(dict(family=key, impl=TORCH_STEP, streams=s, ms=ms, best=best))
                x = clip_input(s, windows[key])
                rows.append(_clip_row(key, TORCH_CLIP, s, clip, x, budget=budget,
                                      max_call_s=max_call_s, sync=no_sync))  # fmt: skip
            print(f"  torch {key} {s} stream(s) done", flush=True)
    return rows


def _clip_row(key, impl, streams, fn, *args, budget, max_call_s, sync=jax.block_until_ready):
    """A clip row: timed with repeats, or once when one call takes over `max_call_s`
    (torch callers pass `sync=no_sync` inside `torch.inference_mode()`)."""
    t0 = time.perf_counter()
    sync(fn(*args))
    once = time.perf_counter() - t0
    if once > max_call_s:
        return dict(family=key, impl=impl, streams=streams, ms=1e3 * once, best=1e3 * once,
                    note=f"one call only ({once:.1f} s > --max-call-s)")  # fmt: skip
    ms, best = timeit(fn, *args, budget_s=budget, min_repeats=1, sync=sync)
    return dict(family=key, impl=impl, streams=streams, ms=ms, best=best)


# --------------------------------------------------------------------------- cojax side


def cojax_rows(key: str, fam: Family, streams: list[int], budget: float, max_call_s: float):
    layer, params = fam.layer, fam.params
    spec = jax.ShapeDtypeStruct(fam.frame_shape, jnp.float32)
    rng = np.random.default_rng(0)
    state = layer.init_state(params, spec)
    one_step, _ = compiled(layer.step, params, state, spec)
    clip_spec = jax.ShapeDtypeStruct((fam.window, *fam.frame_shape), jnp.float32)
    one_clip, _ = compiled(layer.forward, params, clip_spec)
    flops = {
        "step": compiled_flops(one_step) * fam.steps_per_prediction,
        "clip": compiled_flops(one_clip),
    }
    rows = []
    for s in streams:
        frame = jnp.asarray(rng.standard_normal((s, *fam.frame_shape)), jnp.float32)
        states = co.init_streams(layer, params, spec, s)
        fn = functools.partial(co.step_streams, layer)
        exe, _ = compiled(fn, params, states, frame, donate=True)
        call, honoured = donated_calls(exe, params, copy_tree(states), frame)
        ms, best = timeit(call, budget_s=budget)
        if not honoured():
            raise RuntimeError(f"{key}: the step state was not donated")
        rows.append(dict(family=key, impl=STEP, streams=s, ms=ms * fam.steps_per_prediction,
                         best=best * fam.steps_per_prediction))  # fmt: skip
        clips = jnp.asarray(rng.standard_normal((s, fam.window, *fam.frame_shape)), jnp.float32)
        many, _ = compiled(jax.vmap(layer.forward, in_axes=(None, 0)), params, clips)
        rows.append(
            _clip_row(key, CLIP, s, many, params, clips, budget=budget, max_call_s=max_call_s)
        )
        print(f"  cojax {key} {s} stream(s): step {rows[-2]['ms']:.2f} ms, clip "
              f"{rows[-1]['ms']:.1f} ms per call", flush=True)  # fmt: skip
    return rows, flops


# --------------------------------------------------------------------------- report


def complete(rows: list[dict], flops: dict, peak: dict) -> list[dict]:
    """Per-prediction figures: ms / stream, predictions/s, GFLOP/s, % of peak."""
    for r in rows:
        if "ms" not in r:
            continue
        f = flops[r["family"]]["step" if "step" in r["impl"] else "clip"]
        r["ms_per_prediction"] = r["ms"] / r["streams"]
        r["predictions_per_s"] = 1e3 / r["ms_per_prediction"]
        r["flops_per_prediction"] = f
        r["gflops_per_s"] = f * r["streams"] / r["ms"] / 1e6
        top = peak["torch_gflops_per_s" if r["impl"].startswith("torch") else "xla_gflops_per_s"]
        r["percent_of_peak"] = 100 * r["gflops_per_s"] / top
    return rows


def _get(rows, family, impl, streams):
    hit = [r for r in rows if (r["family"], r["impl"], r.get("streams")) == (family, impl, streams)]
    return hit[0] if hit else None


def ratios(rows: list[dict], families: dict, streams: list[int]) -> dict:
    """Speed-ups of the cojax step over each other row, per family and stream count."""
    out = {}
    for key in families:
        for s in streams:
            step = _get(rows, key, STEP, s)
            if not step:
                continue
            for impl in (CLIP, TORCH_STEP, TORCH_CLIP):
                other = _get(rows, key, impl, s)
                if other and "ms" in other:
                    out[f"{key} / {s} / step vs {impl}"] = other["ms"] / step["ms"]
    return out


def summary_table(rows: list[dict], names: dict, streams: list[int]) -> str:
    header = ["family", "streams"] + [f"{impl}: ms/pred." for impl in IMPLS]
    header += ["step GFLOP/s (% peak)", "step speed-up vs clip / vs torch step"]
    body = []
    for key, name in names.items():
        for s in streams:
            cells = []
            for impl in IMPLS:
                r = _get(rows, key, impl, s)
                cells.append(f"{r['ms_per_prediction']:.3g}" if r and "ms" in r else "–")
            step = _get(rows, key, STEP, s)
            if step is None:
                continue
            speed = []
            for impl in (CLIP, TORCH_STEP):
                r = _get(rows, key, impl, s)
                speed.append(f"{r['ms'] / step['ms']:.2f}×" if r and "ms" in r else "–")
            body.append([name, s, *cells,
                         f"{step['gflops_per_s']:.1f} ({step['percent_of_peak']:.0f} %)",
                         " / ".join(speed)])  # fmt: skip
    return markdown_table(header, body)


def plot(rows: list[dict], names: dict, streams: list[int], name: str = "bench") -> None:
    fig, axes = figure(ncols=len(streams), width=7)
    for ax, s in zip(axes, streams):
        x = np.arange(len(names))
        for i, impl in enumerate(IMPLS):
            vals = [
                (r["ms_per_prediction"] if (r := _get(rows, k, impl, s)) and "ms" in r else np.nan)
                for k in names
            ]
            ax.bar(x + (i - 1.5) * 0.2, vals, 0.2, label=impl)
        ax.set_xticks(x, list(names.values()), rotation=30, ha="right", fontsize=8)
        ax.set(yscale="log", ylabel="ms per prediction per stream (log)", title=f"{s} stream(s)")
        ax.legend(fontsize=7)
    save_figure(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--streams", default="1,64")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of repeats per row")
    parser.add_argument("--max-call-s", type=float, default=4.0,
                        help="time a clip call once if one call takes longer")  # fmt: skip
    parser.add_argument("--name", default="bench", help="results/<name>.{json,png}")
    parser.add_argument("--quick", action="store_true", help="budget 0.2 s, no CoX3D-S / CoST-GCN")
    parser.add_argument("--torch-only", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_only:
        spec = json.loads(args.torch_only[0])
        rows = torch_rows(spec["families"], spec["streams"], spec["windows"], args.budget,
                          spec["max_call_s"])  # fmt: skip
        np.savez(args.torch_only[1], done=np.ones(1))
        print(json.dumps(torch_report(rows, args.budget, MATMUL_N)))
        return
    if args.quick:
        args.budget = min(args.budget, 0.2)
        if args.families == parser.get_default("families"):
            args.families = "anchor,cooadtr-b1,cooadtr-b2,nystrom"
    keys = [k for k in args.families.split(",") if k]
    if unknown := set(keys) - set(FAMILIES):
        parser.error(f"unknown families {sorted(unknown)}; choose from {list(FAMILIES)}")
    streams = [int(s) for s in args.streams.split(",")]

    families = {k: FAMILIES[k]() for k in keys}
    names = {k: f.name for k, f in families.items()}
    spec = {"families": keys, "streams": streams, "max_call_s": args.max_call_s,
            "windows": {k: f.window for k, f in families.items()}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        report, _ = run_torch_process(
            __file__, [json.dumps(spec)], str(Path(tmp) / "t.npz"), args.budget, env, 3600
        )
    peak = {
        "matmul_n": MATMUL_N,
        "xla_gflops_per_s": matmul_gflops(MATMUL_N, args.budget, "jax"),
        "torch_gflops_per_s": report["torch_matmul_gflops_per_s"],
    }
    print(f"matmul peak: {peak}", flush=True)
    rows, flops = list(report["rows"]), {}
    for key, fam in families.items():
        cojax, flops[key] = cojax_rows(key, fam, streams, args.budget, args.max_call_s)
        rows += cojax
    rows = complete(rows, flops, peak)
    text = summary_table(rows, names, streams)
    print("\n" + text)
    result = {
        "description": __doc__.split("\n\n")[0],
        "families": {
            k: {
                "name": f.name,
                "window": f.window,
                "frame": f.frame_shape,
                "steps_per_prediction": f.steps_per_prediction,
            }
            for k, f in families.items()
        },  # fmt: skip
        "flops_per_prediction": flops,
        "peak_matmul": peak,
        "rows": rows,
        "speedups": ratios(rows, families, streams),
        "table": text,
        **environment(report),
    }
    print("wrote", write_json(args.name, result))
    plot(rows, names, streams, args.name)


if __name__ == "__main__":
    main()
