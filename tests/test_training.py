"""Train mode (`cojax.training`): parity with torch's train mode, ragged batches, masks.

torch parity: a continual-inference network with BatchNorm and Dropout (p=0 for the
values) in train mode vs the converted cojax network under `train_forward`: outputs,
moved running statistics, the gradient of a loss w.r.t. every parameter, and one
optax SGD / Adam step vs `torch.optim`, all <= 1e-5. torch's gradients are brought to
cojax's layouts by converting a copy of the torch net whose weights are the gradients.
"""

from __future__ import annotations

import continual as cont
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from test_conversion import randomize  # random weights and BatchNorm statistics
from torch import nn

import cojax as co
from cojax.testing import verify_contract
from conversion.continual import from_continual

jax.config.update("jax_default_matmul_precision", "highest")

TOL = 1e-5


def torch_net() -> nn.Module:
    """The convs have no bias, as before a BatchNorm in real nets: a bias there has a
    true gradient of 0, which Adam turns from float32 noise into +-lr random steps."""
    return randomize(
        cont.Sequential(
            cont.Conv3d(3, 4, (3, 3, 3), padding=(1, 1, 1), bias=False),
            nn.BatchNorm3d(4),
            nn.ReLU(),
            nn.Dropout(p=0.0),
            cont.AvgPool3d((2, 1, 1), stride=(1, 1, 1)),
            cont.Conv3d(4, 5, (2, 3, 3), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(5, momentum=0.3),
            nn.Dropout3d(p=0.0),
        )
    )


def to_channels_last(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 4, 1)


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))


def rel_err(a, b) -> float:
    """max |a - b| relative to the larger of 1 and max |b| (gradients reach ~10)."""
    return max_err(a, b) / max(1.0, float(np.max(np.abs(np.asarray(b)), initial=0.0)))


def tree_err(a, b, mask=None) -> float:
    errs = jax.tree_util.tree_map(rel_err, a, b)
    if mask is not None:
        errs = jax.tree_util.tree_map(lambda e, m: e if m else 0.0, errs, mask)
    return max(jax.tree_util.tree_leaves(errs), default=0.0)


def torch_grads_as_cojax(net: nn.Module):
    """The gradients of `net`'s parameters in cojax's layout (via the converter).

    (continual-inference modules cannot be deep-copied: nets are built twice.)"""
    ghost = torch_net()
    with torch.no_grad():
        for p, g in zip(ghost.parameters(), net.parameters()):
            p.copy_(g.grad)
    return from_continual(ghost.eval())[1]


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 7, 6, 6)).astype(np.float32)  # (B, C, T, H, W)
    return x


def cojax_loss(layer, w):
    def loss(params, clips, key):
        ys, new = co.train_forward(layer, params, clips, key)
        return jnp.sum(ys * w), (ys, new)

    return loss


@pytest.mark.slow
def test_train_forward_matches_torch_train_mode(batch):
    net = torch_net()
    layer, params = from_continual(torch_net().eval())
    net.train()
    xt = torch.from_numpy(batch)
    yt = net(xt)
    w = np.random.default_rng(1).standard_normal(yt.shape).astype(np.float32)
    (yt * torch.from_numpy(w)).sum().backward()
    moved = from_continual(net)[1]

    w_cl = jnp.asarray(w.transpose(0, 2, 3, 4, 1))
    clips = jnp.asarray(batch.transpose(0, 2, 3, 4, 1))
    grad_fn = jax.grad(cojax_loss(layer, w_cl), has_aux=True)
    grads, (ys, new) = grad_fn(params, clips, jax.random.PRNGKey(0))
    mask = co.trainable_mask(layer, params)

    assert max_err(ys, to_channels_last(yt)) <= TOL
    # The running statistics moved as torch's did (and only they changed).
    assert tree_err(new, moved) <= TOL
    assert max_err(new["1"]["mean"], params["1"]["mean"]) > 1e-3
    assert tree_err(new, params, mask) == 0.0
    # The gradient of every learned leaf, relative to the largest gradient (~40);
    # the statistics get exactly zero gradient.
    expected = torch_grads_as_cojax(net)
    scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(expected))
    errs = jax.tree.map(lambda a, b, m: max_err(a, b) / scale if m else 0.0, grads, expected, mask)
    assert max(jax.tree.leaves(errs)) <= TOL
    stats = [g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mask)) if not m]
    assert len(stats) == 4 and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in stats)
    # The input-dependent part: two batches differ as torch's do.
    yt2 = net(xt.flip(0))
    ys2, _ = co.train_forward(layer, params, clips[::-1], jax.random.PRNGKey(0))
    assert max_err(ys - ys2, to_channels_last(yt - yt2)) <= TOL


