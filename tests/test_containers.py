"""Containers: composed metadata, the contract on compositions, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cojax as co
from cojax.layers.conv import Conv1d
from cojax.testing import random_clip, verify_contract

C = 3


def conv(k=3, p=1, s=1, c_in=C, c_out=C):
    return Conv1d(c_in, c_out, kernel_size=k, padding=p, stride=s)


COMPOSITIONS = {
    "chain_strided": lambda: co.Sequential(conv(), conv(k=2, p=0, s=2), conv(s=2)),
    "chain_delay": lambda: co.Sequential(conv(), co.Delay(2), conv(p=0)),
    "named": lambda: co.Sequential({"a": conv(), "b": co.Delay(1), "c": conv(k=1, p=0)}),
    "broadcast_reduce": lambda: co.BroadcastReduce(conv(), conv(k=5, p=2), co.Delay(1)),
    "broadcast_concat": lambda: co.BroadcastReduce(conv(), conv(k=5, p=2), reduce="concat"),
    "broadcast_mul": lambda: co.BroadcastReduce(conv(), conv(k=5, p=2), reduce="mul"),
    "broadcast_callable": lambda: co.BroadcastReduce(
        conv(), conv(k=5, p=2), reduce=lambda xs: xs[0] - 2 * xs[1]
    ),
    "residual": lambda: co.Residual(conv()),
    "residual_replicate": lambda: co.Residual(conv(), temporal_fill="replicate"),
    "residual_centered": lambda: co.Residual(
        co.Sequential(conv(p=0), conv(p=0)), residual_shrink="centered"
    ),
    "residual_lagging": lambda: co.Residual(
        co.Sequential(conv(p=0), conv(p=0)), residual_shrink="lagging"
    ),
    "residual_leading": lambda: co.Residual(
        co.Sequential(conv(p=0), conv(p=0)), residual_shrink="leading"
    ),
    "parallel_dispatch": lambda: co.Sequential(
        co.Broadcast(),
        co.Parallel(conv(), conv(k=5, p=2)),
        co.ParallelDispatch([1, 0, 0]),
        co.Parallel(conv(), co.Delay(0), conv(k=3, p=1)),
        co.Reduce("max"),
    ),
    "parallel_group": lambda: co.Sequential(
        co.Broadcast(3),
        co.Parallel(conv(), conv(), co.Delay(1)),
        co.ParallelDispatch([[0, 1], 2]),
        co.Parallel(co.Reduce("sum"), co.Delay(0)),
        co.Reduce("sum"),
    ),
    "conditional_true": lambda: co.Conditional(lambda x: True, conv(), conv(k=5, p=2)),
    "conditional_false": lambda: co.Conditional(lambda x: False, conv(), conv(k=5, p=2)),
    "conditional_no_else": lambda: co.Conditional(lambda x: False, conv()),
    "conditional_traced": lambda: co.Conditional(
        lambda x: jnp.max(x) > -1e6, conv(), conv(k=5, p=2)
    ),
    "nested": lambda: co.Sequential(
        co.Residual(conv()),
        co.Sequential(conv(s=2), co.Residual(conv(k=5, p=2))),
        co.BroadcastReduce(conv(), co.Sequential(conv(), conv()), reduce="sum"),
    ),
}


SLOW_COMPOSITIONS = {"nested", "broadcast_callable", "parallel_dispatch"}  # 8-14 s each here


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_COMPOSITIONS else n
        for n in sorted(COMPOSITIONS)
    ],
)
def test_composition_contract(name):
    verify_contract(COMPOSITIONS[name](), (C,))


def test_reference_metadata_example():
    # continual-inference's example (docs/api.md): Conv(k3,p1) -> MaxPool(k2,s2) -> Conv(k3,s2,p1)
    # has stride 4, padding 3, receptive field 8, delay 4 (a k2/s2 conv stands in
    # for the pool: same temporal metadata).
    net = co.Sequential(conv(), conv(k=2, p=0, s=2), conv(s=2))
    assert (net.stride, net.padding, net.receptive_field, net.delay) == (4, 3, 8, 4)


def test_parallel_auto_delay_inserts_delays():
    net = co.BroadcastReduce(conv(), conv(k=5, p=2), co.Delay(0))
    delays = [layer.delay for _, layer in net.children]
    assert delays == [2, 2, 2]
    assert net.delay == 2 and net.receptive_field == 5


@pytest.mark.parametrize("padding", [2, 1])  # delay 2 (divides by the stride) and 3
def test_auto_delay_counts_a_strided_branch_at_its_output_rate(padding):
    """A trailing Delay after a stride-2 branch counts 2 input frames per step, so the
    shorter branch gets Delay(gap / 2) after it, or Delay(gap) before it when the gap
    is odd; both branches then emit for the same frames (harness)."""
    short, long = Conv1d(2, 2, 1, stride=2), Conv1d(2, 2, 5, stride=2, padding=padding)
    net = co.BroadcastReduce(short, long)
    assert [layer.delay for _, layer in net.children] == [long.delay, long.delay]
    if padding == 2:  # clip lengths agree, so forward exists: the full contract
        verify_contract(net, (2,))


def test_strided_child_gaps_never_reach_later_children():
    # A Delay after a stride-2 conv must only see the conv's real outputs: its
    # stream equals the conv's valid outputs shifted by one, with no zeros between.
    first = conv(s=2)
    net = co.Sequential(first, co.Delay(1))
    params = net.init(jax.random.PRNGKey(0))
    clip = random_clip(jax.random.PRNGKey(1), (C,), 20)
    _, ys, valid = co.forward_steps(net, params, net.init_state(params, clip[0]), clip)
    conv_out = first.forward(params["0"], clip)
    got = np.asarray(ys)[np.asarray(valid)]
    np.testing.assert_allclose(got, np.asarray(conv_out)[: len(got)], rtol=1e-5, atol=1e-5)
    assert len(got) == len(conv_out) - 1


def test_traced_conditional_keeps_both_branch_states():
    # Frames with a positive first channel go through `on_true`, the rest through
    # `on_false`; each branch must see exactly its own frames, in order.
    on_true, on_false = co.Delay(1), co.Delay(1)
    net = co.Conditional(lambda x: x[0] > 0, on_true, on_false)
    params = net.init(jax.random.PRNGKey(0))
    clip = random_clip(jax.random.PRNGKey(2), (C,), 24)
    step = jax.jit(net.step)
    state = net.init_state(params, clip[0])
    last = {True: None, False: None}
    for x in np.asarray(clip):
        branch = bool(x[0] > 0)
        state, (y, valid) = step(params, state, jnp.asarray(x))
        if last[branch] is None:
            assert not bool(valid)
        else:
            assert bool(valid)
            np.testing.assert_allclose(np.asarray(y), last[branch])
        last[branch] = x
    assert all(v is not None for v in last.values()), "both branches must be exercised"


def test_streams_reset_reinitialises_only_selected_streams():
    net = co.Sequential(conv(), conv(s=2))
    params = net.init(jax.random.PRNGKey(0))
    n, T = 4, 12
    clips = random_clip(jax.random.PRNGKey(3), (n, C), T).swapaxes(0, 1)  # (N, T, C)
    states = co.init_streams(net, params, clips[0, 0], n)
    step = jax.jit(co.step_streams, static_argnums=0)
    reset_at = 5
    outs = []
    for t in range(T):
        reset = jnp.array([t == reset_at, False, t == reset_at, False])
        states, (y, valid) = step(net, params, states, clips[:, t], reset)
        outs.append((np.asarray(y), np.asarray(valid)))
    ys = np.stack([o[0] for o in outs], 1)
    valid = np.stack([o[1] for o in outs], 1)
    for i in range(n):
        start = reset_at if i in (0, 2) else 0
        s = net.init_state(params, clips[i, start])
        _, ys_i, valid_i = co.forward_steps(net, params, s, clips[i, start:])
        np.testing.assert_array_equal(valid[i, start:], np.asarray(valid_i))
        np.testing.assert_allclose(ys[i, start:], np.asarray(ys_i), rtol=1e-5, atol=1e-6)


def test_streams_reset_mask_validation():
    net = conv()
    params = net.init(jax.random.PRNGKey(0))
    states = co.init_streams(net, params, jnp.zeros((C,)), 2)
    with pytest.raises(ValueError, match="reset must be a bool array of shape"):
        co.step_streams(net, params, states, jnp.zeros((2, C)), jnp.array([1, 0]))


# --------------------------------------------------------------------------- errors


def test_residual_rejects_strided_module():
    with pytest.raises(ValueError, match="Residual: the wrapped module has temporal stride 2"):
        co.Residual(conv(s=2))


def test_mismatched_branch_strides():
    with pytest.raises(ValueError, match="BroadcastReduce: all branches must have the same"):
        co.BroadcastReduce(conv(s=2), conv())
    with pytest.raises(ValueError, match="Parallel: all branches must have the same"):
        co.Parallel(conv(s=2), conv())


def test_broadcast_reduce_branch_length_mismatch():
    net = co.BroadcastReduce(conv(), conv(k=5, p=0), reduce="concat")
    params = net.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="different clip lengths"):
        net.forward(params, jnp.ones((10, C)))


def test_non_layer_child_is_a_type_error():
    with pytest.raises(TypeError, match="not a cojax layer"):
        co.Sequential(conv(), jnp.tanh)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduce must be one of"):
        co.BroadcastReduce(conv(), conv(), reduce="avg")


def test_broadcast_without_width():
    with pytest.raises(ValueError, match="num_streams is not given"):
        co.Sequential(co.Broadcast(), conv())


def test_parallel_wrong_number_of_streams():
    net = co.Sequential(co.Broadcast(3), co.Parallel(conv(), conv()))
    params = net.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="expected a tuple of 2 streams"):
        net.init_state(params, jnp.zeros((C,)))


def test_centered_residual_needs_even_delay():
    with pytest.raises(ValueError, match="centered shrink needs an even delay"):
        co.Residual(conv(k=2, p=0), residual_shrink="centered")


def test_sequential_checks_first_child_frame():
    net = co.Sequential(conv(), conv())
    params = net.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="Conv1d: expected 3 channels"):
        net.init_state(params, jnp.zeros((C + 1,)))


# --------------------------------------------------------------------------- property


@st.composite
def compositions(draw, depth=0):
    kind = draw(st.sampled_from(["conv", "delay", "seq", "res", "br"] if depth < 2 else ["conv"]))
    if kind == "conv":
        k = draw(st.integers(1, 3))
        p = draw(st.integers(0, k - 1))
        s = draw(st.integers(1, 2))
        fill = draw(st.sampled_from(["zeros", "replicate"]))
        return Conv1d(C, C, kernel_size=k, padding=p, stride=s, temporal_fill=fill)
    if kind == "delay":
        return co.Delay(draw(st.integers(0, 2)))
    if kind == "seq":
        n = draw(st.integers(1, 3))
        return co.Sequential(*[draw(compositions(depth=depth + 1)) for _ in range(n)])
    same_pad = draw(st.integers(0, 1))
    branch = Conv1d(C, C, kernel_size=1 + 2 * same_pad, padding=same_pad)
    if kind == "res":
        return co.Residual(co.Sequential(branch, co.Delay(draw(st.integers(0, 1)))))
    return co.BroadcastReduce(
        branch, Conv1d(C, C, kernel_size=3, padding=1), reduce=draw(st.sampled_from(["sum", "max"]))
    )


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(compositions())
def test_random_compositions_keep_the_contract(net):
    verify_contract(net, (C,), check_grad=False)
