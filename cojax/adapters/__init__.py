"""Structured Pruning Adapters (arXiv 2211.10155) as Flax modules.

A frozen base weight plus a small trainable adapter; structured masks remove whole
channels (SPLoRA, SPPaRA) or blocks (SPLoPA) of the adapted weight, and `fuse_*`
exports a plain, physically smaller layer.
"""

from cojax.adapters.attention import SPLoRAMultiHeadAttention, fuse_attention
from cojax.adapters.continual import AdapterConv, AdapterDense
from cojax.adapters.lopa import SPLoPADense, SPLoPAPrototypes, splopa_parameter_count
from cojax.adapters.lora import (
    SPLoRAConv,
    SPLoRADense,
    adapted_kernel,
    adapter_labels,
    adapter_optimizer,
    fuse_conv,
    fuse_dense,
    splora_parameter_count,
    sppara_parameter_count,
)
from cojax.adapters.para import SPPaRAConv

__all__ = [
    "AdapterConv",
    "AdapterDense",
    "SPLoPADense",
    "SPLoPAPrototypes",
    "SPLoRAConv",
    "SPLoRADense",
    "SPLoRAMultiHeadAttention",
    "SPPaRAConv",
    "adapted_kernel",
    "adapter_labels",
    "adapter_optimizer",
    "fuse_attention",
    "fuse_conv",
    "fuse_dense",
    "splopa_parameter_count",
    "splora_parameter_count",
    "sppara_parameter_count",
]
