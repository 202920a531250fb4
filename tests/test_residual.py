"""Residual dictionaries (crosscoder.residual, fit's residual_of, train_residual_rounds) and `crosscoder combine`."""

import json

import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from crosscoder.io import load_crosscoder, save_crosscoder
from crosscoder.residual import check_combinable, combine_crosscoders, residual_of
from crosscoder.train import train_crosscoder

# ---- planted directions: what a small dictionary misses, its residual dictionary finds -----------------------------


def _planted_source(D=32, N=48, B=512, seed=0):
    """Sparse non-negative combinations of N planted unit directions in R^D (about 3.6 active per token, the first
    directions the most frequent); a fresh batch (B, 1, D) per call from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    dirs_ND = torch.randn(N, D, generator=gen)
    dirs_ND = dirs_ND / dirs_ND.norm(dim=1, keepdim=True)
    freq_N = torch.linspace(0.12, 0.03, N)

    def batch():
        act_BN = (torch.rand(B, N, generator=gen) < freq_N) * (0.5 + torch.rand(B, N, generator=gen))
        return (act_BN @ dirs_ND * (D**0.5 / 1.5))[:, None, :]

    return dirs_ND, batch


def _best_cosine(dirs_ND, cc):
    """For each planted direction, its largest cosine with a decoder vector of ``cc``."""
    W_FD = cc.W_dec_FLD.detach()[:, 0]
    return (dirs_ND @ (W_FD / W_FD.norm(dim=1, keepdim=True)).T).max(dim=1).values




def test_planted_directions_a_small_dictionary_misses_are_recovered_by_its_residual(one_thread):
    torch.manual_seed(0)
    dirs_ND, batch = _planted_source()
    schedule = TrainConfig(steps=2000, batch_size=512, lr=3e-3, l1_coeff=4.0, log_every=1000)
    first = build_crosscoder(CrosscoderConfig(["h"], 32, 16, dead_after_tokens=20_000))
    train_crosscoder(first, batch, schedule, progress=False)
    found_first = _best_cosine(dirs_ND, first)
    missed = found_first < 0.9
    assert 24 <= int(missed.sum()) <= 40  # 16 latents for 48 directions: most directions are missed

    frozen_state = {k: v.clone() for k, v in first.state_dict().items()}
    new = build_crosscoder(CrosscoderConfig(["h"], 32, 64, seed=1, dead_after_tokens=20_000))
    new.norm_scale_L.copy_(first.norm_scale_L)
    with residual_of(new, first):
        train_crosscoder(new, batch, schedule, progress=False)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in frozen_state.items())  # the frozen one never trained

    found_all = _best_cosine(dirs_ND, new)
    found_new = found_all[missed]
    assert (found_new > 0.9).float().mean() >= 0.9, found_new  # (all of them on this seed, the worst at 0.90: room for rounding)
    assert found_new.median() > 0.95
    # It learns the residual, not the activations: it spends (almost) no latent on a direction the first one has
    # (none on this seed; a 64-latent dictionary trained on the activations themselves finds them all again).
    assert int((found_all[~missed] > 0.9).sum()) <= 2
    # The sum reconstructs held-out tokens much better than the first alone, and as first + new.
    x = batch()
    both = combine_crosscoders([first, new])
    with torch.no_grad():
        err_first = (first(x) - x).pow(2).sum()
        err_both = (both(x) - x).pow(2).sum()
        assert torch.allclose(both(x), first(x) + new(x), atol=1e-4)
    assert err_both < 0.7 * err_first


# ---- the residual hook ------------------------------------------------------------------------------------------


def _trained_like(cc, seed):
    """Random biases and scales (and a BatchTopK threshold), as a trained crosscoder has; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cc.b_enc_F.copy_(0.1 * torch.randn(cc.b_enc_F.shape, generator=gen))
        cc.b_dec_LD.copy_(0.1 * torch.randn(cc.b_dec_LD.shape, generator=gen))
        cc.norm_scale_L.copy_(0.5 + 1.5 * torch.rand(cc.norm_scale_L.shape, generator=gen))
        cc.tokens_since_fired_F.copy_(torch.randint(0, 1000, cc.tokens_since_fired_F.shape, generator=gen))
        if cc.cfg.architecture == "batchtopk":
            cc.threshold.fill_(0.05)
        if cc.cfg.architecture == "jumprelu":
            cc.log_threshold_F.copy_(torch.log(0.02 + 0.1 * torch.rand(cc.cfg.n_features, generator=gen)))
    return cc.eval()


