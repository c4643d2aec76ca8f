"""`co.StreamPool`: streams joining, leaving and sending frames at random, against each
stream run alone through `layer.step`; no retrace whatever the arrivals; growth
carries the open streams' states; bad ids and frames raise clearly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cojax as co

jax.config.update("jax_default_matmul_precision", "highest")

FRAME = (3,)


def small_net() -> co.Sequential:
    """A conv, a strided conv and a residual: warm-up, gaps between outputs, state."""
    return co.Sequential(
        co.Conv1d(3, 4, 3),
        co.ReLU(),
        co.Residual(co.Conv1d(4, 4, 3, padding=1)),
        co.Conv1d(4, 2, 2, stride=2),
    )


class Alone:
    """One stream through the jitted single-stream step (the reference)."""

    def __init__(self, layer, params, step):
        self.state = layer.init_state(params, jnp.zeros(FRAME))
        self.params, self.step = params, step

    def __call__(self, frame):
        self.state, (y, valid) = self.step(self.params, self.state, frame)
        return np.asarray(y), bool(valid)


def simulate(pool, layer, params, ticks, rng, grow_at=None):
    """Random opens / closes / arrivals; every pushed stream's output vs `Alone`."""
    step = jax.jit(layer.step)
    alone, next_id, checked, ready = {}, 0, 0, 0
    for t in range(ticks):
        if grow_at is not None and t == grow_at:
            pool.grow(pool.capacity + 3)
        if len(pool) < pool.capacity and rng.random() < 0.3:
            pool.open(f"s{next_id}")
            alone[f"s{next_id}"] = Alone(layer, params, step)
            next_id += 1
        if len(pool) and rng.random() < 0.05:
            gone = pool.ids[rng.integers(len(pool))]
            pool.close(gone)
            del alone[gone]
        frames = {
            i: rng.standard_normal(FRAME).astype(np.float32) for i in pool.ids if rng.random() < 0.7
        }
        out = pool.push(frames)
        assert set(out) == set(frames)
        for i, frame in frames.items():
            y, valid = out[i]
            y_alone, valid_alone = alone[i](frame)
            assert valid == valid_alone, (t, i)
            np.testing.assert_allclose(y, y_alone, rtol=1e-6, atol=1e-6)
            checked += 1
            ready += valid
    return checked, ready, next_id


@pytest.mark.slow
def test_random_join_leave_and_arrivals_equal_each_stream_alone():
    layer = small_net()
    params = layer.init(jax.random.PRNGKey(0))
    pool = co.StreamPool(layer, params, 5, jnp.zeros(FRAME))
    checked, ready, streams = simulate(pool, layer, params, 2000, np.random.default_rng(0))
    assert pool.traces == 1  # one compilation for every mix of arrivals
    assert streams > 50 and checked > 4000 and 0 < ready < checked


def test_grow_keeps_open_streams_and_compiles_once_more():
    layer = small_net()
    params = layer.init(jax.random.PRNGKey(1))
    pool = co.StreamPool(layer, params, 3, jnp.zeros(FRAME))
    checked, _, _ = simulate(pool, layer, params, 400, np.random.default_rng(1), grow_at=150)
    assert pool.capacity == 6 and pool.traces == 2 and checked > 500
    with pytest.raises(ValueError, match="fewer"):
        pool.grow(2)


def test_lifecycle_errors_and_bad_frames():
    layer = small_net()
    params = layer.init(jax.random.PRNGKey(2))
    pool = co.StreamPool(layer, params, 2, jax.ShapeDtypeStruct(FRAME, jnp.float32))
    pool.open("a")
    with pytest.raises(ValueError, match="already open"):
        pool.open("a")
    pool.open("b")
    with pytest.raises(RuntimeError, match="grow"):
        pool.open("c")
    with pytest.raises(KeyError, match="'c' is not open"):
        pool.push({"c": np.zeros(FRAME, np.float32)})
    with pytest.raises(ValueError, match=r"expected float32\[3\]"):
        pool.push({"a": np.zeros((4,), np.float32)})
    with pytest.raises(ValueError, match="float64"):
        pool.push({"a": np.zeros(FRAME)})
    pool.close("a")
    with pytest.raises(KeyError, match="close"):
        pool.close("a")
    assert pool.ids == ["b"] and "a" not in pool and len(pool) == 1
    with pytest.raises(TypeError, match="capacity"):
        co.StreamPool(layer, params, 2.5, jnp.zeros(FRAME))


def test_a_reopened_slot_starts_fresh_and_absent_streams_keep_their_state():
    layer = small_net()
    params = layer.init(jax.random.PRNGKey(3))
    pool = co.StreamPool(layer, params, 1, jnp.zeros(FRAME))
    pool.open("x")
    frames = np.random.default_rng(3).standard_normal((12, *FRAME)).astype(np.float32)
    first = [pool.push({"x": f})["x"] for f in frames[:6]]
    before = jax.tree_util.tree_map(np.asarray, pool.states)
    for _ in range(3):
        assert pool.push({}) == {}  # no frame: the state is kept
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, pool.states)
    pool.close("x")
    pool.open("y")  # the same slot, reset at its first frame
    again = [pool.push({"y": f})["y"] for f in frames[:6]]
    for (y1, v1), (y2, v2) in zip(first, again):
        assert v1 == v2
        np.testing.assert_array_equal(y1, y2)


