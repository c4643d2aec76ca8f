"""SPPaRA: a full-rank pointwise adapter `(in/groups, out)` at a convolution's centre
tap (channel-SPA for convolutions), U(±init_range) at init."""

from __future__ import annotations

from cojax.adapters.lora import _AdaptedConv, _uniform
from cojax.core import Array


class SPPaRAConv(_AdaptedConv):
    """Convolution (1d-3d, channels-last) + full-rank pointwise adapter "adapter"
    `(in/groups, out)` at the centre tap; kernel `(*k, in/groups, out)` frozen."""

    def _adapter(self, n_in: int, n_out: int) -> Array:
        return self.param("adapter", _uniform(self.init_range), (n_in, n_out))
