"""Dictionary diagnostics: how a crosscoder's reconstruction and the model's loss behave feature by feature, hookpoint by
hookpoint and token by token (``featgraph crosscoder diagnose``; plots in :mod:`featgraph.plots`).

* :func:`drop_k_curves` — on each token zero the k *weakest* active features, k = 0, 1, 2, … (or the k *strongest*, or
  k chosen at random), and measure FVU and splice-in CE loss recovered at each written hookpoint against k. A
  feature's strength on a token is its contribution f_i·‖W_dec,i‖, the decoder norm summed over the written hookpoints
  in the normalised space — the score BatchTopK ranks by (:meth:`~crosscoder.crosscoder.Crosscoder.feature_norms`).
  A token with fewer than k active features loses all of them. The random drop is one seeded permutation of each
  token's active features, so the k random features dropped are nested in k. A dictionary whose weakest features
  carry nothing keeps its CE loss recovered flat for a while; we report the first k at which it falls by more than
  1 % of its k = 0 value.
* :func:`hookpoint_table` — per written hookpoint: mean raw activation norm, shrinkage ‖x̂‖/‖x‖, FVU, CE loss
  recovered, KL, and the share of the active decoder mass written there (Σ_t Σ_i f_ti‖W_dec,i^l‖ over
  Σ_t Σ_i f_ti Σ_l ‖W_dec,i^l‖, normalised space); L0, dead and dense fractions are one number for the crosscoder.
* :func:`per_token_loss` — the per-token CE difference CE_spliced − CE_clean at each hookpoint (SAELens's positions by
  default, :mod:`crosscoder.metrics`): its mean and tail quantiles, its Pearson correlation across hookpoints (NaN,
  null in JSON, for a hookpoint whose differences are constant), the worst tokens with their contexts, and a 2-D
  embedding of sampled tokens by their feature activations (UMAP where ``umap-learn`` imports, else PCA) coloured by
  the CE difference at one hookpoint.

Every result is a dataclass with ``to_dict()`` (JSON; NaN becomes null through :func:`crosscoder.io.strict_json`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from crosscoder.crosscoder import Crosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import harvest
from crosscoder.metrics import RECONSTRUCTION, CrosscoderMetrics, SpliceConvention, SpliceRun, evaluate, splice_in

__all__ = ["DROP_MODES", "EMBEDDINGS", "QUANTILES", "DropKCurves", "HookpointTable", "PerTokenLoss", "default_k_values",
           "drop_k_curves", "embed_2d", "first_drop", "hookpoint_table", "per_token_loss", "token_strings"]

log = logging.getLogger(__name__)

DROP_MODES = ("weakest", "random", "strongest")
EMBEDDINGS = ("auto", "umap", "pca")
QUANTILES = (50.0, 90.0, 99.0, 99.9)
"""Tail quantiles (percent) of the per-token CE difference; the max and the mean are reported beside them."""
DROP_FRACTION = 0.01
"""CE loss recovered "drops" when it falls by more than this fraction of its k = 0 value."""
SCORE = "f_i * sum_l ||W_dec,i^l|| (normalised space; the BatchTopK score)"
MIN_UMAP_TOKENS = 16
"""Fewer sampled tokens than this: ``auto`` takes PCA (UMAP's neighbour graph needs more points)."""


def _was_training(cc: Crosscoder) -> bool:
    was = cc.training
    cc.eval()
    return was


# ---------------------------------------------------------------- drop-k curves


@dataclass
class DropKCurves:
    """FVU and splice-in numbers with the k weakest / random / strongest active features of every token zeroed."""

    hookpoints: list[str]
    """The written hookpoints (the inner axis of every per-hookpoint list)."""
    k_values: list[int]
    """The k measured, ascending, starting at 0."""
    modes: list[str]
    """Which features are dropped: ``weakest`` / ``strongest`` by contribution (``score``), or ``random``."""
    l0: dict[str, list[float]]
    """Mode → mean active features per token left after dropping k (one per k)."""
    fvu: dict[str, list[list[float]]]
    """Mode → [k][hookpoint] FVU (mean-centred, normalised space, every non-BOS position; as ``evaluate``)."""
    max_active: int
    """Most features active on one token (k ≥ this drops every feature of every token)."""
    n_tokens: int
    """Tokens the FVU is measured on."""
    seed: int
    """Seed of the random drop."""
    score: str = SCORE
    """What ``weakest`` and ``strongest`` rank by."""
    ce_loss_recovered: dict[str, list[list[float]]] = field(default_factory=dict)
    """Mode → [k][hookpoint] splice-in CE loss recovered (empty without splice-in)."""
    kl: dict[str, list[list[float]]] = field(default_factory=dict)
    """Mode → [k][hookpoint] KL(clean ‖ spliced), nats per token."""
    ce_spliced: dict[str, list[list[float]]] = field(default_factory=dict)
    """Mode → [k][hookpoint] mean CE with the dropped reconstruction spliced in."""
    ce_clean: float | None = None
    ce_zero_ablated: list[float] = field(default_factory=list)
    splice_convention: str | None = None
    k_first_drop: list[int | None] = field(default_factory=list)
    """Per hookpoint, the first k at which CE loss recovered (weakest dropped) is below its k = 0 value by more than
    ``drop_fraction`` of it; None if it never is (or is undefined)."""
    drop_fraction: float = DROP_FRACTION

    def to_dict(self) -> dict:
        return asdict(self)


def default_k_values(mean_l0: float, k_max: int | None = None) -> list[int]:
    """0, 1, …, ⌈mean L0⌉ (capped at ``k_max``).

    >>> default_k_values(2.3), default_k_values(40.0, k_max=3)
    ([0, 1, 2, 3], [0, 1, 2, 3])
    """
    top = math.ceil(mean_l0) if math.isfinite(mean_l0) else 0
    if k_max is not None:
        top = min(top, k_max)
    return list(range(0, max(top, 0) + 1))


def first_drop(values: Sequence[float], k_values: Sequence[int], fraction: float = DROP_FRACTION) -> int | None:
    """The first k whose value is below ``values[0]`` (k = 0) by more than ``fraction`` of ``|values[0]|``.

    >>> first_drop([0.9, 0.895, 0.88, 0.5], [0, 1, 2, 4]), first_drop([0.9, 0.9], [0, 1]), first_drop([float("nan"), 0.1], [0, 1])
    (2, None, None)
    """
    base = values[0]
    if not math.isfinite(base):
        return None
    for k, v in zip(k_values, values):
        if math.isfinite(v) and v < base - fraction * abs(base):
            return int(k)
    return None


class _Dropper:
    """Yields each token's codes with k of its active features zeroed, for every mode and k (k = 0 once)."""

    def __init__(self, cc: Crosscoder, modes: Sequence[str], k_values: Sequence[int], seed: int):
        self.norms_F = cc.feature_norms().detach()
        self.modes, self.k_values, self.seed = list(modes), [k for k in k_values if k > 0], seed
        self.gen = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        """Start the random drop over: the same batches then drop the same features."""
        self.gen.manual_seed(self.seed)

    def _orders(self, f_BF: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Mode → (B, J) feature indices in the order they are dropped (the first n_b are token b's active features),
        and n_B, the active count per token; J = the most active on one token of the batch."""
        active_BF = f_BF > 0
        n_B = active_BF.sum(dim=1)
        J = int(n_B.max()) if n_B.numel() else 0
        score_BF = f_BF * self.norms_F
        strongest_BJ = torch.topk(torch.where(active_BF, score_BF, -torch.inf), J, dim=1).indices
        orders = {"strongest": strongest_BJ,
                  "weakest": torch.topk(torch.where(active_BF, score_BF, torch.inf), J, dim=1, largest=False).indices}
        if "random" in self.modes:
            keys_BJ = torch.rand(f_BF.shape[0], J, generator=self.gen).to(f_BF.device)
            keys_BJ = torch.where(torch.arange(J, device=f_BF.device) < n_B[:, None], keys_BJ, torch.inf)
            orders["random"] = strongest_BJ.gather(1, keys_BJ.argsort(dim=1))
        return orders, n_B

    def variants(self, f_BF: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        yield "k0", f_BF
        if not self.k_values:
            return
        orders, n_B = self._orders(f_BF)
        j_J = torch.arange(orders["strongest"].shape[1], device=f_BF.device)
        for mode in self.modes:
            order_BJ = orders[mode]
            kept_BJ = f_BF.gather(1, order_BJ)
            for k in self.k_values:
                drop_BJ = (j_J < k) & (j_J < n_B[:, None])
                yield f"{mode}/{k}", f_BF.scatter(1, order_BJ, torch.where(drop_BJ, torch.zeros_like(kept_BJ), kept_BJ))


@torch.no_grad()
def _active_counts(cc: Crosscoder, model, tokens_NT: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """Mean and max active features per token."""
    total, n, most = 0, 0, 0
    for acts_BLD in harvest(model, tokens_NT, cc.cfg.all_hookpoints, batch_size, device=cc.device):
        n_B = (cc.encode(acts_BLD) > 0).sum(dim=1)
        total, n, most = total + int(n_B.sum()), n + len(n_B), max(most, int(n_B.max()) if len(n_B) else 0)
    return (total / n if n else 0.0), most


@torch.no_grad()
def drop_k_curves(
    cc: Crosscoder, model, tokens_NT: torch.Tensor, k_values: Sequence[int] | None = None, k_max: int | None = None,
    modes: Sequence[str] = DROP_MODES, seed: int = 0, splice: bool = True, convention: SpliceConvention = "saelens",
    batch_size: int = 16,
) -> DropKCurves:
    """FVU (and, with ``splice``, CE loss recovered, KL and CE) at every written hookpoint with the k weakest, random
    and strongest active features of each token zeroed, for k in ``k_values`` (default 0 … ⌈mean L0⌉, capped at
    ``k_max``; 0 is always added) on the token rows ``tokens_NT`` (BOS at position 0).

    At k = 0 the numbers are :func:`crosscoder.metrics.evaluate`'s. Cost: one harvest pass, then the model once per
    batch, mode, k and hookpoint for the splice-in (subsample k with ``k_values`` on big dictionaries).
    """
    bad = [m for m in modes if m not in DROP_MODES]
    if bad or not modes:
        raise FeatgraphError(f"drop modes must be some of {list(DROP_MODES)}, got {list(modes)}")
    if k_values is not None and any(int(k) != k or k < 0 for k in k_values):
        raise FeatgraphError(f"k values must be integers >= 0, got {list(k_values)}")
    was_training = _was_training(cc)
    try:
        mean_l0, most = _active_counts(cc, model, tokens_NT, batch_size)
        ks = sorted({0, *(int(k) for k in k_values)}) if k_values is not None else default_k_values(mean_l0, k_max)
        dropper = _Dropper(cc, modes, ks, seed)
        fvu, l0, n = _drop_fvu(cc, model, tokens_NT, dropper, batch_size)
        out = DropKCurves(list(cc.cfg.writes), ks, list(modes), _by_mode(l0, modes, ks), _by_mode(fvu, modes, ks), most, n, seed)
        if splice:
            dropper.reset()
            run = splice_in(cc, model, tokens_NT, lambda f: ((name, cc.decode(g)) for name, g in dropper.variants(f)),
                            batch_size=batch_size, convention=convention)
            out.ce_loss_recovered = _by_mode({v: run.ce_loss_recovered(v) for v in run.ce_spliced}, modes, ks)
            out.kl = _by_mode(run.kl, modes, ks)
            out.ce_spliced = _by_mode(run.ce_spliced, modes, ks)
            out.ce_clean, out.ce_zero_ablated, out.splice_convention = run.ce_clean, run.ce_zero_ablated, run.convention
            weakest = out.ce_loss_recovered.get("weakest")
            if weakest is not None:
                out.k_first_drop = [first_drop([row[l] for row in weakest], ks) for l in range(len(out.hookpoints))]
    finally:
        cc.train(was_training)
    return out


def _by_mode(values: dict[str, Any], modes: Sequence[str], ks: Sequence[int]) -> dict[str, list]:
    """Variant name (``k0``, ``weakest/3``) → value, regrouped as mode → [value per k] (k = 0 shared)."""
    return {m: [values["k0" if k == 0 else f"{m}/{k}"] for k in ks] for m in modes}


def _drop_fvu(cc: Crosscoder, model, tokens_NT: torch.Tensor, dropper: _Dropper, batch_size: int):
    """Per variant: FVU per hookpoint (as :func:`crosscoder.metrics.reconstruction_metrics` computes it) and mean L0."""
    L, D = len(cc.cfg.writes), cc.cfg.d_model
    dev = cc.device
    err: dict[str, torch.Tensor] = {}
    l0: dict[str, float] = {}
    sum_LD = torch.zeros(L, D, dtype=torch.float64, device=dev)
    sumsq_L = torch.zeros(L, dtype=torch.float64, device=dev)
    n = 0
    for x_BLD in harvest(model, tokens_NT, cc.cfg.all_hookpoints, batch_size, device=dev):
        x_BLD = cc.normalise(x_BLD.to(dev))
        f_BF = cc.encode(x_BLD, normalised=True)
        y_BLD = cc.targets(x_BLD)
        sum_LD += y_BLD.double().sum(dim=0)
        sumsq_L += y_BLD.double().pow(2).sum(dim=(0, 2))
        for name, g_BF in dropper.variants(f_BF):
            x_hat_BLD = cc.decode(g_BF, normalised=True)
            e_L = (y_BLD - x_hat_BLD).double().pow(2).sum(dim=(0, 2))
            err[name] = err[name] + e_L if name in err else e_L
            l0[name] = l0.get(name, 0.0) + (g_BF > 0).sum().item()
        n += x_BLD.shape[0]
    if n == 0:
        raise FeatgraphError("no tokens to measure the drop-k curves on; pass at least one token row")
    den_L = (sumsq_L - sum_LD.pow(2).sum(dim=1) / n).clamp_min(1e-12)
    return {k: (v / den_L).tolist() for k, v in err.items()}, {k: v / n for k, v in l0.items()}, n


# ---------------------------------------------------------------- per-hookpoint table


@dataclass
class HookpointTable:
    """How the reconstruction changes along the written hookpoints (one row each), with the crosscoder-wide numbers."""

    hookpoints: list[str]
    act_norm: list[float]
    """Mean ‖a^l‖ of the raw activations."""
    norm_scale: list[float]
    """The normalisation scale s_l (raw → normalised)."""
    shrinkage: list[float]
    """Mean ‖x̂^l‖/‖x^l‖ (< 1: reconstructions shrink)."""
    fvu: list[float]
    """Mean-centred FVU (normalised space)."""
    decoder_mass: list[float]
    """Share of the active decoder mass written here: Σ_t Σ_i f_ti‖W_dec,i^l‖ / Σ_t Σ_i f_ti Σ_l ‖W_dec,i^l‖."""
    l0: float
    """Mean active features per token (one number: a crosscoder's features span its hookpoints)."""
    dead_fraction: float
    dense_fraction: float
    fvu_pooled: float
    fvu_unweighted_mean: float
    fvu_concatenated_raw: float | None
    n_tokens: int
    ce_loss_recovered: list[float] = field(default_factory=list)
    """Splice-in CE loss recovered (empty without splice-in)."""
    kl: list[float] = field(default_factory=list)
    """KL(clean ‖ spliced), nats per token."""
    splice_convention: str | None = None

    def rows(self) -> list[dict]:
        """One dict per hookpoint, for a table."""
        out = []
        for l, h in enumerate(self.hookpoints):
            row = {"hookpoint": h, "act_norm": self.act_norm[l], "shrinkage": self.shrinkage[l], "fvu": self.fvu[l],
                   "ce_loss_recovered": self.ce_loss_recovered[l] if self.ce_loss_recovered else None,
                   "kl": self.kl[l] if self.kl else None, "decoder_mass": self.decoder_mass[l]}
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "rows": self.rows()}


@torch.no_grad()
def hookpoint_table(
    cc: Crosscoder, model, tokens_NT: torch.Tensor, metrics: CrosscoderMetrics | None = None, splice: bool = True,
    convention: SpliceConvention = "saelens", batch_size: int = 32,
) -> HookpointTable:
    """The per-hookpoint table of ``cc`` on ``tokens_NT``; ``metrics`` (``evaluate`` on the same rows) if already
    computed, else it is run here (with the splice-in numbers if ``splice``)."""
    was_training = _was_training(cc)
    try:
        m = metrics or evaluate(cc, model, tokens_NT, batch_size=batch_size, splice=splice, splice_convention=convention)
        L = len(cc.cfg.writes)
        norms_FL = cc.decoder_norms().detach().double()
        act_L = torch.zeros(L, dtype=torch.float64, device=cc.device)
        mass_L = torch.zeros(L, dtype=torch.float64, device=cc.device)
        n = 0
        for acts_BLD in harvest(model, tokens_NT, cc.cfg.all_hookpoints, batch_size, device=cc.device):
            act_L += cc.targets(acts_BLD).double().norm(dim=-1).sum(dim=0)
            mass_L += cc.encode(acts_BLD).double().sum(dim=0) @ norms_FL
            n += acts_BLD.shape[0]
    finally:
        cc.train(was_training)
    total = mass_L.sum().item()
    return HookpointTable(
        hookpoints=list(m.hookpoints), act_norm=(act_L / max(n, 1)).tolist(), norm_scale=cc.norm_scale_L[cc.out_idx].tolist(),
        shrinkage=list(m.shrinkage_per_hookpoint), fvu=list(m.fvu_per_hookpoint),
        decoder_mass=(mass_L / total).tolist() if total > 0 else [float("nan")] * L,
        l0=m.l0, dead_fraction=m.dead_fraction, dense_fraction=m.dense_fraction, fvu_pooled=m.fvu_pooled,
        fvu_unweighted_mean=m.fvu_unweighted_mean, fvu_concatenated_raw=m.fvu_concatenated_raw, n_tokens=m.n_tokens,
        ce_loss_recovered=list(m.ce_loss_recovered), kl=list(m.kl_per_hookpoint), splice_convention=m.splice_convention)


# ---------------------------------------------------------------- per-token loss


@dataclass
class PerTokenLoss:
    """The per-token CE difference CE_spliced − CE_clean at each written hookpoint."""

    hookpoints: list[str]
    splice_convention: str
    n_tokens: int
    """Scored predictions (each that of token t+1 made from position t)."""
    mean: list[float]
    """Per hookpoint: the mean difference (= CE_spliced − CE_clean of the pooled splice-in numbers)."""
    quantiles: dict[str, list[float]]
    """``p50``, ``p90``, ``p99``, ``p99.9`` and ``max`` → one value per hookpoint."""
    histogram: dict[str, list]
    """``edges`` (shared by all hookpoints) and ``counts`` [hookpoint][bin]."""
    correlation: list[list[float]]
    """Pearson correlation of the differences across hookpoints (NaN for a hookpoint whose differences are constant)."""
    worst: dict[str, list[dict]]
    """Hookpoint → its worst tokens, largest difference first: row, position, the token, the next token (the one
    predicted), the context before it, and the difference at every hookpoint."""
    embedding: dict[str, Any] | None = None
    """2-D embedding of sampled tokens by their feature activations: ``method`` (umap or pca), ``hookpoint`` (whose
    difference colours it), ``x``, ``y``, ``ce_diff``, ``row``, ``position`` and a ``note``; None if not computed."""

    def to_dict(self) -> dict:
        return asdict(self)


def token_strings(model, ids: Sequence[int]) -> list[str]:
    """Each token id as text through the model's tokenizer (``<id>`` where it has none)."""
    tok = getattr(model, "tokenizer", None)
    cache: dict[int, str] = {}
    out = []
    for i in ids:
        i = int(i)
        if i not in cache:
            try:
                cache[i] = tok.decode([i]) if tok is not None else f"<{i}>"
            except Exception:  # a tokenizer that cannot decode this id: show the id
                cache[i] = f"<{i}>"
        out.append(cache[i])
    return out


def _correlation(d_NL: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns; NaN rows/columns for a constant column (and unit diagonal elsewhere)."""
    L = d_NL.shape[1]
    if d_NL.shape[0] < 2:
        return np.full((L, L), np.nan)
    c_NL = d_NL - d_NL.mean(axis=0)
    sd_L = np.sqrt((c_NL ** 2).sum(axis=0))
    ok_L = sd_L > 1e-12 * np.maximum(1.0, np.abs(d_NL).max(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        C = (c_NL.T @ c_NL) / np.outer(sd_L, sd_L)
    C = np.clip(C, -1.0, 1.0)
    C[~ok_L, :] = np.nan
    C[:, ~ok_L] = np.nan
    idx = np.flatnonzero(ok_L)
    C[idx, idx] = 1.0
    return C


def _histogram(d_NL: np.ndarray, bins: int = 60) -> dict[str, list]:
    lo, hi = (float(d_NL.min()), float(d_NL.max())) if d_NL.size else (0.0, 0.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), "counts": [np.histogram(d_NL[:, l], bins=edges)[0].tolist() for l in range(d_NL.shape[1])]}


def _worst(model, tokens_NT: torch.Tensor, pos_N2: np.ndarray, d_NL: np.ndarray, clean_N: np.ndarray, hookpoints: list[str],
           n_worst: int, context: int) -> dict[str, list[dict]]:
    out = {}
    for l, h in enumerate(hookpoints):
        rows = []
        for i in np.argsort(-d_NL[:, l], kind="stable")[:n_worst]:
            r, t = int(pos_N2[i, 0]), int(pos_N2[i, 1])
            ids = tokens_NT[r, max(0, t - context) : t + 2].tolist()
            strs = token_strings(model, ids)
            rows.append({"row": r, "position": t, "ce_diff": float(d_NL[i, l]), "ce_clean": float(clean_N[i]),
                         "ce_spliced": float(clean_N[i] + d_NL[i, l]), "context": strs[:-2], "token": strs[-2],
                         "next_token": strs[-1], "ce_diff_per_hookpoint": d_NL[i].tolist()})
        out[h] = rows
    return out


def embed_2d(X_nF: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str, str]:
    """2-D coordinates of the rows of ``X_nF``: (coords (n, 2), the method used, a note).

    ``umap`` (umap-learn, Euclidean, ``random_state=seed``), ``pca`` (the top two principal components, by an
    eigendecomposition of the centred Gram matrix in float64; each axis signed so its largest coordinate is positive)
    or ``auto`` (umap if it imports and there are at least :data:`MIN_UMAP_TOKENS` rows, else pca).
    """
    if method not in EMBEDDINGS:
        raise FeatgraphError(f"--embedding must be one of {list(EMBEDDINGS)}, got {method!r}")
    n = X_nF.shape[0]
    if method in ("auto", "umap"):
        try:
            import umap  # optional: pip install umap-learn
        except ImportError:
            if method == "umap":
                raise FeatgraphError("--embedding umap needs umap-learn, which is not installed; pip install umap-learn, "
                                     "or pass --embedding pca") from None
            umap = None
        if umap is not None and n >= MIN_UMAP_TOKENS:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": seeded UMAP runs on one thread
                reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed, metric="euclidean")
                Y = np.asarray(reducer.fit_transform(X_nF.astype(np.float32)), dtype=np.float64)
            return Y, "umap", f"UMAP (umap-learn {getattr(umap, '__version__', '?')}, euclidean, 15 neighbours, seed {seed})"
        if method == "umap":
            raise FeatgraphError(f"--embedding umap needs at least {MIN_UMAP_TOKENS} tokens, got {n}; pass more --embed-tokens or --embedding pca")
        why = "umap-learn is not installed" if umap is None else f"only {n} tokens"
    else:
        why = "asked for"
    Y, ratio = _pca_2d(X_nF)
    return Y, "pca", f"PCA ({why}): the top two principal components, {100 * ratio[0]:.1f} % and {100 * ratio[1]:.1f} % of the variance"


def _pca_2d(X_nF: np.ndarray) -> tuple[np.ndarray, list[float]]:
    X = np.asarray(X_nF, dtype=np.float64)
    X = X - X.mean(axis=0)
    G = X @ X.T  # (n, n): cheaper than the SVD of (n, F) when F ≫ n
    vals, vecs = np.linalg.eigh(G)
    order = np.argsort(vals)[::-1][:2]
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    Y = vecs * np.sqrt(vals)
    if Y.shape[1] < 2:
        Y = np.pad(Y, ((0, 0), (0, 2 - Y.shape[1])))
        vals = np.pad(vals, (0, 2 - len(vals)))
    for j in range(2):
        if Y.shape[0] and Y[np.argmax(np.abs(Y[:, j])), j] < 0:
            Y[:, j] = -Y[:, j]
    total = float(np.trace(G))
    return Y, [float(v / total) if total > 0 else 0.0 for v in vals]


@torch.no_grad()
def _codes_at(cc: Crosscoder, model, tokens_NT: torch.Tensor, pos_n2: np.ndarray, batch_size: int) -> np.ndarray:
    """(n, F) feature activations at the (row, position ≥ 1) pairs ``pos_n2``; only the sampled positions of each
    batch are kept (memory n·F, not rows·T·F)."""
    rows = np.unique(pos_n2[:, 0])
    where = {int(r): i for i, r in enumerate(rows)}
    T = tokens_NT.shape[1]
    flat_n = torch.as_tensor(np.array([where[int(r)] * (T - 1) + int(t) - 1 for r, t in pos_n2], dtype=np.int64))
    out_nF = torch.zeros(len(pos_n2), cc.cfg.n_features)
    start = 0  # flat index of the batch's first token (BOS dropped: T − 1 a row)
    for acts_BLD in harvest(model, tokens_NT[torch.as_tensor(rows)], cc.cfg.all_hookpoints, batch_size, device=cc.device):
        stop = start + acts_BLD.shape[0]
        pick_n = torch.nonzero((flat_n >= start) & (flat_n < stop)).flatten()
        if len(pick_n):
            out_nF[pick_n] = cc.encode(acts_BLD[(flat_n[pick_n] - start).to(acts_BLD.device)]).float().cpu()
        start = stop
    return out_nF.numpy()


@torch.no_grad()
def per_token_loss(
    cc: Crosscoder, model, tokens_NT: torch.Tensor, run: SpliceRun | None = None, convention: SpliceConvention = "saelens",
    n_worst: int = 10, context: int = 12, embed_tokens: int = 2000, embedding: str = "auto", embed_hookpoint: str | None = None,
    seed: int = 0, batch_size: int = 16,
) -> PerTokenLoss:
    """Per-token CE differences of ``cc``'s reconstruction spliced in at each written hookpoint (``run``: a
    :func:`crosscoder.metrics.splice_in` result with ``per_token=True`` on the same rows, else it is run here),
    summarised (quantiles, correlation, the ``n_worst`` tokens per hookpoint with ``context`` tokens before them) and
    embedded: up to ``embed_tokens`` sampled tokens (seeded) by their feature activations, coloured by the difference
    at ``embed_hookpoint`` (default the last written one); ``embed_tokens=0`` skips the embedding."""
    writes = list(cc.cfg.writes)
    hp = embed_hookpoint or writes[-1]
    if hp not in writes:
        raise FeatgraphError(f"embed hookpoint {hp!r} is not one this crosscoder writes; choose one of {writes}")
    if embedding not in EMBEDDINGS:
        raise FeatgraphError(f"--embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
    was_training = _was_training(cc)
    try:
        if run is None or run.token_ce_clean_N is None:
            run = splice_in(cc, model, tokens_NT, batch_size=batch_size, convention=convention, per_token=True)
        clean_N = run.token_ce_clean_N.numpy()
        d_NL = run.token_ce_spliced_NL[RECONSTRUCTION].numpy() - clean_N[:, None]
        pos_N2 = run.token_pos_N2.numpy()
        if d_NL.shape[0] == 0:
            raise FeatgraphError("no scored tokens for the per-token loss (every position is a special token); pass other rows")
        q = {f"p{p:g}": np.percentile(d_NL, p, axis=0).tolist() for p in QUANTILES}
        q["max"] = d_NL.max(axis=0).tolist()
        out = PerTokenLoss(writes, run.convention, int(d_NL.shape[0]), d_NL.mean(axis=0).tolist(), q, _histogram(d_NL),
                           _correlation(d_NL).tolist(), _worst(model, tokens_NT, pos_N2, d_NL, clean_N, writes, n_worst, context))
        candidates = np.flatnonzero(pos_N2[:, 1] >= 1)  # keep_bos also scores the prediction from BOS, which has no codes
        if embed_tokens > 0 and len(candidates) >= 2:
            gen = torch.Generator().manual_seed(seed)
            pick = np.sort(candidates[torch.randperm(len(candidates), generator=gen)[:embed_tokens].numpy()])
            X = _codes_at(cc, model, tokens_NT, pos_N2[pick], batch_size)
            used = np.flatnonzero((X != 0).any(axis=0))
            Y, method, note = embed_2d(X[:, used] if len(used) else X[:, :1], embedding, seed)
            l = writes.index(hp)
            out.embedding = {"method": method, "hookpoint": hp, "note": note, "n": int(len(pick)), "features_used": int(len(used)),
                             "x": Y[:, 0].tolist(), "y": Y[:, 1].tolist(), "ce_diff": d_NL[pick, l].tolist(),
                             "row": pos_N2[pick, 0].tolist(), "position": pos_N2[pick, 1].tolist()}
    finally:
        cc.train(was_training)
    return out
