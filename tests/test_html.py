"""HTML pages: colour by a numeric attribute, the diff page, sampling of large graphs, and how fast pages build."""

import json
import re
import time

import numpy as np
import pytest

from crosscoder.errors import FeatgraphError
from featgraph.diff import edge_diff, feature_change
from featgraph.graph import FeatureGraph
from featgraph.html import EDGE_STYLE, sample_nodes, write_diff_html, write_html


def synthetic_graph(n_nodes: int, n_edges: int, community=None, n_layers: int = 3, seed: int = 0) -> FeatureGraph:
    """A random graph with every attribute a page shows (communities given or 20 random ones)."""
    rng = np.random.default_rng(seed)
    community = rng.integers(0, 20, n_nodes) if community is None else np.asarray(community)
    src = rng.integers(0, n_nodes, n_edges)
    dst = (src + 1 + rng.integers(0, n_nodes - 1, n_edges)) % n_nodes  # no self-loops
    words = ["the", " cat", " sat", " on", " the", " mat"]
    prof = rng.random((n_nodes, n_layers)).round(3)
    return FeatureGraph(
        [f"F{i}" for i in range(n_nodes)],
        {"feature": list(range(n_nodes)), "community": community.tolist(), "frequency": rng.random(n_nodes).tolist(),
         "max_act": rng.random(n_nodes).tolist(), "peak_layer": prof.argmax(1).tolist(), "layer_profile": prof.tolist(),
         "peak_hookpoint": [f"h{p}" for p in prof.argmax(1)],
         "top_contexts": [[{"left": "once upon a", "token": words[i % 6], "right": " and", "act": 1.0}] for i in range(n_nodes)]},
        src, dst, {"weight": rng.random(n_edges)}, meta={"hookpoints": [f"h{k}" for k in range(n_layers)]},
    )


def page_var(html: str, name: str):
    """The JSON a page assigns to ``var name`` (nodes and edges: the vis.DataSet contents)."""
    pattern = rf"^\s*var {name} = new vis\.DataSet\((.*)\);$" if name in ("nodes", "edges") else rf"^\s*var {name} = (.*);$"
    return json.loads(re.search(pattern, html, re.M).group(1))


def _rgb(c: str) -> tuple[int, int, int]:
    return tuple(int(c[k : k + 2], 16) for k in (1, 3, 5))


# ---- colour by a numeric attribute ---------------------------------------------------------------------------------
def test_color_by_rel_norm_is_a_diverging_scale(tmp_path):
    g = synthetic_graph(6, 8)
    g.set_node_attr("rel_norm", [0.0, 0.25, 0.5, 0.75, 1.0, None])
    html = write_html(g, tmp_path / "g.html", color_by="rel_norm").read_text()
    nodes = {n["id"]: n for n in page_var(html, "nodes")}
    colors = [nodes[f"F{i}"]["color"] for i in range(6)]
    assert colors[0] == "#2166ac" and colors[2] == "#bdbdbd" and colors[4] == "#b2182b"  # blue – grey – red
    assert colors[5] == "#f2f2f2"  # no value: near-white
    red_minus_blue = [_rgb(c)[0] - _rgb(c)[2] for c in colors[:5]]
    assert all(a < b for a, b in zip(red_minus_blue, red_minus_blue[1:])), red_minus_blue  # redder as rel_norm grows
    assert [nodes[f"F{i}"]["info"]["color_value"] for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, None]
    legend = page_var(html, "legend")
    assert legend["kind"] == "scale" and legend["attr"] == "rel_norm" and legend["ticks"] == [0.0, 0.5, 1.0]
    assert legend["words"] == ["only model A", "shared", "only model B"]
    # counts split where rel_norm calls a feature shared (0.3 < r < 0.7): 0, .25 | .5 | .75, 1
    assert [(b["range"], b["count"]) for b in legend["bins"]] == [("≤ 0.3", 2), ("0.3–0.7", 1), ("≥ 0.7", 2)]
    assert legend["missing"] == 1
    assert legend["stops"][0] == colors[0] and legend["stops"][-1] == colors[4]
    # without color_by the legend lists communities and nodes take their community's colour
    plain = write_html(g, tmp_path / "p.html").read_text()
    assert page_var(plain, "legend") == {"kind": "communities"}
    same = {}
    for n in page_var(plain, "nodes"):
        assert same.setdefault(n["community"], n["color"]) == n["color"]


