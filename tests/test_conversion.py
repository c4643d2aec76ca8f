"""`conversion.from_continual`: parity of converted continual-inference networks.

For every network: random torch weights (BatchNorm with random running statistics,
eval mode), convert, feed the same random streams (a batch of 2, vmapped in cojax) and
compare, as max abs error (float32, tolerance 1e-5):
  (a) cojax `forward` vs the torch `forward` on the clip,
  (b) every valid output of cojax `forward_steps` vs the reference's `forward_steps`
      and its `forward_step` loop, and vs the clip outputs (the sliding-window maths),
and the static metadata (delay, receptive field, stride, padding) vs the reference's.
Where the reference is known to be wrong (docs/continual-inference.md) the test
compares against the plain sliding-window computation instead and says so.
The errors measured are collected in `ERRORS` and printed by `test_zz_report_errors`
(run `pytest -s tests/test_conversion.py` to see them).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import continual as co
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cojax
import cojax.layers.pointwise
from cojax.core import forward_steps
from conversion.continual import from_continual

jax.config.update("jax_default_matmul_precision", "highest")

TOL = 1e-5
BATCH = 2
ERRORS: dict[str, dict[str, float]] = {}


# --------------------------------------------------------------------------- helpers


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter ~ randn / sqrt(fan_in); BatchNorm running stats random; eval."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 4
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return net.eval()


def to_cojax(x: torch.Tensor) -> jax.Array:
    """torch (B, C, T, *S) -> cojax streams (B, T, *S, C)."""
    return jnp.asarray(np.moveaxis(x.numpy(), 1, -1))


def to_numpy(y: Any) -> np.ndarray:
    """torch (B, C, T, *S) output -> (B, T, *S, C)."""
    if isinstance(y, tuple):  # a top-level RNN returns (output, hidden)
        y = y[0]
    return np.moveaxis(y.detach().numpy(), 1, -1)


def max_error(ours: Any, theirs: np.ndarray, what: str) -> float:
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shapes differ: {ours.shape} vs {theirs.shape}"
    return float(np.max(np.abs(ours - theirs), initial=0.0))


def reference_steps(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The reference's `forward_steps` on a fresh copy of the network."""
    with torch.no_grad():
        return to_numpy(net.forward_steps(x))


