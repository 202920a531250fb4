"""MLP feature interactions: a hand-computed one-layer MLP, feature-order invariance, the vectorised accumulator
against a plain triple loop (dense and sparse), end to end on a small random HookedTransformer, Δ², errors."""

import numpy as np
import pytest
import scipy.stats
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import harvest
from featgraph.mlp_interactions import (
    MLPInteractionAccumulator,
    delta2_mlp,
    mlp_contributions,
    mlp_interactions,
    mlp_site,
    spearman,
)

# ---- (i) hand-built model ----------------------------------------------------------------------------
# One layer, d_model 2, 3 ReLU neurons, no normalisation, attention silenced: resid_mid = W_E[token].
# Crosscoder at blocks.0.hook_resid_mid with d_0 = e_0, d_1 = e_1 and f = ReLU(x), so A = W_in.
W_IN = [[1.0, 2.0, -1.0], [1.0, -1.0, 0.5]]       # A[0] = (1, 2, -1), A[1] = (1, -1, 0.5)
W_OUT = [[3.0, 4.0], [0.0, 2.0], [0.0, 0.5]]      # ‖W_out[n]‖ = 5, 2, 0.5
EMBED = [[0.0, 0.0], [2.0, 1.0], [1.0, 3.0], [-1.0, 2.0]]  # token 0 = BOS; tokens 1..3: f = (2,1), (1,3), (0,2)


def hand_model_and_cc():
    cfg = HookedTransformerConfig(n_layers=1, d_model=2, d_head=2, n_heads=1, d_mlp=3, d_vocab=4, n_ctx=4,
                                  act_fn="relu", normalization_type=None, seed=0)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E.copy_(torch.tensor(EMBED))
        model.blocks[0].mlp.W_in.copy_(torch.tensor(W_IN))
        model.blocks[0].mlp.W_out.copy_(torch.tensor(W_OUT))
    cc = build_crosscoder(CrosscoderConfig(["blocks.0.hook_resid_mid"], 2, 2))
    with torch.no_grad():
        cc.W_dec_FLD.copy_(torch.eye(2)[:, None, :])
        cc.W_enc_LDF.copy_(torch.eye(2)[None])
    return model, cc


def test_hand_computed_values():
    # Token 1, f = (2, 1): p[:, 0] = (2, 4, -2), p[:, 1] = (1, -1, 0.5) → feature 0 dominates every neuron;
    #   I(0, 1) += 1·5 + 1·2 + 0.5·0.5 = 7.25; shares 2/3, 4/5, 4/5.
    # Token 2, f = (1, 3): p[:, 0] = (1, 2, -1), p[:, 1] = (3, -3, 1.5) → feature 1 dominates;
    #   I(1, 0) += 1·5 + 2·2 + 1·0.5 = 9.5; shares 3/4, 3/5, 3/5.
    # Token 3, f = (0, 2): one active feature → no interaction, shares 1.
    model, cc = hand_model_and_cc()
    site = mlp_site(model, cc, 0)
    assert site.kind == "resid_mid" and site.hookpoint == "blocks.0.hook_resid_mid"
    assert torch.equal(site.A_FN, torch.tensor(W_IN))
    assert torch.equal(site.w_out_norm_N, torch.tensor([5.0, 2.0, 0.5]))
    p = mlp_contributions(torch.tensor([[2.0, 1.0]]), torch.tensor([[0, 1]]), site.A_FN)
    assert torch.equal(p, torch.tensor([[[2.0, 4.0, -2.0], [1.0, -1.0, 0.5]]]))

    res = mlp_interactions(cc, model, torch.tensor([[0, 1, 2, 3]]), layer=0)
    np.testing.assert_array_equal(res.interaction.toarray(), [[0.0, 7.25], [9.5, 0.0]])
    np.testing.assert_array_equal(res.token_index, [1, 2, 3])
    np.testing.assert_array_equal(res.token_total, [7.25, 9.5, 0.0])
    np.testing.assert_allclose(res.dominant_share_per_token, [(2 / 3 + 0.8 + 0.8) / 3, (0.75 + 0.6 + 0.6) / 3, 1.0])
    np.testing.assert_allclose(res.dominant_share_N, [(2 / 3 + 0.75 + 1) / 3, (0.8 + 0.6 + 1) / 3, (0.8 + 0.6 + 1) / 3])
    assert res.n_tokens == 3 and list(res.top_tokens(2)) == [2, 1]

    # Δ²(0, 1): token 1 → ‖(0, −2.25)‖, token 2 → ‖(0, −4.5)‖ (ReLU of the four pre-activations by hand).
    d2 = delta2_mlp(model, cc, 0, torch.tensor([[0, 1, 2, 3]]), [(0, 1), (1, 0)])
    np.testing.assert_allclose(d2.delta2, [3.375, 3.375], rtol=1e-6)
    np.testing.assert_array_equal(d2.n_tokens, [2, 2])