def _make(arch, F, seed, hookpoints=("a", "b"), out=None, **kw):
    options = {"k": 4, "aux_k": 8} if arch == "batchtopk" else {}
    cfg = CrosscoderConfig(list(hookpoints), 8, F, architecture=arch, options=options, seed=seed, out_hookpoints=out, **kw)
    return _trained_like(build_crosscoder(cfg), seed + 100)


def test_residual_targets_are_what_the_frozen_one_leaves_and_it_stays_outside_the_module():
    frozen, new = _make("relu", 16, 0), build_crosscoder(CrosscoderConfig(["a", "b"], 8, 24, seed=5))
    new.norm_scale_L.copy_(frozen.norm_scale_L)
    x = torch.randn(64, 2, 8)
    plain_keys = set(new.state_dict())
    frozen.train()
    with residual_of(new, frozen):
        assert not frozen.training  # the frozen one encodes by its inference rule
        assert torch.allclose(new.targets(x), x - frozen(x, normalised=True), atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # training's bf16 leaves the frozen reconstruction float32
            in_bf16 = new.targets(x.clone())
        assert in_bf16.dtype == torch.float32 and torch.allclose(in_bf16, new.targets(x), atol=1e-6)
        assert set(new.state_dict()) == plain_keys and len(list(new.parameters())) == 4
        new.loss(x, 1.0).loss.backward()
        assert all(p.grad is None for p in frozen.parameters())
    assert frozen.training and new.target_offset is None  # both restored on leaving
    assert torch.equal(new.targets(x), x)
    with pytest.raises(FeatgraphError, match="residual of itself"):
        with residual_of(new, new):
            pass


def test_batchtopk_residual_runs_the_frozen_one_once_per_batch_and_sparse_kernels_agree():
    frozen = _make("batchtopk", 16, 0)
    new = build_crosscoder(CrosscoderConfig(["a", "b"], 8, 64, architecture="batchtopk", options={"k": 4, "aux_k": 8}, seed=3,
                                            dead_after_tokens=1))
    new.norm_scale_L.copy_(frozen.norm_scale_L)
    new.tokens_since_fired_F[:32] = 10  # half the latents dead: AuxK asks for the targets too
    calls = []
    encode = frozen.encode
    frozen.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    x = torch.randn(256, 2, 8)
    with residual_of(new, frozen):
        new.sparse_kernels = "off"
        dense = new.loss(x, 0.0)
        assert len(calls) == 1 and dense.sparsity > 0  # mse and AuxK shared one frozen pass
        new.sparse_kernels = "on"
        sparse = new.loss(x, 0.0)
    assert len(calls) == 1
    assert torch.allclose(dense.mse, sparse.mse, rtol=1e-5) and torch.allclose(dense.sparsity, sparse.sparsity, rtol=1e-4)
    residual = x - frozen(x, normalised=True)
    assert torch.allclose(dense.mse, (new.decode(dense.f_BF, normalised=True) - residual).pow(2).sum(dim=(1, 2)).mean(), rtol=1e-5)


# ---- combine: exactly the sum ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("archs, hookpoints, out, expect", [
    (("relu", "relu"), ("a", "b"), None, "relu"),
    (("batchtopk", "batchtopk"), ("a", "b"), None, "jumprelu"),
    (("relu", "batchtopk"), ("a", "b"), None, "jumprelu"),
    (("jumprelu", "relu", "batchtopk"), ("a",), None, "jumprelu"),
    (("relu", "batchtopk"), ("a",), ["b"], "jumprelu"),  # a transcoder: reads a, writes b
    (("batchtopk", "relu"), ("a",), ["b"], "jumprelu"),
])
def test_combined_encodes_as_the_parts_side_by_side_and_decodes_as_their_sum(archs, hookpoints, out, expect):
    parts = [_make(a, 8 + 4 * i, i, hookpoints, out) for i, a in enumerate(archs)]  # each with its own scales
    cc = combine_crosscoders(parts, [f"p{i}" for i in range(len(parts))])
    assert cc.cfg.architecture == expect and cc.cfg.n_features == sum(p.cfg.n_features for p in parts) and not cc.training
    x = 3 * torch.randn(500, len(cc.cfg.all_hookpoints), 8)
    f = cc.encode(x)
    f_parts = torch.cat([p.encode(x) for p in parts], dim=1)
    fired = f_parts > 0
    assert 0.02 < fired.float().mean() < 0.9  # thresholds matter: some latents fire, some do not
    assert torch.equal(f > 0, fired)
    assert torch.allclose(f, f_parts, atol=1e-5)
    assert torch.allclose(cc(x), sum(p(x) for p in parts), atol=1e-5)
    assert torch.allclose(cc.decode(f_parts), sum(p.decode(p.encode(x)) for p in parts), atol=1e-5)
    assert torch.equal(cc.tokens_since_fired_F, torch.cat([p.tokens_since_fired_F for p in parts]))
    assert [part["source"] for part in cc.lineage[0]["parts"]] == ["p0", "p1", "p2"][: len(parts)]
    assert cc.lineage[0]["stage"] == "combine"


