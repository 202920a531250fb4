"""Representation similarity (featgraph.similarity): CKA, SVCCA and RSA against hand computations, plain references and
their invariances; the model-level harvest on a tiny random-weight HookedTransformer; the matrix figure."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from transformer_lens import HookedTransformer, HookedTransformerConfig

import featgraph.similarity as sim
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError
from featgraph.plots import similarity_figure
from featgraph.similarity import (
    MEASURES, Similarity, feature_similarity, linear_cka, representation_similarity, rsa, select_tokens, similarity,
    similarity_rows, stage_feature_similarity, svcca,
)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _correlated(n=400, p=12, q=9, seed=0):
    """Two views sharing a 5-dim latent, plus view-specific noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5))
    X = z @ rng.normal(size=(5, p)) + 0.5 * rng.normal(size=(n, p))
    Y = z @ rng.normal(size=(5, q)) + 0.5 * rng.normal(size=(n, q)) + 3.0
    return X, Y


# ---------------------------------------------------------------- plain references (n×n Gram matrices, SVD)


def _ref_cka(X, Y, debiased=False):
    """CKA from the n×n Gram matrices: biased HSIC tr(KHLH), or Song et al.'s unbiased HSIC₁ with explicit K̃, L̃."""
    n = X.shape[0]
    K, L = X @ X.T, Y @ Y.T
    if not debiased:
        H = np.eye(n) - 1.0 / n
        hsic = lambda A, B: np.trace(A @ H @ B @ H)
    else:
        def hsic(A, B):
            A, B = A - np.diag(np.diag(A)), B - np.diag(np.diag(B))
            one = np.ones(n)
            return (np.trace(A @ B) + (one @ A @ one) * (one @ B @ one) / ((n - 1) * (n - 2))
                    - 2.0 / (n - 2) * one @ A @ B @ one) / (n * (n - 3))
    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def _ref_svcca(X, Y, variance):
    """SVD truncation of each centred view, then textbook CCA (whitened cross-covariance's singular values)."""
    def reduce(Z):
        Z = Z - Z.mean(0)
        U, s, _ = np.linalg.svd(Z, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), variance - 1e-12)) + 1
        return U[:, :k] * s[:k]
    A, B = reduce(X), reduce(Y)
    Saa, Sbb, Sab = A.T @ A, B.T @ B, A.T @ B
    isqrt = lambda S: np.linalg.inv(np.linalg.cholesky(S))  # (L⁻¹ with S = LLᵀ)
    return np.linalg.svd(isqrt(Saa) @ Sab @ isqrt(Sbb).T, compute_uv=False)


# ---------------------------------------------------------------- CKA


def test_cka_hand_computed_3x2():
    # X centred: [[1,0],[0,1],[-1,-1]] → XᵀX = [[2,1],[1,2]], ‖·‖ = √10; Y centred: [[1,0],[0,0],[-1,0]] → ‖YᵀY‖ = 2;
    # YᵀX = [[2,1],[0,0]] → ‖·‖² = 5; CKA = 5 / (2√10)
    X = np.array([[2.0, 1.0], [1.0, 2.0], [0.0, 0.0]])
    Y = np.array([[3.0, 7.0], [2.0, 7.0], [1.0, 7.0]])
    assert linear_cka(X, Y) == pytest.approx(5 / (2 * math.sqrt(10)), abs=1e-12)
    assert linear_cka(torch.tensor(X, dtype=torch.float32), torch.tensor(Y)) == pytest.approx(5 / (2 * math.sqrt(10)), abs=1e-7)
    with pytest.raises(FeatgraphError, match="at least 4 tokens"):
        linear_cka(X, Y, debiased=True)  # the unbiased HSIC has a 1/(n(n−3)) factor


@pytest.mark.parametrize("shape", [(60, 7, 5), (25, 40, 31)])  # p, q ≤ n (p×q moments) and p, q > n (Gram matrices)
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_gram_reference(shape, debiased, monkeypatch):
    n, p, q = shape
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, p)) + 2.0
    Y = X[:, :1] * rng.normal(size=(1, q)) + rng.normal(size=(n, q))
    monkeypatch.setattr(sim, "_CHUNK", 7)  # accumulate over several row blocks
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(_ref_cka(X, Y, debiased), abs=1e-10)


def test_cka_invariances():
    X, _ = _correlated()
    Y = 3.7 * X @ _rotation(X.shape[1], 2) - 5.0  # rotation, isotropic scaling, translation
    for debiased in (False, True):
        assert linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
        assert linear_cka(X, Y, debiased=debiased) == pytest.approx(1.0, abs=1e-10)
    anisotropic = X * np.linspace(0.1, 3.0, X.shape[1])  # CKA is not invariant to arbitrary invertible maps
    assert linear_cka(X, anisotropic) < 0.99


