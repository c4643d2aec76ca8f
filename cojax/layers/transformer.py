"""Continual transformer encoders over a sliding window of `sequence_len` tokens.

One stream, channels-last: a frame is one token `(E,)`. Every block is torch's
`nn.TransformerEncoderLayer` (self-attention, feed-forward `linear2(act(linear1(x)))`,
LayerNorms; post-norm by default, `norm_first=True` for pre-norm), with torch's
parameter names: "self_attn" {"in_proj", "out_proj"}, "linear1", "linear2", "norm1",
"norm2" ({"kernel", "bias"} / {"scale", "bias"}).

- `SingleOutputTransformerEncoderLayer`: one output token per window (the row of
  `query_index`): step `(E,)` -> `(E,)`, clip `(T, E)` -> `(T - N + 1, E)`.
- `RetroactiveTransformerEncoderLayer`: all N rows of each window: step `(E,)` ->
  `(N, E)`, clip -> `(T - N + 1, N, E)`.
- `WindowTransformerEncoderLayer`: an ordinary block applied to each frame that is a
  whole window `(N, E)` (-> `(N, E)`, or `(E,)` for one query row).
- `TransformerEncoder(num_layers=b, ...)`: the encoder of Continual Transformers
  (Hedegaard et al., ICLR 2023, Sec. 3.4) for any b >= 1: b = 1 is one single-output
  layer; b >= 2 is a retroactive layer, b - 2 ordinary blocks on its N updated tokens,
  and a last block that computes only the query row. Each step equals torch's
  `nn.TransformerEncoder` on the latest window, at that row.

Dropout (`dropout`: the attention weights, after the activation and after linear2;
`attention_output_dropout`: torch's dropout1, None for the same rate) acts only in
train mode (`co.train_forward`). cojax's default is 0; torch's is 0.1, and the
converters copy the module's rates.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cojax.containers import Sequential
from cojax.core import (
    Array,
    FrameLayer,
    Layer,
    Params,
    State,
    as_spec,
    check_array,
    check_config,
    check_positive_ints,
    forward_per_clip,
    is_int_at_least,
    zero_unless,
)
from cojax.layers.attention import (
    RetroactiveMultiheadAttention,
    SingleOutputMultiheadAttention,
    attend,
    check_dropout,
    check_window_clip,
    drop,
    project_kv,
    project_out,
    project_q,
    project_qkv,
)
from cojax.layers.closure import Identity
from cojax.layers.linear import uniform_init
from cojax.layers.pointwise import GELU, LayerNorm, ReLU

ACTIVATIONS = {"relu": ReLU(), "gelu": GELU()}  # torch's strings; GELU is exact (erf)


# --------------------------------------------------------------------------- block maths


def _activation(layer: Any, activation: str | Layer) -> Layer:
    if isinstance(activation, str):
        check_config(
            activation in ACTIVATIONS,
            layer,
            f"activation must be one of {tuple(ACTIVATIONS)} or a cojax activation layer "
            f"(e.g. co.GELU(approximate='tanh')), got {activation!r}.",
        )
        return ACTIVATIONS[activation]
    check_config(
        isinstance(activation, FrameLayer) and activation.init(jax.random.PRNGKey(0)) == {},
        layer,
        f"activation must be a parameter-free cojax per-frame layer, got {activation!r}.",
    )
    return activation


def _layer_norm(params: Params, x: Array, eps: float) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return y * params["scale"].astype(x.dtype) + params["bias"].astype(x.dtype)


def _linear(params: Params, x: Array) -> Array:
    return x @ params["kernel"].astype(x.dtype) + params["bias"].astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class _EncoderBlock(Layer):
    """Configuration, parameters and per-row maths shared by the encoder layers."""

    d_model: int
    nhead: int
    sequence_len: int
    dim_feedforward: int = 2048
    activation: str | Layer = "relu"
    layer_norm_eps: float = 1e-5
    norm_first: bool = False
    dropout: float = 0.0
    attention_output_dropout: float | None = None

    def __post_init__(self):
        check_positive_ints(self, "d_model", "nhead", "sequence_len", "dim_feedforward")
        check_dropout(self, self.dropout)
        if self.attention_output_dropout is not None:
            check_dropout(self, self.attention_output_dropout)
        check_config(
            self.d_model % self.nhead == 0,
            self,
            f"d_model {self.d_model} must be divisible by nhead {self.nhead}.",
        )
        object.__setattr__(self, "activation", _activation(self, self.activation))

    @property
    def receptive_field(self) -> int:
        return self.sequence_len

    def init(self, key: Array) -> Params:
        """torch's initialisation (LayerNorms at identity)."""
        k_attn, k1, k2, k3, k4 = jax.random.split(key, 5)
        E, F = self.d_model, self.dim_feedforward
        attention = SingleOutputMultiheadAttention(E, self.nhead, self.sequence_len)

        def norm():
            return {"scale": jnp.ones((E,), jnp.float32), "bias": jnp.zeros((E,), jnp.float32)}

        return {
            "self_attn": attention.init(k_attn),
            "linear1": {"kernel": uniform_init(k1, (E, F), E), "bias": uniform_init(k2, (F,), E)},
            "linear2": {"kernel": uniform_init(k3, (F, E), F), "bias": uniform_init(k4, (E,), F)},
            "norm1": norm(),
            "norm2": norm(),
        }

    def _attention_input(self, params: Params, x: Array) -> Array:
        """What self-attention sees: `norm1(x)` with norm_first, else `x`."""
        return _layer_norm(params["norm1"], x, self.layer_norm_eps) if self.norm_first else x

    @property
    def _attention_output_rate(self) -> float:
        rate = self.attention_output_dropout
        return self.dropout if rate is None else rate

    def _finish(self, params: Params, x: Array, attended: Array, key: Array | None = None) -> Array:
        """The block's output rows from its input rows `x` and their attention output;
        with a `key`, torch's train-mode dropouts (dropout1 on the attention output,
        dropout after the activation, dropout2 after linear2)."""
        eps = self.layer_norm_eps
        keys = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
        attended = drop(attended, self._attention_output_rate, keys[0])

        def feedforward(h):
            hidden = drop(
                self.activation.apply({}, _linear(params["linear1"], h)), self.dropout, keys[1]
            )
            return drop(_linear(params["linear2"], hidden), self.dropout, keys[2])

        if self.norm_first:
            h = x + attended
            return h + feedforward(_layer_norm(params["norm2"], h, eps))
        h = _layer_norm(params["norm1"], x + attended, eps)
        return _layer_norm(params["norm2"], h + feedforward(h), eps)

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, ndim=1, channels=self.d_model, layout="(E,)")

    def check_clip(self, clip: Any) -> None:
        super().check_clip(clip)
        check_window_clip(self, clip, self.sequence_len)

    def forward_train(self, params, clips, mask, key):
        """Train mode: torch's dropouts (`dropout`, `attention_output_dropout`), a key
        per clip."""
        if self.dropout == 0.0 and self._attention_output_rate == 0.0:
            return super().forward_train(params, clips, mask, key)
        return forward_per_clip(self, params, clips, mask, key, self._forward)


