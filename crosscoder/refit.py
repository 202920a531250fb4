"""Shrinkage re-fit with the encoder frozen: the decoder by streamed least squares, or one scale per feature.

Sparse dictionaries trained with an L1-style penalty under-shoot: reconstructions are shorter than their inputs
(shrinkage). The practitioners' repair keeps the encoder — so every token keeps the same active features and L0 — and
re-fits what reads them out, on activations streamed once:

* ``what="decoder"``: W_dec = argmin Σ_t ‖y_t − f_t W‖² with y = targets − b_dec, from the streamed sums G = Σ fᵀf
  (F × F) and H = Σ fᵀy (F × L·D), float64: W = (G + εI)⁻¹ H over the features that fired (the others keep their rows);
  under a causal layout (:mod:`crosscoder.layouts`) each written hookpoint is solved over the features that write it,
  the others' vectors there staying zero;
* ``what="scale"``: W_dec,i ← s_i W_dec,i with s = argmin Σ_t ‖y_t − Σ_i s_i f_ti W_i‖², i.e. (G ∘ W Wᵀ) s = diag(H Wᵀ)
  — F unknowns, the directions kept.

b_dec stays as trained. Both are exact least squares on the batches given (up to the small ridge ε that keeps
rarely-firing features well-posed). ``featgraph crosscoder refit`` runs it on a model's activations
(:class:`ReHarvest`) and reports the full metrics before and after.
"""

from __future__ import annotations

import copy
from typing import Iterable, NamedTuple

import torch

from .crosscoder import Crosscoder
from .errors import FeatgraphError

__all__ = ["RefitResult", "ReHarvest", "refit", "reconstruction_stats"]


class ReHarvest:
    """A re-iterable stream of a model's activations: each iteration harvests ``tokens_NT`` at ``hookpoints`` again
    (:func:`crosscoder.harvest.harvest`), so a pass that reads the data several times holds one batch at a time."""

    def __init__(self, model, tokens_NT: torch.Tensor, hookpoints, device=None, batch_size: int = 32):
        self.model, self.tokens_NT, self.hookpoints, self.device, self.batch_size = model, tokens_NT, list(hookpoints), device, batch_size

    def __iter__(self):
        from .harvest import harvest

        return harvest(self.model, self.tokens_NT, self.hookpoints, self.batch_size, device=self.device)


class RefitResult(NamedTuple):
    cc: Crosscoder
    """The re-fitted crosscoder (a copy; the input is unchanged), with the step in its lineage."""
    before: dict
    """``reconstruction_stats`` of the input crosscoder on the same batches."""
    after: dict
    """The same for the re-fitted one."""


@torch.no_grad()
def reconstruction_stats(cc: Crosscoder, batches: Iterable[torch.Tensor]) -> dict:
    """Pooled FVU, shrinkage (Σ‖x̂‖ / Σ‖x‖ over tokens and written hookpoints, in the normalised space) and L0 of
    ``cc`` on raw activation batches (B, L, D)."""
    sse = tot = norm_hat = norm_x = l0 = n = 0.0
    mean = None
    for x_BLD in batches:
        x = cc.normalise(x_BLD.to(cc.device).float())
        y = cc.targets(x)
        f = cc.encode(x, normalised=True)
        y_hat = cc.decode(f, normalised=True)
        sse += float(((y_hat - y) ** 2).sum())
        norm_hat += float(y_hat.norm(dim=-1).sum())
        norm_x += float(y.norm(dim=-1).sum())
        l0 += float((f > 0).sum())
        n += y.shape[0]
        mean = y.double().sum(0) if mean is None else mean + y.double().sum(0)
        tot += float((y.double() ** 2).sum())
    if n == 0:
        raise FeatgraphError("no activation batches to measure the reconstruction on; pass at least one")
    var = tot - float((mean ** 2).sum()) / n
    return {"fvu": sse / var if var > 0 else float("nan"), "shrinkage": norm_hat / norm_x if norm_x > 0 else float("nan"),
            "l0": l0 / n, "tokens": int(n)}


@torch.no_grad()
def refit(cc: Crosscoder, batches: Iterable[torch.Tensor], what: str = "decoder", ridge: float = 1e-6) -> RefitResult:
    """Re-fit ``cc``'s decoder (``what="decoder"``) or one scale per feature (``"scale"``) with the encoder frozen, on
    raw activation ``batches`` (B, L, D) — a list or a re-iterable such as :class:`ReHarvest` (they are read three
    times: the sums, then the statistics before and after; one batch is held at a time). ``ridge``: ε relative to each feature's Σf², for features that rarely fire."""
    if what not in ("decoder", "scale"):
        raise FeatgraphError(f"refit --what must be decoder or scale, got {what!r}")
    if "W_dec_FLD" not in cc._parameters:
        raise FeatgraphError("this crosscoder has designated shared latents; refit handles a plain decoder only")
    if iter(batches) is batches:
        raise FeatgraphError("refit reads the batches three times: pass a list or a re-iterable (e.g. ReHarvest), not a one-shot iterator")
    F = cc.cfg.n_features
    W_FO = cc.W_dec_FLD.detach().reshape(F, -1).double()
    G = torch.zeros(F, F, dtype=torch.float64, device=cc.device)
    H = torch.zeros_like(W_FO)
    n_tokens = 0
    for x_BLD in batches:
        n_tokens += x_BLD.shape[0]
        x = cc.normalise(x_BLD.to(cc.device).float())
        f = cc.encode(x, normalised=True).double()
        y = (cc.targets(x) - cc.b_dec_LD).reshape(x.shape[0], -1).double()
        G += f.T @ f
        H += f.T @ y
    fired = torch.diagonal(G) > 0
    idx = fired.nonzero().squeeze(1)
    G_ff = G[idx][:, idx]
    G_ff = G_ff + torch.diag(ridge * torch.diagonal(G_ff))
    new = cc.W_dec_FLD.detach().clone()
    if what == "decoder" and cc.has_layout:  # a causal layout: each written hookpoint from the features that write it
        H_FLD = H.view(F, *cc.b_dec_LD.shape)
        for o in range(H_FLD.shape[1]):
            sel = idx[cc.layout_write_FL[idx, o]]
            if len(sel):
                G_o = G[sel][:, sel]
                new[sel, o] = torch.linalg.solve(G_o + torch.diag(ridge * torch.diagonal(G_o)), H_FLD[sel, o]).to(new.dtype)
    elif what == "decoder":
        W_new = torch.linalg.solve(G_ff, H[idx])
        new.reshape(F, -1)[idx] = W_new.to(new.dtype)
    else:
        W_ff = W_FO[idx]
        A = G_ff * (W_ff @ W_ff.T)
        b = (H[idx] * W_ff).sum(1)
        s = torch.linalg.solve(A, b)
        new[idx] = new[idx] * s.to(new.dtype)[:, None, None]
    out = copy.deepcopy(cc)
    out.W_dec_FLD.data.copy_(new)
    out.enforce_layout()
    out.lineage = list(cc.lineage) + [{"stage": f"refit_{what}", "parent": None, "tokens": int(n_tokens),
                                       "features_refit": int(len(idx))}]
    return RefitResult(out, reconstruction_stats(cc, batches), reconstruction_stats(out, batches))