def test_cka_independent_noise():
    rng = np.random.default_rng(0)
    n, p = 2000, 50
    X, Y = rng.normal(size=(n, p)), rng.normal(size=(n, p))
    # biased CKA of independent isotropic views: E‖YᵀX‖² = n·p², E‖XᵀX‖² ≈ n²p + n·p² → CKA ≈ p / (n + p) = 0.0244
    cka = linear_cka(X, Y)
    assert cka < 0.1 and cka == pytest.approx(p / (n + p), abs=0.005)
    assert abs(linear_cka(X, Y, debiased=True)) < 0.05


# ---------------------------------------------------------------- SVCCA


def test_svcca_identity_rotation_scaling():
    X, _ = _correlated()
    for Y in (X, 0.01 * X @ _rotation(X.shape[1], 3) + 1.0):
        res = svcca(X, Y)
        assert res.mean == pytest.approx(1.0, abs=1e-9)
        assert res.dims[0] == res.dims[1] and np.allclose(res.correlations, 1.0, atol=1e-9)
    assert svcca(torch.tensor(X), torch.tensor(X)).mean == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("variance", [0.9, 0.99, 1.0])
def test_svcca_matches_reference(variance):
    X, Y = _correlated(seed=4)
    res = svcca(X, Y, variance)
    ref = _ref_svcca(X, Y, variance)
    assert len(res.correlations) == len(ref) == min(res.dims)
    assert np.allclose(res.correlations, ref, atol=1e-9)
    assert 0.0 < res.mean < 1.0


def test_svcca_independent_noise():
    rng = np.random.default_rng(0)
    n, p = 2000, 50
    res = svcca(rng.normal(size=(n, p)), rng.normal(size=(n, p)))
    # Independent views: Σρ² ≈ p·q/n (the trace of the sample cross-correlation's squared singular values), so the
    # mean ρ ≤ √(mean ρ²) ≈ √(q/n) = 0.158 (Jensen); the largest ρ sits near the Wachter edge
    # 2√((p/n)(1 − p/n)) ≈ 0.31. Thresholds: mean < 0.2, max < 0.4 — "small relative to 1".
    assert res.mean < 0.2
    assert res.correlations.max() < 0.4


def test_svcca_rank_deficient_and_few_tokens(caplog):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 20))  # rank 4 in 20 columns
    res = svcca(X, X @ _rotation(20, 1), variance=1.0)
    assert res.dims == (4, 4) and res.mean == pytest.approx(1.0, abs=1e-8)
    with caplog.at_level(logging.WARNING, logger="featgraph.similarity"):
        wide = svcca(rng.normal(size=(12, 40)), rng.normal(size=(12, 40)))  # n < p: at most n − 1 = 11 directions each
    assert max(wide.dims) <= 11 and np.all((0 <= wide.correlations) & (wide.correlations <= 1))
    assert "by construction" in caplog.text  # kx + ky > n − 1: the spans must intersect
    with pytest.raises(FeatgraphError, match="variance must be a fraction"):
        svcca(X, X, variance=0.0)


# ---------------------------------------------------------------- RSA


def test_rsa_hand_computed_4_items():
    X = np.array([[0.0], [1.0], [3.0], [6.0]])  # pairs (01 02 03 12 13 23): distances 1 3 6 2 5 3
    Y = np.array([[0.0], [2.0], [3.0], [4.0]])  # distances 2 3 4 1 2 1
    # Pearson: 6·d − mean: [-14 -2 16 -8 10 -2] and [-1 5 11 -7 -1 -7] → 240 / √(624·246)
    assert rsa(X, Y, metric="euclidean", method="pearson") == pytest.approx(240 / math.sqrt(624 * 246), abs=1e-12)
    # Spearman: average ranks [1 3.5 6 2 5 3.5] and [3.5 5 6 1.5 3.5 1.5]; 2·rank − 7: [-5 0 5 -3 3 0], [0 3 5 -4 0 -4]
    # → 37 / √(68·66)
    assert rsa(X, Y, metric="euclidean") == pytest.approx(37 / math.sqrt(68 * 66), abs=1e-12)


def test_rsa_matches_scipy_reference():
    X, Y = _correlated(n=80)
    for metric in ("correlation", "euclidean"):
        expected = spearmanr(pdist(X, metric), pdist(Y, metric)).statistic
        assert rsa(X, Y, metric=metric) == pytest.approx(expected, abs=1e-9)