def test_color_by_spans_min_to_max_outside_unit_interval(tmp_path):
    g = synthetic_graph(3, 3)
    g.set_node_attr("delta", [-2.0, 1.0, 4.0])
    html = write_html(g, tmp_path / "g.html", color_by="delta").read_text()
    colors = {n["id"]: n["color"] for n in page_var(html, "nodes")}
    assert (colors["F0"], colors["F1"], colors["F2"]) == ("#2166ac", "#bdbdbd", "#b2182b")
    legend = page_var(html, "legend")
    assert legend["ticks"] == [-2.0, 1.0, 4.0] and [b["count"] for b in legend["bins"]] == [1, 1, 1]  # thirds of [-2, 4]


def test_color_by_bad_attribute(tmp_path):
    g = synthetic_graph(3, 3)
    with pytest.raises(FeatgraphError, match="'rel_norm' is not a node attribute"):
        write_html(g, tmp_path / "g.html", color_by="rel_norm")
    with pytest.raises(FeatgraphError, match="non-numeric"):
        write_html(g, tmp_path / "g.html", color_by="peak_hookpoint")
    assert not (tmp_path / "g.html").exists()


# ---- layout, colours, legend, dashboard data ---------------------------------------------------------------------
def small_graph() -> FeatureGraph:
    """F0–F1–F2 (community 0), F3–F4 (community 1), one edge F2–F3 between them; F5 without a community."""
    return FeatureGraph(
        [f"F{i}" for i in range(6)],
        {"community": [0, 0, 0, 1, 1, None], "frequency": [0.4, 0.1, 0.2, 0.3, 0.05, 0.01], "label": ["a", "b", "", "d", "e", "f"],
         "peak_layer": [0, 1, 2, 0, 1, 2]},
        [0, 1, 2, 3, 0], [1, 2, 3, 4, 2],
        {"weight": np.array([0.9, 0.5, 0.2, 0.7, -0.8]), "pearson": np.array([0.9, 0.5, 0.2, 0.7, -0.8]),
         "jaccard": np.array([0.3, 0.2, 0.1, 0.4, np.nan])},
        meta={"community_labels": {"0": "the · a", "1": "<b>river</b>"}, "hookpoints": ["h0", "h1", "h2"]},
    )


def test_page_takes_the_graph_layout_and_community_colours(tmp_path):
    from featgraph.layout import add_layout, community_palette

    g = add_layout(small_graph(), seed=0)
    html = write_html(g, tmp_path / "g.html").read_text()
    nodes = {n["id"]: n for n in page_var(html, "nodes")}
    page_xy = np.array([[nodes[f"F{i}"]["x"], nodes[f"F{i}"]["y"]] for i in range(6)])
    graph_xy = np.c_[g.node_attrs["x"], g.node_attrs["y"]]
    # the page's positions are the graph's, centred and scaled by one factor (the same picture)
    k = np.ptp(page_xy, axis=0).max() / np.ptp(graph_xy, axis=0).max()
    assert np.allclose(page_xy - page_xy.mean(0), k * (graph_xy - graph_xy.mean(0)), atol=0.05)
    palette = community_palette(2)
    assert [nodes[f"F{i}"]["color"] for i in range(6)] == [palette[0]] * 3 + [palette[1]] * 2 + ["#a0a0a0"]
    assert [nodes[f"F{i}"]["name"] for i in range(6)] == ["a", "b", "F2", "d", "e", "f"]  # label, else id
    assert all("label" not in n for n in nodes.values())  # the page draws the names itself (vis-network would not fit them)
    edges = page_var(html, "edges")
    assert [e["color"] for e in edges] == [{"color": palette[0], "opacity": 0.45}, {"color": palette[0], "opacity": 0.45},
                                           {"color": "#9e9e9e", "opacity": 0.08}, {"color": palette[1], "opacity": 0.45},
                                           {"color": palette[0], "opacity": 0.45}]  # inside: its colour; between: faint grey
    assert json.loads(html.split("var options = ", 1)[1].split(";\n", 1)[0])["physics"]["enabled"] is False
    assert page_var(html, "layouts") == {"current": "community", "alt": "layers"}
    alt = {i: nodes[i]["alt"] for i in nodes}  # the layer view, one switch away: x by peak layer
    assert alt["F0"][0] < alt["F1"][0] < alt["F2"][0] and alt["F3"][0] < alt["F4"][0] < alt["F5"][0]
    # the legend: label and size of each community, largest first
    assert page_var(html, "communities") == [
        {"id": 0, "label": "the · a", "size": 3, "shown": 3, "color": palette[0]},
        {"id": 1, "label": "<b>river</b>", "size": 2, "shown": 2, "color": palette[1]}]
    assert "<b>river</b>" not in html  # escaped JSON only


