"""One prompt's attribution graph, end to end: the graph (:mod:`featgraph.attribution`), feature dashboards, supernodes
(:mod:`featgraph.supernodes`) and what each supernode carries to the target logits; written as ``graph.json``, the page
``graph.html``, ``graph.neuronpedia.json`` and ``attribution.json``. ``featgraph graph attribution`` and the Python API
(:func:`run_attribution`, :func:`write_attribution`) share it.

Dashboards. Each feature node gets ``top_contexts`` (its strongest activations over token rows of the data, as the
co-activation pages show them), ``top_logits`` / ``bottom_logits`` (the logit lens of its decoder at the last MLP it
writes) and a ``label`` from its top contexts. Given co-activation graphs of the same crosscoder (``graph build``),
their dashboards are taken as they are instead, and their edges can join the supernodes (``merge``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_dir, strict_json

from .attribution import AttributionConfig, AttributionGraph, attribution_graph
from .graph import FeatureGraph
from .supernodes import SupernodeConfig, SupernodeEffect, SupernodeResult, find_supernodes, supernode_effects

__all__ = ["AttributionRun", "DashboardConfig", "add_attribution_dashboards", "run_attribution", "target_token_ids", "write_attribution"]

log = logging.getLogger(__name__)

DASHBOARD_ATTRS = ("top_contexts", "top_logits", "bottom_logits", "max_act", "density", "act_histogram", "quantile_examples",
                   "frequency", "label")
"""Node attributes a feature's dashboard is made of (taken from a co-activation graph when one is given)."""


@dataclass
class DashboardConfig:
    """Where the feature dashboards of an attribution graph come from."""

    dashboard_rows: int = 64
    """Token rows of the data scanned for each feature's top contexts (0: none, labels stay ids)."""
    n_contexts: int = 4
    """Top contexts per feature."""
    logit_k: int = 8
    """Promoted and suppressed output tokens per feature (the logit lens; 0: none)."""

    def __post_init__(self) -> None:
        if self.dashboard_rows < 0 or self.n_contexts < 1 or self.logit_k < 0:
            raise FeatgraphError("dashboard_rows and logit_k must be ≥ 0 and n_contexts ≥ 1, got "
                                 f"{self.dashboard_rows}, {self.logit_k} and {self.n_contexts}")


class AttributionRun(NamedTuple):
    attribution: AttributionGraph  # the full graph (dense adjacency, pruning, scores)
    graph: FeatureGraph            # the pruned graph with dashboards and supernodes
    supernodes: SupernodeResult
    effects: dict[str, list[SupernodeEffect]]  # logit node id → what each supernode carries to it
    seconds: dict[str, float]


def target_token_ids(model, targets: Sequence[str]) -> list[int]:
    """Token ids of output texts (each must be one token, e.g. ``" cat"``)."""
    tok = model.tokenizer
    if tok is None:
        raise FeatgraphError("the model has no tokenizer, so target texts cannot be tokenised; give token ids instead")
    ids = []
    for text in targets:
        got = tok(text, add_special_tokens=False)["input_ids"]
        if len(got) != 1:
            raise FeatgraphError(f"target {text!r} is {len(got)} tokens for this tokenizer; give one token (mind the leading space)")
        ids.append(int(got[0]))
    return ids


@torch.no_grad()
def _top_contexts(cc, model, rows_NT: torch.Tensor, features: np.ndarray, token_str: Callable[[int], str], n: int) -> list[list[dict]]:
    from crosscoder.apply import feature_activations

    from .coactivation import token_context

    feats = torch.as_tensor(features, dtype=torch.long, device=cc.device)
    best_v = torch.full((len(feats), n), -1.0, device=cc.device)
    best_i = torch.full((len(feats), n), -1, dtype=torch.long, device=cc.device)
    for chunk in feature_activations(cc, model, rows_NT):
        v_nG = chunk.f_nF[:, feats]
        v = torch.cat([best_v, v_nG.T], dim=1)
        i = torch.cat([best_i, chunk.token_index_n.to(cc.device)[None].expand(len(feats), -1)], dim=1)
        best_v, top = v.topk(min(n, v.shape[1]), dim=1)
        best_i = i.gather(1, top)
    tokens = rows_NT.cpu().numpy()
    return [[token_context(tokens, int(j), float(x), token_str) for x, j in zip(vs, js) if j >= 0 and x > 0]
            for vs, js in zip(best_v.cpu().tolist(), best_i.cpu().tolist())]


