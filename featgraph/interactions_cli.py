"""``featgraph interactions rank``: rank feature pairs by how they interact through an MLP or an attention head.

Site → method: ``blocks.N.ln2.hook_normalized`` or ``blocks.N.hook_resid_mid`` → MLP interactions (compact
proofs: I(i*, j) through the neurons' nonlinearity); ``blocks.N.ln1.hook_normalized`` → data-weighted QK
interactions (``--kind ov`` for OV writes into a later hookpoint the crosscoder reads). Prints the top pairs with
their score, dominant share and top shared contexts, and the tokens with the highest total interaction; writes
CSV, JSON and the interaction graph (JSON, GraphML, HTML). ``--check-pairs P`` runs the empirical second-order
ablation Δ² on P pairs and reports the Spearman correlation with the analytic scores.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from crosscoder.config import resolve_device
from crosscoder.errors import FeatgraphError

from crosscoder.sources import recorded_inputs

from .cli_inputs import add_input_arguments, input_configs, load_any_crosscoder
from .configs import int_at_least

__all__ = ["add_interactions_parser", "site_kind"]


def site_kind(site: str, kind: str | None) -> tuple[str, int]:
    """(mlp | qk | ov, layer) for a site hookpoint; a clear error for anything else."""
    m = re.match(r"^blocks\.(\d+)\.(ln2\.hook_normalized|hook_resid_mid|ln1\.hook_normalized)$", site)
    if m is None:
        raise FeatgraphError(
            f"unknown interaction site {site!r}; use blocks.N.ln2.hook_normalized or blocks.N.hook_resid_mid (MLP input) "
            "or blocks.N.ln1.hook_normalized (attention input)"
        )
    layer, what = int(m.group(1)), m.group(2)
    natural = "qk" if what.startswith("ln1") else "mlp"
    kind = kind or natural
    if (kind == "mlp") != (natural == "mlp"):
        raise FeatgraphError(f"--kind {kind} needs an {'MLP' if kind == 'mlp' else 'attention'}-input site, not {site!r}")
    return kind, layer


def _contexts(cc, model, rows, pairs: np.ndarray, token_str, n: int = 2, window: int = 6):
    """Per pair (i, j): the ``n`` tokens with the largest f_i·f_j, as 'left[token]right' strings, and their token indices."""
    from crosscoder.apply import feature_activations

    T = rows.shape[1]
    best_val = np.full((len(pairs), n), -np.inf)
    best_idx = np.full((len(pairs), n), -1, dtype=np.int64)
    both_idx: list[list[int]] = [[] for _ in pairs]
    for chunk in feature_activations(cc, model, rows):
        f = chunk.f_nF.detach().cpu().numpy()
        prod = f[:, pairs[:, 0]] * f[:, pairs[:, 1]]  # (n_tok, P)
        for p in np.flatnonzero((prod > 0).any(axis=0)):
            hit = np.flatnonzero(prod[:, p] > 0)
            both_idx[p].extend(chunk.token_index_n[hit].tolist())
        vals = np.concatenate([best_val, prod.T], axis=1)
        idx = np.concatenate([best_idx, np.broadcast_to(chunk.token_index_n.numpy(), prod.T.shape)], axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")[:, :n]
        best_val, best_idx = np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
    texts = []
    for vals, idxs in zip(best_val, best_idx):
        ctx = []
        for v, t in zip(vals, idxs):
            if v > 0 and t >= 0:
                ctx.append(_context(rows, int(t), T, token_str, window))
        texts.append(ctx)
    return texts, both_idx


def _context(rows, t: int, T: int, token_str, window: int) -> str:
    row, pos = divmod(t, T)
    left = "".join(token_str(int(x)) for x in rows[row, max(1, pos - window) : pos])
    right = "".join(token_str(int(x)) for x in rows[row, pos + 1 : pos + 1 + window // 2])
    return f"{left}[{token_str(int(rows[row, pos]))}]{right}"


def _mlp_kind(site: str) -> str:
    return "resid_mid" if site.endswith("hook_resid_mid") else "normalized"


def _mlp_scores(cc, model, rows, layer, site, progress):
    from .mlp_interactions import mlp_interactions

    res = mlp_interactions(cc, model, rows, layer, progress=progress, kind=_mlp_kind(site))
    return res.interaction.tocsr(), res


def _rank(args: argparse.Namespace) -> int:
    from crosscoder.io import atomic_dir, check_output, strict_json
    from crosscoder.sources import load_inputs

    from .export import write_graphml, write_json
    from .html import write_html
    from .interaction_graph import interaction_graph
    from .pipeline import token_decoder

    kind, layer = site_kind(args.site, args.kind)
    out = check_output(args.out)  # before any work
    if args.merge_with is not None and not Path(args.merge_with).is_file():
        raise FeatgraphError(f"--merge-with {args.merge_with} is not a file; pass a graph.json written by `graph build` or `demo`")
    recorded = recorded_inputs(args.crosscoder)
    model_cfg, data_cfg = input_configs(args, recorded)
    device = resolve_device(model_cfg.device)
    cc = load_any_crosscoder(args.crosscoder, device)
    if args.seed is None:
        args.seed = recorded["seed"] or 0
    data = load_inputs(model_cfg, data_cfg, seed=args.seed, progress=not args.quiet)
    rows = torch.cat([data.rows.val_NT, data.rows.train_NT])[: args.rows]
    token_str = token_decoder(data.model)
    F = cc.cfg.n_features
    token_total = token_index = share_tok = None
    if kind == "mlp":
        I, res = _mlp_scores(cc, data.model, rows, layer, args.site, not args.quiet)
        token_total, token_index, share_tok = res.token_total, res.token_index, res.dominant_share_per_token
    elif kind == "qk":
        from .attention_interactions import qk_interactions

        res = qk_interactions(cc, data.model, rows, layer)
        I = res.abs_full(F).cpu().numpy()
        tt = res.token_total_NT.cpu().numpy()
        token_index = np.arange(tt.size)
        token_total = tt.ravel()
    else:
        from .attention_interactions import attention_site, ov_interactions

        site = attention_site(data.model, cc, layer)
        read = args.read_hookpoint or next((h for h in cc.cfg.hookpoints if _later(h, layer)), None)
        if read is None:
            raise FeatgraphError(f"--kind ov needs a hookpoint after layer {layer}'s attention that the crosscoder reads; pass --read-hookpoint")
        I = ov_interactions(cc, site, read).abs().sum(0).cpu().numpy()
    C = sp.coo_matrix(I)
    off = C.row != C.col
    order = np.argsort(-C.data[off], kind="stable")[: args.top]
    pairs = np.c_[C.row[off][order], C.col[off][order]].astype(np.int64)
    scores = C.data[off][order]
    if kind == "mlp":  # both features act on the same token: show where they co-fire most
        contexts, both = _contexts(cc, data.model, rows, pairs, token_str) if len(pairs) else ([], [])
    else:  # query/key (or key/downstream) features sit at different positions: show each one's top context
        ctx_a, _ = _contexts(cc, data.model, rows, np.c_[pairs[:, 0], pairs[:, 0]], token_str, n=1)
        ctx_b, _ = _contexts(cc, data.model, rows, np.c_[pairs[:, 1], pairs[:, 1]], token_str, n=1)
        contexts = [[f"source: {a[0]}" if a else "", f"target: {b[0]}" if b else ""] for a, b in zip(ctx_a, ctx_b)]
    share = {}
    if share_tok is not None:
        lookup = dict(zip(token_index.tolist(), share_tok.tolist()))
        share = {p: float(np.nanmean([lookup[t] for t in both[p] if t in lookup])) if both[p] else float("nan") for p in range(len(pairs))}
    records = [{"rank": r + 1, "source": f"F{a}", "target": f"F{b}", "score": float(s), "dominant_share": share.get(r),
                "contexts": contexts[r]} for r, (a, b, s) in enumerate(zip(pairs[:, 0], pairs[:, 1], scores))]
    print(f"{kind} interactions at {args.site} ({rows.shape[0]} rows): top {len(records)} of {int(off.sum())} pairs")
    print(f"{'rank':>4}  {'pair':<14} {'score':>10}  {'dom.share':>9}  top shared context")
    for r in records[: args.show]:
        ds = "" if r["dominant_share"] is None else f"{r['dominant_share']:.2f}"
        ctx = r["contexts"][0] if r["contexts"] else ""
        print(f"{r['rank']:>4}  {r['source'] + '→' + r['target']:<14} {r['score']:>10.4g}  {ds:>9}  {ctx!r}")
    top_tokens = []
    if token_total is not None and len(token_total):
        T = rows.shape[1]
        for t in np.argsort(-token_total, kind="stable")[: args.show_tokens]:
            top_tokens.append({"token_index": int(token_index[t]), "total": float(token_total[t]),
                               "context": _context(rows, int(token_index[t]), T, token_str, 8)})
        print("tokens with the highest total interaction:")
        for t in top_tokens:
            print(f"  {t['total']:>10.4g}  {t['context']!r}")
    report = {"site": args.site, "kind": kind, "layer": layer, "rows": int(rows.shape[0]), "pairs": records, "top_tokens": top_tokens}
    if args.check_pairs and kind == "mlp":
        report["check"] = _check(cc, data.model, rows, layer, I, args.check_pairs, args.seed, _mlp_kind(args.site))
        print(f"empirical check: Spearman(analytic, Δ²) = {report['check']['spearman']:.3f} over {report['check']['n_pairs']} pairs")
    graph = interaction_graph(I, kind, top_k=args.graph_top_k, meta={"site": args.site})
    merged = None
    if args.merge_with is not None:
        from .export import read_json
        from .interaction_graph import merge_graphs

        merged = merge_graphs(read_json(args.merge_with), graph)
    with atomic_dir(out) as tmp:  # tables, graph and pages appear together, or the old folder stays
        (tmp / "interactions.json").write_text(json.dumps(strict_json(report), indent=2, allow_nan=False))
        with open(tmp / "interactions.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["rank", "source", "target", "score", "dominant_share", "top_context"])
            for r in records:
                w.writerow([r["rank"], r["source"], r["target"], r["score"], r["dominant_share"], r["contexts"][0] if r["contexts"] else ""])
        if graph.n_edges:
            graph.set_node_attr("community", [0] * graph.n_nodes)
            write_json(graph, tmp / "graph.json")
            write_graphml(graph, tmp / "graph.graphml")
            write_html(graph, tmp / "graph.html", title=f"featgraph: {kind} interactions at {args.site}")
        if merged is not None:
            write_json(merged, tmp / "merged.json")
            write_graphml(merged, tmp / "merged.graphml")
    if merged is not None:
        print(f"merged with {args.merge_with}: {merged.n_nodes} nodes, {merged.n_edges} typed edges")
    print(f"wrote {out}/interactions.json, interactions.csv" + (", graph.*" if graph.n_edges else " (no edges above the cut: no graph)"))
    return 0


def _later(hookpoint: str, layer: int) -> bool:
    m = re.match(r"^blocks\.(\d+)\.(.*)$", hookpoint)
    return m is not None and (int(m.group(1)) > layer or (int(m.group(1)) == layer and not m.group(2).startswith(("ln1", "hook_resid_pre"))))


def _check(cc, model, rows, layer, I, n_pairs: int, seed: int, kind: str) -> dict:
    """Δ² on n_pairs pairs (half the strongest, half drawn at random among the rest with a nonzero score)."""
    from .mlp_interactions import delta2_mlp, spearman

    S = sp.csr_matrix(I)
    S = (S + S.T).tocoo()  # the analytic score of an unordered pair: I(i, j) + I(j, i)
    upper = S.row < S.col
    r, c, v = S.row[upper], S.col[upper], S.data[upper]
    order = np.argsort(-v, kind="stable")
    top = order[: n_pairs // 2]
    rest = order[n_pairs // 2 :]
    rng = np.random.default_rng(seed)
    pick = np.r_[top, rng.choice(rest, size=min(len(rest), n_pairs - len(top)), replace=False)] if len(rest) else top
    pairs = np.c_[r[pick], c[pick]]
    d2 = delta2_mlp(model, cc, layer, rows, pairs, kind=kind)
    ok = np.isfinite(d2.delta2) & (d2.n_tokens > 0)
    return {"n_pairs": int(ok.sum()), "spearman": spearman(v[pick][ok], d2.delta2[ok]),
            "pairs": pairs[ok].tolist(), "analytic": v[pick][ok].tolist(), "delta2": d2.delta2[ok].tolist()}


def add_interactions_parser(sub) -> None:
    p = sub.add_parser("interactions", help="rank nonlinear feature interactions through MLPs and attention")
    cmds = p.add_subparsers(dest="interactions_command", required=True)
    r = cmds.add_parser("rank", help="the top interacting feature pairs at one site")
    r.add_argument("--crosscoder", type=Path, required=True, help="a crosscoder with a decoder at the site")
    r.add_argument("--site", required=True, help="blocks.N.ln2.hook_normalized | blocks.N.hook_resid_mid | blocks.N.ln1.hook_normalized")
    r.add_argument("--kind", choices=["mlp", "qk", "ov"], default=None, help="default: mlp for MLP sites, qk for attention sites")
    r.add_argument("--read-hookpoint", dest="read_hookpoint", default=None, help="ov: the downstream hookpoint the crosscoder reads")
    r.add_argument("--top", type=int_at_least(1), default=50)
    r.add_argument("--show", type=int_at_least(0), default=20, help="rows of the printed table")
    r.add_argument("--show-tokens", dest="show_tokens", type=int_at_least(0), default=10)
    r.add_argument("--graph-top-k", dest="graph_top_k", type=int_at_least(1), default=5)
    r.add_argument("--check-pairs", dest="check_pairs", type=int_at_least(0), default=0, help="Δ² check on this many pairs (MLP sites)")
    r.add_argument("--merge-with", dest="merge_with", type=Path, default=None,
                   help="a co-activation graph.json to merge with into one typed multigraph (merged.json, merged.graphml)")
    add_input_arguments(r)
    r.add_argument("--rows", type=int_at_least(1), default=200, help="token rows the interactions are accumulated over (default: 200)")
    r.add_argument("--seed", type=int, default=None, help="seed of the model provider, the data split and the Δ² pairs (default: the crosscoder's, else 0)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(run=_rank)