def reference_step_loop(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The reference's `forward_step` on a fresh copy, one frame at a time; `None`s dropped."""
    with torch.no_grad():
        outs = [net.forward_step(x[:, :, t]) for t in range(x.shape[2])]
    return to_numpy(torch.stack([o for o in outs if isinstance(o, torch.Tensor)], dim=2))


def run_cojax(layer, params, clips: jax.Array, with_forward: bool):
    """vmapped, jitted `forward` and `forward_steps` (without and with `pad_end`).

    Returns (forward, valid step outputs, valid step outputs with the end padding).
    """

    def one_stream(p, clip):
        state = layer.init_state(p, clip[0])
        _, ys, valid = forward_steps(layer, p, state, clip)
        _, ys_end, valid_end = forward_steps(layer, p, state, clip, pad_end=True)
        y = layer.forward(p, clip) if with_forward else None
        return y, (ys, valid), (ys_end, valid_end)

    y, *outs = jax.jit(jax.vmap(one_stream, in_axes=(None, 0)))(params, clips)
    selected = []
    for ys, valid in outs:
        valid = np.asarray(valid)
        assert (valid == valid[:1]).all(), "streams of one batch disagree on validity"
        selected.append(np.asarray(ys)[:, valid[0]])
    return y, *selected


@dataclasses.dataclass
class Case:
    """A network and how to check it.

    `clip_reference(net, x)`: the expected clip output (default: the torch forward);
    the valid step outputs must equal its first frames.
    `reference_steps_ok` / `reference_loop_ok`: whether the reference's own
    `forward_steps` / `forward_step` are correct here (False for its known defects).
    `meta`: expected (delay, receptive_field, stride, padding) where the reference's
    differ; `compare_forward=False` skips (a) (with the reason in `note`).
    """

    build: Callable[[], nn.Module]
    frame: tuple[int, ...]  # torch (C, *S)
    frames: int | None = None  # T; default 3 x receptive field (at least 8)
    clip_reference: Callable | None = None
    reference_steps_ok: bool = True
    reference_loop_ok: bool = True
    meta: tuple[int, int, int, int] | None = None
    compare_forward: bool = True
    options: dict = dataclasses.field(default_factory=dict)
    note: str = ""


def build(case: Case) -> nn.Module:
    """A fresh network with the same random weights every call (the reference's modules
    keep stream state, and some cannot be deep-copied)."""
    torch.manual_seed(0)
    return randomize(case.build())


def check(name: str, case: Case) -> None:
    net = build(case)
    layer, params = from_continual(net, **case.options)

    reference_meta = (net.delay, net.receptive_field, net.stride[0], net.padding[0])
    ours = (layer.delay, layer.receptive_field, layer.stride, layer.padding)
    assert ours == (case.meta or reference_meta), (name, ours, case.meta or reference_meta)

    T = case.frames or max(8, 3 * layer.receptive_field)
    x = torch.randn(BATCH, case.frame[0], T, *case.frame[1:])
    with torch.no_grad():
        clip_ref = to_numpy(case.clip_reference(net, x) if case.clip_reference else net(x))
    y, steps, steps_end = run_cojax(layer, params, to_cojax(x), case.compare_forward)
    assert np.std(clip_ref) > 1e-2, f"{name}: the expected output is (nearly) constant"

    errors = {}
    if case.compare_forward:
        errors["forward"] = max_error(y, clip_ref, f"{name}: forward")
        errors["steps_pad_end"] = max_error(steps_end, clip_ref, f"{name}: pad_end")
    errors["steps_vs_clip"] = max_error(steps, clip_ref[:, : steps.shape[1]], f"{name}: steps")
    assert steps.shape[1] >= 1, f"{name}: no valid step outputs"
    if case.reference_steps_ok:
        errors["steps_vs_reference"] = max_error(
            steps, reference_steps(build(case), x), f"{name}: reference forward_steps"
        )
    if case.reference_loop_ok:
        errors["steps_vs_reference_loop"] = max_error(
            steps, reference_step_loop(build(case), x), f"{name}: reference forward_step"
        )
    ERRORS[name] = {**errors, "note": case.note} if case.note else errors
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"{name}: max abs errors above {TOL}: {bad}"


def sliding(fn: Callable, k: int, stride: int = 1) -> Callable:
    """The plain sliding-window computation: `fn` on each window of `k` frames."""

    def expected(net, x):
        outs = [fn(net, x[:, :, t : t + k]) for t in range(0, x.shape[2] - k + 1, stride)]
        return torch.cat(outs, dim=2)

    return expected


def per_frame(net, x):
    """torch forward of each frame on its own (a per-frame layer's intended maths)."""
    return torch.cat([net(x[:, :, t : t + 1]) for t in range(x.shape[2])], dim=2)


def first_of_window(net, x):
    """The clip model on a window, output at the window's first frame."""
    return net(x)[:, :, :1]


# --------------------------------------------------------------------------- networks


def norm_relu(module, channels):
    return co.Sequential(module, nn.BatchNorm3d(channels), nn.ReLU())


def inception():
    """The reference README's continual 3D Inception module (channels scaled down)."""
    return co.BroadcastReduce(
        co.Conv3d(6, 2, kernel_size=1),
        co.Sequential(
            norm_relu(co.Conv3d(6, 3, kernel_size=1), 3),
            norm_relu(co.Conv3d(3, 4, kernel_size=3, padding=1), 4),
        ),
        co.Sequential(
            norm_relu(co.Conv3d(6, 2, kernel_size=1), 2),
            norm_relu(co.Conv3d(2, 3, kernel_size=5, padding=2), 3),
        ),
        co.Sequential(
            co.MaxPool3d(kernel_size=(1, 3, 3), padding=(0, 1, 1), stride=1),
            norm_relu(co.Conv3d(6, 2, kernel_size=1), 2),
        ),
        reduce="concat",
    )


def mobilenet_v2_block():
    """The README's MobileNetV2 inverted residual block (32/64 channels -> 4/8)."""
    return co.Residual(
        co.Sequential(
            co.Conv3d(4, 8, kernel_size=(1, 1, 1)),
            nn.BatchNorm3d(8),
            nn.ReLU6(),
            co.Conv3d(8, 8, kernel_size=(3, 3, 3), padding=(1, 1, 1), groups=8),
            nn.ReLU6(),
            co.Conv3d(8, 4, kernel_size=(1, 1, 1)),
            nn.BatchNorm3d(4),
        )
    )


def squeeze_excitation():
    """The README's SE block (256/16 channels -> 8/2), temporal pool kernel 7 as there."""
    return co.Residual(
        co.Sequential(
            OrderedDict(
                [
                    ("pool", co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=7)),
                    ("down", co.Conv3d(8, 2, kernel_size=1)),
                    ("act1", nn.ReLU()),
                    ("up", co.Conv3d(2, 8, kernel_size=1)),
                    ("act2", nn.Sigmoid()),
                ]
            )
        ),
        reduce="mul",
    )


