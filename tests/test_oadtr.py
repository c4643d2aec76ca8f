"""CoOadTR (`cojax.models.co_oadtr`): the streaming contract, equality with the plain
computation in torch on every window, the training forward's position offset, and the
paper's shape."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cojax.core import forward_steps
from cojax.models import co_oadtr
from cojax.testing import verify_contract

TINY = dict(input_dim=6, embed_dim=8, num_heads=2, sequence_len=4, dim_feedforward=12,
            num_classes=3)  # fmt: skip
N = TINY["sequence_len"]


def _params(model, seed=0):
    """Random params with non-trivial LayerNorms (torch's init is the identity)."""
    params = model.init(jax.random.PRNGKey(seed))
    key = jax.random.PRNGKey(seed + 100)

    def randomize(path, leaf):
        names = [getattr(p, "key", None) for p in path]
        if names[-1] == "scale":
            return 0.5 + jax.random.uniform(jax.random.fold_in(key, leaf.size), leaf.shape)
        if names[-1] == "bias" and any(str(n).startswith("norm") for n in names):
            return 0.1 * jax.random.normal(jax.random.fold_in(key, 7), leaf.shape)
        return leaf

    return jax.tree_util.tree_map_with_path(randomize, params)


@pytest.mark.parametrize("num_layers", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "learned",
    [pytest.param(True, marks=pytest.mark.slow), pytest.param(False, marks=pytest.mark.slow)],
)
def test_contract(num_layers, learned):
    model = co_oadtr(**TINY, num_layers=num_layers, learned_positions=learned)
    assert model.delay == N - 1
    verify_contract(model, (6,), params=_params(model), num_frames=3 * N + 3, num_streams=2)


def _torch_windows(model, params, x, num_layers):
    """The plain computation in torch: per window, Linear -> + table rows of its
    positions -> nn.TransformerEncoder -> LayerNorm -> Linear, on the newest token."""
    E, H, F = TINY["embed_dim"], TINY["num_heads"], TINY["dim_feedforward"]
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = torch.nn.TransformerEncoderLayer(
            E, H, F, dropout=0.0, activation="gelu", batch_first=True
        )
        encoder = torch.nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
    with torch.no_grad():
        for i, block in enumerate(encoder.layers):
            p = params["encoder"]["layers"][str(i)]
            block.self_attn.in_proj_weight.copy_(t(p["self_attn"]["in_proj"]["kernel"]).T)
            block.self_attn.in_proj_bias.copy_(t(p["self_attn"]["in_proj"]["bias"]))
            block.self_attn.out_proj.weight.copy_(t(p["self_attn"]["out_proj"]["kernel"]).T)
            block.self_attn.out_proj.bias.copy_(t(p["self_attn"]["out_proj"]["bias"]))
            for name in ("linear1", "linear2"):
                getattr(block, name).weight.copy_(t(p[name]["kernel"]).T)
                getattr(block, name).bias.copy_(t(p[name]["bias"]))
            for name in ("norm1", "norm2"):
                getattr(block, name).weight.copy_(t(p[name]["scale"]))
                getattr(block, name).bias.copy_(t(p[name]["bias"]))
        table = t(model["position"].embeddings(params["position"]))
        x = torch.tensor(np.asarray(x))
        tokens = x @ t(params["embedding"]["kernel"]) + t(params["embedding"]["bias"])
        tokens = tokens + table[torch.arange(len(x)) % table.shape[0]]
        windows = tokens.unfold(0, N, 1).permute(0, 2, 1)
        h = encoder.eval()(windows)[:, -1]
        norm = params["norm"]
        h = torch.nn.functional.layer_norm(h, (E,), t(norm["scale"]), t(norm["bias"]))
        return (h @ t(params["classifier"]["kernel"]) + t(params["classifier"]["bias"])).numpy()


@pytest.mark.parametrize("num_layers", [pytest.param(n, marks=pytest.mark.slow) for n in (1, 2, 3)])
def test_steps_equal_the_plain_computation_on_every_window(num_layers):
    model = co_oadtr(**TINY, num_layers=num_layers)
    params = _params(model, seed=num_layers)
    for seed in (1, 2):  # two streams, 6N frames each (the table of 2N - 1 rows wraps)
        x = jax.random.normal(jax.random.PRNGKey(seed), (6 * N, 6))
        expected = _torch_windows(model, params, x, num_layers)
        with jax.default_matmul_precision("highest"):
            state = model.init_state(params, x[0])
            _, ys, valid = jax.jit(forward_steps, static_argnums=0)(model, params, state, x)
            clip = model.forward(params, x)
        got = np.asarray(ys)[np.asarray(valid)]
        np.testing.assert_allclose(got, expected, atol=5e-6)
        np.testing.assert_allclose(clip, expected, atol=5e-6)


def test_training_forward_takes_a_position_offset():
    model = co_oadtr(**TINY)
    params = _params(model)
    x = jax.random.normal(jax.random.PRNGKey(3), (N, 6))
    rows = 2 * N - 1
    outs = [model.forward(params, x, position_offset=k) for k in range(rows + 1)]
    assert all(o.shape == (1, 3) for o in outs)
    np.testing.assert_allclose(outs[0], outs[rows], atol=1e-6)  # the table recycles
    assert not np.allclose(outs[0], outs[1], atol=1e-4)
    # offset k = what the steps give on this window after k earlier frames
    stream = jnp.concatenate([jnp.zeros((2, 6)), x])
    state = model.init_state(params, x[0])
    _, ys, valid = forward_steps(model, params, state, stream)
    np.testing.assert_allclose(ys[-1], outs[2][0], atol=1e-5)
    jitted = jax.jit(model.forward)(params, x, 2)  # a traced offset
    np.testing.assert_allclose(jitted, outs[2], atol=1e-6)


def test_paper_shape():
    model = co_oadtr()  # THUMOS14 CoOadTR-b1: N 64, E 1024, 8 heads
    assert (model.delay, model.receptive_field) == (63, 64)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    count = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes))
    # embedding 4096·1024 + 1024, positions 127·1024, block: in/out projections
    # 4·1024² + 4·1024, feed-forward 2·1024² + 2·1024, norms 4·1024; final norm,
    # classifier 1024·22 + 22
    expected = 4096 * 1024 + 1024 + 127 * 1024 + (6 * 1024**2 + 6 * 1024 + 4 * 1024)
    expected += 2 * 1024 + 1024 * 22 + 22
    assert count == expected
    frame = jax.ShapeDtypeStruct((4096,), jnp.float32)
    assert model.output_spec(shapes, frame).shape == (22,)
