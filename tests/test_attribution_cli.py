"""Issue 17 end to end on a model and text of the user's own (a local random-weight GPT-2 checkpoint and a .txt file):
`crosscoder train --architecture clt` with the default CLT hookpoints, then `graph attribution` — the graph, its page,
the Neuronpedia file and attribution.json, supernodes, an explicit target, merged co-activation edges — and its
one-line errors. The run is reproducible from its seed."""

from __future__ import annotations

import json

import pytest

from conftest import build_word_tokenizer, tiny_gpt2_world
from featgraph.cli import main

PROMPT = "once upon a time there was a little girl named lily she liked to play in the park with her"


@pytest.fixture(scope="module")
def clt_world(tmp_path_factory):
    """A two-layer random-weight GPT-2 checkpoint, a text file and a CLT trained on it through the CLI."""
    root = tiny_gpt2_world(tmp_path_factory.mktemp("clt_user"))
    inputs = ["--model", root / "ckpt", "--data", root / "text.txt", "--context-size", "32", "--quiet"]
    code = main([str(a) for a in ["crosscoder", "train", *inputs, "--architecture", "clt", "--k", "6", "--n-features", "64",
                                  "--steps", "60", "--batch-size", "128", "--buffer-tokens", "2048", "--norm-tokens", "1000",
                                  "--eval-rows", "8", "--out", root / "clt"]])
    assert code == 0
    return root, inputs


def _run(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_clt_defaults_and_all_at_once_metric(clt_world):
    root, _ = clt_world
    meta = json.loads((root / "clt" / "cfg.json").read_text())
    cfg = meta["config"]
    assert cfg["layout"] == "clt" and cfg["architecture"] == "batchtopk"
    assert cfg["hookpoints"] == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
    assert cfg["out_hookpoints"] == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert meta["extra"]["metrics"]["ce_loss_recovered_all"] is not None


def test_attribution_command_writes_graph_page_and_exports(clt_world, tmp_path, capsys):
    from featgraph.export import read_json

    root, inputs = clt_world
    out = tmp_path / "attr"
    text = _run(["graph", "attribution", "--crosscoder", root / "clt", "--text", PROMPT, "--out", out, "--target", " her",
                 "--target", " dog", "--seed", "3", "--node-threshold", "0.99", *inputs], capsys)
    assert "replacement score" in text and "supernodes" in text
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["attribution.json", "graph.html", "graph.json", "graph.neuronpedia.json"]
    g = read_json(out / "graph.json")
    assert g.meta["kind"] == "attribution" and g.directed
    tok = build_word_tokenizer()
    want = {tok.convert_tokens_to_ids("her"), tok.convert_tokens_to_ids("dog")}
    logits = [i for i, k in enumerate(g.node_attrs["kind"]) if k == "logit"]
    assert {g.node_attrs["token"][i] for i in logits} == want  # the named targets, not the most likely tokens
    assert g.meta["prompt_tokens"][0] == "<bos>" and len(g.meta["prompt_tokens"]) == len(PROMPT.split()) + 1
    summary = json.loads((out / "attribution.json").read_text())
    assert 0 <= summary["replacement_score"] <= 1 and 0 <= summary["completeness_score"] <= 1
    assert set(summary["effects"]) == {g.node_ids[i] for i in logits}
    for effects in summary["effects"].values():
        assert sum(e["influence_share"] for e in effects) <= 1 + 1e-9
    feats = [i for i, k in enumerate(g.node_attrs["kind"]) if k == "feature"]
    assert feats and all(g.node_attrs["top_contexts"][i] is not None for i in feats)  # dashboards from the user's text
    page = (out / "graph.html").read_text()
    assert "lily" in page and "attribution" in page.lower()
    doc = json.loads((out / "graph.neuronpedia.json").read_text())
    assert len(doc["nodes"]) == g.n_nodes and doc["metadata"]["prompt_tokens"] == g.meta["prompt_tokens"]

    again = tmp_path / "again"
    _run(["graph", "attribution", "--crosscoder", root / "clt", "--text", PROMPT, "--out", again, "--target", " her",
          "--target", " dog", "--seed", "3", "--node-threshold", "0.99", *inputs], capsys)
    assert (again / "graph.json").read_text() == (out / "graph.json").read_text()  # one seed, one graph


def test_attribution_merges_a_coactivation_graph(clt_world, tmp_path, capsys):
    root, inputs = clt_world
    graph = tmp_path / "coact"
    _run(["graph", "build", "--crosscoder", root / "clt", "--out", graph, "--rows", "32", *inputs], capsys)
    out = tmp_path / "merged"
    _run(["graph", "attribution", "--crosscoder", root / "clt", "--text", PROMPT, "--out", out, "--graph", graph,
          "--node-threshold", "0.99", *inputs], capsys)
    from featgraph.export import read_json

    g = read_json(out / "graph.json")
    assert "merged_dataset_edges" in g.meta["supernodes"]
    feats = [i for i, k in enumerate(g.node_attrs["kind"]) if k == "feature"]
    assert all(g.node_attrs["top_contexts"][i] is not None for i in feats)


@pytest.mark.parametrize("extra, needle", [
    (["--text", "  "], "--text is empty"),
    (["--text", PROMPT, "--target", " once upon"], "2 tokens"),
    (["--text", PROMPT, "--node-threshold", "2"], "node_threshold"),
])
def test_bad_attribution_inputs_are_one_line(clt_world, tmp_path, capsys, extra, needle):
    root, inputs = clt_world
    code = main([str(a) for a in ["graph", "attribution", "--crosscoder", root / "clt", "--out", tmp_path / "x", *extra, *inputs]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1 and err.startswith("error:")
    assert not (tmp_path / "x").exists()


def test_a_graph_of_another_crosscoder_is_refused(clt_world, tmp_path, capsys):
    """Dashboards and edges of another dictionary's co-activation graph would be attached to the wrong features."""
    import shutil

    root, inputs = clt_world
    graph = tmp_path / "coact"
    _run(["graph", "build", "--crosscoder", root / "clt", "--out", graph, "--rows", "8", *inputs], capsys)
    shutil.copytree(root / "clt", tmp_path / "other")
    code = main([str(a) for a in ["graph", "attribution", "--crosscoder", tmp_path / "other", "--text", PROMPT, "--graph", graph,
                                  "--out", tmp_path / "z", *inputs]])
    err = capsys.readouterr().err
    assert code == 2 and "was built from" in err and err.count("\n") == 1 and not (tmp_path / "z").exists()


def test_a_crosscoder_that_is_not_a_clt_is_refused(clt_world, tmp_path, capsys):
    root, inputs = clt_world
    cc = tmp_path / "acausal"
    _run(["crosscoder", "train", *inputs, "--hookpoints", "blocks.0.hook_resid_post,blocks.1.hook_resid_post", "--n-features", "16",
          "--steps", "2", "--batch-size", "64", "--buffer-tokens", "1024", "--norm-tokens", "500", "--eval-rows", "2", "--out", cc], capsys)
    code = main([str(a) for a in ["graph", "attribution", "--crosscoder", cc, "--text", PROMPT, "--out", tmp_path / "y", *inputs]])
    err = capsys.readouterr().err
    assert code == 2 and "cross-layer transcoder" in err and err.count("\n") == 1
