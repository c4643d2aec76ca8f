"""FLOPs per prediction vs sequence length: regular and continual softmax attention and
regular and continual Nyström attention (XLA-measured, beside the reference code's
formulas).

Configuration: E = 256, 4 heads (d = 64), float32, one stream; n ∈ {64, …, 1024} and m
∈ {4, 16, 64} landmarks (combinations with m >= n are skipped). One prediction is:
- regular attention: ordinary multi-head softmax self-attention re-run on the latest n
  tokens (all n rows, `multihead_self_attention`), and its newest-row-only variant (q
  and the output projection of one token, k and v of n);
- continual single-output attention: one `SingleOutputMultiheadAttention` step;
- regular Nyström: offline `NystromAttention` re-run on the window (all n rows);
- continual Nyström: one `ContinualNystromAttention` step through `NystromLayer`,
  fixed landmarks (single-output and retroactive) and updated landmarks (single-output).
Regular programs are counted with `jax.jit(f).lower(...).compile()` and
`co.compiled_flops`, continual steps with `co.flops`. Parameters and inputs are
ShapeDtypeStructs (`jax.eval_shape` of the inits): nothing is allocated.

Units: XLA counts a multiply and an add separately (and softmax / exp work); the reference's
per-head formulas count multiplications, so expect XLA ≈ 2 × formula.

The updated-landmark step picks its branch with `lax.cond` (replace a landmark and
rebuild the tree and kernel once every n/m steps, else write one leaf). XLA's cost
analysis charges a conditional the maximum of its branches (probed below on a toy cond),
i.e. the rare update branch on every step: the "as compiled" figure is the cost of an
update step. The other steps are counted by compiling the step again with `lax.cond`
replaced — inside this script only, while tracing — by a function that always takes the
keep branch; the amortised cost is ((n/m − 1)·keep + as compiled) / (n/m). (An
update-only compile is recorded as a cross-check.) Library code is not modified.

    .venv/bin/python experiments/nystrom_flops.py

Writes experiments/results/nystrom_flops.{json,md,png}.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import cojax as co
from cojax.layers import nystrom
from cojax.layers.attention import (
    SingleOutputMultiheadAttention,
    attend,
    multihead_self_attention,
    project_kv,
    project_out,
    project_q,
)
from cojax.layers.nystrom import ContinualNystromAttention, NystromAttention, NystromLayer

RESULTS = Path(__file__).resolve().parent / "results"
EMBED, HEADS = 256, 4
HEAD_DIM = EMBED // HEADS
LENGTHS = (64, 128, 256, 512, 1024)
LANDMARKS = (4, 16, 64)
KEY = jax.random.PRNGKey(0)
F32 = jnp.float32

REGULAR = "regular attention (n rows)"
REGULAR_ROW = "regular attention (newest row)"
SINGLE = "continual single-output attention"
NYSTROM = "regular Nyström (n rows)"
FIXED = "continual Nyström fixed, single-output"
FIXED_RETRO = "continual Nyström fixed, retroactive"
UPDATED = "continual Nyström updated, single-output (as compiled)"
UPDATED_AMORTISED = "continual Nyström updated, single-output (amortised)"
METHODS = (REGULAR, REGULAR_ROW, SINGLE, NYSTROM, FIXED, FIXED_RETRO, UPDATED, UPDATED_AMORTISED)

# --------------------------------------------------------------------------- XLA counts


def jit_flops(fn: Callable, *args: Any) -> float:
    """FLOPs XLA's cost analysis counts for `fn` compiled on `args` (specs)."""
    return co.compiled_flops(jax.jit(fn).lower(*args).compile())


def probe_cond() -> dict:
    """How XLA's cost analysis counts `lax.cond`: a toy with a 64×64 matmul in one
    branch and an elementwise add in the other, both branch orders."""
    x = jax.ShapeDtypeStruct((64, 64), F32)
    pred = jax.ShapeDtypeStruct((), jnp.bool_)

    def cheap(a):
        return a + 1.0

    def dear(a):
        return a @ a

    return {
        "cheap_branch": jit_flops(cheap, x),
        "dear_branch": jit_flops(dear, x),
        "cond(dear, cheap)": jit_flops(lambda p, a: lax.cond(p, dear, cheap, a), pred, x),
        "cond(cheap, dear)": jit_flops(lambda p, a: lax.cond(p, cheap, dear, a), pred, x),
    }


