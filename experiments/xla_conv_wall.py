"""Where the 64-stream anchor step's time goes: XLA:CPU's convolution itself.

    python experiments/xla_conv_wall.py [--budget 1.0] [--streams 64]

One layer of the anchor network at 64 streams (3-frame window, 28×28, 32 -> 32
channels, 3×3×3 kernel, spatial padding 1): every formulation XLA:CPU offers for the
continual step's convolution, the `co.Conv3d` step itself (vmapped, state donated),
the same convolution in torch (oneDNN), and both frameworks' f32 matmul peaks, in one
run. Formulations:

- `conv3d`: one `lax.conv_general_dilated` over the window `(S, 3, H, W, C)`;
- `fold + conv2d`: the temporal taps folded into channels, one 2D conv `3C -> C`
  (what `co.Conv3d`'s step does), with and without the fold's copy;
- `partials conv2d`: the newest frame against all temporal taps, `C -> 3C` (the
  continual-inference formulation: partial sums carried in the state);
- `3 × conv2d`: one 2D conv per temporal tap, summed;
- `9 shifted matmuls`, `im2col + matmul`: the convolution as matmuls over taps;
- `batch folded into rows`: the 64 frames stacked along H (one image, 2D conv);
- a whole step that keeps its window folded into channels (append + conv2d);
- each of them twice: with XLA:CPU's default convolution library (YNNPACK) and with
  Eigen's (`co.compiler_options`' per-program option);
- the `co.Conv3d` step four ways: its partial-sums step under both libraries (state
  donated leaf by leaf, `co.donating_jit`), the same with the whole state donated (XLA
  then copies every partial sum in and out: the `xla_copies` column), and the former
  window step (ring + fold into channels + conv2d) under Eigen.

The anchor network's step (10 such layers, `bench_streaming.py`) and CoX3D-S's, at 1 and
64 streams, are timed with their state donated leaf by leaf, whole and not at all, each
in a process of its own (`network_donation`).

A second table, "YNNPACK vs Eigen", times one 3×3 conv of the shapes continual
networks run (1 to 64 streams, 3 to 256 input channels) under both libraries: the
measurements behind `co.compiler_options`' rule.

The ratio `co.Conv3d step / best bare formulation` is the "everything around the
convolution" cost; `best XLA formulation / torch conv` and `/ matmul peak` show the
wall. Writes `experiments/results/xla_conv_wall.json`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    compiled,
    copy_tree,
    donated_calls,
    environment,
    interleaved,
    markdown_table,
    matmul_gflops,
    run_torch_process,
    timeit,
    torch_report,
    torch_timeit,
    write_json,
)

import cojax as co  # noqa: E402

H, C, KT = 28, 32, 3
DN2 = ("NHWC", "HWIO", "NHWC")


def conv2d(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=DN2)


def im2col(x):
    p = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    return jnp.concatenate([p[:, a : a + H, b : b + H] for a in range(3) for b in range(3)], -1)


def formulations(kernel):
    """name -> (function, which input: "window" (S,3,H,W,C), "folded" (S,H,W,3C), "frame")."""
    folded_w = jnp.moveaxis(kernel, 0, 2).reshape(3, 3, KT * C, C)
    partial_w = jnp.moveaxis(kernel, 0, 3).reshape(3, 3, C, KT * C)

    def fold(win):
        return jnp.moveaxis(win, 1, -2).reshape(*win.shape[:1], H, H, KT * C)

    def shifted(win):
        p = jnp.pad(fold(win), [(0, 0), (1, 1), (1, 1), (0, 0)])
        return sum(
            jnp.einsum("shwc,co->shwo", p[:, a : a + H, b : b + H], folded_w[a, b])
            for a in range(3)
            for b in range(3)
        )

    def rows(frame):
        s = frame.shape[0]
        x = jnp.pad(frame, [(0, 0), (0, 1), (0, 0), (0, 0)]).reshape(1, s * (H + 1), H, C)
        return conv2d(x, partial_w)

    dn3 = ("NDHWC", "DHWIO", "NDHWC")
    return {
        "conv3d": (lambda w: lax.conv_general_dilated(w, kernel, (1, 1, 1), [(0, 0), (1, 1), (1, 1)],
                                                      dimension_numbers=dn3), "window"),  # fmt: skip
        "fold + conv2d": (lambda w: conv2d(fold(w), folded_w), "window"),
        "conv2d on pre-folded taps": (lambda x: conv2d(x, folded_w), "folded"),
        "partials conv2d (C -> 3C)": (lambda f: conv2d(f, partial_w), "frame"),
        "3 × conv2d, summed": (lambda w: sum(conv2d(w[:, j], kernel[j]) for j in range(KT)), "window"),
        "9 shifted matmuls": (shifted, "window"),
        "im2col + matmul (fold)": (lambda x: im2col(x) @ folded_w.reshape(-1, C), "folded"),
        "batch folded into rows": (rows, "frame"),
    }  # fmt: skip


EIGEN = co.compiler.EIGEN_CONVOLUTIONS
LIBRARIES = {"": None, ", Eigen conv": EIGEN}  # row suffix -> compiler_options
# (streams, H = W, C_in, C_out, spatial stride): the anchor's partial and folded convs,
# an X3D RGB stem, and dense convs of wider / narrower networks.
SWEEP = [(1, 28, 32, 96, 1), (64, 28, 32, 96, 1), (1, 28, 96, 32, 1), (64, 28, 96, 32, 1),
         (1, 160, 3, 24, 2), (13, 160, 3, 24, 2), (64, 160, 3, 24, 2), (1, 56, 16, 48, 1),
         (64, 56, 16, 48, 1), (1, 56, 64, 192, 1), (16, 56, 64, 192, 1), (1, 14, 256, 768, 1),
         (16, 14, 256, 768, 1), (1, 112, 24, 72, 1)]  # fmt: skip


class WindowConv3d(co.Conv3d):
    """`co.Conv3d` held to its window step (ring + fold + conv2d): the former path."""

    @property
    def step_path(self) -> str:
        return "window"


def library_sweep(budget: float) -> list[dict]:
    """One 3×3 conv per SWEEP shape, YNNPACK (default) and Eigen, timed in turn."""
    rows, rng = [], np.random.default_rng(1)
    for streams, size, c_in, c_out, stride in SWEEP:
        x = jnp.asarray(rng.standard_normal((streams, size, size, c_in)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, c_in, c_out)), jnp.float32)

        def conv(x, w, stride=stride):
            return lax.conv_general_dilated(
                x, w, (stride, stride), [(1, 1), (1, 1)], dimension_numbers=DN2
            )

        row = {"streams": streams, "size": size, "c_in": c_in, "c_out": c_out,
               "stride": stride}  # fmt: skip
        for name, opts in (("ynnpack", None), ("eigen", EIGEN)):
            ms, best = timeit(jax.jit(conv, compiler_options=opts), x, w, budget_s=budget / 2)
            row[f"{name}_ms"], row[f"{name}_best_ms"] = ms, best
        row["ynnpack_over_eigen"] = row["ynnpack_ms"] / row["eigen_ms"]
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


def layer_step_rows(frame, budget: float) -> tuple[list[dict], dict]:
    """`co.Conv3d`'s step at `frame.shape[0]` streams (vmapped, state donated leaf by
    leaf as `co.StreamPool` does, or whole): rows and the calls (for `interleaved`)."""
    rows, calls, s = [], {}, frame.shape[0]
    spec = jax.ShapeDtypeStruct((H, H, C), jnp.float32)
    cases = [("co.Conv3d step (partial sums)", co.Conv3d, False, True),
             ("co.Conv3d step (partial sums), Eigen conv", co.Conv3d, True, True),
             ("co.Conv3d step (partial sums), Eigen conv, whole state donated", co.Conv3d,
              True, False),
             ("co.Conv3d window step (the former path), Eigen conv", WindowConv3d, True,
              True)]  # fmt: skip
    for name, cls, eigen, leafwise in cases:
        layer = cls(C, C, 3, padding=(0, 1, 1), bias=False)
        params = layer.init(jax.random.PRNGKey(0))  # timing only: its own random kernel
        states = co.init_streams(layer, params, spec, s)
        fn = functools.partial(co.step_streams, layer)
        if leafwise:  # co.donating_jit: the partial sums are not donated
            exe, _ = compiled(fn, params, states, frame, donate=True, options=eigen)
        else:
            exe = jax.jit(fn, donate_argnums=1, compiler_options=EIGEN)
            exe = exe.lower(params, states, frame).compile()
        call, honoured = donated_calls(exe, params, copy_tree(states), frame)
        ms, best = timeit(call, budget_s=budget)
        assert honoured()
        rows.append({"impl": name, "ms": ms, "best": best, "xla_copies": xla_copies(exe)})
        calls[name] = call
        print(f"  {rows[-1]}", flush=True)
    return rows, calls


def partials_program_call(kernel, frame, opts):
    """The step's arithmetic with no layer around it: the partials conv (C -> 3C) and
    the sums' adds and shift, `(s0, s1) -> (s1 + z1, z2)`, y = s0 + z0; fresh outputs."""
    partial_w = jnp.moveaxis(kernel, 0, 3).reshape(3, 3, C, KT * C)

    def step(sums, frame):
        z = conv2d(frame, partial_w)
        s0, s1 = sums
        return (s1 + z[..., C : 2 * C], z[..., 2 * C :]), s0 + z[..., :C]

    exe = jax.jit(step, compiler_options=opts)
    box = {"sums": (jnp.zeros_like(frame), jnp.zeros_like(frame))}

    def call():
        box["sums"], y = exe(box["sums"], frame)
        return y

    return call