def test_model_crosscoders_with_shared_latents_combine_exactly():
    parts = [_make("relu", 8, 0, ("a", "b"), models=["m1", "m2"], n_shared_latents=2),
             _make("batchtopk", 12, 1, ("a", "b"), models=["m1", "m2"], model_norm="concat")]
    cc = combine_crosscoders(parts)
    assert cc.cfg.models == ["m1", "m2"] and cc.cfg.n_shared_latents == 0 and len(cc.cfg.all_hookpoints) == 4
    x = 3 * torch.randn(300, 4, 8)
    assert torch.equal(cc.encode(x) > 0, torch.cat([p.encode(x) for p in parts], dim=1) > 0)
    assert torch.allclose(cc(x), sum(p(x) for p in parts), atol=1e-5)


def test_combined_survives_save_and_load_and_combining_is_associative(tmp_path):
    a, b, c = _make("relu", 8, 0), _make("batchtopk", 8, 1), _make("jumprelu", 8, 2)
    x = torch.randn(200, 2, 8)
    flat = combine_crosscoders([a, b, c])
    nested = combine_crosscoders([a, combine_crosscoders([b, c])])
    assert torch.allclose(flat(x), nested(x), atol=1e-5) and torch.equal(flat.encode(x) > 0, nested.encode(x) > 0)
    save_crosscoder(flat, tmp_path / "sum")
    loaded = load_crosscoder(tmp_path / "sum")
    assert torch.allclose(loaded(x), flat(x), atol=1e-6) and loaded.lineage == flat.lineage


def test_combine_refuses_what_it_cannot_sum():
    with pytest.raises(FeatgraphError, match="hookpoints") as e:
        combine_crosscoders([_make("relu", 8, 0, ("a", "b")), _make("relu", 8, 1, ("a", "c"))])
    assert "\n" not in str(e.value)
    with pytest.raises(FeatgraphError, match="models"):
        check_combinable([_make("relu", 8, 0, ("a",)), _make("relu", 8, 1, ("a",), models=["m1", "m2"])])
    with pytest.raises(FeatgraphError, match="out_hookpoints"):
        check_combinable([_make("relu", 8, 0, ("a",), ["b"]), _make("relu", 8, 1, ("a",))])
    untrained = build_crosscoder(CrosscoderConfig(["a", "b"], 8, 8, architecture="batchtopk", options={"k": 2}))
    with pytest.raises(FeatgraphError, match="learned inference threshold"):
        combine_crosscoders([_make("relu", 8, 0), untrained])


# ---- fit(residual_of=...) -------------------------------------------------------------------------------------------


def test_fit_residual_of_keeps_the_scales_evaluates_the_sum_and_records_the_parent(tmp_path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from crosscoder.config import FitConfig
    from crosscoder.data import TokenRows
    from crosscoder.fitting import fit
    from crosscoder.metrics import evaluate

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=8, d_vocab=50, act_fn="relu"))
    rows = TokenRows(torch.randint(0, 50, (32, 8)), torch.randint(0, 50, (6, 8)), "random")
    hps = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
    quick = dict(fit_cfg=FitConfig(buffer_tokens=128, eval_rows=6, splice=False), progress=False)
    first = fit(model, rows, TrainConfig(steps=20, batch_size=32), cc_cfg=CrosscoderConfig(hps, 16, 8), out=tmp_path / "A", **quick).cc
    before = {k: v.clone() for k, v in first.state_dict().items()}
    cfg = CrosscoderConfig(hps, 16, 24, architecture="batchtopk", options={"k": 2}, seed=1)
    res = fit(model, rows, TrainConfig(steps=20, batch_size=32), cc_cfg=cfg, residual_of=first, parent_path=tmp_path / "A",
              out=tmp_path / "B", **quick)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in before.items())
    assert torch.equal(res.cc.norm_scale_L, first.norm_scale_L)  # copied, not re-estimated
    total = evaluate(combine_crosscoders([first, res.cc]), model, rows.val_NT, splice=False)
    assert res.metrics.fvu_pooled == pytest.approx(total.fvu_pooled, rel=1e-6)  # the metrics are the sum's
    meta = json.loads((tmp_path / "B" / "cfg.json").read_text())
    assert meta["lineage"] == [{"stage": "residual", "parent": str(tmp_path / "A")}]
    assert meta["extra"]["residual_of"] == str(tmp_path / "A") and meta["extra"]["metrics"]["fvu_pooled"] == res.metrics.fvu_pooled
    assert meta["extra"]["residual_metrics"]["n_features"] == 24 and 0 < meta["extra"]["residual_metrics"]["fvu_pooled"] <= 1.5
    with pytest.raises(FeatgraphError, match="hookpoints"):
        fit(model, rows, TrainConfig(steps=2, batch_size=32), cc_cfg=CrosscoderConfig(hps[:1], 16, 8), residual_of=first, **quick)


