"""featgraph.layout: the community-aware layout (separation, determinism, odd graphs, speed), the layer layout, the
palette (perceptual distances) and add_layout's defaults."""

import itertools
import time

import numpy as np
import pytest

from crosscoder.errors import FeatgraphError
from featgraph.graph import FeatureGraph
from featgraph.layout import (BOX, UNASSIGNED, add_layout, community_layout, community_palette, default_mode, delta_e,
                              layer_layout, srgb_to_lab)


def planted(n: int, n_edges: int, n_communities: int, p_in: float = 0.85, seed: int = 0) -> FeatureGraph:
    """A planted partition: communities of random sizes, a fraction ``p_in`` of the edges inside them."""
    rng = np.random.default_rng(seed)
    comm = np.sort(rng.integers(0, n_communities, n))
    starts = np.searchsorted(comm, np.arange(n_communities))
    ends = np.searchsorted(comm, np.arange(n_communities), side="right")
    src = rng.integers(0, n, n_edges)
    c = comm[src]
    inside = starts[c] + (rng.random(n_edges) * (ends[c] - starts[c])).astype(np.int64)
    dst = np.where(rng.random(n_edges) < p_in, inside, rng.integers(0, n, n_edges))
    keep = src != dst
    return FeatureGraph([f"F{i}" for i in range(n)], {"community": comm.tolist(), "frequency": rng.random(n).tolist()},
                        src[keep], dst[keep], {"weight": rng.random(int(keep.sum()))}, meta={"kind": "coactivation"})


def separation(pos: np.ndarray, community) -> tuple[float, float]:
    """(mean distance of a node to its community's centre, mean distance between community centres)."""
    community = np.asarray(community)
    labels = np.unique(community)
    centres = np.array([pos[community == c].mean(0) for c in labels])
    within = float(np.mean(np.concatenate([np.linalg.norm(pos[community == c] - centres[k], axis=1) for k, c in enumerate(labels)])))
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    return within, float(d[np.triu_indices(len(labels), 1)].mean())


# ---- palette -------------------------------------------------------------------------------------------------------
def test_lab_conversion_matches_reference_values():
    # sRGB → CIELAB (D65) reference values (e.g. from colormath / Bruce Lindbloom's calculator)
    assert srgb_to_lab(np.array([255, 0, 0])) == pytest.approx([53.24, 80.09, 67.20], abs=0.05)
    assert srgb_to_lab(np.array([0, 0, 255])) == pytest.approx([32.30, 79.19, -107.86], abs=0.05)
    assert srgb_to_lab(np.array([128, 128, 128])) == pytest.approx([53.59, 0.0, 0.0], abs=0.05)
    assert delta_e("#ff0000", "#ff0000") == 0.0


def test_first_twenty_community_colours_are_far_apart():
    p = community_palette(20)
    assert len(p) == len(set(p)) == 20
    assert all(len(c) == 7 and c[0] == "#" for c in p)
    closest = min(delta_e(a, b) for a, b in itertools.combinations(p, 2))
    assert closest > 30, closest  # ΔE*ab ≈ 2.3 is just noticeable; > 30 is a different colour at a glance
    for c in p:  # none looks like the unassigned grey, the white page or black
        assert min(delta_e(c, other) for other in (UNASSIGNED, "#ffffff", "#000000")) > 30
    # the old golden-ratio hues had near-duplicates among 16 (the complaint): this palette has none among 40
    assert min(delta_e(a, b) for a, b in itertools.combinations(community_palette(40), 2)) > 20


def test_palette_is_a_stable_prefix_and_deterministic():
    assert community_palette(5) == community_palette(300)[:5] == community_palette(5)
    assert community_palette(0) == [] and community_palette(-3) == []
    big = community_palette(1000)
    assert len(big) == 1000 and len(set(big)) == 256  # 256 distinct, then repeated


