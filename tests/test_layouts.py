"""Causal layouts (weakly causal, strictly causal, cross-layer transcoder): exact masks, no leakage, training, resume,
save/load, DDP, the all-at-once splice-in and the CLI."""

import json
import textwrap

import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig, check_crosscoder_section
from crosscoder.errors import FeatgraphError
from crosscoder.io import load_crosscoder, save_crosscoder
from crosscoder.layouts import feature_layers, layout_masks
from crosscoder.train import train_crosscoder

from conftest import one_process_and_two_ranks

D, F = 8, 12
READS, WRITES = ["r0", "r1", "r2"], ["m0", "m1", "m2"]
LAYOUTS = ["weakly_causal", "strictly_causal", "clt"]
ARCHS = ["relu", "batchtopk", "jumprelu"]
OPTIONS = {"relu": {}, "batchtopk": {"k": 3, "aux_k": 4}, "jumprelu": {"init_threshold": 0.05}}


def make_cfg(layout, arch, seed=0):
    out = WRITES if layout == "clt" else None
    return CrosscoderConfig(READS, D, F, architecture=arch, options=OPTIONS[arch], layout=layout, out_hookpoints=out, seed=seed,
                            dead_after_tokens=64)


class Source:
    """Seeded random batches (B, L, D) with a checkpointable position, so a resumed run sees the same batches."""

    def __init__(self, n_slots, batch=32, seed=0):
        self.n_slots, self.batch, self.seed, self.i = n_slots, batch, seed, 0

    def next_batch(self):
        gen = torch.Generator().manual_seed(self.seed * 10_000 + self.i)
        self.i += 1
        codes = torch.rand(self.batch, 6, generator=gen) * (torch.rand(self.batch, 6, generator=gen) < 0.4)
        dirs = torch.randn(6, self.n_slots, D, generator=torch.Generator().manual_seed(99))
        return torch.einsum("bk,kld->bld", codes, dirs) + 0.1 * torch.randn(self.batch, self.n_slots, D, generator=gen)

    def state_dict(self):
        return {"i": torch.tensor(self.i)}

    def load_state_dict(self, state):
        self.i = int(state["i"])


def train(cc, steps=12, **kw):
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-2, l1_coeff=0.5, log_every=4, **kw)
    return train_crosscoder(cc, Source(len(cc.cfg.all_hookpoints)), cfg, progress=False)


def assert_masked_zero(cc):
    m = layout_masks(cc.cfg)
    assert (cc.W_enc_LDF.detach().permute(0, 2, 1)[~m.read_LF] == 0).all()
    assert (cc.W_dec_FLD.detach()[~m.write_FL] == 0).all()
    # ...and the allowed entries are in use
    assert (cc.W_enc_LDF.detach().permute(0, 2, 1)[m.read_LF].norm(dim=-1) > 0).all()
    assert (cc.W_dec_FLD.detach()[m.write_FL].norm(dim=-1) > 0).all()


# ---- the layouts themselves --------------------------------------------------------------------------------------

def test_masks_by_hand():
    """Three layers, F = 6: equal contiguous blocks; the read and write sets as the layouts define them."""
    assert feature_layers("weakly_causal", 3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert feature_layers("strictly_causal", 3, 6).tolist() == [0, 0, 0, 1, 1, 1]  # the last layer owns none
    weak = layout_masks(CrosscoderConfig(READS, D, 6, layout="weakly_causal"))
    assert weak.read_LF.int().tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]
    assert weak.write_FL.int().tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1]]
    strict = layout_masks(CrosscoderConfig(READS, D, 6, layout="strictly_causal"))
    assert strict.read_LF.int().tolist() == [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]]
    assert strict.write_FL.int().tolist() == [[0, 1, 1]] * 3 + [[0, 0, 1]] * 3
    clt = layout_masks(CrosscoderConfig(READS, D, 6, layout="clt", out_hookpoints=WRITES))
    assert clt.write_FL.int().tolist() == weak.write_FL.int().tolist() and torch.equal(clt.read_LF, weak.read_LF)
    assert layout_masks(CrosscoderConfig(READS, D, 6)) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "strictly_causal", "n_features": 5}, "divisible by 2"),
    ({"layout": "weakly_causal", "n_features": 4}, "divisible by 3"),
    ({"layout": "clt"}, "layout clt needs out_hookpoints"),
    ({"layout": "clt", "out_hookpoints": ["m0", "m1"]}, "3 read, 2 written"),
    ({"layout": "weakly_causal", "out_hookpoints": WRITES}, "drop out_hookpoints"),
    ({"layout": "nope"}, "unknown layout 'nope'"),
    ({"layout": "weakly_causal", "models": ["a", "b"]}, "drop models"),
    ({"architecture": "clt", "layout": "weakly_causal"}, "sets layout clt but layout is weakly_causal"),
    ({"architecture": "matryoshka_relu", "layout": "weakly_causal"}, "does not combine with matryoshka_relu"),
])
def test_config_errors_are_one_line(kwargs, message):
    kwargs = {"n_features": 6, **kwargs}
    with pytest.raises(FeatgraphError, match=message) as e:
        CrosscoderConfig(READS, D, kwargs.pop("n_features"), **kwargs)
    assert "\n" not in str(e.value)
    with pytest.raises(FeatgraphError, match="needs at least two hookpoints"):
        CrosscoderConfig(["r0"], D, 6, layout="strictly_causal")


