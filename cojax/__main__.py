"""`python -m cojax` (console script `cojax-demo`): stream a continual 3D CNN, frame by frame.

Builds the built-in `small_x3d_like` network with random weights, streams a synthetic
moving pattern through its jitted `step`, and shows that

1. every step output equals the clip network (`forward`) on the same window,
2. a step costs a fraction of the clip's FLOPs (XLA cost analysis), and
3. how much faster continual stepping is than sliding-window clip inference (the
   clip network re-run on the latest window every frame, jitted, same kernels),
   for one stream and for N streams (`jax.vmap` via `co.step_streams`).

Exits with status 1 when the equivalence check fails.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cojax.demo_models import init_random, num_params, small_x3d_like
from cojax.flops import clip_flops, flops
from cojax.streams import init_streams, step_streams

NUM_CLASSES = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cojax",
        description="Stream a small continual 3D CNN through jit-compiled steps and "
        "compare it with sliding-window clip inference.",
    )
    parser.add_argument("--frames", type=int, default=48, help="frames per stream (default 48)")
    parser.add_argument("--size", type=int, default=64, help="frame height = width (default 64)")
    parser.add_argument(
        "--streams", type=int, default=8, help="concurrent streams for the vmap run (default 8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error(f"--size must be >= 8, got {args.size}")
    if args.streams < 1:
        parser.error(f"--streams must be >= 1, got {args.streams}")
    return args


def moving_pattern(num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    """A synthetic RGB stream `(T, size, size, 3)`: a drifting grating and a moving blob."""
    rng = np.random.default_rng(seed)
    angle, speed, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.2), rng.uniform(2, 6)
    y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    t = np.arange(num_frames)[:, None, None]
    direction = np.cos(angle) * x + np.sin(angle) * y
    grating = np.sin(2 * np.pi * (freq * direction - speed * t))
    cx, cy = 0.6 * np.cos(0.1 * t + angle), 0.6 * np.sin(0.13 * t)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05)
    frames = np.stack([grating, blob, 0.5 * grating * blob], axis=-1)
    return (frames + 0.05 * rng.standard_normal(frames.shape)).astype(np.float32)


# --------------------------------------------------------------------------- running


def _timed(fn: Callable, *args) -> tuple[object, float]:
    """`fn(*args)` blocked until ready, and its wall time in ms."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, 1e3 * (time.perf_counter() - start)


def run_continual(step: Callable, params, state, clips: np.ndarray):
    """Feed frames `clips[..., t, :, :, :]` one at a time through a jitted `step`.

    `clips` is `(T, H, W, C)` or `(N, T, H, W, C)`. Returns outputs and valid flags
    with time first, and the per-step times (ms). The first call compiles (warm-up
    on a throw-away state).
    """
    time_axis = clips.ndim - 4
    jax.block_until_ready(step(params, state, np.take(clips, 0, axis=time_axis)))
    ys, valids, times = [], [], []
    for t in range(clips.shape[time_axis]):
        (state, (y, valid)), ms = _timed(step, params, state, np.take(clips, t, axis=time_axis))
        ys.append(np.asarray(y))
        valids.append(np.asarray(valid))
        times.append(ms)
    return np.stack(ys), np.stack(valids), np.array(times)


def run_sliding(forward: Callable, params, clips: np.ndarray, window: int):
    """Sliding-window clip inference: `forward` on the latest `window` frames, each frame.

    Returns outputs for frames `window - 1 ... T - 1` (time first) and times (ms).
    """
    time_axis = clips.ndim - 4
    num_frames = clips.shape[time_axis]

    def latest(t):
        return np.take(clips, np.arange(t - window + 1, t + 1), axis=time_axis)

    jax.block_until_ready(forward(params, latest(window - 1)))
    ys, times = [], []
    for t in range(window - 1, num_frames):
        y, ms = _timed(forward, params, latest(t))
        ys.append(np.asarray(y)[..., 0, :])  # the window gives exactly one output frame
        times.append(ms)
    return np.stack(ys), np.array(times)


def compare(step_ys: np.ndarray, valid: np.ndarray, clip_ys: np.ndarray, delay: int):
    """Max |step - clip| over the emitted outputs, max |clip|, and whether they match.

    Step outputs become valid at frame `delay` (= window - 1 here), i.e. exactly where
    sliding-window outputs start.
    """
    emitted = valid[delay:]
    if not np.all(emitted):
        return np.inf, float(np.abs(clip_ys).max()), False
    err = float(np.abs(step_ys[delay:] - clip_ys).max())
    scale = float(np.abs(clip_ys).max())
    return err, scale, bool(err <= 1e-5 + 1e-4 * scale)


# --------------------------------------------------------------------------- output


