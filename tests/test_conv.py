"""Continual convolutions: the contract, torch parity, the reference's defects, bad input."""

from __future__ import annotations

import continual
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from cojax.core import forward_steps, valid_outputs
from cojax.layers.conv import Conv1d, Conv2d, Conv3d
from cojax.testing import verify_contract

CLASSES = {0: Conv1d, 1: Conv2d, 2: Conv3d}

# (layer, frame shape): every option at least once, several combined.
CONFIGS = [
    (Conv1d(3, 5, 3, padding=1), (3,)),
    # k_t = 1 with temporal stride 2: the reference emits every step (its defect #5).
    (Conv1d(4, 6, 1, stride=2, bias=False), (4,)),
    (Conv1d(4, 6, 3, stride=2, padding=3, dilation=2, groups=2, temporal_fill="replicate"), (4,)),
    (Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 1), padding_mode="replicate"), (7, 3)),
    (Conv3d(3, 4, 3, padding=1), (5, 4, 3)),
    (
        Conv3d(
            4,
            6,
            (3, 2, 3),
            (2, 1, 2),
            (2, 1, 0),
            (2, 1, 2),
            groups=2,
            bias=False,
            padding_mode="replicate",
            temporal_fill="replicate",
        ),
        (5, 7, 4),
    ),
    (Conv3d(4, 8, 3, padding=(2, 1, 1), groups=4, temporal_fill="replicate"), (4, 5, 4)),
    (
        Conv3d(
            4, 4, (2, 2, 3), (2, 2, 1), (1, 1, 2), (2, 2, 1), groups=4, padding_mode="replicate"
        ),
        (6, 5, 4),
    ),
    (Conv3d(4, 6, (3, 1, 1), stride=(1, 2, 2), padding=(2, 1, 0), groups=2), (5, 4, 4)),
    (Conv3d(3, 4, (1, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1)), (4, 4, 3)),
    # the "partials" step with temporal dilation, spatial stride and dilation
    (Conv3d(3, 4, 3, padding=(3, 1, 2), stride=(1, 2, 1), dilation=(2, 1, 2)), (7, 6, 3)),
]
IDS = [f"{type(c).__name__}-{c.kernel_path}-{i}" for i, (c, _) in enumerate(CONFIGS)]


def torch_layout(x: np.ndarray, n: int) -> torch.Tensor:
    """cojax clip `(T, *S, C)` -> torch `(1, C, T, *S)`."""
    return torch.tensor(np.asarray(x)).permute(n + 1, *range(n + 1))[None]


def torch_reference(layer, params, clip) -> np.ndarray:
    """The same convolution with torch.nn.functional.convNd (`(T_out, *S_out, C_out)`).

    Zero padding goes through torch's own `padding`; replicate padding (temporal fill
    and/or `padding_mode`) is applied with `np.pad(mode="edge")` first.
    """
    n = layer.num_spatial
    weight = torch.tensor(np.asarray(params["kernel"])).permute(n + 2, n + 1, *range(n + 1))
    bias = torch.tensor(np.asarray(params["bias"])) if layer.bias else None
    x, pad = np.asarray(clip), layer.padding_nd
    if "replicate" in (layer.padding_mode, layer.temporal_fill):
        t_mode = "edge" if layer.temporal_fill == "replicate" else "constant"
        s_mode = "edge" if layer.padding_mode == "replicate" else "constant"
        x = np.pad(x, [(pad[0], pad[0])] + [(0, 0)] * (n + 1), mode=t_mode)
        x = np.pad(x, [(0, 0), *((p, p) for p in pad[1:]), (0, 0)], mode=s_mode)
        pad = 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[n]
    y = conv(
        torch_layout(x, n), weight, bias, layer.stride_nd, pad, layer.dilation_nd, layer.groups
    )
    return y[0].permute(*range(1, n + 2), 0).numpy()


def random_params(layer, seed: int = 0):
    return layer.init(jax.random.PRNGKey(seed))


# --------------------------------------------------------------------------- contract


