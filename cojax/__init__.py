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
from cojax.containers import (
    Broadcast,
    BroadcastReduce,
    Conditional,
    Parallel,
    ParallelDispatch,
    Reduce,
    Residual,
    Sequential,
)
from cojax.flops import clip_flops, flops
from cojax.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from cojax.streams import init_streams, step_streams
