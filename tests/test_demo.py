"""The demo (`python -m cojax`) and its built-in small model `cojax.demo_models`.

The demo itself checks steps == clip forward on the whole stream (1 stream and N
streams under vmap); each layer, container and CoX3D keep the contract in their own
tests (`verify_contract`), so the models are not re-verified here (slow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cojax.__main__ import compare, main, moving_pattern, moving_skeletons, timing_warnings
from cojax.demo_models import init_random, num_params, small_x3d_like

SECTIONS = (
    "1. Equivalence: continual steps vs the clip network (forward) on the whole stream",
    "2. FLOPs per prediction",
    "ratio clip / step",
    "3. Speed",
    "sliding-window clip",
    "2 streams (vmap)",
    "Result: PASS",
)


def _check_output(status: int, out: str) -> None:
    assert status == 0, out
    for section in SECTIONS:
        assert section in out, f"missing {section!r} in:\n{out}"
    assert "FAIL" not in out


@pytest.mark.slow
def test_small_demo_runs_and_passes(capsys):
    args = ["--model", "small", "--frames", "16", "--size", "16", "--streams", "2"]
    status = main([*args, "--seed", "1", "--timing-calls", "2"])
    out = capsys.readouterr().out
    _check_output(status, out)
    learned, stats = num_params(init_random(small_x3d_like(num_classes=10), jax.random.PRNGKey(1)))
    assert f"{learned:,} parameters (+ {stats:,} BatchNorm statistics)" in out
    assert "warning: sliding-window clip, 1 stream: only 2 timed call(s)" in out


@pytest.mark.slow
def test_cox3d_s_demo_runs_and_passes_on_small_frames(capsys):
    # The README's command streams CoX3D-S at 160x160; 32x32 frames keep this fast.
    args = ["--frames", "43", "--size", "32", "--streams", "2", "--timing-calls", "1"]
    status = main(args)
    out = capsys.readouterr().out
    _check_output(status, out)
    assert 'CoX3D-S (x3d("S", se_scope="frame")), random weights' in out
    assert "delay 40" in out and "latest 13 frames" in out


def test_cox3d_s_weights_flag_loads_a_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from test_load_x3d import _state_dict
    from test_x3d import TorchX3D, _randomize

    from cojax.__main__ import build_model, parse_args
    from cojax.models.x3d import X3D_WIDTHS

    torch.manual_seed(0)
    full = dict(widths=X3D_WIDTHS, depths=(3, 5, 11, 7), head_width=2048, num_classes=400)
    ref = _randomize(TorchX3D(frames=13, per_frame=False, **full), 0)
    path = tmp_path / "x3d_s.pyth"
    torch.save({"model_state": _state_dict(ref, "slowfast")}, path)
    demo = build_model(parse_args(["--weights", str(path), "--se-scope", "clip"]))
    assert demo.model.delay == 220 and demo.window == 13
    assert str(path) in demo.description
    kernel = demo.params["head"]["projection"]["kernel"]
    np.testing.assert_array_equal(kernel, ref.projection.weight.detach().numpy().T)


def test_demo_rejects_too_few_frames(capsys):
    assert main(["--model", "small", "--frames", "5", "--size", "16"]) == 2
    assert "delay" in capsys.readouterr().out


def test_demo_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--size", "2"])
    with pytest.raises(SystemExit):
        main(["--model", "small", "--weights", "x3d.pyth"])
    with pytest.raises(SystemExit):  # the small model has no squeeze-excitation
        main(["--model", "small", "--se-scope", "clip"])
    assert "--se-scope" in capsys.readouterr().err


def test_timing_warnings_flag_few_calls_and_wide_spreads():
    steady = np.full(20, 5.0)
    noisy = np.array([1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 9.0, 9.0])
    assert timing_warnings([("continual step", 1, steady)]) == []
    few = timing_warnings([("sliding-window clip", 1, steady[:2])])
    assert len(few) == 1 and "only 2 timed call(s)" in few[0]
    spread = timing_warnings([("continual step", 4, noisy)])
    assert len(spread) == 1 and "vary by" in spread[0] and "4 streams" in spread[0]


def test_parameter_count_keeps_batchnorm_statistics_apart():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)},
        "bn": {"mean": jnp.zeros(8), "var": jnp.ones(8), "scale": jnp.ones(8), "bias": jnp.ones(8)},
    }
    assert num_params(params) == (3 * 3 * 4 * 8 + 8 + 16, 16)
    assert num_params({}) == (0, 0)


def test_compare_fails_on_mismatch_or_missing_outputs():
    valid = np.array([False, True, True])
    clip = np.ones((2, 4), np.float32)
    step = np.concatenate([np.zeros((1, 4)), clip]).astype(np.float32)
    assert compare(step, valid, clip, delay=1)[2]
    assert not compare(step + 1e-2, valid, clip, delay=1)[2]
    assert not compare(step, np.array([False, False, True]), clip, delay=1)[2]


@pytest.mark.slow
def test_cost_gcn_demo_runs_and_passes(capsys):
    """CoST-GCN at full size on synthetic skeletons: 300-frame windows, an output
    every 4 frames, steps == forward for 1 and 2 streams."""
    args = ["--model", "cost-gcn", "--streams", "2", "--timing-calls", "2"]  # 388 frames
    status = main(args)
    out = capsys.readouterr().out
    _check_output(status, out)
    assert 'CoST-GCN (st_gcn("ntu"), 60 classes), random weights' in out
    assert "an output every 4 frame(s)" in out and "latest 300 frames" in out
    assert "continual steps (4 frames in)" in out


def test_cost_gcn_demo_rejects_a_frame_size(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "cost-gcn", "--size", "32"])
    assert "skeleton frames are (2, 25, 3)" in capsys.readouterr().err


def test_compare_follows_the_stride():
    valid = np.array([False, True, False, True, False])
    clip = np.arange(8, dtype=np.float32).reshape(2, 4)
    step = np.zeros((5, 4), np.float32)
    step[[1, 3]] = clip
    assert compare(step, valid, clip, delay=1, stride=2)[2]
    assert not compare(step, valid, clip, delay=1, stride=1)[2]  # missing outputs
    assert not compare(step, np.array([False, True, True, False, False]), clip, 1, 2)[2]


def test_moving_skeletons_move():
    frames = moving_skeletons(5, seed=2)
    assert frames.shape == (5, 2, 25, 3) and frames.dtype == np.float32
    assert np.abs(frames[1] - frames[0]).mean() > 0.005


def test_moving_pattern_moves():
    frames = moving_pattern(4, 12, seed=3)
    assert frames.shape == (4, 12, 12, 3) and frames.dtype == np.float32
    assert np.abs(frames[1] - frames[0]).mean() > 0.01


def test_init_random_matches_init_structure_and_randomises_batchnorm():
    model = small_x3d_like(num_classes=3)
    key = jax.random.PRNGKey(0)
    params = init_random(model, key)
    expected = jax.eval_shape(model.init, key)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
    bn = params["stem"]["1"]
    assert float(jnp.abs(bn["mean"]).max()) > 0 and float(jnp.abs(bn["var"] - 1).max()) > 0
    stem = params["stem"]["0"]["kernel"]  # (3, 3, 3, 3, 16): fan_in 81
    assert float(jnp.abs(stem).max()) <= 1 / 9
    again = init_random(model, key)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again))
    )


def test_small_x3d_like_metadata_and_output_shape():
    model = small_x3d_like(
        num_classes=3, widths=(4,), blocks_per_stage=1, expansion=2, head_channels=6,
        temporal_window=2,
    )  # fmt: skip
    assert (model.delay, model.receptive_field, model.stride, model.padding) == (5, 6, 1, 0)
    frame = jax.ShapeDtypeStruct((8, 8, 3), jnp.float32)
    params = init_random(model, jax.random.PRNGKey(1))
    assert model.output_spec(params, frame).shape == (3,)
