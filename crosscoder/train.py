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

Decoder orthogonality (``TrainConfig.decoder_orthogonality`` > 0, any architecture): the loss gains coeff · mean
|cos(d_i, d_j)| over ``orthogonality_pairs`` pairs of features active on the same token of the step's batch
(:func:`coactive_pairs`, drawn from a generator seeded by the run's seed and the step, so resume stays bit-identical),
d the flattened decoder vectors; its cost is linear in the pairs. At 0 (the default) nothing of it runs.

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

__all__ = ["train_crosscoder", "finetune_crosscoder", "TrainResult", "coactive_pairs", "decoder_orthogonality_penalty", "pair_generator"]

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
        loss = out.loss
        if cfg.decoder_orthogonality > 0:
            ortho = decoder_orthogonality_penalty(cc.W_dec_FLD, out.f_BF, cfg.orthogonality_pairs, pair_generator(cfg.seed, step))
            loss = loss + cfg.decoder_orthogonality * ortho
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync_gradients(cc)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(cc.parameters(), cfg.grad_clip)
        opt.step()
        _update_dead(cc, out.f_BF)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            _check_diverged(first_bad, cc, cfg)
            rec = {"step": step, "loss": loss.item(), "mse": out.mse.item(), "l0": out.l0.item(), "lr": lr, "l1_coeff": l1}
            if cfg.decoder_orthogonality > 0:
                rec["orthogonality"] = ortho.item()
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


def pair_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator that samples step ``step``'s feature pairs: a function of the run's seed and the step only,
    so a resumed run samples the same pairs."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (1 << 63))


@torch.no_grad()
def coactive_pairs(f_BF: torch.Tensor, n_pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` pairs (i_N, j_N) of distinct features active on the same token, uniform over the batch's co-active
    pair occurrences: a token drawn with probability ∝ c(c − 1) (c its active features, so a token with 10 counts for its
    45 pairs, not as one), then two distinct features uniformly among its active ones (with replacement across pairs). Random numbers come from ``generator`` (CPU); cost O(B·F) for the active set plus O(n_pairs).
    Empty when no token has two active features."""
    active_BF = f_BF > 0
    count_B = active_BF.sum(dim=1)
    eligible_E = (count_B >= 2).nonzero().squeeze(1)
    if eligible_E.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=f_BF.device)
        return empty, empty
    u_N3 = torch.rand(n_pairs, 3, generator=generator, dtype=torch.float64)
    u_N3 = u_N3.to(f_BF.device, torch.float32 if f_BF.device.type == "mps" else torch.float64)  # MPS has no float64
    c_E = count_B[eligible_E].double()
    cum_E = (c_E * (c_E - 1)).cumsum(0)
    pick_N = torch.searchsorted(cum_E, (u_N3[:, 0] * cum_E[-1]).to(cum_E.dtype), right=True)
    tok_N = eligible_E[pick_N.clamp_max(eligible_E.numel() - 1)]
    c_N = count_B[tok_N]
    r1_N = torch.minimum((u_N3[:, 1] * c_N).long(), c_N - 1)
    r2_N = torch.minimum((u_N3[:, 2] * (c_N - 1)).long(), c_N - 2)
    r2_N = r2_N + (r2_N >= r1_N).long()  # uniform over the other c − 1 active features
    row_N, feat_N = active_BF.nonzero(as_tuple=True)  # row-major: a token's active features are contiguous
    start_N = torch.searchsorted(row_N, tok_N)
    return feat_N[start_N + r1_N], feat_N[start_N + r2_N]


def decoder_orthogonality_penalty(W_dec_FLD: torch.Tensor, f_BF: torch.Tensor, n_pairs: int, generator: torch.Generator) -> torch.Tensor:
    """mean over sampled co-active pairs (i, j) of |cos(d_i, d_j)|, d_i the flattened decoder vector (L_out·D) of
    feature i (:func:`coactive_pairs`); 0 when no token has two active features. Differentiable in the decoder only,
    O(n_pairs · L_out · D)."""
    i_N, j_N = coactive_pairs(f_BF.detach(), n_pairs, generator)
    if i_N.numel() == 0:
        return W_dec_FLD.new_zeros(())
    d_i_NO, d_j_NO = W_dec_FLD[i_N].flatten(1).float(), W_dec_FLD[j_N].flatten(1).float()
    cos_N = (d_i_NO * d_j_NO).sum(dim=1) / (d_i_NO.norm(dim=1) * d_j_NO.norm(dim=1)).clamp_min(1e-12)
    return cos_N.abs().mean()


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
