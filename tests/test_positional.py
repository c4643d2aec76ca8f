"""`RecyclingPositionalEncoding`: the contract, the fixed table, torch parity, errors."""

from __future__ import annotations

import continual as co
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from continual.positional_encoding import CyclicPositionalEncoding
from torch import nn

from cojax.core import forward_steps
from cojax.layers.positional import (
    PositionState,
    RecyclingPositionalEncoding,
    cyclic_positional_table,
)
from cojax.testing import verify_contract
from conversion.positional import convert_recycling_positional_encoding

E, N = 6, 7  # embed_dim, num_embeds
BATCH = 2
TOL = 1e-6


def _torch_module(learned: bool, seed: int = 0) -> co.RecyclingPositionalEncoding:
    torch.manual_seed(seed)
    module = co.RecyclingPositionalEncoding(E, N, learned=learned)
    if learned:
        with torch.no_grad():
            module.pe.weight.copy_(torch.randn(N, E) * 2.0 + 0.5)
    return module.eval()


def _streams(num_frames: int, seed: int = 1) -> torch.Tensor:
    """A torch batch `(B, E, T)`."""
    return torch.randn(BATCH, E, num_frames, generator=torch.Generator().manual_seed(seed))


def _to_cojax(x: torch.Tensor) -> jax.Array:
    """`(B, E, T)` -> per-stream channels-last `(B, T, E)`."""
    return jnp.asarray(x.numpy().transpose(0, 2, 1))


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("learned", [True, False])
def test_contract(learned):
    # 2 * N + 3 frames: the table rows wrap within the clip, in forward as in the steps.
    verify_contract(RecyclingPositionalEncoding(E, N, learned=learned), (E,), num_frames=2 * N + 3)


@pytest.mark.parametrize("learned", [True, False])
def test_steps_wrap_around(learned):
    layer = RecyclingPositionalEncoding(E, N, learned=learned)
    params = layer.init(jax.random.PRNGKey(3))
    T = 2 * N + 3
    clip = jax.random.normal(jax.random.PRNGKey(4), (T, E))
    state, ys, valid = forward_steps(layer, params, layer.init_state(params, clip[0]), clip)
    table = np.asarray(layer.embeddings(params))
    expected = np.asarray(clip) + table[np.arange(T) % N]
    assert bool(np.all(valid))
    assert _max_err(ys, expected) <= TOL
    assert int(state.index) == T % N
    # forward on successive chunks with the running offset gives the same outputs
    chunks = [layer.forward(params, clip[s : s + 5], offset=s) for s in range(0, T, 5)]
    assert _max_err(jnp.concatenate(chunks), expected) <= TOL
    # and so does forward on the whole clip, longer than the table (rows wrap)
    assert _max_err(layer.forward(params, clip), expected) <= TOL


def test_forward_offset_traced_and_large():
    layer = RecyclingPositionalEncoding(E, N)
    params = layer.init(jax.random.PRNGKey(0))
    clip = jax.random.normal(jax.random.PRNGKey(1), (5, E))
    fwd = jax.jit(layer.forward)
    for k in (0, 3, N + 2, 1000 * N + 5, -2, 2**31 - 1):
        expected = layer.forward(params, clip, offset=k % N)
        assert _max_err(fwd(params, clip, jnp.int32(k)), expected) <= TOL
        assert _max_err(layer.forward(params, clip, offset=k), expected) <= TOL
    grads = jax.grad(lambda p: jnp.sum(layer.forward(p, clip, offset=4) ** 2))(params)
    assert np.all(np.isfinite(np.asarray(grads["embedding"])))


def test_state_and_params():
    layer = RecyclingPositionalEncoding(E, N)
    params = layer.init(jax.random.PRNGKey(0))
    assert params["embedding"].shape == (N, E)
    wide = RecyclingPositionalEncoding(8, 500).init(jax.random.PRNGKey(1))["embedding"]
    assert abs(float(jnp.std(wide)) - 1.0) < 0.05  # N(0, 1) like nn.Embedding
    assert RecyclingPositionalEncoding(E, N, learned=False).init(jax.random.PRNGKey(0)) == {}
    state = layer.init_state(params, jax.ShapeDtypeStruct((E,), jnp.float32))
    assert isinstance(state, PositionState)
    assert state.index.shape == () and state.index.dtype == jnp.int32
    assert hash(layer) == hash(RecyclingPositionalEncoding(E, N))
    m = (layer.delay, layer.receptive_field, layer.stride, layer.padding)
    assert m == (0, 1, 1, 0)


# --------------------------------------------------------------------------- fixed table


