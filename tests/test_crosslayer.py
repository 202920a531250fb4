"""Cross-layer graphs of an SAE stack: planted pass-through, AND/OR gates, appearing features; brute-force checks."""

import doctest

import numpy as np
import pytest
import torch

from crosscoder.errors import FeatgraphError
from featgraph import crosslayer
from featgraph.crosslayer import (
    active_features,
    best_match,
    find_gates,
    local_index,
    pass_through_counts,
    prompt_graph,
    stack_graph,
    stack_node_ids,
    stack_stats,
)
from featgraph.graph import FeatureGraph
from featgraph.measures import MEASURES
from featgraph.stats import CoactivationStats

# Global features of a 3-layer stack, 12 tokens (tokens 10, 11 silent):
#   layer 0: a (tokens 0-3), b (2-5), g (6-7, noise that vanishes)
#   layer 1: c = a AND b (2-3), d = a OR b (0-5), e = copy of a (ρ = 1), z dead
#   layer 2: p = copy of c (ρ = 1; three necessity parents c, d, e: no gate), h (8-9, appears from nowhere)
A, B, G, C, D, E, Z, P, H = range(9)
LAYER = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
IDS = ["L0/F0", "L0/F1", "L0/F2", "L1/F0", "L1/F1", "L1/F2", "L1/F3", "L2/F0", "L2/F1"]


def planted() -> np.ndarray:
    X = np.zeros((12, 9), dtype=np.float32)
    X[[0, 1, 2, 3], A] = [1, 2, 1, 3]
    X[[2, 3, 4, 5], B] = [2, 1, 1, 2]
    X[[6, 7], G] = [1, 2]
    X[[2, 3], C] = [1, 2]
    X[[0, 1, 2, 3, 4, 5], D] = [1, 1, 2, 2, 1, 1]
    X[:, E] = X[:, A]
    X[:, P] = X[:, C]
    X[[8, 9], H] = [1, 3]
    return X


def stream(X: np.ndarray, chunk: int = 5) -> CoactivationStats:
    s = CoactivationStats(X.shape[1])
    for a in range(0, len(X), chunk):
        s.update(torch.from_numpy(X[a : a + chunk]))
    return s


