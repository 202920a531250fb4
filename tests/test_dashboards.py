"""Feature dashboards: streamed histograms and samples against brute force, quantile examples, the logit lens against
a hand computation, node attributes and the Neuronpedia-style feature JSON."""

import copy
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError
from featgraph.coactivation import add_top_contexts, coactivation_graph
from featgraph.dashboards import activation_histogram, add_dashboards, logit_lens, quantile_examples, write_feature_json
from featgraph.stats import CoactivationStats, hist_edges, load_stats, sample_keys, save_stats


def planted(n=2000, F=12, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.exponential(2.0, size=(n, F)) * (rng.random((n, F)) < density)
    X[:, 0] = np.where(np.arange(n) % 2 == 0, (np.arange(n) + 1) / 100.0, 0.0)  # feature 0: 1000 known values 0.01..19.99
    X[:, 1] = 0.0
    X[:5, 1] = [1e-4, 0.5, 3.0, 2e4, 7.0]  # feature 1: below and above the histogram's inner range
    return X.astype(np.float32)


def stream(X, chunk=128, start=0, stats=None, **kw):
    s = stats or CoactivationStats(X.shape[1], **kw)
    for a in range(0, len(X), chunk):
        s.update(torch.from_numpy(X[a : a + chunk]), torch.arange(start + a, start + min(a + chunk, len(X))))
    return s


def reference_sample(X, f, size, seed=0, start=0):
    nz = np.flatnonzero(X[:, f] > 0)
    keys = sample_keys(nz + start, np.full(len(nz), f), seed)
    return nz[np.argsort(keys)[:size]] + start


# ---- streamed statistics --------------------------------------------------------------------------------------
def test_sample_is_the_bottom_k_of_its_keys_whatever_the_chunking():
    X = planted()
    for chunk in (37, 128, 2000):
        s = stream(X, chunk, sample=16)
        for f in range(X.shape[1]):
            vals, idx, keys = s.activation_sample(f)
            np.testing.assert_array_equal(idx, reference_sample(X, f, 16))
            np.testing.assert_array_equal(vals, X[idx, f])  # the values are the activations at those tokens
            assert (np.diff(keys) > 0).all()


def test_histogram_counts_are_exact():
    X = planted()
    s = stream(X)
    edges = hist_edges()
    for f in range(X.shape[1]):
        nz = X[:, f][X[:, f] > 0]
        np.testing.assert_array_equal(s.hist_FB[f], np.histogram(nz, bins=edges)[0])
        assert s.nonzero_count(f) == len(nz)
        h = activation_histogram(s, f)
        assert sum(h["counts"]) == len(nz) and len(h["edges"]) == len(h["counts"]) + 1
        assert all(a < b for a, b in zip(h["edges"], h["edges"][1:]))
        assert h["edges"][0] <= nz.min() and nz.max() <= h["edges"][-1]
        assert h["counts"][0] > 0 and h["counts"][-1] > 0  # cropped to the occupied bins
    h1 = activation_histogram(s, 1)  # 1e-4 falls in [0, 1e-3), 2e4 in [1e4, max]
    assert h1["edges"][0] == 0.0 and h1["edges"][1] == pytest.approx(1e-3) and h1["edges"][-1] == pytest.approx(2e4)
    assert activation_histogram(CoactivationStats(3), 0) == {"edges": [], "counts": []}


def test_merge_save_and_load_keep_the_dashboard_statistics(tmp_path):
    X = planted(seed=1)
    whole = stream(X, sample=8)
    a, b = stream(X[:700], 64, sample=8), stream(X[700:], 100, start=700, sample=8)
    m = a.merge(b)
    np.testing.assert_array_equal(m.hist_FB, whole.hist_FB)
    for f in range(X.shape[1]):
        np.testing.assert_array_equal(m.activation_sample(f)[1], whole.activation_sample(f)[1])
    # merged statistics stream on exactly as one pass would
    more = planted(n=500, seed=2)
    stream(more, start=len(X), stats=m), stream(more, start=len(X), stats=whole)
    for f in range(X.shape[1]):
        np.testing.assert_array_equal(m.activation_sample(f)[1], whole.activation_sample(f)[1])
    save_stats(whole, tmp_path / "s")
    back, _ = load_stats(tmp_path / "s")
    assert (back.dashboards, back.sample, back.seed) == (True, 8, 0)
    np.testing.assert_array_equal(back.hist_FB, whole.hist_FB)
    for f in range(X.shape[1]):
        for got, want in zip(back.activation_sample(f), whole.activation_sample(f)):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError):
        whole.merge(CoactivationStats(X.shape[1], sample=8, seed=1))


