"""CoX3D step FLOPs vs X3D clip FLOPs (XLA cost analysis) on a tiny x3d.

The step must be continual: one step does the work of ONE new frame through the
network plus one head tail (pool, lin_5, projection), never the work of the window.
The clip gives the same work per frame without the step's bookkeeping: going from a
clip of P frames (1 prediction) to one of 2P frames (P + 1 predictions) adds exactly P
frames of network work and P head tails. So, with `marginal = (clip(2P) - clip(P)) / P`:

    marginal <= step <= 1.5 * marginal

The step's extra is O(activations): validity selects, counters, ring-buffer updates,
and the depthwise kernel's taps in zero padding, which the clip's XLA convolutions skip
in time. A step recomputing its window would cost ~P × marginal (>= 4× here), far
outside. Full-size figures: experiments/x3d_flops.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import cojax as co
from cojax.models.x3d import x3d

POOL = 4
CROP = 32


def tiny_x3d():
    return x3d(
        "S",
        num_classes=10,
        head_pool_frames=POOL,
        widths=(4, 8, 8, 16),
        depths=(1, 1, 1, 1),
        head_width=16,
    )


def spec(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


@pytest.mark.slow  # moved to the slow set (CI runs it) to keep the fast set under 8 min
def test_step_flops_are_one_frame_of_clip_work():
    model = tiny_x3d()
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    clip = spec(POOL, CROP, CROP, 3)
    long_clip = spec(2 * POOL, CROP, CROP, 3)
    assert jax.eval_shape(model.forward, params, clip).shape == (1, 10)
    assert jax.eval_shape(model.forward, params, long_clip).shape == (POOL + 1, 10)

    step = co.flops(model, params, spec(CROP, CROP, 3))
    short = co.clip_flops(model, params, clip)
    long = co.clip_flops(model, params, long_clip)
    marginal = (long - short) / POOL

    assert step < short  # one prediction: the step is cheaper than the clip
    assert marginal <= step <= 1.5 * marginal, (step, marginal)
