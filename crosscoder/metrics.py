"""Reconstruction and sparsity metrics, streamed over batches.

FVU per hookpoint (FVU_A, mean-centred; *not* variance relative to 0 — see SAELens #659):

    FVU_l = Σ_n ‖x_n^l − x̂_n^l‖² / Σ_n ‖x_n^l − μ^l‖²,   μ^l the mean over all tokens seen.

Pooled FVU over the concatenation of hookpoints is Σ_l num_l / Σ_l den_l — the variance-weighted mean of the
per-hookpoint values. Both are computed in the crosscoder's normalised space (mean norm √d_model per
hookpoint, the space its loss is defined in), and the unweighted mean of the per-hookpoint values is reported
under its own name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import torch

from .crosscoder import Crosscoder

__all__ = ["CrosscoderMetrics", "evaluate"]


@dataclass
class CrosscoderMetrics:
    hookpoints: list[str]
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

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(cc: Crosscoder, batches: Iterable[torch.Tensor], normalised: bool = False) -> CrosscoderMetrics:
    """Stream ``batches`` of activations (B, L, D) — raw unless ``normalised`` — through ``cc``."""
    L, D, F = cc.cfg.n_hookpoints, cc.cfg.d_model, cc.cfg.n_features
    dev = cc.device
    err_L = torch.zeros(L, dtype=torch.float64, device=dev)
    sum_LD = torch.zeros(L, D, dtype=torch.float64, device=dev)
    sumsq_L = torch.zeros(L, dtype=torch.float64, device=dev)
    fired_F = torch.zeros(F, dtype=torch.bool, device=dev)
    l0_sum, n = 0.0, 0
    for x_BLD in batches:
        x_BLD = x_BLD.to(dev)
        if not normalised:
            x_BLD = cc.normalise(x_BLD)
        f_BF = cc.encode(x_BLD, normalised=True)
        x_hat_BLD = cc.decode(f_BF, normalised=True)
        err_L += (x_BLD - x_hat_BLD).double().pow(2).sum(dim=(0, 2))
        sum_LD += x_BLD.double().sum(dim=0)
        sumsq_L += x_BLD.double().pow(2).sum(dim=(0, 2))
        active_BF = f_BF > 0
        fired_F |= active_BF.any(dim=0)
        l0_sum += active_BF.sum().item()
        n += x_BLD.shape[0]
    if n == 0:
        raise ValueError("evaluate() got no activations")
    den_L = sumsq_L - sum_LD.pow(2).sum(dim=1) / n  # Σ‖x − μ‖² = Σ‖x‖² − n‖μ‖²
    fvu_L = (err_L / den_L.clamp_min(1e-12)).tolist()
    return CrosscoderMetrics(
        hookpoints=list(cc.cfg.hookpoints),
        fvu_per_hookpoint=fvu_L,
        fvu_pooled=(err_L.sum() / den_L.sum().clamp_min(1e-12)).item(),
        fvu_unweighted_mean=sum(fvu_L) / L,
        l0=l0_sum / n,
        dead_fraction=1.0 - fired_F.float().mean().item(),
        n_tokens=n,
    )
