"""Feature dashboards: activation density and histogram, quantile examples, and the logit lens.

What SAEDashboard / sae_vis and Neuronpedia show for a feature, from statistics streamed with the graph's
(:class:`~featgraph.stats.CoactivationStats` with ``dashboards=True``), set as node attributes by
:func:`add_dashboards` and written as Neuronpedia-style feature JSON by :func:`write_feature_json`:

* ``density``: the fraction of tokens on which the feature is non-zero (Neuronpedia's ``frac_nonzero``);
* ``act_histogram``: ``{"edges", "counts"}`` of its non-zero activations, exact counts over log-spaced bins
  (12 per decade, :func:`featgraph.stats.hist_edges`) cropped to the occupied ones; the first edge is 0 when
  activations below 10⁻³ occur and the last is the feature's max when activations above 10⁴ do. Draw it on a log
  axis (or as equal-width bars);
* ``quantile_examples``: ``[{"range": [lo, hi], "quantile": [q0, q1], "examples": [{left, token, right, act}, …]}]``,
  highest band first. The feature's random sample of non-zero activations (a bottom-k sketch, uniform without
  replacement) is split into ``n_bands`` equal-count bands by value; each band shows ``per_band`` of its members
  (those with the smallest sample keys: a seeded random choice), strongest first, and ``range`` is the band's
  smallest and largest sampled activation;
* ``top_logits`` / ``bottom_logits``: ``[[token, value], …]`` from :func:`logit_lens`; for a model crosscoder a
  dict model name → such a list.

Logit lens (the direct effect on the logits of one unit of the feature, as in SAEDashboard and Neuronpedia, which
use the decoder at the SAE's layer): for a crosscoder writing several hookpoints we use the decoder at the *last*
written hookpoint in forward order — the one closest to the unembedding — in raw activation units,
d = W_dec[i, l] / s_l (the crosscoder's decode divides by its normalisation scale ``norm_scale_L``). The final
norm's linear part is applied, then the unembedding:

    logits = (P d ⊙ w_ln) W_U

with P the centring (d − mean d) for LayerNorm (``normalization_type`` LN or LNPre) and the identity for RMSNorm,
and w_ln the final norm's scale for LN / RMS; a model with folded norms (LNPre / RMSPre) has w_ln in W_U already.
The final norm's 1/σ, positive and token-dependent, is left out: it rescales every logit of a token alike, so the
ranking is exact and the values are per unit of residual scale. No unembedding bias. A model crosscoder gets one
lens per model (each model's last written slot through that model's W_U).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from crosscoder.crosscoder import Crosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import forward_order
from crosscoder.io import atomic_file, strict_json

from .coactivation import token_context
from .graph import FeatureGraph
from .stats import CoactivationStats, hist_edges

__all__ = ["LogitLens", "decoder_direction", "unembed_directions", "logit_lens", "activation_histogram",
           "quantile_examples", "add_dashboards", "write_feature_json", "feature_records"]

log = logging.getLogger(__name__)


class LogitLens(NamedTuple):
    """Top and bottom logits of some features: row g is feature ``features[g]``."""

    features: np.ndarray      # (G,) feature indices
    top_ids_GK: np.ndarray    # (G, k) token ids, largest logit first
    top_vals_GK: np.ndarray   # (G, k)
    bottom_ids_GK: np.ndarray  # (G, k) token ids, smallest logit first
    bottom_vals_GK: np.ndarray  # (G, k)


# ---- logit lens ----------------------------------------------------------------------------------------------
def _last_written_slot(cc: Crosscoder, model_index: int = 0) -> int:
    """Index on the written L axis of the last hookpoint (forward order) that ``cc`` writes in model ``model_index``."""
    hooks = cc.cfg.model_writes
    last = max(range(len(hooks)), key=lambda h: (forward_order(hooks[h]), h))
    return model_index * len(hooks) + last


@torch.no_grad()
def decoder_direction(cc: Crosscoder, features: Sequence[int] | np.ndarray | None = None, model_index: int = 0) -> torch.Tensor:
    """(G, D) raw-unit decoder directions W_dec[i, l] / s_l of ``features`` (all if None) at the last hookpoint that
    ``cc`` writes (in model ``model_index`` of a model crosscoder)."""
    slot = _last_written_slot(cc, model_index)
    W_FD = cc.W_dec_FLD[:, slot, :] if features is None else cc.W_dec_FLD[torch.as_tensor(np.asarray(features, dtype=np.int64)), slot, :]
    scale = cc.norm_scale_L[cc.out_idx[slot]]
    return W_FD.detach().float() / scale.float()


@torch.no_grad()
def unembed_directions(d_GD: torch.Tensor, model) -> torch.Tensor:
    """(G, V) logits of residual directions through the final norm's linear part and W_U (module docstring)."""
    W_U = model.W_U
    d_GD = d_GD.to(device=W_U.device, dtype=torch.float32)
    norm = getattr(model.cfg, "normalization_type", None)
    if norm in ("LN", "LNPre"):
        d_GD = d_GD - d_GD.mean(dim=-1, keepdim=True)
    if norm in ("LN", "RMS"):
        d_GD = d_GD * model.ln_final.w.float()
    return d_GD @ W_U.float()


