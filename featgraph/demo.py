"""The demo: model → activations → crosscoder → co-activation graph → communities → HTML, GraphML, JSON.

``run_demo(DemoConfig(...), ModelConfig(...), DataConfig(...))`` is what ``featgraph demo`` runs. On the embedded
default (model and corpus from the ``embedded`` providers) it needs no network; with another model and ``--data``
it runs the same path on that model and text. It is a thin composition of the one fit path
(:func:`crosscoder.fitting.fit`) and the one graph builder (:func:`featgraph.pipeline.build_graph`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from crosscoder.apply import check_compatible
from crosscoder.config import CrosscoderConfig, TrainConfig, default_hookpoints, resolve_device
from crosscoder.data import DataConfig
from crosscoder.errors import FeatgraphError
from crosscoder.fitting import FitConfig, fit
from crosscoder.io import atomic_dir, check_output, load_crosscoder, record_path, save_crosscoder, strict_json
from crosscoder.metrics import evaluate
from crosscoder.sources import ModelConfig, config_record, load_inputs


from .dashboards import write_feature_json
from .export import write_graphml, write_json
from .html import write_html
from .options import SIZES, DemoConfig, GraphConfig
from .pipeline import build_graph

__all__ = ["DemoConfig", "DemoSummary", "run_demo", "SIZES"]

log = logging.getLogger(__name__)

PAGE_BYTES = 50_000_000
"""Room checked for the pages and graph files of one run (a generous bound at the default sizes)."""


@dataclass
class DemoSummary:
    model: str
    model_val_loss: float | None
    unigram_val_loss: float | None
    fvu_pooled: float
    fvu_per_hookpoint: list[float]
    l0: float
    dead_fraction: float
    ce_loss_recovered: list[float]
    n_nodes: int
    n_edges: int
    n_communities: int
    modularity: float
    seconds: float
    paths: dict[str, str]

    def lines(self) -> list[str]:
        loss = "n/a" if self.model_val_loss is None else f"{self.model_val_loss:.3f} nats/token (unigram baseline {self.unigram_val_loss:.3f})"
        return [
            f"model          {self.model}: val loss {loss}",
            f"crosscoder     FVU pooled {self.fvu_pooled:.3f} (per hookpoint {', '.join(f'{v:.3f}' for v in self.fvu_per_hookpoint)}), "
            f"L0 {self.l0:.1f}, dead {100 * self.dead_fraction:.1f} %",
            f"splice-in      CE loss recovered {', '.join(f'{v:.3f}' for v in self.ce_loss_recovered)} (per hookpoint)",
            f"graph          {self.n_nodes} nodes, {self.n_edges} edges, {self.n_communities} communities, modularity {self.modularity:.3f}",
            f"time           {self.seconds:.0f} s",
            *[f"wrote          {name:<11} {p}" for name, p in self.paths.items()],
        ]


def run_demo(cfg: DemoConfig, model_cfg: ModelConfig | None = None, data_cfg: DataConfig | None = None) -> DemoSummary:
    """Model and text → crosscoder (trained, or ``cfg.crosscoder``) → graph → files in ``cfg.out``; the summary."""
    t0 = time.perf_counter()
    out = check_output(cfg.out, need_bytes=PAGE_BYTES)  # before any work: a folder we can write, with room for the pages
    if cfg.crosscoder is not None and not Path(record_path(cfg.crosscoder, out)).is_absolute():
        raise FeatgraphError(f"--crosscoder {cfg.crosscoder} lies inside --out {cfg.out}, which the demo replaces whole; pass another --out")
    model_cfg = dataclasses.replace(model_cfg or ModelConfig(), size=cfg.size)  # the demo's size is the embedded model's
    data_cfg = data_cfg or DataConfig()
    size = SIZES[cfg.size]
    device = resolve_device(model_cfg.device)
    inputs = load_inputs(model_cfg, data_cfg, seed=cfg.seed, progress=cfg.progress)
    model, rows = inputs.model, inputs.rows
    if cfg.crosscoder is not None:
        cc = load_crosscoder(cfg.crosscoder, device=device)
        check_compatible(cc, model, where=f"crosscoder {cfg.crosscoder}")
        metrics = evaluate(cc, model, rows.val_NT[: size.eval_rows])
    else:
        hookpoints = cfg.hookpoints or default_hookpoints(model.cfg.n_layers)
        cc_cfg = CrosscoderConfig(hookpoints, model.cfg.d_model, size.n_features, model_name=model_cfg.model, seed=cfg.seed)
        train_cfg = TrainConfig(steps=size.cc_steps, batch_size=size.cc_batch, l1_coeff=cfg.l1_coeff, lr=size.cc_lr, seed=cfg.seed)
        fit_cfg = FitConfig(buffer_tokens=16 * size.cc_batch, eval_rows=size.eval_rows)
        cc, metrics, _, _ = fit(model, rows, train_cfg, cc_cfg=cc_cfg, fit_cfg=fit_cfg, seed=cfg.seed, device=device, progress=cfg.progress)

    graph_cfg = GraphConfig(top_k=cfg.top_k, min_cocount=size.min_cocount, rows=size.graph_rows)
    graph, _ = build_graph(cc, model, torch.cat([rows.val_NT, rows.train_NT]), graph_cfg, seed=cfg.seed, progress=cfg.progress)
    record = config_record(model_cfg, data_cfg)
    graph.meta.update({"model": model_cfg.model, "model_config": record["model"], "data_config": record["data"], "data_source": rows.source})

    graph.meta["crosscoders"] = [record_path(out / "crosscoder" if cfg.crosscoder is None else cfg.crosscoder, out)]
    paths = {name: str(out / file) for name, file in (("crosscoder", "crosscoder"), ("html", "graph.html"), ("graphml", "graph.graphml"),
                                                       ("json", "graph.json"), ("features", "features.json"),
                                                       ("summary", "summary.json"))}
    if cfg.crosscoder is not None:
        del paths["crosscoder"]
    check_output(out, need_bytes=PAGE_BYTES + (4 * sum(p.numel() for p in cc.parameters()) if cfg.crosscoder is None else 0))
    report = inputs.report or {}
    summary = DemoSummary(
        model=model_cfg.model,
        model_val_loss=report.get("val_loss"),
        unigram_val_loss=report.get("unigram_val_loss"),
        fvu_pooled=metrics.fvu_pooled, fvu_per_hookpoint=metrics.fvu_per_hookpoint, l0=metrics.l0,
        dead_fraction=metrics.dead_fraction, ce_loss_recovered=metrics.ce_loss_recovered, n_nodes=graph.n_nodes, n_edges=graph.n_edges,
        n_communities=graph.meta["n_communities"], modularity=graph.meta["modularity"], seconds=time.perf_counter() - t0, paths=paths,
    )
    with atomic_dir(out) as tmp:  # the folder appears whole, or the old one stays: never a mix
        if cfg.crosscoder is None:
            extra = {"metrics": metrics.to_dict(), "data_source": rows.source, "seed": cfg.seed, **config_record(model_cfg, data_cfg),
                     "train": asdict(train_cfg)}
            save_crosscoder(cc, tmp / "crosscoder", extra=extra)
        write_html(graph, tmp / "graph.html", title=f"featgraph demo: co-activation graph of {model_cfg.model}")
        write_graphml(graph, tmp / "graph.graphml")
        write_json(graph, tmp / "graph.json")
        write_feature_json(graph, tmp / "features.json")
        (tmp / "summary.json").write_text(json.dumps(strict_json(asdict(summary)), indent=2, allow_nan=False))
    return summary
