"""Train a crosscoder: a flat loop that reads top to bottom (schedule → batch → loss → step → log → checkpoint).

The data source is anything with ``next_batch() -> (B, L, D)`` normalised activations, or a bare callable;
a source that also has ``state_dict``/``load_state_dict`` (such as :class:`~crosscoder.harvest.ActivationBuffer`)
is checkpointed with the weights and the optimiser, so a killed run resumes bit-identically on the CPU. On CUDA the
forward and backward run under bf16 autocast while the weights and Adam's state stay fp32.

Data-parallel under ``torchrun``: when torch.distributed is initialised, each rank trains on its own batches (its
share of the global batch) and the gradients are averaged with an all-reduce before every step — the DDP
algorithm, done explicitly because the loss is a method, not ``forward``. For ReLU and JumpReLU this equals one
process on the concatenated batch up to float rounding. State that is not a parameter is the architecture's to
agree on: after the all-reduce every step calls ``cc.sync_distributed()`` (BatchTopK, which selects its top k·B per
rank as dictionary_learning does, averages its inference threshold there).

The crosscoder trains in training mode whatever mode it came in (a loaded one is in eval mode) and is left in eval
mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .crosscoder import Crosscoder
from .determinism import deterministic_algorithms
from .errors import FeatgraphError
from .io import load_crosscoder
from .model_loading import first_nonfinite_tensor

__all__ = ["train_crosscoder", "finetune_crosscoder", "TrainResult"]

log = logging.getLogger(__name__)


class TrainResult(NamedTuple):
    steps: int
    final_loss: float
    final_mse: float
    final_l0: float
    history: list[dict[str, float]]  # one record per log_every steps
    resumed_from: int  # step the run resumed at (0: fresh)


def _next_batch_fn(source: Any) -> Callable[[], torch.Tensor]:
    return source.next_batch if hasattr(source, "next_batch") else source


def train_crosscoder(
    cc: Crosscoder,
    source: Any,
    cfg: TrainConfig,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``cc`` in place with Adam on batches of *normalised* activations (B, L, D) from ``source``.

    λ ramps from 0 over the first ``l1_warmup_frac`` of the steps; the learning rate warms up and decays
    linearly as :class:`TrainConfig` says; gradients are clipped to ``grad_clip``. With ``checkpoint_dir`` and
    ``checkpoint_every`` > 0 a checkpoint is written every that many steps (and at the end); with ``resume`` the
    run continues from the newest checkpoint there, if any. ``on_step(step)`` runs after each step.
    """
    with deterministic_algorithms(), _sparse_kernels(cc, cfg.sparse_kernels):
        return _train_loop(cc, source, cfg, progress, checkpoint_dir, checkpoint_every, resume, on_step)


@contextlib.contextmanager
def _sparse_kernels(cc: Crosscoder, mode: str) -> Iterator[None]:
    """``cc.sparse_kernels = mode`` for the length of the run."""
    previous = cc.sparse_kernels
    cc.sparse_kernels = mode
    try:
        yield
    finally:
        cc.sparse_kernels = previous


def _train_loop(cc, source, cfg, progress, checkpoint_dir, checkpoint_every, resume, on_step) -> TrainResult:
    next_batch = _next_batch_fn(source)
    # foreach: torch's multi-tensor Adam, bit-identical to its per-tensor loop (the CPU default) and 1.5-3x faster there.
    opt = torch.optim.Adam(cc.parameters(), lr=cfg.lr, betas=cfg.betas, foreach=cc.device.type in ("cpu", "cuda") or None)
    history: list[dict[str, float]] = []
    start = 0
    if resume and checkpoint_dir is not None and (path := latest_checkpoint(checkpoint_dir)) is not None:
        start, history = _restore(path, cc, opt, source)
        log.info("resumed from %s at step %d", path, start)
    use_bf16 = cfg.autocast == "bf16" or (cfg.autocast == "auto" and cc.device.type == "cuda")
    autocast = torch.autocast(cc.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    cc.train()  # whatever mode it came in: a loaded or resumed crosscoder is in eval mode
    out = None
    # The first step whose loss is NaN/inf, kept on the device (−1: none) so that no step waits for a sync; it is read
    # at every log step and before every checkpoint, so a diverged run never writes a checkpoint.
    first_bad = torch.tensor(-1, device=cc.device)
    bar = tqdm(range(start, cfg.steps), desc="crosscoder", disable=not progress, leave=False, initial=start, total=cfg.steps)
    for step in bar:
        lr, l1 = cfg.lr_at(step), cfg.l1_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        x_BLD = next_batch()
        with autocast:
            out = cc.loss(x_BLD, l1)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out.loss.detach()), step, first_bad)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        _sync_gradients(cc)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(cc.parameters(), cfg.grad_clip)
        opt.step()
        _update_dead(cc, out.f_BF)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            _check_diverged(first_bad, cc, cfg)
            rec = {"step": step, "loss": out.loss.item(), "mse": out.mse.item(), "l0": out.l0.item(), "lr": lr, "l1_coeff": l1}
            history.append(rec)
            bar.set_postfix(mse=f"{rec['mse']:.2f}", l0=f"{rec['l0']:.1f}")
        done = step + 1
        if checkpoint_dir is not None and checkpoint_every > 0 and (done % checkpoint_every == 0 or done == cfg.steps):
            _check_diverged(first_bad, cc, cfg, done)
            data_state = source.state_dict() if hasattr(source, "state_dict") else None
            save_checkpoint(checkpoint_dir, done, cc, opt, data_state, {"history": history})
        if on_step is not None:
            on_step(step)
    if cfg.steps > start:
        _check_diverged(first_bad, cc, cfg, cfg.steps)
    cc.eval()
    last = history[-1] if history else {"loss": float("nan"), "mse": float("nan"), "l0": float("nan")}
    return TrainResult(cfg.steps, last["loss"], last["mse"], last["l0"], history, start)


