"""RNN / GRU / LSTM: contract, parity with torch.nn (random weights, given state)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from cojax.core import forward_steps
from cojax.layers.recurrent import GRU, LSTM, RNN, LSTMState, RNNState
from cojax.testing import verify_contract

T, IN, H, L = 7, 3, 5, 2


def random_clip(shape, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def assert_close(ours, theirs, tol=1e-5):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs), initial=0.0) <= tol


def torch_twin(layer, params):
    """torch.nn module with the same weights (ours are torch's, transposed)."""
    kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=True)
    if isinstance(layer, RNN):
        module = nn.RNN(
            layer.input_size, layer.hidden_size, nonlinearity=layer.nonlinearity, **kwargs
        )
    elif isinstance(layer, GRU):
        module = nn.GRU(layer.input_size, layer.hidden_size, **kwargs)
    else:
        module = nn.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size, **kwargs)
    names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
    names["w_hr"] = "weight_hr"
    with torch.no_grad():
        for k, p in enumerate(params["layers"]):
            for ours, value in p.items():
                value = np.array(value)
                value = value.T if ours.startswith("w") else value
                getattr(module, f"{names[ours]}_l{k}").copy_(torch.from_numpy(value))
    return module


def random_state(layer, seed=7):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    h = jax.random.normal(keys[0], (layer.num_layers, layer.output_size))
    if isinstance(layer, LSTM):
        return LSTMState(h=h, c=jax.random.normal(keys[1], (layer.num_layers, layer.hidden_size)))
    return RNNState(h=h)


def to_torch_state(state):
    tensors = [torch.from_numpy(np.array(a))[:, None] for a in state]  # (L, batch 1, H)
    return tuple(tensors) if len(tensors) == 2 else tensors[0]


LAYERS = {
    "rnn-tanh": RNN(IN, H, L),
    "rnn-relu-no-bias": RNN(IN, H, L, nonlinearity="relu", bias=False),
    "gru": GRU(IN, H, L),
    "gru-1-layer-no-bias": GRU(IN, H, bias=False),
    "lstm": LSTM(IN, H, L),
    "lstm-proj": LSTM(IN, H, L, proj_size=2),
}


@pytest.mark.parametrize("name", ["rnn-relu-no-bias", "gru", "lstm-proj"])
def test_contract(name):
    layer = LAYERS[name]
    assert layer.delay == 0 and layer.receptive_field == 1
    verify_contract(layer, (IN,), num_frames=6, num_streams=2)


@pytest.mark.parametrize("name", LAYERS)
def test_matches_torch_from_zeros_and_from_a_given_state(name):
    layer = LAYERS[name]
    params = layer.init(jax.random.PRNGKey(0))
    module = torch_twin(layer, params)
    clip = random_clip((T, IN))
    x = torch.from_numpy(np.array(clip))[None]  # (1, T, IN), batch_first
    with torch.no_grad():
        out0, _ = module(x)
        h0 = random_state(layer)
        out1, final1 = module(x, to_torch_state(h0))
    # forward: torch's output from a zero state.
    assert_close(layer.forward(params, clip), out0[0].numpy())
    # forward_with_state: from a given state, with the final state.
    ys, final = layer.forward_with_state(params, clip, h0)
    assert_close(ys, out1[0].numpy())
    final1 = final1 if isinstance(final1, tuple) else (final1,)
    for ours, theirs in zip(final, final1):
        assert_close(ours, theirs[:, 0].numpy())
    # Streaming from init_state(h0): one recurrent update per step.
    state = layer.init_state(params, clip[0], h0)
    state, ys, valid = forward_steps(layer, params, state, clip)
    assert np.all(np.asarray(valid))
    assert_close(ys, out1[0].numpy())
    for ours, theirs in zip(state, final1):
        assert_close(ours, theirs[:, 0].numpy())


def test_lstm_initial_state_as_pair_and_init_ranges():
    layer = LAYERS["lstm-proj"]
    params = layer.init(jax.random.PRNGKey(0))
    p0, p1 = params["layers"]
    assert p0["w_ih"].shape == (IN, 4 * H) and p0["w_hh"].shape == (2, 4 * H)
    assert p1["w_ih"].shape == (2, 4 * H) and p0["w_hr"].shape == (H, 2)
    assert all(np.all(np.abs(a) <= 1 / np.sqrt(H)) for a in jax.tree_util.tree_leaves(params))
    h0 = random_state(layer)
    clip = random_clip((T, IN))
    a = layer.forward_with_state(params, clip, h0)[0]
    b = layer.forward_with_state(params, clip, (h0.h, h0.c))[0]
    assert_close(a, b, 0.0)
    spec = layer.state_spec(params, jax.ShapeDtypeStruct((IN,), jnp.float32))
    assert spec.h.shape == (L, 2) and spec.c.shape == (L, H)


def test_bad_inputs():
    layer = GRU(IN, H, L)
    params = layer.init(jax.random.PRNGKey(0))
    state = layer.init_state(params, jnp.zeros((IN,)))
    with pytest.raises(ValueError, match="GRU: expected 3 channels"):
        layer.step(params, state, jnp.zeros((IN + 1,)))
    with pytest.raises(ValueError, match="GRU: expected a frame with 1 dimensions.*jax.vmap"):
        layer.step(params, state, jnp.zeros((2, IN)))
    with pytest.raises(TypeError, match="GRU: expected a floating-point"):
        layer.forward(params, jnp.zeros((T, IN), jnp.int32))
    with pytest.raises(ValueError, match=r"GRU: initial h must have shape \(2, 5\)"):
        layer.init_state(params, jnp.zeros((IN,)), jnp.zeros((L, 1, H)))
    with pytest.raises(ValueError, match="LSTM: expected an initial state of 2 array"):
        LSTM(IN, H).init_state({}, jnp.zeros((IN,)), jnp.zeros((1, H)))
    with pytest.raises(ValueError, match="GRU: expected params .* with 2 entries"):
        layer.forward({"layers": params["layers"][:1]}, jnp.zeros((T, IN)))
    with pytest.raises(ValueError, match="RNN: nonlinearity must be one of"):
        RNN(IN, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"LSTM: proj_size must be in \[0, hidden_size=5\)"):
        LSTM(IN, H, proj_size=H)
    with pytest.raises(ValueError, match="RNN: num_layers must be > 0"):
        RNN(IN, H, 0)
