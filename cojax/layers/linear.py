"""`Linear`: a dense projection of the channel (last) axis of every frame."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from cojax.core import Array, FrameLayer, Params, accumulation_dtype, check_array, check_config


def uniform_init(key: Array, shape: tuple[int, ...], fan_in: int) -> Array:
    """torch's default weight/bias draw: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), float32."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


@dataclasses.dataclass(frozen=True)
class Linear(FrameLayer):
    """`y = x @ kernel + bias` on the channel axis; torch's `nn.Linear`.

    Frames `(*F, in_features)` -> `(*F, out_features)`; clips `(T, *F, in_features)`.
    Params: "kernel" `(in_features, out_features)` (torch's `weight.T`) and, with
    `bias=True`, "bias" `(out_features,)`. In channels-last layout this is the
    reference's `co.Linear(..., channel_dim=1)`.
    """

    in_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self):
        for name in ("in_features", "out_features"):
            value = getattr(self, name)
            check_config(value > 0, self, f"{name} must be > 0, got {value}.")

    def init(self, key: Array) -> Params:
        k_w, k_b = jax.random.split(key)
        params = {
            "kernel": uniform_init(k_w, (self.in_features, self.out_features), self.in_features)
        }
        if self.bias:
            params["bias"] = uniform_init(k_b, (self.out_features,), self.in_features)
        return params

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, channels=self.in_features, layout="(*F, C_in)")

    def apply(self, params: Params, x: Array) -> Array:
        acc = accumulation_dtype(x.dtype)
        y = jnp.einsum(
            "...i,io->...o", x, params["kernel"].astype(x.dtype), preferred_element_type=acc
        )
        if self.bias:
            y = y + params["bias"].astype(y.dtype)
        return y.astype(x.dtype)