def test_the_state_is_donated_to_the_tick():
    layer = small_net()
    params = layer.init(jax.random.PRNGKey(4))
    pool = co.StreamPool(layer, params, 2, jnp.zeros(FRAME))
    pool.open(7)
    pool.push({7: np.ones(FRAME, np.float32)})  # compiles
    old = [leaf for leaf in jax.tree_util.tree_leaves(pool.states) if leaf.size > 1]
    pool.push({7: np.ones(FRAME, np.float32)})
    assert old and all(leaf.is_deleted() for leaf in old)


def test_partial_sums_are_kept_out_of_the_donation():
    """Dense spatial convs step by partial sums, shifted every step: the pool donates
    their counters, not their sums (co.donating_jit), and equals each stream alone."""
    layer = co.Sequential(co.Conv2d(3, 4, 3, padding=(0, 1)), co.ReLU(), co.Conv2d(4, 2, 3))
    params = layer.init(jax.random.PRNGKey(5))
    frame = np.zeros((6, 3), np.float32)
    pool = co.StreamPool(layer, params, 2, frame)
    pool.open("a")
    frames = np.random.default_rng(5).standard_normal((7, 6, 3)).astype(np.float32)
    pool.push({"a": frames[0]})
    leaves = jax.tree_util.tree_leaves(pool.states)
    marks = jax.tree_util.tree_leaves(co.donated_leaves(pool.states))
    outs = [pool.push({"a": f})["a"] for f in frames[1:]]
    assert marks.count(False) == 4  # 2 sums per conv
    assert all(leaf.is_deleted() == d for leaf, d in zip(leaves, marks))
    state, want = layer.init_state(params, frame), []
    for f in frames:
        state, (y, v) = layer.step(params, state, jnp.asarray(f))
        want.append((np.asarray(y), bool(v)))
    for (y, v), (y_want, v_want) in zip(outs, want[1:]):
        assert v == v_want
        np.testing.assert_allclose(y, y_want, rtol=1e-6, atol=1e-6)
    assert any(v for _, v in outs)


def test_blocks_of_ragged_lengths_equal_each_stream_alone():
    """`push_block`: up to k = 4 frames per stream per tick, any number (0..4) each,
    mixed with single-frame `push` ticks, opens and closes; one compilation for k."""
    layer = small_net()
    params = layer.init(jax.random.PRNGKey(0))
    pool = co.StreamPool(layer, params, 4, jnp.zeros(FRAME))
    rng = np.random.default_rng(3)
    step = jax.jit(layer.step)
    alone, next_id, checked, ready = {}, 0, 0, 0
    for t in range(300):
        if len(pool) < pool.capacity and rng.random() < 0.3:
            pool.open(next_id)
            alone[next_id] = Alone(layer, params, step)
            next_id += 1
        if len(pool) and rng.random() < 0.05:
            gone = pool.ids[rng.integers(len(pool))]
            pool.close(gone)
            del alone[gone]
        if t % 5 == 4:  # a single-frame tick now and then
            sent = {i: rng.standard_normal(FRAME).astype(np.float32) for i in pool.ids}
            out = {i: (y[None], np.array([v])) for i, (y, v) in pool.push(sent).items()}
            sent = {i: f[None] for i, f in sent.items()}
        else:
            sent = {
                i: rng.standard_normal((rng.integers(0, 5), *FRAME)).astype(np.float32)
                for i in pool.ids
            }
            out = pool.push_block(sent, k=4)
        for i, frames in sent.items():
            ys, valid = out[i]
            assert ys.shape[0] == valid.shape[0] == frames.shape[0]
            for y, v, frame in zip(ys, valid, frames, strict=True):
                y_alone, v_alone = alone[i](frame)
                assert bool(v) == v_alone, (t, i)
                np.testing.assert_allclose(y, y_alone, rtol=1e-6, atol=1e-6)
                checked += 1
                ready += v_alone
    assert pool.traces == 2  # the single-frame tick and the k = 4 block tick
    assert next_id > 10 and checked > 1000 and 0 < ready < checked
    with pytest.raises(ValueError, match="longer than k = 2"):
        pool.push_block({pool.ids[0]: np.zeros((3, *FRAME), np.float32)}, k=2)
    with pytest.raises(ValueError, match="expected frames"):
        pool.push_block({pool.ids[0]: np.zeros((2, 5), np.float32)})


def test_a_bfloat16_pool_equals_bfloat16_streams_alone_and_is_close_to_float32():
    layer = co.Sequential(co.Conv1d(3, 8, 3), co.BatchNorm1d(8), co.ReLU(), co.Linear(8, 2))
    params = layer.init(jax.random.PRNGKey(0))  # float32 params, cast by each layer
    pools = {
        dtype: co.StreamPool(layer, params, 3, jnp.zeros(FRAME, dtype))
        for dtype in (jnp.float32, jnp.bfloat16)
    }
    alone = layer.init_state(params, jnp.zeros(FRAME, jnp.bfloat16))
    step = jax.jit(layer.step)
    for pool in pools.values():
        pool.open("a")
    rng = np.random.default_rng(5)
    worst, scale = 0.0, 0.0
    for _ in range(20):
        frame = rng.standard_normal(FRAME).astype(np.float32)
        y32, _ = pools[jnp.float32].push({"a": frame})["a"]
        y16, valid = pools[jnp.bfloat16].push({"a": frame.astype(jnp.bfloat16)})["a"]
        alone, (y_alone, _) = step(params, alone, jnp.asarray(frame, jnp.bfloat16))
        assert y16.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(y16, np.float32), np.asarray(y_alone, np.float32))
        if valid:
            worst = max(worst, float(np.abs(np.asarray(y16, np.float32) - y32).max()))
            scale = max(scale, float(np.abs(y32).max()))
    assert scale > 0 and worst / scale < 2e-2
