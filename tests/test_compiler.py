"""`co.compiler_options`: which programs get Eigen convolutions, and that the option
does on this jaxlib what its comment says (the same as XLA's own flag syntax)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import cojax as co
from cojax.compiler import EIGEN_CONVOLUTIONS, YNN_OPTION

# A conv, a dot and a reduction: what YNNPACK takes by default on XLA:CPU.
PROGRAM = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from jax import lax

    def program(x, w, a):
        y = lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y, a @ a, jnp.sum(a * a, axis=0)

    ARGS = (jnp.ones((4, 28, 28, 32)), jnp.ones((3, 3, 32, 96)), jnp.ones((256, 256)))

    def offloaded(options=None):
        text = jax.jit(program, compiler_options=options).lower(*ARGS).compile().as_text()
        ops = [line.split('op_name="')[1].split('"')[0].split("/")[-1]
               for line in text.splitlines() if "__ynn_fusion" in line and " fusion(" in line]
        return sorted(ops)
    """
)


def _offloaded_in_process(options):
    scope: dict = {}
    exec(PROGRAM, scope)  # noqa: S102 - the program text above, shared with the subprocess
    return scope["offloaded"](options)


def test_the_option_takes_exactly_the_convolutions_off_ynnpack():
    default = _offloaded_in_process(None)
    assert "conv_general_dilated" in default  # the conv goes to YNNPACK by default
    eigen = _offloaded_in_process(EIGEN_CONVOLUTIONS)
    assert "conv_general_dilated" not in eigen
    # XLA's own flag syntax for "the defaults without convolutions", in a fresh process:
    script = PROGRAM + "\nimport json\nprint(json.dumps(offloaded()))\n"
    env = dict(os.environ, XLA_FLAGS=f"--{YNN_OPTION}=-individual_convolution")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == eigen
    assert sorted(default) == sorted(eigen + ["conv_general_dilated"])


def _conv_step(channels: int, size: int = 12):
    layer = co.Conv3d(channels, 8, 3, padding=(0, 1, 1))
    params = layer.init(jax.random.PRNGKey(0))
    frame = jax.ShapeDtypeStruct((size, size, channels), jnp.float32)
    return layer, params, layer.init_state(params, frame), frame


def test_dense_convolutions_with_16_channels_or_more_get_eigen():
    layer, params, state, frame = _conv_step(16)
    assert co.compiler_options(layer.step, params, state, frame) == EIGEN_CONVOLUTIONS
    clip = jax.ShapeDtypeStruct((5, *frame.shape), frame.dtype)
    assert co.compiler_options(layer.forward, params, clip) == EIGEN_CONVOLUTIONS


def test_few_channel_stems_and_programs_without_2d_convs_keep_the_defaults():
    layer, params, state, frame = _conv_step(3)
    assert co.compiler_options(layer.step, params, state, frame) == {}
    dense = co.Linear(32, 32)
    p = dense.init(jax.random.PRNGKey(0))
    assert co.compiler_options(dense.forward, p, jnp.ones((4, 32))) == {}
    depthwise = co.Conv3d(32, 32, 3, groups=32)  # shifted multiply-adds, no lax.conv
    p = depthwise.init(jax.random.PRNGKey(0))
    assert co.compiler_options(depthwise.forward, p, jnp.ones((4, 6, 6, 32))) == {}
    conv3d = lambda x, w: lax.conv_general_dilated(  # noqa: E731 - 3D: never YNNPACK
        x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
    assert co.compiler_options(conv3d, jnp.ones((1, 4, 6, 6, 32)), jnp.ones((3, 3, 3, 32, 8))) == {}


def test_the_choice_weighs_convolutions_by_flops():
    def two_convs(x_rgb, w_rgb, x, w):
        dn = ("NHWC", "HWIO", "NHWC")
        a = lax.conv_general_dilated(x_rgb, w_rgb, (1, 1), "SAME", dimension_numbers=dn)
        return a, lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    big_rgb = (jnp.ones((1, 64, 64, 3)), jnp.ones((3, 3, 3, 64)))
    small_rgb = (jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 8)))
    dense = (jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32)))
    assert co.compiler_options(two_convs, *big_rgb, *dense) == {}
    assert co.compiler_options(two_convs, *small_rgb, *dense) == EIGEN_CONVOLUTIONS


def test_other_backends_and_a_users_own_flag_get_no_options(monkeypatch):
    layer, params, state, frame = _conv_step(32)
    assert co.compiler_options(layer.step, params, state, frame, backend="gpu") == {}
    monkeypatch.setenv("XLA_FLAGS", f"--{YNN_OPTION}=")
    assert co.compiler_options(layer.step, params, state, frame) == {}


