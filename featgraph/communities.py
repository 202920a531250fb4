"""Community detection on a :class:`~featgraph.graph.FeatureGraph`, and how to judge what it finds.

Objectives (Traag, Van Dooren & Nesterov 2011; Traag, Waltman & van Eck 2019), for weights w_ij, strengths
k_i = Σ_j w_ij, total weight m = Σ_{i<j} w_ij, community c_i of node i and resolution γ:

* modularity (Newman & Girvan 2004; Reichardt & Bornholdt 2006)
  Q_γ = 1/(2m) Σ_ij [w_ij − γ k_i k_j / (2m)] δ(c_i, c_j) — optimised by igraph's ``community_leiden``,
  ~10× faster than leidenalg here;
* RBConfiguration (leidenalg): the same sum without the 1/(2m), H = Σ_ij [w_ij − γ k_i k_j / (2m)] δ(c_i, c_j)
  = 2m · Q_γ;
* CPM, the constant Potts model (leidenalg): H = Σ_{i≠j} (w_ij − γ) δ(c_i, c_j) = 2 Σ_c [W_c − γ n_c(n_c−1)/2]
  with W_c the internal weight and n_c the size of c; γ is a density threshold in units of edge weight and,
  unlike modularity, has no resolution limit.

Louvain (Blondel et al. 2008; igraph ``community_multilevel``) is the baseline: it can leave communities
internally disconnected, which Leiden's refinement step prevents. Partitions are compared by NMI and ARI (see
:func:`normalized_mutual_info`, :func:`adjusted_rand_index`).

Every detector reports the weighted modularity at γ = 1 of what it found, whatever it optimised. Directed
graphs are made undirected with the weights of both directions summed. Randomness flows from one ``seed``
(igraph: a private RNG installed only for the call; leidenalg: its ``seed``); communities are relabelled by
size (0 = largest, ties by the smallest node index) so equal seeds give identical labels.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from crosscoder.errors import FeatgraphError

from .graph import FeatureGraph

__all__ = [
    "OBJECTIVES",
    "CommunityResult",
    "CommunitySummary",
    "Contingency",
    "StabilityResult",
    "SweepRecord",
    "adjusted_rand_index",
    "community_summaries",
    "contingency",
    "leiden",
    "louvain",
    "normalized_mutual_info",
    "resolution_sweep",
    "seeded_igraph",
    "stability",
]

OBJECTIVES = ("modularity", "cpm", "rbconfiguration")


class CommunityResult(NamedTuple):
    membership: np.ndarray  # (n_nodes,) community of each node, 0 = largest
    modularity: float        # Q at resolution 1 of the weighted graph
    n_communities: int
    sizes: list[int]        # size of each community, in label order
    objective: str = "modularity"  # what was optimised ("louvain" optimises modularity too)
    resolution: float = 1.0
    quality: float = float("nan")  # the objective's own value at ``resolution`` (module docstring)


class SweepRecord(NamedTuple):
    resolution: float
    n_communities: int
    modularity: float  # Q at γ = 1
    quality: float     # the objective at this resolution


class StabilityResult(NamedTuple):
    mean_nmi: float          # over all pairs of seeds
    min_nmi: float
    mean_ari: float
    min_ari: float
    n_communities: list[int]  # per seed
    modularity: list[float]   # per seed, Q at γ = 1


class CommunitySummary(NamedTuple):
    community: int
    size: int
    members: list[str]                # node ids, in graph order
    hookpoints: list[str]             # sorted unique ``peak_hookpoint`` of the members ([] without the attribute)
    n_hookpoints: int
    top_tokens: list[tuple[str, int]]  # most common tokens over members' ``top_contexts``, with counts
    top_contexts: list[dict[str, Any]]  # highest-``act`` contexts of members, each with its ``node``
    n_internal_edges: int
    density: float                    # n_internal_edges / (size (size − 1) / 2); 0 for a single node
    internal_weight: float
    internal_fraction: float          # share of the members' total strength that stays inside


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


# ---- detection -------------------------------------------------------------------------------------------------
def _check(graph: FeatureGraph, objective: str, resolution: float) -> None:
    if objective not in OBJECTIVES:
        raise FeatgraphError(f"unknown community objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if not resolution >= 0:
        raise FeatgraphError(f"the resolution must be a number ≥ 0; got {resolution}")
    graph.require_edges()
    w = graph.weights
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise FeatgraphError("community detection needs finite, non-negative edge weights with a positive total; "
                             "weight the graph by a positive measure")


def _undirected_igraph(graph: FeatureGraph):
    """(igraph Graph, weights list) with only the structure; a directed graph's two directions summed."""
    import igraph as ig

    g = ig.Graph(n=graph.n_nodes, edges=list(zip(graph.edge_src.tolist(), graph.edge_dst.tolist())), directed=graph.directed)
    g.es["weight"] = graph.weights.tolist()
    if graph.directed:
        g = g.as_undirected(combine_edges="sum")
    return g, g.es["weight"]


