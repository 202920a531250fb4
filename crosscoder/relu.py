"""ReLU crosscoder with the decoder-norm-weighted L1 penalty (Anthropic, "Sparse Crosscoders", 2024).

    f = ReLU(pre)
    loss = Σ_l ‖a^l − â^l‖² + λ Σ_i f_i w_i,   w_i = Σ_l ‖W_dec,i^l‖  (l1_of_norms)
                                              or ‖concat_l W_dec,i^l‖ (l2_of_norms)
"""

from __future__ import annotations

import torch

from .crosscoder import Crosscoder, LossOutput

__all__ = ["ReLUCrosscoder"]


class ReLUCrosscoder(Crosscoder):
    def encode(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        return torch.relu(self.pre_activations(x_BLD, normalised))

    def penalty_weights(self) -> torch.Tensor:
        """(F,) the weight w_i of each feature's activation in the penalty."""
        if self.cfg.sparsity_norm == "l2_of_norms":
            return self.W_dec_FLD.flatten(1).norm(dim=1)
        return self.decoder_norms().sum(dim=1)

    def loss(self, x_BLD: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        f_BF = self.encode(x_BLD, normalised=True)
        mse = self.mse(x_BLD, self.decode(f_BF, normalised=True))
        sparsity = (f_BF * self.penalty_weights()).sum(dim=1).mean()
        l0 = (f_BF > 0).float().sum(dim=1).mean()
        return LossOutput(mse + sparsity_coeff * sparsity, mse, sparsity, l0, f_BF)
