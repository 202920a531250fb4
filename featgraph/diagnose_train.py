"""Diagnostics that train: L0 by pruning vs by penalty, and a width sweep (``featgraph crosscoder diagnose``).

Both take a trained one-model crosscoder (SAE, transcoder), the model, the token rows and a short training schedule,
and answer with held-out numbers (:func:`crosscoder.metrics.evaluate` on the first ``FitConfig.eval_rows`` held-out
rows): FVU per written hookpoint and pooled, L0, dead fraction and splice-in CE loss recovered per hookpoint.

**Pruning vs penalty** (:func:`prune_vs_penalty`). To reach a target L0 there are two roads:

* *pruning* (no retraining): count how often each latent fires on the first ``freq_rows`` training rows (eval mode),
  then switch off the most frequent latents — the fewest such that the mean L0 on those rows is at most the target.
  A switched-off latent can never fire (:func:`switch_off`: its encoder column and decoder row zeroed, its encoder
  bias −10⁴), in a copy; the others fire exactly as before in eval mode for ReLU, JumpReLU and BatchTopK's
  threshold rule, so the L0 on those rows falls by exactly the removed latents' frequencies.
* *penalty*: fine-tune a copy of the parent on the same training rows with a sparser setting, a short run of
  ``train_cfg``. ReLU and JumpReLU (and subclasses): a larger λ (``TrainConfig.l1_coeff``), found by geometric steps
  from the parent's λ (×2 while the held-out L0 is above the target, ÷2 while below) until the L0 crosses the target,
  then — if the run budget allows — one run at the λ interpolated linearly in log λ between the two runs that
  bracket it; every run is reported and the one chosen is the run whose held-out L0 is closest to the target from
  below (if none got below, the sparsest, with ``reached`` false). Runs are shared between targets (same λ, same
  run). BatchTopK (and subclasses): k = round(target) on the copy, one run; its learned inference threshold θ is
  reset, so the fine-tune learns it afresh for the new k (the first batch sets it, the EMA follows) rather than
  drifting from the old k's θ.
* *control*: the same fine-tune at the parent's own sparsity (λ or k, θ kept), so that the effect of the extra
  training can be told from the effect of the sparser setting.

Every run reads the same training batches in the same order (the buffer is seeded with ``seed``), so the arms differ
only in their sparsity setting; the same seed gives the same numbers.

**Width sweep** (:func:`width_sweep`): short runs from scratch at several dictionary sizes on the same rows, with the
parent's architecture, options and hookpoints (BatchTopK's k clamped to the width where it exceeds it, and the clamp
recorded), each initialised from ``seed``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from crosscoder.batchtopk import BatchTopKCrosscoder
from crosscoder.config import FitConfig, TrainConfig
from crosscoder.crosscoder import Crosscoder
from crosscoder.data import TokenRows
from crosscoder.errors import FeatgraphError
from crosscoder.fitting import fit
from crosscoder.harvest import harvest
from crosscoder.jumprelu import JumpReLUCrosscoder
from crosscoder.metrics import CrosscoderMetrics, evaluate
from crosscoder.relu import ReLUCrosscoder

from .plots import _figure, short_hookpoint

__all__ = ["ArmResult", "PenaltyArm", "PruneArm", "PruneVsPenalty", "TargetResult", "WidthRun", "WidthSweep", "firing_counts",
           "prune_vs_penalty", "prune_vs_penalty_figure", "switch_off", "width_sweep", "width_sweep_figure"]

log = logging.getLogger(__name__)

OFF_BIAS = -1e4
"""Encoder bias of a switched-off latent (its encoder column is zero, so its pre-activation is exactly this)."""
SELECTION = ("penalty run chosen: held-out L0 closest to the target from below (the sparsest run if none got below); "
             "lambda searched by x2 / /2 steps from the parent's, then one run interpolated in log lambda")


# ---------------------------------------------------------------- records


def _nan(v):
    """A JSON number back to a float (null, written for NaN, becomes NaN again)."""
    return float("nan") if v is None else v


def _arm_fields(d: dict, cls: type) -> dict:
    """Keyword arguments of ``cls`` from its JSON form (nulls back to NaN in the numeric fields)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in d.items() if k in names}
    for k in ("l0", "fvu_pooled", "dead_fraction", "l0_frequency_rows"):
        if k in out:
            out[k] = _nan(out[k])
    for k in ("fvu_per_hookpoint", "ce_loss_recovered"):
        if k in out:
            out[k] = [_nan(v) for v in out[k]]
    return out