@pytest.mark.parametrize(
    "make_torch, make_optax",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda: optax.sgd(0.1, 0.9)),
        (lambda p: torch.optim.Adam(p, lr=0.01), lambda: optax.adam(0.01)),
    ],
    ids=["sgd", "adam"],
)
def test_one_optax_step_equals_one_torch_step(batch, make_torch, make_optax):
    net = torch_net()
    layer, params = from_continual(torch_net().eval())
    net.train()
    opt = make_torch(net.parameters())
    yt = net(torch.from_numpy(batch))
    w = np.random.default_rng(2).standard_normal(yt.shape).astype(np.float32)
    loss = (yt * torch.from_numpy(w)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = from_continual(net)[1]

    tx = co.masked_optimizer(make_optax(), layer, params)
    opt_state = tx.init(params)
    clips = jnp.asarray(batch.transpose(0, 2, 3, 4, 1))
    w_cl = jnp.asarray(w.transpose(0, 2, 3, 4, 1))
    grads, (_, new) = jax.grad(cojax_loss(layer, w_cl), has_aux=True)(
        params, clips, jax.random.PRNGKey(0)
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    stepped = optax.apply_updates(new, updates)
    assert tree_err(stepped, after) <= TOL
    assert tree_err(stepped, params) > 1e-3


def test_trained_params_stream_like_forward(batch):
    layer, params = from_continual(torch_net().eval())
    clips = jnp.asarray(batch.transpose(0, 2, 3, 4, 1))
    _, new = co.train_forward(layer, params, clips, jax.random.PRNGKey(0))
    clip = clips[0]
    state = layer.init_state(new, clip[0])
    _, ys, valid = co.forward_steps(layer, new, state, clip, pad_end=True)
    assert max_err(co.valid_outputs(ys, valid), layer.forward(new, clip)) <= TOL


# --------------------------------------------------------------------------- ragged


RAGGED_LAYERS = {
    "conv-padded": lambda: co.Conv1d(3, 4, 3, padding=2, dilation=1),
    "conv-replicate": lambda: co.Conv1d(3, 4, 3, padding=1, temporal_fill="replicate"),
    "conv-strided": lambda: co.Conv1d(3, 4, 3, stride=2, padding=1),
    "maxpool": lambda: co.MaxPool1d(3, stride=1, padding=1),
    "avgpool-real-count": lambda: co.AvgPool1d(3, stride=1, padding=1, count_include_pad=False),
    "delay-shrink": lambda: co.Delay(2, auto_shrink=True),
    "skip": lambda: co.Skip(2),
    "residual": lambda: co.Residual(co.Conv1d(3, 3, 3, padding=1)),
    "lstm": lambda: co.LSTM(3, 4),
    "attention": lambda: co.Sequential(co.Linear(3, 4), co.SingleOutputMultiheadAttention(4, 2, 3)),
    "chain": lambda: co.Sequential(
        co.Conv1d(3, 4, 3, padding=1),
        co.ReLU(),
        co.MaxPool1d(2, stride=1),
        co.Conv1d(4, 2, 2, stride=2),
    ),
}


SLOW = {
    "attention",
    "lstm",
    "chain",
    "residual",
    "delay",
    "conv3d-dilated-strided",
    "gru",
    "conv-padded",
    "conv-bn-dropout-pool",
}  # run by `pytest -m slow` (CI runs both sets)


def with_slow_marks(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(names)]


@pytest.mark.parametrize("name", with_slow_marks(RAGGED_LAYERS))
def test_ragged_outputs_equal_truncated_clips(name):
    """Clip b of a ragged batch gives what `forward` gives on its first lengths[b]
    frames; NaN in the padding reaches no real output and no gradient."""
    layer = RAGGED_LAYERS[name]()
    params = layer.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(3)
    lengths = np.array([9, 6, 4])
    clips = rng.standard_normal((3, 9, 3)).astype(np.float32)
    for b, n in enumerate(lengths):
        clips[b, n:] = np.nan
    ys, _ = co.train_forward(layer, params, jnp.asarray(clips), jax.random.PRNGKey(1), lengths)
    out_lengths = np.asarray(co.output_lengths(layer, lengths))
    assert not np.isnan(np.asarray(ys)).any()
    for b, n in enumerate(lengths):
        expected = layer.forward(params, jnp.asarray(clips[b, :n]))
        assert expected.shape[0] == out_lengths[b], (expected.shape, out_lengths[b])
        assert max_err(ys[b, : out_lengths[b]], expected) <= TOL
        assert float(jnp.max(jnp.abs(ys[b, out_lengths[b] :]), initial=0.0)) == 0.0

    def loss(params, clips):
        ys, _ = co.train_forward(layer, params, clips, jax.random.PRNGKey(1), lengths)
        return jnp.sum(ys**2)

    g_params, g_clips = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(clips))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(g_params))
    g_clips = np.asarray(g_clips)
    assert np.isfinite(g_clips).all()
    for b, n in enumerate(lengths):
        assert np.all(g_clips[b, n:] == 0)


