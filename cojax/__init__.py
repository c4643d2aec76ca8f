"""cojax: Continual Inference Networks in JAX.

Every layer keeps one contract (see `cojax.core`): `init`, `forward` on a clip,
`init_state` / `step` on frames, and static `delay`, `receptive_field`, `stride`,
`padding`. `cojax.testing.verify_contract` checks it for any layer.
"""

from cojax.compiler import compiler_options, donated_leaves, donating_jit
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
from cojax.continualize import Continualized, ContinualizeError, continualize
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
from cojax.flax_bridge import CojaxModule, FlaxLayer, flax_module, from_flax
from cojax.flops import clip_flops, compiled_flops, flops
from cojax.layers.attention import (
    RetroactiveMultiheadAttention,
    SingleOutputMultiheadAttention,
    multihead_self_attention,
)
from cojax.layers.closure import Add, Constant, Identity, Lambda, Multiply, One, Reshape, Zero
from cojax.layers.conv import Conv1d, Conv2d, Conv3d
from cojax.layers.delay import Delay, Skip
from cojax.layers.graph import AdaptiveGraphConv, GraphConv, SpatialAttention
from cojax.layers.linear import Linear
from cojax.layers.nystrom import ContinualNystromAttention, NystromAttention, NystromLayer
from cojax.layers.pointwise import (
    CELU,
    ELU,
    GELU,
    GLU,
    SELU,
    Activation,
    AlphaDropout,
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    GroupNorm,
    Hardshrink,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LayerNorm,
    LeakyReLU,
    LogSigmoid,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    RReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softmax2d,
    Softmin,
    Softplus,
    Softshrink,
    Softsign,
    Tanh,
    Tanhshrink,
    Threshold,
)
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
from cojax.layers.positional import (
    PositionState,
    RecyclingPositionalEncoding,
    cyclic_positional_table,
)
from cojax.layers.recurrent import GRU, LSTM, RNN, LSTMState, RNNState
from cojax.layers.transformer import (
    RetroactiveTransformerEncoderLayer,
    SingleOutputTransformerEncoderLayer,
    TransformerEncoder,
    WindowTransformerEncoderLayer,
)
from cojax.models import X3D, CoOadTR, co_oadtr, x3d
from cojax.stream_pool import StreamPool
from cojax.streams import (
    gather_streams,
    init_streams,
    replicate,
    shard_local_streams,
    shard_streams,
    step_streams,
    streams_mesh,
)
from cojax.training import (
    masked_optimizer,
    output_lengths,
    output_mask,
    statistics_label,
    train_forward,
    trainable_mask,
)

__version__ = "0.1.0"