def _check_diverged(first_bad: torch.Tensor, cc: Crosscoder, cfg: TrainConfig, done: int | None = None) -> None:
    """Raise one FeatgraphError line naming the first step whose loss was NaN/inf; with ``done`` (steps taken, before
    the crosscoder is checkpointed or returned) also when a finite loss left NaN/inf in its parameters (a bad last
    gradient step)."""
    step = int(first_bad)
    if step >= 0:
        raise FeatgraphError(f"crosscoder training diverged at step {step} (the loss became NaN/inf); lower lr (now {cfg.lr}) "
                             "or check the activations for NaN")
    if done is not None and (bad := first_nonfinite_tensor(cc)) is not None:
        raise FeatgraphError(f"crosscoder training diverged by step {done}: its {bad[0]} holds {bad[1]} NaN/inf values; "
                             f"lower lr (now {cfg.lr}) or grad_clip (now {cfg.grad_clip})")


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sync_gradients(cc: Crosscoder) -> None:
    """Average gradients over ranks, then let the architecture sync its own state; a no-op in one process."""
    world = _world()
    if world == 1:
        return
    grads = [p.grad for p in cc.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    cc.sync_distributed()


@torch.no_grad()
def _update_dead(cc: Crosscoder, f_BF: torch.Tensor) -> None:
    fired_F = (f_BF > 0).any(dim=0)
    n_tokens = f_BF.shape[0]
    if _world() > 1:
        fired = fired_F.to(torch.int32)
        dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        fired_F, n_tokens = fired.bool(), n_tokens * _world()
    cc.update_dead(fired_F, n_tokens)


def _restore(path, cc: Crosscoder, opt: torch.optim.Optimizer, source: Any) -> tuple[int, list]:
    ckpt = load_checkpoint(path, device=cc.device)
    if ckpt.cc.cfg != cc.cfg:
        raise FeatgraphError(f"checkpoint {path} is of another crosscoder config; resume with the config it was trained with")
    cc.load_state_dict(ckpt.cc.state_dict())
    opt.load_state_dict(ckpt.optimizer)
    if ckpt.data is not None:
        if not hasattr(source, "load_state_dict"):
            raise FeatgraphError(f"checkpoint {path} holds a data-stream state but this data source cannot restore it")
        source.load_state_dict(ckpt.data)
    return int(ckpt.trainer["step"]), list(ckpt.trainer["history"])


def finetune_crosscoder(
    parent: str | os.PathLike, source: Any, cfg: TrainConfig, stage: str, device: str | torch.device = "cpu",
    cc: Crosscoder | None = None, **kwargs: Any,
) -> tuple[Crosscoder, TrainResult]:
    """Load the crosscoder saved at ``parent`` and train it further with its own schedule ``cfg``.

    Adam starts afresh; the normalisation scales are the parent's, so features stay comparable across stages (the
    stage-wise diff of Anthropic, Dec 2024: S, then D / M / DF / MF fine-tuned from it). The stage is appended to
    ``cc.lineage`` (saved in cfg.json) with its parent and schedule. Pass ``cc`` when the caller has already loaded
    ``parent`` (it is trained in place instead of loading the folder again). ``kwargs`` go to :func:`train_crosscoder`,
    which trains it in training mode and leaves it in eval mode.
    """
    if cc is None:
        cc = load_crosscoder(parent, device=device)
    if not cc.lineage:
        cc.lineage = [{"stage": "base", "parent": None}]
    result = train_crosscoder(cc, source, cfg, **kwargs)
    cc.lineage.append({"stage": stage, "parent": str(parent), "train": asdict(cfg), "steps": result.steps})
    return cc, result
