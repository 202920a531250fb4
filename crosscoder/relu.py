"""ReLU crosscoder with the decoder-norm-weighted L1 penalty (Anthropic, "Sparse Crosscoders", 2024).

    f = ReLU(pre)
    loss = Σ_l ‖a^l − â^l‖² + λ Σ_i f_i w_i,   w_i = Σ_l ‖W_dec,i^l‖  (l1_of_norms)
                                              or ‖concat_l W_dec,i^l‖ (l2_of_norms)

For a model crosscoder, w_i combines the per-model norms (each over that model's hookpoints, as above) by
``model_norm``: Σ_m (``sum``, favours exclusive features) or √Σ_m² (``concat``); designated shared latents have w_i
scaled by ``shared_sparsity_scale`` (:meth:`Crosscoder.feature_norms`).

SAELens: a one-hookpoint ReLU crosscoder is SAELens's ``standard`` SAE, both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .crosscoder import Crosscoder, LossOutput, SAELensImport, SAELensSAE
from .errors import FeatgraphError

__all__ = ["ReLUCrosscoder", "ReLUOptions"]


@dataclass
class ReLUOptions:
    """Options of the ReLU crosscoder."""

    sparsity_norm: Literal["l1_of_norms", "l2_of_norms"] = "l1_of_norms"
    """Penalty weight per feature: Σ_l ‖W_dec,i^l‖ (favours layer-specific features) or the norm of the
    concatenated decoder vector (the concatenated-SAE normalisation, which spreads features across layers)."""

    def __post_init__(self) -> None:
        if self.sparsity_norm not in ("l1_of_norms", "l2_of_norms"):
            raise FeatgraphError(f"unknown sparsity_norm {self.sparsity_norm!r}; choose l1_of_norms or l2_of_norms")


class ReLUCrosscoder(Crosscoder):
    name = "relu"
    Options = ReLUOptions
    saelens_architecture = "standard"
    saelens_imports = {"standard": {}}
    opts: ReLUOptions

    def encode(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        return torch.relu(self.pre_activations(x_BLD, normalised))

    def penalty_weights(self) -> torch.Tensor:
        """(F,) the weight w_i of each feature's activation in the penalty."""
        w_F = self.feature_norms(self.opts.sparsity_norm)
        return w_F * self.penalty_scale_F if self.cfg.n_shared_latents else w_F

    def loss(self, x_BLD: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        f_BF = self.encode(x_BLD, normalised=True)
        mse = self.mse(x_BLD, self.decode(f_BF, normalised=True))
        sparsity = (f_BF * self.penalty_weights()).sum(dim=1).mean()
        l0 = (f_BF > 0).float().sum(dim=1).mean()
        return LossOutput(mse + sparsity_coeff * sparsity, mse, sparsity, l0, f_BF)

    @classmethod
    def from_saelens(cls, sae: SAELensSAE) -> SAELensImport | None:
        """SAELens ``standard`` (ReLU) is exactly this architecture."""
        return SAELensImport({}, sae.weights, {})
