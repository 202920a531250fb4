"""One path from a model and its token rows to a trained, evaluated and saved crosscoder.

    build (or take the parent) → normalisation scales → buffer or activation cache → train or fine-tune
    → evaluate on held-out rows → save

:func:`fit` serves every case: a crosscoder / SAE / transcoder of one model, a model crosscoder over several models on
the same tokens (``models`` a mapping name → model), fine-tuning a parent with its own schedule (``parent``, a
stage name), and a residual dictionary trained on what a frozen one leaves (``residual_of``; :mod:`crosscoder.residual`;
rounds of them by :func:`train_residual_rounds`). The CLI, the demo, the studies and the Python API all call it, so
they agree on every step: scales from the training rows (about ``norm_tokens`` tokens), the buffer over the training
rows (each torchrun rank its own share, from the model or from an activation cache that one process wrote beforehand;
on CUDA the next refill harvested in the background while training runs, unless ``FitConfig.prefetch`` is off),
metrics on the held-out rows.

>>> import torch
>>> from transformer_lens import HookedTransformer, HookedTransformerConfig
>>> from crosscoder.config import CrosscoderConfig, TrainConfig
>>> from crosscoder.data import TokenRows
>>> model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=8, d_vocab=50, act_fn="relu"))
>>> rows = TokenRows(torch.randint(0, 50, (16, 8)), torch.randint(0, 50, (4, 8)), "random")
>>> cfg = CrosscoderConfig(["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"], d_model=16, n_features=32)
>>> result = fit(model, rows, TrainConfig(steps=3, batch_size=16), cc_cfg=cfg, fit_cfg=FitConfig(buffer_tokens=64), progress=False)
>>> len(result.metrics.fvu_per_hookpoint)
2
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch

from .apply import check_compatible
from .build import ARCHITECTURES, build_crosscoder
from .config import CrosscoderConfig, FitConfig, TrainConfig
from .crosscoder import Crosscoder
from .data import TokenRows
from .errors import FeatgraphError
from .harvest import (harvest, ActivationBuffer, RowSubset, check_hookpoints, check_models, estimate_model_norm_scales, estimate_norm_scales,
                      rank_rows)
from .io import check_output, save_crosscoder
from .metrics import CrosscoderMetrics, evaluate, reconstruction_metrics
from .model_diff import model_diff, model_reconstruction_metrics
from .residual import check_combinable, check_same_slots, combine_crosscoders, inference_rule, residual_of as residual_targets
from .train import TrainResult, finetune_crosscoder, train_crosscoder

# FitConfig lives in crosscoder.config with the other configs
__all__ = ["FitConfig", "FitResult", "ResidualRound", "ResidualRounds", "fit", "residual_metrics", "train_residual_rounds"]

log = logging.getLogger(__name__)


class FitResult(NamedTuple):
    cc: Crosscoder
    metrics: CrosscoderMetrics | None   # None on torchrun ranks other than 0
    train: TrainResult
    model_diff: Any | None              # crosscoder.model_diff.ModelDiff for a model crosscoder


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _initialise(cfg: CrosscoderConfig, models: Any, rows: TokenRows, fit_cfg: FitConfig, seed: int, device: str,
                frozen: Crosscoder | None = None) -> Crosscoder:
    """A fresh crosscoder of ``cfg`` with its normalisation scales estimated on the training rows, or, as the residual
    dictionary of ``frozen``, with ``frozen``'s scales (never re-estimated: both read one normalised space)."""
    if isinstance(models, Mapping):
        check_models(list(models.values()), cfg.model_hookpoints, list(models))
    else:
        check_hookpoints(models, cfg.all_hookpoints)
    torch.manual_seed(seed)
    cc = build_crosscoder(cfg).to(device)
    if frozen is not None:
        check_combinable([frozen, cc], ["(frozen)", "(new)"], last_untrained=True)
        cc.norm_scale_L.copy_(frozen.norm_scale_L)
        return cc
    if isinstance(models, Mapping):
        scales = estimate_model_norm_scales(list(models.values()), rows.train_NT, cfg.model_hookpoints,
                                            n_tokens=fit_cfg.norm_tokens, batch_size=fit_cfg.model_batch_size)
    else:
        scales = estimate_norm_scales(models, rows.train_NT, cfg.all_hookpoints, n_tokens=fit_cfg.norm_tokens,
                                      batch_size=fit_cfg.model_batch_size)
    cc.norm_scale_L.copy_(scales)
    return cc