def test_architecture_shorthands():
    """--architecture clt|weakly_causal|strictly_causal: batchtopk with that layout; --layout with another sparsity."""
    cfg = CrosscoderConfig.from_flat(READS, D, 6, architecture="clt", out_hookpoints=WRITES, k=2)
    assert (cfg.architecture, cfg.layout, cfg.options["k"]) == ("batchtopk", "clt", 2)
    assert CrosscoderConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["layout"] == "clt"
    assert CrosscoderConfig(READS, D, 6, architecture="strictly_causal", options={"k": 2}).layout == "strictly_causal"
    relu = CrosscoderConfig(READS, D, 6, architecture="relu", layout="clt", out_hookpoints=WRITES)
    assert (relu.architecture, relu.layout) == ("relu", "clt")
    check_crosscoder_section({"architecture": "clt", "k": 16})  # checked before the model's hookpoints are known
    with pytest.raises(FeatgraphError, match="unknown layout"):
        check_crosscoder_section({"layout": "causal"})
    with pytest.raises(FeatgraphError, match="k must lie in 1..n_features"):
        check_crosscoder_section({"architecture": "weakly_causal", "k": 64, "n_features": 32})


# ---- exactness: training, no leakage, decoding -------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_keeps_masks_exact_and_nothing_leaks(layout, arch):
    cc = build_crosscoder(make_cfg(layout, arch))
    assert_masked_zero(cc)
    kw = {"sparse_kernels": "on"} if arch == "batchtopk" else {"decoder_orthogonality": 0.1}  # sparse gradients; the penalty's
    res = train(cc, steps=16, grad_clip=0.05, **kw)  # a clip that bites
    assert res.final_mse == res.final_mse
    assert_masked_zero(cc)
    cc.eval()
    if arch == "batchtopk":
        assert float(cc.threshold) >= 0  # eval mode encodes token by token (the batch top-k couples all features)
    layer_F = cc.layout_layer_F
    L_all = len(cc.cfg.all_hookpoints)
    gen = torch.Generator().manual_seed(1)
    x = Source(L_all, batch=64, seed=3).next_batch()
    with torch.no_grad():
        f = cc.encode(x)
        for j in range(1, 3):  # perturb read hookpoint j: features of layers < j do not move, bit for bit
            x2 = x.clone()
            x2[:, j] += 3 * torch.randn(x.shape[0], D, generator=gen)
            f2 = cc.encode(x2)
            assert torch.equal(f[:, layer_F < j], f2[:, layer_F < j])
            if (layer_F == j).any():  # the perturbation does reach layer j (strictly causal: layer 2 owns none)
                assert not torch.equal(f[:, layer_F == j], f2[:, layer_F == j])
        if layout == "clt":  # the written MLP outputs are not read at all
            x3 = x.clone()
            x3[:, 3:] += 3 * torch.randn(x.shape[0], 3, D, generator=gen)
            assert torch.equal(cc.encode(x3), f)
        # each feature's reconstruction is exactly zero where it does not write
        x_hat_FLD = cc.decode(torch.eye(F), normalised=True) - cc.b_dec_LD
        assert (x_hat_FLD[~cc.layout_write_FL] == 0).all()
        assert (x_hat_FLD[cc.layout_write_FL].norm(dim=-1) > 0).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_save_load_round_trip(tmp_path, layout):
    cc = build_crosscoder(make_cfg(layout, "jumprelu"))
    train(cc, steps=6)
    save_crosscoder(cc, tmp_path / "cc")
    assert json.loads((tmp_path / "cc" / "cfg.json").read_text())["config"]["layout"] == layout
    back = load_crosscoder(tmp_path / "cc")
    assert back.cfg == cc.cfg and back.cfg.layout == layout
    a, b = cc.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "layout_read_LF" not in a  # derived from cfg, not saved
    # load_state_dict re-zeroes whatever a state holds in masked places
    bad = {k: v.clone() for k, v in a.items()}
    bad["W_dec_FLD"].fill_(1.0)
    back.load_state_dict(bad)
    assert (back.W_dec_FLD.detach()[~back.layout_write_FL] == 0).all() and (back.W_dec_FLD.detach()[back.layout_write_FL] == 1).all()