def test_page_lays_out_a_copy_when_the_graph_has_no_layout(tmp_path):
    g = small_graph()
    html = write_html(g, tmp_path / "g.html").read_text()
    assert "x" not in g.node_attrs and "layout" not in g.meta  # the caller's graph is left alone
    assert page_var(html, "layouts")["current"] == "community"
    html = write_html(g, tmp_path / "l.html", layout="layers").read_text()
    nodes = {n["id"]: n for n in page_var(html, "nodes")}
    assert page_var(html, "layouts") == {"current": "layers", "alt": "community"}
    assert nodes["F0"]["x"] < nodes["F1"]["x"] < nodes["F2"]["x"]
    with pytest.raises(FeatgraphError, match="unknown layout 'tree'"):
        write_html(g, tmp_path / "t.html", layout="tree")


def test_panel_gets_neighbours_with_edge_measures_and_dashboard_data(tmp_path):
    g = small_graph()
    g.set_node_attr("density", [0.01, 0.02, float("nan"), None, 0.5, 0.1])
    g.set_node_attr("act_histogram", [{"edges": np.array([0.0, 1.0, 2.0]), "counts": np.array([3, 1])}] + [None] * 5)
    g.set_node_attr("quantile_examples", [[{"range": [0.5, 1.0], "examples": [{"left": "l", "token": "t", "right": "r", "act": 0.7}]}]] + [None] * 5)
    g.set_node_attr("top_logits", [[["x", 1.5]], {"A": [["y", 2.0]], "B": [["z", 1.0]]}] + [None] * 4)
    g.set_node_attr("bottom_logits", [[["w", -1.5]]] + [None] * 5)
    html = write_html(g, tmp_path / "g.html").read_text()
    info = {n["id"]: n["info"] for n in page_var(html, "nodes")}
    # F0's neighbours by |weight|: F2 (-0.8), F1 (0.9 first: |0.9| > |-0.8|)
    assert [nb["id"] for nb in info["F0"]["neighbours"]] == ["F1", "F2"]
    assert info["F0"]["neighbours"][0]["m"] == {"weight": 0.9, "pearson": 0.9, "jaccard": 0.3}
    assert info["F0"]["neighbours"][1]["m"] == {"weight": -0.8, "pearson": -0.8, "jaccard": None}  # NaN → none
    assert [nb["id"] for nb in info["F2"]["neighbours"]] == ["F0", "F1", "F3"]
    assert info["F5"]["neighbours"] == []
    assert info["F0"]["density"] == 0.01 and "density" not in info["F3"] and info["F2"]["density"] is None
    assert info["F0"]["act_histogram"] == {"edges": [0.0, 1.0, 2.0], "counts": [3, 1]}
    assert info["F0"]["quantile_examples"][0]["examples"][0]["token"] == "t"
    assert info["F0"]["top_logits"] == [["x", 1.5]] and info["F1"]["top_logits"] == {"A": [["y", 2.0]], "B": [["z", 1.0]]}
    assert info["F0"]["bottom_logits"] == [["w", -1.5]] and "bottom_logits" not in info["F1"]
    assert info["F5"]["community"] is None


