"""Numbers in their sources' conventions, checked against hand computations and the sources' own code:

* model diff (Anthropic; ckkissane; Minder et al. 2025): r, β and ν of the decoders as trained, β_r's target with
  the decoder bias; the raw-space and bias-free variants as named options;
* the activity rule of pass-through and AND/OR gates (spar-2024: f > 0.2 · max f), carried by the statistics;
* splice-in CE loss recovered: SAELens's baseline (whole tensor zeroed, special tokens left out) against SAELens's
  own ``get_downstream_reconstruction_metrics``, and featgraph's earlier keep-BOS baseline against run_with_hooks.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError
from crosscoder.metrics import evaluate, splice_metrics
from crosscoder.model_diff import decoder_cosines, latent_scaling, model_diff, relative_decoder_norms
from featgraph.crosslayer import active_frac_of, best_match, find_gates, pass_through_counts, stack_graph, stack_stats
from featgraph.stats import CoactivationStats, load_stats, save_stats


# ---- (b) model diff: r, β, ν ---------------------------------------------------------------------------------

def two_feature_pair():
    """Models A, B with one hookpoint, D = 2, F = 2, norm scales s = (1, 2) (raw = normalised / s).

    Decoders (normalised): d_0^A = (1, 0), d_0^B = (2, 0); d_1^A = d_1^B = (0, 1). Biases b^A = (0, ½), b^B = (0, 1).
    Encoder: f_0 = relu(x^A_0), f_1 = relu(x^B_1) on the normalised input. Two tokens (normalised):
    t1: x^A = (1, ½), x^B = (2, 1) → f = (1, 1);  t2: x^A = (2, 0), x^B = (4, 2) → f = (2, 2).
    """
    cc = build_crosscoder(CrosscoderConfig(["h0"], 2, 2, models=["A", "B"]))
    with torch.no_grad():
        cc.W_dec_FLD.copy_(torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]))
        cc.b_dec_LD.copy_(torch.tensor([[0.0, 0.5], [0.0, 1.0]]))
        cc.W_enc_LDF.zero_()
        cc.W_enc_LDF[0, 0, 0] = cc.W_enc_LDF[1, 1, 1] = 1.0
        cc.b_enc_F.zero_()
        cc.norm_scale_L.copy_(torch.tensor([1.0, 2.0]))
    x_norm = torch.tensor([[[1.0, 0.5], [2.0, 1.0]], [[2.0, 0.0], [4.0, 2.0]]])
    return cc, x_norm / torch.tensor([1.0, 2.0])[None, :, None]  # raw activations, as harvested


def test_relative_norm_in_both_spaces_hand_computed():
    cc, _ = two_feature_pair()
    # as trained: ‖d_0^B‖ / (‖d_0^A‖ + ‖d_0^B‖) = 2 / 3, latent 1: 1 / 2
    torch.testing.assert_close(relative_decoder_norms(cc), torch.tensor([2 / 3, 1 / 2]))
    # raw: B's decoder halves (s_B = 2): 1 / (1 + 1) and ½ / (1 + ½)
    torch.testing.assert_close(relative_decoder_norms(cc, space="raw"), torch.tensor([1 / 2, 1 / 3]))
    assert decoder_cosines(cc).tolist() == pytest.approx([1.0, 1.0])
    d = model_diff(cc)
    assert d.space == "normalised" and d.rel_norm == [pytest.approx(2 / 3, abs=1e-6), 0.5] and d.labels == ["shared", "shared"]
    with pytest.raises(FeatgraphError, match="space must be normalised"):
        relative_decoder_norms(cc, space="unit")


def test_latent_scaling_hand_computed_with_and_without_bias():
    """u_i = d_i^B. Latent 1, u = (0, 1), Σf_1 = 3, Σf_1² = 5:
    β_r^A = Σ f (f + ½) / 5 = 1 + ½·3/5 = 1.3,  β_r^B = Σ f (f + 1) / 5 = 1.6  → ν_r = 0.8125 (with bias);
    without the bias both are 1 → ν_r = 1.
    β_ε: y^A·u = (0, −½), y^B·u = (0, 1) over t1, t2 → β_ε^A = (2·−½)/5 = −0.2, β_ε^B = 2/5 = 0.4, ν_ε = −0.5.
    Latent 0, u = (2, 0): x̂^A·u = 2 f_0, x̂^B·u = 4 f_0 → β^A = ½, β^B = 1 for both targets, ν = ½.
    Raw space: β^m_raw = (s_B / s_m) β^m → β^A doubles, ν doubles."""
    cc, x_raw = two_feature_pair()
    sc = latent_scaling(cc, [x_raw[:1], x_raw[1:]])
    assert (sc.space, sc.fit_decoder, sc.recon_bias) == ("normalised", "b", True) and sc.present_F.tolist() == [1, 1]
    f64 = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(sc.beta_recon_F2, f64([0.5, 1.0], [1.3, 1.6]))
    torch.testing.assert_close(sc.beta_error_F2, f64([0.5, 1.0], [-0.2, 0.4]))
    torch.testing.assert_close(sc.nu_recon_F, f64(0.5, 1.3 / 1.6))
    torch.testing.assert_close(sc.nu_error_F, f64(0.5, -0.5))
    assert sc.n_active_F.tolist() == [2, 2] and sc.n_tokens == 2

    no_bias = latent_scaling(cc, [x_raw], recon_bias=False)
    torch.testing.assert_close(no_bias.beta_recon_F2, f64([0.5, 1.0], [1.0, 1.0]))
    torch.testing.assert_close(no_bias.nu_recon_F, f64(0.5, 1.0))
    torch.testing.assert_close(no_bias.beta_error_F2, sc.beta_error_F2)  # the error target has no bias to drop

    raw = latent_scaling(cc, [x_raw], space="raw")
    torch.testing.assert_close(raw.beta_recon_F2, f64([1.0, 1.0], [2.6, 1.6]))
    torch.testing.assert_close(raw.nu_error_F, f64(1.0, -1.0))
    torch.testing.assert_close(raw.nu_recon_F, f64(1.0, 2 * 1.3 / 1.6))

    # the larger decoder: latent 1's norms tie, so A is fitted (same vector) and ν inverts
    larger = latent_scaling(cc, [x_raw], fit_decoder="larger")
    assert larger.present_F.tolist() == [1, 0]
    torch.testing.assert_close(larger.nu_recon_F, f64(0.5, 1.6 / 1.3))
    rec = model_diff(cc, scaling=sc).to_dict()["scaling"]
    assert rec["fit_decoder"] == "b" and rec["recon_bias"] is True and rec["space"] == "normalised"
    with pytest.raises(FeatgraphError, match="fit_decoder"):
        latent_scaling(cc, [x_raw], fit_decoder="a")


def test_latent_scaling_closed_form_matches_least_squares_on_the_target():
    """β_r^A of latent 1 by least squares on the stacked target x̂^A (bias included), u = d_1^B."""
    cc, x_raw = two_feature_pair()
    x = cc.normalise(x_raw)
    f_n = cc.encode(x, normalised=True)[:, 1].detach()
    y_nD = cc.decode(cc.encode(x, normalised=True), normalised=True)[:, 0].detach()  # x̂^A with b^A
    u = cc.W_dec_FLD[1, 1].detach()
    beta = torch.linalg.lstsq((f_n[:, None, None] * u).reshape(-1, 1), y_nD.reshape(-1, 1)).solution.item()
    assert latent_scaling(cc, [x_raw]).beta_recon_F2[1, 0].item() == pytest.approx(beta, rel=1e-6)


# ---- (c) the activity rule of gates and pass-through ----------------------------------------------------------

# Layer 0: a, b; layer 1: c = a AND b (strong on tokens 1, 2; a weak blip on 5), d (one weak co-firing with a's
# weak blip on token 3). f > 0: c fires on {1, 2, 5}, so P(a | c) = 2/3 — no gate; spar-2024's f > 0.2·max:
# c fires on {1, 2} and a on {0, 1, 2}, so P(a | c) = P(b | c) = 1 — an AND gate.
X_GATE = torch.tensor([
    # a    b    c    d
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 1.0, 1.0, 0.0],
    [1.0, 1.0, 1.0, 0.0],
    [0.1, 0.0, 0.0, 0.1],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 0.1, 0.0],
    [0.0, 0.0, 0.0, 0.0],
])
LAYER4 = np.array([0, 0, 1, 1])


def test_stack_stats_apply_the_relative_rule_and_record_it():
    spar = stack_stats(lambda: [X_GATE[:4], X_GATE[4:]], 4)
    np.testing.assert_allclose(spar.threshold, [0.2, 0.2, 0.2, 0.02], rtol=1e-6)
    assert spar.count_F.tolist() == [3, 3, 2, 1] and active_frac_of(spar) == 0.2
    positive = stack_stats(lambda: [X_GATE], 4, active_frac=0.0)
    assert positive.count_F.tolist() == [4, 3, 3, 1] and active_frac_of(positive) == 0.0
    fixed = CoactivationStats(4, threshold=0.05)
    fixed.update(X_GATE)
    assert active_frac_of(fixed) is None
    with pytest.raises(FeatgraphError, match="active_frac must be in"):
        stack_stats(lambda: [X_GATE], 4, active_frac=1.5)


def test_gates_default_to_spar_rule_and_refuse_other_statistics(tmp_path):
    spar = stack_stats(lambda: [X_GATE], 4)
    gates = find_gates(spar, LAYER4, min_count=2)
    assert [(g.kind, g.child, g.parents, g.scores, g.child_count) for g in gates] == [("AND", 2, (0, 1), (1.0, 1.0), 2)]
    positive = stack_stats(lambda: [X_GATE], 4, active_frac=0.0)
    with pytest.raises(FeatgraphError, match=r"f > 0.2·max f but the statistics count f > 0") as e:
        find_gates(positive, LAYER4, min_count=2)
    assert "\n" not in str(e.value) and "--active-frac 0.2" in str(e.value)
    assert find_gates(positive, LAYER4, min_count=2, active_frac=0.0) == []  # f > 0: P(a | c) = 2/3
    fixed = CoactivationStats(4, threshold=0.15)
    fixed.update(X_GATE)
    with pytest.raises(FeatgraphError, match="no fixed fraction"):
        find_gates(fixed, LAYER4, min_count=2)
    assert find_gates(fixed, LAYER4, min_count=2, active_frac=None) == gates  # as they are: θ = 0.15 drops the blips too
    # the rule survives a save/load round trip (threshold and maxima are saved)
    save_stats(spar, tmp_path / "stats")
    back, _ = load_stats(tmp_path / "stats")
    assert active_frac_of(back) == 0.2 and find_gates(back, LAYER4, min_count=2) == gates
    assert stack_graph(spar, LAYER4, min_cocount=1).meta["active_frac"] == 0.2


def test_pass_through_rule_for_counts_and_none_for_pearson():
    spar, positive = stack_stats(lambda: [X_GATE], 4), stack_stats(lambda: [X_GATE], 4, active_frac=0.0)
    with pytest.raises(FeatgraphError, match="pass-through by necessity"):
        pass_through_counts(positive, LAYER4, 0.9, measure="necessity")
    # necessity P(i | j) under f > 0.2·max: P(a | c) = P(b | c) = 1, so a and b pass through and c is matched;
    # d is not co-active with anything above 0.2·max, so it appears
    (t,) = pass_through_counts(spar, LAYER4, 0.9, measure="necessity")
    assert (t.n_alive, t.pass_through, t.vanishing, t.n_next_alive, t.matched_next, t.appearing) == (2, 2, 0, 2, 1, 1)
    # Pearson reads activation values and no rule (as spar-2024): the same counts and best matches either way —
    # d's only co-firing (with a's weak blip, below 0.2·max) still makes a its backward candidate
    assert pass_through_counts(spar, LAYER4, 0.5) == pass_through_counts(positive, LAYER4, 0.5)
    bm_s, bm_p = best_match(spar, LAYER4), best_match(positive, LAYER4)
    for u, v in zip(bm_s, bm_p):
        np.testing.assert_array_equal(u, v)
    assert bm_s.backward_idx_F[3] == 0 and bm_s.forward_idx_F[0] == 2


# ---- (d) splice-in CE loss recovered ---------------------------------------------------------------------------

BOS, EOS, HP = 0, 1, "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_lm():
    """A random 2-layer model, a random SAE at blocks.0.hook_resid_post, and 5 rows: BOS first, an EOS mid-row in
    two of them (a special token SAELens leaves out)."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=10, d_head=4, n_heads=4, d_mlp=32, d_vocab=30,
                                  act_fn="relu", seed=0, device="cpu")
    model = HookedTransformer(cfg).eval()
    cc = build_crosscoder(CrosscoderConfig([HP], 16, 24, seed=1)).eval()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(2, 30, (5, 10), generator=g)
    tokens[:, 0] = BOS
    tokens[1, 4] = tokens[3, 7] = EOS
    return model, cc, tokens


