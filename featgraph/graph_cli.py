"""``featgraph graph build|communities|gates|prompt``: graphs from saved crosscoders (or SAE stacks) and tokens.

* ``build``: stream feature activations over token rows into statistics (saved beside the graph, so later
  commands need no forward pass), build the co-activation graph — one crosscoder: its features with layer
  profiles; several one-hookpoint crosscoders / SAELens SAEs: the stack graph (``L{l}/F{i}``, adjacent layers) —
  add top contexts and Leiden communities, and write ``graph.json``, ``graph.graphml``, ``graph.html``.
* ``communities``: re-cluster a graph (objective, resolution, seed), optionally sweep resolutions and measure
  stability over seeds; print per-community summaries and write them as JSON.
* ``gates``: pass-through / appearing counts per layer and AND/OR gates from saved stack statistics.
* ``prompt``: the per-prompt graph of one text: the features active on it with the dataset-wide edges among them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from crosscoder.config import resolve_device
from crosscoder.errors import FeatgraphError

__all__ = ["add_graph_parser"]


def _load_any_crosscoder(path: Path, device: str):
    """A featgraph crosscoder folder, or a SAELens SAE folder."""
    from crosscoder.io import load_crosscoder

    cfg = path / "cfg.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("format") == "featgraph.crosscoder":
        return load_crosscoder(path, device=device)
    from crosscoder.saelens import load_saelens

    return load_saelens(path, device=device)


def _write_graph(graph, out: Path, title: str) -> list[Path]:
    from .export import write_graphml, write_json
    from .html import write_html

    out.mkdir(parents=True, exist_ok=True)
    return [write_json(graph, out / "graph.json"), write_graphml(graph, out / "graph.graphml"), write_html(graph, out / "graph.html", title=title)]


def _stream(ccs, model, rows, threshold_frac: float, progress: bool):
    from crosscoder.apply import stack_feature_activations

    from .stats import CoactivationStats, feature_max

    F = sum(cc.cfg.n_features for cc in ccs)
    threshold = 0.0
    if threshold_frac > 0:
        threshold = threshold_frac * feature_max(c.f_nF for c in stack_feature_activations(ccs, model, rows))
    stats = CoactivationStats(F, threshold=threshold)
    for chunk in tqdm(stack_feature_activations(ccs, model, rows), total=-(-rows.shape[0] // 32), desc="graph stats",
                      disable=not progress, leave=False):
        stats.update(chunk.f_nF, chunk.token_index_n)
    return stats


def _build(args: argparse.Namespace) -> int:
    from analyses.data import model_and_tokens

    from .coactivation import add_layer_profiles, add_top_contexts, coactivation_graph
    from .communities import leiden
    from .crosslayer import stack_graph
    from .pipeline import token_decoder
    from .stats import save_stats

    if args.out.exists() and not args.out.is_dir():
        raise FeatgraphError(f"output path {args.out} is a file; pass --out with a folder path")
    device = resolve_device(args.device)
    ccs = [_load_any_crosscoder(p, device) for p in args.crosscoder]
    data = model_and_tokens(args.model, args.size, args.seed, device, not args.quiet)
    rows = torch.cat([data.val_NT, data.train_NT])[: args.rows]
    stats = _stream(ccs, data.model, rows, args.active_frac, not args.quiet)
    if len(ccs) == 1:
        cc = ccs[0]
        graph = coactivation_graph(stats, args.measure, args.top_k, args.threshold, args.min_cocount,
                                   decoder_FK=cc.W_dec_FLD.detach().flatten(1).cpu().numpy())
        graph.require_edges()
        add_layer_profiles(graph, cc.decoder_norms().detach().cpu().numpy(), cc.cfg.writes)
        layer_F = None
    else:
        layer_F = np.concatenate([np.full(cc.cfg.n_features, k) for k, cc in enumerate(ccs)])
        graph = stack_graph(stats, layer_F, measure=args.measure, top_k=args.top_k, threshold=args.threshold, min_cocount=args.min_cocount)
        graph.require_edges()
        graph.meta["hookpoints"] = [cc.cfg.writes[0] for cc in ccs]
        graph.set_node_attr("peak_hookpoint", [graph.meta["hookpoints"][l] for l in graph.node_attrs["layer"]])
    add_top_contexts(graph, stats, rows.numpy(), token_decoder(data.model))
    comm = leiden(graph, seed=args.seed)
    graph.set_node_attr("community", comm.membership.tolist())
    graph.meta.update({"model": args.model, "crosscoders": [str(p) for p in args.crosscoder], "modularity": comm.modularity,
                       "n_communities": comm.n_communities, "seed": args.seed})
    graph.meta = json.loads(json.dumps(graph.meta, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    paths = _write_graph(graph, args.out, f"featgraph: {graph.meta['kind']} graph of {args.model}")
    save_stats(stats, args.out / "stats", meta={"layer_F": None if layer_F is None else layer_F.tolist(),
                                                  "hookpoints": graph.meta.get("hookpoints", []), "n_rows": int(rows.shape[0])})
    print(f"{graph.meta['kind']} graph: {graph.n_nodes} nodes, {graph.n_edges} edges, {comm.n_communities} communities, "
          f"modularity {comm.modularity:.3f}, {stats.n_tokens:,} tokens")
    for p in paths + [args.out / "stats"]:
        print(f"wrote {p}")
    return 0


def _communities(args: argparse.Namespace) -> int:
    from crosscoder.io import atomic_file

    from .communities import community_summaries, leiden, louvain, resolution_sweep, stability
    from .export import read_json, write_json

    graph = read_json(args.graph)
    if args.method == "louvain":
        res = louvain(graph, resolution=args.resolution, seed=args.seed)
    else:
        res = leiden(graph, resolution=args.resolution, seed=args.seed, objective=args.objective)
    graph.set_node_attr("community", res.membership.tolist())
    print(f"{args.method} ({args.objective}, γ={args.resolution}): {res.n_communities} communities, modularity {res.modularity:.3f}")
    report: dict = {"method": args.method, "objective": args.objective, "resolution": args.resolution, "seed": args.seed,
                    "n_communities": res.n_communities, "modularity": res.modularity}
    if args.sweep:
        sweep = resolution_sweep(graph, [float(x) for x in args.sweep.split(",")], objective=args.objective, seed=args.seed)
        report["sweep"] = [r._asdict() for r in sweep]
        for r in sweep:
            print(f"  γ={r.resolution:<6g} {r.n_communities:4d} communities  modularity {r.modularity:.3f}")
    if args.stability:
        st = stability(graph, seeds=range(args.stability), objective=args.objective, resolution=args.resolution)
        report["stability"] = st._asdict()
        print("  stability over seeds: " + ", ".join(f"{k} {v:.3f}" for k, v in st._asdict().items() if isinstance(v, float)))
    summaries = community_summaries(graph, res.membership)
    report["communities"] = [json.loads(json.dumps(s._asdict(), default=str)) for s in summaries]
    for s in summaries[: args.show]:
        tokens = ", ".join(repr(t) for t, _ in s.top_tokens[:5])
        print(f"  community {s.community}: {s.size} features over {s.n_hookpoints} hookpoints, density {s.density:.3f}, "
              f"internal {100 * s.internal_fraction:.0f} %, top tokens {tokens}")
    out = Path(args.out or Path(args.graph).parent)
    out.mkdir(parents=True, exist_ok=True)
    write_json(graph, out / "graph.json")
    with atomic_file(out / "communities.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'graph.json'} and {out / 'communities.json'}")
    return 0


def _gates(args: argparse.Namespace) -> int:
    from .crosslayer import find_gates, pass_through_counts
    from .stats import load_stats

    stats, meta = load_stats(Path(args.graph_dir) / "stats")
    if meta.get("layer_F") is None:
        raise FeatgraphError("these statistics are of one crosscoder, not a stack of per-layer SAEs; build the graph from several --crosscoder folders")
    layer_F = np.asarray(meta["layer_F"])
    print(f"layer transitions at τ = {args.tau} ({args.measure}):")
    for t in pass_through_counts(stats, layer_F, args.tau, measure=args.measure):
        print("  " + ", ".join(f"{k} {v}" for k, v in t._asdict().items()))
    gates = find_gates(stats, layer_F, threshold=args.gate_threshold, min_count=args.min_count)
    print(f"{sum(g.kind == 'AND' for g in gates)} AND gates, {sum(g.kind == 'OR' for g in gates)} OR gates")
    for g in gates[: args.show]:
        print("  " + ", ".join(f"{k} {v}" for k, v in g._asdict().items()))
    return 0


def _prompt(args: argparse.Namespace) -> int:
    from analyses.data import model_and_tokens
    from crosscoder.apply import stack_feature_activations

    from .crosslayer import active_features, prompt_graph
    from .export import read_json

    device = resolve_device(args.device)
    graph = read_json(Path(args.graph_dir) / "graph.json")
    ccs = [_load_any_crosscoder(Path(p), device) for p in graph.meta["crosscoders"]]
    data = model_and_tokens(graph.meta.get("model", "embedded"), args.size, args.seed, device, not args.quiet)
    tok = data.model.tokenizer
    if tok is None:
        raise FeatgraphError("the model has no tokenizer; a per-prompt graph needs text → tokens")
    ids = tok(args.text)["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    tokens = torch.tensor([[bos] + [i for i in ids if i != bos]])
    f_TF = torch.cat([c.f_nF for c in stack_feature_activations(ccs, data.model, tokens)])
    act = active_features(f_TF.cpu().numpy(), threshold=args.min_act)
    pg = prompt_graph(graph, act.features.tolist(), activation=act.max_act, positions=act.positions)
    _write_graph(pg, args.out, f"featgraph: features active on one prompt ({pg.n_nodes} of {len(act.features)} in the graph)")
    print(f"prompt graph: {pg.n_nodes} features ({len(pg.meta['missing'])} active but not in the graph), {pg.n_edges} edges; wrote {args.out}")
    return 0


def add_graph_parser(sub) -> None:
    p = sub.add_parser("graph", help="build graphs, communities, gates and per-prompt graphs")
    cmds = p.add_subparsers(dest="graph_command", required=True)

    b = cmds.add_parser("build", help="co-activation graph of a crosscoder, or of a stack of per-layer SAEs")
    b.add_argument("--crosscoder", type=Path, action="append", required=True,
                   help="a crosscoder folder (featgraph or SAELens); repeat it for a stack of per-layer SAEs, in layer order")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--model", default="embedded")
    b.add_argument("--size", choices=["default", "tiny"], default="default")
    b.add_argument("--rows", type=int, default=600, help="token rows streamed into the statistics")
    b.add_argument("--measure", default="pearson", help="pearson, jaccard, sufficiency, necessity, mutual_information, decoder_cosine")
    b.add_argument("--top-k", dest="top_k", type=int, default=8)
    b.add_argument("--threshold", type=float, default=None, help="keep edges with weight ≥ this (with or without top-k)")
    b.add_argument("--min-cocount", dest="min_cocount", type=int, default=5, help="significance floor for rare features")
    b.add_argument("--active-frac", dest="active_frac", type=float, default=0.0,
                   help="a feature is active above this fraction of its max (0: any positive activation)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(run=_build)

    c = cmds.add_parser("communities", help="re-cluster a graph; sweep resolutions; stability over seeds")
    c.add_argument("graph", type=Path, help="a graph.json written by `graph build` or `demo`")
    c.add_argument("--method", choices=["leiden", "louvain"], default="leiden")
    c.add_argument("--objective", choices=["modularity", "cpm", "rbconfiguration"], default="modularity")
    c.add_argument("--resolution", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--sweep", default=None, help="comma-separated resolutions")
    c.add_argument("--stability", type=int, default=0, help="number of seeds for the stability check")
    c.add_argument("--show", type=int, default=10)
    c.add_argument("--out", type=Path, default=None, help="folder (default: the graph's)")
    c.set_defaults(run=_communities)

    g = cmds.add_parser("gates", help="pass-through/appearing counts and AND/OR gates of a stack graph")
    g.add_argument("graph_dir", type=Path, help="a folder written by `graph build` with several --crosscoder")
    g.add_argument("--tau", type=float, default=0.5)
    g.add_argument("--measure", default="pearson")
    g.add_argument("--gate-threshold", dest="gate_threshold", type=float, default=0.999)
    g.add_argument("--min-count", dest="min_count", type=int, default=10)
    g.add_argument("--show", type=int, default=20)
    g.set_defaults(run=_gates)

    q = cmds.add_parser("prompt", help="the per-prompt graph of one text")
    q.add_argument("graph_dir", type=Path, help="a folder written by `graph build`")
    q.add_argument("--text", required=True)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--size", choices=["default", "tiny"], default="default")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--min-act", dest="min_act", type=float, default=0.0)
    q.add_argument("--device", default="auto")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(run=_prompt)