# ---- large graphs --------------------------------------------------------------------------------------------------
SIZES = [500, 200, 150, 80, 40, 20, 6, 3, 1]  # uneven communities, 1,000 nodes


@pytest.mark.parametrize("max_nodes", [1, 5, 9, 40, 333, 999, 1000, 5000])
def test_sample_nodes_is_stratified_by_community(max_nodes):
    g = synthetic_graph(1000, 10, community=np.repeat(np.arange(len(SIZES)), SIZES), seed=max_nodes)
    s = sample_nodes(g, max_nodes)
    assert len(s.keep) == min(max_nodes, 1000) and s.n_total == 1000
    assert np.array_equal(s.keep, np.unique(s.keep))
    if max_nodes >= 1000:
        assert s.note == ""
        return
    assert s.note.startswith(f"showing {max_nodes:,} of 1,000 features")
    community = np.asarray(g.node_attrs["community"])
    freq = np.asarray(g.node_attrs["frequency"])
    kept = np.zeros(1000, dtype=bool)
    kept[s.keep] = True
    counts = np.bincount(community[kept], minlength=len(SIZES))
    if max_nodes >= len(SIZES):  # every community shown, in proportion to its size
        exact = max_nodes * np.asarray(SIZES) / 1000
        floor_cost = np.clip(1 - exact, 0, None).sum()  # the room that "at least one each" takes from the rest
        assert (counts >= 1).all() and (np.abs(counts - exact) < 1 + floor_cost).all(), (counts, exact)
        assert (np.diff(counts) <= 0).all(), counts  # a larger community never shows fewer features
        assert f"all {len(SIZES)} communities" in s.note
    else:  # more communities than room: one node from each of the largest
        assert counts.tolist() == [1] * max_nodes + [0] * (len(SIZES) - max_nodes)
        assert f"{max_nodes} of {len(SIZES)} communities" in s.note
    for c in range(len(SIZES)):  # inside a community, the most frequent are kept
        mine = community == c
        if counts[c] and (mine & ~kept).any():
            assert freq[mine & kept].min() >= freq[mine & ~kept].max()


def test_large_graph_page_is_sampled_and_says_so(tmp_path, record_property):
    from featgraph.layout import add_layout

    g = add_layout(synthetic_graph(20_000, 100_000))  # laid out as build_graph leaves it (the layout's own time: test_layout)
    t0 = time.perf_counter()
    path = write_html(g, tmp_path / "big.html", renderer="vis")  # vis-network samples; WebGL (the default here) does not
    seconds = time.perf_counter() - t0
    size = path.stat().st_size
    record_property("html_seconds_20k", round(seconds, 2))
    record_property("html_bytes_20k", size)
    print(f"20,000-node page: {size / 1e6:.1f} MB in {seconds:.2f} s")
    assert path == tmp_path / "big.html"
    assert seconds < 10, seconds  # measured 0.4 s here; "a few seconds" with room for a busy 2-core machine
    assert size < 15e6, size  # measured 4.0 MB
    html = path.read_text()
    assert "showing 5,000 of 20,000 features" in html and "of 100,000 edges" in html
    nodes, edges = page_var(html, "nodes"), page_var(html, "edges")
    assert len(nodes) == 5000
    shown = {n["id"] for n in nodes}
    assert all(e["from"] in shown and e["to"] in shown for e in edges)
    want = sum(1 for s, d in zip(g.edge_src, g.edge_dst) if g.node_ids[s] in shown and g.node_ids[d] in shown)
    assert len(edges) == want  # every edge among the kept nodes
    assert page_var(html, "nTotal") == 20_000