class Stop(Exception):
    pass


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_is_bit_identical(tmp_path, arch):
    """A CLT run stopped after step 6 and resumed from its step-4 checkpoint ends equal to an uninterrupted one."""
    cfg = TrainConfig(steps=12, batch_size=32, lr=1e-2, l1_coeff=0.5, log_every=4)

    def run(ckpt, stop_at=None):
        cc = build_crosscoder(make_cfg("clt", arch, seed=2))

        def on_step(step):
            if step == stop_at:
                raise Stop

        try:
            train_crosscoder(cc, Source(6, seed=4), cfg, progress=False, checkpoint_dir=ckpt, checkpoint_every=4, resume=True,
                             on_step=on_step)
        except Stop:
            return None
        return cc

    clean = run(tmp_path / "a")
    assert run(tmp_path / "b", stop_at=5) is None
    resumed = run(tmp_path / "b")
    a, b = clean.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert_masked_zero(resumed)


def test_refit_keeps_the_layout():
    """The decoder re-fit solves each written hookpoint over the features that write it: zeros stay zeros, and the fit
    is no worse than the trained decoder there."""
    from crosscoder.refit import refit

    cc = build_crosscoder(make_cfg("clt", "relu"))
    train(cc, steps=20)
    batches = [Source(6, batch=64, seed=s).next_batch() for s in (7, 8)]
    res = refit(cc, batches)
    assert_masked_zero(res.cc)
    assert res.after["fvu"] <= res.before["fvu"] + 1e-6


def test_combining_causal_layouts_is_refused():
    from crosscoder.residual import combine_crosscoders

    parts = [build_crosscoder(make_cfg("weakly_causal", "relu", seed=s)).eval() for s in (0, 1)]
    with pytest.raises(FeatgraphError, match="has layout weakly_causal; combining and residual rounds take acausal"):
        combine_crosscoders(parts)


