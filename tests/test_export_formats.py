"""Every export opens everywhere: valid against its schema (GraphML XSD, GEXF 1.3 RELAX NG and XSD, kept in
tests/data/schemas — see the README there), readable back by networkx and by featgraph, whatever text a tokenizer
produced; labels, positions, colours and metadata on board; ids safe for XML and Cytoscape.js selectors."""

import copy
import csv
import json
import re
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from lxml import etree

from featgraph.export import (read_gexf, read_graphml, read_json, safe_ids, write_csv, write_cytoscape, write_gexf, write_graphml,
                              write_json, write_neuronpedia, xml_text)
from featgraph.graph import FeatureGraph

SCHEMAS = Path(__file__).parent / "data" / "schemas"
VIZ = "{http://gexf.net/1.3/viz}"
GEXF = "{http://gexf.net/1.3}"

# Everything a tokenizer can decode: every C0 control, DEL and a C1 control, the non-characters U+FFFE/U+FFFF, lone
# surrogates (byte-level decoding of a split character; low before high, so they do not pair), a right-to-left
# override, Arabic, an emoji, a combining mark, and XML/JSON/HTML syntax.
C0 = "".join(chr(c) for c in range(32))
HOSTILE = C0 + "\x7f\x85\ufffe\uffff\udc80\ud800 \u202eabc مرحبا 😀 e\u0301 <&\"'>]]> </script>"
STANDIN = xml_text(HOSTILE)  # what plain XML strings hold instead (documented in featgraph.export)
LABEL = '" a" · took _ deep breath'


@pytest.fixture(scope="module")
def graphml_schema():
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "graphml" / "graphml.xsd")))


@pytest.fixture(scope="module")
def gexf_rng():
    return etree.RelaxNG(etree.parse(str(SCHEMAS / "gexf-1.3" / "gexf.rng")))


@pytest.fixture(scope="module")
def gexf_xsd():
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "gexf-1.3" / "gexf.xsd")))


def stack_graph() -> FeatureGraph:
    """A stack graph (ids ``L<layer>/F<i>``) whose text is hostile everywhere it can be."""
    contexts = [[{"left": HOSTILE, "token": HOSTILE, "right": "\ud800", "act": 1.5}], [{"left": "", "token": "<b>", "right": "&", "act": 0.5}], []]
    return FeatureGraph(
        ["L0/F0", "L1/F3", "L1/F7"],
        {"frequency": [0.1, 0.02, 0.3], "community": [0, 1, 0], "layer": [0, 1, 1], "feature": [0, 3, 7],
         "label": [HOSTILE, "plain", LABEL], "top_contexts": contexts, "layer_profile": [[1.0, 0.25], [0.2, 0.9], [0.5, 0.5]],
         "side_label": ["[0]", "{x", None], "dead": [False, True, False],
         "x": [0.0, 10.0, 20.0], "y": [0.0, 5.0, 0.0], "color": ["#ff0000", "#00ff00", "#0000ff"]},
        [0, 1], [2, 2], {"weight": np.array([0.9, 0.4]), "cocount": np.array([12, 5])},
        meta={"kind": "stack", "measure": "pearson", "model": "embedded", "hookpoints": ["blocks.0.hook_resid_post", HOSTILE],
              "options": {"threshold": 0.1, "note": HOSTILE}, "community_labels": {"0": LABEL, "1": HOSTILE}},
    )


def write_all(g: FeatureGraph, folder: Path) -> dict[str, Path]:
    return {"graphml": write_graphml(g, folder / "g.graphml"), "gexf": write_gexf(g, folder / "g.gexf"),
            "json": write_json(g, folder / "g.json"), "cytoscape": write_cytoscape(g, folder / "g.cyjs"),
            "csv": write_csv(g, folder / "csv"), "neuronpedia": write_neuronpedia(g, folder / "g.neuronpedia.json")}


def strict_json(path: Path):
    """Parse a JSON export as a strict parser would: UTF-8 (here pure ASCII), no NaN/Infinity."""
    raw = path.read_bytes()
    assert raw.isascii()

    def refuse(token):
        raise ValueError(f"non-strict JSON constant {token}")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


