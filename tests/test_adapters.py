"""Structured Pruning Adapters: parity with the `structured-pruning-adapters` 0.7.1
reference on random weights, masks that really prune, fused export, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sp_adapters as sp  # the torch extra: structured-pruning-adapters 0.7.1
import torch

from cojax.adapters import (
    SPLoPADense,
    SPLoPAPrototypes,
    SPLoRAConv,
    SPLoRADense,
    SPPaRAConv,
    adapter_optimizer,
    fuse_conv,
    fuse_dense,
    splopa_parameter_count,
    splora_parameter_count,
)


def _t(a):
    return torch.tensor(np.asarray(a))


def _randomize(module, seed=0):
    """Random values for every torch parameter (the adapters start near zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def _dense_variables(module, x):
    return jax.tree_util.tree_map(lambda a: a, dict(module.init(jax.random.PRNGKey(0), x)))


def test_splora_dense_matches_reference_fused_and_unfused():
    ref = _randomize(sp.SPLoRALinear(12, 10, rank=3))
    ours = SPLoRADense(10, rank=3)
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    variables = _dense_variables(ours, jnp.asarray(x))
    variables["params"] = {
        "kernel": jnp.asarray(ref.weight.detach().numpy().T),
        "bias": jnp.asarray(ref.bias.detach().numpy()),
        "adapter_down": jnp.asarray(ref.adapter.rows[0].detach().numpy().T),
        "adapter_up": jnp.asarray(ref.adapter.cols[0].detach().numpy().T),
    }
    with torch.no_grad():
        fused_ref = ref.eval()(_t(x)).numpy()
        unfused_ref = ref.train()(_t(x)).numpy()
    with jax.default_matmul_precision("highest"):
        fused = ours.apply(variables, jnp.asarray(x))
        unfused = ours.apply(variables, jnp.asarray(x), fused=False)
    np.testing.assert_allclose(fused, fused_ref, atol=1e-5)
    np.testing.assert_allclose(unfused, unfused_ref, atol=1e-5)
    np.testing.assert_allclose(fused, unfused, atol=1e-5)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["splora", "sppara"])
def test_conv_adapters_match_reference(nd, kind):
    shape = {1: (9,), 2: (7, 6), 3: (5, 5, 4)}[nd]
    cls = {"splora": sp.SPLoRAConv1d, "sppara": sp.SPPaRAConv1d}[kind]
    cls = getattr(sp, cls.__name__[:-2] + f"{nd}d")
    kwargs = dict(rank=2) if kind == "splora" else {}
    ref = _randomize(cls(4, 6, 3, stride=1, padding=1, **kwargs), seed=nd)
    x = np.random.default_rng(nd).standard_normal((*shape, 4)).astype(np.float32)
    module = (SPLoRAConv if kind == "splora" else SPPaRAConv)(
        6, (3,) * nd, padding=(1,) * nd, **kwargs
    )
    variables = _dense_variables(module, jnp.asarray(x))
    weight = ref.weight.detach().numpy()  # (out, in, *k)
    params = {
        "kernel": jnp.asarray(np.moveaxis(weight, (0, 1), (-1, -2))),
        "bias": jnp.asarray(ref.bias.detach().numpy()),
    }
    if kind == "splora":
        params["adapter_down"] = jnp.asarray(ref.adapter.rows[0].detach().numpy().T)
        params["adapter_up"] = jnp.asarray(ref.adapter.cols[0].detach().numpy().T)
    else:
        params["adapter"] = jnp.asarray(ref.adapter.detach().numpy().T)
    variables["params"] = params
    with torch.no_grad():
        expected = ref.eval()(_t(np.moveaxis(x, -1, 0))[None])[0].numpy()
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(got, np.moveaxis(expected, 0, -1), atol=1e-5)