class _OneBranchLax:
    """`jax.lax` with `cond` always taking one branch (`update`: the true branch)."""

    def __init__(self, update: bool):
        self.update = update

    def cond(self, pred: Any, true_fn: Callable, false_fn: Callable, *operands: Any) -> Any:
        del pred
        return (true_fn if self.update else false_fn)(*operands)

    def __getattr__(self, name: str) -> Any:
        return getattr(lax, name)


@contextlib.contextmanager
def one_branch(update: bool) -> Iterator[None]:
    """While tracing inside this block, the Nyström module's `lax.cond` takes only the
    update (True) or only the keep (False) branch. Restored on exit."""
    original = nystrom.lax
    nystrom.lax = _OneBranchLax(update)
    try:
        yield
    finally:
        nystrom.lax = original


def step_flops(layer: Any, params: Any, frame: Any) -> float:
    """One step's FLOPs traced afresh (a new function object, so no cached trace)."""
    state = jax.eval_shape(layer.init_state, params, frame)
    return jit_flops(lambda p, s, f: layer.step(p, s, f), params, state, frame)


def regular_attention(n: int) -> dict:
    """Ordinary softmax attention on the window: all n rows and the newest row only."""
    layer = SingleOutputMultiheadAttention(EMBED, HEADS, n)
    params = jax.eval_shape(layer.init, KEY)
    window = jax.ShapeDtypeStruct((n, EMBED), F32)

    def newest_row(p, w):
        q = project_q(p, w[-1], HEADS)
        k, v = project_kv(p, w, HEADS)
        return project_out(p, attend(q[None], k, v)[0])

    return {
        REGULAR: jit_flops(lambda p, w: multihead_self_attention(p, w, HEADS), params, window),
        REGULAR_ROW: jit_flops(newest_row, params, window),
        SINGLE: co.flops(layer, params, jax.ShapeDtypeStruct((EMBED,), F32)),
    }


def regular_nystrom(n: int, m: int) -> float:
    """Offline Nyström attention re-run on the window (all n rows)."""
    module = NystromAttention(EMBED, HEADS, m)
    window = jax.ShapeDtypeStruct((n, EMBED), F32)
    variables = jax.eval_shape(module.init, KEY, window)
    return jit_flops(module.apply, variables, window)


def continual_nystrom(n: int, m: int, landmarks: str, retroactive: bool = False) -> NystromLayer:
    return NystromLayer(
        ContinualNystromAttention(
            EMBED, HEADS, m, sequence_len=n, landmarks=landmarks, retroactive=retroactive
        )
    )


def nystrom_steps(n: int, m: int) -> dict:
    """Continual Nyström steps: fixed (single-output, retroactive) and updated (as
    compiled, keep branch only, update branch only, amortised)."""
    frame = jax.ShapeDtypeStruct((EMBED,), F32)
    out = {}
    for name, retroactive in ((FIXED, False), (FIXED_RETRO, True)):
        layer = continual_nystrom(n, m, "fixed", retroactive)
        out[name] = co.flops(layer, jax.eval_shape(layer.init, KEY), frame)
    layer = continual_nystrom(n, m, "updated")
    params = jax.eval_shape(layer.init, KEY)
    out[UPDATED] = co.flops(layer, params, frame)
    with one_branch(update=False):
        keep = step_flops(layer, params, frame)
    with one_branch(update=True):
        update = step_flops(layer, params, frame)
    # An update step runs the compiled program's update path, which is what the cond
    # is charged (its max branch); the update-only compile is kept as a cross-check.
    period = n // m
    out[UPDATED_AMORTISED] = ((period - 1) * keep + out[UPDATED]) / period
    out["updated_keep_branch"], out["updated_update_branch"] = keep, update
    return out