def without_viz(doc):
    doc = copy.deepcopy(doc)
    for el in [el for el in doc.iter() if isinstance(el.tag, str) and el.tag.startswith(VIZ)]:
        el.getparent().remove(el)
    return doc


# ---- schemas --------------------------------------------------------------------------------------------------
def test_the_schemas_can_fail(graphml_schema, gexf_rng, gexf_xsd):
    """The schemas reject what the issue reports (a ``/`` in a GraphML id) and accept Gephi-style viz in the RNG only."""
    bad = (b'<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="undirected">'
           b'<node id="L0/F0"/></graph></graphml>')
    assert not graphml_schema.validate(etree.fromstring(bad))
    assert graphml_schema.validate(etree.fromstring(bad.replace(b"L0/F0", b"L0_F0")))
    gephi_style = (b'<gexf xmlns="http://gexf.net/1.3" xmlns:viz="http://gexf.net/1.3/viz" version="1.3">'
                   b'<graph defaultedgetype="undirected"><nodes><node id="0" label="Adams Field">'
                   b'<viz:size value="9.2"/><viz:position x="55.8" y="-209.3"/><viz:color r="217" g="78" b="164"/>'
                   b'</node></nodes><edges/></graph></gexf>')
    assert gexf_rng.validate(etree.fromstring(gephi_style))
    assert not gexf_xsd.validate(etree.fromstring(gephi_style))  # why the XSD only checks the viz-free structure
    assert gexf_xsd.validate(without_viz(etree.fromstring(gephi_style).getroottree()))
    assert not gexf_rng.validate(etree.fromstring(gephi_style.replace(b"<edges/>", b"")))


def test_xml_exports_are_valid_with_any_text(tmp_path, graphml_schema, gexf_rng, gexf_xsd):
    files = write_all(stack_graph(), tmp_path)
    graphml = etree.parse(str(files["graphml"]))  # lxml's parser is strict: an illegal character would raise here
    assert graphml_schema.validate(graphml), graphml_schema.error_log
    gexf = etree.parse(str(files["gexf"]))
    assert gexf_rng.validate(gexf), gexf_rng.error_log
    assert gexf_xsd.validate(without_viz(gexf)), gexf_xsd.error_log
    for path in (files["graphml"], files["gexf"]):
        text = path.read_text(encoding="utf-8")
        assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", text)


def test_xml_text_stand_ins():
    assert xml_text("\x00\x1b\t\n\r") == "\u2400\u241b\t\n\r"
    assert xml_text("\ud800\udc80\ufffe\uffff") == "\ufffd" * 4
    assert xml_text("مرحبا 😀 \u202e\x7f\x85") == "مرحبا 😀 \u202e\x7f\x85"  # legal in XML 1.0: unchanged


# ---- read back ------------------------------------------------------------------------------------------------
def test_json_reads_with_networkx_defaults_and_exactly(tmp_path):
    g = stack_graph()
    path = write_json(g, tmp_path / "g.json")
    doc = strict_json(path)
    assert doc["edges"] == doc["links"] and len(doc["edges"]) == g.n_edges  # both keys: networkx 3.0-3.5 and 3.6+
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning about links/edges on this networkx
        h = nx.node_link_graph(json.loads(path.read_text()))
    assert sorted(h.nodes) == sorted(g.node_ids) and h.number_of_edges() == 2
    assert h.nodes["L0/F0"]["label"] == HOSTILE and h.nodes["L0/F0"]["top_contexts"] == g.node_attrs["top_contexts"][0]
    back = read_json(path)
    assert back.node_ids == g.node_ids and back.node_attrs == g.node_attrs
    assert back.meta == {**g.meta, "weight_key": "weight"}
    np.testing.assert_array_equal(back.weights, g.weights)


