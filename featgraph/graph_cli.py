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

from crosscoder.config import resolve_device
from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_dir, check_output, record_path, resolve_recorded, strict_json

from crosscoder.sources import ModelConfig, config_record, recorded_inputs

from .cli_inputs import add_input_arguments, input_configs, load_any_crosscoder
from .configs import add_config_arguments, build_config, finite_float, float_list, int_at_least, values_from_args
from .crosslayer import SPAR_ACTIVE_FRAC
from .options import GraphConfig

__all__ = ["add_graph_parser"]


def _write_graph(graph, out: Path, title: str) -> list[str]:
    """graph.json, graph.graphml and graph.html into ``out`` (a folder being built); their names."""
    from .export import write_graphml, write_json
    from .html import write_html

    write_json(graph, out / "graph.json")
    write_graphml(graph, out / "graph.graphml")
    write_html(graph, out / "graph.html", title=title)
    return ["graph.json", "graph.graphml", "graph.html"]


def _build(args: argparse.Namespace) -> int:
    from crosscoder.sources import load_inputs, load_multi_inputs

    from .dashboards import write_feature_json
    from .pipeline import build_graph
    from .stats import save_stats

    out = check_output(args.out)  # before any work
    graph_cfg = build_config(GraphConfig, values_from_args(args, GraphConfig), where="graph build", skip_none=False)
    recorded = recorded_inputs(args.crosscoder[0])
    model_cfg, data_cfg = input_configs(args, recorded)
    seed = args.seed if args.seed is not None else recorded["seed"] or 0
    device = resolve_device(model_cfg.device)
    ccs = [load_any_crosscoder(p, device) for p in args.crosscoder]
    if ccs[0].cfg.models:  # a model crosscoder: every model it reads, on the first one's text
        if len(ccs) > 1:
            raise FeatgraphError("a model crosscoder's graph is built on its own; pass one --crosscoder")
        multi = load_multi_inputs(recorded["models"] or list(ccs[0].cfg.models), model_cfg, data_cfg, seed=seed, progress=not args.quiet)
        model, token_rows, model_name = dict(zip(multi.names, multi.models)), multi.rows, "+".join(multi.names)
    else:
        if args.side is not None:
            raise FeatgraphError("--side applies to a model crosscoder (trained with --models); drop it")
        inputs = load_inputs(model_cfg, data_cfg, seed=seed, progress=not args.quiet)
        model, token_rows, model_name = inputs.model, inputs.rows, model_cfg.model
    rows = torch.cat([token_rows.val_NT, token_rows.train_NT])[: graph_cfg.rows]
    graph, stats = build_graph(ccs, model, rows, graph_cfg, side=args.side, seed=seed, progress=not args.quiet)
    record = config_record(model_cfg, data_cfg)
    graph.meta.update({"model": model_name, "model_config": record["model"], "data_config": record["data"], "data_source": token_rows.source,
                       "crosscoders": [record_path(p, out) for p in args.crosscoder]})
    with atomic_dir(out) as tmp:  # graph, pages and statistics appear together, or the old folder stays
        names = _write_graph(graph, tmp, f"featgraph: {graph.meta['kind']} graph of {model_name}")
        write_feature_json(graph, tmp / "features.json")  # Neuronpedia-style feature dashboards
        names.append("features.json")
        save_stats(stats, tmp / "stats", meta={"layer_F": graph.meta.get("layer_F"), "hookpoints": graph.meta.get("hookpoints", []),
                                               "n_rows": int(rows.shape[0]), "active_frac": graph.meta["options"]["active_frac"]})
    print(f"{graph.meta['kind']} graph: {graph.n_nodes} nodes, {graph.n_edges} edges, {graph.meta['n_communities']} communities, "
          f"modularity {graph.meta['modularity']:.3f}, {stats.n_tokens:,} tokens")
    for name in names + ["stats"]:
        print(f"wrote {out / name}")
    return 0


