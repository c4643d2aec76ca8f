"""Recurrent layers `RNN`, `GRU`, `LSTM`: one recurrent update per step.

One stream, channels-last: frames `(input_size,)`, clips `(T, input_size)`, outputs
`(H_out,)` per frame (`H_out = hidden_size`, or `proj_size` for a projected LSTM).
Delay 0, receptive field 1. Gate order and maths are torch's (GRU r, z, n; LSTM
i, f, g, o). Params: `{"layers": [{"w_ih": (in, G*H), "w_hh": (H_out, G*H),
"b_ih": (G*H,), "b_hh": (G*H,)[, "w_hr": (H, P)]}, ...]}`, i.e. torch's
`weight_ih_l{k}.T`, `weight_hh_l{k}.T`, `bias_ih_l{k}`, `bias_hh_l{k}`
(`weight_hr_l{k}.T`).

`forward(params, clip)` is torch's `output` on that clip from a zero state: the only
difference from streaming is that `forward` starts afresh, while `step` carries the
state of everything seen before. `forward_with_state(params, clip, h0)` starts from a
given state and also returns the final one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from cojax.core import (
    Array,
    Layer,
    Params,
    PyTree,
    State,
    StepOutput,
    as_spec,
    check_array,
    check_config,
    layer_name,
)
from cojax.layers.linear import uniform_init


class RNNState(NamedTuple):
    """Hidden state of every layer of an `RNN`/`GRU`."""

    h: Array  # (num_layers, hidden_size)


class LSTMState(NamedTuple):
    """Hidden and cell states of every layer of an `LSTM`."""

    h: Array  # (num_layers, H_out)
    c: Array  # (num_layers, hidden_size)


NONLINEARITIES = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def _linear(x: Array, w: Array, p: Params, bias_name: str) -> Array:
    y = x @ w.astype(x.dtype)
    if bias_name in p:
        y = y + p[bias_name].astype(x.dtype)
    return y


class _Recurrent(Layer):
    """Shared machinery: params, state handling, layer-by-layer scan and step."""

    gates: ClassVar[int]
    state_type: ClassVar[type]

    # --- configuration ----------------------------------------------------------
    @property
    def finite_memory(self) -> bool:
        return False

    def _check_sizes(self) -> None:
        for name in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            check_config(
                isinstance(value, int) and value > 0, self, f"{name} must be > 0, got {value}."
            )

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def _layer_in(self, index: int) -> int:
        return self.input_size if index == 0 else self.output_size

    # --- parameters and state -----------------------------------------------------
    def init(self, key: Array) -> Params:
        gh, h = self.gates * self.hidden_size, self.hidden_size
        layers = []
        for index, k in enumerate(jax.random.split(key, self.num_layers)):
            k_ih, k_hh, k_bi, k_bh, k_hr = jax.random.split(k, 5)
            p = {
                "w_ih": uniform_init(k_ih, (self._layer_in(index), gh), h),
                "w_hh": uniform_init(k_hh, (self.output_size, gh), h),
            }
            if self.bias:
                p["b_ih"] = uniform_init(k_bi, (gh,), h)
                p["b_hh"] = uniform_init(k_bh, (gh,), h)
            p.update(self._extra_params(k_hr))
            layers.append(p)
        return {"layers": layers}

    def _extra_params(self, key: Array) -> Params:
        del key
        return {}

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, ndim=1, channels=self.input_size, layout="(input_size,)")

    def _state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.num_layers, self.output_size),)

    def init_state(self, params: Params, frame: Any, h0: Any = None):
        """Zero state, or `h0` (RNN/GRU: `(num_layers, H)`; LSTM: `(h0, c0)`)."""
        dtype = as_spec(frame).dtype
        shapes = self._state_shapes()
        if h0 is None:
            return self.state_type(*(jnp.zeros(s, dtype) for s in shapes))
        leaves = tuple(h0) if isinstance(h0, (tuple, list)) else (h0,)
        if len(leaves) != len(shapes):
            raise ValueError(
                f"{layer_name(self)}: expected an initial state of {len(shapes)} array(s) "
                f"{self.state_type._fields}, got {len(leaves)}."
            )
        for field, leaf, shape in zip(self.state_type._fields, leaves, shapes):
            if tuple(jnp.shape(leaf)) != shape:
                raise ValueError(
                    f"{layer_name(self)}: initial {field} must have shape {shape} "
                    f"(num_layers, size) for one stream, got {tuple(jnp.shape(leaf))}. "
                    f"Drop torch's batch axis; use jax.vmap for many streams."
                )
        return self.state_type(*(jnp.asarray(leaf, dtype) for leaf in leaves))

    # --- computation --------------------------------------------------------------
    def cell(self, p: Params, x_proj: Array, state: Any) -> tuple[Array, Any]:
        """One update of one layer: `x_proj = x @ w_ih + b_ih`; returns (output, state)."""
        raise NotImplementedError

    def _check_params(self, params: Params) -> None:
        layers = params.get("layers") if isinstance(params, dict) else None
        if not isinstance(layers, (list, tuple)) or len(layers) != self.num_layers:
            got = len(layers) if isinstance(layers, (list, tuple)) else type(params).__name__
            raise ValueError(
                f"{layer_name(self)}: expected params {{'layers': [...]}} with "
                f"{self.num_layers} entries (num_layers), got {got}."
            )

    def step(self, params: Params, state: State, frame: PyTree) -> tuple[State, StepOutput]:
        self._check_params(params)
        x, new = frame, []
        for index, p in enumerate(params["layers"]):
            layer_state = jax.tree_util.tree_map(lambda a, i=index: a[i], state)
            x, layer_state = self.cell(p, _linear(x, p["w_ih"], p, "b_ih"), layer_state)
            new.append(layer_state)
        state = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *new)
        return state, (x, jnp.ones((), bool))

    def forward_with_state(self, params: Params, clip: Array, h0: Any = None):
        """Outputs `(T, H_out)` from state `h0` (zeros if None) and the final state."""
        self.check_clip(clip)
        self._check_params(params)
        state = self.init_state(params, jax.ShapeDtypeStruct(clip.shape[1:], clip.dtype), h0)
        xs, finals = clip, []
        for index, p in enumerate(params["layers"]):
            layer_state = jax.tree_util.tree_map(lambda a, i=index: a[i], state)
            x_proj = _linear(xs, p["w_ih"], p, "b_ih")  # all frames at once

            def body(s, xp, p=p):
                y, s = self.cell(p, xp, s)
                return s, y

            layer_state, xs = jax.lax.scan(body, layer_state, x_proj)
            finals.append(layer_state)
        return xs, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *finals)

    def forward(self, params: Params, clip: PyTree) -> PyTree:
        return self.forward_with_state(params, clip)[0]


@dataclasses.dataclass(frozen=True)
class RNN(_Recurrent):
    """Elman RNN: `h' = act(x @ w_ih + b_ih + h @ w_hh + b_hh)`, act tanh or relu.

    State `RNNState(h)` with `h` `(num_layers, hidden_size)`.
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True

    gates: ClassVar[int] = 1
    state_type: ClassVar[type] = RNNState

    def __post_init__(self):
        self._check_sizes()
        check_config(
            self.nonlinearity in NONLINEARITIES,
            self,
            f"nonlinearity must be one of {tuple(NONLINEARITIES)}, got {self.nonlinearity!r}.",
        )

    def cell(self, p: Params, x_proj: Array, state: Any) -> tuple[Array, Any]:
        act = NONLINEARITIES[self.nonlinearity]
        h = act(x_proj + _linear(state.h, p["w_hh"], p, "b_hh"))
        return h, RNNState(h=h)


