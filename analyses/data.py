"""A model and token rows to run it on: the embedded default, or any model with the built-in story corpus."""

from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

import torch

from crosscoder.errors import FeatgraphError
from crosscoder.model_loading import load_model

from .corpus import generate_stories
from .tiny_model import TINY, EmbeddedConfig, load_embedded, pack_rows

__all__ = ["ModelData", "model_and_tokens", "EMBEDDED_SIZES"]

EMBEDDED_SIZES = {"default": EmbeddedConfig(), "tiny": TINY}


class ModelData(NamedTuple):
    model: "HookedTransformer"  # noqa: F821
    train_NT: torch.Tensor  # (N, T) token rows, BOS at position 0
    val_NT: torch.Tensor    # held-out rows
    report: dict | None     # the embedded model's training report (None for other models)


def model_and_tokens(model: str = "embedded", size: str = "default", seed: int = 0, device: str = "cpu", progress: bool = True) -> ModelData:
    """``embedded`` (trained on first use, then cached) or a TransformerLens name / local checkpoint folder.

    Other models read the built-in story corpus through their own tokenizer, in rows of min(128, n_ctx) tokens.
    """
    if size not in EMBEDDED_SIZES:
        raise FeatgraphError(f"unknown size {size!r}; choose one of {sorted(EMBEDDED_SIZES)}")
    emb_cfg = EmbeddedConfig(**{**asdict(EMBEDDED_SIZES[size]), "seed": seed})
    if model == "embedded":
        emb = load_embedded(emb_cfg, progress=progress)
        return ModelData(emb.model.to(device, print_details=False), emb.tokens_train_NT, emb.tokens_val_NT, emb.report)
    lm = load_model(model, device=device)
    if lm.tokenizer is None:
        raise FeatgraphError(f"model {model!r} has no tokenizer; save one beside its config.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(lm.tokenizer.backend_tokenizer.to_str())
    bos = lm.tokenizer.bos_token or lm.tokenizer.eos_token
    rows = pack_rows(generate_stories(emb_cfg.n_stories // 4, seed=seed), tok, min(128, lm.cfg.n_ctx), bos, lm.tokenizer.eos_token or bos)
    n_val = max(1, len(rows) // 20)
    return ModelData(lm, rows[:-n_val], rows[-n_val:], None)
