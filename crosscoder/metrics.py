"""Crosscoder metrics: one :func:`evaluate` entry point, results in one typed record (JSON via ``to_dict``).

Reconstruction, streamed over batches (:func:`reconstruction_metrics`):

* FVU per hookpoint (FVU_A, mean-centred; *not* variance relative to 0 — see SAELens #659):
  FVU_l = Σ_n ‖x_n^l − x̂_n^l‖² / Σ_n ‖x_n^l − μ^l‖², μ^l the mean over all tokens seen. The pooled FVU over the
  concatenation is Σ_l num_l / Σ_l den_l — the variance-weighted mean; the plain mean has its own name. Both are
  computed in the normalised space (mean norm √d_model per hookpoint, the space the loss is defined in).
* L0 (mean active latents per token), dead fraction (never fired), dense fraction (fire on > ``dense_above`` of
  tokens), shrinkage mean ‖x̂‖/‖x‖ per hookpoint, and latent scaling per feature (Minder et al. 2025):
  β_i = d_iᵀ(Σ_j f_ij x_j) / (‖d_i‖² Σ_j f_ij²), d_i the flattened decoder vector, x_j the target minus b_dec.

Splice-in (:func:`splice_metrics`), at each written hookpoint l, with the model's forward pass patched there:
CE loss recovered = (CE_zero − CE_splice) / (CE_zero − CE_clean), and the KL divergence KL(clean ‖ spliced) of the
next-token distributions, in nats per token. Two conventions for which positions are patched, zeroed and scored
(``splice_convention``; the one used is recorded in :class:`CrosscoderMetrics`):

* ``saelens`` (default; SAELens ``evals.get_recons_loss`` with ``exclude_special_tokens=True``, which SAEBench's
  numbers follow): the zero-ablation baseline zeroes the *whole* tensor at the hookpoint, BOS included (as
  ckkissane's crosscoder replication does too); the reconstruction replaces every position except special tokens
  (BOS at position 0, and any token id of the tokenizer's bos/eos/pad/sep/decoder_start); CE is averaged over the
  predictions made *from* non-special positions, KL over the non-special positions, both pooled over all tokens.
* ``keep_bos`` (featgraph's earlier baseline): BOS at position 0 is never touched — the reconstruction replaces and
  the zero-ablation zeroes positions 1…T−1 — and CE and KL are averaged over all T−1 next-token predictions,
  including the one made from BOS (pooled over all tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Literal, Sequence

import torch

from .crosscoder import Crosscoder
from .errors import FeatgraphError
from .model_loading import require_patchable

__all__ = ["CrosscoderMetrics", "SPLICE_CONVENTIONS", "SpliceConvention", "evaluate", "reconstruction_metrics", "splice_metrics"]

SpliceConvention = Literal["saelens", "keep_bos"]
SPLICE_CONVENTIONS = ("saelens", "keep_bos")
_SPECIAL_TOKEN_ATTRS = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")  # as SAELens


@dataclass
class CrosscoderMetrics:
    hookpoints: list[str]
    """The written hookpoints the per-hookpoint lists refer to."""
    fvu_per_hookpoint: list[float]
    """Mean-centred FVU at each hookpoint."""
    fvu_pooled: float
    """Variance-weighted FVU over all hookpoints together."""
    fvu_unweighted_mean: float
    """Plain mean of ``fvu_per_hookpoint``."""
    l0: float
    """Mean number of active features per token."""
    dead_fraction: float
    """Fraction of features that never fired on the evaluation tokens."""
    n_tokens: int
    dense_fraction: float = 0.0
    """Fraction of features active on more than ``dense_above`` of the tokens."""
    shrinkage_per_hookpoint: list[float] = field(default_factory=list)
    """Mean ‖x̂‖/‖x‖ at each hookpoint (< 1: reconstructions shrink)."""
    latent_scaling_beta: list[float] = field(default_factory=list)
    """β_i per feature (NaN, null in JSON, for features that never fired or have a zero decoder vector: undefined)."""
    ce_loss_recovered: list[float] = field(default_factory=list)
    """Splice-in CE loss recovered at each hookpoint (empty when not computed; NaN, null in JSON, where zero-ablating
    the hookpoint does not change the loss: undefined)."""
    kl_per_hookpoint: list[float] = field(default_factory=list)
    """KL(clean ‖ spliced) in nats per token at each hookpoint."""
    ce_clean: float | None = None
    ce_spliced: list[float] = field(default_factory=list)
    ce_zero_ablated: list[float] = field(default_factory=list)
    splice_convention: str | None = None
    """Positions patched, zeroed and scored by the splice-in numbers: ``saelens`` (the whole tensor zeroed, BOS
    included; special-token positions left out) or ``keep_bos`` (BOS never touched); None when not computed."""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def reconstruction_metrics(
    cc: Crosscoder, batches: Iterable[torch.Tensor], normalised: bool = False, dense_above: float = 0.1
) -> CrosscoderMetrics:
    """Stream ``batches`` of activations (B, L, D) at ``cc.cfg.all_hookpoints`` — raw unless ``normalised``."""
    L, D, F = len(cc.cfg.writes), cc.cfg.d_model, cc.cfg.n_features
    dev = cc.device
    z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=dev)  # noqa: E731
    err_L, sum_LD, sumsq_L, shrink_L = z(L), z(L, D), z(L), z(L)
    count_F, fx_F, ff_F = z(F), z(F), z(F)
    fired_F = torch.zeros(F, dtype=torch.bool, device=dev)
    W_flat_FK = cc.W_dec_FLD.flatten(1)
    l0_sum, n = 0.0, 0
    for x_BLD in batches:
        x_BLD = x_BLD.to(dev)
        if not normalised:
            x_BLD = cc.normalise(x_BLD)
        f_BF = cc.encode(x_BLD, normalised=True)
        x_hat_BLD = cc.decode(f_BF, normalised=True)
        y_BLD = cc.targets(x_BLD)
        err_L += (y_BLD - x_hat_BLD).double().pow(2).sum(dim=(0, 2))
        sum_LD += y_BLD.double().sum(dim=0)
        sumsq_L += y_BLD.double().pow(2).sum(dim=(0, 2))
        shrink_L += (x_hat_BLD.norm(dim=-1) / y_BLD.norm(dim=-1).clamp_min(1e-8)).double().sum(dim=0)
        active_BF = f_BF > 0
        fired_F |= active_BF.any(dim=0)
        count_F += active_BF.double().sum(dim=0)
        proj_BF = (y_BLD - cc.b_dec_LD).flatten(1) @ W_flat_FK.T  # d_iᵀ x_j
        fx_F += (f_BF * proj_BF).double().sum(dim=0)
        ff_F += f_BF.double().pow(2).sum(dim=0)
        l0_sum += active_BF.sum().item()
        n += x_BLD.shape[0]
    if n == 0:
        raise ValueError("no activations to evaluate")
    den_L = sumsq_L - sum_LD.pow(2).sum(dim=1) / n  # Σ‖x − μ‖² = Σ‖x‖² − n‖μ‖²
    fvu_L = (err_L / den_L.clamp_min(1e-12)).tolist()
    norm2_F = W_flat_FK.double().pow(2).sum(dim=1)
    beta_F = fx_F / (norm2_F * ff_F)
    defined_F = (ff_F > 0) & (norm2_F != 0)  # a NaN norm stays "defined", so a NaN decoder is reported, not hidden
    m = CrosscoderMetrics(
        hookpoints=cc.cfg.writes,
        fvu_per_hookpoint=fvu_L,
        fvu_pooled=(err_L.sum() / den_L.sum().clamp_min(1e-12)).item(),
        fvu_unweighted_mean=sum(fvu_L) / L,
        l0=l0_sum / n,
        dead_fraction=1.0 - fired_F.float().mean().item(),
        n_tokens=n,
        dense_fraction=(count_F / n > dense_above).float().mean().item(),
        shrinkage_per_hookpoint=(shrink_L / n).tolist(),
        latent_scaling_beta=torch.where(defined_F, beta_F, torch.nan).tolist(),
    )
    _check_reconstruction(m, cc, inputs_finite=bool(torch.isfinite(sumsq_L).all() and torch.isfinite(sum_LD).all()),
                          defined_F=defined_F.tolist())
    return m


def _check_reconstruction(m: CrosscoderMetrics, cc: Crosscoder, inputs_finite: bool, defined_F: list[bool]) -> None:
    """Raise one FeatgraphError line for the first NaN/inf reconstruction metric (the intended NaN β of a feature that
    never fired is left alone), naming the metric, its hookpoint and the likely cause."""
    from .apply import describe_crosscoder, nonfinite_crosscoder_cause

    if not inputs_finite:
        cause = "the activations given hold NaN/inf; harvest them with crosscoder.harvest.harvest, which finds where they enter"
    else:
        cause = f"{describe_crosscoder(cc)} reconstructs NaN/inf from finite activations: {nonfinite_crosscoder_cause(cc)}"
    for metric, values in (("FVU", m.fvu_per_hookpoint), ("shrinkage", m.shrinkage_per_hookpoint)):
        _require_finite(metric, values, m.hookpoints, cause)
    _require_finite("L0", [m.l0], None, cause)
    bad = [i for i, (b, d) in enumerate(zip(m.latent_scaling_beta, defined_F)) if d and not _finite(b)]
    if bad:
        raise FeatgraphError(f"metric latent-scaling beta is {m.latent_scaling_beta[bad[0]]} for feature {bad[0]} (and "
                             f"{len(bad) - 1} more features), which fired; {cause}")


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _require_finite(metric: str, values: Sequence[float], hookpoints: Sequence[str] | None, cause: str) -> None:
    """Raise one line naming ``metric`` and the hookpoint of its first NaN/inf value, if any."""
    for i, v in enumerate(values):
        if not _finite(v):
            at = f" at {hookpoints[i]}" if hookpoints is not None else ""
            raise FeatgraphError(f"metric {metric} is {v}{at}; {cause}")


def _special_token_ids(model, special_token_ids: Sequence[int] | None) -> list[int]:
    """The ids whose positions SAELens leaves out: given, or the tokenizer's bos/eos/pad/sep/decoder_start."""
    if special_token_ids is not None:
        return [int(t) for t in special_token_ids]
    tok = getattr(model, "tokenizer", None)
    ids = {getattr(tok, attr, None) for attr in _SPECIAL_TOKEN_ATTRS} if tok is not None else set()
    return sorted(int(t) for t in ids if t is not None)


