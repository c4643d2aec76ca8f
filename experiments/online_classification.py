"""Online classification of real multivariate time series: trained on clips, streamed.

    python experiments/online_classification.py --dataset JapaneseVowels [--quick]

Any data set sktime ships offline (`sktime.datasets.load_UCR_UEA_dataset(name)`; e.g.
JapaneseVowels: 12 channels, 9 classes, 7–29 frames; BasicMotions: 6 channels, 4
classes, 100 frames): variable lengths, any channel and class count.

Each model maps a window of the last `W` frames `(W, C)` to class logits; a stream
starts with `W - 1` zero frames (after per-channel standardisation), so the prediction
after frame t is the window model on zeros + frames 1..t. Three continual models:

- `cnn`: three `Conv1d` (kernel 3) + ReLU, a moving `AvgPool1d(W - 6, stride 1)` and a
  `Linear` classifier (receptive field W);
- `transformer`: CoOadTR-shaped (`co.co_oadtr`): Linear embedding, recycling learned
  positions, one single-output continual transformer encoder block, LayerNorm, Linear;
- `nystrom`: `NystromformerClassifier` (one continual Nyström block, m = 8), trained
  with updated landmarks, then landmarks fixed by k-means and fine-tuned (the paper's
  schedule); the fixed-landmark step is exact.

Recipe (same for cojax and PyTorch): AdamW (lr 1e-3, weight decay 1e-4, gradient
norm clipped at 1), batch 32, cross-entropy on every prefix window (the early
classification objective), random position offsets per clip; 20 % of the training
split (stratified, fixed seed) is the validation split that picks the epoch (final
accuracy, then loss); the best cojax model is an orbax checkpoint, restored for the
test. The test split is used once, at the end: cojax streams it with `step` (one frame
at a time) and records the accuracy after every frame; PyTorch evaluates its own
clip model. FLOPs per prediction: the continual step vs re-running the clip model on
the latest window (XLA's counts).

The PyTorch models are the same architectures written as ordinary (clip) networks:
`nn.Conv1d` stacks, `nn.TransformerEncoderLayer` on each window's tokens (last row),
and a Nyströmformer block whose landmarks are the window's segment means (the offline
model the continual one streams; its landmarks are not fixed afterwards).

Writes `experiments/results/online_classification_<dataset>.json` (top-level
`"test_accuracy"`: cojax step-mode accuracy per model, mean over seeds) and `.png`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, figure, markdown_table, mean_std, save_figure, write_json  # noqa: E402

import cojax as co  # noqa: E402
from cojax.checkpoint import latest_step, restore_checkpoint, save_checkpoint  # noqa: E402
from cojax.models.nystromformer import (  # noqa: E402
    NystromformerClassifier,
    fit_classifier_landmarks,
)

MODELS = ("cnn", "transformer", "nystrom")


@dataclasses.dataclass(frozen=True)
class Config:
    window: int = 32
    width: int = 64
    heads: int = 4
    feedforward: int = 128
    landmarks: int = 8
    epochs: int = 60
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seeds: tuple[int, ...] = (0, 1, 2)
    validation_fraction: float = 0.2


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Split:
    """Padded streams: `x` `(N, W - 1 + L, C)` (W - 1 leading zero frames, then the
    frames, then zeros), `lengths` `(N,)` real frames, `y` `(N,)` class indices."""

    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray


def load_sequences(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """sktime's shipped data set `name`: a list of `(T_i, C)` float32 arrays and labels."""
    from sktime.datasets import load_UCR_UEA_dataset

    frame, labels = load_UCR_UEA_dataset(name, split=split, return_type="pd-multiindex")
    sequences = [
        group.dropna(how="all").to_numpy(np.float32)
        for _, group in frame.groupby(level=0, sort=False)
    ]
    if len(sequences) != len(labels):
        raise ValueError(f"{name}: {len(sequences)} series but {len(labels)} labels.")
    return sequences, np.asarray(labels)


