"""The embedded default model: a BPE tokenizer and a small TransformerLens model trained on the story corpus.

Everything here runs offline on a CPU and is deterministic from the config's seed. The trained artefacts are
cached under ``$FEATGRAPH_CACHE`` (default: the user cache directory) in a folder keyed by a SHA-256 of the
config and the corpus version, so the second run loads in seconds:

    <cache>/embedded/<key>/  tokenizer.json  hf_tokenizer/  model.safetensors  model_cfg.json  tokens.safetensors  report.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from crosscoder.determinism import deterministic_algorithms
from crosscoder.errors import FeatgraphError
from crosscoder.io import atomic_dir
from crosscoder.model_loading import check_finite_parameters

from .corpus import CORPUS_VERSION, generate_stories

__all__ = ["EmbeddedConfig", "EmbeddedModel", "load_embedded", "cache_root", "TINY"]

log = logging.getLogger(__name__)

BOS, EOS = "<|bos|>", "<|endoftext|>"
TRAINER_VERSION = 2
"""Bumped whenever training numerics change (2: deterministic kernels), so stale caches are not reused."""


@dataclass(frozen=True)
class EmbeddedConfig:
    """Corpus, tokenizer, model shape and training schedule of the embedded default."""

    n_stories: int = 20_000
    """Stories generated (the last ``val_frac`` of them are held out)."""
    seed: int = 0
    """Seed of the corpus, the weight init and the batch order."""
    vocab_size: int = 2048
    """BPE vocabulary size, special tokens included."""
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 128
    """Tokens per training row (BOS + n_ctx − 1 tokens of concatenated stories)."""
    train_steps: int = 500
    batch_size: int = 32
    """Rows per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine decay to 10 % after a 5 % warm-up)."""
    val_frac: float = 0.05

    def __post_init__(self) -> None:
        if self.n_stories < 20 or not 0 < self.val_frac < 0.5:
            raise FeatgraphError("EmbeddedConfig needs n_stories >= 20 and 0 < val_frac < 0.5")
        if self.d_model % self.n_heads:
            raise FeatgraphError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def key(self) -> str:
        return content_key({"cfg": dataclasses.asdict(self), "corpus": CORPUS_VERSION, "trainer": TRAINER_VERSION})


def content_key(payload: dict) -> str:
    """A cache folder's name: 16 hex digits of the SHA-256 of ``payload`` as sorted JSON (stable across processes)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


TINY = EmbeddedConfig(n_stories=400, vocab_size=320, n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, train_steps=300, batch_size=16, lr=1e-2)
"""A seconds-sized configuration for tests."""

EMBEDDED_SIZES = {"default": EmbeddedConfig(), "tiny": TINY}
"""The embedded model's sizes: ``default`` (the demo's) and ``tiny`` (seconds; tests)."""


def embedded_config(size: str = "default", seed: int = 0) -> EmbeddedConfig:
    """The embedded model's config of ``size`` with ``seed``."""
    if size not in EMBEDDED_SIZES:
        raise FeatgraphError(f"unknown size {size!r} of the embedded model; choose one of {sorted(EMBEDDED_SIZES)}")
    return dataclasses.replace(EMBEDDED_SIZES[size], seed=seed)


class EmbeddedModel(NamedTuple):
    model: "HookedTransformer"  # noqa: F821
    tokens_train_NT: torch.Tensor  # (N, n_ctx) int64, BOS at position 0
    tokens_val_NT: torch.Tensor
    report: dict  # losses: model vs unigram baseline, sizes, timings
    path: Path


