"""Streamed sufficient statistics of feature activations.

Feature activations arrive in chunks ``(n, F)``; what is kept grows with F and with the number of feature pairs
that ever fire together, never with tokens × features or a dense F × F matrix:

* per feature: active count n_i, Σ f_i, Σ f_i², max f_i, and the top-m activations with their token indices;
* per co-active pair (sparse, symmetric): co-count C_ij = #{t : f_i(t) > θ and f_j(t) > θ} and co-moment
  M_ij = Σ_t f_i(t) f_j(t) (exact: the product is zero wherever either feature is silent).

Statistics of disjoint token sets add up exactly (:meth:`CoactivationStats.merge`), so shards or ranks can be
computed apart and combined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["CoactivationStats"]


@dataclass
class CoactivationStats:
    """Sufficient statistics for co-activation measures over F features.

    Parameters
    ----------
    n_features : int
        F.
    threshold : float
        θ: a feature is *active* on a token when f > θ (θ = 0: any positive activation).
    top_m : int
        How many top activations (and their token indices) to keep per feature, for contexts.
    """

    n_features: int
    threshold: float = 0.0
    top_m: int = 8
    n_tokens: int = 0
    count_F: np.ndarray = field(init=False)
    sum_F: np.ndarray = field(init=False)
    sumsq_F: np.ndarray = field(init=False)
    max_F: np.ndarray = field(init=False)
    top_val_FM: np.ndarray = field(init=False)
    top_idx_FM: np.ndarray = field(init=False)
    co_count: sp.csr_matrix = field(init=False)
    co_moment: sp.csr_matrix = field(init=False)

    def __post_init__(self) -> None:
        F, M = self.n_features, self.top_m
        self.count_F = np.zeros(F, dtype=np.int64)
        self.sum_F = np.zeros(F, dtype=np.float64)
        self.sumsq_F = np.zeros(F, dtype=np.float64)
        self.max_F = np.zeros(F, dtype=np.float64)
        self.top_val_FM = np.full((F, M), -np.inf, dtype=np.float64)
        self.top_idx_FM = np.full((F, M), -1, dtype=np.int64)
        self.co_count = sp.csr_matrix((F, F), dtype=np.int64)
        self.co_moment = sp.csr_matrix((F, F), dtype=np.float64)

    @torch.no_grad()
    def update(self, f_nF: torch.Tensor, token_index_n: torch.Tensor | None = None) -> None:
        """Add a chunk of activations ``(n, F)`` (any device); ``token_index_n`` labels its tokens for contexts."""
        n, F = f_nF.shape
        if F != self.n_features:
            raise ValueError(f"chunk has {F} features, stats were made for {self.n_features}")
        if token_index_n is None:
            token_index_n = torch.arange(self.n_tokens, self.n_tokens + n)
        f_nF = f_nF.float()
        active_nF = f_nF > self.threshold
        self.count_F += active_nF.sum(0).cpu().numpy()
        f64_nF = f_nF.double()  # accumulate in float64 so shards add up to one pass
        self.sum_F += f64_nF.sum(0).cpu().numpy()
        self.sumsq_F += f64_nF.pow(2).sum(0).cpu().numpy()
        self.max_F = np.maximum(self.max_F, f_nF.max(0).values.double().cpu().numpy())
        self._update_top(f_nF, token_index_n)
        self._update_pairs(f_nF, active_nF)
        self.n_tokens += n

    def _update_top(self, f_nF: torch.Tensor, token_index_n: torch.Tensor) -> None:
        k = min(self.top_m, f_nF.shape[0])
        vals_kF, rows_kF = f_nF.topk(k, dim=0)
        vals = np.concatenate([self.top_val_FM, vals_kF.T.double().cpu().numpy()], axis=1)
        idx = np.concatenate([self.top_idx_FM, token_index_n.cpu().numpy()[rows_kF.T.cpu().numpy()]], axis=1)
        vals = np.where(vals > 0, vals, -np.inf)  # a silent token is not a top context
        order = np.argsort(-vals, axis=1, kind="stable")[:, : self.top_m]
        self.top_val_FM = np.take_along_axis(vals, order, axis=1)
        self.top_idx_FM = np.where(np.isfinite(self.top_val_FM), np.take_along_axis(idx, order, axis=1), -1)

    def _update_pairs(self, f_nF: torch.Tensor, active_nF: torch.Tensor) -> None:
        n, F = f_nF.shape
        rows, cols = (f_nF > 0).nonzero(as_tuple=True)
        vals = f_nF[rows, cols].double().cpu().numpy()
        X = sp.csr_matrix((vals, (rows.cpu().numpy(), cols.cpu().numpy())), shape=(n, F))
        self.co_moment = self.co_moment + (X.T @ X).tocsr()
        if self.threshold > 0:
            rows, cols = active_nF.nonzero(as_tuple=True)
            rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        else:
            rows, cols = X.nonzero()
        B = sp.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)), shape=(n, F))
        self.co_count = self.co_count + (B.T @ B).tocsr()

    def merge(self, other: "CoactivationStats") -> "CoactivationStats":
        """Statistics of the union of two disjoint token sets (exact)."""
        if (other.n_features, other.threshold, other.top_m) != (self.n_features, self.threshold, self.top_m):
            raise ValueError("can only merge statistics with the same n_features, threshold and top_m")
        out = CoactivationStats(self.n_features, self.threshold, self.top_m, self.n_tokens + other.n_tokens)
        out.count_F = self.count_F + other.count_F
        out.sum_F, out.sumsq_F = self.sum_F + other.sum_F, self.sumsq_F + other.sumsq_F
        out.max_F = np.maximum(self.max_F, other.max_F)
        vals = np.concatenate([self.top_val_FM, other.top_val_FM], axis=1)
        idx = np.concatenate([self.top_idx_FM, other.top_idx_FM], axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")[:, : self.top_m]
        out.top_val_FM, out.top_idx_FM = np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
        out.co_count, out.co_moment = self.co_count + other.co_count, self.co_moment + other.co_moment
        return out

    @property
    def frequency_F(self) -> np.ndarray:
        """Fraction of tokens on which each feature is active."""
        return self.count_F / max(self.n_tokens, 1)

    def pairs(self, min_cocount: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Upper-triangle pairs (i < j) with co-count ≥ ``min_cocount``: (i, j, C_ij)."""
        C = sp.triu(self.co_count, k=1).tocoo()
        keep = C.data >= min_cocount
        return C.row[keep].astype(np.int64), C.col[keep].astype(np.int64), C.data[keep].astype(np.int64)

    def co_moment_of(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """M_ij for arrays of pairs."""
        return np.asarray(self.co_moment[i, j]).ravel()
