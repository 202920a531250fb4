"""Sparse kernels for top-k codes: a batch top-k that never holds the (B, F) scores, a gather-based decoder, and the
encoder's gradient through the kept entries only.

A top-k code has few non-zeros per token, so once they are chosen the rest of a training step need not touch all B·F
entries (EleutherAI's sparsify does the same for its TopK SAEs; written here from the maths):

* :func:`sparse_decode` — x̂_b = Σ_{n: row_n = b} v_n W_dec[feat_n], an ``embedding_bag`` over the decoder's rows.
  Backward: ∂/∂v_n = ⟨g_{row_n}, W_dec[feat_n]⟩ and ∂/∂W_dec[i] = Σ_{n: feat_n = i} v_n g_{row_n} (the same
  ``embedding_bag`` with rows and features swapped), O(N·O) for N kept entries instead of O(B·F·O).
* :func:`gather_preactivations` — pre_n = x_{row_n} · W_enc[:, feat_n] + b_enc[feat_n]. The loss depends on the
  pre-activations only at the kept entries, so ∂/∂W_enc[:, i] = Σ_{n: feat_n = i} g_n x_{row_n} and
  ∂/∂b_enc[i] = Σ_{n: feat_n = i} g_n, again gathers, never the dense x^T · G.
* :func:`batch_topk_select` — the entries of the batch top-k (and of AuxK's per-row top-k of dead latents) from
  pre-activations computed a block of rows at a time; each row's top ``m`` scores are candidates, and rows whose
  m-th score reaches the batch threshold are scored again in full, so the result is the exact batch top-k.

Entries are flat triples (row_N, feat_N, val_N) in row-major order, so rows may hold any number of entries, zero
included. Every backward sums in a fixed order (one bag at a time), so results are deterministic on the CPU.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["SparseCode", "TopKSelection", "sparse_decode", "gather_preactivations", "batch_topk_select", "row_offsets"]

CHUNK_ELEMENTS = 1 << 21  # pre-activations scored per block of rows (8 MB of float32): small enough to reuse memory


class SparseCode(NamedTuple):
    """Non-zero entries of a (B, F) code in row-major order: f[row_N[n], feat_N[n]] = val_N[n]."""

    row_N: torch.Tensor   # (N,) long, non-decreasing
    feat_N: torch.Tensor  # (N,) long, increasing within a row
    val_N: torch.Tensor   # (N,) values (may carry autograd)
    n_rows: int           # B
    n_features: int       # F

    @classmethod
    def from_dense(cls, f_BF: torch.Tensor) -> SparseCode:
        """The non-zero entries of ``f_BF`` (values gathered with autograd)."""
        row_N, feat_N = f_BF.nonzero(as_tuple=True)
        return cls(row_N, feat_N, f_BF[row_N, feat_N], f_BF.shape[0], f_BF.shape[1])

    def to_dense(self) -> torch.Tensor:
        """(B, F) with the entries in place and zeros elsewhere (differentiable in the values)."""
        f_BF = self.val_N.new_zeros(self.n_rows, self.n_features)
        return f_BF.index_put_((self.row_N, self.feat_N), self.val_N)


class TopKSelection(NamedTuple):
    """Kept entries of a batch top-k (row-major) and AuxK's entries among dead latents, all with positive score."""

    row_N: torch.Tensor    # (N,) long
    feat_N: torch.Tensor   # (N,) long
    pre_N: torch.Tensor    # (N,) pre-activation there (= ReLU(pre): all positive)
    score_N: torch.Tensor  # (N,) score ReLU(pre)·scale there
    aux: SparseCode        # AuxK entries: values are the pre-activations (positive); empty without dead latents


def row_offsets(row_N: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(B,) index of each row's first entry in row-sorted ``row_N`` (empty rows repeat the next start)."""
    return torch.searchsorted(row_N, torch.arange(n_rows, device=row_N.device))


def _feature_major(row_N: torch.Tensor, feat_N: torch.Tensor, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, offsets): the permutation that sorts entries by feature (stable) and each feature's first entry."""
    perm_N = torch.argsort(feat_N, stable=True)
    return perm_N, torch.searchsorted(feat_N[perm_N], torch.arange(n_features, device=feat_N.device))


def _bag_sum(index_N: torch.Tensor, table_RC: torch.Tensor, offsets: torch.Tensor, weight_N: torch.Tensor) -> torch.Tensor:
    """out[j] = Σ_{n in bag j} weight_n · table[index_n] (bags given by ``offsets``); one row per bag."""
    return F.embedding_bag(index_N, table_RC, offsets, mode="sum", per_sample_weights=weight_N)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, val_N, W_FO, row_N, feat_N, n_rows):
        offsets_B = row_offsets(row_N, n_rows)
        ctx.save_for_backward(val_N, W_FO, row_N, feat_N, offsets_B)
        return _bag_sum(feat_N, W_FO, offsets_B, val_N)  # (B, O)

    @staticmethod
    def backward(ctx, grad_BO):
        val_N, W_FO, row_N, feat_N, offsets_B = ctx.saved_tensors
        grad_BO = grad_BO.contiguous().to(W_FO.dtype)
        grad_val = grad_W = None
        if ctx.needs_input_grad[0]:  # ⟨g_{row_n}, W[feat_n]⟩, the bag-weight gradient of embedding_bag
            grad_val = torch.ops.aten._embedding_bag_per_sample_weights_backward(grad_BO, W_FO, feat_N, offsets_B, row_N, 0)
        if ctx.needs_input_grad[1]:  # Σ_{n: feat_n = i} v_n g_{row_n}: bags are features now
            perm_N, offsets_F = _feature_major(row_N, feat_N, W_FO.shape[0])
            grad_W = _bag_sum(row_N[perm_N], grad_BO, offsets_F, val_N[perm_N])
        return grad_val, grad_W, None, None, None


