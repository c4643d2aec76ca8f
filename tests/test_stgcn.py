"""Continual ST-GCN family: graph layers against plain computations, the models'
streaming against their own `forward`, and `load_stgcn` against PyTorch clip models
written from the spec (tests/stgcn_torch.py) in both checkpoint layouts."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from stgcn_torch import ContinualSkeletonsNet, OriginalSTGCN, randomize

import cojax as co
from cojax.graphs import adjacency
from cojax.models.stgcn import skeleton_net
from cojax.testing import verify_contract
from conversion import load_stgcn

WIDTHS = (8, 8, 16, 16)
STRIDES = (1, 1, 2, 1)
JOINTS = {"ntu": 25, "kinetics": 18}


def _frames(key, shape):
    return jax.random.normal(jax.random.PRNGKey(key), shape)


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(co.GraphConv(3, 8, "kinetics"), marks=pytest.mark.slow),
        pytest.param(
            co.GraphConv(3, 8, "kinetics", "spatial", bias_place="before_graph"),
            marks=pytest.mark.slow,
        ),
        pytest.param(co.AdaptiveGraphConv(3, 8, "kinetics"), marks=pytest.mark.slow),
        pytest.param(co.SpatialAttention(4, 8, num_heads=2), marks=pytest.mark.slow),
    ],
    ids=["graph_conv", "graph_conv_st_gcn", "adaptive", "spatial_attention"],
)
def test_graph_layers_pass_the_contract(layer):
    verify_contract(layer, (2, 18, layer.in_channels), check_training=True)
    mask = co.trainable_mask(layer, layer.init(jax.random.PRNGKey(0)))
    if "A" in mask:
        assert mask["A"] is False and mask["kernel"] is True


def test_graph_conv_is_the_sum_over_subsets_in_both_bias_places():
    x = np.asarray(_frames(0, (2, 18, 3)), np.float64)
    for place in ("after_graph", "before_graph"):
        layer = co.GraphConv(3, 5, "kinetics", "spatial", bias_place=place)
        params = layer.init(jax.random.PRNGKey(1))
        params["edge"] = 1.0 + 0.3 * _frames(2, params["edge"].shape)
        p = {k: np.asarray(v, np.float64) for k, v in params.items()}
        a = p["A"] * p["edge"]
        expected = np.zeros((2, 18, 5))
        for k in range(3):
            for m in range(2):
                if place == "after_graph":  # continual-skeletons: bias after the graph
                    expected[m] += a[k].T @ x[m] @ p["kernel"][k] + p["bias"][k]
                else:  # ST-GCN: the bias is multiplied by the graph too (joint-dependent)
                    expected[m] += a[k].T @ (x[m] @ p["kernel"][k] + p["bias"][k])
        with jax.default_matmul_precision("highest"):
            got = layer.apply(params, jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_adaptive_graph_conv_mixes_joints_per_frame_unlike_the_reference_agcn_star():
    """The per-frame adaptive graph, computed plainly; the reference AGCN*'s einsum
    `nctv,nvwt->nctv` only rescales each joint by a row sum (spec: a defect)."""
    layer = co.AdaptiveGraphConv(3, 8, "kinetics")
    params = layer.init(jax.random.PRNGKey(3))
    x = np.asarray(_frames(4, (18, 3)), np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    expected = np.zeros((18, 8))
    buggy = np.zeros((18, 8))
    for k in range(3):
        theta = x @ p["theta_kernel"][k] + p["theta_bias"][k]
        phi = x @ p["phi_kernel"][k] + p["phi_bias"][k]
        logits = theta @ phi.T / layer.inter_channels  # [v, w]
        att = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
        a = p["A"][k] + p["edge"][k] + att
        expected += a.T @ x @ p["kernel"][k] + p["bias"][k]
        buggy += (x * a.sum(1, keepdims=True)) @ p["kernel"][k] + p["bias"][k]
    with jax.default_matmul_precision("highest"):
        got = np.asarray(layer.apply(params, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(got - buggy).max() > 0.1
    # Joint 0's output depends on other joints' inputs (the buggy form's would not).
    grad = jax.grad(lambda z: layer.apply(params, z)[0].sum())(jnp.asarray(x, jnp.float32))
    assert np.abs(np.asarray(grad)[1:]).max() > 1e-3


def test_bad_configs_and_frames_raise():
    with pytest.raises(ValueError, match="graph must be one of"):
        co.GraphConv(3, 8, "coco")
    with pytest.raises(ValueError, match="edge_weights must be one of"):
        co.GraphConv(3, 8, edge_weights="scale")
    with pytest.raises(ValueError, match="num_heads 8 must divide"):
        co.SpatialAttention(8, 8)
    layer = co.GraphConv(3, 8, "ntu")
    params = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="expected 25 joints"):
        layer.init_state(params, jnp.zeros((2, 18, 3)))
    with pytest.raises(ValueError, match="expected 3 channels"):
        layer.init_state(params, jnp.zeros((2, 25, 4)))
    with pytest.raises(ValueError, match="variant must be one of"):
        skeleton_net("gcn")
    with pytest.raises(ValueError, match="num_frames must be at least"):
        co.models.stgcn.st_gcn("ntu", mod=True, num_frames=60)  # rf 81


# --------------------------------------------------------------------------- models


def test_full_size_receptive_fields_strides_and_head_pools_match_the_paper():
    """CoST-GCN: rf 153, padding 76, stride 4 -> pool 75; CoST-GCN*: rf 81 -> pool 220
    (the spec's numbers); a prediction every 4 frames / every frame."""
    for variant in ("st_gcn", "a_gcn", "s_tr"):
        regular, star = skeleton_net(variant), skeleton_net(variant, mod=True)
        body = co.Sequential(regular.children[0][1], regular.children[1][1])
        assert (body.receptive_field, body.padding, body.stride) == (153, 76, 4)
        assert regular.children[2][1].children[0][1].temporal_kernel_size == 75
        star_body = co.Sequential(star.children[0][1], star.children[1][1])
        assert (star_body.receptive_field, star_body.padding, star.stride) == (81, 0, 1)
        assert star.children[2][1].children[0][1].temporal_kernel_size == 220


def _tiny(variant, mod, graph="kinetics", layout="continual_skeletons", widths=WIDTHS):
    frames = 40 if mod else 24
    model = skeleton_net(
        variant, graph, 5, mod, widths=widths, num_frames=frames, first_attention=1,
        num_heads=2, layout=layout,
    )  # fmt: skip
    return model, frames


VARIANTS = [
    ("st_gcn", False), ("st_gcn", True), ("a_gcn", False), ("a_gcn", True),
    ("s_tr", False), ("s_tr", True),
]  # fmt: skip


FAST: set = set()  # all in the slow set (7-23 s each here); the graph layers have fast ones


@pytest.mark.parametrize(
    "variant, mod",
    [v if v in FAST else pytest.param(*v, marks=pytest.mark.slow) for v in VARIANTS],
)
def test_steps_equal_forward_with_an_output_every_stride(variant, mod):
    """Every variant streams its own clip computation (`pad_end=True`). Regular
    variants emit every `stride` frames (4 in the full model, 2 in this small one
    with one strided block), * variants every frame."""
    model, frames = _tiny(variant, mod, widths=(8, 16, 16))  # 3 blocks: compiles faster
    params = model.init(jax.random.PRNGKey(0))
    clip = _frames(1, (frames + 6, 2, 18, 3))
    with jax.default_matmul_precision("highest"):
        expected = model.forward(params, clip)
        state = model.init_state(params, clip[0])
        _, ys, valid = jax.jit(co.forward_steps, static_argnums=(0, 4))(
            model, params, state, clip, True
        )
    np.testing.assert_allclose(np.asarray(ys)[np.asarray(valid)], expected, rtol=1e-4, atol=1e-5)
    emitted = np.flatnonzero(np.asarray(valid)[: clip.shape[0]])
    assert np.all(np.diff(emitted) == model.stride) and model.stride == (1 if mod else 2)


@pytest.mark.slow
@pytest.mark.parametrize("variant, mod", VARIANTS)
def test_models_pass_the_contract(variant, mod):
    model, _ = _tiny(variant, mod)
    verify_contract(model, (2, 18, 3))


# --------------------------------------------------------------------------- load_stgcn


def _torch_clip(x):
    """cojax clip `(T, M, V, C)` -> torch `(1, C, T, V, M)`."""
    return torch.tensor(np.asarray(x)).permute(3, 0, 2, 1)[None]


def _compare(model, params, reference, frames, graph, seed=5):
    """Last row of `forward` on a `frames`-frame clip vs torch, for two inputs; also the
    input-dependent part (their difference)."""
    shape = (frames, 2, JOINTS[graph], 3)
    clips = [_frames(seed, shape), 1.5 * _frames(seed + 1, shape) + 0.5]
    with torch.no_grad():
        ref = np.stack([reference(_torch_clip(c))[0].numpy() for c in clips])
    with jax.default_matmul_precision("highest"):
        ours = np.stack([np.asarray(model.forward(params, c))[-1] for c in clips])
    scale = np.abs(ref).max()
    error = np.abs(ours - ref).max() / scale
    diff = ref[0] - ref[1]
    diff_error = np.abs((ours[0] - ours[1]) - diff).max() / np.abs(diff).max()
    assert np.abs(diff).max() > 1e-2 * scale  # the input matters in these logits
    return error, diff_error


CASES = [(v, m, g) for v, m in VARIANTS for g in ("kinetics",)] + [
    ("st_gcn", False, "ntu"), ("s_tr", True, "ntu"),
]  # fmt: skip


@pytest.mark.parametrize("variant, mod, graph", CASES)
def test_continual_skeletons_checkpoints_load_with_parity(variant, mod, graph):
    strides = (1,) * 4 if mod else STRIDES
    torch.manual_seed(0)
    net = ContinualSkeletonsNet(
        variant, graph, 5, WIDTHS, strides, mod, first_attention=1, heads=2, per_frame=True
    )
    reference = randomize(net, seed=1)
    frames = 40 if mod else 24
    model, params = load_stgcn(
        reference.state_dict(), variant, graph, mod, num_frames=frames, num_heads=2
    )
    error, diff_error = _compare(model, params, reference, frames, graph)
    assert error < 1e-4 and diff_error < 1e-4, (error, diff_error)


FULL_WIDTHS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
FULL_STRIDES = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant, mod", [("st_gcn", False), ("st_gcn", True), ("a_gcn", False), ("s_tr", False)]
)
def test_full_size_checkpoints_load_with_parity(variant, mod):
    """The paper's networks (10 blocks, NTU graph, 60 classes) on 300-frame clips."""
    torch.manual_seed(0)
    strides = (1,) * 10 if mod else FULL_STRIDES
    net = ContinualSkeletonsNet(variant, "ntu", 60, FULL_WIDTHS, strides, mod, per_frame=True)
    reference = randomize(net, seed=2)
    model, params = load_stgcn(reference.state_dict(), variant, "ntu", mod)
    error, diff_error = _compare(model, params, reference, 300, "ntu")
    assert error < 1e-4 and diff_error < 1e-4, (error, diff_error)