def test_splopa_with_shared_prototypes_matches_reference():
    block = (2, 3)
    refs = [
        _randomize(sp.SPLoPALinear(6, 4, num_prototypes=5, block_shape=block), seed=s)
        for s in (0, 1)
    ]
    assert refs[0].adapter.prototypes is refs[1].adapter.prototypes  # the reference shares
    protos = refs[0].adapter.prototypes
    x = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32)
    prototypes = SPLoPAPrototypes(5, block, rank=1)
    proto_params = {
        "params": {
            "up": jnp.asarray(protos.cols.detach().numpy()),  # (P, p, r)
            "down": jnp.asarray(protos.rows.detach().numpy()),  # (P, r, q)
        }
    }
    shared = prototypes.apply(proto_params)
    layer = SPLoPADense(4)
    for ref in refs:
        variables = dict(layer.init(jax.random.PRNGKey(0), jnp.asarray(x), shared))
        variables["params"] = {
            "kernel": jnp.asarray(ref.weight.detach().numpy().T),
            "bias": jnp.asarray(ref.bias.detach().numpy()),
            "pos": jnp.asarray(ref.adapter.pos_weights.detach().numpy()),
        }
        with torch.no_grad():
            expected = ref.eval()(_t(x)).numpy()
        with jax.default_matmul_precision("highest"):
            got = layer.apply(variables, jnp.asarray(x), shared)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    counts = splopa_parameter_count(variables, proto_params["params"])
    assert counts == 5 * 2 * 2 + 5 * 2 * 1 + 5 * 1 * 3  # pos + P·p·r + P·r·q


def test_masks_prune_for_real_and_fuse_exports_a_smaller_layer():
    layer = SPLoRADense(6, rank=2)
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 8))
    variables = _dense_variables(layer, x)
    variables["params"]["adapter_up"] = jax.random.normal(jax.random.PRNGKey(4), (2, 6))
    keep_in = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
    keep_out = np.array([1, 1, 0, 1, 0, 1], bool)
    variables["masks"] = {"in": jnp.asarray(keep_in), "out": jnp.asarray(keep_out)}
    y = layer.apply(variables, x)
    assert np.all(np.asarray(y)[:, ~keep_out] == 0.0)  # pruned outputs: exactly nothing
    noisy = x.at[:, ~keep_in].set(1e6)  # pruned inputs are never read
    np.testing.assert_array_equal(layer.apply(variables, noisy), y)
    np.testing.assert_allclose(layer.apply(variables, x, fused=False), y, atol=1e-5)
    params, kept_in, kept_out = fuse_dense(variables)
    assert params["kernel"].shape == (6, 4)
    small = x[:, kept_in] @ params["kernel"] + params["bias"]
    np.testing.assert_allclose(small, np.asarray(y)[:, kept_out], atol=1e-5)
    assert splora_parameter_count(variables) == 2 * 6 + 2 * 4 + 4


def test_conv_masks_and_fuse():
    layer = SPLoRAConv(5, (3, 3), padding=(1, 1), rank=2)
    x = jax.random.normal(jax.random.PRNGKey(5), (6, 6, 4))
    variables = _dense_variables(layer, x)
    keep_in, keep_out = np.array([1, 1, 0, 1], bool), np.array([0, 1, 1, 0, 1], bool)
    variables["masks"] = {"in": jnp.asarray(keep_in), "out": jnp.asarray(keep_out)}
    y = np.asarray(layer.apply(variables, x))
    assert np.all(y[..., ~keep_out] == 0.0)
    params, kept_in, kept_out = fuse_conv(variables)
    assert params["kernel"].shape == (3, 3, 3, 3)
    plain = jax.lax.conv_general_dilated(
        x[None][..., kept_in], params["kernel"], (1, 1), [(1, 1), (1, 1)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )[0] + params["bias"]  # fmt: skip
    np.testing.assert_allclose(plain, y[..., kept_out], atol=1e-5)


def test_adapter_optimizer_freezes_base_kernels_and_trains_a_new_head():
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = SPLoRADense(3, rank=1, name="adapted")(x)
            return nn.Dense(2, name="head")(jax.nn.relu(x))

    model = Model()
    x = jax.random.normal(jax.random.PRNGKey(6), (4, 5))
    variables = _dense_variables(model, x)
    params = variables["params"]
    optimizer = adapter_optimizer(optax.sgd(0.1), params)
    state = optimizer.init(params)

    def loss(p):
        return jnp.sum(model.apply({**variables, "params": p}, x) ** 2)

    updates, _ = optimizer.update(jax.grad(loss)(params), state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["adapted"]["kernel"], params["adapted"]["kernel"])
    for layer, leaf in (("adapted", "adapter_down"), ("adapted", "bias"), ("head", "kernel")):
        assert not np.allclose(new[layer][leaf], params[layer][leaf]), (layer, leaf)


def test_sppara_parameter_count_counts_kept_adapter_entries():
    from cojax.adapters import sppara_parameter_count

    for groups, expected in ((1, 3 * 4 + 4), (2, (1 * 2 + 2 * 2) + 4)):
        layer = SPPaRAConv(6, (3,), feature_group_count=groups)
        variables = _dense_variables(layer, jnp.zeros((5, 4)))
        keep_in, keep_out = [1, 0, 1, 1], [1, 1, 0, 1, 1, 0]  # groups: in {0 | 2, 3}
        variables["masks"] = {"in": jnp.asarray(keep_in, bool), "out": jnp.asarray(keep_out, bool)}
        # ungrouped: 3 kept inputs × 4 kept outputs; grouped: group 0 has 1 input × 2
        # outputs, group 1 has 2 inputs × 2 outputs; plus the 4 kept biases.
        assert sppara_parameter_count(variables) == expected


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="odd and equal"):
        SPLoRAConv(4, (3, 2)).init(jax.random.PRNGKey(0), jnp.zeros((5, 5, 2)))
    with pytest.raises(ValueError, match="not divisible by the block shape"):
        protos = jnp.zeros((2, 3, 3))
        SPLoPADense(4).init(jax.random.PRNGKey(0), jnp.zeros((2, 6)), protos)