# verify_contract compiles ~60 small XLA programs per layer (seconds): a subset of the
# configs here (the gradient check once per kernel path); the random configurations
# below cover the rest.
CONTRACT = {1: True, 3: True, 5: False, 6: False, 7: True, 10: False}


@pytest.mark.parametrize("index", list(CONTRACT), ids=[IDS[i] for i in CONTRACT])
def test_contract(index):
    layer, frame = CONFIGS[index]
    verify_contract(layer, frame, check_grad=CONTRACT[index])


@pytest.mark.parametrize("layer,frame", CONFIGS, ids=IDS)
def test_forward_matches_torch(layer, frame):
    params = random_params(layer, 1)
    clip = jax.random.normal(jax.random.PRNGKey(2), (9, *frame))
    got = np.asarray(jax.jit(layer.forward)(params, clip))
    np.testing.assert_allclose(got, torch_reference(layer, params, clip), atol=1e-5, rtol=0)


def test_forward_matches_torch_module_zeros_fill():
    """torch.nn.Conv3d itself (zeros temporal fill) with the same weights."""
    layer = Conv3d(3, 4, (3, 3, 2), stride=(1, 2, 1), padding=(1, 1, 1), dilation=(1, 1, 2))
    module = torch.nn.Conv3d(3, 4, (3, 3, 2), stride=(1, 2, 1), padding=1, dilation=(1, 1, 2))
    params = {
        "kernel": jnp.asarray(module.weight.detach().permute(2, 3, 4, 1, 0).numpy()),
        "bias": jnp.asarray(module.bias.detach().numpy()),
    }
    clip = np.random.default_rng(0).standard_normal((6, 5, 6, 3)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch_layout(clip, 2))[0].permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(np.asarray(layer.forward(params, clip)), ref, atol=1e-5)