def activations():
    """Every activation on the same input, side by side (concatenated channels)."""
    layers = OrderedDict(
        [
            ("relu", nn.LeakyReLU(0.2)),
            ("elu", nn.ELU(0.7)),
            ("celu", nn.CELU(1.3)),
            ("gelu", nn.GELU("tanh")),
            ("softplus", nn.Softplus(2.0, 5.0)),
            ("hardtanh", nn.Hardtanh(-0.5, 0.8)),
            ("prelu", nn.PReLU(3)),
            ("selu", nn.SELU()),
            ("hardswish", nn.Hardswish()),
            ("silu", nn.SiLU()),
            ("softshrink", nn.Softshrink(0.1)),
            ("threshold", nn.Threshold(-0.2, 0.3)),
            ("rrelu", nn.RReLU()),
            ("tanhshrink", nn.Tanhshrink()),
            ("softsign", nn.Softsign()),
            ("logsigmoid", nn.LogSigmoid()),
            ("dropout", nn.Dropout(0.3)),
            ("dropout3d", nn.Dropout3d(0.3)),
            ("softmax", nn.Softmax(dim=1)),
            ("log_softmax", nn.LogSoftmax(dim=-1)),
            ("softmin", nn.Softmin(dim=1)),
            ("mish", nn.Mish()),
            ("hardsigmoid", nn.Hardsigmoid()),
            ("sigmoid", nn.Sigmoid()),
            ("tanh", nn.Tanh()),
            ("relu6", nn.ReLU6()),
            ("hardshrink", nn.Hardshrink(0.3)),
        ]
    )
    # Each in a co.Sequential: the reference's BroadcastReduce cannot hold plain torch
    # layers (it reads their `delay` and sets their call_mode to a string).
    # co.forward_stepping is what co.continual does for these (and lacks for Mish).
    return co.BroadcastReduce(
        OrderedDict((k, co.Sequential(co.forward_stepping(m))) for k, m in layers.items()),
        reduce="concat",
    )


def spec_example():
    """specs: Conv(k3,p1) -> MaxPool(k2,s2) -> Conv(k3,s2,p1): stride 4, padding 3, rf 8."""
    return co.Sequential(
        co.Conv2d(2, 3, kernel_size=3, padding=1),
        co.MaxPool2d(kernel_size=2, stride=2),
        co.Conv2d(3, 2, kernel_size=3, stride=2, padding=1),
    )


def paper_example():
    """The library paper's / README's mixed delay example (arXiv 2204.03418): l1 with
    receptive field 3, padding 2, stride 2, then l2 with receptive field 3, no padding."""
    return co.Sequential(
        co.Conv1d(2, 3, kernel_size=3, padding=2, stride=2),
        co.Conv1d(3, 2, kernel_size=3),
    )


def nested_containers():
    return co.Sequential(
        OrderedDict(
            [
                ("stem", co.Conv2d(2, 4, kernel_size=(3, 3), padding=(0, 1))),
                (
                    "branches",
                    co.BroadcastReduce(
                        OrderedDict(
                            [
                                ("a", co.Conv2d(4, 4, kernel_size=(5, 1), padding=(2, 0))),
                                ("b", co.Sequential(nn.ReLU(), co.Delay(1))),
                                ("c", co.AvgPool2d((3, 3), stride=1, padding=(1, 1))),
                            ]
                        ),
                        reduce="concat",
                    ),
                ),
                ("head", co.Conv2d(12, 3, kernel_size=(2, 1), stride=(2, 1))),
            ]
        )
    )