def _saelens_view(cc):
    """Our SAE as SAELens's evals see one: encode/decode on (…, D), the hook name in cfg.metadata."""
    def encode(x):
        return cc.encode(x.reshape(-1, 1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    def decode(f):
        return cc.decode(f.reshape(-1, f.shape[-1])).reshape(*f.shape[:-1], -1)

    meta = SimpleNamespace(hook_name=HP, hook_head_index=None)
    return SimpleNamespace(cfg=SimpleNamespace(metadata=meta), device=torch.device("cpu"), encode=encode, decode=decode)


def test_saelens_convention_matches_saelens_evals(tiny_lm):
    evals = pytest.importorskip("sae_lens.evals")
    model, cc, tokens = tiny_lm
    store = SimpleNamespace(get_batch_tokens=lambda n: tokens)
    scaler = SimpleNamespace(scale=lambda x: x, unscale=lambda x: x)
    ref = evals.get_downstream_reconstruction_metrics(
        _saelens_view(cc), model, store, scaler, compute_kl=True, compute_ce_loss=True, n_batches=1,
        eval_batch_size_prompts=len(tokens), ignore_tokens=[BOS, EOS])
    ours = splice_metrics(cc, model, tokens, batch_size=2, special_token_ids=[BOS, EOS])  # 3 uneven batches, pooled
    assert ours["splice_convention"] == "saelens"
    assert ours["ce_clean"] == pytest.approx(ref["ce_loss_without_sae"], rel=1e-5)
    assert ours["ce_spliced"][0] == pytest.approx(ref["ce_loss_with_sae"], rel=1e-5)
    assert ours["ce_zero_ablated"][0] == pytest.approx(ref["ce_loss_with_ablation"], rel=1e-5)
    assert ours["ce_loss_recovered"][0] == pytest.approx(ref["ce_loss_score"], rel=1e-4)
    assert ours["kl_per_hookpoint"][0] == pytest.approx(ref["kl_div_with_sae"], rel=1e-4)


def test_keep_bos_convention_matches_run_with_hooks_and_differs(tiny_lm):
    """keep_bos: BOS never touched; CE over all T−1 predictions. Computed here by hand with run_with_hooks."""
    model, cc, tokens = tiny_lm
    B, T = tokens.shape
    _, cache = model.run_with_cache(tokens, names_filter=HP)
    x_hat = cc(cache[HP][:, 1:].reshape(-1, 1, 16)).view(B, T - 1, 16).detach()

    def splice(act, hook):
        act = act.clone()
        act[:, 1:] = x_hat
        return act

    def zero_after_bos(act, hook):
        act = act.clone()
        act[:, 1:] = 0.0
        return act

    def ce(logits):
        logp = logits.log_softmax(-1)[:, :-1]
        return -logp.gather(-1, tokens[:, 1:, None]).mean().item()

    with torch.no_grad():
        clean = ce(model(tokens))
        spliced = ce(model.run_with_hooks(tokens, fwd_hooks=[(HP, splice)]))
        zeroed = ce(model.run_with_hooks(tokens, fwd_hooks=[(HP, zero_after_bos)]))
    ours = splice_metrics(cc, model, tokens, batch_size=5, convention="keep_bos")
    assert ours["splice_convention"] == "keep_bos"
    assert (ours["ce_clean"], ours["ce_spliced"][0], ours["ce_zero_ablated"][0]) == pytest.approx((clean, spliced, zeroed), rel=1e-5)
    assert ours["ce_loss_recovered"][0] == pytest.approx((zeroed - spliced) / (zeroed - clean), rel=1e-4)
    # the baselines differ: SAELens zeroes BOS too (and scores other positions)
    sae = splice_metrics(cc, model, tokens, batch_size=5, special_token_ids=[BOS, EOS])
    assert abs(sae["ce_zero_ablated"][0] - ours["ce_zero_ablated"][0]) > 1e-3
    with pytest.raises(FeatgraphError, match="splice convention"):
        splice_metrics(cc, model, tokens, convention="zero")


def test_evaluate_records_the_convention(tiny_lm):
    model, cc, tokens = tiny_lm
    assert evaluate(cc, model, tokens, batch_size=10).to_dict()["splice_convention"] == "saelens"
    m = evaluate(cc, model, tokens, batch_size=10, splice_convention="keep_bos")
    assert m.splice_convention == "keep_bos" and len(m.ce_loss_recovered) == 1
    assert evaluate(cc, model, tokens, batch_size=10, splice=False).splice_convention is None
