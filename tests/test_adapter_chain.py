"""cojax.adapters.chain on a small synthetic chain: conv_0 → conv_1 → conv_2 → head,
random weights (adapters non-zero), random masks. Counts are checked by hand, the
exported network against the masked Flax model, the gradient criterion against a
plain computation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cojax.adapters import SPLoRAConv, SPPaRAConv
from cojax.adapters.chain import (
    adapted_kernels,
    chain_masks,
    export,
    kernel_sparsity,
    learned_parameters,
    prune_to,
)
from cojax.adapters.pruning import channel_scores

WIDTHS = (4, 6, 5)
IN_CHANNELS = 2
TAPS = 9  # 3×3
CLASSES = 3
NAMES = [f"conv_{i}" for i in range(len(WIDTHS))]


class ChainCNN(nn.Module):
    adapter: str = "splora"

    @nn.compact
    def __call__(self, x):
        for name, width in zip(NAMES, WIDTHS):
            kwargs = dict(kernel_size=(3, 3), padding=(1, 1), name=name)
            if self.adapter == "sppara":
                conv = SPPaRAConv(width, **kwargs)
            else:
                conv = SPLoRAConv(width, rank=min(2, x.shape[-1]), **kwargs)
            x = nn.relu(conv(x))
        return nn.Dense(CLASSES, name="head")(jnp.mean(x, axis=(-3, -2)))


def random_params(adapter: str, seed: int = 0):
    model = ChainCNN(adapter)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 6, 6, IN_CHANNELS)))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [0.5 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)]
    return model, jax.tree_util.tree_unflatten(tree, leaves)


def random_masks(seed: int = 0):
    rng = np.random.default_rng(seed)
    outs = {}
    for name, width in zip(NAMES, WIDTHS):
        keep = rng.random(width) < 0.6
        keep[rng.integers(width)] = True  # at least one channel
        outs[name] = keep
    return chain_masks(outs, IN_CHANNELS)


def plain_forward(convs, head, x):
    for p in convs:
        x = lax.conv_general_dilated(
            x, p["kernel"], (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = jax.nn.relu(x + p["bias"])
    return jnp.mean(x, axis=(1, 2)) @ head["kernel"] + head["bias"]


def test_chain_masks_feed_each_conv_its_producers_outputs():
    masks = random_masks()
    np.testing.assert_array_equal(masks["conv_0"]["in"], np.ones(IN_CHANNELS, bool))
    for producer, consumer in zip(NAMES, NAMES[1:]):
        np.testing.assert_array_equal(masks[consumer]["in"], masks[producer]["out"])
    with pytest.raises(TypeError, match="bool"):
        chain_masks({"conv_0": np.array([0, 2])}, IN_CHANNELS)


@pytest.mark.slow  # moved to the slow set (CI runs it) to keep the fast set under 8 min
def test_sparsity_and_learned_parameters_by_hand():
    outs = {"conv_0": 3, "conv_1": 5, "conv_2": 4}
    masks = chain_masks({n: np.arange(w) < outs[n] for n, w in zip(NAMES, WIDTHS)}, IN_CHANNELS)
    total = IN_CHANNELS * 4 + 4 * 6 + 6 * 5
    assert kernel_sparsity(masks, TAPS) == pytest.approx(1 - (2 * 3 + 3 * 5 + 5 * 4) / total)
    head = 4 * CLASSES + CLASSES
    # plain: 9·in·out + out per conv (in = producer's kept outputs)
    ft = (9 * 2 * 3 + 3) + (9 * 3 * 5 + 5) + (9 * 5 * 4 + 4) + head
    # SPLoRA: r·|in| + r·|out| + |out| with rank 2
    spa = (2 * 2 + 2 * 3 + 3) + (2 * 3 + 2 * 5 + 5) + (2 * 5 + 2 * 4 + 4) + head
    # SPPaRA: |in|·|out| + |out|
    para = (2 * 3 + 3) + (3 * 5 + 5) + (5 * 4 + 4) + head
    _, lora = random_params("splora")
    _, pointwise = random_params("sppara")
    assert sum(learned_parameters("finetune", lora, masks, TAPS).values()) == ft == 396
    assert sum(learned_parameters("splora", lora, masks, TAPS).values()) == spa == 71
    assert sum(learned_parameters("sppara", pointwise, masks, TAPS).values()) == para == 68
    per_conv = dict.fromkeys(NAMES, TAPS)
    assert learned_parameters("finetune", lora, masks, per_conv) == learned_parameters(
        "finetune", lora, masks, TAPS
    )
    with pytest.raises(ValueError, match="method"):
        learned_parameters("lora", lora, masks, TAPS)
    with pytest.raises(ValueError, match="same order"):
        kernel_sparsity(masks, {"conv_1": 9, "conv_0": 9, "conv_2": 9})


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_pruning_reaches_the_target_and_never_regrows(scope):
    rng = np.random.default_rng(0)
    masks = chain_masks({n: np.ones(w, bool) for n, w in zip(NAMES, WIDTHS)}, IN_CHANNELS)
    for target in (0.3, 0.6, 0.8):
        scores = {n: rng.random(w) for n, w in zip(NAMES, WIDTHS)}
        new = prune_to(scores, masks, target, TAPS, scope)
        for name in NAMES:
            assert not np.any(new[name]["out"] & ~masks[name]["out"])  # never regrown
            assert new[name]["out"].any()
        for producer, consumer in zip(NAMES, NAMES[1:]):
            np.testing.assert_array_equal(new[consumer]["in"], new[producer]["out"])
        assert kernel_sparsity(new, TAPS) >= target
        masks = new
    with pytest.raises(ValueError, match="same order"):
        prune_to({"conv_0": np.ones(4)}, masks, 0.5, TAPS)


@pytest.mark.parametrize(
    "adapter", [pytest.param(a, marks=pytest.mark.slow) for a in ("splora", "sppara")]
)
def test_exported_smaller_network_equals_the_masked_model(adapter):
    model, params = random_params(adapter)
    masks = random_masks(1)
    x = jax.random.uniform(jax.random.PRNGKey(5), (7, 6, 6, IN_CHANNELS))
    convs, head = export(params, masks)
    kept = [int(masks[n]["out"].sum()) for n in NAMES]
    assert [c["kernel"].shape[-1] for c in convs] == kept
    assert [c["kernel"].shape[-2] for c in convs] == [IN_CHANNELS, *kept[:-1]]
    assert head["kernel"].shape == (kept[-1], CLASSES)
    with jax.default_matmul_precision("highest"):
        small = np.asarray(plain_forward(convs, head, x))
        masked = np.asarray(model.apply({"params": params, "masks": masks}, x))
    assert np.std(masked[:, 0]) > 1e-3  # the logits depend on the input
    np.testing.assert_allclose(small, masked, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no convolution"):
        export(params, {})


def test_masked_channels_output_exactly_zero():
    model, params = random_params("splora")
    masks = random_masks(2)
    x = jax.random.uniform(jax.random.PRNGKey(3), (4, 6, 6, IN_CHANNELS))
    _, state = model.apply(
        {"params": params, "masks": masks}, x, capture_intermediates=True, mutable=["intermediates"]
    )
    for name in NAMES:
        out = np.asarray(state["intermediates"][name]["__call__"][0])
        pruned = ~masks[name]["out"]
        assert np.all(out[..., pruned] == 0.0)
        assert np.any(out[..., ~pruned] != 0.0)


def test_gradient_wrt_the_base_kernel_is_the_gradient_wrt_the_adapted_kernel():
    """The gradient criterion scores channels with the gradient w.r.t. each conv's base
    kernel; at kept entries it equals the gradient w.r.t. the adapted kernel, computed
    here through the plain network on full-size adapted (masked) kernels."""
    model, params = random_params("splora")
    masks = random_masks(3)
    x = jax.random.uniform(jax.random.PRNGKey(4), (6, 6, 6, IN_CHANNELS))
    y = jnp.arange(6) % CLASSES

    def loss_of(logits):
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), y])

    with jax.default_matmul_precision("highest"):
        base = jax.grad(lambda p: loss_of(model.apply({"params": p, "masks": masks}, x)))(params)
        kernels = adapted_kernels(params, masks)
        biases = [np.where(masks[n]["out"], params[n]["bias"], 0.0) for n in NAMES]

        def plain_loss(ks):
            convs = [{"kernel": k, "bias": b} for k, b in zip(ks, biases)]
            return loss_of(plain_forward(convs, params["head"], x))

        grads = jax.grad(plain_loss)([kernels[n] for n in NAMES])
    for name, g in zip(NAMES, grads):
        keep = masks[name]["in"][:, None] & masks[name]["out"][None, :]
        expected = np.where(keep, g, 0.0)
        np.testing.assert_allclose(base[name]["kernel"], expected, rtol=1e-4, atol=1e-7)
        scores = channel_scores(kernels[name], np.asarray(base[name]["kernel"]), "gradient")
        assert np.all(scores[~masks[name]["out"]] == 0.0)  # pruned: no gradient
        assert np.any(scores > 0.0)
