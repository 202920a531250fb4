"""Cross-layer feature graphs: how the features of a stack of per-layer SAEs connect from one layer to the next.

The features of all layers are concatenated into one global index space of size F = Σ_l F_l;
``layer_F`` (F,) gives each feature's layer and ``local_F`` (F,) its index within the layer, so one
:class:`~featgraph.stats.CoactivationStats` over the concatenated activations holds every cross-layer
co-activation statistic on the same tokens. A crosscoder fits too, with ``layer_F`` = each feature's peak layer.

Adjacent layers are consecutive values of ``np.unique(layer_F)`` (layers 2, 4, 6 are a stack of three). Every
score of a pair is taken on the directed edge *earlier → later*: m(i, j) with i at layer l and j at l+1, so for the
asymmetric measures sufficiency m(i, j) = P(j | i) and necessity m(i, j) = P(i | j).

Following the SAE-stack experiments of spar-2024 (``experiments/``; arXiv 2410.08869):

* best match forward  b⁺_i = max_{j ∈ l+1} m(i, j),  backward  b⁻_j = max_{i ∈ l} m(i, j);
* pass-through at l: #{i ∈ l : b⁺_i ≥ τ}; vanishing at l: F_l − pass-through;
  appearing at l+1: F_{l+1} − #{j ∈ l+1 : b⁻_j ≥ τ};
* AND gate: a child j ∈ l+1 with exactly two parents i ∈ l with necessity P(i | j) ≥ 0.999;
  OR gate: a child j with exactly two parents i with sufficiency P(j | i) ≥ 0.999.

Activity rule. spar-2024 counts feature i *active* on a token when f_i > 0.2 · max f_i, the maximum over a first
pass of the data (``relative_lower_bound = 0.2`` in ``experiments/similarity_measures/generic/``; the
``*_relative_activation`` measures behind ``experiments/logic_gates.py``); Pearson reads the activation values
and no threshold. The statistics hold one rule, fixed when they are streamed: :func:`stack_stats` streams them
under f > ``active_frac`` · max f (default 0.2; 0 gives f > 0), and :func:`active_frac_of` reads the rule back
from any :class:`~featgraph.stats.CoactivationStats` (its threshold against its own per-feature max).
:func:`find_gates` and the count-based measures of :func:`pass_through_counts` refuse statistics made under
another rule than the ``active_frac`` they are asked for (default 0.2).

Stable node ids are ``L{layer}/F{local}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from crosscoder.errors import FeatgraphError

from .coactivation import prune_mask
from .graph import FeatureGraph
from .measures import MEASURES
from .stats import CoactivationStats, feature_max

__all__ = [
    "SPAR_ACTIVE_FRAC",
    "ActiveFeatures",
    "BestMatch",
    "Gate",
    "LayerTransition",
    "active_frac_of",
    "active_features",
    "best_match",
    "find_gates",
    "local_index",
    "pass_through_counts",
    "prompt_graph",
    "stack_graph",
    "stack_node_id",
    "stack_node_ids",
    "stack_stats",
]

SPAR_ACTIVE_FRAC = 0.2
"""spar-2024's activity rule: a feature is active when f > 0.2 · its max activation."""
_BINARY_MEASURES = ("jaccard", "sufficiency", "necessity", "mutual_information")  # read the active/inactive counts


# ---- ids and layer bookkeeping --------------------------------------------------------------------
def stack_node_id(layer: int, local: int) -> str:
    """Stable id of feature ``local`` of layer ``layer``: ``L{layer}/F{local}``."""
    return f"L{int(layer)}/F{int(local)}"


def stack_node_ids(layer_F: np.ndarray, local_F: np.ndarray | None = None) -> list[str]:
    """Ids of every global feature, in global order (``local_F`` defaults to :func:`local_index`)."""
    layer_F = np.asarray(layer_F, dtype=np.int64)
    local_F = local_index(layer_F) if local_F is None else np.asarray(local_F, dtype=np.int64)
    return [stack_node_id(l, i) for l, i in zip(layer_F.tolist(), local_F.tolist())]


def local_index(layer_F: np.ndarray) -> np.ndarray:
    """Index of each feature within its layer, counting in global order (the layout of concatenated SAEs)."""
    layer_F = np.asarray(layer_F, dtype=np.int64)
    order = np.argsort(layer_F, kind="stable")
    sorted_l = layer_F[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_l)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    out = np.empty(len(order), dtype=np.int64)
    out[order] = rank
    return out


