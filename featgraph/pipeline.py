"""One graph builder: crosscoder(s), a model and token rows → an annotated, clustered co-activation graph.

:func:`build_graph` serves every kind of feature graph with one set of options (:class:`GraphConfig`):

* one crosscoder, SAE or transcoder: its features ``F{i}`` with their layer profiles (decoder norm per hookpoint)
  and, by default, the decoder cosine on every edge;
* one model crosscoder (``cc.cfg.models``): the same, seen from one ``side`` (that model's activations alone, the
  others' slots zero) or jointly (``side=None``); nodes also carry ``rel_norm``, ``diff_label`` and ``decoder_cosine``
  of models ``a`` vs ``b`` (in the papers' normalised space);
* several one-hookpoint crosscoders (a stack of per-layer SAEs, featgraph or SAELens): nodes ``L{l}/F{i}``, directed
  edges between adjacent layers (spar-2024).

Every kind gets top contexts and communities. ``featgraph graph build``, ``featgraph demo``, the studies and the
Python API all call it, so the same options give the same graph whichever entry point is used.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from crosscoder.apply import feature_activations, stack_feature_activations
from crosscoder.crosscoder import Crosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.model_diff import model_diff, model_feature_activations

from .coactivation import add_layer_profiles, add_model_diff, add_top_contexts, coactivation_graph
from .communities import leiden
from .crosslayer import SPAR_ACTIVE_FRAC, stack_graph
from .dashboards import add_dashboards
from .graph import FeatureGraph
from .labels import add_labels, read_user_labels
from .layout import add_layout
from .options import GraphConfig
from .stats import CoactivationStats, feature_max

__all__ = ["GraphConfig", "GraphResult", "build_graph", "encode_prompt", "token_decoder"]  # GraphConfig lives in featgraph.options


class GraphResult(NamedTuple):
    graph: FeatureGraph
    stats: CoactivationStats


def token_decoder(model) -> Callable[[int], str]:
    """Token id → its text, decoded once for the whole vocabulary (``str`` of the id without a tokenizer)."""
    if model.tokenizer is None:
        return str
    vocab = [model.tokenizer.decode([i]) for i in range(model.cfg.d_vocab)]
    return vocab.__getitem__


def encode_prompt(model, text: str) -> torch.Tensor:
    """``(T,)`` token ids of one prompt as the graphs read it: BOS (else EOS) first, then the text's tokens."""
    tok = model.tokenizer
    if tok is None:
        raise FeatgraphError("the model has no tokenizer; a per-prompt graph needs text → tokens")
    if not text.strip():
        raise FeatgraphError("the prompt is empty; pass the text whose graph you want (--text)")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return torch.tensor([bos] + [i for i in ids if i != bos], dtype=torch.long)


def _chunk_source(ccs: list[Crosscoder], model, rows_NT: torch.Tensor, cfg: GraphConfig, side: str | None):
    """A function giving a fresh iterator of feature-activation chunks (streamed twice with ``active_frac``)."""
    if len(ccs) > 1:
        return lambda: stack_feature_activations(ccs, model, rows_NT, cfg.batch_size)
    cc = ccs[0]
    if cc.cfg.models:
        return lambda: model_feature_activations(cc, model, rows_NT, cfg.batch_size, side=side)
    return lambda: feature_activations(cc, model, rows_NT, cfg.batch_size)