def test_small_graph_page_has_no_sampling_note(tmp_path):
    html = write_html(synthetic_graph(50, 100), tmp_path / "g.html").read_text()
    assert "showing" not in html and len(page_var(html, "nodes")) == 50


def test_2000_nodes_20000_edges_build_within_a_second(tmp_path):
    from featgraph.layout import add_layout

    write_html(synthetic_graph(20, 40), tmp_path / "warm.html")  # first call reads the inlined library
    g = add_layout(synthetic_graph(2000, 20_000))  # laid out as build_graph leaves it (the layout's own time: test_layout)
    t0 = time.perf_counter()
    write_html(g, tmp_path / "g.html")
    seconds = time.perf_counter() - t0
    assert seconds <= 1.0, f"{seconds:.2f} s"  # measured 0.2–0.3 s on this 2-core machine


# ---- the diff page -------------------------------------------------------------------------------------------------
def diff_pair():
    """Stages a → b: F0–F1 reweighted (0.5 → 0.1), F1–F2 lost, F3–F5 gained, F2–F3 and F0–F3 unchanged;
    F4 disappears, F5 appears."""
    meta = {"measure": "pearson", "n_tokens": 100_000}
    a = FeatureGraph(["F0", "F1", "F2", "F3", "F4"], {"community": [0, 0, 1, 1, 2], "frequency": [0.1, 0.2, 0.3, 0.4, 0.05],
                     "label": ["<b>zero</b>", "one", "two", "three", "four"]},
                     [0, 1, 2, 0], [1, 2, 3, 3], {"weight": np.array([0.5, 0.3, 0.4, 0.2])}, meta=meta)
    b = FeatureGraph(["F0", "F1", "F2", "F3", "F5"], {"community": [0, 0, 1, 1, 1], "frequency": [0.1, 0.2, 0.3, 0.4, 0.2]},
                     [0, 2, 0, 3], [1, 3, 3, 4], {"weight": np.array([0.1, 0.401, 0.2, 0.6])}, meta=meta)
    return a, b


def test_diff_page_edges_by_status(tmp_path):
    a, b = diff_pair()
    diff, change = edge_diff(a, b), feature_change(a, b)
    html = write_diff_html(a, b, diff, change, tmp_path / "d.html", title="S → DF", names=("S", "DF")).read_text()
    nodes, edges = page_var(html, "nodes"), page_var(html, "edges")
    assert sorted(n["id"] for n in nodes) == ["F0", "F1", "F2", "F3", "F4", "F5"]
    shapes = {n["id"]: n["shape"] for n in nodes}
    assert (shapes["F4"], shapes["F5"], shapes["F0"]) == ("square", "triangle", "dot")
    status = {frozenset((e["from"], e["to"])): e["status"] for e in edges}
    assert status == {frozenset(("F0", "F1")): "reweighted", frozenset(("F1", "F2")): "lost", frozenset(("F3", "F5")): "gained",
                      frozenset(("F2", "F3")): "unchanged", frozenset(("F0", "F3")): "unchanged"}
    for e in edges:
        assert e["color"] == EDGE_STYLE[e["status"]] and e["dashes"] == (e["status"] == "lost")
    assert (EDGE_STYLE["gained"], EDGE_STYLE["lost"]) == ("#2e9e44", "#d7301f")  # green, red
    # counts: the page's legend and its edges agree with the EdgeDiff
    counts = page_var(html, "counts")
    assert counts == {"gained": diff.counts["gained"], "lost": diff.counts["lost"], "reweighted": diff.counts["reweighted"],
                      "unchanged": diff.counts["kept"] - diff.counts["reweighted"]} == {"gained": 1, "lost": 1, "reweighted": 1, "unchanged": 2}
    assert {s: sum(e["status"] == s for e in edges) for s in counts} == counts
    # thickness grows with |Δw|: the largest change is the widest edge
    by_delta = sorted(edges, key=lambda e: abs(e["delta"]))
    assert [e["width"] for e in by_delta] == sorted(e["width"] for e in edges)
    assert by_delta[-1]["width"] == pytest.approx(6.0) and by_delta[0]["width"] < 1.1
    assert [e["delta"] for e in edges] == pytest.approx([float(d) for d in diff.delta])
    # the side list ranks features by change, as FeatureChange does
    ranked = page_var(html, "ranked")
    assert [r["id"] for r in ranked] == change.ranked()
    assert [r["score"] for r in ranked] == pytest.approx(change.score[change.order()].tolist())
    if hasattr(change, "moved"):  # FeatureChange.moved: the weight each feature's edges moved
        assert [r["moved"] for r in ranked] == pytest.approx(change.moved[change.order()].tolist())
    assert page_var(html, "names") == ["S", "DF"]
    assert "<b>zero</b>" not in html  # a label reaches the page as escaped JSON only


