"""`co.flops` / `co.clip_flops` (XLA cost analysis) against analytic FLOP counts.

What XLA's CPU cost analysis counts for one continual conv step (checked on jax 0.10.2):
- a convolution / dot: 2 FLOPs (multiply + add) per kernel tap per output element,
  i.e. 2·k_t·k_h·k_w·(C_in/groups)·C_out·H_out·W_out, but only taps that land inside
  the frame: XLA folds our explicit spatial `jnp.pad` into the convolution's padding
  and skips the padding taps;
- the bias: 1 add per output element;
- the step's `zero_unless` (a select): 1 per output element;
- the frame counter (`advance_counter`): a handful of scalar ops.
- a dense "partials" step (`Conv3d.step_path`): its one conv counts 2 FLOPs per tap for
  each of the k_t temporal blocks it outputs, and the k_t − 1 adds that sum a frame's
  blocks into the partial sums come on top: (k_t − 1) per output element more than the
  window kernel's count.
- the depthwise kernel (shifted slices × per-channel weight, summed): k multiplies and
  k − 1 adds per output element, over the padded frame (no taps skipped).
`clip_flops` has no select or counter, so a clip of T frames costs T_out × the step's
kernel FLOPs. The tolerance `SCALAR_OPS` covers the counter's scalar ops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import cojax as co
from cojax.demo_models import init_random, small_x3d_like
from cojax.layers.conv import Conv3d

SCALAR_OPS = 16


def spec(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def param_specs(layer: Conv3d):
    """Parameter shapes only: FLOPs do not depend on values (and nothing is drawn)."""
    return jax.eval_shape(layer.init, jax.random.PRNGKey(0))


def step_flops(layer: Conv3d, frame: tuple[int, ...]) -> float:
    return co.flops(layer, param_specs(layer), spec(*frame))


def in_bounds_taps(size: int, k: int, pad: int) -> int:
    """Sum over the `size + 2·pad − k + 1` outputs of the kernel taps inside the frame."""
    return sum(
        sum(0 <= o + j - pad < size for j in range(k)) for o in range(size + 2 * pad - k + 1)
    )


def assert_counts(
    measured: float, kernel: int, out_elems: int, bias: bool, partial_adds: int = 0
) -> None:
    expected = kernel + (out_elems if bias else 0) + out_elems  # + bias adds + select
    expected += partial_adds * out_elems  # the partial sums of a "partials" step
    assert expected <= measured <= expected + SCALAR_OPS, (measured, expected)


@pytest.mark.parametrize("bias", [False, True])
def test_dense_conv_step_matches_analytic(bias):
    c_in, c_out, h, w, k = 4, 8, 6, 7, 3
    layer = Conv3d(c_in, c_out, k, bias=bias)
    h_out, w_out = h - k + 1, w - k + 1
    kernel = 2 * k * k * k * c_in * c_out * h_out * w_out
    assert layer.step_path == "partials"
    out = h_out * w_out * c_out
    assert_counts(step_flops(layer, (h, w, c_in)), kernel, out, bias, partial_adds=k - 1)


def test_padded_dense_conv_counts_in_bounds_taps():
    c_in, c_out, h, w = 4, 8, 6, 7
    layer = Conv3d(c_in, c_out, 3, padding=(0, 1, 1))
    taps = in_bounds_taps(h, 3, 1) * in_bounds_taps(w, 3, 1)  # < 9 · h · w
    kernel = 2 * 3 * taps * c_in * c_out
    flops = step_flops(layer, (h, w, c_in))
    assert_counts(flops, kernel, h * w * c_out, bias=True, partial_adds=2)
    naive = 2 * 27 * c_in * c_out * h * w
    assert step_flops(layer, (h, w, c_in)) < naive


def test_grouped_conv_step_divides_by_groups():
    layer = Conv3d(8, 6, 3, groups=2, bias=False)
    kernel = 2 * 27 * (8 // 2) * 6 * 4 * 4
    assert_counts(step_flops(layer, (6, 6, 8)), kernel, 4 * 4 * 6, bias=False)


@pytest.mark.parametrize("k_t", [1, 3])
def test_pointwise_conv_step_matches_analytic(k_t):
    layer = Conv3d(5, 7, (k_t, 1, 1))
    kernel = 2 * k_t * 5 * 7 * 6 * 6
    assert_counts(step_flops(layer, (6, 6, 5)), kernel, 6 * 6 * 7, bias=True)


@pytest.mark.parametrize("padding", [0, 1])
def test_depthwise_conv_step_counts_multiplies_and_adds(padding):
    c, h, w = 8, 6, 5
    layer = Conv3d(c, c, 3, padding=(0, padding, padding), groups=c, bias=False)
    assert layer.kernel_path == "depthwise"
    out = (h + 2 * padding - 2) * (w + 2 * padding - 2) * c
    taps = 27
    kernel = (taps + taps - 1) * out  # 27 multiplies, 26 adds per output element
    assert_counts(step_flops(layer, (h, w, c)), kernel, out, bias=False)


@pytest.mark.parametrize(
    "layer, frame",
    [
        (Conv3d(4, 8, 3, padding=(0, 1, 1)), (6, 6, 4)),
        (Conv3d(6, 6, 3, groups=6), (5, 5, 6)),
        (Conv3d(4, 8, (2, 1, 1)), (5, 5, 4)),
    ],
    ids=["dense", "depthwise", "pointwise"],
)
def test_clip_flops_is_t_out_times_step(layer, frame):
    params = param_specs(layer)
    T = 9
    t_out = T - layer.receptive_field + 1
    step = co.flops(layer, params, spec(*frame))
    clip = co.clip_flops(layer, params, spec(T, *frame))
    out_elems = layer.output_spec(params, spec(*frame)).size
    # The step also pays its select and counter (and a "partials" step its partial
    # sums' adds); the clip does not.
    partial_adds = layer.kernel_size[0] - 1 if layer.step_path == "partials" else 0
    kernel_only = step - out_elems * (1 + partial_adds)
    assert t_out * (kernel_only - SCALAR_OPS) <= clip <= t_out * kernel_only


@pytest.mark.slow
def test_demo_network_step_is_cheaper_than_its_clip():
    model = small_x3d_like(num_classes=4, widths=(8, 16), blocks_per_stage=1)
    params = init_random(model, jax.random.PRNGKey(0))
    frame = spec(16, 16, 3)
    step = co.flops(model, params, frame)
    clip = co.clip_flops(model, params, spec(model.receptive_field, 16, 16, 3))
    assert step > 0
    assert clip / step > 3.0, (clip, step)


def test_flops_accepts_arrays_and_specs_alike():
    layer = Conv3d(2, 3, 1)
    params = layer.init(jax.random.PRNGKey(0))
    assert co.flops(layer, params, jnp.zeros((4, 4, 2))) == co.flops(layer, params, spec(4, 4, 2))
    assert co.flops(layer, param_specs(layer), spec(4, 4, 2)) == co.flops(
        layer, params, spec(4, 4, 2)
    )