def pad_streams(sequences, labels, classes, mean, std, window: int, length: int) -> Split:
    channels = sequences[0].shape[1]
    x = np.zeros((len(sequences), window - 1 + length, channels), np.float32)
    for i, seq in enumerate(sequences):
        x[i, window - 1 : window - 1 + len(seq)] = (seq - mean) / std
    lengths = np.array([len(s) for s in sequences], np.int32)
    y = np.searchsorted(classes, labels).astype(np.int32)
    return Split(x, lengths, y)


def load_splits(name: str, window: int, validation_fraction: float, seed: int = 0):
    """(train, validation, test, classes): validation is a stratified part of the
    training split; standardisation uses the training part only."""
    from sklearn.model_selection import train_test_split

    train_seqs, train_labels = load_sequences(name, "train")
    test_seqs, test_labels = load_sequences(name, "test")
    classes = np.unique(train_labels)
    index = np.arange(len(train_seqs))
    fit_idx, val_idx = train_test_split(
        index, test_size=validation_fraction, stratify=train_labels, random_state=seed
    )
    frames = np.concatenate([train_seqs[i] for i in fit_idx])
    mean, std = frames.mean(0), frames.std(0) + 1e-6
    length = max(len(s) for s in train_seqs + test_seqs)

    def split(seqs, labels):
        return pad_streams(seqs, labels, classes, mean, std, window, length)

    fit = split([train_seqs[i] for i in fit_idx], train_labels[fit_idx])
    val = split([train_seqs[i] for i in val_idx], train_labels[val_idx])
    return fit, val, split(test_seqs, test_labels), classes


def batches(n: int, size: int, rng: np.random.Generator):
    """Index batches of one epoch, all of `size` (the last wraps around): one shape,
    one compilation."""
    order = rng.permutation(n)
    count = math.ceil(n / size)
    order = np.concatenate([order, order[: count * size - n]])
    return order.reshape(count, size)


# --------------------------------------------------------------------------- cojax models


@dataclasses.dataclass(frozen=True)
class JaxModel:
    """A continual model: `layer` (the cojax contract: `forward`, `step`) and its clip
    function for training `logits(variables, x (B, W-1+L, C), offsets (B,))` ->
    `(B, L, K)`."""

    name: str
    layer: co.Layer
    logits: callable
    init: callable


def cnn(channels: int, classes: int, cfg: Config) -> JaxModel:
    w = cfg.width
    layer = co.Sequential(
        co.Conv1d(channels, w, 3),
        co.ReLU(),
        co.Conv1d(w, w, 3),
        co.ReLU(),
        co.Conv1d(w, w, 3),
        co.ReLU(),
        co.AvgPool1d(cfg.window - 6, stride=1),
        co.Linear(w, classes),
    )
    return JaxModel(
        "cnn",
        layer,
        lambda v, x, offsets: jax.vmap(layer.forward, (None, 0))(v, x),
        layer.init,
    )


def transformer(channels: int, classes: int, cfg: Config) -> JaxModel:
    layer = co.co_oadtr(
        input_dim=channels,
        embed_dim=cfg.width,
        num_heads=cfg.heads,
        sequence_len=cfg.window,
        dim_feedforward=cfg.feedforward,
        num_classes=classes,
    )
    logits = jax.vmap(layer.forward, (None, 0, 0))
    return JaxModel("transformer", layer, logits, layer.init)


def nystrom(channels: int, classes: int, cfg: Config, landmarks: str = "updated") -> JaxModel:
    module = NystromformerClassifier(
        input_dim=channels,
        num_classes=classes,
        embed_dim=cfg.width,
        num_heads=cfg.heads,
        num_landmarks=cfg.landmarks,
        sequence_len=cfg.window,
        dim_feedforward=cfg.feedforward,
        landmarks=landmarks,
    )
    layer = co.from_flax(module)
    logits = jax.vmap(lambda v, x, o: module.apply(v, x, o), (None, 0, 0))
    return JaxModel("nystrom", layer, logits, layer.init)


BUILDERS = {"cnn": cnn, "transformer": transformer, "nystrom": nystrom}


def trainable_part(name: str, variables):
    """(learned, constant) parts: Flax variables train their "params" collection."""
    if name == "nystrom":
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}
    return variables, None


def merge(name: str, learned, constant):
    return {"params": learned, **constant} if name == "nystrom" else learned