@dataclass
class ArmResult:
    """One dictionary's numbers on the held-out rows."""

    l0: float
    """Mean active latents per token."""
    fvu_pooled: float
    """Variance-weighted FVU over the written hookpoints."""
    fvu_per_hookpoint: list[float]
    """Mean-centred FVU at each written hookpoint."""
    ce_loss_recovered: list[float]
    """Splice-in CE loss recovered at each written hookpoint (empty without splice)."""
    dead_fraction: float
    """Fraction of latents that never fired on the held-out rows."""
    l1_coeff: float | None = None
    """λ of the run (ReLU, JumpReLU); None for pruning and BatchTopK."""
    k: int | None = None
    """k of the run (BatchTopK); None otherwise."""

    @classmethod
    def from_metrics(cls, m: CrosscoderMetrics, **kw) -> "ArmResult":
        return cls(l0=m.l0, fvu_pooled=m.fvu_pooled, fvu_per_hookpoint=list(m.fvu_per_hookpoint),
                   ce_loss_recovered=list(m.ce_loss_recovered), dead_fraction=m.dead_fraction, **kw)


@dataclass
class PruneArm(ArmResult):
    """The parent with its most frequent latents switched off (no retraining)."""

    n_pruned: int = 0
    """Latents switched off."""
    pruned_features: list[int] = field(default_factory=list)
    """Their indices, most frequent first."""
    l0_frequency_rows: float = float("nan")
    """Mean L0 on the training rows the frequencies were counted on (≤ the target by construction)."""


@dataclass
class PenaltyArm(ArmResult):
    """The fine-tune with the sparser setting chosen for one target, and every run tried for it."""

    reached: bool = True
    """Whether the chosen run's held-out L0 is at most the target."""
    runs: list[ArmResult] = field(default_factory=list)
    """Every run tried for this target, in the order tried (the control first)."""


@dataclass
class TargetResult:
    target_l0: float
    pruning: PruneArm
    penalty: PenaltyArm


@dataclass
class PruneVsPenalty:
    """L0 by pruning vs by penalty (:func:`prune_vs_penalty`); every number on the same held-out rows."""

    architecture: str
    hookpoints: list[str]
    """The written hookpoints the per-hookpoint lists refer to."""
    knob: str
    """What the penalty arm changes: ``l1_coeff`` (λ) or ``k``."""
    parent: ArmResult
    """The parent as it is."""
    control: ArmResult
    """The same short fine-tune at the parent's own λ or k."""
    targets: list[TargetResult]
    frequency_rows: int
    """Training rows the firing frequencies were counted on."""
    frequency_tokens: int
    parent_l0_frequency_rows: float
    """The parent's mean L0 on those rows."""
    train_steps: int
    """Steps of every fine-tune."""
    eval_rows: int
    seed: int
    selection: str = SELECTION
    """How the penalty run of each target was chosen."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PruneVsPenalty":
        """The record :meth:`to_dict` wrote (as read back from diagnose.json, NaN written as null)."""
        def penalty(p: dict) -> PenaltyArm:
            return PenaltyArm(**{**_arm_fields(p, PenaltyArm), "runs": [ArmResult(**_arm_fields(x, ArmResult)) for x in p["runs"]]})

        targets = [TargetResult(t["target_l0"], PruneArm(**_arm_fields(t["pruning"], PruneArm)), penalty(t["penalty"])) for t in d["targets"]]
        rest = {k: v for k, v in d.items() if k not in ("parent", "control", "targets")}
        rest["parent_l0_frequency_rows"] = _nan(rest.get("parent_l0_frequency_rows"))
        return cls(parent=ArmResult(**_arm_fields(d["parent"], ArmResult)), control=ArmResult(**_arm_fields(d["control"], ArmResult)),
                   targets=targets, **rest)


@dataclass
class WidthRun(ArmResult):
    """One short run from scratch at one width."""

    n_features: int = 0
    k_clamped: bool = False
    """BatchTopK: the parent's k exceeded this width and was clamped to it."""


