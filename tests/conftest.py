"""Test-session settings.

XLA:CPU compilation dominates the contract harness's run time (dozens of small
programs per layer); the backend's optimisation level barely matters for these tiny
shapes, so the suite compiles at level 0 (about 2x faster overall). Benchmarks and the
demo are unaffected. Must run before jax is imported.
"""

import os

_FLAG = "--xla_backend_optimization_level=0"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