def test_ragged_batch_statistics_use_real_frames_only():
    layer = co.Sequential(co.Conv1d(2, 3, 3, padding=1), co.BatchNorm1d(3, momentum=0.5))
    params = layer.init(jax.random.PRNGKey(0))
    params["1"] = {**params["1"], "mean": jnp.full((3,), 0.3), "var": jnp.full((3,), 2.0)}
    rng = np.random.default_rng(4)
    lengths = np.array([8, 5])
    clips = rng.standard_normal((2, 8, 2)).astype(np.float32)
    clips[1, 5:] = np.nan
    ys, new = co.train_forward(
        layer, params, jnp.asarray(clips), jax.random.PRNGKey(0), jnp.asarray(lengths)
    )
    conv = layer[0]
    feats = np.concatenate(
        [
            np.asarray(conv.forward(params["0"], jnp.asarray(clips[b, :n])))
            for b, n in enumerate(lengths)
        ]
    )
    mean, var = feats.mean(0), feats.var(0)
    assert max_err(new["1"]["mean"], 0.5 * 0.3 + 0.5 * mean) <= TOL
    assert max_err(new["1"]["var"], 0.5 * 2.0 + 0.5 * feats.var(0, ddof=1)) <= TOL
    bn = params["1"]
    expected = (feats - mean) / np.sqrt(var + 1e-5) * np.asarray(bn["scale"]) + np.asarray(
        bn["bias"]
    )
    got = np.concatenate([np.asarray(ys[0]), np.asarray(ys[1, :5])])
    assert max_err(got, expected) <= TOL


# --------------------------------------------------------------------------- randomness


