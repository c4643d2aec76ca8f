"""Closures (Identity, Lambda, Add, Multiply, Constant, Zero, One) and Reshape."""

import continual as co
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cojax.containers import Parallel
from cojax.layers.closure import Add, Constant, Identity, Lambda, Multiply, One, Reshape, Zero
from cojax.testing import verify_contract

T, W, C = 5, 3, 4


def random_clip(shape, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def to_torch(clip):
    """cojax clip (T, *S, C) -> torch (1, C, T, *S)."""
    return torch.movedim(torch.from_numpy(np.array(clip)), -1, 0).unsqueeze(0)


def from_torch(y):
    """torch (1, C, T, *S) -> (T, *S, C)."""
    return torch.movedim(y[0], 0, -1).detach().numpy()


def assert_close(ours, theirs, tol=1e-5):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs), initial=0.0) <= tol


def frame_mean_scale(frame):
    """A per-frame function that is not element-wise."""
    return frame * jnp.mean(frame, axis=-1, keepdims=True)


def centre_channels(clip):
    return clip - jnp.mean(clip, axis=-1, keepdims=True)


def gate_by_dict(frames):
    return {"y": frames["a"] * jnp.sum(frames["b"]), "b": frames["b"]}


CASES = [
    (Identity(), (W, C)),
    (Identity(54, unused=0.1), (C,)),
    (Add(2.5), (W, C)),
    (Add([1.0, -2.0, 0.5, 3.0]), (W, C)),
    (Multiply(-1.5), (W, C)),
    (Multiply(np.arange(C, dtype=np.float32)), (W, C)),
    (Constant(3.0), (W, C)),
    (Zero(), (W, C)),
    (One(), (C,)),
    (Lambda(frame_mean_scale), (W, C)),
    (Lambda(centre_channels, takes_time=True), (W, C)),
    (Lambda(gate_by_dict), {"a": (W, C), "b": (C,)}),
    (Reshape(-1), (W, C)),
    (Reshape(2, 2, W, channels_first=True), (W, C)),
]


def _spec(frame):
    if isinstance(frame, dict):
        return {k: _spec(v) for k, v in frame.items()}
    return jax.ShapeDtypeStruct(frame, jnp.float32)


def test_contract_of_every_closure():
    """verify_contract for every closure (bundled into one layer to share compilations)."""
    layers = tuple(layer for layer, _ in CASES)
    assert all(layer.delay == 0 and layer.receptive_field == 1 for layer in layers)
    frames = tuple(_spec(frame) for _, frame in CASES)
    params = {str(i): {} for i in range(len(CASES))}
    # All members side by side (member i on stream i) as one Parallel: one set of
    # compilations for the lot (compiles dominate the harness on XLA:CPU).
    verify_contract(
        Parallel(*layers, auto_delay=False), frames, params=params, num_frames=5, num_streams=2
    )


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (Identity(), co.Identity()),
        (Add(2.5), co.Add(2.5)),
        (Multiply(-1.5), co.Multiply(-1.5)),
        (Constant(3.0), co.Constant(3.0)),
        (Zero(), co.Zero()),
        (One(), co.One()),
    ],
    ids=lambda m: type(m).__name__,
)
def test_matches_reference(ours, theirs):
    clip = random_clip((T, W, C))
    with torch.no_grad():
        expected = from_torch(theirs(to_torch(clip)))
        expected_step = theirs.forward_step(to_torch(clip)[:, :, 0])[0].movedim(0, -1).numpy()
    assert_close(ours.forward({}, clip), expected)
    _, (y, valid) = ours.step({}, ours.init_state({}, clip[0]), clip[0])
    assert bool(valid)
    assert_close(y, expected_step)


def test_array_constants_broadcast_per_channel():
    clip = random_clip((T, W, C))
    per_channel = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    assert_close(Add(per_channel).forward({}, clip), np.asarray(clip) + per_channel)
    assert_close(Multiply(per_channel).forward({}, clip), np.asarray(clip) * per_channel)
    expected = np.broadcast_to(per_channel, clip.shape)
    assert_close(Constant(per_channel).forward({}, clip), expected)
    assert Add(per_channel) == Add(per_channel.tolist())
    assert hash(Add(per_channel)) == hash(Add(tuple(per_channel.tolist())))


