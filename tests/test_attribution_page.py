"""The attribution-graph page (columns = positions, rows = layers, signed edges, supernodes, safe with any text), the
Neuronpedia export of attribution graphs in circuit-tracer's node conventions, and every other export format of an
attribution graph read back."""

import csv
import json
import math
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from test_browser import HOSTILE, DomSummary, chromium, run_chromium  # noqa: F401  (chromium is a fixture)
from test_export import CT_REQUIRED_METADATA, CT_REQUIRED_QPARAMS, NP_REQUIRED_LINK, NP_REQUIRED_METADATA, NP_REQUIRED_NODE, NP_REQUIRED_TOP, NP_TYPES, _is
from test_export import _viewer_layer_index, neuronpedia_problems

from crosscoder.errors import FeatgraphError
from featgraph import attribution_page as page_mod
from featgraph.attribution_page import KIND_STYLE, LEFT, MIN_COL, NEGATIVE, POSITIVE, write_attribution_html
from featgraph.export import PIN_LIMIT, cantor_pair, export_graph, read_gexf, read_graphml, read_json, write_neuronpedia
from featgraph.graph import FeatureGraph
from featgraph.labels import visible_token
from featgraph.supernodes import find_supernodes, planted_circuit


# ---- graphs ----------------------------------------------------------------------------------------------------------
def small_attribution(tokens=("<bos>", " the", " cat")) -> FeatureGraph:
    """A hand-built attribution graph over 3 positions and 2 layers: 3 embeddings, 4 features (three in cell
    (layer 0, position 2) with influences 0.5, 0.1, 0.3), one error node, two logits at the last position."""
    rows = [  # id, kind, layer, position, feature, token, activation, influence
        ("E@0", "embedding", -1, 0, None, 1, None, 0.9),
        ("E@1", "embedding", -1, 1, None, 7, None, 0.6),
        ("E@2", "embedding", -1, 2, None, 9, None, 0.2),
        ("L0/F5@2", "feature", 0, 2, 5, 9, 1.5, 0.5),
        ("L0/F7@2", "feature", 0, 2, 7, 9, 2.5, 0.1),
        ("L0/F9@2", "feature", 0, 2, 9, 9, 0.5, 0.3),
        ("L1/F3@1", "feature", 1, 1, 3, 7, 0.8, 0.7),
        ("L1/E@2", "error", 1, 2, None, 9, None, 0.75),
        ("logit/42", "logit", 2, 2, None, 42, 0.6, 1.0),
        ("logit/43", "logit", 2, 2, None, 43, 0.3, 1.0),
    ]
    ids = [r[0] for r in rows]
    cols = dict(zip(["kind", "layer", "position", "feature", "token", "activation", "influence"], map(list, list(zip(*rows))[1:])))
    cols["token_text"] = [tokens[r[3]] if r[1] != "logit" else {42: " sat", 43: " ran"}[r[5]] for r in rows]
    cols["label"] = [f"lbl {r[0]}" for r in rows]
    edges = [("E@2", "L0/F5@2", 0.8), ("E@2", "L0/F7@2", -1.2), ("E@1", "L1/F3@1", 0.4), ("L0/F7@2", "L1/F3@1", 0.3),
             ("L0/F7@2", "logit/42", 2.0), ("L0/F5@2", "logit/43", -0.5), ("L1/F3@1", "logit/42", 0.9), ("L1/E@2", "logit/42", 0.2),
             ("E@0", "L0/F9@2", 0.1), ("L0/F9@2", "logit/43", 0.25)]
    w = np.array([e[2] for e in edges])
    return FeatureGraph(ids, cols, np.array([ids.index(e[0]) for e in edges]), np.array([ids.index(e[1]) for e in edges]),
                        {"weight": w, "abs_weight": np.abs(w)}, directed=True,
                        meta={"kind": "attribution", "prompt_tokens": list(tokens), "prompt": "".join(tokens), "n_layers": 2,
                              "replacement_score": 0.75, "completeness_score": 0.875, "logit_tokens": [42, 43],
                              "logit_probabilities": [0.6, 0.3],
                              "attribution_config": {"max_logits": 10, "logit_probability": 0.95, "node_threshold": 0.8,
                                                     "edge_threshold": 0.98, "batch_size": 16, "zero_bos": True}})


