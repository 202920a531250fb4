"""The ablation relevance judge on a planted feature that drives the response: removing it drops the target's
probability past the threshold; a feature with a negligible write and one that never fires are not relevant."""

import numpy as np
import pytest
import torch

from analyses.relevance import ablation_judge, home_hookpoints
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