@dataclass
class WidthSweep:
    """Width sweep (:func:`width_sweep`); every number on the same held-out rows."""

    architecture: str
    hookpoints: list[str]
    parent_n_features: int
    runs: list[WidthRun]
    """One per width, narrowest first."""
    train_steps: int
    eval_rows: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WidthSweep":
        """The record :meth:`to_dict` wrote (as read back from diagnose.json, NaN written as null)."""
        return cls(**{**d, "runs": [WidthRun(**_arm_fields(r, WidthRun)) for r in d["runs"]]})


# ---------------------------------------------------------------- pruning


def _check_one_model(cc: Crosscoder) -> None:
    if cc.cfg.models:
        raise FeatgraphError(f"diagnose's training arms take a one-model crosscoder; this one reads the models {cc.cfg.models} — "
                             "run them on a crosscoder, SAE or transcoder of one model")


@torch.no_grad()
def firing_counts(cc: Crosscoder, model, tokens_NT: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, int]:
    """How many tokens of ``tokens_NT`` (BOS dropped) each latent fires on, in eval mode, as (F,) int64 on the CPU,
    and the number of tokens."""
    was_training = cc.training
    cc.eval()
    counts_F = torch.zeros(cc.cfg.n_features, dtype=torch.long, device=cc.device)
    n = 0
    for x_BLD in harvest(model, tokens_NT, cc.cfg.all_hookpoints, batch_size, device=cc.device):
        counts_F += (cc.encode(x_BLD) > 0).sum(dim=0)
        n += x_BLD.shape[0]
    cc.train(was_training)
    return counts_F.cpu(), n


@torch.no_grad()
def switch_off(cc: Crosscoder, features: Iterable[int]) -> Crosscoder:
    """A copy of ``cc`` (eval mode) in which ``features`` can never fire: their encoder columns and decoder rows are
    zero and their encoder bias is −10⁴, so their pre-activation is −10⁴ whatever the input (ReLU, JumpReLU and
    BatchTopK give 0 there). The other latents are untouched; ``cc`` is unchanged."""
    if "W_dec_FLD" not in cc._parameters:
        raise FeatgraphError("this crosscoder has designated shared latents; switching latents off handles a plain decoder only")
    out = copy.deepcopy(cc)
    idx = torch.as_tensor(sorted(set(int(i) for i in features)), dtype=torch.long, device=out.device)
    if idx.numel():
        if int(idx.min()) < 0 or int(idx.max()) >= cc.cfg.n_features:
            raise FeatgraphError(f"latents to switch off must lie in 0..{cc.cfg.n_features - 1}, got {idx.tolist()}")
        out.W_enc_LDF[:, :, idx] = 0.0
        out.b_enc_F[idx] = OFF_BIAS
        out.W_dec_FLD[idx] = 0.0
    return out.eval()


def _fewest_to_prune(counts_F: torch.Tensor, n_tokens: int, target: float) -> list[int]:
    """The most frequent latents (ties by index), the fewest whose removal brings Σ counts / n_tokens to ≤ ``target``."""
    counts = [int(c) for c in counts_F.tolist()]
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    remaining, budget = sum(counts), target * n_tokens
    pruned: list[int] = []
    for i in order:
        if remaining <= budget:
            break
        pruned.append(i)
        remaining -= counts[i]
    return pruned


# ---------------------------------------------------------------- fine-tunes