def large_attribution(n_positions=20, n_layers=6, n_features=450, n_edges=5000, seed=0) -> FeatureGraph:
    """A random attribution graph of the size the page must handle (~500 nodes, 5,000 edges), edges upwards in
    layer and never back in position."""
    rng = np.random.default_rng(seed)
    rows = [(f"E@{p}", "embedding", -1, p, None) for p in range(n_positions)]
    for f in range(n_features):
        layer, p = int(rng.integers(0, n_layers)), int(rng.integers(1, n_positions))
        rows.append((f"L{layer}/F{f}@{p}", "feature", layer, p, f))
    rows += [(f"L{layer}/E@{p}", "error", layer, p, None) for layer in range(n_layers) for p in range(0, n_positions, 5)]
    rows += [(f"logit/{t}", "logit", n_layers, n_positions - 1, None) for t in range(10)]
    layer, pos = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    src, dst = rng.integers(0, len(rows), (2, 20 * n_edges))
    ok = (layer[src] < layer[dst]) & (pos[src] <= pos[dst])
    pairs = list(dict.fromkeys(zip(src[ok].tolist(), dst[ok].tolist())))[:n_edges]
    w = rng.standard_normal(len(pairs)) * rng.exponential(1.0, len(pairs))
    return FeatureGraph([r[0] for r in rows], {"kind": [r[1] for r in rows], "layer": layer.tolist(), "position": pos.tolist(),
                                                "feature": [r[4] for r in rows], "influence": rng.uniform(0, 0.8, len(rows)).tolist(),
                                                "token": [7] * len(rows), "activation": [1.0] * len(rows)},
                        np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]), {"weight": w, "abs_weight": np.abs(w)},
                        directed=True, meta={"kind": "attribution", "n_layers": n_layers, "prompt_tokens": [f"t{p}" for p in range(n_positions)]})


def page_data(path: Path) -> dict:
    """The JSON the page embeds (``var data = …;``), parsed."""
    m = re.search(r"var data = (.*?);\n", path.read_text(encoding="utf-8"))
    assert m is not None
    return json.loads(m.group(1))


TOKEN_TEXTS = ["<b>", " &", "\n", '"', " the", "</script>"]


@pytest.fixture(scope="module")
def real_graph():
    """A real pruned attribution graph, made as the sample script makes one but in a few seconds: a random-weight
    2-layer TransformerLens model of the tiny embedded model's shape (training that model takes minutes on a busy
    machine), a CLT trained on it for 100 steps, a 12-token prompt; token texts include markup."""
    import warnings

    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from crosscoder.build import build_crosscoder
    from crosscoder.config import CrosscoderConfig, TrainConfig
    from crosscoder.harvest import ActivationBuffer, estimate_norm_scales
    from crosscoder.train import train_crosscoder
    from featgraph.attribution import attribution_graph

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32,
                                                              d_vocab=320, act_fn="gelu", normalization_type="LN", seed=0)).eval()
        rows = torch.randint(0, 320, (64, 32), generator=torch.Generator().manual_seed(0))
        hooks = [f"blocks.{l}.hook_resid_mid" for l in range(2)]
        cfg = CrosscoderConfig(hooks, 32, 64, out_hookpoints=[f"blocks.{l}.hook_mlp_out" for l in range(2)], architecture="relu", layout="clt")
        cc = build_crosscoder(cfg)
        cc.norm_scale_L.copy_(estimate_norm_scales(model, rows, cfg.all_hookpoints))
        buf = ActivationBuffer(model, rows, cfg.all_hookpoints, cc.norm_scale_L, batch_size=128, n_buffer_tokens=1024, seed=1)
        train_crosscoder(cc, buf, TrainConfig(steps=100, batch_size=128, lr=3e-3, l1_coeff=1.0), progress=False)
        g = attribution_graph(model, cc, rows[0, :12], batch_size=32)
        fg = g.to_feature_graph(lambda i: TOKEN_TEXTS[i % len(TOKEN_TEXTS)] + str(i))
    finally:
        torch.set_num_threads(before)
    assert {"feature", "error", "embedding", "logit"} <= set(fg.node_attrs["kind"])  # every kind, so the tests below bite
    return fg


# ---- the page ----------------------------------------------------------------------------------------------------------
def test_grid_layout_follows_positions_and_layers(tmp_path):
    g = small_attribution()
    d = page_data(write_attribution_html(g, tmp_path / "a.html"))
    nodes = {n["id"]: n for n in d["nodes"]}
    assert d["row_labels"] == ["Emb", "L0", "L1", "Logit"] and d["tokens"] == ['"<bos>"', '" the"', '" cat"']
    cols, rows = d["columns"], d["rows"]
    assert all(a[1] == b[0] for a, b in zip(cols, cols[1:]))  # columns abut, left to right by position
    assert all(a[0] == b[1] for a, b in zip(rows, rows[1:]))  # row r+1 sits right above row r
    for n in d["nodes"]:
        x0, x1 = cols[n["pos"]]
        y0, y1 = rows[n["layer"] + 1]
        assert x0 < n["x"] < x1 and y0 < n["y"] < y1, n
    ys = {k: [n["y"] for n in d["nodes"] if n["kind"] == k] for k in ("embedding", "feature", "error", "logit")}
    assert max(ys["logit"]) < min(ys["feature"] + ys["error"]) and max(ys["feature"] + ys["error"]) < min(ys["embedding"])
    assert nodes["L1/F3@1"]["y"] < nodes["L0/F7@2"]["y"]  # layer 1 above layer 0
    # hand-computed: position 0 holds one node per cell, so its column is MIN_COL wide and E@0 sits in its middle
    assert cols[0] == [LEFT, LEFT + MIN_COL] and nodes["E@0"]["x"] == LEFT + MIN_COL / 2
    # one cell (layer 0, position 2): most influential first (F7 0.1, F9 0.3, F5 0.5), NODE_GAP apart, on one line
    xs = [nodes[i]["x"] for i in ("L0/F7@2", "L0/F9@2", "L0/F5@2")]
    assert xs == sorted(xs) and np.allclose(np.diff(xs), page_mod.NODE_GAP) and len({nodes[i]["y"] for i in nodes if "L0/F" in i}) == 1
    assert np.mean(xs) == pytest.approx(sum(cols[2]) / 2)  # centred in the cell
    # the logits sit side by side in their cell, the more likely first
    assert nodes["logit/42"]["x"] < nodes["logit/43"]["x"] and nodes["logit/42"]["y"] == nodes["logit/43"]["y"]


