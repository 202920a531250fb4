"""Interaction graphs: directed, typed edges (``mlp``, ``qk``, ``ov``) between features, and merging them with a
co-activation graph into one multigraph.

An interaction matrix ``I`` (F × F; rows = source feature, columns = target feature — for MLP interactions the
dominant feature i* and the feature j whose contribution it gates) becomes a graph exactly as a co-activation
graph does: positive entries, pruned by :func:`~featgraph.coactivation.prune_mask` (threshold and/or top-k per
node). Node ids are the same ``F{i}`` as in co-activation graphs, so the two merge on identity.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .coactivation import feature_id, prune_mask
from .graph import FeatureGraph

__all__ = ["interaction_graph", "merge_graphs", "EDGE_TYPES"]

EDGE_TYPES = ("coactivation", "mlp", "qk", "ov")


def interaction_graph(
    I_FF, kind: str, top_k: int | None = 8, threshold: float | None = None, node_attrs: dict[int, dict] | None = None,
    meta: dict | None = None,
) -> FeatureGraph:
    """Directed graph of the positive entries of ``I_FF`` (dense array or scipy sparse), edges typed ``kind``.

    ``node_attrs`` maps a feature index to attributes to copy onto its node (e.g. from a co-activation graph).
    """
    if kind not in EDGE_TYPES[1:]:
        raise ValueError(f"kind must be one of {EDGE_TYPES[1:]}, got {kind!r}")
    C = sp.coo_matrix(I_FF)
    src, dst, w = C.row.astype(np.int64), C.col.astype(np.int64), C.data.astype(np.float64)
    off_diag = src != dst
    src, dst, w = src[off_diag], dst[off_diag], w[off_diag]
    keep = prune_mask(src, dst, w, top_k, threshold)
    src, dst, w = src[keep], dst[keep], w[keep]
    features = np.unique(np.r_[src, dst])
    local = np.full(C.shape[0], -1, dtype=np.int64)
    local[features] = np.arange(len(features))
    attrs: dict[str, list] = {"feature": features.tolist()}
    if node_attrs:
        keys = sorted({k for d in node_attrs.values() for k in d})
        for k in keys:
            attrs[k] = [node_attrs.get(f, {}).get(k) for f in features.tolist()]
    return FeatureGraph(
        [feature_id(f) for f in features.tolist()], attrs, local[src], local[dst],
        {"weight": w, "type": np.array([kind] * len(w), dtype=object)}, directed=True,
        meta={"kind": f"interaction:{kind}", "top_k": top_k, "threshold": threshold, **(meta or {})},
    )


def merge_graphs(*graphs: FeatureGraph) -> FeatureGraph:
    """One directed multigraph over the union of the nodes, every edge kept with its ``type``.

    Undirected (co-activation) edges are added once, from the lower to the higher node in the first graph's
    order, with ``type = "coactivation"`` unless they carry a type; node attributes are merged, first graph first.
    Edge attributes missing in a graph are None.
    """
    node_ids: list[str] = []
    attrs: dict[str, dict[str, object]] = {}
    for g in graphs:
        for i, nid in enumerate(g.node_ids):
            if nid not in attrs:
                node_ids.append(nid)
                attrs[nid] = {}
            for k, col in g.node_attrs.items():
                attrs[nid].setdefault(k, col[i])
    index = {nid: i for i, nid in enumerate(node_ids)}
    keys = sorted({k for d in attrs.values() for k in d})
    edge_keys = sorted({k for g in graphs for k in g.edge_attrs} | {"type"})
    src, dst, cols = [], [], {k: [] for k in edge_keys}
    for g in graphs:
        default_type = "coactivation" if not g.directed else g.meta.get("kind", "interaction").split(":")[-1]
        for e in range(g.n_edges):
            src.append(index[g.node_ids[g.edge_src[e]]])
            dst.append(index[g.node_ids[g.edge_dst[e]]])
            for k in edge_keys:
                v = g.edge_attrs[k][e] if k in g.edge_attrs else (default_type if k == "type" else None)
                cols[k].append(v.item() if isinstance(v, np.generic) else v)
    return FeatureGraph(
        node_ids, {k: [attrs[n].get(k) for n in node_ids] for k in keys}, np.array(src, dtype=np.int64),
        np.array(dst, dtype=np.int64), {k: np.array(v, dtype=object) if k == "type" else np.array(v) for k, v in cols.items()},
        directed=True, multigraph=True,
        meta={"kind": "merged", "parts": [g.meta.get("kind") for g in graphs]},
    )