def _knob(cc: Crosscoder) -> str:
    if isinstance(cc, BatchTopKCrosscoder):
        return "k"
    if isinstance(cc, (ReLUCrosscoder, JumpReLUCrosscoder)):
        return "l1_coeff"
    raise FeatgraphError(f"the penalty arm changes λ (relu, jumprelu) or k (batchtopk) and their subclasses; a {cc.cfg.architecture} "
                         "crosscoder is none of them — diagnose its L0 with the pruning-free parts (drop-k, per-hookpoint table)")


@torch.no_grad()
def _set_k(cc: Crosscoder, k: int) -> None:
    """k of a BatchTopK crosscoder changed in place (its config and options), with θ reset to be learned afresh."""
    cfg = dataclasses.replace(cc.cfg, options={**cc.cfg.options, "k": int(k)})
    cc.cfg, cc.opts = cfg, cc.Options(**cfg.options)
    cc.threshold.fill_(-1.0)


def _evaluate(cc: Crosscoder, model, rows: TokenRows, fit_cfg: FitConfig) -> CrosscoderMetrics:
    """Held-out metrics exactly as :func:`crosscoder.fitting.fit` computes them."""
    return evaluate(cc, model, rows.val_NT[: fit_cfg.eval_rows], splice=fit_cfg.splice, splice_convention=fit_cfg.splice_convention)


def _check_rows(rows: TokenRows, fit_cfg: FitConfig) -> None:
    if rows.train_NT.shape[0] == 0 or rows.val_NT.shape[0] == 0:
        raise FeatgraphError(f"diagnose's training arms need training and held-out rows, got {rows.train_NT.shape[0]} and "
                             f"{rows.val_NT.shape[0]}; use more data (--rows)")


def prune_vs_penalty(
    cc: Crosscoder, model, rows: TokenRows, target_l0s: Sequence[float], train_cfg: TrainConfig, fit_cfg: FitConfig,
    seed: int = 0, device: str = "cpu", progress: bool = True, *, freq_rows: int = 256, max_penalty_runs: int = 4,
) -> PruneVsPenalty:
    """Reach each of ``target_l0s`` by pruning the most frequent latents and by a sparser fine-tune, beside a control
    fine-tune at the parent's own sparsity (module docstring).

    ``train_cfg`` is the schedule of every fine-tune (its λ taken as the parent's; the CLI passes the parent's recorded
    training config with fewer steps; its λ warm-up applies to every fine-tune, the control's included).
    ``freq_rows``: training rows the firing frequencies are counted on.
    ``max_penalty_runs``: new λ runs per target at most (the control not counted). ``cc`` is never modified.
    """
    _check_one_model(cc)
    _check_rows(rows, fit_cfg)
    targets = _check_targets(target_l0s)
    if max_penalty_runs < 1 or freq_rows < 1:
        raise FeatgraphError(f"max_penalty_runs and freq_rows must be >= 1, got {max_penalty_runs} and {freq_rows}")
    knob = _knob(cc)
    parent = copy.deepcopy(cc).to(device).eval()
    notes: list[str] = []
    bar = tqdm(desc="prune vs penalty: fine-tunes", unit="run", disable=not progress, leave=False)
    runs: dict[float, ArmResult] = {}

    def finetune(value: float) -> ArmResult:
        """The fine-tune of a copy of the parent at λ = value or k = value (cached: a value is run once)."""
        if value in runs:
            return runs[value]
        child = copy.deepcopy(parent)
        if knob == "k":
            if int(value) != child.opts.k:
                _set_k(child, int(value))
            cfg, kw = train_cfg, {"k": int(value)}
        else:
            cfg, kw = dataclasses.replace(train_cfg, l1_coeff=value), {"l1_coeff": value}
        res = fit(model, rows, cfg, parent=child, stage="diagnose_finetune", fit_cfg=fit_cfg, seed=seed, device=device, progress=progress)
        runs[value] = ArmResult.from_metrics(res.metrics, **kw)
        log.info("fine-tune at %s=%s: L0 %.3g, FVU %.3g", knob, value, runs[value].l0, runs[value].fvu_pooled)
        bar.update(1)
        return runs[value]

    with bar:
        parent_arm = ArmResult.from_metrics(_evaluate(parent, model, rows, fit_cfg))
        own = parent.opts.k if knob == "k" else train_cfg.l1_coeff
        control = finetune(own)
        freq_NT = rows.train_NT[:freq_rows]
        counts_F, n_tokens = firing_counts(parent, model, freq_NT, fit_cfg.model_batch_size)
        results = []
        for target in targets:
            pruning = _prune_arm(parent, model, rows, fit_cfg, counts_F, n_tokens, freq_NT, target)
            if knob == "k":
                k = min(max(int(round(target)), 1), parent.cfg.n_features)
                if k != round(target):
                    notes.append(f"target L0 {target:g}: k clamped to {k} (1..n_features)")
                tried = [control] if k == own else [control, finetune(k)]
                penalty = _choose(tried[-1:], target, tried)
            else:
                tried = _search_lambda(finetune, control, own, target, max_penalty_runs, notes)
                penalty = _choose(tried, target, tried)
            results.append(TargetResult(target, pruning, penalty))
    return PruneVsPenalty(
        architecture=cc.cfg.architecture, hookpoints=list(cc.cfg.writes), knob=knob, parent=parent_arm, control=control,
        targets=results, frequency_rows=int(freq_NT.shape[0]), frequency_tokens=n_tokens,
        parent_l0_frequency_rows=float(counts_F.sum()) / max(n_tokens, 1), train_steps=train_cfg.steps,
        eval_rows=int(rows.val_NT[: fit_cfg.eval_rows].shape[0]), seed=seed,
        selection=SELECTION if knob == "l1_coeff" else "penalty run: k = round(target), theta re-learned during the fine-tune",
        notes=notes,
    )