def _check_parent(cc: Crosscoder, models: Any) -> None:
    if isinstance(models, Mapping):
        if list(cc.cfg.models or []) != list(models):
            raise FeatgraphError(f"the parent crosscoder reads the models {cc.cfg.models}, not {list(models)}; pass --models with those names")
        check_models(list(models.values()), cc.cfg.model_hookpoints, list(models))
    else:
        check_compatible(cc, models, where="the parent crosscoder")


def _check_room(cc: Crosscoder, rows: TokenRows, fit_cfg: FitConfig, out: str | os.PathLike | None) -> None:
    """Before training: the output folder and the activation cache can be written and their disks hold what the run
    writes (weights; two checkpoints of weights and Adam moments; the cached activations), with a 10 % margin."""
    weights = 4 * sum(p.numel() for p in cc.parameters())
    if out is not None:
        checkpoints = 2 * 3 * weights if fit_cfg.checkpoint_every > 0 else 0
        check_output(out, need_bytes=int(1.1 * (weights + checkpoints)), flag="output folder")
    if fit_cfg.activation_cache is not None:
        n_tokens = rows.train_NT.shape[0] * max(rows.train_NT.shape[1] - 1, 0)  # BOS dropped; float32 values
        writes = _rank_world()[1] == 1 and not (Path(fit_cfg.activation_cache) / "meta.json").exists()  # torchrun ranks only read
        need = 4 * n_tokens * len(cc.cfg.all_hookpoints) * cc.cfg.d_model if writes else 0
        check_output(fit_cfg.activation_cache, need_bytes=int(1.1 * need), flag="--activation-cache", replace=False)


def _prefetch_pays(device: str) -> bool:
    """Whether a background refill can overlap training: on CUDA (the model and the step share the GPU's queue, the
    host thread only launches); on the CPU both want the same cores and it measured no gain on 2 of them."""
    return torch.device(device).type == "cuda"


def _buffer(cc: Crosscoder, models: Any, rows: TokenRows, train_cfg: TrainConfig, fit_cfg: FitConfig, seed: int, device: str,
            progress: bool) -> ActivationBuffer:
    """The shuffled buffer over this process's training rows: all of them, or under torchrun this rank's share
    (:func:`~crosscoder.harvest.rank_rows`, the same share whether the rows run through the model or come from the
    activation cache)."""
    rank, world = _rank_world()
    n_rows = rows.train_NT.shape[0]
    share = None
    if world > 1:
        if n_rows < world:
            raise FeatgraphError(f"{n_rows} training rows cannot be shared by {world} torchrun ranks; use more data or fewer ranks")
        share = rank_rows(n_rows, rank, world, seed)
    source = None
    if fit_cfg.activation_cache is not None:
        if isinstance(models, Mapping):
            raise FeatgraphError("--activation-cache holds one model's activations; drop it for a model crosscoder")
        from .activation_cache import open_activation_cache, write_activation_cache

        if world == 1:
            source = write_activation_cache(models, rows.train_NT, cc.cfg.all_hookpoints, fit_cfg.activation_cache, progress=progress)
        else:  # one process writes the cache beforehand; every rank reads its share and none writes
            source = RowSubset(open_activation_cache(models, rows.train_NT, cc.cfg.all_hookpoints, fit_cfg.activation_cache), share)
    model_arg = dict(models) if isinstance(models, Mapping) else models
    tokens_NT = rows.train_NT if share is None else rows.train_NT[share]
    return ActivationBuffer(model_arg, tokens_NT, cc.cfg.all_hookpoints, cc.norm_scale_L.cpu(), train_cfg.batch_size,
                            n_buffer_tokens=fit_cfg.buffer_tokens, model_batch_size=fit_cfg.model_batch_size, seed=seed + rank,
                            device=device, source=source, prefetch=fit_cfg.prefetch and _prefetch_pays(device))


