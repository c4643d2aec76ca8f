"""X3D as a continual 3D CNN (CoX3D), built from cojax layers.

`x3d(size)` returns one `X3D` layer (a `Sequential`). One stream, channels-last: clip
`(T, H, W, 3)` -> `(T - head_pool_frames + 1, num_classes)`, frame `(H, W, 3)` ->
`(num_classes,)`. `step` emits one prediction per frame, over the last
`head_pool_frames` frames, after a delay of `2 + #blocks + head_pool_frames - 1`
(CoX3D-S: 40), plus `se_clip_frames - 1` per SE block with `se_scope="clip"`.

On a clip of `head_pool_frames` frames with `temporal_fill="zeros"`, `forward` (and
the steps over that clip with `pad_end=True`) is X3D's clip prediction exactly when
`se_scope="clip"`: every SE scales every frame by the mean over the whole clip. With
`se_scope="frame"` (the reference CoX3D) each frame's SE pools that frame only, an
approximation of X3D. On a longer stream both are continual networks: each step equals
`forward` over the stream, whose temporal padding and SE windows sit at the stream's
ends, not at each window's (no O(1)-per-frame network can re-pad every window).

Architecture (docs/x3d.md): stem conv 1×3×3 stride (1, 2, 2) → depthwise temporal
5×1×1 → BN → ReLU; four stages of bottleneck blocks a (1×1×1) → b (depthwise 3×3×3,
spatial stride 2 in a stage's first block) → SE (even blocks) → Swish → c (1×1×1),
shortcut conv + BN in a stage's first block, ReLU after the sum; head conv_5 → BN →
ReLU → average pool over (head_pool_frames, H, W) → lin_5 → ReLU → dropout →
projection → softmax. The head pools space adaptively to 1×1, which is X3D's
(T, ⌈S/32⌉, ⌈S/32⌉) average pool at its crop sizes.

Parameter names follow the SlowFast / co3d checkpoint layout: `s1` (stem `conv_xy`,
`conv`, `bn`), `s2`…`s5` (blocks `res{j}` with `sum.branch1.{conv, bn}` and
`sum.branch2.{a, a_bn, b, b_bn, se.scale.{fc1, fc2}, c, c_bn}`), `head` (`conv_5`,
`conv_5_bn`, `lin_5`, `projection`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax

from cojax.containers import BroadcastReduce, Sequential
from cojax.core import Array, Layer, Params, PyTree, State, as_spec, is_int_at_least
from cojax.layers.closure import Identity, Reshape
from cojax.layers.conv import Conv3d
from cojax.layers.delay import Delay
from cojax.layers.linear import Linear
from cojax.layers.pointwise import BatchNorm3d, Dropout, ReLU, Sigmoid, SiLU, Softmax
from cojax.layers.pool import AdaptiveAvgPool3d, AvgPool3d


@dataclasses.dataclass(frozen=True)
class X3DSize:
    """One X3D size: clip length, crop and blocks per stage (stages 2-5)."""

    frames: int
    crop: int
    depths: tuple[int, int, int, int]


X3D_SIZES: dict[str, X3DSize] = {
    "XS": X3DSize(frames=4, crop=160, depths=(3, 5, 11, 7)),
    "S": X3DSize(frames=13, crop=160, depths=(3, 5, 11, 7)),
    "M": X3DSize(frames=16, crop=224, depths=(3, 5, 11, 7)),
    "L": X3DSize(frames=16, crop=312, depths=(5, 10, 25, 15)),
}
X3D_WIDTHS = (24, 48, 96, 192)  # stage output widths (width factor 2.0)
BOTTLENECK_FACTOR = 2.25
SE_RATIO = 1 / 16
SE_SCOPES = ("frame", "clip")
BN_EPS = 1e-5


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """X3D's channel rounding: `width * multiplier` to a multiple of `divisor` (>= min)."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def _pointwise(c_in: int, c_out: int, spatial_stride: int = 1, bias: bool = False) -> Conv3d:
    """1×1×1 convolution (the "pointwise" kernel path)."""
    return Conv3d(c_in, c_out, 1, stride=(1, spatial_stride, spatial_stride), bias=bias)


def _bn(channels: int) -> BatchNorm3d:
    return BatchNorm3d(channels, eps=BN_EPS)


