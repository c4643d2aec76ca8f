"""CoX3D (`cojax.models.x3d`): metadata and parameter counts of the real sizes, a tiny
model against a torch X3D reference, and the streaming contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from cojax.containers import Sequential
from cojax.core import forward_steps
from cojax.layers.conv import Conv3d
from cojax.models import X3D_SIZES, round_width, x3d
from cojax.testing import verify_contract

# A tiny X3D: 4 stages, 5 blocks (stage 2 has an identity-shortcut block without SE).
TINY = dict(widths=(4, 8, 8, 16), depths=(2, 1, 1, 1), head_width=16, num_classes=10)
TINY_FRAMES = 5


def _leaves(layer):
    """Every non-container layer inside `layer`."""
    children = getattr(layer, "children", None)
    if not children:
        return [layer]
    return [leaf for _, child in children for leaf in _leaves(child)]


def _conv_part(model) -> Sequential:
    return Sequential({name: model[name] for name in ("s1", "s2", "s3", "s4", "s5")})


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("size", ["XS", "S", "M", "L"])
def test_delay_and_receptive_field_follow_the_spec(size):
    model = x3d(size)
    blocks = sum(X3D_SIZES[size].depths)
    T = X3D_SIZES[size].frames
    conv = _conv_part(model)
    assert conv.delay == 2 + blocks == (57 if size == "L" else 28)
    assert conv.receptive_field == 5 + 2 * blocks == (115 if size == "L" else 57)
    assert model.delay == 2 + blocks + T - 1
    assert model.receptive_field == 5 + 2 * blocks + T - 1
    assert model.stride == 1


def test_cox3d_s_delay_and_longer_head_pool():
    assert x3d("S").delay == 40
    assert x3d("S", head_pool_frames=64).delay == 28 + 63


def test_clip_se_adds_window_minus_one_delay_per_se_block():
    # X3D-S has 2 + 3 + 6 + 4 = 15 SE blocks (even blocks of stages with 3/5/11/7).
    assert x3d("S", se_scope="clip").delay == 40 + 15 * 12
    assert x3d("S", se_scope="clip", se_clip_frames=4).delay == 40 + 15 * 3
    assert x3d("L", se_scope="clip").delay == 57 + 15 + (3 + 5 + 13 + 8) * 15
    # A 1-frame clip SE is the frame SE: same layers, same parameters.
    assert x3d("S", se_scope="clip", se_clip_frames=1) == x3d("S", se_scope="frame")
    frame_shapes = jax.eval_shape(x3d("S").init, jax.random.PRNGKey(0))
    clip_shapes = jax.eval_shape(x3d("S", se_scope="clip").init, jax.random.PRNGKey(0))

    # The clip window adds no parameters: same weights under the same names.
    def paths(tree):
        return [(path, leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]

    assert paths(frame_shapes) == paths(clip_shapes)


@pytest.mark.parametrize(
    ("size", "millions"), [("XS", 3.79), ("S", 3.79), ("M", 3.79), ("L", 6.15)]
)
def test_parameter_counts_match_x3d(size, millions):
    params = jax.eval_shape(x3d(size).init, jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    # BN running statistics are buffers, not parameters, in the paper's count.
    count = sum(math.prod(a.shape) for path, a in leaves if path[-1].key not in ("mean", "var"))
    assert abs(count / 1e6 - millions) <= 0.01 * millions


def test_se_widths_round_as_x3d():
    assert [round_width(c, 1 / 16) for c in (54, 108, 216, 432)] == [8, 8, 16, 32]


def test_fast_kernel_paths():
    convs = [leaf for leaf in _leaves(x3d("S")) if isinstance(leaf, Conv3d)]
    paths = {}
    for conv in convs:
        paths.setdefault(conv.kernel_path, []).append(conv.kernel_size)
    assert paths["dense"] == [(1, 3, 3)]  # only the stem's spatial conv
    assert set(paths["depthwise"]) == {(5, 1, 1), (3, 3, 3)}
    assert set(paths["pointwise"]) == {(1, 1, 1)}


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="size must be one of"):
        x3d("XXL")
    with pytest.raises(ValueError, match="se_clip_frames must be a positive int, got 0"):
        x3d("S", se_scope="clip", se_clip_frames=0)
    with pytest.raises(ValueError, match="se_scope must be one of"):
        x3d("S", se_scope="channel")
    with pytest.raises(ValueError, match="widths must be 4 positive ints"):
        x3d("S", widths=(4, 8))
    with pytest.raises(ValueError, match="head_pool_frames must be a positive int, got 0"):
        x3d("S", head_pool_frames=0)
    with pytest.raises(ValueError, match="temporal_fill"):
        x3d("S", temporal_fill="reflect")


# --------------------------------------------------------------------------- torch reference


class TorchSE(nn.Module):
    """X3D's SE; `per_frame=True` pools H, W of each frame (the reference CoX3D's SE),
    `per_frame=False` the whole clip (X3D)."""

    def __init__(self, channels, per_frame):
        super().__init__()
        width = round_width(channels, 1 / 16)
        self.fc1 = nn.Conv3d(channels, width, 1)
        self.fc2 = nn.Conv3d(width, channels, 1)
        self.dims = (3, 4) if per_frame else (2, 3, 4)

    def forward(self, x):
        s = x.mean(self.dims, keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class TorchBlock(nn.Module):
    def __init__(self, c_in, c_out, first, use_se, per_frame):
        super().__init__()
        inner = int(2.25 * c_out)
        stride = (1, 2, 2) if first else (1, 1, 1)
        self.branch1 = nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False) if first else None
        self.branch1_bn = nn.BatchNorm3d(c_out) if first else None
        self.a = nn.Conv3d(c_in, inner, 1, bias=False)
        self.a_bn = nn.BatchNorm3d(inner)
        self.b = nn.Conv3d(inner, inner, 3, stride=stride, padding=1, groups=inner, bias=False)
        self.b_bn = nn.BatchNorm3d(inner)
        self.se = TorchSE(inner, per_frame) if use_se else None
        self.c = nn.Conv3d(inner, c_out, 1, bias=False)
        self.c_bn = nn.BatchNorm3d(c_out)

    def forward(self, x):
        y = self.b_bn(self.b(torch.relu(self.a_bn(self.a(x)))))
        if self.se is not None:
            y = self.se(y)
        y = self.c_bn(self.c(y * torch.sigmoid(y)))
        shortcut = self.branch1_bn(self.branch1(x)) if self.branch1 is not None else x
        return torch.relu(shortcut + y)


class TorchX3D(nn.Module):
    """X3D as docs/x3d.md describes it, in plain torch (SlowFast names), returning logits."""

    def __init__(self, widths, depths, head_width, num_classes, frames, per_frame):
        super().__init__()
        w0 = widths[0]
        self.conv_xy = nn.Conv3d(3, w0, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.conv = nn.Conv3d(w0, w0, (5, 1, 1), padding=(2, 0, 0), groups=w0, bias=False)
        self.bn = nn.BatchNorm3d(w0)
        self.stages = nn.ModuleList()
        c_in = w0
        for width, depth in zip(widths, depths):
            blocks = [
                TorchBlock(c_in if j == 0 else width, width, j == 0, j % 2 == 0, per_frame)
                for j in range(depth)
            ]
            self.stages.append(nn.ModuleList(blocks))
            c_in = width
        inner = int(2.25 * c_in)
        self.conv_5 = nn.Conv3d(c_in, inner, 1, bias=False)
        self.conv_5_bn = nn.BatchNorm3d(inner)
        self.frames = frames
        self.lin_5 = nn.Conv3d(inner, head_width, 1, bias=False)
        self.projection = nn.Linear(head_width, num_classes)

    def forward(self, x):
        """`(1, 3, T, H, W)` -> logits `(T - frames + 1, num_classes)`."""
        x = torch.relu(self.bn(self.conv(self.conv_xy(x))))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        x = torch.relu(self.conv_5_bn(self.conv_5(x)))
        x = nn.functional.avg_pool3d(x, (self.frames, *x.shape[3:]), stride=1)
        x = torch.relu(self.lin_5(x))
        return self.projection(x.permute(0, 2, 3, 4, 1)).mean((2, 3)).squeeze(0)


def _randomize(module, seed):
    """Random BN affine and statistics (torch's init leaves BN at identity); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
    return module.eval()


def _t(x):
    return jnp.asarray(x.detach().numpy())


def _conv(m):
    params = {"kernel": _t(m.weight.permute(2, 3, 4, 1, 0))}
    if m.bias is not None:
        params["bias"] = _t(m.bias)
    return params


def _bn(m):
    return {
        "scale": _t(m.weight),
        "bias": _t(m.bias),
        "mean": _t(m.running_mean),
        "var": _t(m.running_var),
    }


def _load(params, ref):
    """Copy the torch reference's weights into the cojax params (test-local mapping)."""
    params["s1"].update(conv_xy=_conv(ref.conv_xy), conv=_conv(ref.conv), bn=_bn(ref.bn))
    for i, stage in enumerate(ref.stages):
        for j, block in enumerate(stage):
            p = params[f"s{i + 2}"][f"res{j}"]["sum"]
            if block.branch1 is not None:
                p["branch1"].update(conv=_conv(block.branch1), bn=_bn(block.branch1_bn))
            b2 = p["branch2"]
            for name in ("a", "b", "c"):
                b2[name] = _conv(getattr(block, name))
                b2[f"{name}_bn"] = _bn(getattr(block, f"{name}_bn"))
            if block.se is not None:
                b2["se"]["scale"].update(fc1=_conv(block.se.fc1), fc2=_conv(block.se.fc2))
    head = params["head"]
    head.update(conv_5=_conv(ref.conv_5), conv_5_bn=_bn(ref.conv_5_bn), lin_5=_conv(ref.lin_5))
    head["projection"] = {"kernel": _t(ref.projection.weight.T), "bias": _t(ref.projection.bias)}
    return params


def _tiny_pair(per_frame=True, seed=0, **kwargs):
    """A tiny cojax X3D, its torch reference, and the reference's weights as params."""
    model = x3d("S", head_pool_frames=TINY_FRAMES, **TINY, **kwargs)
    torch.manual_seed(seed)
    ref = _randomize(TorchX3D(frames=TINY_FRAMES, per_frame=per_frame, **TINY), seed)
    # Only the tree structure of `init` (nothing compiled); every leaf comes from torch.
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed))
    params = _load(jax.tree_util.tree_map(lambda s: s, shapes), ref)
    got, want = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(shapes)
    assert len(got) == len(want)
    assert all(isinstance(g, jax.Array) and g.shape == w.shape for g, w in zip(got, want))
    return model, ref, params


