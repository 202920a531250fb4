"""Exports read back with networkx give the same nodes, edges and attributes; Neuronpedia's graph JSON meets its
schema; the export command."""

import csv
import json
import math
import re
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest

from crosscoder.errors import FeatgraphError
from featgraph.cli import main
from featgraph.crosslayer import prompt_graph
from featgraph.export import cantor_pair, read_gexf, read_json, write_csv, write_cytoscape, write_gexf, write_json, write_neuronpedia
from featgraph.graph import FeatureGraph


def small_graph():
    return FeatureGraph(
        ["F0", "F3", "F7"],
        {"frequency": [0.1, 0.02, 0.3], "community": [0, 1, 0], "peak_layer": [0, 2, 1], "layer_profile": [[1.0, 0.1], [0.2, 0.9], [0.5, 0.5]],
         "top_contexts": [[{"left": "a ", "token": "<img src=x>", "right": " c", "act": 1.5}], [], []]},
        [0, 1], [2, 2], {"weight": np.array([0.9, 0.4]), "cocount": np.array([12, 5])}, meta={"measure": "pearson", "n_tokens": 100},
    )


def test_gexf_round_trip_with_viz(tmp_path):
    g = small_graph()
    back = read_gexf(write_gexf(g, tmp_path / "g.gexf"))
    assert back.node_ids == g.node_ids
    assert back.node_attrs["layer_profile"] == g.node_attrs["layer_profile"]
    assert back.node_attrs["top_contexts"] == g.node_attrs["top_contexts"]
    np.testing.assert_allclose(back.weights, g.weights)
    node = ET.parse(tmp_path / "g.gexf").getroot().find(".//{http://gexf.net/1.3}node")
    assert [child.tag.rsplit("}", 1)[-1] for child in node if "viz" in child.tag] == ["color", "position", "size"]


def test_cytoscape_and_csv(tmp_path):
    g = small_graph()
    doc = json.loads(write_cytoscape(g, tmp_path / "g.cyjs").read_text())
    cy = nx.cytoscape_graph(doc)
    assert sorted(cy.nodes) == g.node_ids and cy.number_of_edges() == 2 and cy.nodes["F3"]["frequency"] == 0.02
    write_csv(g, tmp_path / "csv")
    nodes = list(csv.DictReader(open(tmp_path / "csv" / "nodes.csv")))
    edges = list(csv.DictReader(open(tmp_path / "csv" / "edges.csv")))
    assert [n["id"] for n in nodes] == g.node_ids and json.loads(nodes[0]["layer_profile"]) == [1.0, 0.1]
    assert [(e["source"], e["target"], float(e["weight"])) for e in edges] == [("F0", "F7", 0.9), ("F3", "F7", 0.4)]


# ---- Neuronpedia --------------------------------------------------------------------------------------------------
# The "required" lists of Neuronpedia's attribution-graph schema, as written in
# hijohnnylin/neuronpedia apps/webapp/app/api/graph/graph-schema.json:
NP_REQUIRED_TOP = ["metadata", "qParams", "nodes", "links"]
NP_REQUIRED_METADATA = ["slug", "scan", "prompt_tokens", "prompt"]
NP_REQUIRED_QPARAMS: list[str] = []
NP_REQUIRED_NODE = ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"]
NP_REQUIRED_LINK = ["source", "target", "weight"]
# circuit-tracer's front-end models (safety-research/circuit-tracer circuit_tracer/frontend/graph_models.py: the
# pydantic fields without defaults) also require these, which its local viewer parses with:
CT_REQUIRED_METADATA = ["slug", "scan", "transcoder_list", "prompt_tokens", "prompt"]
CT_REQUIRED_QPARAMS = ["pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"]
# JSON types of the schema's properties (same file); "number" admits ints, as JSON Schema does.
NP_TYPES = {
    "metadata": {"slug": "string", "scan": "string", "prompt_tokens": "array", "prompt": "string", "node_threshold": "number",
                 "info": "object", "transcoder_list": "array", "schema_version": "integer"},
    "qParams": {"pinnedIds": "array", "supernodes": "array", "linkType": "string", "clickedId": "string", "sg_pos": "string"},
    "node": {"node_id": "string", "feature": ("integer", "null"), "layer": ("string", "integer"), "ctx_idx": "integer",
             "feature_type": "string", "jsNodeId": "string", "clerp": "string", "influence": ("number", "null"),
             "activation": ("number", "null")},
    "link": {"source": "string", "target": "string", "weight": "number"},
}
_JSON_TYPES = {"string": str, "array": list, "object": dict, "null": type(None), "boolean": bool}


