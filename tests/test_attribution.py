"""Attribution graphs through a CLT's local replacement model: exact linearisation, edges that match ablations, the
sum rule, causality, circuit-tracer's pruning and scores (hand-computed on a small graph and on a real one)."""

import json

import pytest
import torch
from scipy.stats import spearmanr

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from featgraph.attribution import (
    AttributionConfig,
    LinearisedReplacement,
    attribution_graph,
    compute_influence,
    find_threshold,
    graph_scores,
    normalize_matrix,
    prune_graph,
)

READS = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
WRITES = ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def setup(tiny_embedded, one_thread_module):
    from crosscoder.harvest import ActivationBuffer, estimate_norm_scales
    from crosscoder.train import train_crosscoder

    model, rows = tiny_embedded.model, tiny_embedded.tokens_train_NT[:64]
    cfg = CrosscoderConfig(READS, model.cfg.d_model, 32, out_hookpoints=WRITES, architecture="relu", layout="clt")
    cc = build_crosscoder(cfg)
    cc.norm_scale_L.copy_(estimate_norm_scales(model, rows, cfg.all_hookpoints))
    buf = ActivationBuffer(model, rows, cfg.all_hookpoints, cc.norm_scale_L, batch_size=128, n_buffer_tokens=1024, seed=1)
    train_crosscoder(cc, buf, TrainConfig(steps=100, batch_size=128, lr=3e-3, l1_coeff=1.0), progress=False)
    tokens_T = tiny_embedded.tokens_val_NT[0][:9]
    return model, cc, tokens_T, attribution_graph(model, cc, tokens_T, batch_size=16)


def feature_rows(g):
    return list(range(g.n_features)) + list(range(len(g.nodes) - g.n_logits, len(g.nodes)))


def test_linearisation_is_exact(setup):
    """At the clean node values the frozen replacement model (and the unfrozen one) reproduces the clean run: logits,
    residual stream and the CLT's pre-activations; error nodes close the gap exactly."""
    model, cc, tokens_T, _ = setup
    rep = LinearisedReplacement(model, cc, tokens_T)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens_T[None], names_filter=lambda n: n.endswith("hook_resid_post"))
        for frozen in (True, False):
            resid = {}
            hooks = [(f"blocks.{l}.hook_resid_post", lambda a, hook: resid.__setitem__(hook.name, a)) for l in range(2)]
            with model.hooks(fwd_hooks=hooks):
                out = rep.forward(*rep.clean_values(1), frozen=frozen)
            torch.testing.assert_close(out.logits_BV[0], rep.clean_logits_TV[-1], atol=1e-4, rtol=0)
            torch.testing.assert_close(out.pre_BN[0], rep.clean_pre_N, atol=1e-4, rtol=0)
            for name, a in resid.items():
                torch.testing.assert_close(a, cache[name], atol=1e-4, rtol=0)
    assert (rep.act_N > 0).all() and (rep.pos_N > 0).all()  # BOS features dropped (zero_bos)
    assert rep.error_LTD[:, 0].norm() > 0  # ...so the BOS error node carries that MLP output


def test_sum_rule_and_causality(setup):
    """The targets are affine in the node values: each row of A sums to target(clean) − target(all nodes 0). Edges
    only run forward: a feature reaches features of later layers at the same or later positions."""
    model, cc, tokens_T, g = setup
    rep = LinearisedReplacement(model, cc, tokens_T)
    a, e, m = rep.clean_values(1)
    with torch.no_grad():
        clean, zero = rep.forward(a, e, m, g.logit_tokens), rep.forward(a * 0, e * 0, m * 0, g.logit_tokens)
    delta = torch.cat([clean.pre_BN[0], clean.targets_BK[0]]) - torch.cat([zero.pre_BN[0], zero.targets_BK[0]])
    rows = feature_rows(g)
    torch.testing.assert_close(g.adjacency[rows].sum(1), delta, atol=1e-4, rtol=1e-4)
    nf = g.n_features
    layer = torch.tensor([n.layer for n in g.nodes[:nf]])
    pos = torch.tensor([n.position for n in g.nodes[:nf]])
    forward_FF = (layer[None, :] < layer[:, None]) & (pos[None, :] <= pos[:, None])  # [target, source]
    assert (g.adjacency[:nf, :nf][~forward_FF] == 0).all() and (g.adjacency[:nf, :nf][forward_FF] != 0).any()
    assert (g.adjacency[nf:len(g.nodes) - g.n_logits] == 0).all()  # errors and embeddings have no incoming edges
    assert (g.adjacency[:, len(g.nodes) - g.n_logits:] == 0).all()  # logits have no outgoing edges
    err = g.adjacency[:nf, nf:nf + g.n_errors].view(nf, 2, -1)  # an error node reaches later layers only
    assert (err[layer == 0, 0] == 0).all() and (err[layer == 1, 1] == 0).all()