def test_lambda_matches_reference_per_frame():
    clip = random_clip((T, W, C))
    theirs = co.Lambda(lambda x: x * x.mean(dim=1, keepdim=True))  # frame (B, C, W)
    with torch.no_grad():
        expected = from_torch(theirs(to_torch(clip)))
    assert_close(Lambda(frame_mean_scale).forward({}, clip), expected)


def test_lambda_takes_time_steps_on_a_length_one_clip():
    seen = []

    def fn(x):
        seen.append(x.shape)
        return x * 2.0

    layer = Lambda(fn, takes_time=True)
    clip = random_clip((T, C))
    assert_close(layer.forward({}, clip), 2.0 * np.asarray(clip))
    _, (y, _) = layer.step({}, layer.init_state({}, clip[0]), clip[0])
    assert_close(y, 2.0 * np.asarray(clip[0]))
    assert seen == [(T, C), (1, C)]


def test_lambda_hash_and_equality_by_function_identity():
    class Unhashable:
        __hash__ = None

        def __call__(self, x):
            return x

    fn = Unhashable()
    assert Lambda(fn) == Lambda(fn) and hash(Lambda(fn)) == hash(Lambda(fn))
    assert Lambda(fn) != Lambda(Unhashable())
    assert Lambda(fn) != Lambda(fn, takes_time=True)
    assert len({Lambda(jnp.sin), Lambda(jnp.sin), Lambda(jnp.cos)}) == 2


def test_lambda_errors():
    with pytest.raises(TypeError, match="Lambda: fn must be callable"):
        Lambda(3.0)
    shorten = Lambda(lambda c: c[1:], takes_time=True)
    clip = random_clip((T, C))
    with pytest.raises(ValueError, match="fn must keep the time axis .* of length 5"):
        shorten.forward({}, clip)
    with pytest.raises(ValueError, match="fn must keep the time axis .* of length 1"):
        shorten.step({}, (), clip[0])
    with pytest.raises(TypeError, match="Lambda: expected arrays in the frame"):
        Lambda(jnp.sin).step({}, (), [1.0, 2.0])


def test_reshape_row_major_and_channels_first():
    clip = random_clip((T, W, C))
    assert_close(Reshape(-1).forward({}, clip), np.asarray(clip).reshape(T, W * C))
    assert Reshape(4, 3) == Reshape((4, 3))
    # channels_first reproduces co.Reshape (whose shape includes the batch axis).
    for ours, theirs in [
        (Reshape(C * W, channels_first=True), co.Reshape(1, C * W)),
        (Reshape(2, 2, W, channels_first=True), co.Reshape(1, 2, 2, W)),
    ]:
        with torch.no_grad():
            expected = from_torch(theirs(to_torch(clip)))
            expected_step = theirs.forward_step(to_torch(clip)[:, :, 0])[0].movedim(0, -1)
        assert_close(ours.forward({}, clip), expected)
        _, (y, _) = ours.step({}, (), clip[0])
        assert_close(y, expected_step.numpy())


def test_reshape_and_constant_errors():
    with pytest.raises(ValueError, match=r"Reshape: cannot reshape a frame of shape \(3, 4\)"):
        Reshape(5).forward({}, random_clip((T, W, C)))
    with pytest.raises(ValueError, match="Reshape: shape must be positive ints"):
        Reshape(0, 3)
    with pytest.raises(ValueError, match="Reshape: at most one -1"):
        Reshape(-1, -1)
    with pytest.raises(TypeError, match="Add: the constant must be a real number"):
        Add("two")
    with pytest.raises(TypeError, match="Multiply: expected a floating-point"):
        Multiply(2.0).forward({}, jnp.ones((T, C), jnp.int32))
