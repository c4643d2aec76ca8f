"""Continual ST-GCN family: CoST-GCN, CoA-GCN, CoS-TR and their * ("mod") variants.

`st_gcn(...)`, `a_gcn(...)`, `s_tr(...)` return one `SkeletonNet` layer (a
`Sequential`) on skeleton frames `(M, V, C)`: M persons, V joints (25 for graph "ntu",
18 for "kinetics"), C = 3 coordinates; a clip is `(T, M, V, C)` and the output
`(T', num_classes)` logits. Persons are computed independently and averaged at the
head, as the paper folds them into the batch.

Structure (Hedegaard et al., "Continual spatio-temporal graph convolutional networks",
Pattern Recognition 2023; docs/stgcn.md):
- `data_bn`: BatchNorm over the M·V·C features of a frame (order m, v, c).
- `layers`: ten blocks, widths 64 ×4, 128 ×3, 256 ×3, temporal stride 2 at blocks 5
  and 8 (regular variants). A block is `ReLU(tcn(gcn(x)) + residual(x))`:
  - gcn: `ReLU(BN(GraphConv(x)) + r(x))` with r the identity or a 1×1 conv + BN when
    the width changes (`AdaptiveGraphConv` for CoA-GCN); for CoS-TR blocks 4-10 use
    `ReLU(BN(SpatialAttention(data_bn(x)) [+ x]))` instead (+ x when the width is kept);
  - tcn: a 9×1 temporal conv (padding 4, or 0 for mod) with stride s, then BN;
  - residual: none (block 1), the identity (delayed to line up), or a strided 1×1 conv
    + BN; with `mod=True` the paths are shrunk ("centered") like the clip network's.
- head: average over persons, joints and `pool_size` frames (sized as the reference
  does, so that a clip of `num_frames` frames gives exactly one output: the clip
  network's), then Linear.

Regular variants emit every 4th frame (the stride), * variants every frame. `forward`
on a clip is the clip network with zero padding at the clip's ends (for the regular
variants); `step` streams exactly that computation (`forward_steps(pad_end=True)`
equals `forward`). With `layout="st_gcn"` the blocks follow the original ST-GCN /
mmskeleton `ST_GCN_18` instead: data BN over each person's V·C features, the "spatial"
partition, edge importance, the GCN bias before the graph product, and the TCN as
BN → ReLU → conv → BN → Dropout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from cojax.containers import BroadcastReduce, Sequential
from cojax.core import Array, Layer, Params, PyTree, State, as_spec
from cojax.graphs import skeleton
from cojax.layers.closure import Identity, Reshape
from cojax.layers.conv import Conv3d
from cojax.layers.delay import Delay
from cojax.layers.graph import AdaptiveGraphConv, GraphConv, SpatialAttention
from cojax.layers.linear import Linear
from cojax.layers.pointwise import BatchNorm, Dropout, ReLU
from cojax.layers.pool import AdaptiveAvgPool3d
from cojax.models.x3d import _jit_init_state, _jit_method

VARIANTS = ("st_gcn", "a_gcn", "s_tr")
LAYOUTS = ("continual_skeletons", "st_gcn")
WIDTHS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
STRIDES = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)
TEMPORAL_KERNEL = 9
S_TR_FIRST_ATTENTION = 3  # 0-based: blocks 4-10 attend


@dataclasses.dataclass(frozen=True, init=False)
class SkeletonNet(Sequential):
    """A continual ST-GCN-family network: `data_bn`, `layers` (blocks `layer1`…) and
    `head`. Clip `(T, M, V, C)` -> `(T', num_classes)`; frame `(M, V, C)` ->
    `(num_classes,)`. Eager `init` / `init_state` / `forward` / `step` run as one
    compiled program per model and shapes (inlined under an outer jit)."""

    def init(self, key: Array) -> Params:
        return _jit_method(self, "init", key)

    def init_state(self, params: Params, frame: PyTree) -> State:
        return _jit_init_state(self, params, as_spec(frame))

    def forward(self, params: Params, clip: Array) -> Array:
        """Clip `(T, M, V, C)` -> `(T', num_classes)`."""
        return _jit_method(self, "forward", params, clip)

    def step(self, params: Params, state: State, frame: Array):
        """Frame `(M, V, C)` -> `(state, (logits, valid))`."""
        return _jit_method(self, "step", params, state, frame)


def _bn(channels: int) -> BatchNorm:
    return BatchNorm(channels)


def _frame_features_bn(shape: tuple[int, ...], features: int) -> Sequential:
    """BatchNorm over the flattened trailing `shape` of a frame, per leading entry."""
    return Sequential(
        {
            "flatten": Reshape(-1, features),
            "bn": BatchNorm(features),
            "unflatten": Reshape(-1, *shape),
        }
    )


def _graph_unit(
    variant: str, c_in: int, c_out: int, graph: str, attention: bool, heads: int
) -> Layer:
    """continual-skeletons' GCN unit, per frame."""
    if attention:
        joints = skeleton(graph).num_joints
        attend = Sequential(
            {
                "data_bn": _frame_features_bn((joints, c_in), joints * c_in),
                "attention": SpatialAttention(c_in, c_out, num_heads=heads),
            }
        )
        if c_in == c_out:
            attend = BroadcastReduce({"attention": attend, "skip": Identity()})
        return Sequential({"attend": attend, "bn": _bn(c_out), "relu": ReLU()})
    conv = (
        AdaptiveGraphConv(c_in, c_out, graph)
        if variant == "a_gcn"
        else GraphConv(c_in, c_out, graph, "inward_outward", "multiply")
    )
    residual = (
        Identity() if c_in == c_out else Sequential({"conv": Linear(c_in, c_out), "bn": _bn(c_out)})
    )
    graph_path = Sequential({"conv": conv, "bn": _bn(c_out)})
    return Sequential(
        {"sum": BroadcastReduce({"graph": graph_path, "residual": residual}), "relu": ReLU()}
    )