def _clip(crop, frames, seed=1):
    clip = np.random.default_rng(seed).standard_normal((frames, crop, crop, 3), np.float32)
    return clip, torch.from_numpy(clip).permute(3, 0, 1, 2)[None]


def test_clip_forward_equals_torch_x3d_with_per_frame_se():
    # cojax's se_scope="frame" pools H, W per frame (the reference CoX3D), so the torch
    # reference here uses the same per-frame SE (X3D's clip SE: the next test).
    model, ref, params = _tiny_pair(head_activation=None)
    clip, x = _clip(32, TINY_FRAMES + 3)
    with torch.no_grad():
        expected = ref(x).numpy()  # (T_out, classes)
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(jax.jit(model.forward)(params, jnp.asarray(clip)))
    assert logits.shape == expected.shape == (4, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    with_softmax = x3d("S", head_pool_frames=TINY_FRAMES, **TINY)
    probs = jax.jit(with_softmax.forward)(params, jnp.asarray(clip))
    np.testing.assert_allclose(probs, jax.nn.softmax(logits, axis=-1), rtol=1e-5, atol=1e-6)


def test_frame_se_is_per_frame_and_only_approximates_x3d_clip_se():
    model, ref, params = _tiny_pair()
    se = model["s2"]["res0"]["sum"]["branch2"]["se"]
    se_params = params["s2"]["res0"]["sum"]["branch2"]["se"]
    torch_se = ref.stages[0][0].se
    # Frames with different means, so pooling per frame and over the clip differ.
    clip = np.random.default_rng(2).standard_normal((6, 4, 4, 9), np.float32)
    clip += np.arange(6, dtype=np.float32)[:, None, None, None]
    x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None]
    got = np.asarray(se.forward(se_params, jnp.asarray(clip)))
    with torch.no_grad():
        per_frame = torch_se(x)[0].permute(1, 2, 3, 0).numpy()
        torch_se.dims = (2, 3, 4)
        per_clip = torch_se(x)[0].permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(got, per_frame, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, per_clip, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_clip_se_equals_x3d_on_its_clip_forward_and_streamed():
    # se_scope="clip": on a clip of head_pool_frames frames every SE averages the whole
    # clip, so forward is X3D (torch reference with its clip SE), and so are the steps
    # over that clip once the end padding is flushed (pad_end=True).
    model, ref, params = _tiny_pair(per_frame=False, se_scope="clip", head_activation=None)
    clip, x = _clip(32, TINY_FRAMES)
    with torch.no_grad():
        expected = ref(x).numpy()
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(jax.jit(model.forward)(params, jnp.asarray(clip)))
        state = model.init_state(params, clip[0])
        run = jax.jit(forward_steps, static_argnums=0, static_argnames="pad_end")
        _, ys, valid = run(model, params, state, jnp.asarray(clip), pad_end=True)
    assert logits.shape == expected.shape == (1, 10)
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, **tol)
    valid = np.asarray(valid)
    assert valid.sum() == 1 and valid[-1]
    np.testing.assert_allclose(np.asarray(ys)[valid], expected, **tol)


