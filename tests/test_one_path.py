"""One path: the same options give the same graph from every entry point; your own text reaches the graph; the API."""

import json

import torch

import crosscoder
import featgraph as fg
from featgraph.cli import main
from featgraph.export import read_json


def _same_graph(a, b):
    assert a.node_ids == b.node_ids
    assert a.edge_src.tolist() == b.edge_src.tolist() and a.edge_dst.tolist() == b.edge_dst.tolist()
    assert list(a.node_attrs["community"]) == list(b.node_attrs["community"])
    assert [round(float(w), 5) for w in a.edge_attrs["pearson"]] == [round(float(w), 5) for w in b.edge_attrs["pearson"]]


def test_demo_cli_and_python_build_the_same_graph(tmp_path, capsys, tiny_embedded):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--quiet"]) == 0
    demo = read_json(out / "graph.json")
    # graph build starts from the model and data recorded in the crosscoder (the tiny embedded model and its rows)
    assert main(["graph", "build", "--crosscoder", str(out / "crosscoder"), "--out", str(tmp_path / "g"), "--min-cocount", "2",
                 "--rows", "40", "--quiet"]) == 0
    cli = read_json(tmp_path / "g" / "graph.json")
    inputs = fg.load_inputs(fg.ModelConfig("embedded", size="tiny"), fg.DataConfig())
    cc = fg.load_crosscoder(out / "crosscoder")
    rows = torch.cat([inputs.rows.val_NT, inputs.rows.train_NT])
    api, _ = fg.build_graph(cc, inputs.model, rows, fg.GraphConfig(min_cocount=2, rows=40))
    _same_graph(demo, cli)
    _same_graph(demo, api)
    assert "decoder_cosine" in demo.edge_attrs and "decoder_cosine" in cli.edge_attrs  # one builder, one set of edge measures
    assert demo.meta["options"] == cli.meta["options"] == api.meta["options"]


def test_own_jsonl_text_reaches_the_graph(tmp_path, capsys, tiny_embedded):
    words = ["zebra", "quartz", "violin", "harbour", "lantern", "meadow"]
    docs = [{"id": i, "body": f"The {words[i % 6]} and the {words[(i * 5 + 1) % 6]} sat by the {words[(i + 2) % 6]} at night {i}."}
            for i in range(400)]
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in docs))
    cc = tmp_path / "cc"
    assert main(["crosscoder", "train", "--size", "tiny", "--data", str(data), "--text-column", "body", "--context-size", "16",
                 "--n-features", "32", "--steps", "30", "--batch-size", "64", "--buffer-tokens", "512", "--eval-rows", "4",
                 "--out", str(cc), "--quiet"]) == 0
    meta = json.loads((cc / "cfg.json").read_text())["extra"]
    assert meta["data"]["data"] == str(data) and meta["data"]["text_column"] == "body" and "corpus.jsonl" in meta["data_source"]
    assert main(["graph", "build", "--crosscoder", str(cc), "--out", str(tmp_path / "g"), "--min-cocount", "1", "--rows", "60",
                 "--quiet"]) == 0
    graph = read_json(tmp_path / "g" / "graph.json")
    assert graph.meta["data_config"]["data"] == str(data)
    corpus = " ".join(d["body"] for d in docs)
    contexts = [c for ctxs in graph.node_attrs["top_contexts"] for c in ctxs]
    assert contexts
    for c in contexts:  # every context is a piece of this text (documents are joined by EOS; BOS starts each row)
        text = (c["left"] + c["token"]).replace("<|endoftext|>", " ").replace("<|bos|>", " ")
        assert all(piece.strip() in corpus for piece in text.split("  ") if piece.strip()), c
    assert any(w in c["left"] + c["token"] + c["right"] for c in contexts for w in words)


def test_public_api_names_resolve():
    for package in (fg, crosscoder):
        for name in package.__all__:
            assert getattr(package, name) is not None, name
    assert callable(fg.fit) and callable(crosscoder.fit) and fg.fit is crosscoder.fit
    assert fg.build_graph.__module__ == "featgraph.pipeline"


def test_later_commands_start_from_the_recorded_seed_and_none_overrides(tmp_path, capsys, tiny_embedded):
    cc = tmp_path / "cc1"
    assert main(["crosscoder", "train", "--size", "tiny", "--seed", "1", "--n-features", "16", "--steps", "5", "--batch-size", "64",
                 "--buffer-tokens", "256", "--eval-rows", "2", "--no-splice", "--out", str(cc), "--quiet"]) == 0
    assert json.loads((cc / "cfg.json").read_text())["extra"]["seed"] == 1
    assert main(["graph", "build", "--crosscoder", str(cc), "--out", str(tmp_path / "g"), "--min-cocount", "1", "--rows", "20",
                 "--top-k", "none", "--threshold", "0.05", "--quiet"]) == 0
    graph = read_json(tmp_path / "g" / "graph.json")
    assert "seed 1" in graph.meta["data_source"] and graph.meta["seed"] == 1  # the seed-1 embedded model, not seed 0's
    assert graph.meta["options"]["top_k"] is None and graph.meta["options"]["threshold"] == 0.05  # a typed none overrides


def test_a_broken_plugin_is_skipped_when_listing(caplog):
    from crosscoder.registry import Registry

    class Broken:
        name, value = "broken", "not_a_module_anywhere:thing"

        def load(self):
            raise ImportError("No module named 'not_a_module_anywhere'")

    reg = Registry("study", "featgraph.test-none")
    reg.register("good", 1)
    reg._points = {"broken": Broken()}
    assert list(reg.items()) == [("good", 1)] and "broken" in caplog.text
    try:
        reg.get("broken")
    except fg.FeatgraphError as e:
        assert "does not import" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("asking for a broken plug-in by name must say why")


def test_graph_measure_names_match_the_measures():
    from featgraph.measures import MEASURES
    from featgraph.options import MEASURE_NAMES

    assert sorted(MEASURE_NAMES) == sorted([*MEASURES, "decoder_cosine"])
