"""Attention (QK/OV) interactions of crosscoder features: explicit loops, a hand-computed case, order invariance."""

import doctest
import math

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError
from featgraph import attention_interactions as ai
from featgraph.attention_interactions import (
    attention_site,
    causal_pair_counts,
    ov_attention_mass,
    ov_data_weighted,
    ov_interactions,
    ov_write_norms,
    qk_interactions,
    qk_scores_data_free,
    qk_top_pairs_data_free,
    top_pairs,
)

SITE, READ = "blocks.1.ln1.hook_normalized", "blocks.1.hook_resid_post"
D, H, DH, F = 16, 2, 8, 12


def tiny_model(**kw) -> HookedTransformer:
    cfg = {"n_layers": 2, "d_model": D, "n_heads": H, "d_head": DH, "d_mlp": 32, "d_vocab": 20, "n_ctx": 16,
           "act_fn": "relu", "normalization_type": "LN", "seed": 0, "device": "cpu"}
    cfg.update(kw)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.eval()
    return model


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    m = tiny_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-trivial ln1 weight, so its folding into W_Q, W_K, W_V is exercised
        m.blocks[1].ln1.w.copy_(1 + 0.5 * torch.randn(D, generator=g))
    return m


def make_cc(hookpoints=(SITE, READ), scales=(1.7, 0.6), n_features=F, seed=3):
    cc = build_crosscoder(CrosscoderConfig(list(hookpoints), D, n_features, dec_init_norm=2.0, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cc.W_enc_LDF.copy_(0.4 * torch.randn(cc.W_enc_LDF.shape, generator=g))
        cc.b_enc_F.copy_(0.1 * torch.randn(n_features, generator=g))
        cc.norm_scale_L.copy_(torch.tensor(scales))
    return cc


@pytest.fixture(scope="module")
def cc():
    return make_cc()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    t = torch.randint(1, 20, (3, 6), generator=torch.Generator().manual_seed(2))
    t[:, 0] = 0  # BOS
    return t


# ---- explicit references -------------------------------------------------------------------------
def raw_decoder(cc, hook=SITE) -> torch.Tensor:
    l = cc.cfg.writes.index(hook)
    return (cc.W_dec_FLD[:, l] / cc.norm_scale_L[cc.out_idx[l]]).detach()


def loop_S(model, cc, layer=1) -> np.ndarray:
    attn, w = model.blocks[layer].attn, model.blocks[layer].ln1.w.detach()
    d = raw_decoder(cc)
    S = np.zeros((H, F, F))
    with torch.no_grad():
        for h in range(H):
            for i in range(F):
                for j in range(F):
                    q = (d[i] * w) @ attn.W_Q[h]
                    k = (d[j] * w) @ attn.W_K[h]
                    S[h, i, j] = float(q @ k) / math.sqrt(DH)
    return S


def features_and_patterns(model, cc, tokens, layer=1):
    """(N, T−1, F) features straight from run_with_cache (BOS dropped) and the (N, H, T, T) pattern."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        acts = torch.stack([cache[h][:, 1:] for h in cc.cfg.all_hookpoints], dim=2)  # (N, T-1, L, D)
        f = cc.encode(acts.reshape(-1, *acts.shape[2:])).reshape(*acts.shape[:2], -1)
    return f.numpy().astype(np.float64), cache[f"blocks.{layer}.attn.hook_pattern"].numpy().astype(np.float64)


def loop_QK(f, S, include_diagonal=True):
    N, T1, Fn = f.shape
    QK, tot = np.zeros((S.shape[0], Fn, Fn)), np.zeros((N, T1 + 1))
    for n in range(N):
        for q in range(T1):
            for k in range(q + 1 if include_diagonal else q):
                for i in range(Fn):
                    for j in range(Fn):
                        term = f[n, q, i] * f[n, k, j] * S[:, i, j]
                        QK[:, i, j] += term
                        tot[n, q + 1] += np.abs(term).sum()
    return QK, tot


def permuted(cc, perm):
    cc2 = make_cc()
    with torch.no_grad():
        cc2.W_dec_FLD.copy_(cc.W_dec_FLD[perm])
        cc2.W_enc_LDF.copy_(cc.W_enc_LDF[:, :, perm])
        cc2.b_enc_F.copy_(cc.b_enc_F[perm])
    return cc2


# ---- (i) data-free QK ----------------------------------------------------------------------------
def test_data_free_qk_matches_loop(model, cc):
    site = attention_site(model, cc, 1)
    S = qk_scores_data_free(site)
    assert S.shape == (H, F, F)
    np.testing.assert_allclose(S.numpy(), loop_S(model, cc), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(qk_scores_data_free(site, heads=[1])[0], S[1])


def test_site_weights_reproduce_model_attention_scores(model, cc, tokens):
    """With zero biases, the folded weights give the model's own pre-softmax scores from ln1.hook_normalized."""
    site = attention_site(model, cc, 1)
    _, cache = model.run_with_cache(tokens)
    x = cache[SITE]  # (N, T, D)
    q = torch.einsum("ntd,hde->nhte", x, site.W_Q_HDd)
    k = torch.einsum("ntd,hde->nhte", x, site.W_K_HDd)
    scores = q @ k.transpose(-1, -2) / site.attn_scale
    causal = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    ref = cache["blocks.1.attn.hook_attn_scores"]
    torch.testing.assert_close(scores[..., causal], ref[..., causal], rtol=1e-4, atol=1e-5)


def test_top_pairs_streaming_matches_dense(model, cc):
    site = attention_site(model, cc, 1)
    S = qk_scores_data_free(site)
    got = qk_top_pairs_data_free(site, k=7, block_size=5)
    assert got.query_HK.shape == (H, 7)
    for h in range(H):
        ref = top_pairs(S[h], 7)
        torch.testing.assert_close(got.score_HK[h], ref.score_K)
        assert got.query_HK[h].tolist() == ref.query_K.tolist() and got.key_HK[h].tolist() == ref.key_K.tolist()
        torch.testing.assert_close(S[h][got.query_HK[h], got.key_HK[h]], got.score_HK[h])
    assert top_pairs(S[0], 10_000).score_K.shape == (F * F,)


# ---- (ii) data-weighted QK -----------------------------------------------------------------------
@pytest.mark.parametrize("include_diagonal", [True, False])
def test_data_weighted_qk_matches_loop(model, cc, tokens, include_diagonal):
    f, _ = features_and_patterns(model, cc, tokens)
    assert (f > 0).any(axis=(0, 1)).sum() >= F // 2  # the fixture has live features
    QK_ref, tot_ref = loop_QK(f, loop_S(model, cc), include_diagonal)
    res = qk_interactions(cc, model, tokens, 1, batch_size=2, include_diagonal=include_diagonal, k=5)
    assert res.features_F.tolist() == list(range(F)) and res.heads_H.tolist() == [0, 1]
    np.testing.assert_allclose(res.QK_HFF.numpy(), QK_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.abs_FF.numpy(), np.abs(QK_ref).sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.token_total_NT.numpy(), tot_ref, rtol=1e-4, atol=1e-6)
    # f ≥ 0: the per-token totals split Σ_h |QK^h| by query token
    np.testing.assert_allclose(res.token_total_NT.sum().item(), res.abs_FF.sum().item(), rtol=1e-4)
    a = np.abs(QK_ref).sum(0)
    assert res.top.score_K[0].item() == pytest.approx(a.max(), rel=1e-4)
    assert a[res.top.query_K[0], res.top.key_K[0]] == pytest.approx(a.max(), rel=1e-4)
    h1 = res.top_per_head
    assert QK_ref[1, h1.query_HK[1, 0], h1.key_HK[1, 0]] == pytest.approx(h1.score_HK[1, 0].item(), rel=1e-4)
    assert abs(h1.score_HK[1, 0].item()) == pytest.approx(np.abs(QK_ref[1]).max(), rel=1e-4)
    assert res.abs_full(F).shape == (F, F)


def test_max_features_keeps_the_heaviest(model, cc, tokens):
    f, _ = features_and_patterns(model, cc, tokens)
    keep = np.sort(np.argsort(-np.abs(f).sum((0, 1)))[:5])
    full = qk_interactions(cc, model, tokens, 1)
    sub = qk_interactions(cc, model, tokens, 1, max_features=5)
    assert sub.features_F.tolist() == keep.tolist()
    torch.testing.assert_close(sub.QK_HFF, full.QK_HFF[:, keep][:, :, keep])
    _, tot_ref = loop_QK(f[..., keep], loop_S(model, cc)[:, keep][:, :, keep])
    np.testing.assert_allclose(sub.token_total_NT.numpy(), tot_ref, rtol=1e-4, atol=1e-6)
    assert set(sub.top.query_K.tolist()) <= set(keep.tolist())
    full_sub = full.abs_full(F)[keep][:, keep]
    torch.testing.assert_close(sub.abs_full(F)[keep][:, keep], full_sub)


def test_batchtopk_uses_inference_encoding(model, tokens):
    cc = build_crosscoder(CrosscoderConfig([SITE, READ], D, F, dec_init_norm=2.0, architecture="batchtopk", options={"k": 3}))
    with torch.no_grad():
        cc.threshold.fill_(0.05)
    cc.train()
    a, b = qk_interactions(cc, model, tokens, 1, batch_size=1), qk_interactions(cc, model, tokens, 1, batch_size=3)
    assert cc.training  # restored
    assert a.C_FF.abs().sum() > 0
    torch.testing.assert_close(a.QK_HFF, b.QK_HFF)
    torch.testing.assert_close(a.token_total_NT, b.token_total_NT)


# ---- (iii) feature order -------------------------------------------------------------------------
def test_invariant_to_feature_order(model, cc, tokens):
    perm = torch.randperm(F, generator=torch.Generator().manual_seed(7))
    cc2 = permuted(cc, perm)
    s1, s2 = attention_site(model, cc, 1), attention_site(model, cc2, 1)
    torch.testing.assert_close(qk_scores_data_free(s2), qk_scores_data_free(s1)[:, perm][:, :, perm])
    r1, r2 = qk_interactions(cc, model, tokens, 1, k=4), qk_interactions(cc2, model, tokens, 1, k=4)
    torch.testing.assert_close(r2.QK_HFF, r1.QK_HFF[:, perm][:, :, perm], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r2.token_total_NT, r1.token_total_NT, rtol=1e-4, atol=1e-6)
    pairs1 = set(zip(r1.top.query_K.tolist(), r1.top.key_K.tolist()))
    pairs2 = {(perm[i].item(), perm[j].item()) for i, j in zip(r2.top.query_K.tolist(), r2.top.key_K.tolist())}
    assert pairs1 == pairs2
    torch.testing.assert_close(ov_write_norms(s2), ov_write_norms(s1)[:, perm])
    torch.testing.assert_close(ov_interactions(cc2, s2, READ), ov_interactions(cc, s1, READ)[:, perm][:, :, perm])
    m1, m2 = ov_attention_mass(cc, model, tokens, 1), ov_attention_mass(cc2, model, tokens, 1)
    torch.testing.assert_close(m2, m1[:, perm], rtol=1e-4, atol=1e-6)


# ---- (iv) by hand --------------------------------------------------------------------------------
def test_hand_computed_one_head_two_features():
    """d_model 2, one head (d_head 4, attn_scale 2), ln1.w = (1, 2), raw decoder vectors e_1, e_2.

    Folded: d_0 = (1, 0), d_1 = (0, 2).  q = (x1, x2, 0, 0), k = (x2, 3 x1, 0, 0):
    q_0 = (1,0,0,0), q_1 = (0,2,0,0), k_0 = (0,3,0,0), k_1 = (2,0,0,0)  ⇒  S = [[0, 2/2], [6/2, 0]].
    v = (x1, x2, 0, 0), W_O swaps: o_0 = (0, 1), o_1 = (2, 0); read directions e_0 = (1, 0), e_1 = (0, 2)
    ⇒ ‖o‖ = (1, 2), OV = [[0, 2], [2, 0]].
    """
    model = tiny_model(n_layers=1, d_model=2, n_heads=1, d_head=4, attn_only=True, d_mlp=None, d_vocab=5, n_ctx=8)
    cc = build_crosscoder(CrosscoderConfig(["blocks.0.ln1.hook_normalized", "blocks.0.hook_resid_post"], 2, 2))
    with torch.no_grad():
        a = model.blocks[0].attn
        a.W_Q.zero_(), a.W_K.zero_(), a.W_V.zero_(), a.W_O.zero_()
        a.W_Q[0, 0, 0] = a.W_Q[0, 1, 1] = 1
        a.W_K[0, 1, 0], a.W_K[0, 0, 1] = 1, 3
        a.W_V[0, 0, 0] = a.W_V[0, 1, 1] = 1
        a.W_O[0, 0, 1] = a.W_O[0, 1, 0] = 1
        model.blocks[0].ln1.w.copy_(torch.tensor([1.0, 2.0]))
        cc.W_dec_FLD[:, 0] = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        cc.W_enc_LDF[1] = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        cc.norm_scale_L.copy_(torch.tensor([2.0, 0.5]))
    site = attention_site(model, cc, 0)
    S = qk_scores_data_free(site)
    torch.testing.assert_close(S, torch.tensor([[[0.0, 1.0], [3.0, 0.0]]]))
    torch.testing.assert_close(ov_write_norms(site), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(ov_interactions(cc, site, "blocks.0.hook_resid_post"), torch.tensor([[[0.0, 2.0], [2.0, 0.0]]]))
    # one row, f(q=0) = (1, 0), f(q=1) = (2, 3):  C = f0⊗f0 + f1⊗f0 + f1⊗f1 = [[7, 6], [9, 9]]; q > k only: [[2, 0], [3, 0]]
    f = torch.tensor([[[1.0, 0.0], [2.0, 3.0]]])
    torch.testing.assert_close(causal_pair_counts(f) * S, torch.tensor([[[0.0, 6.0], [27.0, 0.0]]]))
    torch.testing.assert_close(causal_pair_counts(f, include_diagonal=False) * S, torch.tensor([[[0.0, 0.0], [9.0, 0.0]]]))
    t = top_pairs(torch.tensor([[0.0, 6.0], [27.0, 0.0]]), 1)
    assert (t.query_K.item(), t.key_K.item(), t.score_K.item()) == (1, 0, 27.0)


# ---- (v) OV --------------------------------------------------------------------------------------
def test_ov_against_explicit(model, cc, tokens):
    site = attention_site(model, cc, 1)
    attn, w, d = model.blocks[1].attn, model.blocks[1].ln1.w.detach(), raw_decoder(cc)
    r = cc.cfg.hookpoints.index(READ)
    norms, OV = np.zeros((H, F)), np.zeros((H, F, F))
    with torch.no_grad():
        for h in range(H):
            for j in range(F):
                o = ((d[j] * w) @ attn.W_V[h]) @ attn.W_O[h]
                norms[h, j] = float(o.norm())
                for i in range(F):
                    e = cc.W_enc_LDF[r, :, i] * cc.norm_scale_L[r]
                    OV[h, j, i] = float(o @ e)
    np.testing.assert_allclose(ov_write_norms(site).numpy(), norms, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ov_interactions(cc, site, READ).numpy(), OV, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ov_interactions(cc, site, READ, heads=[1], out_features=[3, 0]).numpy(), OV[[1]][:, :, [3, 0]],
                               rtol=1e-5, atol=1e-6)

    f, A = features_and_patterns(model, cc, tokens)
    N, T = tokens.shape
    mass = np.zeros((H, F))
    for n in range(N):
        for h in range(H):
            for k in range(1, T):
                for q in range(k, T):
                    mass[h] += A[n, h, q, k] * f[n, k - 1]
    np.testing.assert_allclose(ov_attention_mass(cc, model, tokens, 1, batch_size=2).numpy(), mass, rtol=1e-4, atol=1e-6)
    res = ov_data_weighted(cc, model, tokens, 1, READ, batch_size=2)
    np.testing.assert_allclose(res.weighted_write_HF.numpy(), mass * norms, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.weighted_OV_HFG.numpy(), mass[:, :, None] * OV, rtol=1e-4, atol=1e-6)
    assert res.out_features_G.tolist() == list(range(F))


# ---- (vi) errors ---------------------------------------------------------------------------------
def test_errors(model, cc, tokens):
    for bad in (2, -1, "1"):
        with pytest.raises(FeatgraphError, match=r"0\.\.1"):
            attention_site(model, cc, bad)
    resid = make_cc(["blocks.0.hook_resid_post"], [1.0])
    with pytest.raises(FeatgraphError, match=r"writes the attention inputs none.*blocks\.0\.ln1\.hook_normalized.*blocks\.1\.ln1"):
        attention_site(model, resid, 1)
    other = make_cc(["blocks.0.ln1.hook_normalized"], [1.0])
    with pytest.raises(FeatgraphError, match=r"no decoder at blocks\.1\.ln1\.hook_normalized.*\['blocks\.0\.ln1\.hook_normalized'\]"):
        attention_site(model, other, 1)
    with pytest.raises(FeatgraphError, match="d_model"):
        attention_site(model, build_crosscoder(CrosscoderConfig([SITE], 8, 4)), 1)
    with pytest.raises(FeatgraphError, match="normalization_type"):
        attention_site(tiny_model(normalization_type=None), cc, 1)
    site = attention_site(model, cc, 1)
    with pytest.raises(FeatgraphError, match="does not read"):
        ov_interactions(cc, site, "blocks.0.hook_resid_post")
    early = make_cc([SITE, "blocks.1.hook_resid_pre"])
    with pytest.raises(FeatgraphError, match="comes before"):
        ov_interactions(early, attention_site(model, early, 1), "blocks.1.hook_resid_pre")
    with pytest.raises(FeatgraphError, match=r"0\.\.1"):
        qk_scores_data_free(site, heads=[2])
    with pytest.raises(FeatgraphError, match="qk_top_pairs_data_free"):
        qk_scores_data_free(site, max_elements=10)
    with pytest.raises(FeatgraphError, match="T ≥ 2"):
        qk_interactions(cc, model, tokens[:, :1], 1)
    with pytest.raises(FeatgraphError, match="top_pairs takes one"):
        top_pairs(torch.zeros(2, 3, 3), 1)


def test_after_attention_order():
    assert ai._after_attention("blocks.1.hook_resid_mid", 1) and ai._after_attention("blocks.1.hook_resid_post", 1)
    assert ai._after_attention("blocks.2.hook_resid_pre", 1) and ai._after_attention("ln_final.hook_normalized", 1)
    assert not ai._after_attention("blocks.1.hook_resid_pre", 1) and not ai._after_attention("blocks.0.hook_mlp_out", 1)
    assert not ai._after_attention("hook_embed", 0)


def test_doctests():
    assert doctest.testmod(ai, raise_on_error=False).failed == 0