# ---- community layout ----------------------------------------------------------------------------------------------
def test_communities_are_separate_regions():
    g = planted(600, 4000, 12)
    pos = community_layout(g, seed=0)
    assert pos.shape == (600, 2) and np.isfinite(pos).all()
    assert np.abs(pos).max() == pytest.approx(BOX)  # scaled to the box
    within, between = separation(pos, g.node_attrs["community"])
    assert within < 0.25 * between, (within, between)
    # each community's members are nearer their own centre than any other community's
    comm = np.asarray(g.node_attrs["community"])
    centres = np.array([pos[comm == c].mean(0) for c in range(12)])
    nearest = np.linalg.norm(pos[:, None] - centres[None], axis=-1).argmin(1)
    assert (nearest == comm).mean() > 0.97


def test_layout_is_deterministic_from_the_seed():
    g = planted(300, 1500, 6)
    a, b, c = community_layout(g, seed=3), community_layout(g, seed=3), community_layout(g, seed=4)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    import random

    state = random.getstate()
    community_layout(g, seed=1)
    assert random.getstate() == state  # igraph drew from a private generator, not the global one


def test_connected_communities_sit_closer():
    """Two communities joined by many edges end up nearer each other than two that share none."""
    sizes = [30, 30, 30, 30]
    comm = np.repeat(np.arange(4), sizes)
    rng = np.random.default_rng(0)
    src, dst = [], []
    pairs = []
    for c in range(4):  # dense inside
        m = np.flatnonzero(comm == c)
        pairs += [(a, b) for a, b in itertools.combinations(m, 2) if rng.random() < 0.3]
    m0, m1 = np.flatnonzero(comm == 0), np.flatnonzero(comm == 1)
    pairs += [(rng.choice(m0), rng.choice(m1)) for _ in range(60)]  # 0 and 1 share many edges
    pairs += [(0, 60), (0, 90)]  # 2 and 3 hang on by one each
    src, dst = [a for a, _ in pairs], [b for _, b in pairs]
    g = FeatureGraph([f"F{i}" for i in range(120)], {"community": comm.tolist()}, src, dst, {"weight": np.ones(len(src))})
    pos = community_layout(g)
    centre = np.array([pos[comm == c].mean(0) for c in range(4)])
    d = lambda a, b: np.linalg.norm(centre[a] - centre[b])  # noqa: E731
    assert d(0, 1) < d(2, 3) and d(0, 1) < min(d(0, 2), d(0, 3), d(1, 2), d(1, 3))


def test_isolates_unassigned_and_no_communities():
    # F4, F5 have no edges; F3 has no community; F6 is in community 1 alone
    g = FeatureGraph([f"F{i}" for i in range(7)], {"community": [0, 0, 0, None, 1, 1, -1]},
                     [0, 1, 2, 0], [1, 2, 0, 3], {"weight": np.array([1.0, 1.0, 1.0, 0.5])})
    pos = community_layout(g)
    assert pos.shape == (7, 2) and np.isfinite(pos).all()
    assert len({tuple(p) for p in pos.round(6)}) == 7  # no two nodes on one spot
    connected = pos[:4]
    assert (pos[[4, 5, 6], 1] > connected[:, 1].max()).all()  # isolates on a row under the picture
    add_layout(g)
    assert g.node_attrs["color"][3] == UNASSIGNED and g.node_attrs["color"][6] == UNASSIGNED
    assert g.node_attrs["color"][0] == community_palette(1)[0]
    # no community attribute at all: one force-directed picture
    plain = FeatureGraph(g.node_ids, {}, g.edge_src, g.edge_dst, dict(g.edge_attrs))
    assert np.isfinite(community_layout(plain)).all()
    assert community_layout(FeatureGraph([], {})).shape == (0, 2)
    one = community_layout(FeatureGraph(["F0"], {"community": [0]}))
    assert one.tolist() == [[0.0, 0.0]]