@torch.no_grad()
def _lens_one(cc: Crosscoder, model, features: np.ndarray, k: int, model_index: int, chunk_elems: int) -> LogitLens:
    if cc.cfg.d_model != model.cfg.d_model:
        raise FeatgraphError(f"the crosscoder writes d_model={cc.cfg.d_model} but the model has d_model={model.cfg.d_model}; "
                             "give the model the crosscoder was trained on")
    V = model.cfg.d_vocab_out if getattr(model.cfg, "d_vocab_out", -1) > 0 else model.W_U.shape[1]
    k = min(k, V)
    rows = max(1, chunk_elems // V)  # top-k in chunks: never a (F, V) matrix
    parts = []
    for a in range(0, len(features), rows):
        logits_GV = unembed_directions(decoder_direction(cc, features[a : a + rows], model_index), model)
        top, bottom = logits_GV.topk(k, dim=1), logits_GV.topk(k, dim=1, largest=False)
        parts.append([t.cpu().numpy() for t in (top.indices, top.values, bottom.indices, bottom.values)])
    if not parts:
        empty_i, empty_v = np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        return LogitLens(features, empty_i, empty_v, empty_i, empty_v)
    return LogitLens(features, *(np.concatenate(col) for col in zip(*parts)))


def logit_lens(cc: Crosscoder, model, k: int = 10, features: Sequence[int] | np.ndarray | None = None,
               chunk_elems: int = 1 << 25) -> LogitLens | dict[str, LogitLens]:
    """The ``k`` most promoted and most suppressed output tokens of each feature (all, or ``features``).

    ``model`` is a TransformerLens ``HookedTransformer``; for a model crosscoder (``cc.cfg.models``) the models, a
    mapping name → model or a list in the crosscoder's order, and the result is a dict model name → lens. The
    logits are computed ``chunk_elems // d_vocab`` features at a time.
    """
    feats = np.arange(cc.cfg.n_features) if features is None else np.asarray(features, dtype=np.int64)
    if not cc.cfg.models:
        return _lens_one(cc, model, feats, k, 0, chunk_elems)
    names = list(cc.cfg.models)
    if isinstance(model, Mapping):
        missing = [m for m in names if m not in model]
        if missing:
            raise FeatgraphError(f"the logit lens of this model crosscoder needs the model {missing[0]!r}; pass every model of {names}")
        models = [model[m] for m in names]
    elif isinstance(model, (list, tuple)) and len(model) == len(names):
        models = list(model)
    else:
        raise FeatgraphError(f"this model crosscoder writes the models {names}; pass them as a mapping name → model or a list in that order")
    return {m: _lens_one(cc, mod, feats, k, i, chunk_elems) for i, (m, mod) in enumerate(zip(names, models))}


# ---- streamed statistics → per-feature data --------------------------------------------------------------------
def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def activation_histogram(stats: CoactivationStats, feature: int) -> dict[str, list]:
    """``{"edges", "counts"}`` of ``feature``'s non-zero activations, cropped to the occupied bins (module docstring)."""
    counts = stats.hist_FB[feature]
    occupied = np.flatnonzero(counts)
    if not len(occupied):
        return {"edges": [], "counts": []}
    lo, hi = occupied[0], occupied[-1]
    edges = [_sig(e) for e in hist_edges()[lo : hi + 2]]
    if not np.isfinite(edges[-1]):  # the open top bin ends at the feature's max
        edges[-1] = max(float(stats.max_F[feature]), edges[-2])
    return {"edges": edges, "counts": counts[lo : hi + 1].astype(int).tolist()}


def quantile_examples(stats: CoactivationStats, feature: int, tokens_NT: np.ndarray, token_str: Callable[[int], str],
                      n_bands: int = 5, per_band: int = 3, window: int = 8) -> list[dict[str, Any]]:
    """Examples of ``feature`` from ``n_bands`` equal-count bands of its sampled non-zero activations, highest band
    first (module docstring)."""
    vals, idx, _ = stats.activation_sample(feature)  # in key order: a position is a random rank
    s = len(vals)
    if s == 0:
        return []
    by_value = np.argsort(vals, kind="stable")
    n = min(n_bands, s)
    out = []
    for b in reversed(range(n)):
        members = by_value[b * s // n : (b + 1) * s // n]
        chosen = np.sort(members)[:per_band]  # smallest keys: a seeded random choice within the band
        chosen = chosen[np.argsort(-vals[chosen], kind="stable")]
        out.append({
            "range": [round(float(vals[members].min()), 4), round(float(vals[members].max()), 4)],
            "quantile": [round(b / n, 4), round((b + 1) / n, 4)],
            "examples": [token_context(tokens_NT, int(idx[c]), float(vals[c]), token_str, window) for c in chosen],
        })
    return out


def _logit_list(ids: np.ndarray, vals: np.ndarray, token_str: Callable[[int], str]) -> list[list]:
    return [[token_str(int(t)), round(float(v), 4)] for t, v in zip(ids, vals)]


def add_dashboards(
    graph: FeatureGraph,
    stats: CoactivationStats,
    rows_NT: np.ndarray | torch.Tensor,
    token_str: Callable[[int], str],
    cc: Crosscoder | Sequence[Crosscoder] | None = None,
    model: Any = None,
    *,
    k: int = 10,
    n_bands: int = 5,
    per_band: int = 3,
    window: int = 8,
) -> None:
    """Set the dashboard node attributes (module docstring) of every node of ``graph``.

    ``stats`` streamed ``rows_NT`` (token index = row·T + pos); without its dashboard statistics
    (``dashboards=False``, or statistics saved before them) only ``density`` is set, from the active count. With
    ``cc`` and ``model`` (as for :func:`logit_lens`; a stack of per-layer crosscoders takes the list, in layer order)
    ``top_logits`` and ``bottom_logits`` are added.
    """
    tokens_NT = rows_NT.cpu().numpy() if isinstance(rows_NT, torch.Tensor) else np.asarray(rows_NT)
    key = "global_feature" if "global_feature" in graph.node_attrs else "feature"
    feats = np.asarray(graph.node_attrs[key], dtype=np.int64)
    n_tokens = max(stats.n_tokens, 1)
    if stats.dashboards and stats.hist_FB is not None:
        graph.set_node_attr("density", [stats.nonzero_count(f) / n_tokens for f in feats])
        graph.set_node_attr("act_histogram", [activation_histogram(stats, f) for f in feats])
        graph.set_node_attr("quantile_examples", [quantile_examples(stats, f, tokens_NT, token_str, n_bands, per_band, window)
                                                  for f in feats])
    else:
        log.info("the statistics hold no activation histograms or samples; dashboards get the density only")
        graph.set_node_attr("density", (stats.count_F[feats] / n_tokens).tolist())
    if cc is not None and model is not None:
        top, bottom = _node_logits(graph, cc, model, k, token_str)
        graph.set_node_attr("top_logits", top)
        graph.set_node_attr("bottom_logits", bottom)


def _node_logits(graph: FeatureGraph, cc, model, k: int, token_str) -> tuple[list, list]:
    local = np.asarray(graph.node_attrs["feature"], dtype=np.int64)
    if isinstance(cc, Crosscoder):
        groups = [(np.arange(graph.n_nodes), cc)]
    else:  # a stack: node attribute ``layer`` indexes the crosscoders
        layer = np.asarray(graph.node_attrs["layer"], dtype=np.int64)
        groups = [(np.flatnonzero(layer == l), c) for l, c in enumerate(cc)]
    top: list[Any] = [None] * graph.n_nodes
    bottom: list[Any] = [None] * graph.n_nodes
    for nodes, c in groups:
        if not len(nodes):
            continue
        lens = logit_lens(c, model, k, features=local[nodes])
        for g, i in enumerate(nodes):
            if isinstance(lens, dict):
                top[i] = {m: _logit_list(L.top_ids_GK[g], L.top_vals_GK[g], token_str) for m, L in lens.items()}
                bottom[i] = {m: _logit_list(L.bottom_ids_GK[g], L.bottom_vals_GK[g], token_str) for m, L in lens.items()}
            else:
                top[i] = _logit_list(lens.top_ids_GK[g], lens.top_vals_GK[g], token_str)
                bottom[i] = _logit_list(lens.bottom_ids_GK[g], lens.bottom_vals_GK[g], token_str)
    return top, bottom


# ---- Neuronpedia-style feature JSON --------------------------------------------------------------------------------
def _example(ctx: Mapping[str, Any]) -> dict[str, Any]:
    """One example in circuit-tracer / Neuronpedia form: the context as three pieces, the token in the middle."""
    act = float(ctx.get("act", 0.0))
    return {"tokens": [str(ctx.get("left", "")), str(ctx.get("token", "")), str(ctx.get("right", ""))],
            "tokens_acts_list": [0.0, act, 0.0], "train_token_ind": 1, "is_repeated_datapoint": False}


def _main_model(node: Mapping[str, Any], logits: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The model whose logits fill the flat fields of a model crosscoder's feature: the side its decoder leans to."""
    names = list(logits)
    pair, r = meta.get("rel_norm_models"), node.get("rel_norm")
    if pair and len(pair) == 2 and r is not None and pair[0] in logits and pair[1] in logits:
        return pair[1] if r > 0.5 else pair[0]
    return names[0]


def feature_records(graph: FeatureGraph) -> list[dict[str, Any]]:
    """One Neuronpedia-style record per node (see :func:`write_feature_json`)."""
    comm_labels = graph.meta.get("community_labels") or {}
    out = []
    for i in range(graph.n_nodes):
        node = graph.node(i)
        feature = node.get("feature")
        rec: dict[str, Any] = {"index": int(feature) if feature is not None else i, "id": node["id"], "label": node.get("label", node["id"])}
        for name in ("layer", "peak_hookpoint", "diff_label", "rel_norm"):
            if node.get(name) is not None:
                rec[name] = node[name]
        if node.get("community") is not None:
            rec["community"] = node["community"]
            rec["community_label"] = comm_labels.get(str(node["community"]))
        density = node.get("density", node.get("frequency"))
        if density is not None:
            rec["activation_frequency"] = rec["frac_nonzero"] = float(density)
        rec["act_min"], rec["act_max"] = 0.0, float(node.get("max_act") or 0.0)
        hist = node.get("act_histogram")
        if hist and hist.get("counts"):
            e = hist["edges"]
            rec["histogram"] = hist
            rec["freq_hist_data_bar_values"] = [_sig(e[b + 1] / 2 if e[b] == 0 else (e[b] * e[b + 1]) ** 0.5, 4)
                                                for b in range(len(hist["counts"]))]
            rec["freq_hist_data_bar_heights"] = list(hist["counts"])
        quantiles = [{"quantile_name": "Top activations", "examples": [_example(c) for c in node.get("top_contexts") or []]}]
        for band in node.get("quantile_examples") or []:
            lo, hi = band["range"]
            q = band.get("quantile")
            name = f"Quantile {q[0]:.0%}–{q[1]:.0%}" if q else "Quantile"
            quantiles.append({"quantile_name": f"{name} (activation {lo:g}–{hi:g})", "examples": [_example(c) for c in band["examples"]]})
        rec["examples_quantiles"] = quantiles
        top, bottom = node.get("top_logits"), node.get("bottom_logits")
        if isinstance(top, dict) and top:
            rec["logits_by_model"] = {m: {"top_logits": top[m], "bottom_logits": (bottom or {}).get(m, [])} for m in top}
            main = _main_model(node, top, graph.meta)
            rec["logits_model"] = main
            top, bottom = top[main], (bottom or {}).get(main, [])
        if top is not None:
            rec["top_logits"], rec["bottom_logits"] = [t for t, _ in top], [t for t, _ in bottom or []]
            rec["pos_str"], rec["pos_values"] = [t for t, _ in top], [v for _, v in top]
            rec["neg_str"], rec["neg_values"] = [t for t, _ in bottom or []], [v for _, v in bottom or []]
        out.append(rec)
    return out


def write_feature_json(graph: FeatureGraph, path: str | Path) -> Path:
    """Write every node's dashboard as Neuronpedia-style feature JSON: a list of objects, one per node, in node order.

    Field names follow circuit-tracer's / Neuronpedia's graph feature files where they exist — ``index`` (the
    feature's index in its dictionary), ``examples_quantiles`` (``quantile_name`` and ``examples`` with ``tokens``,
    ``tokens_acts_list``, ``train_token_ind``, ``is_repeated_datapoint``: here each example's tokens are [left context,
    token, right context]), ``top_logits`` / ``bottom_logits`` (token strings), ``act_min`` / ``act_max`` — and
    SAEDashboard's Neuronpedia export — ``frac_nonzero``, ``pos_str`` / ``pos_values``, ``neg_str`` / ``neg_values``,
    ``freq_hist_data_bar_values`` (bin centres) / ``freq_hist_data_bar_heights`` (counts); plus ``id``, ``label``,
    ``activation_frequency``, ``histogram`` ({edges, counts}), ``community`` and ``community_label``. For a model
    crosscoder ``logits_by_model`` holds every model's logits and the flat fields those of ``logits_model``, the side
    the feature's decoder leans to (by ``rel_norm``). Strict JSON (no NaN), written atomically.
    """
    text = json.dumps(strict_json(feature_records(graph)), allow_nan=False)
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