def dispatch_network():
    return co.Sequential(
        co.Broadcast(),
        # Delay-0 branches: the reference passes the `None`s of a delayed Parallel on to
        # the next Parallel, whose closures then fail.
        co.Parallel(
            co.Conv1d(3, 3, 3, padding=2),
            co.Sequential(co.Conv1d(3, 3, 2, padding=1), co.Conv1d(3, 3, 2, padding=1)),
        ),
        co.ParallelDispatch([1, 0, [0, 1]]),
        co.Parallel(co.Add(1.5), co.Multiply(-2.0), co.Reduce("mul")),
        co.Reduce("max"),
    )


def closures():
    return co.Sequential(
        co.Add(0.25),
        co.BroadcastReduce(
            co.Identity(), co.Zero(), co.One(), co.Constant(2.5), co.Multiply(3.0), reduce="sum"
        ),
        co.Conv1d(3, 2, 2),
    )


def residual(shrink):
    return co.Residual(
        co.Sequential(co.Conv1d(3, 3, 3), co.Conv1d(3, 3, 3)), residual_shrink=shrink
    )


def readme_residual_explicit():
    return co.Sequential(
        co.Broadcast(2),
        co.Parallel(co.Conv3d(3, 3, kernel_size=3, padding=1), co.Delay(2)),
        co.Reduce("sum"),
    )


def simple_network():
    """The co.Linear docstring's network: Conv3d -> AdaptiveAvgPool3d -> Linear."""
    return co.Sequential(
        co.Conv3d(3, 6, 3),
        co.AdaptiveAvgPool3d((1, 1, 1), kernel_size=4),
        co.Linear(6, 5, channel_dim=1),
    )


def conv_replicate_time(net, x):
    """torch conv on the clip padded in time by repeating its first/last frame."""
    p = net.padding[0]
    x = torch.cat([x[:, :, :1]] * p + [x] + [x[:, :, -1:]] * p, dim=2)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.ndim]
    return conv(
        x, net.weight, net.bias, net.stride, (0, *net.padding[1:]), net.dilation, net.groups
    )


