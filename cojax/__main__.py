"""`python -m cojax` (console script `cojax-demo`): stream CoX3D-S, frame by frame.

Builds CoX3D-S (`cojax.models.x3d("S")`, 3.8 M parameters) with random weights, or
loads an X3D-S checkpoint (`--weights`, SlowFast/co3d or pytorchvideo layout, via
`conversion.load_x3d`; needs the torch extra), streams a synthetic moving pattern
through its jitted `step`, and shows that

1. the step outputs equal the clip network (`forward`) run on the whole stream,
2. a step costs a fraction of the FLOPs of X3D-S clip inference on the latest 13
   frames (XLA cost analysis of both compiled programs), and
3. how much faster continual stepping is than sliding-window clip inference (the clip
   network re-run on the latest 13 frames every frame, jitted, same kernels), for one
   stream and for N streams (`jax.vmap` via `co.step_streams`).

`--model small` runs the same on a small X3D-like network (`cojax.demo_models`);
`--model cost-gcn` on CoST-GCN (`cojax.models.stgcn.st_gcn("ntu")`, random weights)
streaming synthetic skeletons (2 persons, 25 joints, 3 coordinates per frame): its
clip network takes 300-frame windows and a prediction comes every 4 frames. The
demo warns when its timings are too few or too spread to trust. Exits with status 1
when the equivalence check fails.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cojax.core import Layer, Params
from cojax.demo_models import init_random, num_params, small_x3d_like
from cojax.flops import compiled_flops
from cojax.models.stgcn import st_gcn
from cojax.models.x3d import X3D_SIZES, x3d
from cojax.streams import init_streams, step_streams

SMALL_CLASSES = 10
SKELETON = (2, 25, 3)  # persons, NTU RGB+D joints, coordinates
NTU_CLASSES = 60
SKELETON_WINDOW = 300  # the clip length CoST-GCN's head pools over (one prediction)
X3D_CLASSES = 400
MIN_TRUSTED_CALLS = 5  # fewer timed calls than this: the median is noise
MAX_TRUSTED_SPREAD = 0.25  # (p75 - p25) / median above this: the speed-up is rough


class DemoModel(NamedTuple):
    """The streamed network, its parameters, a one-line description and the clip length
    of sliding-window inference (`window` frames give one prediction)."""

    model: Layer
    params: Params
    description: str
    window: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cojax",
        description="Stream CoX3D-S (or a small continual 3D CNN) through jit-compiled "
        "steps and compare it with sliding-window clip inference.",
    )
    parser.add_argument(
        "--model",
        choices=("cox3d-s", "small", "cost-gcn"),
        default="cox3d-s",
        help="cox3d-s: X3D-S as a continual network (default); small: a small X3D-like "
        "network that compiles and runs in a fraction of the time; cost-gcn: CoST-GCN "
        "on synthetic skeletons (NTU RGB+D graph)",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="an X3D-S checkpoint (.pyth/.pt, SlowFast/co3d or pytorchvideo keys) for "
        "cox3d-s; default: random weights",
    )
    parser.add_argument(
        "--se-scope",
        choices=("frame", "clip"),
        help="cox3d-s squeeze-excitation: frame (the reference CoX3D, default) or clip "
        "(X3D's exact SE, 180 frames more delay)",
    )
    parser.add_argument(
        "--size", type=int, help="frame height = width (default: 160 cox3d-s, 64 small)"
    )
    parser.add_argument(
        "--frames",
        type=int,
        help="frames per stream (default: 16 more than the model's delay and clip length)",
    )
    parser.add_argument(
        "--streams", type=int, default=4, help="concurrent streams for the vmap run (default 4)"
    )
    parser.add_argument(
        "--timing-calls",
        type=int,
        default=8,
        help=f"sliding-window clip calls timed per run (default 8; fewer than "
        f"{MIN_TRUSTED_CALLS} give a warning: the speed-up is then noise)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.model == "cost-gcn" and args.size is not None:
        parser.error("--size sets the video frame size: skeleton frames are (2, 25, 3)")
    if args.size is None:
        args.size = 160 if args.model == "cox3d-s" else 64
    if args.size < 8:
        parser.error(f"--size must be >= 8, got {args.size}")
    if args.streams < 1:
        parser.error(f"--streams must be >= 1, got {args.streams}")
    if args.timing_calls < 1:
        parser.error(f"--timing-calls must be >= 1, got {args.timing_calls}")
    if args.weights and args.model != "cox3d-s":
        parser.error("--weights loads an X3D-S checkpoint: use it with --model cox3d-s")
    if args.se_scope and args.model != "cox3d-s":
        parser.error("--se-scope sets CoX3D-S's squeeze-excitation: use it with --model cox3d-s")
    args.se_scope = args.se_scope or "frame"
    return args


def build_model(args: argparse.Namespace) -> DemoModel:
    """The demo network (logits, no softmax) with random or loaded weights."""
    key = jax.random.PRNGKey(args.seed)
    if args.model == "small":
        model = small_x3d_like(num_classes=SMALL_CLASSES)
        text = f"small_x3d_like(num_classes={SMALL_CLASSES}), random weights"
        return DemoModel(model, init_random(model, key), text, model.receptive_field)
    if args.model == "cost-gcn":
        model = st_gcn("ntu", NTU_CLASSES, num_frames=SKELETON_WINDOW)
        text = f'CoST-GCN (st_gcn("ntu"), {NTU_CLASSES} classes), random weights'
        return DemoModel(model, init_random(model, key), text, SKELETON_WINDOW)
    config = dict(se_scope=args.se_scope, head_activation=None)
    if args.weights:
        try:
            from conversion import load_x3d
        except ImportError as error:  # torch is an optional extra
            raise SystemExit(
                f"--weights needs PyTorch to read the checkpoint: pip install -e "
                f'".[torch]" ({error})'
            ) from error
        model, params = load_x3d(args.weights, "S", **config)
        source = f"weights from {args.weights}"
    else:
        model = x3d("S", X3D_CLASSES, **config)
        params, source = init_random(model, key), "random weights"
    text = f'CoX3D-S (x3d("S", se_scope="{args.se_scope}")), {source}, logits'
    return DemoModel(model, params, text, X3D_SIZES["S"].frames)


def moving_skeletons(num_frames: int, seed: int = 0) -> np.ndarray:
    """A synthetic skeleton stream `(T, 2, 25, 3)`: each joint circles its rest position
    at its own phase and rate, plus noise."""
    rng = np.random.default_rng(seed)
    rest = rng.standard_normal(SKELETON)
    rate = rng.uniform(0.02, 0.2, SKELETON)
    phase = rng.uniform(0, 2 * np.pi, SKELETON)
    t = np.arange(num_frames)[:, None, None, None]
    stream = (
        rest + 0.3 * np.sin(rate * t + phase) + 0.02 * rng.standard_normal((num_frames, *SKELETON))
    )
    return stream.astype(np.float32)


def make_stream(args: argparse.Namespace, seed: int) -> np.ndarray:
    """The demo's input stream: a skeleton sequence or a moving-pattern video."""
    if args.model == "cost-gcn":
        return moving_skeletons(args.frames, seed)
    return moving_pattern(args.frames, args.size, seed)


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