def test_crowded_cells_wrap_and_widen_their_column(tmp_path):
    n = 2 * page_mod.PER_LINE + 3  # three lines in one cell
    ids = [f"L0/F{i}@1" for i in range(n)] + ["E@0", "E@1"]
    g = FeatureGraph(ids, {"kind": ["feature"] * n + ["embedding"] * 2, "layer": [0] * n + [-1, -1], "position": [1] * n + [0, 1],
                           "influence": np.linspace(0.1, 0.9, n).tolist() + [0.5, 0.5]},
                     meta={"kind": "attribution", "n_layers": 1, "prompt_tokens": ["a", "b"]})
    d = page_data(write_attribution_html(g, tmp_path / "c.html"))
    feats = [x for x in d["nodes"] if x["kind"] == "feature"]
    assert len({round(x["y"], 3) for x in feats}) == 3 and len({(x["x"], x["y"]) for x in feats}) == n  # no two overlap
    c1 = d["columns"][1]
    assert c1[1] - c1[0] == page_mod.PER_LINE * page_mod.NODE_GAP + 2 * page_mod.CELL_PAD
    r1 = d["rows"][1]
    assert r1[1] - r1[0] == 3 * page_mod.NODE_GAP + 2 * page_mod.CELL_PAD
    first_line = [x for x in feats if x["y"] == min(f["y"] for f in feats)]
    assert sorted(x["id"] for x in first_line) == sorted(ids[: page_mod.PER_LINE])  # the most influential on the first line


def test_page_summary_edges_and_kinds(tmp_path, monkeypatch):
    g = small_attribution()
    d = page_data(write_attribution_html(g, tmp_path / "a.html", title="cat"))
    assert d["title"] == "cat" and d["n_nodes"] == 10 and d["n_edges"] == 10 and d["supernodes"] == []
    assert d["kind_counts"] == {"feature": 4, "error": 1, "embedding": 3, "logit": 2}
    assert d["replacement_score"] == 0.75 and d["completeness_score"] == 0.875
    assert d["logits"] == [{"token": '" sat"', "p": 0.6}, {"token": '" ran"', "p": 0.3}]
    # edges: every graph edge once, directed, signed, weakest first (drawn under the strong ones)
    e = d["edges"]
    got = sorted((d["nodes"][s]["id"], d["nodes"][t]["id"], w) for s, t, w in zip(e["src"], e["dst"], e["w"]))
    assert got == sorted((g.node_ids[s], g.node_ids[t], w) for s, t, w in zip(g.edge_src, g.edge_dst, g.weights))
    assert [abs(w) for w in e["w"]] == sorted(abs(w) for w in e["w"]) and d["max_abs_weight"] == 2.0
    assert d["initial_hidden_share"] == 0.0 and (d["positive"], d["negative"]) == (POSITIVE, NEGATIVE)
    colors = {n["kind"]: n["color"] for n in d["nodes"]}
    assert colors == {k: KIND_STYLE[k]["color"] for k in KIND_STYLE}  # no supernodes: colour by kind
    monkeypatch.setattr(page_mod, "DEFAULT_SHOWN_EDGES", 4)
    assert page_data(write_attribution_html(g, tmp_path / "b.html"))["initial_hidden_share"] == 0.6  # opens on the 4 strongest


def test_supernodes_colour_and_legend(tmp_path):
    g, truth = planted_circuit(n_modules=3, n_layers=3, per_cell=2, n_positions=4, seed=1)
    res = find_supernodes(g)
    d = page_data(write_attribution_html(g, tmp_path / "p.html"))
    assert len(d["supernodes"]) == len(res.sizes) == 3
    for sn in d["supernodes"]:
        members = {d["nodes"][i]["id"] for i in sn["members"]}
        assert members == {nid for nid, c in zip(g.node_ids, g.node_attrs["community"]) if c == sn["id"]}
        assert sn["size"] == len(members) and sn["label"] == g.meta["community_labels"][str(sn["id"])]
        assert all(d["nodes"][i]["color"] == sn["color"] and d["nodes"][i]["community"] == sn["id"] for i in sn["members"])
        infl = [g.node_attrs["influence"][g.index(d["nodes"][i]["id"])] for i in sn["members"]]
        assert infl == sorted(infl)  # most influential first
    assert len({sn["color"] for sn in d["supernodes"]}) == 3
    # a planted module = one supernode (up to relabelling)
    by_module = {}
    for nid, m in zip(g.node_ids, truth):
        if m >= 0:
            by_module.setdefault(int(m), set()).add(g.node_attrs["community"][g.index(nid)])
    assert all(len(s) == 1 for s in by_module.values()) and len({next(iter(s)) for s in by_module.values()}) == 3
    assert {n["color"] for n in d["nodes"] if n["kind"] == "embedding"} == {KIND_STYLE["embedding"]["color"]}


