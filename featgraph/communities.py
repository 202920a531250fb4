"""Community detection on a :class:`~featgraph.graph.FeatureGraph`.

Leiden (Traag, Waltman & van Eck 2019) through igraph's ``community_leiden``, which optimises modularity
~10× faster than leidenalg here. Modularity of a partition with weights w, strengths k_i, total weight m:

    Q = 1/(2m) Σ_ij [w_ij − γ k_i k_j / (2m)] δ(c_i, c_j)

Randomness flows from one ``seed`` through a private RNG installed only for the call; communities are
relabelled by size (0 = largest, ties by the smallest node index) so equal seeds give identical labels.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import numpy as np

from .graph import FeatureGraph

__all__ = ["leiden", "CommunityResult", "seeded_igraph"]


class CommunityResult(NamedTuple):
    membership: np.ndarray  # (n_nodes,) community of each node, 0 = largest
    modularity: float        # Q at resolution 1 of the weighted graph
    n_communities: int
    sizes: list[int]        # size of each community, in label order


@contextmanager
def seeded_igraph(seed: int) -> Iterator[None]:
    """Install a ``random.Random(seed)`` as igraph's RNG for the block; restore Python's ``random`` after."""
    import igraph as ig

    ig.set_random_number_generator(random.Random(seed))
    try:
        yield
    finally:
        ig.set_random_number_generator(random)


def _relabel_by_size(membership: np.ndarray) -> np.ndarray:
    labels, first, counts = np.unique(membership, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # largest first, then by first appearance
    new = np.empty(len(labels), dtype=np.int64)
    new[order] = np.arange(len(labels))
    return new[np.searchsorted(labels, membership)]


def leiden(graph: FeatureGraph, resolution: float = 1.0, seed: int = 0, n_iterations: int = -1) -> CommunityResult:
    """Leiden communities maximising modularity at ``resolution`` γ, weighted by ``graph.weights``.

    Examples
    --------
    Two triangles joined by one weak edge split into two communities:

    >>> g = FeatureGraph([f"F{i}" for i in range(6)], edge_src=[0, 0, 1, 3, 3, 4, 2],
    ...                  edge_dst=[1, 2, 2, 4, 5, 5, 3], edge_attrs={"weight": np.array([1.0] * 6 + [0.1])})
    >>> leiden(g).membership.tolist()
    [0, 0, 0, 1, 1, 1]
    """
    graph.require_edges()
    g = graph.to_igraph() if not graph.directed else graph.to_igraph().as_undirected(combine_edges="sum")
    weights = np.asarray(g.es[graph.weight_key], dtype=np.float64)
    with seeded_igraph(seed):
        part = g.community_leiden(
            objective_function="modularity", weights=weights.tolist(), resolution=resolution, n_iterations=n_iterations
        )
    membership = _relabel_by_size(np.asarray(part.membership, dtype=np.int64))
    q = g.modularity(membership.tolist(), weights=weights.tolist())
    sizes = np.bincount(membership).tolist()
    return CommunityResult(membership, float(q), len(sizes), sizes)
