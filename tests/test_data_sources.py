"""Tests for crosscoder.data: every kind of --data source read into token rows for a tiny local model."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
import torch

from crosscoder import data as data_mod
from crosscoder.data import DATA_PROVIDERS, DataConfig, TokenRows, iter_documents, load_token_rows, pack_documents
from crosscoder.errors import FeatgraphError
from crosscoder.model_loading import load_model

N_CTX = 64
T = 16
WORDS = "the quick brown fox jumps over lazy dog once upon a time there was little girl named lily park ball tree".split()


def _documents(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short documents (different lengths, some longer than a row)."""
    rng = np.random.default_rng(seed)
    return [f"doc{i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for i in range(n)]


def _build_tokenizer():
    """A tiny byte-level BPE tokenizer (any text round-trips) with <bos> and <eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_documents(50, seed=99), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random-weight one-layer GPT-2 with the tokenizer above, loaded like any local checkpoint."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _build_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=N_CTX, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(str(path))


def _reference_rows(docs: list[str], tok, context_size: int = T) -> list[list[int]]:
    """Plain packing: each document tokenised alone, EOS after it, rows of BOS + (T − 1) tokens."""
    stream: list[int] = []
    for doc in docs:
        stream += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    body = context_size - 1
    return [[tok.bos_token_id] + stream[i: i + body] for i in range(0, len(stream) - body + 1, body)]


def _assert_rows(rows: TokenRows, expected: list[list[int]]) -> None:
    """train + val are exactly the expected rows, each part in reading order."""
    train, val = rows.train_NT.tolist(), rows.val_NT.tolist()
    assert rows.train_NT.dtype == torch.long and len(val) >= 1
    assert sorted(train + val) == sorted(expected)
    is_val = set(map(tuple, val))
    assert train == [r for r in expected if tuple(r) not in is_val]
    assert val == [r for r in expected if tuple(r) in is_val]


def _load(model, data, seed: int = 0, **kw) -> TokenRows:
    kw.setdefault("context_size", T)
    return load_token_rows(DataConfig(data=str(data), **kw), model, seed=seed)


def _one_line_error(match: str, fn, *args, **kw) -> str:
    with pytest.raises(FeatgraphError, match=match) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---- text files ---------------------------------------------------------------------------------

def test_txt_file_rows_come_from_the_text(model, tmp_path):
    doc = " ".join(_documents(8))
    (tmp_path / "a.txt").write_text(doc)
    rows = _load(model, tmp_path / "a.txt")
    tok = model.tokenizer
    _assert_rows(rows, _reference_rows([doc], tok))
    assert rows.source.startswith(str(tmp_path / "a.txt")) and f"rows of {T}" in rows.source
    everything = torch.cat([rows.train_NT, rows.val_NT])
    assert (everything[:, 0] == tok.bos_token_id).all()
    assert (everything[:, 1:] != tok.bos_token_id).all()
    assert (everything == tok.eos_token_id).sum() <= 1  # one document: EOS only after it


def test_folder_and_glob(model, tmp_path):
    docs = _documents(6)
    names = ["b.txt", "a.txt", "sub/c.txt", "sub/deeper/d.txt", "z.txt", "a2.txt"]
    for name, doc in zip(names, docs):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(doc)
    (tmp_path / ".hidden.txt").write_text("hidden text must not be read")
    (tmp_path / "notes.md").write_text("not a data file")
    order = sorted(range(6), key=lambda i: names[i])  # a.txt a2.txt b.txt sub/c.txt sub/deeper/d.txt z.txt
    assert list(iter_documents(DataConfig(data=str(tmp_path)))) == [docs[i] for i in order]

    rows = _load(model, tmp_path)
    _assert_rows(rows, _reference_rows([docs[i] for i in order], model.tokenizer))
    assert rows.source.startswith(f"6 .txt files under {tmp_path}")

    sub = [i for i in order if names[i].startswith("sub/")]
    assert list(iter_documents(DataConfig(data=str(tmp_path / "sub" / "**" / "*.txt")))) == [docs[i] for i in sub]
    top = [i for i in order if "/" not in names[i]]
    rows = _load(model, tmp_path / "*.txt")
    _assert_rows(rows, _reference_rows([docs[i] for i in top], model.tokenizer))


def test_eos_separates_documents_and_rows_decode_to_the_text(model, tmp_path):
    docs = _documents(12)
    for i, doc in enumerate(docs):
        (tmp_path / f"{i:02d}.txt").write_text(doc)
    rows = _load(model, tmp_path, val_fraction=0.0)
    tok = model.tokenizer
    # put the rows back in reading order: the tokens after BOS form one stream, documents split by EOS
    expected = _reference_rows(docs, tok)
    by_row = {tuple(r): r for r in rows.train_NT.tolist() + rows.val_NT.tolist()}
    stream = [t for r in expected for t in by_row[tuple(r)][1:]]
    pieces, current = [], []
    for t in stream:
        if t == tok.eos_token_id:
            pieces.append(tok.decode(current))
            current = []
        else:
            current.append(t)
    assert pieces == docs[: len(pieces)] and len(pieces) >= len(docs) - 1
    assert docs[len(pieces)].startswith(tok.decode(current)) if len(pieces) < len(docs) else True


def test_large_text_file_is_read_in_pieces_of_one_document(model, tmp_path, monkeypatch):
    text = "".join(d + "\n" for d in _documents(40))
    (tmp_path / "big.txt").write_text(text)
    whole = _load(model, tmp_path / "big.txt")
    monkeypatch.setattr(data_mod, "CHUNK_CHARS", 100)
    pieces = list(iter_documents(DataConfig(data=str(tmp_path / "big.txt"))))
    assert len(pieces) > 5 and "".join(pieces) == text and all(p.endswith("\n") for p in pieces)
    chunked = _load(model, tmp_path / "big.txt")
    assert torch.equal(whole.train_NT, chunked.train_NT) and torch.equal(whole.val_NT, chunked.val_NT)
    _assert_rows(chunked, _reference_rows([text], model.tokenizer))  # one document: EOS only after all of it


# ---- tables -------------------------------------------------------------------------------------

def _write_table(path, records: list[dict]) -> None:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    elif suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=3)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_table_with_text_column(model, tmp_path, suffix):
    docs = _documents(10)
    records = [{"id": str(i), "body": d} for i, d in enumerate(docs)]
    _write_table(tmp_path / f"t{suffix}", records)
    rows = _load(model, tmp_path / f"t{suffix}", text_column="body")
    _assert_rows(rows, _reference_rows(docs, model.tokenizer))
    msg = _one_line_error("has no column 'text'", _load, model, tmp_path / f"t{suffix}")
    assert "id, body" in msg and "--text-column" in msg


def test_json_list_of_strings_and_folder_of_tables(model, tmp_path):
    docs = _documents(9)
    (tmp_path / "a.json").write_text(json.dumps(docs[:4]))
    _write_table(tmp_path / "b.jsonl", [{"text": d} for d in docs[4:]])
    _assert_rows(_load(model, tmp_path), _reference_rows(docs, model.tokenizer))


def test_bad_jsonl_line(model, tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    _one_line_error(r"t.jsonl:2 is not valid JSON", _load, model, tmp_path / "t.jsonl")


# ---- HuggingFace datasets -----------------------------------------------------------------------

def test_saved_dataset_and_dataset_dict(model, tmp_path):
    from datasets import Dataset, DatasetDict

    docs = _documents(10)
    Dataset.from_dict({"text": docs, "n": list(range(10))}).save_to_disk(str(tmp_path / "ds"))
    _assert_rows(_load(model, tmp_path / "ds"), _reference_rows(docs, model.tokenizer))

    other = _documents(10, seed=1)
    DatasetDict({"train": Dataset.from_dict({"story": docs}), "validation": Dataset.from_dict({"story": other})}).save_to_disk(str(tmp_path / "dd"))
    rows = _load(model, tmp_path / "dd", text_column="story", data_split="validation")
    _assert_rows(rows, _reference_rows(other, model.tokenizer))
    assert "split validation" in rows.source
    _one_line_error("has no split 'test' \\(splits: train, validation\\)", _load, model, tmp_path / "dd", text_column="story", data_split="test")


def test_dataset_with_input_ids_column(model, tmp_path):
    """SAELens-style rows: BOS first kept, missing BOS prepended, cut to T; short rows packed as documents."""
    from datasets import Dataset

    bos, eos = model.tokenizer.bos_token_id, model.tokenizer.eos_token_id
    long_bos = [bos] + list(range(10, 10 + 20))          # 21 tokens, BOS first → first 16
    long_plain = list(range(40, 40 + 20))                # no BOS → BOS + first 15
    short_a, short_b = list(range(70, 75)), list(range(80, 88))  # packed: 5 + EOS + 8 + EOS = 15 → one row
    Dataset.from_dict({"input_ids": [long_bos, short_a, long_plain, short_b]}).save_to_disk(str(tmp_path / "tok"))
    expected = [long_bos[:T], [bos] + long_plain[: T - 1], [bos] + short_a + [eos] + short_b + [eos]]
    _assert_rows(_load(model, tmp_path / "tok"), expected)
    with pytest.raises(FeatgraphError, match="pre-tokenised"):
        list(iter_documents(DataConfig(data=str(tmp_path / "tok"))))


def test_dataset_name_offline(model, tmp_path, monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    start = time.perf_counter()
    msg = _one_line_error("could not be loaded offline", _load, model, "featgraph-test/no-such-dataset")
    assert time.perf_counter() - start < 10
    assert "HF_DATASETS_OFFLINE is set" in msg and "local file" in msg
    assert constants.HF_HUB_OFFLINE is not None  # flags restored, not left changed
    monkeypatch.chdir(tmp_path)
    _one_line_error("does not exist", _load, model, "./no/such/folder")
    _one_line_error("does not exist", _load, model, "missing.jsonl")
    _one_line_error("does not exist", _load, model, "/abs/missing")


# ---- token arrays -------------------------------------------------------------------------------

def test_npy_rows_and_stream(model, tmp_path):
    bos = model.tokenizer.bos_token_id
    rows_NL = np.arange(10, 10 + 6 * 20, dtype=np.int32).reshape(6, 20)  # no BOS, longer than T
    rows_NL[::2, 0] = bos                                                   # every other row starts with BOS
    np.save(tmp_path / "rows.npy", rows_NL)
    expected = [r[:T] if r[0] == bos else [bos] + r[: T - 1] for r in rows_NL.tolist()]
    _assert_rows(_load(model, tmp_path / "rows.npy"), expected)

    stream = np.arange(5, 5 + 100, dtype=np.int64)
    np.save(tmp_path / "stream.npy", stream)
    body = T - 1
    expected = [[bos] + stream[i: i + body].tolist() for i in range(0, 100 - body + 1, body)]
    _assert_rows(_load(model, tmp_path / "stream.npy"), expected)


def test_safetensors_arrays(model, tmp_path):
    from safetensors.torch import save_file

    bos = model.tokenizer.bos_token_id
    rows_NL = torch.randint(2, 300, (8, T), generator=torch.Generator().manual_seed(0))
    rows_NL[:, 0] = bos
    save_file({"input_ids": rows_NL, "attention_mask": torch.ones_like(rows_NL)}, str(tmp_path / "named.safetensors"))
    _assert_rows(_load(model, tmp_path / "named.safetensors"), rows_NL.tolist())
    save_file({"whatever": rows_NL[:, 1:].contiguous()}, str(tmp_path / "single.safetensors"))
    _assert_rows(_load(model, tmp_path / "single.safetensors"), rows_NL.tolist())
    save_file({"a": rows_NL, "b": rows_NL.clone()}, str(tmp_path / "two.safetensors"))
    _one_line_error("holds tensors a, b", _load, model, tmp_path / "two.safetensors")
    save_file({"x": rows_NL.float()}, str(tmp_path / "float.safetensors"))
    _one_line_error("not integer token ids", _load, model, tmp_path / "float.safetensors")


def test_token_ids_outside_vocabulary(model, tmp_path):
    rows_NL = np.full((4, T), 3, dtype=np.int64)
    rows_NL[2, 5] = model.cfg.d_vocab
    np.save(tmp_path / "bad.npy", rows_NL)
    _one_line_error(f"token id {model.cfg.d_vocab} .* outside the model's vocabulary of {model.cfg.d_vocab}", _load, model, tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _one_line_error("cannot be read as a token array", _load, model, tmp_path / "obj.npy")
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "r.npy", rows_NL)
    (tmp_path / "mixed" / "a.txt").write_text("text")
    _one_line_error("mix token arrays and text", _load, model, tmp_path / "mixed")


# ---- providers ----------------------------------------------------------------------------------

def test_provider_documents_rows_and_default(model, monkeypatch):
    docs = _documents(10)
    seen = {}

    def documents(cfg, m, *, seed, size, progress):
        seen.update(seed=seed, size=size, model=m)
        return iter(docs)

    fixed = TokenRows(torch.zeros(3, T, dtype=torch.long), torch.ones(1, T, dtype=torch.long), "fixed rows")
    monkeypatch.setitem(DATA_PROVIDERS._entries, "test-docs", documents)
    monkeypatch.setitem(DATA_PROVIDERS._entries, "embedded", lambda cfg, m, **kw: fixed)
    rows = load_token_rows(DataConfig(data="test-docs", context_size=T), model, seed=3, size="tiny")
    _assert_rows(rows, _reference_rows(docs, model.tokenizer))
    assert seen == {"seed": 3, "size": "tiny", "model": model} and rows.source.startswith("data provider test-docs")

    _one_line_error("has no default data; pass --data", load_token_rows, DataConfig(), model)
    monkeypatch.setattr(model.cfg, "model_name", "featgraph-embedded")
    assert load_token_rows(DataConfig(), model) is fixed


def test_max_tokens_bounds_rows_and_reading_stops(model, monkeypatch):
    consumed = []

    def endless(cfg, m, **kw):
        i = 0
        while True:
            consumed.append(i)
            yield f"story {i}: " + " ".join(WORDS)
            i += 1

    monkeypatch.setitem(DATA_PROVIDERS._entries, "endless", endless)
    rows = load_token_rows(DataConfig(data="endless", context_size=T, max_tokens=50 * T + 7), model)
    assert len(rows.train_NT) + len(rows.val_NT) == 50
    assert len(consumed) < 200  # streamed: only a batch's worth past what was needed


# ---- determinism, split, config -----------------------------------------------------------------

def test_same_seed_same_rows_different_seed_different_split(model, tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in _documents(60)))
    a = _load(model, tmp_path / "c.jsonl", seed=0, val_fraction=0.25)
    b = _load(model, tmp_path / "c.jsonl", seed=0, val_fraction=0.25)
    c = _load(model, tmp_path / "c.jsonl", seed=1, val_fraction=0.25)
    n = len(a.train_NT) + len(a.val_NT)
    assert n > 40 and len(a.val_NT) == int(n * 0.25)
    assert torch.equal(a.train_NT, b.train_NT) and torch.equal(a.val_NT, b.val_NT) and a.source == b.source
    assert not torch.equal(a.val_NT, c.val_NT)
    assert sorted(torch.cat([a.train_NT, a.val_NT]).tolist()) == sorted(torch.cat([c.train_NT, c.val_NT]).tolist())


def test_default_context_size_and_limits(model, tmp_path):
    (tmp_path / "a.txt").write_text(" ".join(_documents(40)))
    rows = load_token_rows(DataConfig(data=str(tmp_path / "a.txt")), model)
    assert rows.train_NT.shape[1] == min(128, N_CTX)
    _one_line_error("longer than the model's context of 64", _load, model, tmp_path / "a.txt", context_size=65)
    _one_line_error("fewer than 2 rows", _load, model, tmp_path / "a.txt", max_tokens=T + 1)
    (tmp_path / "empty.txt").write_text("")
    _one_line_error("gives no text", _load, model, tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("the dog")
    _one_line_error("at least 2 rows are needed", _load, model, tmp_path / "short.txt")
    (tmp_path / "x.bin").write_bytes(b"\0")
    _one_line_error("unsupported suffix '.bin'", _load, model, tmp_path / "x.bin")


@pytest.mark.parametrize("kw, match", [
    (dict(data=" "), "--data is empty"), (dict(text_column=""), "--text-column"), (dict(context_size=1), "--context-size"),
    (dict(max_tokens=0), "--max-tokens"), (dict(val_fraction=1.0), "--val-fraction"),
])
def test_config_validation(kw, match):
    _one_line_error(match, DataConfig, **kw)


def test_pack_documents_matches_reference(model):
    docs = _documents(20)
    tok = model.tokenizer
    got = [r.tolist() for r in pack_documents(docs, tok, T, max_tokens=10**6)]
    assert got == _reference_rows(docs, tok)
    assert len(list(pack_documents(docs, tok, T, max_tokens=5 * T + 3))) == 5
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    assert [r.tolist() for r in pack_documents(ids, tok, T, max_tokens=10**6)] == got
