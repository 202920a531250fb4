"""The ``featgraph`` command line.

Flags come from the typed configs (:mod:`featgraph.configs`); studies, models and data sources are found by name in
their registries (entry points), so this module names none of them. User errors (:class:`~crosscoder.errors.FeatgraphError`) print one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Iterator

from crosscoder.data import DataConfig
from crosscoder.errors import FeatgraphError

from .cli_inputs import add_input_arguments, input_configs
from .configs import add_config_arguments, build_config, values_from_args
from .studies import STUDIES

__all__ = ["main", "build_parser"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .options import DemoConfig

    values = {**values_from_args(args, DemoConfig), "progress": not args.quiet}
    cfg = build_config(DemoConfig, values, where="featgraph demo")
    model_cfg, data_cfg = input_configs(args, {"model": {"size": cfg.size}})
    summary = run_demo(cfg, model_cfg, data_cfg)
    print("\n".join(summary.lines()))
    return 0


def _study(args: argparse.Namespace) -> int:
    from crosscoder.data import DataConfig

    study = STUDIES.get(args.study)
    values = {**values_from_args(args, study.config), "progress": not args.quiet}
    cfg = build_config(study.config, values, where=f"featgraph study {args.study}")
    data_cfg = build_config(DataConfig, values_from_args(args, DataConfig), where=f"featgraph study {args.study}")
    report = study.runner()(cfg, data=data_cfg)
    print("\n".join(study.summarise(report)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import FORMATS, export_graph, read_json

    from crosscoder.io import check_output

    suffix = FORMATS[args.format][1]
    default = args.graph.with_suffix(suffix) if suffix else args.graph.parent / "csv"  # csv: a folder
    out = check_output(args.out or default, folder=not suffix)
    graph = read_json(args.graph)
    options = {k: v for k, v in (("scan", args.scan), ("slug", args.slug)) if v is not None}
    if options and args.format != "neuronpedia":
        raise FeatgraphError(f"--scan and --slug apply to --format neuronpedia only, not {args.format}; drop them")
    written = export_graph(graph, args.format, out, **options)
    files = [p for p in written.rglob("*") if p.is_file() and not p.name.startswith(".")] if written.is_dir() else [written]
    size = sum(p.stat().st_size for p in files)
    human = f"{size:,} B" if size < 1e3 else f"{size / 1e3:.1f} kB" if size < 1e6 else f"{size / 1e6:.2f} MB"
    print(f"wrote {written} ({human}{f' in {len(files)} files' if written.is_dir() else ''})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="featgraph", description="Crosscoder feature graphs: train, connect, cluster, compare.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="end to end: model and text → crosscoder → co-activation graph → HTML (embedded default)")
    from .options import DemoConfig

    add_config_arguments(d, DemoConfig, exclude=("progress",))
    add_input_arguments(d)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(run=_demo)

    from .crosscoder_cli import add_crosscoder_parser

    add_crosscoder_parser(sub)
    from .graph_cli import add_graph_parser

    add_graph_parser(sub)
    from .interactions_cli import add_interactions_parser

    add_interactions_parser(sub)
    from .report_cli import add_report_parser

    add_report_parser(sub)
    e = sub.add_parser("export", help="write a graph.json as graphml, gexf, json, cytoscape, csv or neuronpedia")
    e.add_argument("graph", type=Path, help="a graph.json written by demo, graph build or interactions rank")
    e.add_argument("--format", required=True, choices=["graphml", "gexf", "json", "cytoscape", "csv", "neuronpedia"],
                   help="neuronpedia: attribution-graph JSON for Neuronpedia's / circuit-tracer's graph viewer")
    e.add_argument("--out", type=Path, default=None, help="file (folder for csv); default beside the graph")
    e.add_argument("--scan", default=None, help="neuronpedia: the model id the viewer knows (default: the graph's model)")
    e.add_argument("--slug", default=None, help="neuronpedia: the graph's name (default: the file name)")
    e.set_defaults(run=_export)
    s = sub.add_parser("study", help="run a registered study: " + ", ".join(STUDIES.names()))
    studies = s.add_subparsers(dest="study", required=True)
    for name, study in STUDIES.items():
        one = studies.add_parser(name, help=study.help or name)
        add_config_arguments(one, study.config, exclude=[f for f in ("progress",) if f in {x.name for x in dataclasses.fields(study.config)}])
        group = one.add_argument_group("data (for a model other than the embedded one)")
        add_config_arguments(group, DataConfig)
        one.add_argument("--quiet", action="store_true", help="no progress bars")
        one.set_defaults(run=_study)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except FeatgraphError as e:  # a plug-in (study, architecture) that breaks while its flags are made
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with _quiet_third_party(bars=not getattr(args, "quiet", False), chatter=args.verbose):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):  # libraries imported before this run: their bars off now (the env covers later imports)
        for mod, off in (("huggingface_hub", "utils.disable_progress_bars"), ("transformers", "utils.logging.disable_progress_bar"),
                         ("datasets", "disable_progress_bars")):
            if mod in sys.modules:
                _call(sys.modules[mod], off)
    try:
        return args.run(args)
    except FeatgraphError as e:
        return _fail(str(e), args.verbose)
    except OSError as e:  # permission, read-only, disk full, a missing file: the path and the fix, not a traceback
        from crosscoder.io import os_error_line

        return _fail(os_error_line(e), args.verbose)
    except MemoryError:
        return _fail("out of memory; use a smaller --size, fewer --rows/--max-tokens or a smaller batch", args.verbose)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was left half-written (rerun to start again)", file=sys.stderr)
        return 130


def _fail(message: str, verbose: bool) -> int:
    """Print the one ``error:`` line (with ``-v``, the traceback before it, for a bug report); exit status 2."""
    if verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _quiet_third_party(bars: bool, chatter: bool) -> Iterator[None]:
    """--quiet: no progress bars at all, the loading bars of transformers / huggingface_hub / datasets included; their
    warnings and info lines only with -v. Everything is put back afterwards (main() may run in a longer process)."""
    env = {k: os.environ.get(k) for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY")}
    levels = {name: logging.getLogger(name).level for name in ("transformers", "datasets", "huggingface_hub")}
    switched = []
    if not bars:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub (and so transformers) is imported
        for mod, off, on in (("huggingface_hub", "utils.disable_progress_bars", "utils.enable_progress_bars"),
                             ("transformers", "utils.logging.disable_progress_bar", "utils.logging.enable_progress_bar"),
                             ("datasets", "disable_progress_bars", "enable_progress_bars")):
            switched.append((mod, off, on))
    if not chatter:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for mod, _, on in switched:
            if mod in sys.modules:
                with warnings.catch_warnings():  # huggingface_hub imported under the variable keeps it, and says so
                    warnings.simplefilter("ignore")
                    _call(sys.modules[mod], on)


def _call(module, dotted: str) -> None:
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return
    obj()


if __name__ == "__main__":
    sys.exit(main())
