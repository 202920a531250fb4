"""Communities: recovery of planted structure end to end, partition comparison, objectives, sweeps, summaries."""

import itertools

import networkx as nx
import numpy as np
import pytest
import torch

from crosscoder.errors import FeatgraphError
from featgraph.coactivation import coactivation_graph
from featgraph.communities import (
    adjusted_rand_index,
    community_summaries,
    contingency,
    leiden,
    louvain,
    normalized_mutual_info,
    resolution_sweep,
    stability,
)
from featgraph.graph import FeatureGraph
from featgraph.planted import planted_activations
from featgraph.stats import CoactivationStats

# Realistic noise: every feature also fires at random on 2 % of tokens, against 3.25 % from its topic
# ((1 + 0.3) / 8 topic rate × 0.2), so about 40 % of all firings are noise.
PLANTED = {"n_communities": 8, "features_per_community": 16, "n_tokens": 20_000, "p_topic": 0.3, "p_member": 0.2, "noise": 0.02}
CPM_RESOLUTION = 0.01  # between the mean cross-community (≈ 0.007) and within-community (≈ 0.05) Pearson weight


def planted_graph(seed=0, **overrides):
    """Planted activations → streamed statistics → co-activation graph; truth aligned with the graph's nodes."""
    p = planted_activations(**{**PLANTED, **overrides}, seed=seed)
    stats = CoactivationStats(p.f_NF.shape[1])
    for a in range(0, len(p.f_NF), 4096):
        stats.update(p.f_NF[a : a + 4096])
    g = coactivation_graph(stats, measure="pearson", top_k=8, min_cocount=5)
    return g, p.truth[np.asarray(g.node_attrs["feature"])]


@pytest.fixture(scope="module")
def planted():
    return planted_graph()


def nx_modularity(g, membership, resolution=1.0):
    parts = [set(np.flatnonzero(membership == c).tolist()) for c in np.unique(membership)]
    h = nx.Graph()
    h.add_nodes_from(range(g.n_nodes))
    h.add_weighted_edges_from(zip(g.edge_src.tolist(), g.edge_dst.tolist(), g.weights.tolist()))
    return nx.algorithms.community.modularity(h, parts, weight="weight", resolution=resolution)


# ---- the generator -----------------------------------------------------------------------------------------------
def test_planted_generator_follows_its_model():
    p = planted_activations(**PLANTED, seed=1)
    K, S = PLANTED["n_communities"], PLANTED["features_per_community"]
    assert p.f_NF.dtype == torch.float32 and tuple(p.f_NF.shape) == (20_000, K * S) and (p.f_NF >= 0).all()
    assert p.truth.tolist() == np.repeat(np.arange(K), S).tolist()
    n_topics = p.topics_NK.sum(1)
    assert n_topics.min() == 1 and n_topics.max() == 2
    assert (n_topics == 2).mean() == pytest.approx(PLANTED["p_topic"], abs=0.015)
    # P(f active) = 1 − (1 − P(topic) p_member)(1 − noise), with P(topic) = (1 + p_topic) / K
    p_topic_active = (1 + PLANTED["p_topic"]) / K
    expected = 1 - (1 - p_topic_active * PLANTED["p_member"]) * (1 - PLANTED["noise"])
    freq = (p.f_NF > 0).float().mean(0).numpy()
    assert freq.mean() == pytest.approx(expected, rel=0.03)
    assert torch.equal(planted_activations(**PLANTED, seed=1).f_NF, p.f_NF)
    assert not torch.equal(planted_activations(**PLANTED, seed=2).f_NF, p.f_NF)


def test_planted_without_noise_fires_exactly_on_topics():
    p = planted_activations(3, 2, 500, seed=0, p_member=1.0, noise=0.0)
    np.testing.assert_array_equal((p.f_NF > 0).numpy(), p.topics_NK[:, p.truth])
    with pytest.raises(ValueError, match="probability"):
        planted_activations(3, 2, 10, noise=1.5)


