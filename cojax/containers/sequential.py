"""`Sequential`: layers in a chain, with their delays, strides and paddings composed."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cojax.core import Layer, as_spec, check_config, masked_step, stack_time

Children = tuple[tuple[str, Layer], ...]


def named_children(layers: Sequence[Any], owner: str, children: Any = None) -> Children:
    """`(layer, ...)` or `({name: layer},)` -> `((name, layer), ...)`, checked.

    `children`: the field spelling, `((name, layer), ...)` (what `repr` and
    `dataclasses.replace` pass), instead of `layers`."""
    if children is not None:
        if layers:
            raise TypeError(f"{owner}: pass the layers or children=, not both.")
        layers = (dict(children),)
    if len(layers) == 1 and isinstance(layers[0], Mapping):
        pairs = tuple((str(k), v) for k, v in layers[0].items())
    else:
        pairs = tuple((str(i), v) for i, v in enumerate(layers))
    for name, layer in pairs:
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{owner}: child {name!r} is a {type(layer).__name__}, not a cojax layer. "
                "Wrap plain functions in co.Lambda(fn); convert torch modules with "
                "conversion.from_continual; continual Flax modules with co.from_flax(module); "
                "SPLoRAConv / SPPaRAConv adapters with "
                "cojax.adapters.AdapterConv(module, in_channels), SPLoRADense with "
                "cojax.adapters.AdapterDense(module, in_features)."
            )
    if len({n for n, _ in pairs}) != len(pairs):
        raise ValueError(f"{owner}: child names must be unique, got {[n for n, _ in pairs]}.")
    return pairs


class Container(Layer):
    """Shared behaviour of layers holding named `children`: indexing, length, init."""

    children: Children

    def __getitem__(self, index: int | str) -> Layer:
        if isinstance(index, str):
            return dict(self.children)[index]
        return self.children[index][1]

    def __len__(self) -> int:
        return len(self.children)

    def init(self, key):
        keys = jax.random.split(key, max(len(self.children), 1))
        return {name: layer.init(k) for (name, layer), k in zip(self.children, keys)}

    def trainable(self, params):
        return {name: layer.trainable(params[name]) for name, layer in self.children}

    @property
    def finite_memory(self) -> bool:
        return all(layer.finite_memory for _, layer in self.children)

    def child_keys(self, key) -> dict:
        """One key per child for its train-mode randomness."""
        keys = jax.random.split(key, max(len(self.children), 1))
        return {name: k for (name, _), k in zip(self.children, keys)}


@dataclasses.dataclass(frozen=True, init=False)
class Sequential(Container):
    """Apply layers one after another: `Sequential(a, b, c)` or `Sequential({"a": a})`.

    Params and state are dicts keyed by child name. A child's invalid outputs (before
    its delay, between strided outputs) never reach the children after it.
    Composition (docs/api.md, as continual-inference): stride = Π s_i,
    padding = p_0 + Σ_i p_i Π_{j<i} s_j, receptive field folded from the last child
    backwards (rf = s_i·rf + rf_i − s_i), delay = Σ_i d_i Π_{j<i} s_j (which equals
    rf − 1 − padding whenever each child's delay does).
    """

    children: Children

    def __init__(self, *layers: Any, children: Children | None = None):
        children = named_children(layers, "Sequential", children)
        object.__setattr__(self, "children", _infer_broadcasts(children))

    # --- static metadata --------------------------------------------------------
    @property
    def stride(self) -> int:
        s = 1
        for _, layer in self.children:
            s *= layer.stride
        return s

    @property
    def padding(self) -> int:
        p, s = 0, 1
        for _, layer in self.children:
            p += layer.padding * s
            s *= layer.stride
        return p

    @property
    def receptive_field(self) -> int:
        if not self.children:
            return 1
        layers = [layer for _, layer in self.children]
        rf = layers[-1].receptive_field
        for layer in reversed(layers[:-1]):
            rf = layer.stride * rf + layer.receptive_field - layer.stride
        return rf

    @property
    def delay(self) -> int:
        d, s = 0, 1
        for _, layer in self.children:
            d += layer.delay * s
            s *= layer.stride
        return d

    @property
    def alignment(self) -> int | None:
        """Composed like `delay`: Σ_i a_i Π_{j<i} s_j; None if a child has none."""
        a, s = 0, 1
        for _, layer in self.children:
            if layer.alignment is None:
                return None
            a += layer.alignment * s
            s *= layer.stride
        return a

    # --- contract -------------------------------------------------------------
    def check_frame(self, frame):
        if self.children:
            self.children[0][1].check_frame(frame)

    def forward(self, params, clip):
        for name, layer in self.children:
            clip = layer.forward(params[name], clip)
        return clip

    def output_length(self, n):
        for _, layer in self.children:
            n = layer.output_length(n)
        return n

    def forward_train(self, params, clips, mask, key):
        keys, new = self.child_keys(key), {}
        for name, layer in self.children:
            clips, mask, new[name] = layer.forward_train(params[name], clips, mask, keys[name])
        return clips, mask, new

    def input_specs(self, params, frame) -> list:
        """ShapeDtypeStruct of each child's input frame."""
        specs, spec = [], as_spec(frame)
        for name, layer in self.children:
            specs.append(spec)
            spec = layer.output_spec(params[name], spec)
        return specs

    def init_state(self, params, frame):
        specs = self.input_specs(params, frame)
        return {
            name: layer.init_state(params[name], spec)
            for (name, layer), spec in zip(self.children, specs)
        }

    def step(self, params, state, frame):
        new_state, x, valid = {}, frame, jnp.ones((), bool)
        for i, (name, layer) in enumerate(self.children):
            if i == 0:
                new_state[name], (x, valid) = layer.step_unchecked(params[name], state[name], x)
            else:
                new_state[name], (x, valid) = masked_step(
                    layer, params[name], state[name], x, valid
                )
        return new_state, (x, valid)

    def step_block_masked(self, params, state, frames, valid_in):
        # The block through each child in turn; a child's invalid outputs (warm-up,
        # stride gaps) are masked inputs of the next, as in `step`.
        new_state, x, valid = {}, frames, valid_in
        for name, layer in self.children:
            new_state[name], (x, valid) = layer.step_block_masked(
                params[name], state[name], x, valid
            )
        return new_state, (x, valid)

    def flush(self, params, state, frame):
        # The end padding as a pipeline, one child at a time: child i first steps over
        # the tail released by the children before it (in time order), then pads its
        # own end from the state that leaves it; the tail then grows by its flush.
        # The same sequence each child sees when every flush is pushed through the rest
        # of the chain, but each child is traced once (linear, not quadratic, in depth).
        specs = self.input_specs(params, frame)
        tail = None
        for (name, layer), spec in zip(self.children, specs):
            child_state = state[name]
            parts = []
            if tail is not None and tail[1].shape[0]:
                child_state, tail = _scan_child(layer, params[name], child_state, *tail)
                parts.append(tail)
            parts.append(layer.flush(params[name], child_state, spec))
            tail = (stack_time([p[0] for p in parts]), jnp.concatenate([p[1] for p in parts]))
        return tail


def _scan_child(layer: Layer, params, state, ys, valid):
    """Step one child over a tail of (possibly invalid) inputs: (state, (ys, valid))."""

    def body(s, inputs):
        x, v = inputs
        s, (x, v) = masked_step(layer, params, s, x, v)
        return s, (x, v)

    return jax.lax.scan(body, state, (ys, valid))


def _infer_broadcasts(children: Children) -> Children:
    """Give a `Broadcast()` without a stream count the width of the next `Parallel`."""
    from cojax.containers.parallel import Broadcast, Parallel

    out = list(children)
    for i, (name, layer) in enumerate(out):
        if isinstance(layer, Broadcast) and layer.num_streams is None:
            nxt = out[i + 1][1] if i + 1 < len(out) else None
            check_config(
                isinstance(nxt, Parallel),
                layer,
                "num_streams is not given and the next layer is not a Parallel to infer it from.",
            )
            out[i] = (name, Broadcast(len(nxt.children)))
    return tuple(out)