def sparse_decode(code: SparseCode, W_dec_FO: torch.Tensor) -> torch.Tensor:
    """Σ_n val_n W_dec[feat_n] per row, (B, O), without the decoder bias; equals ``code.to_dense() @ W_dec_FO`` with
    gradients for the values and for W_dec that touch only the N kept entries."""
    val_N = code.val_N.to(W_dec_FO.dtype)
    return _SparseDecode.apply(val_N, W_dec_FO, code.row_N, code.feat_N, code.n_rows)


class _GatheredPreactivations(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BI, W_IF, b_F, row_N, feat_N, pre_N):
        ctx.save_for_backward(x_BI, W_IF, row_N, feat_N)
        ctx.b_dtype = b_F.dtype
        if pre_N is not None:  # already computed by the caller (the selection): just hand them on
            return pre_N.detach().clone()
        return (x_BI[row_N] * W_IF.t()[feat_N]).sum(dim=1) + b_F[feat_N]

    @staticmethod
    def backward(ctx, grad_N):
        x_BI, W_IF, row_N, feat_N = ctx.saved_tensors
        grad_N = grad_N.contiguous()  # (under autocast it may be of another dtype than x or W: cast to each)
        B, I = x_BI.shape
        n_features = W_IF.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:  # Σ_{n: row_n = b} g_n W[:, feat_n]
            grad_x = _bag_sum(feat_N, W_IF.t().contiguous(), row_offsets(row_N, B), grad_N.to(W_IF.dtype))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            perm_N, offsets_F = _feature_major(row_N, feat_N, n_features)
        if ctx.needs_input_grad[1]:  # Σ_{n: feat_n = i} g_n x_{row_n}, computed feature-major
            grad_W = _bag_sum(row_N[perm_N], x_BI, offsets_F, grad_N[perm_N].to(x_BI.dtype)).t()
            # A transposed view: autograd copies it into W_enc's layout only if W_enc is not stored feature-major
            # (a fresh crosscoder's is: it starts as W_dec's transpose).
        if ctx.needs_input_grad[2]:  # Σ_{n: feat_n = i} g_n: one bag per feature, summed in a fixed order
            grad_b = F.embedding_bag(perm_N, grad_N.to(ctx.b_dtype)[:, None], offsets_F, mode="sum").squeeze(1)
        return grad_x, grad_W, grad_b, None, None, None


def gather_preactivations(
    x_BI: torch.Tensor, W_enc_IF: torch.Tensor, b_enc_F: torch.Tensor, row_N: torch.Tensor, feat_N: torch.Tensor,
    pre_N: torch.Tensor | None = None,
) -> torch.Tensor:
    """(x @ W_enc + b_enc)[row_n, feat_n] for each entry, (N,), with gradients for x, W_enc and b_enc computed from
    the N entries alone. Pass ``pre_N`` when those values are already known (e.g. from :func:`batch_topk_select`);
    they are used as the forward result, so they must be the pre-activations the caller would compute."""
    return _GatheredPreactivations.apply(x_BI, W_enc_IF, b_enc_F, row_N, feat_N, pre_N)


