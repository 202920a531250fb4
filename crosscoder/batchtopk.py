"""BatchTopK crosscoder with AuxK on dead latents and a learned inference threshold.

Training keeps, across the whole batch, the k·B largest scores s_bi = ReLU(pre_bi)·‖W_dec,i‖ (‖·‖ summed over
hookpoints; for a model crosscoder, the per-model sums combined by ``model_norm``: Σ_m, as in Minder et al., or
√Σ_m²), so the mean L0 is exactly k while single tokens may use more or fewer latents (Bussmann et al. 2024;
for crosscoders, Minder et al. 2025). Loss:

    ‖a − â‖² + α · AuxK,   AuxK = ‖e − ê_dead‖² / ‖e − ē‖²

where e = a − â, and ê_dead reconstructs e (without decoder bias) from the top ``aux_k`` pre-activations of the
dead latents (Gao et al. 2024). At inference (eval mode) a latent fires when its score exceeds θ, an EMA of the
smallest score kept in each training batch, so a token's features no longer depend on its batch-mates. Under
torch.distributed each rank keeps its own top k·B (as dictionary_learning does) and θ is averaged across ranks
after every step (:meth:`BatchTopKCrosscoder.sync_distributed`).

SAELens (one hookpoint): exported as SAELens ``jumprelu`` with threshold_i = θ / n_i on pre, n_i = ‖W_dec,i‖
(its inference rule, as SAELens saves its own BatchTopK SAEs); imported from SAELens ``batchtopk`` checkpoints with
``rescale_acts_by_decoder_norm`` and from ``jumprelu`` SAEs trained as BatchTopK whose θ_i·n_i is one constant
(:meth:`BatchTopKCrosscoder.from_saelens`).

Training on the CPU at scale takes the sparse path (:meth:`BatchTopKCrosscoder.uses_sparse_kernels`,
:mod:`crosscoder.sparse_ops`): the batch top-k is found a block of rows at a time, and decoding, AuxK and every
gradient touch only the kept entries, not all B·F. It gives the dense path's numbers to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .config import CrosscoderConfig
from .crosscoder import Crosscoder, LossOutput, SAELensImport, SAELensSAE
from .errors import FeatgraphError
from .sparse_ops import SparseCode, batch_topk_select, gather_preactivations, sparse_decode

__all__ = ["BatchTopKCrosscoder", "BatchTopKOptions"]

NEVER = torch.finfo(torch.float32).max  # SAELens threshold of a latent that can never fire
TINY = torch.finfo(torch.float32).tiny
REL_TOL = 1e-5  # how far θ_i·n_i may vary across latents and still count as one θ
SPARSE_MIN_RATIO = 8  # auto (CPU): the sparse kernels when F ≥ this · k ...
SPARSE_MIN_WORK = 1 << 24  # ... and the batch's encoder matmul has at least this many multiply-adds


@dataclass
class BatchTopKOptions:
    """Options of the BatchTopK crosscoder."""

    k: int = 32
    """Mean active features per token (k·B kept per batch)."""
    aux_k: int = 256
    """Dead latents used to model the residual in the AuxK loss."""
    aux_alpha: float = 1 / 32
    """Weight α of the AuxK loss."""
    threshold_ema: float = 0.99
    """EMA decay of the learned inference threshold θ."""

    def __post_init__(self) -> None:
        if self.k <= 0 or self.aux_k <= 0:
            raise FeatgraphError(f"k and aux_k must be positive, got k={self.k}, aux_k={self.aux_k}")
        if not self.aux_alpha >= 0:
            raise FeatgraphError(f"aux_alpha must be >= 0, got {self.aux_alpha}")
        if not 0 <= self.threshold_ema < 1:
            raise FeatgraphError(f"threshold_ema must lie in [0, 1), got {self.threshold_ema}")


class BatchTopKCrosscoder(Crosscoder):
    name = "batchtopk"
    Options = BatchTopKOptions
    saelens_architecture = "jumprelu"
    saelens_imports = {"batchtopk": {"topk_threshold": ""}, "jumprelu": {"threshold": "F"}}
    saelens_precedence = 1  # before jumprelu: where both hold a SAE exactly, this one also keeps its training rule
    opts: BatchTopKOptions

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))  # θ; < 0: not learned yet

    @classmethod
    def check_config(cls, cfg: CrosscoderConfig) -> None:
        k = cfg.options["k"]
        if k > cfg.n_features:
            raise FeatgraphError(f"k must lie in 1..n_features, got k={k} with n_features={cfg.n_features}")

    def _scores(self, pre_BF: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre_BF) * self.feature_norms()

    def batch_topk(self, pre_BF: torch.Tensor) -> torch.Tensor:
        """ReLU(pre) kept at the k·B largest scores of the batch, zero elsewhere; (B, F)."""
        scores_BF = self._scores(pre_BF)
        n_keep = min(self.opts.k * pre_BF.shape[0], scores_BF.numel())
        top = scores_BF.flatten().topk(n_keep, sorted=False)
        mask = torch.zeros_like(scores_BF).flatten().scatter_(0, top.indices, 1.0).view_as(scores_BF)
        return torch.relu(pre_BF) * mask * (scores_BF > 0)

    def encode(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Training mode (or θ not learned yet): the batch top-k; eval mode: the threshold rule, token by token."""
        pre_BF = self.pre_activations(x_BLD, normalised)
        if self.training or self.threshold < 0:
            return self.batch_topk(pre_BF)
        return torch.relu(pre_BF) * (self._scores(pre_BF) > self.threshold)

    @torch.no_grad()
    def _update_threshold(self, low: torch.Tensor) -> None:
        """θ ← EMA of ``low``, the smallest score kept in this batch (θ = low the first time)."""
        decay = self.opts.threshold_ema
        self.threshold.copy_(low if self.threshold < 0 else decay * self.threshold + (1 - decay) * low)

    def _aux_ratio(self, e_BLD: torch.Tensor, e_hat_BLD: torch.Tensor) -> torch.Tensor:
        """‖e − ê_dead‖² / ‖e − ē‖² (e detached)."""
        denom = (e_BLD - e_BLD.mean(dim=0)).pow(2).sum().clamp_min(1e-8)
        return (e_BLD - e_hat_BLD).pow(2).sum() / denom

    def aux_loss(self, x_BLD: torch.Tensor, x_hat_BLD: torch.Tensor, pre_BF: torch.Tensor) -> torch.Tensor:
        """AuxK: how much of the residual the dead latents can explain (0 when none are dead)."""
        dead_F = self.dead_mask()
        n_dead = int(dead_F.sum())
        if n_dead == 0:
            return x_BLD.new_zeros(())
        e_BLD = (self.targets(x_BLD) - x_hat_BLD).detach()
        pre_dead_BF = torch.where(dead_F, torch.relu(pre_BF), torch.zeros_like(pre_BF))
        top = pre_dead_BF.topk(min(self.opts.aux_k, n_dead), dim=1)
        f_aux_BF = torch.zeros_like(pre_BF).scatter(1, top.indices, top.values)
        return self._aux_ratio(e_BLD, torch.einsum("bf,fld->bld", f_aux_BF, self.W_dec_FLD))

    def uses_sparse_kernels(self, batch_size: int) -> bool:
        """Whether :meth:`loss` takes the sparse path on a batch of this size: ``sparse_kernels`` on, or auto on the
        CPU with F ≥ 8·k and B·F·(L_in·D) ≥ 2²⁴ encoder multiply-adds. There the gathers beat the dense matmuls from
        F ≈ 4·k (1.5x at F = 8·k, 4x at F = 512·k for B = 1,024, L·D = 640; analyses/bench_train.py), while on
        smaller batches the dense path's fewer, larger ops win; on other devices auto stays dense (not measured)."""
        if self.sparse_kernels != "auto":
            return self.sparse_kernels == "on"
        F = self.cfg.n_features
        work = batch_size * F * len(self.cfg.reads) * self.cfg.d_model
        return self.b_enc_F.device.type == "cpu" and self.opts.k * SPARSE_MIN_RATIO <= F and work >= SPARSE_MIN_WORK

    def loss(self, x_BLD: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        """λ is unused: sparsity is fixed by k; the auxiliary term is α·AuxK. Dense matmuls or the sparse kernels
        (:meth:`uses_sparse_kernels`); the two agree to float rounding."""
        if self.uses_sparse_kernels(x_BLD.shape[0]):
            return self._sparse_loss(x_BLD)
        pre_BF = self.pre_activations(x_BLD, normalised=True)
        f_BF = self.batch_topk(pre_BF)
        x_hat_BLD = self.decode(f_BF, normalised=True)
        mse = self.mse(x_BLD, x_hat_BLD)
        aux = self.aux_loss(x_BLD, x_hat_BLD, pre_BF)
        if self.training:
            with torch.no_grad():
                kept = self._scores(pre_BF)[f_BF > 0]
            if kept.numel():
                self._update_threshold(kept.min())
        l0 = (f_BF > 0).float().sum(dim=1).mean()
        return LossOutput(mse + self.opts.aux_alpha * aux, mse, aux, l0, f_BF)

    def _sparse_loss(self, x_BLD: torch.Tensor) -> LossOutput:
        """:meth:`loss` through :mod:`crosscoder.sparse_ops`: the batch top-k is chosen a block of rows at a time and
        decoding, AuxK and every gradient touch only the kept entries (plus AuxK's)."""
        B, F = x_BLD.shape[0], self.cfg.n_features
        x_in_BLD = x_BLD if self.same_io else x_BLD[:, self.in_idx]
        dead_F = self.dead_mask()
        n_dead = int(dead_F.sum())
        x_BI, W_enc_IF = x_in_BLD.reshape(B, -1), self.W_enc_LDF.flatten(0, 1)
        b_enc_F, W_IF = self.b_enc_F.detach(), W_enc_IF.detach()

        def pre_fn(rows: slice | torch.Tensor) -> torch.Tensor:  # x W_enc + b_enc on some rows, without copying W_enc
            return torch.addmm(b_enc_F, x_BI[rows], W_IF)

        with torch.no_grad():
            norms_F = self.feature_norms()
        sel = batch_topk_select(pre_fn, B, norms_F, n_keep=self.opts.k * B, m=2 * self.opts.k, dead_F=dead_F,
                                aux_k=min(self.opts.aux_k, n_dead))
        n_main = sel.row_N.numel()
        pre_N = gather_preactivations(
            x_BI, W_enc_IF, self.b_enc_F, torch.cat([sel.row_N, sel.aux.row_N]), torch.cat([sel.feat_N, sel.aux.feat_N]),
            torch.cat([sel.pre_N, sel.aux.val_N]),
        )  # kept entries, then AuxK's; their ReLU is the identity (all > 0)
        code = SparseCode(sel.row_N, sel.feat_N, pre_N[:n_main], B, F)
        W_dec_FO = self.W_dec_FLD.flatten(1)
        x_hat_BLD = sparse_decode(code, W_dec_FO).view(B, *self.b_dec_LD.shape) + self.b_dec_LD
        mse = self.mse(x_BLD, x_hat_BLD)
        aux = x_BLD.new_zeros(())
        if n_dead:
            e_BLD = (self.targets(x_BLD) - x_hat_BLD).detach()
            e_hat_BLD = sparse_decode(sel.aux._replace(val_N=pre_N[n_main:]), W_dec_FO).view_as(e_BLD)
            aux = self._aux_ratio(e_BLD, e_hat_BLD)
        if self.training and n_main:
            self._update_threshold(sel.score_N.min())
        l0 = torch.tensor(float(n_main), device=x_BLD.device) / B
        return LossOutput(mse + self.opts.aux_alpha * aux, mse, aux, l0, code.to_dense())

    @torch.no_grad()
    def sync_distributed(self) -> None:
        """θ becomes its mean over the ranks (each rank updates it from its own share of the batch)."""
        dist.all_reduce(self.threshold)
        self.threshold /= dist.get_world_size()

    # ---- SAELens ------------------------------------------------------------------------------------------
    def saelens_export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """SAELens ``jumprelu`` form of the inference rule: latent i fires when ``relu(pre_i)·n_i > θ`` with
        n_i = ‖W_dec,i‖ (normalised space) and θ ≥ 0, i.e. when ``pre_i > θ / n_i`` — threshold_i = θ / n_i, float32
        max where n_i = 0 (never fires). The batch top-k of training has no SAELens inference form."""
        theta = float(self.threshold)
        if theta < 0:
            raise FeatgraphError(
                "this batchtopk crosscoder has no learned inference threshold yet (threshold < 0), and SAELens has no "
                "batch-level top-k at inference — train it (the threshold is learned during training) before exporting"
            )
        norms_F = self.decoder_norms().sum(dim=1).to("cpu", torch.float32)
        return {"threshold": _thresholds_on_pre(theta, norms_F)}, {"threshold": theta}

    @classmethod
    def from_saelens(cls, sae: SAELensSAE) -> SAELensImport | None:
        """SAELens ``batchtopk`` (its training checkpoint: ``topk_threshold``, ``k``) with
        ``rescale_acts_by_decoder_norm`` ranks and thresholds relu(pre_i)·n_i, this architecture's score; its
        activations are relu(pre_i)·n_i and its decoder divides by n_i, so the norms are folded into the encoder
        (W_enc_i, b_enc_i ·= n_i, W_dec_i /= n_i, n clamped at 1e-8 like SAELens) with θ = ``topk_threshold``: the
        same numbers in eval mode and in training mode. (Without the rescale SAELens ranks relu(pre_i) alone, which
        no batchtopk can: None.) SAELens ``jumprelu`` trained as BatchTopK (featgraph's ``metadata.featgraph`` or
        SAELens's ``metadata.training_architecture``) whose threshold_i·n_i is one θ for every latent (rel. tol.
        1e-5; latents with n_i = 0 must never fire) becomes this with that θ — the same tokens fire except where
        pre_i lies within that tolerance of threshold_i. k comes from the SAE (``k`` or
        ``training_architecture_details.k``, else 32), clamped to 1..F."""
        w = dict(sae.weights)
        if sae.architecture == "batchtopk":
            if not sae.cfg.get("rescale_acts_by_decoder_norm", True):
                return None
            theta: float | None = float(w.pop("topk_threshold"))
            n_F = (w["W_dec"].norm(dim=1) / sae.scale).clamp_min(1e-8)  # SAELens's norms, of the raw decoder
            w.update(W_enc=w["W_enc"] * n_F, b_enc=w["b_enc"] * n_F, W_dec=w["W_dec"] / n_F[:, None])
        else:
            trained_as = sae.featgraph.get("architecture") == cls.name or sae.metadata.get("training_architecture") == "batchtopk"
            if not trained_as:
                return None
            hint = sae.featgraph.get("threshold")
            theta = _constant_score_threshold(w.pop("threshold"), w["W_dec"].norm(dim=1), hint if isinstance(hint, (int, float)) else None)
            if theta is None:
                return None
        k = sae.cfg.get("k", (sae.metadata.get("training_architecture_details") or {}).get("k", 32))
        k = min(max(int(round(float(k))), 1), w["b_enc"].shape[0])
        return SAELensImport({"k": k}, w, {"threshold": torch.tensor(theta)})


def _thresholds_on_pre(theta: float, norms_F: torch.Tensor) -> torch.Tensor:
    """Per-latent thresholds on pre equivalent to ``relu(pre)·norm > θ`` (θ ≥ 0): θ / norm, never firing at norm 0."""
    t_F = torch.where(norms_F > 0, theta / norms_F.clamp_min(TINY), torch.full_like(norms_F, NEVER))
    return t_F.clamp(max=NEVER)


def _constant_score_threshold(t_F: torch.Tensor, norms_F: torch.Tensor, hint: float | None) -> float | None:
    """θ ≥ 0 such that ``pre_i > t_i`` is ``relu(pre_i)·n_i > θ`` for every latent, else None; ``hint`` wins if it fits."""
    live = norms_F > 0
    if not live.any() or not (t_F[~live] >= NEVER).all():
        return None
    scores = t_F[live] * norms_F[live]
    theta = float(scores.median())
    if hint is not None and abs(hint - theta) <= REL_TOL * abs(hint):
        theta = float(hint)
    if theta < 0 or ((scores - theta).abs() > REL_TOL * abs(theta) + 1e-30).any():
        return None
    return theta