# --------------------------------------------------------------------------- pruning


def test_channel_criteria_and_masks_at_sparsity():
    from cojax.adapters.pruning import channel_masks, channel_scores

    w = np.array([[3.0, 0.1, -2.0, 0.5], [4.0, 0.1, 0.0, -0.5]])  # (in 2, out 4)
    g = np.array([[0.0, 10.0, 1.0, 1.0], [0.0, 0.0, 1.0, -1.0]])
    np.testing.assert_allclose(
        channel_scores(w), [5.0, np.hypot(0.1, 0.1), 2.0, np.hypot(0.5, 0.5)]
    )
    np.testing.assert_allclose(
        channel_scores(w, g, "gradient"), [0.0, 10.0, np.sqrt(2), np.sqrt(2)]
    )
    np.testing.assert_allclose(channel_scores(w, g, "taylor"), [0.0, 1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="needs the gradient"):
        channel_scores(w, None, "taylor")

    scores = {"a": channel_scores(w), "b": np.array([0.05, 9.0, 9.0])}
    sizes = {"a": 2, "b": 4}  # weights per channel
    # global: 50 % of 2·4 + 4·3 = 20 weights -> the lowest channels until >= 10 pruned
    masks = channel_masks(scores, sizes, 0.5)
    assert masks["b"].tolist() == [False, True, True]  # score 0.05 first (4 weights)
    assert masks["a"].tolist() == [True, False, False, False]  # then 0.14, 0.71, 2.0
    per_layer = channel_masks(scores, sizes, 0.5, scope="layer")
    assert per_layer["a"].sum() == 2 and per_layer["b"].sum() == 1
    assert channel_masks(scores, sizes, 0.0)["a"].all()
    with pytest.raises(ValueError, match="sparsity must be in"):
        channel_masks(scores, sizes, 1.0)


def test_chain_masks_count_the_input_columns_a_pruned_channel_removes():
    from cojax.adapters.pruning import chain_channel_masks, chain_sparsity, channel_masks

    # in 2 -> a (3 outputs) -> b (2 outputs), 1 tap each: 2·3 + 3·2 = 12 weights.
    scores = {"a": np.array([0.1, 5.0, 6.0]), "b": np.array([0.2, 7.0])}
    taps = {"a": 1, "b": 1}
    masks = chain_channel_masks(scores, taps, 2, 0.3)
    # a's channel 0 takes 2 weights from a and its input column (2) from b: 4/12 >= 0.3
    assert masks["a"].tolist() == [False, True, True] and masks["b"].all()
    assert chain_sparsity(masks, taps, 2) == pytest.approx(4 / 12)
    # channel_masks sees 2 weights per channel of a and 3 of b: it prunes b's too
    assert not channel_masks(scores, {"a": 2, "b": 3}, 0.3)["b"][0]
    # per layer: the same fraction of each layer's channels, the smallest that reaches
    # 50 %: 1/3 -> one channel of a (ceil 1) and one of b (ceil 2/3): 6/12 removed
    layer = chain_channel_masks(scores, taps, 2, 0.5, scope="layer")
    assert layer["a"].tolist() == [False, True, True] and layer["b"].tolist() == [False, True]
    assert chain_channel_masks(scores, taps, 2, 0.99)["a"].sum() == 1  # last channels stay
    with pytest.raises(ValueError, match="same order"):
        chain_channel_masks(scores, {"b": 1, "a": 1}, 2, 0.3)


def test_block_criteria_and_masks_at_sparsity():
    from cojax.adapters.pruning import block_masks, block_scores

    rng = np.random.default_rng(12)
    w, g = rng.standard_normal((2, 4, 6))  # (in 4, out 6); blocks (p 3, q 2) -> (2, 2)
    scores = {
        crit: block_scores(w, (3, 2), g, crit) for crit in ("magnitude", "gradient", "taylor")
    }
    for i in range(2):
        for j in range(2):
            wb, gb = (
                w.T[3 * i : 3 * i + 3, 2 * j : 2 * j + 2],
                g.T[3 * i : 3 * i + 3, 2 * j : 2 * j + 2],
            )
            np.testing.assert_allclose(scores["magnitude"][i, j], np.linalg.norm(wb))
            np.testing.assert_allclose(scores["gradient"][i, j], np.linalg.norm(gb))
            np.testing.assert_allclose(scores["taylor"][i, j], abs(np.sum(wb * gb)))
    with pytest.raises(ValueError, match="not divisible by the block shape"):
        block_scores(w, (4, 2))
    layers = {"a": np.array([[1.0, 5.0], [2.0, 6.0]]), "b": np.array([[0.5, 9.0, 3.0]])}
    masks = block_masks(layers, {"a": 6, "b": 4}, 0.4)  # 40 % of 36 weights: >= 14.4
    assert masks["b"].tolist() == [[False, True, True]]  # 0.5 (4), then 1.0 (6), 2.0 (6)
    assert masks["a"].tolist() == [[False, True], [False, True]]
    with pytest.raises(ValueError, match="weight counts name"):
        block_masks(layers, {"a": 6}, 0.4)


def test_splopa_block_masks_prune_whole_blocks_and_fuse():
    from cojax.adapters.lopa import fuse_splopa, splopa_adapted_kernel
    from cojax.adapters.pruning import block_masks, block_scores

    P, block = 3, (2, 2)
    prototypes = SPLoPAPrototypes(P, block).init(jax.random.PRNGKey(13))
    protos = SPLoPAPrototypes(P, block).apply(
        jax.tree_util.tree_map(lambda a: a * 3e3, prototypes)  # far from their ~0 init
    )
    layer = SPLoPADense(6, use_bias=False)
    x = jax.random.normal(jax.random.PRNGKey(14), (5, 8))
    variables = dict(layer.init(jax.random.PRNGKey(15), x, protos))
    adapted = splopa_adapted_kernel(variables, protos)
    assert not np.allclose(adapted, variables["params"]["kernel"])  # the adapter adds
    scores = block_scores(adapted, block)  # (3, 4)
    keep = block_masks({"l": scores}, {"l": 4}, 0.5)["l"]
    keep[:, 1] = False  # an input column of blocks pruned whole: inputs 2, 3 unused
    variables["masks"] = {"blocks": jnp.asarray(np.broadcast_to(keep, (P, 3, 4)))}
    y = layer.apply(variables, x, protos)
    pruned = np.kron(~keep, np.ones(block, bool)).T  # (in, out) entries of pruned blocks
    assert np.all(np.asarray(splopa_adapted_kernel(variables, protos))[pruned] == 0.0)
    np.testing.assert_array_equal(layer.apply(variables, x.at[:, 2:4].set(9.0), protos), y)
    params, kept_in, kept_out = fuse_splopa(variables, protos)
    assert 2 not in kept_in and 3 not in kept_in
    np.testing.assert_allclose(
        x[:, kept_in] @ params["kernel"], np.asarray(y)[:, kept_out], atol=1e-5
    )
    # Chained after a producer that pruned its channel 5 (so x[:, 5] is 0): exactly the
    # producer's channels, the unread ones (2, 3) as zero rows.
    producer = np.arange(8) != 5
    params, kept_in, kept_out = fuse_splopa(variables, protos, input_keep=producer)
    np.testing.assert_array_equal(kept_in, np.flatnonzero(producer))
    y_chained = np.asarray(layer.apply(variables, x.at[:, 5].set(0.0), protos))
    np.testing.assert_allclose(x[:, kept_in] @ params["kernel"], y_chained[:, kept_out], atol=1e-5)


@pytest.mark.parametrize("groups", [2, 6])
def test_grouped_conv_fuses_to_a_smaller_grouped_conv(groups):
    from cojax.adapters.continual import continual_conv

    layer = SPPaRAConv(6, (3,), padding=(1,), feature_group_count=groups)
    x = jax.random.normal(jax.random.PRNGKey(16), (7, 6))
    variables = _dense_variables(layer, x)
    variables["params"]["adapter"] = variables["params"]["adapter"] + 0.5
    if groups == 2:  # group 0 keeps inputs {0, 2}, outputs {1, 2}; group 1 the same counts
        keep_in, keep_out = [1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 0, 1]
    else:  # depthwise: channel 4 pruned as input and output
        keep_in = keep_out = [1, 1, 1, 1, 0, 1]
    variables["masks"] = {"in": jnp.asarray(keep_in, bool), "out": jnp.asarray(keep_out, bool)}
    y = np.asarray(layer.apply(variables, x))
    params, kept_in, kept_out = fuse_conv(variables)
    left = len(kept_in) // params["kernel"].shape[-2]
    assert left == (2 if groups == 2 else 5)
    plain = jax.lax.conv_general_dilated(
        x[None][..., kept_in], params["kernel"], (1,), [(1, 1)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=left,
    )[0] + params["bias"]  # fmt: skip
    np.testing.assert_allclose(plain, y[..., kept_out], atol=1e-5)
    streaming, streaming_params, _ = continual_conv(variables, padding=1)  # time = the axis
    assert streaming.groups == left
    got = streaming.forward(streaming_params, x[..., kept_in])
    np.testing.assert_allclose(got, y[..., kept_out], atol=1e-5)
    uneven = [1, 1, 1, 0, 0, 1] if groups == 2 else [1, 1, 1, 1, 1, 1]
    variables["masks"]["out"] = jnp.asarray(uneven, bool)
    with pytest.raises(ValueError, match=r"same\s+nonzero counts"):
        fuse_conv(variables)


# --------------------------------------------------------------------------- continual


@pytest.mark.slow  # moved to the slow set (CI runs it) to keep the fast set under 8 min
def test_adapted_pruned_layers_stream_like_their_clip_form():
    from cojax.adapters.continual import continual_conv, continual_linear
    from cojax.containers import Sequential
    from cojax.layers.pointwise import ReLU
    from cojax.testing import verify_contract

    clip = jax.random.normal(jax.random.PRNGKey(7), (9, 6, 6, 3))  # (T, H, W, C)
    first = SPLoRAConv(8, (3, 3, 3), padding=(1, 1, 1), rank=2)
    second = SPLoRAConv(5, (3, 3, 3), padding=(1, 1, 1), rank=2)
    v1 = _dense_variables(first, clip[None])
    v2 = _dense_variables(second, jnp.zeros((1, 9, 6, 6, 8)))
    v1["masks"] = {"in": jnp.ones(3, bool), "out": jnp.asarray(np.arange(8) % 3 != 1)}
    v2["masks"] = {"in": jnp.ones(8, bool), "out": jnp.asarray([1, 0, 1, 1, 1], bool)}
    conv1, p1, kept1 = continual_conv(v1, padding=(1, 1, 1))
    conv2, p2, kept2 = continual_conv(v2, padding=(1, 1, 1), input_keep=_mask_of(kept1, 8))
    head = SPLoRADense(4, rank=2)
    v3 = _dense_variables(head, jnp.zeros((1, 5)))
    linear, p3, _ = continual_linear(v3, input_keep=_mask_of(kept2, 5))
    assert (conv1.out_channels, conv2.in_channels, conv2.out_channels) == (5, 5, 4)
    network = Sequential(conv1, ReLU(), conv2, linear)
    params = {"0": p1, "1": {}, "2": p2, "3": p3}
    # The streamed, fused, pruned network equals the masked adapters on the clip.
    with jax.default_matmul_precision("highest"):
        y1 = jax.nn.relu(first.apply(v1, clip[None]))
        y2 = second.apply(v2, y1)
        expected = head.apply(v3, y2)[0]
        got = network.forward(params, clip)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    verify_contract(network, (6, 6, 3), params=params, num_frames=8, num_streams=2)


def _mask_of(kept, n):
    mask = np.zeros(n, bool)
    mask[kept] = True
    return mask


def test_kept_out_indices_chain_as_input_keep_and_bad_keeps_raise():
    """A producer's `kept_out` (indices) is its consumer's `input_keep` as it is, and
    gives what the equivalent bool mask gives; an index array is never read as a mask."""
    from cojax.adapters.continual import continual_linear
    from cojax.adapters.lora import keep_mask

    head = SPLoRADense(4, rank=2)
    v = _dense_variables(head, jnp.zeros((1, 6)))
    kept = np.array([0, 2, 3])  # read as a bool mask this would keep channels 1 and 2 only
    by_index = continual_linear(v, input_keep=kept)
    by_mask = continual_linear(v, input_keep=_mask_of(kept, 6))
    assert by_index[0] == by_mask[0] and by_index[0].in_features == 3
    np.testing.assert_array_equal(by_index[1]["kernel"], by_mask[1]["kernel"])
    np.testing.assert_array_equal(keep_mask(kept, 6), [1, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match=r"input_keep: a bool mask must have shape \(6,\)"):
        continual_linear(v, input_keep=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"distinct and in \[0, 6\), got \[1, 6\]"):
        continual_linear(v, input_keep=np.array([1, 6]))
    with pytest.raises(TypeError, match="expected a bool mask .* or an int array"):
        continual_linear(v, input_keep=np.array([0.0, 1.0]))


# --------------------------------------------------------------------------- attention


def _splora_dense_params(ref_linear, bias=None):
    """An `SPLoRALinear`'s params in the Flax layout (bias given separately for q/k/v)."""
    params = {
        "kernel": jnp.asarray(ref_linear.weight.detach().numpy().T),
        "adapter_down": jnp.asarray(ref_linear.adapter.rows[0].detach().numpy().T),
        "adapter_up": jnp.asarray(ref_linear.adapter.cols[0].detach().numpy().T),
    }
    b = ref_linear.bias if bias is None else bias
    if b is not None:
        params["bias"] = jnp.asarray(b.detach().numpy())
    return params


@pytest.mark.parametrize("cross", [False, True])
def test_splora_attention_matches_reference(cross):
    from cojax.adapters import SPLoRAMultiHeadAttention

    E, H, r = 12, 3, 2
    kdim, vdim = (7, 5) if cross else (None, None)
    ref = _randomize(
        sp.SPLoRAMultiheadAttention(E, H, rank=r, kdim=kdim, vdim=vdim, batch_first=True), seed=4
    )
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 5, E)).astype(np.float32)
    k = rng.standard_normal((2, 6, kdim or E)).astype(np.float32)
    v = rng.standard_normal((2, 6, vdim or E)).astype(np.float32)
    if not cross:
        k = v = q
    allowed = rng.random((5, 6 if cross else 5)) > 0.3
    allowed[:, 0] = True  # every query attends somewhere
    module = SPLoRAMultiHeadAttention(E, H, rank=r)
    args = tuple(map(jnp.asarray, (q, k, v)))
    variables = dict(module.init(jax.random.PRNGKey(0), *args))
    in_bias = ref.in_proj_bias.detach().chunk(3)
    variables["params"] = {
        name: _splora_dense_params(getattr(ref, name), bias)
        for name, bias in zip(("q_proj", "k_proj", "v_proj"), in_bias)
    } | {"out_proj": _splora_dense_params(ref.out_proj)}
    with torch.no_grad():
        expected = ref.eval()(_t(q), _t(k), _t(v), need_weights=False)[0].numpy()
        expected_masked = ref(_t(q), _t(k), _t(v), attn_mask=_t(~allowed), need_weights=False)
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, *args)
        unfused = module.apply(variables, *args, fused=False)
        masked = module.apply(variables, *args, mask=jnp.asarray(allowed))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(unfused, expected, atol=1e-5)
    np.testing.assert_allclose(masked, expected_masked[0].numpy(), atol=1e-5)


