"""`Conditional`: choose between two layers, statically or per frame."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cojax.containers.parallel import pad_time
from cojax.containers.sequential import Sequential
from cojax.core import Layer, as_spec, check_config, select_tree
from cojax.layers.delay import Delay


def _aligned(layer: Layer, delay: int) -> Layer:
    if layer.delay == delay:
        return layer
    return Sequential(Delay(delay - layer.delay), layer)


@dataclasses.dataclass(frozen=True, init=False)
class Conditional(Layer):
    """Apply `on_true` where `predicate(x)` holds, else `on_false` (identity if None).

    `predicate(x)` receives the frame (in `step`) or the clip (in `forward`) and returns
    either a Python bool (decided at trace time) or a traced bool scalar, which selects
    the branch with `lax.cond`. Both branches' states are kept (the reference keeps
    only the chosen one): the branch not taken keeps its state unchanged. Branches are
    delay-aligned with a leading `Delay`, as in the reference.
    """

    predicate: Callable[[Any], Any]
    on_true: Layer
    on_false: Layer

    def __init__(self, predicate: Callable, on_true: Layer, on_false: Layer | None = None):
        if not callable(predicate):
            raise TypeError(f"Conditional: predicate must be callable, got {predicate!r}.")
        for what, layer in (("on_true", on_true), ("on_false", on_false)):
            if layer is not None and not isinstance(layer, Layer):
                raise TypeError(
                    f"Conditional: {what} must be a cojax layer, got {type(layer).__name__}."
                )
        if on_false is None:
            on_false = Delay(0)
        check_config(
            on_true.stride == on_false.stride,
            self,
            f"both branches need the same stride, got {on_true.stride} and {on_false.stride}.",
        )
        delay = max(on_true.delay, on_false.delay)
        object.__setattr__(self, "predicate", predicate)
        object.__setattr__(self, "on_true", _aligned(on_true, delay))
        object.__setattr__(self, "on_false", _aligned(on_false, delay))

    @property
    def delay(self) -> int:
        return self.on_true.delay

    @property
    def receptive_field(self) -> int:
        return max(self.on_true.receptive_field, self.on_false.receptive_field)

    @property
    def stride(self) -> int:
        return self.on_true.stride

    @property
    def alignment(self) -> int | None:
        a, b = self.on_true.alignment, self.on_false.alignment
        return a if a == b else None

    @property
    def padding(self) -> int:
        return max(self.on_true.padding, self.on_false.padding)

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"on_true": self.on_true.init(k1), "on_false": self.on_false.init(k2)}

    def check_frame(self, frame):
        self.on_true.check_frame(frame)

    def _decide(self, x) -> bool | jax.Array:
        pred = self.predicate(x)
        if isinstance(pred, (bool, jnp.bool_)):
            return bool(pred)
        pred = jnp.asarray(pred)
        check_config(
            pred.shape == () and pred.dtype == jnp.bool_,
            self,
            f"predicate must return a bool or a bool scalar array, got {pred.dtype}{pred.shape}.",
        )
        return pred

    def forward(self, params, clip):
        pred = self._decide(clip)
        if isinstance(pred, bool):
            branch = "on_true" if pred else "on_false"
            return getattr(self, branch).forward(params[branch], clip)
        return jax.lax.cond(
            pred,
            lambda c: self.on_true.forward(params["on_true"], c),
            lambda c: self.on_false.forward(params["on_false"], c),
            clip,
        )

    def output_length(self, n):
        return self.on_true.output_length(n)

    @property
    def finite_memory(self) -> bool:
        return self.on_true.finite_memory and self.on_false.finite_memory

    def trainable(self, params):
        return {b: getattr(self, b).trainable(params[b]) for b in ("on_true", "on_false")}

    def forward_train(self, params, clips, mask, key):
        """Each clip takes its branch; a branch's statistics see only its clips."""
        first = jax.tree_util.tree_map(lambda c: c[0], clips)
        pred = self._decide(first)
        k_true, k_false = jax.random.split(key)
        if isinstance(pred, bool):
            branch = "on_true" if pred else "on_false"
            ys, out_mask, new = getattr(self, branch).forward_train(
                params[branch], clips, mask, k_true if pred else k_false
            )
            return ys, out_mask, {**params, branch: new}
        preds = jax.vmap(self._decide)(clips)
        y_t, m_t, new_t = self.on_true.forward_train(
            params["on_true"], clips, mask & preds[:, None], k_true
        )
        y_f, m_f, new_f = self.on_false.forward_train(
            params["on_false"], clips, mask & ~preds[:, None], k_false
        )
        check_config(
            m_t.shape == m_f.shape,
            self,
            f"train mode needs branches of equal output length, got {m_t.shape[1]} and "
            f"{m_f.shape[1]}.",
        )
        ys = jax.tree_util.tree_map(jnp.add, y_t, y_f)
        return ys, m_t | m_f, {"on_true": new_t, "on_false": new_f}

    def init_state(self, params, frame):
        spec = as_spec(frame)
        return {
            "on_true": self.on_true.init_state(params["on_true"], spec),
            "on_false": self.on_false.init_state(params["on_false"], spec),
        }

    def _branch_step(self, branch: str, params, state, frame):
        new, out = getattr(self, branch).step_unchecked(params[branch], state[branch], frame)
        return {**state, branch: new}, out

    def step(self, params, state, frame):
        pred = self._decide(frame)
        if isinstance(pred, bool):
            return self._branch_step("on_true" if pred else "on_false", params, state, frame)
        return jax.lax.cond(
            pred,
            lambda s, x: self._branch_step("on_true", params, s, x),
            lambda s, x: self._branch_step("on_false", params, s, x),
            state,
            frame,
        )

    def flush(self, params, state, frame):
        # The end padding is decided on like a zero frame (for a traced predicate both
        # branches are flushed and one is selected).
        spec = as_spec(frame)
        pred = self._decide(jnp.zeros(spec.shape, spec.dtype))
        if isinstance(pred, bool):
            branch = "on_true" if pred else "on_false"
            return getattr(self, branch).flush(params[branch], state[branch], frame)
        flushed = [
            getattr(self, b).flush(params[b], state[b], frame) for b in ("on_true", "on_false")
        ]
        length = max(v.shape[0] for _, v in flushed)
        (ys_t, v_t), (ys_f, v_f) = (pad_time(ys, v, length) for ys, v in flushed)
        return select_tree(pred, ys_t, ys_f), jnp.where(pred, v_t, v_f)
