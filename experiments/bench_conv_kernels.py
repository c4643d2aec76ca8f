"""Which window kernel should a continual convolution step use on CPU?

Times one step (a 3-frame window -> one output frame, spatial padding 1) of
  (a) depthwise 3x3x3, 216 channels, 20x20 frame:
      lax 3D grouped conv | 3 x 2D grouped lax convs, summed | shifted multiply-add (cojax)
  (b) dense 3x3x3, 32 -> 32 channels, 28x28 frame:
      lax 3D conv | 3 x 2D convs | taps folded into channels + one 2D conv (cojax) |
      im2col + einsum
  (c) the same two convolutions with torch.nn.functional.conv3d (oneDNN), for reference,
for one stream and for 64 streams (jax.vmap / torch batch of 64). The cojax rows run the
real `cojax.Conv3d.step` (ring update included) and, per output frame, its clip
`forward`; the jaxprs of both are inspected to confirm the kernel cojax uses. Extra rows
rerun the cojax step in fresh processes under XLA CPU flags (YNNPACK fusions off,
XNNPACK, oneDNN).

    .venv/bin/python experiments/bench_conv_kernels.py [--budget 0.5] [--no-flags]

Writes experiments/results/conv_kernels.json and conv_kernels.png. Times are jit-compiled,
after a warm-up call, the median (and min) of repeats; "per stream" divides the
64-stream call by 64. GFLOP/s use the analytic FLOP count (2 x multiply-adds).
The machine is shared: check the load average printed at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, timeit, torch_timeit, write_json  # noqa: E402

from cojax.layers.conv import Conv3d  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STREAMS = 64
CASES = {
    "depthwise": dict(channels=216, out=216, size=20, groups=216),
    "dense": dict(channels=32, out=32, size=28, groups=1),
}


def analytic_flops(case: dict) -> float:
    """2 x MACs of one output frame (spatial padding 1, stride 1)."""
    c_in_per_group = case["channels"] // case["groups"]
    return 2.0 * case["size"] ** 2 * case["out"] * c_in_per_group * 27


# --------------------------------------------------------------------------- jax kernels
# Every kernel maps a window (3, H, W, C) with a kernel (3, 3, 3, C/groups, C_out) to
# (H, W, C_out); batches of streams come from jax.vmap.


def lax_conv3d(window, kernel, groups):
    y = lax.conv_general_dilated(
        window[None],
        kernel,
        window_strides=(1, 1, 1),
        padding=[(0, 0), (1, 1), (1, 1)],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=groups,
    )
    return y[0, 0]


def lax_3x_conv2d(window, kernel, groups):
    ys = [
        lax.conv_general_dilated(
            window[j][None],
            kernel[j],
            window_strides=(1, 1),
            padding=[(1, 1), (1, 1)],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )[0]
        for j in range(3)
    ]
    return ys[0] + ys[1] + ys[2]


def im2col_einsum(window, kernel, groups):
    del groups
    t, h, w, c = window.shape
    padded = jnp.pad(window, [(0, 0), (1, 1), (1, 1), (0, 0)])
    cols = jnp.stack(
        [padded[j, a : a + h, b : b + w] for j in range(3) for a in range(3) for b in range(3)],
        axis=2,
    )  # (H, W, 27, C)
    return jnp.einsum("hwkc,kco->hwo", cols, kernel.reshape(27, c, -1))


def make_layer(case: dict) -> Conv3d:
    return Conv3d(case["channels"], case["out"], 3, padding=1, groups=case["groups"], bias=False)


def conv_ops(fn, *args) -> list[dict]:
    """The convolution primitives in the jaxpr of `fn(*args)` (nested jaxprs included)."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append(
                    dict(
                        lhs_shape=list(eqn.invars[0].aval.shape),
                        feature_group_count=int(eqn.params["feature_group_count"]),
                    )
                )
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def inspect_path(layer: Conv3d, params, frame) -> dict:
    """Confirm from the jaxprs which kernel `Conv3d.step` and `Conv3d.forward` run."""
    state = layer.init_state(params, frame)
    clip = jnp.zeros((6, *frame.shape))
    step_convs = conv_ops(lambda s, x: layer.step(params, s, x), state, frame)
    fwd_convs = conv_ops(lambda c: layer.forward(params, c), clip)
    info = {"kernel_path": layer.kernel_path, "step_convs": step_convs, "forward_convs": fwd_convs}
    if layer.kernel_path == "depthwise":
        assert not step_convs and not fwd_convs, f"depthwise must not call lax.conv: {info}"
    if layer.kernel_path == "dense":
        for convs in (step_convs, fwd_convs):
            assert len(convs) == 1, info
            assert len(convs[0]["lhs_shape"]) == 4, f"expected one 2D conv: {info}"
            assert convs[0]["lhs_shape"][-1] == 3 * layer.in_channels, f"taps not folded: {info}"
    return info