# ---- the commands ---------------------------------------------------------------------------------------------------


def test_cli_residual_rounds_then_combine_gives_the_recorded_sum(tmp_path, capsys, tiny_embedded):
    from featgraph.cli import main

    quick = ["--steps", "40", "--batch-size", "128", "--eval-rows", "6", "--quiet"]
    cc_dir, r_dir, s_dir = tmp_path / "CC", tmp_path / "R", tmp_path / "S"
    assert main(["crosscoder", "train", "--size", "tiny", "--n-features", "32", "--no-splice", "--out", str(cc_dir), *quick]) == 0
    capsys.readouterr()
    assert main(["crosscoder", "train", "--residual-of", str(cc_dir), "--rounds", "2", "--n-features", "16", "--out", str(r_dir), *quick]) == 0
    printed = capsys.readouterr().out
    assert "round" in printed and "FVU pooled" in printed and "CE loss recovered" in printed

    meta = json.loads((r_dir / "cfg.json").read_text())
    rounds = meta["extra"]["residual_rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and [r["n_features"] for r in rounds] == [32, 48, 64]
    cc_metrics = json.loads((cc_dir / "cfg.json").read_text())["extra"]["metrics"]
    assert rounds[0]["fvu_pooled"] == pytest.approx(cc_metrics["fvu_pooled"], rel=1e-5)  # the same held-out rows, model and seed
    assert rounds[2]["fvu_pooled"] <= rounds[1]["fvu_pooled"] <= rounds[0]["fvu_pooled"]  # each round explains more
    assert all(len(r["ce_loss_recovered"]) == 3 for r in rounds) and rounds[2]["residual"]["fvu_pooled"] < 1
    assert meta["extra"]["residual_of"] == str(cc_dir) and meta["config"]["n_features"] == 32  # OUT: the two rounds added
    assert meta["lineage"][0]["stage"] == "residual" and meta["lineage"][0]["parent"] == str(cc_dir)
    assert meta["config"]["hookpoints"] == json.loads((cc_dir / "cfg.json").read_text())["config"]["hookpoints"]

    assert main(["crosscoder", "combine", str(cc_dir), str(r_dir), "--out", str(s_dir), "--eval-rows", "6", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["crosscoder", "eval", str(s_dir), "--rows", "6", "--json", str(tmp_path / "s.json"), "--quiet"]) == 0
    evaluated = json.loads((tmp_path / "s.json").read_text())
    assert evaluated["fvu_pooled"] == pytest.approx(rounds[2]["fvu_pooled"], rel=1e-4)
    assert evaluated["l0"] == pytest.approx(rounds[2]["l0"], rel=1e-4)
    assert evaluated["ce_loss_recovered"] == pytest.approx(rounds[2]["ce_loss_recovered"], rel=1e-3)
    assert load_crosscoder(s_dir).cfg.n_features == 64


def test_cli_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    from featgraph.cli import main

    one = build_crosscoder(CrosscoderConfig(["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"], 16, 8))
    other = build_crosscoder(CrosscoderConfig(["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"], 16, 8))
    multi = build_crosscoder(CrosscoderConfig(["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"], 16, 8, models=["a", "b"]))
    for name, cc in (("one", one), ("other", other), ("multi", multi)):
        save_crosscoder(cc, tmp_path / name)
    cases = [
        (["crosscoder", "combine", str(tmp_path / "one"), str(tmp_path / "other")], "hookpoints"),
        (["crosscoder", "combine", str(tmp_path / "one"), str(tmp_path / "multi")], "models"),
        (["crosscoder", "combine", str(tmp_path / "one"), str(tmp_path / "missing")], "does not exist"),
        (["crosscoder", "combine", str(tmp_path / "one")], "two or more"),
        (["crosscoder", "train", "--residual-of", str(tmp_path / "one"), "--hookpoints", "blocks.0.hook_resid_pre"], "--hookpoints"),
        (["crosscoder", "train", "--residual-of", str(tmp_path / "missing")], "does not exist"),
        (["crosscoder", "train", "--rounds", "2"], "--residual-of"),
    ]
    for argv, words in cases:
        out = tmp_path / "out"
        assert main([*argv, "--out", str(out), "--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err, (argv, err)
        assert not out.exists()
