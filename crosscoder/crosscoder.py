"""The acausal crosscoder with ReLU and the L1-of-decoder-norms penalty.

Reads L hookpoints at once, writes all L back (Anthropic, "Sparse Crosscoders", 2024):

    f = ReLU(Σ_l W_enc^l a^l + b_enc)                  f ∈ R^F
    â^l = W_dec^l f + b_dec^l
    loss = Σ_l ‖a^l − â^l‖² + λ Σ_i f_i Σ_l ‖W_dec,i^l‖

Activations are normalised per hookpoint (scale s_l such that mean ‖s_l a^l‖ = √d_model) before encoding;
the scales are stored with the weights, so ``encode``/``decode`` on raw activations just work. A per-layer
SAE is the same code with one hookpoint.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import CrosscoderConfig

__all__ = ["Crosscoder", "LossOutput"]


class LossOutput(NamedTuple):
    loss: torch.Tensor          # () total
    mse: torch.Tensor           # () Σ_l ‖a^l − â^l‖², mean over the batch
    sparsity: torch.Tensor      # () Σ_i f_i Σ_l ‖W_dec,i^l‖, mean over the batch
    l0: torch.Tensor            # () mean number of active features per token
    f_BF: torch.Tensor          # (B, F) feature activations


class Crosscoder(nn.Module):
    """Acausal crosscoder over ``cfg.hookpoints``; weights named by their dimensions (L hookpoints, D, F)."""

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__()
        self.cfg = cfg
        L, D, F = cfg.n_hookpoints, cfg.d_model, cfg.n_features
        gen = torch.Generator().manual_seed(cfg.seed)
        W_dec_FLD = torch.randn(F, L, D, generator=gen)
        W_dec_FLD = W_dec_FLD / W_dec_FLD.norm(dim=-1, keepdim=True) * cfg.dec_init_norm
        self.W_dec_FLD = nn.Parameter(W_dec_FLD)
        self.W_enc_LDF = nn.Parameter(W_dec_FLD.permute(1, 2, 0).clone())
        self.b_enc_F = nn.Parameter(torch.zeros(F))
        self.b_dec_LD = nn.Parameter(torch.zeros(L, D))
        # Per-hookpoint input scale s_l (raw → normalised); 1 until set from data.
        self.register_buffer("norm_scale_L", torch.ones(L))

    @property
    def device(self) -> torch.device:
        return self.W_dec_FLD.device

    # ---- normalisation -------------------------------------------------------------------------
    def normalise(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return x_BLD * self.norm_scale_L[:, None].to(x_BLD.dtype)

    def denormalise(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return x_BLD / self.norm_scale_L[:, None].to(x_BLD.dtype)

    # ---- the model -----------------------------------------------------------------------------
    def encode(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Feature activations (B, F) of activations (B, L, D); raw unless ``normalised``."""
        if not normalised:
            x_BLD = self.normalise(x_BLD)
        pre_BF = torch.einsum("bld,ldf->bf", x_BLD, self.W_enc_LDF) + self.b_enc_F
        return torch.relu(pre_BF)

    def decode(self, f_BF: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Reconstruction (B, L, D) of feature activations (B, F); raw unless ``normalised``."""
        x_hat_BLD = torch.einsum("bf,fld->bld", f_BF, self.W_dec_FLD) + self.b_dec_LD
        return x_hat_BLD if normalised else self.denormalise(x_hat_BLD)

    def forward(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        return self.decode(self.encode(x_BLD, normalised), normalised)

    def decoder_norms(self) -> torch.Tensor:
        """‖W_dec,i^l‖ as (F, L): each feature's layer profile."""
        return self.W_dec_FLD.norm(dim=-1)

    def loss(self, x_BLD: torch.Tensor, l1_coeff: float) -> LossOutput:
        """Training loss on *normalised* activations (B, L, D)."""
        f_BF = self.encode(x_BLD, normalised=True)
        x_hat_BLD = self.decode(f_BF, normalised=True)
        mse = (x_hat_BLD - x_BLD).pow(2).sum(dim=(1, 2)).mean()
        sparsity = (f_BF * self.decoder_norms().sum(dim=1)).sum(dim=1).mean()
        l0 = (f_BF > 0).float().sum(dim=1).mean()
        return LossOutput(mse + l1_coeff * sparsity, mse, sparsity, l0, f_BF)
