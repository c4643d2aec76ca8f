"""Smoke test of experiments/online_classification.py, run as a user runs it (a
subprocess, nothing imported from experiments/): JapaneseVowels from sktime's shipped
files, the CNN and the transformer, one seed, a few epochs, cojax and PyTorch. Checks
what must hold whatever the accuracy: the real data split, the streamed (step-mode)
predictions equal to the clip model's, the early-classification curve ending at the
final accuracy, the continual FLOPs below the clip's, and the files written; and that
a few epochs already beat chance (9 classes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess run of the experiment (~40 s)
pytest.importorskip("sktime")

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "online_classification.py"
MODELS = ("cnn", "transformer")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("online")
    flags = ["--dataset", "JapaneseVowels", "--epochs", "6", "--seeds", "1",
             "--models", ",".join(MODELS), "--results-dir", str(out)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "online_classification_JapaneseVowels.json").read_text())


def test_data_is_japanese_vowels_with_a_validation_split(results):
    _, data = results
    info = data["data"]
    assert info["channels"] == 12 and len(info["classes"]) == 9
    assert info["train"] + info["validation"] == 270 and info["test"] == 370
    assert info["validation"] == 54  # 20 % of the training split
    assert 20 <= info["max_length"] <= 30  # JapaneseVowels: 7 to 29 frames


def test_streamed_predictions_equal_the_clip_model(results):
    _, data = results
    for name in MODELS:
        cojax = data["models"][name]["cojax"]
        run = data["models"][name]["runs"]["cojax"][0]
        assert run["logit_scale"] > 0.1
        assert cojax["step_vs_clip_max_abs"] <= 1e-5 * max(1.0, run["logit_scale"])


def test_accuracies_curves_and_flops_are_consistent(results):
    out, data = results
    assert set(data["test_accuracy"]) == set(MODELS) == set(data["torch_test_accuracy"])
    for name in MODELS:
        model = data["models"][name]
        for framework in ("cojax", "torch"):
            run = model["runs"][framework][0]
            curve = run["early_curve"]
            assert len(curve) == data["data"]["max_length"]
            assert curve[-1] == pytest.approx(run["test_accuracy"])  # every stream ended
            assert 0 <= run["best_epoch"] < 6
        assert data["test_accuracy"][name] == model["cojax"]["test_accuracy_mean_std"][0]
        assert data["test_accuracy"][name] > 2 / 9  # twice chance after a few epochs
        flops = model["flops"]
        assert 0 < flops["continual_step"] < flops["clip_per_window"]
        assert flops["reduction"] == pytest.approx(
            flops["clip_per_window"] / flops["continual_step"]
        )
    assert (out / "online_classification_JapaneseVowels.png").stat().st_size > 10_000