@pytest.mark.slow
def test_pruned_splora_attention_fuses_and_streams_as_continual_attention():
    from cojax.adapters import SPLoRAMultiHeadAttention, fuse_attention
    from cojax.layers.attention import RetroactiveMultiheadAttention
    from cojax.testing import streamed_outputs

    E, H, N = 8, 2, 4
    module = SPLoRAMultiHeadAttention(E, H, rank=2)
    clip = jax.random.normal(jax.random.PRNGKey(8), (9, E))  # (T, E) tokens
    variables = dict(module.init(jax.random.PRNGKey(9), clip[:N]))
    keys = iter(jax.random.split(jax.random.PRNGKey(10), 12))
    variables["params"] = jax.tree_util.tree_map(
        lambda a: jax.random.normal(next(keys), a.shape) * 0.5 if a.ndim == 2 else a + 0.1,
        variables["params"],
    )  # non-trivial adapters and biases
    rng = np.random.default_rng(11)
    masks = {name: {"in": rng.random(E) > 0.3, "out": rng.random(E) > 0.3} for name in
             ("q_proj", "k_proj", "v_proj", "out_proj")}  # fmt: skip
    for name in ("q_proj", "k_proj", "v_proj"):
        masks[name]["in"][[0, 5]] = False  # features 0 and 5: pruned upstream
    variables["masks"] = jax.tree_util.tree_map(jnp.asarray, masks)
    windows = jnp.stack([clip[t : t + N] for t in range(9 - N + 1)])
    with jax.default_matmul_precision("highest"):
        expected = module.apply(variables, windows)  # (T - N + 1, N, E)
        assert np.all(np.asarray(expected)[..., ~masks["out_proj"]["out"]] == 0.0)
        read = masks["q_proj"]["in"] | masks["k_proj"]["in"] | masks["v_proj"]["in"]
        assert not read[0] and not read[5]
        noisy = windows.at[..., ~read].set(7.0)  # input features no projection reads
        np.testing.assert_array_equal(module.apply(variables, noisy), expected)
        layer = RetroactiveMultiheadAttention(E, H, sequence_len=N)
        fused = fuse_attention(variables)
        np.testing.assert_allclose(layer.forward(fused, clip), expected, atol=1e-5)
        # Streamed: each step's N rows are the masked adapted attention on its window
        # (the layer's full contract is tested in test_attention.py).
        streamed, _ = streamed_outputs(layer, fused, clip)
    np.testing.assert_allclose(streamed, expected, atol=1e-5)