def test_edges_match_ablations(setup):
    """Zeroing a source feature moves the target's pre-activation by the edge weight: exactly in the frozen
    replacement model; with attention and LayerNorm recomputed, the top edges still rank alike (Spearman ≥ 0.9)."""
    model, cc, tokens_T, g = setup
    rep = LinearisedReplacement(model, cc, tokens_T)
    nf = g.n_features
    A_FF = g.adjacency[:nf, :nf]
    top = torch.topk(A_FF.abs().flatten(), 20).indices
    tgt, src = top // nf, top % nf
    assert (A_FF[tgt, src] != 0).all()
    a, e, m = rep.clean_values(len(top))
    ablated = a.clone()
    ablated[torch.arange(len(top)), src] = 0
    with torch.no_grad():
        base = rep.forward(a[:1], e[:1], m[:1]).pre_BN[0]
        for frozen in (True, False):
            effect = base[tgt] - rep.forward(ablated, e, m, frozen=frozen).pre_BN[torch.arange(len(top)), tgt]
            if frozen:
                torch.testing.assert_close(effect, A_FF[tgt, src], atol=1e-4, rtol=1e-4)
            assert spearmanr(effect.numpy(), A_FF[tgt, src].numpy()).statistic >= 0.9


def test_pruning_and_scores(setup):
    """Pruning keeps every embedding and logit, keeps fewer nodes for a smaller node threshold, and its kept edges
    join kept nodes; the scores lie in [0, 1] and drop when the error nodes grow."""
    _, _, _, g = setup
    nf, ne, nemb, nl = g.n_features, g.n_errors, g.n_embeddings, g.n_logits
    assert g.prune.node_mask[-(nemb + nl):].all() and 0 < int(g.prune.node_mask[:nf].sum()) < nf
    assert not g.prune.edge_mask[~g.prune.node_mask].any() and not g.prune.edge_mask[:, ~g.prune.node_mask].any()
    assert 0 <= g.replacement_score <= 1 and 0 <= g.completeness_score <= 1
    p = float(g.logit_probabilities.sum())
    assert p <= 1 + 1e-6 and (p >= 0.95 or g.n_logits == 10)
    kept = [int(prune_graph(g.adjacency, g.logit_weights, nf, nemb, nl, t, 0.98).node_mask.sum()) for t in (0.3, 0.6, 0.8, 0.95)]
    assert kept == sorted(kept) and kept[0] < kept[-1]
    edges = [int(prune_graph(g.adjacency, g.logit_weights, nf, nemb, nl, 0.8, t).edge_mask.sum()) for t in (0.5, 0.8, 0.98)]
    assert edges == sorted(edges) and edges[0] < edges[-1]
    errors, embs = slice(nf, nf + ne), slice(nf + ne, nf + ne + nemb)
    louder = g.adjacency.clone()
    louder[:, errors] *= 10  # error nodes ten times as strong: both scores fall
    r, c = graph_scores(louder, g.logit_weights, errors, embs)
    assert r < g.replacement_score and c < g.completeness_score
    d = g.to_dict()
    json.dumps(d)
    assert len(d["nodes"]) == int(g.prune.node_mask.sum()) and {n["kind"] for n in d["nodes"]} >= {"embedding", "logit"}
    assert all(link["weight"] != 0 for link in d["links"])


