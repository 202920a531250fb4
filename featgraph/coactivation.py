"""Build a co-activation graph from streamed statistics, and annotate its nodes.

Edges join features that fire together (spar-2024; arXiv 2410.08869). Candidates are pairs with co-count
≥ ``min_cocount`` (a significance floor for rare features); each gets every measure in
:mod:`featgraph.measures`; the ``measure`` chosen as weight must be positive; then the graph is pruned to the
strongest edges (:func:`prune_mask`): weight ≥ ``threshold`` if given, and among the ``top_k`` heaviest of
*either* endpoint if given — with both, each node keeps at most its k strongest edges above the threshold.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from crosscoder.errors import FeatgraphError

from .graph import FeatureGraph
from .measures import MEASURES, decoder_cosine
from .stats import CoactivationStats

__all__ = ["coactivation_graph", "top_k_mask", "prune_mask", "add_layer_profiles", "add_top_contexts", "add_model_diff", "feature_id",
           "token_context"]


def feature_id(i: int) -> str:
    """Stable id of crosscoder feature ``i``."""
    return f"F{i}"


def top_k_mask(src: np.ndarray, dst: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Mask of edges among the ``k`` heaviest at either endpoint (ties broken by edge order)."""
    keep = np.zeros(len(w), dtype=bool)
    for a in (src, dst):
        order = np.lexsort((-w, a))  # by node, then heaviest first
        a_sorted = a[order]
        starts = np.r_[0, np.flatnonzero(np.diff(a_sorted)) + 1]
        rank = np.arange(len(a)) - np.repeat(starts, np.diff(np.r_[starts, len(a)]))
        keep[order[rank < k]] = True
    return keep


def prune_mask(src: np.ndarray, dst: np.ndarray, w: np.ndarray, top_k: int | None, threshold: float | None) -> np.ndarray:
    """Edges kept: positive weight, ≥ ``threshold`` (if given), and among the ``top_k`` heaviest of either endpoint
    (if given) — with both, each node keeps at most its k strongest edges above the threshold."""
    keep = w > 0
    if threshold is not None:
        keep &= w >= threshold
    if top_k is not None:
        top = np.zeros(len(w), dtype=bool)
        top[keep] = top_k_mask(src[keep], dst[keep], w[keep], top_k)
        keep = top
    return keep


def coactivation_graph(
    stats: CoactivationStats,
    measure: str = "pearson",
    top_k: int | None = 8,
    threshold: float | None = None,
    min_cocount: int = 5,
    decoder_FK: np.ndarray | None = None,
) -> FeatureGraph:
    """Co-activation graph over the features that fire, weighted by ``measure``.

    Nodes are the features with at least one kept edge (isolated ones are counted in ``meta``); node
    attributes are ``feature`` (index), ``count``, ``frequency``, ``mean_act`` (mean when active) and
    ``max_act``; every edge carries ``cocount`` and each measure in :data:`MEASURES`, and ``decoder_cosine`` when
    the flattened decoder ``decoder_FK`` (F, L·D) is given (it can then also be the ``measure``).
    """
    allowed = sorted(MEASURES) + (["decoder_cosine"] if decoder_FK is not None else [])
    if measure not in allowed:
        raise FeatgraphError(f"unknown edge measure {measure!r}; choose one of {allowed} (decoder_cosine needs the decoder)")
    if top_k is None and threshold is None:
        raise FeatgraphError("prune the graph: give top_k, threshold or both")
    if stats.n_tokens == 0:
        raise FeatgraphError("no tokens were seen; the token set is empty")
    i, j, c = stats.pairs(min_cocount)
    values = {name: fn(stats, i, j) for name, fn in MEASURES.items()}
    if decoder_FK is not None:
        values["decoder_cosine"] = decoder_cosine(decoder_FK, i, j)
    sel = prune_mask(i, j, values[measure], top_k, threshold)
    i, j, c = i[sel], j[sel], c[sel]
    values = {k: v[sel] for k, v in values.items()}
    w = values[measure]

    features = np.unique(np.r_[i, j])
    local = np.full(stats.n_features, -1, dtype=np.int64)
    local[features] = np.arange(len(features))
    count = stats.count_F[features]
    mean_act = np.divide(stats.sum_F[features], count, out=np.zeros(len(features)), where=count > 0)
    alive = int((stats.count_F > 0).sum())
    return FeatureGraph(
        node_ids=[feature_id(f) for f in features.tolist()],
        node_attrs={
            "feature": features.tolist(),
            "count": count.tolist(),
            "frequency": (count / stats.n_tokens).tolist(),
            "mean_act": mean_act.tolist(),
            "max_act": stats.max_F[features].tolist(),
        },
        edge_src=local[i],
        edge_dst=local[j],
        edge_attrs={"weight": w, "cocount": c, **values},
        meta={
            "kind": "coactivation", "measure": measure, "top_k": top_k, "threshold": threshold,
            "min_cocount": min_cocount, "active_threshold": float(stats.threshold) if stats.threshold.ndim == 0 else "per-feature", "n_tokens": stats.n_tokens,
            "n_features": stats.n_features, "n_alive": alive, "n_isolated": alive - len(features),
        },
    )


