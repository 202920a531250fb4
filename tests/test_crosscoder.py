"""Crosscoder core: shapes, the loss on a hand-computed case, schedules, save/load, FVU, training."""

import json

import numpy as np
import pytest
import torch

from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.build import build_crosscoder
from crosscoder.relu import ReLUCrosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.io import load_crosscoder, save_crosscoder
from crosscoder.metrics import reconstruction_metrics
from crosscoder.train import train_crosscoder


def make(L=3, D=8, F=16, seed=0):
    return ReLUCrosscoder(CrosscoderConfig([f"blocks.{i}.hook_resid_post" for i in range(L)], D, F, seed=seed))


def test_shapes():
    cc = make()
    x = torch.randn(5, 3, 8)
    f = cc.encode(x)
    assert f.shape == (5, 16) and (f >= 0).all()
    assert cc.decode(f).shape == (5, 3, 8)
    assert cc.decoder_norms().shape == (16, 3)
    assert torch.allclose(cc.decoder_norms(), torch.full((16, 3), 0.08), atol=1e-6)
    assert torch.equal(cc.W_enc_LDF, cc.W_dec_FLD.permute(1, 2, 0))


def test_loss_hand_computed():
    """L=2, D=2, F=2 with weights chosen so every term can be done by hand."""
    cc = ReLUCrosscoder(CrosscoderConfig(["a", "b"], d_model=2, n_features=2))
    with torch.no_grad():
        cc.W_enc_LDF.zero_()
        cc.W_enc_LDF[0, 0, 0] = 1.0   # feature 0 reads a[0]
        cc.W_enc_LDF[1, 1, 1] = 2.0   # feature 1 reads 2·b[1]
        cc.b_enc_F.copy_(torch.tensor([0.0, -1.0]))
        cc.W_dec_FLD.zero_()
        cc.W_dec_FLD[0, 0] = torch.tensor([3.0, 4.0])  # ‖·‖ = 5
        cc.W_dec_FLD[1, 1] = torch.tensor([0.0, 2.0])  # ‖·‖ = 2
        cc.b_dec_LD.zero_()
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # a = (1, 0), b = (0, 1)
    # f0 = relu(1) = 1; f1 = relu(2 - 1) = 1
    # â_a = (3, 4), â_b = (0, 2) → ‖a − â_a‖² = 4 + 16 = 20, ‖b − â_b‖² = 1 → mse 21
    # sparsity = f0·(5 + 0) + f1·(0 + 2) = 7 → loss at λ = 0.5: 21 + 3.5
    out = cc.loss(x, sparsity_coeff=0.5)
    assert out.f_BF.tolist() == [[1.0, 1.0]]
    assert out.mse.item() == pytest.approx(21.0)
    assert out.sparsity.item() == pytest.approx(7.0)
    assert out.loss.item() == pytest.approx(24.5)
    assert out.l0.item() == 2.0


def test_normalisation_applies_to_raw_activations():
    cc = make()
    cc.norm_scale_L.copy_(torch.tensor([2.0, 0.5, 1.0]))
    x = torch.randn(4, 3, 8)
    assert torch.allclose(cc.encode(x), cc.encode(cc.normalise(x), normalised=True))
    f = cc.encode(x)
    assert torch.allclose(cc.normalise(cc.decode(f)), cc.decode(f, normalised=True), atol=1e-6)


def test_schedules():
    cfg = TrainConfig(steps=100, l1_coeff=2.0, l1_warmup_frac=0.1, lr=1.0, lr_decay_frac=0.2)
    assert cfg.l1_at(0) == pytest.approx(0.2) and cfg.l1_at(9) == pytest.approx(2.0) and cfg.l1_at(50) == 2.0
    assert cfg.lr_at(0) == 1.0 and cfg.lr_at(79) == 1.0
    assert cfg.lr_at(80) == pytest.approx(1.0) and cfg.lr_at(99) == pytest.approx(0.05)
    with pytest.raises(FeatgraphError):
        TrainConfig(lr_decay_frac=1.5)