@pytest.mark.slow
def test_initialisations_follow_the_reference():
    """Each parameter is uniform on the reference's range: the largest |value| of both
    implementations lies just under the same bound."""
    from cojax.adapters import SPLoRAMultiHeadAttention

    def spread(a):
        return float(np.max(np.abs(np.asarray(a.detach() if hasattr(a, "detach") else a))))

    def same_range(ours, theirs, bound):
        assert 0.9 * bound < spread(ours) <= bound and 0.9 * bound < spread(theirs) <= bound

    torch.manual_seed(0)
    ref = sp.SPLoRALinear(64, 48, rank=8)
    v = SPLoRADense(48, rank=8).init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))["params"]
    same_range(v["adapter_up"], ref.adapter.cols, 1e-4)
    same_range(v["adapter_down"], ref.adapter.rows, 1 / np.sqrt(8 * 64))
    same_range(v["kernel"], ref.weight, 1 / np.sqrt(64))

    ref = sp.SPPaRAConv2d(16, 32, 3)
    v = SPPaRAConv(32, (3, 3)).init(jax.random.PRNGKey(1), jnp.zeros((5, 5, 16)))["params"]
    same_range(v["adapter"], ref.adapter, 1e-4)
    same_range(v["kernel"], ref.weight, 1 / np.sqrt(16 * 9))

    ref = sp.SPLoPALinear(64, 64, num_prototypes=32, block_shape=(8, 8))
    v = SPLoPADense(64).init(jax.random.PRNGKey(2), jnp.zeros((1, 64)), jnp.zeros((32, 8, 8)))
    same_range(v["params"]["pos"], ref.adapter.pos_weights, 1 / np.sqrt(8 * 8))
    protos = SPLoPAPrototypes(32, (8, 8)).init(jax.random.PRNGKey(3))["params"]
    same_range(protos["up"], ref.adapter.prototypes.cols, 1e-4)
    same_range(protos["down"], ref.adapter.prototypes.rows, 1 / np.sqrt(8))

    ref = sp.SPLoRAMultiheadAttention(64, 4, rank=8)
    v = SPLoRAMultiHeadAttention(64, 4, rank=8).init(jax.random.PRNGKey(4), jnp.zeros((3, 64)))
    p = v["params"]
    same_range(p["q_proj"]["kernel"], ref.q_proj.weight, np.sqrt(6 / 128))  # Xavier
    assert not np.any(p["q_proj"]["bias"]) and not np.any(p["out_proj"]["bias"])
    assert not ref.in_proj_bias.any() and not ref.out_proj.bias.any()


