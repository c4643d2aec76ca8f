"""Import pytorchvideo's X3D builder (the `x3d` extra) on machines without torchvision.

`pip install -e ".[x3d]"` installs it (pytorchvideo==0.1.5, fvcore==0.1.5.post20221221).

pytorchvideo 0.1.5's package imports `torchvision.ops.RoIAlign` (for a detection head
X3D never uses) and fvcore's `nn` package, whose `__init__` needs iopath. Stand-ins for
those two imports let the real X3D code load; they are removed again afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Callable


def import_create_x3d() -> Callable | None:
    """`pytorchvideo.models.x3d.create_x3d`, or None when pytorchvideo/fvcore are missing."""
    try:
        import fvcore
        import pytorchvideo  # noqa: F401
    except ImportError:
        return None
    stand_ins = {}
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        ops = types.ModuleType("torchvision.ops")
        ops.RoIAlign = None
        stand_ins.update({"torchvision": types.ModuleType("torchvision"), "torchvision.ops": ops})
    if "fvcore.nn" not in sys.modules:
        package = types.ModuleType("fvcore.nn")  # its submodules, without its __init__
        package.__path__ = [os.path.join(os.path.dirname(fvcore.__file__), "nn")]
        stand_ins["fvcore.nn"] = package
    sys.modules.update(stand_ins)
    try:
        from pytorchvideo.models.x3d import create_x3d
    except ImportError:
        create_x3d = None
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return create_x3d


X3D_EXTRA_HINT = (
    'pytorchvideo\'s X3D code is not installed: pip install -e ".[torch,x3d]" '
    "(pytorchvideo==0.1.5, fvcore==0.1.5.post20221221)"
)


def require_create_x3d() -> Callable:
    """`pytorchvideo.models.x3d.create_x3d`; a clear `ImportError` when it is missing."""
    create_x3d = import_create_x3d()
    if create_x3d is None:
        raise ImportError(X3D_EXTRA_HINT)
    return create_x3d
