"""FLOPs per prediction of the continual ST-GCN family against the paper's table.

XLA's cost analysis of the compiled programs (`co.clip_flops`, `co.flops`; a multiply
and an add count one each, so ÷2 gives multiply-add equivalents, the paper's unit) for
NTU RGB+D (25 joints, 2 persons, 60 classes):
- clip: the clip network (`forward`) on a 300-frame clip: one prediction;
- step: one `step`; a regular model predicts every `stride` = 4 frames, so a prediction
  costs 4 steps; a * model predicts every frame;
- "skipping" step (regular models only): what a step that ran each block only on the
  frames where that block has an input would cost: each block's own step FLOPs times
  the frames it runs per prediction (blocks 1-5 every frame, 6-8 every 2nd, 9-10 every
  4th), plus data BN and the head;
- "reference convention" step (regular models only): what continual-skeletons
  profiles (its `models/base.py`: `forward_steps` over `stride` frames of the
  continual-inference network, after a warm-up), where a strided temporal conv (and
  the strided 1×1 residual conv, with their BNs) computes only on the steps it emits:
  the skipping step minus, in each strided block, (1 - 1/s) of those parts' runs.

    python experiments/stgcn_flops.py

Writes experiments/results/stgcn_flops.{json,md,png}.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import jax.numpy as jnp

import cojax as co
from cojax.models.stgcn import skeleton_net

RESULTS = Path(__file__).resolve().parent / "results"
# Paper (Pattern Recognition 2023), GFLOPs per prediction: clip / continual / continual*.
PAPER = {"st_gcn": (16.73, 0.27, 0.16), "a_gcn": (18.69, 0.30, 0.17), "s_tr": (16.14, 0.22, 0.15)}
NAMES = {"st_gcn": ("ST-GCN", "CoST-GCN"), "a_gcn": ("AGCN", "CoA-GCN"), "s_tr": ("S-TR", "CoS-TR")}
FRAME = (2, 25, 3)
TOLERANCE = 0.15


def _zeros(model):
    specs = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), specs)


def skipping_step_flops(model, params) -> float:
    """Σ over blocks of (block step FLOPs) × (frames it runs per prediction) + ends."""
    per_prediction = model.stride
    data_bn, layers, head = (layer for _, layer in model.children)
    total = per_prediction * co.flops(data_bn, params["data_bn"], jnp.zeros(FRAME))
    rate, channels = 1, FRAME[-1]
    for name, block in layers.children:
        frame = jnp.zeros((*FRAME[:-1], channels))
        total += per_prediction // rate * co.flops(block, params["layers"][name], frame)
        rate *= block.stride
        channels = _width(block)
    total += co.flops(head, params["head"], jnp.zeros((*FRAME[:-1], channels)))
    return total


def reference_convention_step_flops(model, params, skipping: float) -> float:
    """The skipping step with each strided block's strided parts (temporal conv + BN,
    residual conv + BN) counted at the block's output rate instead of its input rate."""
    per_prediction = model.stride
    _, layers, _ = (layer for _, layer in model.children)
    total, rate, channels = skipping, 1, FRAME[-1]
    for name, block in layers.children:
        s = block.stride
        if s > 1:
            outer = dict(dict(block.children)["sum"].children)
            main = dict(outer["main"].children)
            width = _width(block)
            block_params = params["layers"][name]["sum"]
            tcn = co.flops(
                main["tcn"], block_params["main"]["tcn"], jnp.zeros((*FRAME[:-1], width))
            )
            residual = co.flops(
                outer["residual"], block_params["residual"], jnp.zeros((*FRAME[:-1], channels))
            )
            runs = per_prediction // rate
            total -= runs * (1 - 1 / s) * (tcn + residual)
        rate *= s
        channels = _width(block)
    return total


def _width(block) -> int:
    """A block's output channels: its temporal conv's."""
    main = dict(block.children)
    if "sum" in main:
        main = dict(dict(dict(main["sum"].children)["main"].children))
    return dict(main["tcn"].children)["conv"].out_channels