def _result(g, weights: list[float], raw: Sequence[int], objective: str, resolution: float, quality: float) -> CommunityResult:
    membership = _relabel_by_size(np.asarray(raw, dtype=np.int64))
    q = g.modularity(membership.tolist(), weights=weights)
    sizes = np.bincount(membership).tolist()
    return CommunityResult(membership, float(q), len(sizes), sizes, objective, float(resolution), float(quality))


def leiden(
    graph: FeatureGraph, resolution: float = 1.0, seed: int = 0, n_iterations: int = -1, objective: str = "modularity"
) -> CommunityResult:
    """Leiden communities optimising ``objective`` at ``resolution`` γ, weighted by ``graph.weights``.

    Parameters
    ----------
    graph : FeatureGraph
        Must have edges with finite non-negative weights.
    resolution : float
        γ of the objective (module docstring). For CPM it is a weight density: communities whose internal
        weight per node pair exceeds γ are favoured.
    seed : int
        The one source of randomness.
    n_iterations : int
        Leiden passes; negative runs until the partition no longer changes.
    objective : {"modularity", "cpm", "rbconfiguration"}
        Modularity runs in igraph; CPM and RBConfiguration in leidenalg.

    Returns
    -------
    CommunityResult
        Membership relabelled by size, modularity Q at γ = 1, and ``quality``, the objective at γ.

    References
    ----------
    V. A. Traag, L. Waltman, N. J. van Eck, "From Louvain to Leiden: guaranteeing well-connected communities",
    Sci. Rep. 9, 5233 (2019).

    Examples
    --------
    Two triangles joined by one weak edge split into two communities:

    >>> g = FeatureGraph([f"F{i}" for i in range(6)], edge_src=[0, 0, 1, 3, 3, 4, 2],
    ...                  edge_dst=[1, 2, 2, 4, 5, 5, 3], edge_attrs={"weight": np.array([1.0] * 6 + [0.1])})
    >>> leiden(g).membership.tolist()
    [0, 0, 0, 1, 1, 1]
    >>> leiden(g, objective="cpm", resolution=0.5).membership.tolist()
    [0, 0, 0, 1, 1, 1]
    """
    _check(graph, objective, resolution)
    g, weights = _undirected_igraph(graph)
    if objective == "modularity":
        with seeded_igraph(seed):
            part = g.community_leiden(
                objective_function="modularity", weights=weights, resolution=resolution, n_iterations=n_iterations
            )
        raw = part.membership
        quality = g.modularity(raw, weights=weights, resolution=resolution)
    else:
        raw, quality = _leidenalg(g, weights, objective, resolution, seed, n_iterations)
    return _result(g, weights, raw, objective, resolution, quality)


def _leidenalg(g, weights: list[float], objective: str, resolution: float, seed: int, n_iterations: int):
    """(membership, quality) from ``leidenalg.find_partition`` with the CPM or RBConfiguration partition."""
    import leidenalg

    kind = {"cpm": leidenalg.CPMVertexPartition, "rbconfiguration": leidenalg.RBConfigurationVertexPartition}[objective]
    part = leidenalg.find_partition(
        g, kind, weights=weights, resolution_parameter=resolution, seed=seed, n_iterations=n_iterations
    )
    return part.membership, part.quality()


