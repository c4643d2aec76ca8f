"""Skeleton graphs for the ST-GCN family: joints, bones and partitioned adjacency.

An adjacency is a stack `A` of shape `(K, V, V)`, one matrix per partition subset, used
as `y[w] = Σ_k Σ_v x[v] A[k, v, w]` (torch's `x @ A[k]` on `(..., V)` data): column w
says which joints v joint w gathers from. Two partitions:

- `"inward_outward"` (continual-skeletons, 2s-AGCN): `I`, `norm(In)`, `norm(Out)` with
  `In[j, i] = 1` for each bone (i, j) pointing towards the skeleton's centre, `Out` its
  transpose, and `norm` dividing each column by its sum.
- `"spatial"` (the original ST-GCN's spatial configuration, arXiv 1801.07455 §3.6, max
  hop 1): with `N = Â D⁻¹` (Â: bones in both directions plus self loops, D its column
  sums) and `r(v)` the hop distance of joint v from the centre, subset 0 (root) holds
  the diagonal of N, subset 1 the entries `N[v, w]` of neighbours with `r(v) ≥ r(w)`
  (the same distance or further from the centre than w: centripetal), subset 2 those
  with `r(v) < r(w)` (centrifugal). As in the original code (and so in its published
  weights' stored `A`), r is the hop distance computed up to `max_hop = 1`: joints
  two or more hops from the centre all have r = ∞, so a bone between two of them sits
  in subset 1 in both directions.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """Joints `0 … num_joints-1`, bones `(child, parent)` towards `center` (0-based)."""

    name: str
    num_joints: int
    inward: tuple[tuple[int, int], ...]
    center: int


def _zero_based(pairs: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return tuple((i - 1, j - 1) for i, j in pairs)


# NTU RGB+D, 25 Kinect joints; the centre is joint 21 (1-based), the spine.
NTU_RGBD = Skeleton(
    "ntu",
    25,
    _zero_based(
        (
            (1, 2),
            (2, 21),
            (3, 21),
            (4, 3),
            (5, 21),
            (6, 5),
            (7, 6),
            (8, 7),
            (9, 21),
            (10, 9),
            (11, 10),
            (12, 11),
            (13, 1),
            (14, 13),
            (15, 14),
            (16, 15),
            (17, 1),
            (18, 17),
            (19, 18),
            (20, 19),
            (22, 23),
            (23, 8),
            (24, 25),
            (25, 12),
        )
    ),  # fmt: skip
    center=20,
)

# Kinetics-Skeleton: 18 OpenPose joints; the centre is joint 1, the neck.
OPENPOSE_18 = Skeleton(
    "kinetics",
    18,
    (
        (4, 3),
        (3, 2),
        (7, 6),
        (6, 5),
        (13, 12),
        (12, 11),
        (10, 9),
        (9, 8),
        (11, 5),
        (8, 2),
        (5, 1),
        (2, 1),
        (0, 1),
        (15, 0),
        (14, 0),
        (17, 15),
        (16, 14),
    ),  # fmt: skip
    center=1,
)

SKELETONS: dict[str, Skeleton] = {"ntu": NTU_RGBD, "kinetics": OPENPOSE_18}
PARTITIONS = ("inward_outward", "spatial")


def skeleton(graph: str | Skeleton) -> Skeleton:
    """The `Skeleton` named `graph` ("ntu" or "kinetics"), or `graph` itself."""
    if isinstance(graph, Skeleton):
        return graph
    if graph not in SKELETONS:
        raise ValueError(f"graph must be one of {tuple(SKELETONS)}, got {graph!r}.")
    return SKELETONS[graph]


def bone_matrix(num_joints: int, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """`M[j, i] = 1` for each pair (i, j): joint j feeds joint i's column."""
    m = np.zeros((num_joints, num_joints))
    for i, j in pairs:
        m[j, i] = 1.0
    return m


def normalize_columns(a: np.ndarray) -> np.ndarray:
    """Divide each column by its sum (`A D⁻¹`); empty columns stay zero."""
    sums = a.sum(axis=0)
    return a / np.where(sums > 0, sums, 1.0)


def hop_distance(graph: str | Skeleton, max_hop: int | None = None) -> np.ndarray:
    """`(V, V)` shortest path lengths along the bones; inf beyond `max_hop` hops
    (default: none) and between unconnected joints."""
    sk = skeleton(graph)
    linked = bone_matrix(sk.num_joints, sk.inward)
    linked = np.maximum(linked, linked.T) + np.eye(sk.num_joints)
    dist = np.full((sk.num_joints, sk.num_joints), np.inf)
    reach = np.eye(sk.num_joints, dtype=bool)
    for hops in range(sk.num_joints if max_hop is None else max_hop + 1):
        dist[reach & np.isinf(dist)] = hops
        reach = (reach.astype(float) @ linked) > 0
    return dist


def adjacency(graph: str | Skeleton = "ntu", partition: str = "inward_outward") -> np.ndarray:
    """`(3, V, V)` float32 partitioned adjacency of `graph` (see the module docstring)."""
    sk = skeleton(graph)
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}.")
    v = sk.num_joints
    inward = bone_matrix(v, sk.inward)
    if partition == "inward_outward":
        a = np.stack([np.eye(v), normalize_columns(inward), normalize_columns(inward.T)])
        return a.astype(np.float32)
    hops = hop_distance(sk, max_hop=1)
    normalized = normalize_columns((hops <= 1).astype(float))
    depth = hops[:, sk.center]  # r(v)
    neighbours = hops == 1
    outer = depth[:, None] >= depth[None, :]  # [v, w]: r(v) >= r(w)
    root = np.diag(np.diag(normalized))
    centripetal = np.where(neighbours & outer, normalized, 0.0)
    centrifugal = np.where(neighbours & ~outer, normalized, 0.0)
    return np.stack([root, centripetal, centrifugal]).astype(np.float32)
