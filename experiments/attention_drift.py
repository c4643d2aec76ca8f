"""No drift: continual attention after 100 000 steps still equals a fresh sliding window.

cojax's `RetroactiveMultiheadAttention(E=64, H=4, N=32)` and
`SingleOutputMultiheadAttention` (same parameters: random weights, random non-zero
biases) stream random float32 tokens through `layer.step` under `jax.lax.scan`, in
jitted chunks of 5 000 steps that carry the state from one chunk to the next. Tokens are
drawn per chunk with `jax.random.fold_in(key, chunk)`, so every window is known again
for the reference. Inside the scan only a few outputs per chunk are kept (the chunk end,
the named checkpoints 1 000 / 10 000 / 50 000 / 100 000 and 16 evenly spaced samples);
each is compared with a fresh float64 numpy computation (max-subtracted softmax) on the
window of the last N tokens: relative error = max |err| / max |expected| over the N×E
retroactive output (and over the single-output row).

Two scales:
- "moderate": in-projection ×2, tokens ×1.5 (|logits| of a few tens), 100 000 steps;
- "large": in-projection ×4, tokens ×3 (|logits| of several hundred), 20 000 steps.

Beside the float64 reference, every kept window is also computed afresh in float32
(`multihead_self_attention`): its own error against float64 is the float32 floor, and
cojax's distance to it shows that nothing accumulates. (With in-projection ×6 and
tokens ×4, |logits| reach ~1 600 at E = 64 and even the fresh float32 computation is
~2e-5 away from float64: the logits' own rounding, |s|·2^-24, sets that floor.)

The PyTorch reference, `continual.RetroactiveMultiheadAttention` (continual-inference
1.2.4, same weights in torch's layout), runs `forward_step` over the same tokens (within
a time budget) and is compared at the same steps. It keeps raw exponentials and
subtracts the leaving key's terms from running sums, so its error is reported per
checkpoint and, at the large scale, the first step whose output is inf / NaN.

    .venv/bin/python experiments/attention_drift.py [--torch-budget 60]

Writes experiments/results/attention_drift.json. The machine may be shared: the load
average at the start and end is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import continual
import jax
import jax.numpy as jnp
import numpy as np
import torch
from harness import environment
from jax import lax

from cojax.layers.attention import (
    RetroactiveMultiheadAttention,
    SingleOutputMultiheadAttention,
    multihead_self_attention,
)

RESULTS = Path(__file__).resolve().parent / "results"
E, H, N = 64, 4, 32
CHUNK = 5_000
SAMPLES_PER_CHUNK = 16
PICKS = SAMPLES_PER_CHUNK + 4  # fixed number of kept outputs per chunk (padded with -1)
NAMED = (1_000, 10_000, 50_000, 100_000)
TOLERANCE = 1e-5  # vs the float64 reference
FRESH_TOLERANCE = 1e-6  # vs the fresh float32 computation on the same window
SCENARIOS = {
    "moderate": {"in_scale": 2.0, "token_scale": 1.5, "steps": 100_000},
    "large": {"in_scale": 4.0, "token_scale": 3.0, "steps": 20_000},
}

# --------------------------------------------------------------------------- inputs


def make_params(in_scale: float, seed: int = 0) -> dict:
    """`init` with random non-zero biases; the in-projection kernel scaled by `in_scale`
    (the logits by ~in_scale²)."""
    params = RetroactiveMultiheadAttention(E, H, N).init(jax.random.PRNGKey(seed))
    k_in, k_out = jax.random.split(jax.random.PRNGKey(seed + 1))
    params["in_proj"]["kernel"] = params["in_proj"]["kernel"] * in_scale
    params["in_proj"]["bias"] = 0.3 * jax.random.normal(k_in, (3 * E,), jnp.float32)
    params["out_proj"]["bias"] = 0.3 * jax.random.normal(k_out, (E,), jnp.float32)
    return params


def chunk_tokens(key: jax.Array, chunk: int, scale: float) -> np.ndarray:
    """The `CHUNK` float32 tokens of chunk `chunk`, deterministic in (key, chunk)."""
    x = jax.random.normal(jax.random.fold_in(key, chunk), (CHUNK, E), jnp.float32)
    return np.array(scale * x, np.float32)  # a writable copy (torch.from_numpy warns otherwise)


def chunk_picks(chunk: int, steps: int) -> np.ndarray:
    """Local indices (0-based, padded with -1 to `PICKS`) of the steps kept in a chunk.

    Global step g (1-based: g tokens consumed) is local index g - 1 - chunk·CHUNK. Kept:
    evenly spaced samples, the chunk end and the named checkpoints; only steps >= N
    (the first full window) and <= `steps`.
    """
    first, last = chunk * CHUNK + 1, min((chunk + 1) * CHUNK, steps)
    samples = np.linspace(first, last, SAMPLES_PER_CHUNK + 1)[1:].round().astype(int)
    named = [g for g in NAMED if first <= g <= last]
    chosen = sorted({int(g) for g in (*samples, *named, last) if g >= N})
    local = np.full(PICKS, -1, np.int32)
    local[: len(chosen)] = np.asarray(chosen, np.int32) - first
    return local


# --------------------------------------------------------------------------- reference


def reference(params64: dict, window: np.ndarray) -> tuple[np.ndarray, float]:
    """Multi-head self-attention on one window in float64 numpy (max-subtracted softmax).

    Returns the `(N, E)` output and the largest |logit| (scaled q·k) in the window.
    """
    y = window @ params64["in_proj"]["kernel"] + params64["in_proj"]["bias"]
    q, k, v = (a.reshape(len(window), H, -1) for a in np.split(y, 3, axis=-1))
    s = np.einsum("lhd,shd->hls", q / np.sqrt(q.shape[-1]), k)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("hls,shd->lhd", w, v).reshape(len(window), -1)
    out = o @ params64["out_proj"]["kernel"] + params64["out_proj"]["bias"]
    return out, float(np.abs(s).max())


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max |expected| (inf when `got` is not finite)."""
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@jax.jit
def fresh_float32(params: dict, window: jax.Array) -> jax.Array:
    """The plain float32 computation on one window (cojax's `multihead_self_attention`)."""
    return multihead_self_attention(params, window, H)