def louvain(graph: FeatureGraph, resolution: float = 1.0, seed: int = 0) -> CommunityResult:
    """Louvain communities maximising modularity Q_γ (the baseline for :func:`leiden`).

    Greedy local moves of single nodes, then aggregation of communities into nodes, repeated until Q_γ stops
    rising (V. D. Blondel, J.-L. Guillaume, R. Lambiotte, E. Lefebvre, J. Stat. Mech. P10008, 2008), through
    igraph's ``community_multilevel`` seeded by :func:`seeded_igraph`.

    Examples
    --------
    >>> g = FeatureGraph([f"F{i}" for i in range(6)], edge_src=[0, 0, 1, 3, 3, 4, 2],
    ...                  edge_dst=[1, 2, 2, 4, 5, 5, 3], edge_attrs={"weight": np.array([1.0] * 6 + [0.1])})
    >>> louvain(g).membership.tolist()
    [0, 0, 0, 1, 1, 1]
    """
    _check(graph, "modularity", resolution)
    g, weights = _undirected_igraph(graph)
    with seeded_igraph(seed):
        raw = g.community_multilevel(weights=weights, resolution=resolution).membership
    quality = g.modularity(raw, weights=weights, resolution=resolution)
    return _result(g, weights, raw, "louvain", resolution, quality)


def _detect(graph: FeatureGraph, method: str, objective: str, resolution: float, seed: int) -> CommunityResult:
    if method == "leiden":
        return leiden(graph, resolution=resolution, seed=seed, objective=objective)
    if method == "louvain" and objective == "modularity":
        return louvain(graph, resolution=resolution, seed=seed)
    raise FeatgraphError(f"unknown method {method!r} with objective {objective!r}; use method='leiden' with any of "
                         f"{', '.join(OBJECTIVES)}, or method='louvain' with objective='modularity'")


def resolution_sweep(
    graph: FeatureGraph, resolutions: Iterable[float], objective: str = "modularity", seed: int = 0
) -> list[SweepRecord]:
    """Leiden at each resolution γ, one :class:`SweepRecord` per γ in the order given.

    Larger γ favours more, smaller communities (for modularity and RBConfiguration the null-model penalty
    γ k_i k_j / 2m grows; for CPM the required internal density γ grows).

    Examples
    --------
    >>> g = FeatureGraph([f"F{i}" for i in range(6)], edge_src=[0, 0, 1, 3, 3, 4, 2],
    ...                  edge_dst=[1, 2, 2, 4, 5, 5, 3], edge_attrs={"weight": np.array([1.0] * 6 + [0.1])})
    >>> [r.n_communities for r in resolution_sweep(g, [0.01, 1.0, 10.0])]
    [1, 2, 6]
    """
    records = []
    for gamma in resolutions:
        r = leiden(graph, resolution=gamma, seed=seed, objective=objective)
        records.append(SweepRecord(float(gamma), r.n_communities, r.modularity, r.quality))
    return records


def stability(
    graph: FeatureGraph,
    seeds: Iterable[int] = range(5),
    resolution: float = 1.0,
    objective: str = "modularity",
    method: str = "leiden",
) -> StabilityResult:
    """Agreement between partitions found from different seeds: mean and minimum NMI and ARI over all pairs.

    A stable community structure gives NMI ≈ ARI ≈ 1 for every pair; low minima flag resolutions or graphs
    where the optimiser lands on different near-optimal partitions.

    Parameters
    ----------
    seeds : iterable of int
        At least two seeds.
    method : {"leiden", "louvain"}
        Louvain only with ``objective="modularity"``.
    """
    seeds = list(seeds)
    if len(seeds) < 2:
        raise FeatgraphError(f"stability compares partitions from different seeds; give at least two, got {seeds}")
    results = [_detect(graph, method, objective, resolution, s) for s in seeds]
    pairs = list(itertools.combinations([r.membership for r in results], 2))
    nmi = [normalized_mutual_info(a, b) for a, b in pairs]
    ari = [adjusted_rand_index(a, b) for a, b in pairs]
    return StabilityResult(
        float(np.mean(nmi)), float(np.min(nmi)), float(np.mean(ari)), float(np.min(ari)),
        [r.n_communities for r in results], [r.modularity for r in results],
    )


# ---- comparing partitions ----------------------------------------------------------------------------------------
class Contingency(NamedTuple):
    n_ij: np.ndarray  # (cells,) count of each occupied cell
    row: np.ndarray   # (cells,) its row i (a's cluster, 0..len(a_i)-1)
    col: np.ndarray   # (cells,) its column j (b's cluster)
    a_i: np.ndarray   # row sums: sizes of a's clusters
    b_j: np.ndarray   # column sums: sizes of b's clusters