def brute(X: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure for every ordered pair (i, j), by numpy on the dense matrix."""
    X64 = X.astype(np.float64)
    Bin = (X > 0).astype(np.float64)
    Cc = Bin.T @ Bin
    n = Bin.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        R = np.nan_to_num(np.corrcoef(X64.T))
        return {
            "pearson": R,
            "jaccard": np.nan_to_num(Cc / (n[:, None] + n[None, :] - Cc)),
            "sufficiency": np.nan_to_num(Cc / n[:, None]),  # P(j | i)
            "necessity": np.nan_to_num(Cc / n[None, :]),  # P(i | j)
            "mutual_information": binary_mi(Bin),
            "cocount": Cc,
        }


def binary_mi(Bin: np.ndarray) -> np.ndarray:
    """MI (nats) of the binary activity of every pair, summing the 2×2 table cell by cell."""
    F = Bin.shape[1]
    out = np.zeros((F, F))
    for i in range(F):
        for j in range(F):
            for a in (0, 1):
                for b in (0, 1):
                    p_ab = np.mean((Bin[:, i] == a) & (Bin[:, j] == b))
                    p_a, p_b = np.mean(Bin[:, i] == a), np.mean(Bin[:, j] == b)
                    out[i, j] += p_ab * np.log(p_ab / (p_a * p_b)) if p_ab > 0 else 0.0
    return out


@pytest.fixture(scope="module")
def stack():
    X = planted()
    return X, stream(X)


def test_ids_and_local_index():
    assert local_index(LAYER).tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    assert stack_node_ids(LAYER) == IDS
    assert stack_node_ids(np.array([3, 1, 3]), np.array([7, 0, 2])) == ["L3/F7", "L1/F0", "L3/F2"]


def test_best_match_planted(stack):
    _, s = stack
    bm = best_match(s, LAYER)
    assert bm.forward_idx_F[A] == E and bm.forward_F[A] == pytest.approx(1.0)
    assert bm.backward_idx_F[E] == A and bm.backward_F[E] == pytest.approx(1.0)
    assert bm.forward_idx_F[C] == P and bm.backward_idx_F[P] == C
    for f in (G, Z, P, H):  # noise, dead and last layer: no forward candidate
        assert bm.forward_F[f] == -np.inf and bm.forward_idx_F[f] == -1
    for f in (A, B, G, Z, H):  # first layer, dead, appearing: no backward candidate
        assert bm.backward_F[f] == -np.inf and bm.backward_idx_F[f] == -1


def test_pass_through_counts_planted(stack):
    _, s = stack
    l01, l12 = pass_through_counts(s, LAYER, tau=0.9)
    # 0 → 1: only a passes (to e); b and g vanish; c and d appear (new combinations), z is dead.
    assert l01._asdict() == {"layer": 0, "next_layer": 1, "n_alive": 3, "n_dead": 0, "n_next_alive": 3,
                             "n_next_dead": 1, "pass_through": 1, "vanishing": 2, "matched_next": 1, "appearing": 2}
    # 1 → 2: only c passes (to p); d and e vanish; h appears.
    assert l12._asdict() == {"layer": 1, "next_layer": 2, "n_alive": 3, "n_dead": 1, "n_next_alive": 2,
                             "n_next_dead": 0, "pass_through": 1, "vanishing": 2, "matched_next": 1, "appearing": 1}
    # τ = 0.7 also catches b → d (ρ ≈ 0.732) and d, e → p (0.751, 0.771); c and d are then matched from a.
    l01, l12 = pass_through_counts(s, LAYER, tau=0.7)
    assert (l01.pass_through, l01.appearing, l12.pass_through, l12.appearing) == (2, 0, 3, 1)


def test_gates_planted(stack):
    X, _ = stack
    s = stack_stats(lambda: [torch.from_numpy(X)], 9)  # spar-2024's rule f > 0.2·max (here the same tokens as f > 0)
    gates = find_gates(s, LAYER, threshold=0.999, min_count=2)
    assert [(g.kind, g.child_id, g.parent_ids, g.child_count) for g in gates] == [
        ("AND", "L1/F0", ("L0/F0", "L0/F1"), 2),  # c fires only when a and b both fire
        ("OR", "L1/F1", ("L0/F0", "L0/F1"), 6),  # a alone or b alone turns d on
    ]
    assert all(g.scores == (1.0, 1.0) for g in gates)
    assert gates[0].child == C and gates[0].parents == (A, B)
    # p has three necessity parents (c, d, e) and e one (a): neither is a gate.
    assert all(g.child not in (P, E) for g in gates)
    # the guard: c fires on only 2 tokens, so with min_count 3 the AND gate goes; d's parents fire 4 times each.
    assert [g.kind for g in find_gates(s, LAYER, min_count=3)] == ["OR"]
    assert find_gates(s, LAYER, min_count=5) == []


def test_stack_graph_planted_against_brute_force(stack):
    X, s = stack
    g = stack_graph(s, LAYER, measure="pearson", top_k=10, min_cocount=1)
    assert g.directed and g.meta["kind"] == "sae_stack" and g.meta["layers"] == [0, 1, 2]
    assert g.node_ids == ["L0/F0", "L0/F1", "L1/F0", "L1/F1", "L1/F2", "L2/F0"]  # g, z, h have no edge
    assert g.meta["n_alive"] == 8 and g.meta["n_isolated"] == 2
    feats = np.asarray(g.node_attrs["global_feature"])
    src, dst = feats[g.edge_src], feats[g.edge_dst]
    assert sorted(zip(src.tolist(), dst.tolist())) == [
        (A, C), (A, D), (A, E), (B, C), (B, D), (B, E), (C, P), (D, P), (E, P)]
    assert (LAYER[dst] == LAYER[src] + 1).all()
    ref = brute(X)
    for name in [*MEASURES, "cocount"]:
        np.testing.assert_allclose(g.edge_attrs[name], ref[name][src, dst], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g.weights, ref["pearson"][src, dst])
    assert g.node(g.index("L1/F1")) == {
        "id": "L1/F1", "layer": 1, "feature": 1, "global_feature": D, "count": 6, "frequency": 0.5,
        "mean_act": 8 / 6, "max_act": 2.0}
    assert g.edge_attrs["necessity"][(src == A) & (dst == C)][0] == 1.0  # P(a | c)


def test_stack_graph_pruning(stack):
    _, s = stack
    g = stack_graph(s, LAYER, top_k=None, threshold=0.75, min_cocount=1)
    assert (g.weights >= 0.75).all() and g.n_edges == 5  # a→c, a→e, c→p, d→p, e→p
    g1 = stack_graph(s, LAYER, top_k=1, min_cocount=1)
    feats = np.asarray(g1.node_attrs["global_feature"])
    pairs = set(zip(feats[g1.edge_src].tolist(), feats[g1.edge_dst].tolist()))
    # the heaviest edge at each endpoint: out of a, b, c, d, e: a→e, b→d, c→p, d→p, e→p; into c, d: a→c, a→d
    assert pairs == {(A, E), (B, D), (C, P), (D, P), (E, P), (A, C), (A, D)}
    gi = stack_graph(s, LAYER, top_k=1, min_cocount=1, keep_isolated=True)
    assert set(gi.node_ids) == set(IDS) - {"L1/F3"}  # every feature that fires; dead z is left out
    assert stack_graph(s, LAYER, min_cocount=3).n_edges == 3  # only a→d, a→e, b→d have C ≥ 3
    g_nec = stack_graph(s, LAYER, measure="necessity", top_k=10, min_cocount=1)
    np.testing.assert_array_equal(g_nec.weights, g_nec.edge_attrs["necessity"])


def test_prompt_graph_planted(stack):
    _, s = stack
    g = stack_graph(s, LAYER, top_k=10, min_cocount=1)
    f_TF = torch.zeros(4, 9)
    f_TF[0, A], f_TF[2, A] = 1.0, 3.0
    f_TF[1, B] = 2.0
    f_TF[1, C], f_TF[3, D], f_TF[3, E] = 0.5, 2.5, 1.5
    f_TF[2, H] = 1.0  # fires but is no node of the graph
    act = active_features(f_TF)
    assert act.features.tolist() == [A, B, C, D, E, H]
    assert act.max_act.tolist() == [3.0, 2.0, 0.5, 2.5, 1.5, 1.0]
    assert [p.tolist() for p in act.positions] == [[0, 2], [1], [1], [3], [3], [2]]
    pg = prompt_graph(g, act.features, act.max_act, act.positions, spacing=2.0)
    assert pg.node_ids == ["L0/F0", "L0/F1", "L1/F0", "L1/F1", "L1/F2"]
    assert pg.meta["missing"] == [H] and pg.meta["kind"] == "prompt" and pg.meta["source_kind"] == "sae_stack"
    assert pg.node_attrs["x"] == [0.0, 0.0, 2.0, 2.0, 2.0]
    # y: rank within the layer by descending activation, centred: a (3) over b (2); d (2.5), e (1.5), c (0.5)
    assert pg.node_attrs["y"] == [-1.0, 1.0, 2.0, -2.0, 0.0]
    assert pg.node_attrs["prompt_activation"] == [3.0, 2.0, 0.5, 2.5, 1.5]
    assert pg.node_attrs["prompt_positions"] == [[0, 2], [1], [1], [3], [3]]
    assert pg.n_edges == 6 and pg.directed
    edges = {(pg.node_ids[u], pg.node_ids[v]) for u, v in zip(pg.edge_src, pg.edge_dst)}
    assert edges == {(a, b) for a in ("L0/F0", "L0/F1") for b in ("L1/F0", "L1/F1", "L1/F2")}
    k = pg.node_ids.index("L1/F1")
    assert pg.node_attrs["count"][k] == 6  # dataset-wide attributes travel along
    # string ids, no activation: y by node order
    pg2 = prompt_graph(g, ["L1/F2", "L2/F0", "L9/F9"])
    assert pg2.node_ids == ["L1/F2", "L2/F0"] and pg2.meta["missing"] == ["L9/F9"]
    assert pg2.node_attrs["y"] == [0.0, 0.0] and pg2.n_edges == 1
    assert "prompt_activation" not in pg2.node_attrs
    pg2.to_networkx(), pg.to_igraph()


def test_prompt_graph_peak_layer():
    """A crosscoder graph: nodes F{i} with ``feature`` = global index and ``peak_layer``."""
    g = FeatureGraph(
        ["F0", "F5", "F7", "F9"],
        {"feature": [0, 5, 7, 9], "peak_layer": [0, 2, 2, 1]},
        np.array([0, 1, 2]), np.array([1, 2, 3]), {"weight": np.array([0.5, 0.4, 0.3])},
    )
    pg = prompt_graph(g, [9, 5, 7], activation=[1.0, 1.0, 4.0])
    assert pg.node_ids == ["F5", "F7", "F9"]
    assert pg.node_attrs["x"] == [2.0, 2.0, 1.0] and pg.node_attrs["y"] == [0.5, -0.5, 0.0]
    assert pg.edge(0) == {"source": "F5", "target": "F7", "weight": 0.4} and pg.n_edges == 2
    with pytest.raises(FeatgraphError, match="layer"):
        prompt_graph(FeatureGraph(["F0"]), [0])


@pytest.mark.parametrize("measure", sorted(MEASURES))
@pytest.mark.parametrize("min_cocount", [1, 3])
def test_best_match_equals_brute_force(measure, min_cocount):
    rng = np.random.default_rng(7)
    layer_F = np.array([0] * 4 + [2] * 5 + [5] * 3 + [6] * 4)  # layers need not be contiguous numbers
    F = len(layer_F)
    X = (rng.exponential(1.0, (200, F)) * (rng.random((200, F)) < 0.3)).astype(np.float32)
    X[:, 5] = 2 * X[:, 1]  # a planted pass-through 0 → 2 (ρ = 1)
    X[:, 11] = 0  # a dead feature
    s = stream(X, chunk=64)
    bm = best_match(s, layer_F, measure, min_cocount)
    ref = brute(X)
    m, Cc = ref[measure], ref["cocount"]
    layers = np.unique(layer_F)
    fwd, bwd = np.full(F, -np.inf), np.full(F, -np.inf)
    for i in range(F):
        for j in range(F):
            adjacent = np.searchsorted(layers, layer_F[j]) == np.searchsorted(layers, layer_F[i]) + 1
            if adjacent and Cc[i, j] >= min_cocount:
                fwd[i], bwd[j] = max(fwd[i], m[i, j]), max(bwd[j], m[i, j])
    np.testing.assert_allclose(bm.forward_F, fwd, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bm.backward_F, bwd, rtol=1e-9, atol=1e-12)
    has_f, has_b = np.isfinite(fwd), np.isfinite(bwd)
    assert ((bm.forward_idx_F >= 0) == has_f).all() and ((bm.backward_idx_F >= 0) == has_b).all()
    i = np.flatnonzero(has_f)
    np.testing.assert_allclose(m[i, bm.forward_idx_F[i]], fwd[i], rtol=1e-9, atol=1e-12)
    j = np.flatnonzero(has_b)
    np.testing.assert_allclose(m[bm.backward_idx_F[j], j], bwd[j], rtol=1e-9, atol=1e-12)
    if min_cocount == 1 and measure != "mutual_information":  # absent pairs (never co-firing) score ≤ 0, so no positive max hides among them
        rank = np.searchsorted(layers, layer_F)
        adj = rank[None, :] == rank[:, None] + 1
        full_fwd = np.where(adj, m, -np.inf).max(1)
        np.testing.assert_allclose(np.where(fwd > 0, fwd, 0), np.where(full_fwd > 0, full_fwd, 0), atol=1e-12)
    assert bm.forward_F[11] == bm.backward_F[11] == -np.inf  # dead
    if measure == "pearson":
        assert bm.backward_idx_F[5] == 1 and bm.backward_F[5] == pytest.approx(1.0)


def test_stack_graph_random_edges_adjacent_only():
    rng = np.random.default_rng(3)
    layer_F = np.repeat([1, 3, 4], [6, 6, 6])
    X = (rng.exponential(1.0, (150, 18)) * (rng.random((150, 18)) < 0.4)).astype(np.float32)
    s = stream(X, chunk=50)
    g = stack_graph(s, layer_F, top_k=3, min_cocount=2)
    feats = np.asarray(g.node_attrs["global_feature"])
    src, dst = feats[g.edge_src], feats[g.edge_dst]
    assert {(a, b) for a, b in zip(layer_F[src], layer_F[dst])} <= {(1, 3), (3, 4)}
    assert (g.weights > 0).all() and (g.edge_attrs["cocount"] >= 2).all()
    np.testing.assert_allclose(g.weights, brute(X)["pearson"][src, dst], rtol=1e-9)
    assert g.node_ids == stack_node_ids(layer_F[feats], local_index(layer_F)[feats])


def test_errors(stack):
    _, s = stack
    with pytest.raises(FeatgraphError, match="shape"):
        best_match(s, LAYER[:-1])
    with pytest.raises(FeatgraphError, match="unknown measure"):
        pass_through_counts(s, LAYER, 0.5, measure="cosine")
    with pytest.raises(FeatgraphError, match="prune"):
        stack_graph(s, LAYER, top_k=None, threshold=None)
    with pytest.raises(FeatgraphError, match="no tokens"):
        stack_graph(CoactivationStats(9), LAYER)


def test_doctests():
    assert doctest.testmod(crosslayer).failed == 0


def test_dense_accumulator_gives_the_same_graph(stack):
    X, s = stack
    d = CoactivationStats(9, dense=True)
    d.update(torch.from_numpy(X))
    a, b = stack_graph(s, LAYER, min_cocount=1), stack_graph(d, LAYER, min_cocount=1)
    assert a.node_ids == b.node_ids and (a.edge_src == b.edge_src).all() and (a.edge_dst == b.edge_dst).all()
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9)
    assert find_gates(d, LAYER, min_count=2, active_frac=0.0) == find_gates(s, LAYER, min_count=2, active_frac=0.0)
