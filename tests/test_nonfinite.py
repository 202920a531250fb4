"""NaN/inf is caught where it enters (model weights, activations, feature activations, metrics, training) with one
line naming where, and never written into a result."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from crosscoder.activation_cache import ActivationCache, write_activation_cache
from crosscoder.apply import feature_activations, stack_feature_activations
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import check_finite_activations, forward_order, harvest, harvest_models
from crosscoder.metrics import evaluate, reconstruction_metrics, splice_metrics
from crosscoder.model_loading import check_finite_parameters, load_model
from crosscoder.sources import load_model_spec
from crosscoder.train import train_crosscoder
from featgraph.cli import main
from featgraph.stats import CoactivationStats, feature_max

HOOKPOINTS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post",
              "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# ---- model weights at load -----------------------------------------------------------------------------------------

def _corrupt_checkpoint(checkpoint, folder, param: str, index: tuple, value: float = float("nan")):
    """A copy of the conftest checkpoint with ``value`` written into one element (or, index ``...``, all) of ``param``."""
    src, hf_model = checkpoint
    bad = copy.deepcopy(hf_model)
    with torch.no_grad():
        dict(bad.named_parameters())[param][index] = value
    bad.save_pretrained(folder)  # safetensors
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()
    return folder


@pytest.fixture(scope="module")
def nan_ln_f(checkpoint, tmp_path_factory):
    """The checkpoint with NaN in its final LayerNorm weight (which fold_ln would fold into W_U)."""
    return _corrupt_checkpoint(checkpoint, tmp_path_factory.mktemp("nan-ln-f"), "transformer.ln_f.weight", ...)


def test_nan_final_layernorm_is_refused_at_load(nan_ln_f):
    with pytest.raises(FeatgraphError) as err:
        load_model_spec(str(nan_ln_f))
    msg = _one_line(err)
    assert "transformer.ln_f.weight" in msg and "768 NaN/inf values (of 768)" in msg, msg
    assert str(nan_ln_f) in msg and "corrupt or diverged" in msg, msg


def test_one_nan_in_w_q_is_refused_at_load(checkpoint, tmp_path):
    folder = _corrupt_checkpoint(checkpoint, tmp_path / "nan-wq", "transformer.h.0.attn.attention.q_proj.weight", (5, 7))
    for backend in ("hooked", "bridge"):  # both read the HuggingFace model first
        with pytest.raises(FeatgraphError) as err:
            load_model(str(folder), backend=backend)
        msg = _one_line(err)
        assert "transformer.h.0.attn.attention.q_proj.weight" in msg and "1 NaN/inf value (of 589824)" in msg, msg


def test_inf_is_refused_too(checkpoint, tmp_path):
    folder = _corrupt_checkpoint(checkpoint, tmp_path / "inf-mlp", "transformer.h.2.mlp.c_fc.weight", (0, 0), float("inf"))
    with pytest.raises(FeatgraphError, match=r"1 NaN/inf value \(of 2359296\) in parameter transformer\.h\.2\.mlp\.c_fc\.weight"):
        load_model(str(folder))


def test_check_finite_parameters_names_the_transformerlens_parameter(tiny_embedded):
    model = copy.deepcopy(tiny_embedded.model)
    check_finite_parameters(model, "model 'x'")  # a sound model passes
    with torch.no_grad():
        model.blocks[1].attn.W_Q[0, 3, 2] = float("nan")
        model.blocks[1].mlp.W_in[:, :4] = float("inf")  # later in parameter order: not the one named
    with pytest.raises(FeatgraphError) as err:
        check_finite_parameters(model, "model 'x'")
    msg = _one_line(err)
    assert msg.startswith("model 'x' has 1 NaN/inf value (of ") and "in parameter blocks.1.attn.W_Q;" in msg, msg
    assert "mlp" not in msg and "re-download or re-train" in msg


def test_a_corrupt_embedded_cache_is_refused(tiny_embedded, tmp_path, monkeypatch):
    """The embedded provider loads cached weights: NaN there names the parameter and the folder to delete."""
    folder = tmp_path / "embedded" / tiny_embedded.path.name
    shutil.copytree(tiny_embedded.path, folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["blocks.1.mlp.W_in"][2, 5] = float("nan")
    save_file(weights, str(folder / "model.safetensors"))
    monkeypatch.setenv("FEATGRAPH_CACHE", str(tmp_path))
    with pytest.raises(FeatgraphError) as err:
        load_model_spec("embedded", size="tiny", progress=False)
    msg = _one_line(err)
    assert "blocks.1.mlp.W_in" in msg and "1 NaN/inf value" in msg and f"delete {folder}" in msg, msg


def test_load_model_spec_checks_every_provider(tiny_embedded, monkeypatch):
    """A provider that does not check its own weights is checked by load_model_spec."""
    from crosscoder.sources import MODEL_PROVIDERS, LoadedModel

    bad = copy.deepcopy(tiny_embedded.model)
    with torch.no_grad():
        bad.unembed.W_U[0, 0] = float("nan")
    monkeypatch.setitem(MODEL_PROVIDERS._entries, "nan-provider", lambda spec, **kw: LoadedModel(bad, None, None, None))
    with pytest.raises(FeatgraphError, match=r"^model 'nan-provider' has 1 NaN/inf value .* in parameter unembed\.W_U; "):
        load_model_spec("nan-provider")


# ---- activations at harvest ----------------------------------------------------------------------------------------

def _nan_at(model, hookpoint: str, row: int, pos: int):
    """A copy of ``model`` whose ``hookpoint`` gets NaN at one token position."""
    bad = copy.deepcopy(model)

    def hook(act, hook=None):
        act = act.clone()
        act[row, pos, 0] = float("nan")
        return act

    bad.hook_dict[hookpoint].add_hook(hook, is_permanent=True)
    return bad


def test_forward_order():
    names = ["blocks.1.hook_resid_pre", "ln_final.hook_normalized", "blocks.0.hook_resid_post", "blocks.0.ln2.hook_normalized",
             "blocks.0.hook_resid_mid", "hook_embed", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_pre", "blocks.10.hook_resid_pre"]
    assert sorted(names, key=forward_order) == [
        "hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.ln2.hook_normalized",
        "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.10.hook_resid_pre",
        "ln_final.hook_normalized"]


def test_harvest_names_the_first_bad_hookpoint_only(tiny_embedded):
    model = _nan_at(tiny_embedded.model, "blocks.0.hook_resid_mid", row=1, pos=4)
    tokens = tiny_embedded.tokens_val_NT[:3]
    T = tokens.shape[1]
    # listed out of forward order: the later hookpoints (where the NaN has spread through attention) come first
    order = list(reversed(HOOKPOINTS))
    with pytest.raises(FeatgraphError) as err:
        list(harvest(model, tokens, order, batch_size=3))
    msg = _one_line(err)
    assert "first at blocks.0.hook_resid_mid (layer 0), at 1 of " + str(3 * (T - 1)) + " token positions" in msg, msg
    assert "model 'featgraph-embedded'" in msg and "(and at 3 other hookpoints)" in msg, msg
    assert all(h not in msg for h in HOOKPOINTS if h != "blocks.0.hook_resid_mid"), msg
    # through attention (0 · NaN = NaN, masked keys too) the NaN spreads to its whole row: what layer 1 holds
    with pytest.raises(FeatgraphError, match=rf"first at blocks\.1\.hook_resid_post \(layer 1\), at {T - 1} of"):
        list(harvest(model, tokens, ["blocks.1.hook_resid_post", "blocks.0.hook_resid_pre"], batch_size=3))


def test_harvest_of_a_sound_model_is_unchanged(tiny_embedded):
    tokens = tiny_embedded.tokens_val_NT[:2]
    acts = torch.cat(list(harvest(tiny_embedded.model, tokens, HOOKPOINTS)))
    assert acts.shape == (2 * (tokens.shape[1] - 1), len(HOOKPOINTS), 32) and torch.isfinite(acts).all()


def test_harvest_models_names_the_model(tiny_embedded):
    bad = _nan_at(tiny_embedded.model, "blocks.1.hook_resid_mid", row=0, pos=2)
    tokens = tiny_embedded.tokens_val_NT[:2]
    with pytest.raises(FeatgraphError) as err:
        list(harvest_models([tiny_embedded.model, bad], tokens, HOOKPOINTS, names=["base", "tuned"]))
    msg = _one_line(err)
    assert msg.startswith("model 'tuned' produced NaN/inf activations first at blocks.1.hook_resid_mid (layer 1)"), msg


def test_model_crosscoder_slots_are_ordered_by_model_then_layer():
    slots = ["base/blocks.0.hook_resid_post", "base/blocks.1.hook_resid_post", "tuned/blocks.0.hook_resid_post",
             "tuned/blocks.1.hook_resid_post"]
    acts = torch.zeros(4, 4, 3)
    acts[0, 1, 0] = acts[1:3, 3, 1] = float("inf")  # base layer 1 (one position) and tuned layer 1 (two)
    with pytest.raises(FeatgraphError, match=r"^x produced NaN/inf activations first at base/blocks\.1\.hook_resid_post "
                                             r"\(layer 1\), at 1 of 4 token positions \(and at 1 other hookpoint\); fix it$"):
        check_finite_activations(acts, slots, "x", fix="fix it")
    check_finite_activations(torch.zeros(4, 4, 3), slots, "x")  # finite: silent


def test_float16_cache_overflow_names_the_hookpoint(tiny_embedded, tmp_path):
    big = copy.deepcopy(tiny_embedded.model)
    big.hook_dict["blocks.1.hook_resid_post"].add_hook(lambda act, hook=None: act * 1e6, is_permanent=True)  # > float16's 65504
    with pytest.raises(FeatgraphError) as err:
        write_activation_cache(big, tiny_embedded.tokens_val_NT[:2], HOOKPOINTS, tmp_path / "c16", dtype="float16", progress=False)
    msg = _one_line(err)
    assert "first at blocks.1.hook_resid_post (layer 1)" in msg and "write the cache with dtype float32" in msg, msg
    assert not list((tmp_path / "c16").glob("shard-*"))  # nothing half-written


def test_a_corrupt_activation_cache_is_refused_when_read(tiny_embedded, tmp_path):
    cache = write_activation_cache(tiny_embedded.model, tiny_embedded.tokens_val_NT[:2], HOOKPOINTS, tmp_path / "c", progress=False)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    shard = np.fromfile(tmp_path / "c" / "shard-00000.bin", dtype=np.float32).reshape(2, meta["tokens_per_row"], 5, 32)
    shard[1, 3, 2, 7] = np.nan
    shard.tofile(tmp_path / "c" / "shard-00000.bin")
    assert next(cache.activations(torch.tensor([0]), "cpu")).shape[1:] == (5, 32)  # row 0 is sound
    with pytest.raises(FeatgraphError, match=r"activation cache .* first at blocks\.0\.hook_resid_post \(layer 0\), at 1 of"):
        list(ActivationCache(tmp_path / "c").activations(torch.tensor([0, 1]), "cpu"))


# ---- feature activations -------------------------------------------------------------------------------------------

def _crosscoder(hookpoints=("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"), n_features=16):
    torch.manual_seed(0)
    return build_crosscoder(CrosscoderConfig(list(hookpoints), 32, n_features, model_name="featgraph-embedded"))


def test_feature_activations_name_the_crosscoder(tiny_embedded):
    cc = _crosscoder()
    tokens = tiny_embedded.tokens_val_NT[:4]
    assert all(torch.isfinite(c.f_nF).all() for c in feature_activations(cc, tiny_embedded.model, tokens))
    with torch.no_grad():
        cc.W_enc_LDF[1, 3, 5] = float("nan")
    with pytest.raises(FeatgraphError) as err:
        list(feature_activations(cc, tiny_embedded.model, tokens, batch_size=2))
    msg = _one_line(err)
    T = tokens.shape[1]
    assert msg.startswith("the relu crosscoder of model 'featgraph-embedded' at blocks.0.hook_resid_post … "
                          "blocks.1.hook_resid_post (2 hookpoints) gave NaN/inf feature activations on "
                          f"{2 * (T - 1)} of {2 * (T - 1)} tokens (first feature 5)"), msg
    assert "its W_enc_LDF holds 1 NaN/inf value (of 1024)" in msg, msg


def test_stacked_feature_activations_name_the_bad_sae(tiny_embedded):
    saes = [_crosscoder([h], 8) for h in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")]
    with torch.no_grad():
        saes[1].b_enc_F[6] = float("inf")
    with pytest.raises(FeatgraphError, match=r"^the relu crosscoder of model 'featgraph-embedded' at blocks\.1\.hook_resid_post "
                                             r"gave .* \(first feature 6\) .* its b_enc_F holds 1 NaN/inf value \(of 8\)"):
        list(stack_feature_activations(saes, tiny_embedded.model, tiny_embedded.tokens_val_NT[:2]))


def test_statistics_refuse_a_nonfinite_chunk_and_stay_as_they_were():
    stats = CoactivationStats(3)
    stats.update(torch.tensor([[1.0, 0.0, 2.0]]))
    with pytest.raises(FeatgraphError, match=r"\(first at feature 2; 1 feature affected\)"):
        stats.update(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, float("nan")]]))
    assert stats.n_tokens == 1 and stats.count_F.tolist() == [1, 0, 1] and stats.sum_F.tolist() == [1.0, 0.0, 2.0]
    with pytest.raises(FeatgraphError, match=r"\(first at feature 0; 1 feature affected\)"):
        feature_max([torch.tensor([[float("inf"), 1.0]])])


# ---- metrics -------------------------------------------------------------------------------------------------------

def test_reconstruction_metrics_name_the_metric_and_hookpoint():
    cc = build_crosscoder(CrosscoderConfig(["a", "b"], 4, 8))
    x = torch.randn(64, 2, 4, generator=torch.Generator().manual_seed(0))
    assert all(v == v for v in reconstruction_metrics(cc, [x]).fvu_per_hookpoint)
    with torch.no_grad():
        cc.W_dec_FLD[2, 1, 3] = float("nan")  # after construction
    with pytest.raises(FeatgraphError) as err:
        reconstruction_metrics(cc, [x])
    msg = _one_line(err)
    assert msg.startswith("metric FVU is nan at b; the relu crosscoder at a … b (2 hookpoints) reconstructs NaN/inf"), msg
    assert "its W_dec_FLD holds 1 NaN/inf value (of 64)" in msg, msg
    x[5, 0, 1] = float("nan")  # NaN in the input is blamed on the input
    with pytest.raises(FeatgraphError, match="^metric FVU is nan at a; the activations given hold NaN/inf"):
        reconstruction_metrics(build_crosscoder(CrosscoderConfig(["a", "b"], 4, 8)), [x])


def test_dead_features_keep_an_undefined_beta():
    cc = build_crosscoder(CrosscoderConfig(["a"], 4, 8))
    with torch.no_grad():
        cc.b_enc_F[:4] = -100.0
    beta = reconstruction_metrics(cc, [torch.randn(64, 1, 4)]).latent_scaling_beta
    assert all(b != b for b in beta[:4]) and all(b == b for b in beta[4:])


def test_evaluate_refuses_a_nan_decoder(tiny_embedded):
    cc = _crosscoder()
    with torch.no_grad():
        cc.W_dec_FLD[0, 0, 0] = float("nan")
    with pytest.raises(FeatgraphError, match=r"^metric FVU is nan at blocks\.0\.hook_resid_post; .* W_dec_FLD holds 1 NaN"):
        evaluate(cc, tiny_embedded.model, tiny_embedded.tokens_val_NT[:2], splice=False)


def test_splice_metrics_blame_the_model_for_a_nan_clean_loss(tiny_embedded):
    """NaN after the last hookpoint (here in W_U, where fold_ln puts a final LayerNorm weight): harvest is finite,
    the clean CE is not — reported instead of 'CE loss recovered nan'."""
    model = copy.deepcopy(tiny_embedded.model)
    with torch.no_grad():
        model.unembed.W_U[4, :] = float("nan")
    with pytest.raises(FeatgraphError) as err:
        splice_metrics(_crosscoder(), model, tiny_embedded.tokens_val_NT[:2])
    msg = _one_line(err)
    assert msg.startswith("metric CE clean is nan: model 'featgraph-embedded' predicts NaN/inf log-probabilities"), msg
    assert "its parameter unembed.W_U holds" in msg, msg


def test_splice_metrics_blame_the_crosscoder_for_a_nan_spliced_loss(tiny_embedded):
    cc = _crosscoder(["blocks.0.hook_resid_post"])
    with torch.no_grad():
        cc.b_dec_LD[0, 3] = float("nan")
    with pytest.raises(FeatgraphError, match=r"^metric CE spliced is nan at blocks\.0\.hook_resid_post; .* its b_dec_LD holds 1"):
        splice_metrics(cc, tiny_embedded.model, tiny_embedded.tokens_val_NT[:2])


# ---- training ------------------------------------------------------------------------------------------------------

def test_training_names_the_first_diverged_step_and_writes_no_checkpoint_after_it(tmp_path):
    cc = build_crosscoder(CrosscoderConfig(["a"], 4, 8))
    g = torch.Generator().manual_seed(0)
    calls = []

    def source():
        calls.append(1)
        x = torch.randn(32, 1, 4, generator=g)
        if len(calls) == 4:  # step 3
            x[0, 0, 0] = float("nan")
        return x

    cfg = TrainConfig(steps=10, batch_size=32, log_every=100, autocast="off")
    with pytest.raises(FeatgraphError, match=r"^crosscoder training diverged at step 3 \(the loss became NaN/inf\); lower lr"):
        train_crosscoder(cc, source, cfg, progress=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*")) == ["step-000000002"]  # step 4 was never written


# ---- the CLI -------------------------------------------------------------------------------------------------------

def test_train_on_a_nan_checkpoint_is_one_line_and_writes_nothing(nan_ln_f, tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text("\n".join(f"once upon a time there was a little girl named lily and a dog {i}" for i in range(40)))
    out = tmp_path / "cc"
    code = main(["crosscoder", "train", "--model", str(nan_ln_f), "--data", str(data), "--device", "cpu", "--steps", "2",
                 "--n-features", "16", "--context-size", "16", "--max-tokens", "512", "--batch-size", "32",
                 "--eval-rows", "2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "transformer.ln_f.weight" in err[0] and "NaN" in err[0], err
    assert not out.exists()
