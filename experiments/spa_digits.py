"""Structured pruning + fine-tuning vs channel-SPA on scikit-learn's digits (a real data set).

The transfer setting of Structured Pruning Adapters (arXiv 2211.10155): one source model,
derived task models. Data: `sklearn.datasets.load_digits` (1797 8×8 images, values
0-16 scaled to [0, 1]); source task = digits 0-4, target task = digits 5-9 (relabelled
0-4), each split 70/30 train/test, stratified, with a fixed seed (`--split-seed`).

Network (channels-last, no normalisation so that fusing is exact): three 3×3 convs
1 → 32 → 64 → 64 (padding 1, ReLU, 2×2 max pool after the second), global average pool,
Dense(5) head. The convs are always `cojax.adapters` modules (`SPLoRAConv`, or
`SPPaRAConv` for the SPPaRA rows), so every method shares the same masks, pruning,
export and counting code:
- pretraining (one source model per seed, adam): the base kernels and biases and the
  head train, the SPLoRA adapter is zero and frozen, so the convs are plain convs;
- (a) "finetune", structured pruning + fine-tuning: the source kernels and biases all
  train (adapter zero and frozen); learned parameters = every kept weight of the pruned
  network: 3·3·|in|·|out| + |out| per conv (|in| = the producer's kept outputs) + head;
- (b) "splora", channel-SPA: the source kernels are frozen (`adapter_labels`), the
  rank-r centre-tap adapters (`--rank`, default 8, capped at min(in, out) per conv: the
  first conv has one input channel, so rank 1), the biases and the head train;
  learned = `splora_parameter_count` per conv (r·|in| + r·|out| + |out|) + head;
- (b') "sppara": the same with a full-rank pointwise adapter (|in|·|out| + |out|).
The target head is a new Dense(5) trained from scratch in every method (the same init
for all methods of a seed); its kept weights (|kept last-conv channels|·5 + 5) count
as learned in every method. All methods see the same epochs, batches and pruning
schedule (adam). The learning rate is chosen per method from `--lr-grid` (default 1e-3,
3e-3, 1e-2) by validation accuracy at the highest sparsity, with the first seed's source
model and the target training split cut 80/20 into fit / validation; the test split is
used only for the reported numbers. (In a one-seed trial with one fixed rate, 1e-3, for
both, SPLoRA under-fitted more and lost by more.) Pretraining uses `--pretrain-lr` (1e-3).

Pruning (gradual, the same for every method): `--warmup-epochs` epochs of training, then
`--prune-steps` steps to sparsities target·k/K, each followed by `--epochs-per-step`
epochs; the reported accuracy is on the target test split after the last epoch. At each
step the criterion (`--criterion`, default magnitude) scores every output channel of
every conv on the *adapted, masked* kernel (base + centre-tap adapter; for "finetune"
the adapter is zero, so the fine-tuned kernel). The gradient / Taylor criteria use the
gradient of the loss over the whole target training split w.r.t. each conv's base
kernel: inside the module the adapted kernel is `where(mask, kernel + tap(adapter), 0)`,
so that gradient equals the gradient w.r.t. the adapted kernel at every kept entry.
Channels pruned earlier stay pruned (their score is -inf and the masks are ANDed).

"% pruned weights" = the fraction of the conv weights (3·3·in·out entries of the three
kernels, biases and head excluded) removed, counting input channels removed upstream:
pruning an output channel of one conv also removes its input column in the next one.
`cojax.adapters.chain.prune_to` counts that cascade and stops at the first masks that reach the
target (the achieved value is reported). The
default scope is "layer" (each conv pruned by the same fraction: one global magnitude
threshold across layers of different fan-in can empty a layer down to one channel);
`--scope global` ranks all channels together.

Masks apply in the forward pass (masks collection "in"/"out"; each conv's "in" mask is
its producer's "out" mask). After training, every pruned model is exported with
`cojax.adapters.chain.export` (`fuse_conv` chained via `input_keep`, plus the head's
kept rows) and the physically
smaller plain network runs on the target test split: its predictions must equal the
masked model's (the max |Δlogit| is reported), and its stored size is reported.

Seeds (`--seeds`, default 0 1 2) vary the source pretraining, the new head, the adapter
init and the batch order; the split stays fixed. Accuracy: mean ± sample std over seeds.

    .venv/bin/python experiments/spa_digits.py [--criterion magnitude|gradient|taylor]
        [--scope layer|global] [--methods finetune splora sppara] [--widths 32 64 64]
        [--quick]

Writes experiments/results/spa_digits.json, .md (table + verdict computed from the
numbers) and .png. `--quick` (1 seed, 1-2 epochs per phase) writes nothing unless
`--results-dir` is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm.auto import tqdm

from cojax.adapters import SPLoRAConv, SPPaRAConv, adapter_labels
from cojax.adapters.chain import (
    Masks,
    adapted_kernels,
    chain_masks,
    export,
    kernel_sparsity,
    learned_parameters,
    prune_to,
)
from cojax.adapters.pruning import CRITERIA, channel_scores

RESULTS = Path(__file__).resolve().parent / "results"
# The paper (arXiv 2211.10155): channel-SPA vs pruning + fine-tuning, accuracy points
# and fewer-params ratio.
PAPER = {"delta_90": 6.9, "delta_70": -1.6, "ratio_70": 17.0}
METHODS = ("finetune", "splora", "sppara")
LABELS = {
    "finetune": "pruning + fine-tuning",
    "splora": "channel-SPA (SPLoRA)",
    "sppara": "channel-SPA (SPPaRA)",
}
KERNEL = 3
POOL_AFTER = 1  # 2×2 max pool after this conv
NUM_CLASSES = 5

Params = dict[str, Any]


@dataclass(frozen=True)
class Config:
    """Everything that defines a run (stored in the JSON)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.7, 0.9)
    methods: tuple[str, ...] = METHODS
    criterion: str = "magnitude"
    scope: str = "layer"
    widths: tuple[int, ...] = (32, 64, 64)
    rank: int = 8
    batch_size: int = 32
    pretrain_lr: float = 1e-3
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    val_size: float = 0.2
    pretrain_epochs: int = 30
    warmup_epochs: int = 10
    prune_steps: int = 3
    epochs_per_step: int = 10
    split_seed: int = 0
    test_size: float = 0.3


