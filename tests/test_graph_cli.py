"""featgraph graph build | communities | gates | prompt, on the tiny embedded model."""

import json

import pytest

from crosscoder.saelens import save_saelens
from featgraph.cli import main
from featgraph.export import read_graphml, read_json


@pytest.fixture(scope="module")
def tiny_crosscoders(tmp_path_factory, tiny_embedded):
    """One all-layer crosscoder and a stack of three per-layer SAEs (the middle one in SAELens's format)."""
    d = tmp_path_factory.mktemp("ccs")
    common = ["--size", "tiny", "--steps", "40", "--batch-size", "128", "--n-features", "32", "--quiet"]
    assert main(["crosscoder", "train", "--out", str(d / "all"), *common]) == 0
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for k, h in enumerate(hooks):
        assert main(["crosscoder", "train", "--out", str(d / f"sae{k}"), "--hookpoints", h, *common]) == 0
    from crosscoder.io import load_crosscoder

    save_saelens(load_crosscoder(d / "sae1"), d / "sae1_saelens")
    return d


def test_build_crosscoder_graph_and_communities(tmp_path, capsys, tiny_crosscoders):
    out = tmp_path / "g"
    assert main(["graph", "build", "--crosscoder", str(tiny_crosscoders / "all"), "--size", "tiny", "--rows", "40",
                 "--min-cocount", "2", "--out", str(out), "--quiet"]) == 0
    assert "coactivation graph" in capsys.readouterr().out
    g = read_json(out / "graph.json")
    assert g.n_nodes > 0 and "decoder_cosine" in g.edge_attrs and "span" in g.node_attrs
    assert read_graphml(out / "graph.graphml").node_ids == g.node_ids
    assert main(["graph", "communities", str(out / "graph.json"), "--objective", "cpm", "--resolution", "0.05",
                 "--sweep", "0.5,1,2", "--stability", "3"]) == 0
    printed = capsys.readouterr().out
    assert "stability over seeds" in printed and "community 0:" in printed
    report = json.loads((out / "communities.json").read_text())
    assert report["objective"] == "cpm" and len(report["sweep"]) == 3
    assert sum(c["size"] for c in report["communities"]) == g.n_nodes


def test_build_stack_graph_gates_and_prompt(tmp_path, capsys, tiny_crosscoders):
    out = tmp_path / "stack"
    args = ["graph", "build", "--size", "tiny", "--rows", "40", "--min-cocount", "2", "--out", str(out), "--quiet"]
    for name in ("sae0", "sae1_saelens", "sae2"):
        args += ["--crosscoder", str(tiny_crosscoders / name)]
    assert main(args) == 0
    g = read_json(out / "graph.json")
    assert g.meta["kind"] == "sae_stack" and all(i.startswith(("L0/", "L1/", "L2/")) for i in g.node_ids)
    layer = dict(zip(g.node_ids, g.node_attrs["layer"]))
    assert all(layer[g.node_ids[b]] == layer[g.node_ids[a]] + 1 for a, b in zip(g.edge_src, g.edge_dst))
    capsys.readouterr()
    assert main(["graph", "gates", str(out), "--tau", "0.3", "--min-count", "3"]) == 0
    printed = capsys.readouterr().out
    assert "pass_through" in printed and "AND gates" in printed
    assert main(["graph", "prompt", str(out), "--text", "Once upon a time, there was a little cat.", "--size", "tiny",
                 "--out", str(tmp_path / "p"), "--quiet"]) == 0
    pg = read_json(tmp_path / "p" / "graph.json")
    assert pg.meta["kind"] == "prompt" and 0 < pg.n_nodes <= g.n_nodes and set(pg.node_ids) <= set(g.node_ids)
    assert (tmp_path / "p" / "graph.html").is_file()


def test_gates_on_a_single_crosscoder_is_one_clear_line(tmp_path, capsys, tiny_crosscoders):
    out = tmp_path / "g"
    assert main(["graph", "build", "--crosscoder", str(tiny_crosscoders / "all"), "--size", "tiny", "--rows", "20",
                 "--min-cocount", "2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["graph", "gates", str(out)]) == 2
    assert "not a stack" in capsys.readouterr().err