def _check_targets(target_l0s: Sequence[float]) -> list[float]:
    targets = [float(t) for t in target_l0s]
    if not targets:
        raise FeatgraphError("give at least one target L0 (--target-l0), e.g. 8")
    bad = [t for t in targets if not (math.isfinite(t) and t > 0)]
    if bad:
        raise FeatgraphError(f"target L0 must be a number > 0, got {bad[0]}")
    return list(dict.fromkeys(targets))


def _prune_arm(parent: Crosscoder, model, rows: TokenRows, fit_cfg: FitConfig, counts_F: torch.Tensor, n_tokens: int,
               freq_NT: torch.Tensor, target: float) -> PruneArm:
    pruned = _fewest_to_prune(counts_F, n_tokens, target)
    cut = switch_off(parent, pruned)
    after_F, n = firing_counts(cut, model, freq_NT, fit_cfg.model_batch_size)
    if pruned and int(after_F[pruned].sum()):
        raise FeatgraphError(f"switched-off latents still fire in this {parent.cfg.architecture} crosscoder (its encoder is not "
                             "σ(pre) with σ(−10⁴) = 0); the pruning arm cannot remove latents from it")
    l0_rows = float(after_F.sum()) / max(n, 1)
    if l0_rows > target:  # an encoder whose latents compete (e.g. a batch top-k at inference): the rest fill in
        log.warning("pruning %d latents left L0 %.3g > target %g on the frequency rows: this encoder's latents are not independent",
                    len(pruned), l0_rows, target)
    m = _evaluate(cut, model, rows, fit_cfg)
    log.info("pruned %d latents for target L0 %g: held-out L0 %.3g, FVU %.3g", len(pruned), target, m.l0, m.fvu_pooled)
    return PruneArm.from_metrics(m, n_pruned=len(pruned), pruned_features=pruned, l0_frequency_rows=l0_rows)