def test_read_json_reads_links_only_and_edges_only_files(tmp_path):
    g = stack_graph()
    doc = json.loads(write_json(g, tmp_path / "g.json").read_text())
    for drop in ("edges", "links"):  # older featgraph files have links only; networkx 3.6's node_link_data edges only
        one = {k: v for k, v in doc.items() if k != drop}
        (tmp_path / f"{drop}.json").write_text(json.dumps(one))
        back = read_json(tmp_path / f"{drop}.json")
        assert back.node_ids == g.node_ids and back.n_edges == 2 and back.node_attrs["label"] == g.node_attrs["label"]
    plain = nx.path_graph(3)
    (tmp_path / "nx.json").write_text(json.dumps(nx.node_link_data(plain)))
    assert read_json(tmp_path / "nx.json").n_edges == 2


def test_graphml_reads_back(tmp_path):
    g = stack_graph()
    path = write_graphml(g, tmp_path / "g.graphml")
    h = nx.read_graphml(path)
    assert sorted(h.nodes) == ["L0_F0", "L1_F3", "L1_F7"]
    assert {n: d["featgraph_id"] for n, d in h.nodes(data=True)} == {"L0_F0": "L0/F0", "L1_F3": "L1/F3", "L1_F7": "L1/F7"}
    assert h.nodes["L0_F0"]["label"] == STANDIN and h.nodes["L1_F7"]["label"] == LABEL
    assert json.loads(h.nodes["L0_F0"]["top_contexts"]) == g.node_attrs["top_contexts"][0]  # JSON text: exact
    back = read_graphml(path)
    assert back.node_ids == g.node_ids  # readable ids restored
    for k, col in g.node_attrs.items():
        want = [STANDIN, "plain", LABEL] if k == "label" else col
        assert back.node_attrs[k] == want, k
    assert back.meta["hookpoints"] == g.meta["hookpoints"] and back.meta["options"] == g.meta["options"]
    assert back.meta["community_labels"] == g.meta["community_labels"] and back.meta["model"] == "embedded"
    edges = {(back.node_ids[a], back.node_ids[b]): (w, c) for a, b, w, c in zip(back.edge_src, back.edge_dst, back.weights, back.edge_attrs["cocount"])}
    assert edges == {("L0/F0", "L1/F7"): (0.9, 12), ("L1/F3", "L1/F7"): (0.4, 5)}


def test_gexf_reads_back(tmp_path):
    g = stack_graph()
    path = write_gexf(g, tmp_path / "g.gexf")
    back = read_gexf(path)
    assert back.node_ids == g.node_ids
    for k, col in g.node_attrs.items():
        want = [STANDIN, "plain", LABEL] if k == "label" else col
        assert back.node_attrs[k] == want, k
    assert back.meta == {**g.meta, "weight_key": "weight"}  # exact, from <meta><description>
    np.testing.assert_array_equal(back.weights, g.weights)
    assert back.edge_attrs["cocount"].tolist() == [12, 5]
    if "1.3" not in nx.readwrite.gexf.GEXF.versions:
        pytest.skip(f"networkx {nx.__version__} reads GEXF up to 1.2 (1.3 from networkx 3.6)")
    h = nx.read_gexf(path)
    assert sorted(h.nodes) == ["L0_F0", "L1_F3", "L1_F7"] and h.nodes["L0_F0"]["label"] == STANDIN
    assert h.nodes["L0_F0"]["featgraph_id"] == "L0/F0" and json.loads(h.nodes["L0_F0"]["top_contexts"]) == g.node_attrs["top_contexts"][0]
    assert h.edges["L0_F0", "L1_F7"]["weight"] == 0.9 and h.graph["node_default"]["graph.model"] == "embedded"


def test_cytoscape_reads_back_and_is_strict(tmp_path):
    g = stack_graph()
    doc = strict_json(write_cytoscape(g, tmp_path / "g.cyjs"))
    cy = nx.cytoscape_graph(doc)
    assert sorted(cy.nodes) == ["L0_F0", "L1_F3", "L1_F7"] and cy.number_of_edges() == 2
    assert cy.nodes["L0_F0"]["name"] == HOSTILE and cy.nodes["L0_F0"]["featgraph_id"] == "L0/F0"  # JSON: exact
    assert cy.graph["hookpoints"] == g.meta["hookpoints"]