def time_sliding(forward: Callable, params, clips: np.ndarray, window: int, calls: int):
    """Sliding-window clip inference timed: `forward` on the latest `window` frames,
    for the last `calls` frames of the stream (ms per call; the first call compiles)."""
    time_axis = clips.ndim - 4
    num_frames = clips.shape[time_axis]

    def latest(t):
        return np.take(clips, np.arange(t - window + 1, t + 1), axis=time_axis)

    jax.block_until_ready(forward(params, latest(window - 1)))
    first = max(window - 1, num_frames - calls)
    return np.array([_timed(forward, params, latest(t))[1] for t in range(first, num_frames)])


def compare(
    step_ys: np.ndarray, valid: np.ndarray, clip_ys: np.ndarray, delay: int, stride: int = 1
):
    """Max |step - clip| over the emitted outputs, max |clip|, and whether they match.

    `clip_ys` is `forward` on the whole stream (time first). Step outputs become valid
    at frame `delay`, then every `stride` frames; the i-th emitted output is
    `forward`'s output `i`.
    """
    expected = np.zeros(len(valid), bool)
    expected[delay::stride] = True
    emitted = step_ys[valid]
    if not np.array_equal(valid, expected) or len(emitted) == 0 or len(emitted) > len(clip_ys):
        return np.inf, float(np.abs(clip_ys).max()), False
    err = float(np.abs(emitted - clip_ys[: len(emitted)]).max())
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