class References:
    """Sliding-window outputs of one scenario, computed once per kept step: the float64
    reference, its max |logit| and the fresh float32 computation (the float32 floor)."""

    def __init__(self, params: dict, key: jax.Array, token_scale: float):
        self.params = params
        self.params64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
        self.key, self.token_scale = key, token_scale
        self.cache: dict[int, tuple[np.ndarray, float, np.ndarray]] = {}
        self._history: tuple[int, np.ndarray] | None = None

    def history(self, chunk: int) -> np.ndarray:
        """The last N - 1 tokens of chunk - 1 followed by the tokens of `chunk`."""
        if self._history is None or self._history[0] != chunk:
            tokens = chunk_tokens(self.key, chunk, self.token_scale)
            prev = (
                chunk_tokens(self.key, chunk - 1, self.token_scale)[-(N - 1) :]
                if chunk > 0
                else np.zeros((N - 1, E), np.float32)
            )
            self._history = (chunk, np.concatenate([prev, tokens]))
        return self._history[1]

    def at(self, step: int) -> tuple[np.ndarray, float, np.ndarray]:
        """(float64 expected `(N, E)`, max |logit|, fresh float32 `(N, E)`) for the window
        ending at global step `step`."""
        if step not in self.cache:
            chunk, i = divmod(step - 1, CHUNK)
            window = self.history(chunk)[i : i + N]
            with jax.default_matmul_precision("highest"):
                fresh = np.asarray(fresh_float32(self.params, jnp.asarray(window)))
            self.cache[step] = (*reference(self.params64, window.astype(np.float64)), fresh)
        return self.cache[step]


# --------------------------------------------------------------------------- cojax


def cojax_chunk_runner():
    """A jitted `(params, states, tokens, picks) -> (states, kept retro, kept single)`.

    Scans both layers' `step` over one chunk; the outputs at the local indices `picks`
    are written into `(PICKS, N, E)` / `(PICKS, E)` buffers in the carry, nothing else
    is kept.
    """
    retro = RetroactiveMultiheadAttention(E, H, N)
    single = SingleOutputMultiheadAttention(E, H, N)

    def run(params, states, tokens, picks):
        def body(carry, xs):
            (rs, ss), kept_r, kept_s = carry
            i, frame = xs
            rs, (yr, _) = retro.step(params, rs, frame)
            ss, (ys, _) = single.step(params, ss, frame)
            hit = picks == i
            j, keep = jnp.argmax(hit), hit.any()
            kept_r = lax.dynamic_update_index_in_dim(kept_r, jnp.where(keep, yr, kept_r[j]), j, 0)
            kept_s = lax.dynamic_update_index_in_dim(kept_s, jnp.where(keep, ys, kept_s[j]), j, 0)
            return ((rs, ss), kept_r, kept_s), None

        init = (states, jnp.zeros((PICKS, N, E), tokens.dtype), jnp.zeros((PICKS, E), tokens.dtype))
        steps = jnp.arange(tokens.shape[0], dtype=jnp.int32)
        (states, kept_r, kept_s), _ = lax.scan(body, init, (steps, tokens))
        return states, kept_r, kept_s

    def init_states(params):
        frame = jnp.zeros((E,), jnp.float32)
        return retro.init_state(params, frame), single.init_state(params, frame)

    return jax.jit(run, donate_argnums=1), init_states