def _temporal_conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> Conv3d:
    return Conv3d(c_in, c_out, (kernel, 1, 1), stride=(stride, 1, 1), padding=(padding, 0, 0))


def _block(
    layout: str,
    variant: str,
    c_in: int,
    c_out: int,
    stride: int,
    residual: bool,
    graph: str,
    mod: bool,
    attention: bool,
    dropout: float,
    heads: int,
) -> Sequential:
    padding = 0 if mod else (TEMPORAL_KERNEL - 1) // 2
    tconv = _temporal_conv(c_out, c_out, TEMPORAL_KERNEL, stride, padding)
    if layout == "st_gcn":
        gcn: Layer = GraphConv(c_in, c_out, graph, "spatial", "multiply", "before_graph")
        tcn = Sequential(
            {"bn1": _bn(c_out), "relu": ReLU(), "conv": tconv, "bn2": _bn(c_out), "drop": Dropout(dropout)}
        )  # fmt: skip
    else:
        gcn = _graph_unit(variant, c_in, c_out, graph, attention, heads)
        tcn = Sequential({"conv": tconv, "bn": _bn(c_out)})
    main = Sequential({"gcn": gcn, "tcn": tcn})
    if not residual:
        return Sequential({"gcn": gcn, "tcn": tcn, "relu": ReLU()})
    # The shortcut stands for the frame at the centre of the temporal conv's window.
    shrink = mod
    delay = tconv.delay // stride
    if shrink:
        delay //= 2
    align = Delay(delay, auto_shrink=shrink) if delay else Identity()
    if c_in == c_out and stride == 1:
        shortcut: Layer = align
    else:
        shortcut = Sequential(
            {"conv": _temporal_conv(c_in, c_out, 1, stride, 0), "bn": _bn(c_out), "align": align}
        )
    both = BroadcastReduce({"residual": shortcut, "main": main}, auto_delay=False)
    return Sequential({"sum": both, "relu": ReLU()})


def _check(name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"stgcn: {name} must be {expected}, got {value!r}.")