def jax_kernel_fn(impl, kernel, groups: int, streams: int):
    def one(window):
        return impl(window, kernel, groups)

    return jax.jit(jax.vmap(one) if streams > 1 else one)


def cojax_step_fn(layer: Conv3d, params, streams: int):
    """The real `Conv3d.step`, jitted (vmapped over streams if > 1)."""

    def step(state, frame):
        return layer.step(params, state, frame)

    return jax.jit(jax.vmap(step) if streams > 1 else step)


def warm_state(layer: Conv3d, params, frame, streams: int):
    init = jax.vmap(layer.init_state, in_axes=(None, 0)) if streams > 1 else layer.init_state
    state = init(params, frame)
    step = cojax_step_fn(layer, params, streams)
    for _ in range(3):
        state, _ = step(state, frame)
    return step, state


def frames_for(case: dict, streams: int, num: int | None = None):
    shape = (case["size"], case["size"], case["channels"])
    lead = ((streams,) if streams > 1 else ()) + ((num,) if num else ())
    return jax.random.normal(jax.random.PRNGKey(1), lead + shape, jnp.float32)


def bench_case(name: str, case: dict, budget: float) -> tuple[list[dict], dict]:
    layer = make_layer(case)
    params = layer.init(jax.random.PRNGKey(0))
    flops = analytic_flops(case)
    rows = []

    def add(impl, streams, times, per_call_outputs=1):
        med, best = (t / per_call_outputs for t in times)
        rows.append(
            dict(
                case=name,
                impl=impl,
                streams=streams,
                ms_per_call=med,
                ms_per_stream=med / streams,
                min_ms_per_stream=best / streams,
                gflops_per_s=flops / (med / streams * 1e-3) / 1e9,
            )
        )
        print(
            f"  {name:9s} {impl:36s} streams={streams:3d}  {med:9.3f} ms/call  "
            f"{med / streams:8.3f} ms/stream (min {best / streams:.3f})",
            flush=True,
        )

    impls = {"lax 3D conv": lax_conv3d, "lax 3 x 2D conv, summed": lax_3x_conv2d}
    if name == "dense":
        impls["im2col + einsum"] = im2col_einsum
    torch_w = torch.tensor(np.asarray(params["kernel"])).permute(4, 3, 0, 1, 2).contiguous()
    for streams in (1, STREAMS):
        window = frames_for(case, streams, 3)
        for impl, f in impls.items():
            fn = jax_kernel_fn(f, params["kernel"], case["groups"], streams)
            add(impl, streams, timeit(fn, window, budget_s=budget))
        frame = frames_for(case, streams)
        step, state = warm_state(layer, params, frame, streams)
        add(
            f"cojax Conv3d.step ({layer.kernel_path})",
            streams,
            timeit(step, state, frame, budget_s=budget),
        )
        if streams == 1:  # the clip path: same kernel batched over the windows
            clip = frames_for(case, 1, 16)  # padding 1 -> 16 output frames
            fwd = jax.jit(lambda c: layer.forward(params, c))
            add("cojax Conv3d.forward (per frame)", 1, timeit(fwd, clip, budget_s=budget), 16)
        x = torch.randn(streams, case["channels"], 3, case["size"], case["size"])
        conv = lambda x: F.conv3d(x, torch_w, padding=(0, 1, 1), groups=case["groups"])  # noqa: E731
        add("torch F.conv3d (oneDNN)", streams, torch_timeit(conv, x, budget_s=budget))
    return rows, inspect_path(layer, params, frames_for(case, 1))


def peak_matmul(n: int = 1024) -> dict:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    _, ms_jax = timeit(jax.jit(lambda a: a @ a), a)
    t = torch.randn(n, n)
    _, ms_torch = torch_timeit(lambda t: t @ t, t)
    flops = 2.0 * n**3
    return {
        "matmul_n": n,
        "xla_gflops_per_s": flops / (ms_jax * 1e-3) / 1e9,
        "torch_gflops_per_s": flops / (ms_torch * 1e-3) / 1e9,
    }


def cojax_only(budget: float) -> list[dict]:
    """The cojax step rows only (run in the XLA-flag subprocesses)."""
    rows = []
    for name, case in CASES.items():
        layer = make_layer(case)
        params = layer.init(jax.random.PRNGKey(0))
        for streams in (1, STREAMS):
            frame = frames_for(case, streams)
            step, state = warm_state(layer, params, frame, streams)
            med, best = timeit(step, state, frame, budget_s=budget)
            rows.append(
                dict(
                    case=name,
                    streams=streams,
                    ms_per_call=med,
                    ms_per_stream=med / streams,
                    min_ms_per_stream=best / streams,
                    gflops_per_s=analytic_flops(case) / (med / streams * 1e-3) / 1e9,
                )
            )
    return rows