def test_csv_reads_back(tmp_path):
    g = stack_graph()
    folder = write_csv(g, tmp_path / "csv")
    with open(folder / "nodes.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:2] == ["id", "label"]
    assert [r["id"] for r in rows] == g.node_ids
    assert rows[0]["label"] == HOSTILE.replace("\x00", "\u2400").replace("\udc80", "\ufffd").replace("\ud800", "\ufffd").replace("\ufffe", "\ufffd").replace("\uffff", "\ufffd")
    assert [r["label"] for r in rows[1:]] == ["plain", LABEL]
    assert json.loads(rows[0]["top_contexts"]) == g.node_attrs["top_contexts"][0]  # JSON cells: exact
    with open(folder / "edges.csv", newline="", encoding="utf-8") as fh:
        assert [(e["source"], e["target"], float(e["weight"])) for e in csv.DictReader(fh)] == [("L0/F0", "L1/F7", 0.9), ("L1/F3", "L1/F7", 0.4)]


def test_neuronpedia_is_strict_ascii_json_with_exact_text(tmp_path):
    g = stack_graph()
    doc = strict_json(write_neuronpedia(g, tmp_path / "g.json"))
    by_id = {n["featgraph_id"]: n for n in doc["nodes"]}
    assert by_id["L0/F0"]["clerp"] == HOSTILE and by_id["L1/F7"]["clerp"] == LABEL


def test_json_exports_are_strict_with_non_finite_values(tmp_path):
    g = FeatureGraph(["F0", "F1"], {"rel_norm": [float("nan"), 0.5], "profile": [[float("inf"), 1.0], [0.0, 0.0]]}, [0], [1],
                     {"weight": np.array([0.5])}, meta={"beta": float("-inf")})
    for path in (write_json(g, tmp_path / "g.json"), write_cytoscape(g, tmp_path / "g.cyjs")):
        strict_json(path)  # raises on a bare NaN/Infinity
    back = read_json(tmp_path / "g.json")
    assert back.node_attrs["rel_norm"] == [None, 0.5] and back.node_attrs["profile"][0] == [None, 1.0] and back.meta["beta"] is None


# ---- ids ------------------------------------------------------------------------------------------------------
def test_safe_ids():
    assert safe_ids(["F0", "F10"]) == ["F0", "F10"]  # already safe: unchanged
    assert safe_ids(["L0/F0", "L12/F3"]) == ["L0_F0", "L12_F3"]
    out = safe_ids(["3", "-x", "a.b", "é", ""])
    assert out == ["n_3", "n_-x", "a_b", "_", "n_"]
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", i) for i in out)
    assert safe_ids(["a/b", "a_b"]) == ["n0", "n1"]  # the readable mapping would collide


def test_stack_ids_in_graphml_and_cytoscape(tmp_path, graphml_schema):
    g = stack_graph()
    root = etree.parse(str(write_graphml(g, tmp_path / "g.graphml")))
    assert graphml_schema.validate(root)
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert [n.get("id") for n in root.findall(".//g:node", ns)] == ["L0_F0", "L1_F3", "L1_F7"]
    assert {(e.get("source"), e.get("target")) for e in root.findall(".//g:edge", ns)} == {("L0_F0", "L1_F7"), ("L1_F3", "L1_F7")}
    doc = json.loads(write_cytoscape(g, tmp_path / "g.cyjs").read_text())
    ids = [n["data"]["id"] for n in doc["elements"]["nodes"]]
    assert ids == ["L0_F0", "L1_F3", "L1_F7"] and all(n["data"]["value"] == n["data"]["id"] for n in doc["elements"]["nodes"])
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", i) for i in ids)  # a CSS identifier, so cy.$('#' + id) selects it
    edge_ids = [e["data"]["id"] for e in doc["elements"]["edges"]]
    assert len(set(edge_ids) | set(ids)) == len(ids) + len(edge_ids)  # Cytoscape.js needs ids unique across elements
    assert {(e["data"]["source"], e["data"]["target"]) for e in doc["elements"]["edges"]} <= {(a, b) for a in ids for b in ids}


# ---- labels, positions, colours, metadata ----------------------------------------------------------------------
def _gexf_nodes(path: Path) -> list:
    return etree.parse(str(path)).findall(f".//{GEXF}node")


@pytest.mark.parametrize("labelled", [True, False])
def test_labels_in_every_export(tmp_path, labelled):
    g = stack_graph()
    g.node_attrs["label"] = ["first", None, LABEL] if labelled else None
    if not labelled:
        del g.node_attrs["label"]
    want = ["first", "L1/F3", LABEL] if labelled else g.node_ids  # the id where a node has no label
    files = write_all(g, tmp_path)
    assert [n.get("label") for n in _gexf_nodes(files["gexf"])] == want
    assert [d["label"] for _, d in nx.read_graphml(files["graphml"]).nodes(data=True)] == want
    assert [n["data"]["name"] for n in json.loads(files["cytoscape"].read_text())["elements"]["nodes"]] == want
    with open(files["csv"] / "nodes.csv", newline="", encoding="utf-8") as fh:
        assert [r["label"] for r in csv.DictReader(fh)] == want
    clerps = {n["featgraph_id"]: n["clerp"] for n in json.loads(files["neuronpedia"].read_text())["nodes"]}
    # where a node has no label, Neuronpedia's clerp names it by its id and top token
    assert [clerps[i] for i in g.node_ids] == (["first", 'L1/F3 "<b>"', LABEL] if labelled else [f'L0/F0 "{HOSTILE}"', 'L1/F3 "<b>"', "L1/F7"])
    if not labelled:  # an unlabelled graph reads back unlabelled
        assert "label" not in read_graphml(files["graphml"]).node_attrs and "label" not in read_gexf(files["gexf"]).node_attrs


def test_positions_and_colours(tmp_path):
    g = stack_graph()  # x = 0, 10, 20; y = 0, 5, 0: centre (10, 2.5), longer half-extent 10 → ×100 to span ±1000
    want = [(-1000.0, -250.0), (0.0, 250.0), (1000.0, -250.0)]
    doc = json.loads(write_cytoscape(g, tmp_path / "g.cyjs").read_text())
    nodes = doc["elements"]["nodes"]
    assert [(n["position"]["x"], n["position"]["y"]) for n in nodes] == want
    assert [n["data"]["color"] for n in nodes] == ["#ff0000", "#00ff00", "#0000ff"]
    assert doc["style"][0]["style"] == {"background-color": "data(color)", "label": "data(name)"}
    viz = [(n.find(f"{VIZ}position"), n.find(f"{VIZ}color"), n.find(f"{VIZ}size")) for n in _gexf_nodes(write_gexf(g, tmp_path / "g.gexf"))]
    assert [(float(p.get("x")), float(p.get("y"))) for p, _, _ in viz] == want
    assert [(int(c.get("r")), int(c.get("g")), int(c.get("b"))) for _, c, _ in viz] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert [float(s.get("value")) for *_, s in viz] == pytest.approx([4 + 16 * np.sqrt(0.1 / 0.3), 4 + 16 * np.sqrt(0.02 / 0.3), 20.0], abs=1e-4)


def test_positions_and_colours_without_a_layout(tmp_path):
    """A graph.json from before layouts (no x, y, color): the layer layout and the community palette."""
    from featgraph.layout import node_colors

    g = stack_graph()
    for k in ("x", "y", "color"):
        del g.node_attrs[k]
    nodes = json.loads(write_cytoscape(g, tmp_path / "g.cyjs").read_text())["elements"]["nodes"]
    assert [n["data"]["color"] for n in nodes] == node_colors(g)
    xs = [n["position"]["x"] for n in nodes]
    assert xs[0] < xs[1] and max(abs(v) for n in nodes for v in n["position"].values()) == pytest.approx(1000.0)  # layer 0 left of layer 1


def test_gexf_keeps_the_metadata(tmp_path):
    g = stack_graph()
    root = etree.parse(str(write_gexf(g, tmp_path / "g.gexf")))
    meta = json.loads(root.find(f"{GEXF}meta/{GEXF}description").text)
    assert meta["hookpoints"] == g.meta["hookpoints"] and meta["model"] == "embedded" and meta["measure"] == "pearson"
    assert root.find(f"{GEXF}meta/{GEXF}creator").text.startswith("featgraph")
    defaults = {a.get("title"): a.findtext(f"{GEXF}default") for a in root.iter(f"{GEXF}attribute")}
    assert defaults["graph.model"] == "embedded" and defaults["graph.measure"] == "pearson"
    assert json.loads(defaults["graph.hookpoints"]) == g.meta["hookpoints"]  # one column per key on every node in Gephi
    assert json.loads(defaults["graph.options"]) == g.meta["options"]
    assert root.find(f"{GEXF}graph").get("defaultedgetype") == "undirected"


# ---- multigraphs and older files -------------------------------------------------------------------------------
def test_multigraph_keeps_parallel_edges(tmp_path, graphml_schema, gexf_rng):
    g = FeatureGraph(["F0", "F1"], {"frequency": [0.1, 0.2]}, [0, 0, 1], [1, 1, 0],
                     {"weight": np.array([0.9, 2.0, 1.5]), "type": np.array(["coactivation", "mlp", "mlp"])}, directed=True, multigraph=True)
    files = write_all(g, tmp_path)
    assert graphml_schema.validate(etree.parse(str(files["graphml"])))
    assert gexf_rng.validate(etree.parse(str(files["gexf"])))
    assert [e.get("kind") for e in etree.parse(str(files["gexf"])).iter(f"{GEXF}edge")] == ["coactivation", "mlp", "mlp"]  # Gephi's edge types
    for back in (read_graphml(files["graphml"]), read_gexf(files["gexf"]), read_json(files["json"])):
        assert back.multigraph and back.directed and back.n_edges == 3
        assert sorted(zip(back.edge_attrs["type"].tolist(), back.weights.tolist())) == [("coactivation", 0.9), ("mlp", 1.5), ("mlp", 2.0)]
    cy = nx.cytoscape_graph(json.loads(files["cytoscape"].read_text()))
    assert cy.is_multigraph() and cy.number_of_edges("F0", "F1") == 2


def test_older_featgraph_files_still_read(tmp_path):
    """GraphML and GEXF as featgraph wrote them before (networkx writers, lists as JSON strings, GEXF 1.2draft)."""
    g = nx.Graph()
    g.add_node("F0", layer_profile="[1.0, 0.5]", frequency=0.1)
    g.add_node("F1", layer_profile="[0.2, 0.9]", frequency=0.2)
    g.add_edge("F0", "F1", weight=0.7)
    g.graph["measure"] = "pearson"
    nx.write_graphml(g, tmp_path / "old.graphml")
    nx.write_gexf(g, tmp_path / "old.gexf")
    for back in (read_graphml(tmp_path / "old.graphml"), read_gexf(tmp_path / "old.gexf")):
        assert back.node_ids == ["F0", "F1"] and back.node_attrs["layer_profile"] == [[1.0, 0.5], [0.2, 0.9]]
        assert back.weights.tolist() == [0.7] and "label" not in back.node_attrs
    assert read_graphml(tmp_path / "old.graphml").meta["measure"] == "pearson"


def test_graph_json_from_the_demo_shape_round_trips(tmp_path):
    """Columns of every kind featgraph writes (ints, floats, bools, None, lists of dicts, dicts) survive every
    featgraph reader."""
    g = FeatureGraph(["F0", "F1", "F2"],
                     {"frequency": [0.5, 0.25, 0.125], "community": [0, 0, 1], "peak_layer": [0, 1, 2], "mixed": [1, "a", None],
                      "top_logits": [{"model_a": [["x", 1.5]]}, {"model_a": []}, None], "density": [0.1, None, 0.3]},
                     [0, 1], [1, 2], {"weight": np.array([0.5, 0.25])}, meta={"layout": "community"})
    for write, read, name in [(write_json, read_json, "g.json"), (write_graphml, read_graphml, "g.graphml"), (write_gexf, read_gexf, "g.gexf")]:
        back = read(write(g, tmp_path / name))
        assert back.node_attrs == g.node_attrs, name
        assert back.meta["layout"] == "community", name