ALL_REDUCE = textwrap.dedent(
    """
    import sys, numpy as np, torch, torch.distributed as dist
    from featgraph.stats import CoactivationStats
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(0)
    X = (rng.exponential(1.0, (600, 6)) * (rng.random((600, 6)) < 0.4)).astype(np.float32)
    s = CoactivationStats(6, sample=5, seed=7)
    for a in range(rank * 50, 600, 50 * world):  # ranks take alternate chunks
        s.update(torch.from_numpy(X[a : a + 50]), torch.arange(a, min(a + 50, 600)))
    total = s.all_reduce()
    if rank == 0:
        np.savez(sys.argv[1], hist=total.hist_FB, idx=np.stack([total.activation_sample(f)[1] for f in range(6)]))
    dist.destroy_process_group()
    """
)


def test_all_reduce_keeps_the_dashboard_statistics(tmp_path):
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), str(tmp_path / "out.npz")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    rng = np.random.default_rng(0)
    X = (rng.exponential(1.0, (600, 6)) * (rng.random((600, 6)) < 0.4)).astype(np.float32)
    one = stream(X, 50, sample=5, seed=7)
    np.testing.assert_array_equal(got["hist"], one.hist_FB)
    np.testing.assert_array_equal(got["idx"], np.stack([reference_sample(X, f, 5, seed=7) for f in range(6)]))


def test_sample_is_uniform():
    # 200 features, each active on the same 4,000 tokens with value = the token's rank: pooled samples of 32 must
    # cover the ranks evenly (a biased sketch, e.g. the first or the largest values, fails by far)
    n, F = 4000, 200
    X = np.tile(((np.arange(n) + 1) / n)[:, None], (1, F)).astype(np.float32)
    s = stream(X, chunk=500)
    pooled = np.concatenate([s.activation_sample(f)[0] for f in range(F)])
    assert len(pooled) == 32 * F
    quarters = np.histogram(pooled, bins=[0, 0.25, 0.5, 0.75, 1.0])[0] / len(pooled)
    np.testing.assert_allclose(quarters, 0.25, atol=0.03)
    assert len({tuple(s.activation_sample(f)[1]) for f in range(F)}) == F  # features get different samples


