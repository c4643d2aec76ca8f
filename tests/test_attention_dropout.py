"""Dropout of the attention and transformer layers in train mode, against torch.

Dropout draws differ between frameworks, so the check is on distributions: one clip
repeated K times through torch's train mode and through `co.train_forward` on the
converted layer; the per-element means must agree within 5 standard errors and the
standard deviations within 15 %. A negative control (the converted layer with one
dropout switched off) shows that the check fails when the computation differs.
"""

from __future__ import annotations

import dataclasses

import continual as cont
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import cojax as co
from conversion.continual import from_continual
from conversion.transformer import from_torch_transformer

jax.config.update("jax_default_matmul_precision", "highest")

E, H, N, FF = 8, 2, 5, 16
K = 3000  # copies of the clip


def torch_samples(module: nn.Module, clip: np.ndarray, rows: slice) -> np.ndarray:
    torch.manual_seed(0)
    x = torch.from_numpy(np.repeat(clip[None], K, axis=0))
    module.train()
    with torch.no_grad():
        y = module(x, x, x)[0] if isinstance(module, nn.MultiheadAttention) else module(x)
    return y[:, rows].numpy().reshape(K, -1)


def cojax_samples(layer: co.Layer, params, clip: np.ndarray) -> np.ndarray:
    clips = jnp.asarray(np.repeat(clip[None], K, axis=0))
    ys, _ = co.train_forward(layer, params, clips, jax.random.PRNGKey(1))
    return np.asarray(ys).reshape(K, -1)


def same_distribution(a: np.ndarray, b: np.ndarray) -> bool:
    se = np.sqrt((a.var(0) + b.var(0)) / K)
    means = np.all(np.abs(a.mean(0) - b.mean(0)) <= 5 * se + 1e-6)
    ratio = a.std(0) / b.std(0)
    return bool(means and np.all((ratio > 0.85) & (ratio < 1.15)))


def torch_module(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mha":
        return nn.MultiheadAttention(E, H, dropout=0.3, batch_first=True)
    return nn.TransformerEncoderLayer(
        E, H, FF, dropout=0.2, batch_first=True, norm_first=kind == "pre-norm layer"
    )


CASES = [
    pytest.param(
        kind, retro, marks=() if (kind, retro) == ("post-norm layer", False) else pytest.mark.slow
    )
    for kind in ("mha", "post-norm layer", "pre-norm layer")
    for retro in (False, True)
]  # one case in the fast set, the rest in the slow set (CI runs both)


@pytest.mark.slow
@pytest.mark.parametrize("kind, retroactive", CASES)
def test_train_mode_dropout_is_distributed_like_torchs(kind, retroactive):
    module = torch_module(kind)
    layer, params = from_torch_transformer(module, N, retroactive=retroactive)
    assert layer.dropout == module.dropout if kind == "mha" else layer.dropout == 0.2
    clip = np.random.default_rng(0).standard_normal((N, E)).astype(np.float32)
    rows = slice(None) if retroactive else slice(-1, None)
    with torch.no_grad():  # eval mode first: the converted layer is exact
        x = torch.from_numpy(clip[None])
        module.eval()
        y = module(x, x, x)[0] if kind == "mha" else module(x)
    np.testing.assert_allclose(
        np.asarray(layer.forward(params, jnp.asarray(clip))).reshape(-1),
        y[0, rows].numpy().reshape(-1),
        atol=1e-5,
    )
    ours, theirs = cojax_samples(layer, params, clip), torch_samples(module, clip, rows)
    assert np.all(ours.std(0) > 1e-3)  # dropout is active
    assert same_distribution(ours, theirs)
    if kind == "mha":  # dropout on the weights is unbiased: the mean is the eval output
        se = ours.std(0) / np.sqrt(K)
        assert np.all(np.abs(ours.mean(0) - y[0, rows].numpy().reshape(-1)) <= 5 * se)
    else:  # negative control: without torch's dropout1 the distribution differs
        control = dataclasses.replace(layer, attention_output_dropout=0.0)
        assert not same_distribution(cojax_samples(control, params, clip), theirs)


@pytest.mark.slow  # moved to the slow set (CI runs it) to keep the fast set under 8 min
def test_transformer_encoder_dropout_keys_and_zero_rate():
    layer = co.TransformerEncoder(E, H, N, num_layers=3, dim_feedforward=FF, dropout=0.1)
    params = layer.init(jax.random.PRNGKey(0))
    clips = jax.random.normal(jax.random.PRNGKey(1), (4, N + 3, E))
    a, _ = co.train_forward(layer, params, clips, jax.random.PRNGKey(2))
    b, _ = co.train_forward(layer, params, clips, jax.random.PRNGKey(2))
    c, _ = co.train_forward(layer, params, clips, jax.random.PRNGKey(3))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    off = co.TransformerEncoder(E, H, N, num_layers=3, dim_feedforward=FF)  # dropout 0
    ys, _ = co.train_forward(off, params, clips, jax.random.PRNGKey(2))
    np.testing.assert_allclose(ys, jax.vmap(lambda x: off.forward(params, x))(clips), atol=1e-5)
    # inference ignores dropout: forward and step are the same with or without it
    np.testing.assert_allclose(
        layer.forward(params, clips[0]), off.forward(params, clips[0]), atol=0
    )


@pytest.mark.slow
def test_dropout_layers_keep_the_train_mode_contract():
    """Ragged NaN-padded batches, gradients through steps == through forward, the
    measured receptive field, and trained params streaming like forward."""
    from cojax.testing import verify_contract

    layer = co.SingleOutputTransformerEncoderLayer(E, H, 3, FF, dropout=0.2)
    verify_contract(layer, (E,), check_training=True)
    verify_contract(
        co.RetroactiveMultiheadAttention(E, H, 3, dropout=0.2), (E,), check_training=True
    )


def test_conversion_carries_the_rates_and_refuses_mixed_ones():
    factory = cont.TransformerEncoderLayerFactory(
        d_model=E, nhead=H, dim_feedforward=FF, dropout=0.1, sequence_len=N
    )
    layer, _ = from_continual(cont.TransformerEncoder(factory, num_layers=1).eval())
    block = layer["layers"]["0"]
    # the reference block has no dropout on the attention output (torch's dropout1)
    assert (block.dropout, block.attention_output_dropout) == (0.1, 0.0)
    mha = cont.SingleOutputMultiheadAttention(E, H, dropout=0.25, sequence_len=N)
    assert from_continual(mha.eval())[0].dropout == 0.25
    module = torch_module("post-norm layer")
    module.dropout1.p = 0.4
    assert from_torch_transformer(module, N)[0].attention_output_dropout == 0.4
    module.self_attn.dropout = 0.3
    with pytest.raises(NotImplementedError, match="dropout rates"):
        from_torch_transformer(module, N)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\]"):
        co.SingleOutputMultiheadAttention(E, H, N, dropout=1.5)
