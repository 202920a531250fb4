"""Matryoshka crosscoders (crosscoder.matryoshka): nested prefix losses, every shape, truncation, per-prefix metrics,
and the absorption test on planted hierarchical features (crosscoder.absorption)."""

import json

import pytest
import torch

from crosscoder.absorption import PlantedHierarchy, absorption_report
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from crosscoder.io import load_crosscoder, save_crosscoder
from crosscoder.matryoshka import prefix_metrics, prefix_sizes, truncate
from crosscoder.train import train_crosscoder

from conftest import cli_help

ARCHS = ["matryoshka_relu", "matryoshka_batchtopk"]




def cfg(arch, hookpoints=("h0", "h1"), F=32, **kw):
    extra = dict(k=4, aux_k=8) if "batchtopk" in arch else {}
    return CrosscoderConfig.from_flat(list(hookpoints), d_model=8, n_features=F, architecture=arch, dead_after_tokens=256, **{**extra, **kw})


def test_prefix_sizes_and_option_checks():
    assert prefix_sizes([1 / 16, 1 / 4, 1.0], 64) == [4, 16, 64]
    assert prefix_sizes([0.01, 1.0], 10) == [1, 10]  # at least one latent
    c = cfg("matryoshka_batchtopk", prefixes=[0.25, 1])
    assert c.options["prefixes"] == [0.25, 1.0] and build_crosscoder(c).prefix_sizes == [8, 32]
    assert CrosscoderConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # cfg.json round trip
    assert cfg("matryoshka_relu").options["prefixes"] == [1 / 16, 1 / 4, 1.0]
    for bad, msg in [([0.5], "ending with 1"), ([0.5, 0.25, 1], "increasing"), ([0, 1], r"in \(0, 1\]"), ("0.5,1", "increasing"),
                     ([0.01, 0.02, 1], "repeat")]:
        with pytest.raises(FeatgraphError, match=msg) as e:
            cfg("matryoshka_relu", prefixes=bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_is_the_base_loss_plus_each_inner_prefix_by_hand(arch):
    """loss = base loss (full reconstruction + its sparsity term) + Σ_{inner j} ‖a − (Σ_{i<m_j} f_i d_i + b_dec)‖²."""
    cc = build_crosscoder(cfg(arch, prefixes=[0.125, 0.5, 1.0]))
    with torch.no_grad():
        cc.b_dec_LD.normal_()
    x = torch.randn(16, 2, 8, generator=torch.Generator().manual_seed(0))
    out = cc.loss(x, 0.3)
    base = type(cc).base.loss(cc, x, 0.3)
    f = out.f_BF.detach()
    W = cc.W_dec_FLD.detach()
    by_hand = base.loss.item()
    for m in (4, 16):
        x_hat = torch.einsum("bf,fld->bld", f[:, :m], W[:m]) + cc.b_dec_LD.detach()
        by_hand += (x - x_hat).pow(2).sum(dim=(1, 2)).mean().item()
    assert out.loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert out.mse.item() == pytest.approx(base.mse.item(), rel=1e-6)  # mse stays the full dictionary's
    recon = cc.prefix_reconstructions(f, normalised=True)
    assert len(recon) == 3
    torch.testing.assert_close(recon[-1], cc.decode(f, normalised=True))
    torch.testing.assert_close(cc.prefix_reconstructions(f)[-1], cc.decode(f))


def test_sparse_kernels_path_matches_the_dense_one():
    x = torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(1))
    results = {}
    for mode in ("on", "off"):
        cc = build_crosscoder(cfg("matryoshka_batchtopk", F=64, prefixes=[0.125, 0.25, 1.0]))
        cc.tokens_since_fired_F[:5] = 10**6  # some dead latents: AuxK on both paths
        cc.sparse_kernels = mode
        assert cc.uses_sparse_kernels(64) == (mode == "on")
        out = cc.loss(x, 0.0)
        out.loss.backward()
        results[mode] = (out.loss.detach(), cc.W_dec_FLD.grad.clone(), cc.W_enc_LDF.grad.clone())
    for a, b in zip(results["on"], results["off"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


SHAPES = {
    "crosscoder": dict(hookpoints=("h0", "h1")),
    "sae": dict(hookpoints=("h0",)),
    "transcoder": dict(hookpoints=("h0",), out_hookpoints=["h1"]),
    "model_crosscoder": dict(hookpoints=("h0",), models=["base", "tuned"], n_shared_latents=2),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_builds_trains_saves_and_loads(arch, shape, tmp_path, one_thread):
    cc = build_crosscoder(cfg(arch, seed=1, **SHAPES[shape]))
    L = len(cc.cfg.all_hookpoints)
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(12, L, 8, generator=g)
    src = lambda: torch.einsum("bf,fld->bld", torch.rand(64, 12, generator=g) * (torch.rand(64, 12, generator=g) < 0.2), dirs)
    res = train_crosscoder(cc, src, TrainConfig(steps=30, batch_size=64, lr=3e-3, l1_coeff=0.05, log_every=10), progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    save_crosscoder(cc, tmp_path / "cc")
    back = load_crosscoder(tmp_path / "cc")
    assert type(back) is type(cc) and back.cfg == cc.cfg and back.prefix_sizes == cc.prefix_sizes
    x = src()
    assert torch.equal(back.encode(x), cc.encode(x)) and torch.equal(back(x), cc(x))
    for m in cc.prefix_sizes:  # a prefix is the first m latents with the rest switched off
        small = truncate(cc, m)
        assert small.cfg.architecture == type(cc).base.name and small.cfg.n_features == m
        f = cc.encode(x)
        torch.testing.assert_close(small.encode(x), f[:, :m])
        torch.testing.assert_close(small(x), cc.decode(torch.cat([f[:, :m], torch.zeros_like(f[:, m:])], dim=1)))


def test_truncate_refuses_other_architectures_and_bad_sizes():
    with pytest.raises(FeatgraphError, match="not a Matryoshka architecture"):
        truncate(build_crosscoder(cfg("relu")), 4)
    with pytest.raises(FeatgraphError, match=r"1\.\.32"):
        truncate(build_crosscoder(cfg("matryoshka_relu")), 33)


def test_batchtopk_inference_and_saelens_form_are_the_base(tmp_path):
    """Encoding in eval mode is BatchTopK's threshold rule; a one-hookpoint one exports to SAELens and comes back."""
    pytest.importorskip("sae_lens")
    from crosscoder.saelens import load_saelens, save_saelens

    cc = build_crosscoder(cfg("matryoshka_batchtopk", hookpoints=("blocks.0.hook_resid_post",), seed=2))
    train_crosscoder(cc, PlantedHierarchy(d_model=8, n_parents=2, children=2, n_independent=2).batches(64), TrainConfig(steps=20, batch_size=64), progress=False)
    assert cc.threshold.item() > 0
    back = load_saelens(save_saelens(cc, tmp_path / "sae"))
    assert type(back) is type(cc) and back.cfg == cc.cfg
    x = torch.randn(32, 1, 8)
    torch.testing.assert_close(back(x), cc(x), atol=1e-5, rtol=1e-5)


def test_prefix_metrics_on_the_embedded_model(tiny_embedded):
    from crosscoder.data import TokenRows
    from crosscoder.fitting import FitConfig, fit

    model = tiny_embedded.model
    hook = "blocks.0.hook_resid_post"
    rows = TokenRows(tiny_embedded.tokens_train_NT[:64], tiny_embedded.tokens_val_NT[:8], "embedded")
    c = CrosscoderConfig.from_flat([hook], model.cfg.d_model, 4 * model.cfg.d_model, architecture="matryoshka_batchtopk", k=8)
    res = fit(model, rows, TrainConfig(steps=40, batch_size=256), cc_cfg=c, fit_cfg=FitConfig(buffer_tokens=2048, norm_tokens=1024, eval_rows=8), progress=False)
    per = prefix_metrics(res.cc, model, rows.val_NT, splice=True)
    assert [p["n_features"] for p in per] == res.cc.prefix_sizes
    assert per[-1]["fvu_pooled"] == pytest.approx(res.metrics.fvu_pooled, rel=1e-5)  # the last prefix is the whole
    assert per[-1]["l0"] == pytest.approx(res.metrics.l0, rel=1e-6)
    assert per[0]["l0"] <= per[1]["l0"] <= per[2]["l0"]  # nested: the same latents fire, fewer of them
    assert per[0]["fvu_pooled"] > per[2]["fvu_pooled"]
    assert all(len(p["ce_loss_recovered"]) == 1 for p in per)
    reused = res.cc.prefix_metrics(model, rows.val_NT, splice=True, full=res.metrics)  # the method; the last prefix reused
    assert [p["fvu_pooled"] for p in reused] == [p["fvu_pooled"] for p in per[:2]] + [res.metrics.fvu_pooled]
    both = {"a": model, "b": model}
    mc = build_crosscoder(CrosscoderConfig.from_flat([hook], model.cfg.d_model, 64, architecture="matryoshka_relu", models=["a", "b"]))
    per_models = prefix_metrics(mc, both, rows.val_NT[:4])
    assert [p["n_features"] for p in per_models] == [4, 16, 64] and per_models[0]["ce_loss_recovered"] == []


# ---- absorption on planted hierarchical features ----------------------------------------------------------------

def _trained(arch, data, prefixes=None):
    kw = {} if prefixes is None else {"prefixes": prefixes}
    c = CrosscoderConfig.from_flat(["h0"], 32, 32, architecture=arch, seed=1, dead_after_tokens=2000, **kw)
    cc = build_crosscoder(c)
    train_crosscoder(cc, data.batches(128, seed=2), TrainConfig(steps=800, batch_size=128, lr=3e-3, l1_coeff=0.1), progress=False)
    return cc


def test_matryoshka_keeps_parents_whole_where_a_flat_dictionary_absorbs_them(one_thread):
    """4 parents × 4 children + 8 independent features, orthonormal in 32 dimensions; a child fires (at most one per
    parent, p = 0.3) only with its parent, which also fires alone (p = 0.1). Two ReLU dictionaries of 32 latents with
    the same training: flat, and Matryoshka whose first prefix has 4 latents (prefixes 1/8, 1).

    Absorption measure (crosscoder.absorption): for each parent p, the latent i* whose decoder has the largest cosine
    with the parent direction u_p (for Matryoshka, among its first 4 latents) and its recall — the fraction of the
    tokens where p is active on which i* fires; and, for each child c, the cosine with u_p of the latent best matching
    v_c (the parent direction the child latent carries). Kept whole: cos(d_{i*}, u_p) > 0.9 and recall ≈ 1 with child
    latents free of u_p. The flat dictionary instead folds u_p into its child latents (cos with u_p ≈ 0.5-0.6) and its
    parent latent misses the tokens where a child fires (recall ≈ 0.55). The ideal prefix latent is
    E[x | p active] ∝ u_p + (0.75/4)·Σ_c v_c, cos = 1/√(1 + 0.75²/4) ≈ 0.936: a Matryoshka parent leans towards its
    children (Bussmann et al. report the same), hence 0.9 and not 0.99."""
    data = PlantedHierarchy(n_parents=4, children=4, n_independent=8, d_model=32, p_child=0.3, p_parent_alone=0.1, noise=0.01, seed=0)
    ev = data.sample(8192, torch.Generator().manual_seed(123))
    reports = {}
    for arch, prefixes, among in [("relu", None, None), ("matryoshka_relu", [0.125, 1.0], 4)]:
        cc = _trained(arch, data, prefixes)
        reports[arch] = absorption_report(cc, ev.x_BLD, data.parent_dirs_PLD, ev.parent_BP, data.child_dirs_CLD, data.child_parent_C, among=among)
    flat, mat = reports["relu"], reports["matryoshka_relu"]
    # Matryoshka: each parent is one latent of the 4-latent prefix, distinct, firing on (nearly) all its tokens
    assert (mat.parent_cos_P > 0.9).all(), mat
    assert (mat.parent_recall_P > 0.97).all(), mat
    assert len(set(mat.parent_latent_P.tolist())) == 4 and (mat.parent_latent_P < 4).all()
    assert mat.child_parent_cos_C.abs().mean() < 0.1, mat
    # flat: the parents are absorbed — their best latents miss many parent tokens and the child latents carry u_p
    assert flat.mean_recall < 0.75 and flat.mean_recall < mat.mean_recall - 0.25, flat
    assert flat.child_parent_cos_C.mean() > 0.4, flat


def test_absorption_report_by_hand():
    """Two latents, one parent: latent 0 is the parent direction and fires on tokens 0, 1; latent 1 is the
    normalised parent + child and fires on token 2; the parent is active on tokens 0, 2, 3 → recall 1/3."""
    c = CrosscoderConfig(["h0"], 2, 2, architecture="relu")
    cc = build_crosscoder(c)
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        cc.W_dec_FLD.copy_(torch.stack([u, (u + v) / 2**0.5])[:, None])
        cc.W_enc_LDF.copy_(torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]))  # pre_0 = x0 − x1, pre_1 = x1 − x0
        cc.b_enc_F.zero_()
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])[:, None]
    active = torch.tensor([[True], [False], [True], [True]])
    rep = absorption_report(cc, x, u[None, None], active, v[None, None], torch.tensor([0]))
    assert rep.parent_latent_P.tolist() == [0] and rep.parent_cos_P.item() == pytest.approx(1.0)
    assert rep.parent_recall_P.item() == pytest.approx(1 / 3)
    assert rep.child_latent_C.tolist() == [1] and rep.child_parent_cos_C.item() == pytest.approx(2**-0.5)
    assert rep.summary()["absorption"] == pytest.approx(2 / 3)


