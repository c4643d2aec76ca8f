"""The one benchmark harness of `experiments/`: timing, machine record, results files.

Every benchmark script imports what it needs from here (run them from the repository
root as `python experiments/<script>.py`, or as modules: `python -m experiments.bench`):

- `timeit(fn, *args)`: (median, min) ms after one warm-up call, repeated for a budget;
  `interleaved({name: call})`: several calls timed in turn, for steadier ratios;
- `matmul_gflops(n, budget, framework)`: the f32 matmul ceiling of XLA or torch,
  measured in the same run, for "% of peak" columns;
- `environment(**extra)`: versions, cores, threads, load average (start and end);
- `run_torch_process(script, args, out, ...)`: a script's `--torch-only` rows from a
  fresh process (torch's threads never share the cores with XLA's thread pool), and
  `torch_report(rows)` for that process to print;
- `compiled(fn, *args, donate=...)`, `donated_calls(...)`: jitted executables with the
  stream state donated (updated in place) and `co.compiler_options`, as a deployment
  (`co.StreamPool`) runs them;
- `write_json(name, data)`, `save_figure(fig, name)`, `markdown_table(header, rows)`.

Tests never import `experiments/` (tests/test_docs.py checks it); what a test needs lives
in the library.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import cojax as co

RESULTS = Path(__file__).resolve().parent / "results"
_STARTED = time.perf_counter()
_LOAD_START = os.getloadavg()


def no_sync(x: Any) -> Any:
    """`sync` for torch on CPU: its ops are synchronous."""
    return x


def timeit(
    fn: Callable,
    *args: Any,
    budget_s: float = 1.0,
    min_repeats: int = 3,
    max_repeats: int = 200,
    sync: Callable = jax.block_until_ready,
) -> tuple[float, float]:
    """(median, min) ms of `sync(fn(*args))` after one warm-up call (which compiles);
    repeats for `budget_s` seconds, at least `min_repeats`, at most `max_repeats` times."""
    sync(fn(*args))
    times, start = [], time.perf_counter()
    while len(times) < min_repeats or (
        time.perf_counter() - start < budget_s and len(times) < max_repeats
    ):
        t0 = time.perf_counter()
        sync(fn(*args))
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times)), float(np.min(times))


def interleaved(calls: dict[str, Callable], budget_s: float = 10.0, min_repeats: int = 5):
    """{name: (median, min) ms} of zero-argument `calls`, run in turn one call each
    (after two warm-up rounds) for `budget_s` seconds: the machine's drift hits every
    call alike, so their ratios are steadier than separate `timeit`s."""
    for _ in range(2):
        for fn in calls.values():
            jax.block_until_ready(fn())
    times = {name: [] for name in calls}
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times[next(iter(calls))]) < min_repeats:
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {k: (float(np.median(v)), float(np.min(v))) for k, v in times.items()}


def torch_timeit(fn: Callable, *args: Any, **kwargs: Any) -> tuple[float, float]:
    """`timeit` of a torch function under `torch.inference_mode()`."""
    import torch

    with torch.inference_mode():
        return timeit(fn, *args, sync=no_sync, **kwargs)


def matmul_gflops(n: int = 1024, budget: float = 1.0, framework: str = "jax") -> float:
    """Practical f32 ceiling: GFLOP/s of an n×n matmul in XLA ("jax") or "torch"
    (median of the repeats, as every timed row)."""
    if framework == "jax":
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        ms, _ = timeit(jax.jit(lambda a: a @ a), a, budget_s=budget)
    else:
        import torch

        t = torch.randn(n, n)
        ms, _ = torch_timeit(lambda t: t @ t, t, budget_s=budget)
    return 2.0 * n**3 / ms / 1e6


def torch_report(rows: list[dict], budget: float, matmul_n: int = 1024) -> dict:
    """What a `--torch-only` process prints: its rows, torch's matmul peak, threads."""
    import torch

    return {
        "rows": rows,
        "torch_matmul_gflops_per_s": matmul_gflops(matmul_n, budget, "torch"),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
    }


