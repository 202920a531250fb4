import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test run builds its embedded models in a fresh cache, never the user's."""
    old = os.environ.get("FEATGRAPH_CACHE")
    os.environ["FEATGRAPH_CACHE"] = str(tmp_path_factory.mktemp("featgraph_cache"))
    yield
    if old is None:
        os.environ.pop("FEATGRAPH_CACHE", None)
    else:
        os.environ["FEATGRAPH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_embedded(_isolated_cache):
    from analyses.tiny_model import TINY, load_embedded

    return load_embedded(TINY, progress=False)


# ---- a local random-weight checkpoint (test_model_loading, test_bridge) -----------------------------------

VOCAB = 512
N_CTX = 512
SENTENCES = [
    "once upon a time there was a little girl named lily",
    "she liked to play in the park with her dog",
    "one day the dog found a big red ball under a tree",
    "they played all day and were very happy",
]


def build_word_tokenizer():
    """A tiny word-level tokenizer wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<bos>", "<eos>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
    )


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A random-weight TinyStories-33M-shaped GPT-Neo (4 layers) saved with a tokenizer."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=VOCAB,
        hidden_size=768,
        num_layers=4,
        num_heads=16,
        attention_types=[[["global", "local"], 2]],
        window_size=256,
        max_position_embeddings=N_CTX,
        intermediate_size=3072,
        bos_token_id=2,
        eos_token_id=3,
    )
    hf_model = GPTNeoForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tinystories-like")
    hf_model.save_pretrained(path)
    build_word_tokenizer().save_pretrained(path)
    return path, hf_model


def empty_hf_cache(tmp_path, monkeypatch):
    """Point the HuggingFace cache at an empty folder (constants are read at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


# ---- planted activations (test_architectures, test_arch_registry) ---------------------------------------------

def planted_batches(seed=5):
    """A source of (128, 2, 8) batches: sparse codes over 12 fixed directions at two hookpoints."""
    dirs = torch.randn(12, 2, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)

    def batch():
        codes = torch.rand(128, 12, generator=g) * (torch.rand(128, 12, generator=g) < 0.15)
        return torch.einsum("bf,fld->bld", codes, dirs)

    return batch


@pytest.fixture
def one_thread():
    """Small training runs are several times faster on one intra-op thread than on two busy ones (a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