@pytest.mark.parametrize(
    "num_embeds, embed_dim",
    [(7, 6), (5, 9), (3, 17), (31, 16), (63, 33), (100, 7), (1, 4), (2, 2), (9, 4), (127, 64)],
)
def test_cyclic_table_matches_reference(num_embeds, embed_dim):
    ref = CyclicPositionalEncoding(num_embeds, embed_dim).pattern.numpy()
    got = cyclic_positional_table(num_embeds, embed_dim)
    assert got.dtype == np.float32 and got.shape == (num_embeds, embed_dim)
    assert _max_err(got, ref) <= TOL
    np.testing.assert_array_equal(got, cyclic_positional_table(num_embeds, embed_dim))


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("learned", [True, False])
def test_conversion_parity(learned):
    module = _torch_module(learned)
    layer, params = convert_recycling_positional_encoding(module)
    assert layer == RecyclingPositionalEncoding(E, N, learned=learned)
    assert set(params) == ({"embedding"} if learned else set())
    T = 2 * N + 3
    x = _streams(T)
    xs = _to_cojax(x)

    # forward_step from a clean state, past the wrap-around
    module.clean_state()
    with torch.no_grad():
        ref = torch.stack([module.forward_step(x[:, :, t]) for t in range(T)], dim=2)
    states = jax.vmap(layer.init_state, in_axes=(None, 0))(params, xs[:, 0])
    _, ys, valid = jax.vmap(lambda s, c: forward_steps(layer, params, s, c))(states, xs)
    assert bool(jnp.all(valid))
    assert _max_err(ys, _to_cojax(ref)) <= TOL

    # forward on a clip from a fresh module (index 0)
    clip = x[:, :, :N]
    module.clean_state()
    with torch.no_grad():
        ref = module.forward(clip)
    got = jax.vmap(layer.forward, in_axes=(None, 0))(params, _to_cojax(clip))
    assert _max_err(got, _to_cojax(ref)) <= TOL

    # the reference's forward after its hidden index has advanced by k == offset=k
    for k in (1, 4, N - 1):
        module.state_index = torch.tensor(k)
        with torch.no_grad():
            ref = module.forward(x[:, :, :5])
        got = jax.vmap(lambda c, k=k: layer.forward(params, c, offset=k))(_to_cojax(x[:, :, :5]))
        assert _max_err(got, _to_cojax(ref)) <= TOL
    # ... also when the index was advanced by the reference's own training forwards
    module.clean_state()
    with torch.no_grad():
        module.forward(x[:, :, :3])  # forward_update_index_steps = 1
        module.forward_steps(x[:, :, :3])  # advances by 3
        ref = module.forward(x[:, :, :N])
    got = jax.vmap(lambda c: layer.forward(params, c, offset=4))(_to_cojax(x[:, :, :N]))
    assert _max_err(got, _to_cojax(ref)) <= TOL


def test_conversion_refuses_what_it_cannot_represent():
    module = _torch_module(learned=True)
    module.pe.max_norm = 1.0
    with pytest.raises(NotImplementedError, match="max_norm"):
        convert_recycling_positional_encoding(module)

    module = _torch_module(learned=False)
    with torch.no_grad():
        module.pe.pattern[0, 0] += 0.5
    with pytest.raises(NotImplementedError, match="differs from the cyclic pattern"):
        convert_recycling_positional_encoding(module, "encoder.pe")

    module = _torch_module(learned=False)
    module.pe = CyclicPositionalEncoding(N, E, mean_pooling=False)
    with pytest.raises(NotImplementedError, match="differs from the cyclic pattern"):
        convert_recycling_positional_encoding(module)

    module = _torch_module(learned=True)
    module.pe = nn.Linear(E, E)
    with pytest.raises(NotImplementedError, match="Linear"):
        convert_recycling_positional_encoding(module)


# --------------------------------------------------------------------------- errors


def test_bad_input():
    layer = RecyclingPositionalEncoding(E, N)
    params = layer.init(jax.random.PRNGKey(0))
    state = layer.init_state(params, jnp.zeros((E,)))
    with pytest.raises(ValueError, match=r"RecyclingPositionalEncoding.*expected 6 channels"):
        layer.step(params, state, jnp.zeros((E + 1,)))
    with pytest.raises(ValueError, match="RecyclingPositionalEncoding.*expected 6 channels"):
        layer.init_state(params, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="one dimension too many"):
        layer.step(params, state, jnp.zeros((2, E)))
    with pytest.raises(TypeError, match="floating-point"):
        layer.forward(params, jnp.zeros((3, E), jnp.int32))
    with pytest.raises(TypeError, match="offset must be an integer scalar"):
        layer.forward(params, jnp.zeros((3, E)), offset=1.5)
    with pytest.raises(ValueError, match=r"params \{'embedding'"):
        layer.forward({}, jnp.zeros((3, E)))
    with pytest.raises(ValueError, match=r"shape \(7, 6\).*got shape \(6, 7\)"):
        layer.forward({"embedding": jnp.zeros((E, N))}, jnp.zeros((3, E)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embed_dim=E, num_embeds=0), "num_embeds must be >= 1, got 0"),
        (dict(embed_dim=0, num_embeds=N), "embed_dim must be >= 1, got 0"),
        (
            dict(embed_dim=1, num_embeds=N, learned=False),
            "the fixed cyclic table needs embed_dim >= 2",
        ),
        (dict(embed_dim=E, num_embeds=N, learned="yes"), "learned must be a bool"),
    ],
)
def test_bad_config(kwargs, message):
    error = TypeError if "must be a bool" in message else ValueError
    with pytest.raises(error, match=f"RecyclingPositionalEncoding: {message}"):
        RecyclingPositionalEncoding(**kwargs)


def test_table_helper_errors():
    with pytest.raises(ValueError, match="num_embeds must be >= 1"):
        cyclic_positional_table(0, 4)
    with pytest.raises(ValueError, match="embed_dim must be >= 2"):
        cyclic_positional_table(4, 1)
    single = RecyclingPositionalEncoding(1, N)  # a learned table may have one channel
    assert single.init(jax.random.PRNGKey(0))["embedding"].shape == (N, 1)