def fit(
    models: Any,
    rows: TokenRows,
    train_cfg: TrainConfig,
    *,
    cc_cfg: CrosscoderConfig | None = None,
    parent: Crosscoder | None = None,
    parent_path: str | os.PathLike | None = None,
    stage: str | None = None,
    residual_of: Crosscoder | None = None,
    fit_cfg: FitConfig | None = None,
    out: str | os.PathLike | None = None,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> FitResult:
    """Train a new crosscoder of ``cc_cfg`` (or fine-tune ``parent`` as ``stage``) on ``models`` over ``rows``.

    Parameters
    ----------
    models : HookedTransformer or mapping name → HookedTransformer
        One model, or every model of a model crosscoder (``cc_cfg.models`` must list the same names, in order).
    rows : TokenRows
        Training rows (streamed through the buffer) and held-out rows (the metrics), BOS at position 0.
    train_cfg : TrainConfig
        The optimiser's schedule.
    cc_cfg, parent, parent_path, stage
        Either a config for a fresh crosscoder, or a loaded ``parent`` (from ``parent_path``, recorded in its lineage)
        fine-tuned as ``stage``. A fresh crosscoder given a ``stage`` starts its lineage with it.
    residual_of : Crosscoder, optional
        With ``cc_cfg``: train the new crosscoder on what this frozen one fails to reconstruct
        (:func:`crosscoder.residual.residual_of`; same slots, its normalisation scales, its path in ``parent_path``).
        The metrics are then those of the sum (:func:`~crosscoder.residual.combine_crosscoders` of the two); cfg.json
        also records ``residual_of`` (absolute path) and ``residual_metrics`` (:func:`residual_metrics`), and the
        lineage starts with stage ``residual`` (or ``stage``) whose parent is that path.
    out : path, optional
        Folder to save to (replaced atomically; checkpoints in ``<out>.ckpt/``). Under torchrun only rank 0 saves.
    extra : mapping, optional
        More JSON-able provenance for cfg.json (the run's configs).

    Returns
    -------
    FitResult
        The crosscoder (eval mode), its metrics on ``fit_cfg.eval_rows`` held-out rows (with ``residual_of``: of the
        sum), the training record and, for a model crosscoder, its model diff.
    """
    fit_cfg = fit_cfg or FitConfig()
    if (cc_cfg is None) == (parent is None):
        raise FeatgraphError("fit() takes either cc_cfg (a new crosscoder) or parent (fine-tuning), not both or neither")
    if residual_of is not None and cc_cfg is None:
        raise FeatgraphError("fit(residual_of=...) trains a new dictionary on the frozen one's residual: pass cc_cfg, not parent")
    names = list((cc_cfg or parent.cfg).models or [])
    if names and not isinstance(models, Mapping):
        raise FeatgraphError(f"the crosscoder reads the models {names}; pass a mapping name → model for each of them")
    if isinstance(models, Mapping):  # every step takes the models in the crosscoder's order (scales, buffer slots)
        if sorted(names) != sorted(models):
            raise FeatgraphError(f"the crosscoder reads the models {names}, but {sorted(models)} were given; pass a mapping with exactly those names")
        models = {n: models[n] for n in names}
    frozen = copy.deepcopy(residual_of).to(device) if residual_of is not None else None  # the caller's stays as it is
    if parent is None:
        cc = _initialise(cc_cfg, models, rows, fit_cfg, seed, device, frozen)
    else:
        cc = parent.to(device)
        _check_parent(cc, models)
    rank, _ = _rank_world()
    if rank == 0:
        _check_room(cc, rows, fit_cfg, out)
    buf = _buffer(cc, models, rows, train_cfg, fit_cfg, seed, device, progress)
    ckpt = {}
    if out is not None and fit_cfg.checkpoint_every > 0:
        ckpt = dict(checkpoint_dir=str(out) + ".ckpt", checkpoint_every=fit_cfg.checkpoint_every, resume=fit_cfg.resume)
    progress = progress and rank == 0
    with buf:  # leaving it stops the prefetch thread, which runs the model, before the metrics run it
        if parent is None:
            with residual_targets(cc, frozen) if frozen is not None else contextlib.nullcontext():
                result = train_crosscoder(cc, buf, train_cfg, progress=progress, **ckpt)
            if frozen is not None:
                cc.lineage = [{"stage": stage or "residual", "parent": _path_or_none(parent_path)}]
            elif isinstance(models, Mapping):
                cc.lineage = [{"stage": stage or "model_crosscoder", "parent": None, "models": list(models)}]
            elif stage is not None:
                cc.lineage = [{"stage": stage, "parent": None}]
        else:
            cc, result = finetune_crosscoder(parent_path or "<in memory>", buf, train_cfg, stage=stage or "finetune", device=device,
                                             cc=cc, progress=progress, **ckpt)
    cc.eval()
    if rank != 0:
        return FitResult(cc, None, result, None)
    val_NT = rows.val_NT[: fit_cfg.eval_rows]
    diff = model_diff(cc) if isinstance(models, Mapping) else None
    metrics = _metrics(cc if frozen is None else combine_crosscoders([frozen, cc]), models, val_NT, fit_cfg)
    if out is not None:
        meta = {"metrics": metrics.to_dict(), "data_source": rows.source, "seed": seed, **(extra or {})}
        if diff is not None:
            meta["model_diff"] = diff.summary()
        if frozen is not None:
            meta["residual_of"] = _path_or_none(parent_path)
            meta["residual_metrics"] = residual_metrics(cc, frozen, models, val_NT)
        save_crosscoder(cc, out, extra=meta)
        log.info("saved %s", out)
    return FitResult(cc, metrics, result, diff)


def _path_or_none(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).absolute())