def adapter_network():
    import cojax as co
    from cojax.adapters import AdapterConv, SPPaRAConv

    lora = AdapterConv(SPLoRAConv(5, (3, 3), padding=(1, 1), rank=2), 3)
    para = AdapterConv(SPPaRAConv(4, (3, 3), padding=(1, 0)), 5, temporal_fill="replicate")
    net = co.Sequential(lora, co.ReLU(), para)
    params = net.init(jax.random.PRNGKey(0))
    params["0"]["masks"]["out"] = jnp.asarray([1, 0, 1, 1, 0], bool)  # prune two channels
    params["0"]["params"]["adapter_up"] = jax.random.normal(jax.random.PRNGKey(1), (2, 5))
    return net, params


@pytest.mark.slow
def test_adapter_network_passes_the_train_mode_contract():
    from cojax.testing import verify_contract

    net, params = adapter_network()
    verify_contract(net, (6, 3), params=params, check_training=True)


@pytest.mark.slow  # moved to the slow set (CI runs it) to keep the fast set under 8 min
def test_adapter_convs_stream_inside_sequential_and_train():
    """`AdapterConv`: an SPLoRA / SPPaRA conv with its own variables as a continual
    layer: equal to the Flax module on the clip, streams, trains (adapter only)."""
    import cojax as co
    from cojax.testing import verify_contract

    with pytest.raises(TypeError, match="AdapterConv"):
        co.Sequential(SPLoRAConv(4, (3, 3)))
    net, params = adapter_network()
    lora = net["0"]
    clip = jax.random.normal(jax.random.PRNGKey(2), (9, 6, 3))
    first = SPLoRAConv(5, (3, 3), padding=(1, 1), rank=2).apply(params["0"], clip)
    np.testing.assert_allclose(lora.forward(params["0"], clip), first, atol=1e-5)
    assert float(jnp.abs(first[..., 1]).max()) == 0.0 and float(jnp.abs(first).max()) > 0.1
    verify_contract(net, (6, 3), params=params)

    mask = co.trainable_mask(net, params)
    assert mask["0"]["params"] == {
        "kernel": False,
        "adapter_down": True,
        "adapter_up": True,
        "bias": True,
    }
    assert mask["2"]["params"]["kernel"] is False and mask["2"]["params"]["adapter"] is True

    def loss(p):
        ys, _ = co.train_forward(net, p, clip[None], jax.random.PRNGKey(3))
        return jnp.sum(ys**2)

    learned = {name: params[name]["params"] for name in ("0", "2")}
    grads = jax.grad(
        lambda ps: loss(
            {
                **params,
                "0": {**params["0"], "params": ps["0"]},
                "2": {**params["2"], "params": ps["2"]},
            }
        )
    )(learned)
    assert float(jnp.abs(grads["0"]["adapter_down"]).max()) > 0
    assert float(jnp.abs(grads["2"]["adapter"]).max()) > 0


