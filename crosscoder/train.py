"""Train a crosscoder: a flat loop that reads top to bottom (schedule → step → log)."""

from __future__ import annotations

import logging
import math
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .crosscoder import Crosscoder
from .determinism import deterministic_algorithms
from .errors import FeatgraphError

__all__ = ["train_crosscoder", "TrainResult"]

log = logging.getLogger(__name__)


class TrainResult(NamedTuple):
    steps: int
    final_loss: float
    final_mse: float
    final_l0: float
    history: list[dict[str, float]]  # one record per log_every steps


def train_crosscoder(
    cc: Crosscoder,
    next_batch: Callable[[], torch.Tensor],
    cfg: TrainConfig,
    progress: bool = True,
) -> TrainResult:
    """Train ``cc`` in place with Adam on batches of *normalised* activations (B, L, D) from ``next_batch``.

    λ ramps from 0 over the first ``l1_warmup_frac`` of the steps; the learning rate warms up and decays
    linearly as :class:`TrainConfig` says; gradients are clipped to ``grad_clip``.
    """
    with deterministic_algorithms():
        return _train_loop(cc, next_batch, cfg, progress)


def _train_loop(cc: Crosscoder, next_batch: Callable[[], torch.Tensor], cfg: TrainConfig, progress: bool) -> TrainResult:
    opt = torch.optim.Adam(cc.parameters(), lr=cfg.lr, betas=cfg.betas)
    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.steps), desc="crosscoder", disable=not progress, leave=False)
    out = None
    for step in bar:
        lr, l1 = cfg.lr_at(step), cfg.l1_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        x_BLD = next_batch()
        out = cc.loss(x_BLD, l1)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(cc.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            rec = {"step": step, "loss": out.loss.item(), "mse": out.mse.item(), "l0": out.l0.item(), "lr": lr, "l1_coeff": l1}
            if not math.isfinite(rec["loss"]):
                raise FeatgraphError(f"crosscoder training diverged at step {step} (loss {rec['loss']}); lower lr (now {cfg.lr}) or check activations for NaN")
            history.append(rec)
            bar.set_postfix(mse=f"{rec['mse']:.2f}", l0=f"{rec['l0']:.1f}")
            log.debug("step %d loss %.4f mse %.4f l0 %.1f", step, rec["loss"], rec["mse"], rec["l0"])
    assert out is not None
    return TrainResult(cfg.steps, out.loss.item(), out.mse.item(), out.l0.item(), history)
