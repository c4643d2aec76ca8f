"""`conversion.load_x3d`: X3D checkpoints in the SlowFast/co3d and pytorchvideo key
layouts load into `cojax.models.x3d` and reproduce the torch network's logits.

The torch reference is `TorchX3D` of tests/test_x3d.py (X3D as docs/x3d.md describes it)
with its state dict renamed key by key into each layout; where pytorchvideo is
installed, a real `create_x3d` model is checked as well. With se_scope="clip" the cojax
model is X3D on a clip of `head_pool_frames` frames, so the torch references keep X3D's
own SE (mean over the whole clip); with se_scope="frame" (the reference CoX3D's
per-frame SE) they are given the same per-frame SE.
"""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_x3d import TINY, TorchX3D, _randomize
from torch import nn

from cojax.core import forward_steps
from cojax.models import x3d
from conversion import load_x3d
from conversion.pytorchvideo import X3D_EXTRA_HINT, import_create_x3d

FRAMES = 5  # head pool frames of the tiny model
TINY_KWARGS = dict(head_pool_frames=FRAMES, head_activation=None, **TINY)
del TINY_KWARGS["num_classes"]  # inferred from the checkpoint


# --------------------------------------------------------------------------- key layouts


def _slowfast_key(key: str) -> str:
    """A `TorchX3D` state-dict key -> the SlowFast/co3d key."""
    parts = key.split(".")
    if parts[0] in ("conv_xy", "conv", "bn"):
        return f"s1.pathway0_stem.{key}"
    if parts[0] == "stages":
        prefix = f"s{int(parts[1]) + 2}.pathway0_res{parts[2]}"
        rest = ".".join(parts[3:])
        return f"{prefix}.{rest}" if parts[3].startswith("branch1") else f"{prefix}.branch2.{rest}"
    return f"head.{key}"


_PTV_STEM = {"conv_xy": "conv.conv_t", "conv": "conv.conv_xy", "bn": "norm"}
_PTV_BLOCK = {
    "branch1": "branch1_conv",
    "branch1_bn": "branch1_norm",
    "a": "branch2.conv_a",
    "a_bn": "branch2.norm_a",
    "b": "branch2.conv_b",
    "b_bn": "branch2.norm_b.0",
    "se.fc1": "branch2.norm_b.1.block.0",
    "se.fc2": "branch2.norm_b.1.block.2",
    "c": "branch2.conv_c",
    "c_bn": "branch2.norm_c",
}
_PTV_HEAD = {
    "conv_5": "pool.pre_conv",
    "conv_5_bn": "pool.pre_norm",
    "lin_5": "pool.post_conv",
    "projection": "proj",
}


def _pytorchvideo_key(key: str) -> str:
    """A `TorchX3D` state-dict key -> the pytorchvideo `create_x3d` key."""
    module, param = key.rsplit(".", 1)
    parts = module.split(".")
    if parts[0] == "stages":
        name = _PTV_BLOCK[".".join(parts[3:])]
        return f"blocks.{int(parts[1]) + 1}.res_blocks.{parts[2]}.{name}.{param}"
    if module in _PTV_STEM:
        return f"blocks.0.{_PTV_STEM[module]}.{param}"
    return f"blocks.5.{_PTV_HEAD[module]}.{param}"


def _reference(layout: str, seed: int = 0, per_frame: bool = True, **config) -> TorchX3D:
    """A random `TorchX3D` (random BN statistics) for `layout`; SE per frame or clip."""
    config = {**TINY, **config}
    torch.manual_seed(seed)
    ref = _randomize(TorchX3D(frames=FRAMES, per_frame=per_frame, **config), seed)
    if layout == "pytorchvideo":
        # pytorchvideo has no shortcut BN where the width stays (stage 2's first block).
        for stage in ref.stages:
            block = stage[0]
            if block.branch1.in_channels == block.branch1.out_channels:
                block.branch1_bn = nn.Identity()
    return ref


def _state_dict(ref: TorchX3D, layout: str) -> dict:
    rename = _slowfast_key if layout == "slowfast" else _pytorchvideo_key
    return {rename(k): v for k, v in ref.state_dict().items()}


def _clip(frames: int, crop: int = 32, seed: int = 1):
    clip = np.random.default_rng(seed).standard_normal((frames, crop, crop, 3), np.float32)
    return clip, torch.from_numpy(clip).permute(3, 0, 1, 2)[None]


def _assert_close(logits, expected):
    assert logits.shape == expected.shape
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * scale)
    return float(np.abs(logits - expected).max() / scale)