# ---- (iii) vectorised accumulator = triple loop ------------------------------------------------------
def triple_loop(f, A, w, inv_sigma):
    B, F = f.shape
    N = A.shape[1]
    I, total = np.zeros((F, F)), np.zeros(B)
    share_sum, share_cnt, share_tok = np.zeros(N), np.zeros(N), np.full(B, np.nan)
    for t in range(B):
        active = [h for h in range(F) if f[t, h] != 0]
        shares = []
        for n in range(N):
            p = {h: f[t, h] * A[h, n] * inv_sigma[t] for h in active}
            s = sum(abs(v) for v in p.values())
            if s == 0:
                continue
            star = max(active, key=lambda h: (abs(p[h]), -h))  # largest |p|, lowest index on ties
            shares.append(abs(p[star]) / s)
            share_sum[n] += shares[-1]
            share_cnt[n] += 1
            for j in active:
                if j != star:
                    I[star, j] += abs(p[j]) * w[n]
                    total[t] += abs(p[j]) * w[n]
        if shares:
            share_tok[t] = np.mean(shares)
    return I, total, share_sum / np.where(share_cnt > 0, share_cnt, np.nan), share_tok


@pytest.mark.parametrize("dense_limit, merge_every", [(4096, 1 << 22), (0, 7)])
def test_accumulator_matches_triple_loop(dense_limit, merge_every):
    gen = torch.Generator().manual_seed(0)
    B, F, N = 40, 11, 6
    f = torch.rand(B, F, generator=gen) * (torch.rand(B, F, generator=gen) < 0.35)
    f[3] = 0  # a silent token
    A = torch.randn(F, N, generator=gen)
    w = torch.rand(N, generator=gen) + 0.1
    inv_sigma = torch.rand(B, generator=gen) + 0.5
    acc = MLPInteractionAccumulator(A, w, dense_limit=dense_limit, chunk_elements=50, merge_every=merge_every)
    acc.update(f[:25], torch.arange(25), inv_sigma[:25])
    acc.update(f[25:], torch.arange(25, B), inv_sigma[25:])
    res = acc.result()
    assert acc.dense == (dense_limit > 0)
    I, total, share_N, share_tok = triple_loop(f.double().numpy(), A.double().numpy(), w.double().numpy(), inv_sigma.double().numpy())
    np.testing.assert_allclose(res.interaction.toarray(), I, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.token_total, total, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.dominant_share_N, share_N, rtol=1e-5)
    np.testing.assert_allclose(res.dominant_share_per_token, share_tok, rtol=1e-5)
    np.testing.assert_array_equal(res.token_index, np.arange(B))
    assert np.isnan(res.dominant_share_per_token[3]) and res.token_total[3] == 0


# ---- (iv) small random HookedTransformer -------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, d_vocab=50, n_ctx=16,
                                  act_fn="gelu_new", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LayerNorm weight and bias away from (1, 0), so their handling is tested
        for block in model.blocks:
            block.ln2.w.copy_(0.5 + torch.rand(16, generator=gen))
            block.ln2.b.copy_(0.1 * torch.randn(16, generator=gen))
        model.blocks[1].mlp.W_in.mul_(20.0)  # pre-activations of order 1, where GELU bends
    return model


@pytest.fixture(scope="module")
def tokens():
    t = torch.randint(1, 50, (6, 9), generator=torch.Generator().manual_seed(2))
    t[:, 0] = 0
    return t


def random_cc(hookpoints, n_features=24, seed=3, scales=None):
    cc = build_crosscoder(CrosscoderConfig(hookpoints, 16, n_features, seed=seed, dec_init_norm=1.0))
    if scales is not None:
        cc.norm_scale_L.copy_(torch.tensor(scales))
    return cc


