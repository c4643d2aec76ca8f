"""Containers: compose continual layers, aligning their delays."""

from cojax.containers.conditional import Conditional
from cojax.containers.parallel import (
    Broadcast,
    BroadcastReduce,
    Parallel,
    ParallelDispatch,
    Reduce,
    Residual,
)
from cojax.containers.sequential import Sequential
