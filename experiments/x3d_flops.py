"""FLOPs per prediction: X3D clip inference vs CoX3D per-frame inference (XLA-measured).

For each size (S, M, L, and XS with `--sizes`):
- X3D clip: `co.clip_flops(model, params, clip)` of `x3d(size, se_scope="clip")`
  (X3D exactly) on a clip of T × crop² × 3 (S 13×160², M 16×224², L 16×312², XS
  4×160²): the head pools all T frames, so the clip gives ONE prediction (checked:
  output `(1, num_classes)`).
- CoX3D per frame: `co.flops(model, params, frame)` of `x3d(size)` (se_scope "frame",
  the paper's CoX3D) on one crop² × 3 frame: one step, one prediction; and the same
  for `x3d(size, se_scope="clip")` (X3D's exact SE, more delay).
Parameters and inputs are ShapeDtypeStructs (`jax.eval_shape`), nothing is allocated.

Units. The paper (fvcore) counts one multiply-add as one "FLOP"; XLA's cost analysis
counts the multiply and the add separately (2 per MAC) and also counts the depthwise
kernel's shifted multiply / add chain, BN, activations, the step's validity selects
and counters. The table gives XLA FLOPs, XLA / 2 ("MAC-equivalents", comparable to the
paper's GFLOPs) and the clip / step ratio, which is unit-free: that is the figure
compared with the paper's reductions (12.1× / 15.1× / 15.3×).

XLA skips convolution taps that fall in zero padding (spatial padding of the strided
3×3 convs, and in the clip the temporal padding of the 5×1×1 / 3×3×3 convs), which the
paper's counts include; the analytic MAC column counts every tap (fvcore's convention):
sum over convs / linears of k_t·k_h·k_w·(C_in/groups)·C_out·outputs.

    .venv/bin/python experiments/x3d_flops.py [--sizes S M L XS]

Writes experiments/results/x3d_flops.json and x3d_flops.md (after every size).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import cojax as co
from cojax.models.x3d import (
    BOTTLENECK_FACTOR,
    SE_RATIO,
    X3D_SIZES,
    X3D_WIDTHS,
    round_width,
    x3d,
)

RESULTS = Path(__file__).resolve().parent / "results"

# Paper table (Continual 3D CNNs, ECCV 2022): GFLOPs per prediction
# (fvcore: 1 MAC = 1 "FLOP").
PAPER_X3D_GFLOPS = {"XS": 0.64, "S": 2.06, "M": 4.97, "L": 19.17}
PAPER_COX3D_GFLOPS = {"S": 0.17, "M": 0.33, "L": 1.25}
PAPER_REDUCTION = {"S": 12.1, "M": 15.1, "L": 15.3}
# Conv + linear-only counts from the same source.
PAPER_X3D_CONV_G = {"XS": 0.61, "S": 1.97, "M": 4.73, "L": 18.37}
PAPER_COX3D_CONV_G = {"S": 0.153, "M": 0.298, "L": 1.150}
TOLERANCE = 0.15


def analytic_macs(
    crop: int,
    frames: int,
    depths: tuple[int, ...],
    widths: tuple[int, ...] = X3D_WIDTHS,
    head_width: int = 2048,
    classes: int = 400,
) -> int:
    """Multiply-adds of the convs / linears of an x3d model on `frames` frames of crop².

    Every padding tap is counted (fvcore's convention). Per frame: stem, stages (with
    the SE fully-connected layers, run per frame by the frame-scope SE of the cojax
    model; X3D's clip SE runs them once per clip, ~0.01 % of the total) and conv_5;
    once per prediction: lin_5 and the projection (after the temporal pool).
    """
    side = -(-crop // 2)  # stem stride 2 (pad 1, kernel 3): ceil(S / 2)
    width = widths[0]
    per_frame = 9 * 3 * width * side**2  # conv_xy 1×3×3
    per_frame += 5 * width * side**2  # depthwise temporal 5×1×1
    c_in = width
    for c_out, depth in zip(widths, depths):
        inner = int(BOTTLENECK_FACTOR * c_out)
        se = round_width(inner, SE_RATIO)
        for j in range(depth):
            side_in = side
            if j == 0:
                side = -(-side // 2)
                per_frame += c_in * c_out * side**2  # branch1 (strided 1×1×1)
            per_frame += c_in * inner * side_in**2  # a
            per_frame += 27 * inner * side**2  # b, depthwise 3×3×3
            if j % 2 == 0:
                per_frame += 2 * inner * se  # SE fc1 + fc2
            per_frame += inner * c_out * side**2  # c
            c_in = c_out
    head_inner = int(BOTTLENECK_FACTOR * c_in)
    per_frame += c_in * head_inner * side**2  # conv_5
    once = head_inner * head_width + head_width * classes  # lin_5, projection
    return frames * per_frame + once


def measure(size: str) -> dict:
    """XLA FLOPs of one clip prediction and one step prediction of X3D-`size`."""
    config = X3D_SIZES[size]
    model, exact = x3d(size), x3d(size, se_scope="clip")
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    exact_params = jax.eval_shape(exact.init, jax.random.PRNGKey(0))
    crop = config.crop
    clip = jax.ShapeDtypeStruct((config.frames, crop, crop, 3), jnp.float32)
    frame = jax.ShapeDtypeStruct((crop, crop, 3), jnp.float32)
    out = jax.eval_shape(exact.forward, exact_params, clip)
    if out.shape != (1, 400):
        raise RuntimeError(f"X3D-{size} clip output {out.shape}, expected one prediction.")
    t0 = time.perf_counter()
    clip_f = co.clip_flops(exact, exact_params, clip)
    t1 = time.perf_counter()
    step_f = co.flops(model, params, frame)
    t2 = time.perf_counter()
    exact_step_f = co.flops(exact, exact_params, frame)
    clip_macs = analytic_macs(crop, config.frames, config.depths)
    step_macs = analytic_macs(crop, 1, config.depths)
    row = {
        "size": size,
        "clip_shape": list(clip.shape),
        "frame_shape": list(frame.shape),
        "xla_clip_gflops": clip_f / 1e9,
        "xla_step_gflops": step_f / 1e9,
        "xla_clip_gmacs_equiv": clip_f / 2e9,
        "xla_step_gmacs_equiv": step_f / 2e9,
        "xla_ratio": clip_f / step_f,
        "xla_step_clip_se_gflops": exact_step_f / 1e9,
        "xla_ratio_clip_se": clip_f / exact_step_f,
        "delay_frame_se": model.delay,
        "delay_clip_se": exact.delay,
        "analytic_clip_gmacs": clip_macs / 1e9,
        "analytic_step_gmacs": step_macs / 1e9,
        "analytic_ratio": clip_macs / step_macs,
        "paper_x3d_gflops": PAPER_X3D_GFLOPS.get(size),
        "paper_cox3d_gflops": PAPER_COX3D_GFLOPS.get(size),
        "paper_ratio": PAPER_REDUCTION.get(size),
        "paper_x3d_conv_gflops": PAPER_X3D_CONV_G.get(size),
        "paper_cox3d_conv_gflops": PAPER_COX3D_CONV_G.get(size),
        "compile_s": {"clip": round(t1 - t0, 1), "step": round(t2 - t1, 1)},
    }
    if size in PAPER_REDUCTION:
        dev = row["xla_ratio"] / PAPER_REDUCTION[size] - 1
        row["ratio_rel_dev"] = dev
        row["within_tolerance"] = abs(dev) <= TOLERANCE
    return row


def _fmt(x: float | None, digits: int = 3, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def table(rows: list[dict]) -> str:
    """Markdown table: ours (XLA, XLA/2, analytic MACs) beside the paper's GFLOPs."""
    head = (
        "| size | X3D clip XLA GFLOPs | ÷2 (GMAC-eq) | analytic GMACs | paper X3D GFLOPs "
        "| CoX3D step XLA GFLOPs | ÷2 (GMAC-eq) | analytic GMACs | paper CoX3D GFLOPs "
        "| ratio XLA | ratio analytic | ratio paper | XLA vs paper "
        "| clip-SE step XLA GFLOPs, ratio, delay |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        dev = r.get("ratio_rel_dev")
        verdict = "–" if dev is None else f"{dev:+.1%}" + (" ✓" if r["within_tolerance"] else " ✗")
        lines.append(
            f"| {r['size']} | {_fmt(r['xla_clip_gflops'])} | {_fmt(r['xla_clip_gmacs_equiv'])} "
            f"| {_fmt(r['analytic_clip_gmacs'])} | {_fmt(r['paper_x3d_gflops'], 2)} "
            f"| {_fmt(r['xla_step_gflops'])} | {_fmt(r['xla_step_gmacs_equiv'])} "
            f"| {_fmt(r['analytic_step_gmacs'])} | {_fmt(r['paper_cox3d_gflops'], 2)} "
            f"| {_fmt(r['xla_ratio'], 2, '×')} | {_fmt(r['analytic_ratio'], 2, '×')} "
            f"| {_fmt(r['paper_ratio'], 1, '×')} | {verdict} "
            f"| {_fmt(r['xla_step_clip_se_gflops'])}, {_fmt(r['xla_ratio_clip_se'], 2, '×')}, "
            f"{r['delay_clip_se']} (frame SE: {r['delay_frame_se']}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "M", "L"], choices=list(X3D_SIZES))
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for size in args.sizes:
        rows.append(measure(size))
        print(f"X3D-{size}: {json.dumps(rows[-1])}", flush=True)
        meta = {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "machine": platform.processor() or platform.machine(),
            "tolerance": TOLERANCE,
            "units": "XLA counts 2 FLOPs per multiply-add; paper (fvcore) 1 per MAC",
        }
        (RESULTS / "x3d_flops.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        (RESULTS / "x3d_flops.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
