"""Parity of cojax's structured pruning adapters with `structured-pruning-adapters` 0.7.1.

Every reference layer kind gets random weights (adapters far from their near-zero
init), is converted with `conversion.from_sp_adapters`, and both run on the same
random input; the table lists the largest absolute difference and the difference
relative to the largest |output|, in float32 with XLA's highest matmul precision.

    .venv/bin/python experiments/spa_parity.py

Writes experiments/results/spa_parity.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
import sp_adapters as sp
import torch

from conversion import from_sp_adapters

RESULTS = Path(__file__).resolve().parent / "results"


def _random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


def _cases() -> list[tuple[str, torch.nn.Module, tuple[int, ...], str]]:
    """(name, reference, torch input shape, layout) with layout "features", "channels"
    (torch's channels-first) or "tokens" (batch-first self-attention)."""
    return [
        ("SPLoRALinear 64->32 r16", sp.SPLoRALinear(64, 32), (8, 64), "features"),
        ("SPLoRAConv1d 16->32 k3 s2", sp.SPLoRAConv1d(16, 32, 3, 2, 1, rank=4), (2, 16, 33), "channels"),
        ("SPLoRAConv2d 16->32 k3 g2", sp.SPLoRAConv2d(16, 32, 3, padding=1, groups=2, rank=4), (2, 16, 12, 12), "channels"),
        ("SPLoRAConv3d 8->16 k3", sp.SPLoRAConv3d(8, 16, 3, padding=1, rank=4), (2, 8, 6, 8, 8), "channels"),
        ("SPPaRAConv1d 16->32 k5", sp.SPPaRAConv1d(16, 32, 5, padding=2), (2, 16, 33), "channels"),
        ("SPPaRAConv2d 16->16 k3 depthwise", sp.SPPaRAConv2d(16, 16, 3, padding=1, groups=16), (2, 16, 12, 12), "channels"),
        ("SPPaRAConv3d 8->16 k3", sp.SPPaRAConv3d(8, 16, 3, padding=1), (2, 8, 6, 8, 8), "channels"),
        ("SPLoRAMultiheadAttention E64 H4", sp.SPLoRAMultiheadAttention(64, 4, rank=8, batch_first=True), (2, 16, 64), "tokens"),
        ("SPLoPALinear 64->64 P16 (8,8)", sp.SPLoPALinear(64, 64, num_prototypes=16, block_shape=(8, 8)), (8, 64), "features"),
    ]  # fmt: skip


def _run(module: torch.nn.Module, shape: tuple[int, ...], layout: str, seed: int) -> dict:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        args = (torch.tensor(x),) * (3 if layout == "tokens" else 1)
        expected = module(*args)
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    flax_module, variables = from_sp_adapters(module)
    ours_in = np.moveaxis(x, 1, -1) if layout == "channels" else x
    with jax.default_matmul_precision("highest"):
        got = np.asarray(flax_module.apply(variables, ours_in))
    if layout == "channels":
        got = np.moveaxis(got, -1, 1)
    error = float(np.max(np.abs(got - expected)))
    return {"max_abs_error": error, "relative_error": error / float(np.max(np.abs(expected)))}


def main() -> None:
    rows = {}
    for seed, (name, module, shape, layout) in enumerate(_cases()):
        rows[name] = _run(_random(module, seed), shape, layout, seed)
    print("| reference layer | max abs error | relative to max |output| |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['max_abs_error']:.2e} | {row['relative_error']:.2e} |")
    RESULTS.mkdir(exist_ok=True)
    report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "dtype": "float32", "rows": rows}
    (RESULTS / "spa_parity.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'spa_parity.json'}")


if __name__ == "__main__":
    main()
