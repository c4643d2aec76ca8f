"""Skeleton graphs: the adjacency stacks continual-skeletons and the original ST-GCN
produce, rebuilt here independently from the edge lists and each partition's
definition (loops over joints, not the library's matrix formulas)."""

import numpy as np
import pytest

from cojax.graphs import NTU_RGBD, OPENPOSE_18, adjacency, hop_distance, skeleton


def _parents(sk):
    return dict(sk.inward)  # child -> parent


def _neighbours(sk):
    nbrs = {v: set() for v in range(sk.num_joints)}
    for i, j in sk.inward:
        nbrs[i].add(j)
        nbrs[j].add(i)
    return nbrs


def _expected_inward_outward(sk):
    """Column w of In: its parent (weight 1, a tree has one); of Out: its children,
    1 / #children each; the centre's In column is empty."""
    v = sk.num_joints
    a = np.zeros((3, v, v))
    a[0] = np.eye(v)
    children = {w: [c for c, p in sk.inward if p == w] for w in range(v)}
    for child, parent in _parents(sk).items():
        a[1, parent, child] = 1.0
    for w, kids in children.items():
        for c in kids:
            a[2, c, w] = 1.0 / len(kids)
    return a


def _expected_spatial(sk):
    """ST-GCN's spatial configuration with its code's distances: r = 0 at the centre,
    1 next to it, inf beyond (hop distances computed up to one hop)."""
    v, nbrs = sk.num_joints, _neighbours(sk)
    r = {u: 0 if u == sk.center else 1 if u in nbrs[sk.center] else np.inf for u in range(v)}
    a = np.zeros((3, v, v))
    for w in range(v):
        degree = 1 + len(nbrs[w])
        a[0, w, w] = 1.0 / degree
        for u in nbrs[w]:
            subset = 1 if r[u] >= r[w] else 2
            a[subset, u, w] = 1.0 / degree
    return a


@pytest.mark.parametrize("sk", [NTU_RGBD, OPENPOSE_18], ids=lambda s: s.name)
def test_adjacency_matches_both_codebases_definitions(sk):
    assert len(sk.inward) == sk.num_joints - 1  # a tree: one bone per non-centre joint
    np.testing.assert_allclose(adjacency(sk.name), _expected_inward_outward(sk), atol=1e-7)
    np.testing.assert_allclose(adjacency(sk.name, "spatial"), _expected_spatial(sk), atol=1e-7)
    for partition in ("inward_outward", "spatial"):
        a = adjacency(sk.name, partition)
        assert a.shape == (3, sk.num_joints, sk.num_joints) and a.dtype == np.float32


def test_hand_checked_entries():
    ntu, kinetics = adjacency("ntu", "spatial"), adjacency("kinetics", "spatial")
    # NTU's centre (joint 21, 1-based) has 4 bones: degree 5.
    assert ntu[0, 20, 20] == pytest.approx(1 / 5)
    # OpenPose's neck (joint 1) has 3 bones (nose, shoulders): degree 4.
    assert kinetics[0, 1, 1] == pytest.approx(1 / 4)
    # Shoulder 2 (next to the neck; bones to elbow 3, hip 8 and the neck: degree 4)
    # gathers from the elbow (further out: subset 1) and the neck (closer: subset 2).
    assert kinetics[1, 3, 2] == pytest.approx(1 / 4) and kinetics[2, 1, 2] == pytest.approx(1 / 4)
    # Elbow 3 and wrist 4 are both >= 2 hops out (r = inf): subset 1 both ways.
    assert kinetics[1, 4, 3] > 0 and kinetics[1, 3, 4] > 0 and kinetics[2, 4, 3] == 0
    # Every column of the spatial stack sums to 1 (degree-normalised).
    np.testing.assert_allclose(ntu.sum(axis=(0, 1)), 1.0, atol=1e-6)
    # inward/outward (1-based joints): joint 1's parent is joint 2; joint 2's only child is
    # joint 1; joint 1 has two children (13 and 17), each weighted 1/2 in Out.
    io = adjacency("ntu")
    assert io[1, 1, 0] == 1.0 and io[2, 0, 1] == 1.0
    assert io[2, 12, 0] == pytest.approx(1 / 2) and io[2, 16, 0] == pytest.approx(1 / 2)


def test_hop_distance_and_errors():
    hops = hop_distance("ntu")
    assert hops[0, 0] == 0 and hops[0, 1] == 1 and hops[3, 0] == 4  # head to base: 4 bones
    assert np.isinf(hop_distance("ntu", max_hop=1)[3, 0])
    assert skeleton(NTU_RGBD) is NTU_RGBD
    with pytest.raises(ValueError, match="graph must be one of"):
        adjacency("coco")
    with pytest.raises(ValueError, match="partition must be one of"):
        adjacency("ntu", "distance")
