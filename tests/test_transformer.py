"""Continual transformer encoders: every streamed output equals torch's
`nn.TransformerEncoder` on the latest window; conversion from continual-inference and
from plain torch modules."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import cojax as co
from cojax.core import forward_steps
from cojax.testing import streamed_outputs, verify_contract
from conversion import from_continual, from_torch_transformer

E, H, N, F = 8, 2, 4, 16
STREAM = 6 * N  # >= 5N frames per stream, as the issue asks


def _randomize_norms(module, seed=0):
    """torch initialises LayerNorm at identity; random affine terms make mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.data = torch.rand(E, generator=gen) + 0.5
            m.bias.data = torch.randn(E, generator=gen) * 0.1
    return module.eval()


def _torch_encoder(num_layers, norm_first=False, activation="gelu", seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(
        E, H, F, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's nested-tensor advice for norm_first
        encoder = torch.nn.TransformerEncoder(
            layer, num_layers, norm=torch.nn.LayerNorm(E), enable_nested_tensor=False
        )
    return _randomize_norms(encoder, seed)


def _sliding(module, x, row=-1):
    """torch module on every window of N tokens of `x` `(T, E)`; the given row."""
    with torch.no_grad():
        out = module(x.unfold(0, N, 1).permute(0, 2, 1))
    return out.numpy() if row is None else out[:, row].numpy()


def _stream(layer, params, x):
    """Steps over one stream `(T, E)` (torch tensor); the valid outputs."""
    with jax.default_matmul_precision("highest"):
        ys, first = streamed_outputs(layer, params, jnp.asarray(x.numpy()))
    assert first == layer.delay == N - 1
    return ys


def _streams(seed=1, batch=2):
    return torch.randn(batch, STREAM, E, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("num_layers", [1, 2, 3, pytest.param(4, marks=pytest.mark.slow)])
def test_encoder_steps_equal_torch_encoder_on_every_window(num_layers, norm_first):
    # The reference builds at most 2 layers and its 2-layer residual goes wrong after
    # ~2N - 2 steps; here every output of 2 streams of 6N tokens is checked.
    torch_encoder = _torch_encoder(num_layers, norm_first)
    layer, params = from_torch_transformer(torch_encoder, N)
    assert layer.delay == N - 1 and layer.receptive_field == N
    for x in _streams():
        expected = _sliding(torch_encoder, x)
        np.testing.assert_allclose(_stream(layer, params, x), expected, atol=3e-6)
        with jax.default_matmul_precision("highest"):
            clip = layer.forward(params, jnp.asarray(x.numpy()))
        np.testing.assert_allclose(clip, expected, atol=3e-6)


@pytest.mark.parametrize(
    "num_layers",
    [pytest.param(n, marks=pytest.mark.slow) for n in (1, 2, 3)],
)
def test_encoder_contract(num_layers):
    layer, params = from_torch_transformer(_torch_encoder(num_layers, seed=num_layers), N)
    verify_contract(layer, (E,), params=params, num_frames=3 * N + 2, num_streams=2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: co.SingleOutputTransformerEncoderLayer(E, H, N, F, "relu", query_index=1),
        pytest.param(  # slow (CI runs it): test_attention checks the retroactive contract
            lambda: co.RetroactiveTransformerEncoderLayer(E, H, N, F, co.GELU(approximate="tanh")),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["single-output-q1", "retroactive-gelu-tanh"],
)
def test_layer_contract(make):
    layer = make()
    params = layer.init(jax.random.PRNGKey(0))
    params["norm1"]["bias"] = 0.1 * jnp.arange(E, dtype=jnp.float32)
    verify_contract(layer, (E,), params=params, num_frames=3 * N + 2, num_streams=2)


@pytest.mark.parametrize("retroactive", [False, True])
def test_torch_layer_and_attention(retroactive):
    torch.manual_seed(3)
    layer_t = _randomize_norms(
        torch.nn.TransformerEncoderLayer(E, H, F, dropout=0.0, batch_first=True)
    )
    row = None if retroactive else 1
    layer, params = from_torch_transformer(
        layer_t, N, retroactive=retroactive, query_index=row or -1
    )
    mha_t = layer_t.self_attn
    mha, mha_params = from_torch_transformer(mha_t, N, retroactive=retroactive, query_index=1)

    def attention(w):
        return mha_t(w, w, w, need_weights=False)[0]

    for x in _streams(seed=4):
        np.testing.assert_allclose(_stream(layer, params, x), _sliding(layer_t, x, row), atol=3e-6)
        np.testing.assert_allclose(
            _stream(mha, mha_params, x),
            _sliding(attention, x, None if retroactive else 1),
            atol=3e-6,
        )


# --------------------------------------------------------------------------- continual-inference


def _reference_encoder(num_layers, seed=0):
    import continual as coref

    torch.manual_seed(seed)
    factory = coref.TransformerEncoderLayerFactory(
        d_model=E, nhead=H, dim_feedforward=F, sequence_len=N, dropout=0.0,
        activation=torch.nn.GELU(),
    )  # fmt: skip
    encoder = coref.TransformerEncoder(factory, num_layers, norm=torch.nn.LayerNorm(E))
    return _randomize_norms(encoder, seed)


def _reference_steps(module, x):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.forward_steps(x.permute(0, 2, 1)).permute(0, 2, 1).numpy()


def test_continual_one_layer_encoder_matches_the_reference():
    reference = _reference_encoder(1)
    layer, params = from_continual(reference)
    x = _streams(seed=5)
    expected = _reference_steps(reference, x)  # (B, T - N + 1, E)
    for b in range(2):
        np.testing.assert_allclose(_stream(layer, params, x[b]), expected[b], atol=3e-6)


def test_continual_two_layer_encoder_is_exact_where_the_reference_drifts():
    reference = _reference_encoder(2)
    layer, params = from_continual(reference)
    # The same weights in torch.nn.TransformerEncoder: the plain sliding-window maths.
    plain = _torch_encoder(2)
    with torch.no_grad():
        for i in range(2):
            put = plain.layers[i]
            p = params["layers"][str(i)]
            put.self_attn.in_proj_weight.copy_(
                torch.tensor(np.asarray(p["self_attn"]["in_proj"]["kernel"]).T)
            )
            put.self_attn.in_proj_bias.copy_(
                torch.tensor(np.asarray(p["self_attn"]["in_proj"]["bias"]))
            )
            put.self_attn.out_proj.weight.copy_(
                torch.tensor(np.asarray(p["self_attn"]["out_proj"]["kernel"]).T)
            )
            put.self_attn.out_proj.bias.copy_(
                torch.tensor(np.asarray(p["self_attn"]["out_proj"]["bias"]))
            )
            for name in ("linear1", "linear2"):
                getattr(put, name).weight.copy_(torch.tensor(np.asarray(p[name]["kernel"]).T))
                getattr(put, name).bias.copy_(torch.tensor(np.asarray(p[name]["bias"])))
            for name in ("norm1", "norm2"):
                getattr(put, name).weight.copy_(torch.tensor(np.asarray(p[name]["scale"])))
                getattr(put, name).bias.copy_(torch.tensor(np.asarray(p[name]["bias"])))
        plain.norm.weight.copy_(torch.tensor(np.asarray(params["norm"]["scale"])))
        plain.norm.bias.copy_(torch.tensor(np.asarray(params["norm"]["bias"])))
    x = _streams(seed=6)
    reference_steps = _reference_steps(reference, x)
    for b in range(2):
        expected = _sliding(plain, x[b])
        np.testing.assert_allclose(_stream(layer, params, x[b]), expected, atol=3e-6)
        error = np.abs(reference_steps[b] - expected).max(axis=-1)
        # The reference is right for its first outputs, then wrong (specs: defect).
        assert error[:3].max() < 1e-5 and error[3:].min() > 1e-3


def test_continual_encoder_layers_and_attentions_convert():
    import continual as coref

    torch.manual_seed(7)
    single = _randomize_norms(
        coref.SingleOutputTransformerEncoderLayer(E, H, F, dropout=0.0, sequence_len=N)
    )
    retro_mha = coref.RetroactiveMultiheadAttention(E, H, sequence_len=N, batch_first=True)
    single_mha = coref.SingleOutputMultiheadAttention(
        E, H, sequence_len=N, batch_first=True, query_index=-2
    )
    x = _streams(seed=8)
    layer, params = from_continual(single)
    assert isinstance(layer, co.SingleOutputTransformerEncoderLayer)
    expected = _reference_steps(single, x)
    for b in range(2):
        np.testing.assert_allclose(_stream(layer, params, x[b]), expected[b], atol=3e-6)
    for module in (retro_mha, single_mha):
        layer, params = from_continual(module)
        with torch.no_grad():
            out = module.forward_steps(x)  # (B, T', [N,] E) batch_first
        for b in range(2):
            np.testing.assert_allclose(_stream(layer, params, x[b]), out[b].numpy(), atol=3e-6)


@pytest.mark.parametrize("query_index", [-1, -2, 0])
def test_converted_and_hand_built_residual_attention_align_like_the_reference(query_index):
    """continual-inference's `Residual(SingleOutputMultiheadAttention)` adds the query
    token (its attention reports the query's offset as its delay). Converted, the
    network steps exactly like the reference and now also has a clip `forward` (the
    shortcut gets a `Skip` to the attention's warm-up); a hand-built `co.Residual` and
    `co.BroadcastReduce(co.Identity(), attention)` (aligned by `alignment`) give the
    same outputs from the same weights."""
    import continual as coref

    torch.manual_seed(10)
    attention = coref.SingleOutputMultiheadAttention(
        E, H, sequence_len=N, batch_first=True, query_index=query_index
    )
    reference = coref.Residual(attention).eval()
    x = _streams(seed=11, batch=1)[0]  # (T, E)
    with torch.no_grad():
        steps = [reference.forward_step(x[None, t]) for t in range(x.shape[0])]
    expected = np.stack([y[0].numpy() for y in steps if isinstance(y, torch.Tensor)])
    layer, params = from_continual(reference)
    np.testing.assert_allclose(_stream(layer, params, x), expected, atol=3e-6)
    with jax.default_matmul_precision("highest"):
        clip = jnp.asarray(x.numpy())
        np.testing.assert_allclose(layer.forward(params, clip), expected, atol=3e-6)
        ours = co.SingleOutputMultiheadAttention(E, H, N, query_index=query_index)
        hand = co.Residual(ours)
        hand_params = hand.init(jax.random.PRNGKey(0)) | {"1": params["1"]}
        np.testing.assert_allclose(hand.forward(hand_params, clip), expected, atol=3e-6)
        branches = co.BroadcastReduce(co.Identity(), ours)
        assert branches.alignment == ours.alignment and branches.delay == N - 1
        branch_params = branches.init(jax.random.PRNGKey(0)) | {"1": params["1"]}
        np.testing.assert_allclose(branches.forward(branch_params, clip), expected, atol=3e-6)
        np.testing.assert_allclose(_stream(branches, branch_params, x), expected, atol=3e-6)


def test_recycling_positional_encoding_converts_inside_a_network():
    import continual as coref

    torch.manual_seed(9)
    net = coref.Sequential(
        coref.Linear(4, E, channel_dim=1),
        coref.RecyclingPositionalEncoding(E, 2 * N - 1, learned=True),
    )
    layer, params = from_continual(net)
    x = torch.randn(1, 4, 3 * N)
    with torch.no_grad():  # step by step: the index wraps (its forward_steps cannot)
        expected = np.stack([net.forward_step(x[:, :, t])[0].numpy() for t in range(3 * N)])
    np.testing.assert_allclose(_stream_all(layer, params, x[0].T), expected, atol=1e-6)


def _stream_all(layer, params, x):
    x = jnp.asarray(x.numpy())
    state = layer.init_state(params, x[0])
    _, ys, valid = forward_steps(layer, params, state, x)
    return np.asarray(ys)[np.asarray(valid)]


# --------------------------------------------------------------------------- errors


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        co.TransformerEncoder(E, H, N, num_layers=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        co.SingleOutputTransformerEncoderLayer(E, H, N, activation="swish")
    with pytest.raises(ValueError, match="parameter-free"):
        co.SingleOutputTransformerEncoderLayer(E, H, N, activation=co.PReLU())
    with pytest.raises(ValueError, match="divisible by nhead"):
        co.RetroactiveTransformerEncoderLayer(10, 3, N)
    with pytest.raises(ValueError, match="query_index"):
        co.SingleOutputTransformerEncoderLayer(E, H, N, query_index=N)
    window = co.WindowTransformerEncoderLayer(E, H, N)
    with pytest.raises(ValueError, match=r"frames of 4 tokens \(N, E\)"):
        window.check_frame(jnp.zeros((N + 1, E)))
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(E, H, kdim=4, vdim=4)
    with pytest.raises(NotImplementedError, match="kdim/vdim"):
        from_torch_transformer(mha, N)
    bad = torch.nn.TransformerEncoderLayer(E, H, F, activation=torch.nn.Tanh())
    with pytest.raises(NotImplementedError, match="ReLU or GELU"):
        from_torch_transformer(bad, N)
    with pytest.raises(NotImplementedError, match="from_torch_transformer takes"):
        from_torch_transformer(torch.nn.Linear(E, E), N)
