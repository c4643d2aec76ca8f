"""The contract harness: one call checks that a layer keeps the continual contract.

    from cojax.testing import verify_contract
    verify_contract(co.Conv3d(3, 8, kernel_size=3, padding=1), (6, 6, 3))

Checks (docs/api.md, "Testing harness"), each raising `AssertionError` with a message
that says which:
1. `forward_steps` == `forward` on valid outputs (first output after `delay`), with
   random parameters; invalid steps emit zeros.
2. Chunk invariance: the stream split over several `forward_steps` calls.
3. State shapes/dtypes unchanged by a step and equal to `jax.eval_shape(init_state)`.
4. `vmap` over streams == a loop over streams; NaN garbage streams do not leak.
5. `jit` == eager; a second call does not retrace.
6. `pad_end=True` == `forward` exactly; the stream continues correctly afterwards.
7. Gradients through `forward` are finite.
With `check_training=True` (slower: three more compiled programs), also:
7b. Gradients through `forward` equal those through `forward_steps` (w.r.t. params
   and inputs).
8. The receptive field measured from gradients (the oldest frame each output depends
   on) equals the declared one, and no output depends on a later frame than the step
   that emits it.
9. Train mode (`cojax.training.train_forward`) on a ragged batch: NaN past a clip's
   end reaches no output and no gradient; the moved params keep their structure and,
   streamed with `step`, equal `forward` again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cojax.core import Layer, as_spec, forward_steps, numpy_rng, valid_outputs
from cojax.training import output_lengths, train_forward

Tree = Any


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("pad_end",))
def _run(layer: Layer, params: Tree, state: Tree, clip: Tree, pad_end: bool = False):
    """`forward_steps` compiled once per (layer, shapes): the harness calls it often."""
    return forward_steps(layer, params, state, clip, pad_end=pad_end)


def streamed_outputs(layer: Layer, params: Tree, clip: Tree) -> tuple[Tree, int]:
    """Step `layer` over one stream `clip` `(T, ...)` from a fresh state (jit): the
    emitted outputs (host arrays) and the step that emitted the first of them."""
    _, ys, valid = _run(layer, params, layer.init_state(params, _first(clip)), clip)
    return valid_outputs(ys, valid), int(np.argmax(np.asarray(valid)))


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(layer: Layer, params: Tree, clip: Tree):
    return layer.forward(params, clip)


def _spec_tree(frame: Any) -> Tree:
    """A shape tuple, or a pytree of ShapeDtypeStructs/arrays -> ShapeDtypeStruct pytree."""
    if isinstance(frame, tuple) and all(isinstance(d, int) for d in frame):
        return jax.ShapeDtypeStruct(frame, jnp.float32)
    return as_spec(frame)


def random_clip(key: jax.Array, frame: Tree, num_frames: int) -> Tree:
    """Standard normal clip `(T, *frame)` for every leaf of the frame spec, drawn with
    NumPy seeded from `key` (`numpy_rng`: no `jax.random` compilation per shape)."""
    leaves, treedef = jax.tree_util.tree_flatten(_spec_tree(frame))
    rng = numpy_rng(key)
    clips = [
        jnp.asarray(rng.standard_normal((num_frames, *s.shape)).astype(s.dtype)) for s in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, clips)


def _time_slice(tree: Tree, start: int, stop: int | None = None) -> Tree:
    return jax.tree_util.tree_map(lambda a: a[start:stop], tree)


def _first(tree: Tree) -> Tree:
    return jax.tree_util.tree_map(lambda a: a[0], tree)


def _assert_close(actual: Tree, desired: Tree, rtol: float, atol: float, what: str) -> None:
    a_leaves, a_def = jax.tree_util.tree_flatten(actual)
    d_leaves, d_def = jax.tree_util.tree_flatten(desired)
    assert a_def == d_def, f"{what}: output structures differ: {a_def} vs {d_def}"
    for a, d in zip(a_leaves, d_leaves):
        a, d = np.asarray(a), np.asarray(d)
        assert a.shape == d.shape, f"{what}: shapes differ: {a.shape} vs {d.shape}"
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=what)


def _num_time(tree: Tree) -> int:
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def _concat(trees: list[Tree]) -> Tree:
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *trees)


def verify_contract(
    layer: Layer,
    frame: Any,
    *,
    params: Tree = None,
    key: int = 0,
    num_frames: int | None = None,
    num_streams: int = 3,
    check_delay: bool = True,
    check_grad: bool = True,
    check_training: bool = False,
    rtol: float = 2e-5,
    atol: float = 2e-5,
    make_clip: Callable[[jax.Array, int], Tree] | None = None,
) -> None:
    """Check the contract properties of `layer` for frames shaped like `frame`.

    `frame`: a shape tuple `(*spatial, C)` (float32) or a pytree of ShapeDtypeStructs.
    `params`: defaults to `layer.init(key)` (random). `num_frames`: defaults to three
    receptive fields plus a few strides. `make_clip(key, T)` overrides the random input.
    """
    rng = jax.random.PRNGKey(key)
    k_params, k_clip, _, k_streams = jax.random.split(rng, 4)
    params = jax.jit(layer.init)(k_params) if params is None else params
    spec = _spec_tree(frame)
    T = num_frames or 3 * layer.receptive_field + 2 * layer.stride + 4
    clip = make_clip(k_clip, T) if make_clip else random_clip(k_clip, spec, T)
    name = f"{type(layer).__name__} {layer!r}"[:300]

    with jax.default_matmul_precision("highest"):
        state0 = layer.init_state(params, spec)
        ref = _forward(layer, params, clip)
        _check_step_equals_forward(layer, params, state0, clip, ref, name, check_delay, rtol, atol)
        full = _run(layer, params, state0, clip)
        _check_chunks(layer, params, state0, clip, full, name, rtol, atol)
        eager = _check_state_shapes(layer, params, spec, clip, name)
        _check_vmap(layer, params, spec, k_streams, T, num_streams, name, rtol, atol, make_clip)
        _check_jit(layer, params, clip, full, eager, name, rtol, atol)
        _check_pad_end(layer, params, state0, clip, ref, full, name, rtol, atol)
        if check_grad and not check_training:
            _check_grad(layer, params, clip, name)
        if check_grad and check_training:
            _check_gradients(layer, params, state0, clip, name, rtol, atol)
            if check_delay:
                _check_receptive_field(layer, params, clip, name)
        if check_training:
            trained = _check_train(layer, params, clip, name)
            state = layer.init_state(trained, spec)
            ref = _forward(layer, trained, clip)
            _check_step_equals_forward(
                layer, trained, state, clip, ref, f"{name} (trained params)", False, rtol, atol
            )


def _check_step_equals_forward(layer, params, state0, clip, ref, name, check_delay, rtol, atol):
    _, ys, valid = _run(layer, params, state0, clip)
    valid = np.asarray(valid)
    assert valid.shape == (_num_time(clip),), f"{name}: valid must be a bool per input frame"
    n = int(valid.sum())
    n_ref = _num_time(ref)
    assert n >= 1, f"{name}: no valid output in {_num_time(clip)} frames; use a longer clip"
    assert n <= n_ref, f"{name}: steps emitted {n} outputs but forward has only {n_ref}"
    if check_delay:
        first = int(np.argmax(valid))
        assert first == layer.delay, (
            f"{name}: first valid output at step {first}, but layer.delay = {layer.delay}"
        )
    got = valid_outputs(ys, valid)
    _assert_close(got, _time_slice(ref, 0, n), rtol, atol, f"{name}: step != forward")
    for leaf in jax.tree_util.tree_leaves(ys):
        invalid = np.asarray(leaf)[~valid]
        assert np.all(invalid == 0), f"{name}: invalid steps must emit zeros"


def _check_chunks(layer, params, state0, clip, full, name, rtol, atol):
    # Three equal pieces after a first short one (1 frame when T - 1 divides by 3):
    # two chunk lengths, so two compilations of the scan.
    T = _num_time(clip)
    piece = max((T - 1) // 3, 1)
    first = T - 3 * piece if T > 3 else 1
    cuts = [first, *range(first + piece, T, piece)]
    state, ys_parts, valid_parts, start = state0, [], [], 0
    for stop in [*cuts, T]:
        state, ys, valid = _run(layer, params, state, _time_slice(clip, start, stop))
        ys_parts.append(ys)
        valid_parts.append(np.asarray(valid))
        start = stop
    _, full_ys, full_valid = full
    np.testing.assert_array_equal(
        np.concatenate(valid_parts), np.asarray(full_valid), err_msg=f"{name}: chunked validity"
    )
    _assert_close(_concat(ys_parts), full_ys, rtol, atol, f"{name}: chunked outputs")


def _check_state_shapes(layer, params, spec, clip, name):
    """Also returns the eager (op-by-op) first step `(state, step output)`."""
    expected = jax.eval_shape(layer.init_state, params, spec)
    state = layer.init_state(params, _first(clip))
    after, out = layer.step(params, state, _first(clip))
    for what, tree in (("init_state", state), ("state after step", after)):
        got = as_spec(tree)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected), (
            f"{name}: {what} structure differs from eval_shape(init_state)"
        )
        for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
            assert (g.shape, g.dtype) == (e.shape, e.dtype), (
                f"{name}: {what} leaf {g.shape}/{g.dtype} != {e.shape}/{e.dtype}"
            )
    return state, (after, out)


def _check_vmap(layer, params, spec, key, T, num_streams, name, rtol, atol, make_clip):
    keys = jax.random.split(key, max(num_streams, 2))
    clips = [make_clip(k, T) if make_clip else random_clip(k, spec, T) for k in keys]
    garbage = jax.tree_util.tree_map(lambda a: jnp.full_like(a, jnp.nan), clips[0])
    clips = [clips[0], garbage, *clips[1:]]
    batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *clips)
    states = jax.vmap(layer.init_state, in_axes=(None, 0))(params, _first_frames(batch))

    _, ys_b, valid_b = _run_streams(layer, params, states, batch)
    for i, c in enumerate(clips):
        if i == 1:
            continue
        s = layer.init_state(params, _first(c))
        _, ys, valid = _run(layer, params, s, c)
        np.testing.assert_array_equal(np.asarray(valid_b[i]), np.asarray(valid))
        got = jax.tree_util.tree_map(lambda a, i=i: a[i], ys_b)
        _assert_close(got, ys, rtol, atol, f"{name}: vmap stream {i} != single stream")
        for leaf in jax.tree_util.tree_leaves(got):
            assert np.all(np.isfinite(np.asarray(leaf))), f"{name}: NaN leaked across streams"


@functools.partial(jax.jit, static_argnums=(0,))
def _run_streams(layer: Layer, params: Tree, states: Tree, batch: Tree):
    return jax.vmap(lambda s, c: forward_steps(layer, params, s, c))(states, batch)


def _first_frames(batch: Tree) -> Tree:
    return jax.tree_util.tree_map(lambda a: a[:, 0], batch)


def _check_jit(layer, params, clip, full, eager, name, rtol, atol):
    # The jitted stream is `_run` (a second call with the same shapes must hit its
    # cache); one jitted step equals the eager step and does not retrace on its own
    # output state.
    state0, eager_out = eager
    compiled = _run._cache_size()
    again = _run(layer, params, state0, jax.tree_util.tree_map(lambda a: a + 0.0, clip))
    assert _run._cache_size() == compiled, f"{name}: jit retraced on a second call"
    _assert_close(again[1], full[1], rtol, atol, f"{name}: second jitted call differs")
    np.testing.assert_array_equal(np.asarray(again[2]), np.asarray(full[2]))
    step_traces = []

    def one_step(p, s, x):
        step_traces.append(1)
        return layer.step(p, s, x)

    jstep = jax.jit(one_step)
    frame = _first(clip)
    jitted = jstep(params, state0, frame)
    _assert_close(jitted, eager_out, rtol, atol, f"{name}: jitted step != eager step")
    jstep(params, jitted[0], frame)
    assert len(step_traces) == 1, f"{name}: jitted step retraced on its own output state"


def _check_pad_end(layer, params, state0, clip, ref, full, name, rtol, atol):
    state, ys, valid = _run(layer, params, state0, clip, pad_end=True)
    got = valid_outputs(ys, valid)
    n, n_ref = _num_time(got), _num_time(ref)
    assert n == n_ref, f"{name}: pad_end=True emitted {n} outputs, forward has {n_ref}"
    _assert_close(got, ref, rtol, atol, f"{name}: pad_end=True != forward")
    # The stream goes on after pad_end: it returns the state of the unpadded stream.
    _assert_close(state, full[0], rtol, atol, f"{name}: state after pad_end")


def _grad(loss, params, clip, has_aux=False):
    """jit(grad(loss, argnums=(0, 1)))(params, clip) w.r.t. the floating leaves of
    `params` only (masks and counters are not differentiable); the others get zeros."""
    leaves, treedef = jax.tree.flatten(params)
    floating = [jnp.issubdtype(jnp.result_type(a), jnp.floating) for a in leaves]

    def on_floats(values, c):
        it = iter(values)
        full = [next(it) if f else a for a, f in zip(leaves, floating)]
        return loss(jax.tree.unflatten(treedef, full), c)

    values = [a for a, f in zip(leaves, floating) if f]
    out = jax.jit(jax.grad(on_floats, argnums=(0, 1), has_aux=has_aux))(values, clip)
    (g_values, g_clip), aux = (out, None) if not has_aux else out
    it = iter(g_values)
    g_params = jax.tree.unflatten(
        treedef, [next(it) if f else jnp.zeros_like(a) for a, f in zip(leaves, floating)]
    )
    return ((g_params, g_clip), aux) if has_aux else (g_params, g_clip)


def _check_grad(layer, params, clip, name):
    def loss(p, c):
        out = layer.forward(p, c)
        return sum(jnp.sum(jnp.square(o)) for o in jax.tree_util.tree_leaves(out))

    for g in _floating(_grad(loss, params, clip)):
        assert np.all(np.isfinite(g)), f"{name}: non-finite gradient"


def _sum_weighted(ys: Tree, weights: Tree) -> jax.Array:
    return sum(jnp.sum(y * w) for y, w in zip(jax.tree.leaves(ys), jax.tree.leaves(weights)))


def _random_like(tree: Tree, seed: int) -> Tree:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), tree)


def _floating(tree: Tree) -> list:
    """The floating-point leaves of `tree` as host arrays."""
    return [np.asarray(a) for a in _floating_tree(tree)]


def _check_gradients(layer, params, state0, clip, name, rtol, atol):
    """d loss / d (params, clip) through `forward` == through `forward_steps`."""
    ref = _forward(layer, params, clip)
    weights = _random_like(ref, 1)

    def clip_loss(p, c):
        return _sum_weighted(layer.forward(p, c), weights)

    def step_loss(p, c):
        _, ys, valid = forward_steps(layer, p, state0, c, pad_end=True)
        index = jnp.nonzero(valid, size=_num_time(ref))[0]
        return _sum_weighted(jax.tree.map(lambda a: a[index], ys), weights)

    g_clip = _grad(clip_loss, params, clip)
    for g in _floating(g_clip):
        assert np.all(np.isfinite(g)), f"{name}: non-finite gradient"
    g_steps = _grad(step_loss, params, clip)
    scale = max([1.0, *(float(np.max(np.abs(g), initial=0.0)) for g in _floating(g_clip))])
    for what, a, b in (("params", g_steps[0], g_clip[0]), ("input", g_steps[1], g_clip[1])):
        _assert_close(a, b, rtol, atol * scale, f"{name}: d/d{what} steps != forward")


def _check_receptive_field(layer, params, clip, name):
    """The frames each output of `forward` depends on, from its gradient w.r.t. the clip.

    Output j is emitted at step `delay + j * stride`; the oldest frame it depends on
    is `receptive_field - 1` steps before that (fewer near the start padding), and no
    frame after it."""
    ref = _forward(layer, params, clip)
    n_out, T = _num_time(ref), _num_time(clip)
    weights = _random_like(ref, 2)

    def output_grad(j):
        def one(c):
            ys = layer.forward(params, c)
            return _sum_weighted(
                jax.tree.map(lambda a: a[j], ys), jax.tree.map(lambda w: w[j], weights)
            )

        grads = jax.grad(one)(clip)
        return sum(jnp.abs(g).reshape(T, -1).sum(axis=1) for g in jax.tree.leaves(grads))

    depends = np.asarray(jax.jit(jax.vmap(output_grad))(jnp.arange(n_out))) > 0  # (n_out, T)
    steps = layer.delay + layer.stride * np.arange(n_out)
    frames = np.arange(T)
    reach = [steps[j] - frames[row].min() + 1 for j, row in enumerate(depends) if row.any()]
    if not reach:
        return  # a constant layer: no output depends on the input
    future = [j for j, row in enumerate(depends) if row.any() and frames[row].max() > steps[j]]
    assert not future, (
        f"{name}: output {future[0]} (step {steps[future[0]]}) depends on frame "
        f"{frames[depends[future[0]]].max()}, which arrives later"
    )
    if layer.finite_memory:
        assert max(reach) == layer.receptive_field, (
            f"{name}: outputs depend on up to {max(reach)} frames (measured from gradients), "
            f"but receptive_field = {layer.receptive_field}"
        )


def _check_train(layer, params, clip, name):
    """`train_forward` on [clip, a shorter clip with NaN after its end]: returns the
    moved params."""
    T = _num_time(clip)
    short = max(T - layer.stride - 1, 1)
    nan_tail = jax.tree.map(lambda a: a.at[short:].set(jnp.nan), clip)
    batch = jax.tree.map(lambda *a: jnp.stack(a), clip, nan_tail)
    lengths = jnp.array([T, short])

    def loss(p, b):
        ys, new = train_forward(layer, p, b, jax.random.PRNGKey(0), lengths)
        total = sum(jnp.sum(jnp.square(y)) for y in _floating_tree(ys))
        return total, (ys, new)

    (g_params, g_batch), (ys, new) = _grad(loss, params, batch, has_aux=True)
    for y in _floating(ys):
        assert np.all(np.isfinite(y)), f"{name}: NaN after a clip's end reached an output"
    for g in _floating(g_params):
        assert np.all(np.isfinite(g)), f"{name}: NaN after a clip's end reached a gradient"
    for g in _floating(g_batch):
        assert np.all(np.isfinite(g)) and np.all(g[1, short:] == 0), (
            f"{name}: the frames after a clip's end got a gradient"
        )
    n_out = np.asarray(output_lengths(layer, lengths))
    for y in _floating(ys):
        assert np.all(y[1, n_out[1] :] == 0), f"{name}: outputs after a clip's end are not zero"
    assert jax.tree.structure(new) == jax.tree.structure(params), f"{name}: train params tree"
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype), f"{name}: train params leaf changed"
    return new


def _floating_tree(tree: Tree) -> list:
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]
