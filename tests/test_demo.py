"""The demo end to end at a tiny size, the embedded model, and bad input through the CLI."""

import json
import os
import subprocess
import sys

import torch

from crosscoder.config import CrosscoderConfig, default_hookpoints
from crosscoder.relu import ReLUCrosscoder
from crosscoder.io import save_crosscoder
from featgraph.cli import main
from featgraph.export import read_json


def test_embedded_model_learns_and_is_cached(tiny_embedded):
    from analyses.tiny_model import TINY, load_embedded

    r = tiny_embedded.report
    assert r["val_loss"] < r["unigram_val_loss"] - 0.3, r
    assert tiny_embedded.tokens_train_NT.shape[1] == TINY.n_ctx
    assert (tiny_embedded.tokens_train_NT[:, 0] == tiny_embedded.model.tokenizer.bos_token_id).all()
    again = load_embedded(TINY, progress=False)  # from the cache: same weights, same report
    assert again.path == tiny_embedded.path and again.report == r
    for k, v in tiny_embedded.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_demo_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for word in ("val loss", "FVU pooled", "L0", "dead", "nodes", "edges", "communities", "modularity", "graph.html"):
        assert word in printed
    files = sorted(p.name for p in out.iterdir())
    assert files == [".featgraph", "crosscoder", "features.json", "graph.graphml", "graph.html", "graph.json", "summary.json"]  # .featgraph: a rerun may replace it
    summary = json.loads((out / "summary.json").read_text())
    g = read_json(out / "graph.json")
    assert g.n_nodes == summary["n_nodes"] > 0 and g.n_edges == summary["n_edges"] > 0
    node = g.node(0)
    assert {"frequency", "peak_hookpoint", "layer_profile", "top_contexts", "community"} <= set(node)
    assert len(node["layer_profile"]) == 3  # resid_pre 0 + resid_post of 2 layers
    html = (out / "graph.html").read_text()
    assert all(f'"id": "{nid}"' in html for nid in g.node_ids)

    # same seed, same graph
    out2 = tmp_path / "demo2"
    assert main(["demo", "--size", "tiny", "--out", str(out2), "--quiet"]) == 0
    assert (out2 / "graph.json").read_text() == (out / "graph.json").read_text()

    # reuse the saved crosscoder: no training, same crosscoder, same graph
    out3 = tmp_path / "demo3"
    assert main(["demo", "--size", "tiny", "--out", str(out3), "--quiet", "--crosscoder", str(out / "crosscoder")]) == 0
    assert read_json(out3 / "graph.json").node_ids == g.node_ids


def _one_error_line(capsys, pattern):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], err
    assert "Traceback" not in err[0]


def test_unknown_hookpoint(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--quiet", "--hookpoints", "blocks.7.hook_resid_post"]) == 2
    _one_error_line(capsys, "unknown hookpoint 'blocks.7.hook_resid_post'")
    assert not out.exists() or not any(out.iterdir())


def test_model_not_found_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "o"
    assert main(["demo", "--out", str(out), "--quiet", "--model", "roneneldan/TinyStories-33M"]) == 2
    _one_error_line(capsys, "offline")
    assert main(["demo", "--out", str(out), "--quiet", "--model", "no-such-model-xyz"]) == 2
    _one_error_line(capsys, "unknown model 'no-such-model-xyz'")
    assert not out.exists() or not any(out.iterdir())


def test_crosscoder_from_another_model(tmp_path, capsys):
    other = ReLUCrosscoder(CrosscoderConfig(default_hookpoints(2), d_model=48, n_features=8, model_name="other"))
    save_crosscoder(other, tmp_path / "cc")
    out = tmp_path / "o"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--quiet", "--crosscoder", str(tmp_path / "cc")]) == 2
    _one_error_line(capsys, "d_model=48")
    assert not out.exists() or not any(out.iterdir())


def test_output_path_is_a_file_via_console_script(tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    exe = os.path.join(os.path.dirname(sys.executable), "featgraph")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "featgraph.cli"]
    res = subprocess.run(cmd + ["demo", "--size", "tiny", "--out", str(target), "--quiet"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: output path") and "is a file" in lines[0], res.stderr
    assert target.read_text() == "keep me"
