"""`conversion.from_sp_adapters`: the `structured-pruning-adapters` 0.7.1 layers (random
weights, the adapters far from their near-zero init) give the same outputs in cojax."""

import jax
import numpy as np
import pytest
import sp_adapters as sp  # the torch extra
import torch

from cojax.adapters import SPLoPADense
from conversion import from_sp_adapters

ATOL = 1e-5


def _randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


def _convert_and_run(module, x, *extra, seed=0):
    """torch output vs the converted module's on channels-last x; returns the error."""
    _randomize(module, seed)
    flax_module, variables = from_sp_adapters(module)
    with torch.no_grad():
        expected = module(torch.tensor(x), *(torch.tensor(e) for e in extra))
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    return flax_module, variables, expected


def _channels_last(a):
    return np.moveaxis(a, 1, -1)


@pytest.mark.parametrize("bias", [True, False])
def test_splora_linear(bias):
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    module, variables, expected = _convert_and_run(sp.SPLoRALinear(10, 7, bias=bias, rank=3), x)
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, x)
    np.testing.assert_allclose(got, expected, atol=ATOL)
    assert set(variables["params"]) == {"kernel", "adapter_down", "adapter_up"} | (
        {"bias"} if bias else set()
    )


CONVS = [
    (sp.SPLoRAConv1d, dict(stride=2, padding=1, rank=2), (11,)),
    (sp.SPLoRAConv2d, dict(stride=(1, 2), padding=(1, 0), groups=2, rank=2), (7, 8)),
    (sp.SPLoRAConv3d, dict(padding=1, rank=3), (4, 5, 5)),
    (sp.SPPaRAConv1d, dict(padding=2, groups=4), (9,)),
    (sp.SPPaRAConv2d, dict(stride=2, padding=1), (8, 7)),
    (sp.SPPaRAConv3d, dict(padding=(1, 0, 1), groups=2, bias=False), (4, 5, 4)),
]


@pytest.mark.parametrize("cls, kwargs, spatial", CONVS, ids=[c[0].__name__ for c in CONVS])
def test_conv_adapters(cls, kwargs, spatial):
    kernel = 5 if kwargs.get("padding") == 2 else 3
    torch_module = cls(4, 8, kernel, **kwargs)
    x = np.random.default_rng(1).standard_normal((2, 4, *spatial)).astype(np.float32)
    module, variables, expected = _convert_and_run(torch_module, x, seed=1)
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, _channels_last(x))
    np.testing.assert_allclose(got, _channels_last(expected), atol=ATOL)


@pytest.mark.parametrize("cross", [False, True])
def test_splora_attention(cross):
    kw = dict(kdim=6, vdim=5) if cross else {}
    torch_module = sp.SPLoRAMultiheadAttention(8, 2, rank=2, batch_first=True, **kw)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 4, 8)).astype(np.float32)
    k = rng.standard_normal((2, 5, 6 if cross else 8)).astype(np.float32)
    v = rng.standard_normal((2, 5, 5 if cross else 8)).astype(np.float32)
    if not cross:
        k = v = q
    module, variables, expected = _convert_and_run(torch_module, q, k, v, seed=2)
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, q, k, v)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_sequential_with_shared_splopa_prototypes():
    torch_module = torch.nn.Sequential(
        sp.SPLoRALinear(6, 8, rank=2),
        torch.nn.ReLU(),
        sp.SPLoPALinear(8, 8, num_prototypes=3, block_shape=(4, 2)),
        torch.nn.GELU(),
        sp.SPLoPALinear(8, 4, num_prototypes=3, block_shape=(4, 2)),
        torch.nn.Dropout(0.5),
        sp.SPLoPALinear(4, 6, num_prototypes=2, block_shape=(3, 2)),
        torch.nn.Tanh(),
    )
    assert torch_module[2].adapter.prototypes is torch_module[4].adapter.prototypes
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    module, variables, expected = _convert_and_run(torch_module, x, seed=3)
    assert len(module.prototypes) == 2  # (3, 4×2) shared by two layers, and (2, 3×2)
    assert module.prototype_index[2] == module.prototype_index[4] == 0
    assert isinstance(module.layers[6], SPLoPADense) and module.prototype_index[6] == 1
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, x)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_single_splopa_layer_owns_its_prototypes():
    x = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    torch_module = sp.SPLoPALinear(6, 4, num_prototypes=5, block_shape=(2, 3))
    module, variables, expected = _convert_and_run(torch_module, x, seed=4)
    assert variables["params"]["prototypes_0"]["up"].shape == (5, 2, 1)
    assert variables["masks"]["layers_0"]["blocks"].shape == (5, 2, 2)
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, x)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_unsupported_modules_are_named():
    with pytest.raises(NotImplementedError, match="LSTM at path '1'"):
        from_sp_adapters(torch.nn.Sequential(sp.SPLoRALinear(3, 3), torch.nn.LSTM(3, 3)))
    with pytest.raises(NotImplementedError, match="dilation"):
        from_sp_adapters(sp.SPLoRAConv2d(2, 2, 3, dilation=2))
    with pytest.raises(NotImplementedError, match="padding_mode"):
        from_sp_adapters(sp.SPPaRAConv1d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        from_sp_adapters(sp.SPLoRAMultiheadAttention(4, 2, add_bias_kv=True))