@dataclasses.dataclass(frozen=True)
class GRU(_Recurrent):
    """Gated recurrent unit, torch's equations and gate order (r, z, n).

    `n = tanh(x_n + r * (h @ w_hn + b_hn))`, `h' = (1 - z) * n + z * h`.
    State `RNNState(h)` with `h` `(num_layers, hidden_size)`.
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True

    gates: ClassVar[int] = 3
    state_type: ClassVar[type] = RNNState

    def __post_init__(self):
        self._check_sizes()

    def cell(self, p: Params, x_proj: Array, state: Any) -> tuple[Array, Any]:
        h = state.h
        h_proj = _linear(h, p["w_hh"], p, "b_hh")
        x_r, x_z, x_n = jnp.split(x_proj, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h_proj, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, RNNState(h=h)


@dataclasses.dataclass(frozen=True)
class LSTM(_Recurrent):
    """Long short-term memory, torch's equations and gate order (i, f, g, o).

    `c' = f * c + i * g`, `h' = o * tanh(c')`, then `h' @ w_hr` when `proj_size > 0`
    (param "w_hr" `(hidden_size, proj_size)`). State `LSTMState(h, c)` with `h`
    `(num_layers, H_out)` and `c` `(num_layers, hidden_size)`.
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    proj_size: int = 0

    gates: ClassVar[int] = 4
    state_type: ClassVar[type] = LSTMState

    def __post_init__(self):
        self._check_sizes()
        check_config(
            0 <= self.proj_size < self.hidden_size,
            self,
            f"proj_size must be in [0, hidden_size={self.hidden_size}), got {self.proj_size}.",
        )

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _extra_params(self, key: Array) -> Params:
        if not self.proj_size:
            return {}
        return {"w_hr": uniform_init(key, (self.hidden_size, self.proj_size), self.hidden_size)}

    def _state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return (
            (self.num_layers, self.output_size),
            (self.num_layers, self.hidden_size),
        )

    def cell(self, p: Params, x_proj: Array, state: Any) -> tuple[Array, Any]:
        pre = x_proj + _linear(state.h, p["w_hh"], p, "b_hh")
        i, f, g, o = jnp.split(pre, 4, axis=-1)
        c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        if self.proj_size:
            h = h @ p["w_hr"].astype(h.dtype)
        return h, LSTMState(h=h, c=c)