# ---- data parallel -------------------------------------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, warnings
    warnings.simplefilter("ignore")
    import torch
    import torch.distributed as dist
    from crosscoder.build import build_crosscoder
    from crosscoder.config import CrosscoderConfig, TrainConfig
    from crosscoder.io import save_crosscoder
    from crosscoder.train import train_crosscoder

    out = sys.argv[1]
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    gen = torch.Generator().manual_seed(5)

    def global_batch():
        x = torch.randn(64, 6, 8, generator=gen)
        share = 64 // world
        return x[rank * share : (rank + 1) * share]

    cfg = CrosscoderConfig(["r0", "r1", "r2"], 8, 12, out_hookpoints=["m0", "m1", "m2"], layout="clt", seed=1)
    cc = build_crosscoder(cfg)
    train_crosscoder(cc, global_batch, TrainConfig(steps=10, batch_size=64 // world, lr=3e-3, l1_coeff=0.1), progress=False)
    if rank == 0:
        save_crosscoder(cc, out)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
        sys.stderr.flush()
        os._exit(0)
    """
)


def test_two_gloo_processes_match_one_and_keep_the_masks(tmp_path):

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    a, b = one_process_and_two_ranks(script, [], tmp_path / "one", tmp_path / "two")
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k
    write_FL = layout_masks(make_cfg("clt", "relu")).write_FL
    assert (b["W_dec_FLD"][~write_FL] == 0).all() and (b["W_enc_LDF"].permute(0, 2, 1)[~layout_masks(make_cfg("clt", "relu")).read_LF] == 0).all()


# ---- evaluation and CLI on the tiny embedded model ------------------------------------------------------------------

TINY_READS = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
TINY_WRITES = ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]


def test_clt_evaluation_replaces_every_mlp_at_once(tiny_embedded):
    from crosscoder.harvest import ActivationBuffer, estimate_norm_scales
    from crosscoder.metrics import evaluate

    model, rows = tiny_embedded.model, tiny_embedded.tokens_train_NT[:40]
    cfg = CrosscoderConfig(TINY_READS, model.cfg.d_model, 64, out_hookpoints=TINY_WRITES, architecture="clt", options={"k": 8})
    cc = build_crosscoder(cfg)
    cc.norm_scale_L.copy_(estimate_norm_scales(model, rows, cfg.all_hookpoints))
    buf = ActivationBuffer(model, rows, cfg.all_hookpoints, cc.norm_scale_L, batch_size=64, n_buffer_tokens=512, seed=1)
    train_crosscoder(cc, buf, TrainConfig(steps=30, batch_size=64, lr=3e-3), progress=False)
    val = tiny_embedded.tokens_val_NT[:4]
    m = evaluate(cc, model, val, batch_size=4)
    assert m.hookpoints == TINY_WRITES and len(m.fvu_per_hookpoint) == 2
    assert all(v == v and abs(v) < float("inf") for v in m.fvu_per_hookpoint + m.ce_loss_recovered)
    for v in (m.ce_spliced_all, m.ce_zero_ablated_all, m.ce_loss_recovered_all):
        assert v is not None and v == v and abs(v) < float("inf")
    # by hand: both MLP outputs replaced (then both zeroed) in one forward pass, BOS and special tokens left as they are
    from crosscoder.harvest import harvest
    from crosscoder.metrics import _scored_positions, _special_token_ids, _token_ce

    with torch.no_grad():
        acts = next(harvest(model, val, cfg.all_hookpoints, batch_size=4, device="cpu"))
        x_hat = cc.decode(cc.encode(acts)).view(4, val.shape[1] - 1, 2, -1)
        keep = _scored_positions(val, "saelens", _special_token_ids(model, None))

        def put(l):
            def hook(act, hook=None):
                act = act.clone()
                act[:, 1:] = torch.where(keep[:, 1:, None], x_hat[:, :, l], act[:, 1:])
                return act
            return hook

        mask = keep[:, :-1]
        spliced = _token_ce(model.run_with_hooks(val, fwd_hooks=[(h, put(i)) for i, h in enumerate(TINY_WRITES)]).float().log_softmax(-1), val)
        zeroed = _token_ce(model.run_with_hooks(val, fwd_hooks=[(h, lambda a, hook=None: torch.zeros_like(a)) for h in TINY_WRITES])
                           .float().log_softmax(-1), val)
        clean = _token_ce(model(val).float().log_softmax(-1), val)
    s, z, c = (t[mask].double().mean().item() for t in (spliced, zeroed, clean))
    assert m.ce_spliced_all == pytest.approx(s, rel=1e-5) and m.ce_zero_ablated_all == pytest.approx(z, rel=1e-5)
    assert m.ce_loss_recovered_all == pytest.approx((z - s) / (z - c), rel=1e-4)
    # one written hookpoint: nothing extra
    single = build_crosscoder(CrosscoderConfig(TINY_WRITES[:1], model.cfg.d_model, 16))
    one = evaluate(single, model, val[:2], batch_size=2)
    assert (one.ce_spliced_all, one.ce_zero_ablated_all, one.ce_loss_recovered_all) == (None, None, None)


def test_cli_trains_a_clt(tmp_path, tiny_embedded):
    from featgraph.cli import main

    out = tmp_path / "clt"
    assert main(["crosscoder", "train", "--size", "tiny", "--architecture", "clt", "--k", "4", "--hookpoints", ",".join(TINY_READS),
                 "--out-hookpoints", ",".join(TINY_WRITES), "--n-features", "16", "--steps", "5", "--batch-size", "64",
                 "--buffer-tokens", "256", "--eval-rows", "2", "--no-splice", "--out", str(out), "--quiet"]) == 0
    cfg = json.loads((out / "cfg.json").read_text())["config"]
    assert (cfg["layout"], cfg["architecture"], cfg["options"]["k"]) == ("clt", "batchtopk", 4)
    assert_masked_zero(load_crosscoder(out))
    relu = tmp_path / "relu"
    assert main(["crosscoder", "train", "--size", "tiny", "--layout", "weakly_causal", "--architecture", "relu", "--n-features", "18",
                 "--steps", "5", "--batch-size", "64", "--buffer-tokens", "256", "--eval-rows", "2", "--no-splice", "--out", str(relu),
                 "--quiet"]) == 0
    back = load_crosscoder(relu)
    assert (back.cfg.layout, back.cfg.architecture) == ("weakly_causal", "relu")