def test_influence_and_scores_by_hand():
    """Nodes [f0, f1, err, emb, logit]: emb → f0 (2), err → f0 (−2), f0 → f1 (1), emb → f1 (3), f1 → logit (4),
    f0 → logit (−4). Normalised rows: f0 = [·, ·, .5, .5], f1 = [.25, ·, ·, .75], logit = [.5, .5, ·, ·].
    Influence from logit weight 1: f0 .5 + .5·.25 = .625, f1 .5, err .625·.5 = .3125, emb .3125 + .5·.75 = .6875."""
    A = torch.zeros(5, 5)
    A[0, 2], A[0, 3], A[1, 0], A[1, 3], A[4, 1], A[4, 0] = -2, 2, 1, 3, 4, -4
    w = torch.tensor([0, 0, 0, 0, 1.0])
    torch.testing.assert_close(normalize_matrix(A)[4], torch.tensor([.5, .5, 0, 0, 0]))
    infl = compute_influence(normalize_matrix(A), w)
    torch.testing.assert_close(infl, torch.tensor([.625, .5, .3125, .6875, 0]))
    r, c = graph_scores(A, w, slice(2, 3), slice(3, 4))
    assert r == pytest.approx(.6875 / (.6875 + .3125))
    # completeness: non-error fractions [.5, 1, 1, 1, 1] weighted by influence + w = [.625, .5, .3125, .6875, 1]
    assert c == pytest.approx((.5 * .625 + .5 + .3125 + .6875 + 1) / (.625 + .5 + .3125 + .6875 + 1))
    assert float(find_threshold(torch.tensor([4.0, 3, 2, 1]), 0.7)) == 3  # 4/10 < .7 ≤ 7/10
    kept = prune_graph(A, w, n_features=2, n_embeddings=1, n_logits=1, node_threshold=0.5, edge_threshold=0.99)
    # node influences [.625, .5, .3125, .6875, 0] sum 2.125: the top two (emb .6875, f0 .625) reach .5 of it
    assert kept.node_mask.tolist() == [True, False, False, True, True]
    assert kept.edge_mask.nonzero().tolist() == [[0, 3], [4, 0]]
    cyclic = torch.tensor([[0, 1.0], [1.0, 0]])
    with pytest.raises(FeatgraphError, match="cycle"):
        compute_influence(cyclic, torch.tensor([1.0, 0]), max_iter=10)


def test_bad_inputs_are_one_line(setup):
    model, cc, tokens_T, _ = setup
    with pytest.raises(FeatgraphError, match="node_threshold must lie in"):
        AttributionConfig(node_threshold=1.5)
    acausal = build_crosscoder(CrosscoderConfig(WRITES, model.cfg.d_model, 8))
    with pytest.raises(FeatgraphError, match="layout clt") as e:
        attribution_graph(model, acausal, tokens_T)
    assert "\n" not in str(e.value)
    with pytest.raises(FeatgraphError, match="shape"):
        attribution_graph(model, cc, tokens_T[None])


def test_clt_reading_the_mlp_input(tiny_embedded):
    """A CLT that reads the LayerNorm'd MLP input (ln2.hook_normalized): the read goes through the frozen LayerNorm
    scale, and the graph is still exact (linearisation and sum rule)."""
    model = tiny_embedded.model
    reads = ["blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"]
    cc = build_crosscoder(CrosscoderConfig(reads, model.cfg.d_model, 8, out_hookpoints=WRITES, architecture="relu", layout="clt"))
    with torch.no_grad():
        cc.norm_scale_L.copy_(torch.tensor([0.5, 2.0, 1.0, 1.0]))
    tokens_T = tiny_embedded.tokens_val_NT[1][:6]
    g = attribution_graph(model, cc, tokens_T, batch_size=8)
    rep = LinearisedReplacement(model, cc, tokens_T)
    a, e, m = rep.clean_values(1)
    with torch.no_grad():
        clean, zero = rep.forward(a, e, m, g.logit_tokens), rep.forward(a * 0, e * 0, m * 0, g.logit_tokens)
    torch.testing.assert_close(clean.logits_BV[0], rep.clean_logits_TV[-1], atol=1e-4, rtol=0)
    torch.testing.assert_close(clean.pre_BN[0], rep.clean_pre_N, atol=1e-4, rtol=0)
    delta = torch.cat([clean.pre_BN[0], clean.targets_BK[0]]) - torch.cat([zero.pre_BN[0], zero.targets_BK[0]])
    assert g.n_features > 0
    torch.testing.assert_close(g.adjacency[feature_rows(g)].sum(1), delta, atol=1e-4, rtol=1e-4)
    wrong = CrosscoderConfig(reads[::-1], model.cfg.d_model, 8, out_hookpoints=WRITES, architecture="relu", layout="clt")
    with pytest.raises(FeatgraphError, match="must be blocks.0"):
        attribution_graph(model, build_crosscoder(wrong), tokens_T)
    partial = CrosscoderConfig(reads[:1], model.cfg.d_model, 8, out_hookpoints=WRITES[:1], architecture="relu", layout="clt")
    with pytest.raises(FeatgraphError, match="every MLP output"):
        attribution_graph(model, build_crosscoder(partial), tokens_T)
