"""Crosscoder metrics: one :func:`evaluate` entry point, results in one typed record (JSON via ``to_dict``).

Reconstruction, streamed over batches (:func:`reconstruction_metrics`):

* FVU per hookpoint (FVU_A, mean-centred; *not* variance relative to 0 — see SAELens #659):
  FVU_l = num_l / den_l = Σ_n ‖x_n^l − x̂_n^l‖² / Σ_n ‖x_n^l − μ^l‖², μ^l the mean over all tokens seen, in the
  normalised space (every hookpoint scaled by s_l to mean norm √d_model, the space the loss is defined in). Three
  numbers summarise the hookpoints:

  - ``fvu_pooled`` = Σ_l num_l / Σ_l den_l: the FVU of the concatenated vector in the normalised space, i.e. the
    variance-weighted mean of the FVU_l (the training objective's own space: each hookpoint counts by its normalised
    variance, roughly equally);
  - ``fvu_unweighted_mean`` = mean_l FVU_l: every hookpoint counted equally whatever its variance (for comparing
    layers);
  - ``fvu_concatenated_raw`` = Σ_l num_l/s_l² / Σ_l den_l/s_l²: the FVU of the concatenated vector in raw activation
    units, where hookpoints weigh by their raw variance (later layers, larger norms, count more) — what a user of the
    raw reconstruction sees.
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

With more than one written hookpoint, the splice-in is also measured with every written hookpoint replaced at once
(``ce_spliced_all``, against every one of them zero-ablated at once, ``ce_zero_ablated_all``; ``ce_loss_recovered_all``
is the same ratio): for a cross-layer transcoder writing every MLP output, the CE of its replacement model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Sequence

import torch

from .crosscoder import Crosscoder
from .errors import FeatgraphError
from .model_loading import require_patchable

__all__ = ["CrosscoderMetrics", "RECONSTRUCTION", "Reconstruct", "SPLICE_CONVENTIONS", "SpliceConvention", "SpliceRun", "decoder_reconstruction",
           "evaluate", "reconstruction_metrics", "splice_in", "splice_metrics"]

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
    """FVU of the concatenated vector in the normalised space, Σ_l num_l / Σ_l den_l: the variance-weighted mean over
    hookpoints, in the space the training loss is defined in."""
    fvu_unweighted_mean: float
    """Plain mean of ``fvu_per_hookpoint``: every hookpoint counted equally, for comparing layers."""
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
    prefixes: list[dict] = field(default_factory=list)
    """Matryoshka crosscoders: each nested prefix's metrics, smallest first (crosscoder.matryoshka.prefix_metrics);
    empty otherwise."""
    fvu_concatenated_raw: float | None = None
    """FVU of the concatenated vector in raw activation units, Σ_l num_l/s_l² / Σ_l den_l/s_l²: hookpoints weighted by
    their raw variance, as a user of the raw reconstruction sees it (None in records written before it existed)."""
    ce_spliced_all: float | None = None
    """CE with the reconstruction spliced in at every written hookpoint at once (None with one written hookpoint or
    without splice-in numbers)."""
    ce_zero_ablated_all: float | None = None
    """CE with every written hookpoint zero-ablated at once: the baseline of ``ce_loss_recovered_all``."""
    ce_loss_recovered_all: float | None = None
    """(CE_zero_all − CE_spliced_all) / (CE_zero_all − CE_clean): CE loss recovered with every written hookpoint
    replaced at once (a CLT's replacement model); NaN where zero-ablating them leaves the loss as it is."""

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
    s2_L = cc.norm_scale_L[cc.out_idx].double().pow(2)  # raw = normalised / s_l, so raw squared sums are / s_l²
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
        fvu_concatenated_raw=((err_L / s2_L).sum() / (den_L / s2_L).sum().clamp_min(1e-300)).item(),
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
    _require_finite("FVU (concatenated, raw units)", [m.fvu_concatenated_raw], None, cause)
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


Reconstruct = Callable[[torch.Tensor], Iterable[tuple[str, torch.Tensor]]]
"""Codes of a batch f_BF (B·(T−1), F) → the named raw reconstructions (B·(T−1), L_out, D) to splice in, one at a time
(a generator keeps one in memory at a time); every batch yields the same names."""
RECONSTRUCTION = "reconstruction"
"""Name of the crosscoder's own reconstruction in a :class:`SpliceRun`."""


def decoder_reconstruction(cc: Crosscoder) -> Reconstruct:
    """The crosscoder's own reconstruction, named ``reconstruction``: ``cc.decode(f)`` (what :func:`splice_metrics` splices)."""
    def reconstruct(f_BF: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        yield RECONSTRUCTION, cc.decode(f_BF)

    return reconstruct


@dataclass
class SpliceRun:
    """Splice-in losses of one or more reconstructions (:func:`splice_in`), pooled over tokens, and per token if asked."""

    hookpoints: list[str]
    """The written hookpoints the per-hookpoint lists refer to."""
    convention: str
    """``saelens`` or ``keep_bos`` (module docstring)."""
    ce_clean: float
    """Mean CE of the clean model over the scored predictions."""
    ce_zero_ablated: list[float]
    """Mean CE with each hookpoint zero-ablated."""
    ce_spliced: dict[str, list[float]]
    """Reconstruction name → mean CE with it spliced in at each hookpoint."""
    kl: dict[str, list[float]]
    """Reconstruction name → KL(clean ‖ spliced) in nats per token at each hookpoint."""
    n_scored: int
    """Number of scored predictions (the CE denominator)."""
    token_pos_N2: torch.Tensor | None = None
    """(N, 2) int64 (row, t) of each scored prediction — that of token t+1 made from position t — when ``per_token``."""
    token_ce_clean_N: torch.Tensor | None = None
    """(N,) float64 clean CE of each scored prediction, when ``per_token``."""
    token_ce_spliced_NL: dict[str, torch.Tensor] = field(default_factory=dict)
    """Reconstruction name → (N, L) float64 CE of each scored prediction with it spliced in at each hookpoint."""
    ce_zero_ablated_all: float | None = None
    """Mean CE with every written hookpoint zero-ablated at once (None with one written hookpoint)."""
    ce_spliced_all: dict[str, float] = field(default_factory=dict)
    """Reconstruction name → mean CE with it spliced in at every written hookpoint at once (empty with one)."""

    def ce_loss_recovered_all(self, name: str = RECONSTRUCTION) -> float | None:
        """(CE_zero_all − CE_spliced_all) / (CE_zero_all − CE_clean); None with one written hookpoint, NaN where
        zero-ablating them all leaves the loss as it is."""
        if self.ce_zero_ablated_all is None or name not in self.ce_spliced_all:
            return None
        z, s = self.ce_zero_ablated_all, self.ce_spliced_all[name]
        return (z - s) / (z - self.ce_clean) if abs(z - self.ce_clean) > 1e-9 else float("nan")

    def ce_loss_recovered(self, name: str = RECONSTRUCTION) -> list[float]:
        """(CE_zero − CE_splice) / (CE_zero − CE_clean) at each hookpoint; NaN where zero-ablating leaves the loss as it is."""
        return [(z - s) / (z - self.ce_clean) if abs(z - self.ce_clean) > 1e-9 else float("nan")
                for s, z in zip(self.ce_spliced[name], self.ce_zero_ablated)]

    def summary(self, name: str = RECONSTRUCTION) -> dict[str, list[float] | float | str]:
        """The :class:`CrosscoderMetrics` splice-in fields for reconstruction ``name``."""
        return {"ce_clean": self.ce_clean, "ce_spliced": self.ce_spliced[name], "ce_zero_ablated": self.ce_zero_ablated,
                "ce_loss_recovered": self.ce_loss_recovered(name), "kl_per_hookpoint": self.kl[name],
                "splice_convention": self.convention, "ce_spliced_all": self.ce_spliced_all.get(name),
                "ce_zero_ablated_all": self.ce_zero_ablated_all, "ce_loss_recovered_all": self.ce_loss_recovered_all(name)}


@torch.no_grad()
def splice_in(
    cc: Crosscoder, model, tokens_NT: torch.Tensor, reconstruct: Reconstruct | None = None, batch_size: int = 16,
    convention: SpliceConvention = "saelens", special_token_ids: Sequence[int] | None = None, per_token: bool = False,
) -> SpliceRun:
    """Splice-in CE and KL of every reconstruction ``reconstruct`` yields (default: ``cc.decode`` of the codes,
    :func:`decoder_reconstruction`) at every written hookpoint, with the clean and zero-ablated CE they are measured
    against; the model runs once clean and once zero-ablated per hookpoint and batch, and once per reconstruction and
    hookpoint. With more than one written hookpoint it also runs once per reconstruction with all of them spliced in
    at once, and once with all of them zeroed. ``per_token`` also keeps every scored prediction's CE (clean, and
    spliced per reconstruction).

    ``convention`` picks the positions (module docstring); ``special_token_ids`` overrides the tokenizer's special
    tokens that ``saelens`` leaves out.
    """
    if convention not in SPLICE_CONVENTIONS:
        raise FeatgraphError(f"splice convention must be one of {list(SPLICE_CONVENTIONS)}, got {convention!r}")
    was_training = cc.training
    cc.eval()  # codes token by token (BatchTopK's threshold, not the batch top-k)
    try:
        return _splice_in(cc, model, tokens_NT, reconstruct, batch_size, convention, special_token_ids, per_token)
    finally:
        cc.train(was_training)


def _splice_in(cc: Crosscoder, model, tokens_NT: torch.Tensor, reconstruct: Reconstruct | None, batch_size: int,
               convention: SpliceConvention, special_token_ids: Sequence[int] | None, per_token: bool) -> SpliceRun:
    from .harvest import harvest

    writes, dev = cc.cfg.writes, model.cfg.device
    require_patchable(model, writes, "splice-in metrics")
    special_ids = _special_token_ids(model, special_token_ids)
    L = len(writes)
    ce_clean, n_ce, n_kl = 0.0, 0, 0  # pooled sums over tokens (float64) and their counts
    ce_zero_L: list[float] = [0.0] * L
    every = L > 1  # also every written hookpoint replaced (and zeroed) at once
    ce_zero_all, ce_splice_all = 0.0, {}
    ce_splice: dict[str, list[float]] = {} if reconstruct else {RECONSTRUCTION: [0.0] * L}
    kl: dict[str, list[float]] = {} if reconstruct else {RECONSTRUCTION: [0.0] * L}
    reconstruct = reconstruct or decoder_reconstruction(cc)
    pos_parts: list[torch.Tensor] = []
    clean_parts: list[torch.Tensor] = []
    splice_parts: dict[str, list[list[torch.Tensor]]] = {}
    for start in range(0, tokens_NT.shape[0], batch_size):
        tok_BT = tokens_NT[start : start + batch_size].to(dev)
        B, T = tok_BT.shape
        acts_BLD = next(harvest(model, tok_BT, cc.cfg.all_hookpoints, batch_size=B, device=cc.device))
        f_BF = cc.encode(acts_BLD)
        keep_BT = _scored_positions(tok_BT, convention, special_ids)
        # CE of the prediction made from position t (of token t+1, t < T−1); KL of the distribution at position t
        if convention == "saelens":
            ce_mask_Bt, kl_mask_BT = keep_BT[:, :-1], keep_BT
        else:  # every next-token prediction, the one made from BOS included
            ce_mask_Bt = torch.ones_like(keep_BT[:, :-1])
            kl_mask_BT = torch.cat([ce_mask_Bt, torch.zeros_like(keep_BT[:, :1])], dim=1)
        logp_clean_BTV = model(tok_BT).float().log_softmax(-1)
        ce_clean_Bt = _token_ce(logp_clean_BTV, tok_BT)
        ce_clean += ce_clean_Bt[ce_mask_Bt].double().sum().item()
        n_ce, n_kl = n_ce + int(ce_mask_Bt.sum()), n_kl + int(kl_mask_BT.sum())
        if per_token:
            rows_t = ce_mask_Bt.nonzero()
            pos_parts.append(torch.stack([rows_t[:, 0] + start, rows_t[:, 1]], dim=1).cpu())
            clean_parts.append(ce_clean_Bt[ce_mask_Bt].double().cpu())
        for name, x_hat_BLD in reconstruct(f_BF):
            x_hat_BTLD = x_hat_BLD.view(B, T - 1, L, -1)
            sums_L, kl_L = ce_splice.setdefault(name, [0.0] * L), kl.setdefault(name, [0.0] * L)
            for l, hook_name in enumerate(writes):
                splice_hook = _splice_hook(x_hat_BTLD[:, :, l].to(dev), keep_BT)
                logp_BTV = model.run_with_hooks(tok_BT, fwd_hooks=[(hook_name, splice_hook)]).float().log_softmax(-1)
                ce_Bt = _token_ce(logp_BTV, tok_BT)
                sums_L[l] += ce_Bt[ce_mask_Bt].double().sum().item()
                kl_BT = (logp_clean_BTV.exp() * (logp_clean_BTV - logp_BTV)).sum(-1)
                kl_L[l] += kl_BT[kl_mask_BT].double().sum().item()
                if per_token:
                    splice_parts.setdefault(name, [[] for _ in range(L)])[l].append(ce_Bt[ce_mask_Bt].double().cpu())
            if every:
                hooks = [(h, _splice_hook(x_hat_BTLD[:, :, l].to(dev), keep_BT)) for l, h in enumerate(writes)]
                logp_BTV = model.run_with_hooks(tok_BT, fwd_hooks=hooks).float().log_softmax(-1)
                ce_splice_all[name] = ce_splice_all.get(name, 0.0) + _token_ce(logp_BTV, tok_BT)[ce_mask_Bt].double().sum().item()
        for l, hook_name in enumerate(writes):
            logp_BTV = model.run_with_hooks(tok_BT, fwd_hooks=[(hook_name, _zero_hook(convention))]).float().log_softmax(-1)
            ce_zero_L[l] += _token_ce(logp_BTV, tok_BT)[ce_mask_Bt].double().sum().item()
        if every:
            logp_BTV = model.run_with_hooks(tok_BT, fwd_hooks=[(h, _zero_hook(convention)) for h in writes]).float().log_softmax(-1)
            ce_zero_all += _token_ce(logp_BTV, tok_BT)[ce_mask_Bt].double().sum().item()
    n_scored = n_ce
    n_ce, n_kl = max(n_ce, 1), max(n_kl, 1)
    clean, zero = ce_clean / n_ce, [v / n_ce for v in ce_zero_L]
    run = SpliceRun(list(writes), convention, clean, zero, {k: [v / n_ce for v in vs] for k, vs in ce_splice.items()},
                    {k: [v / n_kl for v in vs] for k, vs in kl.items()}, n_scored)
    if every:
        run.ce_zero_ablated_all = ce_zero_all / n_ce
        run.ce_spliced_all = {k: v / n_ce for k, v in ce_splice_all.items()}
    if per_token:
        run.token_pos_N2 = torch.cat(pos_parts) if pos_parts else torch.zeros(0, 2, dtype=torch.long)
        run.token_ce_clean_N = torch.cat(clean_parts) if clean_parts else torch.zeros(0, dtype=torch.float64)
        run.token_ce_spliced_NL = {k: torch.stack([torch.cat(p) for p in parts], dim=1) for k, parts in splice_parts.items()}
    for name in run.ce_spliced:
        _check_splice(cc, model, clean, run.ce_spliced[name], zero, run.kl[name])
    return run


@torch.no_grad()
def splice_metrics(
    cc: Crosscoder, model, tokens_NT: torch.Tensor, batch_size: int = 16, convention: SpliceConvention = "saelens",
    special_token_ids: Sequence[int] | None = None,
) -> dict[str, list[float] | float | str]:
    """Splice-in CE (clean, spliced, zero-ablated), CE loss recovered and KL(clean ‖ spliced) at every written
    hookpoint, as per-token means pooled over ``tokens_NT`` (BOS at position 0): :func:`splice_in` of the crosscoder's
    own reconstruction.

    ``convention`` picks the positions (module docstring): ``saelens`` (default) or ``keep_bos``.
    ``special_token_ids`` overrides the tokenizer's special tokens that ``saelens`` leaves out.
    """
    return splice_in(cc, model, tokens_NT, batch_size=batch_size, convention=convention,
                     special_token_ids=special_token_ids).summary()


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
    if hasattr(cc, "prefix_metrics"):  # Matryoshka: each nested prefix evaluated as its own crosscoder
        m.prefixes = cc.prefix_metrics(model, tokens_NT, splice=splice, splice_convention=splice_convention, batch_size=batch_size, full=m)
    cc.train(was_training)
    return m