CASES: dict[str, Case] = {
    # --- single layers
    "conv1d": Case(lambda: co.Conv1d(3, 4, 3, padding=1), (3,)),
    "conv1d_strided_replicate": Case(
        # temporal_fill="replicate" with padding_mode="zeros": the reference's forward pads
        # time with zeros, its steps replicate; cojax follows the steps (temporal_fill).
        lambda: co.Conv1d(3, 4, 4, stride=2, padding=2, temporal_fill="replicate"),
        (3,),
        clip_reference=conv_replicate_time,
        note="reference forward pads time with zeros, its steps replicate: clip vs replicate",
    ),
    "conv2d": Case(lambda: co.Conv2d(3, 4, (3, 3), stride=(2, 2), padding=(1, 1)), (3, 6)),
    "conv3d_grouped": Case(
        lambda: co.Conv3d(4, 6, (3, 3, 3), padding=(1, 1, 1), groups=2, dilation=(1, 2, 1)),
        (4, 6, 5),
    ),
    "conv3d_depthwise_replicate": Case(
        lambda: co.Conv3d(
            3,
            6,
            (2, 3, 3),
            padding=(1, 1, 1),
            groups=3,
            padding_mode="replicate",
            temporal_fill="replicate",
        ),  # fmt: skip
        (3, 4, 4),
    ),
    "conv3d_from_nn": Case(lambda: co.continual(nn.Conv3d(2, 3, 3, padding=1)), (2, 4, 4)),
    "conv_kt1_stride2": Case(
        # Defect 5: the reference's forward_step loop emits every step here.
        lambda: co.Conv2d(2, 3, (1, 3), stride=(2, 1)),
        (2, 5),
        reference_loop_ok=False,
        note="reference forward_step loop wrong (defect 5)",
    ),
    "maxpool1d": Case(lambda: co.MaxPool1d(3, stride=1, padding=1), (3,)),
    "avgpool1d": Case(lambda: co.AvgPool1d(2, stride=2), (3,)),
    "maxpool2d": Case(lambda: co.MaxPool2d((2, 3), stride=(1, 2)), (3, 7)),
    "avgpool2d_padding": Case(lambda: co.AvgPool2d((3, 3), stride=1, padding=1), (2, 5)),
    "maxpool3d": Case(lambda: co.MaxPool3d((2, 2, 2), stride=(1, 2, 2)), (2, 4, 4)),
    "avgpool3d_finding": Case(
        lambda: co.AvgPool3d((2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)), (2, 5, 5)
    ),
    "maxpool3d_temporal_padding": Case(
        # The reference starts its max-pool buffer with zeros (its default temporal_fill)
        # while its forward pads with -inf: compare with the torch forward.
        lambda: co.MaxPool3d((2, 1, 1), stride=1, padding=(1, 0, 0)),
        (2, 3, 3),
        reference_steps_ok=False,
        reference_loop_ok=False,
        note="reference steps start with a zero fill, not -inf: compared with torch forward",
    ),
    "maxpool1d_dilated": Case(
        # Defect 4: wrong values and a delay/rf one dilation too large in the reference.
        lambda: co.MaxPool1d(3, stride=1, dilation=2),
        (3,),
        reference_steps_ok=False,
        reference_loop_ok=False,
        meta=(4, 5, 1, 0),
        note="reference wrong for temporal dilation (defect 4): compared with torch forward",
    ),
    "adaptive_avg3d": Case(
        # The reference's forward pools the whole clip: compare each 4-frame window.
        lambda: co.AdaptiveAvgPool3d((1, 2, 1), kernel_size=4),
        (3, 5, 4),
        clip_reference=sliding(lambda net, w: net(w), 4),
    ),
    "adaptive_max2d": Case(
        lambda: co.AdaptiveMaxPool2d((1, 2), kernel_size=3, stride=2),
        (3, 5),
        clip_reference=sliding(lambda net, w: net(w), 3, stride=2),
        note="adaptive pool: clip forward compared window by window (3 frames, stride 2)",
    ),
    "adaptive_avg2d": Case(
        lambda: co.AdaptiveAvgPool2d((1, 3), kernel_size=3),
        (2, 7),
        clip_reference=sliding(lambda net, w: net(w), 3),
    ),
    "adaptive_max3d": Case(
        lambda: co.AdaptiveMaxPool3d((1, None, 2), kernel_size=2, padding=1),
        (2, 3, 4),
        # With temporal padding the clip is padded with -inf before each window's pool.
        clip_reference=lambda net, x: sliding(lambda n, w: n(w), 2)(
            net, torch.nn.functional.pad(x, (0, 0, 0, 0, 1, 1), value=-float("inf"))
        ),
        reference_steps_ok=False,
        reference_loop_ok=False,
        note="reference's max-pool start fill is zeros (not -inf): compared window by window",
    ),
    "linear": Case(lambda: co.Sequential(nn.BatchNorm1d(3), co.Linear(3, 5, channel_dim=1)), (3,)),
    "linear_spatial": Case(lambda: co.Linear(3, 2, channel_dim=1), (3, 2, 3)),
    "rnn": Case(lambda: co.RNN(3, 4, num_layers=2, nonlinearity="relu"), (3,), frames=10),
    "gru": Case(lambda: co.GRU(3, 4, num_layers=2), (3,), frames=10),
    "lstm": Case(lambda: co.LSTM(3, 5, num_layers=2, proj_size=2), (3,), frames=10),
    "rnn_from_nn": Case(lambda: co.Sequential(nn.LSTM(3, 4)), (3,), frames=10),
    "activations": Case(activations, (3, 4)),
    "glu_softmin": Case(lambda: co.Sequential(nn.GLU(dim=1), nn.Softmin(dim=1)), (4, 3)),
    "batchnorm": Case(
        lambda: co.Sequential(
            nn.BatchNorm3d(3),
            co.Conv3d(3, 2, 1),
            nn.InstanceNorm3d(2, affine=True, track_running_stats=True),
        ),
        (3, 3, 4),
    ),  # fmt: skip
    "batchnorm1d_2d": Case(
        lambda: co.Sequential(nn.BatchNorm2d(3), co.Conv2d(3, 2, 1), nn.Softmax2d()), (3, 4)
    ),
    "layernorm": Case(lambda: co.Sequential(nn.LayerNorm((3, 4))), (2, 3, 4)),
    "groupnorm": Case(
        # torch's GroupNorm forward averages over time too; the reference (and cojax)
        # normalise each frame: compare with torch GroupNorm frame by frame.
        lambda: co.Sequential(nn.GroupNorm(2, 4)),
        (4, 3, 3),
        clip_reference=per_frame,
        reference_steps_ok=False,
        note="GroupNorm compared with torch frame by frame: the reference's forward and "
        "forward_steps run it on the whole clip (mixing time); its forward_step is per frame",
    ),
    "delay_replicate": Case(lambda: co.Sequential(co.Delay(3, temporal_fill="replicate")), (2,)),
    "skip": Case(lambda: co.Sequential(co.Conv1d(2, 2, 3), co.Skip(2)), (2,)),
    "reshape": Case(
        lambda: co.Sequential(co.Reshape(BATCH, 12), co.Linear(12, 3, channel_dim=1)),
        (2, 2, 3),
    ),
    "closures": Case(closures, (3,)),
    "lambda_override": Case(
        lambda: co.Sequential(co.Conv1d(2, 2, 2), co.Lambda(torch.tanh)),
        (2,),
        options={"lambdas": {"1": jnp.tanh}},
    ),
    "conditional": Case(
        lambda: co.Sequential(
            co.Conv1d(2, 3, 3), co.Conditional(lambda m, x: True, co.Conv1d(3, 3, 3), nn.ReLU())
        ),
        (2,),
        options={"conditional_predicates": {"1": lambda x: True}},
    ),
    # --- containers
    "nested_containers": Case(nested_containers, (2, 4)),
    "dispatch": Case(dispatch_network, (3,)),
    "residual_plain": Case(lambda: co.Residual(co.Conv1d(3, 3, 3, padding=1)), (3,)),
    "residual_centered": Case(lambda: residual(True), (3,)),
    "residual_lagging": Case(lambda: residual("lagging"), (3,)),
    "residual_leading": Case(lambda: residual("leading"), (3,)),
    "broadcast_reduce_mul_auto_delay": Case(
        lambda: co.BroadcastReduce(
            co.Conv1d(3, 3, 5, padding=2),
            co.Conv1d(3, 3, 1),
            co.Sequential(nn.Tanh()),
            reduce="mul",
        ),
        (3,),
        frames=16,
    ),
    # --- the reference README's and the specs' networks
    "readme_quickstart_conv": Case(lambda: co.Conv3d(1, 1, kernel_size=(3, 3, 3)), (1, 3, 3)),
    "readme_residual_explicit": Case(readme_residual_explicit, (3, 4, 4)),
    "readme_mobilenet_v2_block": Case(mobilenet_v2_block, (4, 5, 5)),
    "readme_inception": Case(inception, (6, 5, 5)),
    "readme_squeeze_excitation": Case(
        # The README's clip SE pools the whole clip; streamed, each output is the frame
        # 6 steps back times the gate of the last 7 frames: the clip model's output at
        # the first frame of each 7-frame window.
        squeeze_excitation,
        (8, 3, 3),
        compare_forward=False,
        clip_reference=sliding(first_of_window, 7),
        note="steps vs the clip SE on every 7-frame window (its output at the first frame)",
    ),
    "linear_docstring_network": Case(
        simple_network,
        (3, 4, 4),
        clip_reference=lambda net, x: torch.cat(
            [net(x[:, :, t : t + 6]) for t in range(x.shape[2] - 5)], dim=2
        ),
        note="adaptive pool: clip forward compared window by window (6 frames)",
    ),
    "spec_example": Case(spec_example, (2, 4)),
    "paper_example": Case(paper_example, (2,)),
}