@pytest.mark.parametrize(
    "cojax_cls, torch_cls, channelwise",
    [
        (co.Dropout, nn.Dropout, False),
        (co.Dropout3d, nn.Dropout3d, True),
        (co.AlphaDropout, nn.AlphaDropout, False),
        (co.FeatureAlphaDropout, nn.FeatureAlphaDropout, True),
    ],
)
def test_dropout_masks_like_torch(cojax_cls, torch_cls, channelwise):
    """p > 0: the same values for kept and dropped units as torch, a drop rate near p,
    and for channel dropout one decision per (clip, channel)."""
    p = 0.3
    x = np.random.default_rng(5).standard_normal((8, 4, 3, 3, 64)).astype(np.float32)
    ys, _ = co.train_forward(cojax_cls(p), {}, jnp.asarray(x), jax.random.PRNGKey(0))
    ys = np.asarray(ys)
    torch.manual_seed(0)  # torch's draws do not depend on which tests ran before
    yt = torch_cls(p).train()(torch.from_numpy(x.transpose(0, 4, 1, 2, 3)))
    yt = to_channels_last(yt)
    # Each output is the kept map of its input or the one dropped value, as torch's.
    kept_t = np.isclose(yt, _kept(torch_cls, p, x), atol=1e-6)
    kept_c = np.isclose(ys, _kept(torch_cls, p, x), atol=1e-6)
    np.testing.assert_allclose(ys[~kept_c], yt[~kept_t].flat[0], atol=1e-6)
    # drop rates within 4 standard errors of p (channel dropout: one draw per (clip, C))
    draws = x.shape[0] * x.shape[-1] if channelwise else x.size
    tol = 4 * np.sqrt(p * (1 - p) / draws)
    assert abs((~kept_c).mean() - p) < tol and abs((~kept_t).mean() - p) < tol
    if channelwise:
        assert np.all(kept_c == kept_c[:, :1, :1, :1, :])
    else:
        assert not np.all(kept_c == kept_c[:, :1, :1, :1, :])
    # Different keys, different masks; the same key, the same mask.
    again, _ = co.train_forward(cojax_cls(p), {}, jnp.asarray(x), jax.random.PRNGKey(0))
    other, _ = co.train_forward(cojax_cls(p), {}, jnp.asarray(x), jax.random.PRNGKey(1))
    assert np.array_equal(np.asarray(again), ys) and not np.array_equal(np.asarray(other), ys)


def _kept(torch_cls, p, x):
    if torch_cls in (nn.AlphaDropout, nn.FeatureAlphaDropout):
        alpha = 1.7580993408473766
        a = 1.0 / np.sqrt((alpha**2 * p + 1) * (1 - p))
        return a * x + alpha * a * p
    return x / (1 - p)


def test_dropout_p0_is_identity_and_p1_zero():
    x = jnp.ones((2, 3, 4))
    assert np.array_equal(co.train_forward(co.Dropout(0.0), {}, x, jax.random.PRNGKey(0))[0], x)
    assert np.all(
        np.asarray(co.train_forward(co.Dropout(1.0), {}, x, jax.random.PRNGKey(0))[0]) == 0
    )


def test_rrelu_train_mode_draws_slopes():
    layer = co.RReLU(0.1, 0.3)
    x = -jnp.ones((4, 10, 50))
    ys, _ = co.train_forward(layer, {}, x, jax.random.PRNGKey(0))
    slopes = -np.asarray(ys)
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3 and slopes.std() > 0.03
    assert np.allclose(layer.forward({}, x[0]), -0.2)


# --------------------------------------------------------------------------- masks


def test_trainable_mask_and_masked_optimizer_leave_statistics_alone():
    layer = co.Sequential(co.Conv1d(2, 3, 3), co.BatchNorm1d(3), co.Linear(3, 2))
    params = layer.init(jax.random.PRNGKey(0))
    mask = co.trainable_mask(layer, params)
    assert mask["1"] == {"mean": False, "var": False, "scale": True, "bias": True}
    assert all(jax.tree.leaves(mask["0"])) and all(jax.tree.leaves(mask["2"]))
    tx = co.masked_optimizer(optax.sgd(1.0), layer, params)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(ones, tx.init(params), params)
    assert float(jnp.abs(updates["1"]["mean"]).max()) == 0.0
    assert float(jnp.abs(updates["1"]["scale"]).min()) == 1.0
    with pytest.raises(ValueError, match="structure"):
        co.trainable_mask(layer, {"0": params["0"]})


