"""Interaction graphs (directed, typed) and merging with a co-activation graph into one multigraph."""

import networkx as nx
import numpy as np

from featgraph.export import read_graphml, read_json, write_graphml, write_json
from featgraph.graph import FeatureGraph
from featgraph.interaction_graph import interaction_graph, merge_graphs


def test_interaction_graph_is_directed_typed_and_pruned():
    I = np.array([[5.0, 1.0, 0.0, 2.0], [0.0, 0.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    g = interaction_graph(I, "mlp", top_k=None, threshold=1.0)
    edges = {(g.node_ids[a], g.node_ids[b]): w for a, b, w in zip(g.edge_src, g.edge_dst, g.weights)}
    assert edges == {("F0", "F1"): 1.0, ("F0", "F3"): 2.0, ("F1", "F2"): 3.0}  # diagonal and < 1 dropped
    assert g.directed and set(g.edge_attrs["type"]) == {"mlp"}
    top1 = interaction_graph(I, "qk", top_k=1)
    assert ("F0", "F3") in {(top1.node_ids[a], top1.node_ids[b]) for a, b in zip(top1.edge_src, top1.edge_dst)}


def test_merge_keeps_parallel_edges_with_types(tmp_path):
    co = FeatureGraph(["F0", "F1", "F2"], {"frequency": [0.1, 0.2, 0.3]}, [0, 1], [1, 2], {"weight": np.array([0.9, 0.4])})
    mlp = interaction_graph(np.array([[0, 2.0, 0], [0, 0, 0], [1.5, 0, 0]]), "mlp", top_k=None, threshold=0.1)
    m = merge_graphs(co, mlp)
    assert m.multigraph and m.directed and m.n_edges == 4
    types = sorted(zip([m.node_ids[a] for a in m.edge_src], [m.node_ids[b] for b in m.edge_dst], m.edge_attrs["type"]))
    assert types == [("F0", "F1", "coactivation"), ("F0", "F1", "mlp"), ("F1", "F2", "coactivation"), ("F2", "F0", "mlp")]
    nxg = m.to_networkx()
    assert isinstance(nxg, nx.MultiDiGraph) and nxg.number_of_edges("F0", "F1") == 2
    assert m.node_attrs["frequency"] == [0.1, 0.2, 0.3]
    for write, read, name in [(write_json, read_json, "m.json"), (write_graphml, read_graphml, "m.graphml")]:
        back = read(write(m, tmp_path / name))
        assert back.multigraph and back.n_edges == 4 and sorted(back.edge_attrs["type"]) == sorted(m.edge_attrs["type"])
