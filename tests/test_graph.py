"""Graph layer: streamed statistics against brute force, measures, pruning, communities, HTML, exports."""

import json
import re

import networkx as nx
import numpy as np
import pytest
import torch

from crosscoder.errors import FeatgraphError
from featgraph.coactivation import add_layer_profiles, add_top_contexts, coactivation_graph, top_k_mask
from featgraph.communities import leiden
from featgraph.export import read_graphml, read_json, write_graphml, write_json
from featgraph.graph import FeatureGraph
from featgraph.html import write_html
from featgraph.measures import jaccard, necessity, pearson, sufficiency
from featgraph.stats import CoactivationStats

HOSTILE = ["<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>", "a&b\"'"]


def random_sparse(n=300, F=12, density=0.25, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.exponential(1.0, size=(n, F)) * (rng.random((n, F)) < density)
    X[:, 1] = np.where(X[:, 0] > 0, X[:, 0] * 2 + 0.1, 0)  # a strongly coupled pair
    return X.astype(np.float32)


def stream(X, threshold=0.0, chunk=64, top_m=5):
    s = CoactivationStats(X.shape[1], threshold=threshold, top_m=top_m)
    for a in range(0, len(X), chunk):
        s.update(torch.from_numpy(X[a : a + chunk]))
    return s


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_stats_match_brute_force(threshold):
    X = random_sparse()
    s = stream(X, threshold)
    A = (X > threshold).astype(np.int64)
    np.testing.assert_array_equal(s.count_F, A.sum(0))
    np.testing.assert_allclose(s.sum_F, X.sum(0), rtol=1e-6)
    np.testing.assert_allclose(s.sumsq_F, (X.astype(np.float64) ** 2).sum(0), rtol=1e-6)
    np.testing.assert_array_equal(s.co_count.toarray(), A.T @ A)
    np.testing.assert_allclose(s.co_moment.toarray(), X.T.astype(np.float64) @ X, rtol=1e-6)
    # top contexts: the largest activations of each feature with their token indices
    for f in range(X.shape[1]):
        order = np.argsort(-X[:, f], kind="stable")[:5]
        order = order[X[order, f] > 0]
        np.testing.assert_allclose(s.top_val_FM[f, : len(order)], X[order, f], rtol=1e-6)
        assert set(s.top_idx_FM[f, : len(order)]) == set(order)


def test_measures_match_brute_force():
    X = random_sparse().astype(np.float64)
    s = stream(X.astype(np.float32))
    i, j = np.triu_indices(X.shape[1], k=1)
    A = X > 0
    np.testing.assert_allclose(pearson(s, i, j), [np.corrcoef(X[:, a], X[:, b])[0, 1] for a, b in zip(i, j)], atol=1e-6)
    inter = np.array([(A[:, a] & A[:, b]).sum() for a, b in zip(i, j)])
    union = np.array([(A[:, a] | A[:, b]).sum() for a, b in zip(i, j)])
    np.testing.assert_allclose(jaccard(s, i, j), inter / union)
    np.testing.assert_allclose(sufficiency(s, i, j), inter / A[:, i].sum(0))
    np.testing.assert_allclose(necessity(s, i, j), inter / A[:, j].sum(0))


def test_merge_equals_one_pass():
    X = random_sparse(n=400, seed=3)
    whole, a, b = stream(X), stream(X[:150]), CoactivationStats(X.shape[1], top_m=5)
    for k in range(150, 400, 64):
        b.update(torch.from_numpy(X[k : k + 64]), torch.arange(k, min(k + 64, 400)))
    m = a.merge(b)
    assert m.n_tokens == whole.n_tokens
    for name in ("count_F", "sum_F", "sumsq_F", "max_F", "top_val_FM", "top_idx_FM"):
        np.testing.assert_allclose(getattr(m, name), getattr(whole, name), rtol=1e-9, err_msg=name)
    assert (m.co_count != whole.co_count).nnz == 0
    np.testing.assert_allclose(m.co_moment.toarray(), whole.co_moment.toarray(), rtol=1e-9)


def test_top_k_mask_hand_case():
    src, dst = np.array([0, 0, 0, 1]), np.array([1, 2, 3, 2])
    w = np.array([0.9, 0.5, 0.1, 0.8])
    # k=1: node 0 keeps 0-1, node 1 keeps 0-1, node 2 keeps 1-2, node 3 keeps its only edge 0-3
    assert top_k_mask(src, dst, w, 1).tolist() == [True, False, True, True]


def test_coactivation_graph_edges_and_attributes():
    X = random_sparse()
    s = stream(X)
    g = coactivation_graph(s, measure="pearson", top_k=3, min_cocount=2)
    assert g.n_edges > 0 and (g.weights > 0).all()
    # feature 0 and 1 are coupled: their edge must be there with ρ close to 1
    k = [e for e in range(g.n_edges) if {g.node_ids[g.edge_src[e]], g.node_ids[g.edge_dst[e]]} == {"F0", "F1"}]
    assert len(k) == 1 and g.edge_attrs["pearson"][k[0]] > 0.95
    assert set(g.edge_attrs) >= {"weight", "cocount", "pearson", "jaccard", "sufficiency", "necessity"}
    # every node has at most top_k edges it chose, so degree ≤ top_k unless others chose it
    assert all(c >= 2 for c in g.edge_attrs["cocount"])
    with pytest.raises(FeatgraphError):
        coactivation_graph(s, measure="cosine-ish")


def planted_graph(n_comm=4, size=10, p_in=0.6, p_out=0.03, seed=0):
    rng = np.random.default_rng(seed)
    n = n_comm * size
    truth = np.repeat(np.arange(n_comm), size)
    src, dst = [], []
    for a in range(n):
        for b in range(a + 1, n):
            if rng.random() < (p_in if truth[a] == truth[b] else p_out):
                src.append(a), dst.append(b)
    g = FeatureGraph([f"F{i}" for i in range(n)], edge_src=src, edge_dst=dst, edge_attrs={"weight": np.ones(len(src))})
    return g, truth


def test_leiden_planted():
    g, truth = planted_graph()
    res = leiden(g, seed=0)
    assert res.n_communities == 4
    # each planted block maps to exactly one found community
    for c in range(4):
        assert len(set(res.membership[truth == c])) == 1
    assert res.modularity > 0.5
    assert sum(res.sizes) == g.n_nodes and res.sizes == sorted(res.sizes, reverse=True)
    assert np.array_equal(leiden(g, seed=0).membership, res.membership)
    parts = [{g.node_ids[i] for i in np.flatnonzero(res.membership == c)} for c in range(res.n_communities)]
    assert res.modularity == pytest.approx(nx.algorithms.community.modularity(g.to_networkx(), parts), abs=1e-9)


def annotated_graph():
    X = random_sparse(n=200, F=10)
    s = stream(X, top_m=4)
    g = coactivation_graph(s, top_k=3, min_cocount=2)
    add_layer_profiles(g, np.abs(np.random.default_rng(0).normal(size=(10, 3))), ["h0", "h1", "h2"])
    tokens = np.arange(200).reshape(20, 10) % len(HOSTILE)
    add_top_contexts(g, s, tokens, lambda t: HOSTILE[t], window=4)
    g.set_node_attr("community", leiden(g).membership.tolist())
    return g


def test_html_has_every_node_and_escapes_tokens(tmp_path):
    g = annotated_graph()
    path = write_html(g, tmp_path / "g.html", title="<b>title</b>")
    html = path.read_text()
    for nid in g.node_ids:
        assert f'"id": "{nid}"' in html
    for bad in HOSTILE[:2]:
        assert bad not in html
    assert "<img" not in html and "alert(2)</script>" not in html
    assert "<b>title</b>" not in html
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', html)  # nothing from a CDN
    assert "vis.Network" in html
    # the data embedded in the page round-trips to the same node count
    nodes = json.loads(re.search(r"new vis.DataSet\((\[.*?\])\);", html, re.S).group(1))
    assert len(nodes) == g.n_nodes
    assert nodes[0]["info"]["top_contexts"][0]["token"] in HOSTILE


def test_graphml_and_json_round_trip(tmp_path):
    g = annotated_graph()
    for write, read, name in [(write_graphml, read_graphml, "g.graphml"), (write_json, read_json, "g.json")]:
        back = read(write(g, tmp_path / name))
        assert back.node_ids == g.node_ids
        for k in g.node_attrs:
            assert back.node_attrs[k] == pytest.approx(g.node_attrs[k]) if k in ("frequency", "mean_act", "max_act") else back.node_attrs[k] == g.node_attrs[k], k
        got = {(back.node_ids[a], back.node_ids[b]): w for a, b, w in zip(back.edge_src, back.edge_dst, back.weights)}
        want = {(g.node_ids[a], g.node_ids[b]): w for a, b, w in zip(g.edge_src, g.edge_dst, g.weights)}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()))
        assert back.meta["measure"] == "pearson"