def _scored_positions(tok_BT: torch.Tensor, convention: str, special_ids: list[int]) -> torch.Tensor:
    """(B, T) True where the reconstruction replaces the activation and where CE / KL are read."""
    keep_BT = torch.ones_like(tok_BT, dtype=torch.bool)
    keep_BT[:, 0] = False  # BOS: featgraph's rows start with it, and the crosscoder never saw it
    if convention == "saelens" and special_ids:
        keep_BT &= ~torch.isin(tok_BT, torch.tensor(special_ids, device=tok_BT.device))
    return keep_BT


@torch.no_grad()
def splice_metrics(
    cc: Crosscoder, model, tokens_NT: torch.Tensor, batch_size: int = 16, convention: SpliceConvention = "saelens",
    special_token_ids: Sequence[int] | None = None,
) -> dict[str, list[float] | float | str]:
    """Splice-in CE (clean, spliced, zero-ablated), CE loss recovered and KL(clean ‖ spliced) at every written
    hookpoint, as per-token means pooled over ``tokens_NT`` (BOS at position 0).

    ``convention`` picks the positions (module docstring): ``saelens`` (default) or ``keep_bos``.
    ``special_token_ids`` overrides the tokenizer's special tokens that ``saelens`` leaves out.
    """
    from .harvest import harvest

    if convention not in SPLICE_CONVENTIONS:
        raise FeatgraphError(f"splice convention must be one of {list(SPLICE_CONVENTIONS)}, got {convention!r}")
    writes, dev = cc.cfg.writes, model.cfg.device
    require_patchable(model, writes, "splice-in metrics")
    special_ids = _special_token_ids(model, special_token_ids)
    ce_clean, n_ce, n_kl = 0.0, 0, 0  # pooled sums over tokens (float64) and their counts
    ce_splice_L, ce_zero_L, kl_L = [0.0] * len(writes), [0.0] * len(writes), [0.0] * len(writes)
    for start in range(0, tokens_NT.shape[0], batch_size):
        tok_BT = tokens_NT[start : start + batch_size].to(dev)
        B, T = tok_BT.shape
        acts_BLD = next(harvest(model, tok_BT, cc.cfg.all_hookpoints, batch_size=B, device=cc.device))
        x_hat_BTLD = cc(acts_BLD).view(B, T - 1, len(writes), -1)
        keep_BT = _scored_positions(tok_BT, convention, special_ids)
        # CE of the prediction made from position t (of token t+1, t < T−1); KL of the distribution at position t
        if convention == "saelens":
            ce_mask_Bt, kl_mask_BT = keep_BT[:, :-1], keep_BT
        else:  # every next-token prediction, the one made from BOS included
            ce_mask_Bt = torch.ones_like(keep_BT[:, :-1])
            kl_mask_BT = torch.cat([ce_mask_Bt, torch.zeros_like(keep_BT[:, :1])], dim=1)
        logp_clean_BTV = model(tok_BT).float().log_softmax(-1)
        ce_clean += _token_ce(logp_clean_BTV, tok_BT)[ce_mask_Bt].double().sum().item()
        n_ce, n_kl = n_ce + int(ce_mask_Bt.sum()), n_kl + int(kl_mask_BT.sum())
        for l, name in enumerate(writes):
            splice_hook = _splice_hook(x_hat_BTLD[:, :, l].to(dev), keep_BT)
            logp_BTV = model.run_with_hooks(tok_BT, fwd_hooks=[(name, splice_hook)]).float().log_softmax(-1)
            ce_splice_L[l] += _token_ce(logp_BTV, tok_BT)[ce_mask_Bt].double().sum().item()
            kl_BT = (logp_clean_BTV.exp() * (logp_clean_BTV - logp_BTV)).sum(-1)
            kl_L[l] += kl_BT[kl_mask_BT].double().sum().item()
            logp_BTV = model.run_with_hooks(tok_BT, fwd_hooks=[(name, _zero_hook(convention))]).float().log_softmax(-1)
            ce_zero_L[l] += _token_ce(logp_BTV, tok_BT)[ce_mask_Bt].double().sum().item()
    n_ce, n_kl = max(n_ce, 1), max(n_kl, 1)
    clean = ce_clean / n_ce
    splice, zero = [v / n_ce for v in ce_splice_L], [v / n_ce for v in ce_zero_L]
    kl = [v / n_kl for v in kl_L]
    _check_splice(cc, model, clean, splice, zero, kl)
    # undefined (NaN, null in JSON) where zero-ablating the hookpoint leaves the loss as it is
    recovered = [(z - s) / (z - clean) if abs(z - clean) > 1e-9 else float("nan") for s, z in zip(splice, zero)]
    return {"ce_clean": clean, "ce_spliced": splice, "ce_zero_ablated": zero, "ce_loss_recovered": recovered,
            "kl_per_hookpoint": kl, "splice_convention": convention}