def contingency(a: Sequence[int], b: Sequence[int]) -> Contingency:
    """Sparse contingency table of two labelings of the same n items: n_ij = #{x : a(x) = i, b(x) = j}.

    Only occupied cells are kept, so the cost is O(n log n) whatever the numbers of clusters. Labels may be any
    integers; clusters are numbered in sorted label order.

    Examples
    --------
    >>> t = contingency([0, 0, 1, 1, 1], [7, 8, 8, 8, 8])
    >>> t.n_ij.tolist(), t.row.tolist(), t.col.tolist(), t.a_i.tolist(), t.b_j.tolist()
    ([1, 1, 3], [0, 0, 1], [0, 1, 1], [2, 3], [1, 4])
    """
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two non-empty labelings of the same items; got {a.size} and {b.size} labels")
    ia = np.unique(a, return_inverse=True)[1].ravel().astype(np.int64)
    ib = np.unique(b, return_inverse=True)[1].ravel().astype(np.int64)
    nb = int(ib.max()) + 1
    codes, n_ij = np.unique(ia * nb + ib, return_counts=True)
    return Contingency(n_ij, codes // nb, codes % nb, np.bincount(ia), np.bincount(ib))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(a: Sequence[int], b: Sequence[int]) -> float:
    """Normalised mutual information of two partitions, arithmetic-mean normalisation.

    From the contingency table n_ij with row sums a_i, column sums b_j and n items (natural logarithms):

        I(A; B) = Σ_ij (n_ij / n) log(n n_ij / (a_i b_j))
        H(A) = −Σ_i (a_i / n) log(a_i / n),  H(B) likewise
        NMI = I(A; B) / ((H(A) + H(B)) / 2)

    NMI = 1 for identical partitions up to relabelling and → 0 for independent ones; two single-community
    partitions (H = 0) count as identical, 1. This is ``sklearn.metrics.normalized_mutual_info_score`` with
    ``average_method="arithmetic"`` (Danon et al., J. Stat. Mech. P09008, 2005; Vinh, Epps & Bailey, JMLR 11, 2010).

    Examples
    --------
    >>> normalized_mutual_info([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1])
    0.0
    """
    t = contingency(a, b)
    h_a, h_b = _entropy(t.a_i), _entropy(t.b_j)
    if h_a + h_b == 0:
        return 1.0
    n = float(t.n_ij.sum())
    mi = float((t.n_ij / n * np.log(n * t.n_ij / (t.a_i[t.row] * t.b_j[t.col].astype(np.float64)))).sum())
    return float(np.clip(mi / ((h_a + h_b) / 2), 0.0, 1.0))


def _pairs(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x * (x - 1) / 2).sum())


def adjusted_rand_index(a: Sequence[int], b: Sequence[int]) -> float:
    """Adjusted Rand index of two partitions (Hubert & Arabie, J. Classification 2, 1985).

    With C(x) = x (x − 1) / 2 pairs, from the contingency table n_ij, row sums a_i, column sums b_j, n items:

        index = Σ_ij C(n_ij),  expected = Σ_i C(a_i) Σ_j C(b_j) / C(n),  max = (Σ_i C(a_i) + Σ_j C(b_j)) / 2
        ARI = (index − expected) / (max − expected)

    ARI = 1 for identical partitions up to relabelling, 0 in expectation for random ones (it can be negative).
    When max = expected (both partitions all singletons, or both one community) the partitions are identical: 1.

    Examples
    --------
    >>> adjusted_rand_index([0, 0, 1, 1], [5, 5, 3, 3])
    1.0
    >>> round(adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]), 12)
    -0.5
    """
    t = contingency(a, b)
    n = int(t.a_i.sum())
    index, sum_a, sum_b = _pairs(t.n_ij), _pairs(t.a_i), _pairs(t.b_j)
    expected = sum_a * sum_b / (n * (n - 1) / 2) if n > 1 else 0.0
    top = (sum_a + sum_b) / 2
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


