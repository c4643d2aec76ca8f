"""A small built-in continual 3D CNN (X3D-like) for the demo, the docs and the tests.

    model  = small_x3d_like(num_classes=10)
    params = init_random(model, jax.random.PRNGKey(0))
    frame  = (64, 64, 3)                    # one RGB frame, channels-last

Every temporal kernel has temporal padding 0, so the continual step at frame `t` equals
the clip network (`model.forward`) run on the last `model.receptive_field` frames:
exactly what a sliding-window clip classifier computes, without recomputing the window.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cojax.containers import Residual, Sequential
from cojax.core import Layer, Params, numpy_rng
from cojax.layers.closure import Reshape
from cojax.layers.conv import Conv3d
from cojax.layers.linear import Linear
from cojax.layers.pointwise import BatchNorm3d, ReLU
from cojax.layers.pool import AdaptiveAvgPool3d


def conv_bn_relu(
    c_in: int,
    c_out: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int] = (1, 1, 1),
    groups: int = 1,
    relu: bool = True,
) -> Sequential:
    """Conv3d (temporal padding 0, spatial 'same' padding) -> BatchNorm3d [-> ReLU]."""
    padding = (0, kernel[1] // 2, kernel[2] // 2)
    conv = Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups, bias=False)
    layers = [conv, BatchNorm3d(c_out)]
    if relu:
        layers.append(ReLU())
    return Sequential(*layers)


def bottleneck(channels: int, expansion: int, temporal_kernel: int = 3) -> Layer:
    """X3D-style residual block: pointwise expand -> depthwise k_t×3×3 -> pointwise project.

    The depthwise conv shortens the clip by `temporal_kernel - 1` frames, so the skip
    path adds the centre frame of its window ("centered" residual).
    Frame `(H, W, channels)` -> `(H, W, channels)`.
    """
    inner = channels * expansion
    module = Sequential(
        conv_bn_relu(channels, inner, (1, 1, 1)),
        conv_bn_relu(inner, inner, (temporal_kernel, 3, 3), groups=inner),
        conv_bn_relu(inner, channels, (1, 1, 1), relu=False),
    )
    return Sequential(Residual(module, temporal_fill="zeros", residual_shrink="centered"), ReLU())


def small_x3d_like(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: tuple[int, ...] = (16, 32),
    blocks_per_stage: int = 2,
    expansion: int = 3,
    head_channels: int = 64,
    temporal_window: int = 4,
) -> Sequential:
    """A small continual X3D-like classifier as a cojax `Sequential`.

    stem Conv3d 3×3×3 (spatial stride 2) -> per stage: [pointwise transition with
    spatial stride 2 between stages] + `blocks_per_stage` residual bottlenecks
    (pointwise / depthwise 3×3×3 / pointwise, BN, ReLU) -> pointwise head conv ->
    global spatial average pool and a temporal average over `temporal_window` frames
    (`AdaptiveAvgPool3d`) -> `Linear` classifier.
    Frame `(H, W, in_channels)` -> logits `(num_classes,)`; H and W divisible by
    `2 ** len(widths)` keep the shapes simple (not required).
    """
    if len(widths) < 1:
        raise ValueError(f"small_x3d_like: widths must be non-empty, got {widths}.")
    layers: dict[str, Layer] = {
        "stem": conv_bn_relu(in_channels, widths[0], (3, 3, 3), stride=(1, 2, 2))
    }
    c = widths[0]
    for s, width in enumerate(widths):
        if s > 0:
            layers[f"stage{s}_down"] = conv_bn_relu(c, width, (1, 1, 1), stride=(1, 2, 2))
            c = width
        for b in range(blocks_per_stage):
            layers[f"stage{s}_block{b}"] = bottleneck(c, expansion)
    layers["head"] = conv_bn_relu(c, head_channels, (1, 1, 1))
    layers["pool"] = AdaptiveAvgPool3d((1, 1, 1), temporal_kernel_size=temporal_window)
    layers["flatten"] = Reshape(head_channels)
    layers["classifier"] = Linear(head_channels, num_classes)
    return Sequential(layers)


def init_random(model: Layer, key: jax.Array) -> Params:
    """Random parameters for `model`, with every BatchNorm's statistics randomised too.

    The parameter tree has `model.init`'s structure; "kernel"/"bias" pairs get torch's
    default draw (uniform ±1/sqrt(fan_in), fan_in = the kernel's size without its last
    axis), and every dict holding "mean" and "var" (BatchNorm) gets random statistics
    and affine terms: torch's BN defaults would make BN an identity, which an
    equivalence check should not rely on. The values are drawn with NumPy seeded from
    `key`: on XLA:CPU, compiling `jax.random` draws for some 40 differently shaped
    leaves takes longer than the whole demo.
    """
    shapes = jax.eval_shape(model.init, key)
    return _draw(shapes, numpy_rng(key), "params")


def _is_batchnorm(tree) -> bool:
    """A BatchNorm's params: a dict holding its running "mean" and "var"."""
    return isinstance(tree, dict) and "mean" in tree and "var" in tree


def _draw(tree, rng: np.random.Generator, path: str):
    if _is_batchnorm(tree):
        return _random_bn(tree, rng)
    if isinstance(tree, dict) and "kernel" in tree:
        fan_in = math.prod(tree["kernel"].shape[:-1])
        bound = 1.0 / math.sqrt(fan_in)
        return {k: _uniform(rng, v, -bound, bound) for k, v in tree.items()}
    if isinstance(tree, dict):
        return {k: _draw(v, rng, f"{path}[{k!r}]") for k, v in tree.items()}
    raise ValueError(
        f"init_random: no rule to draw {path} ({tree}); it handles conv/linear "
        "kernel+bias and BatchNorm parameters. Use model.init(key) for other layers."
    )


def _uniform(rng: np.random.Generator, spec, low: float, high: float) -> jax.Array:
    return jnp.asarray(rng.uniform(low, high, spec.shape), spec.dtype)


def _random_bn(bn: dict, rng: np.random.Generator) -> dict:
    out = {}
    for name, spec in bn.items():
        if name in ("mean", "bias"):
            out[name] = jnp.asarray(0.1 * rng.standard_normal(spec.shape), spec.dtype)
        else:  # "var", "scale"
            out[name] = _uniform(rng, spec, 0.5, 1.5)
    return out


class ParamCount(NamedTuple):
    """Scalars in a parameter tree: learned ones and BatchNorm running statistics."""

    learned: int
    statistics: int


def num_params(params: Params) -> ParamCount:
    """Count the scalars of a parameter pytree, the BatchNorm running statistics apart.

    A dict holding "mean" and "var" is a BatchNorm: those two leaves are statistics
    (what torch keeps as buffers), the rest of the tree is learned. The model zoo's
    parameter counts are the learned ones.
    """
    if _is_batchnorm(params):
        stats = int(jnp.size(params["mean"])) + int(jnp.size(params["var"]))
        rest = {k: v for k, v in params.items() if k not in ("mean", "var")}
        return ParamCount(num_params(rest).learned, stats)
    if isinstance(params, dict):
        counts = [num_params(v) for v in params.values()]
        return ParamCount(sum(c.learned for c in counts), sum(c.statistics for c in counts))
    leaves = jax.tree_util.tree_leaves(params)
    return ParamCount(sum(int(jnp.size(leaf)) for leaf in leaves), 0)