def test_diff_page_keeps_the_most_changed_when_large(tmp_path):
    a, b = diff_pair()
    diff, change = edge_diff(a, b), feature_change(a, b)
    html = write_diff_html(a, b, diff, change, tmp_path / "d.html", max_nodes=3).read_text()
    shown = {n["id"] for n in page_var(html, "nodes")}
    assert shown == set(change.ranked(3))
    assert "showing 3 of 6 features: the most changed" in html
    assert all(e["from"] in shown and e["to"] in shown for e in page_var(html, "edges"))
    assert page_var(html, "counts")["gained"] == diff.counts["gained"]  # the legend still counts the whole diff


def test_diff_page_rejects_mismatched_inputs(tmp_path):
    a, b = diff_pair()
    other = FeatureGraph(["F0", "F9"], edge_src=[0], edge_dst=[1], edge_attrs={"weight": np.array([0.3])}, meta=a.meta)
    with pytest.raises(FeatgraphError, match="pass feature_change"):
        write_diff_html(a, b, edge_diff(a, b), feature_change(a, other), tmp_path / "d.html")
    with pytest.raises(FeatgraphError, match="pass edge_diff"):
        write_diff_html(a, b, edge_diff(a, other), feature_change(a, b), tmp_path / "d.html")
    assert not (tmp_path / "d.html").exists()


# ---- pyvis ---------------------------------------------------------------------------------------------------------
def test_to_pyvis_matches_the_page(tmp_path):
    from featgraph.layout import add_layout

    g = add_layout(small_graph())
    g.set_node_attr("top_contexts", [[{"left": "<a href='x'>", "token": " href", "right": "", "act": 1.0}]] + [[]] * 5)
    net = g.to_pyvis()
    page = {n["id"]: n for n in page_var(write_html(g, tmp_path / "g.html").read_text(), "nodes")}
    assert [n["id"] for n in net.nodes] == net.node_ids == g.node_ids and set(net.node_map) == set(g.node_ids)
    for n in net.nodes:  # same positions, colours and labels as the page; physics off
        p = page[n["id"]]
        assert (n["x"], n["y"], n["color"], n["label"]) == (p["x"], p["y"], p["color"], p["name"])
        assert n["physics"] is False and n["size"] > 0
    sizes = {n["id"]: n["size"] for n in net.nodes}
    assert sizes["F0"] > sizes["F3"] > sizes["F2"] > sizes["F1"] > sizes["F5"]  # by frequency
    assert [(e["from"], e["to"]) for e in net.edges] == [(g.node_ids[s], g.node_ids[d]) for s, d in zip(g.edge_src, g.edge_dst)]
    assert net.edges[2]["color"] == {"color": "#9e9e9e", "opacity": 0.08}  # between communities: faint
    # "href" in a tooltip would switch pyvis to HTML tooltips (innerHTML): it is broken by a zero-width space
    assert all("href" not in n["title"] for n in net.nodes) and "hre\u200bf" in net.nodes[0]["title"]
    html = net.generate_html()
    assert "popup.innerHTML" not in html and "cdn.jsdelivr.net" not in html and 'src="https://' not in html
    assert 'href="https://' not in html
    # pyvis's own quadratic add_edge is not used: 20,000 edges go in quickly
    big = add_layout(synthetic_graph(2000, 20_000))
    t0 = time.perf_counter()
    big_net = big.to_pyvis()
    assert len(big_net.edges) == 20_000 and time.perf_counter() - t0 < 5