def test_dashboards_reach_the_panel(tmp_path):
    g = small_attribution()
    i = g.index("L0/F7@2")
    g.set_node_attr("top_contexts", [[{"left": "a", "token": " cat", "right": "!", "act": 2.0}] if k == i else None for k in range(g.n_nodes)])
    g.set_node_attr("top_logits", [[[" sat", 1.5]] if k == i else None for k in range(g.n_nodes)])
    g.set_node_attr("act_histogram", [{"edges": [0.0, 1.0, 2.0], "counts": [3, 1]} if k == i else None for k in range(g.n_nodes)])
    g.set_node_attr("max_act", [4.0 if k == i else None for k in range(g.n_nodes)])
    d = page_data(write_attribution_html(g, tmp_path / "d.html"))
    assert set(d["dashboards"]) == {str(i)}
    dash = d["dashboards"][str(i)]
    assert dash["top_contexts"][0]["token"] == " cat" and dash["top_logits"] == [[" sat", 1.5]]
    assert dash["act_histogram"]["counts"] == [3, 1] and dash["max_act"] == 4.0


def test_hostile_text_stays_data(tmp_path):
    nasty = ["</script><script>document.title='pwned'</script>", "<img src=x onerror=alert(1)>", "\"'&<>", "\x00\x1b\x07",
             "\ud800", "\u2028\u2029"]
    g = small_attribution(tokens=tuple(nasty[:3]))
    g.set_node_attr("label", [nasty[k % len(nasty)] for k in range(g.n_nodes)])
    g.set_node_attr("token_text", [nasty[k % len(nasty)] for k in range(g.n_nodes)])
    g.set_node_attr("community", [0 if k in (3, 4) else None for k in range(g.n_nodes)])
    g.meta["community_labels"] = {"0": nasty[1]}
    g.meta["prompt"] = "".join(nasty)
    path = write_attribution_html(g, tmp_path / "h.html", title=nasty[0] + nasty[3] + nasty[4])
    html = path.read_text(encoding="utf-8")  # valid UTF-8 although a lone surrogate went in
    assert "<img" not in html
    assert html.count("<script") == html.count("</script") == 2  # the page's own two scripts, none from the data
    assert "document.title='pwned'" not in html  # ' and < are escaped inside the JSON
    title = re.search(r"<title>(.*)</title>", html).group(1)
    assert "<" not in title and "&lt;/script&gt;" in title and "\ud800" not in title and "\x00" not in title
    d = page_data(path)
    assert d["title"] == nasty[0] + nasty[3] + "\ufffd"
    assert [n["label"] for n in d["nodes"]] == [nasty[k % len(nasty)].replace("\ud800", "\ufffd") for k in range(g.n_nodes)]
    assert d["tokens"] == [visible_token(t) for t in nasty[:3]] and d["supernodes"][0]["label"] == nasty[1]
    assert d["nodes"][3]["token"] == visible_token(nasty[3]) == '"\\x00\\x1b\\x07"'  # control characters visible
    assert d["nodes"][4]["token"] == '"\\ud800"'


def test_not_an_attribution_graph(tmp_path):
    g = small_attribution()
    for meta, attrs, match in [({"kind": "coactivation"}, {}, "not an attribution graph"),
                               ({}, {"layer": None}, "no node attribute 'layer'"),
                               ({}, {"position": [0.5] * 10}, "integer position"),
                               ({}, {"kind": ["feature"] * 9 + ["neuron"]}, "kind 'neuron'"),
                               ({}, {"layer": [-1] * 9 + [7]}, "outside the graph's layers")]:
        attrs_ = {k: v for k, v in {**g.node_attrs, **attrs}.items() if v is not None}
        bad = FeatureGraph(g.node_ids, attrs_, g.edge_src, g.edge_dst, g.edge_attrs, directed=True, meta={**g.meta, **meta})
        with pytest.raises(FeatgraphError, match=match) as err:
            write_attribution_html(bad, tmp_path / "x.html")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "x.html").exists()
    plain = FeatureGraph(["F0"], {"layer": [0], "position": [0]})
    with pytest.raises(FeatgraphError, match="not an attribution graph"):
        write_attribution_html(plain, tmp_path / "x.html")


def test_a_large_graph_page(tmp_path):
    """~500 nodes and 5,000 edges: written in well under a second, a few hundred kB, no two nodes on one spot, and the
    page opens on the DEFAULT_SHOWN_EDGES strongest edges."""
    import time

    g = large_attribution()
    find_supernodes(g)
    assert g.n_nodes == 504 and g.n_edges == 5000
    start = time.perf_counter()
    path = write_attribution_html(g, tmp_path / "big.html")
    assert time.perf_counter() - start < 5.0 and path.stat().st_size < 1_000_000
    d = page_data(path)
    assert len({(n["x"], n["y"]) for n in d["nodes"]}) == g.n_nodes
    assert d["initial_hidden_share"] == 1 - page_mod.DEFAULT_SHOWN_EDGES / 5000 and len(d["supernodes"]) >= 2