def _stem(width: int, temporal_fill: str) -> Sequential:
    """conv 1×3×3 s(1,2,2) → depthwise temporal 5×1×1 p(2,0,0) → BN → ReLU."""
    conv_xy = Conv3d(3, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
    conv_t = Conv3d(
        width,
        width,
        (5, 1, 1),
        padding=(2, 0, 0),
        groups=width,
        bias=False,
        temporal_fill=temporal_fill,
    )
    return Sequential({"conv_xy": conv_xy, "conv": conv_t, "bn": _bn(width), "relu": ReLU()})


def _squeeze_excite(channels: int, se_scope: str, clip_frames: int) -> BroadcastReduce:
    """`x * sigmoid(fc2(relu(fc1(pool(x)))))`, pooling each frame or a clip.

    "frame": `pool` is the spatial mean of each frame (the reference CoX3D).
    "clip": `pool` is the spatial mean averaged over a centred window of
    `2 * clip_frames - 1` frames with `clip_frames - 1` frames of uncounted padding at
    each end. On a clip of `clip_frames` frames every window covers the whole clip, so
    each frame is scaled by the clip mean: X3D's SE, exactly. Streaming, frame t waits
    for frames up to `t + clip_frames - 1`: `clip_frames - 1` frames of extra delay.
    """
    width = round_width(channels, SE_RATIO)
    pools: dict[str, Layer] = {"pool": AdaptiveAvgPool3d((1, 1), temporal_kernel_size=1)}
    if se_scope == "clip" and clip_frames > 1:
        pools["clip_pool"] = AvgPool3d(
            (2 * clip_frames - 1, 1, 1),
            stride=1,
            padding=(clip_frames - 1, 0, 0),
            count_include_pad=False,
        )
    scale = Sequential(
        {
            **pools,
            "fc1": _pointwise(channels, width, bias=True),
            "relu": ReLU(),
            "fc2": _pointwise(width, channels, bias=True),
            "sigmoid": Sigmoid(),
        }
    )
    x = Identity() if scale.delay == 0 else Delay(scale.delay)
    return BroadcastReduce({"x": x, "scale": scale}, reduce="mul")


def _block(
    c_in: int,
    c_out: int,
    inner: int,
    first: bool,
    use_se: bool,
    se_scope: str,
    se_clip_frames: int,
    temporal_fill: str,
) -> Sequential:
    """One bottleneck block: `relu(shortcut(x) + branch2(x))`."""
    stride = 2 if first else 1
    layers: dict[str, Layer] = {
        "a": _pointwise(c_in, inner),
        "a_bn": _bn(inner),
        "a_relu": ReLU(),
        "b": Conv3d(
            inner,
            inner,
            3,
            stride=(1, stride, stride),
            padding=1,
            groups=inner,
            bias=False,
            temporal_fill=temporal_fill,
        ),
        "b_bn": _bn(inner),
    }
    if use_se:
        layers["se"] = _squeeze_excite(inner, se_scope, se_clip_frames)
    layers.update({"swish": SiLU(), "c": _pointwise(inner, c_out), "c_bn": _bn(c_out)})
    branch2 = Sequential(layers)
    if first:
        # Strided shortcut; its Delay lines it up with the depthwise conv's delay.
        branch1 = Sequential(
            {
                "conv": _pointwise(c_in, c_out, spatial_stride=stride),
                "bn": _bn(c_out),
                "delay": Delay(branch2.delay, temporal_fill),
            }
        )
    else:
        # Identity shortcut: what `Residual(branch2)` builds, with named branches.
        branch1 = Delay(branch2.delay, temporal_fill)
    total = BroadcastReduce({"branch1": branch1, "branch2": branch2}, reduce="sum")
    return Sequential({"sum": total, "relu": ReLU()})


def _stage(
    c_in: int, c_out: int, depth: int, se_scope: str, se_clip_frames: int, temporal_fill: str
) -> Sequential:
    inner = int(BOTTLENECK_FACTOR * c_out)
    blocks = {
        f"res{j}": _block(
            c_in if j == 0 else c_out,
            c_out,
            inner,
            first=j == 0,
            use_se=j % 2 == 0,
            se_scope=se_scope,
            se_clip_frames=se_clip_frames,
            temporal_fill=temporal_fill,
        )
        for j in range(depth)
    }
    return Sequential(blocks)


def _head(
    c_in: int,
    pool_frames: int,
    head_width: int,
    num_classes: int,
    dropout: float,
    head_activation: str | None,
) -> Sequential:
    """conv_5 → BN → ReLU → avg pool (pool_frames, H, W) → lin_5 → ReLU → projection."""
    inner = int(BOTTLENECK_FACTOR * c_in)
    layers: dict[str, Layer] = {
        "conv_5": _pointwise(c_in, inner),
        "conv_5_bn": _bn(inner),
        "conv_5_relu": ReLU(),
        "pool": AdaptiveAvgPool3d((1, 1), temporal_kernel_size=pool_frames),
        "lin_5": _pointwise(inner, head_width),
        "lin_5_relu": ReLU(),
        "flatten": Reshape(-1),
        "dropout": Dropout(dropout),
        "projection": Linear(head_width, num_classes),
    }
    layers["act"] = Softmax() if head_activation == "softmax" else Identity()
    return Sequential(layers)


@dataclasses.dataclass(frozen=True, init=False)
class X3D(Sequential):
    """The CoX3D network: a `Sequential` of `s1` (stem), `s2`…`s5` and `head`.

    Identical to the `Sequential`, except that `init`, `init_state`, `forward` and
    `step` called eagerly run as one compiled program per model and shapes (inlined
    under an outer jit/scan); eagerly, a ~100-layer step would dispatch op by op.
    """

    def init(self, key: Array) -> Params:
        return _jit_method(self, "init", key)

    def init_state(self, params: Params, frame: PyTree) -> State:
        """Fresh state for frames shaped like `frame` (array or ShapeDtypeStruct)."""
        return _jit_init_state(self, params, as_spec(frame))

    def forward(self, params: Params, clip: Array) -> Array:
        """Clip `(T, H, W, 3)` -> `(T_out, num_classes)`."""
        return _jit_method(self, "forward", params, clip)

    def step(self, params: Params, state: State, frame: Array):
        """Frame `(H, W, 3)` -> `(state, (y, valid))`, `y` `(num_classes,)`."""
        return _jit_method(self, "step", params, state, frame)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_init_state(model: X3D, params: Params, spec: jax.ShapeDtypeStruct) -> State:
    return Sequential.init_state(model, params, spec)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_method(model: X3D, method: str, *args):
    return getattr(Sequential, method)(model, *args)


def _check_ints(name: str, values: Sequence[int], n: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != n or not all(is_int_at_least(v, 1) for v in values):
        what = "a positive int" if n == 1 else f"{n} positive ints"
        got = values[0] if n == 1 and len(values) == 1 else values
        raise ValueError(f"x3d: {name} must be {what}, got {got!r}.")
    return values


def x3d(
    size: str = "S",
    num_classes: int = 400,
    head_pool_frames: int | None = None,
    temporal_fill: str = "zeros",
    se_scope: str = "frame",
    *,
    se_clip_frames: int | None = None,
    widths: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    head_width: int = 2048,
    dropout: float = 0.5,
    head_activation: str | None = "softmax",
) -> X3D:
    """Continual X3D-`size` ("XS", "S", "M", "L"): a cojax layer on `(H, W, 3)` frames.

    `head_pool_frames`: frames averaged by the head (default the size's clip length;
    CoX3D₆₄ uses 64). `temporal_fill`: start padding of the step state ("zeros" makes
    `forward` equal X3D's clip computation). `se_scope`: "clip" makes each
    squeeze-excitation average a centred window of `2 * se_clip_frames - 1` frames
    (padding uncounted), which on a clip of `se_clip_frames` frames is X3D's SE exactly,
    at `se_clip_frames - 1` frames of extra delay per SE block (CoX3D-S: 220 frames in
    all instead of 40); "frame" pools each frame's H, W only (the reference CoX3D:
    cheaper, no extra delay, an approximation of X3D). `se_clip_frames` defaults to
    `head_pool_frames`.
    `widths` (4 stage widths; the stem has `widths[0]`), `depths` (4 block counts) and
    `head_width` override the size's architecture (e.g. tiny models for tests).
    `head_activation`: "softmax" (X3D in eval) or None for logits.
    Output frames `(num_classes,)`.
    """
    if size not in X3D_SIZES:
        raise ValueError(f"x3d: size must be one of {tuple(X3D_SIZES)}, got {size!r}.")
    if se_scope not in SE_SCOPES:
        raise ValueError(f"x3d: se_scope must be one of {SE_SCOPES}, got {se_scope!r}.")
    if head_activation not in ("softmax", None):
        raise ValueError(
            f"x3d: head_activation must be 'softmax' or None, got {head_activation!r}."
        )
    config = X3D_SIZES[size]
    widths = _check_ints("widths", X3D_WIDTHS if widths is None else widths, 4)
    depths = _check_ints("depths", config.depths if depths is None else depths, 4)
    pool_frames = config.frames if head_pool_frames is None else head_pool_frames
    _check_ints("head_pool_frames", (pool_frames,), 1)
    se_frames = pool_frames if se_clip_frames is None else se_clip_frames
    _check_ints("se_clip_frames", (se_frames,), 1)
    _check_ints("num_classes", (num_classes,), 1)
    _check_ints("head_width", (head_width,), 1)

    layers: dict[str, Layer] = {"s1": _stem(widths[0], temporal_fill)}
    c_in = widths[0]
    for i, (width, depth) in enumerate(zip(widths, depths)):
        layers[f"s{i + 2}"] = _stage(c_in, width, depth, se_scope, se_frames, temporal_fill)
        c_in = width
    layers["head"] = _head(c_in, pool_frames, head_width, num_classes, dropout, head_activation)
    return X3D(layers)
