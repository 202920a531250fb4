"""The sparse kernels (crosscoder.sparse_ops) against the dense autograd path they replace: forward values and every
gradient, the exact batch top-k, the BatchTopK loss and a few training steps."""

from __future__ import annotations

import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from crosscoder.sparse_ops import SparseCode, batch_topk_select, gather_preactivations, sparse_decode
from crosscoder.train import train_crosscoder


def _random_code(B: int, F: int, per_row: list[int], gen: torch.Generator) -> SparseCode:
    """Duplicate-free entries, ``per_row[b]`` in row b (0 allowed), row-major."""
    rows, feats = [], []
    for b, n in enumerate(per_row):
        rows.append(torch.full((n,), b))
        feats.append(torch.randperm(F, generator=gen)[:n].sort().values)
    row_N, feat_N = torch.cat(rows).long(), torch.cat(feats).long()
    return SparseCode(row_N, feat_N, torch.randn(row_N.numel(), generator=gen, dtype=torch.float64), B, F)


SHAPES = [(1, 5, 3, [2]), (4, 7, 6, [0, 3, 7, 1]), (6, 32, 10, [5, 0, 0, 9, 32, 1])]  # B, F, O (= L·D), entries per row


@pytest.mark.parametrize("B,F,O,per_row", SHAPES)
def test_sparse_decode_matches_dense(B, F, O, per_row):
    gen = torch.Generator().manual_seed(B)
    code = _random_code(B, F, per_row, gen)
    W_FO = torch.randn(F, O, generator=gen, dtype=torch.float64, requires_grad=True)
    val_N = code.val_N.clone().requires_grad_()
    g_BO = torch.randn(B, O, generator=gen, dtype=torch.float64)
    out = sparse_decode(code._replace(val_N=val_N), W_FO)
    grad_val, grad_W = torch.autograd.grad(out, (val_N, W_FO), g_BO)
    val_ref = code.val_N.clone().requires_grad_()
    ref = code._replace(val_N=val_ref).to_dense() @ W_FO
    grad_val_ref, grad_W_ref = torch.autograd.grad(ref, (val_ref, W_FO), g_BO)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad_val, grad_val_ref)
    torch.testing.assert_close(grad_W, grad_W_ref)
    assert (out[torch.tensor(per_row) == 0] == 0).all()  # rows without entries decode to zero
    untouched = torch.ones(F, dtype=torch.bool)
    untouched[code.feat_N] = False
    assert (grad_W[untouched] == 0).all()  # rows of W_dec no entry uses get no gradient


@pytest.mark.parametrize("B,F,I,per_row", SHAPES)
@pytest.mark.parametrize("given", [False, True])
def test_gather_preactivations_matches_dense(B, F, I, per_row, given):
    gen = torch.Generator().manual_seed(F)
    code = _random_code(B, F, per_row, gen)
    x_BI, W_IF, b_F = (torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((B, I), (I, F), (F,)))
    ref_BF = x_BI @ W_IF + b_F
    ref_N = ref_BF[code.row_N, code.feat_N]
    pre_N = gather_preactivations(x_BI, W_IF, b_F, code.row_N, code.feat_N, ref_N.detach() if given else None)
    torch.testing.assert_close(pre_N, ref_N)
    g_N = torch.randn(pre_N.shape, generator=gen, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(pre_N, (x_BI, W_IF, b_F), g_N), torch.autograd.grad(ref_N, (x_BI, W_IF, b_F), g_N)):
        torch.testing.assert_close(got, want)


def _dense_batch_topk(pre_BF, scale_F, n_keep):
    scores = torch.relu(pre_BF) * scale_F
    top = scores.flatten().topk(n_keep)
    flat = top.indices[top.values > 0].sort().values
    return flat // pre_BF.shape[1], flat % pre_BF.shape[1]


@pytest.mark.parametrize("B,F,k,m,shift", [(8, 16, 2, 1, 0.0), (16, 64, 4, 2, 0.0), (16, 64, 4, 8, 0.3), (5, 9, 3, 9, 0.0),
                                           (12, 40, 6, 3, -2.0)])
def test_batch_topk_select_is_the_exact_batch_top_k(B, F, k, m, shift):
    """Small m forces rows whose m-th score beats the threshold (scored again in full); shift -2 leaves fewer positive
    scores than k·B (all of them are kept)."""
    gen = torch.Generator().manual_seed(B * F)
    pre_BF = torch.randn(B, F, generator=gen) * torch.rand(B, 1, generator=gen) * 3 + shift
    scale_F = torch.rand(F, generator=gen) + 0.5
    dead_F = torch.rand(F, generator=gen) < 0.4
    sel = batch_topk_select(lambda rows: pre_BF[rows], B, scale_F, k * B, m, dead_F, aux_k=3)
    row_N, feat_N = _dense_batch_topk(pre_BF, scale_F, k * B)
    assert torch.equal(sel.row_N, row_N) and torch.equal(sel.feat_N, feat_N)
    assert torch.equal(sel.pre_N, pre_BF[row_N, feat_N]) and (sel.pre_N > 0).all()
    assert torch.equal(sel.score_N, (torch.relu(pre_BF) * scale_F)[row_N, feat_N])
    # AuxK: each row's top 3 positive pre-activations among the dead latents
    masked = torch.where(dead_F, torch.relu(pre_BF), torch.zeros_like(pre_BF))
    top = masked.topk(3, dim=1)
    want = {(b, int(f)) for b in range(B) for f, v in zip(top.indices[b], top.values[b]) if v > 0}
    assert set(zip(sel.aux.row_N.tolist(), sel.aux.feat_N.tolist())) == want
    assert torch.equal(sel.aux.val_N, pre_BF[sel.aux.row_N, sel.aux.feat_N])