QUICK = {
    "seeds": (0,),
    "pretrain_epochs": 2,
    "warmup_epochs": 1,
    "epochs_per_step": 1,
    "lr_grid": (3e-3,),
}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Task:
    """One classification task: images `(N, 8, 8, 1)` float32 in [0, 1], labels 0-4."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_tasks(split_seed: int = 0, test_size: float = 0.3) -> tuple[Task, Task]:
    """Source task (digits 0-4) and target task (digits 5-9, relabelled 0-4)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    tasks = []
    for first in (0, 5):
        keep = (labels >= first) & (labels < first + NUM_CLASSES)
        x, y = images[keep], labels[keep] - first
        tr_x, te_x, tr_y, te_y = train_test_split(
            x, y, test_size=test_size, stratify=y, random_state=split_seed
        )
        tasks.append(Task(tr_x, tr_y, te_x, te_y))
    return tasks[0], tasks[1]


def epoch_batches(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shuffled epoch as `(steps, batch, ...)` arrays (the last partial batch dropped)."""
    steps = len(x) // batch_size
    order = rng.permutation(len(x))[: steps * batch_size].reshape(steps, batch_size)
    return x[order], y[order]


# --------------------------------------------------------------------------- model


def max_pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class DigitsCNN(nn.Module):
    """3×3 convs (adapter modules) → ReLU (2×2 max pool after conv_1) → mean → Dense."""

    adapter: str = "splora"
    widths: tuple[int, ...] = (32, 64, 64)
    rank: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            kwargs = dict(kernel_size=(KERNEL, KERNEL), padding=(1, 1), name=f"conv_{i}")
            if self.adapter == "sppara":
                conv = SPPaRAConv(width, **kwargs)
            else:
                # rank above min(in, out) only adds parameters (the adapter is in × out)
                conv = SPLoRAConv(width, rank=min(self.rank, x.shape[-1], width), **kwargs)
            x = nn.relu(conv(x))
            if i == POOL_AFTER:
                x = max_pool(x)
        return nn.Dense(NUM_CLASSES, name="head")(jnp.mean(x, axis=(-3, -2)))


def conv_names(cfg: Config) -> list[str]:
    return [f"conv_{i}" for i in range(len(cfg.widths))]


def make_model(method: str, cfg: Config) -> DigitsCNN:
    return DigitsCNN("sppara" if method == "sppara" else "splora", cfg.widths, cfg.rank)


def full_masks(cfg: Config) -> Masks:
    return chain_masks({n: np.ones(w, bool) for n, w in zip(conv_names(cfg), cfg.widths)}, 1)


# --------------------------------------------------------------------------- training


def plain_labels(params: Params) -> Params:
    """Pretraining / pruning + fine-tuning: base kernels, biases and head train; the
    (zero) adapters stay frozen, so every conv is a plain conv."""

    def label(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return "freeze" if name.startswith("adapter") else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def method_labels(method: str, params: Params) -> Params:
    """Trainable leaves per method: `adapter_labels` freezes the adapted convs' base
    kernels and trains the rest (adapters, biases, the plain head)."""
    return plain_labels(params) if method == "finetune" else adapter_labels(params)


class Trainer:
    """Jitted train step, logits and loss gradient for one method.

    Built once per method and reused for every seed and sparsity: masks are arguments,
    so pruning never recompiles. Epochs loop over jitted steps in Python: a `lax.scan`
    over an epoch's batches ran about 20× slower on XLA:CPU here (2.2 s vs 0.11 s).
    """

    def __init__(self, method: str, cfg: Config, lr: float) -> None:
        self.method, self.lr, self.model = method, lr, make_model(method, cfg)
        dummy = jnp.zeros((1, 8, 8, 1))
        shapes = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), dummy)["params"]
        self.optimizer = optax.multi_transform(
            {"train": optax.adam(lr), "freeze": optax.set_to_zero()},
            method_labels(method, shapes),
        )
        model, optimizer = self.model, self.optimizer

        def loss(params, masks, x, y):
            logits = model.apply({"params": params, "masks": masks}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def step(params, opt_state, masks, x, y):
            value, grads = jax.value_and_grad(loss)(params, masks, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        self.step = jax.jit(step)
        self.logits = jax.jit(
            lambda params, masks, x: model.apply({"params": params, "masks": masks}, x)
        )
        self.grad = jax.jit(jax.grad(loss))

    def init(self, seed: int) -> Params:
        return self.model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))["params"]


def train_epochs(
    trainer: Trainer,
    params: Params,
    opt_state: Any,
    masks: Masks,
    task: Task,
    epochs: int,
    rng: np.random.Generator,
    batch_size: int,
    bar: tqdm | None = None,
) -> tuple[Params, Any]:
    for _ in range(epochs):
        xs, ys = epoch_batches(rng, task.train_x, task.train_y, batch_size)
        for x, y in zip(xs, ys):
            params, opt_state, loss = trainer.step(params, opt_state, masks, x, y)
        if bar is not None:
            bar.set_postfix(loss=f"{float(loss):.3f}")
            bar.update()
    return params, opt_state


def accuracy(logits: Any, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))


def zero_adapters(params: Params, names: Sequence[str]) -> Params:
    out = dict(params)
    for name in names:
        out[name] = {
            k: (jnp.zeros_like(v) if k.startswith("adapter") else v)
            for k, v in params[name].items()
        }
    return out


def pretrain(trainer: Trainer, source: Task, seed: int, cfg: Config) -> tuple[Params, float]:
    """Source model (plain convs: adapters zero and frozen): `(params, source test acc)`."""
    params = zero_adapters(trainer.init(seed), conv_names(cfg))
    masks = full_masks(cfg)
    rng = np.random.default_rng(seed)
    bar = tqdm(total=cfg.pretrain_epochs, desc=f"pretrain seed {seed}", leave=False)
    params, _ = train_epochs(
        trainer, params, trainer.optimizer.init(params), masks, source,
        cfg.pretrain_epochs, rng, cfg.batch_size, bar,
    )  # fmt: skip
    bar.close()
    return params, accuracy(trainer.logits(params, masks, source.test_x), source.test_y)


def target_init(trainer: Trainer, source_params: Params, seed: int, cfg: Config) -> Params:
    """Source kernels and biases, a fresh head (same init for every method of a seed),
    fresh adapters (zeroed for "finetune")."""
    params = dict(trainer.init(1000 + seed))
    for name in conv_names(cfg):
        base = {k: source_params[name][k] for k in ("kernel", "bias")}
        params[name] = {**params[name], **base}
    if trainer.method == "finetune":
        params = zero_adapters(params, conv_names(cfg))
    return params


# --------------------------------------------------------------------------- pruning


def channel_importance(
    trainer: Trainer, params: Params, masks: Masks, task: Task, cfg: Config
) -> dict[str, np.ndarray]:
    """The criterion's score per output channel of every conv (adapted, masked kernel)."""
    names = conv_names(cfg)
    kernels = adapted_kernels(params, masks)
    grads = {n: None for n in names}
    if cfg.criterion != "magnitude":
        g = trainer.grad(params, masks, task.train_x, task.train_y)
        grads = {n: np.asarray(g[n]["kernel"]) for n in names}
    return {n: channel_scores(kernels[n], grads[n], cfg.criterion) for n in names}


# --------------------------------------------------------------------------- export, count


@jax.jit
def plain_forward(convs: list[dict], head: dict, x: jax.Array) -> jax.Array:
    """The exported network: plain convs, no masks."""
    for i, p in enumerate(convs):
        x = lax.conv_general_dilated(
            x, p["kernel"], (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = jax.nn.relu(x + p["bias"])
        if i == POOL_AFTER:
            x = max_pool(x)
    return jnp.mean(x, axis=(1, 2)) @ head["kernel"] + head["bias"]


# --------------------------------------------------------------------------- one run


def schedule(target: float, cfg: Config) -> list[tuple[float | None, int]]:
    """`(sparsity to prune to before the epochs, or None; epochs)` per phase."""
    phases: list[tuple[float | None, int]] = [(None, cfg.warmup_epochs)]
    for k in range(1, cfg.prune_steps + 1):
        phases.append((target * k / cfg.prune_steps if target > 0 else None, cfg.epochs_per_step))
    return phases


def derive(
    trainer: Trainer,
    source_params: Params,
    target_task: Task,
    sparsity: float,
    seed: int,
    cfg: Config,
    bar: tqdm | None = None,
) -> tuple[Params, Masks, dict]:
    """Derive one task model; returns `(params, masks, record)` (record is JSON-able)."""
    params = target_init(trainer, source_params, seed, cfg)
    masks = full_masks(cfg)
    opt_state = trainer.optimizer.init(params)
    rng = np.random.default_rng(seed)
    for prune, epochs in schedule(sparsity, cfg):
        if prune is not None:
            scores = channel_importance(trainer, params, masks, target_task, cfg)
            masks = prune_to(scores, masks, prune, KERNEL * KERNEL, cfg.scope)
        params, opt_state = train_epochs(
            trainer, params, opt_state, masks, target_task, epochs, rng, cfg.batch_size, bar
        )
    return params, masks, evaluate(trainer, params, masks, target_task, source_params, cfg)


def evaluate(
    trainer: Trainer, params: Params, masks: Masks, task: Task, source: Params, cfg: Config
) -> dict:
    """Accuracy of the masked model, and the exported model checked against it."""
    names = conv_names(cfg)
    masked = np.asarray(trainer.logits(params, masks, task.test_x))
    train_logits = trainer.logits(params, masks, task.train_x)
    convs, head = export(params, masks)
    fused = np.asarray(plain_forward(convs, head, task.test_x))
    diff = float(np.max(np.abs(fused - masked)))
    if not np.array_equal(fused.argmax(-1), masked.argmax(-1)) or diff > 1e-3:
        raise AssertionError(f"exported model disagrees with the masked model: {diff:.2e}")
    counts = learned_parameters(trainer.method, params, masks, KERNEL * KERNEL)
    base_unchanged = all(np.array_equal(params[n]["kernel"], source[n]["kernel"]) for n in names)
    return {
        "accuracy": accuracy(masked, task.test_y),
        "train_accuracy": accuracy(train_logits, task.train_y),
        "achieved_sparsity": kernel_sparsity(masks, KERNEL * KERNEL),
        "kept_channels": {n: int(masks[n]["out"].sum()) for n in names},
        "learned_params": int(sum(counts.values())),
        "learned_params_per_layer": counts,
        "fused_params": int(sum(a.size for c in convs for a in c.values()))
        + int(head["kernel"].size + head["bias"].size),
        "max_abs_logit_diff": diff,
        "base_kernels_unchanged": bool(base_unchanged),
    }


# --------------------------------------------------------------------------- experiment


def validation_task(target: Task, cfg: Config) -> Task:
    """The target training split cut into fit / validation (its "test" fields)."""
    from sklearn.model_selection import train_test_split

    fit_x, val_x, fit_y, val_y = train_test_split(
        target.train_x,
        target.train_y,
        test_size=cfg.val_size,
        stratify=target.train_y,
        random_state=cfg.split_seed,
    )
    return Task(fit_x, fit_y, val_x, val_y)


def select_lrs(
    trainers: Mapping[tuple[str, float], Trainer],
    source_params: Params,
    target: Task,
    seed: int,
    cfg: Config,
    bar: tqdm | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per method, the learning rate of `cfg.lr_grid` with the best validation accuracy
    at the highest sparsity (ties: the smaller rate). The test split is never used."""
    if len(cfg.lr_grid) == 1:
        return {m: cfg.lr_grid[0] for m in cfg.methods}, {}
    tuning, sparsity = validation_task(target, cfg), max(cfg.sparsities)
    scores: dict[str, dict[float, float]] = {}
    for method in cfg.methods:
        scores[method] = {}
        for lr in cfg.lr_grid:
            if bar is not None:
                bar.set_description(f"lr selection {method} {lr:g}")
            _, _, record = derive(
                trainers[method, lr], source_params, tuning, sparsity, seed, cfg, bar
            )
            scores[method][lr] = record["accuracy"]
    chosen = {m: max(cfg.lr_grid, key=lambda lr, m=m: (scores[m][lr], -lr)) for m in scores}
    return chosen, {m: {f"{lr:g}": acc for lr, acc in v.items()} for m, v in scores.items()}


def run(cfg: Config) -> dict:
    """LR selection, then every (method, sparsity, seed); returns the JSON-able results."""
    start = datetime.now(UTC)
    t0 = time.perf_counter()
    source, target = load_tasks(cfg.split_seed, cfg.test_size)
    pretrainer = Trainer("finetune", cfg, cfg.pretrain_lr)
    trainers = {(m, lr): Trainer(m, cfg, lr) for m in cfg.methods for lr in cfg.lr_grid}
    target_epochs = cfg.warmup_epochs + cfg.prune_steps * cfg.epochs_per_step
    runs_per_seed = len(cfg.methods) * len(cfg.sparsities)
    selection = len(cfg.methods) * len(cfg.lr_grid) if len(cfg.lr_grid) > 1 else 0
    total = len(cfg.seeds) * (cfg.pretrain_epochs + runs_per_seed * target_epochs)
    bar = tqdm(total=total + selection * target_epochs, desc="epochs (all runs)", unit="ep")
    sources, runs, lrs, lr_scores = [], [], {}, {}
    for seed in cfg.seeds:
        bar.set_description(f"seed {seed} pretrain")
        source_params, source_acc = pretrain(pretrainer, source, seed, cfg)
        bar.update(cfg.pretrain_epochs)
        sources.append({"seed": seed, "source_test_accuracy": source_acc})
        tqdm.write(f"seed {seed}: source (digits 0-4) test accuracy {source_acc:.2%}")
        if not lrs:
            lrs, lr_scores = select_lrs(trainers, source_params, target, seed, cfg, bar)
            tqdm.write(f"learning rates (validation accuracy {lr_scores}): {lrs}")
        for method in cfg.methods:
            for sparsity in cfg.sparsities:
                bar.set_description(f"seed {seed} {method} {sparsity:.0%}")
                trainer = trainers[method, lrs[method]]
                _, _, record = derive(trainer, source_params, target, sparsity, seed, cfg, bar)
                runs.append(
                    {"method": method, "target_sparsity": sparsity, "seed": seed, "lr": lrs[method]}
                    | record
                )
                bar.set_postfix(acc=f"{record['accuracy']:.3f}")
    bar.close()
    summary = summarize(runs, cfg)
    return {
        "config": asdict(cfg),
        "meta": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "machine": platform.processor() or platform.machine(),
            "started": start.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "runtime_s": round(time.perf_counter() - t0, 1),
            "data": {
                "source_train": len(source.train_y),
                "source_test": len(source.test_y),
                "target_train": len(target.train_y),
                "target_test": len(target.test_y),
            },
        },
        "lr_selection": {"chosen": lrs, "validation_accuracy": lr_scores},
        "source": sources,
        "runs": runs,
        "summary": summary,
        "verdict": verdict(summary, runs, cfg, lrs),
    }


def summarize(runs: list[dict], cfg: Config) -> list[dict]:
    """Mean ± sample std over seeds per (method, target sparsity)."""
    rows = []
    for method in cfg.methods:
        for sparsity in cfg.sparsities:
            group = [r for r in runs if r["method"] == method and r["target_sparsity"] == sparsity]
            acc = np.array([r["accuracy"] for r in group])
            rows.append(
                {
                    "method": method,
                    "target_sparsity": sparsity,
                    "achieved_sparsity": float(np.mean([r["achieved_sparsity"] for r in group])),
                    "learned_params": float(np.mean([r["learned_params"] for r in group])),
                    "fused_params": float(np.mean([r["fused_params"] for r in group])),
                    "accuracy_mean": float(acc.mean()),
                    "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    "train_accuracy_mean": float(np.mean([r["train_accuracy"] for r in group])),
                    "lr": group[0]["lr"],
                    "max_abs_logit_diff": float(max(r["max_abs_logit_diff"] for r in group)),
                    "seeds": len(group),
                }
            )
    return rows


def _row(summary: list[dict], method: str, sparsity: float) -> dict | None:
    return next(
        (r for r in summary if r["method"] == method and r["target_sparsity"] == sparsity), None
    )


def compare(summary: list[dict], runs: list[dict], sparsity: float, spa: str) -> dict | None:
    """SPA vs pruning + fine-tuning at one sparsity: mean gap, per-seed (paired: same
    source model, head init and batch order) wins / losses, learned-parameter ratio."""
    ft, ad = _row(summary, "finetune", sparsity), _row(summary, spa, sparsity)
    if ft is None or ad is None:
        return None

    def by_seed(method: str) -> dict[int, float]:
        return {
            r["seed"]: r["accuracy"]
            for r in runs
            if r["method"] == method and r["target_sparsity"] == sparsity
        }

    a, b = by_seed(spa), by_seed("finetune")
    seeds = [seed for seed in a if seed in b]
    gaps = [a[seed] - b[seed] for seed in seeds]
    return {
        "per_seed": ", ".join(f"{a[seed]:.1%} vs {b[seed]:.1%}" for seed in seeds),
        "delta": ad["accuracy_mean"] - ft["accuracy_mean"],
        "wins": sum(g > 0 for g in gaps),
        "losses": sum(g < 0 for g in gaps),
        "n": len(gaps),
        "ratio": ft["learned_params"] / ad["learned_params"],
        "ft": ft,
        "spa": ad,
    }


def _relation(c: dict) -> str:
    if c["wins"] == c["n"]:
        return f"higher in {'every' if c['n'] > 1 else 'the'} seed"
    if c["losses"] == c["n"]:
        return f"lower in {'every' if c['n'] > 1 else 'the'} seed"
    ties = c["n"] - c["wins"] - c["losses"]
    return (
        f"mixed: higher in {c['wins']}, lower in {c['losses']}, equal in {ties} of {c['n']} seeds"
    )


def _pct(row: dict) -> str:
    return f"{row['accuracy_mean']:.1%} ± {row['accuracy_std']:.1%}"


def _claim(c: dict) -> str:
    fewer = c["ratio"] >= 2
    if c["wins"] == c["n"] and fewer:
        return "holds here"
    if c["losses"] == c["n"]:
        return "does not hold here: " + (
            "far fewer learned parameters, but lower accuracy" if fewer else "lower accuracy"
        )
    if fewer:
        return (
            "holds only in part here: far fewer learned parameters, but the accuracy is not "
            "consistently higher"
        )
    return "does not hold here"


def verdict(summary: list[dict], runs: list[dict], cfg: Config, lrs: Mapping[str, float]) -> str:
    """A short paragraph computed from the numbers (only the paper's figures are fixed)."""
    pruned = sorted(s for s in cfg.sparsities if s > 0)
    if not pruned or "finetune" not in cfg.methods:
        return "No pruned comparison was run."
    top, lines = pruned[-1], []
    for spa in [m for m in cfg.methods if m != "finetune"]:
        c = compare(summary, runs, top, spa)
        lines.append(
            f"At {top:.0%} pruned weights, {LABELS[spa]} reaches {_pct(c['spa'])} vs "
            f"{_pct(c['ft'])} for pruning + fine-tuning (Δ = {c['delta'] * 100:+.1f} points: "
            f"{_relation(c)}; per seed, SPA vs fine-tuning: {c['per_seed']}) with {c['ratio']:.1f}× fewer learned "
            f"parameters ({c['spa']['learned_params']:,.0f} vs {c['ft']['learned_params']:,.0f})."
        )
        others = [(s, compare(summary, runs, s, spa)) for s in pruned[:-1]]
        if others:
            parts = [
                f"{s:.0%}: Δ = {o['delta'] * 100:+.1f} points ({_relation(o)}) at "
                f"{o['ratio']:.1f}× fewer"
                for s, o in others
            ]
            lines.append("Other sparsities: " + "; ".join(parts) + ".")
    if "splora" in cfg.methods:
        c = compare(summary, runs, top, "splora")
        if 0.7 in pruned:
            c70 = compare(summary, runs, 0.7, "splora")
            lines.append(
                f"The paper reports {PAPER['delta_70']:+.1f} points at {PAPER['ratio_70']:.0f}× "
                f"fewer learned parameters at 70% and {PAPER['delta_90']:+.1f} points at 90% "
                "(with about half the learned parameters); "
                f"here {c70['delta'] * 100:+.1f} points at {c70['ratio']:.1f}× (70%) and "
                f"{c['delta'] * 100:+.1f} points at {c['ratio']:.1f}× ({top:.0%})."
            )
        base = compare(summary, runs, 0.0, "splora")
        if base is not None:
            lines.append(
                f"Unpruned: fine-tuning {_pct(base['ft'])}, SPLoRA {_pct(base['spa'])} "
                f"({base['ratio']:.0f}× fewer learned parameters)."
            )
        fit_gap = c["ft"]["train_accuracy_mean"] - c["spa"]["train_accuracy_mean"]
        fit = (
            "SPLoRA under-fits: its small adapter, not over-fitting of fine-tuning, sets the gap"
            if fit_gap > 0.02
            else "both fit the training data about equally well"
        )
        lines.append(
            f"Training accuracy at {top:.0%}: fine-tuning {c['ft']['train_accuracy_mean']:.1%}, "
            f"SPLoRA {c['spa']['train_accuracy_mean']:.1%} ({fit})."
        )
        rates = ", ".join(f"{m} {lr:g}" for m, lr in lrs.items())
        how = "chosen per method on a validation split" if len(cfg.lr_grid) > 1 else "fixed"
        seeds = f"{len(cfg.seeds)} seed{'s' if len(cfg.seeds) > 1 else ''}"
        lines.append(
            f"Verdict: the paper's claim (higher accuracy with far fewer learned parameters at "
            f"high sparsity) {_claim(c)} ({seeds}, {cfg.criterion} criterion, {cfg.scope} "
            f"scope, learning rates {rates} {how}). Caveat: 8×8 digits with source and target "
            "tasks from one domain is a small sanity check, not a replication of the paper's "
            "large-scale transfer experiments."
        )
    return " ".join(lines)


# --------------------------------------------------------------------------- report


def table(summary: list[dict]) -> str:
    lines = [
        "| method | lr | target sparsity | achieved sparsity | learned params "
        "| test accuracy (mean ± std) | train accuracy | fused-model params "
        "| max abs Δlogit fused vs masked |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {LABELS[r['method']]} | {r['lr']:g} | {r['target_sparsity']:.0%} "
            f"| {r['achieved_sparsity']:.1%} | {r['learned_params']:,.0f} | {_pct(r)} "
            f"| {r['train_accuracy_mean']:.1%} | {r['fused_params']:,.0f} "
            f"| {r['max_abs_logit_diff']:.1e} |"
        )
    return "\n".join(lines)


def markdown(results: dict) -> str:
    cfg, meta = results["config"], results["meta"]
    lrs = ", ".join(f"{m} {lr:g}" for m, lr in results["lr_selection"]["chosen"].items())
    val = "; ".join(
        f"{m} " + ", ".join(f"{lr} {acc:.1%}" for lr, acc in accs.items())
        for m, accs in results["lr_selection"]["validation_accuracy"].items()
    )
    src = [s["source_test_accuracy"] for s in results["source"]]
    return (
        "# Structured pruning + fine-tuning vs channel-SPA on scikit-learn digits\n\n"
        f"Source digits 0-4 → target digits 5-9; {len(cfg['seeds'])} seeds; "
        f"criterion {cfg['criterion']}, scope {cfg['scope']}, SPLoRA rank {cfg['rank']}; "
        f"epochs: pretrain {cfg['pretrain_epochs']}, target {cfg['warmup_epochs']} + "
        f"{cfg['prune_steps']} × {cfg['epochs_per_step']} (a pruning step before each "
        f"block). Source test accuracy {np.mean(src):.1%} ± "
        f"{np.std(src, ddof=1) if len(src) > 1 else 0.0:.1%}. "
        f"Runtime {meta['runtime_s']:.0f} s ({meta['finished']}).\n\n"
        f"Learning rates (per method, best validation accuracy at the highest sparsity): "
        f"{lrs}; validation accuracy per rate: {val or 'no selection (one rate)'}.\n\n"
        f"{table(results['summary'])}\n\n"
        "Learned params: what a derived task model must store besides the shared source "
        "model (plus its channel masks); fused-model params: the exported plain network "
        "(float32, 4 bytes each), the same for every method at one sparsity.\n\n"
        f"{results['verdict']}\n\n"
        "Generated by `experiments/spa_digits.py`; see its docstring for the design.\n"
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_par) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in results["config"]["methods"]:
        rows = [r for r in results["summary"] if r["method"] == method]
        x = [100 * r["achieved_sparsity"] for r in rows]
        ax_acc.errorbar(
            x,
            [100 * r["accuracy_mean"] for r in rows],
            yerr=[100 * r["accuracy_std"] for r in rows],
            marker="o",
            capsize=3,
            label=LABELS[method],
        )
        ax_par.plot(x, [r["learned_params"] for r in rows], marker="o", label=LABELS[method])
    ax_acc.set(xlabel="pruned conv weights (%)", ylabel="target test accuracy (%)")
    ax_acc.set_title("digits 5-9 (source model: digits 0-4)")
    ax_par.set(xlabel="pruned conv weights (%)", ylabel="learned parameters", yscale="log")
    ax_par.set_title("learned parameters per derived model")
    for ax in (ax_acc, ax_par):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: dict, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spa_digits.json").write_text(json.dumps(results, indent=2) + "\n")
    (directory / "spa_digits.md").write_text(markdown(results))
    plot(results, directory / "spa_digits.png")


def parse_config(argv: Sequence[str] | None = None) -> tuple[Config, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(defaults.sparsities))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(defaults.methods))
    parser.add_argument("--criterion", choices=CRITERIA, default=defaults.criterion)
    parser.add_argument("--scope", choices=("layer", "global"), default=defaults.scope)
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--widths", type=int, nargs="+", default=list(defaults.widths))
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(defaults.lr_grid))
    parser.add_argument("--pretrain-lr", type=float, default=defaults.pretrain_lr)
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed)
    for name in ("pretrain_epochs", "warmup_epochs", "prune_steps", "epochs_per_step"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument("--quick", action="store_true", help="1 seed, 1-2 epochs per phase")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    keys = ("criterion", "scope", "rank", "pretrain_lr", "split_seed")
    fields = {k: getattr(args, k) for k in keys}
    for name in ("pretrain_epochs", "warmup_epochs", "prune_steps", "epochs_per_step"):
        fields[name] = getattr(args, name)
    cfg = Config(
        seeds=tuple(args.seeds),
        sparsities=tuple(args.sparsities),
        methods=tuple(dict.fromkeys(args.methods)),
        lr_grid=tuple(args.lr_grid),
        widths=tuple(args.widths),
        **fields,
    )
    if args.quick:
        cfg = replace(cfg, **QUICK)
    directory = args.results_dir or (None if args.quick else RESULTS)
    return cfg, directory


def main(argv: Sequence[str] | None = None) -> None:
    cfg, directory = parse_config(argv)
    results = run(cfg)
    print(table(results["summary"]))
    print()
    print(results["verdict"])
    if directory is not None:
        write(results, directory)
        print(f"wrote {directory}/spa_digits.{{json,md,png}}")


if __name__ == "__main__":
    main()