# --------------------------------------------------------------------------- formulas


def spec_mults(method: str, n: int, m: int | None) -> float | None:
    """The reference code's multiplications per prediction: per-head formula × heads plus the
    projections (3E² in and E(E+1) out per projected token)."""
    d, E, H = HEAD_DIM, EMBED, HEADS
    step_proj, window_proj = 3 * E * E + E * (E + 1), n * (3 * E * E + E * (E + 1))
    if method == REGULAR:
        return H * (2 * n * n * d + 2 * n * d) + window_proj
    if method == SINGLE:
        return H * (2 * n * d + 2 * d) + step_proj
    if method == NYSTROM:
        head = 4 * n * d * m + 2 * n * d + n * m * m + 2 * n * m + d * m * m + 24 * m**3
        return H * (head + 23 * m * m) + window_proj
    if method == FIXED:
        return H * (8 * d * m + m * m + 6 * m) + step_proj
    if method == FIXED_RETRO:
        return H * (n * d * m + 8 * d * m + m * m + 8 * m) + 3 * E * E + n * E * (E + 1)
    return None


def ours_fixed_mults(n: int, m: int) -> float:
    """Multiplications of our fixed single-output step, read off the code: two logit
    products (q_land·k, q·k_land), log2(size) tree combines of m·(2d + 2), the root's
    normalisation (m·d), kernel @ root (m²·d), the row times it (m·d); projections."""
    d, E = HEAD_DIM, EMBED
    levels = max(0, (n - 1).bit_length())
    head = 2 * m * d + levels * m * (2 * d + 2) + m * d + m * m * d + m * d
    return HEADS * head + 3 * E * E + E * E


def ours_update_branch_mults(n: int, m: int) -> float:
    """Extra multiplications of one landmark update, from the code: logits of the n
    keys against Q̃ (n·m·d), a tree build (size − 1 combines of m·(2d + 2)), the middle
    kernel softmax(Q̃ K̃ᵀ) (m²·d) and its pseudo-inverse (6 iterations × 4 m×m products)."""
    d = HEAD_DIM
    size = 1 << max(0, (n - 1).bit_length())
    head = n * m * d + (size - 1) * m * (2 * d + 2) + m * m * d + 24 * m**3
    return HEADS * head


# --------------------------------------------------------------------------- driver