def permuted(cc, perm):
    out = build_crosscoder(cc.cfg)
    state = dict(cc.state_dict())
    state["W_dec_FLD"] = state["W_dec_FLD"][perm]
    state["W_enc_LDF"] = state["W_enc_LDF"][..., perm]
    state["b_enc_F"] = state["b_enc_F"][perm]
    state["tokens_since_fired_F"] = state["tokens_since_fired_F"][perm]
    out.load_state_dict(state)
    return out


def test_end_to_end_shapes_and_zero_diagonal(small_model, tokens):
    cc = random_cc(["blocks.0.hook_resid_post", "blocks.1.ln2.hook_normalized"], scales=[0.5, 2.0])
    res = mlp_interactions(cc, small_model, tokens, layer=1, batch_size=4)
    T = tokens.shape[1] - 1
    assert res.interaction.shape == (24, 24) and res.interaction.nnz > 0
    assert np.all(res.interaction.diagonal() == 0)
    assert res.dominant_share_N.shape == (32,) and res.n_tokens == 6 * T
    assert res.token_total.shape == res.dominant_share_per_token.shape == res.token_index.shape == (6 * T,)
    np.testing.assert_array_equal(res.token_index, (np.arange(6)[:, None] * 9 + np.arange(1, 9)).reshape(-1))
    share = res.dominant_share_N[np.isfinite(res.dominant_share_N)]
    assert np.all((share > 0) & (share <= 1 + 1e-6))
    np.testing.assert_allclose(res.token_total.sum(), res.interaction.sum(), rtol=1e-5)
    sparse = mlp_interactions(cc, small_model, tokens, layer=1, batch_size=4, dense_limit=0, chunk_elements=100)
    np.testing.assert_allclose(sparse.interaction.toarray(), res.interaction.toarray(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("hookpoint", ["blocks.1.ln2.hook_normalized", "blocks.1.hook_resid_mid"])
def test_contributions_sum_to_decoded_preactivation(small_model, tokens, hookpoint):
    """Σ_h p[t, n, h] = (Σ_h f_h d_h in the MLP input space) @ W_in: the decoder's transform (LN w, centring, 1/σ)."""
    cc = random_cc([hookpoint], scales=[1.7])
    site = mlp_site(small_model, cc, 1)
    assert site.kind == ("normalized" if "ln2" in hookpoint else "resid_mid")
    x_BD = next(harvest(small_model, tokens, [hookpoint]))[:, 0]
    f_BF = cc.encode(x_BD[:, None])
    B, F = f_BF.shape
    _, cache = small_model.run_with_cache(tokens[:32], names_filter="blocks.1.ln2.hook_scale")
    sigma_B = cache["blocks.1.ln2.hook_scale"][:, 1:].reshape(-1)
    inv = 1 / sigma_B if site.kind == "resid_mid" else None
    p = mlp_contributions(f_BF, torch.arange(F).expand(B, F), site.A_FN, inv)
    ln = small_model.blocks[1].ln2
    dec_BD = (cc.decode(f_BF)[:, 0] - cc.b_dec_LD[0] / 1.7)  # Σ_h f_h d_h, raw
    if site.kind == "resid_mid":
        dec_BD = (dec_BD - dec_BD.mean(-1, keepdim=True)) / sigma_B[:, None]
    expected = (dec_BD * ln.w) @ small_model.blocks[1].mlp.W_in
    torch.testing.assert_close(p.sum(dim=1), expected, rtol=1e-4, atol=1e-5)


def test_feature_order_invariance(small_model, tokens):
    cc = random_cc(["blocks.1.ln2.hook_normalized"])
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(5))
    res = mlp_interactions(cc, small_model, tokens, layer=1)
    res_p = mlp_interactions(permuted(cc, perm), small_model, tokens, layer=1)
    I, I_p = res.interaction.toarray(), res_p.interaction.toarray()
    np.testing.assert_allclose(I_p, I[perm][:, perm], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(res_p.token_total, res.token_total, rtol=1e-5)
    np.testing.assert_allclose(res_p.dominant_share_N, res.dominant_share_N, rtol=1e-5)


def test_delta2_zero_for_linear_mlp_and_positive_otherwise(small_model, tokens, monkeypatch):
    cc = random_cc(["blocks.1.ln2.hook_normalized"])
    res = mlp_interactions(cc, small_model, tokens, layer=1)
    I = res.interaction.tocoo()
    top = np.argsort(-I.data)[:6]
    pairs = np.stack([I.row[top], I.col[top]], axis=1)
    gelu = delta2_mlp(small_model, cc, 1, tokens, pairs, max_tokens=20)
    assert np.all(gelu.n_tokens > 0) and np.all(gelu.n_tokens <= 20) and np.all(gelu.delta2 > 1e-3)
    assert np.isfinite(spearman(I.data[top], gelu.delta2))
    monkeypatch.setattr(small_model.blocks[1].mlp, "act_fn", lambda x: x)
    linear = delta2_mlp(small_model, cc, 1, tokens, pairs, max_tokens=20)
    np.testing.assert_array_equal(linear.n_tokens, gelu.n_tokens)
    assert np.all(linear.delta2 < 1e-5 * gelu.delta2.max())  # zero up to float32 rounding


def test_resid_mid_site_runs(small_model, tokens):
    cc = random_cc(["blocks.1.hook_resid_mid"], scales=[0.8])
    res = mlp_interactions(cc, small_model, tokens, layer=1, batch_size=4)
    assert res.interaction.shape == (24, 24) and np.all(res.interaction.diagonal() == 0)
    assert res.interaction.nnz > 0 and np.all(np.isfinite(res.token_total))
    # The streamed run divides by the clean σ_t of blocks.1.ln2.hook_scale: same as feeding it by hand.
    f_BF = cc.encode(next(harvest(small_model, tokens, ["blocks.1.hook_resid_mid"])))
    _, cache = small_model.run_with_cache(tokens, names_filter="blocks.1.ln2.hook_scale")
    acc = MLPInteractionAccumulator.from_site(mlp_site(small_model, cc, 1))
    acc.update(f_BF, torch.arange(f_BF.shape[0]), 1 / cache["blocks.1.ln2.hook_scale"][:, 1:].reshape(-1))
    np.testing.assert_allclose(res.interaction.toarray(), acc.result().interaction.toarray(), rtol=1e-5, atol=1e-9)
    I = res.interaction.tocoo()
    pairs = np.stack([I.row[:3], I.col[:3]], axis=1)
    d2 = delta2_mlp(small_model, cc, 1, tokens, pairs, max_tokens=10)
    assert np.all(d2.n_tokens > 0) and np.all(d2.delta2 > 0)


def test_spearman_matches_scipy_with_ties():
    gen = np.random.default_rng(0)
    a, b = gen.integers(0, 5, 40).astype(float), gen.normal(size=40)
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, np.nan, 3, 2], [1, 5, 3, 2]) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