# No shrinking: each example runs verify_contract (seconds); the draws are printed.
@pytest.mark.slow
@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=st.data())
def test_random_configs(data):
    n = data.draw(st.sampled_from([0, 1, 2]), "num_spatial")
    k = [data.draw(st.integers(1, 3), "k_t")] + [data.draw(st.integers(1, 3)) for _ in range(n)]
    s = [data.draw(st.integers(1, 2)) for _ in range(n + 1)]
    d = [data.draw(st.integers(1, 2)) for _ in range(n + 1)]
    rf = d[0] * (k[0] - 1) + 1
    p = [data.draw(st.integers(0, rf - 1), "p_t")] + [
        data.draw(st.integers(0, 1)) for _ in range(n)
    ]
    groups = data.draw(st.sampled_from([1, 2, 4]), "groups")  # 4 = depthwise
    layer = CLASSES[n](
        4,
        groups * data.draw(st.integers(1, 2), "multiplier"),
        k,
        s,
        p,
        d,
        groups=groups,
        bias=data.draw(st.booleans(), "bias"),
        padding_mode=data.draw(st.sampled_from(["zeros", "replicate"]), "padding_mode"),
        temporal_fill=data.draw(st.sampled_from(["zeros", "replicate"]), "temporal_fill"),
    )
    frame = (*(di * (ki - 1) + 1 + si for ki, si, di in zip(k[1:], s[1:], d[1:])), 4)
    verify_contract(layer, frame, num_frames=2 * rf + 2 * s[0] + 3, check_grad=False)
    params = random_params(layer, 3)
    clip = jax.random.normal(jax.random.PRNGKey(4), (7, *frame))
    got = np.asarray(jax.jit(layer.forward)(params, clip))
    np.testing.assert_allclose(got, torch_reference(layer, params, clip), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- semantics


def test_metadata_with_temporal_dilation():
    layer = Conv3d(2, 2, (3, 1, 1), stride=(2, 1, 1), padding=(3, 0, 0), dilation=(2, 1, 1))
    assert (layer.receptive_field, layer.delay, layer.stride, layer.padding) == (5, 1, 2, 3)
    assert Conv1d(2, 2, 4).delay == 3 and Conv1d(2, 2, 4, padding=3).delay == 0


def test_params_layout_and_torch_init_bounds():
    layer = Conv3d(6, 4, (3, 2, 1), groups=2)
    params = random_params(layer)
    assert params["kernel"].shape == (3, 2, 1, 3, 4) and params["bias"].shape == (4,)
    bound = 1 / np.sqrt(3 * 3 * 2 * 1)
    assert float(jnp.max(jnp.abs(params["kernel"]))) <= bound
    assert float(jnp.max(jnp.abs(params["kernel"]))) > 0.5 * bound
    assert "bias" not in random_params(Conv1d(2, 2, 1, bias=False))


def test_layers_are_static_and_hashable():
    a, b = Conv2d(2, 3, (3, 1), padding=(1, 0)), Conv2d(2, 3, (3, 1), padding=(1, 0))
    assert a == b and hash(a) == hash(b) and a != Conv2d(2, 3, (3, 1))
    assert a.kernel_size == (3, 1) and a.stride_nd == (1, 1) and a.padding_nd == (1, 0)


@pytest.mark.parametrize(
    "layer,path",
    [
        (Conv3d(8, 16, 3, groups=8), "depthwise"),
        (Conv3d(8, 16, (3, 1, 1)), "pointwise"),
        (Conv1d(8, 16, 3, groups=2), "pointwise"),
        (Conv3d(8, 16, 3), "dense"),
        (Conv3d(8, 16, 3, groups=2), "dense"),
    ],
)
def test_kernel_path_is_what_runs(layer, path):
    """The step and the clip forward run the intended kernel (no depthwise lax.conv)."""
    assert layer.kernel_path == path
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(0))
    frame = jax.ShapeDtypeStruct((5, 5, 8)[-(layer.num_spatial + 1) :], jnp.float32)
    clip = jax.ShapeDtypeStruct((4, *frame.shape), jnp.float32)
    state = jax.eval_shape(layer.init_state, params, frame)
    for fn, args in (
        (layer.step, (params, state, frame)),
        (layer.forward, (params, clip)),
    ):
        convs = conv_eqns(jax.make_jaxpr(fn)(*args).jaxpr)
        if path == "dense" and fn == layer.step and layer.step_path == "partials":
            # the new frame against all 3 temporal taps: one 2D conv C_in -> 3 C_out
            assert len(convs) == 1 and len(convs[0].invars[0].aval.shape) == 4
            assert convs[0].invars[0].aval.shape[-1] == 8
            assert convs[0].outvars[0].aval.shape[-1] == 3 * 16
        elif path == "dense":
            assert len(convs) == layer.groups  # one folded 2D conv per group
            assert all(len(c.invars[0].aval.shape) == 4 for c in convs)
            assert all(c.invars[0].aval.shape[-1] == 3 * 8 // layer.groups for c in convs)
            assert all(c.params["feature_group_count"] == 1 for c in convs)
        else:
            assert not convs


def conv_eqns(jaxpr) -> list:
    """Every conv_general_dilated equation in `jaxpr`, nested jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += conv_eqns(sub)
    return found


def test_short_clip_gives_empty_output():
    layer = Conv2d(2, 3, (4, 1))
    params = random_params(layer)
    assert layer.forward(params, jnp.ones((3, 5, 2))).shape == (0, 5, 3)


def test_replicate_fill_is_a_boring_video():
    """temporal_fill="replicate": the start acts as if the first frame had always been there."""
    layer = Conv1d(2, 3, 3, padding=2, temporal_fill="replicate")
    params = random_params(layer)
    clip = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    longer = jnp.concatenate([jnp.broadcast_to(clip[:1], (2, 2)), clip])
    plain = Conv1d(2, 3, 3)
    np.testing.assert_allclose(
        layer.forward(params, clip)[:5], plain.forward(params, longer), atol=1e-6
    )


# --------------------------------------------------------------------------- reference


def test_steps_match_continual_inference_reference():
    ref = continual.Conv3d(3, 4, (3, 3, 3), padding=(1, 1, 1), stride=(2, 1, 1))
    layer = Conv3d(3, 4, 3, padding=1, stride=(2, 1, 1))
    params = {
        "kernel": jnp.asarray(ref.weight.detach().permute(2, 3, 4, 1, 0).numpy()),
        "bias": jnp.asarray(ref.bias.detach().numpy()),
    }
    clip = np.random.default_rng(1).standard_normal((9, 4, 4, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref.forward_steps(torch_layout(clip, 2), pad_end=True)
    expected = expected[0].permute(1, 2, 3, 0).numpy()
    _, ys, valid = forward_steps(layer, params, layer.init_state(params, clip[0]), clip, True)
    np.testing.assert_allclose(valid_outputs(ys, valid), expected, atol=1e-5)
    assert layer.delay == ref.delay


def test_reference_forward_pads_time_with_padding_mode():
    """Reference inconsistency: its `forward` pads time with `padding_mode`, its steps
    with `temporal_fill`. Ours follow `temporal_fill` in both, so forward == steps, and
    match the reference's steps."""
    kw = dict(kernel_size=3, padding=1, padding_mode="replicate", temporal_fill="zeros")
    ref = continual.Conv2d(2, 3, **kw)
    layer = Conv2d(2, 3, **kw)
    params = {
        "kernel": jnp.asarray(ref.weight.detach().permute(2, 3, 1, 0).numpy()),
        "bias": jnp.asarray(ref.bias.detach().numpy()),
    }
    clip = np.random.default_rng(2).standard_normal((5, 4, 2)).astype(np.float32)
    with torch.no_grad():
        ref_forward = ref.forward(torch_layout(clip, 1))[0].permute(1, 2, 0).numpy()
        ref_steps = ref.forward_steps(torch_layout(clip, 1), pad_end=True)
    ref_steps = ref_steps[0].permute(1, 2, 0).numpy()
    ours = np.asarray(layer.forward(params, clip))
    np.testing.assert_allclose(ours, ref_steps, atol=1e-5)
    assert np.abs(ref_forward - ref_steps).max() > 1e-3  # the reference disagrees with itself


def test_kt1_stride2_emits_every_other_step():
    """Reference defect #5: k_t = 1, stride 2 emits on every step; we match forward."""
    ref = continual.Conv1d(2, 3, 1, stride=2)
    x = torch.randn(1, 2, 6)
    with torch.no_grad():
        emitted = [ref.forward_step(x[:, :, t]) for t in range(6)]
    assert all(e is not None for e in emitted)  # the defect: 6 outputs instead of 3

    layer = Conv1d(2, 3, 1, stride=2)
    params = random_params(layer)
    clip = jnp.asarray(x[0].T.numpy())
    _, ys, valid = forward_steps(layer, params, layer.init_state(params, clip[0]), clip)
    assert np.asarray(valid).tolist() == [True, False] * 3
    np.testing.assert_allclose(valid_outputs(ys, valid), layer.forward(params, clip), atol=1e-6)


# --------------------------------------------------------------------------- bad input


def test_bad_frames_raise_clear_errors():
    layer = Conv3d(3, 4, 3, padding=1)
    params = random_params(layer)
    with pytest.raises(ValueError, match="Conv3d: expected 3 channels"):
        layer.init_state(params, jnp.zeros((5, 5, 4)))
    with pytest.raises(ValueError, match=r"Conv3d: expected a frame with 3 dimensions \(H, W, C\)"):
        layer.init_state(params, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="one dimension too many"):
        layer.init_state(params, jnp.zeros((2, 5, 5, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        layer.forward(params, jnp.zeros((4, 5, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        layer.forward(params, jnp.zeros((4, 5, 5, 2)))
    with pytest.raises(ValueError, match="too small"):
        Conv2d(3, 4, (1, 5)).init_state({}, jnp.zeros((3, 3)))


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"Conv1d: temporal padding 3 exceeds receptive_field"):
        Conv1d(2, 2, 3, padding=3)
    Conv1d(2, 2, 3, padding=3, dilation=2)  # rf = 5: fine
    with pytest.raises(ValueError, match=r"in_channels \(6\) must be divisible by groups \(4\)"):
        Conv3d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="out_channels"):
        Conv3d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size must be an int or a tuple of 3 ints"):
        Conv3d(2, 2, (3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        Conv2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="temporal_fill"):
        Conv2d(2, 2, 3, temporal_fill="ones")