def _speed_rows(results: list[tuple[str, int, np.ndarray]], stride: int = 1) -> list[list[str]]:
    """Per call and per prediction: a continual step predicts every `stride` frames,
    a sliding-window clip call once."""
    rows = [["mode", "streams", "ms/call", "ms/prediction", "frames/s", "speed-up"]]
    base: dict[int, float] = {}
    for mode, streams, times in results:
        ms = float(np.median(times))
        per_prediction = ms * stride if mode.startswith("continual") else ms
        if mode.startswith("sliding"):
            base[streams] = per_prediction
        rows.append(
            [
                mode,
                str(streams),
                f"{ms:.3f}",
                f"{per_prediction:.3f}",
                f"{1e3 * streams / ms:,.0f}",
                "",
            ]
        )
    for row in rows[1:]:
        if row[0].startswith("continual") and int(row[1]) in base:
            row[5] = f"{base[int(row[1])] / float(row[3]):.1f}x"
    return rows


def timing_warnings(results: list[tuple[str, int, np.ndarray]]) -> list[str]:
    """Why the speed table should not be trusted: too few timed calls, or a wide spread."""
    warnings = []
    for mode, streams, times in results:
        what = f"{mode}, {streams} stream{'s' if streams > 1 else ''}"
        if len(times) < MIN_TRUSTED_CALLS:
            warnings.append(
                f"{what}: only {len(times)} timed call(s), fewer than {MIN_TRUSTED_CALLS}: "
                "its median and the speed-up are noise (raise --timing-calls / --frames)"
            )
            continue
        q25, q50, q75 = np.percentile(times, [25, 50, 75])
        if (q75 - q25) / q50 > MAX_TRUSTED_SPREAD:
            warnings.append(
                f"{what}: timings vary by {100 * (q75 - q25) / q50:.0f}% of the median "
                "(interquartile range): the speed-up is rough (more --frames / "
                "--timing-calls or a quieter machine narrow it)"
            )
    return warnings


def _print_header(args: argparse.Namespace, demo: DemoModel) -> None:
    model = demo.model
    what = (
        "skeleton network streaming synthetic skeletons"
        if args.model == "cost-gcn"
        else ("3D CNN streaming a synthetic video")
    )
    print(f"cojax demo: a continual {what}, frame by frame")
    count = num_params(demo.params)
    print(
        f"  model: {demo.description}; {count.learned:,} parameters (+ "
        f"{count.statistics:,} BatchNorm statistics), receptive field "
        f"{model.receptive_field} frames, delay {model.delay}, an output every "
        f"{model.stride} frame(s)"
    )
    frame = (
        "x".join(map(str, SKELETON)) if args.model == "cost-gcn" else f"{args.size}x{args.size}x3"
    )
    source = "moving joints" if args.model == "cost-gcn" else "moving pattern"
    print(
        f"  input: {args.frames} frames of {frame} ({source}), "
        f"{args.streams} streams for vmap, seed {args.seed}, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}",
        flush=True,
    )


def _print_equivalence(checks: list[tuple[str, tuple]], outputs: int) -> None:
    print("\n1. Equivalence: continual steps vs the clip network (forward) on the whole stream")
    rows = [["run", "outputs", "max |step - clip|", "max |clip|", "result"]]
    for name, (err, scale, ok) in checks:
        rows.append([name, str(outputs), f"{err:.2e}", f"{scale:.3g}", "PASS" if ok else "FAIL"])
    print(_table(rows))