def stream_cojax(runner, init_states, params, scenario: dict, refs: References) -> dict:
    """Stream a scenario through cojax; errors at every kept step and timings."""
    key, steps = refs.key, scenario["steps"]
    states = init_states(params)
    records, run_s, compile_s = [], 0.0, 0.0
    with jax.default_matmul_precision("highest"):
        t0 = time.perf_counter()
        compiled = runner.lower(
            params, states, jnp.zeros((CHUNK, E)), jnp.zeros(PICKS, jnp.int32)
        ).compile()
        compile_s = time.perf_counter() - t0
    for chunk in range(-(-steps // CHUNK)):
        tokens, picks = chunk_tokens(key, chunk, scenario["token_scale"]), chunk_picks(chunk, steps)
        t0 = time.perf_counter()
        states, kept_r, kept_s = jax.block_until_ready(
            compiled(params, states, jnp.asarray(tokens), jnp.asarray(picks))
        )
        run_s += time.perf_counter() - t0
        kept_r, kept_s = np.asarray(kept_r), np.asarray(kept_s)
        for slot, i in enumerate(picks):
            if i >= 0:
                records.append(
                    _cojax_record(chunk * CHUNK + int(i) + 1, kept_r[slot], kept_s[slot], refs)
                )
    return {
        "records": records,
        "steps": steps,
        "compile_s": compile_s,
        "run_s": run_s,
        "us_per_step": 1e6 * run_s / steps,
    }


def _cojax_record(step: int, retro: np.ndarray, single: np.ndarray, refs: References) -> dict:
    expected, max_logit, fresh = refs.at(step)
    return {
        "step": step,
        "retroactive_rel_err": relative_error(retro, expected),
        "single_output_rel_err": relative_error(single, expected[-1]),
        "fresh_float32_rel_err": relative_error(fresh, expected),
        "fresh_float32_row_rel_err": relative_error(fresh[-1], expected[-1]),
        "retroactive_vs_fresh_float32": relative_error(retro, fresh),
        "max_abs_expected": float(np.abs(expected).max()),
        "max_abs_logit": max_logit,
        "finite": bool(np.isfinite(retro).all() and np.isfinite(single).all()),
    }


# --------------------------------------------------------------------------- torch


def torch_reference(params: dict) -> continual.RetroactiveMultiheadAttention:
    """continual-inference's retroactive MHA with cojax's weights in torch's layout."""
    ref = continual.RetroactiveMultiheadAttention(E, H, sequence_len=N, batch_first=True)
    weights = {
        "in_proj_weight": params["in_proj"]["kernel"].T,
        "in_proj_bias": params["in_proj"]["bias"],
        "out_proj.weight": params["out_proj"]["kernel"].T,
        "out_proj.bias": params["out_proj"]["bias"],
    }
    with torch.no_grad():
        for name, value in weights.items():
            ref.get_parameter(name).copy_(torch.from_numpy(np.array(value, np.float32)))
    return ref.eval()


def stream_torch(params, scenario: dict, refs: References, budget_s: float) -> dict:
    """`forward_step` over the scenario's tokens until done or past `budget_s` (checked
    at chunk ends); errors at the kept steps, every step checked for inf / NaN."""
    ref = torch_reference(params)
    records, non_finite, first_non_finite, done = [], 0, None, 0
    started = time.perf_counter()
    with torch.no_grad():
        for chunk in range(-(-scenario["steps"] // CHUNK)):
            if time.perf_counter() - started > budget_s:
                break
            tokens = torch.from_numpy(chunk_tokens(refs.key, chunk, scenario["token_scale"]))
            picks = {int(i) for i in chunk_picks(chunk, scenario["steps"]) if i >= 0}
            for i in range(min(CHUNK, scenario["steps"] - chunk * CHUNK)):
                out = ref.forward_step(tokens[i : i + 1])
                step = chunk * CHUNK + i + 1
                if out is not None and not bool(torch.isfinite(out).all()):
                    non_finite += 1
                    first_non_finite = first_non_finite or step
                if i in picks:
                    records.append(_torch_record(step, out[0].numpy(), refs))
                done = step
    elapsed = time.perf_counter() - started
    return {
        "records": records,
        "steps": done,
        "run_s": elapsed,
        "us_per_step": 1e6 * elapsed / max(done, 1),
        "first_non_finite_step": first_non_finite,
        "non_finite_steps": non_finite,
        "valid_steps": max(done - N + 1, 0),
    }


def _torch_record(step: int, out: np.ndarray, refs: References) -> dict:
    expected, max_logit, _ = refs.at(step)
    return {
        "step": step,
        "rel_err": relative_error(out, expected),
        "finite": bool(np.isfinite(out).all()),
        "max_abs_logit": max_logit,
    }


# --------------------------------------------------------------------------- report


def summary(cojax: dict, torch_run: dict) -> dict:
    """Per-scenario maxima and the pass / fail of the no-drift claim."""
    cj = cojax["records"]
    worst = max(max(r["retroactive_rel_err"], r["single_output_rel_err"]) for r in cj)
    floor = max(max(r["fresh_float32_rel_err"], r["fresh_float32_row_rel_err"]) for r in cj)
    vs_fresh = max(r["retroactive_vs_fresh_float32"] for r in cj)
    torch_errs = [r["rel_err"] for r in torch_run["records"]]
    finite_torch = [e for e in torch_errs if np.isfinite(e)]
    above = [e for e in torch_errs if e > 1e-3]
    return {
        "cojax_max_rel_err": worst,
        "cojax_all_finite": all(r["finite"] for r in cj),
        "cojax_within_tolerance": bool(worst <= TOLERANCE),
        "fresh_float32_max_rel_err": floor,
        "cojax_max_rel_err_vs_fresh_float32": vs_fresh,
        "cojax_equals_fresh_float32": bool(vs_fresh <= FRESH_TOLERANCE),
        "max_abs_logit": max(r["max_abs_logit"] for r in cj),
        "kept_steps_compared": len(cj),
        "torch_max_rel_err": max(torch_errs) if torch_errs else None,
        "torch_max_finite_rel_err": max(finite_torch) if finite_torch else None,
        "torch_median_rel_err": float(np.median(torch_errs)) if torch_errs else None,
        "torch_kept_steps_above_1e-3": f"{len(above)} of {len(torch_errs)}",
        "torch_first_non_finite_step": torch_run["first_non_finite_step"],
        "torch_non_finite_steps": torch_run["non_finite_steps"],
    }


def per_chunk(records: list[dict], key: str) -> list[dict]:
    """Max and median of `key` over the kept steps of each chunk (inf counts as inf)."""
    chunks: dict[int, list[float]] = {}
    for r in records:
        chunks.setdefault((r["step"] - 1) // CHUNK, []).append(r[key])
    return [
        {"chunk_end": (c + 1) * CHUNK, "max": max(v), "median": float(np.median(v))}
        for c, v in sorted(chunks.items())
    ]


def chunk_table(cojax: dict, torch_run: dict) -> str:
    """Per-chunk maxima / medians of the relative errors: flat for cojax, spiky for torch."""
    cj = per_chunk(cojax["records"], "retroactive_rel_err")
    tr = {c["chunk_end"]: c for c in per_chunk(torch_run["records"], "rel_err")}
    lines = [
        "| chunk end | cojax retroactive max / median | torch reference max / median |",
        "|---|---|---|",
    ]
    for c in cj:
        t = tr.get(c["chunk_end"])
        torch_cell = f"{t['max']:.2e} / {t['median']:.2e}" if t else "–"
        lines.append(f"| {c['chunk_end']} | {c['max']:.2e} / {c['median']:.2e} | {torch_cell} |")
    return "\n".join(lines)


def _table_row(label: str, c: dict, t: dict | None) -> str:
    torch_cell = f"{t['rel_err']:.2e}" if t else "–"
    return (
        f"| {label} | {c['retroactive_rel_err']:.2e} | {c['single_output_rel_err']:.2e} "
        f"| {c['fresh_float32_rel_err']:.2e} | {c['retroactive_vs_fresh_float32']:.2e} "
        f"| {torch_cell} | {c['max_abs_logit']:.1f} |"
    )


def table(name: str, cojax: dict, torch_run: dict, info: dict) -> str:
    """Markdown table of one scenario at the named checkpoints and the chunk ends, and
    the maxima over every kept step."""
    by_torch = {r["step"]: r for r in torch_run["records"]}
    lines = [
        f"### {name}: max |logit| {info['max_abs_logit']:.1f}",
        "| step | cojax retroactive | cojax single-output | fresh float32 "
        "| cojax retro vs fresh f32 | torch reference | max \\|logit\\| |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cojax["records"]:
        if c["step"] in NAMED or c["step"] % CHUNK == 0:
            lines.append(_table_row(str(c["step"]), c, by_torch.get(c["step"])))
    worst = {
        key: max(r[key] for r in cojax["records"])
        for key in (
            "retroactive_rel_err",
            "single_output_rel_err",
            "fresh_float32_rel_err",
            "retroactive_vs_fresh_float32",
            "max_abs_logit",
        )
    }
    torch_max = info["torch_max_rel_err"]
    lines.append(
        _table_row(
            f"max over {info['kept_steps_compared']} kept steps",
            worst,
            None if torch_max is None else {"rel_err": torch_max},
        )
    )
    return "\n".join(lines)


def json_safe(tree: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by the strings "inf" / "nan"."""
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [json_safe(v) for v in tree]
    if isinstance(tree, float) and not np.isfinite(tree):
        return str(tree)
    return tree


def run_scenario(name: str, scenario: dict, runner, init_states, budget_s: float) -> dict:
    """cojax and the torch reference on one scenario, with its summary and table."""
    params = make_params(scenario["in_scale"])
    refs = References(params, jax.random.PRNGKey(7), scenario["token_scale"])
    cojax = stream_cojax(runner, init_states, params, scenario, refs)
    print(f"[{name}] cojax: {cojax['steps']} steps in {cojax['run_s']:.1f} s "
          f"({cojax['us_per_step']:.0f} us/step for both layers; compile "
          f"{cojax['compile_s']:.1f} s)", flush=True)  # fmt: skip
    torch_run = stream_torch(params, scenario, refs, budget_s)
    print(f"[{name}] torch: {torch_run['steps']} steps in {torch_run['run_s']:.1f} s "
          f"({torch_run['us_per_step']:.0f} us/step); first inf/NaN output at step "
          f"{torch_run['first_non_finite_step']}, {torch_run['non_finite_steps']} of "
          f"{torch_run['valid_steps']} outputs non-finite", flush=True)  # fmt: skip
    info = summary(cojax, torch_run)
    print("\n" + table(name, cojax, torch_run, info) + "\n", flush=True)
    print(chunk_table(cojax, torch_run) + "\n", flush=True)
    chunks = {
        "cojax_retroactive_rel_err": per_chunk(cojax["records"], "retroactive_rel_err"),
        "torch_rel_err": per_chunk(torch_run["records"], "rel_err"),
    }
    return {
        "config": scenario,
        "summary": info,
        "per_chunk": chunks,
        "cojax": cojax,
        "torch": torch_run,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--torch-budget", type=float, default=60.0, help="seconds of torch forward_step per scale"
    )
    args = parser.parse_args()
    load_start = os.getloadavg()
    torch.set_num_threads(1)  # one token per step: tiny ops, no OpenMP pool on a shared box
    print(f"load average at start: {load_start}; jax {jax.__version__}, torch "
          f"{torch.__version__}, continual-inference {continual.__version__}", flush=True)  # fmt: skip
    runner, init_states = cojax_chunk_runner()
    results = {
        name: run_scenario(name, scenario, runner, init_states, args.torch_budget)
        for name, scenario in SCENARIOS.items()
    }
    large = results["large"]["summary"]
    checks = {
        "cojax within tolerance at every kept step": all(
            r["summary"]["cojax_within_tolerance"] and r["summary"]["cojax_all_finite"]
            for r in results.values()
        ),
        "cojax equals the fresh float32 computation": all(
            r["summary"]["cojax_equals_fresh_float32"] for r in results.values()
        ),
        "large scale reaches |logits| > 300": large["max_abs_logit"] > 300,
    }
    result: dict[str, Any] = {
        "description": __doc__.split("\n\n")[0],
        "layers": f"RetroactiveMultiheadAttention / SingleOutputMultiheadAttention(E={E}, "
        f"H={H}, N={N}), float32; torch: continual.RetroactiveMultiheadAttention",
        "relative_error": "max |got - float64 reference| / max |reference| over the output "
        "(N x E window; the single-output row against its own row)",
        "chunk_steps": CHUNK,
        "tolerance": TOLERANCE,
        "fresh_float32_tolerance": FRESH_TOLERANCE,
        "checks": checks,
        "scenarios": results,
        **environment(continual_inference_version=continual.__version__),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "attention_drift.json"
    out.write_text(json.dumps(json_safe(result), indent=2))
    print(f"checks: {checks}\nwrote {out} ({result['runtime_s']:.0f} s; load average at end "
          f"{result['load_average_end']})")  # fmt: skip
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