def add_attribution_dashboards(graph: FeatureGraph, cc, model, token_str: Callable[[int], str], rows_NT: torch.Tensor | None = None,
                               sources: Sequence[FeatureGraph] = (), cfg: DashboardConfig | None = None) -> None:
    """Dashboards of the feature nodes (module docstring): from ``sources`` (co-activation graphs of the same
    crosscoder; their nodes matched by ``feature``) where they have the feature, else computed from ``rows_NT``."""
    from .dashboards import _logit_list, logit_lens
    from .labels import feature_label

    cfg = cfg or DashboardConfig()
    is_feat = [k == "feature" for k in graph.node_attrs["kind"]]
    feat_of = [int(f) if ok else -1 for f, ok in zip(graph.node_attrs["feature"], is_feat)]
    wanted = sorted({f for f in feat_of if f >= 0})
    found: dict[int, dict[str, Any]] = {}
    for src in sources:
        index = src.node_attrs.get("feature")
        if index is None:
            continue
        for i, f in enumerate(index):
            if f is not None and int(f) in wanted and int(f) not in found:
                found[int(f)] = {k: src.node_attrs[k][i] for k in DASHBOARD_ATTRS if k in src.node_attrs}
    rest = np.asarray([f for f in wanted if f not in found], dtype=np.int64)
    if len(rest) and rows_NT is not None and cfg.dashboard_rows > 0:
        contexts = _top_contexts(cc, model, rows_NT[: cfg.dashboard_rows], rest, token_str, cfg.n_contexts)
        for f, ctx in zip(rest.tolist(), contexts):
            found.setdefault(f, {})["top_contexts"] = ctx
    if len(rest) and cfg.logit_k > 0:
        lens = logit_lens(cc, model, cfg.logit_k, features=rest)
        for g, f in enumerate(rest.tolist()):
            d = found.setdefault(f, {})
            d["top_logits"] = _logit_list(lens.top_ids_GK[g], lens.top_vals_GK[g], token_str)
            d["bottom_logits"] = _logit_list(lens.bottom_ids_GK[g], lens.bottom_vals_GK[g], token_str)
    names = sorted({k for d in found.values() for k in d if k != "label"})
    for name in names:
        graph.set_node_attr(name, [found.get(f, {}).get(name) if f >= 0 else None for f in feat_of])
    labels = list(graph.node_attrs["label"])
    for i, f in enumerate(feat_of):
        if f < 0:
            continue
        text = found.get(f, {}).get("label") or feature_label(found.get(f, {}).get("top_contexts"))
        if text:
            labels[i] = f"{text}"
    graph.set_node_attr("label", labels)