def test_save_load_round_trip(tmp_path):
    cc = make(seed=3)
    with torch.no_grad():
        cc.b_enc_F.normal_()
        cc.norm_scale_L.copy_(torch.tensor([0.5, 1.5, 2.5]))
    save_crosscoder(cc, tmp_path / "cc", extra={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == [".featgraph", "cfg.json", "crosscoder.safetensors"]  # .featgraph: a rerun may replace it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    back = load_crosscoder(tmp_path / "cc")
    assert back.cfg == cc.cfg
    for k, v in cc.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    x = torch.randn(6, 3, 8)
    assert torch.equal(cc(x), back(x))
    assert json.loads((tmp_path / "cc" / "cfg.json").read_text())["extra"] == {"note": "x"}


def test_load_rejects_truncated_and_mismatched(tmp_path):
    cc = make()
    save_crosscoder(cc, tmp_path / "cc")
    w = tmp_path / "cc" / "crosscoder.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(FeatgraphError, match="truncated or corrupt"):
        load_crosscoder(tmp_path / "cc")
    save_crosscoder(cc, tmp_path / "cc")
    meta = json.loads((tmp_path / "cc" / "cfg.json").read_text())
    meta["config"]["n_features"] = 32
    (tmp_path / "cc" / "cfg.json").write_text(json.dumps(meta))
    with pytest.raises(FeatgraphError, match="do not match cfg.json"):
        load_crosscoder(tmp_path / "cc")
    with pytest.raises(FeatgraphError, match="not a crosscoder folder"):
        load_crosscoder(tmp_path)


def test_fvu_against_numpy():
    torch.manual_seed(0)
    cc = make()
    cc.norm_scale_L.copy_(torch.tensor([1.0, 2.0, 0.5]))
    batches = [torch.randn(50, 3, 8) * torch.tensor([1.0, 3.0, 0.2])[:, None] + 1.0 for _ in range(3)]
    m = reconstruction_metrics(cc, batches)
    x = np.concatenate([cc.normalise(b).numpy() for b in batches]).astype(np.float64)
    with torch.no_grad():
        xh = np.concatenate([cc.decode(cc.encode(b), normalised=True).numpy() for b in batches]).astype(np.float64)
    num = ((x - xh) ** 2).sum(axis=(0, 2))
    den = ((x - x.mean(axis=0, keepdims=True)) ** 2).sum(axis=(0, 2))
    np.testing.assert_allclose(m.fvu_per_hookpoint, num / den, rtol=1e-6)
    assert m.fvu_pooled == pytest.approx(num.sum() / den.sum(), rel=1e-6)
    assert m.fvu_unweighted_mean == pytest.approx((num / den).mean(), rel=1e-6)
    with torch.no_grad():
        f = torch.cat([cc.encode(b) for b in batches])
    assert m.l0 == pytest.approx((f > 0).float().sum(1).mean().item())
    assert m.dead_fraction == pytest.approx(1 - (f > 0).any(0).float().mean().item())


def test_training_reduces_loss_and_is_seeded():
    """Planted sparse structure: training must lower the MSE a lot, and two runs with one seed agree exactly."""
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(12, 3, 8, generator=gen)

    def run():
        cc = make(F=24, seed=1)
        g = torch.Generator().manual_seed(5)

        def batch():
            codes = torch.rand(128, 12, generator=g) * (torch.rand(128, 12, generator=g) < 0.15)
            return torch.einsum("bf,fld->bld", codes, dirs)

        res = train_crosscoder(cc, batch, TrainConfig(steps=300, batch_size=128, lr=3e-3, l1_coeff=0.05, log_every=50), progress=False)
        return cc, res

    cc, res = run()
    assert res.history[-1]["mse"] < 0.2 * res.history[0]["mse"]
    cc2, _ = run()
    assert torch.equal(cc.W_dec_FLD, cc2.W_dec_FLD)


def test_finetune_records_lineage_and_keeps_scales(tmp_path):
    from crosscoder.train import finetune_crosscoder

    cc = make(F=24, seed=1)
    cc.norm_scale_L.copy_(torch.tensor([0.5, 1.0, 2.0]))
    save_crosscoder(cc, tmp_path / "S")
    g = torch.Generator().manual_seed(0)
    d, res = finetune_crosscoder(tmp_path / "S", lambda: torch.randn(32, 3, 8, generator=g), TrainConfig(steps=20, batch_size=32, lr=1e-3), stage="D", progress=False)
    assert res.steps == 20 and not torch.equal(d.W_dec_FLD, cc.W_dec_FLD)
    assert torch.equal(d.norm_scale_L, cc.norm_scale_L)
    assert [s["stage"] for s in d.lineage] == ["base", "D"] and d.lineage[1]["parent"] == str(tmp_path / "S")
    save_crosscoder(d, tmp_path / "D")
    back = load_crosscoder(tmp_path / "D")
    assert back.lineage == json.loads(json.dumps(d.lineage))
    df, _ = finetune_crosscoder(tmp_path / "D", lambda: torch.randn(32, 3, 8, generator=g), TrainConfig(steps=5, batch_size=32), stage="DF", progress=False)
    assert [s["stage"] for s in df.lineage] == ["base", "D", "DF"]


def test_transcoder_reads_one_hookpoint_and_writes_another():
    """A transcoder is the same code: read 'in', write 'out'; it learns out = A·in when trained on that map."""

    cfg = CrosscoderConfig(["in"], d_model=8, n_features=32, out_hookpoints=["out"], seed=0)
    assert cfg.all_hookpoints == ["in", "out"]
    tc = build_crosscoder(cfg)
    A = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)

    def batch():
        codes = torch.rand(128, 16, generator=g) * (torch.rand(128, 16, generator=g) < 0.2)
        x_in = codes @ torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
        return torch.stack([x_in, torch.relu(x_in @ A)], dim=1)  # (B, 2, D): in, out

    x = batch()
    assert tc.encode(x).shape == (128, 32) and tc(x).shape == (128, 1, 8)
    res = train_crosscoder(tc, batch, TrainConfig(steps=300, batch_size=128, lr=3e-3, l1_coeff=0.01), progress=False)
    m = reconstruction_metrics(tc, [batch() for _ in range(4)])
    assert m.hookpoints == ["out"] and m.fvu_pooled < 0.5, (m.fvu_pooled, res.history[-1])