def measure() -> list[dict]:
    """All rows: (method, n, m) with XLA MFLOPs, spec M multiplications, extras."""
    rows = []

    def add(method, n, m, flops, compile_s, **extra):
        spec = spec_mults(method, n, m)
        rows.append(
            {
                "method": method,
                "n": n,
                "m": m,
                "xla_mflops": flops / 1e6,
                "spec_mmults": None if spec is None else spec / 1e6,
                "compile_s": round(compile_s, 2),
                **extra,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    for n in LENGTHS:
        t0 = time.perf_counter()
        regular = regular_attention(n)
        seconds = (time.perf_counter() - t0) / len(regular)  # mean over the group
        for method, flops in regular.items():
            add(method, n, None, flops, seconds)
        for m in LANDMARKS:
            if m >= n:
                continue
            t0 = time.perf_counter()
            add(NYSTROM, n, m, regular_nystrom(n, m), time.perf_counter() - t0)
            t0 = time.perf_counter()
            steps = nystrom_steps(n, m)
            seconds = (time.perf_counter() - t0) / 5  # five compiles
            keep, update = steps.pop("updated_keep_branch"), steps.pop("updated_update_branch")
            for method, flops in steps.items():
                add(method, n, m, flops, seconds, **nystrom_extras(method, n, m, keep, update))
    return rows


def nystrom_extras(method: str, n: int, m: int, keep: float, update: float) -> dict:
    """Analytic counts of our code and the branch-only compiles, per row."""
    if method == FIXED:
        return {"ours_mmults": ours_fixed_mults(n, m) / 1e6}
    if method not in (UPDATED, UPDATED_AMORTISED):
        return {}
    period, extra = n // m, ours_update_branch_mults(n, m)
    return {
        "keep_branch_mflops": keep / 1e6,
        "update_only_mflops": update / 1e6,
        "update_period": period,
        "update_extra_mmults": extra / 1e6,
        "ours_mmults": (ours_fixed_mults(n, m) + extra / period) / 1e6
        if method == UPDATED_AMORTISED
        else None,
    }


def lookup(rows: list[dict], method: str, m: int | None, n: int, key: str) -> float | None:
    for r in rows:
        if r["method"] == method and r["m"] == m and r["n"] == n:
            return r.get(key)
    return None


def series(rows: list[dict]) -> list[tuple[str, int | None]]:
    """(method, m) pairs in table order."""
    return list(dict.fromkeys((r["method"], r["m"]) for r in rows))


def header() -> list[str]:
    """Header of a method × m by n table."""
    return [
        "| method | m | " + " | ".join(f"n = {n}" for n in LENGTHS) + " |",
        "|---|---|" + "---|" * len(LENGTHS),
    ]


def body(rows: list[dict], key: str, digits: int = 3, label: str | None = None) -> list[str]:
    """Table lines of `key` per (method, m) of `rows`, labelled `label` or the method;
    series without any value are left out."""
    lines = []
    for method, m in series(rows):
        cells = [lookup(rows, method, m, n, key) for n in LENGTHS]
        if all(c is None for c in cells):
            continue
        text = ["—" if c is None else f"{c:.{digits}f}" for c in cells]
        lines.append(f"| {label or method} | {m if m else '—'} | " + " | ".join(text) + " |")
    return lines


def grid(rows: list[dict], key: str) -> str:
    """Markdown table: rows method × m, columns n, cells `key`."""
    return "\n".join(header() + body(rows, key))


def reductions(rows: list[dict], n: int = LENGTHS[-1]) -> list[dict]:
    """Regular attention (n rows) / each method at sequence length n."""
    regular = lookup(rows, REGULAR, None, n, "xla_mflops")
    spec_regular = lookup(rows, REGULAR, None, n, "spec_mmults")
    out = []
    for method, m in series(rows):
        if method == REGULAR:
            continue
        xla = lookup(rows, method, m, n, "xla_mflops")
        spec = lookup(rows, method, m, n, "spec_mmults")
        out.append(
            {
                "method": method,
                "m": m,
                "n": n,
                "xla_reduction": regular / xla,
                "spec_reduction": None if spec is None else spec_regular / spec,
            }
        )
    return out


def growth(rows: list[dict]) -> list[dict]:
    """XLA FLOPs at the largest n over the smallest n each method was measured at."""
    out = []
    for method, m in series(rows):
        have = [n for n in LENGTHS if lookup(rows, method, m, n, "xla_mflops") is not None]
        first, last = have[0], have[-1]
        ratio = lookup(rows, method, m, last, "xla_mflops") / lookup(
            rows, method, m, first, "xla_mflops"
        )
        out.append({"method": method, "m": m, "from_n": first, "to_n": last, "ratio": ratio})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(METHODS, plt.get_cmap("tab10").colors))
    styles = {None: "-", 4: ":", 16: "--", 64: "-."}
    fig, ax = plt.subplots(figsize=(14, 7))
    for method, m in series(rows):
        ns = [n for n in LENGTHS if lookup(rows, method, m, n, "xla_mflops") is not None]
        ys = [lookup(rows, method, m, n, "xla_mflops") for n in ns]
        label = method if m is None else f"{method}, m={m}"
        ax.plot(ns, ys, styles[m], marker="o", ms=3, color=colours[method], label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("MFLOPs per prediction (XLA cost analysis)")
    ax.set_title(f"Attention FLOPs per prediction, E = {EMBED}, {HEADS} heads, float32")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cond_verdict(cond: dict) -> str:
    """What the toy probe shows XLA charges a conditional."""
    cheap, dear = cond["cheap_branch"], cond["dear_branch"]
    charged = (cond["cond(dear, cheap)"], cond["cond(cheap, dear)"])
    if all(abs(c - dear) <= 0.01 * dear for c in charged):
        return "max over branches"
    if all(abs(c - cheap - dear) <= 0.01 * dear for c in charged):
        return "sum of branches"
    return f"neither max nor sum: {charged}"


def headline(rows: list[dict]) -> str:
    """The n = max reductions of the continual Nyström fixed single-output step."""
    n = LENGTHS[-1]
    parts = [
        f"m = {r['m']}: {r['xla_reduction']:.0f}× (spec formulas {r['spec_reduction']:.0f}×)"
        for r in reductions(rows)
        if r["method"] == FIXED
    ]
    return (
        f"**Headline.** At n = {n}, regular attention (all n rows re-run per prediction) / "
        f"continual Nyström with fixed landmarks (single-output step), XLA-counted: "
        + "; ".join(parts)
        + ". The paper's 'up to three orders of magnitude' holds for m <= 16 here; at "
        "m = 64 it is a few hundred. Most of the small-m step is the 4E² projections of "
        "one token, which every continual method pays. XLA's count of the segment "
        "tree's gather / scatter grows with the tree (see notes); measured step times "
        "are flat in n (`nystrom_step_time.py`)."
    )


def report(rows: list[dict], cond: dict, meta: dict) -> str:
    n = LENGTHS[-1]
    updated = [r for r in rows if r["method"] == UPDATED]
    lines = [
        f"# Nyström attention FLOPs per prediction (E = {EMBED}, {HEADS} heads, d = "
        f"{HEAD_DIM}, float32)",
        "",
        "Generated by `experiments/nystrom_flops.py`.",
        "",
        headline(rows),
        "",
        "## XLA cost analysis, MFLOPs per prediction (multiplies and adds counted apart)",
        "",
        grid(rows, "xla_mflops"),
        "",
        "## Spec formulas, M multiplications per prediction",
        "",
        "Per-head formula × heads + projections (3E² in and E(E+1) out per projected "
        "token); XLA ≈ 2 × these where multiply-adds dominate.",
        "",
        grid(rows, "spec_mmults"),
        "",
        f"## Reduction at n = {n}: regular attention (n rows) / method",
        "",
        "| method | m | XLA | spec formulas |",
        "|---|---|---|---|",
    ]
    for r in reductions(rows):
        spec = "—" if r["spec_reduction"] is None else f"{r['spec_reduction']:.0f}×"
        lines.append(f"| {r['method']} | {r['m'] or '—'} | {r['xla_reduction']:.0f}× | {spec} |")
    lines += [
        "",
        "## Growth in n: XLA FLOPs at the largest / at the smallest n measured",
        "",
        "| method | m | n range | ratio |",
        "|---|---|---|---|",
    ]
    for g in growth(rows):
        lines.append(
            f"| {g['method']} | {g['m'] or '—'} | {g['from_n']}→{g['to_n']} | {g['ratio']:.2f}× |"
        )
    lines += [
        "",
        "## Our code's multiplications (M), read off the code",
        "",
        "Fixed single-output step (the reference's 8dm + m² + 6m per head is flat in n) and the "
        "updated step amortised (keep step + one update / (n/m)):",
        "",
        grid([r for r in rows if r["method"] in (FIXED, UPDATED_AMORTISED)], "ours_mmults"),
        "",
        "## Updated landmarks: the two branches (XLA MFLOPs per step)",
        "",
        *header(),
        *body(updated, "keep_branch_mflops", label="keep-branch-only compile"),
        *body(updated, "xla_mflops", label="as compiled (= an update step)"),
        *body(updated, "update_only_mflops", label="update-branch-only compile"),
        *body(updated, "update_extra_mmults", label="one update: analytic extra M mults"),
        "",
        "## How XLA counts `lax.cond`",
        "",
        f"Toy probe: cheap branch {cond['cheap_branch']:.0f}, dear branch "
        f"{cond['dear_branch']:.0f}, cond(dear, cheap) {cond['cond(dear, cheap)']:.0f}, "
        f"cond(cheap, dear) {cond['cond(cheap, dear)']:.0f} FLOPs: XLA charges a "
        f"conditional the **{cond_verdict(cond)}** (in either order), not the branch taken "
        "(unknowable statically). The updated-landmark step as compiled is therefore "
        "charged its landmark update on every step; it equals the cost of an update step. "
        "The 'amortised' row also compiles the step with `lax.cond` forced to the keep "
        "branch (patched while tracing, in this script only) and averages "
        "((n/m − 1)·keep + as compiled) / (n/m).",
        "",
        *NOTES,
        "",
        f"jax {meta['jax']}, backend {meta['backend']}, {meta['total_s']:.0f} s in all.",
    ]
    return "\n".join(lines)


NOTES = [
    "## Notes",
    "",
    "- Regular attention: per-head n² terms (2n²·E multiplications over the heads) pass "
    "the 4n·E² projections at n = 2E = 512, so over 64 → 1024 it grows between linear "
    "(16×) and quadratic (256×): see the growth table.",
    "- Our continual Nyström keeps softmax(Q̃ Kᵀ) V as a log-sum-exp segment tree over the "
    "window (stable: nothing subtracted, no drift). A step re-combines log2(n) nodes of "
    "m·(2d + 2) multiplications per head, so the fixed-landmark step grows with log n "
    "on that term instead of being flat like the paper's O(m·d). The step reads the "
    "path's siblings with one gather and writes the new path with one scatter (in "
    "place); XLA's cost analysis charges these more as the tree grows (0.08 M at n = 64, "
    "0.46 M at 256, 0.70 M at 1024 for m = 16, against 0.05–0.09 M of combines), while "
    "the measured step time stays flat: 0.15–0.29 ms for n = 64…1024 at m = 4 and 16 "
    "(experiments/nystrom_step_time.py; exact single-output attention 0.10 → 0.41 ms).",
    "- A single-output step multiplies the new row by the m×m kernel first (m² + m·d "
    "per head, the paper's order); the retroactive step multiplies kernel · root once "
    "(m²·d) and then all n rows.",
    "- The retroactive fixed step multiplies and re-projects all n output rows "
    "(n·(m·d·H + E(E+1))), so it grows ~n: only ~10× below regular attention at n = 1024.",
    "- Updated landmarks: the as-compiled figure grows ~n (the update rebuilds all n "
    "leaves: n·m·d logits and a whole tree; at m = 64 the 24m³ pseudo-inverse dominates). "
    "Amortised over n/m steps the update adds ≈ 3m²·d + (m³·d + 24m⁴)/n per head "
    "(logits, tree build; kernel and pseudo-inverse), which falls with n: at m = 64 the "
    "amortised step gets cheaper as n grows.",
    "- At n = 64 the update-branch-only compile counts a few % more than the as-compiled "
    "step (XLA fuses the inlined tree build into several consumers); for n >= 128 they "
    "agree to a few FLOPs.",
    "- Regular Nyström with m = 64 at n = 128 costs more than exact attention.",
]


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    cond = probe_cond()
    print(json.dumps(cond), flush=True)
    rows = measure()
    meta = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.processor() or platform.machine(),
        "embed_dim": EMBED,
        "num_heads": HEADS,
        "head_dim": HEAD_DIM,
        "dtype": "float32",
        "units": "xla_mflops: XLA cost analysis (multiplies and adds counted separately); "
        "spec_mmults / ours_mmults: multiplications",
        "cond_counting": cond_verdict(cond),
        "total_s": time.perf_counter() - t0,
    }
    result = {
        "meta": meta,
        "cond_probe": cond,
        "rows": rows,
        "reductions_at_max_n": reductions(rows),
        "growth": growth(rows),
    }
    (RESULTS / "nystrom_flops.json").write_text(json.dumps(result, indent=2))
    text = report(rows, cond, meta)
    (RESULTS / "nystrom_flops.md").write_text(text + "\n")
    plot(rows, RESULTS / "nystrom_flops.png")
    print(text)
    print(f"total {math.ceil(meta['total_s'])} s")


if __name__ == "__main__":
    main()
