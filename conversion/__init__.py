"""PyTorch -> cojax conversion (imports torch lazily; `cojax` never does).

`from_continual(module)` converts a network built with the `continual-inference`
package into a cojax layer and its params.
"""

from conversion.continual import from_continual

__all__ = ["from_continual"]