SLOW_CASES = {"readme_inception"}  # 9 s here; the README block runs it too


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASES]
)
def test_parity(name):
    check(name, CASES[name])


def test_spec_example_metadata_matches_specs():
    net = spec_example()
    layer, _ = from_continual(net)
    assert (layer.stride, layer.padding, layer.receptive_field, layer.delay) == (4, 3, 8, 4)
    assert (net.stride[0], net.padding[0], net.receptive_field, net.delay) == (4, 3, 8, 4)


# --------------------------------------------------------------------------- structure


def test_names_and_params_follow_the_torch_tree():
    net = randomize(nested_containers())
    layer, params = from_continual(net)
    assert [n for n, _ in layer.children] == ["stem", "branches", "head"]
    assert [n for n, _ in layer["branches"].children] == ["a", "b", "c"]
    # The reference wrapped the shorter branches b, c with a Delay: the same here.
    for branch in ("b", "c"):
        ref = net.branches._modules[branch]
        assert isinstance(ref, co.Sequential) and isinstance(ref[1], co.Delay)
        ours = layer["branches"][branch]
        assert isinstance(ours, cojax.Sequential) and isinstance(ours[1], cojax.Delay)
        assert ours[1].delay == ref[1].delay == 1
    assert layer["branches"]["b"][0][1].delay == 1  # the user's own Delay, kept
    kernel = params["branches"]["a"]["kernel"]
    weight = net.branches.a.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(kernel), np.transpose(weight, (2, 3, 1, 0)))