def cache_root() -> Path:
    env = os.environ.get("FEATGRAPH_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("featgraph"))


# ---- tokenizer and data --------------------------------------------------------------------------

def train_tokenizer(stories: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(stories, trainer)
    return tok


def save_hf_tokenizer(tok, folder: Path) -> None:
    """Save ``tok`` as a transformers tokenizer folder (TransformerLens reloads tokenizers by path)."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS).save_pretrained(str(folder))


def pack_rows(stories: list[str], tok, n_ctx: int, bos_token: str = BOS, eos_token: str = EOS) -> torch.Tensor:
    """Concatenate stories (each followed by EOS) and cut into rows of BOS + (n_ctx − 1) tokens; (N, n_ctx)."""
    bos, eos = tok.token_to_id(bos_token), tok.token_to_id(eos_token)
    if bos is None or eos is None:
        raise FeatgraphError(f"the tokenizer has no {bos_token!r} or {eos_token!r} token; give the model a tokenizer with BOS/EOS")
    stream: list[int] = []
    for enc in tok.encode_batch(stories):
        stream.extend(enc.ids)
        stream.append(eos)
    body = n_ctx - 1
    n_rows = len(stream) // body
    if n_rows == 0:
        raise FeatgraphError(f"corpus too small for one row of {n_ctx} tokens; raise n_stories")
    flat = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), flat], dim=1)


def unigram_loss(train_NT: torch.Tensor, val_NT: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats/token) on the validation targets of the train-set unigram distribution (add-one)."""
    counts = torch.bincount(train_NT[:, 1:].reshape(-1), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return -logp[val_NT[:, 1:].reshape(-1)].mean().item()


# ---- model ---------------------------------------------------------------------------------------

def model_config(cfg: EmbeddedConfig, d_vocab: int) -> dict:
    return dict(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_model // cfg.n_heads,
        d_mlp=cfg.d_mlp, n_ctx=cfg.n_ctx, d_vocab=d_vocab, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", seed=cfg.seed, default_prepend_bos=True, model_name="featgraph-embedded",
    )


def build_model(cfg_dict: dict, hf_tokenizer=None):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**cfg_dict), tokenizer=hf_tokenizer)


@torch.no_grad()
def lm_loss(model, tokens_NT: torch.Tensor, batch_size: int = 64) -> float:
    total, n = 0.0, 0
    for i in range(0, tokens_NT.shape[0], batch_size):
        b = tokens_NT[i : i + batch_size]
        total += model(b, return_type="loss").item() * b.shape[0]
        n += b.shape[0]
    return total / n


def train_lm(model, tokens_NT: torch.Tensor, cfg: EmbeddedConfig, progress: bool = True) -> list[float]:
    """AdamW with 5 % warm-up and cosine decay to 10 %; returns the loss every 50 steps."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, int(0.05 * cfg.train_steps))
    losses = []
    order = torch.randperm(tokens_NT.shape[0], generator=gen)
    pos = 0
    model.train()
    for step in tqdm(range(cfg.train_steps), desc="train model", disable=not progress, leave=False):
        lr = cfg.lr * min(1.0, (step + 1) / warm)
        if step >= warm:
            t = (step - warm) / max(1, cfg.train_steps - warm)
            lr = cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
        for g in opt.param_groups:
            g["lr"] = lr
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(tokens_NT.shape[0], generator=gen), 0
        batch = tokens_NT[order[pos : pos + cfg.batch_size]]
        pos += cfg.batch_size
        loss = model(batch, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.train_steps - 1:
            losses.append(round(loss.item(), 4))
    model.eval()
    return losses


# ---- cache ---------------------------------------------------------------------------------------

def _build(cfg: EmbeddedConfig, folder: Path, progress: bool) -> None:
    import time

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    stories = generate_stories(cfg.n_stories, seed=cfg.seed)
    n_val = max(1, int(cfg.val_frac * len(stories)))
    tok = train_tokenizer(stories[:-n_val], cfg.vocab_size)
    train_NT, val_NT = pack_rows(stories[:-n_val], tok, cfg.n_ctx), pack_rows(stories[-n_val:], tok, cfg.n_ctx)
    cfg_dict = model_config(cfg, tok.get_vocab_size())
    model = build_model(cfg_dict)
    with deterministic_algorithms():
        losses = train_lm(model, train_NT, cfg, progress)
    check_finite_parameters(model, "the embedded model's training", fix=f"training diverged (lr {cfg.lr}); lower the learning rate")
    report = {
        "config": dataclasses.asdict(cfg), "corpus_version": CORPUS_VERSION,
        "n_train_tokens": int(train_NT.numel()), "n_val_tokens": int(val_NT.numel()),
        "val_loss": lm_loss(model, val_NT), "unigram_val_loss": unigram_loss(train_NT, val_NT, tok.get_vocab_size()),
        "train_losses": losses, "build_seconds": round(time.perf_counter() - t0, 1),
    }
    with atomic_dir(folder) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        save_hf_tokenizer(tok, tmp / "hf_tokenizer")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({"train": train_NT, "val": val_NT}, str(tmp / "tokens.safetensors"))
        (tmp / "model_cfg.json").write_text(json.dumps(cfg_dict, indent=2))
        (tmp / "report.json").write_text(json.dumps(report, indent=2))


def load_embedded(cfg: EmbeddedConfig = EmbeddedConfig(), device: str = "cpu", progress: bool = True) -> EmbeddedModel:
    """The embedded model and its token rows, trained on first use and loaded from the cache afterwards."""
    from transformers import AutoTokenizer

    folder = cache_root() / "embedded" / cfg.key()
    if not (folder / "report.json").is_file():
        log.info("building the embedded model in %s (first run only)", folder)
        _build(cfg, folder, progress)
    cfg_dict = json.loads((folder / "model_cfg.json").read_text())
    model = build_model(cfg_dict, AutoTokenizer.from_pretrained(str(folder / "hf_tokenizer")))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    check_finite_parameters(model, f"the embedded model cached in {folder}", fix=f"the cache is corrupt; delete {folder} to rebuild it")
    model.to(device, print_details=False).eval()
    tokens = load_file(str(folder / "tokens.safetensors"))
    report = json.loads((folder / "report.json").read_text())
    return EmbeddedModel(model, tokens["train"], tokens["val"], report, folder)
