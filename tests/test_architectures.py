"""Every architecture behind one contract: shapes, save/load, training; plus each one's own mechanics."""

import math

import pytest
import torch

from crosscoder.build import ARCHITECTURES, build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.crosscoder import Crosscoder
from crosscoder.io import load_crosscoder
from crosscoder.jumprelu import jumprelu
from crosscoder.train import train_crosscoder


def cfg(arch, F=24, **kw):
    return CrosscoderConfig(["h0", "h1"], d_model=8, n_features=F, architecture=arch, k=4, aux_k=8, dead_after_tokens=256, **kw)


def planted_batches(seed=5):
    dirs = torch.randn(12, 2, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)

    def batch():
        codes = torch.rand(128, 12, generator=g) * (torch.rand(128, 12, generator=g) < 0.15)
        return torch.einsum("bf,fld->bld", codes, dirs)

    return batch


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_contract(arch, tmp_path):
    cc = build_crosscoder(cfg(arch))
    x = torch.randn(16, 2, 8)
    f = cc.encode(x)
    assert f.shape == (16, 24) and (f >= 0).all()
    assert cc.decode(f).shape == (16, 2, 8)
    out = cc.loss(cc.normalise(x), 1.0)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert cc.W_enc_LDF.grad is not None and cc.W_dec_FLD.grad is not None
    cc.save(tmp_path / arch)
    back = load_crosscoder(tmp_path / arch)
    assert type(Crosscoder.load(tmp_path / arch)) is type(cc)
    assert type(back) is type(cc) and back.cfg == cc.cfg
    cc.eval(), back.eval()
    assert torch.equal(cc(x), back(x))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_training_learns_planted_structure(arch):
    cc = build_crosscoder(cfg(arch, seed=1))
    res = train_crosscoder(cc, planted_batches(), TrainConfig(steps=300, batch_size=128, lr=3e-3, l1_coeff=0.05, log_every=50), progress=False)
    assert res.history[-1]["mse"] < 0.3 * res.history[0]["mse"], res.history


def test_batchtopk_keeps_k_per_token_on_average_and_learns_threshold():
    cc = build_crosscoder(cfg("batchtopk"))
    x = torch.randn(32, 2, 8)
    pre = cc.pre_activations(x)
    f = cc.batch_topk(pre)
    assert (f > 0).sum().item() == 4 * 32  # exactly k·B (random pre-activations: enough positives)
    scores = torch.relu(pre) * cc.decoder_norms().sum(1)
    kept, dropped = scores[f > 0], scores[(f == 0) & (scores > 0)]
    assert kept.min() >= dropped.max()
    cc.train()
    cc.loss(x, 0.0)
    assert cc.threshold.item() == pytest.approx(kept.min().item(), rel=1e-5)
    cc.threshold.fill_(kept.median().item() + 1e-3)  # away from any score: no float ties at the boundary
    cc.eval()  # inference: a fixed threshold, so a token's features no longer depend on its batch
    single = torch.cat([cc.encode(x[i : i + 1]) for i in range(4)])
    batched = cc.encode(x[:4])
    assert torch.equal(single > 0, batched > 0)  # the same latents fire (values agree up to matmul rounding)
    torch.testing.assert_close(single, batched)


def test_batchtopk_auxk_only_with_dead_latents():
    cc = build_crosscoder(cfg("batchtopk"))
    x = torch.randn(32, 2, 8)
    assert cc.loss(x, 0.0).sparsity.item() == 0.0
    cc.tokens_since_fired_F[:10] = 10**6
    aux = cc.loss(x, 0.0).sparsity
    assert aux.item() > 0
    aux.backward()
    assert cc.W_dec_FLD.grad[:10].abs().sum() > 0 and cc.W_dec_FLD.grad[10:].abs().sum() == 0


def test_jumprelu_forward_and_straight_through_gradient():
    pre = torch.tensor([[0.05, 0.2, 1.0]], requires_grad=True)
    log_t = torch.full((3,), math.log(0.1), requires_grad=True)
    f = jumprelu(pre, log_t, 0.5)
    torch.testing.assert_close(f, torch.tensor([[0.0, 0.2, 1.0]]))
    f.sum().backward()
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0, 1.0]]))
    # window |pre − t| < ε/2 = 0.25 holds for 0.05 and 0.2, not for 1.0; ∂f/∂t = −t/ε there; ∂/∂log t = t·∂/∂t
    want = [-(0.1 / 0.5) * 0.1, -(0.1 / 0.5) * 0.1, 0.0]
    torch.testing.assert_close(log_t.grad, torch.tensor(want))


def test_relu_l2_of_norms_penalty():
    cc = build_crosscoder(cfg("relu", sparsity_norm="l2_of_norms"))
    with torch.no_grad():
        cc.W_dec_FLD.zero_()
        cc.W_dec_FLD[0, 0, 0], cc.W_dec_FLD[0, 1, 0] = 3.0, 4.0
    assert cc.penalty_weights()[0].item() == pytest.approx(5.0)  # ‖(3, 4)‖, not 3 + 4
    l1 = build_crosscoder(cfg("relu"))
    l1.load_state_dict(cc.state_dict())
    assert l1.penalty_weights()[0].item() == pytest.approx(7.0)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_bf16_autocast_keeps_fp32_master_weights(arch):
    """The CUDA mixed-precision path, exercised on the CPU: bf16 compute, fp32 weights and optimiser state."""
    cc = build_crosscoder(cfg(arch, seed=1))
    res = train_crosscoder(cc, planted_batches(), TrainConfig(steps=200, batch_size=128, lr=3e-3, l1_coeff=0.05, log_every=50, autocast="bf16"), progress=False)
    assert all(p.dtype == torch.float32 for p in cc.parameters())
    assert res.history[-1]["mse"] < 0.5 * res.history[0]["mse"], res.history


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_cuda_training_matches_cpu_closely(arch):
    cc_cpu, cc_gpu = build_crosscoder(cfg(arch, seed=1)), build_crosscoder(cfg(arch, seed=1)).cuda()
    tc = TrainConfig(steps=50, batch_size=128, lr=3e-3, l1_coeff=0.05, autocast="off")
    train_crosscoder(cc_cpu, planted_batches(), tc, progress=False)
    b = planted_batches()
    train_crosscoder(cc_gpu, lambda: b().cuda(), tc, progress=False)
    torch.testing.assert_close(cc_gpu.W_dec_FLD.cpu(), cc_cpu.W_dec_FLD, rtol=1e-3, atol=1e-4)