def _communities(args: argparse.Namespace) -> int:
    from .communities import community_summaries, leiden, louvain, resolution_sweep, stability
    from .export import read_json, write_json

    out = check_output(args.out or Path(args.graph).parent, replace=False)
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
        sweep = resolution_sweep(graph, args.sweep, objective=args.objective, seed=args.seed)
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
    with atomic_dir(out, keep=True) as tmp:  # the folder's other files (pages, statistics) kept; the two new ones swapped in with them
        write_json(graph, tmp / "graph.json")
        (tmp / "communities.json").write_text(json.dumps(strict_json(json.loads(json.dumps(report, default=str))), indent=2, allow_nan=False))
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
    for t in pass_through_counts(stats, layer_F, args.tau, measure=args.measure, active_frac=args.active_frac):
        print("  " + ", ".join(f"{k} {v}" for k, v in t._asdict().items()))
    gates = find_gates(stats, layer_F, threshold=args.gate_threshold, min_count=args.min_count, active_frac=args.active_frac)
    print(f"{sum(g.kind == 'AND' for g in gates)} AND gates, {sum(g.kind == 'OR' for g in gates)} OR gates")
    for g in gates[: args.show]:
        print("  " + ", ".join(f"{k} {v}" for k, v in g._asdict().items()))
    return 0


def _prompt(args: argparse.Namespace) -> int:
    from crosscoder.apply import stack_feature_activations
    from crosscoder.sources import load_model_spec

    from .crosslayer import active_features, prompt_graph
    from .export import read_json
    from .pipeline import encode_prompt

    if not args.text.strip():
        raise FeatgraphError("--text is empty; pass the prompt whose features you want to see")
    out = check_output(args.out)
    graph_dir = Path(args.graph_dir)
    if not (graph_dir / "graph.json").is_file():
        raise FeatgraphError(f"{graph_dir} holds no graph.json; pass a folder written by `graph build` or `demo`")
    graph = read_json(graph_dir / "graph.json")
    if not graph.meta.get("crosscoders"):
        raise FeatgraphError(f"{graph_dir}/graph.json records no crosscoder; rebuild it with `featgraph graph build`")
    recorded = {"model": {k: v for k, v in (graph.meta.get("model_config") or {"model": graph.meta.get("model", "embedded")}).items()
                          if k != "device"}}
    model_cfg, _ = input_configs(args, recorded)
    device = resolve_device(model_cfg.device)
    ccs = [load_any_crosscoder(resolve_recorded(p, graph_dir), device) for p in graph.meta["crosscoders"]]
    seed = args.seed if args.seed is not None else graph.meta.get("seed", 0)
    model = load_model_spec(model_cfg.model, device=device, seed=seed, size=model_cfg.size, backend=model_cfg.backend,
                            progress=not args.quiet).model
    tokens = encode_prompt(model, args.text)[None]
    tok = model.tokenizer
    f_TF = torch.cat([c.f_nF for c in stack_feature_activations(ccs, model, tokens)])
    act = active_features(f_TF.cpu().numpy(), threshold=args.min_act)
    pg = prompt_graph(graph, act.features.tolist(), activation=act.max_act, positions=act.positions,
                      prompt_tokens=[tok.decode([i]) for i in tokens[0].tolist()])
    pg.meta["crosscoders"] = [record_path(resolve_recorded(p, graph_dir), out) for p in graph.meta["crosscoders"]]
    with atomic_dir(out) as tmp:
        _write_graph(pg, tmp, f"featgraph: features active on one prompt ({pg.n_nodes} of {len(act.features)} in the graph)")
    print(f"prompt graph: {pg.n_nodes} features ({len(pg.meta['missing'])} active but not in the graph), {pg.n_edges} edges; wrote {out}")
    return 0