# ---- (v) errors --------------------------------------------------------------------------------------
def test_errors(small_model, tokens):
    cc = random_cc(["blocks.1.ln2.hook_normalized"])
    with pytest.raises(FeatgraphError, match=r"0\.\.1"):
        mlp_site(small_model, cc, 2)
    with pytest.raises(FeatgraphError, match=r"sites it writes are none.*blocks\.1\.ln2\.hook_normalized or blocks\.1\.hook_resid_mid"):
        mlp_site(small_model, random_cc(["blocks.0.hook_resid_post"]), 1)
    with pytest.raises(FeatgraphError, match=r"\['blocks\.0\.ln2\.hook_normalized'\]"):
        mlp_site(small_model, random_cc(["blocks.0.ln2.hook_normalized"]), 1)
    with pytest.raises(FeatgraphError, match="choose normalized or resid_mid"):
        mlp_site(small_model, cc, 1, kind="mlp_in")
    with pytest.raises(FeatgraphError, match="blocks.1.hook_resid_mid"):
        mlp_site(small_model, cc, 1, kind="resid_mid")
    with pytest.raises(FeatgraphError, match=r"features 0\.\.23"):
        delta2_mlp(small_model, cc, 1, tokens, [(0, 24)])
    attn_only = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, d_head=4, n_heads=4, d_vocab=50,
                                                          n_ctx=16, attn_only=True, seed=0))
    with pytest.raises(FeatgraphError, match="attention-only"):
        mlp_site(attn_only, random_cc(["blocks.0.hook_resid_post"]), 0)
    for msg in ("0..1", "attention-only"):
        assert "\n" not in msg