def test_rsa_invariances():
    X, _ = _correlated(n=150)
    assert rsa(X, X) == pytest.approx(1.0, abs=1e-12) and rsa(X, X, metric="euclidean") == pytest.approx(1.0, abs=1e-12)
    moved = 2.5 * X @ _rotation(X.shape[1], 6) + 4.0  # euclidean RSA: rotation, isotropic scaling, translation
    assert rsa(X, moved, metric="euclidean") == pytest.approx(1.0, abs=1e-9)
    assert rsa(X, moved, metric="euclidean", method="pearson") == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(7)
    per_item = X * rng.uniform(0.5, 2.0, size=(len(X), 1)) + rng.normal(size=(len(X), 1))  # correlation RSA: zᵢ → aᵢzᵢ + bᵢ
    assert rsa(X, per_item) == pytest.approx(1.0, abs=1e-9)
    assert rsa(X, 0.3 * X) == pytest.approx(1.0, abs=1e-12)
    assert rsa(X, per_item, metric="euclidean") < 0.99  # not a euclidean invariance


def test_rsa_subsample_is_seeded():
    X, Y = _correlated(n=300)
    a, b = rsa(X, Y, max_items=60, seed=1), rsa(X, Y, max_items=60, seed=1)
    assert a == b and a != rsa(X, Y, max_items=60, seed=2)
    assert rsa(torch.tensor(X), torch.tensor(Y), max_items=60, seed=1) == pytest.approx(a, abs=1e-12)
    with pytest.raises(FeatgraphError, match="unknown RSA metric"):
        rsa(X, Y, metric="cosine")


def test_rsa_drops_constant_items_for_correlation_distance():
    X, Y = _correlated(n=50)
    X2, Y2 = X.copy(), Y.copy()
    X2[[3, 10]] = 0.0  # e.g. tokens on which no feature fires
    keep = np.ones(50, bool)
    keep[[3, 10]] = False
    assert rsa(X2, Y2) == pytest.approx(rsa(X[keep], Y[keep]), abs=1e-12)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [linear_cka, svcca, rsa, similarity])
def test_errors_are_one_line(fn):
    X, Y = _correlated(n=20)
    cases = [
        ((X, Y[:-1]), "same tokens as rows"),
        ((X[:, 0], Y), "2-D"),
        ((X[:2], Y[:2]), "at least"),
        ((np.ones_like(X), Y), "constant|equal"),
    ]
    bad = X.copy()
    bad[0, 0] = np.nan
    cases.append(((bad, Y), "NaN"))
    for args, match in cases:
        with pytest.raises(FeatgraphError, match=match) as e:
            fn(*args)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- all measures; dictionaries


def test_similarity_and_feature_similarity():
    X, Y = _correlated()
    s = similarity(X, X)
    assert isinstance(s, Similarity) and s.n_tokens == len(X)
    assert all(getattr(s, m) == pytest.approx(1.0, abs=1e-9) for m in MEASURES)
    t = similarity(X, Y)
    assert all(getattr(t, m) < 0.999 for m in MEASURES)
    rng = np.random.default_rng(3)
    f_nF = np.maximum(X @ rng.normal(size=(12, 30)), 0.0)
    dead = np.concatenate([f_nF, np.zeros((len(X), 7))], axis=1)[:, rng.permutation(37)]  # dead features add nothing
    assert feature_similarity(f_nF, dead) == pytest.approx(tuple(similarity(f_nF, f_nF)), abs=1e-9)
    with pytest.raises(FeatgraphError, match="no feature of dictionary 'b' fires"):
        feature_similarity(f_nF, np.zeros((len(X), 5)))
    assert similarity_rows({"h": s})["h"]["cka"] == pytest.approx(1.0)


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny_models():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=40, act_fn="gelu",
                                  normalization_type="LN", seed=0)
    a = HookedTransformer(cfg).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():  # perturb block 1 only: block 0's output is unchanged
        b.blocks[1].mlp.W_in.add_(0.5 * torch.randn(b.blocks[1].mlp.W_in.shape, generator=torch.Generator().manual_seed(1)))
    tokens_NT = torch.randint(1, 40, (16, 12), generator=torch.Generator().manual_seed(2))
    tokens_NT[:, 0] = 0  # BOS
    return a, b, tokens_NT


HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]


