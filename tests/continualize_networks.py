"""Real networks written without cojax, for `co.continualize`: a Flax temporal CNN, an
Equinox 1D CNN and the anchor network in plain JAX. Used by tests/test_continualize.py
and experiments/bench_continualize.py (experiments may import test helpers, never the
other way). Each builder returns `(fn, params, frame_shape)`; params are random, with
random BatchNorm statistics, so outputs depend on the input, not only on biases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BN_EPS = 1e-5  # co.BatchNorm3d's


def _randomise(tree, seed: int, scale: float = 0.5):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: a + scale * jnp.asarray(rng.standard_normal(a.shape), a.dtype), tree
    )


def flax_temporal_cnn(seed: int = 0):
    """Conv over (T, H, W) + BatchNorm (eval mode) + ReLU + avg pool + a causal conv +
    a spatial mean + Dense head; frames (6, 6, 2), delay 2, receptive field 5."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(6, (3, 3, 3), padding=((1, 1), (1, 1), (1, 1)))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
            x = nn.avg_pool(x, (2, 2, 2), strides=(1, 2, 2))
            x = nn.Conv(6, (2, 1, 1), padding=((1, 0), (0, 0), (0, 0)))(x)
            return nn.Dense(4)(x.mean(axis=(1, 2)))

    net = Net()
    variables = _randomise(net.init(jax.random.PRNGKey(seed), jnp.ones((6, 6, 6, 2))), seed + 7)
    stats = variables["batch_stats"]["BatchNorm_0"]
    stats["var"] = jnp.abs(stats["var"]) + 0.1
    return net.apply, variables, (6, 6, 2)


def equinox_1d_cnn(seed: int = 0):
    """A causal conv, a strided dilated conv, ReLUs and a Linear head (Equinox,
    channels-first inside); frames (3,), delay 2, stride 2, receptive field 7."""
    import equinox as eqx

    class Net(eqx.Module):
        c1: eqx.nn.Conv1d
        c2: eqx.nn.Conv1d
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.c1 = eqx.nn.Conv1d(3, 8, 3, padding=((2, 0),), key=k1)
            self.c2 = eqx.nn.Conv1d(8, 8, 3, stride=2, dilation=2, padding=((2, 2),), key=k2)
            self.head = eqx.nn.Linear(8, 5, key=k3)

        def __call__(self, x):  # x (T, C); Equinox convs take (C, T)
            h = jax.nn.relu(self.c1(x.T))
            h = jax.nn.relu(self.c2(h))
            return jax.vmap(self.head)(h.T)

    params, static = eqx.partition(Net(jax.random.PRNGKey(seed)), eqx.is_array)

    def fn(p, clip):
        return eqx.combine(p, static)(clip)

    return fn, params, (3,)


def plain_anchor(params: dict, clip: jax.Array) -> jax.Array:
    """The anchor network on one clip `(T, H, W, C)` in plain JAX: per block a 3×3×3
    `lax.conv_general_dilated` (time unpadded, space padded 1), the BatchNorm formula
    and `jax.nn.relu`; params as `anchor_params` makes them."""
    x = clip
    for i in range(len(params) // 3):
        conv, bn = params[str(3 * i)], params[str(3 * i + 1)]
        x = lax.conv_general_dilated(
            x[None],
            conv["kernel"],
            (1, 1, 1),
            [(0, 0), (1, 1), (1, 1)],
            dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
        )[0]
        x = x + conv["bias"]
        x = (x - bn["mean"]) * lax.rsqrt(bn["var"] + BN_EPS) * bn["scale"] + bn["bias"]
        x = jax.nn.relu(x)
    return x
