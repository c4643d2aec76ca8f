"""A continual Nyströmformer: Nyström transformer encoder blocks and a stream
classifier, as Flax modules (Continual Low-Rank Scaled Dot-product Attention,
Hedegaard et al. 2025).

One stream: frames `(input_dim,)` -> logits `(num_classes,)` over the last
`sequence_len` frames. `__call__(clip (T, input_dim))` is the clip network (training,
with optax) and gives `(T - n + 1, num_classes)`, the predictions the steps give;
`init_state(frame)` / `step(state, frame)` stream it. Wrap the module in
`cojax.NystromLayer` for the cojax layer contract (`forward`, `step`, `delay`, …).

Blocks are post-norm transformer blocks (`x + attention`, LayerNorm, `h + FF(h)`,
LayerNorm; FF = Dense → GELU → Dense). One block: a single-output continual Nyström
block. Two blocks: a retroactive continual Nyström block (all n rows per step) and a
second block that runs offline Nyström attention over those n updated tokens for the
newest row only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cojax.core import Array, as_spec, check_array, check_config
from cojax.layers.nystrom import (
    ContinualNystromAttention,
    NystromAttention,
    fit_landmarks,
    nystrom_attention_rows,
)


class BlockState(NamedTuple):
    attention: Any
    tokens: Array  # (n - 1, E) raw tokens the retroactive residual still needs


class NystromEncoderBlock(nn.Module):
    """A continual Nyström transformer block over windows of `sequence_len` tokens.

    Step: token `(E,)` -> `(E,)` (or all n rows `(n, E)` with `retroactive=True`);
    `__call__(clip (T, E))` -> `(T - n + 1, E)` / `(T - n + 1, n, E)`.
    """

    embed_dim: int
    num_heads: int
    num_landmarks: int
    sequence_len: int
    dim_feedforward: int
    landmarks: str = "fixed"
    retroactive: bool = False
    pinv_iterations: int = 6

    def setup(self):
        self.attention = ContinualNystromAttention(
            self.embed_dim, self.num_heads, self.num_landmarks, self.pinv_iterations,
            sequence_len=self.sequence_len, landmarks=self.landmarks,
            retroactive=self.retroactive,
        )  # fmt: skip
        self.ff = _FeedForward(self.embed_dim, self.dim_feedforward)

    def __call__(self, clip: Array) -> Array:
        attended = self.attention(clip)
        n = self.sequence_len
        if self.retroactive:
            index = jnp.arange(attended.shape[0])[:, None] + jnp.arange(n)[None]
            return self.ff(clip[index], attended)
        return self.ff(clip[n - 1 :], attended)

    def init_state(self, frame: Any) -> BlockState:
        spec = as_spec(frame)
        rows = self.sequence_len - 1 if self.retroactive else 0
        return BlockState(
            self.attention.init_state(spec), jnp.zeros((rows, self.embed_dim), spec.dtype)
        )

    def step(self, state: BlockState, frame: Array):
        attn_state, (attended, valid) = self.attention.step(state.attention, frame)
        tokens = jnp.concatenate([state.tokens, frame[None]])
        rows = tokens if self.retroactive else frame
        y = jnp.where(valid, self.ff(rows, attended), jnp.zeros_like(attended))
        return BlockState(attn_state, tokens[1:]), (y, valid)


class _FeedForward(nn.Module):
    """The rest of a post-norm block: `norm2(h + FF(h))`, `h = norm1(x + attended)`."""

    embed_dim: int
    dim_feedforward: int

    @nn.compact
    def __call__(self, x: Array, attended: Array) -> Array:
        h = nn.LayerNorm(epsilon=1e-5, name="norm1")(x + attended)
        f = nn.Dense(self.dim_feedforward, name="linear1")(h)
        f = nn.Dense(self.embed_dim, name="linear2")(nn.gelu(f, approximate=False))
        return nn.LayerNorm(epsilon=1e-5, name="norm2")(h + f)


class NystromWindowBlock(nn.Module):
    """A block on a frame holding a whole window `(n, E)`: offline Nyström attention
    for the newest row only (segment-mean landmarks of the window), then the
    feed-forward part -> `(E,)`."""

    embed_dim: int
    num_heads: int
    num_landmarks: int
    pinv_iterations: int = 6

    dim_feedforward: int = 128

    def setup(self):
        # The projections ("query", "key", "value", "out") of the offline attention.
        self.attention = NystromAttention(
            self.embed_dim, self.num_heads, self.num_landmarks, self.pinv_iterations
        )
        self.ff = _FeedForward(self.embed_dim, self.dim_feedforward)

    def __call__(self, window: Array) -> Array:
        """`(..., n, E)` -> `(..., E)`."""
        q, k, v = self.attention.project(window)
        lead = q.shape[:-3]

        def newest(q, k, v):
            return nystrom_attention_rows(q, k, v, self.num_landmarks, self.pinv_iterations)

        flat = [a.reshape((-1, *a.shape[len(lead) :])) for a in (q, k, v)]
        out = jax.vmap(newest)(*flat).reshape((*lead, *q.shape[-2:]))
        return self.ff(window[..., -1, :], self.attention.merge(out))


class EncoderState(NamedTuple):
    block0: Any  # the first block's state (the second block keeps none)


class NystromEncoder(nn.Module):
    """A continual Nyström transformer encoder of 1 or 2 blocks (module docstring).

    Step: token `(E,)` -> `(E,)`; `__call__(clip (T, E))` -> `(T - n + 1, E)`.
    """

    embed_dim: int
    num_heads: int
    num_landmarks: int
    sequence_len: int
    num_layers: int = 1
    dim_feedforward: int = 128
    landmarks: str = "fixed"
    pinv_iterations: int = 6

    def setup(self):
        check_config(
            self.num_layers in (1, 2), self, f"num_layers must be 1 or 2, got {self.num_layers!r}."
        )
        self.block0 = NystromEncoderBlock(
            self.embed_dim, self.num_heads, self.num_landmarks, self.sequence_len,
            self.dim_feedforward, self.landmarks, retroactive=self.num_layers == 2,
            pinv_iterations=self.pinv_iterations,
        )  # fmt: skip
        if self.num_layers == 2:
            self.block1 = NystromWindowBlock(
                self.embed_dim, self.num_heads, self.num_landmarks, self.pinv_iterations,
                self.dim_feedforward,
            )  # fmt: skip

    @property
    def delay(self) -> int:
        return self.sequence_len - 1

    def __call__(self, clip: Array) -> Array:
        x = self.block0(clip)
        return self.block1(x) if self.num_layers == 2 else x  # (T - n + 1, [n,] E)

    def init_state(self, frame: Any) -> EncoderState:
        return EncoderState(self.block0.init_state(frame))

    def step(self, state: EncoderState, frame: Array):
        block_state, (x, valid) = self.block0.step(state.block0, frame)
        if self.num_layers == 2:
            x = jnp.where(valid, self.block1(x), 0.0)
        return EncoderState(block_state), (x, valid)


class StreamState(NamedTuple):
    index: Array  # int32 row of the positional table for the next frame
    encoder: EncoderState


class NystromformerClassifier(nn.Module):
    """A continual Nyströmformer stream classifier (see the module docstring).

    Dense(input_dim -> E) "embed" -> + recycling learned "positions" (2n - 1 rows) ->
    `NystromEncoder` "encoder" (1 or 2 blocks) -> LayerNorm "norm" -> Dense "head".
    """

    input_dim: int
    num_classes: int
    embed_dim: int = 64
    num_heads: int = 4
    num_landmarks: int = 8
    sequence_len: int = 32
    num_layers: int = 1
    dim_feedforward: int = 128
    landmarks: str = "fixed"
    pinv_iterations: int = 6

    def setup(self):
        self.embed = nn.Dense(self.embed_dim)
        rows = 2 * self.sequence_len - 1
        self.positions = self.param(
            "positions", nn.initializers.normal(0.02), (rows, self.embed_dim)
        )
        self.encoder = NystromEncoder(
            self.embed_dim, self.num_heads, self.num_landmarks, self.sequence_len,
            self.num_layers, self.dim_feedforward, self.landmarks, self.pinv_iterations,
        )  # fmt: skip
        self.norm = nn.LayerNorm(epsilon=1e-5)
        self.head = nn.Dense(self.num_classes)

    def _check(self, x: Any, ndim: int, what: str, layout: str) -> None:
        check_array(self, x, ndim=ndim, channels=self.input_dim, what=what, layout=layout)

    def __call__(self, clip: Array, position_offset: int | Array = 0) -> Array:
        """`(T, input_dim)` -> `(T - n + 1, num_classes)`; positions start at row
        `position_offset` (the steps from a fresh state: 0)."""
        self._check(clip, 2, "clip", "(T, input_dim)")
        rows = self.positions.shape[0]
        index = (jnp.arange(clip.shape[0]) + position_offset % rows) % rows
        x = self.encoder(self.embed(clip) + self.positions[index])
        return self.head(self.norm(x))

    def init_state(self, frame: Any) -> StreamState:
        self._check(frame, 1, "frame", "(input_dim,)")
        spec = jax.ShapeDtypeStruct((self.embed_dim,), as_spec(frame).dtype)
        return StreamState(jnp.zeros((), jnp.int32), self.encoder.init_state(spec))

    def step(self, state: StreamState, frame: Array):
        self._check(frame, 1, "frame", "(input_dim,)")
        x = self.embed(frame) + self.positions[state.index]
        encoder_state, (x, valid) = self.encoder.step(state.encoder, x)
        y = jnp.where(valid, self.head(self.norm(x)), 0.0)
        index = (state.index + 1) % self.positions.shape[0]
        return StreamState(index, encoder_state), (y, valid)


def attention_tokens(model: NystromformerClassifier, variables: Any, clips: Array) -> Array:
    """The tokens the first block's attention sees for `clips` `(..., T, input_dim)`
    (embedding + positions from row 0): `(..., T, E)`."""

    def tokens(module: NystromformerClassifier, clip: Array) -> Array:
        rows = module.positions.shape[0]
        return module.embed(clip) + module.positions[jnp.arange(clip.shape[-2]) % rows]

    return model.apply({"params": variables["params"]}, clips, method=tokens)


def fit_classifier_landmarks(
    model: NystromformerClassifier, variables: Any, clips: Array, seed: int = 0
) -> tuple[NystromformerClassifier, Any]:
    """Fix a trained classifier's landmarks: k-means of its first block's queries and
    keys on the training `clips` (`cojax.layers.nystrom.fit_landmarks`). Returns the
    model with `landmarks="fixed"` and its variables (params unchanged), ready to
    fine-tune: the paper's train-updated-then-fix schedule."""
    fixed = model.clone(landmarks="fixed")
    attention = ContinualNystromAttention(
        model.embed_dim, model.num_heads, model.num_landmarks, model.pinv_iterations,
        sequence_len=model.sequence_len, landmarks="fixed",
    )  # fmt: skip
    own = {"params": variables["params"]["encoder"]["block0"]["attention"]}
    fitted = fit_landmarks(attention, own, attention_tokens(model, variables, clips), seed)
    landmarks = {"encoder": {"block0": {"attention": fitted["landmarks"]}}}
    return fixed, {"params": variables["params"], "landmarks": landmarks}