def _metrics(cc: Crosscoder, models: Any, val_NT: torch.Tensor, fit_cfg: FitConfig, splice: bool = True) -> CrosscoderMetrics:
    """The held-out metrics fit reports: :func:`~crosscoder.metrics.evaluate` for one model (splice-in numbers as
    ``fit_cfg`` says, unless ``splice`` is off), the reconstruction of every model for a model crosscoder."""
    if isinstance(models, Mapping):
        metrics = model_reconstruction_metrics(cc, models, val_NT)
        if hasattr(cc, "prefix_metrics"):  # Matryoshka: each nested prefix's reconstruction
            metrics.prefixes = cc.prefix_metrics(models, val_NT, full=metrics)
        return metrics
    return evaluate(cc, models, val_NT, splice=splice and fit_cfg.splice, splice_convention=fit_cfg.splice_convention)


def residual_metrics(cc: Crosscoder, frozen: Crosscoder, models: Any, tokens_NT: torch.Tensor) -> dict[str, Any]:
    """A residual dictionary's own figures on the token rows: how much of ``frozen``'s residual it reconstructs —
    ``fvu_pooled`` / ``fvu_per_hookpoint`` relative to the residual's variance (1: nothing explained) — with its
    ``l0``, ``dead_fraction`` and ``n_features``. (Its CE loss recovered alone means nothing: it reconstructs an
    error, not the activations; the sum's is in fit's metrics.)"""
    with residual_targets(cc, frozen):  # reconstruction only (no Matryoshka prefixes: a truncation has no residual target)
        if isinstance(models, Mapping):
            m = model_reconstruction_metrics(cc, models, tokens_NT)
        else:
            m = reconstruction_metrics(cc, harvest(models, tokens_NT, cc.cfg.all_hookpoints, 32, device=cc.device))
    return {"fvu_pooled": m.fvu_pooled, "fvu_per_hookpoint": list(m.fvu_per_hookpoint), "l0": m.l0,
            "dead_fraction": m.dead_fraction, "n_features": cc.cfg.n_features}


class ResidualRound(NamedTuple):
    """One row of :func:`train_residual_rounds`' table: the running sum after a round (round 0: the frozen one)."""

    round: int
    n_features: int                     # features of the running sum
    metrics: CrosscoderMetrics | None   # the running sum on the held-out rows (None on torchrun ranks other than 0)
    residual: dict[str, Any] | None     # the round's own figures on its residual (residual_metrics); None for round 0

    def to_dict(self) -> dict[str, Any]:
        """The figures cfg.json keeps (``extra.residual_rounds``): FVU pooled and per hookpoint, L0, dead fraction,
        CE loss recovered and KL per hookpoint (empty without splice-in) of the running sum, its size."""
        m = self.metrics
        figures = {} if m is None else {
            "fvu_pooled": m.fvu_pooled, "fvu_per_hookpoint": list(m.fvu_per_hookpoint), "l0": m.l0, "dead_fraction": m.dead_fraction,
            "ce_loss_recovered": list(m.ce_loss_recovered), "kl_per_hookpoint": list(m.kl_per_hookpoint)}
        return {"round": self.round, "n_features": self.n_features, **figures, "residual": self.residual}