def _batchtopk(L=2, D=4, F=64, k=4, **kw):
    return build_crosscoder(CrosscoderConfig.from_flat([f"h{i}" for i in range(L)], D, F, architecture="batchtopk", k=k, aux_k=6, **kw))


CONFIGS = [dict(L=1, D=6, F=32, k=3), dict(L=3, D=4, F=64, k=4), dict(L=2, D=4, F=48, k=2, models=["A", "B"], n_shared_latents=5),
           dict(L=1, D=5, F=40, k=3, out_hookpoints=["h1"])]


@pytest.mark.parametrize("kw", CONFIGS, ids=["sae", "L3", "shared-latents", "transcoder"])
def test_batchtopk_sparse_loss_matches_dense(kw):
    torch.manual_seed(0)
    cc = _batchtopk(**kw)
    with torch.no_grad():
        cc.b_enc_F.normal_(0, 0.2)
    cc.tokens_since_fired_F[::3] = 10**9  # a third of the latents dead: AuxK is on
    n_slots = len(cc.cfg.all_hookpoints)
    x = torch.randn(24, n_slots, cc.cfg.d_model) * torch.rand(24, 1, 1) * 2
    runs = {}
    for mode in ("off", "on"):
        cc.sparse_kernels = mode
        cc.zero_grad(set_to_none=True)
        cc.threshold.fill_(-1)
        out = cc.loss(x, 0.0)
        out.loss.backward()
        runs[mode] = out, {n: p.grad.clone() for n, p in cc.named_parameters()}, cc.threshold.clone()
    (dense, g_dense, t_dense), (sparse, g_sparse, t_sparse) = runs["off"], runs["on"]
    assert dense.sparsity > 0 and dense.l0 == kw["k"]
    for name in ("loss", "mse", "sparsity", "l0"):
        torch.testing.assert_close(getattr(sparse, name), getattr(dense, name))
    torch.testing.assert_close(sparse.f_BF, dense.f_BF)
    torch.testing.assert_close(t_sparse, t_dense)
    assert g_sparse.keys() == g_dense.keys()
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], atol=1e-6, rtol=1e-5)


def test_sparse_loss_is_deterministic():
    """Two runs on one batch give bit-identical gradients (every sum in the backward has a fixed order)."""
    cc = _batchtopk(L=2, D=8, F=256, k=4, dead_after_tokens=1)
    cc.tokens_since_fired_F[::2] = 10
    cc.sparse_kernels = "on"
    x = torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(3))
    runs = []
    for _ in range(2):
        cc.zero_grad(set_to_none=True)
        cc.loss(x, 0.0).loss.backward()
        runs.append([p.grad.clone() for p in cc.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_training_with_sparse_kernels_matches_dense():
    """A few Adam steps (AuxK on from the second step: latents die after 32 tokens) give the same parameters."""
    torch.manual_seed(1)
    data = torch.randn(6, 32, 3, 4) * torch.rand(6, 32, 1, 1) * 2
    trained = {}
    for mode in ("off", "on"):
        cc = _batchtopk(L=3, D=4, F=128, k=3, dead_after_tokens=32)
        batches = iter(data)
        train_crosscoder(cc, lambda: next(batches), TrainConfig(steps=6, batch_size=32, lr=3e-3, sparse_kernels=mode), progress=False)
        assert cc.sparse_kernels == "auto"  # restored after the run
        trained[mode] = cc
    dense, sparse = trained["off"], trained["on"]
    assert dense.dead_mask().any()  # AuxK took part
    for (name, p_dense), p_sparse in zip(dense.state_dict().items(), sparse.state_dict().values()):
        torch.testing.assert_close(p_sparse, p_dense, atol=1e-6, rtol=1e-5, msg=name)


def test_auto_choice_and_bad_value():
    big = dict(L=5, D=128, k=32)
    assert _batchtopk(F=256, **big).uses_sparse_kernels(512)  # F = 8·k, 512·256·640 = 2^26.3 multiply-adds, the CPU
    assert not _batchtopk(F=255, **big).uses_sparse_kernels(512)
    assert not _batchtopk(F=256, **big).uses_sparse_kernels(64)  # 2^23.3: too small a batch to pay
    cc = _batchtopk(F=64, k=32)
    cc.sparse_kernels = "on"
    assert cc.uses_sparse_kernels(1)
    with pytest.raises(FeatgraphError, match="sparse_kernels must be auto, on or off"):
        TrainConfig(sparse_kernels="yes")


def test_foreach_adam_keeps_training_identical():
    """train_crosscoder's multi-tensor Adam gives bit for bit what torch's per-tensor Adam gives."""
    cfg = CrosscoderConfig.from_flat(["h0", "h1"], 4, 16, architecture="relu")
    data = torch.randn(3, 8, 2, 4, generator=torch.Generator().manual_seed(0))
    tc = TrainConfig(steps=3, batch_size=8, lr=1e-2, l1_warmup_frac=0.0, lr_decay_frac=0.0)
    ours = build_crosscoder(cfg)
    batches = iter(data)
    train_crosscoder(ours, lambda: next(batches), tc, progress=False)
    ref = build_crosscoder(cfg)
    opt = torch.optim.Adam(ref.parameters(), lr=tc.lr, betas=tc.betas, foreach=False)
    ref.train()
    for x in data:
        opt.zero_grad(set_to_none=True)
        ref.loss(x, tc.l1_coeff).loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), tc.grad_clip)
        opt.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