def test_directed_multigraph_and_odd_weights():
    g = FeatureGraph(["a", "b", "c"], {"community": [0, 0, 1]}, [0, 0, 1, 2, 2], [1, 1, 2, 2, 0],
                     {"weight": np.array([1.0, np.nan, -2.0, 0.0, np.inf])}, directed=True, multigraph=True)
    pos = community_layout(g)
    assert np.isfinite(pos).all()


@pytest.mark.parametrize("n,n_edges,n_communities,limit", [(1000, 10_000, 16, 5.0), (20_000, 200_000, 200, 30.0)])
def test_layout_speed(n, n_edges, n_communities, limit, record_property):
    g = planted(n, n_edges, n_communities)
    t0 = time.perf_counter()
    pos = community_layout(g)
    seconds = time.perf_counter() - t0
    record_property(f"layout_seconds_{n}", round(seconds, 2))
    print(f"community_layout, {n:,} nodes / {len(g.edge_src):,} edges: {seconds:.2f} s")
    within, between = separation(pos, g.node_attrs["community"])
    assert within < 0.25 * between
    assert seconds < limit, seconds  # measured 0.3–0.9 s and 2–4 s on this shared 2-core machine


# ---- layer layout and add_layout -----------------------------------------------------------------------------------
def test_layer_layout_puts_x_by_layer():
    g = FeatureGraph([f"F{i}" for i in range(9)], {"peak_layer": [0, 1, 2, 0, 1, 2, 0, 1, 2], "community": [0, 1, 0, 1, 0, 1, 0, 1, 0],
                                                     "frequency": np.linspace(0.1, 0.9, 9).tolist()})
    pos = layer_layout(g)
    layer = np.asarray(g.node_attrs["peak_layer"])
    for a in range(2):  # every node of layer a lies left of every node of layer a + 1
        assert pos[layer == a, 0].max() < pos[layer == a + 1, 0].min()


def test_prompt_graph_layout_matches_prompt_graph_order():
    from featgraph.crosslayer import prompt_graph

    base = FeatureGraph([f"F{i}" for i in range(5)], {"peak_layer": [0, 0, 1, 1, 1], "feature": list(range(5)), "community": [0] * 5},
                        [0, 1, 2], [2, 3, 4], {"weight": np.ones(3)}, meta={"kind": "coactivation"})
    pg = prompt_graph(base, [0, 1, 2, 3, 4], activation=[1.0, 3.0, 0.5, 2.0, 1.5])
    assert default_mode(pg) == "layers"
    pos = layer_layout(pg)
    # x = layer · 15 · 22; y = the prompt graph's own rank order (by activation) × 2 · 22
    assert pos[:, 0].tolist() == [0, 0, 330, 330, 330]
    assert np.allclose(pos[:, 1], np.asarray(pg.node_attrs["y"]) * 44)
    add_layout(pg)
    add_layout(pg)  # idempotent: computed from layers and activations, never from the previous x, y
    assert np.allclose(pg.node_attrs["y"], pos[:, 1]) and pg.meta["layout"] == "layers"


def test_add_layout_defaults_and_errors():
    g = planted(60, 200, 3)
    assert add_layout(g) is g and g.meta["layout"] == "community"
    assert len(g.node_attrs["x"]) == 60 and all(isinstance(v, float) for v in g.node_attrs["y"])
    palette = community_palette(3)
    assert g.node_attrs["color"] == [palette[c] for c in g.node_attrs["community"]]
    stack = planted(60, 200, 3)
    stack.meta["kind"] = "stack"
    stack.set_node_attr("layer", [i % 3 for i in range(60)])
    assert default_mode(stack) == "layers" and add_layout(stack).meta["layout"] == "layers"
    assert add_layout(stack, mode="community").meta["layout"] == "community"
    with pytest.raises(FeatgraphError, match="unknown layout 'spring'"):
        add_layout(g, mode="spring")
