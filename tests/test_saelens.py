"""SAELens interop: featgraph → SAELens folder → SAELens's own loader, SAELens save_model → featgraph, round trips."""

import json
import math

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

from sae_lens import SAE, TrainingSAE  # noqa: E402
from sae_lens.saes import (  # noqa: E402
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

from crosscoder.batchtopk import BatchTopKCrosscoder  # noqa: E402
from crosscoder.build import ARCHITECTURES, build_crosscoder  # noqa: E402
from crosscoder.config import CrosscoderConfig  # noqa: E402
from crosscoder.errors import FeatgraphError  # noqa: E402
from crosscoder.saelens import load_saelens, save_saelens  # noqa: E402

D, F, HOOK = 16, 48, "blocks.1.hook_resid_post"
ATOL = 1e-5
EXPORTABLE = [name for name, cls in ARCHITECTURES.items() if cls.saelens_architecture]


def raw_acts(seed=0, n=64):
    """Raw activations at a scale unlike the normalised one (norm_scale 0.37 below)."""
    return 3.0 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def randomise_(params, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def featgraph_cc(arch, seed=0):
    """A one-hookpoint crosscoder with random weights and biases, s ≠ 1 and a threshold that splits the latents."""
    cc = build_crosscoder(CrosscoderConfig.from_flat([HOOK], d_model=D, n_features=F, architecture=arch, model_name="tiny", k=4, seed=seed))
    randomise_([cc.W_enc_LDF, cc.b_enc_F, cc.W_dec_FLD, cc.b_dec_LD], seed)
    with torch.no_grad():
        cc.norm_scale_L.fill_(0.37)
        if arch == "jumprelu":
            cc.log_threshold_F.copy_(torch.rand(F, generator=torch.Generator().manual_seed(seed)).mul(0.8).add(0.05).log())
        if isinstance(cc, BatchTopKCrosscoder):
            cc.W_dec_FLD[3] = 0.0  # a latent that can never fire
            scores = cc._scores(cc.pre_activations(raw_acts(1)[:, None]))
            cc.threshold.fill_(float(scores[scores > 0].median()))
    cc.lineage = [{"stage": "base", "parent": None}]
    return cc.eval()


def assert_same_numbers(cc, sae, x):
    """featgraph and SAELens agree on encode, decode and forward on raw activations x (B, D)."""
    f_fg, f_sae = cc.encode(x[:, None]), sae.encode(x)
    assert 0.05 < (f_fg > 0).float().mean() < 0.95  # the activation function matters in this comparison
    torch.testing.assert_close(f_sae, f_fg, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(sae.decode(f_fg), cc.decode(f_fg)[:, 0], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(sae(x), cc(x[:, None])[:, 0], atol=ATOL, rtol=1e-5)


# ---- featgraph → SAELens ------------------------------------------------------------------------------------


def test_builtin_saelens_forms():
    assert {name: ARCHITECTURES.get(name).saelens_architecture for name in ("relu", "jumprelu", "batchtopk")} == {
        "relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


@pytest.mark.parametrize("arch", EXPORTABLE)
def test_export_loads_in_saelens_with_same_numbers(arch, tmp_path):
    cc = featgraph_cc(arch)
    sae = SAE.load_from_disk(save_saelens(cc, tmp_path / arch))
    assert sae.cfg.architecture() == type(cc).saelens_architecture
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.metadata.model_name == "tiny"
    assert_same_numbers(cc, sae, raw_acts())


# ---- SAELens → featgraph ------------------------------------------------------------------------------------


def saelens_sae(cls, cfg_cls, seed=0, **kw):
    """A SAELens SAE with random weights, a nonzero b_dec subtracted from the input, and metadata."""
    sae = cls(cfg_cls(d_in=D, d_sae=F, metadata=SAEMetadata(model_name="tiny", hook_name=HOOK), **kw))
    randomise_([sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec], seed)
    assert sae.cfg.apply_b_dec_to_input and sae.b_dec.abs().sum() > 0
    return sae


@pytest.mark.parametrize("cls, cfg_cls, fg_arch", [(StandardSAE, StandardSAEConfig, "relu"), (JumpReLUSAE, JumpReLUSAEConfig, "jumprelu")])
def test_saelens_save_model_loads_with_same_numbers(cls, cfg_cls, fg_arch, tmp_path):
    sae = saelens_sae(cls, cfg_cls)
    if cls is JumpReLUSAE:
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(F, generator=torch.Generator().manual_seed(3)) * 0.6)
            sae.threshold[:4] = 0.0  # SAELens's initial value: plain ReLU
            sae.threshold[4:8] = -0.2  # below 0: also plain ReLU in SAELens
    sae.save_model(tmp_path / "sae")
    cc = load_saelens(tmp_path / "sae")
    assert cc.cfg.architecture == fg_arch and cc.cfg.hookpoints == [HOOK] and cc.cfg.model_name == "tiny"
    assert (cc.cfg.d_model, cc.cfg.n_features, float(cc.norm_scale_L)) == (D, F, 1.0)
    assert cc.lineage[0]["stage"] == "saelens"
    assert_same_numbers(cc, SAE.load_from_disk(tmp_path / "sae"), raw_acts())


def saelens_batchtopk(rescale, threshold=0.25):
    sae = saelens_sae(BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, k=4, rescale_acts_by_decoder_norm=rescale)
    sae.topk_threshold = torch.tensor(threshold, dtype=torch.double)
    return sae


def test_saelens_batchtopk_checkpoint_is_featgraph_batchtopk(tmp_path):
    """rescale_acts_by_decoder_norm: same threshold rule at inference and same batch top-k in training."""
    sae = saelens_batchtopk(rescale=True)
    sae.save_model(tmp_path / "ckpt")
    sae.save_inference_model(tmp_path / "inference")
    x = raw_acts()
    for folder in ("ckpt", "inference"):  # SAELens's checkpoint and its own JumpReLU inference form
        cc = load_saelens(tmp_path / folder)
        assert cc.cfg.architecture == "batchtopk" and cc.cfg.options["k"] == 4
        assert math.isclose(float(cc.threshold), 0.25, rel_tol=1e-6)
        assert_same_numbers(cc, SAE.load_from_disk(tmp_path / "inference"), x)
    trained = TrainingSAE.load_from_disk(tmp_path / "ckpt")
    torch.testing.assert_close(cc.train().encode(x[:, None]), trained.encode(x), atol=ATOL, rtol=1e-5)


def test_saelens_batchtopk_without_rescale_is_its_jumprelu_form(tmp_path):
    sae = saelens_batchtopk(rescale=False)
    sae.save_model(tmp_path / "ckpt")
    sae.save_inference_model(tmp_path / "inference")
    cc = load_saelens(tmp_path / "ckpt")
    assert cc.cfg.architecture == "jumprelu"
    assert_same_numbers(cc, SAE.load_from_disk(tmp_path / "inference"), raw_acts())
    assert load_saelens(tmp_path / "inference").cfg.architecture == "jumprelu"  # norms differ: not one θ


# ---- round trip ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", EXPORTABLE)
def test_round_trip_gives_back_the_crosscoder(arch, tmp_path):
    cc = featgraph_cc(arch)
    back = load_saelens(save_saelens(cc, tmp_path / arch))
    assert type(back) is type(cc) and back.cfg == cc.cfg and back.lineage == cc.lineage and not back.training
    state, back_state = cc.state_dict(), back.state_dict()
    assert state.keys() == back_state.keys()
    for k in state:
        torch.testing.assert_close(back_state[k], state[k], atol=1e-6, rtol=1e-6, msg=k)
    x = raw_acts(2)[:, None]
    torch.testing.assert_close(back.encode(x), cc.encode(x), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(back(x), cc(x), atol=ATOL, rtol=1e-5)
    SAE.load_from_disk(tmp_path / arch).save_model(tmp_path / "resaved")  # featgraph's metadata survives SAELens
    again = load_saelens(tmp_path / "resaved")
    assert type(again) is type(cc) and again.cfg == cc.cfg
    torch.testing.assert_close(again(x), cc(x), atol=ATOL, rtol=1e-5)


def test_a_stack_of_per_layer_saes_reads_model_hookpoints(tmp_path):
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(3)]
    for i, hook in enumerate(hooks):
        sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=F, metadata=SAEMetadata(model_name="tiny", hook_name=hook)))
        sae.save_model(tmp_path / f"layer{i}")
    assert [load_saelens(tmp_path / f"layer{i}").cfg.hookpoints for i in range(3)] == [[h] for h in hooks]


# ---- errors -------------------------------------------------------------------------------------------------


def raises_one_line(match):
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(FeatgraphError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            assert "\n" not in str(self.info.value)
            return out

    return _Ctx()


def test_export_refuses_what_saelens_cannot_hold(tmp_path):
    multi = build_crosscoder(CrosscoderConfig([f"blocks.{i}.hook_resid_post" for i in range(5)], d_model=D, n_features=F))
    with raises_one_line("SAELens holds one hookpoint; this crosscoder has 5"):
        save_saelens(multi, tmp_path / "multi")
    transcoder = build_crosscoder(CrosscoderConfig(["blocks.0.ln2.hook_normalized"], d_model=D, n_features=F, out_hookpoints=["blocks.0.hook_mlp_out"]))
    with raises_one_line("transcoder"):
        save_saelens(transcoder, tmp_path / "tc")
    untrained = build_crosscoder(CrosscoderConfig([HOOK], d_model=D, n_features=F, architecture="batchtopk", options={"k": 4}))
    with raises_one_line("no learned inference threshold"):
        save_saelens(untrained, tmp_path / "btk")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_import_refuses_other_architectures_and_options(tmp_path):
    meta = SAEMetadata(hook_name=HOOK)
    TopKSAE(TopKSAEConfig(d_in=D, d_sae=F, k=4, metadata=meta)).save_model(tmp_path / "topk")
    with raises_one_line("'topk'.*of each token.*supported: batchtopk, jumprelu, standard"):
        load_saelens(tmp_path / "topk")
    GatedSAE(GatedSAEConfig(d_in=D, d_sae=F, metadata=meta)).save_model(tmp_path / "gated")
    with raises_one_line("'gated' .*no featgraph equivalent; supported: batchtopk, jumprelu, standard$"):
        load_saelens(tmp_path / "gated")
    StandardSAE(StandardSAEConfig(d_in=D, d_sae=F, normalize_activations="layer_norm", metadata=meta)).save_model(tmp_path / "ln")
    with raises_one_line("normalize_activations='layer_norm'"):
        load_saelens(tmp_path / "ln")
    with raises_one_line("not a SAELens SAE folder"):
        load_saelens(tmp_path / "missing")


def test_import_needs_a_hookpoint_and_sound_weights(tmp_path):
    StandardSAE(StandardSAEConfig(d_in=D, d_sae=F)).save_model(tmp_path / "nohook")
    with raises_one_line("pass hookpoint="):
        load_saelens(tmp_path / "nohook")
    assert load_saelens(tmp_path / "nohook", hookpoint=HOOK).cfg.hookpoints == [HOOK]
    cfg_path = tmp_path / "nohook" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "d_sae": F + 1}))
    with raises_one_line("do not match a standard SAE"):
        load_saelens(tmp_path / "nohook", hookpoint=HOOK)
    (tmp_path / "nohook" / "sae_weights.safetensors").write_bytes(b"\x00" * 10)
    with raises_one_line("truncated or corrupt"):
        load_saelens(tmp_path / "nohook", hookpoint=HOOK)