def _is(value, json_type: str) -> bool:
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[json_type])


def neuronpedia_problems(doc) -> list[str]:
    """Every way ``doc`` breaks the required lists and property types above (empty = valid)."""
    out = []

    def check(obj, where, required, types):
        if not isinstance(obj, dict):
            return out.append(f"{where} is not an object")
        out.extend(f"{where} lacks {k!r}" for k in required if k not in obj)
        for k, t in types.items():
            if k in obj and not any(_is(obj[k], tt) for tt in ((t,) if isinstance(t, str) else t)):
                out.append(f"{where}.{k} = {obj[k]!r} is not {t}")

    check(doc, "graph", NP_REQUIRED_TOP, {"nodes": "array", "links": "array", "metadata": "object", "qParams": "object"})
    if out:
        return out
    check(doc["metadata"], "metadata", NP_REQUIRED_METADATA + CT_REQUIRED_METADATA, NP_TYPES["metadata"])
    out.extend(f"metadata.prompt_tokens[{i}] is not a string" for i, t in enumerate(doc["metadata"].get("prompt_tokens", [])) if not isinstance(t, str))
    check(doc["qParams"], "qParams", NP_REQUIRED_QPARAMS + CT_REQUIRED_QPARAMS, NP_TYPES["qParams"])
    for i, n in enumerate(doc["nodes"]):
        check(n, f"nodes[{i}]", NP_REQUIRED_NODE, NP_TYPES["node"])
    for i, e in enumerate(doc["links"]):
        check(e, f"links[{i}]", NP_REQUIRED_LINK, NP_TYPES["link"])
    ids = [n.get("node_id") for n in doc["nodes"]]
    if len(set(ids)) != len(ids):
        out.append("node_id values repeat")
    if len({n.get("jsNodeId") for n in doc["nodes"]}) != len(ids):
        out.append("jsNodeId values repeat")
    known = set(ids)
    out.extend(f"links[{i}] names an unknown node" for i, e in enumerate(doc["links"]) if e.get("source") not in known or e.get("target") not in known)
    out.extend(f"links[{i}].weight is not finite" for i, e in enumerate(doc["links"]) if _is(e.get("weight"), "number") and not math.isfinite(e["weight"]))
    # what the viewer decodes must be what the node says: feature = cantor(layer, index) of node_id "{layer}_{index}_{ctx}"
    n_tokens = len(doc["metadata"].get("prompt_tokens", []))
    for i, n in enumerate(doc["nodes"]):
        m = re.fullmatch(r"(\d+)_(\d+)_(\d+)", str(n.get("node_id")))
        if m is None:
            out.append(f"nodes[{i}].node_id {n.get('node_id')!r} is not layer_index_ctx")
            continue
        layer, index, c = map(int, m.groups())
        if _is(n.get("feature"), "integer") and _viewer_layer_index(n["feature"]) != (layer, index):
            out.append(f"nodes[{i}].feature decodes to {_viewer_layer_index(n['feature'])}, not its node_id's ({layer}, {index})")
        if str(n.get("layer")) != str(layer) or _is(n.get("ctx_idx"), "integer") and n["ctx_idx"] != c:
            out.append(f"nodes[{i}] layer/ctx_idx disagree with its node_id")
        if _is(n.get("ctx_idx"), "integer") and not 0 <= n["ctx_idx"] < n_tokens:
            out.append(f"nodes[{i}].ctx_idx {n['ctx_idx']} is outside the {n_tokens} prompt tokens")
    q = doc["qParams"]
    pinned = q.get("pinnedIds", [])
    out.extend(f"qParams pins unknown node {p!r}" for p in pinned if p not in known)
    if len(set(pinned)) != len(pinned):
        out.append("qParams pins a node twice")
    if len(pinned) > 200:  # circuit-tracer's subgraph: pinnedIds.slice(0, 200)
        out.append(f"qParams pins {len(pinned)} nodes; the viewer shows at most 200")
    if q.get("clickedId") and q["clickedId"] not in known:
        out.append("qParams.clickedId names an unknown node")
    names, members = [], []
    for sn in q.get("supernodes", []):
        if not isinstance(sn, list) or len(sn) < 2 or not isinstance(sn[0], str) or not sn[0] or any(m not in set(pinned) for m in sn[1:]):
            out.append(f"supernode {sn!r} is not [name, pinned node ids...]")
            continue
        names.append(sn[0])
        members += sn[1:]
    if len(set(names)) != len(names) or set(names) & known:
        out.append("supernode names repeat or equal a node id (the viewer uses the name as the supernode's id)")
    if len(set(members)) != len(members):
        out.append("a node is in two supernodes")
    return out


