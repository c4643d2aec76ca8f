"""`co.flax_module`: a cojax network trained inside a linen model with a TrainState."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import cojax as co
from cojax.flax_bridge import merge_params
from cojax.testing import verify_contract

jax.config.update("jax_default_matmul_precision", "highest")


def make_net(p: float = 0.0):
    return co.Sequential(co.Conv1d(3, 6, 3, padding=1), co.BatchNorm1d(6), co.ReLU(), co.Dropout(p))


class Model(nn.Module):
    net: Any

    @nn.compact
    def __call__(self, clips, train: bool = False):
        features = co.flax_module(self.net)(clips, train=train)  # (B, T, 6)
        return nn.Dense(2)(features.mean(axis=1))


class State(train_state.TrainState):
    batch_stats: Any


CLIPS = np.random.default_rng(0).standard_normal((4, 8, 3)).astype(np.float32)
LABELS = np.array([0, 1, 1, 0])


@pytest.mark.slow
def test_one_trainstate_step_equals_the_cojax_route():
    """Dropout p=0 for the values (the module's dropout key is linen's to derive)."""
    net, model = make_net(), Model(make_net())
    variables = model.init({"params": jax.random.PRNGKey(0)}, CLIPS)
    assert set(variables) == {"params", "batch_stats"}
    inner = variables["params"]["CojaxModule_0"]["layer"]
    stats = variables["batch_stats"]["CojaxModule_0"]["layer"]
    assert set(stats["1"]) == {"mean", "var"} and set(inner["1"]) == {"scale", "bias"}
    state = State.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.sgd(0.1),
    )

    @jax.jit
    def train_step(state):
        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                CLIPS,
                train=True,
                rngs={"dropout": jax.random.PRNGKey(3)},
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()
            return loss, updates

        grads, updates = jax.grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads)
        return state.replace(batch_stats=updates["batch_stats"]), grads

    new_state, grads = train_step(state)

    dense = variables["params"]["Dense_0"]

    def loss_direct(p, d):
        ys, new = co.train_forward(net, p, CLIPS, jax.random.PRNGKey(3))
        logits = ys.mean(axis=1) @ d["kernel"] + d["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean(), new

    params = merge_params(inner, stats)
    (g_net, g_dense), new = jax.grad(loss_direct, argnums=(0, 1), has_aux=True)(params, dense)
    got = new_state.batch_stats["CojaxModule_0"]["layer"]["1"]
    for name in ("mean", "var"):
        np.testing.assert_allclose(got[name], new["1"][name], atol=1e-6)
    assert float(jnp.abs(got["mean"] - stats["1"]["mean"]).max()) > 1e-3
    g_inner = grads["CojaxModule_0"]["layer"]
    for path in (("0", "kernel"), ("0", "bias"), ("1", "scale"), ("1", "bias")):
        np.testing.assert_allclose(g_inner[path[0]][path[1]], g_net[path[0]][path[1]], atol=1e-6)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"], g_dense["kernel"], atol=1e-6)
    stepped = new_state.params["CojaxModule_0"]["layer"]["0"]["kernel"]
    np.testing.assert_allclose(
        stepped, inner["0"]["kernel"] - 0.1 * g_net["0"]["kernel"], atol=1e-6
    )


def test_dropout_rng_train_flag_and_streaming():
    module = co.flax_module(make_net(0.5))
    variables = module.init({"params": jax.random.PRNGKey(0)}, CLIPS)

    def train(seed):
        ys, _ = module.apply(
            variables,
            CLIPS,
            train=True,
            rngs={"dropout": jax.random.PRNGKey(seed)},
            mutable=["batch_stats"],
        )
        return np.asarray(ys)

    assert np.array_equal(train(1), train(1)) and not np.array_equal(train(1), train(2))
    assert (train(1) == 0).mean() > 0.4  # ReLU zeros plus dropped units
    # Eval mode: forward with the running statistics; streaming equals it.
    ys = np.asarray(module.apply(variables, CLIPS))
    state = module.apply(variables, CLIPS[0, 0], method="init_state")
    outs = []
    for frame in CLIPS[0]:
        state, (y, valid) = module.apply(variables, state, frame, method="step")
        if valid:
            outs.append(y)
    assert len(outs) == 7  # the 8th output comes from the end padding (flush)
    assert np.allclose(np.stack(outs), ys[0, : len(outs)], atol=1e-5)


# --------------------------------------------------------------------------- from_flax


class WindowMean(nn.Module):
    """A continual Flax module written without any cojax metadata: a Dense per frame,
    then the mean of the last `sequence_len` frames."""

    features: int
    sequence_len: int = 3

    def setup(self):
        self.proj = nn.Dense(self.features)

    def __call__(self, clip):
        y, n = self.proj(clip), self.sequence_len
        return jnp.stack([y[i : i + n].mean(0) for i in range(clip.shape[0] - n + 1)])

    def init_state(self, frame):
        return jnp.zeros((self.sequence_len - 1, self.features), frame.dtype), jnp.zeros(
            (), jnp.int32
        )

    def step(self, state, frame):
        ring, count = state
        window = jnp.concatenate([ring, self.proj(frame)[None]])
        valid = count >= self.sequence_len - 1
        y = jnp.where(valid, window.mean(0), 0.0)
        return (window[1:], jnp.minimum(count + 1, self.sequence_len - 1)), (y, valid)


@pytest.mark.slow
def test_from_flax_makes_any_continual_module_a_layer():
    layer = co.from_flax(WindowMean(4), frame_shape=(3,))
    assert (layer.receptive_field, layer.delay, layer.stride) == (3, 2, 1)
    verify_contract(layer, (3,))
    # It composes: inside a Sequential, after a cojax layer, with a delay of 2 + 1.
    net = co.Sequential(co.Conv1d(2, 3, 2), layer, co.ReLU())
    assert net.delay == 3
    verify_contract(net, (2,))
    params = net.init(jax.random.PRNGKey(0))
    assert co.trainable_mask(net, params)["1"]["params"]["proj"]["kernel"] is True


def test_nystrom_layer_is_the_general_bridge():
    module = co.ContinualNystromAttention(embed_dim=4, num_heads=2, num_landmarks=2, sequence_len=4)
    assert co.NystromLayer is co.FlaxLayer
    layer = co.from_flax(module)
    assert layer == co.NystromLayer(module) and layer.frame_shape == (4,) and layer.delay == 3
    assert not hasattr(module, "delay") and not hasattr(module, "receptive_field")


def test_from_flax_errors():
    with pytest.raises(TypeError, match="FlaxLayer: expected a flax.linen Module, got Conv1d"):
        co.from_flax(co.Conv1d(2, 2, 2))
    with pytest.raises(ValueError, match="Dense has no init_state method"):
        co.from_flax(nn.Dense(3), frame_shape=(3,), window=1)
    with pytest.raises(ValueError, match="pass frame_shape="):
        co.from_flax(WindowMean(4))
    layer = co.from_flax(WindowMean(4), frame_shape=(3,))
    params = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="FlaxLayer: expected 3 channels .* got 5"):
        layer.init_state(params, jnp.ones((5,)))
    two_d = co.from_flax(WindowMean(4), frame_shape=(2, 3))
    with pytest.raises(ValueError, match=r"expected a frame of shape \(2, 3\) for WindowMean"):
        two_d.check_frame(jnp.ones((4, 3)))
