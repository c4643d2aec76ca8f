"""Model zoo: continual networks built from cojax layers."""

from cojax.models.nystromformer import (
    NystromEncoder,
    NystromEncoderBlock,
    NystromformerClassifier,
    NystromWindowBlock,
)
from cojax.models.oadtr import CoOadTR, co_oadtr
from cojax.models.x3d import X3D, X3D_SIZES, X3DSize, round_width, x3d

__all__ = [
    "X3D",
    "X3D_SIZES",
    "CoOadTR",
    "NystromEncoder",
    "NystromEncoderBlock",
    "NystromWindowBlock",
    "NystromformerClassifier",
    "X3DSize",
    "co_oadtr",
    "round_width",
    "x3d",
]