def skeleton_net(
    variant: str = "st_gcn",
    graph: str = "ntu",
    num_classes: int = 60,
    mod: bool = False,
    *,
    num_frames: int = 300,
    num_persons: int = 2,
    in_channels: int = 3,
    layout: str = "continual_skeletons",
    widths: Sequence[int] = WIDTHS,
    strides: Sequence[int] | None = None,
    first_attention: int = S_TR_FIRST_ATTENTION,
    num_heads: int = 8,
    dropout: float = 0.0,
) -> SkeletonNet:
    """A continual `variant` ("st_gcn", "a_gcn", "s_tr") network for `graph`.

    `mod=True`: the * variant (no temporal padding, strides 1, shrunk residuals).
    `num_frames`: the clip length the head pools over (the reference's pool sizing:
    `ceil((num_frames - rf + 2·padding + 1) / stride)` strided frames). `widths` /
    `strides` (one per block; strides default 2 where the width grows, 1 for mod)
    shrink the network for tests. `first_attention`: the first S-TR block (0-based)
    that attends instead of convolving the graph, with `num_heads` heads. `layout="st_gcn"`: the original
    ST-GCN blocks (only for variant "st_gcn"). `dropout`: the original layout's TCN
    dropout (identity in inference).
    """
    _check("variant", variant, variant in VARIANTS, f"one of {VARIANTS}")
    _check("layout", layout, layout in LAYOUTS, f"one of {LAYOUTS}")
    _check("layout", layout, layout == "continual_skeletons" or variant == "st_gcn",
           "'continual_skeletons' for a_gcn and s_tr (the original layout is ST-GCN's)")  # fmt: skip
    sk = skeleton(graph)
    widths = tuple(widths)
    _check("widths", widths, len(widths) > 0 and all(isinstance(w, int) and w > 0 for w in widths),
           "a non-empty sequence of positive ints")  # fmt: skip
    if strides is None:
        strides = tuple(
            1 if mod or i == 0 or widths[i] == widths[i - 1] else 2 for i in range(len(widths))
        )
    strides = tuple(strides)
    _check("strides", strides, len(strides) == len(widths) and all(s in (1, 2) for s in strides),
           f"{len(widths)} values of 1 or 2")  # fmt: skip
    for name, value in (("num_classes", num_classes), ("num_persons", num_persons),
                        ("in_channels", in_channels), ("num_frames", num_frames)):  # fmt: skip
        _check(name, value, isinstance(value, int) and not isinstance(value, bool) and value > 0,
               "a positive int")  # fmt: skip

    if layout == "st_gcn":
        data_bn = _frame_features_bn((sk.num_joints, in_channels), sk.num_joints * in_channels)
    else:
        features = num_persons * sk.num_joints * in_channels
        data_bn = Sequential(
            {
                "flatten": Reshape(-1),
                "bn": BatchNorm(features),
                "unflatten": Reshape(num_persons, sk.num_joints, in_channels),
            }
        )
    blocks, c_in = {}, in_channels
    for i, (width, stride) in enumerate(zip(widths, strides)):
        blocks[f"layer{i + 1}"] = _block(
            layout, variant, c_in, width, stride, residual=i > 0, graph=graph, mod=mod,
            attention=variant == "s_tr" and i >= first_attention, dropout=dropout, heads=num_heads,
        )  # fmt: skip
        c_in = width
    body = Sequential({"data_bn": data_bn, "layers": Sequential(blocks)})
    span = num_frames - body.receptive_field + 2 * body.padding + 1
    _check("num_frames", num_frames, span > 0,
           f"at least the receptive field minus twice the padding ({num_frames - span + 1})")  # fmt: skip
    pool_size = math.ceil(span / body.stride)
    head = Sequential(
        {
            "pool": AdaptiveAvgPool3d((1, 1), pool_size),
            "flatten": Reshape(-1),
            "fc": Linear(c_in, num_classes),
        }
    )
    return SkeletonNet({"data_bn": data_bn, "layers": body.children[1][1], "head": head})


def st_gcn(graph: str = "ntu", num_classes: int = 60, mod: bool = False, **kwargs) -> SkeletonNet:
    """CoST-GCN (`mod=True`: CoST-GCN*). Keywords as `skeleton_net`."""
    return skeleton_net("st_gcn", graph, num_classes, mod, **kwargs)


def a_gcn(graph: str = "ntu", num_classes: int = 60, mod: bool = False, **kwargs) -> SkeletonNet:
    """CoA-GCN (`mod=True`: CoA-GCN*); the adaptive graph attends per frame
    (`AdaptiveGraphConv`). Keywords as `skeleton_net`."""
    return skeleton_net("a_gcn", graph, num_classes, mod, **kwargs)


def s_tr(graph: str = "ntu", num_classes: int = 60, mod: bool = False, **kwargs) -> SkeletonNet:
    """CoS-TR (`mod=True`: CoS-TR*): spatial self-attention in blocks 4-10. Keywords as
    `skeleton_net`."""
    return skeleton_net("s_tr", graph, num_classes, mod, **kwargs)