# ---- WebGL pages ---------------------------------------------------------------------------------------------------
def webgl_var(html: str, name: str):
    """The JSON a WebGL page gives its node set (``nodes``) or its edge columns (``edges``)."""
    pattern = {"nodes": r"^\s*var nodes = new featgraphWebGL\.NodeSet\((.*)\);$",
               "edges": r"^\s*var edges = new featgraphWebGL\.EdgeSet\((.*), nodes\.getIds\(\)\);$"}[name]
    return json.loads(re.search(pattern, html, re.M).group(1))


def test_drawn_edges_keep_each_nodes_strongest_then_the_strongest():
    from featgraph.html import drawn_edges

    # a star F0–F1..F5 with weights .9 .8 .7 .6 .5, and F6–F7 at .1: F6, F7's only edge is weak but theirs
    g = FeatureGraph([f"F{i}" for i in range(8)], {}, [0, 0, 0, 0, 0, 6], [1, 2, 3, 4, 5, 7],
                     {"weight": np.array([0.9, 0.8, -0.7, 0.6, 0.5, 0.1])})
    assert drawn_edges(g, limit=6).tolist() == [0, 1, 2, 3, 4, 5]  # all fit
    assert drawn_edges(g, limit=3).tolist() == [0, 1, 2, 3, 4, 5]  # every node's own strongest edge is more than 3
    g2 = FeatureGraph(g.node_ids, {}, [0, 0, 0, 1, 2, 6], [1, 2, 3, 2, 3, 7], {"weight": np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])})
    # own strongest: F0,F1 → e0; F2 → e1; F3 → e2; F6,F7 → e5; room for 1 more of the rest: e3 (0.6) before e4 (0.5)
    assert drawn_edges(g2, limit=5).tolist() == [0, 1, 2, 3, 5]


def test_webgl_page_above_five_thousand_nodes(tmp_path):
    from featgraph.layout import add_layout

    g = add_layout(synthetic_graph(6000, 40_000))
    html = write_html(g, tmp_path / "g.html").read_text()  # auto: WebGL, every node
    assert "new featgraphWebGL.Network" in html and "new vis.Network" not in html
    nodes, cols = webgl_var(html, "nodes"), webgl_var(html, "edges")
    assert len(nodes) == 6000 and "showing" not in html
    assert len(cols["src"]) == len(cols["dst"]) == len(cols["w"]) == 40_000
    assert cols["src"] == g.edge_src.tolist() and set(cols["measures"]) == {"weight"}
    assert len(cols["drawn"]) == 30_000 and cols["drawn"] == sorted(cols["drawn"])
    assert "drawing the 30,000 strongest of 40,000 edges" in html
    assert all("neighbours" not in n["info"] and 1.5 <= n["size"] <= 7.5 for n in nodes)  # read from the graph on click
    assert html.count("<script") == 3  # the page's error catcher, the libraries (inlined, with licences), the page
    assert "Permission is hereby granted" in html and "sigma" in html and "graphology" in html
    # a sample asked for stays possible, and picks vis-network when it is small enough
    small = write_html(g, tmp_path / "s.html", max_nodes=1000).read_text()
    assert "new vis.Network" in small and len(page_var(small, "nodes")) == 1000 and "showing 1,000 of 6,000 features" in small
    forced = write_html(small_graph(), tmp_path / "f.html", renderer="webgl").read_text()
    assert len(webgl_var(forced, "nodes")) == 6 and webgl_var(forced, "edges")["drawn"] == [0, 1, 2, 3, 4]
    with pytest.raises(FeatgraphError, match="unknown renderer 'svg'"):
        write_html(g, tmp_path / "x.html", renderer="svg")
