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


def tiny_gpt2_world(root):
    """A user's own world in ``root``: a two-layer random-weight GPT-2 saved as a HuggingFace checkpoint (``ckpt/``, with
    the word tokenizer) and ``text.txt``, a few hundred lines of SENTENCES; returns ``root``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_word_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    g = torch.Generator().manual_seed(1)
    lines = [SENTENCES[int(i)] for i in torch.randint(0, len(SENTENCES), (400,), generator=g)]
    (root / "text.txt").write_text("\n\n".join(lines))
    return root


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


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for a whole module of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread_module")``):
    intra-op threads only contend on a shared CPU (a 30× slow-down measured on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def one_process_and_two_ranks(script, args, out_one, out_two):
    """Run ``script ARGS OUT`` as one process, then under torchrun with two gloo ranks, and return the two saved
    crosscoders' tensors (``OUT/crosscoder.safetensors``), for a test to compare."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), *args, str(out_one)], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), *args, str(out_two)]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return load_file(str(out_one / "crosscoder.safetensors")), load_file(str(out_two / "crosscoder.safetensors"))


def cli_help(*argv: str) -> str:
    """What ``featgraph ARGV --help`` prints, whitespace folded (argparse wraps it to the terminal)."""
    import contextlib
    import io

    from featgraph.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(buf.getvalue().split())