def test_conversions_are_lossless():
    g = annotated_graph()
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == g.n_nodes and nxg.number_of_edges() == g.n_edges
    assert nxg.nodes["F0"]["layer_profile"] == g.node_attrs["layer_profile"][g.index("F0")]
    ig = g.to_igraph()
    assert ig.vs["name"] == g.node_ids and ig.ecount() == g.n_edges
    assert ig.es["weight"] == pytest.approx(g.weights.tolist())


def test_empty_graph_is_a_clear_error():
    g = FeatureGraph(["F0", "F1"])
    with pytest.raises(FeatgraphError, match="no edges"):
        leiden(g)


def test_dense_and_sparse_accumulators_agree():
    X = random_sparse(n=300, F=12, seed=4)
    thr = 0.3 * X.max(axis=0)  # "active above 30 % of the feature's max", per feature
    dense, sparse = CoactivationStats(12, threshold=thr, dense=True), CoactivationStats(12, threshold=thr, dense=False)
    for a in range(0, 300, 64):
        dense.update(torch.from_numpy(X[a : a + 64]))
        sparse.update(torch.from_numpy(X[a : a + 64]))
    A = (X > thr).astype(np.int64)
    np.testing.assert_array_equal(dense.co_count.toarray(), A.T @ A)
    np.testing.assert_array_equal(sparse.co_count.toarray(), A.T @ A)
    np.testing.assert_allclose(dense.co_moment.toarray(), X.T.astype(np.float64) @ X, rtol=1e-6)
    np.testing.assert_allclose(sparse.co_moment.toarray(), dense.co_moment.toarray(), rtol=1e-9)
    np.testing.assert_array_equal(dense.count_F, A.sum(0))