def _layer_rank(stats: CoactivationStats, layer_F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct layers, position of each feature's layer among them)."""
    layer_F = np.asarray(layer_F)
    if layer_F.shape != (stats.n_features,):
        raise FeatgraphError(f"layer_F has shape {layer_F.shape}; give one layer per feature, shape ({stats.n_features},)")
    layers, rank_F = np.unique(layer_F.astype(np.int64), return_inverse=True)
    return layers, rank_F.ravel()


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise FeatgraphError(f"unknown measure {measure!r}; choose one of {sorted(MEASURES)}")


def _adjacent_pairs(
    stats: CoactivationStats, rank_F: np.ndarray, min_cocount: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-firing pairs between adjacent layers, oriented earlier → later: (src, dst, C) with rank[dst] = rank[src]+1."""
    i, j, c = stats.pairs(min_cocount)
    flip = rank_F[i] > rank_F[j]
    src, dst = np.where(flip, j, i), np.where(flip, i, j)
    keep = rank_F[dst] == rank_F[src] + 1
    return src[keep], dst[keep], c[keep]


def _adjacent_cofiring(stats: CoactivationStats, rank_F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs between adjacent layers that fire together at least once (M_ij = Σ f_i f_j > 0, whatever the
    activity rule), oriented earlier → later: (src, dst)."""
    M = sp.triu(stats.upper()[1], k=1).tocoo()
    pos = M.data > 0
    i, j = M.row[pos].astype(np.int64), M.col[pos].astype(np.int64)
    flip = rank_F[i] > rank_F[j]
    src, dst = np.where(flip, j, i), np.where(flip, i, j)
    keep = rank_F[dst] == rank_F[src] + 1
    return src[keep], dst[keep]


def _scores(name: str, stats: CoactivationStats, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``MEASURES[name]`` on the pairs (src, dst); an empty float array for no pairs (scipy can't index with none)."""
    return MEASURES[name](stats, src, dst) if len(src) else np.zeros(0, dtype=np.float64)


def _group_max(key: np.ndarray, other: np.ndarray, w: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key in 0..n-1: max of w and the ``other`` end achieving it (first in pair order on ties); −inf / −1 if none."""
    best, arg = np.full(n, -np.inf), np.full(n, -1, dtype=np.int64)
    if len(w):
        order = np.lexsort((-w, key))  # by key, heaviest first
        first = order[np.r_[True, np.diff(key[order]) != 0]]
        best[key[first]], arg[key[first]] = w[first], other[first]
    return best, arg


# ---- the activity rule -----------------------------------------------------------------------------
def _chunk_parts(chunk: Any) -> tuple[Any, Any]:
    """(f_nF, token_index_n or None) of a chunk: a tensor, or anything with ``f_nF`` (and ``token_index_n``)."""
    if hasattr(chunk, "f_nF"):
        return chunk.f_nF, getattr(chunk, "token_index_n", None)
    return chunk, None


def stack_stats(
    chunks: Callable[[], Iterable[Any]], n_features: int, active_frac: float = SPAR_ACTIVE_FRAC, top_m: int = 8
) -> CoactivationStats:
    """Statistics of feature activations under the activity rule f_i > ``active_frac`` · max f_i (spar-2024: 0.2).

    ``chunks()`` returns a fresh iterable of ``(n, F)`` activation chunks (tensors, or
    :class:`~crosscoder.apply.FeatureChunk` objects with token indices) and is called twice: a first pass for each
    feature's max, a second to stream the statistics. ``active_frac = 0`` makes one pass and counts f > 0.

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.5, 0.5]])
    >>> s = stack_stats(lambda: [f], 2)
    >>> s.count_F.tolist(), active_frac_of(s)  # 0.1 < 0.2 · 1.0 is not active
    ([2, 2], 0.2)
    """
    if not 0 <= active_frac < 1:
        raise FeatgraphError(f"active_frac must be in [0, 1), got {active_frac}; spar-2024 uses 0.2, 0 counts any positive activation")
    threshold: float | np.ndarray = 0.0
    if active_frac > 0:
        try:
            threshold = active_frac * feature_max(_chunk_parts(c)[0] for c in chunks())
        except ValueError:
            raise FeatgraphError("no activations to stream; the token set is empty") from None
    stats = CoactivationStats(n_features, threshold=threshold, top_m=top_m)
    for chunk in chunks():
        stats.update(*_chunk_parts(chunk))
    return stats


def active_frac_of(stats: CoactivationStats, rtol: float = 1e-5) -> float | None:
    """The fraction r of the statistics' activity rule f_i > r · max f_i: 0.0 for f > 0, r where each feature's
    threshold is r times its max over the same tokens (what :func:`stack_stats` streams), None otherwise (a fixed
    θ > 0, or maxima from other tokens)."""
    thr = np.asarray(stats.threshold, dtype=np.float64)
    if not thr.any():
        return 0.0
    if thr.ndim == 0:
        return None
    fired = stats.max_F > 0
    if not fired.any():
        return None
    r = float(np.median(thr[fired] / stats.max_F[fired]))
    return round(r, 6) if np.allclose(thr[fired], r * stats.max_F[fired], rtol=rtol, atol=0.0) else None


def _check_activity(stats: CoactivationStats, active_frac: float | None, what: str) -> None:
    """Raise one line unless the statistics were streamed under f > ``active_frac`` · max f (None: no check)."""
    if active_frac is None:
        return
    have = active_frac_of(stats)
    if have is not None and math.isclose(have, active_frac, rel_tol=1e-4, abs_tol=1e-9):
        return
    rule = lambda r: "f > 0" if r == 0 else f"f > {r:g}·max f"  # noqa: E731
    held = rule(have) if have is not None else "a threshold that is no fixed fraction of each feature's max"
    raise FeatgraphError(
        f"{what} asked for the activity rule {rule(active_frac)} but the statistics count {held}; stream them with "
        f"stack_stats(..., active_frac={active_frac:g}) (`featgraph graph build --active-frac {active_frac:g}`), "
        f"or pass active_frac={have if have is not None else 'None'} to use them as they are"
    )


# ---- best match, pass-through, gates ---------------------------------------------------------------
class BestMatch(NamedTuple):
    """Each feature's best partner in the next and in the previous layer (global indices; −1: none)."""

    forward_F: np.ndarray  # (F,) max_{j ∈ l+1} m(i, j); −inf without a candidate
    forward_idx_F: np.ndarray  # (F,) the argmax j
    backward_F: np.ndarray  # (F,) max_{i ∈ l-1} m(i, j); −inf without a candidate
    backward_idx_F: np.ndarray  # (F,) the argmax i


def best_match(
    stats: CoactivationStats, layer_F: np.ndarray, measure: str = "pearson", min_cocount: int = 1
) -> BestMatch:
    r"""Best-matching feature of every feature in the next layer (forward) and the previous layer (backward).

    .. math:: b^+_i = \max_{j \in l+1} m(i, j), \qquad b^-_j = \max_{i \in l-1} m(i, j)

    with m taken earlier → later (see the module docstring). Candidates are the pairs with co-count
    C_ij ≥ ``min_cocount``, read from the sparse co-count matrix — for Pearson with ``min_cocount`` ≤ 1 the pairs
    that fire together at all (M_ij > 0), so its best match does not depend on the activity rule the statistics
    were streamed under, as spar-2024's Pearson does not; every other pair is *absent* and counts as −inf,
    so a feature with no candidate (a dead feature, the last layer's forward, the first layer's backward) gets
    −inf and index −1. With ``min_cocount`` = 1 this changes no positive maximum of Pearson, Jaccard,
    sufficiency or necessity: for non-negative activations a pair that never co-fires has M_ij = C_ij = 0, hence
    ρ = −S_i S_j / … ≤ 0 and the others 0. Mutual information is the exception: two features that exclude each
    other share information (MI > 0), and this best match ignores such pairs by design — it looks for a partner
    that fires *with* the feature. (spar-2024 ``experiments/``; arXiv 2410.08869.)

    Examples
    --------
    >>> import torch
    >>> s = CoactivationStats(3)
    >>> s.update(torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [2.0, 4.0, 0.0]]))
    >>> bm = best_match(s, np.array([0, 1, 1]))
    >>> round(float(bm.forward_F[0]), 6), int(bm.forward_idx_F[0]), int(bm.backward_idx_F[1]), float(bm.backward_F[2])
    (1.0, 1, 0, -inf)
    """
    _check_measure(measure)
    _, rank_F = _layer_rank(stats, layer_F)
    if measure == "pearson" and min_cocount <= 1:
        src, dst = _adjacent_cofiring(stats, rank_F)
    else:
        src, dst, _ = _adjacent_pairs(stats, rank_F, min_cocount)
    w = _scores(measure, stats, src, dst)
    F = stats.n_features
    return BestMatch(*_group_max(src, dst, w, F), *_group_max(dst, src, w, F))


class LayerTransition(NamedTuple):
    """Counts for one adjacent layer pair (l, l+1); features that never fire are left out of every count."""

    layer: int  # l
    next_layer: int  # l+1
    n_alive: int  # features of l that fire at least once
    n_dead: int  # features of l that never fire
    n_next_alive: int
    n_next_dead: int
    pass_through: int  # #{i ∈ l alive : max_j m(i, j) ≥ τ}
    vanishing: int  # n_alive − pass_through
    matched_next: int  # #{j ∈ l+1 alive : max_i m(i, j) ≥ τ}
    appearing: int  # n_next_alive − matched_next


def pass_through_counts(
    stats: CoactivationStats, layer_F: np.ndarray, tau: float, measure: str = "pearson", min_cocount: int = 1,
    active_frac: float | None = SPAR_ACTIVE_FRAC,
) -> list[LayerTransition]:
    r"""Pass-through, vanishing and appearing features for every adjacent layer pair (l, l+1).

    .. math::
        \text{pass}_l = \#\{i \in l : \max_{j \in l+1} \rho(i, j) \ge \tau\},\quad
        \text{vanish}_l = F_l - \text{pass}_l,\quad
        \text{appear}_{l+1} = F_{l+1} - \#\{j \in l+1 : \max_{i \in l} \rho(i, j) \ge \tau\}

    F_l counts only the features of l that fire at least once on the tokens seen (a dead feature neither passes
    through nor vanishes nor appears); the dead are reported in ``n_dead``. With a count-based measure (Jaccard,
    sufficiency, necessity, mutual information) the statistics must hold the activity rule f > ``active_frac`` ·
    max f (default spar-2024's 0.2; None: take them as they are); Pearson reads no rule. (spar-2024
    ``experiments/pass_through_analysis/``; arXiv 2410.08869.)
    """
    if measure in _BINARY_MEASURES:
        _check_activity(stats, active_frac, f"pass-through by {measure}")
    layers, rank_F = _layer_rank(stats, layer_F)
    bm = best_match(stats, layer_F, measure, min_cocount)
    alive_F = stats.count_F > 0
    out = []
    for r in range(len(layers) - 1):
        here, nxt = rank_F == r, rank_F == r + 1
        n_alive, n_next = int((here & alive_F).sum()), int((nxt & alive_F).sum())
        passing = int((here & alive_F & (bm.forward_F >= tau)).sum())
        matched = int((nxt & alive_F & (bm.backward_F >= tau)).sum())
        out.append(LayerTransition(
            int(layers[r]), int(layers[r + 1]), n_alive, int(here.sum()) - n_alive, n_next,
            int(nxt.sum()) - n_next, passing, n_alive - passing, matched, n_next - matched,
        ))
    return out


class Gate(NamedTuple):
    """A two-parent logic gate from layer l to a child at l+1."""

    kind: str  # "AND" (both parents necessary) or "OR" (either parent sufficient)
    child_id: str  # L{l+1}/F{local}
    parent_ids: tuple[str, str]
    scores: tuple[float, float]  # AND: P(parent | child); OR: P(child | parent), per parent
    child_count: int  # tokens on which the child fires
    child: int  # global index
    parents: tuple[int, int]  # global indices, ascending


def find_gates(
    stats: CoactivationStats,
    layer_F: np.ndarray,
    local_F: np.ndarray | None = None,
    threshold: float = 0.999,
    min_count: int = 10,
    active_frac: float | None = SPAR_ACTIVE_FRAC,
) -> list[Gate]:
    r"""AND and OR gates between adjacent layers.

    A parent of child j ∈ l+1 is a feature i ∈ l with

    * AND: necessity P(i | j) = C_ij / n_j ≥ ``threshold`` (j fires only when i fires);
    * OR: sufficiency P(j | i) = C_ij / n_i ≥ ``threshold`` (i alone turns j on);

    and j is a gate when it has *exactly two* parents of a kind. "Fires" follows the statistics' activity rule,
    which must be f > ``active_frac`` · max f (default 0.2, spar-2024's ``*_relative_activation`` measures; 0:
    f > 0; None: take the statistics as they are) — stream them with :func:`stack_stats`. Features that fire on
    fewer than ``min_count`` tokens take no part, as child or parent: a child seen once has necessity 1 with
    everything it met, and a parent seen once is trivially sufficient. Gates come AND first, then OR, each by
    child index. (spar-2024 ``experiments/logic_gates.py``; arXiv 2410.08869.)
    """
    _check_activity(stats, active_frac, "AND/OR gates")
    _, rank_F = _layer_rank(stats, layer_F)
    local_F = local_index(layer_F) if local_F is None else np.asarray(local_F, dtype=np.int64)
    ids = stack_node_ids(layer_F, local_F)
    src, dst, _ = _adjacent_pairs(stats, rank_F, 1)
    common = (stats.count_F[src] >= min_count) & (stats.count_F[dst] >= min_count)
    src, dst = src[common], dst[common]
    gates = []
    for kind in ("AND", "OR"):
        score = _scores("necessity" if kind == "AND" else "sufficiency", stats, src, dst)
        gates += _two_parent_children(kind, src, dst, score, threshold, stats.count_F, ids)
    return gates


def _two_parent_children(
    kind: str, src: np.ndarray, dst: np.ndarray, score: np.ndarray, threshold: float, count_F: np.ndarray, ids: list[str]
) -> list[Gate]:
    """Children with exactly two parents whose score ≥ threshold."""
    keep = score >= threshold
    src, dst, score = src[keep], dst[keep], score[keep]
    order = np.lexsort((src, dst))
    src, dst, score = src[order], dst[order], score[order]
    children, first, n_parents = np.unique(dst, return_index=True, return_counts=True)
    gates = []
    for child, a in zip(children[n_parents == 2].tolist(), first[n_parents == 2].tolist()):
        p, q = int(src[a]), int(src[a + 1])
        gates.append(Gate(kind, ids[child], (ids[p], ids[q]), (float(score[a]), float(score[a + 1])),
                          int(count_F[child]), child, (p, q)))
    return gates


# ---- the stack graph -------------------------------------------------------------------------------
def stack_graph(
    stats: CoactivationStats,
    layer_F: np.ndarray,
    local_F: np.ndarray | None = None,
    measure: str = "pearson",
    top_k: int | None = 8,
    threshold: float | None = None,
    min_cocount: int = 5,
    keep_isolated: bool = False,
) -> FeatureGraph:
    """Directed graph of a stack of SAEs: edges only from layer l to layer l+1, weighted by ``measure``.

    Candidates are adjacent-layer pairs with co-count ≥ ``min_cocount``, oriented earlier → later; each gets
    ``cocount`` and every measure in :data:`~featgraph.measures.MEASURES` on that orientation (``sufficiency`` =
    P(dst | src), ``necessity`` = P(src | dst)). The weight must be positive; an edge survives if it is among the
    ``top_k`` heaviest of either endpoint and with weight ≥ ``threshold`` where given (as in
    :func:`~featgraph.coactivation.coactivation_graph`). Nodes ``L{l}/F{i}`` are the features with a kept edge
    (all features that fire, if ``keep_isolated``), in global order, with attributes ``layer``, ``feature``
    (local index), ``global_feature``, ``count``, ``frequency``, ``mean_act`` (mean when active), ``max_act``.
    (spar-2024; arXiv 2410.08869.)
    """
    _check_measure(measure)
    if top_k is None and threshold is None:
        raise FeatgraphError("prune the graph: give top_k, threshold or both")
    if stats.n_tokens == 0:
        raise FeatgraphError("no tokens were seen; the token set is empty")
    layers, rank_F = _layer_rank(stats, layer_F)
    local_F = local_index(layer_F) if local_F is None else np.asarray(local_F, dtype=np.int64)
    src, dst, c = _adjacent_pairs(stats, rank_F, min_cocount)
    values = {name: _scores(name, stats, src, dst) for name in MEASURES}
    sel = prune_mask(src, dst, values[measure], top_k, threshold)
    src, dst, c = src[sel], dst[sel], c[sel]
    values = {k: v[sel] for k, v in values.items()}
    alive = np.flatnonzero(stats.count_F > 0)
    linked = np.unique(np.r_[src, dst])
    features = np.union1d(linked, alive) if keep_isolated else linked
    node = np.full(stats.n_features, -1, dtype=np.int64)
    node[features] = np.arange(len(features))
    return FeatureGraph(
        node_ids=stack_node_ids(np.asarray(layer_F)[features], local_F[features]),
        node_attrs=_node_attrs(stats, np.asarray(layer_F, dtype=np.int64), local_F, features),
        edge_src=node[src],
        edge_dst=node[dst],
        edge_attrs={"weight": values[measure], "cocount": c, **values},
        directed=True,
        meta={
            "kind": "sae_stack", "measure": measure, "top_k": top_k, "threshold": threshold,
            "min_cocount": min_cocount, "n_tokens": stats.n_tokens,
            "active_threshold": float(stats.threshold) if np.ndim(stats.threshold) == 0 else "per-feature",
            "active_frac": active_frac_of(stats),
            "n_features": stats.n_features, "layers": layers.tolist(), "n_alive": len(alive),
            "n_isolated": len(alive) - len(np.intersect1d(linked, alive)),
        },
    )


def _node_attrs(
    stats: CoactivationStats, layer_F: np.ndarray, local_F: np.ndarray, features: np.ndarray
) -> dict[str, list[Any]]:
    count = stats.count_F[features]
    mean_act = np.divide(stats.sum_F[features], count, out=np.zeros(len(features)), where=count > 0)
    return {
        "layer": layer_F[features].tolist(),
        "feature": local_F[features].tolist(),
        "global_feature": features.tolist(),
        "count": count.tolist(),
        "frequency": (count / max(stats.n_tokens, 1)).tolist(),
        "mean_act": mean_act.tolist(),
        "max_act": stats.max_F[features].tolist(),
    }


# ---- per-prompt graphs -----------------------------------------------------------------------------
class ActiveFeatures(NamedTuple):
    """The features active anywhere in one prompt."""

    features: np.ndarray  # (K,) global indices, ascending
    max_act: np.ndarray  # (K,) max activation over the prompt
    positions: list[np.ndarray]  # K arrays of token positions where the feature is active


def active_features(f_TF: Any, threshold: float = 0.0) -> ActiveFeatures:
    """Features with f > ``threshold`` at some position of a prompt's activations ``f_TF`` (T, F), numpy or torch.

    Examples
    --------
    >>> a = active_features(np.array([[0.0, 2.0, 0.0], [1.0, 3.0, 0.0]]))
    >>> a.features.tolist(), a.max_act.tolist(), [p.tolist() for p in a.positions]
    ([0, 1], [1.0, 3.0], [[1], [0, 1]])
    """
    f_TF = f_TF.detach().cpu().numpy() if hasattr(f_TF, "detach") else np.asarray(f_TF)
    active_TF = f_TF > threshold
    features = np.flatnonzero(active_TF.any(axis=0))
    return ActiveFeatures(
        features, f_TF[:, features].max(axis=0).astype(np.float64) if len(features) else np.zeros(0),
        [np.flatnonzero(active_TF[:, f]) for f in features.tolist()],
    )


def prompt_graph(
    graph: FeatureGraph,
    active_ids: Sequence[str | int],
    activation: Sequence[float] | None = None,
    positions: Sequence[Sequence[int]] | None = None,
    spacing: float = 1.0,
    prompt_tokens: Sequence[str] | None = None,
) -> FeatureGraph:
    """The subgraph of ``graph`` induced by the features active on one prompt, laid out by layer.

    ``active_ids`` are node ids, or global feature indices (ints, e.g. :attr:`ActiveFeatures.features`) matched
    to the ``global_feature`` node attribute, else ``feature``. Active features that are not nodes of ``graph``
    are dropped (listed in ``meta["missing"]``). The nodes keep all their attributes and the dataset-wide edges
    among them; each gets ``x`` = layer · ``spacing`` (layer from ``layer``, else ``peak_layer``) and ``y``
    = (rank − (n_l − 1)/2) · ``spacing``, the rank within its layer by descending ``activation`` if given (else
    by node order), plus ``prompt_activation`` and ``prompt_positions`` where given (aligned with
    ``active_ids``). ``prompt_tokens`` — the prompt's tokens as text, indexed as ``positions`` are (so including a
    BOS token) — are kept as ``meta["prompt_tokens"]`` and ``meta["prompt"]`` (their concatenation), which the
    Neuronpedia export shows as the prompt.
    """
    layer_key = "layer" if "layer" in graph.node_attrs else "peak_layer"
    if layer_key not in graph.node_attrs:
        raise FeatgraphError("the graph's nodes carry no 'layer' or 'peak_layer' attribute; add layer profiles first")
    nodes, missing = _resolve(graph, active_ids)
    found = np.array([n >= 0 for n in nodes], dtype=bool)
    order = np.argsort(np.asarray(nodes, dtype=np.int64)[found], kind="stable")
    keep = np.flatnonzero(found)[order]  # positions in active_ids, in graph node order
    nodes_K = np.asarray(nodes, dtype=np.int64)[keep]
    attrs = {k: [col[n] for n in nodes_K.tolist()] for k, col in graph.node_attrs.items()}
    act_K = None if activation is None else np.asarray(activation, dtype=np.float64)[keep]
    if act_K is not None:
        attrs["prompt_activation"] = act_K.tolist()
    if positions is not None:
        attrs["prompt_positions"] = [[int(p) for p in positions[a]] for a in keep.tolist()]
    layer_K = np.asarray(attrs[layer_key], dtype=np.float64)
    attrs["x"] = (layer_K * spacing).tolist()
    attrs["y"] = _spread(layer_K, act_K, spacing).tolist()
    meta = {**graph.meta, "kind": "prompt", "source_kind": graph.meta.get("kind"), "n_active": len(active_ids), "missing": missing}
    if prompt_tokens is not None:
        tokens = [str(t) for t in prompt_tokens]
        last = max((p for ps in attrs.get("prompt_positions", []) for p in ps), default=-1)
        if last >= len(tokens):
            raise FeatgraphError(f"a feature is active at position {last} but prompt_tokens has {len(tokens)} tokens; "
                                 "pass every token of the prompt, the BOS token included")
        meta.update(prompt_tokens=tokens, prompt="".join(tokens))
    return FeatureGraph(
        node_ids=[graph.node_ids[n] for n in nodes_K.tolist()], node_attrs=attrs,
        **_induced_edges(graph, nodes_K), weight_key=graph.weight_key, directed=graph.directed, meta=meta,
    )


def _resolve(graph: FeatureGraph, active_ids: Sequence[str | int]) -> tuple[list[int], list[str | int]]:
    """Node index of each active id (−1 if absent) and the absent ids."""
    key = "global_feature" if "global_feature" in graph.node_attrs else "feature"
    by_feature = {int(f): n for n, f in enumerate(graph.node_attrs.get(key, []))}
    nodes = []
    for a in active_ids:
        is_int = isinstance(a, (int, np.integer))
        nodes.append(by_feature.get(int(a), -1) if is_int else graph._index.get(str(a), -1))
    missing = [a.item() if isinstance(a, np.generic) else a for a, n in zip(active_ids, nodes) if n < 0]
    return nodes, missing


def _spread(layer_K: np.ndarray, act_K: np.ndarray | None, spacing: float) -> np.ndarray:
    """y of each node: its rank within its layer (by descending activation, ties by order), centred on 0."""
    strength = np.zeros(len(layer_K)) if act_K is None else act_K
    order = np.lexsort((np.arange(len(layer_K)), -strength, layer_K))
    sorted_l = layer_K[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_l)) + 1] if len(order) else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    y = np.empty(len(order))
    y[order] = (rank - (np.repeat(sizes, sizes) - 1) / 2) * spacing
    return y


def _induced_edges(graph: FeatureGraph, nodes_K: np.ndarray) -> dict[str, Any]:
    """Edges of ``graph`` with both ends among ``nodes_K``, re-indexed."""
    new = np.full(graph.n_nodes, -1, dtype=np.int64)
    new[nodes_K] = np.arange(len(nodes_K))
    keep = (new[graph.edge_src] >= 0) & (new[graph.edge_dst] >= 0)
    return {
        "edge_src": new[graph.edge_src[keep]], "edge_dst": new[graph.edge_dst[keep]],
        "edge_attrs": {k: np.asarray(v)[keep] for k, v in graph.edge_attrs.items()},
    }
