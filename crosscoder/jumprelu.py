"""JumpReLU crosscoder with the Anthropic January-2025 loss.

Following Anthropic ("Circuits Updates – January 2025"), the learned parameter is the log threshold θ_i and the
threshold is t_i = exp(θ_i):

    f_i = pre_i · H(pre_i − t_i)
    loss = ‖a − â‖² + λ_s Σ_i tanh(c · f_i ‖W_dec,i‖) + λ_p Σ_i ReLU(t_i − pre_i) ‖W_dec,i‖

with ‖W_dec,i‖ summed over hookpoints (for a model crosscoder: combined over models by ``model_norm``; designated
shared latents have their tanh term scaled by ``shared_sparsity_scale``) and c = 4. The pre-activation penalty pushes
latents that never fire back towards their threshold (tiny-sleepers trainer likewise).

H has no useful derivative, so the threshold's gradient is a straight-through estimate: the Dirac delta of H′ is
replaced by a rectangle kernel of width ε (``bandwidth``), 1[|pre_i − t_i| < ε/2]. Two conventions
(``threshold_grad``), both given as the derivative with respect to the learned parameter θ_i = log t_i:

``anthropic`` (default; Anthropic, Jan 2025, who write t for the log threshold)::

    ∂f_i/∂θ_i ≈ −(exp(θ_i)/ε) · 1[|pre_i − exp(θ_i)| < ε/2]  =  −(t_i/ε) · 1[|pre_i − t_i| < ε/2]

``jumping_ahead`` (Rajamanoharan et al. 2024, "Jumping Ahead", eq. 11: the pseudo-derivative with respect to the
threshold t_i itself, chained to θ_i = log t_i as autograd does for their log-parametrised thresholds, and as
SAELens and dictionary_learning do)::

    ∂f_i/∂t_i ≈ −(t_i/ε) · 1[|pre_i − t_i| < ε/2],   so   ∂f_i/∂θ_i ≈ −(t_i²/ε) · 1[|pre_i − t_i| < ε/2]

They differ by the factor t_i: Anthropic's moves small thresholds faster. featgraph used ``jumping_ahead`` before
this option existed, so a cfg.json written then loads with it. The pre-activation gets the exact gradient
∂f_i/∂pre_i = H(pre_i − t_i) in both; Anthropic's further straight-through gradient to the pre-activation
(SAELens's ``jumprelu_ste_to_input``) is not implemented.

SAELens (one hookpoint): exported as SAELens ``jumprelu`` with threshold = t; imported from SAELens ``jumprelu``
(and from its ``batchtopk`` without ``rescale_acts_by_decoder_norm``, every threshold = ``topk_threshold``, SAELens's
own inference form of it) with θ = log(max(threshold, float32 tiny)): a threshold ≤ 0, plain ReLU in SAELens,
becomes 1.2e-38, so activations in (0, 1.2e-38] are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .config import CrosscoderConfig
from .crosscoder import Crosscoder, LossOutput, SAELensImport, SAELensSAE
from .errors import FeatgraphError

__all__ = ["JumpReLUCrosscoder", "JumpReLUOptions", "jumprelu", "THRESHOLD_GRADS"]

THRESHOLD_GRADS = ("anthropic", "jumping_ahead")
NEVER = torch.finfo(torch.float32).max
TINY = torch.finfo(torch.float32).tiny  # smallest threshold the log parametrisation holds in float32


@dataclass
class JumpReLUOptions:
    """Options of the JumpReLU crosscoder."""

    FLAG_PREFIX: ClassVar[str] = "jumprelu_"
    """Command-line flags and flat config keys carry this prefix (``--jumprelu-bandwidth``): the names are short."""

    bandwidth: float = 2.0
    """Width ε of the rectangle kernel of the straight-through threshold gradient."""
    init_threshold: float = 0.1
    """Initial threshold t_i (learned as log t_i)."""
    c: float = 4.0
    """c in the tanh(c · f_i ‖W_dec,i‖) sparsity penalty."""
    preact_coeff: float = 3e-6
    """λ_p of the pre-activation penalty Σ_i ReLU(t_i − pre_i) ‖W_dec,i‖ (revives dead latents)."""
    threshold_grad: Literal["anthropic", "jumping_ahead"] = "anthropic"
    """Straight-through gradient of the log threshold θ: anthropic −(t/ε)·1[|pre−t|<ε/2] (Jan 2025) or
    jumping_ahead −(t²/ε)·1[…] (Rajamanoharan et al. 2024, their ∂/∂t chained to log t)."""

    legacy_defaults: ClassVar[dict[str, Any]] = {"threshold_grad": "jumping_ahead"}
    # Values for options missing from a cfg.json written before options existed: how those were trained.

    def __post_init__(self) -> None:
        if not (self.bandwidth > 0 and self.init_threshold > 0):
            raise FeatgraphError(f"bandwidth and init_threshold must be > 0, got {self.bandwidth} and {self.init_threshold}")
        if not (self.c > 0 and self.preact_coeff >= 0):
            raise FeatgraphError(f"c must be > 0 and preact_coeff >= 0, got {self.c} and {self.preact_coeff}")
        if self.threshold_grad not in THRESHOLD_GRADS:
            raise FeatgraphError(f"unknown threshold_grad {self.threshold_grad!r}; choose {' or '.join(THRESHOLD_GRADS)}")


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre_BF: torch.Tensor, log_t_F: torch.Tensor, bandwidth: float, threshold_grad: str) -> torch.Tensor:
        t_F = log_t_F.exp()
        ctx.save_for_backward(pre_BF, t_F)
        ctx.bandwidth, ctx.threshold_grad = bandwidth, threshold_grad
        return pre_BF * (pre_BF > t_F)

    @staticmethod
    def backward(ctx, grad_BF: torch.Tensor):
        pre_BF, t_F = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre_BF = grad_BF * (pre_BF > t_F)
        window_BF = ((pre_BF - t_F).abs() < eps / 2).to(grad_BF.dtype)
        grad_log_t_F = (-(t_F / eps) * window_BF * grad_BF).sum(dim=0)  # anthropic: ∂f/∂θ = −(t/ε)·1[…]
        if ctx.threshold_grad == "jumping_ahead":
            grad_log_t_F = grad_log_t_F * t_F  # ∂f/∂t = −(t/ε)·1[…], and ∂/∂θ = t·∂/∂t
        return grad_pre_BF, grad_log_t_F, None, None


def jumprelu(pre_BF: torch.Tensor, log_t_F: torch.Tensor, bandwidth: float, threshold_grad: str = "anthropic") -> torch.Tensor:
    """pre · H(pre − exp(log_t)) with the straight-through threshold gradient ``threshold_grad`` (module docstring)."""
    return _JumpReLU.apply(pre_BF, log_t_F, bandwidth, threshold_grad)


class JumpReLUCrosscoder(Crosscoder):
    name = "jumprelu"
    Options = JumpReLUOptions
    saelens_architecture = "jumprelu"
    saelens_imports = {"jumprelu": {"threshold": "F"}, "batchtopk": {"topk_threshold": ""}}
    opts: JumpReLUOptions

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__(cfg)
        self.log_threshold_F = nn.Parameter(torch.full((cfg.n_features,), math.log(self.opts.init_threshold)))

    def _jumprelu(self, pre_BF: torch.Tensor) -> torch.Tensor:
        return jumprelu(pre_BF, self.log_threshold_F, self.opts.bandwidth, self.opts.threshold_grad)

    def encode(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        return self._jumprelu(self.pre_activations(x_BLD, normalised))

    def loss(self, x_BLD: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        pre_BF = self.pre_activations(x_BLD, normalised=True)
        f_BF = self._jumprelu(pre_BF)
        mse = self.mse(x_BLD, self.decode(f_BF, normalised=True))
        norms_F = self.feature_norms()
        tanh_BF = torch.tanh(self.opts.c * f_BF * norms_F)
        sparsity = (tanh_BF * self.penalty_scale_F if self.cfg.n_shared_latents else tanh_BF).sum(dim=1).mean()
        preact = (torch.relu(self.log_threshold_F.exp() - pre_BF) * norms_F).sum(dim=1).mean()
        l0 = (f_BF > 0).float().sum(dim=1).mean()
        loss = mse + sparsity_coeff * sparsity + self.opts.preact_coeff * preact
        return LossOutput(loss, mse, sparsity, l0, f_BF)

    # ---- SAELens ------------------------------------------------------------------------------------------
    def saelens_export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """threshold = exp(θ): it acts on pre, which the export leaves unchanged. (SAELens computes
        relu(pre)·1[pre > t], featgraph pre·1[pre > t]: equal for t > 0.)"""
        return {"threshold": self.log_threshold_F.detach().exp().to("cpu", torch.float32)}, {}

    @classmethod
    def from_saelens(cls, sae: SAELensSAE) -> SAELensImport | None:
        """SAELens ``jumprelu``: θ = log(clamp(threshold, float32 tiny, float32 max)). SAELens ``batchtopk`` without
        ``rescale_acts_by_decoder_norm``: every threshold = ``topk_threshold`` (with the rescale: None)."""
        w = dict(sae.weights)
        if sae.architecture == "batchtopk":
            if sae.cfg.get("rescale_acts_by_decoder_norm", True):
                return None
            t_F = torch.full_like(w["b_enc"], float(w.pop("topk_threshold")))
        else:
            t_F = w.pop("threshold")
        return SAELensImport({}, w, {"log_threshold_F": t_F.clamp(min=TINY, max=NEVER).log()})