def test_page_in_a_browser(chromium, tmp_path):  # noqa: F811
    """Headless Chromium: the page draws every node and edge, nothing from the hostile data runs or becomes an
    element, and #<id> selects a node, keeps its neighbourhood and dims the rest."""
    g = small_attribution(tokens=tuple(HOSTILE[:3]))
    g.set_node_attr("label", [HOSTILE[k % len(HOSTILE)] for k in range(g.n_nodes)])
    find_supernodes(g)
    path = write_attribution_html(g, tmp_path / "b.html", title=HOSTILE[1])
    url = path.resolve().as_uri() + "#" + "L0%2FF7%402"
    dom = DomSummary(run_chromium(chromium, tmp_path, url, "--dump-dom").stdout)
    if dom.body.get("data-ready") != "1":
        dom = DomSummary(run_chromium(chromium, tmp_path, url, "--dump-dom", "--virtual-time-budget=20000").stdout)
    assert dom.body.get("data-ready") == "1" and json.loads(dom.body["data-errors"]) == []
    assert (int(dom.body["data-nodes-drawn"]), int(dom.body["data-edges-drawn"]), int(dom.body["data-edges-shown"])) == (10, 10, 10)
    assert dom.title != "pwned" and dom.body.get("data-selected") == "L0/F7@2"
    # F7's neighbourhood: itself, E@2 (in), L1/F3@1 and logit/42 (out): 4 kept, 6 dimmed
    assert dom.body.get("data-dimmed") == "6"
    tags = [t for t, _ in dom.tags]
    assert "img" not in tags and "iframe" not in tags and tags.count("script") == 2
    assert [(t, k) for t, attrs in dom.tags for k in attrs if k.startswith("on")] == []
    assert dom.text_by_id["prompt"] == visible_token("".join(HOSTILE[:3]))
    # the size it must stay usable at: every node and edge drawn, the strongest half shown, no error
    big = write_attribution_html(large_attribution(), tmp_path / "big.html")
    dom = DomSummary(run_chromium(chromium, tmp_path, big.resolve().as_uri(), "--dump-dom").stdout)
    assert dom.body.get("data-ready") == "1" and json.loads(dom.body["data-errors"]) == []
    assert (dom.body["data-nodes-drawn"], dom.body["data-edges-drawn"], dom.body["data-edges-shown"]) == ("504", "5000", "2500")


def test_real_graph_page(real_graph, tmp_path):
    g = real_graph
    d = page_data(write_attribution_html(g, tmp_path / "r.html"))
    assert len(d["nodes"]) == g.n_nodes and len(d["edges"]["src"]) == g.n_edges
    assert d["tokens"] == [visible_token(t) for t in g.meta["prompt_tokens"]]
    for n, layer, pos in zip(d["nodes"], g.node_attrs["layer"], g.node_attrs["position"]):
        assert (n["layer"], n["pos"]) == (layer, pos)
        assert d["columns"][pos][0] < n["x"] < d["columns"][pos][1] and d["rows"][layer + 1][0] < n["y"] < d["rows"][layer + 1][1]
    top = min(n["y"] for n in d["nodes"])
    assert {n["kind"] for n in d["nodes"] if n["y"] == top} == {"logit"}
    assert all(n["pos"] == len(g.meta["prompt_tokens"]) - 1 for n in d["nodes"] if n["kind"] == "logit")
    assert d["logits"][0]["p"] == pytest.approx(max(g.meta["logit_probabilities"]), rel=1e-6)


# ---- Neuronpedia -------------------------------------------------------------------------------------------------------
CT_NODE_FIELDS = ["node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
                  "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"]
"""circuit-tracer's ``Node`` (frontend/graph_models.py), every field (pydantic writes the defaults too)."""


