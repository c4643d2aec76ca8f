"""Smoke test of experiments/spa_digits.py: a tiny CNN on the real digits, one sparsity,
a few epochs. Checks what must hold whatever the accuracy: the achieved sparsity, masks
that really prune, the exported smaller network, the learned-parameter formulas, and
SPA's frozen base kernels. No accuracy is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import spa_digits as sd  # noqa: E402

from cojax.adapters.pruning import channel_scores  # noqa: E402

TARGET = 0.7
CFG = sd.Config(
    seeds=(0,),
    sparsities=(TARGET,),
    methods=("finetune", "splora"),
    widths=(8, 16, 16),
    rank=2,
    pretrain_epochs=1,
    warmup_epochs=1,
    prune_steps=2,
    epochs_per_step=1,
    lr_grid=(1e-3,),
)


@pytest.fixture(scope="module")
def derived():
    source, target = sd.load_tasks()
    finetune = sd.Trainer("finetune", CFG, 1e-3)  # pretraining shares it
    trainers = {"finetune": finetune, "splora": sd.Trainer("splora", CFG, 1e-3)}
    source_params, _ = sd.pretrain(finetune, source, 0, CFG)
    runs = {m: sd.derive(t, source_params, target, TARGET, 0, CFG) for m, t in trainers.items()}
    return trainers, source_params, target, runs


def test_data_is_the_real_digits_transfer_split():
    source, target = sd.load_tasks()
    for task in (source, target):
        assert task.train_x.shape[1:] == (8, 8, 1)
        assert 0.0 <= task.train_x.min() and task.train_x.max() <= 1.0
        assert set(np.unique(task.train_y)) == set(range(5))
    assert (
        len(source.train_y) + len(source.test_y) + len(target.train_y) + len(target.test_y) == 1797
    )


def test_achieved_sparsity_is_at_least_the_target_and_close(derived):
    _, _, _, runs = derived
    for _, masks, record in runs.values():
        assert TARGET <= record["achieved_sparsity"] < TARGET + 0.08
        # each conv reads exactly its producer's kept channels
        names = sd.conv_names(CFG)
        for producer, consumer in zip(names, names[1:]):
            np.testing.assert_array_equal(masks[consumer]["in"], masks[producer]["out"])


def test_masked_channels_output_exactly_zero(derived):
    trainers, _, target, runs = derived
    for method, (params, masks, _) in runs.items():
        _, state = trainers[method].model.apply(
            {"params": params, "masks": masks},
            target.test_x[:16],
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        for name in sd.conv_names(CFG):
            out = np.asarray(state["intermediates"][name]["__call__"][0])
            pruned = ~masks[name]["out"]
            assert pruned.any()
            assert np.all(out[..., pruned] == 0.0)
            assert np.any(out[..., ~pruned] != 0.0)


def test_exported_smaller_network_equals_the_masked_model(derived):
    trainers, _, target, runs = derived
    for method, (params, masks, record) in runs.items():
        convs, head = sd.export(params, masks, sd.conv_names(CFG))
        kept = [int(masks[n]["out"].sum()) for n in sd.conv_names(CFG)]
        assert [c["kernel"].shape[-1] for c in convs] == kept
        assert [c["kernel"].shape[-2] for c in convs] == [1, *kept[:-1]]
        assert head["kernel"].shape == (kept[-1], 5)
        with jax.default_matmul_precision("highest"):
            small = np.asarray(sd.plain_forward(convs, head, target.test_x))
            masked = np.asarray(trainers[method].logits(params, masks, target.test_x))
        np.testing.assert_allclose(small, masked, atol=1e-4)
        assert record["max_abs_logit_diff"] < 1e-4
        sizes = sum(a.size for c in convs for a in c.values()) + head["kernel"].size + 5
        assert record["fused_params"] == sizes


def test_spa_trains_adapters_only_and_finetuning_trains_the_kernels(derived):
    trainers, source_params, _, runs = derived
    start = sd.target_init(trainers["splora"], source_params, 0, CFG)
    spa_params, _, spa_record = runs["splora"]
    ft_params, _, ft_record = runs["finetune"]
    for name in sd.conv_names(CFG):
        np.testing.assert_array_equal(spa_params[name]["kernel"], source_params[name]["kernel"])
        for leaf in ("adapter_down", "adapter_up", "bias"):
            assert not np.array_equal(spa_params[name][leaf], start[name][leaf])
        assert not np.array_equal(ft_params[name]["kernel"], source_params[name]["kernel"])
        assert not np.any(ft_params[name]["adapter_up"])  # zero and frozen
    assert spa_record["base_kernels_unchanged"] and not ft_record["base_kernels_unchanged"]


def test_learned_parameter_counts_by_hand():
    params = sd.Trainer("splora", CFG, 1e-3).init(0)
    outs = {"conv_0": 3, "conv_1": 5, "conv_2": 4}
    masks = sd.chain_masks(
        {n: np.arange(w) < outs[n] for n, w in zip(sd.conv_names(CFG), CFG.widths)}
    )
    head = 4 * 5 + 5
    # plain: 9·in·out + out per conv (in = producer's kept outputs)
    ft = (9 * 1 * 3 + 3) + (9 * 3 * 5 + 5) + (9 * 5 * 4 + 4) + head
    # SPLoRA r·|in| + r·|out| + |out|; rank 2, capped to 1 for conv_0 (one input channel)
    spa = (1 * 1 + 1 * 3 + 3) + (2 * 3 + 2 * 5 + 5) + (2 * 5 + 2 * 4 + 4) + head
    # SPPaRA: |in|·|out| + |out|
    para = (1 * 3 + 3) + (3 * 5 + 5) + (5 * 4 + 4) + head
    assert sum(sd.learned_parameters("finetune", params, masks).values()) == ft == 379
    assert sum(sd.learned_parameters("splora", params, masks).values()) == spa == 75
    para_params = sd.Trainer("sppara", CFG, 1e-3).init(0)
    assert sum(sd.learned_parameters("sppara", para_params, masks).values()) == para == 75
    total = 1 * 8 + 8 * 16 + 16 * 16
    assert sd.conv_sparsity(masks, CFG) == pytest.approx(1 - (3 + 15 + 20) / total)


def test_gradual_pruning_keeps_earlier_pruned_channels_pruned():
    rng = np.random.default_rng(0)
    masks = sd.full_masks(CFG)
    for target in (0.3, 0.6, 0.9):
        scores = {n: rng.random(w) for n, w in zip(sd.conv_names(CFG), CFG.widths)}
        new = sd.prune_to(scores, masks, target, CFG)
        for name in masks:
            assert not np.any(new[name]["out"] & ~masks[name]["out"])  # never regrown
        assert sd.conv_sparsity(new, CFG) >= target
        masks = new


def test_gradient_criterion_is_the_gradient_wrt_the_adapted_kernel(derived):
    """The scores use the gradient w.r.t. each conv's base kernel; at kept entries it
    equals the gradient w.r.t. the adapted kernel, computed here independently through
    the plain network on full-size adapted (masked) kernels."""
    trainers, _, target, runs = derived
    params, masks, _ = runs["splora"]
    names = sd.conv_names(CFG)
    cfg = sd.replace(CFG, criterion="gradient")
    with jax.default_matmul_precision("highest"):
        scores = sd.channel_importance(trainers["splora"], params, masks, target, cfg)
        kernels = sd.adapted_kernels(params, masks, names)
        biases = [np.where(masks[n]["out"], params[n]["bias"], 0.0) for n in names]

        def loss(ks):
            convs = [{"kernel": k, "bias": b} for k, b in zip(ks, biases)]
            logits = sd.plain_forward(convs, params["head"], target.train_x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, target.train_y).mean()

        grads = jax.grad(loss)([kernels[n] for n in names])
    for name, g in zip(names, grads):
        keep = masks[name]["in"][:, None] & masks[name]["out"][None, :]
        expected = channel_scores(kernels[name], np.where(keep, g, 0.0), "gradient")
        np.testing.assert_allclose(scores[name], expected, rtol=1e-3, atol=1e-7)
        assert np.all(scores[name][~masks[name]["out"]] == 0.0)  # pruned: no gradient
        assert np.any(scores[name] > 0.0)


def test_summary_verdict_and_files(derived, tmp_path):
    _, _, _, runs = derived
    rows = [
        {"method": m, "target_sparsity": TARGET, "seed": 0, "lr": 1e-3, **record}
        for m, (_, _, record) in runs.items()
    ]
    summary = sd.summarize(rows, CFG)
    text = sd.verdict(summary, rows, CFG, {"finetune": 1e-3, "splora": 1e-3})
    assert "Verdict: the paper's claim" in text
    results = {
        "config": sd.asdict(CFG),
        "meta": {"runtime_s": 1.0, "finished": "now"},
        "source": [{"seed": 0, "source_test_accuracy": 0.5}],
        "lr_selection": {"chosen": {"finetune": 1e-3, "splora": 1e-3}, "validation_accuracy": {}},
        "runs": rows,
        "summary": summary,
        "verdict": text,
    }
    sd.write(results, tmp_path)
    assert json.loads((tmp_path / "spa_digits.json").read_text())["summary"] == summary
    assert text in (tmp_path / "spa_digits.md").read_text()
    assert (tmp_path / "spa_digits.png").stat().st_size > 0