@pytest.mark.parametrize("graph", ["ntu", "kinetics"])
def test_original_st_gcn_checkpoints_load_with_parity(graph, tmp_path):
    torch.manual_seed(1)
    reference = randomize(OriginalSTGCN(graph, 7, WIDTHS, STRIDES), seed=2)
    path = tmp_path / "st_gcn.pt"
    torch.save({"state_dict": reference.state_dict()}, path)  # loaded weights_only=True
    model, params = load_stgcn(path, "st_gcn", graph, num_frames=24)
    assert model.children[2][1].children[2][1].out_features == 7  # classes from the file
    error, diff_error = _compare(model, params, reference, 24, graph)
    assert error < 1e-4 and diff_error < 1e-4, (error, diff_error)


def _with_container_digits(state):
    """The continual checkpoints' keys: `layers.layerN.0.1.gcn…`, `….0.0.residual…`."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(layers\.layer(?!1\.)\d+)\.(gcn|tcn)\.", r"\1.0.1.\2.", key)
        key = re.sub(r"^(layers\.layer\d+)\.residual\.", r"\1.0.0.residual.", key)
        out[key] = value
    return out


def test_continual_checkpoint_keys_with_container_digits_load():
    torch.manual_seed(2)
    reference = randomize(ContinualSkeletonsNet("st_gcn", "kinetics", 5, WIDTHS, STRIDES), 3)
    state = _with_container_digits(reference.state_dict())
    assert "layers.layer3.0.1.gcn.g_conv.0.weight" in state
    assert "layers.layer3.0.0.residual.t_conv.weight" in state
    model, params = load_stgcn(state, "st_gcn", "kinetics", num_frames=24)
    error, _ = _compare(model, params, reference, 24, "kinetics")
    assert error < 1e-4


def test_mismatched_checkpoints_raise_one_error_listing_the_keys():
    torch.manual_seed(3)
    state = dict(ContinualSkeletonsNet("st_gcn", "kinetics", 5, WIDTHS, STRIDES).state_dict())
    del state["layers.layer2.tcn.bn.running_var"]
    state["layers.layer2.extra.weight"] = torch.zeros(3)
    state["layers.layer2.gcn.graph_attn"] = torch.ones(3, 18, 17)
    with pytest.raises(ValueError) as err:
        load_stgcn(state, "st_gcn", "kinetics", num_frames=24)
    message = str(err.value)
    assert "1 missing keys: layers.layer2.tcn.bn.running_var" in message
    assert "1 unexpected keys: layers.layer2.extra.weight" in message
    assert "mis-shaped keys (torch shapes): layers.layer2.gcn.graph_attn (3, 18, 17)" in message
    good = ContinualSkeletonsNet("st_gcn", "kinetics", 5, WIDTHS, STRIDES).state_dict()
    with pytest.raises(ValueError, match="unexpected keys: .*a_conv"):  # an AGCN as ST-GCN
        load_stgcn(ContinualSkeletonsNet("a_gcn", "kinetics", 5, WIDTHS, STRIDES).state_dict())
    with pytest.raises(ValueError, match="does not fit"):  # a Kinetics model as NTU
        load_stgcn(good, "st_gcn", "ntu", num_frames=24)
    with pytest.raises(ValueError, match="original ST-GCN layout"):
        load_stgcn(OriginalSTGCN("kinetics", 5, WIDTHS, STRIDES).state_dict(), "s_tr")
    moved = dict(good)
    moved["layers.layer1.gcn.A"] = torch.tensor(adjacency("kinetics", "spatial"))
    with pytest.raises(ValueError, match="adjacency at layers/layer1/gcn/sum/graph/conv/A"):
        load_stgcn(moved, "st_gcn", "kinetics", num_frames=24)
    model, params = load_stgcn(moved, "st_gcn", "kinetics", num_frames=24, check_graph=False)
    stored = params["layers"]["layer1"]["gcn"]["sum"]["graph"]["conv"]["A"]
    np.testing.assert_array_equal(stored, adjacency("kinetics", "spatial"))


def test_coa_gcn_streams_its_per_frame_graph_and_how_far_that_is_from_agcn():
    """CoA-GCN's adaptive graph attends within each frame (what the reference's
    continual model computes step by step); the clip AGCN's attends over all frames.
    Same weights, random inputs: the relative distance of the logits is measured."""
    torch.manual_seed(4)
    clip_agcn = randomize(ContinualSkeletonsNet("a_gcn", "kinetics", 5, WIDTHS, STRIDES), 5)
    per_frame = ContinualSkeletonsNet("a_gcn", "kinetics", 5, WIDTHS, STRIDES, per_frame=True)
    per_frame.load_state_dict(clip_agcn.state_dict())
    model, params = load_stgcn(clip_agcn.state_dict(), "a_gcn", "kinetics", num_frames=24)
    error, _ = _compare(model, params, per_frame.eval(), 24, "kinetics")
    assert error < 1e-4
    distance, _ = _compare(model, params, clip_agcn, 24, "kinetics")
    print(f"CoA-GCN vs clip AGCN, relative logit distance: {distance:.3f}")
    assert distance > 1e-3  # not the same computation