def attribution_problems(doc: dict, n_layers: int) -> list[str]:
    """Neuronpedia's schema (required lists and types, from test_export) plus circuit-tracer's node conventions per
    feature_type; empty = valid. Feature nodes together with the links among them must also pass test_export's
    whole check (what the viewer decodes from ``feature`` is what node_id says), less its jsNodeId uniqueness:
    circuit-tracer gives one feature's nodes at several positions one jsNodeId."""
    out = []

    def check(obj, where, required, types):
        out.extend(f"{where} lacks {k!r}" for k in required if k not in obj)
        for k, t in types.items():
            if k in obj and not any(_is(obj[k], tt) for tt in ((t,) if isinstance(t, str) else t)):
                out.append(f"{where}.{k} = {obj[k]!r} is not {t}")

    check(doc, "graph", NP_REQUIRED_TOP, {})
    check(doc["metadata"], "metadata", NP_REQUIRED_METADATA + CT_REQUIRED_METADATA, NP_TYPES["metadata"])
    check(doc["qParams"], "qParams", CT_REQUIRED_QPARAMS, NP_TYPES["qParams"])
    n_tokens = len(doc["metadata"]["prompt_tokens"])
    ids = [n["node_id"] for n in doc["nodes"]]
    if len(set(ids)) != len(ids):
        out.append("node_id values repeat")
    patterns = {"cross layer transcoder": r"(\d+)_(\d+)_(\d+)", "mlp reconstruction error": r"(\d+)_-1_(\d+)",
                "embedding": r"E_(\d+)_(\d+)", "logit": r"(\d+)_(\d+)_(\d+)"}
    for i, n in enumerate(doc["nodes"]):
        check(n, f"nodes[{i}]", NP_REQUIRED_NODE + CT_NODE_FIELDS, NP_TYPES["node"])
        if not _is(n.get("feature"), "integer") or not isinstance(n.get("layer"), str):  # circuit-tracer: feature int, layer str
            out.append(f"nodes[{i}] feature/layer are not int/str")
        t = n["feature_type"]
        m = re.fullmatch(patterns.get(t, "^$"), n["node_id"])
        if m is None:
            out.append(f"nodes[{i}] {t!r} node_id {n['node_id']!r} is not circuit-tracer's")
            continue
        g = list(map(int, m.groups()))
        if not 0 <= n["ctx_idx"] < n_tokens or n["ctx_idx"] != g[-1]:
            out.append(f"nodes[{i}] ctx_idx {n['ctx_idx']} disagrees with node_id or the prompt")
        expect = {"cross layer transcoder": lambda: (str(g[0]), cantor_pair(g[0], g[1]), f"{g[0]}_{g[1]}-0"),
                  "mlp reconstruction error": lambda: (str(g[0]), -1, f"{g[0]}_{g[1]}-0"),
                  "embedding": lambda: ("E", g[1], f"E_{g[0]}-{g[1]}"),
                  "logit": lambda: (str(n_layers + 1), g[1], f"L_{g[1]}-{g[2]}")}[t]()
        if (n["layer"], n["feature"], n["jsNodeId"]) != expect:
            out.append(f"nodes[{i}] layer/feature/jsNodeId {(n['layer'], n['feature'], n['jsNodeId'])} != {expect}")
        if t == "cross layer transcoder" and _viewer_layer_index(n["feature"]) != (g[0], g[1]):
            out.append(f"nodes[{i}].feature decodes to {_viewer_layer_index(n['feature'])}")
        if t == "logit" and (g[0] != n_layers + 1 or not re.fullmatch(r'Output ".*" \(p=\d\.\d{3}\)', n["clerp"], re.S)):
            out.append(f"nodes[{i}] logit layer or clerp {n['clerp']!r} is not circuit-tracer's")
    known = set(ids)
    for i, e in enumerate(doc["links"]):
        check(e, f"links[{i}]", NP_REQUIRED_LINK, NP_TYPES["link"])
        if e["source"] not in known or e["target"] not in known or not math.isfinite(e["weight"]):
            out.append(f"links[{i}] names an unknown node or is not finite")
    feats = {n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"}
    sub = {**doc, "nodes": [n for n in doc["nodes"] if n["node_id"] in feats],
           "links": [e for e in doc["links"] if e["source"] in feats and e["target"] in feats],
           "qParams": {**doc["qParams"], "pinnedIds": [p for p in doc["qParams"]["pinnedIds"] if p in feats], "clickedId": ""}}
    out.extend(p for p in neuronpedia_problems(sub) if p != "jsNodeId values repeat")
    q = doc["qParams"]
    pinned = q["pinnedIds"]
    if len(set(pinned)) != len(pinned) or not set(pinned) <= known or len(pinned) > PIN_LIMIT or (q["clickedId"] and q["clickedId"] not in known):
        out.append("qParams pins or clicks unknown or repeated nodes, or too many")
    members = [m for sn in q["supernodes"] for m in sn[1:]]
    names = [sn[0] for sn in q["supernodes"]]
    if not set(members) <= set(pinned) or len(set(members)) != len(members) or len(set(names)) != len(names) or set(names) & known:
        out.append("supernodes are not [unique name, pinned node ids…] over distinct nodes")
    return out


def test_attribution_problems_can_fail():
    good = {"metadata": {"slug": "s", "scan": "m", "prompt_tokens": ["a", "b"], "prompt": "ab", "transcoder_list": []},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": [{"node_id": "0_3_1", "feature": cantor_pair(0, 3), "layer": "0", "ctx_idx": 1, "feature_type": "cross layer transcoder",
                       "jsNodeId": "0_3-0", "clerp": "", "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                       "influence": 0.1, "activation": 1.0},
                      {"node_id": "E_5_0", "feature": 0, "layer": "E", "ctx_idx": 0, "feature_type": "embedding", "jsNodeId": "E_5-0",
                       "clerp": "", "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "influence": 0.2,
                       "activation": None}],
            "links": [{"source": "E_5_0", "target": "0_3_1", "weight": 0.5}]}
    assert attribution_problems(good, 1) == []
    bad = json.loads(json.dumps(good))
    bad["nodes"][1]["node_id"] = "0_5_0"  # an embedding with a feature's id
    bad["nodes"][0]["feature"] = 3        # not the Cantor value
    bad["links"][0]["source"] = "E_9_9"
    problems = attribution_problems(bad, 1)
    assert any("'embedding' node_id '0_5_0'" in p for p in problems) and any("nodes[0] layer/feature/jsNodeId" in p for p in problems)
    assert any("links[0] names an unknown node" in p for p in problems)


