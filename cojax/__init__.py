"""cojax: Continual Inference Networks in JAX."""

from cojax.core import (
    Counter,
    FrameLayer,
    Layer,
    NoState,
    as_spec,
    forward_steps,
    masked_step,
    valid_outputs,
)
from cojax.layers.delay import Delay, Skip

__version__ = "0.1.0"