def _attribution(args: argparse.Namespace) -> int:
    from crosscoder.sources import load_inputs

    from .attribution import AttributionConfig
    from .attribution_run import DashboardConfig, run_attribution, write_attribution
    from .export import read_json
    from .supernodes import SupernodeConfig

    if not args.text.strip():
        raise FeatgraphError("--text is empty; pass the prompt whose attribution graph you want")
    out = check_output(args.out)  # before any work
    cfg = build_config(AttributionConfig, values_from_args(args, AttributionConfig), where="graph attribution")
    sn_cfg = build_config(SupernodeConfig, values_from_args(args, SupernodeConfig), where="graph attribution")
    dash_cfg = build_config(DashboardConfig, values_from_args(args, DashboardConfig), where="graph attribution")
    sources = []
    for path in args.graph or []:
        path = Path(path) / "graph.json" if Path(path).is_dir() else Path(path)
        if not path.is_file():
            raise FeatgraphError(f"--graph {path} does not exist; pass a graph.json (or its folder) written by `graph build`")
        g = read_json(path)
        if g.meta.get("kind") == "attribution" or "feature" not in g.node_attrs:
            raise FeatgraphError(f"--graph {path} is a {g.meta.get('kind')} graph without feature indices; pass a co-activation graph "
                                 "of the same crosscoder (graph build)")
        built_from = [resolve_recorded(p, path.parent).resolve() for p in g.meta.get("crosscoders") or []]
        if built_from and Path(args.crosscoder).resolve() not in built_from:
            raise FeatgraphError(f"--graph {path} was built from {built_from[0]}, not {args.crosscoder}; its features are another "
                                 "dictionary's — pass a graph of this crosscoder")
        sources.append(g)

    def check_clt(cc) -> None:
        if cc.cfg.layout != "clt":
            raise FeatgraphError(f"{args.crosscoder} is a {cc.cfg.layout} crosscoder; attribution graphs need a cross-layer transcoder "
                                 "(featgraph crosscoder train --architecture clt)")

    recorded = recorded_inputs(args.crosscoder)
    model_cfg, data_cfg = input_configs(args, recorded)
    device = resolve_device(model_cfg.device)
    cc = load_any_crosscoder(args.crosscoder, device)
    check_clt(cc)
    seed = args.seed if args.seed is not None else recorded["seed"] or 0
    rows = None
    if dash_cfg.dashboard_rows > 0:
        inputs = load_inputs(model_cfg, data_cfg, seed=seed, progress=not args.quiet)
        model, rows = inputs.model, inputs.rows.val_NT
    else:
        from crosscoder.sources import load_model_spec

        model = load_model_spec(model_cfg.model, device=device, seed=seed, size=model_cfg.size, backend=model_cfg.backend,
                                progress=not args.quiet).model
    from crosscoder.apply import check_compatible

    check_compatible(cc, model, where=f"crosscoder {args.crosscoder}")
    run = run_attribution(model, cc, args.text, cfg, sn_cfg, dash_cfg, targets=args.target, rows_NT=rows, sources=sources,
                          merge=not args.no_merge, seed=seed, progress=not args.quiet)
    run.graph.meta.update({"model": model_cfg.model, "crosscoders": [record_path(args.crosscoder, out)]})
    written = write_attribution(run, out)
    fg, ag = run.graph, run.attribution
    kinds = fg.node_attrs["kind"]
    print(f"attribution graph of {len(fg.meta['prompt_tokens'])} tokens: kept {kinds.count('feature')} of {ag.n_features} features, "
          f"{kinds.count('error')} error nodes, {fg.n_edges} edges; replacement score {ag.replacement_score:.3f}, completeness "
          f"{ag.completeness_score:.3f}; {len(run.supernodes.sizes)} supernodes ({sum(run.seconds.values()):.1f} s)")
    for target, effects in list(run.effects.items())[:1]:
        i = fg.index(target)
        print(f"  target {fg.node_attrs['token_text'][i]!r} (p={fg.node_attrs['activation'][i]:.3f}): "
              + "; ".join(f"{e.label} {100 * e.influence_share:.0f} %" for e in effects[:5]))
    for path in written:
        print(f"wrote {path}")
    return 0


