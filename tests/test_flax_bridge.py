"""`co.flax_module`: a cojax network trained inside a linen model with a TrainState."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import cojax as co
from cojax.flax_bridge import merge_params

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