def _check_splice(cc: Crosscoder, model, clean: float, splice: list[float], zero: list[float], kl: list[float]) -> None:
    """Raise one FeatgraphError line for the first NaN/inf splice-in number, naming it, its hookpoint and the likely
    cause: the model for CE clean and CE zero-ablated, the crosscoder's reconstruction for CE spliced and KL (CE loss
    recovered is computed from these, so it is finite wherever it is defined)."""
    from .apply import describe_crosscoder, nonfinite_crosscoder_cause
    from .model_loading import first_nonfinite_tensor

    name = getattr(getattr(model, "cfg", None), "model_name", None) or "?"
    if not _finite(clean):
        bad = first_nonfinite_tensor(model)
        why = (f"its parameter {bad[0]} holds {bad[1]} NaN/inf values: the checkpoint is corrupt or diverged; re-download or "
               f"re-train it") if bad else "its weights are finite, so it overflows in this dtype; load it in float32"
        raise FeatgraphError(f"metric CE clean is {clean}: model {name!r} predicts NaN/inf log-probabilities on these tokens; {why}")
    _require_finite("CE zero-ablated", zero, cc.cfg.writes,
                    f"model {name!r} gives a NaN/inf loss with this hookpoint zeroed, so the splice-in numbers are undefined "
                    "there; evaluate without them (splice=False, --no-splice) or at another hookpoint")
    cause = f"{describe_crosscoder(cc)} splices in a reconstruction the model cannot use: {nonfinite_crosscoder_cause(cc)}"
    _require_finite("CE spliced", splice, cc.cfg.writes, cause)
    _require_finite("KL", kl, cc.cfg.writes, cause)