def _search_lambda(finetune: Callable[[float], ArmResult], control: ArmResult, own: float, target: float, max_runs: int,
                   notes: list[str]) -> list[ArmResult]:
    """Runs tried for ``target``: the control, λ ×2 (or ÷2) until the held-out L0 crosses the target, then one run at
    the λ interpolated in log λ between the bracketing pair, while fewer than ``max_runs`` new runs were made."""
    tried = [control]
    up = control.l0 > target
    if own <= 0:
        if not up:
            return tried
        own = 1.0
        note = "the parent's lambda is 0: the penalty search starts at lambda = 1"
        if note not in notes:
            notes.append(note)
        tried.append(finetune(own))
    lam, bracket = own, None
    while len(tried) - 1 < max_runs:
        if (tried[-1].l0 > target) != up:
            bracket = (tried[-2], tried[-1])
            break
        lam = lam * 2 if up else lam / 2
        tried.append(finetune(lam))
    if bracket is None and (tried[-1].l0 > target) != up and len(tried) > 1:
        bracket = (tried[-2], tried[-1])
    if bracket is not None and len(tried) - 1 < max_runs:
        a, b = bracket
        if a.l0 != b.l0 and min(a.l1_coeff, b.l1_coeff) > 0:
            la, lb = math.log(a.l1_coeff), math.log(b.l1_coeff)
            lam_i = math.exp(la + (target - a.l0) / (b.l0 - a.l0) * (lb - la))
            if min(a.l1_coeff, b.l1_coeff) < lam_i < max(a.l1_coeff, b.l1_coeff):
                tried.append(finetune(lam_i))
    return tried


def _choose(candidates: list[ArmResult], target: float, tried: list[ArmResult]) -> PenaltyArm:
    """The candidate whose L0 is closest to ``target`` from below (else the sparsest), with every run ``tried``."""
    below = [r for r in candidates if r.l0 <= target]
    best = max(below, key=lambda r: r.l0) if below else min(candidates, key=lambda r: r.l0)
    return PenaltyArm(**dataclasses.asdict(best), reached=bool(below), runs=[copy.deepcopy(r) for r in tried])


# ---------------------------------------------------------------- width sweep


def width_sweep(
    cc: Crosscoder, model, rows: TokenRows, widths: Sequence[int], train_cfg: TrainConfig, fit_cfg: FitConfig,
    seed: int = 0, device: str = "cpu", progress: bool = True,
) -> WidthSweep:
    """Short runs of ``train_cfg`` from scratch at each of ``widths`` (n_features), with ``cc``'s architecture, options
    and hookpoints, on ``rows``; held-out metrics per width (module docstring). ``cc`` is never modified."""
    _check_one_model(cc)
    _check_rows(rows, fit_cfg)
    ws = sorted({int(w) for w in widths})
    if not ws:
        raise FeatgraphError("give at least one width (--widths), e.g. 256,1024,4096")
    if ws[0] <= 0:
        raise FeatgraphError(f"widths must be positive dictionary sizes, got {ws[0]}")
    topk = isinstance(cc, BatchTopKCrosscoder)
    relu_like = isinstance(cc, (ReLUCrosscoder, JumpReLUCrosscoder))
    notes, out, plans = [], [], []
    for w in ws:  # every width's config first: one that cannot be built fails before any run trains
        options, clamped = dict(cc.cfg.options), False
        if topk and options["k"] > w:
            notes.append(f"width {w}: k clamped from {options['k']} to {w}")
            log.warning("width sweep: k = %d exceeds width %d; clamped to %d", options["k"], w, w)
            options["k"], clamped = w, True
        plans.append((w, options, clamped, dataclasses.replace(cc.cfg, n_features=w, options=options, seed=seed)))
    for w, options, clamped, cfg in tqdm(plans, desc="width sweep", unit="width", disable=not progress, leave=False):
        res = fit(model, rows, train_cfg, cc_cfg=cfg, stage="diagnose_width", fit_cfg=fit_cfg, seed=seed, device=device, progress=progress)
        run = WidthRun.from_metrics(res.metrics, n_features=w, k_clamped=clamped, k=options["k"] if topk else None,
                                    l1_coeff=train_cfg.l1_coeff if relu_like else None)
        log.info("width %d: L0 %.3g, FVU %.3g, dead %.2f", w, run.l0, run.fvu_pooled, run.dead_fraction)
        out.append(run)
    return WidthSweep(architecture=cc.cfg.architecture, hookpoints=list(cc.cfg.writes), parent_n_features=cc.cfg.n_features,
                      runs=out, train_steps=train_cfg.steps, eval_rows=int(rows.val_NT[: fit_cfg.eval_rows].shape[0]), seed=seed,
                      notes=notes)