def run_attribution(model, cc, prompt: str | torch.Tensor, cfg: AttributionConfig | None = None,
                    supernode_cfg: SupernodeConfig | None = None, dashboard_cfg: DashboardConfig | None = None,
                    targets: Sequence[str] | Sequence[int] | None = None, rows_NT: torch.Tensor | None = None,
                    sources: Sequence[FeatureGraph] = (), merge: bool = True, seed: int = 0,
                    token_str: Callable[[int], str] | None = None, progress: bool = False) -> AttributionRun:
    """The attribution graph of ``prompt`` (text, or token ids with BOS first) through the CLT ``cc``, pruned, with
    dashboards (from ``sources`` or ``rows_NT``) and supernodes (seeded by ``seed``; ``sources``' edges merged in
    when ``merge``), and each supernode's effect on every target logit. ``targets``: output tokens to attribute
    (texts or ids); default the most likely ones."""
    from .pipeline import encode_prompt, token_decoder

    cfg, supernode_cfg = cfg or AttributionConfig(), supernode_cfg or SupernodeConfig()
    token_str = token_str or token_decoder(model)
    tokens_T = encode_prompt(model, prompt) if isinstance(prompt, str) else torch.as_tensor(prompt, dtype=torch.long)
    ids = None
    if targets:
        ids = [int(t) for t in targets] if all(isinstance(t, (int, np.integer)) for t in targets) else target_token_ids(model, targets)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    ag = attribution_graph(model, cc, tokens_T, cfg.max_logits, cfg.logit_probability, cfg.batch_size, cfg.node_threshold,
                           cfg.edge_threshold, cfg.zero_bos, logit_tokens=ids, progress=progress)
    seconds["attribution"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fg = ag.to_feature_graph(token_str)
    add_attribution_dashboards(fg, cc, model, token_str, rows_NT, sources, dashboard_cfg)
    seconds["dashboards"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sn = find_supernodes(fg, supernode_cfg.resolution, seed, supernode_cfg.objective, supernode_cfg.min_size,
                         extra=list(sources) if merge else (), extra_weight=supernode_cfg.extra_weight)
    effects = {nid: supernode_effects(fg, nid) for nid, k in zip(fg.node_ids, fg.node_attrs["kind"]) if k == "logit"}
    seconds["supernodes"] = time.perf_counter() - t0
    fg.meta.update({"seed": seed, "supernode_config": asdict(supernode_cfg)})
    log.info("attribution graph: %d of %d nodes kept, %d edges, %d supernodes (%.1f s)", fg.n_nodes, len(ag.nodes), fg.n_edges,
             len(sn.sizes), sum(seconds.values()))
    return AttributionRun(ag, fg, sn, effects, seconds)


def summary(run: AttributionRun) -> dict[str, Any]:
    """attribution.json: scores, sizes, the target logits and what each supernode carries to them."""
    fg, ag = run.graph, run.attribution
    kinds = fg.node_attrs["kind"]
    return strict_json({
        "prompt": fg.meta["prompt"], "prompt_tokens": fg.meta["prompt_tokens"],
        "replacement_score": ag.replacement_score, "completeness_score": ag.completeness_score,
        "nodes": {k: kinds.count(k) for k in ("feature", "error", "embedding", "logit")}, "edges": fg.n_edges,
        "unpruned_nodes": fg.meta["n_nodes_unpruned"],
        "targets": [{"id": nid, "token": fg.node_attrs["token_text"][i], "probability": fg.node_attrs["activation"][i]}
                    for i, nid in enumerate(fg.node_ids) if kinds[i] == "logit"],
        "supernodes": [{"id": k, "label": run.supernodes.labels[k], "size": s} for k, s in enumerate(run.supernodes.sizes)],
        "effects": {t: [e._asdict() for e in es] for t, es in run.effects.items()},
        "seconds": {k: round(v, 3) for k, v in run.seconds.items()},
        "config": fg.meta["attribution_config"], "supernode_config": fg.meta.get("supernode_config"),
    })


def write_attribution(run: AttributionRun, out: str | Path, title: str | None = None, scan: str | None = None) -> list[Path]:
    """``out``/graph.json, graph.html, graph.neuronpedia.json and attribution.json, written together (the folder is
    built under a temporary name and swapped in)."""
    from .attribution_page import write_attribution_html
    from .export import write_json, write_neuronpedia

    out = Path(out)
    title = title or f"attribution graph: {run.graph.meta['prompt']!r}"
    names = ["graph.json", "graph.html", "graph.neuronpedia.json", "attribution.json"]
    with atomic_dir(out) as tmp:
        write_json(run.graph, tmp / "graph.json")
        write_attribution_html(run.graph, tmp / "graph.html", title=title)
        write_neuronpedia(run.graph, tmp / "graph.neuronpedia.json", scan=scan)
        (tmp / "attribution.json").write_text(json.dumps(summary(run), indent=2, allow_nan=False))
    return [out / n for n in names]