def test_feature_max_first_pass():
    from featgraph.stats import feature_max

    X = random_sparse()
    np.testing.assert_allclose(feature_max(torch.from_numpy(X[a : a + 50]) for a in range(0, 300, 50)), X.max(0))


def test_mutual_information_and_decoder_cosine_brute_force():
    from featgraph.measures import decoder_cosine, mutual_information

    X = random_sparse(n=400, seed=2)
    s = stream(X)
    A = X > 0
    i, j = np.triu_indices(X.shape[1], k=1)

    def mi(a, b):
        out = 0.0
        for va in (0, 1):
            for vb in (0, 1):
                p = np.mean((a == va) & (b == vb))
                if p > 0:
                    out += p * np.log(p / (np.mean(a == va) * np.mean(b == vb)))
        return out

    np.testing.assert_allclose(mutual_information(s, i, j), [mi(A[:, a], A[:, b]) for a, b in zip(i, j)], atol=1e-12)
    D = np.random.default_rng(0).normal(size=(12, 6))
    want = [D[a] @ D[b] / np.linalg.norm(D[a]) / np.linalg.norm(D[b]) for a, b in zip(i, j)]
    np.testing.assert_allclose(decoder_cosine(D, i, j), want)
    g = coactivation_graph(s, measure="decoder_cosine", top_k=3, min_cocount=2, decoder_FK=D)
    assert g.meta["measure"] == "decoder_cosine" and (g.weights > 0).all() and "decoder_cosine" in g.edge_attrs


def test_stats_save_load_round_trip(tmp_path):
    from featgraph.stats import load_stats, save_stats

    X = random_sparse()
    s = stream(X, threshold=0.2)
    save_stats(s, tmp_path / "st", meta={"layer_F": [0] * 6 + [1] * 6})
    back, meta = load_stats(tmp_path / "st")
    assert meta["layer_F"] == [0] * 6 + [1] * 6 and back.n_tokens == s.n_tokens
    for name in ("count_F", "sum_F", "sumsq_F", "max_F", "top_val_FM", "top_idx_FM"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name))
    assert (back.co_count != s.co_count).nnz == 0 and (back.co_moment != s.co_moment).nnz == 0
    with pytest.raises(FeatgraphError, match="graph build"):
        load_stats(tmp_path)


def test_no_candidate_pairs_gives_an_empty_graph_and_a_clear_error():
    s = stream(random_sparse())
    g = coactivation_graph(s, top_k=3, min_cocount=10**9)
    assert g.n_nodes == 0 and g.n_edges == 0
    with pytest.raises(FeatgraphError, match="no edges; use more tokens, a lower min_cocount"):
        g.require_edges()
