"""Which layers' steps export to ONNX (`cojax.onnx_export`, jax2onnx + onnxruntime).

Each case runs `export_onnx_step` for one stream, 4 streams and a dynamic number
("n") in its own process (with `--timeout` seconds per case): "ok" with the largest
difference to `layer.step` the export check measured over 8 random frames, or the
first line of the `OnnxExportError`, or "timed out".

    python experiments/onnx_coverage.py [--timeout 300] [--only NAME ...]

Writes experiments/results/onnx_coverage.json (the table in docs/streams.md); a run
with --only / --skip replaces the rows of the cases it ran and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "Conv1d + BatchNorm + ReLU + Residual + strided Conv1d": (
        "co.Sequential(co.Conv1d(3, 4, 3), co.BatchNorm1d(4), co.ReLU(),"
        " co.Residual(co.Conv1d(4, 4, 3, padding=1)), co.Conv1d(4, 2, 2, stride=2))",
        (3,),
    ),
    "Conv2d dilated, padded": (
        "co.Conv2d(3, 4, (3, 3), dilation=(2, 1), padding=(0, 1))",
        (5, 3),
    ),
    "MaxPool1d + AvgPool1d": ("co.Sequential(co.MaxPool1d(3, stride=1), co.AvgPool1d(2))", (4,)),
    "GRU": ("co.GRU(3, 5)", (3,)),
    "LSTM": ("co.LSTM(3, 5)", (3,)),
    "Delay": ("co.Delay(3)", (3,)),
    "RecyclingPositionalEncoding": ("co.RecyclingPositionalEncoding(8, 6)", (8,)),
    "SingleOutputMultiheadAttention": ("co.SingleOutputMultiheadAttention(16, 2, 6)", (16,)),
    "RetroactiveMultiheadAttention": ("co.RetroactiveMultiheadAttention(16, 2, 6)", (16,)),
    "TransformerEncoder b2 (CoOadTR-b2 style)": (
        "co.TransformerEncoder(16, 2, 6, num_layers=2, dim_feedforward=16)",
        (16,),
    ),
    "Nyström (NystromLayer)": (
        "co.NystromLayer(co.ContinualNystromAttention(16, 2, 4, sequence_len=8))",
        (16,),
    ),
    "small X3D-like CNN (16²)": ("small_x3d_like()", (16, 16, 3)),
    "CoX3D-XS (32²)": ('co.x3d("XS")', (32, 32, 3)),
}

CHILD = """
import json, sys, tempfile
import jax, jax.numpy as jnp
import cojax as co
from cojax.demo_models import init_random, small_x3d_like
from cojax.onnx_export import export_onnx_step
jax.config.update("jax_default_matmul_precision", "highest")
layer = eval(sys.argv[1])
shape = tuple(json.loads(sys.argv[2]))
streams = json.loads(sys.argv[3])
try:
    params = init_random(layer, jax.random.PRNGKey(0))
except ValueError:
    params = layer.init(jax.random.PRNGKey(0))
try:
    d = export_onnx_step(layer, params, jnp.zeros(shape), tempfile.mkdtemp(), streams=streams)
    meta = json.loads((d / "meta.json").read_text())
    print(json.dumps({"result": "ok", "max_abs_diff": meta["max_abs_diff_at_export"]}))
except Exception as error:
    print(json.dumps({"result": type(error).__name__, "message": str(error)[:400]}))
"""


def run_case(code: str, shape: tuple, streams, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.time()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, code, json.dumps(shape), json.dumps(streams)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"result": "timed out", "seconds": timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"result": "crashed", "message": done.stderr[-400:]}
    return {**json.loads(lines[-1]), "seconds": time.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    parser.add_argument("--skip", nargs="*", default=(), help="case names to leave out")
    args = parser.parse_args()
    rows = []
    for name, (code, shape) in CASES.items():
        if (args.only and name not in args.only) or name in args.skip:
            continue
        for streams in (None, 4, "n"):
            row = {
                "layer": name,
                "streams": streams,
                **run_case(code, shape, streams, args.timeout),
            }
            rows.append(row)
            detail = row.get("max_abs_diff", row.get("message", ""))
            print(f"{name:50s} streams={streams!s:4s} {row['result']:16s} {detail}", flush=True)
    from importlib.metadata import version

    meta = {"jax2onnx": version("jax2onnx"), "onnxruntime": version("onnxruntime")}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "onnx_coverage.json"
    if path.exists():  # keep the rows of cases not run this time (--only / --skip)
        ran = {r["layer"] for r in rows}
        kept = [r for r in json.loads(path.read_text())["rows"] if r["layer"] not in ran]
        rows = kept + rows
        order = list(CASES)
        rows.sort(key=lambda r: order.index(r["layer"]) if r["layer"] in order else len(order))
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
