"""A chain of adapter layers that owns the SPLoPA prototypes its layers share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn

from cojax.adapters.lopa import SPLoPADense, SPLoPAPrototypes
from cojax.core import Array, check_config


class AdapterSequential(nn.Module):
    """`layers` applied in order: `(..., C)` -> whatever the last layer returns.

    Each `SPLoPADense` at position i takes the prototypes
    `prototypes[prototype_index[i]]`: the sharing between layers of one block shape is
    explicit and lives in this module's params ("prototypes_0", …), not in a process-wide
    cache. Other layers are Flax modules or parameter-free callables (activations).
    """

    layers: Sequence[Callable]
    prototypes: Sequence[SPLoPAPrototypes] = ()
    prototype_index: Sequence[int | None] = ()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        index = tuple(self.prototype_index) or (None,) * len(self.layers)
        check_config(
            len(index) == len(self.layers),
            self,
            f"prototype_index has {len(index)} entries for {len(self.layers)} layers.",
        )
        shared = [p() for p in self.prototypes]
        for i, (layer, k) in enumerate(zip(self.layers, index)):
            if isinstance(layer, SPLoPADense):
                check_config(
                    k is not None and 0 <= k < len(shared),
                    self,
                    f"layer {i} is an SPLoPADense but prototype_index[{i}] is {k!r}.",
                )
                x = layer(x, shared[k])
            else:
                x = layer(x)
        return x