def test_representation_similarity_self_and_perturbed(tiny_models):
    a, b, tokens_NT = tiny_models
    same = representation_similarity(a, copy.deepcopy(a), tokens_NT, HOOKS, rsa_items=100)
    assert list(same) == HOOKS
    for s in same.values():
        assert s.n_tokens == 16 * 11  # BOS dropped
        assert all(getattr(s, m) == pytest.approx(1.0, abs=1e-6) for m in MEASURES)
    diff = representation_similarity(a, b, tokens_NT, HOOKS, names=("base", "perturbed"), rsa_items=100)
    for h in HOOKS[:2]:  # before the perturbed MLP: identical
        assert diff[h].cka == pytest.approx(1.0, abs=1e-6) and diff[h].rsa == pytest.approx(1.0, abs=1e-6)
    last = diff[HOOKS[2]]
    assert last.cka < 0.999 and last.cka_debiased < 0.999 and last.svcca < 0.999 and last.rsa < 0.999


def test_representation_similarity_mask_and_subsample(tiny_models):
    a, b, tokens_NT = tiny_models
    mask_NT = np.zeros(tokens_NT.shape, dtype=bool)
    mask_NT[::2, 4:9] = True
    mask_NT[:, 0] = True  # BOS is never compared
    out = representation_similarity(a, b, tokens_NT, HOOKS[2:], mask_NT=mask_NT, rsa_items=100)
    assert out[HOOKS[2]].n_tokens == 8 * 5
    # the same tokens harvested by hand: the masked positions of the full harvest
    from crosscoder.harvest import harvest

    full = [torch.cat(list(harvest(m, tokens_NT, HOOKS[2:]))) for m in (a, b)]  # (N·(T−1), 1, D)
    idx = torch.from_numpy(np.flatnonzero(mask_NT[:, 1:].reshape(-1)))
    assert out[HOOKS[2]].cka == pytest.approx(linear_cka(full[0][idx, 0], full[1][idx, 0]), abs=1e-9)
    sub = representation_similarity(a, b, tokens_NT, HOOKS[2:], max_tokens=50, seed=3, rsa_items=100)
    assert sub[HOOKS[2]].n_tokens == 50
    assert sub == representation_similarity(a, b, tokens_NT, HOOKS[2:], max_tokens=50, seed=3, rsa_items=100)


def test_select_tokens_and_model_errors(tiny_models):
    a, b, tokens_NT = tiny_models
    idx = select_tokens(tokens_NT, max_tokens=20, seed=0)
    assert len(idx) == 20 and torch.all(idx[1:] > idx[:-1]) and torch.all(idx % tokens_NT.shape[1] != 0)
    few = np.zeros(tokens_NT.shape, dtype=bool)
    few[0, 1:3] = True
    for kwargs, match in [({"mask_NT": few}, "selects 2 tokens"), ({"mask_NT": few[:, :5]}, "mask_NT has shape")]:
        with pytest.raises(FeatgraphError, match=match):
            representation_similarity(a, b, tokens_NT, HOOKS, **kwargs)
    with pytest.raises(FeatgraphError, match="unknown hookpoint"):
        representation_similarity(a, b, tokens_NT, ["blocks.7.hook_resid_post"])


def test_stage_feature_similarity(tiny_models):
    a, b, tokens_NT = tiny_models
    cc = build_crosscoder(CrosscoderConfig(HOOKS, 16, 48, seed=0)).eval()
    same = stage_feature_similarity(cc, a, cc, copy.deepcopy(a), tokens_NT, rsa_items=100)
    assert all(getattr(same, m) == pytest.approx(1.0, abs=1e-6) for m in MEASURES)
    other = stage_feature_similarity(cc, a, cc, b, tokens_NT, rsa_items=100)
    assert other.cka < 0.999 and other.n_tokens == 16 * 11


# ---------------------------------------------------------------- figure


def test_similarity_figure(tmp_path):
    X, Y = _correlated(n=60)
    table = {"clean": {"blocks.0.hook_resid_post": similarity(X, X), "blocks.1.hook_resid_post": similarity(X, Y)},
             "triggered": similarity_rows({"blocks.1.hook_resid_post": similarity(X, Y)})}
    fig = similarity_figure(table, tmp_path / "similarity.png", measures=("cka", "svcca"))
    assert (tmp_path / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["CKA clean", "CKA triggered", "SVCCA clean", "SVCCA triggered"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.resid_post", "1.resid_post"]
    texts = [t.get_text() for t in ax.texts]  # row-major cells
    assert texts[:4] == ["1.000", "n/a", "1.000", "n/a"]
    assert texts[4] == texts[5] == f"{similarity(X, Y).cka:.3f}"
