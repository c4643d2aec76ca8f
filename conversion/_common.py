"""Small helpers shared by the converters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def where(path: str) -> str:
    """A module path for error messages ("" is the root)."""
    return f"path {path!r}" if path else "the root of the network"


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def array(tensor: Any) -> jax.Array:
    """A torch tensor -> a jnp array of the same dtype."""
    return jnp.asarray(tensor.detach().cpu().numpy())


def fail(module: Any, path: str, why: str) -> NotImplementedError:
    """The error for a module that cannot be converted, naming its type and path."""
    return NotImplementedError(
        f"from_continual: cannot convert {type(module).__name__} at {where(path)}: {why}"
    )