def add_layer_profiles(graph: FeatureGraph, decoder_norms_FL: np.ndarray, hookpoints: Sequence[str]) -> None:
    """Per node: ``layer_profile`` (‖W_dec,i^l‖ per hookpoint), ``peak_layer`` (argmax), ``peak_hookpoint``, and
    ``span``: how many hookpoints lie between the first and the last whose norm is ≥ 10 % of the peak's."""
    feats = np.asarray(graph.node_attrs["feature"], dtype=np.int64)
    prof = np.asarray(decoder_norms_FL)[feats]
    peak = prof.argmax(axis=1) if len(feats) else np.zeros(0, dtype=np.int64)
    strong = prof >= 0.1 * prof.max(axis=1, keepdims=True) if len(feats) else np.zeros((0, 1), dtype=bool)
    first, last = strong.argmax(axis=1), strong.shape[1] - 1 - strong[:, ::-1].argmax(axis=1)
    graph.set_node_attr("span", (last - first + 1).tolist())
    graph.set_node_attr("layer_profile", [[round(float(v), 5) for v in row] for row in prof])
    graph.set_node_attr("peak_layer", peak.tolist())
    graph.set_node_attr("peak_hookpoint", [hookpoints[p] for p in peak])
    graph.meta["hookpoints"] = list(hookpoints)


def add_model_diff(
    graph: FeatureGraph, rel_norm_F: Sequence[float | None], labels_F: Sequence[str], decoder_cosine_F: Sequence[float]
) -> None:
    """Per node, from a model crosscoder's per-feature diff (:func:`crosscoder.model_diff.model_diff`): ``rel_norm``
    (r = ‖d_B‖ / (‖d_A‖ + ‖d_B‖), None where both are 0), ``diff_label`` (shared, A-only, B-only, between, empty) and
    ``decoder_cosine`` (cos(d_A, d_B))."""
    feats = graph.node_attrs["feature"]
    graph.set_node_attr("rel_norm", [rel_norm_F[f] for f in feats])
    graph.set_node_attr("diff_label", [labels_F[f] for f in feats])
    graph.set_node_attr("decoder_cosine", [decoder_cosine_F[f] for f in feats])


def add_top_contexts(
    graph: FeatureGraph,
    stats: CoactivationStats,
    tokens_NT: np.ndarray,
    token_str: Callable[[int], str],
    window: int = 8,
    n_contexts: int = 4,
) -> None:
    """Per node ``top_contexts``: up to ``n_contexts`` dicts ``{left, token, right, act}`` around its top tokens.

    ``token_index`` values in ``stats`` are flat indices row·T + pos into ``tokens_NT``; the left context stops at
    the row's start (position 1, after BOS).
    """
    tokens_NT = np.asarray(tokens_NT)
    contexts = []
    index_key = "global_feature" if "global_feature" in graph.node_attrs else "feature"  # stacks: global index
    for f in graph.node_attrs[index_key]:
        top = zip(stats.top_val_FM[f][:n_contexts], stats.top_idx_FM[f][:n_contexts])
        contexts.append([token_context(tokens_NT, int(idx), float(val), token_str, window) for val, idx in top if idx >= 0])
    graph.set_node_attr("top_contexts", contexts)


def token_context(tokens_NT: np.ndarray, index: int, act: float, token_str: Callable[[int], str], window: int = 8) -> dict:
    """``{left, token, right, act}`` around the token at flat index ``index`` = row·T + pos of ``tokens_NT``: up to
    ``window`` tokens on the left (stopping after BOS at position 0) and ``window // 2`` on the right."""
    row, pos = divmod(index, tokens_NT.shape[1])
    left = "".join(token_str(t) for t in tokens_NT[row, max(1, pos - window) : pos])
    right = "".join(token_str(t) for t in tokens_NT[row, pos + 1 : pos + 1 + window // 2])
    return {"left": left, "token": token_str(int(tokens_NT[row, pos])), "right": right, "act": round(act, 4)}