def _table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells))
        if k == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _speed_rows(results: list[tuple[str, int, np.ndarray]]) -> list[list[str]]:
    rows = [["mode", "streams", "ms/step", "frames/s", "speed-up"]]
    base: dict[int, float] = {}
    for mode, streams, times in results:
        ms = float(np.median(times))
        if mode.startswith("sliding"):
            base[streams] = ms
        rows.append([mode, str(streams), f"{ms:.3f}", f"{1e3 * streams / ms:,.0f}", ""])
    for row in rows[1:]:
        if row[0].startswith("continual") and int(row[1]) in base:
            row[4] = f"{base[int(row[1])] / float(row[2]):.1f}x"
    return rows


def _print_header(args: argparse.Namespace, model, params) -> None:
    print("cojax demo: a continual X3D-like 3D CNN on a synthetic stream")
    print(
        f"  model: small_x3d_like(num_classes={NUM_CLASSES}), {num_params(params):,} parameters, "
        f"receptive field {model.receptive_field} frames, delay {model.delay}"
    )
    print(
        f"  input: {args.frames} frames of {args.size}x{args.size}x3 (moving pattern), "
        f"{args.streams} streams for vmap, seed {args.seed}, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}"
    )


def _print_equivalence(checks: list[tuple[str, tuple]], outputs: int, window: int) -> None:
    print(f"\n1. Equivalence: continual step vs clip forward on the same {window}-frame window")
    rows = [["run", "outputs", "max |step - clip|", "max |clip|", "result"]]
    for name, (err, scale, ok) in checks:
        rows.append([name, str(outputs), f"{err:.2e}", f"{scale:.3g}", "PASS" if ok else "FAIL"])
    print(_table(rows))


def _print_flops(model, params, frame: jax.ShapeDtypeStruct) -> None:
    window = model.receptive_field
    step = flops(model, params, frame)
    clip = clip_flops(model, params, jax.ShapeDtypeStruct((window, *frame.shape), frame.dtype))
    print("\n2. FLOPs per output frame (XLA cost analysis of the compiled step / clip program)")
    rows = [
        ["program", "MFLOP/frame"],
        ["continual step", f"{step / 1e6:.2f}"],
        [f"clip forward ({window} frames)", f"{clip / 1e6:.2f}"],
        ["ratio clip / step", f"{clip / step:.2f}x"],
    ]
    print(_table(rows))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status (0 on PASS)."""
    args = parse_args(argv)
    started = time.perf_counter()
    model = small_x3d_like(num_classes=NUM_CLASSES)
    params = init_random(model, jax.random.PRNGKey(args.seed))
    window = model.receptive_field
    if args.frames < window:
        print(f"error: --frames must be >= the receptive field ({window}), got {args.frames}")
        return 2
    frame = jax.ShapeDtypeStruct((args.size, args.size, 3), jnp.float32)
    clip = moving_pattern(args.frames, args.size, args.seed)
    clips = np.stack(
        [moving_pattern(args.frames, args.size, args.seed + i) for i in range(args.streams)]
    )
    _print_header(args, model, params)

    # One stream: jitted step vs the clip network on the latest window, every frame.
    state = model.init_state(params, frame)
    ys, valid, t_step = run_continual(jax.jit(model.step), params, state, clip)
    ys_clip, t_clip = run_sliding(jax.jit(model.forward), params, clip, window)
    # N streams: the same, vmapped (`co.step_streams` for the continual step).
    states = init_streams(model, params, frame, args.streams)
    many_step = jax.jit(functools.partial(step_streams, model))
    ys_n, valid_n, t_step_n = run_continual(many_step, params, states, clips)
    many_forward = jax.jit(jax.vmap(model.forward, in_axes=(None, 0)))
    ys_clip_n, t_clip_n = run_sliding(many_forward, params, clips, window)

    checks = [
        ("1 stream", compare(ys, valid, ys_clip, model.delay)),
        (
            f"{args.streams} streams (vmap)",
            compare(ys_n, valid_n.all(axis=1), ys_clip_n, model.delay),
        ),
    ]
    _print_equivalence(checks, args.frames - model.delay, window)
    _print_flops(model, params, frame)
    print("\n3. Speed (jit, median over the stream's frames; ms per step of all streams)")
    results = [
        ("continual step", 1, t_step),
        ("sliding-window clip", 1, t_clip),
        ("continual step", args.streams, t_step_n),
        ("sliding-window clip", args.streams, t_clip_n),
    ]
    print(_table(_speed_rows(results)))

    passed = all(ok for _, (_, _, ok) in checks)
    print(f"\nResult: {'PASS' if passed else 'FAIL'} ({time.perf_counter() - started:.1f} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
