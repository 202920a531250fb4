"""Exports read back with networkx give the same nodes, edges and attributes; the export command."""

import csv
import json

import networkx as nx
import numpy as np
import pytest

from featgraph.cli import main
from featgraph.export import read_gexf, read_json, write_csv, write_cytoscape, write_gexf, write_json
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
    raw = nx.read_gexf(tmp_path / "g.gexf")
    assert {"color", "position", "size"} <= set(raw.nodes["F0"]["viz"])


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


@pytest.mark.parametrize("fmt", ["graphml", "gexf", "json", "cytoscape", "csv"])
def test_export_command(tmp_path, capsys, fmt):
    write_json(small_graph(), tmp_path / "graph.json")
    assert main(["export", str(tmp_path / "graph.json"), "--format", fmt]) == 0
    assert "wrote" in capsys.readouterr().out
    written = {"graphml": "graph.graphml", "gexf": "graph.gexf", "json": "graph.json", "cytoscape": "graph.cyjs", "csv": "csv"}[fmt]
    assert (tmp_path / written).exists()
    assert read_json(tmp_path / "graph.json").node_ids == ["F0", "F3", "F7"]