def _forward(model, params, clip):
    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(model.forward)(params, jnp.asarray(clip)))


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("se_scope", ["clip", "frame"])
@pytest.mark.parametrize("layout", ["slowfast", "pytorchvideo"])
def test_checkpoint_file_reproduces_torch_logits(layout, se_scope, tmp_path):
    ref = _reference(layout, per_frame=se_scope == "frame")
    path = tmp_path / "x3d.pyth"
    torch.save({"model_state": _state_dict(ref, layout), "epoch": 3}, path)
    model, params = load_x3d(path, "S", se_scope=se_scope, **TINY_KWARGS)
    # X3D's clip SE pools the whole input, so its clip is the head pool's length; the
    # per-frame SE network also slides its head pool along a longer clip.
    frames = FRAMES if se_scope == "clip" else FRAMES + 3
    clip, x = _clip(frames)
    with torch.no_grad():
        expected = ref(x).numpy()
    logits = _forward(model, params, clip)
    # num_classes comes from the checkpoint.
    assert logits.shape == (frames - FRAMES + 1, TINY["num_classes"])
    _assert_close(logits, expected)


def test_plain_nested_and_prefixed_dicts_load_the_same(tmp_path):
    state = _state_dict(_reference("slowfast"), "slowfast")
    path = tmp_path / "x3d.pth"
    torch.save({"state_dict": state}, path)
    _, expected = load_x3d(str(path), "S", **TINY_KWARGS)
    sources = [
        state,
        {"state_dict": state},
        {"model_state": state},
        {f"module.{k}": v.numpy() for k, v in state.items()},  # numpy values too
    ]
    for source in sources:
        _, params = load_x3d(source, "S", **TINY_KWARGS)
        assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
        for got, want in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)
        ):
            np.testing.assert_array_equal(got, want)


def test_layout_conversion_of_each_kind_of_weight():
    ref = _reference("slowfast")
    _, params = load_x3d(_state_dict(ref, "slowfast"), "S", **TINY_KWARGS)
    stem = params["s1"]
    np.testing.assert_array_equal(
        stem["conv_xy"]["kernel"], ref.conv_xy.weight.detach().permute(2, 3, 4, 1, 0)
    )
    assert stem["conv"]["kernel"].shape == (5, 1, 1, 1, 4)  # depthwise: I/g = 1
    np.testing.assert_array_equal(stem["bn"]["var"], ref.bn.running_var)
    projection = params["head"]["projection"]
    np.testing.assert_array_equal(projection["kernel"], ref.projection.weight.detach().T)
    se = params["s2"]["res0"]["sum"]["branch2"]["se"]["scale"]["fc2"]
    np.testing.assert_array_equal(se["bias"], ref.stages[0][0].se.fc2.bias.detach())


def test_pytorchvideo_missing_shortcut_bn_is_identity():
    ref = _reference("pytorchvideo")
    state = _state_dict(ref, "pytorchvideo")
    assert not any(k.startswith("blocks.1.res_blocks.0.branch1_norm") for k in state)
    _, params = load_x3d(state, "S", **TINY_KWARGS)
    bn = params["s2"]["res0"]["sum"]["branch1"]["bn"]
    x = jnp.linspace(-3.0, 3.0, 4)
    y = (x - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5) * bn["scale"] + bn["bias"]
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("layout", "count"), [("slowfast", 568), ("pytorchvideo", 563)])
def test_full_size_x3d_s_keys_load(layout, count):
    config = dict(widths=(24, 48, 96, 192), depths=(3, 5, 11, 7), head_width=2048, num_classes=400)
    state = _state_dict(_reference(layout, **config), layout)
    assert len(state) == count  # the key counts of docs/x3d.md
    model, params = load_x3d(state, "S")
    specs = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(specs)
    leaves = jax.tree_util.tree_leaves(params)
    assert sum(math.prod(a.shape) for a in leaves) > 3.79e6


# --------------------------------------------------------------------------- errors


def test_mismatches_raise_one_error_listing_every_key():
    state = _state_dict(_reference("slowfast"), "slowfast")
    del state["s3.pathway0_res0.branch2.a_bn.running_var"]
    state["head.lin_5_bn.weight"] = torch.ones(16)
    state["s2.pathway0_res0.branch2.c.weight"] = torch.ones(5, 9, 1, 1, 1)
    with pytest.raises(ValueError, match="SlowFast/co3d layout") as err:
        load_x3d(state, "S", **TINY_KWARGS)
    message = str(err.value)
    assert "1 missing keys: s3.pathway0_res0.branch2.a_bn.running_var." in message
    assert "1 unexpected keys: head.lin_5_bn.weight." in message
    assert (
        "s2.pathway0_res0.branch2.c.weight: expected (4, 9, 1, 1, 1), got (5, 9, 1, 1, 1)"
        in message
    )