def add_graph_parser(sub) -> None:
    p = sub.add_parser("graph", help="build graphs, communities, gates and per-prompt graphs")
    cmds = p.add_subparsers(dest="graph_command", required=True)

    b = cmds.add_parser("build", help="co-activation graph of a crosscoder, or of a stack of per-layer SAEs, on a model's text")
    b.add_argument("--crosscoder", type=Path, action="append", required=True,
                   help="a crosscoder folder (featgraph or SAELens); repeat it for a stack of per-layer SAEs, in layer order")
    b.add_argument("--out", type=Path, required=True)
    add_config_arguments(b.add_argument_group("graph"), GraphConfig)
    b.add_argument("--side", default=None, help="model crosscoder: encode only this model's activations (default: every model jointly)")
    add_input_arguments(b)
    b.add_argument("--seed", type=int, default=None,
                   help="seed of the communities, the model provider and the data split (default: the crosscoder's, else 0)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(run=_build)

    c = cmds.add_parser("communities", help="re-cluster a graph; sweep resolutions; stability over seeds")
    c.add_argument("graph", type=Path, help="a graph.json written by `graph build` or `demo`")
    c.add_argument("--method", choices=["leiden", "louvain"], default="leiden")
    c.add_argument("--objective", choices=["modularity", "cpm", "rbconfiguration"], default="modularity")
    c.add_argument("--resolution", type=finite_float, default=1.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--sweep", type=float_list, default=None, help="comma-separated resolutions")
    c.add_argument("--stability", type=int_at_least(0), default=0, help="number of seeds for the stability check")
    c.add_argument("--show", type=int_at_least(0), default=10)
    c.add_argument("--out", type=Path, default=None, help="folder (default: the graph's)")
    c.set_defaults(run=_communities)

    g = cmds.add_parser("gates", help="pass-through/appearing counts and AND/OR gates of a stack graph")
    g.add_argument("graph_dir", type=Path, help="a folder written by `graph build` with several --crosscoder")
    g.add_argument("--tau", type=finite_float, default=0.5)
    g.add_argument("--measure", default="pearson")
    g.add_argument("--gate-threshold", dest="gate_threshold", type=finite_float, default=0.999)
    g.add_argument("--min-count", dest="min_count", type=int_at_least(1), default=10)
    g.add_argument("--show", type=int_at_least(0), default=20)
    g.add_argument("--active-frac", dest="active_frac", type=finite_float, default=SPAR_ACTIVE_FRAC,
                   help="the activity rule the statistics were built with: active above this fraction of the feature's max "
                        "(default 0.2, spar-2024's rule and `graph build`'s default for stacks; 0 = any positive activation)")
    g.set_defaults(run=_gates)

    q = cmds.add_parser("prompt", help="the per-prompt graph of one text")
    q.add_argument("graph_dir", type=Path, help="a folder written by `graph build`")
    q.add_argument("--text", required=True)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--seed", type=int, default=None, help="seed of the model provider (default: the graph's)")
    q.add_argument("--min-act", dest="min_act", type=finite_float, default=0.0)
    add_config_arguments(q.add_argument_group("model (default: the graph's)"), ModelConfig)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(run=_prompt)

    from .attribution import AttributionConfig
    from .attribution_run import DashboardConfig
    from .supernodes import SupernodeConfig

    a = cmds.add_parser("attribution", help="the attribution graph of one prompt through a cross-layer transcoder, with supernodes "
                                            "(graph.json, graph.html, graph.neuronpedia.json)")
    a.add_argument("--crosscoder", type=Path, required=True, help="a cross-layer transcoder folder (crosscoder train --architecture clt)")
    a.add_argument("--text", required=True, help="the prompt (BOS is prepended)")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--target", action="append", default=None,
                   help="an output token to attribute at the last position, as text (one token, e.g. ' cat'); repeat for several "
                        "(default: the most likely tokens)")
    a.add_argument("--graph", type=Path, action="append", default=None,
                   help="a co-activation graph.json (or its folder) of the same crosscoder from `graph build`: dashboards from it, "
                        "its edges joined into the supernodes; repeat for several")
    a.add_argument("--no-merge", dest="no_merge", action="store_true", help="take only dashboards from --graph, not its edges")
    add_config_arguments(a.add_argument_group("attribution"), AttributionConfig)
    add_config_arguments(a.add_argument_group("supernodes"), SupernodeConfig)
    add_config_arguments(a.add_argument_group("dashboards"), DashboardConfig)
    add_input_arguments(a)
    a.add_argument("--seed", type=int, default=None, help="seed of the supernodes and the data split (default: the crosscoder's, else 0)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(run=_attribution)
