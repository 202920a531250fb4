"""Every architecture behind one contract: shapes, save/load, training; plus each one's own mechanics."""

import pytest
import torch

from crosscoder.build import ARCHITECTURES, build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.io import load_crosscoder, save_crosscoder
from crosscoder.jumprelu import jumprelu
from crosscoder.train import finetune_crosscoder, train_crosscoder

from conftest import planted_batches


def cfg(arch, F=24, **kw):
    """BatchTopK's k and aux_k as flat keywords: the other architectures ignore them."""
    return CrosscoderConfig.from_flat(["h0", "h1"], d_model=8, n_features=F, architecture=arch, k=4, aux_k=8, dead_after_tokens=256, **kw)





@pytest.mark.parametrize("arch", ARCHITECTURES.names())
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
    save_crosscoder(cc, tmp_path / arch)
    back = load_crosscoder(tmp_path / arch)
    assert type(back) is type(cc) and back.cfg == cc.cfg and type(cc).name == arch
    assert cc.training and not back.training  # built in training mode, loaded in eval mode
    cc.eval()
    assert torch.equal(cc(x), back(x))


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
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


def test_jumprelu_threshold_gradient_both_conventions_by_hand():
    """Two tokens, two features, ε = 0.5, upstream gradient g; the window |pre − t| < ε/2 = 0.25 holds for every
    (token, feature) but (1, 1): |1.1 − 0.8| = 0.3."""
    t = torch.tensor([0.2, 0.8])
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    grads = {}
    for rule in ("anthropic", "jumping_ahead"):
        pre = torch.tensor([[0.3, 1.0], [0.05, 1.1]], requires_grad=True)
        log_t = t.log().requires_grad_(True)
        f = jumprelu(pre, log_t, 0.5, rule)
        torch.testing.assert_close(f, torch.tensor([[0.3, 1.0], [0.0, 1.1]]))
        (f * g).sum().backward()
        torch.testing.assert_close(pre.grad, torch.tensor([[1.0, 2.0], [0.0, 4.0]]))  # g · H(pre − t), no STE
        grads[rule] = log_t.grad
    # anthropic: ∂f/∂θ = −(t/ε)·1[…]: θ_0: −(0.2/0.5)·(1 + 3) = −1.6, θ_1: −(0.8/0.5)·2 = −3.2
    torch.testing.assert_close(grads["anthropic"], torch.tensor([-1.6, -3.2]))
    # jumping_ahead: ∂f/∂t = −(t/ε)·1[…], times t for θ = log t: −0.2·1.6 = −0.32, −0.8·3.2 = −2.56
    torch.testing.assert_close(grads["jumping_ahead"], torch.tensor([-0.32, -2.56]))


def test_jumprelu_crosscoder_uses_its_threshold_grad_option():
    x = torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(0))
    grads = {}
    for rule in ("anthropic", "jumping_ahead"):
        cc = build_crosscoder(cfg("jumprelu", jumprelu_bandwidth=0.5, threshold_grad=rule))
        assert cc.opts.threshold_grad == rule
        cc.encode(x).sum().backward()
        grads[rule] = cc.log_threshold_F.grad
    assert grads["anthropic"].abs().sum() > 0
    torch.testing.assert_close(grads["jumping_ahead"], grads["anthropic"] * 0.1)  # t = init_threshold = 0.1


def test_relu_l2_of_norms_penalty():
    cc = build_crosscoder(cfg("relu", sparsity_norm="l2_of_norms"))
    with torch.no_grad():
        cc.W_dec_FLD.zero_()
        cc.W_dec_FLD[0, 0, 0], cc.W_dec_FLD[0, 1, 0] = 3.0, 4.0
    assert cc.penalty_weights()[0].item() == pytest.approx(5.0)  # ‖(3, 4)‖, not 3 + 4
    l1 = build_crosscoder(cfg("relu"))
    l1.load_state_dict(cc.state_dict())
    assert l1.penalty_weights()[0].item() == pytest.approx(7.0)


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_bf16_autocast_keeps_fp32_master_weights(arch):
    """The CUDA mixed-precision path, exercised on the CPU: bf16 compute, fp32 weights and optimiser state."""
    cc = build_crosscoder(cfg(arch, seed=1))
    res = train_crosscoder(cc, planted_batches(), TrainConfig(steps=200, batch_size=128, lr=3e-3, l1_coeff=0.05, log_every=50, autocast="bf16"), progress=False)
    assert all(p.dtype == torch.float32 for p in cc.parameters())
    assert res.history[-1]["mse"] < 0.5 * res.history[0]["mse"], res.history


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_cuda_training_matches_cpu_closely(arch):
    cc_cpu, cc_gpu = build_crosscoder(cfg(arch, seed=1)), build_crosscoder(cfg(arch, seed=1)).cuda()
    tc = TrainConfig(steps=50, batch_size=128, lr=3e-3, l1_coeff=0.05, autocast="off")
    train_crosscoder(cc_cpu, planted_batches(), tc, progress=False)
    b = planted_batches()
    train_crosscoder(cc_gpu, lambda: b().cuda(), tc, progress=False)
    torch.testing.assert_close(cc_gpu.W_dec_FLD.cpu(), cc_cpu.W_dec_FLD, rtol=1e-3, atol=1e-4)


def _trained_batchtopk(tmp_path):
    cc = build_crosscoder(cfg("batchtopk", seed=1))
    train_crosscoder(cc, planted_batches(), TrainConfig(steps=60, batch_size=128, lr=3e-3), progress=False)
    assert cc.threshold.item() > 0
    save_crosscoder(cc, tmp_path / "btk")
    return load_crosscoder(tmp_path / "btk")


def test_loaded_batchtopk_encodes_each_token_on_its_own(tmp_path):
    """A loaded crosscoder is in eval mode: BatchTopK applies its learned threshold, so a token's features are the
    same alone and in any batch. In training mode (the batch top-k) they depend on the batch-mates."""
    back = _trained_batchtopk(tmp_path)
    assert not back.training
    x, other = planted_batches(seed=9)(), 3 * planted_batches(seed=10)()  # louder batch-mates
    with torch.no_grad():
        alone = torch.cat([back.encode(x[i : i + 1]) for i in range(16)])
        for batch in (x, torch.cat([x[:16], other]), torch.cat([x[:16], other[:3]])):
            within = back.encode(batch)[:16]
            assert torch.equal(alone > 0, within > 0)
            torch.testing.assert_close(within, alone, rtol=1e-6, atol=1e-6)  # equal up to matmul rounding
        assert (alone > 0).any()
        back.train()
        alone_t = torch.cat([back.encode(x[i : i + 1]) for i in range(16)])
        assert not torch.equal(alone_t > 0, back.encode(x)[:16] > 0)
        assert not torch.equal(back.encode(x)[:16] > 0, back.encode(torch.cat([x[:16], other]))[:16] > 0)


def test_finetune_of_a_loaded_batchtopk_trains_in_training_mode(tmp_path):
    """Fine-tuning starts from an eval-mode crosscoder; it must train with the batch top-k (mean L0 exactly k,
    θ updated) and hand it back in eval mode."""
    theta = _trained_batchtopk(tmp_path).threshold.item()
    cc, res = finetune_crosscoder(tmp_path / "btk", planted_batches(seed=3), TrainConfig(steps=5, batch_size=128, lr=1e-3, log_every=1),
                                  stage="D", progress=False)
    assert [h["l0"] for h in res.history] == [4.0] * 5  # the batch top-k keeps exactly k·B
    assert cc.threshold.item() != theta and not cc.training
