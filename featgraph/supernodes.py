"""Supernodes: the features of a pruned attribution graph grouped automatically by Leiden communities.

circuit-tracer and Neuronpedia's viewer group an attribution graph's features into *supernodes* by hand. Here
:func:`find_supernodes` finds them: Leiden (:func:`featgraph.communities.leiden`) on the feature nodes of the pruned
graph, weighted by circuit-tracer's row-normalised attribution ``|Â|[t, s] = |A[t, s]| / Σ_s' |A[t, s']|`` (the share
of the target's input that the source supplies, so strongly and weakly driven targets count alike), the two
directions of a pair summed. Error, embedding and logit nodes are not grouped (circuit-tracer's supernodes hold
features), but the edges through them are not used either: two features are tied only by a direct edge.

Optionally, dataset-wide graphs of the same dictionary — the co-activation graph (``featgraph graph build``) and the
MLP / attention interaction graphs — are merged in as typed edges: a dataset edge between features ``i`` and ``j`` ties
the prompt's nodes of ``i`` and ``j`` **at the same position** (co-activation and interaction scores are per-token
statistics), with weight ``extra_weight · w / max w`` of that graph, so attribution edges keep the larger share.

Supernodes smaller than ``min_size`` are left ungrouped (``community`` None). A supernode is labelled by the tokens
its members' dashboards fire on when the nodes carry ``top_contexts`` (:func:`featgraph.labels.community_labels`),
else by the prompt token its most influential member reads and its layer span, e.g. ``"cat" L1–3``.

:func:`supernode_effects` measures what each supernode carries to one target (a logit): the signed direct effect
``Σ_{s∈S} A[target, s]`` and the share of the target's influence ``(Â + Â² + …)`` that starts in the supernode's
members.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from crosscoder.errors import FeatgraphError

from .communities import OBJECTIVES, leiden
from .graph import FeatureGraph

__all__ = ["SupernodeConfig", "SupernodeResult", "SupernodeEffect", "find_supernodes", "supernode_effects", "planted_circuit"]

log = logging.getLogger(__name__)


@dataclass
class SupernodeConfig:
    """How supernodes are found on an attribution graph (:func:`find_supernodes`)."""

    resolution: float = 1.0
    """Leiden resolution γ of the supernodes: higher gives more, smaller supernodes."""
    objective: str = "modularity"
    """Leiden objective: modularity, cpm or rbconfiguration."""
    min_size: int = 2
    """Smallest supernode; features in smaller groups stay ungrouped."""
    extra_weight: float = 0.5
    """Weight of the strongest merged co-activation / interaction edge against a full attribution share (1)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise FeatgraphError(f"unknown community objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.min_size < 1:
            raise FeatgraphError(f"min_size must be at least 1, got {self.min_size}")
        if not (self.extra_weight >= 0 and self.resolution >= 0):
            raise FeatgraphError(f"resolution and extra_weight must be ≥ 0, got {self.resolution} and {self.extra_weight}")


class SupernodeResult(NamedTuple):
    membership: np.ndarray     # (n_nodes,) supernode id per node, −1 for non-features and features left ungrouped
    labels: dict[int, str]     # supernode id → label
    sizes: list[int]           # members per supernode, by id
    modularity: float          # of the Leiden partition of the feature subgraph (γ = 1)
    n_extra_edges: int         # dataset-wide edges merged in


class SupernodeEffect(NamedTuple):
    supernode: int
    label: str
    size: int
    direct: float           # Σ over members of the signed direct effect on the target
    influence_share: float  # share of the target's total influence (normalised |A| path sums) starting at members


def _check_attribution(graph: FeatureGraph) -> None:
    if graph.meta.get("kind") != "attribution" or "kind" not in graph.node_attrs:
        raise FeatgraphError("supernodes are found on an attribution graph (featgraph graph attribution / "
                             "AttributionGraph.to_feature_graph); this graph is of kind " + repr(graph.meta.get("kind")))


def _normalised_edges(graph: FeatureGraph) -> np.ndarray:
    """(E,) |w| / (Σ |w| into the edge's target)."""
    w = np.abs(graph.weights)
    into = np.bincount(graph.edge_dst, weights=w, minlength=graph.n_nodes)
    return w / np.maximum(into[graph.edge_dst], 1e-30)


def _extra_edges(graph: FeatureGraph, feats: np.ndarray, extra: Sequence[FeatureGraph], extra_weight: float):
    """Edges among the attribution graph's feature nodes implied by dataset-wide graphs (same position only)."""
    feature = graph.node_attrs["feature"]
    position = graph.node_attrs["position"]
    by_feature: dict[int, list[int]] = defaultdict(list)
    for i in feats.tolist():
        by_feature[int(feature[i])].append(i)
    src, dst, w = [], [], []
    for other in extra:
        if other.n_edges == 0:
            continue
        index = other.node_attrs.get("global_feature") or other.node_attrs.get("feature")
        if index is None:
            raise FeatgraphError("a merged graph's nodes need a 'feature' attribute (graphs of featgraph graph build have one)")
        ow = np.abs(other.weights)
        top = ow.max()
        if not np.isfinite(top) or top <= 0:
            continue
        for a, b, x in zip(other.edge_src.tolist(), other.edge_dst.tolist(), (ow / top).tolist()):
            fa, fb = index[a], index[b]
            if fa is None or fb is None or int(fa) not in by_feature or int(fb) not in by_feature:
                continue
            for i in by_feature[int(fa)]:
                for j in by_feature[int(fb)]:
                    if i != j and position[i] == position[j]:
                        src.append(i)
                        dst.append(j)
                        w.append(extra_weight * x)
    return np.asarray(src, np.int64), np.asarray(dst, np.int64), np.asarray(w, float)


def _label(graph: FeatureGraph, members: list[int]) -> str:
    influence = graph.node_attrs.get("influence") or [0.0] * graph.n_nodes
    lead = min(members, key=lambda i: (influence[i], i))
    layers = [int(graph.node_attrs["layer"][i]) for i in members]
    span = f"L{min(layers)}" if min(layers) == max(layers) else f"L{min(layers)}–{max(layers)}"
    text = graph.node_attrs.get("token_text", [""] * graph.n_nodes)[lead]
    return f"{json.dumps(str(text), ensure_ascii=False)} {span}"


def find_supernodes(graph: FeatureGraph, resolution: float = 1.0, seed: int = 0, objective: str = "modularity",
                    min_size: int = 2, extra: Sequence[FeatureGraph] = (), extra_weight: float = 0.5,
                    set_attrs: bool = True) -> SupernodeResult:
    """Leiden supernodes of an attribution graph's features (module docstring); with ``set_attrs`` the graph's node
    attribute ``community`` (None when ungrouped) and ``meta["community_labels"]`` are set, which the page and every
    exporter show.

    Parameters
    ----------
    graph : FeatureGraph
        An attribution graph (:meth:`featgraph.attribution.AttributionGraph.to_feature_graph`), usually pruned.
    resolution, seed, objective
        Leiden's (:func:`featgraph.communities.leiden`).
    min_size : int
        Smallest supernode; smaller communities are left ungrouped.
    extra : sequence of FeatureGraph
        Dataset-wide graphs of the same dictionary (co-activation, interaction) merged in as typed edges.
    extra_weight : float
        Weight of the strongest merged edge relative to a full attribution share (1).
    """
    _check_attribution(graph)
    SupernodeConfig(resolution, objective, min_size, extra_weight)  # checks
    kind = np.asarray(graph.node_attrs["kind"])
    feats = np.flatnonzero(kind == "feature")
    membership = np.full(graph.n_nodes, -1, dtype=np.int64)
    labels: dict[int, str] = {}
    sizes: list[int] = []
    modularity = 0.0
    n_extra = 0
    is_feat = kind == "feature"
    if len(feats) >= 2:
        keep = is_feat[graph.edge_src] & is_feat[graph.edge_dst] & (graph.edge_src != graph.edge_dst) if graph.n_edges else np.zeros(0, bool)
        w_norm = _normalised_edges(graph) if graph.n_edges else np.zeros(0)
        src, dst, w = graph.edge_src[keep], graph.edge_dst[keep], w_norm[keep]
        types = ["attribution"] * len(src)
        if extra:
            es, ed, ew = _extra_edges(graph, feats, extra, extra_weight)
            n_extra = len(es)
            src, dst, w = np.r_[src, es], np.r_[dst, ed], np.r_[w, ew]
            types += ["dataset"] * n_extra
        local = np.full(graph.n_nodes, -1, dtype=np.int64)
        local[feats] = np.arange(len(feats))
        sub = FeatureGraph([graph.node_ids[i] for i in feats.tolist()], edge_src=local[src], edge_dst=local[dst],
                           edge_attrs={"weight": w, "type": np.asarray(types, dtype=object)}, multigraph=True)
        if sub.n_edges and (w > 0).any():
            res = leiden(sub, resolution=resolution, seed=seed, objective=objective)
            modularity = res.modularity
            comm = res.membership
        else:
            comm = np.arange(len(feats))
        counts = np.bincount(comm)
        big = [c for c in range(len(counts)) if counts[c] >= min_size]  # already ordered by size (leiden relabels)
        new = {c: k for k, c in enumerate(big)}
        for local_i, c in enumerate(comm.tolist()):
            if c in new:
                membership[feats[local_i]] = new[c]
        sizes = [int(counts[c]) for c in big]
        members: dict[int, list[int]] = defaultdict(list)
        for i in np.flatnonzero(membership >= 0).tolist():
            members[int(membership[i])].append(i)
        labels = {k: _label(graph, members[k]) for k in range(len(big))}
        if "top_contexts" in graph.node_attrs:
            from .labels import community_labels

            probe = FeatureGraph(list(graph.node_ids), {"community": [int(c) if c >= 0 else None for c in membership],
                                                        "top_contexts": graph.node_attrs["top_contexts"]})
            for k, text in community_labels(probe).items():
                if not text.startswith("community "):
                    labels[int(k)] = f"{text} · {labels[int(k)]}"
    if set_attrs:
        graph.set_node_attr("community", [int(c) if c >= 0 else None for c in membership])
        graph.meta["community_labels"] = {str(k): v for k, v in labels.items()}
        graph.meta["supernodes"] = {"resolution": resolution, "seed": seed, "objective": objective, "min_size": min_size,
                                    "n_supernodes": len(sizes), "modularity": modularity, "merged_dataset_edges": n_extra}
    log.info("%d supernodes over %d features (modularity %.3f, %d merged dataset edges)", len(sizes), len(feats), modularity, n_extra)
    return SupernodeResult(membership, labels, sizes, float(modularity), n_extra)


def supernode_effects(graph: FeatureGraph, target: str, membership: Sequence[int] | None = None,
                      labels: dict[int, str] | None = None) -> list[SupernodeEffect]:
    """What each supernode carries to node ``target`` (a logit's id, e.g. ``logit/40``): the signed direct effect of its
    members on the target and its members' share of the target's influence through the (pruned) graph, circuit-tracer's
    ``e_t (Â + Â² + …)`` with ``Â`` the row-normalised |A|. Sorted by influence share, largest first. ``membership``
    defaults to the graph's ``community`` attribute."""
    _check_attribution(graph)
    if target not in graph._index:
        raise FeatgraphError(f"node {target!r} is not in the graph (its logits: "
                             f"{', '.join(i for i, k in zip(graph.node_ids, graph.node_attrs['kind']) if k == 'logit')})")
    if membership is None:
        membership = [-1 if c is None else int(c) for c in graph.node_attrs.get("community", [None] * graph.n_nodes)]
    membership = np.asarray(membership, dtype=np.int64)
    if labels is None:
        labels = {int(k): v for k, v in (graph.meta.get("community_labels") or {}).items()}
    n, t = graph.n_nodes, graph.index(target)
    A_hat = np.zeros((n, n))
    np.add.at(A_hat, (graph.edge_dst, graph.edge_src), _normalised_edges(graph) if graph.n_edges else 0.0)
    current = np.zeros(n)
    current[t] = 1.0
    influence = np.zeros(n)
    for _ in range(n + 1):  # acyclic: the series ends within n steps
        current = current @ A_hat
        if not current.any():
            break
        influence += current
    direct = np.zeros(n)
    into = graph.edge_dst == t
    np.add.at(direct, graph.edge_src[into], graph.weights[into])
    total = influence.sum()
    out = []
    for k in sorted(set(membership[membership >= 0].tolist())):
        m = membership == k
        out.append(SupernodeEffect(k, labels.get(k, f"supernode {k}"), int(m.sum()), float(direct[m].sum()),
                                   float(influence[m].sum() / total) if total > 0 else 0.0))
    return sorted(out, key=lambda e: (-e.influence_share, e.supernode))


def planted_circuit(n_modules: int = 3, n_layers: int = 3, per_cell: int = 2, n_positions: int = 4, within: float = 1.0,
                    between: float = 0.05, seed: int = 0) -> tuple[FeatureGraph, np.ndarray]:
    """A synthetic attribution graph with known modules, for tests and benchmarks: each module owns ``per_cell``
    features in every layer at one position (modules at positions 0, 1, …), edges run from each layer to the next
    (strength ``within`` inside a module, ``between`` across modules, ×U(0.5, 1.5), random sign), every last-layer
    feature feeds one logit. Returns the graph and each node's planted module (−1 for embeddings and the logit)."""
    rng = np.random.default_rng(seed)
    ids, attrs, truth = [], defaultdict(list), []

    def node(nid, kind, layer, pos, feature=None, module=-1):
        ids.append(nid)
        for k, v in (("kind", kind), ("layer", layer), ("position", pos), ("feature", feature), ("token", pos),
                     ("token_text", f"t{pos}"), ("activation", 1.0), ("influence", 0.0), ("label", nid)):
            attrs[k].append(v)
        truth.append(module)

    cells: dict[tuple[int, int], list[int]] = {}
    for m in range(n_modules):
        pos = m % n_positions
        for layer in range(n_layers):
            cells[(m, layer)] = []
            for j in range(per_cell):
                f = (m * n_layers + layer) * per_cell + j
                cells[(m, layer)].append(len(ids))
                node(f"L{layer}/F{f}@{pos}", "feature", layer, pos, f, m)
    for p in range(n_positions):
        node(f"E@{p}", "embedding", -1, p)
    node("logit/0", "logit", n_layers, n_positions - 1)
    src, dst, w = [], [], []
    for layer in range(n_layers - 1):
        for ma in range(n_modules):
            for mb in range(n_modules):
                for s in cells[(ma, layer)]:
                    for t in cells[(mb, layer + 1)]:
                        src.append(s)
                        dst.append(t)
                        w.append((within if ma == mb else between) * rng.uniform(0.5, 1.5) * rng.choice([-1, 1]))
    for m in range(n_modules):
        pos = m % n_positions
        for t in cells[(m, 0)]:
            src.append(ids.index(f"E@{pos}"))
            dst.append(t)
            w.append(rng.uniform(0.5, 1.5))
        for s in cells[(m, n_layers - 1)]:
            src.append(s)
            dst.append(len(ids) - 1)
            w.append(rng.uniform(0.5, 1.5) * (m + 1))
    w_arr = np.asarray(w)
    g = FeatureGraph(ids, dict(attrs), np.asarray(src), np.asarray(dst), {"weight": w_arr, "abs_weight": np.abs(w_arr)},
                     directed=True, meta={"kind": "attribution", "n_layers": n_layers, "prompt_tokens": [f"t{p}" for p in range(n_positions)]})
    return g, np.asarray(truth)