def test_quantile_examples_on_planted_activations():
    X = planted()
    tokens_NT = np.arange(len(X)).reshape(100, 20)  # token id = flat index, so the marked token names its index
    s = stream(X)
    bands = quantile_examples(s, 0, tokens_NT, str, n_bands=5, per_band=3)
    assert len(bands) == 5
    sample_vals = np.sort(s.activation_sample(0)[0])
    for hi_band, lo_band in zip(bands, bands[1:]):  # highest first, bands ordered and disjoint
        assert hi_band["range"][0] >= lo_band["range"][1]
        assert hi_band["quantile"][0] == lo_band["quantile"][1]
    assert bands[0]["range"][1] == pytest.approx(sample_vals[-1]) and bands[-1]["range"][0] == pytest.approx(sample_vals[0])
    for band in bands:
        lo, hi = band["range"]
        assert 1 <= len(band["examples"]) <= 3
        acts = [e["act"] for e in band["examples"]]
        assert acts == sorted(acts, reverse=True)
        for e in band["examples"]:
            assert lo <= e["act"] <= hi
            index = int(e["token"])
            assert X[index, 0] == pytest.approx(e["act"], abs=1e-4)  # a real activation at the marked token
            pos = index % 20
            assert e["left"] == "".join(str(t) for t in tokens_NT[index // 20, max(1, pos - 8) : pos])
    one = CoactivationStats(2)
    one.update(torch.tensor([[0.0, 2.0]]))
    assert quantile_examples(one, 0, np.zeros((1, 1), dtype=np.int64), str) == []
    assert [b["range"] for b in quantile_examples(one, 1, np.zeros((1, 1), dtype=np.int64), str)] == [[2.0, 2.0]]


def test_dashboards_are_reproducible_under_a_seed():
    X = planted(seed=4)
    tokens_NT = np.arange(len(X)).reshape(100, 20)

    def dash(seed):
        s = stream(X, seed=seed, sample=8)
        return [quantile_examples(s, f, tokens_NT, str) for f in range(X.shape[1])]

    assert dash(3) == dash(3)
    assert dash(3) != dash(4)


def test_update_without_dashboards_keeps_the_graph_statistics():
    X = planted()
    a, b = stream(X), stream(X, dashboards=False)
    assert b.hist_FB is None
    np.testing.assert_array_equal(a.count_F, b.count_F)
    assert (a.co_count != b.co_count).nnz == 0


# ---- logit lens -----------------------------------------------------------------------------------------------
HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"]  # not in forward order: the lens must pick blocks.1


def tiny_cc(model, n_features=6, **kw):
    cfg = CrosscoderConfig.from_flat(HOOKS, model.cfg.d_model, n_features, **kw)
    cc = build_crosscoder(cfg)
    with torch.no_grad():
        cc.norm_scale_L.copy_(torch.linspace(0.5, 2.0, len(cc.norm_scale_L)))
    return cc


@torch.no_grad()
def hand_logits(model, w_D, scale):
    d = w_D.double() / scale
    d = d - d.mean()  # LayerNorm centres
    return (d * model.ln_final.w.double()) @ model.W_U.double()


def test_logit_lens_matches_a_hand_computation(tiny_embedded):
    model = tiny_embedded.model
    assert model.cfg.normalization_type == "LN"
    cc = tiny_cc(model)
    lens = logit_lens(cc, model, k=5)
    for f in range(6):
        want = hand_logits(model, cc.W_dec_FLD[f, 0].detach(), float(cc.norm_scale_L[0]))  # slot 0 = blocks.1
        top, bottom = want.topk(5), want.topk(5, largest=False)
        assert lens.top_ids_GK[f].tolist() == top.indices.tolist()
        assert lens.bottom_ids_GK[f].tolist() == bottom.indices.tolist()
        np.testing.assert_allclose(lens.top_vals_GK[f], top.values.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(lens.bottom_vals_GK[f], bottom.values.numpy(), rtol=1e-4, atol=1e-5)
    # chunked top-k (two features per chunk) and a subset of features give the same rows
    small = logit_lens(cc, model, k=5, features=[4, 1], chunk_elems=2 * model.cfg.d_vocab)
    np.testing.assert_array_equal(small.top_ids_GK, lens.top_ids_GK[[4, 1]])
    np.testing.assert_allclose(small.bottom_vals_GK, lens.bottom_vals_GK[[4, 1]], rtol=1e-5)


def test_logit_lens_is_the_same_with_the_final_norm_folded(tiny_embedded):
    model = tiny_embedded.model
    folded = copy.deepcopy(model)
    folded.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    assert folded.cfg.normalization_type == "LNPre"
    cc = tiny_cc(model)
    a, b = logit_lens(cc, model, k=4), logit_lens(cc, folded, k=4)
    np.testing.assert_array_equal(a.top_ids_GK, b.top_ids_GK)
    np.testing.assert_allclose(a.top_vals_GK, b.top_vals_GK, rtol=1e-4, atol=1e-5)


def test_logit_lens_of_a_model_crosscoder_is_per_model(tiny_embedded):
    model = tiny_embedded.model
    cc = tiny_cc(model, models=["base", "tuned"])
    writes = cc.cfg.writes
    lens = logit_lens(cc, {"tuned": model, "base": model}, k=3)
    assert set(lens) == {"base", "tuned"}
    for name in ("base", "tuned"):
        slot = writes.index(f"{name}/blocks.1.hook_resid_post")
        scale = float(cc.norm_scale_L[cc.out_idx[slot]])
        for f in range(6):
            want = hand_logits(model, cc.W_dec_FLD[f, slot].detach(), scale).topk(3)
            assert lens[name].top_ids_GK[f].tolist() == want.indices.tolist()
            np.testing.assert_allclose(lens[name].top_vals_GK[f], want.values.numpy(), rtol=1e-4, atol=1e-5)
    as_list = logit_lens(cc, [model, model], k=3)
    np.testing.assert_array_equal(as_list["tuned"].top_ids_GK, lens["tuned"].top_ids_GK)
    with pytest.raises(FeatgraphError, match="tuned") as e:
        logit_lens(cc, {"base": model}, k=3)
    assert "\n" not in str(e.value)


# ---- node attributes and the feature JSON -------------------------------------------------------------------------
def test_add_dashboards_and_feature_json(tiny_embedded, tmp_path):
    model = tiny_embedded.model
    X = planted(n=1000, F=6, density=0.4, seed=5)
    X[:, 2] = np.where(X[:, 3] > 0, X[:, 3] + 0.5, 0)  # a coupled pair, so the graph has edges
    tokens_NT = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (50, 20))
    s = stream(X)
    g = coactivation_graph(s, top_k=3, min_cocount=2)
    add_top_contexts(g, s, tokens_NT, str)
    cc = tiny_cc(model)
    add_dashboards(g, s, torch.from_numpy(tokens_NT), str, cc=cc, model=model, k=4, n_bands=3, per_band=2)
    lens = logit_lens(cc, model, k=4)
    for i, f in enumerate(g.node_attrs["feature"]):
        assert g.node_attrs["density"][i] == pytest.approx((X[:, f] > 0).mean())
        assert sum(g.node_attrs["act_histogram"][i]["counts"]) == (X[:, f] > 0).sum()
        assert len(g.node_attrs["quantile_examples"][i]) == 3
        assert [t for t, _ in g.node_attrs["top_logits"][i]] == [str(t) for t in lens.top_ids_GK[f]]
        assert [v for _, v in g.node_attrs["bottom_logits"][i]] == pytest.approx(lens.bottom_vals_GK[f].tolist(), abs=1e-4)
    g.set_node_attr("label", [f"label {n}" for n in g.node_ids])
    g.set_node_attr("community", [0] * g.n_nodes)
    g.meta["community_labels"] = {"0": "all of them"}
    path = write_feature_json(g, tmp_path / "features.json")

    def no_constants(name):
        raise AssertionError(f"bare {name} in strict JSON")

    recs = json.loads(path.read_text(), parse_constant=no_constants)
    assert [r["id"] for r in recs] == g.node_ids
    r, node = recs[0], g.node(0)
    assert r["index"] == node["feature"] and r["label"] == f"label {node['id']}" and r["community_label"] == "all of them"
    assert r["activation_frequency"] == r["frac_nonzero"] == pytest.approx(node["density"])
    assert r["freq_hist_data_bar_heights"] == node["act_histogram"]["counts"] == r["histogram"]["counts"]
    edges = node["act_histogram"]["edges"]
    assert all(lo <= c <= hi for lo, c, hi in zip(edges, r["freq_hist_data_bar_values"], edges[1:]))
    assert r["top_logits"] == r["pos_str"] == [t for t, _ in node["top_logits"]]
    assert r["neg_values"] == [v for _, v in node["bottom_logits"]]
    names = [q["quantile_name"] for q in r["examples_quantiles"]]
    assert names[0] == "Top activations" and len(names) == 4
    top = r["examples_quantiles"][0]["examples"][0]
    ctx = node["top_contexts"][0]
    assert top["tokens"] == [ctx["left"], ctx["token"], ctx["right"]] and top["tokens_acts_list"][top["train_token_ind"]] == ctx["act"]


def test_dashboards_without_sample_statistics_give_the_density_only():
    X = planted(n=600, F=6, seed=6)
    X[:, 2] = np.where(X[:, 3] > 0, X[:, 3] + 0.5, 0)
    s = stream(X, dashboards=False)
    g = coactivation_graph(s, top_k=3, min_cocount=2)
    add_dashboards(g, s, np.zeros((30, 20), dtype=np.int64), str)
    assert "act_histogram" not in g.node_attrs and "top_logits" not in g.node_attrs
    assert g.node_attrs["density"] == pytest.approx(g.node_attrs["frequency"])