class ResidualRounds(NamedTuple):
    added: Crosscoder            # what the rounds added: their dictionaries combined (round 1's own with one round)
    combined: Crosscoder         # the frozen one plus everything added (combine_crosscoders([frozen, added]))
    rounds: list[ResidualRound]  # round 0 (the frozen one alone), then one per round
    train: list[TrainResult]     # each round's training record


def train_residual_rounds(
    models: Any,
    rows: TokenRows,
    train_cfg: TrainConfig,
    frozen: Crosscoder,
    cc_cfg: CrosscoderConfig,
    rounds: int = 1,
    *,
    frozen_path: str | os.PathLike | None = None,
    fit_cfg: FitConfig | None = None,
    out: str | os.PathLike | None = None,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> ResidualRounds:
    """``rounds`` residual dictionaries of ``cc_cfg``, each trained by :func:`fit` on the residual of ``frozen`` plus the
    rounds before it (round r's weights initialised with seed ``cc_cfg.seed + r``, its buffer with ``seed + r``: not the
    frozen one's own start and batch order when it was trained with the same seed).

    Every round's running sum is evaluated on the same ``fit_cfg.eval_rows`` held-out rows, as is ``frozen`` alone
    (round 0). ``out`` receives what was added (so ``combine_crosscoders([frozen, added])`` is the sum), with cfg.json's
    ``extra`` holding ``residual_of`` (``frozen_path``, absolute), ``metrics`` (of the final sum) and
    ``residual_rounds`` (:meth:`ResidualRound.to_dict` of each row), after ``extra``.
    """
    if rounds < 1:
        raise FeatgraphError(f"rounds must be at least 1, got {rounds}")
    fit_cfg = fit_cfg or FitConfig()
    if fit_cfg.checkpoint_every > 0 or fit_cfg.resume:
        raise FeatgraphError("residual rounds write no training checkpoints (each round is short and starts from the "
                             "sum before it); drop --checkpoint-every and --resume")
    if out is not None and _rank_world()[0] == 0:
        check_output(out)
    frozen = copy.deepcopy(frozen).to(device).eval()  # the caller's stays where and as it is
    check_combinable([frozen], ["(frozen)"])  # before any round: the frozen one, then the new ones' slots and rule
    check_same_slots([frozen.cfg, cc_cfg], ["(frozen)", "(new)"])
    inference_rule(ARCHITECTURES.get(cc_cfg.architecture))
    val_NT = rows.val_NT[: fit_cfg.eval_rows]
    rank0 = _rank_world()[0] == 0
    table = [ResidualRound(0, frozen.cfg.n_features, _metrics(frozen, models, val_NT, fit_cfg) if rank0 else None, None)]
    running, added, trained = frozen, [], []
    for r in range(1, rounds + 1):
        cfg_r = dataclasses.replace(cc_cfg, seed=cc_cfg.seed + r)
        res = fit(models, rows, train_cfg, cc_cfg=cfg_r, residual_of=running, parent_path=frozen_path, fit_cfg=fit_cfg,
                  seed=seed + r, device=device, progress=progress)
        res.cc.lineage[0]["round"] = r
        own = residual_metrics(res.cc, running, models, val_NT) if rank0 else None
        running = combine_crosscoders([running, res.cc])
        added.append(res.cc)
        trained.append(res.train)
        table.append(ResidualRound(r, running.cfg.n_features, res.metrics, own))
        log.info("residual round %d: %d features, FVU %s", r, running.cfg.n_features, res.metrics and f"{res.metrics.fvu_pooled:.4f}")
    out_cc = added[0]
    if rounds > 1:
        out_cc = combine_crosscoders(added, [f"round {r}" for r in range(1, rounds + 1)])
        out_cc.lineage = [{"stage": "residual", "parent": _path_or_none(frozen_path), "rounds": rounds,
                           "parts": out_cc.lineage[0]["parts"]}]
    if out is not None and rank0:
        meta = {"data_source": rows.source, "seed": seed, **(extra or {}), "residual_of": _path_or_none(frozen_path),
                "metrics": table[-1].metrics.to_dict(), "residual_rounds": [row.to_dict() for row in table]}
        save_crosscoder(out_cc, out, extra=meta)
        log.info("saved %s", out)
    return ResidualRounds(out_cc, running, table, trained)