def prefix_loss(logits, lengths, y):
    """Mean cross-entropy over every real prefix window, and the final accuracy."""
    steps = logits.shape[1]
    mask = jnp.arange(steps)[None, :] < lengths[:, None]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[:, None])
    loss = jnp.sum(ce * mask) / jnp.sum(mask)
    final = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return loss, jnp.mean(jnp.argmax(final, -1) == y)


def optimizer(cfg: Config):
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(cfg.lr, weight_decay=cfg.weight_decay)
    )


def train_jax(model: JaxModel, variables, fit: Split, val: Split, cfg, seed, epochs, ckpt):
    """Train with optax; the best epoch on `val` is saved (orbax) to `ckpt` and
    restored. Returns (variables, record)."""
    learned, constant = trainable_part(model.name, variables)
    tx = optimizer(cfg)
    opt_state = tx.init(learned)
    rows = 2 * cfg.window - 1

    @jax.jit
    def train_step(learned, opt_state, x, lengths, y, offsets):
        def loss_fn(p):
            return prefix_loss(model.logits(merge(model.name, p, constant), x, offsets), lengths, y)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(learned)
        updates, opt_state = tx.update(grads, opt_state, learned)
        return optax.apply_updates(learned, updates), opt_state, loss

    @jax.jit
    def evaluate(learned, x, lengths, y):
        offsets = jnp.zeros(len(y), jnp.int32)
        return prefix_loss(
            model.logits(merge(model.name, learned, constant), x, offsets), lengths, y
        )

    rng = np.random.default_rng(seed)
    best, history, train_time, train_clips = None, [], 0.0, 0
    shutil.rmtree(ckpt, ignore_errors=True)
    for epoch in tqdm(range(epochs), desc=f"cojax {model.name} seed {seed}", leave=False):
        t0 = time.perf_counter()
        for idx in batches(len(fit.y), cfg.batch, rng):
            offsets = rng.integers(0, rows, len(idx)).astype(np.int32)
            learned, opt_state, loss = train_step(
                learned, opt_state, fit.x[idx], fit.lengths[idx], fit.y[idx], offsets
            )
        jax.block_until_ready(learned)
        if epoch > 0:  # epoch 0 compiles
            train_time += time.perf_counter() - t0
            train_clips += len(fit.y) + (-len(fit.y)) % cfg.batch
        val_loss, val_acc = (float(v) for v in evaluate(learned, val.x, val.lengths, val.y))
        history.append({"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc})
        if best is None or (val_acc, -val_loss) > (best["val_accuracy"], -best["val_loss"]):
            best = history[-1]
            variables = merge(model.name, learned, constant)
            save_checkpoint(ckpt, epoch, variables, layer=model.layer, max_to_keep=1)
    restored, _ = restore_checkpoint(ckpt, variables, layer=model.layer)
    record = {
        "best_epoch": latest_step(ckpt),
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
        "history": history,
        "train_clips_per_s": train_clips / train_time if train_time else None,
    }
    return restored, record


def stream_predictions(layer: co.Layer, variables, split: Split) -> np.ndarray:
    """Logits after every frame, computed by `step` one frame at a time (all test
    streams in one `vmap`): `(N, L, K)`."""
    frame = jax.ShapeDtypeStruct(split.x.shape[2:], jnp.float32)
    state = layer.init_state(variables, frame)

    @jax.jit
    def run(x):
        def one(clip):
            _, ys, valid = co.forward_steps(layer, variables, state, clip)
            return ys, valid

        return jax.vmap(one)(x)

    ys, valid = run(split.x)
    return np.asarray(ys), np.asarray(valid)


def early_curve(predictions: np.ndarray, split: Split) -> np.ndarray:
    """Accuracy after t + 1 frames, t = 0 … L - 1 (a finished stream keeps its last
    prediction)."""
    steps = predictions.shape[1]
    t = np.minimum(np.arange(steps)[None, :], split.lengths[:, None] - 1)
    chosen = np.take_along_axis(predictions, t, axis=1)
    return (chosen == split.y[:, None]).mean(0)


def evaluate_stream(model: JaxModel, variables, test: Split, window: int) -> dict:
    ys, valid = stream_predictions(model.layer, variables, test)
    if model.layer.delay != window - 1 or not valid[:, window - 1 :].all():
        raise AssertionError(f"{model.name}: delay {model.layer.delay}, expected {window - 1}.")
    logits = ys[:, window - 1 :]
    clip = np.asarray(jax.jit(model.logits)(variables, test.x, jnp.zeros(len(test.y), jnp.int32)))
    real = np.arange(logits.shape[1])[None, :] < test.lengths[:, None]
    predictions = logits.argmax(-1)
    curve = early_curve(predictions, test)
    final = predictions[np.arange(len(test.y)), test.lengths - 1]
    return {
        "test_accuracy": float((final == test.y).mean()),
        "early_curve": curve.tolist(),
        "step_vs_clip_max_abs": float(np.abs(logits - clip)[real].max()),
        "logit_scale": float(np.abs(clip[real]).max()),
    }


def per_prediction_flops(model: JaxModel, variables, channels: int, window: int) -> dict:
    step = co.flops(model.layer, variables, jax.ShapeDtypeStruct((channels,), jnp.float32))
    clip = co.clip_flops(
        model.layer, variables, jax.ShapeDtypeStruct((window, channels), jnp.float32)
    )
    return {"continual_step": step, "clip_per_window": clip, "reduction": clip / step}


def run_jax(name, data, cfg: Config, seed: int, workdir: Path) -> tuple[dict, dict]:
    fit, val, test, classes = data
    channels, k = fit.x.shape[2], len(classes)
    model = BUILDERS[name](channels, k, cfg)
    variables = model.init(jax.random.PRNGKey(seed))
    ckpt = workdir / f"{name}_seed{seed}"
    if name == "nystrom":  # train with updated landmarks, fix them (k-means), fine-tune
        first = max(1, (2 * cfg.epochs) // 3)
        variables, phase1 = train_jax(model, variables, fit, val, cfg, seed, first, ckpt)
        fixed_module, variables = fit_classifier_landmarks(
            model.layer.module, variables, jnp.asarray(fit.x), seed=seed
        )
        model = nystrom(channels, k, cfg, landmarks="fixed")
        assert model.layer.module == fixed_module
        rest = max(1, cfg.epochs - first)
        variables, record = train_jax(model, variables, fit, val, cfg, seed, rest, ckpt)
        record["updated_landmarks_phase"] = {k: phase1[k] for k in ("best_epoch", "val_accuracy")}
        clips_per_s = [r for r in (phase1["train_clips_per_s"], record["train_clips_per_s"]) if r]
        record["train_clips_per_s"] = float(np.mean(clips_per_s)) if clips_per_s else None
    else:
        variables, record = train_jax(model, variables, fit, val, cfg, seed, cfg.epochs, ckpt)
    record.update(evaluate_stream(model, variables, test, cfg.window))
    flops = per_prediction_flops(model, variables, channels, cfg.window)
    return record, flops


# --------------------------------------------------------------------------- PyTorch


def torch_models():
    """The PyTorch clip models (built lazily: torch is an optional extra)."""
    import torch
    from torch import nn

    class Windows(nn.Module):
        """Shared: (B, W-1+L, C) streams -> (B, L, K) logits, one per window."""

        def __init__(self, window: int):
            super().__init__()
            self.window = window

    class CNN(Windows):
        def __init__(self, channels, classes, cfg):
            super().__init__(cfg.window)
            w = cfg.width
            self.body = nn.Sequential(
                nn.Conv1d(channels, w, 3),
                nn.ReLU(),
                nn.Conv1d(w, w, 3),
                nn.ReLU(),
                nn.Conv1d(w, w, 3),
                nn.ReLU(),
                nn.AvgPool1d(cfg.window - 6, stride=1),
            )
            self.head = nn.Linear(w, classes)

        def forward(self, x, offsets):
            return self.head(self.body(x.transpose(1, 2)).transpose(1, 2))

    class TokenWindows(Windows):
        """Embedding + recycling learned positions, then `block` on each window."""

        def __init__(self, channels, classes, cfg):
            super().__init__(cfg.window)
            self.embed = nn.Linear(channels, cfg.width)
            self.positions = nn.Parameter(0.02 * torch.randn(2 * cfg.window - 1, cfg.width))
            self.norm = nn.LayerNorm(cfg.width)
            self.head = nn.Linear(cfg.width, classes)

        def forward(self, x, offsets):
            b, total, _ = x.shape
            rows = self.positions.shape[0]
            index = (torch.arange(total)[None, :] + offsets[:, None]) % rows
            tokens = self.embed(x) + self.positions[index]
            windows = tokens.unfold(1, self.window, 1).permute(0, 1, 3, 2)  # (B, L, W, E)
            steps = windows.shape[1]
            last = self.block(windows.reshape(b * steps, self.window, -1))
            return self.head(self.norm(last)).reshape(b, steps, -1)

    class Transformer(TokenWindows):
        def __init__(self, channels, classes, cfg):
            super().__init__(channels, classes, cfg)
            self.layer = nn.TransformerEncoderLayer(
                cfg.width, cfg.heads, cfg.feedforward, dropout=0.0, activation="gelu",
                batch_first=True,
            )  # fmt: skip

        def block(self, tokens):
            return self.layer(tokens)[:, -1]

    class NystromBlock(nn.Module):
        """Post-norm block with Nyström attention (segment-mean landmarks, iterative
        pseudo-inverse, 6 iterations) for the newest row."""

        def __init__(self, cfg):
            super().__init__()
            e, self.heads, self.m = cfg.width, cfg.heads, cfg.landmarks
            self.qkv = nn.Linear(e, 3 * e)
            self.out = nn.Linear(e, e)
            self.norm1, self.norm2 = nn.LayerNorm(e), nn.LayerNorm(e)
            self.ff = nn.Sequential(
                nn.Linear(e, cfg.feedforward), nn.GELU(), nn.Linear(cfg.feedforward, e)
            )

        @staticmethod
        def pinv(a, iterations=6):
            absolute = a.abs()
            scale = absolute.sum(-2).amax(-1) * absolute.sum(-1).amax(-1)  # per stream
            z = a.transpose(-1, -2) / scale[..., None, None]
            eye = torch.eye(a.shape[-1])
            for _ in range(iterations):
                az = a @ z
                z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
            return z

        def forward(self, x):
            b, n, e = x.shape
            d = e // self.heads
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)
            q = q / math.sqrt(d)
            ql = q.reshape(b, self.heads, self.m, n // self.m, d).mean(3)
            kl = k.reshape(b, self.heads, self.m, n // self.m, d).mean(3)
            k1 = torch.softmax(q[:, :, -1:] @ kl.transpose(-1, -2), -1)
            k2 = self.pinv(torch.softmax(ql @ kl.transpose(-1, -2), -1).flatten(0, 1))
            k3 = torch.softmax(ql @ k.transpose(-1, -2), -1)
            att = k1 @ k2.reshape(b, self.heads, self.m, self.m) @ (k3 @ v)  # (B, H, 1, d)
            h = self.norm1(x[:, -1] + self.out(att.reshape(b, e)))
            return self.norm2(h + self.ff(h))

    class Nystrom(TokenWindows):
        def __init__(self, channels, classes, cfg):
            super().__init__(channels, classes, cfg)
            self.layer = NystromBlock(cfg)

        def block(self, tokens):
            return self.layer(tokens)

    return {"cnn": CNN, "transformer": Transformer, "nystrom": Nystrom}


def run_torch(name, data, cfg: Config, seed: int) -> dict:
    import torch

    torch.manual_seed(seed)
    fit, val, test, classes = data
    net = torch_models()[name](fit.x.shape[2], len(classes), cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows = 2 * cfg.window - 1

    def loss_acc(x, lengths, y, offsets):
        logits = net(torch.from_numpy(x), torch.from_numpy(offsets).long())
        lengths_t, y_t = torch.from_numpy(lengths).long(), torch.from_numpy(y).long()
        mask = torch.arange(logits.shape[1])[None, :] < lengths_t[:, None]
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y_t.repeat_interleave(logits.shape[1]), reduction="none"
        ).reshape(mask.shape)
        loss = (ce * mask).sum() / mask.sum()
        final = logits[torch.arange(len(y)), lengths_t - 1].argmax(-1)
        return loss, float((final == y_t).float().mean()), logits

    rng = np.random.default_rng(seed)
    best, best_state, train_time, train_clips = None, None, 0.0, 0
    for epoch in tqdm(range(cfg.epochs), desc=f"torch {name} seed {seed}", leave=False):
        net.train()
        t0 = time.perf_counter()
        for idx in batches(len(fit.y), cfg.batch, rng):
            offsets = rng.integers(0, rows, len(idx)).astype(np.int32)
            loss, _, _ = loss_acc(fit.x[idx], fit.lengths[idx], fit.y[idx], offsets)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        if epoch > 0:
            train_time += time.perf_counter() - t0
            train_clips += len(fit.y) + (-len(fit.y)) % cfg.batch
        net.eval()
        with torch.no_grad():
            zeros = np.zeros(len(val.y), np.int32)
            val_loss, val_acc, _ = loss_acc(val.x, val.lengths, val.y, zeros)
        if best is None or (val_acc, -float(val_loss)) > (best[0], -best[1]):
            best, best_state = (val_acc, float(val_loss), epoch), copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        _, _, logits = loss_acc(test.x, test.lengths, test.y, np.zeros(len(test.y), np.int32))
    predictions = logits.argmax(-1).numpy()
    final = predictions[np.arange(len(test.y)), test.lengths - 1]
    return {
        "best_epoch": best[2],
        "val_accuracy": best[0],
        "test_accuracy": float((final == test.y).mean()),
        "early_curve": early_curve(predictions, test).tolist(),
        "train_clips_per_s": train_clips / train_time if train_time else None,
    }


# --------------------------------------------------------------------------- report


def summarise(runs: dict) -> dict:
    out = {}
    for framework, records in runs.items():
        accs = [r["test_accuracy"] for r in records]
        speed = [r["train_clips_per_s"] for r in records if r["train_clips_per_s"]]
        out[framework] = {
            "test_accuracy_mean_std": mean_std(accs),
            "test_accuracy_per_seed": accs,
            "val_accuracy_per_seed": [r["val_accuracy"] for r in records],
            "best_epoch_per_seed": [r["best_epoch"] for r in records],
            "early_curve_mean": np.mean([r["early_curve"] for r in records], 0).tolist(),
            "train_clips_per_s": float(np.median(speed)) if speed else None,
        }
        if framework == "cojax":
            out[framework]["step_vs_clip_max_abs"] = max(r["step_vs_clip_max_abs"] for r in records)
    return out


def verdicts(models: dict) -> dict:
    """From the numbers: is the continual model as accurate as the PyTorch baseline
    (difference of means within 2 combined standard errors), and its FLOP cut."""
    out = {}
    for name, m in models.items():
        (a, sa), n_a = (
            m["cojax"]["test_accuracy_mean_std"],
            len(m["cojax"]["test_accuracy_per_seed"]),
        )
        if "torch" not in m:
            continue
        (b, sb), n_b = (
            m["torch"]["test_accuracy_mean_std"],
            len(m["torch"]["test_accuracy_per_seed"]),
        )
        se = math.sqrt(sa**2 / n_a + sb**2 / n_b)
        out[name] = {
            "accuracy_difference": a - b,
            "combined_standard_error": se,
            "same_accuracy": abs(a - b) <= 2 * se if se > 0 else abs(a - b) < 0.01,
            "flop_reduction": m["flops"]["reduction"],
        }
    return out


def table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        c = m["cojax"]
        t = m.get("torch")
        fmt = lambda ms: f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"  # noqa: E731
        rows.append([
            name,
            fmt(c["test_accuracy_mean_std"]),
            fmt(t["test_accuracy_mean_std"]) if t else "–",
            f"{m['flops']['clip_per_window'] / 1e6:.3f}",
            f"{m['flops']['continual_step'] / 1e6:.3f}",
            f"{m['flops']['reduction']:.1f}×",
            f"{c['train_clips_per_s']:.0f}" if c["train_clips_per_s"] else "–",
            f"{t['train_clips_per_s']:.0f}" if t and t["train_clips_per_s"] else "–",
            f"{c['step_vs_clip_max_abs']:.1e}",
        ])  # fmt: skip
    header = [
        "model", "cojax step acc. %", "PyTorch acc. %", "clip MFLOPs / pred.",
        "continual MFLOPs / pred.", "reduction", "cojax train clips/s", "torch train clips/s",
        "step vs clip max |Δ|",
    ]  # fmt: skip
    return markdown_table(header, rows)


def plot(models: dict, dataset: str, name: str, directory: Path | None = None) -> None:
    fig, (curve_ax, flops_ax) = figure(ncols=2)
    for i, (model, m) in enumerate(models.items()):
        curve = np.asarray(m["cojax"]["early_curve_mean"])
        frames = np.arange(1, len(curve) + 1)
        color = f"C{i}"
        curve_ax.plot(frames, 100 * curve, color=color, label=f"cojax {model} (step)")
        if "torch" in m:
            torch_curve = 100 * np.asarray(m["torch"]["early_curve_mean"])
            curve_ax.plot(frames, torch_curve, "--", color=color, label=f"PyTorch {model} (clip)")
        for kind, style in (("continual_step", "-"), ("clip_per_window", ":")):
            flops_ax.plot(frames * m["flops"][kind] / 1e6, 100 * curve, style, color=color,
                          label=f"{model} {kind.replace('_', ' ')}")  # fmt: skip
    curve_ax.set(
        xlabel="frames seen", ylabel="test accuracy (%)", title=f"{dataset}: early classification"
    )
    flops_ax.set(xscale="log", xlabel="cumulative MFLOPs (one prediction per frame)", ylabel="test accuracy (%)",
                 title="accuracy vs compute")  # fmt: skip
    curve_ax.legend(fontsize=7)
    flops_ax.legend(fontsize=7)
    save_figure(fig, name, directory)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="JapaneseVowels")
    parser.add_argument("--quick", action="store_true", help="one seed, 4 epochs (smoke run)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0, 1, …)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=None, help="results name (default from the data set)")
    parser.add_argument(
        "--results-dir", type=Path, default=None, help="default experiments/results"
    )
    args = parser.parse_args(argv)

    cfg = Config()
    if args.quick:
        cfg = dataclasses.replace(cfg, epochs=4, seeds=(0,))
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    names = [m for m in args.models.split(",") if m]
    if unknown := set(names) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}; choose from {MODELS}")

    data = load_splits(args.dataset, cfg.window, cfg.validation_fraction)
    fit, val, test, classes = data
    models = {}
    workdir = Path(tempfile.mkdtemp(prefix="cojax_online_"))
    try:
        for name in names:
            runs = {"cojax": [], "torch": []}
            for seed in cfg.seeds:
                record, flops = run_jax(name, data, cfg, seed, workdir)
                runs["cojax"].append(record)
                if not args.no_torch:
                    runs["torch"].append(run_torch(name, data, cfg, seed))
            models[name] = {**summarise({k: v for k, v in runs.items() if v}), "flops": flops}
            models[name]["runs"] = runs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    text = table(models)
    print(text)
    result = {
        "dataset": args.dataset,
        "data": {
            "channels": int(fit.x.shape[2]),
            "classes": [str(c) for c in classes],
            "train": len(fit.y),
            "validation": len(val.y),
            "test": len(test.y),
            "max_length": int(fit.x.shape[1] - cfg.window + 1),
        },  # fmt: skip
        "config": dataclasses.asdict(cfg),
        "quick": args.quick,
        "test_accuracy": {n: m["cojax"]["test_accuracy_mean_std"][0] for n, m in models.items()},
        "torch_test_accuracy": {
            n: m["torch"]["test_accuracy_mean_std"][0] for n, m in models.items() if "torch" in m
        },
        "verdicts": verdicts(models),
        "models": models,
        "table": text,
        "environment": environment(),
    }
    name = args.out or f"online_classification_{args.dataset}"
    print("wrote", write_json(name, result, args.results_dir))
    plot(models, args.dataset, name, args.results_dir)
    return result


if __name__ == "__main__":
    main()