def _split(key: Array | None) -> tuple[Array | None, Array | None]:
    return (None, None) if key is None else tuple(jax.random.split(key))


class EncoderLayerState(NamedTuple):
    """The attention's state and the raw tokens its residual still needs."""

    attention: State
    tokens: Array  # (n, E)


# --------------------------------------------------------------------------- continual layers


@dataclasses.dataclass(frozen=True)
class SingleOutputTransformerEncoderLayer(_EncoderBlock):
    """`nn.TransformerEncoderLayer` on each window, output only at `query_index`.

    Step: token `(E,)` -> `(E,)`; forward: `(T, E)` -> `(T - N + 1, E)`. The residual
    adds the input token at the query's position. O(N·E) attention per step plus the
    feed-forward of one token.
    """

    query_index: int = -1

    @property
    def attention(self) -> SingleOutputMultiheadAttention:
        return SingleOutputMultiheadAttention(
            self.d_model,
            self.nhead,
            self.sequence_len,
            query_index=self.query_index,
            dropout=self.dropout,
        )

    def __post_init__(self):
        super().__post_init__()
        self.attention  # noqa: B018  (validates query_index)

    @property
    def alignment(self) -> int:
        """The output stands for the query's token (its residual adds that token)."""
        return self.attention.alignment

    def forward(self, params: Params, clip: Array) -> Array:
        return self._forward(params, clip)

    def _forward(self, params: Params, clip: Array, key: Array | None = None) -> Array:
        attention, (k_attn, k_rest) = self.attention, _split(key)
        inputs = self._attention_input(params, clip)
        attended = attention._forward(params["self_attn"], inputs, k_attn)
        p = attention.query_position
        return self._finish(params, clip[p : p + attended.shape[0]], attended, k_rest)

    def init_state(self, params: Params, frame: Any) -> EncoderLayerState:
        spec = as_spec(frame)
        pending = self.sequence_len - 1 - self.attention.query_position
        return EncoderLayerState(
            self.attention.init_state(params["self_attn"], spec),
            jnp.zeros((pending, self.d_model), spec.dtype),
        )

    def step(self, params: Params, state: EncoderLayerState, frame: Array):
        attn_state, (attended, valid) = self.attention.step_unchecked(
            params["self_attn"], state.attention, self._attention_input(params, frame)
        )
        tokens = jnp.concatenate([state.tokens, frame[None]])
        y = self._finish(params, tokens[0], attended)
        return EncoderLayerState(attn_state, tokens[1:]), (zero_unless(valid, y), valid)


