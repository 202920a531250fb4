"""Co-activation edge measures, computed from :class:`~featgraph.stats.CoactivationStats` for arrays of pairs.

With N tokens, active counts n_i, co-counts C_ij, sums S_i = Σ f_i, Q_i = Σ f_i², M_ij = Σ f_i f_j
(spar-2024, ``src/similarity_measures.py``):

* Pearson   ρ_ij = (N M_ij − S_i S_j) / √((N Q_i − S_i²)(N Q_j − S_j²))
* Jaccard   J_ij = C_ij / (n_i + n_j − C_ij)
* sufficiency P(j | i) = C_ij / n_i  — when i fires, j fires too
* necessity   P(i | j) = C_ij / n_j  — j rarely fires without i
* binary mutual information over the 2×2 table of (i active, j active), in nats:
  MI = Σ_{a,b ∈ {0,1}} p_ab log(p_ab / (p_a p_b)), with p_11 = C_ij/N, p_10 = (n_i − C_ij)/N, p_01 = (n_j − C_ij)/N
* decoder cosine  cos(d_i, d_j) of the flattened decoder vectors (not a co-activation statistic: it needs the
  dictionary, see :func:`decoder_cosine`)
"""

from __future__ import annotations

import numpy as np

from .stats import CoactivationStats

__all__ = ["pearson", "jaccard", "sufficiency", "necessity", "mutual_information", "decoder_cosine", "MEASURES"]


def pearson(stats: CoactivationStats, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pearson correlation of the activation values of features i and j over all tokens.

    Examples
    --------
    >>> import torch
    >>> s = CoactivationStats(2)
    >>> s.update(torch.tensor([[1.0, 2.0], [0.0, 0.0], [2.0, 4.0]]))
    >>> round(float(pearson(s, np.array([0]), np.array([1]))[0]), 6)
    1.0
    """
    N = float(stats.n_tokens)
    S, Q = stats.sum_F, stats.sumsq_F
    cov = N * stats.co_moment_of(i, j) - S[i] * S[j]
    var_i, var_j = N * Q[i] - S[i] ** 2, N * Q[j] - S[j] ** 2
    den = np.sqrt(np.clip(var_i, 0, None) * np.clip(var_j, 0, None))
    return np.divide(cov, den, out=np.zeros_like(cov), where=den > 0)


def _cocount(stats: CoactivationStats, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return stats.co_count_of(i, j).astype(np.float64)


def jaccard(stats: CoactivationStats, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """|A_i ∩ A_j| / |A_i ∪ A_j| over the sets of tokens where each feature is active."""
    c = _cocount(stats, i, j)
    union = stats.count_F[i] + stats.count_F[j] - c
    return np.divide(c, union, out=np.zeros_like(c), where=union > 0)


def sufficiency(stats: CoactivationStats, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """P(j active | i active) = C_ij / n_i."""
    c, n = _cocount(stats, i, j), stats.count_F[i].astype(np.float64)
    return np.divide(c, n, out=np.zeros_like(c), where=n > 0)


def necessity(stats: CoactivationStats, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """P(i active | j active) = C_ij / n_j."""
    return sufficiency(stats, j, i)


def mutual_information(stats: CoactivationStats, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Mutual information (nats) between the binary "active" indicators of features i and j.

    Examples
    --------
    >>> import torch
    >>> s = CoactivationStats(2)
    >>> s.update(torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    >>> round(float(mutual_information(s, np.array([0]), np.array([1]))[0]), 6)  # identical fair coins: log 2
    0.693147
    """
    N = float(stats.n_tokens)
    c = _cocount(stats, i, j)
    ni, nj = stats.count_F[i].astype(np.float64), stats.count_F[j].astype(np.float64)
    cells = [(c, ni, nj), (ni - c, ni, N - nj), (nj - c, N - ni, nj), (N - ni - nj + c, N - ni, N - nj)]
    mi = np.zeros_like(c)
    for joint, a, b in cells:
        ok = (joint > 0) & (a > 0) & (b > 0)
        mi += np.where(ok, joint / N * np.log(np.where(ok, joint * N, 1.0) / np.where(ok, a * b, 1.0)), 0.0)
    return mi


def decoder_cosine(decoder_FK: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """cos(d_i, d_j) of rows of the flattened decoder ``decoder_FK`` (F, L·D)."""
    d = np.asarray(decoder_FK, dtype=np.float64)
    norms = np.linalg.norm(d, axis=1)
    dots = np.einsum("nk,nk->n", d[i], d[j])
    den = norms[i] * norms[j]
    return np.divide(dots, den, out=np.zeros_like(dots), where=den > 0)


MEASURES = {
    "pearson": pearson, "jaccard": jaccard, "sufficiency": sufficiency, "necessity": necessity,
    "mutual_information": mutual_information,
}