def _viewer_layer_index(feature: int) -> tuple[int, int]:
    """Neuronpedia's getLayerFromCantorValue / getIndexFromCantorValue (apps/webapp/app/[modelId]/graph/utils.ts)."""
    w = int((np.sqrt(8 * feature + 1) - 1) // 2)
    y = feature - (w * w + w) // 2
    return w - y, y


def test_the_schema_check_can_fail():
    good = {"metadata": {"slug": "s", "scan": "m", "prompt_tokens": ["a"], "prompt": "a", "transcoder_list": []},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": [{"node_id": "0_1_0", "feature": 2, "layer": "0", "ctx_idx": 0, "feature_type": "x", "jsNodeId": "0_1-0", "clerp": ""}],
            "links": []}
    assert neuronpedia_problems(good) == []
    bad = json.loads(json.dumps(good))
    del bad["nodes"][0]["clerp"]
    bad["nodes"][0]["ctx_idx"] = "0"
    bad["links"] = [{"source": "0_1_0", "target": "9_9_9", "weight": 1.0}]
    assert neuronpedia_problems(bad) == ["nodes[0] lacks 'clerp'", "nodes[0].ctx_idx = '0' is not integer", "links[0] names an unknown node"]
    viewer = json.loads(json.dumps(good))
    viewer["nodes"][0]["feature"] = 1  # decodes to layer 1, index 0
    viewer["nodes"].append({**good["nodes"][0], "node_id": "0_2_3", "feature": cantor_pair(0, 2), "jsNodeId": "0_2-0", "ctx_idx": 3})
    viewer["qParams"].update(pinnedIds=["0_1_0", "0_2_3"], supernodes=[["0_1_0", "0_1_0"], ["s", "0_1_0"]])
    assert neuronpedia_problems(viewer) == [
        "nodes[0].feature decodes to (1, 0), not its node_id's (0, 1)", "nodes[1].ctx_idx 3 is outside the 1 prompt tokens",
        "supernode names repeat or equal a node id (the viewer uses the name as the supernode's id)", "a node is in two supernodes"]


def test_neuronpedia_meets_the_schema_and_maps_features(tmp_path):
    g = small_graph()
    g.meta.update(model="embedded", crosscoders=["runs/cc"])
    g.set_node_attr("max_act", [3.0, 1.0, 2.0])
    doc = json.loads(write_neuronpedia(g, tmp_path / "my graph.neuronpedia.json").read_text())
    assert neuronpedia_problems(doc) == []
    assert len(doc["nodes"]) == g.n_nodes and len(doc["links"]) == g.n_edges
    md = doc["metadata"]
    assert md["slug"] == "my-graph" and md["scan"] == "embedded" and md["transcoder_list"] == ["runs/cc"]
    assert md["schema_version"] == 1 and len(md["prompt_tokens"]) == 1  # dataset-wide: one token naming the graph
    by_id = {n["featgraph_id"]: n for n in doc["nodes"]}
    for i, nid in enumerate(g.node_ids):
        n = by_id[nid]
        layer, index = g.node_attrs["peak_layer"][i], int(nid[1:])
        assert (int(n["layer"]), n["ctx_idx"]) == (layer, 0)
        assert _viewer_layer_index(n["feature"]) == (layer, index)  # what the viewer decodes is what we meant
        assert n["node_id"] == f"{layer}_{index}_0" and n["feature"] == cantor_pair(layer, index)
        assert n["activation"] == g.node_attrs["max_act"][i]
    assert by_id["F0"]["clerp"] == 'F0 "<img src=x>"'  # label from the top token, as data (JSON), untouched
    # influence: cumulative strength share; F7 holds both edges (1.3 of 2.6) so it comes first
    assert [by_id[k]["influence"] for k in ("F7", "F0", "F3")] == pytest.approx([1.3 / 2.6, 2.2 / 2.6, 1.0])
    # undirected edges point up the layers: F0 (layer 0) → F7 (layer 1); F7 (layer 1) → F3 (layer 2)
    links = {(e["source"], e["target"]): e["weight"] for e in doc["links"]}
    assert links == {(by_id["F0"]["node_id"], by_id["F7"]["node_id"]): 0.9, (by_id["F7"]["node_id"], by_id["F3"]["node_id"]): 0.4}
    q = doc["qParams"]
    assert q["clickedId"] == by_id["F7"]["node_id"] and q["pinnedIds"][0] == q["clickedId"]
    assert q["supernodes"] == [["community 0", by_id["F7"]["node_id"], by_id["F0"]["node_id"]]]  # F3 is alone in community 1


def test_neuronpedia_prompt_graph_positions(tmp_path):
    g = small_graph()
    pg = prompt_graph(g, ["F0", "F3", "F7"], activation=[2.0, 0.5, 1.0], positions=[[2, 4], [1], [0, 3]])
    tokens = ["<bos>", "Once", " upon", " a", " time"]
    doc = json.loads(write_neuronpedia(pg, tmp_path / "p.json", prompt_tokens=tokens, scan="gemma-2-2b", slug="Story #1").read_text())
    assert neuronpedia_problems(doc) == []
    assert doc["metadata"]["prompt_tokens"] == tokens and doc["metadata"]["prompt"] == "".join(tokens)
    assert doc["metadata"]["scan"] == "gemma-2-2b" and doc["metadata"]["slug"] == "story-1"
    got = {n["featgraph_id"]: (n["ctx_idx"], n["activation"]) for n in doc["nodes"]}
    assert got == {"F0": (2, 2.0), "F3": (1, 0.5), "F7": (0, 1.0)}  # first active position; the prompt's activation
    assert all(n["node_id"].endswith(f"_{n['ctx_idx']}") for n in doc["nodes"])
    # without tokens: placeholders up to the last position used
    doc = json.loads(write_neuronpedia(pg, tmp_path / "p2.json").read_text())
    assert doc["metadata"]["prompt_tokens"] == ["[0]", "[1]", "[2]"] and neuronpedia_problems(doc) == []
    with pytest.raises(FeatgraphError, match="pass the prompt_tokens"):
        write_neuronpedia(pg, tmp_path / "p3.json", prompt_tokens=["a", "b"])


def test_every_community_of_two_or_more_is_a_supernode(tmp_path):
    """16 communities of sizes 1..16 (the issue's graph had 16 and got 2 supernodes): 15 supernodes, named by their
    labels, each with its community's strongest pinned members."""
    sizes = np.arange(1, 17)
    community = np.repeat(np.arange(16), sizes)
    n = len(community)
    rng = np.random.default_rng(0)
    src, dst = np.triu_indices(n, 1)
    same = community[src] == community[dst]
    keep = same | (rng.random(len(src)) < 0.02)
    g = FeatureGraph([f"F{i}" for i in range(n)], {"community": community.tolist(), "peak_layer": (np.arange(n) % 4).tolist(),
                                                   "label": [f"feature {i}" for i in range(n)]},
                     src[keep], dst[keep], {"weight": rng.uniform(0.1, 1.0, keep.sum())},
                     meta={"community_labels": {str(c): f"topic {c}" for c in range(16)} | {"3": "topic 2"}})
    doc = json.loads(write_neuronpedia(g, tmp_path / "g.json").read_text())
    assert neuronpedia_problems(doc) == []
    q = doc["qParams"]
    names = [sn[0] for sn in q["supernodes"]]
    assert len(names) == 15 and "topic 0" not in names  # community 0 has one feature
    assert sorted(x for x in names if x.startswith("topic 2")) in (["topic 2", "topic 2 (community 2)"], ["topic 2", "topic 2 (community 3)"])
    by_node = {n["node_id"]: n for n in doc["nodes"]}
    influence = {n["node_id"]: n["influence"] for n in doc["nodes"]}
    for sn in q["supernodes"]:
        c = by_node[sn[1]]["community"]
        assert sn[1:] == [m for m in q["pinnedIds"] if by_node[m]["community"] == c]  # every pinned member, strongest first
        strongest = sorted((m for m, node in by_node.items() if node["community"] == c), key=influence.get)
        assert sn[1 : 1 + min(int(sizes[c]), 3)] == strongest[:3]  # at least the community's three strongest
    assert q["pinnedIds"] == sorted(q["pinnedIds"], key=influence.get) and q["clickedId"] == q["pinnedIds"][0]
    assert all(n["clerp"] == f"feature {n['featgraph_id'][1:]}" for n in doc["nodes"])  # clerp = label
    few = json.loads(write_neuronpedia(g, tmp_path / "g2.json", per_community=2, n_pinned=0).read_text())["qParams"]
    assert len(few["pinnedIds"]) == 30 and all(len(sn) == 3 for sn in few["supernodes"])


def test_neuronpedia_pin_limit(tmp_path, caplog):
    community = np.repeat(np.arange(120), 2)  # 120 pairs: 240 members > the viewer's 200 pins
    n = len(community)
    g = FeatureGraph([f"F{i}" for i in range(n)], {"community": community.tolist(), "peak_layer": [1] * n},
                     np.arange(0, n, 2), np.arange(1, n, 2), {"weight": np.linspace(1.0, 0.1, n // 2)})
    with caplog.at_level("WARNING"):
        doc = json.loads(write_neuronpedia(g, tmp_path / "g.json").read_text())
    assert neuronpedia_problems(doc) == [] and len(doc["qParams"]["pinnedIds"]) == 200
    assert len(doc["qParams"]["supernodes"]) == 100 and "20 of 120 communities" in caplog.text


def test_neuronpedia_prompt_graph_real_tokens(tmp_path):
    g = small_graph()
    tokens = ["<bos>", "Once", " upon", " a", " time"]
    pg = prompt_graph(g, ["F0", "F3", "F7"], activation=[2.0, 0.5, 1.0], positions=[[2, 4], [1], [0, 3]], prompt_tokens=tokens)
    assert pg.meta["prompt_tokens"] == tokens and pg.meta["prompt"] == "<bos>Once upon a time"
    doc = json.loads(write_neuronpedia(pg, tmp_path / "p.json").read_text())  # tokens from the graph, not passed
    assert neuronpedia_problems(doc) == []
    assert doc["metadata"]["prompt_tokens"] == tokens and doc["metadata"]["prompt"] == "<bos>Once upon a time"
    assert {n["featgraph_id"]: n["ctx_idx"] for n in doc["nodes"]} == {"F0": 2, "F3": 1, "F7": 0}
    back = json.loads(write_json(pg, tmp_path / "graph.json").read_text())["graph"]
    assert back["prompt_tokens"] == tokens  # kept in graph.json, so `featgraph export` finds them
    with pytest.raises(FeatgraphError, match="BOS token included"):
        prompt_graph(g, ["F0"], positions=[[5]], prompt_tokens=tokens)


def test_neuronpedia_bad_graphs(tmp_path):
    g = small_graph()
    clash = FeatureGraph(["A1", "B1"], {"peak_layer": [2, 2]}, [0], [1], {"weight": np.array([0.5])})
    with pytest.raises(FeatgraphError, match="both map to layer 2, feature 1"):
        write_neuronpedia(clash, tmp_path / "x.json")
    nan = FeatureGraph(g.node_ids, dict(g.node_attrs), g.edge_src, g.edge_dst, {"weight": np.array([np.nan, 0.4])})
    with pytest.raises(FeatgraphError, match="NaN or infinite"):
        write_neuronpedia(nan, tmp_path / "x.json")
    with pytest.raises(FeatgraphError, match="no nodes"):
        write_neuronpedia(FeatureGraph([]), tmp_path / "x.json")
    with pytest.raises(FeatgraphError, match="'feature' attribute"):
        write_neuronpedia(FeatureGraph(["alpha"], {"peak_layer": [1]}), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def _printed_size(out: str):
    """The size the command printed, as bytes ± its rounding."""
    value, unit = re.search(r"\(([\d,.]+) (B|kB|MB)", out).groups()
    scale = {"B": 1, "kB": 1e3, "MB": 1e6}[unit]
    return pytest.approx(float(value.replace(",", "")) * scale, abs={"B": 0, "kB": 50, "MB": 5000}[unit])


@pytest.mark.parametrize("fmt", ["graphml", "gexf", "json", "cytoscape", "csv", "neuronpedia"])
def test_export_command(tmp_path, capsys, fmt):
    write_json(small_graph(), tmp_path / "graph.json")
    assert main(["export", str(tmp_path / "graph.json"), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out
    written = {"graphml": "graph.graphml", "gexf": "graph.gexf", "json": "graph.json", "cytoscape": "graph.cyjs", "csv": "csv",
               "neuronpedia": "graph.neuronpedia.json"}[fmt]
    path = tmp_path / written
    assert path.exists()
    size = sum(p.stat().st_size for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else path.stat().st_size  # .featgraph marker not counted
    assert size == _printed_size(out)
    assert read_json(tmp_path / "graph.json").node_ids == ["F0", "F3", "F7"]
    if fmt == "neuronpedia":
        assert neuronpedia_problems(json.loads(path.read_text())) == []


def test_export_command_neuronpedia_options(tmp_path, capsys):
    write_json(small_graph(), tmp_path / "graph.json")
    out = tmp_path / "np.json"
    assert main(["export", str(tmp_path / "graph.json"), "--format", "neuronpedia", "--out", str(out), "--scan", "gpt2-small", "--slug", "co-act"]) == 0
    md = json.loads(out.read_text())["metadata"]
    assert (md["scan"], md["slug"]) == ("gpt2-small", "co-act")
    assert main(["export", str(tmp_path / "graph.json"), "--format", "gexf", "--scan", "gpt2-small"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apply to --format neuronpedia only" in err[0]