def run_torch_process(
    script: str, args: list[str], out: str, budget: float, env: dict | None, timeout: int
) -> tuple[dict, dict]:
    """Run `script --torch-only *args out --budget budget` in a fresh process (no XLA
    thread pool beside torch's); its JSON report (last stdout line) and the arrays it
    saved to `out` (.npz)."""
    cmd = [sys.executable, script, "--torch-only", *args, out, "--budget", str(budget)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"torch rows of {script} failed:\n{proc.stderr}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        outputs = {k: data[k] for k in data.files}
    return report, outputs


def compiled(
    fn: Callable, *args: Any, donate: bool = False, options: bool = True
) -> tuple[Any, float]:
    """(executable of `jax.jit(fn)` for `args`, seconds to lower and compile);
    `donate=True` donates argument 1 (the state) leaf by leaf (`co.donating_jit`). It
    compiles with `co.compiler_options(fn, *args)` (Eigen convolutions on XLA:CPU where
    they are the faster library), as a deployment through `co.StreamPool` runs;
    `options=False`: XLA's defaults."""
    t0 = time.perf_counter()
    opts = co.compiler_options(fn, *args) if options else {}
    if donate:  # leaf by leaf, as co.StreamPool does (not a conv's partial sums)
        exe = co.donating_jit(fn, 1, compiler_options=opts or None).compile(*args)
    else:
        exe = jax.jit(fn, compiler_options=opts or None).lower(*args).compile()
    return exe, time.perf_counter() - t0


def copy_tree(tree: Any) -> Any:
    """A copy of every leaf (a state to donate without losing the original)."""
    return jax.tree_util.tree_map(jnp.copy, tree)


def donated_calls(exe: Any, params: Any, state: Any, x: Any) -> tuple[Callable, Callable]:
    """A no-argument call of the donating `exe` that feeds each returned state into the
    next call (the donated input is dead afterwards), and a check that donation
    happened (the first input's donated buffers deleted, `co.donated_leaves`)."""
    box = {"state": state}
    marks = jax.tree_util.tree_leaves(co.donated_leaves(state))
    first = [leaf for leaf, d in zip(jax.tree_util.tree_leaves(state), marks) if d]

    def call():
        box["state"], out = exe(params, box["state"], x)
        return out

    def honoured() -> bool:
        return all(leaf.is_deleted() for leaf in first if leaf.size > 1)

    return call, honoured


def environment(torch_report: dict | None = None, **extra: Any) -> dict:
    """Versions, cores, threads and machine load of this run, for its JSON record
    (`torch_report`: what a `--torch-only` process reported about its threads)."""
    record = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_start": _LOAD_START,
        "load_average_end": os.getloadavg(),
        "runtime_s": time.perf_counter() - _STARTED,
    }
    try:
        import torch

        record["torch_version"] = torch.__version__
        record["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if torch_report is not None:  # the torch rows ran in another process: its threads
        record["torch_threads"] = torch_report["torch_threads"]
        record["omp_wait_policy"] = torch_report["omp_wait_policy"]
    record.update(extra)
    return record


def max_diff(a: Any, b: Any) -> float:
    """max |a - b| over all leaves of two matching pytrees of arrays."""
    diffs = jax.tree_util.tree_map(
        lambda x, y: float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()),
        a,
        b,
    )
    return max(jax.tree_util.tree_leaves(diffs), default=0.0)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, jax.Array, np.ndarray)):
        return np.asarray(value).tolist()
    return value


def write_json(name: str, data: dict, directory: Path | None = None) -> Path:
    """Write `data` as `experiments/results/<name>.json` (numpy / jax values as lists)."""
    path = (directory or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    return path


def save_figure(fig: Any, name: str, directory: Path | None = None) -> Path:
    """Save a matplotlib figure as `experiments/results/<name>.png` and close it."""
    import matplotlib.pyplot as plt

    path = (directory or RESULTS) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    """`(fig, axes)` from matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
