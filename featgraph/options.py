"""The typed configs of featgraph's own commands, kept free of heavy imports: the CLI builds its flags from them at
start-up (:mod:`featgraph.configs`) without loading TransformerLens.

* :class:`GraphConfig`: which edges a feature graph keeps and how its communities are found (:func:`featgraph.pipeline.build_graph`);
* :class:`DemoConfig` and the demo's sizes (:func:`featgraph.demo.run_demo`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crosscoder.errors import FeatgraphError

__all__ = ["GraphConfig", "DemoConfig", "DemoSize", "SIZES", "MEASURE_NAMES"]

MEASURE_NAMES = ("pearson", "jaccard", "sufficiency", "necessity", "mutual_information", "decoder_cosine")
"""Edge weights a graph can use: the co-activation measures of :mod:`featgraph.measures`, and the decoder cosine."""


@dataclass
class GraphConfig:
    """Which edges a feature graph keeps and how its communities are found."""

    measure: str = "pearson"
    """Edge weight: pearson, jaccard, sufficiency, necessity, mutual_information or decoder_cosine."""
    top_k: int | None = 8
    """Edges kept per feature: the strongest at either endpoint (None: no top-k pruning)."""
    threshold: float | None = None
    """Keep edges with weight ≥ this (with or without top-k)."""
    min_cocount: int = 5
    """Co-count floor for an edge: a significance filter for rare features."""
    active_frac: float | None = None
    """A feature is active above this fraction of its max activation (0: any positive activation; > 0 costs a second
    pass); unset = 0 for one crosscoder and spar-2024's 0.2 for a stack of SAEs (which the gates need)."""
    decoder_cosine: bool = True
    """Add the cosine of the two features' flattened decoders to every edge (one crosscoder)."""
    objective: Literal["modularity", "cpm", "rbconfiguration"] = "modularity"
    """Leiden's objective for the communities."""
    resolution: float = 1.0
    """Leiden's resolution γ."""
    rows: int = 600
    """Token rows streamed into the statistics."""
    batch_size: int = 32
    """Token rows per forward pass."""
    dashboards: bool = True
    """Stream activation histograms and samples, and give every node a feature dashboard (density, histogram, examples
    from several activation quantiles, logit lens)."""
    labels: Path | None = None
    """A CSV (id,label) or JSON file of labels that override the automatic ones (node ids, or community:N)."""

    def __post_init__(self) -> None:
        if self.labels is not None:
            self.labels = Path(self.labels)
            if not self.labels.is_file():
                raise FeatgraphError(f"--labels {self.labels} is not a file; pass a CSV (id,label) or a JSON file of labels")
        allowed = MEASURE_NAMES
        if self.measure not in allowed:
            raise FeatgraphError(f"unknown measure {self.measure!r}; choose one of {', '.join(allowed)}")
        if self.measure == "decoder_cosine" and not self.decoder_cosine:
            raise FeatgraphError("measure decoder_cosine needs decoder_cosine on; drop --no-decoder-cosine")
        if self.top_k is not None and self.top_k < 1:
            raise FeatgraphError(f"top_k must be >= 1 (or unset), got {self.top_k}")
        if self.top_k is None and self.threshold is None:
            raise FeatgraphError("a graph needs top_k or threshold (or both) to prune its edges; set one")
        if self.min_cocount < 1 or self.rows < 1 or self.batch_size < 1:
            raise FeatgraphError(f"min_cocount, rows and batch_size must be >= 1, got {self.min_cocount}, {self.rows}, {self.batch_size}")
        if self.active_frac is not None and not 0.0 <= self.active_frac < 1.0:
            raise FeatgraphError(f"active_frac must lie in [0, 1), got {self.active_frac}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise FeatgraphError(f"threshold must be a finite number (or unset), got {self.threshold}")
        if self.objective not in ("modularity", "cpm", "rbconfiguration"):
            raise FeatgraphError(f"unknown objective {self.objective!r}; choose modularity, cpm or rbconfiguration")
        if not (self.resolution > 0 and math.isfinite(self.resolution)):
            raise FeatgraphError(f"resolution must be a positive number (Leiden's γ), got {self.resolution}")


@dataclass
class DemoSize:
    """How big each stage of the demo is."""

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
    "default": DemoSize(n_features=1024, cc_steps=600, cc_batch=1024, graph_rows=600, eval_rows=200, min_cocount=5),
    "tiny": DemoSize(n_features=64, cc_steps=40, cc_batch=128, graph_rows=40, eval_rows=20, min_cocount=2),
}


@dataclass
class DemoConfig:
    """Options of ``featgraph demo``."""

    out: Path = Path("featgraph_out")
    """Folder for every file the demo writes (created; must not be a file)."""
    seed: int = 0
    """One seed for the model provider, the crosscoder, the buffer and the communities."""
    hookpoints: list[str] | None = None
    """Hookpoints to read; default blocks.0.hook_resid_pre and every blocks.N.hook_resid_post."""
    crosscoder: Path | None = None
    """Use this saved crosscoder instead of training one."""
    size: Literal["default", "tiny"] = "default"
    """Demo size (and the embedded model's): ``tiny`` runs in seconds, for smoke tests."""
    top_k: int = 8
    """Edges kept per feature (the strongest by Pearson)."""
    l1_coeff: float = 2.0
    """λ of the crosscoder's sparsity penalty."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.size not in SIZES:
            raise FeatgraphError(f"unknown demo size {self.size!r}; choose one of {sorted(SIZES)}")
        if self.out.exists() and not self.out.is_dir():
            raise FeatgraphError(f"output path {self.out} is a file; pass --out with a folder path")
        if self.seed < 0:
            raise FeatgraphError(f"seed must be >= 0, got {self.seed}")
        if self.hookpoints is not None:
            self.hookpoints = list(self.hookpoints)
            if not self.hookpoints or len(set(self.hookpoints)) != len(self.hookpoints):
                raise FeatgraphError(f"hookpoints must be a non-empty list without repeats, got {self.hookpoints}; or leave it unset for the default")
        if self.top_k < 1:
            raise FeatgraphError(f"top_k must be >= 1, got {self.top_k}")
        if not (self.l1_coeff >= 0 and math.isfinite(self.l1_coeff)):
            raise FeatgraphError(f"l1_coeff must be a number >= 0, got {self.l1_coeff}")
        if self.crosscoder is not None:  # one line now, before any model loads, if it is not a featgraph crosscoder folder
            from crosscoder.saelens import crosscoder_folder_kind  # torch: only when a crosscoder is named, not at CLI start-up

            self.crosscoder = Path(self.crosscoder)
            crosscoder_folder_kind(self.crosscoder, saelens=False)