# ---- recovery of planted communities -----------------------------------------------------------------------------
METHODS = {
    "leiden-modularity": lambda g, s: leiden(g, seed=s),
    "leiden-rbconfiguration": lambda g, s: leiden(g, seed=s, objective="rbconfiguration"),
    "leiden-cpm": lambda g, s: leiden(g, seed=s, objective="cpm", resolution=CPM_RESOLUTION),
    "louvain": lambda g, s: louvain(g, seed=s),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_recovers_planted_communities(planted, method):
    g, truth = planted
    assert g.n_nodes == 128
    res = METHODS[method](g, 0)
    assert normalized_mutual_info(truth, res.membership) >= 0.9
    assert adjusted_rand_index(truth, res.membership) >= 0.9
    assert res.sizes == sorted(res.sizes, reverse=True) and sum(res.sizes) == g.n_nodes
    assert res.modularity == pytest.approx(nx_modularity(g, res.membership), abs=1e-9)
    assert np.array_equal(METHODS[method](g, 0).membership, res.membership)  # same seed, same labels


def test_weak_signal_is_not_recovered():
    """The NMI threshold can fail: with members firing 5 % of the time under 5 % noise, structure is lost."""
    g, truth = planted_graph(p_member=0.05, noise=0.05, n_tokens=10_000)
    assert normalized_mutual_info(truth, leiden(g).membership) < 0.7


def test_stability_over_seeds(planted):
    g, _ = planted
    for kw in ({}, {"objective": "cpm", "resolution": CPM_RESOLUTION}, {"method": "louvain"}):
        s = stability(g, seeds=range(4), **kw)
        assert s.min_nmi >= 0.9 and s.mean_nmi >= s.min_nmi and s.min_ari >= 0.9
        assert len(s.n_communities) == len(s.modularity) == 4


def test_resolution_sweep_more_communities_at_higher_resolution(planted):
    g, _ = planted
    for objective, gammas in (("modularity", [0.01, 1.0, 8.0, 32.0]), ("cpm", [1e-4, 0.01, 0.06, 0.5])):
        sweep = resolution_sweep(g, gammas, objective=objective)
        counts = [r.n_communities for r in sweep]
        assert counts == sorted(counts) and counts[0] < 8 <= counts[1] < counts[-1], (objective, counts)
        assert [r.resolution for r in sweep] == gammas
        at = leiden(g, resolution=gammas[1], objective=objective)
        assert (sweep[1].modularity, sweep[1].quality) == (at.modularity, at.quality)


# ---- objectives' own quality --------------------------------------------------------------------------------------
def test_quality_of_each_objective(planted):
    g, _ = planted
    two_m = 2 * g.weights.sum()
    mod = leiden(g, resolution=2.0)
    assert mod.quality == pytest.approx(nx_modularity(g, mod.membership, resolution=2.0), abs=1e-9)
    rb = leiden(g, resolution=2.0, objective="rbconfiguration")
    assert rb.quality == pytest.approx(two_m * nx_modularity(g, rb.membership, resolution=2.0), rel=1e-9)
    cpm = leiden(g, resolution=CPM_RESOLUTION, objective="cpm")
    same = cpm.membership[g.edge_src] == cpm.membership[g.edge_dst]
    n_c = np.bincount(cpm.membership)
    want = 2 * (g.weights[same].sum() - CPM_RESOLUTION * (n_c * (n_c - 1) / 2).sum())
    assert cpm.quality == pytest.approx(want, rel=1e-9)
    assert (mod.objective, rb.objective, cpm.objective, louvain(g).objective) == ("modularity", "rbconfiguration", "cpm", "louvain")


def test_directed_graph_is_undirected_with_summed_weights():
    src, dst = [0, 1, 0, 1, 3, 3, 4, 2], [1, 0, 2, 2, 4, 5, 5, 3]
    w = np.array([0.5, 0.5, 1, 1, 1, 1, 1, 0.1])
    directed = FeatureGraph([f"F{i}" for i in range(6)], edge_src=src, edge_dst=dst, edge_attrs={"weight": w}, directed=True)
    undirected = FeatureGraph([f"F{i}" for i in range(6)], edge_src=src[1:], edge_dst=dst[1:],
                              edge_attrs={"weight": np.r_[1.0, w[2:]]})
    for detect in (leiden, louvain, lambda g: leiden(g, objective="cpm", resolution=0.2)):
        a, b = detect(directed), detect(undirected)
        assert a.membership.tolist() == b.membership.tolist() == [0, 0, 0, 1, 1, 1]
        assert a.modularity == pytest.approx(b.modularity)


# ---- NMI and ARI --------------------------------------------------------------------------------------------------
def test_contingency_hand_case():
    t = contingency([0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 0, 1, 1, 1])
    dense = np.zeros((2, 2), dtype=int)
    dense[t.row, t.col] = t.n_ij
    assert dense.tolist() == [[3, 1], [1, 3]] and t.a_i.tolist() == [4, 4] and t.b_j.tolist() == [4, 4]


def test_nmi_ari_worked_2x2_example():
    # n_ij = [[3, 1], [1, 3]], n = 8: H(A) = H(B) = ln 2, I = ¾ ln(3/2) + ¼ ln(1/2) = ¾ ln 3 − ln 2,
    # so NMI = ¾ log₂ 3 − 1. ARI: index = 2·C(3,2) = 6, Σ C(a_i) = Σ C(b_j) = 12, C(8,2) = 28,
    # expected = 144/28 = 36/7, so ARI = (6 − 36/7) / (12 − 36/7) = 1/8.
    a, b = [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 0, 1, 1, 1]
    assert normalized_mutual_info(a, b) == pytest.approx(0.75 * np.log2(3) - 1, abs=1e-12)
    assert adjusted_rand_index(a, b) == pytest.approx(1 / 8, abs=1e-12)


def test_nmi_ari_identities():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200)
    relabelled = np.array([17, -3, 4, 99, 0])[a]
    for x, y in ((a, a), (a, relabelled)):
        assert normalized_mutual_info(x, y) == pytest.approx(1.0) and adjusted_rand_index(x, y) == pytest.approx(1.0)
    # a single community carries no information about anything
    ones = np.zeros(200, dtype=int)
    assert normalized_mutual_info(a, ones) == 0.0 and adjusted_rand_index(a, ones) == pytest.approx(0.0, abs=1e-12)
    assert normalized_mutual_info(ones, ones) == 1.0 and adjusted_rand_index(ones, ones) == 1.0
    # against all singletons: I = H(A), H(B) = ln n, so NMI = 2 H(A) / (H(A) + ln n)
    p = np.bincount(a) / len(a)
    h_a = -(p * np.log(p)).sum()
    singletons = np.arange(200)
    assert normalized_mutual_info(a, singletons) == pytest.approx(2 * h_a / (h_a + np.log(200)), abs=1e-12)
    # independent labelings: both near 0; symmetric
    x, y = rng.integers(0, 4, 20_000), rng.integers(0, 4, 20_000)
    assert normalized_mutual_info(x, y) < 0.002 and abs(adjusted_rand_index(x, y)) < 0.002
    assert normalized_mutual_info(x[:50], y[:50]) == pytest.approx(normalized_mutual_info(y[:50], x[:50]), abs=1e-12)
    assert adjusted_rand_index(x[:50], y[:50]) == pytest.approx(adjusted_rand_index(y[:50], x[:50]), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_nmi_ari_against_plain_references(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 4, 40), rng.integers(0, 3, 40) * 2 + (rng.random(40) < 0.2)
    # ARI from pair counting (Steinley 2004): n11 pairs together in both, n00 apart in both, ...
    same_a = [a[i] == a[j] for i, j in itertools.combinations(range(40), 2)]
    same_b = [b[i] == b[j] for i, j in itertools.combinations(range(40), 2)]
    n11 = sum(x and y for x, y in zip(same_a, same_b))
    n00 = sum(not x and not y for x, y in zip(same_a, same_b))
    n10 = sum(x and not y for x, y in zip(same_a, same_b))
    n01 = sum(y and not x for x, y in zip(same_a, same_b))
    ari = 2 * (n11 * n00 - n01 * n10) / ((n11 + n01) * (n01 + n00) + (n11 + n10) * (n10 + n00))
    assert adjusted_rand_index(a, b) == pytest.approx(ari, abs=1e-12)
    # NMI from a dense joint distribution
    P = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(P, (a, b), 1 / 40)
    pa, pb = P.sum(1), P.sum(0)
    nz = P > 0
    mi = (P[nz] * np.log(P[nz] / np.outer(pa, pb)[nz])).sum()
    h = lambda q: -(q[q > 0] * np.log(q[q > 0])).sum()
    assert normalized_mutual_info(a, b) == pytest.approx(mi / ((h(pa) + h(pb)) / 2), abs=1e-12)


# ---- summaries ----------------------------------------------------------------------------------------------------
def ctx(token, act):
    return {"left": "…", "token": token, "right": "…", "act": act}


def summary_graph(directed=False):
    """A triangle F0-F1-F2 (weights 1, 1, 2), a path F3-F4-F5 (weights 1, 1), an isolated F6, bridge F2-F3 (0.5)."""
    src, dst, w = [0, 0, 1, 3, 4, 2], [1, 2, 2, 4, 5, 3], [1.0, 1.0, 2.0, 1.0, 1.0, 0.5]
    if directed:  # F0 → F1 split in two directions of 0.5 each
        src, dst, w = src + [1], dst + [0], [0.5] + w[1:] + [0.5]
    attrs = {
        "peak_hookpoint": ["h1", "h0", "h1", "h2", "h2", "h0", None],
        "top_contexts": [[ctx(" the", 3.0), ctx(" cat", 1.0)], [ctx(" the", 2.5)], [ctx(" dog", 4.0), ctx(" cat", 0.5)],
                         [ctx("x", 1.0)], None, [], [ctx("y", 9.0)]],
    }
    return FeatureGraph([f"F{i}" for i in range(7)], attrs, src, dst, {"weight": np.array(w)}, directed=directed)


@pytest.mark.parametrize("directed", [False, True])
def test_community_summaries_hand_case(directed):
    b, a = community_summaries(summary_graph(directed), [1, 1, 1, 0, 0, 0, 0], top_n=2)
    assert (a.community, a.size, a.members) == (1, 3, ["F0", "F1", "F2"])
    assert (a.hookpoints, a.n_hookpoints) == (["h0", "h1"], 2)
    assert a.top_tokens == [(" cat", 2), (" the", 2)]
    assert [(c["node"], c["token"], c["act"]) for c in a.top_contexts] == [("F2", " dog", 4.0), ("F0", " the", 3.0)]
    assert (a.n_internal_edges, a.density, a.internal_weight) == (3, 1.0, 4.0)
    assert a.internal_fraction == pytest.approx(8 / 8.5)  # strengths 2 + 3 + 3.5
    assert (b.community, b.size, b.hookpoints, b.n_hookpoints) == (0, 4, ["h0", "h2"], 2)
    assert b.top_tokens == [("x", 1), ("y", 1)] and b.top_contexts[0]["node"] == "F6"
    assert (b.n_internal_edges, b.density, b.internal_weight) == (2, pytest.approx(1 / 3), 2.0)
    assert b.internal_fraction == pytest.approx(4 / 4.5)  # strengths 1.5 + 2 + 1 + 0


def test_community_summaries_without_attributes_and_from_leiden():
    g, _ = planted_graph(n_communities=3, features_per_community=6, n_tokens=4000, p_member=0.5)
    res = leiden(g)
    summaries = community_summaries(g, res.membership)
    assert [s.community for s in summaries] == list(range(res.n_communities))
    assert [s.size for s in summaries] == res.sizes
    assert all(s.hookpoints == [] and s.top_tokens == [] and s.top_contexts == [] for s in summaries)
    assert all(0 < s.density <= 1 and 0 < s.internal_fraction <= 1 for s in summaries)
    assert sum(s.internal_weight for s in summaries) <= g.weights.sum() * (1 + 1e-12)  # the same weights, summed in another order


# ---- errors -------------------------------------------------------------------------------------------------------
def test_clear_errors():
    g = summary_graph()
    with pytest.raises(FeatgraphError, match="unknown community objective 'potts'.*modularity, cpm, rbconfiguration"):
        leiden(g, objective="potts")
    with pytest.raises(FeatgraphError, match="resolution"):
        leiden(g, resolution=-1.0)
    empty = FeatureGraph(["F0", "F1"])
    for call in (leiden, louvain, lambda x: resolution_sweep(x, [1.0]), stability,
                 lambda x: leiden(x, objective="cpm")):
        with pytest.raises(FeatgraphError, match="no edges"):
            call(empty)
    with pytest.raises(FeatgraphError, match="at least two"):
        stability(g, seeds=[0])
    with pytest.raises(FeatgraphError, match="method='louvain' with objective='modularity'"):
        stability(g, method="louvain", objective="cpm")
    with pytest.raises(FeatgraphError, match="one label per node"):
        community_summaries(g, [0, 1])
    negative = FeatureGraph(["F0", "F1"], edge_src=[0], edge_dst=[1], edge_attrs={"weight": np.array([-1.0])})
    with pytest.raises(FeatgraphError, match="non-negative"):
        leiden(negative)
