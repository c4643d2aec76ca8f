"""Converter for continual-inference's `RecyclingPositionalEncoding`.

Registered in `conversion.continual._handlers()`; it also works alone:

    layer, params = convert_recycling_positional_encoding(torch_module)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cojax.layers.positional import RecyclingPositionalEncoding, cyclic_positional_table
from conversion._common import array, fail

# A fixed table that differs from cojax's by more than this was changed after
# construction (float32 round-off between the two computations is ~2e-7).
_TABLE_TOL = 1e-5


def convert_recycling_positional_encoding(
    module: Any, path: str = "", ctx: Any = None
) -> tuple[RecyclingPositionalEncoding, dict]:
    """`co.RecyclingPositionalEncoding` -> `(RecyclingPositionalEncoding, params)`.

    A learned table becomes the param "embedding" (torch's `pe.weight`); a fixed one is
    recomputed by cojax (params `{}`) after checking that it equals the torch buffer.
    The module's runtime index (`state_index`) and `forward_update_index_steps` are
    not kept: cojax steps start from a fresh state at row 0, and its `forward` takes
    the start row as `offset=` instead of a hidden counter. Raises
    `NotImplementedError` for what cannot be represented: an embedding with
    `max_norm` (torch renormalises rows while looking them up), a replaced or edited
    fixed table, or an unknown table module.
    """
    del ctx
    from continual.positional_encoding import CyclicPositionalEncoding
    from torch import nn

    pe = module.pe
    if isinstance(pe, nn.Embedding):
        return _learned(module, path, pe)
    if isinstance(pe, CyclicPositionalEncoding):
        return _fixed(module, path, pe)
    raise fail(
        module,
        path,
        f"its table module is a {type(pe).__name__}; only nn.Embedding (learned=True) "
        "and CyclicPositionalEncoding (learned=False) are supported.",
    )


def _learned(module: Any, path: str, pe: Any) -> tuple[RecyclingPositionalEncoding, dict]:
    if pe.max_norm is not None:
        raise fail(
            module,
            path,
            f"its nn.Embedding has max_norm={pe.max_norm}: torch renormalises the looked-up "
            "rows in place, which cojax does not do. Renormalise the weight once and set "
            "max_norm=None before converting.",
        )
    layer = RecyclingPositionalEncoding(int(pe.embedding_dim), int(pe.num_embeddings))
    return layer, {"embedding": array(pe.weight)}


def _fixed(module: Any, path: str, pe: Any) -> tuple[RecyclingPositionalEncoding, dict]:
    num_embeds, embed_dim = int(pe.num_embeddings), int(pe.embedding_dim)
    buffer = pe.pattern.detach().cpu().numpy()
    if buffer.shape != (num_embeds, embed_dim):
        raise fail(
            module,
            path,
            f"its fixed table has shape {buffer.shape}, expected {(num_embeds, embed_dim)}.",
        )
    error = float(np.max(np.abs(buffer - cyclic_positional_table(num_embeds, embed_dim))))
    if not error <= _TABLE_TOL:
        raise fail(
            module,
            path,
            f"its fixed table differs from the cyclic pattern by up to {error:.3g} (built "
            "without mean pooling, or edited). A table that is not the standard pattern "
            "can be used as a learned one: RecyclingPositionalEncoding(embed_dim, "
            "num_embeds, learned=True) with params {'embedding': table}.",
        )
    return RecyclingPositionalEncoding(embed_dim, num_embeds, learned=False), {}