DONATIONS = ("leaf by leaf (co.donating_jit)", "whole state", "not donated")


def xla_copies(exe) -> int:
    """The copy instructions XLA put into a compiled program's entry computation."""
    return exe.as_text().split("ENTRY")[1].count(" copy(")


def donation_variant(name: str, streams: int, variant: str, budget: float) -> dict:
    """One network's step at `streams` streams, its state donated as `variant` says:
    median / min ms (at least 5 calls) and the copies XLA inserts."""
    from bench import anchor, cox3d  # the families of `python -m experiments.bench`

    fam = {"anchor": anchor, "cox3d-s": cox3d}[name]()
    layer, params, shape = fam.layer, fam.params, fam.frame_shape
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    frame = jnp.asarray(np.random.default_rng(2).standard_normal((streams, *shape)), jnp.float32)
    states = co.init_streams(layer, params, spec, streams)
    fn = functools.partial(co.step_streams, layer)
    opts = co.compiler_options(fn, params, states, frame) or None
    if variant == DONATIONS[0]:
        exe = co.donating_jit(fn, compiler_options=opts).compile(params, states, frame)
    else:
        donate = (1,) if variant == DONATIONS[1] else ()
        exe = jax.jit(fn, donate_argnums=donate, compiler_options=opts)
        exe = exe.lower(params, states, frame).compile()
    call = donated_calls(exe, params, copy_tree(states), frame)[0]
    ms, best = timeit(call, budget_s=budget, min_repeats=5)
    return {"ms": ms, "best": best, "xla_copies": xla_copies(exe)}


