"""The demo study: model → activations → crosscoder → co-activation graph → communities → HTML, GraphML, JSON.

``run_demo(DemoConfig(...))`` is what ``featgraph demo`` runs. On the embedded default it needs no network;
with ``model`` set to a TransformerLens name or a local checkpoint it runs the same path on that model, with
the built-in story corpus as its text.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from crosscoder.apply import check_compatible
from crosscoder.config import CrosscoderConfig, TrainConfig, default_hookpoints, resolve_device
from crosscoder.build import build_crosscoder
from crosscoder.crosscoder import Crosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import ActivationBuffer, check_hookpoints, estimate_norm_scales
from crosscoder.io import atomic_file, load_crosscoder, save_crosscoder
from crosscoder.metrics import evaluate
from crosscoder.train import train_crosscoder
from featgraph.export import write_graphml, write_json
from featgraph.html import write_html
from featgraph.pipeline import crosscoder_graph, token_decoder

from .data import EMBEDDED_SIZES, model_and_tokens

__all__ = ["DemoConfig", "DemoSummary", "run_demo", "SIZES"]

log = logging.getLogger(__name__)


@dataclass
class DemoSize:
    """How big each stage of the demo is."""

    embedded: "EmbeddedConfig"  # noqa: F821
    n_features: int
    cc_steps: int
    cc_batch: int
    graph_rows: int
    """Token rows streamed into the graph statistics."""
    eval_rows: int
    """Held-out token rows for the crosscoder metrics."""
    min_cocount: int
    """Co-count floor for an edge (a significance filter for rare features)."""
    cc_lr: float = 2e-3
    """Crosscoder learning rate (short runs take a higher one)."""


SIZES = {
    "default": DemoSize(EMBEDDED_SIZES["default"], n_features=1024, cc_steps=600, cc_batch=1024, graph_rows=600, eval_rows=200, min_cocount=5),
    "tiny": DemoSize(EMBEDDED_SIZES["tiny"], n_features=64, cc_steps=40, cc_batch=128, graph_rows=40, eval_rows=20, min_cocount=2),
}


@dataclass
class DemoConfig:
    """Options of ``featgraph demo``."""

    out: Path = Path("featgraph_out")
    """Folder for every file the demo writes (created; must not be a file)."""
    seed: int = 0
    """One seed for the embedded model, the crosscoder, the buffer and the communities."""
    model: str = "embedded"
    """``embedded``, a TransformerLens model name, or a local HuggingFace checkpoint folder."""
    hookpoints: list[str] | None = None
    """Hookpoints to read; default blocks.0.hook_resid_pre and every blocks.N.hook_resid_post."""
    crosscoder: Path | None = None
    """Use this saved crosscoder instead of training one."""
    size: Literal["default", "tiny"] = "default"
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    top_k: int = 8
    """Edges kept per node (the strongest by Pearson)."""
    progress: bool = True
    l1_coeff: float = 2.0
    """λ of the crosscoder's sparsity penalty."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.size not in SIZES:
            raise FeatgraphError(f"unknown demo size {self.size!r}; choose one of {sorted(SIZES)}")
        if self.out.exists() and not self.out.is_dir():
            raise FeatgraphError(f"output path {self.out} is a file; pass --out with a folder path")
        self.device = resolve_device(self.device)


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


def _train(cfg: DemoConfig, size: DemoSize, model, rows, hookpoints) -> Crosscoder:
    torch.manual_seed(cfg.seed)
    scales = estimate_norm_scales(model, rows[: max(8, size.graph_rows // 4)], hookpoints)
    cc = build_crosscoder(CrosscoderConfig(hookpoints, model.cfg.d_model, size.n_features, model_name=cfg.model, seed=cfg.seed)).to(cfg.device)
    cc.norm_scale_L.copy_(scales)
    buf = ActivationBuffer(model, rows, hookpoints, scales, size.cc_batch, n_buffer_tokens=16 * size.cc_batch, seed=cfg.seed, device=cfg.device)
    tcfg = TrainConfig(steps=size.cc_steps, batch_size=size.cc_batch, l1_coeff=cfg.l1_coeff, lr=size.cc_lr, seed=cfg.seed)
    train_crosscoder(cc, buf.next_batch, tcfg, progress=cfg.progress)
    return cc


def _feature_graph(cfg: DemoConfig, size: DemoSize, cc: Crosscoder, model, rows_NT: torch.Tensor):
    """Statistics → annotated co-activation graph with communities (see :func:`featgraph.pipeline.crosscoder_graph`)."""
    graph, _ = crosscoder_graph(cc, model, rows_NT, token_decoder(model), top_k=cfg.top_k,
                                min_cocount=size.min_cocount, seed=cfg.seed, progress=cfg.progress)
    graph.meta["model"] = cfg.model
    return graph, graph.meta


def run_demo(cfg: DemoConfig) -> DemoSummary:
    t0 = time.perf_counter()
    size = SIZES[cfg.size]
    model, train_rows, val_rows, report = model_and_tokens(cfg.model, cfg.size, cfg.seed, cfg.device, cfg.progress)
    hookpoints = cfg.hookpoints or default_hookpoints(model.cfg.n_layers)
    check_hookpoints(model, hookpoints)

    if cfg.crosscoder is not None:
        cc = load_crosscoder(cfg.crosscoder, device=cfg.device)
        check_compatible(cc, model, where=f"crosscoder {cfg.crosscoder}")
        hookpoints = cc.cfg.all_hookpoints
    else:
        cc = _train(cfg, size, model, train_rows, hookpoints)
    cc.eval()
    eval_rows = val_rows[: size.eval_rows]
    metrics = evaluate(cc, model, eval_rows)

    graph, meta = _feature_graph(cfg, size, cc, model, torch.cat([val_rows, train_rows])[: size.graph_rows])

    cfg.out.mkdir(parents=True, exist_ok=True)  # only now: a run that fails early leaves no output behind
    paths = {}
    if cfg.crosscoder is None:
        paths["crosscoder"] = str(save_crosscoder(cc, cfg.out / "crosscoder", extra={"metrics": metrics.to_dict()}))
    paths["html"] = str(write_html(graph, cfg.out / "graph.html", title=f"featgraph demo: co-activation graph of {cfg.model}"))
    paths["graphml"] = str(write_graphml(graph, cfg.out / "graph.graphml"))
    paths["json"] = str(write_json(graph, cfg.out / "graph.json"))
    summary = DemoSummary(
        model=cfg.model,
        model_val_loss=report["val_loss"] if report else None,
        unigram_val_loss=report["unigram_val_loss"] if report else None,
        fvu_pooled=metrics.fvu_pooled, fvu_per_hookpoint=metrics.fvu_per_hookpoint, l0=metrics.l0,
        dead_fraction=metrics.dead_fraction, ce_loss_recovered=metrics.ce_loss_recovered, n_nodes=graph.n_nodes, n_edges=graph.n_edges,
        n_communities=meta["n_communities"], modularity=meta["modularity"], seconds=time.perf_counter() - t0, paths=paths,
    )
    paths["summary"] = str(cfg.out / "summary.json")
    with atomic_file(cfg.out / "summary.json") as tmp:
        tmp.write_text(json.dumps(asdict(summary), indent=2))
    return summary
