"""Feature absorption: planted hierarchical features and a measure of whether a dictionary keeps each parent whole.

Absorption (Chanin et al. 2024, "A is for Absorption"): when a general feature (a *parent*, e.g. "starts with S")
fires whenever any of its specific *children* fires ("snake", "sun"), a sparse dictionary can save L0 by folding the
parent's direction into each child's latent; the parent's own latent then fires only where no child does, so it
misses most of the parent's tokens. :class:`PlantedHierarchy` makes such data with known directions and
:func:`absorption_report` measures it:

* the parent's latent i*(p) = argmax_i cos(d_i, u_p), d_i the flattened decoder vector (L_out·D) and u_p the parent's
  direction, searched among the first ``among`` latents (a Matryoshka prefix) or all of them;
* its **recall** = #{tokens where p is active and f_{i*} > 0} / #{tokens where p is active}, and its absorption
  1 − recall;
* for each child c, its latent j*(c) = argmax_j cos(d_j, v_c) and that latent's cosine with the parent direction,
  cos(d_{j*}, u_p): near 0 when the child latent is the child alone, near u_p's share of u_p + v_c when it has
  absorbed the parent.

A dictionary keeps parent p as one latent when cos(d_{i*}, u_p) is high *and* its recall is high; absorption shows as
a low recall with the parent direction carried by the child latents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .crosscoder import Crosscoder

__all__ = ["PlantedHierarchy", "PlantedBatch", "AbsorptionReport", "absorption_report"]


class PlantedBatch(NamedTuple):
    x_BLD: torch.Tensor        # (B, L, D) activations
    parent_BP: torch.Tensor    # (B, P) bool: parent p active
    child_BC: torch.Tensor     # (B, C) bool: child c active (C = P · children), child c belongs to parent c // children


class PlantedHierarchy:
    """Synthetic activations with hierarchical features, all directions orthonormal (over the flattened L·D).

    P parents with ``children`` children each, plus ``n_independent`` independent features. Per token and parent,
    one of its children fires with probability ``p_child`` (uniform among them; at most one per parent), and then the
    parent fires too; a parent also fires alone with probability ``p_parent_alone``. Independent features fire with
    probability ``p_independent``. A token is Σ magnitude · direction over the active features plus Gaussian noise
    (std ``noise`` per coordinate); magnitudes are uniform in [1 − ``magnitude_spread``, 1 + ``magnitude_spread``].
    """

    def __init__(self, n_parents: int = 4, children: int = 3, n_independent: int = 8, n_hookpoints: int = 1,
                 d_model: int = 32, p_child: float = 0.3, p_parent_alone: float = 0.05, p_independent: float = 0.05,
                 noise: float = 0.01, magnitude_spread: float = 0.0, seed: int = 0):
        self.n_parents, self.children, self.n_independent = n_parents, children, n_independent
        self.p_child, self.p_parent_alone, self.p_independent, self.noise = p_child, p_parent_alone, p_independent, noise
        self.magnitude_spread = magnitude_spread
        self.shape = (n_hookpoints, d_model)
        n = n_parents * (1 + children) + n_independent
        if n > n_hookpoints * d_model:
            raise ValueError(f"{n} orthonormal directions need n_hookpoints·d_model >= {n}")
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n_hookpoints * d_model, n, generator=g))
        dirs = q.T.reshape(n, n_hookpoints, d_model)  # (n, L, D), orthonormal when flattened
        self.parent_dirs_PLD = dirs[:n_parents]
        self.child_dirs_CLD = dirs[n_parents : n_parents * (1 + children)]
        self.independent_dirs_ILD = dirs[n_parents * (1 + children) :]

    @property
    def child_parent_C(self) -> torch.Tensor:
        """(C,) the parent of each child."""
        return torch.arange(self.n_parents).repeat_interleave(self.children)

    def sample(self, n: int, generator: torch.Generator) -> PlantedBatch:
        """``n`` tokens drawn with ``generator``."""
        P, K, I = self.n_parents, self.children, self.n_independent
        has_child_NP = torch.rand(n, P, generator=generator) < self.p_child
        which_NP = torch.randint(K, (n, P), generator=generator)
        child_NC = torch.zeros(n, P, K, dtype=torch.bool).scatter_(2, which_NP[..., None], has_child_NP[..., None]).flatten(1)
        parent_NP = has_child_NP | (torch.rand(n, P, generator=generator) < self.p_parent_alone)
        indep_NI = torch.rand(n, I, generator=generator) < self.p_independent
        active_NF = torch.cat([parent_NP, child_NC, indep_NI], dim=1).float()
        mags_NF = 1 + self.magnitude_spread * (2 * torch.rand(active_NF.shape, generator=generator) - 1)
        dirs_FLD = torch.cat([self.parent_dirs_PLD, self.child_dirs_CLD, self.independent_dirs_ILD])
        x_NLD = torch.einsum("nf,fld->nld", active_NF * mags_NF, dirs_FLD)
        x_NLD = x_NLD + self.noise * torch.randn(x_NLD.shape, generator=generator)
        return PlantedBatch(x_NLD, parent_NP, child_NC)

    def batches(self, batch_size: int, seed: int = 0):
        """A training source for :func:`crosscoder.train.train_crosscoder`: a callable returning (B, L, D) batches."""
        g = torch.Generator().manual_seed(seed)
        return lambda: self.sample(batch_size, g).x_BLD


class AbsorptionReport(NamedTuple):
    parent_latent_P: torch.Tensor   # (P,) long: i*(p), the latent whose decoder best matches the parent direction
    parent_cos_P: torch.Tensor      # (P,) cos(d_{i*}, u_p)
    parent_recall_P: torch.Tensor   # (P,) fraction of p's active tokens on which i*(p) fires
    child_latent_C: torch.Tensor    # (C,) long: j*(c), best match of each child direction (-1 without children given)
    child_parent_cos_C: torch.Tensor  # (C,) cos(d_{j*(c)}, u_{parent(c)}): the parent direction carried by the child latent

    @property
    def mean_recall(self) -> float:
        return float(self.parent_recall_P.mean())

    @property
    def absorption(self) -> float:
        """Mean over parents of 1 − recall."""
        return 1.0 - self.mean_recall

    def summary(self) -> dict[str, float]:
        return {"parent_cos": float(self.parent_cos_P.mean()), "parent_recall": self.mean_recall, "absorption": self.absorption,
                "child_parent_cos": float(self.child_parent_cos_C.abs().mean()) if self.child_parent_cos_C.numel() else float("nan")}


def _unit(v_NO: torch.Tensor) -> torch.Tensor:
    return v_NO / v_NO.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def absorption_report(cc: Crosscoder, x_BLD: torch.Tensor, parent_dirs_PLD: torch.Tensor, parent_active_BP: torch.Tensor,
                      child_dirs_CLD: torch.Tensor | None = None, child_parent_C: torch.Tensor | None = None,
                      among: int | None = None, normalised: bool = False) -> AbsorptionReport:
    """Absorption of each planted parent by ``cc`` (module docstring for the measure).

    ``x_BLD`` (B, L, D) are activations (raw unless ``normalised``) on which ``parent_active_BP`` says which parents
    are active; directions are (P or C, L_out, D) in raw activation units, compared by cosine with the decoder taken
    back to raw units (each hookpoint's rows divided by its scale s_l; with one hookpoint, or equal scales, the scale
    does not matter). ``among`` restricts the parent's latent to the first ``among`` latents (a
    Matryoshka prefix); children are matched among all latents. Codes come from ``cc.encode`` in eval mode.
    """
    was_training = cc.training
    cc.eval()
    f_BF = cc.encode(x_BLD.to(cc.device), normalised=normalised)
    cc.train(was_training)
    scale_L = cc.norm_scale_L[cc.out_idx].detach().float()
    d_FO = _unit((cc.W_dec_FLD.detach().float() / scale_L[None, :, None]).flatten(1))  # raw units, as the directions
    m = d_FO.shape[0] if among is None else among
    cos_PF = _unit(parent_dirs_PLD.flatten(1).float().to(d_FO.device)) @ d_FO[:m].T
    parent_cos_P, parent_latent_P = cos_PF.max(dim=1)
    fires_BP = f_BF[:, parent_latent_P] > 0
    active_BP = parent_active_BP.to(fires_BP.device)
    recall_P = (fires_BP & active_BP).sum(0).float() / active_BP.sum(0).clamp_min(1).float()
    child_latent_C = torch.empty(0, dtype=torch.long)
    child_parent_cos_C = torch.empty(0)
    if child_dirs_CLD is not None and child_parent_C is not None:
        child_latent_C = (_unit(child_dirs_CLD.flatten(1).float().to(d_FO.device)) @ d_FO.T).argmax(dim=1)
        u_PO = _unit(parent_dirs_PLD.flatten(1).float().to(d_FO.device))
        child_parent_cos_C = (d_FO[child_latent_C] * u_PO[child_parent_C.to(d_FO.device)]).sum(dim=1)
    return AbsorptionReport(parent_latent_P.cpu(), parent_cos_P.cpu(), recall_P.cpu(), child_latent_C.cpu(), child_parent_cos_C.cpu())