def measure(variant: str) -> dict:
    regular, star = skeleton_net(variant), skeleton_net(variant, mod=True)
    params, star_params = _zeros(regular), _zeros(star)
    t0 = time.perf_counter()
    clip = co.clip_flops(regular, params, jnp.zeros((300, *FRAME)))
    step = co.flops(regular, params, jnp.zeros(FRAME))
    star_step = co.flops(star, star_params, jnp.zeros(FRAME))
    skipping = skipping_step_flops(regular, params)
    reference = reference_convention_step_flops(regular, params, skipping)
    paper = PAPER[variant]
    row = {
        "variant": variant,
        "clip_gmac_eq": clip / 2e9,
        "step_gmac_eq_per_prediction": step * regular.stride / 2e9,
        "skipping_step_gmac_eq_per_prediction": skipping / 2e9,
        "reference_convention_step_gmac_eq_per_prediction": reference / 2e9,
        "star_step_gmac_eq": star_step / 2e9,
        "paper_gflops": {"clip": paper[0], "continual": paper[1], "continual_star": paper[2]},
        "compile_s": round(time.perf_counter() - t0, 1),
    }
    row["rel_dev"] = {
        "clip": row["clip_gmac_eq"] / paper[0] - 1,
        "continual_as_run": row["step_gmac_eq_per_prediction"] / paper[1] - 1,
        "continual_skipping": row["skipping_step_gmac_eq_per_prediction"] / paper[1] - 1,
        "continual_reference_convention": row["reference_convention_step_gmac_eq_per_prediction"]
        / paper[1]
        - 1,
        "continual_star": row["star_step_gmac_eq"] / paper[2] - 1,
    }
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| model | ours (GMAC-eq = XLA GFLOPs ÷ 2) | paper GFLOPs | deviation |",
        "|---|---|---|---|",
    ]
    for r in rows:
        clip_name, co_name = NAMES[r["variant"]]
        p, d = r["paper_gflops"], r["rel_dev"]
        for label, ours, paper, dev in (
            (f"{clip_name} (300-frame clip)", r["clip_gmac_eq"], p["clip"], d["clip"]),
            (f"{co_name}, step as run (every layer every frame) × 4", r["step_gmac_eq_per_prediction"], p["continual"], d["continual_as_run"]),
            (f"{co_name}, layers only on their input frames", r["skipping_step_gmac_eq_per_prediction"], p["continual"], d["continual_skipping"]),
            (f"{co_name}, strided convs only on their output frames (the reference's profile)", r["reference_convention_step_gmac_eq_per_prediction"], p["continual"], d["continual_reference_convention"]),
            (f"{co_name}*", r["star_step_gmac_eq"], p["continual_star"], d["continual_star"]),
        ):  # fmt: skip
            ok = "✓" if abs(dev) <= TOLERANCE else "✗"
            lines.append(f"| {label} | {ours:.3f} | {paper:.2f} | {dev:+.1%} {ok} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, ours, paper = [], [], []
    for r in rows:
        clip_name, co_name = NAMES[r["variant"]]
        for label, o, p in (
            (clip_name, r["clip_gmac_eq"], r["paper_gflops"]["clip"]),
            (co_name, r["skipping_step_gmac_eq_per_prediction"], r["paper_gflops"]["continual"]),
            (co_name + "*", r["star_step_gmac_eq"], r["paper_gflops"]["continual_star"]),
        ):
            labels.append(label)
            ours.append(o)
            paper.append(p)
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], ours, 0.4, label="cojax (XLA ÷ 2)")
    ax.bar([i + 0.2 for i in x], paper, 0.4, label="paper")
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels, rotation=45, ha="right")
    ax.set_ylabel("G(MAC) per prediction")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    rows = []
    for variant in PAPER:
        rows.append(measure(variant))
        print(f"{variant}: measured in {rows[-1]['compile_s']} s", flush=True)
    text = table(rows)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "jax": jax.__version__,
        "machine": platform.processor() or platform.machine(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (RESULTS / "stgcn_flops.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "stgcn_flops.md").write_text(text + "\n")
    plot(rows, RESULTS / "stgcn_flops.png")
    print(f"wrote {RESULTS}/stgcn_flops.{{json,md,png}}")


if __name__ == "__main__":
    main()
