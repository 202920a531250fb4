"""featgraph interactions rank on the tiny embedded model: MLP, QK and OV sites, outputs and bad input."""

import csv
import json

import pytest

from featgraph.cli import main


@pytest.fixture(scope="module")
def site_crosscoder(tmp_path_factory, tiny_embedded):
    d = tmp_path_factory.mktemp("sites")
    hooks = "blocks.1.ln1.hook_normalized,blocks.1.ln2.hook_normalized,blocks.1.hook_resid_post"
    assert main(["crosscoder", "train", "--out", str(d / "cc"), "--hookpoints", hooks, "--size", "tiny", "--steps", "40",
                 "--batch-size", "128", "--n-features", "48", "--quiet"]) == 0
    return d / "cc"


def test_rank_mlp_with_check(tmp_path, capsys, site_crosscoder):
    out = tmp_path / "mlp"
    assert main(["interactions", "rank", "--crosscoder", str(site_crosscoder), "--site", "blocks.1.ln2.hook_normalized",
                 "--size", "tiny", "--rows", "20", "--top", "15", "--check-pairs", "20", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "mlp interactions" in printed and "tokens with the highest total interaction" in printed and "Spearman" in printed
    report = json.loads((out / "interactions.json").read_text())
    scores = [p["score"] for p in report["pairs"]]
    assert 0 < len(scores) <= 15 and scores == sorted(scores, reverse=True)
    assert all(p["source"] != p["target"] for p in report["pairs"])
    assert report["check"]["n_pairs"] > 2 and -1.0 <= report["check"]["spearman"] <= 1.0
    rows = list(csv.DictReader(open(out / "interactions.csv")))
    assert [r["source"] for r in rows] == [p["source"] for p in report["pairs"]]
    graph = json.loads((out / "graph.json").read_text())
    assert graph["directed"] and {e["type"] for e in graph["links"]} == {"mlp"}
    # merge with a co-activation graph of the same crosscoder: one multigraph, both edge types
    assert main(["graph", "build", "--crosscoder", str(site_crosscoder), "--size", "tiny", "--rows", "20", "--min-cocount", "2",
                 "--out", str(tmp_path / "co"), "--quiet"]) == 0
    assert main(["interactions", "rank", "--crosscoder", str(site_crosscoder), "--site", "blocks.1.ln2.hook_normalized",
                 "--size", "tiny", "--rows", "20", "--merge-with", str(tmp_path / "co" / "graph.json"), "--out", str(out), "--quiet"]) == 0
    merged = json.loads((out / "merged.json").read_text())
    assert merged["multigraph"] and {e["type"] for e in merged["links"]} == {"coactivation", "mlp"}


@pytest.mark.parametrize("kind", ["qk", "ov"])
def test_rank_attention(tmp_path, capsys, site_crosscoder, kind):
    out = tmp_path / kind
    assert main(["interactions", "rank", "--crosscoder", str(site_crosscoder), "--site", "blocks.1.ln1.hook_normalized",
                 "--kind", kind, "--size", "tiny", "--rows", "10", "--top", "10", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "interactions.json").read_text())
    assert report["kind"] == kind and len(report["pairs"]) > 0


def test_bad_sites_are_one_clear_line(tmp_path, capsys, site_crosscoder):
    args = ["interactions", "rank", "--crosscoder", str(site_crosscoder), "--size", "tiny", "--rows", "4", "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*args, "--site", "blocks.1.hook_mlp_out"]) == 2
    assert "unknown interaction site" in capsys.readouterr().err
    assert main([*args, "--site", "blocks.0.ln2.hook_normalized"]) == 2  # the crosscoder has no decoder there
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blocks.1.ln2.hook_normalized" in err[0]
    assert main([*args, "--site", "blocks.7.ln2.hook_normalized"]) == 2  # the model has 2 layers
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "x").exists()


def test_resid_mid_site_needs_a_decoder_there(tmp_path, capsys, site_crosscoder):
    """The site named is the site used: no silent fallback to the ln2 site the crosscoder does write."""
    assert main(["interactions", "rank", "--crosscoder", str(site_crosscoder), "--site", "blocks.1.hook_resid_mid",
                 "--size", "tiny", "--rows", "4", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "resid_mid" in capsys.readouterr().err