def network_donation(streams: int, budget: float) -> dict:
    """The anchor network (10 × Conv3d + BN + ReLU, `bench_streaming.py`) and CoX3D-S at
    1 and `streams` streams, each donation variant timed in a process of its own
    (buffers freed by one variant would feed another's allocations in one process)."""
    import json
    import subprocess

    out = {}
    for name in ("anchor", "cox3d-s"):
        for s in (1, streams):
            key = f"{name}, {s} stream(s)"
            out[key] = {}
            for variant in DONATIONS:
                cmd = [sys.executable, __file__, "--donation", name, str(s), variant,
                       "--budget", str(3 * budget)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                if proc.returncode != 0:
                    raise RuntimeError(f"donation run {cmd} failed:\n{proc.stderr}")
                out[key][variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            ms = {v: out[key][v]["ms"] for v in DONATIONS}
            out[key]["leaf_by_leaf_speedup_over_whole"] = ms[DONATIONS[1]] / ms[DONATIONS[0]]
            print(f"  donation, {key}: {out[key]}", flush=True)
    return out


def folded_buffer_row(kernel, frame, budget: float, opts=None, suffix: str = "") -> dict:
    """A whole step with the window kept folded, `(S, H, W, (k_t - 1)·C)`: append the
    frame along channels, one conv2d, keep the newest taps (state donated)."""
    folded_w = jnp.moveaxis(kernel, 0, 2).reshape(3, 3, KT * C, C)

    def step(buffer, frame):
        window = jnp.concatenate([buffer, frame], -1)
        return window[..., C:], conv2d(window, folded_w)

    exe = jax.jit(step, donate_argnums=0, compiler_options=opts)
    box = {"buffer": jnp.zeros((*frame.shape[:-1], (KT - 1) * C), frame.dtype)}

    def call():
        box["buffer"], y = exe(box["buffer"], frame)
        return y

    ms, best = timeit(call, budget_s=budget)
    return {
        "impl": f"XLA step with a folded buffer (concat + conv2d, donated){suffix}",
        "ms": ms,
        "best": best,
    }


def torch_rows(streams: int, budget: float) -> list[dict]:
    import torch
    import torch.nn.functional as F

    w3 = torch.randn(C, C, KT, 3, 3)
    w_partial = torch.randn(KT * C, C, 3, 3)
    cases = {
        "torch conv3d (oneDNN)": (lambda x: F.conv3d(x, w3, padding=(0, 1, 1)),
                                  torch.randn(streams, C, KT, H, H)),
        "torch conv2d on folded taps": (lambda x: F.conv2d(x, w3.reshape(C, KT * C, 3, 3), padding=1),
                                        torch.randn(streams, KT * C, H, H)),
        "torch partials conv2d (C -> 3C)": (lambda x: F.conv2d(x, w_partial, padding=1),
                                            torch.randn(streams, C, H, H)),
    }  # fmt: skip
    rows = []
    for name, (fn, x) in cases.items():
        ms, best = torch_timeit(fn, x, budget_s=budget)
        rows.append({"impl": name, "ms": ms, "best": best})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--torch-only", nargs=2, metavar=("STREAMS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--donation", nargs=3, help=argparse.SUPPRESS)  # network streams variant
    args = parser.parse_args()
    s = args.streams
    if args.donation:
        import json

        name, streams, variant = args.donation
        print(json.dumps(donation_variant(name, int(streams), variant, args.budget)))
        return
    if args.torch_only:
        import json

        np.savez(args.torch_only[1], done=np.ones(1))
        rows = torch_rows(int(args.torch_only[0]), args.budget)
        print(json.dumps(torch_report(rows, args.budget, 2048)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        report, _ = run_torch_process(
            __file__, [str(s)], str(Path(tmp) / "t.npz"), args.budget, env, 600
        )
    flops = 2.0 * s * H * H * KT * 9 * C * C  # multiply-adds of the taps, padding included
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(0.05 * rng.standard_normal((KT, 3, 3, C, C)), jnp.float32)
    window = jnp.asarray(rng.standard_normal((s, KT, H, H, C)), jnp.float32)
    inputs = {
        "window": window,
        "folded": jnp.moveaxis(window, 1, -2).reshape(s, H, H, KT * C),
        "frame": window[:, -1],
    }
    rows = []
    for suffix, opts in LIBRARIES.items():
        for name, (fn, which) in formulations(kernel).items():
            exe = jax.jit(fn, compiler_options=opts)
            ms, best = timeit(exe, inputs[which], budget_s=args.budget)
            rows.append({"impl": f"XLA {name}{suffix}", "ms": ms, "best": best})
            print(f"  {rows[-1]}", flush=True)
        rows.append(folded_buffer_row(kernel, inputs["frame"], args.budget, opts, suffix))
    step_rows, calls = layer_step_rows(inputs["frame"], args.budget)
    rows += step_rows + report["rows"]
    # The ratios of the summary, timed in turn (steadier than the rows' separate runs).
    forms = formulations(kernel)
    for name in ("partials conv2d (C -> 3C)", "conv2d on pre-folded taps"):
        fn, which = forms[name]
        exe = jax.jit(fn, compiler_options=EIGEN)
        calls[f"XLA {name}, Eigen conv"] = functools.partial(exe, inputs[which])
    minimal = "XLA partials conv2d + the sums' adds (no layer), Eigen conv"
    calls[minimal] = partials_program_call(kernel, inputs["frame"], EIGEN)
    turns = interleaved(calls, budget_s=6 * args.budget)
    peak = {
        "xla": matmul_gflops(2048, args.budget, "jax"),
        "torch": report["torch_matmul_gflops_per_s"],
    }
    for r in rows:
        r["gflops_per_s"] = flops / r["ms"] / 1e6
        r["percent_of_own_matmul_peak"] = (
            100 * r["gflops_per_s"] / peak["torch" if r["impl"].startswith("torch") else "xla"]
        )

    def turn(impl):  # median ms of the interleaved runs
        return turns[impl][0]

    bare = [r for r in rows if r["impl"].startswith("XLA") and "step" not in r["impl"]]
    best_bare = min(bare, key=lambda r: r["ms"])
    step = "co.Conv3d step (partial sums), Eigen conv"
    torch_best = min((r for r in rows if r["impl"].startswith("torch")), key=lambda r: r["ms"])
    summary = {
        "best_xla_formulation": best_bare["impl"],
        "interleaved_ms": {k: v[0] for k, v in turns.items()},
        # GFLOP/s ratios = time ratios (same FLOPs): the step against the conv it runs,
        # and against the window formulation's conv (3C -> C on pre-folded taps)
        "cojax_step_gflops_over_its_own_bare_conv":
            turn("XLA partials conv2d (C -> 3C), Eigen conv") / turn(step),
        "cojax_step_gflops_over_bare_folded_conv":
            turn("XLA conv2d on pre-folded taps, Eigen conv") / turn(step),
        # the adds and shift the partial sums need, with no layer: what XLA makes of them
        "cojax_step_gflops_over_minimal_partials_program": turn(minimal) / turn(step),
        "minimal_partials_program_over_its_bare_conv":
            turn("XLA partials conv2d (C -> 3C), Eigen conv") / turn(minimal),
        "cojax_step_speedup_over_default_library_step":
            turn("co.Conv3d step (partial sums)") / turn(step),
        "cojax_step_speedup_over_window_step":
            turn("co.Conv3d window step (the former path), Eigen conv") / turn(step),
        "cojax_step_speedup_over_whole_state_donated":
            turn("co.Conv3d step (partial sums), Eigen conv, whole state donated") / turn(step),
        "best_xla_over_best_torch_conv": best_bare["gflops_per_s"] / torch_best["gflops_per_s"],
        "best_xla_over_xla_matmul_peak": best_bare["gflops_per_s"] / peak["xla"],
        "best_torch_over_torch_matmul_peak": torch_best["gflops_per_s"] / peak["torch"],
    }  # fmt: skip
    donation = network_donation(s, args.budget)
    sweep = library_sweep(args.budget)
    sweep_table = markdown_table(
        ["streams", "H = W", "C_in -> C_out", "stride", "YNNPACK ms", "Eigen ms", "YNNPACK / Eigen"],
        [[r["streams"], r["size"], f"{r['c_in']} -> {r['c_out']}", r["stride"],
          f"{r['ynnpack_ms']:.3f}", f"{r['eigen_ms']:.3f}", f"{r['ynnpack_over_eigen']:.2f}"]
         for r in sweep],
    )  # fmt: skip
    table = markdown_table(
        ["implementation", "ms per call", "GFLOP/s", "% of own matmul peak"],
        [[r["impl"], f"{r['ms']:.2f}", f"{r['gflops_per_s']:.0f}", f"{r['percent_of_own_matmul_peak']:.0f} %"] for r in rows],
    )  # fmt: skip
    print("\n" + table + "\n\n" + sweep_table + "\n" + str(summary))
    out = {"description": __doc__.split("\n\n")[0], "streams": s, "flops_per_call": flops,
           "matmul_peak_gflops_per_s": peak, "rows": rows, "summary": summary, "table": table,
           "network_donation": donation,
           "library_sweep": sweep, "library_sweep_table": sweep_table,
           "eigen_compiler_options": EIGEN, **environment(report)}  # fmt: skip
    print("wrote", write_json("xla_conv_wall", out))


if __name__ == "__main__":
    main()