FLAG_VARIANTS = {
    "ynn off": "--xla_cpu_experimental_ynn_fusion_type=",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
}


def flag_rows(budget: float) -> list[dict]:
    """Rerun the cojax step rows under each XLA CPU flag, in fresh processes."""
    rows = []
    for flag in FLAG_VARIANTS.values():
        env = dict(os.environ, XLA_FLAGS=flag)
        cmd = [sys.executable, __file__, "--cojax-only", "--budget", str(budget)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
        if proc.returncode != 0:
            print(f"  XLA_FLAGS={flag}: failed ({proc.stderr.strip().splitlines()[-1:]})")
            continue
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            row["impl"] = f"cojax step, XLA_FLAGS={flag}"
            rows.append(row)
            print(
                f"  {row['case']:9s} {row['impl']:36s} streams={row['streams']:3d}  "
                f"{row['ms_per_call']:9.3f} ms/call  {row['ms_per_stream']:8.3f} ms/stream "
                f"(min {row['min_ms_per_stream']:.3f})",
                flush=True,
            )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "\n| case | implementation | 1 stream (ms) | 64 streams (ms / stream) | GFLOP/s (1 / 64) |"
    )
    print("|---|---|---|---|---|")
    keys = []
    for r in rows:
        if (r["case"], r["impl"]) not in keys:
            keys.append((r["case"], r["impl"]))
    for case, impl in keys:
        by = {r["streams"]: r for r in rows if r["case"] == case and r["impl"] == impl}
        one, many = by.get(1), by.get(STREAMS)
        cell = lambda r, k, f: f.format(r[k]) if r and k in r else "–"  # noqa: E731
        print(
            f"| {case} | {impl} | {cell(one, 'ms_per_stream', '{:.3f}')} | "
            f"{cell(many, 'ms_per_stream', '{:.3f}')} | "
            f"{cell(one, 'gflops_per_s', '{:.1f}')} / {cell(many, 'gflops_per_s', '{:.1f}')} |"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, case in zip(axes, CASES):
        impls = []
        for r in rows:
            if r["case"] == case and r["impl"] not in impls:
                impls.append(r["impl"])
        x = np.arange(len(impls))
        for i, streams in enumerate((1, STREAMS)):
            vals = []
            for impl in impls:
                hit = [
                    r for r in rows if (r["case"], r["impl"], r["streams"]) == (case, impl, streams)
                ]
                vals.append(hit[0]["ms_per_stream"] if hit else np.nan)
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=f"{streams} stream(s), ms/stream")
        ax.set_xticks(x, impls, rotation=35, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{case} 3x3x3, {CASES[case]['channels']} ch, {CASES[case]['size']}²")
        ax.set_ylabel("ms per stream per step (log)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of repeats per row")
    parser.add_argument("--no-flags", action="store_true", help="skip the XLA_FLAGS rows")
    parser.add_argument("--cojax-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cojax_only:
        print(json.dumps(cojax_only(args.budget)))
        return

    start = time.time()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    peak = peak_matmul()
    print(f"  peak f32 matmul 1024^3: XLA {peak['xla_gflops_per_s']:.1f} GFLOP/s, "
          f"torch {peak['torch_gflops_per_s']:.1f} GFLOP/s")  # fmt: skip
    rows, paths = [], {}
    for name, case in CASES.items():
        case_rows, paths[name] = bench_case(name, case, args.budget)
        rows += case_rows
        print(f"  {name}: cojax path {paths[name]}")
    if not args.no_flags:
        rows += flag_rows(args.budget)
    print_table(rows)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "description": "One continual conv step (3-frame window -> 1 frame), spatial padding 1. "
        "ms: median (and min) after a warm-up call, jit; per stream = call / streams; "
        "'forward (per frame)' = 16-frame clip / 16. GFLOP/s: analytic FLOPs / median.",
        "cases": CASES,
        "analytic_flops_per_step": {k: analytic_flops(v) for k, v in CASES.items()},
        "peak_matmul": peak,
        "cojax_paths": paths,
        "rows": rows,
        **environment(),
    }
    write_json("conv_kernels", out)
    plot(rows, RESULTS / "conv_kernels.png")
    print(
        f"\nwrote {RESULTS / 'conv_kernels.json'} and conv_kernels.png in {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