@dataclasses.dataclass(frozen=True)
class RetroactiveTransformerEncoderLayer(_EncoderBlock):
    """`nn.TransformerEncoderLayer` on each window, all N output rows.

    Step: token `(E,)` -> `(N, E)` (the earlier rows updated for the new token);
    forward: `(T, E)` -> `(T - N + 1, N, E)`. O(N·E) attention per step; the output
    projection, norms and feed-forward run on all N rows.
    """

    @property
    def attention(self) -> RetroactiveMultiheadAttention:
        return RetroactiveMultiheadAttention(
            self.d_model, self.nhead, self.sequence_len, dropout=self.dropout
        )

    def __post_init__(self):
        super().__post_init__()
        self.attention  # noqa: B018  (validates sequence_len >= 2)

    def forward(self, params: Params, clip: Array) -> Array:
        return self._forward(params, clip)

    def _forward(self, params: Params, clip: Array, key: Array | None = None) -> Array:
        k_attn, k_rest = _split(key)
        inputs = self._attention_input(params, clip)
        attended = self.attention._forward(params["self_attn"], inputs, k_attn)
        index = jnp.arange(attended.shape[0])[:, None] + jnp.arange(self.sequence_len)[None]
        return self._finish(params, clip[index], attended, k_rest)

    def init_state(self, params: Params, frame: Any) -> EncoderLayerState:
        spec = as_spec(frame)
        return EncoderLayerState(
            self.attention.init_state(params["self_attn"], spec),
            jnp.zeros((self.sequence_len - 1, self.d_model), spec.dtype),
        )

    def step(self, params: Params, state: EncoderLayerState, frame: Array):
        attn_state, (attended, valid) = self.attention.step_unchecked(
            params["self_attn"], state.attention, self._attention_input(params, frame)
        )
        tokens = jnp.concatenate([state.tokens, frame[None]])
        y = self._finish(params, tokens, attended)
        return EncoderLayerState(attn_state, tokens[1:]), (zero_unless(valid, y), valid)


# --------------------------------------------------------------------------- window blocks