def _print_flops(step: float, clip: float, window: int, stride: int = 1) -> None:
    print("\n2. FLOPs per prediction (XLA cost analysis of the compiled step / clip program)")
    step = step * stride
    what = (
        "continual step (one frame in)" if stride == 1 else f"continual steps ({stride} frames in)"
    )
    rows = [
        ["program", "GFLOP/prediction"],
        [what, f"{step / 1e9:.4f}"],
        [f"clip forward on the latest {window} frames", f"{clip / 1e9:.4f}"],
        ["ratio clip / step", f"{clip / step:.2f}x"],
    ]
    print(_table(rows), flush=True)


def _progress(text: str) -> None:
    print(f"  .. {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit status (0 on PASS)."""
    args = parse_args(argv)
    started = time.perf_counter()
    demo = build_model(args)
    model, params, window = demo.model, demo.params, demo.window
    minimum = max(model.delay + 1, window)
    if args.frames is None:
        args.frames = max(model.delay, window) + 16
    if args.frames < minimum:
        print(
            f"error: --frames must be > the delay ({model.delay}) and >= the clip length "
            f"({window}), got {args.frames}"
        )
        return 2
    clip = make_stream(args, args.seed)
    frame = jax.ShapeDtypeStruct(clip.shape[1:], jnp.float32)
    clips = np.stack([make_stream(args, args.seed + i) for i in range(args.streams)])
    _print_header(args, demo)

    # One stream: the jitted step through the stream; the clip network on all of it.
    # The timed programs are compiled once, and XLA counts their FLOPs (`co.flops` and
    # `co.clip_flops` give the same counts but compile again).
    _progress("compiling and running the step, 1 stream")
    state = model.init_state(params, frame)
    step = jax.jit(model.step).lower(params, state, clip[0]).compile()
    ys, valid, t_step = run_continual(step, params, state, clip)
    _progress("compiling and running the clip network on the whole stream")
    forward = jax.jit(model.forward)
    ys_clip = np.asarray(forward(params, clip))
    # N streams: the same, vmapped (`co.step_streams` for the continual step).
    _progress(f"compiling and running the step, {args.streams} streams")
    states = init_streams(model, params, frame, args.streams)
    many_step = jax.jit(functools.partial(step_streams, model))
    ys_n, valid_n, t_step_n = run_continual(many_step, params, states, clips)
    many_forward = jax.jit(jax.vmap(model.forward, in_axes=(None, 0)))
    ys_clip_n = np.moveaxis(np.asarray(many_forward(params, clips)), 1, 0)
    _progress("timing sliding-window clip inference")
    sliding = forward.lower(params, clip[:window]).compile()
    t_clip = time_sliding(sliding, params, clip, window, args.timing_calls)
    t_clip_n = time_sliding(many_forward, params, clips, window, args.timing_calls)

    checks = [
        ("1 stream", compare(ys, valid, ys_clip, model.delay, model.stride)),
        (
            f"{args.streams} streams (vmap)",
            compare(ys_n, valid_n.all(axis=1), ys_clip_n, model.delay, model.stride),
        ),
    ]
    _print_equivalence(checks, int(valid.sum()))
    _print_flops(compiled_flops(step), compiled_flops(sliding), window, model.stride)
    print(
        f"\n3. Speed (jit; ms per call for all streams, median; sliding-window clip = "
        f"forward on the latest {window} frames)"
    )
    results = [
        ("continual step", 1, t_step),
        ("sliding-window clip", 1, t_clip),
        ("continual step", args.streams, t_step_n),
        ("sliding-window clip", args.streams, t_clip_n),
    ]
    print(_table(_speed_rows(results, model.stride)))
    for warning in timing_warnings(results):
        print(f"  warning: {warning}")

    passed = all(ok for _, (_, _, ok) in checks)
    print(f"\nResult: {'PASS' if passed else 'FAIL'} ({time.perf_counter() - started:.1f} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
