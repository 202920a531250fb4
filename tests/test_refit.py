"""Shrinkage re-fit with the encoder frozen (crosscoder.refit) on a dictionary with planted shrinkage."""

import numpy as np
import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.errors import FeatgraphError
from crosscoder.refit import reconstruction_stats, refit


def _planted(shrink=0.7, L=2, D=16, F=8, n=4096, noise=0.01, seed=0):
    """A ReLU crosscoder whose encoder recovers planted sparse codes exactly (orthonormal directions per hookpoint,
    encoder = decoder transpose), with its decoder shortened by ``shrink``; activations built from those codes."""
    gen = torch.Generator().manual_seed(seed)
    cc = build_crosscoder(CrosscoderConfig.from_flat([f"h{l}" for l in range(L)], D, F, architecture="relu"))
    Q = torch.linalg.qr(torch.randn(L, D, D, generator=gen))[0][:, :, :F]  # (L, D, F), orthonormal columns per hookpoint
    W_true_FLD = Q.permute(2, 0, 1) / L**0.5  # each feature's direction has unit norm over all hookpoints
    codes = torch.rand(n, F, generator=gen) * (torch.rand(n, F, generator=gen) < 0.2)
    x = torch.einsum("nf,fld->nld", codes, W_true_FLD) + noise * torch.randn(n, L, D, generator=gen)
    with torch.no_grad():
        cc.W_enc_LDF.copy_(W_true_FLD.permute(1, 2, 0))  # pre_i = Σ_l <W_i^l, x^l> = code_i (+ noise)
        cc.b_enc_F.zero_()
        cc.W_dec_FLD.copy_(shrink * W_true_FLD)
        cc.b_dec_LD.zero_()
    return cc, list(x.split(512))


@pytest.mark.parametrize("what", ["decoder", "scale"])
def test_planted_shrinkage_returns_to_one(what):
    cc, batches = _planted()
    res = refit(cc, batches, what)
    assert res.before["shrinkage"] == pytest.approx(0.7, abs=0.02)  # the planted shrinkage is measured as planted
    assert res.after["shrinkage"] == pytest.approx(1.0, abs=0.02)
    assert res.after["fvu"] < 0.1 * res.before["fvu"]
    assert res.after["l0"] == res.before["l0"]  # the encoder is frozen: the same features fire
    assert torch.equal(res.cc.W_enc_LDF, cc.W_enc_LDF) and torch.equal(res.cc.b_enc_F, cc.b_enc_F)
    assert torch.equal(cc.W_dec_FLD, _planted()[0].W_dec_FLD)  # the input crosscoder is unchanged
    assert res.cc.lineage[-1]["stage"] == f"refit_{what}"
    if what == "scale":  # directions kept: each decoder row is a positive multiple of the old one, here 1 / 0.7
        ratio = (res.cc.W_dec_FLD.norm(dim=(1, 2)) / cc.W_dec_FLD.norm(dim=(1, 2))).detach().numpy()
        np.testing.assert_allclose(ratio, 1 / 0.7, rtol=0.02)
        cos = torch.nn.functional.cosine_similarity(res.cc.W_dec_FLD.flatten(1), cc.W_dec_FLD.flatten(1))
        assert torch.all(cos > 0.9999)


def test_decoder_refit_is_least_squares():
    """Against numpy's least squares on the same codes: the decoder that minimises the summed squared error."""
    cc, batches = _planted(noise=0.1, seed=3)
    res = refit(cc, batches, "decoder", ridge=0.0)
    with torch.no_grad():
        x = cc.normalise(torch.cat(batches))
        f = cc.encode(x, normalised=True).double().numpy()
        y = (cc.targets(x) - cc.b_dec_LD).reshape(len(f), -1).double().numpy()
    W, *_ = np.linalg.lstsq(f, y, rcond=None)
    np.testing.assert_allclose(res.cc.W_dec_FLD.detach().reshape(len(W), -1).numpy(), W, rtol=1e-4, atol=1e-5)


def test_features_that_never_fire_keep_their_rows_and_bad_input_is_one_line():
    cc, batches = _planted()
    with torch.no_grad():
        cc.b_enc_F[0] = -100.0  # feature 0 never fires
    res = refit(cc, batches, "decoder")
    assert torch.equal(res.cc.W_dec_FLD[0], cc.W_dec_FLD[0]) and not torch.equal(res.cc.W_dec_FLD[1], cc.W_dec_FLD[1])
    with pytest.raises(FeatgraphError, match="decoder or scale"):
        refit(cc, batches, "encoder")
    with pytest.raises(FeatgraphError, match="re-iterable"):
        refit(cc, iter(batches), "decoder")
    with pytest.raises(FeatgraphError, match="no activation batches"):
        reconstruction_stats(cc, [])


def test_cli_refit_writes_a_new_crosscoder_with_metrics_before_and_after(tmp_path, capsys, tiny_embedded):
    import json

    from crosscoder.io import load_crosscoder
    from featgraph.cli import main

    src = tmp_path / "S"
    assert main(["crosscoder", "train", "--size", "tiny", "--n-features", "32", "--steps", "30", "--batch-size", "128",
                 "--eval-rows", "4", "--no-splice", "--out", str(src), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "R"
    assert main(["crosscoder", "refit", str(src), "--what", "scale", "--rows", "16", "--eval-rows", "4", "--no-splice",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "before the refit" in printed and "after the scale refit (encoder frozen)" in printed
    old, new = load_crosscoder(src), load_crosscoder(out)
    assert torch.equal(old.W_enc_LDF, new.W_enc_LDF) and not torch.equal(old.W_dec_FLD, new.W_dec_FLD)
    assert new.lineage[-1]["stage"] == "refit_scale"
    extra = json.loads((out / "cfg.json").read_text())["extra"]
    assert extra["refit"]["what"] == "scale" and extra["refit"]["before"]["l0"] == extra["refit"]["after"]["l0"]
    assert extra["refit"]["after"]["fvu_pooled"] <= 1.05 * extra["refit"]["before"]["fvu_pooled"]  # fitted on other rows: no worse held out
    assert "model" in extra or "run" in extra  # what it was trained on is still recorded, so later commands find it