@dataclasses.dataclass(frozen=True)
class WindowTransformerEncoderLayer(_EncoderBlock, FrameLayer):
    """An ordinary `nn.TransformerEncoderLayer` on each frame holding a whole window.

    Frame `(N, E)` -> `(N, E)`; with `query_index` set, only that row: `(E,)` (its
    attention costs O(N·E), the feed-forward one token).
    """

    query_index: int | None = None

    def __post_init__(self):
        super().__post_init__()
        N = self.sequence_len
        check_config(
            self.query_index is None
            or (isinstance(self.query_index, int) and -N <= self.query_index < N),
            self,
            f"query_index must be None or an int in [-{N}, {N - 1}], got {self.query_index!r}.",
        )

    @property
    def receptive_field(self) -> int:
        return 1

    def check_frame(self, frame: Any) -> None:
        check_array(self, frame, channels=self.d_model, layout="(N, E)")
        check_config(
            frame.ndim >= 2 and frame.shape[-2] == self.sequence_len,
            self,
            f"expected frames of {self.sequence_len} tokens (N, E), got shape {tuple(frame.shape)}.",
        )

    def check_clip(self, clip: Any) -> None:
        FrameLayer.check_clip(self, clip)

    def apply(self, params: Params, x: Array, key: Array | None = None) -> Array:
        """Frames `(..., N, E)`; with a `key`, train mode (dropouts)."""
        inputs, (k_attn, k_rest) = self._attention_input(params, x), _split(key)
        attention = params["self_attn"]
        if self.query_index is None:
            q, k, v = project_qkv(attention, inputs, self.nhead)
            attended = project_out(attention, attend(q, k, v, self.dropout, k_attn))
            return self._finish(params, x, attended, k_rest)
        # One query row: project its query only (keys and values of all N tokens).
        row = self.query_index % self.sequence_len
        q = project_q(attention, inputs[..., row : row + 1, :], self.nhead)
        k, v = project_kv(attention, inputs, self.nhead)
        attended = project_out(attention, attend(q, k, v, self.dropout, k_attn))[..., 0, :]
        return self._finish(params, x[..., row, :], attended, k_rest)

    def _forward(self, params: Params, clip: Array, key: Array | None = None) -> Array:
        return self.apply(params, clip, key)


# --------------------------------------------------------------------------- encoder


def TransformerEncoder(  # noqa: N802  (a constructor, named like torch's class)
    d_model: int,
    nhead: int,
    sequence_len: int,
    num_layers: int,
    dim_feedforward: int = 2048,
    activation: str | Layer = "relu",
    layer_norm_eps: float = 1e-5,
    norm_first: bool = False,
    norm: bool = False,
    query_index: int = -1,
    dropout: float = 0.0,
    attention_output_dropout: float | None = None,
) -> Sequential:
    """The continual encoder: `num_layers` blocks, one output token per window.

    Step: token `(E,)` -> `(E,)` (the row `query_index` of torch's
    `nn.TransformerEncoder` on the latest N tokens); forward: `(T, E)` ->
    `(T - N + 1, E)`. `norm=True` adds the encoder's final LayerNorm. Params mirror
    torch's keys: {"layers": {"0": …, "1": …}, "norm": …}. Delay N - 1. `dropout`
    (torch's default is 0.1, cojax's 0) and `attention_output_dropout` (torch's
    dropout1; None: `dropout`) act in train mode only.
    """
    if not is_int_at_least(num_layers, 1):
        raise ValueError(
            f"TransformerEncoder: num_layers must be a positive int, got {num_layers!r}."
        )
    config = dict(
        d_model=d_model,
        nhead=nhead,
        sequence_len=sequence_len,
        dim_feedforward=dim_feedforward,
        activation=activation,
        layer_norm_eps=layer_norm_eps,
        norm_first=norm_first,
        dropout=dropout,
        attention_output_dropout=attention_output_dropout,
    )
    if num_layers == 1:
        layers: dict[str, Layer] = {
            "0": SingleOutputTransformerEncoderLayer(**config, query_index=query_index)
        }
    else:
        layers = {"0": RetroactiveTransformerEncoderLayer(**config)}
        for i in range(1, num_layers - 1):
            layers[str(i)] = WindowTransformerEncoderLayer(**config)
        layers[str(num_layers - 1)] = WindowTransformerEncoderLayer(
            **config, query_index=query_index
        )
    final = LayerNorm(d_model, eps=layer_norm_eps) if norm else Identity()
    return Sequential({"layers": Sequential(layers), "norm": final})
