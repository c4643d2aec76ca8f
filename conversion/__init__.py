"""PyTorch -> cojax conversion (imports torch lazily; `cojax` never does).

`from_continual(module)` converts a network built with the `continual-inference`
package into a cojax layer and its params; `load_x3d(checkpoint, size)` loads an X3D
checkpoint (SlowFast/co3d or pytorchvideo layout) into `cojax.models.x3d`;
`from_torch_transformer(module, sequence_len)` turns a plain torch attention or
transformer encoder into its continual form; `from_sp_adapters(module)` converts the
`structured-pruning-adapters` package's SPLoRA / SPPaRA / SPLoPA layers.
"""

from conversion.continual import from_continual
from conversion.sp_adapters import from_sp_adapters
from conversion.stgcn import load_stgcn
from conversion.transformer import from_torch_transformer
from conversion.x3d import load_x3d

__all__ = [
    "from_continual",
    "from_sp_adapters",
    "from_torch_transformer",
    "load_stgcn",
    "load_x3d",
]
