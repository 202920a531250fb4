"""Tests for crosscoder.model_loading: offline loading into a HookedTransformer."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from crosscoder import model_loading
from crosscoder.errors import FeatgraphError
from crosscoder.model_loading import is_hf_checkpoint_dir, load_model

from conftest import VOCAB, empty_hf_cache  # the checkpoint fixture is in conftest


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(str(checkpoint[0]))


def test_is_hf_checkpoint_dir(checkpoint, tmp_path):
    assert is_hf_checkpoint_dir(checkpoint[0])
    assert not is_hf_checkpoint_dir(tmp_path)


def test_config_matches_checkpoint(model):
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (4, 768, VOCAB)
    assert model.cfg.n_heads == 16 and model.cfg.d_mlp == 3072
    assert model.cfg.original_architecture == "GPTNeoForCausalLM"
    assert model.cfg.normalization_type == "LNPre"  # LayerNorm folded
    assert model.tokenizer is not None
    assert model.to_tokens("the dog", prepend_bos=True)[0, 0].item() == model.tokenizer.bos_token_id


def test_logits_match_huggingface(model, checkpoint):
    hf_model = checkpoint[1]
    gen = torch.Generator().manual_seed(1)
    # 300 positions > window_size 256, so the local-attention layers' window is exercised.
    tokens = torch.randint(0, VOCAB, (2, 300), generator=gen)
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = hf_model(tokens).logits.log_softmax(-1)
    # center_unembed shifts each position's logits by a constant: compare log-probs.
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_harvest_activations(model):
    tokens = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(2))
    names = ("blocks.0.hook_resid_pre", "blocks.3.hook_resid_post")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    assert set(cache.keys()) == set(names)
    for name in names:
        assert cache[name].shape == (3, 16, 768)


def test_harvest_through_featgraph(model):
    """The same loaded checkpoint through featgraph's harvester: default hookpoints, BOS dropped, same values."""
    from crosscoder.config import default_hookpoints
    from crosscoder.harvest import harvest

    hookpoints = default_hookpoints(model.cfg.n_layers)
    tokens = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(2))
    batches = list(harvest(model, tokens, hookpoints, batch_size=2))
    assert [b.shape for b in batches] == [(2 * 15, 5, 768), (1 * 15, 5, 768)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hookpoints)
    want = torch.stack([cache[h][:, 1:] for h in hookpoints], dim=2).reshape(-1, 5, 768)
    torch.testing.assert_close(torch.cat(batches), want, rtol=1e-4, atol=1e-4)


def test_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FeatgraphError, match="unknown model 'no-such-model-xyz'") as info:
        load_model("no-such-model-xyz")
    assert "\n" not in str(info.value)


BACKENDS = ["hooked", pytest.param("bridge", marks=pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens.model_bridge") is None, reason="TransformerBridge needs transformer-lens >= 3"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_official_name_offline(tmp_path, monkeypatch, backend):
    empty_hf_cache(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FeatgraphError, match="could not be loaded offline") as info:
        load_model("roneneldan/TinyStories-33M", backend=backend)
    assert time.perf_counter() - start < 10
    assert "\n" not in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_official_alias_hub_unreachable(tmp_path, monkeypatch, backend):
    """Without HF_HUB_OFFLINE, a failed probe makes the load fail fast instead of retrying."""
    empty_hf_cache(tmp_path, monkeypatch)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *model_loading._PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(model_loading, "_hub_reachable", lambda timeout=2.0: False)
    start = time.perf_counter()
    with pytest.raises(FeatgraphError, match="hub is unreachable"):
        load_model("tiny-stories-33M", backend=backend)
    assert time.perf_counter() - start < 10


def test_official_name_from_cache_offline(tmp_path, monkeypatch, checkpoint):
    """A name whose files are in the HuggingFace cache loads offline, through TL's own path."""
    empty_hf_cache(tmp_path, monkeypatch)
    repo = tmp_path / "hf" / "hub" / "models--roneneldan--TinyStories-33M"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in checkpoint[0].iterdir():
        (snapshot / file.name).symlink_to(file)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    named = load_model("tiny-stories-33M")
    assert named.cfg.n_ctx == 512 and named.cfg.model_name == "TinyStories-33M"
    tokens = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = checkpoint[1](tokens).logits.log_softmax(-1)
        torch.testing.assert_close(named(tokens).log_softmax(-1), ref, atol=1e-4, rtol=1e-4)


def test_awkward_local_checkpoint(tmp_path):
    """A path naming another architecture, a non-4x MLP width and no tokenizer still load."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(4)
    config = GPTNeoConfig(
        vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=50,
        attention_types=[[["global", "local"], 1]], window_size=8, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0,
    )
    hf_model = GPTNeoForCausalLM(config).eval()
    path = tmp_path / "my-llama-t5-ckpt"
    hf_model.save_pretrained(path)
    small = load_model(str(path))
    assert small.tokenizer is None and small.cfg.d_mlp == 50
    tokens = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf_model(tokens).logits.log_softmax(-1)
        torch.testing.assert_close(small(tokens).log_softmax(-1), ref, atol=1e-4, rtol=1e-4)


def test_directory_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FeatgraphError, match="no config.json"):
        load_model(str(tmp_path))


def test_directory_without_weights(tmp_path, checkpoint):
    (tmp_path / "config.json").write_text((checkpoint[0] / "config.json").read_text())
    with pytest.raises(FeatgraphError, match="no weights"):
        load_model(str(tmp_path))


def test_pickled_weights_are_refused(tmp_path, checkpoint):
    (tmp_path / "config.json").write_text((checkpoint[0] / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(FeatgraphError, match="never unpickles"):
        load_model(str(tmp_path))