def build_graph(
    crosscoders: Crosscoder | Sequence[Crosscoder],
    model: Any,
    rows_NT: torch.Tensor,
    cfg: GraphConfig | None = None,
    *,
    token_str: Callable[[int], str] | None = None,
    side: str | None = None,
    a: int | str = 0,
    b: int | str = 1,
    seed: int = 0,
    progress: bool = False,
) -> GraphResult:
    """Stream feature activations over the first ``cfg.rows`` of ``rows_NT`` into statistics and build the graph.

    Parameters
    ----------
    crosscoders : Crosscoder or sequence of Crosscoder
        One crosscoder (features ``F{i}``), or several one-hookpoint ones in layer order (a stack, ``L{l}/F{i}``).
    model : HookedTransformer, or the models of a model crosscoder (mapping name → model, or a list in its order)
    rows_NT : (N, T) token rows, BOS at position 0
    cfg : GraphConfig
        Measure, pruning, activity rule, decoder cosine, communities, rows.
    token_str : callable, optional
        Token id → text for the contexts (default: the model's tokenizer).
    side, a, b
        Model crosscoder only: which model's activations are encoded (None: all jointly), and the pair compared.
    seed : int
        Seed of the community detection.

    Returns
    -------
    GraphResult
        The graph (meta: kind, measure, options, modularity, communities, seed) and the statistics it came from.
    """
    cfg = cfg or GraphConfig()
    ccs = [crosscoders] if isinstance(crosscoders, Crosscoder) else list(crosscoders)
    if not ccs:
        raise FeatgraphError("no crosscoder to build a graph from; pass at least one")
    stack = len(ccs) > 1
    if stack and any(c.cfg.models for c in ccs):
        raise FeatgraphError("a stack graph takes one-model crosscoders; build a model crosscoder's graph on its own")
    if token_str is None:
        models = list(model.values()) if isinstance(model, Mapping) else list(model) if isinstance(model, (list, tuple)) else [model]
        token_str = token_decoder(models[0])
    rows_NT = rows_NT[: cfg.rows]
    F = sum(c.cfg.n_features for c in ccs)
    chunks = _chunk_source(ccs, model, rows_NT, cfg, side)
    active_frac = cfg.active_frac if cfg.active_frac is not None else (SPAR_ACTIVE_FRAC if stack else 0.0)
    threshold: float | np.ndarray = 0.0
    if active_frac > 0:
        threshold = active_frac * feature_max(c.f_nF for c in chunks())
    stats = CoactivationStats(F, threshold=threshold, dashboards=cfg.dashboards, seed=seed)
    for chunk in tqdm(chunks(), total=-(-rows_NT.shape[0] // cfg.batch_size), desc="graph stats", disable=not progress, leave=False):
        stats.update(chunk.f_nF, chunk.token_index_n)
    if stack:
        layer_F = np.concatenate([np.full(c.cfg.n_features, k) for k, c in enumerate(ccs)])
        graph = stack_graph(stats, layer_F, measure=cfg.measure, top_k=cfg.top_k, threshold=cfg.threshold, min_cocount=cfg.min_cocount)
        graph.require_edges()
        graph.meta["hookpoints"] = [c.cfg.writes[0] for c in ccs]
        graph.set_node_attr("peak_hookpoint", [graph.meta["hookpoints"][l] for l in graph.node_attrs["layer"]])
        graph.meta["layer_F"] = layer_F.tolist()
    else:
        cc = ccs[0]
        decoder = cc.W_dec_FLD.detach().flatten(1).cpu().numpy() if cfg.decoder_cosine else None
        graph = coactivation_graph(stats, cfg.measure, cfg.top_k, cfg.threshold, cfg.min_cocount, decoder_FK=decoder)
        graph.require_edges()
        add_layer_profiles(graph, cc.decoder_norms().detach().cpu().numpy(), cc.cfg.writes)
        if cc.cfg.models:
            diff = model_diff(cc, a, b)
            add_model_diff(graph, diff.rel_norm, diff.labels, diff.decoder_cosine)
            graph.meta.update({"side": side or "joint", "models": list(cc.cfg.models), "model_norm": cc.cfg.model_norm,
                               "rel_norm_models": diff.models})
    add_top_contexts(graph, stats, rows_NT.cpu().numpy(), token_str)
    comm = leiden(graph, seed=seed, objective=cfg.objective, resolution=cfg.resolution)
    graph.set_node_attr("community", comm.membership.tolist())
    graph.meta.update({"modularity": comm.modularity, "n_communities": comm.n_communities, "seed": seed,
                       "options": {"measure": cfg.measure, "top_k": cfg.top_k, "threshold": cfg.threshold,
                                   "min_cocount": cfg.min_cocount, "active_frac": active_frac,
                                   "objective": cfg.objective, "resolution": cfg.resolution, "rows": int(rows_NT.shape[0])}})
    if cfg.dashboards:
        add_dashboards(graph, stats, rows_NT, token_str, cc=ccs if stack else ccs[0], model=model)
    add_labels(graph, read_user_labels(cfg.labels) if cfg.labels is not None else None)
    add_layout(graph, seed=seed)  # x, y, colour: communities together (stacks: by layer), the same in the page and every export
    graph.meta = json.loads(json.dumps(graph.meta, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return GraphResult(graph, stats)