def test_wrong_architecture_and_partial_shortcut_bn_raise():
    state = _state_dict(_reference("pytorchvideo"), "pytorchvideo")
    with pytest.raises(ValueError, match=r"missing keys: blocks\.2\.res_blocks\.1\."):
        load_x3d(state, "S", **{**TINY_KWARGS, "depths": (2, 2, 1, 1)})
    # Only some of the shortcut BN's keys: reported, not replaced by an identity.
    state["blocks.1.res_blocks.0.branch1_norm.weight"] = torch.ones(4)
    with pytest.raises(ValueError, match=r"branch1_norm\.bias"):
        load_x3d(state, "S", **TINY_KWARGS)


def test_bad_sources_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint key layout.*'fc.weight'"):
        load_x3d({"fc.weight": torch.ones(2, 2)}, "S")
    with pytest.raises(TypeError, match="checkpoint path or a state dict, got list"):
        load_x3d([1, 2], "S")
    path = tmp_path / "pickled.pth"
    torch.save({"model_state": {}, "object": types.SimpleNamespace(a=1)}, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        load_x3d(path, "S")


# --------------------------------------------------------------------------- pytorchvideo


@pytest.fixture(scope="module")
def create_x3d():
    function = import_create_x3d()
    if function is None:
        pytest.skip(X3D_EXTRA_HINT)
    return function


def _per_frame_se(module):
    """Make every fvcore SqueezeExcitation pool each frame (H, W), as cojax's "frame" SE."""

    def forward(self, x):
        return x * self.block(x.mean((3, 4), keepdim=True))

    for m in module.modules():
        if type(m).__name__ == "SqueezeExcitation":
            m.forward = types.MethodType(forward, m)


@pytest.mark.parametrize("se_scope", [pytest.param("clip", marks=pytest.mark.slow), "frame"])
def test_real_pytorchvideo_create_x3d(create_x3d, se_scope, tmp_path):
    # width_factor 1, stem_dim_in 4: widths (8, 8, 16, 32); depth_factor 0.5: (1, 1, 3, 2).
    frames = 4
    torch.manual_seed(0)
    ref = create_x3d(
        input_clip_length=frames,
        input_crop_size=32,
        model_num_class=7,
        width_factor=1.0,
        depth_factor=0.5,
        stem_dim_in=4,
        head_dim_out=16,
        head_activation=None,
    )
    _randomize(ref, 0)
    if se_scope == "frame":
        _per_frame_se(ref)
    path = tmp_path / "X3D_tiny.pyth"
    torch.save({"model_state": ref.state_dict()}, path)
    model, params = load_x3d(
        path,
        "S",
        widths=(8, 8, 16, 32),
        depths=(1, 1, 3, 2),
        head_width=16,
        head_pool_frames=frames,
        head_activation=None,
        se_scope=se_scope,
    )
    clip, x = _clip(frames)
    with torch.no_grad():
        expected = ref(x).numpy()  # (1, 7)
    _assert_close(_forward(model, params, clip), expected)
    if se_scope == "clip":
        # Streamed frame by frame, the end padding flushed: X3D's prediction again.
        with jax.default_matmul_precision("highest"):
            state = model.init_state(params, clip[0])
            run = jax.jit(forward_steps, static_argnums=0, static_argnames="pad_end")
            _, ys, valid = run(model, params, state, jnp.asarray(clip), pad_end=True)
        assert np.asarray(valid).sum() == 1
        _assert_close(np.asarray(ys)[np.asarray(valid)], expected)


def test_real_pytorchvideo_x3d_s_keys_load(create_x3d):
    state = create_x3d().state_dict()  # X3D-S
    assert len(state) == 563
    model, params = load_x3d({"model_state": state}, "S")
    kernel = params["s1"]["conv_xy"]["kernel"]
    assert kernel.shape == (1, 3, 3, 3, 24)
    np.testing.assert_array_equal(
        kernel, state["blocks.0.conv.conv_t.weight"].permute(2, 3, 4, 1, 0)
    )
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        jax.eval_shape(x3d("S").init, jax.random.PRNGKey(0))
    )