def test_neuronpedia_attribution_conventions(tmp_path):
    g = small_attribution()
    doc = json.loads(write_neuronpedia(g, tmp_path / "a.json").read_text())
    assert attribution_problems(doc, n_layers=2) == []
    assert len(doc["nodes"]) == g.n_nodes and len(doc["links"]) == g.n_edges
    by = {n["featgraph_id"]: n for n in doc["nodes"]}
    assert {t: sum(n["feature_type"] == t for n in doc["nodes"]) for t in ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")} \
        == {"cross layer transcoder": 4, "mlp reconstruction error": 1, "embedding": 3, "logit": 2}
    f7 = {"node_id": "0_7_2", "feature": cantor_pair(0, 7), "layer": "0", "ctx_idx": 2, "feature_type": "cross layer transcoder",
          "jsNodeId": "0_7-0", "clerp": "lbl L0/F7@2", "influence": 0.1, "activation": 2.5}
    assert {k: by["L0/F7@2"][k] for k in f7} == f7
    assert (by["L1/E@2"]["node_id"], by["L1/E@2"]["feature"], by["L1/E@2"]["layer"], by["L1/E@2"]["jsNodeId"]) == ("1_-1_2", -1, "1", "1_2-0")
    assert (by["E@1"]["node_id"], by["E@1"]["feature"], by["E@1"]["layer"], by["E@1"]["jsNodeId"]) == ("E_7_1", 1, "E", "E_7-1")
    lg = by["logit/42"]
    assert (lg["node_id"], lg["layer"], lg["feature"], lg["jsNodeId"], lg["ctx_idx"]) == ("3_42_2", "3", 42, "L_42-2", 2)
    assert lg["is_target_logit"] and not by["logit/43"]["is_target_logit"] and lg["token_prob"] == 0.6
    assert lg["clerp"] == 'Output " sat" (p=0.600)' and by["logit/43"]["clerp"] == 'Output " ran" (p=0.300)'
    assert [n["ctx_idx"] for n in doc["nodes"]] == g.node_attrs["position"]
    assert [n["influence"] for n in doc["nodes"]] == g.node_attrs["influence"]
    # links: directed as in the graph, signed weights as they are
    links = {(e["source"], e["target"]): e["weight"] for e in doc["links"]}
    assert links == {(doc["nodes"][s]["node_id"], doc["nodes"][t]["node_id"]): w for s, t, w in zip(g.edge_src, g.edge_dst, g.weights)}
    assert links[("0_7_2", "3_42_2")] == 2.0 and links[("E_9_2", "0_7_2")] == -1.2
    md, q = doc["metadata"], doc["qParams"]
    assert md["prompt_tokens"] == ["<bos>", " the", " cat"] and md["prompt"] == "<bos> the cat" and md["schema_version"] == 1
    assert md["node_threshold"] == 0.8 and md["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert md["generation_settings"] == {"max_n_logits": 10, "desired_logit_prob": 0.95, "batch_size": 16}
    assert q["pinnedIds"][:2] == ["3_42_2", "3_43_2"] and q["clickedId"] == "3_42_2" and q["supernodes"] == []
    assert q["pinnedIds"][2] == "0_7_2"  # then the most influential nodes (F7: 0.1)


def test_neuronpedia_attribution_supernodes(tmp_path):
    g, _ = planted_circuit(n_modules=3, n_layers=3, per_cell=2, n_positions=4, seed=1)
    find_supernodes(g)
    doc = json.loads(write_neuronpedia(g, tmp_path / "p.json", per_community=6).read_text())
    assert attribution_problems(doc, n_layers=3) == []
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    names = {sn[0] for sn in doc["qParams"]["supernodes"]}
    assert names == set(g.meta["community_labels"].values()) and len(names) == 3
    for sn in doc["qParams"]["supernodes"]:
        comm = {by_id[m]["community"] for m in sn[1:]}
        assert len(comm) == 1 and len(sn) - 1 == sum(c == next(iter(comm)) for c in g.node_attrs["community"])  # all 6 members
        assert all(by_id[m]["feature_type"] == "cross layer transcoder" for m in sn[1:])
    assert doc["qParams"]["clickedId"] == by_id[doc["qParams"]["pinnedIds"][0]]["node_id"] and by_id[doc["qParams"]["clickedId"]]["feature_type"] == "logit"


def test_neuronpedia_attribution_bad_graphs(tmp_path):
    g = small_attribution()
    nofeat = FeatureGraph(g.node_ids, {**g.node_attrs, "feature": [None] * g.n_nodes}, g.edge_src, g.edge_dst, g.edge_attrs,
                          directed=True, meta=g.meta)
    with pytest.raises(FeatgraphError, match="feature node 'L0/F5@2' has feature None"):
        write_neuronpedia(nofeat, tmp_path / "x.json")
    with pytest.raises(FeatgraphError, match="pass the prompt_tokens"):
        write_neuronpedia(g, tmp_path / "x.json", prompt_tokens=["a", "b"])
    dup = FeatureGraph(g.node_ids, {**g.node_attrs, "feature": [None, None, None, 5, 5, 9, 3, None, None, None]}, g.edge_src,
                       g.edge_dst, g.edge_attrs, directed=True, meta=g.meta)
    with pytest.raises(FeatgraphError, match="both map to Neuronpedia node '0_5_2'"):
        write_neuronpedia(dup, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_neuronpedia_real_graph(real_graph, tmp_path):
    g = FeatureGraph(list(real_graph.node_ids), dict(real_graph.node_attrs), real_graph.edge_src, real_graph.edge_dst,
                     dict(real_graph.edge_attrs), directed=True, meta=dict(real_graph.meta))  # the fixture stays as built
    find_supernodes(g, min_size=2)
    doc = json.loads(write_neuronpedia(g, tmp_path / "r.json").read_text())
    assert attribution_problems(doc, n_layers=g.meta["n_layers"]) == []
    assert doc["metadata"]["prompt_tokens"] == g.meta["prompt_tokens"] and len(doc["nodes"]) == g.n_nodes
    kinds = {"feature": "cross layer transcoder", "error": "mlp reconstruction error", "embedding": "embedding", "logit": "logit"}
    assert [n["feature_type"] for n in doc["nodes"]] == [kinds[k] for k in g.node_attrs["kind"]]
    assert [n["ctx_idx"] for n in doc["nodes"]] == g.node_attrs["position"]
    pos = {n["node_id"]: n["ctx_idx"] for n in doc["nodes"]}
    assert all(pos[e["source"]] <= pos[e["target"]] for e in doc["links"])  # causal: edges never point back in the prompt
    assert sum(n["is_target_logit"] for n in doc["nodes"]) == 1
    n_comm = len({c for c in g.node_attrs["community"] if c is not None})
    assert len(doc["qParams"]["supernodes"]) == n_comm


# ---- the other formats -------------------------------------------------------------------------------------------------
def _same(back: FeatureGraph, g: FeatureGraph, attrs=("kind", "layer", "position", "feature", "token", "community", "label")):
    assert back.node_ids == g.node_ids and back.directed
    order = {(s, t): k for k, (s, t) in enumerate(zip(back.edge_src.tolist(), back.edge_dst.tolist()))}
    assert len(order) == g.n_edges
    k = [order[(s, t)] for s, t in zip(g.edge_src.tolist(), g.edge_dst.tolist())]  # same directed edges
    np.testing.assert_allclose(back.weights[k], g.weights)  # signed
    for a in attrs:
        assert list(back.node_attrs[a]) == list(g.node_attrs[a]), a  # mixed None / int columns come back as they were


@pytest.mark.parametrize("fmt", ["graphml", "gexf", "json", "cytoscape", "csv"])
def test_other_formats_round_trip(tmp_path, fmt):
    g = small_attribution(tokens=("<bos>", " a\n", "\ud800"))
    g.set_node_attr("community", [None, None, None, 0, 0, 1, 1, None, None, None])
    g.meta["community_labels"] = {"0": "first", "1": "second"}
    out = export_graph(g, fmt, tmp_path / f"g.{fmt}")
    if fmt in ("graphml", "gexf", "json"):
        back = {"graphml": read_graphml, "gexf": read_gexf, "json": read_json}[fmt](out)
        _same(back, g)
        assert back.meta["kind"] == "attribution" and back.meta["n_layers"] == 2
        if fmt == "json":
            assert back.meta["prompt_tokens"] == list(g.meta["prompt_tokens"])  # exact, the lone surrogate too
            assert back.node_attrs["activation"] == g.node_attrs["activation"]
    elif fmt == "cytoscape":
        cy = nx.cytoscape_graph(json.loads(out.read_text()))
        assert cy.is_directed() and cy.number_of_nodes() == g.n_nodes
        by = {d["featgraph_id"]: d for _, d in cy.nodes(data=True)}
        assert by["L0/F7@2"]["feature"] == 7 and by["E@0"]["feature"] is None and by["L0/F7@2"]["community"] == 0
        ids = {d["featgraph_id"]: n for n, d in cy.nodes(data=True)}
        assert cy.edges[ids["E@2"], ids["L0/F7@2"]]["weight"] == -1.2 and not cy.has_edge(ids["L0/F7@2"], ids["E@2"])
    else:
        nodes = list(csv.DictReader(open(out / "nodes.csv", encoding="utf-8")))
        edges = list(csv.DictReader(open(out / "edges.csv", encoding="utf-8")))
        assert [n["id"] for n in nodes] == g.node_ids and [n["feature"] for n in nodes][3:5] == ["5", "7"] and nodes[0]["feature"] == ""
        assert [(e["source"], e["target"], float(e["weight"])) for e in edges] == \
            [(g.node_ids[s], g.node_ids[t], w) for s, t, w in zip(g.edge_src, g.edge_dst, g.weights)]


def test_real_graph_round_trips(real_graph, tmp_path):
    g = real_graph
    for fmt, read in (("graphml", read_graphml), ("gexf", read_gexf), ("json", read_json)):
        back = read(export_graph(g, fmt, tmp_path / f"g.{fmt}"))
        _same(back, g, attrs=("kind", "layer", "position", "feature", "token", "label"))
        np.testing.assert_allclose(np.array(back.node_attrs["influence"], float), np.array(g.node_attrs["influence"], float))
