"""CoOadTR: a continual online action-detection transformer (Continual Transformers,
Hedegaard et al., ICLR 2023, Sec. 4.2), built from cojax layers.

Per frame: a feature vector `(input_dim,)` (e.g. 4096-d two-stream features of one
video chunk) -> input `Linear` -> `RecyclingPositionalEncoding` -> continual
`TransformerEncoder` over the last `sequence_len` tokens -> `LayerNorm` -> classifier
`Linear` -> logits `(num_classes,)`. The defaults are the paper's THUMOS14 shape:
N = 64, E = 1024, 8 heads, feed-forward 1024, 22 classes, and `num_layers` = 1
(CoOadTR-b1; 2 gives CoOadTR-b2).

`step` emits one prediction per frame after N - 1 frames; `forward` on a clip `(T,
input_dim)` gives the `T - N + 1` window predictions the steps give, with the positional
table started at `position_offset` (for training on clips, pass a random offset, as
the reference's `forward_update_index_steps` shifted it).
"""

from __future__ import annotations

import dataclasses

from cojax.containers import Sequential
from cojax.core import Array, Params
from cojax.layers.linear import Linear
from cojax.layers.pointwise import LayerNorm
from cojax.layers.positional import RecyclingPositionalEncoding
from cojax.layers.transformer import TransformerEncoder


@dataclasses.dataclass(frozen=True, init=False)
class CoOadTR(Sequential):
    """The CoOadTR network: "embedding", "position", "encoder", "norm", "classifier".

    Frames `(input_dim,)` -> logits `(num_classes,)`; clips `(T, input_dim)` ->
    `(T - N + 1, num_classes)`.
    """

    def forward(self, params: Params, clip: Array, position_offset: int | Array = 0) -> Array:
        """Clip `(T, input_dim)` -> `(T - N + 1, num_classes)`; the positional table
        starts at row `position_offset` (steps from a fresh state: 0)."""
        x = self["embedding"].forward(params["embedding"], clip)
        x = self["position"].forward(params["position"], x, offset=position_offset)
        for name in ("encoder", "norm", "classifier"):
            x = self[name].forward(params[name], x)
        return x


def co_oadtr(
    input_dim: int = 4096,
    embed_dim: int = 1024,
    num_heads: int = 8,
    sequence_len: int = 64,
    num_layers: int = 1,
    dim_feedforward: int = 1024,
    num_classes: int = 22,
    activation: str = "gelu",
    num_embeds: int | None = None,
    learned_positions: bool = True,
) -> CoOadTR:
    """CoOadTR-b`num_layers` (see the module docstring). `num_embeds`: rows of the
    recycling positional table, default `2 * sequence_len - 1` (the paper's advice)."""
    encoder = TransformerEncoder(
        embed_dim,
        num_heads,
        sequence_len,
        num_layers,
        dim_feedforward=dim_feedforward,
        activation=activation,
    )
    rows = 2 * sequence_len - 1 if num_embeds is None else num_embeds
    return CoOadTR(
        {
            "embedding": Linear(input_dim, embed_dim),
            "position": RecyclingPositionalEncoding(embed_dim, rows, learned=learned_positions),
            "encoder": encoder,
            "norm": LayerNorm(embed_dim),
            "classifier": Linear(embed_dim, num_classes),
        }
    )
