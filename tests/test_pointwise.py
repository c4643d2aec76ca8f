"""Per-frame layers: Linear, activations, norms, dropout — contract and torch parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from cojax.containers import Parallel
from cojax.layers import pointwise as pw
from cojax.layers.linear import Linear
from cojax.testing import verify_contract

T, W, C = 5, 3, 4


def to_torch(clip):
    """cojax clip (T, *S, C) -> torch (1, C, T, *S)."""
    x = torch.from_numpy(np.array(clip))
    return torch.movedim(x, -1, 0).unsqueeze(0)


def from_torch(y):
    """torch (1, C, T, *S) -> (T, *S, C)."""
    return torch.movedim(y[0], 0, -1).detach().numpy()


def random_clip(shape, scale=2.0, seed=1):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def assert_close(ours, theirs, tol=1e-5):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs), initial=0.0) <= tol


def randomize(params, seed=3, positive=("var",)):
    """Random leaves (positive where named) so no parameter sits at a trivial value."""
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(params), 1))
    out = {}
    for k, (name, leaf) in zip(keys, sorted(params.items())):
        r = jax.random.normal(k, leaf.shape, leaf.dtype)
        out[name] = jnp.abs(r) + 0.5 if name in positive else r
    return out


def check_against_torch(layer, params, torch_module, shape=(T, W, C), layout="channels-first"):
    """Compare `forward` with the torch module on the same clip.

    layout "channels-first": torch sees `(1, C, T, *S)`; "channels-last": torch sees the
    clip as is (Linear, LayerNorm act on trailing axes); "frames": torch sees the T frames
    as a batch `(T, C, *S)` (GroupNorm, normalised per frame).
    """
    clip = random_clip(shape)
    x = torch.from_numpy(np.array(clip))
    with torch.no_grad():
        if layout == "channels-first":
            theirs = from_torch(torch_module(to_torch(clip)))
        elif layout == "channels-last":
            theirs = torch_module(x).numpy()
        else:
            theirs = torch.movedim(torch_module(torch.movedim(x, -1, 1)), 1, -1).numpy()
    assert_close(layer.forward(params, clip), theirs)


ACTIVATIONS = [
    (pw.ReLU(), nn.ReLU()),
    (pw.ReLU6(), nn.ReLU6()),
    (pw.LeakyReLU(0.2), nn.LeakyReLU(0.2)),
    (pw.RReLU(0.1, 0.3), nn.RReLU(0.1, 0.3).eval()),
    (pw.ELU(0.7), nn.ELU(0.7)),
    (pw.CELU(1.5), nn.CELU(1.5)),
    (pw.SELU(), nn.SELU()),
    (pw.GELU(), nn.GELU()),
    (pw.GELU("tanh"), nn.GELU("tanh")),
    (pw.Sigmoid(), nn.Sigmoid()),
    (pw.Hardsigmoid(), nn.Hardsigmoid()),
    (pw.Tanh(), nn.Tanh()),
    (pw.SiLU(), nn.SiLU()),
    (pw.Hardswish(), nn.Hardswish()),
    (pw.Mish(), nn.Mish()),
    (pw.Softplus(), nn.Softplus()),
    (pw.Softplus(beta=2.0, threshold=3.0), nn.Softplus(beta=2.0, threshold=3.0)),
    (pw.Softsign(), nn.Softsign()),
    (pw.Tanhshrink(), nn.Tanhshrink()),
    (pw.Hardtanh(-0.5, 1.5), nn.Hardtanh(-0.5, 1.5)),
    (pw.Hardshrink(0.7), nn.Hardshrink(0.7)),
    (pw.Softshrink(0.7), nn.Softshrink(0.7)),
    (pw.Threshold(0.3, -2.0), nn.Threshold(0.3, -2.0)),
    (pw.LogSigmoid(), nn.LogSigmoid()),
    (pw.Softmax(), nn.Softmax(dim=1)),
    (pw.LogSoftmax(), nn.LogSoftmax(dim=1)),
    (pw.Softmin(), nn.Softmin(dim=1)),
    (pw.Softmax(axis=-2), nn.Softmax(dim=3)),  # the W axis of (B, C, T, W)
    (pw.LogSoftmax(axis=-2), nn.LogSoftmax(dim=3)),
    (pw.Softmax2d(), nn.Softmax2d()),
    (pw.GLU(), nn.GLU(dim=1)),
    (pw.Dropout(0.3), nn.Dropout(0.3).eval()),
    (pw.AlphaDropout(0.3), nn.AlphaDropout(0.3).eval()),
    (pw.Dropout2d(0.3), nn.Dropout2d(0.3).eval()),
    (pw.Dropout3d(0.3), nn.Dropout3d(0.3).eval()),
    (pw.FeatureAlphaDropout(0.3), nn.FeatureAlphaDropout(0.3).eval()),
]


@pytest.mark.parametrize("layer, module", ACTIVATIONS, ids=lambda m: repr(m)[:40])
def test_activation_matches_torch(layer, module):
    check_against_torch(layer, {}, module)
    assert hash(layer) == hash(type(layer)(**vars(layer)))


def test_dropout1d_is_identity():
    clip = random_clip((T, C))
    assert_close(pw.Dropout1d(0.9).forward({}, clip), clip)


# --------------------------------------------------------------------------- layers with params

PARAM_CASES = {
    "linear": (Linear(C, 6), (W, C)),
    "linear-no-bias": (Linear(C, 2, bias=False), (C,)),
    "prelu-shared": (pw.PReLU(), (W, C)),
    "prelu-per-channel": (pw.PReLU(C), (W, C)),
    "batchnorm1d": (pw.BatchNorm1d(C), (C,)),
    "batchnorm2d": (pw.BatchNorm2d(C, eps=1e-3), (W, C)),
    "batchnorm3d": (pw.BatchNorm3d(C), (2, W, C)),
    "batchnorm-no-affine": (pw.BatchNorm(C, affine=False), (W, C)),
    "layernorm-channels": (pw.LayerNorm(C), (W, C)),
    "layernorm-frame": (pw.LayerNorm((W, C), eps=1e-3), (W, C)),
    "layernorm-no-bias": (pw.LayerNorm(C, bias=False), (C,)),
    "layernorm-no-affine": (pw.LayerNorm(C, elementwise_affine=False), (2, W, C)),
    "groupnorm-2-groups": (pw.GroupNorm(2, C), (W, C)),
    "groupnorm-1d": (pw.GroupNorm(1, C, eps=1e-3), (C,)),
    "groupnorm-3d-no-affine": (pw.GroupNorm(C, C, affine=False), (2, W, C)),
}


def random_params(layer, seed=3):
    return randomize(layer.init(jax.random.PRNGKey(seed)), seed)


def _copy(tensor, array, transpose=False):
    array = np.array(array)
    tensor.copy_(torch.from_numpy(array.T if transpose else array))


def torch_twin(layer, params, frame_ndim):
    """The torch module computing what `layer` computes, and the layout it expects."""
    with torch.no_grad():
        if isinstance(layer, Linear):
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
            _copy(m.weight, params["kernel"], transpose=True)
            if layer.bias:
                _copy(m.bias, params["bias"])
            return m, "channels-last"
        if isinstance(layer, pw.PReLU):
            m = nn.PReLU(layer.num_parameters)
            _copy(m.weight, params["weight"])
            return m, "channels-first"
        if isinstance(layer, pw.BatchNorm):
            cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[frame_ndim]
            m = cls(layer.num_features, layer.eps, affine=layer.affine).eval()
            _copy(m.running_mean, params["mean"])
            _copy(m.running_var, params["var"])
        elif isinstance(layer, pw.LayerNorm):
            m = nn.LayerNorm(
                layer.normalized_shape, layer.eps, layer.elementwise_affine, bias=layer.bias
            )
        else:
            m = nn.GroupNorm(layer.num_groups, layer.num_channels, layer.eps, layer.affine)
        if "scale" in params:
            _copy(m.weight, params["scale"])
        if "bias" in params:
            _copy(m.bias, params["bias"])
        layout = {pw.LayerNorm: "channels-last", pw.GroupNorm: "frames"}.get(
            type(layer), "channels-first"
        )
        return m, layout


@pytest.mark.parametrize("case", PARAM_CASES)
def test_param_layer_matches_torch(case):
    """forward == torch on random params and input. GroupNorm: torch's GroupNorm applied to
    each frame separately (on a whole clip torch's would also average over time; the
    continual form normalises every frame, in forward and step alike)."""
    layer, frame = PARAM_CASES[case]
    params = random_params(layer)
    module, layout = torch_twin(layer, params, len(frame))
    check_against_torch(layer, params, module, (T, *frame), layout)


@pytest.mark.parametrize(
    "group", ["activations", pytest.param("with-params", marks=pytest.mark.slow)]
)
def test_contract_of_every_layer(group):
    """verify_contract for every activation and dropout, and every Linear and norm with
    randomised params (BN stats, affine, PReLU); each group bundled into one layer to
    share compilations (two groups so that pytest-xdist can run them side by side)."""
    if group == "activations":
        cases = [(layer, (W, C), {}) for layer, _ in ACTIVATIONS]
    else:
        cases = [(layer, frame, random_params(layer)) for layer, frame in PARAM_CASES.values()]
    assert all(layer.delay == 0 and layer.receptive_field == 1 for layer, _, _ in cases)
    # All members side by side as one Parallel: one set of compilations for the lot.
    layers = Parallel(*[layer for layer, _, _ in cases], auto_delay=False)
    frames = tuple(jax.ShapeDtypeStruct(frame, jnp.float32) for _, frame, _ in cases)
    params = {str(i): p for i, (_, _, p) in enumerate(cases)}
    verify_contract(layers, frames, params=params, num_frames=5, num_streams=2)


def test_contract_of_one_layer_alone():
    layer = pw.GroupNorm(2, C)
    verify_contract(layer, (W, C), params=random_params(layer), num_frames=5, num_streams=2)


def test_linear_init_is_torch_default():
    params = Linear(C, 6).init(jax.random.PRNGKey(0))
    assert params["kernel"].shape == (C, 6) and params["bias"].shape == (6,)
    bound = 1 / np.sqrt(C)
    assert np.all(np.abs(params["kernel"]) <= bound) and np.all(np.abs(params["bias"]) <= bound)
    assert np.std(np.asarray(params["kernel"])) > 0.1 * bound


def test_norm_inits_are_torch_defaults():
    bn = pw.BatchNorm2d(C).init(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(bn["mean"], np.zeros(C))
    np.testing.assert_array_equal(bn["var"], np.ones(C))
    np.testing.assert_array_equal(bn["scale"], np.ones(C))
    assert pw.PReLU(C).init(jax.random.PRNGKey(0))["weight"].tolist() == [0.25] * C
    assert pw.LayerNorm(C, elementwise_affine=False).init(jax.random.PRNGKey(0)) == {}


# --------------------------------------------------------------------------- bad inputs


def test_linear_bad_inputs():
    layer = Linear(C, 2)
    params = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="Linear: expected 4 channels.*got 5"):
        layer.forward(params, jnp.zeros((T, 5)))
    with pytest.raises(TypeError, match="Linear: expected a floating-point"):
        layer.step(params, (), jnp.zeros((C,), jnp.int32))
    with pytest.raises(ValueError, match="out_features must be > 0"):
        Linear(C, 0)


def test_activation_bad_config_and_inputs():
    with pytest.raises(ValueError, match="GELU: approximate"):
        pw.GELU("exact")
    with pytest.raises(ValueError, match="Softmax: axis must be a negative int"):
        pw.Softmax(axis=1)
    with pytest.raises(ValueError, match="Hardtanh: max_val must be > min_val"):
        pw.Hardtanh(1.0, -1.0)
    with pytest.raises(ValueError, match="Dropout: p must be in"):
        pw.Dropout(1.5)
    with pytest.raises(ValueError, match="GLU: axis -1 must have an even size"):
        pw.GLU().forward({}, jnp.zeros((T, 3)))
    with pytest.raises(ValueError, match="Softmax: axis -3 needs a frame with at least 3"):
        pw.Softmax(axis=-3).step({}, (), jnp.zeros((W, C)))
    with pytest.raises(ValueError, match="PReLU: expected 4 channels"):
        pw.PReLU(4).forward({"weight": jnp.ones(4)}, jnp.zeros((T, 3)))
    with pytest.raises(TypeError, match="ReLU: expected a floating-point"):
        pw.ReLU().forward({}, jnp.zeros((T, C), jnp.int32))


def test_batchnorm_bad_inputs():
    layer = pw.BatchNorm2d(C)
    params = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError, match=r"BatchNorm2d: expected a frame with 2 dimensions \(W, C\)"
    ):
        layer.forward(params, jnp.zeros((T, C)))
    with pytest.raises(ValueError, match="BatchNorm2d: expected 4 channels"):
        layer.forward(params, jnp.zeros((T, W, 3)))


def test_layernorm_bad_shape():
    with pytest.raises(
        ValueError, match=r"LayerNorm: expected a frame ending in normalized_shape \(3, 4\)"
    ):
        pw.LayerNorm((3, C)).forward({}, jnp.zeros((T, 2, C)))


def test_groupnorm_bad_config_and_inputs():
    with pytest.raises(
        ValueError, match=r"GroupNorm: num_channels \(6\) must be divisible by num_groups \(4\)"
    ):
        pw.GroupNorm(4, 6)
    layer = pw.GroupNorm(2, C)
    with pytest.raises(ValueError, match="GroupNorm: expected 4 channels"):
        layer.forward(layer.init(jax.random.PRNGKey(0)), jnp.zeros((T, W, 6)))
    with pytest.raises(TypeError, match="GroupNorm: expected a floating-point"):
        layer.init_state({}, jax.ShapeDtypeStruct((W, C), jnp.int32))
