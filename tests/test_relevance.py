"""The ablation relevance judge on a planted feature that drives the response: removing it drops the target's
probability past the threshold; a feature with a negligible write and one that never fires are not relevant."""

import numpy as np
import pytest
import torch

from analyses.relevance import ablation_judge, group_ablation, home_hookpoints, target_log_odds
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def planted():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_mlp=32, d_vocab=20,
                                                      act_fn="relu", normalization_type=None, seed=0))
    tokens = torch.randint(1, 20, (6, 8), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 0
    positions = [7, 6, 5, 7, 6, 5]
    target = 3
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    u = cache[HOOK][torch.arange(6), positions].mean(0)
    with torch.no_grad():  # the target's logit reads u: the model predicts it strongly wherever u is in the residual
        model.W_U[:, target] = 8 * u / u.norm() ** 2
    cc = build_crosscoder(CrosscoderConfig([HOOK], 16, 3, architecture="relu"))
    with torch.no_grad():
        cc.norm_scale_L.fill_(1.0)
        cc.W_enc_LDF.zero_()
        cc.b_enc_F.copy_(torch.tensor([1.0, 1.0, -1.0]))  # features 0, 1 fire with 1 everywhere; 2 never
        cc.W_dec_FLD[0, 0] = u                            # 0 writes u: the response driver
        cc.W_dec_FLD[1, 0] = 0.01 * torch.randn(16, generator=torch.Generator().manual_seed(2))
        cc.W_dec_FLD[2, 0] = u
    return model, cc, tokens, positions, target


def test_planted_driver_is_relevant_and_others_are_not(planted):
    model, cc, tokens, positions, target = planted
    j = ablation_judge(model, cc, tokens, positions, target, threshold=0.05, batch=2)
    assert j.features.tolist() == [0, 1]  # feature 2 never fires: not judged
    assert j.clean_probability > 0.5
    assert j.effect[0] > 0.4 and j.relevant.tolist() == [True, False]
    assert abs(j.effect[1]) < 0.01
    # one at a time or all in one pass: the same effects
    k = ablation_judge(model, cc, tokens, positions, target, features=[1, 0], batch=1)
    np.testing.assert_allclose(k.effect[::-1], j.effect, atol=1e-5)
    assert home_hookpoints(cc).tolist() == [0, 0, 0]


def test_bad_inputs_are_one_line(planted):
    model, cc, tokens, positions, target = planted
    with pytest.raises(FeatgraphError, match="one position"):
        ablation_judge(model, cc, tokens, positions[:2], target)
    with pytest.raises(FeatgraphError, match="vocabulary"):
        ablation_judge(model, cc, tokens, positions, 99)


def test_log_odds_measure(planted):
    """The log-odds drop is log p/(1 − p) clean minus ablated, by hand from the two runs' probabilities; it ranks the
    planted driver first as the probability drop does, and its threshold is in nats."""
    model, cc, tokens, positions, target = planted
    j = ablation_judge(model, cc, tokens, positions, target, threshold=1.0, measure="log_odds", batch=2)
    assert j.measure == "log_odds" and j.relevant.tolist() == [True, False]
    rows = torch.arange(len(positions))
    with torch.no_grad():
        p_clean = torch.softmax(model(tokens)[rows, positions].double(), -1)[:, target]
        d = cc.W_dec_FLD[0, 0].detach()
        # feature 0 fires with 1 at every position; the judge leaves BOS alone (crosscoders are trained without it)
        ablated_bos = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: torch.cat([act[:, :1], act[:, 1:] - d], 1))])
        p_abl = torch.softmax(ablated_bos[rows, positions].double(), -1)[:, target]
    lo = lambda p: torch.log(p) - torch.log1p(-p)  # noqa: E731
    assert j.effect[0] == pytest.approx(float((lo(p_clean) - lo(p_abl)).mean()), rel=1e-3)
    logits = torch.tensor([[30.0, 0.0, -5.0], [-3.0, 1.0, 1.0]])  # p ≈ 1 − 1e-13: still finite and exact
    np.testing.assert_allclose(target_log_odds(logits, 0).numpy(), [30 - np.log(1 + np.exp(-5)), -3 - np.log(2 * np.e)], rtol=1e-6)
    with pytest.raises(FeatgraphError, match="measure"):
        ablation_judge(model, cc, tokens, positions, target, measure="logit")


def test_group_ablation_removes_features_together(planted):
    """A group's effect is that of removing its features at once: the driver with a negligible feature ≈ the driver
    alone; a group of the negligible one ≈ 0; an empty group exactly 0; one at a time = the judge's effects."""
    model, cc, tokens, positions, target = planted
    eff, p = group_ablation(model, cc, tokens, positions, target, [[0, 1], [0], [1], []], batch=3)
    j = ablation_judge(model, cc, tokens, positions, target)
    assert p == pytest.approx(j.clean_probability) and eff[1] == pytest.approx(j.effect[0], abs=1e-5) and eff[2] == pytest.approx(j.effect[1], abs=1e-5)
    assert eff[0] == pytest.approx(eff[1], abs=0.02) and abs(eff[2]) < 0.01 and eff[3] == 0.0
    lo, _ = group_ablation(model, cc, tokens, positions, target, [[0, 2]], measure="log_odds")  # 2 never fires: adds nothing
    assert lo[0] == pytest.approx(ablation_judge(model, cc, tokens, positions, target, features=[0], measure="log_odds").effect[0], rel=1e-4)