def test_clip_se_layer_is_x3d_se_over_each_centred_window():
    # The clip SE on a longer clip: frame t is scaled by X3D's SE of frames
    # [t - W + 1, t + W - 1] clipped to the clip (plain sliding-window computation).
    W = 3
    model, ref, params = _tiny_pair(per_frame=False, se_scope="clip", se_clip_frames=W)
    se = model["s2"]["res0"]["sum"]["branch2"]["se"]
    se_params = params["s2"]["res0"]["sum"]["branch2"]["se"]
    assert se.delay == W - 1
    torch_se = ref.stages[0][0].se
    clip = np.random.default_rng(2).standard_normal((8, 4, 4, 9), np.float32)
    clip += np.arange(8, dtype=np.float32)[:, None, None, None]
    got = np.asarray(se.forward(se_params, jnp.asarray(clip)))
    x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        expected = [
            torch_se(x[:, :, max(0, t - W + 1) : t + W])[0, :, min(t, W - 1)]
            .permute(1, 2, 0)
            .numpy()
            for t in range(len(clip))
        ]
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- streaming


@pytest.mark.slow
def test_streaming_contract():
    model, _, params = _tiny_pair(head_activation=None)
    assert model.delay == 2 + 5 + TINY_FRAMES - 1
    verify_contract(
        model,
        (16, 16, 3),
        params=params,
        num_frames=model.receptive_field + 4,
        num_streams=2,
        check_grad=False,
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.slow
def test_clip_se_streaming_contract():
    model = x3d(
        "S",
        head_pool_frames=2,
        se_scope="clip",
        head_activation=None,
        widths=(4, 8, 8, 8),
        depths=(1, 1, 1, 1),
        head_width=8,
        num_classes=5,
    )
    assert model.delay == 2 + 4 + 1 + 4 * 1
    verify_contract(
        model,
        (16, 16, 3),
        num_frames=model.receptive_field + 3,
        num_streams=2,
        check_grad=False,
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.slow  # moved to the slow set (CI runs it) to keep the fast set under 8 min
def test_replicate_fill_steps_equal_forward():
    # "replicate" pads forward's clip with copies of its first/last frame, as the steps do.
    model, _, params = _tiny_pair(temporal_fill="replicate", head_activation=None)
    clip = jnp.asarray(_clip(16, model.receptive_field + 2)[0])
    with jax.default_matmul_precision("highest"):
        expected = model.forward(params, clip)
        state = model.init_state(params, clip[0])
        _, ys, valid = jax.jit(forward_steps, static_argnums=0)(model, params, state, clip)
    valid = np.asarray(valid)
    assert int(np.argmax(valid)) == model.delay
    got = np.asarray(ys)[valid]
    np.testing.assert_allclose(got, expected[: len(got)], rtol=1e-4, atol=1e-4)