def test_prefixes_flag_in_the_cli():
    text = cli_help("crosscoder", "train")
    assert "--prefixes" in text and "matryoshka_batchtopk architecture" in text
    from crosscoder.config import check_crosscoder_section
    from featgraph.configs import parse_flag

    prefixes = parse_flag("0.0625,0.25,1", list[float])
    check_crosscoder_section({"architecture": "matryoshka_batchtopk", "prefixes": prefixes, "k": 4})
    with pytest.raises(FeatgraphError, match="prefixes must be increasing"):
        check_crosscoder_section({"architecture": "matryoshka_relu", "prefixes": [0.5, 0.25, 1.0]})


def test_cli_trains_a_matryoshka_sae_with_the_orthogonality_penalty(tmp_path, tiny_embedded):
    from featgraph.cli import main

    out = tmp_path / "m"
    assert main(["crosscoder", "train", "--size", "tiny", "--architecture", "matryoshka_batchtopk", "--k", "4", "--prefixes", "0.25,1",
                 "--decoder-orthogonality", "0.1", "--hookpoints", "blocks.0.hook_resid_post", "--n-features", "16", "--steps", "5",
                 "--batch-size", "64", "--buffer-tokens", "256", "--eval-rows", "2", "--no-splice", "--out", str(out), "--quiet"]) == 0
    cc = load_crosscoder(out)
    assert cc.cfg.architecture == "matryoshka_batchtopk" and cc.cfg.options["prefixes"] == [0.25, 1.0] and cc.prefix_sizes == [4, 16]
    assert main(["crosscoder", "train", "--size", "tiny", "--prefixes", "0.25,1", "--out", str(tmp_path / "x"), "--quiet"]) == 2