def test_eigen_and_ynnpack_programs_compute_the_same_steps():
    layer, params, state, _ = _conv_step(32)
    frames = jax.random.normal(jax.random.PRNGKey(1), (5, 12, 12, 32))
    states = co.init_streams(layer, params, jax.ShapeDtypeStruct((12, 12, 32), jnp.float32), 5)
    step = lambda p, s, x: co.step_streams(layer, p, s, x)  # noqa: E731
    options = co.compiler_options(step, params, states, frames)
    assert options == EIGEN_CONVOLUTIONS
    outs = []
    for opts in (None, options):
        run = jax.jit(step, compiler_options=opts)
        s, outputs = states, []
        for _ in range(4):
            s, (y, _) = run(params, s, frames)
            outputs.append(y)
        outs.append(np.stack(outputs))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert np.abs(outs[0]).max() > 0.1  # the valid steps carry signal


@pytest.mark.parametrize("channels, expected", [(32, EIGEN_CONVOLUTIONS), (3, {})])
def test_stream_pools_compile_with_them(channels, expected):
    layer, params, _, frame = _conv_step(channels)
    pool = co.StreamPool(layer, params, 2, frame)
    assert pool.compiler_options == expected
    pool.open("a")
    out = pool.push({"a": jnp.ones(frame.shape)})
    assert out["a"][0].shape == (12, 12, 8)


def _mixed_streams():
    """A dense conv (partial sums), a depthwise conv (a shifted window) and attention
    (key / value rings updated in place), 3 streams each: {name: (layer, frame)}."""
    layers = {
        "dense": (co.Conv3d(8, 8, 3, padding=(0, 1, 1)), (16, 16, 8)),
        "depthwise": (co.Conv3d(8, 8, 3, groups=8, padding=(0, 1, 1)), (16, 16, 8)),
        "attention": (co.SingleOutputMultiheadAttention(256, 2, 8), (256,)),
    }
    params = {k: layer.init(jax.random.PRNGKey(i)) for i, (k, (layer, _)) in
              enumerate(layers.items())}  # fmt: skip
    states = {
        k: co.init_streams(layer, params[k], jax.ShapeDtypeStruct(f, jnp.float32), 3)
        for k, (layer, f) in layers.items()
    }

    def step(p, s, x):
        outs = {k: co.step_streams(layer, p[k], s[k], x[k]) for k, (layer, _) in layers.items()}
        ys = {k: o[1][0] for k, o in outs.items()}
        return {k: o[0] for k, o in outs.items()}, (ys, {k: o[1][1] for k, o in outs.items()})

    frames = {k: jax.random.normal(jax.random.PRNGKey(7), (9, 3, *f)) for k, (_, f) in
              layers.items()}  # fmt: skip
    return step, params, states, frames


def test_donated_leaves_are_all_but_partial_sums():
    _, _, states, _ = _mixed_streams()
    marks = co.donated_leaves(states)
    assert jax.tree_util.tree_structure(marks) == jax.tree_util.tree_structure(states)
    kept = {
        jax.tree_util.keystr(path)
        for path, d in jax.tree_util.tree_leaves_with_path(marks)
        if not d
    }
    # the dense conv's two partial sums; its counter, the depthwise conv's window and
    # the attention rings are donated
    assert kept == {"['dense'].sums[0]", "['dense'].sums[1]"}
    assert sum(jax.tree_util.tree_leaves(marks)) == len(jax.tree_util.tree_leaves(states)) - 2


def test_donating_jit_steps_like_jit_and_donates_the_rest():
    step, params, states, frames = _mixed_streams()
    plain, donating = jax.jit(step), co.donating_jit(step)
    first = jax.tree_util.tree_map(lambda f: f[0], frames)
    compiled = donating.compile(params, states, first)
    assert compiled.cost_analysis() and "ENTRY" in compiled.as_text()
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731
    s_plain, s_don, s_comp = states, copy(states), copy(states)
    for t in range(frames["dense"].shape[0]):
        x = jax.tree_util.tree_map(lambda f, t=t: f[t], frames)
        leaves = jax.tree_util.tree_leaves(s_don) + jax.tree_util.tree_leaves(s_comp)
        marks = 2 * jax.tree_util.tree_leaves(co.donated_leaves(s_don))
        s_plain, (y_plain, v_plain) = plain(params, s_plain, x)
        s_don, (y_don, v_don) = donating(params, s_don, x)
        s_comp, (y_comp, _) = compiled(params, s_comp, x)
        jax.tree_util.tree_map(np.testing.assert_array_equal, y_plain, y_don)
        jax.tree_util.tree_map(np.testing.assert_array_equal, y_plain, y_comp)
        jax.tree_util.tree_map(np.testing.assert_array_equal, v_plain, v_don)
        assert all(leaf.is_deleted() == d for leaf, d in zip(leaves, marks))
        assert any(marks)
    for k, y in y_plain.items():
        assert bool(v_plain[k].all()) and np.abs(np.asarray(y)).max() > 0.1, k