# ---- summaries --------------------------------------------------------------------------------------------------
def _collapsed_edges(graph: FeatureGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected simple edges (u ≤ v, summed weight): both directions and parallel edges become one."""
    n = max(graph.n_nodes, 1)
    u, v = np.minimum(graph.edge_src, graph.edge_dst), np.maximum(graph.edge_src, graph.edge_dst)
    keys, inverse = np.unique(u * n + v, return_inverse=True)
    return keys // n, keys % n, np.bincount(inverse.ravel(), weights=graph.weights, minlength=len(keys))


def _edge_totals(graph: FeatureGraph, comm: np.ndarray, n_comm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per community: internal edge count (no self-loops), internal weight, total strength of its members."""
    u, v, w = _collapsed_edges(graph)
    inside = comm[u] == comm[v]
    n_edges = np.bincount(comm[u][inside & (u != v)], minlength=n_comm)
    weight = np.bincount(comm[u][inside], weights=w[inside], minlength=n_comm)
    strength = np.bincount(u, weights=w, minlength=graph.n_nodes) + np.bincount(v, weights=w, minlength=graph.n_nodes)
    return n_edges, weight, np.bincount(comm, weights=strength, minlength=n_comm)


def _token_summary(graph: FeatureGraph, members: np.ndarray, top_n: int):
    """(top tokens with counts, top contexts with their node) over the members' ``top_contexts``."""
    column = graph.node_attrs.get("top_contexts")
    contexts = [] if column is None else [{**c, "node": graph.node_ids[i]} for i in members for c in (column[i] or [])]
    counts = Counter(str(c["token"]) for c in contexts if "token" in c)
    tokens = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    ranked = sorted(contexts, key=lambda c: -float(c.get("act", float("-inf"))))  # stable: graph order on ties
    return tokens, ranked[:top_n]


def community_summaries(graph: FeatureGraph, membership: Sequence[int], top_n: int = 5) -> list[CommunitySummary]:
    """One :class:`CommunitySummary` per community, in label order (largest first for labels from :func:`leiden`).

    For community c with n_c members, internal edges E_c (self-loops aside), internal weight W_c and members'
    total strength K_c = Σ_{i∈c} k_i (edges are made undirected with summed weights, as for detection):

        density = E_c / (n_c (n_c − 1) / 2),   internal_fraction = 2 W_c / K_c

    Hookpoints come from the node attribute ``peak_hookpoint``; tokens and contexts from ``top_contexts``
    (lists of dicts with ``left``, ``token``, ``right``, ``act``); either may be missing.

    Examples
    --------
    >>> g = FeatureGraph(["F0", "F1", "F2"], edge_src=[0, 1], edge_dst=[1, 2], edge_attrs={"weight": np.array([2.0, 1.0])})
    >>> s = community_summaries(g, [0, 0, 1])
    >>> s[0].size, s[0].density, s[0].internal_weight, s[0].internal_fraction
    (2, 1.0, 2.0, 0.8)
    """
    comm_raw = np.asarray(membership).ravel()
    if len(comm_raw) != graph.n_nodes:
        raise FeatgraphError(f"membership has {len(comm_raw)} labels for {graph.n_nodes} nodes; pass one label per node")
    labels, comm = np.unique(comm_raw, return_inverse=True)
    comm = comm.ravel()
    n_edges, weight, strength = _edge_totals(graph, comm, len(labels))
    peak = graph.node_attrs.get("peak_hookpoint")
    groups = np.split(np.argsort(comm, kind="stable"), np.cumsum(np.bincount(comm))[:-1])  # members, graph order
    out = []
    for c, (label, members) in enumerate(zip(labels.tolist(), groups)):
        size = len(members)
        hooks = sorted({str(peak[i]) for i in members if peak[i] is not None}) if peak is not None else []
        tokens, contexts = _token_summary(graph, members, top_n)
        out.append(CommunitySummary(
            community=int(label), size=size, members=[graph.node_ids[i] for i in members],
            hookpoints=hooks, n_hookpoints=len(hooks), top_tokens=tokens, top_contexts=contexts,
            n_internal_edges=int(n_edges[c]), density=float(n_edges[c] / (size * (size - 1) / 2)) if size > 1 else 0.0,
            internal_weight=float(weight[c]),
            internal_fraction=min(1.0, float(2 * weight[c] / strength[c])) if strength[c] > 0 else 0.0,  # 1 ulp over when all is internal
        ))
    return out