# ---------------------------------------------------------------- plots


def _ce_mean(arm: ArmResult) -> float:
    """Mean CE loss recovered over the hookpoints where it is defined (NaN if none)."""
    v = [x for x in arm.ce_loss_recovered if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def prune_vs_penalty_figure(r: PruneVsPenalty):
    """Pooled FVU and CE loss recovered (mean over the written hookpoints) against held-out L0 for the three arms:
    pruning (one point per target), penalty (the chosen run per target; every run tried faint) and the control
    (one point), with the parent and the targets (dotted) for reference."""
    has_ce = bool(r.parent.ce_loss_recovered)
    n_hp = len(r.hookpoints)
    ce_title = "CE loss recovered (↑)" + (f", mean of {n_hp} hookpoints" if n_hp > 1 else "")
    panels = [("FVU pooled (↓)", lambda a: a.fvu_pooled)] + ([(ce_title, _ce_mean)] if has_ce else [])
    fig = _figure(4.2 * len(panels) + 0.4, 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    knob = "λ" if r.knob == "l1_coeff" else "k"
    for ax, (title, get) in zip(axes, panels):
        prune = sorted(r.targets, key=lambda t: t.pruning.l0)
        ax.plot([t.pruning.l0 for t in prune], [get(t.pruning) for t in prune], "o-", color="C0", label="pruning (no retraining)")
        tried = list({(x.l1_coeff, x.k): x for t in r.targets for x in t.penalty.runs}.values())
        ax.plot([x.l0 for x in tried], [get(x) for x in tried], "s", color="C1", alpha=0.3, markersize=4, linestyle="none")
        pen = sorted(r.targets, key=lambda t: t.penalty.l0)
        ax.plot([t.penalty.l0 for t in pen], [get(t.penalty) for t in pen], "s-", color="C1", label=f"penalty (sparser {knob}, fine-tune)")
        ax.plot([r.control.l0], [get(r.control)], "^", color="C2", markersize=8, label=f"control (fine-tune at the parent's {knob})")
        ax.plot([r.parent.l0], [get(r.parent)], "*", color="black", markersize=10, label="parent")
        for t in r.targets:
            ax.axvline(t.target_l0, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("L0 (held-out)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def width_sweep_figure(r: WidthSweep):
    """FVU per written hookpoint (and pooled, dashed) and CE loss recovered per hookpoint against dictionary width,
    log-x."""
    widths = [run.n_features for run in r.runs]
    has_ce = any(run.ce_loss_recovered for run in r.runs)
    panels = [("FVU (↓)", "fvu_per_hookpoint")] + ([("CE loss recovered (↑)", "ce_loss_recovered")] if has_ce else [])
    fig = _figure(4.2 * len(panels) + 0.4, 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, attr) in zip(axes, panels):
        for h, name in enumerate(r.hookpoints):
            ys = [getattr(run, attr)[h] if len(getattr(run, attr)) > h else float("nan") for run in r.runs]
            ax.plot(widths, [float("nan") if y is None else y for y in ys], "o-", color=f"C{h % 10}", label=short_hookpoint(name))
        if attr == "fvu_per_hookpoint" and len(r.hookpoints) > 1:
            ax.plot(widths, [run.fvu_pooled for run in r.runs], "k--", label="pooled")
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("dictionary width (n_features)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    return fig