@torch.no_grad()
def batch_topk_select(
    pre_fn: Callable[[slice | torch.Tensor], torch.Tensor], n_rows: int, scale_F: torch.Tensor, n_keep: int, m: int,
    dead_F: torch.Tensor | None = None, aux_k: int = 0,
) -> TopKSelection:
    """The batch top-k of scores s_bi = ReLU(pre_bi)·scale_i: the ``n_keep`` largest over the whole batch, those > 0.

    ``pre_fn(rows)`` returns the pre-activations (R, F) of the batch rows ``rows`` (a slice or a long tensor); it is
    called on blocks of rows so that no (B, F) tensor is held. Each row offers its top ``m`` scores as candidates
    and τ₀ is the n_keep-th largest candidate; a row whose m-th score exceeds τ₀ may hide more entries above τ₀, so
    such rows are scored again and all their entries ≥ τ₀ join. Every entry left out is then ≤ τ₀ ≤ the final
    threshold: the same set as a top-k over all B·F scores (ties aside). With ``dead_F`` and ``aux_k`` > 0, ``aux``
    holds each row's top ``aux_k`` positive pre-activations among the dead latents (AuxK, Gao et al. 2024).
    """
    device, n_features = scale_F.device, scale_F.shape[0]
    m, step = min(m, n_features), max(1, CHUNK_ELEMENTS // n_features)
    dead_idx = dead_F.nonzero().squeeze(1) if dead_F is not None and aux_k > 0 else None
    val_Bm, idx_Bm, pre_Bm, aux = _row_candidates(pre_fn, n_rows, scale_F, m, step, dead_idx, aux_k)
    if n_keep < val_Bm.numel():
        tau0 = val_Bm.flatten().topk(n_keep, sorted=False).values.min()
    else:  # fewer candidates than places: every positive entry may be kept
        tau0 = val_Bm.new_zeros(())
    full_B = (val_Bm.min(dim=1).values > tau0) if m < n_features else torch.zeros(n_rows, dtype=torch.bool, device=device)
    row_C = torch.arange(n_rows, device=device)[:, None].expand(-1, m)[~full_B].flatten()
    feat_C, pre_C, score_C = idx_Bm[~full_B].flatten(), pre_Bm[~full_B].flatten(), val_Bm[~full_B].flatten()
    full_rows = full_B.nonzero().squeeze(1)
    if full_rows.numel() > 0:  # rows that may hide more entries above τ0: all their entries ≥ τ0
        extra = [_entries_at_least(pre_fn(rows), rows, scale_F, tau0) for rows in full_rows.split(step)]
        row_C, feat_C, pre_C, score_C = (torch.cat([a, *b]) for a, b in zip((row_C, feat_C, pre_C, score_C), zip(*extra)))
    top = score_C.topk(min(n_keep, score_C.numel()), sorted=False)
    keep = top.indices[top.values > 0]
    order = torch.argsort(row_C[keep] * n_features + feat_C[keep])
    keep = keep[order]
    return TopKSelection(row_C[keep], feat_C[keep], pre_C[keep], score_C[keep], aux)


def _row_candidates(pre_fn, n_rows: int, scale_F: torch.Tensor, m: int, step: int, dead_idx: torch.Tensor | None, aux_k: int):
    """Each row's top ``m`` scores (values, feature indices, pre-activations; (B, m) each) and the AuxK entries,
    scoring ``step`` rows at a time."""
    device, n_features = scale_F.device, scale_F.shape[0]
    cand_val, cand_idx, cand_pre, aux_parts = [], [], [], []
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        pre_RF = pre_fn(slice(start, stop))
        if dead_idx is not None and dead_idx.numel() > 0:
            aux_parts.append(_aux_entries(pre_RF, torch.arange(start, stop, device=device), dead_idx, aux_k))
        top = torch.relu(pre_RF).mul_(scale_F).topk(m, dim=1, sorted=False)
        cand_val.append(top.values)
        cand_idx.append(top.indices)
        cand_pre.append(pre_RF.gather(1, top.indices))
    if aux_parts:
        aux_row, aux_feat, aux_pre = (torch.cat(t) for t in zip(*aux_parts))
    else:
        aux_row = aux_feat = torch.zeros(0, dtype=torch.long, device=device)
        aux_pre = scale_F.new_zeros(0)
    aux = SparseCode(aux_row, aux_feat, aux_pre, n_rows, n_features)
    return torch.cat(cand_val), torch.cat(cand_idx), torch.cat(cand_pre), aux


def _aux_entries(pre_RF: torch.Tensor, rows: torch.Tensor, dead_idx: torch.Tensor, aux_k: int):
    """Each row's top ``aux_k`` positive pre-activations among the dead latents, row-major triples."""
    top = pre_RF.index_select(1, dead_idx).topk(min(aux_k, dead_idx.numel()), dim=1)
    feat_Rk = dead_idx[top.indices]
    feat_Rk, order = feat_Rk.sort(dim=1)
    val_Rk = top.values.gather(1, order)
    keep = val_Rk > 0
    return rows[:, None].expand_as(feat_Rk)[keep], feat_Rk[keep], val_Rk[keep]


def _entries_at_least(pre_RF: torch.Tensor, rows: torch.Tensor, scale_F: torch.Tensor, tau: torch.Tensor):
    """All entries of these rows whose score ReLU(pre)·scale is ≥ τ and > 0: (row, feat, pre, score)."""
    score_RF = torch.relu(pre_RF) * scale_F
    r, f = ((score_RF >= tau) & (score_RF > 0)).nonzero(as_tuple=True)
    return rows[r], f, pre_RF[r, f], score_RF[r, f]
