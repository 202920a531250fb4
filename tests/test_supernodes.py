"""Supernodes of attribution graphs: planted modules recovered, dataset edges merged in at the same position, effects on a
logit by hand, determinism, one-line errors."""

import numpy as np
import pytest

from crosscoder.errors import FeatgraphError
from featgraph.communities import adjusted_rand_index
from featgraph.graph import FeatureGraph
from featgraph.supernodes import SupernodeConfig, find_supernodes, planted_circuit, supernode_effects


@pytest.mark.parametrize("n_positions", [4, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_modules_are_recovered(seed, n_positions):
    """Modules wired strongly inside (×20 the cross-module strength) are found exactly, whether they sit at their own
    positions or all at one; non-feature nodes stay ungrouped."""
    g, truth = planted_circuit(n_modules=4, n_layers=3, per_cell=3, n_positions=n_positions, seed=seed)
    res = find_supernodes(g, seed=seed)
    feat = truth >= 0
    assert adjusted_rand_index(res.membership[feat], truth[feat]) == 1.0
    assert (res.membership[~feat] == -1).all() and sorted(res.sizes) == [9, 9, 9, 9]
    assert g.node_attrs["community"][-1] is None and len(g.meta["community_labels"]) == 4
    assert res.modularity > 0.5


def test_weak_modules_are_not_invented():
    """With cross-module edges as strong as inside ones there is no planted structure to find: the partition does not
    match the modules (ARI well below 1)."""
    g, truth = planted_circuit(n_modules=4, n_layers=3, per_cell=3, within=1.0, between=1.0, seed=0)
    res = find_supernodes(g, seed=0)
    feat = truth >= 0
    assert adjusted_rand_index(res.membership[feat], truth[feat]) < 0.5


def test_same_seed_same_supernodes_and_labels():
    g1, _ = planted_circuit(seed=3, between=0.5)
    g2, _ = planted_circuit(seed=3, between=0.5)
    r1, r2 = find_supernodes(g1, seed=7), find_supernodes(g2, seed=7)
    assert r1.membership.tolist() == r2.membership.tolist() and r1.labels == r2.labels


def _two_pairs(extra_between: float) -> tuple[FeatureGraph, FeatureGraph]:
    """Four features at one position: attribution ties 0–1 and 2–3; a co-activation graph ties 0–2 and 1–3 with
    ``extra_between``."""
    ids = [f"L0/F{f}@1" for f in range(4)]
    attrs = {"kind": ["feature"] * 4, "layer": [0, 1, 0, 1], "position": [1] * 4, "feature": [0, 1, 2, 3], "token_text": ["a"] * 4,
             "influence": [0.1, 0.2, 0.3, 0.4], "label": ids}
    g = FeatureGraph(ids, attrs, np.array([0, 2]), np.array([1, 3]), {"weight": np.array([1.0, -1.0])}, directed=True,
                     meta={"kind": "attribution"})
    co = FeatureGraph([f"F{i}" for i in range(4)], {"feature": [0, 1, 2, 3]}, np.array([0, 1]), np.array([2, 3]),
                      {"weight": np.array([extra_between, extra_between])})
    return g, co


def test_merged_dataset_edges_join_features_at_the_same_position():
    g, co = _two_pairs(1.0)
    alone = find_supernodes(g, min_size=2)
    assert alone.membership.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    # a co-activation tie at 4× the attribution share regroups them: 0–2 and 1–3
    merged = find_supernodes(g, extra=[co], extra_weight=4.0, min_size=2)
    assert merged.n_extra_edges == 2
    assert merged.membership[0] == merged.membership[2] != merged.membership[1] == merged.membership[3]
    # at another position the dataset edge does not apply
    g.node_attrs["position"] = [1, 1, 2, 2]
    assert find_supernodes(g, extra=[co], extra_weight=4.0).n_extra_edges == 0


def test_effects_on_a_logit_by_hand():
    """Chain E → a → b → logit and E → c → logit, supernodes {a, b} and {c}: direct effects are the signed weights into
    the logit; influence shares follow the row-normalised |A| path sums."""
    ids = ["E@0", "L0/F0@0", "L1/F1@0", "L0/F2@0", "logit/5"]
    attrs = {"kind": ["embedding", "feature", "feature", "feature", "logit"], "layer": [-1, 0, 1, 0, 2], "position": [0] * 5,
             "feature": [None, 0, 1, 2, None], "token_text": ["x"] * 5, "influence": [0.0] * 5, "label": ids}
    src, dst, w = [0, 1, 2, 0, 3], [1, 2, 4, 3, 4], [2.0, 1.0, 3.0, 1.0, -1.0]
    g = FeatureGraph(ids, attrs, np.array(src), np.array(dst), {"weight": np.array(w)}, directed=True, meta={"kind": "attribution"})
    eff = {e.supernode: e for e in supernode_effects(g, "logit/5", membership=[-1, 0, 0, 1, -1], labels={0: "ab", 1: "c"})}
    # logit's inputs: b 3/4, c 1/4; b's input: a 1; a's: E 1; c's: E 1 → influence a 3/4, b 3/4, c 1/4, E 1; total 2.75
    assert eff[0].direct == 3.0 and eff[1].direct == -1.0
    assert eff[0].influence_share == pytest.approx(1.5 / 2.75) and eff[1].influence_share == pytest.approx(0.25 / 2.75)
    assert eff[0].size == 2 and eff[0].label == "ab"


def test_bad_inputs_are_one_line():
    g = FeatureGraph(["F0", "F1"], {}, np.array([0]), np.array([1]), {"weight": np.array([1.0])})
    with pytest.raises(FeatgraphError, match="attribution graph"):
        find_supernodes(g)
    pg, _ = planted_circuit()
    with pytest.raises(FeatgraphError, match="objective"):
        find_supernodes(pg, objective="nope")
    with pytest.raises(FeatgraphError, match="min_size"):
        SupernodeConfig(min_size=0)
    with pytest.raises(FeatgraphError, match="not in the graph"):
        supernode_effects(pg, "logit/999")