def test_conditional_without_on_false_and_a_lambda_layer():
    net = co.Sequential(
        co.Conditional(lambda m, x: True, co.Conv1d(2, 2, 3)), co.Lambda(torch.sigmoid)
    )
    layer, params = from_continual(
        randomize(net),
        conditional_predicates={"0": lambda x: True},
        lambdas={"1": cojax.layers.pointwise.Sigmoid()},
    )
    assert isinstance(layer["1"], cojax.layers.pointwise.Sigmoid)
    assert layer["0"].on_false.delay == layer["0"].on_true.delay == 2
    assert params["0"]["on_false"] == {"0": {}, "1": {}}
    x = torch.randn(1, 2, 9)
    with torch.no_grad():
        expected = to_numpy(net(x))[0]
    np.testing.assert_allclose(layer.forward(params, to_cojax(x)[0]), expected, atol=TOL)


def test_conversion_does_not_add_delays_twice():
    net = co.BroadcastReduce(co.Conv1d(2, 2, 5), co.Conv1d(2, 2, 3), reduce="sum")
    layer, params = from_continual(net)
    assert isinstance(layer["1"], cojax.Sequential) and layer["1"][1].delay == 2
    assert isinstance(layer["0"], type(layer["1"][0]))
    assert set(params["1"]) == {"0", "1"}


# --------------------------------------------------------------------------- errors


class Custom(nn.Module):
    def forward(self, x):
        return x


def test_unknown_module_names_type_and_path():
    custom = co.forward_stepping(Custom())
    net = co.Sequential(OrderedDict([("a", co.Conv1d(2, 2, 1)), ("b", co.Sequential(custom))]))
    with pytest.raises(NotImplementedError, match=r"Custom.*'b\.0'"):
        from_continual(net)


def test_lambda_needs_a_jax_function():
    net = co.Sequential(co.Lambda(torch.tanh))
    with pytest.raises(NotImplementedError, match=r"lambdas=\{'0': fn\}"):
        from_continual(net)


def test_custom_reduce_needs_a_jax_function():
    net = co.BroadcastReduce(co.Conv1d(2, 2, 1), co.Conv1d(2, 2, 1), reduce=lambda xs: xs[0])
    with pytest.raises(NotImplementedError, match="custom torch function.*JAX"):
        from_continual(net)
    layer, _ = from_continual(net, reductions={"": lambda xs: xs[0] - xs[1]})
    assert isinstance(layer, cojax.BroadcastReduce)


def test_conditional_needs_a_jax_predicate():
    net = co.Sequential(co.Conditional(lambda m, x: True, nn.ReLU()))
    with pytest.raises(NotImplementedError, match=r"conditional_predicates=\{'0': fn\}"):
        from_continual(net)


def test_linear_on_the_last_torch_axis_is_rejected():
    with pytest.raises(NotImplementedError, match="channel_dim=1"):
        from_continual(co.Sequential(nn.Linear(3, 4)))


def test_pool_with_replicate_fill_and_padding_is_rejected():
    net = co.MaxPool1d(3, stride=1, padding=1, temporal_fill="replicate")
    with pytest.raises(NotImplementedError, match="temporal_fill='replicate'"):
        from_continual(net)


def test_plain_adaptive_pool_needs_a_temporal_kernel():
    with pytest.raises(NotImplementedError, match=r"co\.AdaptiveAvgPool3d\(output_size, kernel"):
        from_continual(nn.AdaptiveAvgPool3d(1))


def test_zz_report_errors():
    """Print the max abs errors measured above (`pytest -s` shows them)."""
    width = max(len(n) for n in ERRORS) if ERRORS else 0
    for name, errors in ERRORS.items():
        cells = ", ".join(f"{k}={v:.2e}" for k, v in errors.items() if k != "note")
        note = f"  [{errors['note']}]" if "note" in errors else ""
        print(f"{name:<{width}}  {cells}{note}")
    values = [v for errors in ERRORS.values() for k, v in errors.items() if k != "note"]
    assert all(v <= TOL for v in values)