def test_train_forward_rejects_bad_batches():
    layer = co.Conv1d(2, 3, 3)
    params = layer.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\(B, T"):
        co.train_forward(layer, params, jnp.ones((5,)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="lengths"):
        co.train_forward(layer, params, jnp.ones((2, 5, 2)), jax.random.PRNGKey(0), jnp.ones(3))


# --------------------------------------------------------------------------- harness

HARNESS_LAYERS = {
    "conv-bn-dropout-pool": (
        lambda: co.Sequential(
            co.Conv1d(3, 4, 3, padding=1),
            co.BatchNorm1d(4),
            co.ReLU(),
            co.Dropout(0.3),
            co.MaxPool1d(2, stride=2),
        ),
        (3,),
    ),
    "conv3d-dilated-strided": (
        lambda: co.Conv3d(2, 3, (3, 1, 1), stride=(2, 1, 1), dilation=(2, 1, 1), padding=(1, 0, 0)),
        (3, 3, 2),
    ),
    "avgpool-real-count": (
        lambda: co.AvgPool1d(3, stride=1, padding=1, count_include_pad=False),
        (3,),
    ),
    "residual": (lambda: co.Residual(co.Conv1d(3, 3, 3, padding=1)), (3,)),
    "delay": (lambda: co.Delay(2), (3,)),
    "lstm": (lambda: co.LSTM(3, 4), (3,)),
    "attention": (lambda: co.SingleOutputMultiheadAttention(4, 2, 3), (4,)),
}


@pytest.mark.parametrize("name", with_slow_marks(HARNESS_LAYERS))
def test_contract_with_training_checks(name):
    """The harness's train-mode checks: step/forward gradients agree, the receptive
    field measured from gradients is the declared one, ragged NaN stays out, trained
    params stream exactly."""
    make, frame = HARNESS_LAYERS[name]
    verify_contract(make(), frame, check_training=True)


def test_receptive_field_check_catches_a_wrong_declaration():
    """A per-frame layer that declares a 3-frame receptive field: its outputs depend on
    one frame each, which the gradient measurement sees."""

    class Lying(co.ReLU):
        @property
        def receptive_field(self):
            return 3

        @property
        def delay(self):
            return 0

    with pytest.raises(AssertionError, match="depend on up to 1 frames.*receptive_field = 3"):
        verify_contract(Lying(), (3,), check_training=True)


# ------------------------------------------------------------- train mode of other layers
# LayerNorm, GroupNorm, attention and the recurrent layers have no train-only behaviour
# (no statistics; cojax's attention layers have no dropout): train mode is `forward`
# clip by clip, and torch's train mode (dropout 0) computes the same. Checked here for
# outputs and every parameter's gradient. GroupNorm is left out: torch's clip GroupNorm
# mixes time, which neither continual-inference's steps nor cojax do (test_conversion).
TRAIN_PARITY = {
    "layernorm": (
        lambda: cont.Sequential(
            cont.Conv3d(2, 3, (3, 1, 1), padding=(1, 0, 0)), nn.LayerNorm((3, 4))
        ),
        (2, 2, 6, 3, 4),
    ),
    "lstm": (lambda: cont.LSTM(3, 5, num_layers=2, proj_size=2), (2, 3, 8)),
    "gru": (lambda: cont.GRU(3, 4, num_layers=2), (2, 3, 8)),
}


@pytest.mark.parametrize("name", with_slow_marks(TRAIN_PARITY))
def test_other_layers_train_like_torch(name):
    make, shape = TRAIN_PARITY[name]
    torch.manual_seed(0)
    net = randomize(make()).train()
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    yt = net(torch.from_numpy(x))
    yt = yt[0] if isinstance(yt, tuple) else yt  # the recurrent layers return (y, state)
    w = np.random.default_rng(4).standard_normal(yt.shape).astype(np.float32)
    (yt * torch.from_numpy(w)).sum().backward()

    torch.manual_seed(0)
    ghost = randomize(make())  # the same weights: carries the gradients to convert
    layer, params = from_continual(ghost.eval())
    with torch.no_grad():
        for p, g in zip(ghost.parameters(), net.parameters()):
            p.copy_(g.grad)
    expected = from_continual(ghost)[1]

    channels_last = lambda a: np.moveaxis(np.asarray(a), 1, -1)  # noqa: E731
    grads, (ys, _) = jax.grad(cojax_loss(layer, jnp.asarray(channels_last(w))), has_aux=True)(
        params, jnp.asarray(channels_last(x)), jax.random.PRNGKey(0)
    )
    assert max_err(ys, channels_last(yt.detach().numpy())) <= TOL
    assert np.std(channels_last(yt.detach().numpy())) > 0.1
    assert tree_err(grads, expected) <= TOL


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_converted_instance_norm_trains_like_torch(dims):
    """InstanceNorm with running statistics: the inference form of a BatchNorm, but in
    train mode each clip is normalised with its own statistics, and the running ones
    move by the mean over clips (torch's InstanceNorm, track_running_stats=True).
    Outputs, moved statistics and gradients vs torch; a ragged batch vs torch run on
    each clip cut to its length."""
    norm_cls = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
    torch.manual_seed(0)
    norm = norm_cls(3, affine=True, track_running_stats=True, momentum=0.2)
    with torch.no_grad():
        for t in (norm.weight, norm.bias, norm.running_mean):
            t.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    layer, params = from_continual(cont.Sequential(norm).eval())
    assert layer["0"].instance and not co.BatchNorm1d(3).instance
    spatial = (4, 3)[: dims - 1]
    x = np.random.default_rng(0).standard_normal((4, 3, 6, *spatial)).astype(np.float32) * 2 + 1
    xt = torch.from_numpy(x).requires_grad_()
    yt = norm.train()(xt)
    w = np.random.default_rng(1).standard_normal(yt.shape).astype(np.float32)
    (yt * torch.from_numpy(w)).sum().backward()
    last = lambda a: np.moveaxis(np.asarray(a), 1, -1)  # noqa: E731

    def loss(p, clips):
        ys, new = co.train_forward(layer, p, clips, jax.random.PRNGKey(0))
        return jnp.sum(ys * last(w)), (ys, new)

    (g_params, g_x), (ys, new) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
        params, jnp.asarray(last(x))
    )
    assert max_err(ys, last(yt.detach().numpy())) <= TOL
    assert max_err(new["0"]["mean"], norm.running_mean.numpy()) <= TOL
    assert max_err(new["0"]["var"], norm.running_var.numpy()) <= TOL
    assert rel_err(g_params["0"]["scale"], norm.weight.grad.numpy()) <= TOL  # sums of 72+ terms
    assert rel_err(g_params["0"]["bias"], norm.bias.grad.numpy()) <= TOL
    assert max_err(g_x, last(xt.grad.numpy())) <= TOL
    assert np.all(np.asarray(g_params["0"]["mean"]) == 0)
    # ragged: each clip normalised over its own real frames
    lengths = jnp.array([6, 2, 4, 5])
    ys, _ = co.train_forward(layer, params, jnp.asarray(last(x)), jax.random.PRNGKey(0), lengths)
    for b, n in enumerate(np.asarray(lengths)):
        expected = norm.train()(torch.from_numpy(x[b : b + 1, :, :n])).detach().numpy()
        assert max_err(np.asarray(ys)[b, :n], last(expected)[0]) <= TOL
        assert np.all(np.asarray(ys)[b, n:] == 0)
