"""Smoke test of experiments/spa_digits.py, run as a user runs it (a subprocess, nothing
imported from experiments/): a tiny CNN on the real digits, one sparsity, one epoch per
phase. Checks what must hold whatever the accuracy: the data split, the achieved
sparsity, the exported network equal to the masked one, SPA's frozen base kernels, the
learned-parameter counts against the formulas, and the files written. No accuracy is
asserted. The chain helpers themselves are tested in test_adapter_chain.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess run of the experiment (~10 s)

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "spa_digits.py"
TARGET = 0.7
WIDTHS = (8, 16, 16)
FLAGS = [
    "--seeds", "0", "--sparsities", str(TARGET), "--methods", "finetune", "splora",
    "--widths", *map(str, WIDTHS), "--rank", "2", "--pretrain-epochs", "1",
    "--warmup-epochs", "1", "--prune-steps", "2", "--epochs-per-step", "1",
    "--lr-grid", "1e-3",
]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("spa_digits")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *FLAGS, "--results-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "spa_digits.json").read_text()), done.stdout


def test_data_is_the_real_digits_transfer_split(results):
    _, data, _ = results
    sizes = data["meta"]["data"]
    assert sum(sizes.values()) == 1797  # sklearn's digits, all of them
    assert sizes["source_test"] / (sizes["source_train"] + sizes["source_test"]) == (
        pytest.approx(0.3, abs=0.01)
    )


def test_runs_prune_export_and_count_as_the_method_says(results):
    _, data, _ = results
    assert data["config"]["widths"] == list(WIDTHS)
    runs = {r["method"]: r for r in data["runs"]}
    assert set(runs) == {"finetune", "splora"}
    for record in runs.values():
        assert TARGET <= record["achieved_sparsity"] < TARGET + 0.08
        assert record["max_abs_logit_diff"] < 1e-4
        kept = record["kept_channels"]
        sizes = [1, *kept.values()]
        convs = sum(9 * a * b + b for a, b in zip(sizes, sizes[1:]))
        assert record["fused_params"] == convs + sizes[-1] * 5 + 5
    assert runs["splora"]["base_kernels_unchanged"]
    assert not runs["finetune"]["base_kernels_unchanged"]
    for method, record in runs.items():
        kept = [1, *record["kept_channels"].values()]
        per_layer = record["learned_params_per_layer"]
        assert per_layer["head"] == kept[-1] * 5 + 5
        for i, name in enumerate(record["kept_channels"]):
            n_in, n_out = kept[i], kept[i + 1]
            rank = min(2, (1, *WIDTHS)[i], WIDTHS[i])
            expected = (
                9 * n_in * n_out + n_out if method == "finetune" else rank * (n_in + n_out) + n_out
            )
            assert per_layer[name] == expected, (method, name)


def test_summary_verdict_and_files(results):
    out, data, stdout = results
    assert "Verdict: the paper's claim" in data["verdict"]
    assert data["verdict"] in (out / "spa_digits.md").read_text()
    assert (out / "spa_digits.png").stat().st_size > 0
    assert {(r["method"], r["target_sparsity"]) for r in data["summary"]} >= {
        ("finetune", TARGET),
        ("splora", TARGET),
    }
    assert "Verdict" in stdout