@pytest.mark.slow
def test_adapter_dense_streams_inside_sequential_and_trains_the_adapter_only():
    """`AdapterDense`: a pruned SPLoRADense per frame inside co.Sequential, equal to the
    Flax module, through the contract harness (train mode too), adapter gradients."""
    import cojax as co
    from cojax.adapters import AdapterDense
    from cojax.testing import verify_contract

    with pytest.raises(TypeError, match="AdapterDense"):
        co.Sequential(SPLoRADense(4))
    with pytest.raises(TypeError, match="expected an SPLoRADense"):
        AdapterDense(SPLoRAConv(4, (3,)), 3)
    dense = AdapterDense(SPLoRADense(6, rank=2), 5)
    net = co.Sequential(co.Conv1d(3, 5, 3, padding=1), co.ReLU(), dense)
    params = net.init(jax.random.PRNGKey(0))
    keep_out = np.array([True, False, True, True, False, True])
    variables = params["2"]
    variables = {
        "params": {
            **variables["params"],
            "adapter_up": jax.random.normal(jax.random.PRNGKey(4), (2, 6)),
        },
        "masks": {"in": np.array([True, True, False, True, True]), "out": keep_out},
    }
    params = {**params, "2": variables}
    clip = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
    hidden = net["1"].forward({}, net["0"].forward(params["0"], clip))
    expected = SPLoRADense(6, rank=2).apply(variables, hidden)
    np.testing.assert_allclose(net.forward(params, clip), expected, atol=1e-5)
    assert np.all(np.asarray(expected)[:, ~keep_out] == 0)
    verify_contract(net, (3,), params=params, check_training=True)
    mask = co.trainable_mask(net, params)["2"]
    assert mask["params"] == {
        "kernel": False,
        "adapter_down": True,
        "adapter_up": True,
        "bias": True,
    }
    assert not any(jax.tree_util.tree_leaves(mask["masks"]))

    def loss(p):
        ys, _ = co.train_forward(net, {**params, "2": {**variables, "params": p}}, clip[None],
                                 jax.random.PRNGKey(3))  # fmt: skip
        return jnp.sum(ys**2)

    grads = jax.grad(loss)(variables["params"])
    assert float(jnp.abs(grads["adapter_down"]).max()) > 0
    with pytest.raises(ValueError, match="AdapterDense"):
        dense.forward(variables, jnp.ones((4, 3)))  # 3 channels, not 5