def _token_ce(logp_BTV: torch.Tensor, tok_BT: torch.Tensor) -> torch.Tensor:
    """(B, T−1) −log p(token t+1 | ≤ t)."""
    return -logp_BTV[:, :-1].gather(-1, tok_BT[:, 1:, None])[..., 0]


def _splice_hook(x_hat_BtD: torch.Tensor, keep_BT: torch.Tensor):
    """Replace the activation by the reconstruction at the scored positions (x̂ covers positions 1…T−1)."""
    def hook(act, hook=None):
        act = act.clone()
        act[:, 1:] = torch.where(keep_BT[:, 1:, None], x_hat_BtD.to(act.dtype), act[:, 1:])
        return act

    return hook


def _zero_hook(convention: str):
    def hook(act, hook=None):
        if convention == "saelens":
            return torch.zeros_like(act)
        act = act.clone()
        act[:, 1:] = 0.0
        return act

    return hook


@torch.no_grad()
def evaluate(
    cc: Crosscoder, model, tokens_NT: torch.Tensor, batch_size: int = 32, splice: bool = True, dense_above: float = 0.1,
    splice_convention: SpliceConvention = "saelens",
) -> CrosscoderMetrics:
    """Every metric of ``cc`` on the token rows ``tokens_NT`` (BOS at position 0) of ``model``; the splice-in
    numbers follow ``splice_convention`` (module docstring), recorded in the result."""
    from .harvest import harvest

    if cc.cfg.models:
        raise FeatgraphError(f"this crosscoder reads the models {cc.cfg.models}; evaluate it with crosscoder.model_diff.model_reconstruction_metrics and every model")
    was_training = cc.training
    cc.eval()
    m = reconstruction_metrics(cc, harvest(model, tokens_NT, cc.cfg.all_hookpoints, batch_size, device=cc.device), dense_above=dense_above)
    if splice:
        for k, v in splice_metrics(cc, model, tokens_NT, batch_size=max(1, batch_size // 2), convention=splice_convention).items():
            setattr(m, k, v)
    cc.train(was_training)
    return m
