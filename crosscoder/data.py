"""Token rows from the user's data: text files, tables, HuggingFace datasets, token arrays or a named provider.

``--data SOURCE`` is read in this order:

1. a registered data provider (:data:`DATA_PROVIDERS`, e.g. ``embedded``); write ``./name`` for a path of that name;
2. an existing path: a file, or a folder read recursively (hidden entries skipped, files sorted by path).
   A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` is a saved dataset;
3. a glob pattern (``data/**/*.txt``);
4. a HuggingFace dataset name (``roneneldan/TinyStories``), streamed; offline it is read from the local cache.

File kinds, by suffix:

* ``.txt``: each file is one document. A file larger than :data:`CHUNK_CHARS` characters is read in pieces of
  whole lines, so memory stays bounded; the pieces are tokenised separately but stay one document (no EOS
  between them). Bytes that are not UTF-8 are replaced.
* ``.jsonl`` (one object or string per line), ``.json`` (a list of objects or strings), ``.csv``, ``.parquet``:
  each record's ``text_column`` is a document. A record set without that column but with ``input_ids`` is
  read as pre-tokenised rows (below).
* ``.npy`` (never unpickled) and ``.safetensors`` (the single tensor, or the one named ``input_ids``/``tokens``):
  an integer token array, 2-D (rows) or 1-D (a flat token stream, cut into rows of BOS + T − 1 tokens).

Packing (T = ``context_size``): text is tokenised with the model's tokenizer (``add_special_tokens=False``, in
batches), each document is followed by EOS (the tokenizer's, else BOS), and the stream is cut into rows of BOS +
T − 1 tokens; a document longer than a row continues in the next row. This is the convention of
``analyses.tiny_model.pack_rows``: BOS at position 0 of every row.

Ready-made rows (2-D arrays, ``input_ids`` entries) follow SAELens's pre-tokenised datasets: a row gets BOS
prepended unless it starts with BOS, then is cut to T tokens (the rest of that row is dropped). A row shorter
than T after that is a tokenised document: it is packed with its neighbours as above.

Reading stops once ``max_tokens // T`` rows are made. The held-out rows are a seeded random choice of
``max(1, ⌊N · val_fraction⌋)`` of the N rows; train and validation rows keep the order in which they were read.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import FeatgraphError
from .model_loading import _fetch_errors, _first_line
from .model_loading import _offline_reason as _hub_offline_reason
from .registry import Registry

__all__ = ["DataConfig", "TokenRows", "DATA_PROVIDERS", "iter_documents", "pack_documents", "load_token_rows"]

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TOKEN_SUFFIXES = (".npy", ".safetensors")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + TABLE_SUFFIXES + TOKEN_SUFFIXES
TOKEN_COLUMN = "input_ids"
"""Column of pre-tokenised rows in tables and datasets (SAELens's name)."""
TOKEN_TENSOR_NAMES = ("input_ids", "tokens")
CHUNK_CHARS = 1 << 22
"""A .txt file with more characters than this is read in pieces of about this many characters."""
BATCH_CHARS = 1 << 20
"""Characters of text handed to the tokenizer per call."""
EMBEDDED_MODEL_NAME = "featgraph-embedded"
"""``model.cfg.model_name`` of the embedded model, whose default data is the ``embedded`` provider."""
DEFAULT_CONTEXT = 128
DEFAULT_MAX_TOKENS = 1_000_000
"""Tokens read from a source when ``max_tokens`` is unset."""
ROW_BLOCK = 4096
"""Rows packed into one int64 block while reading (the rows are held as blocks, not Python lists)."""


@dataclass
class DataConfig:
    """Where the token rows come from and how many there are.

    A local ``data`` source is checked when the config is made (:func:`_check_source`), so a missing path, an empty
    or binary file or a table without ``text_column`` fails before any model is loaded for it.
    """

    data: str | None = None
    """A file, folder, glob, HuggingFace dataset (saved folder or name) or data provider; unset = the model's default (embedded)."""
    text_column: str = "text"
    """Column holding the text in .jsonl/.json/.csv/.parquet files and datasets."""
    data_split: str = "train"
    """Split of a HuggingFace dataset."""
    data_config: str | None = None
    """Configuration name of a HuggingFace dataset, if it has several."""
    context_size: int | None = None
    """Tokens per row, BOS included; unset = min(128, the model's context length)."""
    max_tokens: int | None = None
    """Reading stops once this many tokens of rows are made; unset = 1,000,000 for a source that is read (a data provider's
    ready-made rows, such as the embedded model's own, are used whole)."""
    val_fraction: float = 0.05
    """Fraction of the rows held out for validation (at least one row)."""

    def __post_init__(self) -> None:
        if self.data is not None and not str(self.data).strip():
            raise FeatgraphError("--data is empty; pass a file, folder, glob pattern, dataset name or data provider")
        if not self.text_column:
            raise FeatgraphError("--text-column is empty; name the column that holds the text (default: text)")
        if not self.data_split:
            raise FeatgraphError("--data-split is empty; name a split of the dataset (default: train)")
        if self.context_size is not None and self.context_size < 2:
            raise FeatgraphError(f"--context-size must be at least 2 (BOS plus one token), got {self.context_size}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise FeatgraphError(f"--max-tokens must be at least 2, got {self.max_tokens}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise FeatgraphError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.data is not None:
            _check_source(self)


class TokenRows(NamedTuple):
    train_NT: torch.Tensor  # (N, T) int64, BOS at position 0
    val_NT: torch.Tensor    # (N_val, T)
    source: str             # what was read, e.g. "3 .txt files under /x (41,280 tokens in 322 rows of 128)"


DATA_PROVIDERS: Registry = Registry("data provider", "featgraph.data")
"""Named data sources: ``provider(cfg, model, *, seed, size, progress) -> TokenRows | Iterable[str]``.

An iterable of documents (strings, or token-id lists) is tokenised and packed like any text source."""


# ---- items a source yields ----------------------------------------------------------------------

class _Text(NamedTuple):
    text: str
    end: bool = True  # False: a piece of a document that continues in the next item


class _Ids(NamedTuple):
    ids: Sequence[int]
    end: bool = True  # False: a flat token stream continues (no EOS added)


class _Row(NamedTuple):
    ids: Sequence[int]  # a ready-made row


_Item = Union[_Text, _Ids, _Row]


class _Source(NamedTuple):
    label: str                          # "3 .txt files under /x"
    items: Callable[[], Iterator[_Item]]


# ---- resolving SOURCE ---------------------------------------------------------------------------

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _is_saved_dataset(path: Path) -> bool:
    """Whether folder ``path`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _is_dataset_name(data: str) -> bool:
    """Whether ``data`` (not an existing path) reads as a HuggingFace dataset name (``owner/name``, no file suffix)."""
    return bool(_DATASET_NAME.match(data)) and not data.lower().endswith(SUPPORTED_SUFFIXES)


def _check_source(cfg: DataConfig) -> None:
    """Raise now what reading ``cfg.data`` would raise later for a local source: a missing path, an unsupported suffix, a
    folder or glob without data files, an unreadable, binary or empty file, a table without the text column.

    Reads at most up to the first document (or row) of the source. Data providers and HuggingFace datasets, saved or
    by name, are checked when they are read.
    """
    data = str(cfg.data)
    if data in DATA_PROVIDERS:
        return
    path = Path(data).expanduser()
    if path.is_dir() and _is_saved_dataset(path):
        return
    if not path.exists() and not any(c in data for c in "*?[") and _is_dataset_name(data):
        return
    source = _resolve(data, cfg)
    items = source.items()
    try:
        first = next(items, None)
    finally:
        items.close()
    if first is None:
        raise FeatgraphError(f"{source.label} gives no text (its files are empty); point --data at files with text or tokens")


def _resolve(data: str, cfg: DataConfig) -> _Source:
    path = Path(data).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            return _saved_dataset(path, cfg)
        files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise FeatgraphError(f"folder {path} holds no data files ({', '.join(SUPPORTED_SUFFIXES)}); point --data at a folder of them")
        return _files(files, f"under {path}", cfg)
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise FeatgraphError(f"{path} has an unsupported suffix {path.suffix or '(none)'!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
        return _files([path], "", cfg)
    if any(c in data for c in "*?["):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(data), recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]
        if not files:
            raise FeatgraphError(f"no data files ({', '.join(SUPPORTED_SUFFIXES)}) match {data!r}; check the pattern")
        return _files(files, f"matching {data}", cfg)
    if _is_dataset_name(data):
        return _hub_dataset(data, cfg)
    known = ", ".join(DATA_PROVIDERS.names()) or "none registered"
    raise FeatgraphError(f"--data {data!r} does not exist; pass a file, folder, glob pattern, HuggingFace dataset name or data provider ({known})")


def _files(files: list[Path], where: str, cfg: DataConfig) -> _Source:
    kinds = {p.suffix.lower() for p in files}
    if kinds & set(TOKEN_SUFFIXES) and kinds - set(TOKEN_SUFFIXES):
        raise FeatgraphError(f"the files {where} mix token arrays and text ({', '.join(sorted(kinds))}); point --data at one kind")
    if len(files) == 1:
        label = str(files[0])
    else:
        label = f"{len(files)} {'/'.join(sorted(kinds))} files {where}"

    def items() -> Iterator[_Item]:
        for path in files:
            log.debug("reading %s", path)
            try:
                yield from _READERS[path.suffix.lower()](path, cfg)
            except UnicodeDecodeError as e:
                raise FeatgraphError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8, or point --data at "
                                     "text files") from None
            except csv.Error as e:
                raise FeatgraphError(f"{path} is not a readable CSV file ({e}); fix it or convert it to .jsonl") from None

    return _Source(label, items)


# ---- file readers -------------------------------------------------------------------------------

def _read_txt(path: Path, cfg: DataConfig) -> Iterator[_Item]:
    with open(path, encoding="utf-8", errors="replace") as f:
        if path.stat().st_size <= CHUNK_CHARS:
            text = _text_of(f.read(), path)
            if text.strip():
                yield _Text(text)
            return
        lines: list[str] = []
        size = 0
        for line in f:
            lines.append(line)
            size += len(line)
            if size >= CHUNK_CHARS:
                yield _Text(_text_of("".join(lines), path), end=False)
                lines, size = [], 0
        yield _Text(_text_of("".join(lines), path))


def _text_of(text: str, path: Path) -> str:
    """``text`` as read from ``path``; a NUL character (never in text, always in binary and UTF-16 files) is an error."""
    if "\x00" in text:
        raise FeatgraphError(f"{path} holds NUL bytes: it is a binary (or UTF-16) file, not UTF-8 text; point --data at text files "
                             "or save it as UTF-8")
    return text


def _read_jsonl(path: Path, cfg: DataConfig) -> Iterator[_Item]:
    def records() -> Iterator[Any]:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise FeatgraphError(f"{path}:{n} is not valid JSON ({e.msg}); each line of a .jsonl file must be one JSON object") from None

    yield from _record_items(records(), str(path), cfg.text_column)


def _read_json(path: Path, cfg: DataConfig) -> Iterator[_Item]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise FeatgraphError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file or use .jsonl") from None
    if not isinstance(value, list):
        raise FeatgraphError(f"{path} holds a JSON {type(value).__name__}, not a list; write a list of objects or strings")
    yield from _record_items(iter(value), str(path), cfg.text_column)


def _read_csv(path: Path, cfg: DataConfig) -> Iterator[_Item]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # documents are longer than csv's 128 KiB default
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        _pick_column(reader.fieldnames or [], cfg.text_column, str(path), tokens_ok=False)
        yield from _record_items(reader, str(path), cfg.text_column)


def _read_parquet(path: Path, cfg: DataConfig) -> Iterator[_Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise FeatgraphError(f"{path} cannot be read as a Parquet file ({_first_line(e)}); fix or re-write it") from None
    column = _pick_column(pf.schema_arrow.names, cfg.text_column, str(path))
    for batch in pf.iter_batches(batch_size=1024, columns=[column]):
        yield from _record_items(({column: v} for v in batch.column(0).to_pylist()), str(path), cfg.text_column)


def _read_npy(path: Path, cfg: DataConfig) -> Iterator[_Item]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise FeatgraphError(f"{path} cannot be read as a token array ({e}); save an integer array with np.save") from None
    yield from _array_items(array.shape, lambda a, b: np.asarray(array[a:b]), str(path), str(array.dtype))


def _read_safetensors(path: Path, cfg: DataConfig) -> Iterator[_Item]:
    from safetensors import SafetensorError, safe_open

    try:
        f = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise FeatgraphError(f"{path} cannot be read as a safetensors file ({_first_line(e)}); save the tokens with safetensors' save_file") from None
    with f:
        keys = list(f.keys())
        named = [k for k in TOKEN_TENSOR_NAMES if k in keys]
        if len(keys) != 1 and not named:
            raise FeatgraphError(f"{path} holds tensors {', '.join(keys) or '(none)'}; save a single token tensor or one named input_ids or tokens")
        sl = f.get_slice(keys[0] if len(keys) == 1 else named[0])
        yield from _array_items(tuple(sl.get_shape()), lambda a, b: sl[a:b].numpy(), str(path), sl.get_dtype())


def _array_items(shape: Sequence[int], read: Callable[[int, int], np.ndarray], where: str, dtype: str) -> Iterator[_Item]:
    """Items of a 2-D (rows) or 1-D (flat stream) integer array, read in slices ``read(start, stop)`` of the first axis."""
    if not re.fullmatch(r"u?int\d*|[ui]\d+", dtype.lower()):  # numpy "int64", safetensors "I64"
        raise FeatgraphError(f"{where} holds {dtype} values, not integer token ids; save the tokens as an integer array")
    if len(shape) == 2:
        for start in range(0, shape[0], 1024):
            for row in read(start, start + 1024).tolist():
                yield _Row(row)
    elif len(shape) == 1:
        for start in range(0, shape[0], 1 << 20):
            yield _Ids(read(start, start + (1 << 20)).tolist(), end=False)
    else:
        raise FeatgraphError(f"{where} is a {len(shape)}-D array; token arrays are 2-D (rows) or 1-D (a token stream)")


_READERS: dict[str, Callable[[Path, DataConfig], Iterator[_Item]]] = {
    ".txt": _read_txt, ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
    ".npy": _read_npy, ".safetensors": _read_safetensors,
}


# ---- records (tables and datasets) --------------------------------------------------------------

def _pick_column(columns: Sequence[str], text_column: str, where: str, tokens_ok: bool = True) -> str:
    """``text_column`` if present, else ``input_ids`` (pre-tokenised); otherwise one error naming the columns."""
    if text_column in columns:
        return text_column
    if tokens_ok and TOKEN_COLUMN in columns:
        return TOKEN_COLUMN
    raise FeatgraphError(f"{where} has no column {text_column!r} (columns: {', '.join(map(str, columns)) or 'none'}); pass --text-column with one of them")


def _record_items(records: Iterable[Any], where: str, text_column: str) -> Iterator[_Item]:
    """Items of records (dicts, or bare strings as documents); the column is chosen from the first dict."""
    column = None
    for n, rec in enumerate(records, 1):
        if isinstance(rec, str):
            value, column_here = rec, text_column
        elif isinstance(rec, dict):
            column = column or _pick_column(list(rec), text_column, where)
            if column not in rec:
                raise FeatgraphError(f"record {n} of {where} has no column {column!r} (it has: {', '.join(map(str, rec))}); give every record that column")
            value, column_here = rec[column], column
        else:
            raise FeatgraphError(f"record {n} of {where} is a {type(rec).__name__}; records are objects with a {text_column!r} field or strings")
        if value is None:
            continue
        if isinstance(value, str):
            if value.strip():
                yield _Text(value)
        elif column_here == TOKEN_COLUMN and hasattr(value, "__len__") and not isinstance(value, (bytes, dict)):
            yield _Row([int(t) for t in value])
        else:
            raise FeatgraphError(f"record {n} of {where}: column {column_here!r} holds a {type(value).__name__}, not text"
                                 f"{' or token ids' if column_here == TOKEN_COLUMN else ''}; pass the text column with --text-column")


def _dataset_items(ds: Any, where: str, cfg: DataConfig) -> Iterator[_Item]:
    columns = getattr(ds, "column_names", None)
    if columns:
        column = _pick_column(columns, cfg.text_column, where)
        ds = ds.select_columns([column])
    try:
        yield from _record_items(iter(ds), where, cfg.text_column)
    except _fetch_errors() as e:
        raise FeatgraphError(f"reading {where} failed ({_first_line(e)}); check the network or pass a local file") from None


def _saved_dataset(path: Path, cfg: DataConfig) -> _Source:
    import datasets

    ds = datasets.load_from_disk(str(path))
    label = f"saved dataset {path}"
    if isinstance(ds, datasets.DatasetDict):
        if cfg.data_split not in ds:
            raise FeatgraphError(f"saved dataset {path} has no split {cfg.data_split!r} (splits: {', '.join(ds)}); pass --data-split with one of them")
        ds, label = ds[cfg.data_split], f"{label} (split {cfg.data_split})"
    return _Source(label, lambda: _dataset_items(ds, label, cfg))


def _hub_dataset(name: str, cfg: DataConfig) -> _Source:
    """A HuggingFace dataset by name: streamed online; offline (or hub unreachable) read from the local cache."""
    import datasets

    reason = _offline_reason()
    label = f"dataset {name}" + (f" ({cfg.data_config})" if cfg.data_config else "") + f" split {cfg.data_split}"
    try:
        with _datasets_offline(reason is not None):
            ds = datasets.load_dataset(name, cfg.data_config, split=cfg.data_split, streaming=reason is None)
    except (*_fetch_errors(), ValueError) as e:
        if reason is not None and not isinstance(e, ValueError):  # ValueError: a wrong split or config of a cached dataset
            raise FeatgraphError(f"dataset {name!r} could not be loaded offline: it is not in the HuggingFace datasets cache and {reason}; "
                                 "download it once with network access, or pass a local file or folder (.txt, .jsonl, .parquet, ...)") from None
        raise FeatgraphError(f"dataset {name!r} could not be loaded ({_first_line(e)}); check the name, --data-config and --data-split, "
                             "or pass a local file (with no network, set HF_DATASETS_OFFLINE=1 to read the cache)") from None
    return _Source(label, lambda: _dataset_items(ds, label, cfg))


def _offline_reason() -> str | None:
    if os.environ.get("HF_DATASETS_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_DATASETS_OFFLINE is set"
    return _hub_offline_reason()


@contextlib.contextmanager
def _datasets_offline(enabled: bool) -> Iterator[None]:
    """Put huggingface_hub and datasets (which read their flags at import) in offline mode for a while."""
    if not enabled:
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    flags = [(constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")]
    saved = [(module, attr, getattr(module, attr)) for module, attr in flags if hasattr(module, attr)]
    for module, attr, _ in saved:
        setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


# ---- tokenising and packing ---------------------------------------------------------------------

def _special_ids(tokenizer: Any) -> tuple[int, int]:
    """(BOS, EOS) ids: BOS falls back to EOS and EOS to BOS."""
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if bos is None and eos is None:
        raise FeatgraphError("the model's tokenizer has neither a BOS nor an EOS token; give the model a tokenizer with one")
    return (eos if bos is None else bos), (bos if eos is None else eos)


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


class _Packer:
    """Rows of ``BOS + (T − 1)`` tokens cut from a stream of documents, EOS after each document."""

    def __init__(self, context_size: int, bos: int, eos: int):
        self.T, self.bos, self.eos = context_size, bos, eos
        self._buf: list[int] = []

    def feed(self, ids: Sequence[int], end: bool) -> list[list[int]]:
        buf, body = self._buf, self.T - 1
        buf.extend(ids)
        if end:
            buf.append(self.eos)
        n = len(buf) // body
        rows = [[self.bos, *buf[i * body:(i + 1) * body]] for i in range(n)]
        del buf[: n * body]
        return rows

    def row(self, ids: Sequence[int]) -> list[list[int]]:
        ids = list(ids)
        if not ids:
            return []
        if ids[0] != self.bos:
            ids.insert(0, self.bos)
        if len(ids) >= self.T:
            return [ids[: self.T]]
        return self.feed(ids[1:], end=True)


class _Stats:
    def __init__(self) -> None:
        self.documents = self.tokens = 0


def _pack_items(items: Iterable[_Item], tokenizer: Any, context_size: int, max_rows: int, stats: _Stats) -> Iterator[list[int]]:
    """At most ``max_rows`` rows (lists of ``context_size`` ids) from ``items``, text tokenised in batches."""
    bos, eos = _special_ids(tokenizer)
    packer = _Packer(context_size, bos, eos)
    made = 0
    pending: list[_Text] = []
    chars = 0
    if max_rows <= 0:
        return

    def rows_of(item: _Item, ids: Sequence[int] | None = None) -> list[list[int]]:
        if isinstance(item, _Row):
            stats.documents += 1
            stats.tokens += len(item.ids)
            return packer.row(item.ids)
        ids = item.ids if ids is None else ids
        stats.documents += item.end
        stats.tokens += len(ids)
        return packer.feed(ids, item.end)

    def flush() -> Iterator[list[int]]:
        texts = [p.text for p in pending]
        for item, ids in zip(pending, _tokenize(tokenizer, texts) if texts else []):
            yield from rows_of(item, ids)
        pending.clear()

    def flat() -> Iterator[list[int]]:
        nonlocal chars
        for item in items:
            if isinstance(item, _Text):
                pending.append(item)
                chars += len(item.text)
                budget = min(BATCH_CHARS, max(4096, 8 * (max_rows - made) * context_size))
                if chars >= budget or len(pending) >= 1024:
                    yield from flush()
                    chars = 0
            else:
                yield from flush()
                yield from rows_of(item)
        yield from flush()

    for row in flat():
        yield row
        made += 1
        if made >= max_rows:
            return


def pack_documents(docs: Iterable[str] | Iterable[Sequence[int]], tokenizer: Any, context_size: int, max_tokens: int) -> Iterator[torch.Tensor]:
    """Rows ``(context_size,)`` int64 of BOS + tokens of ``docs`` (strings, or token-id lists), EOS after each document.

    A document longer than a row continues in the next row; the last partial row is dropped; at most
    ``max_tokens // context_size`` rows.

    >>> class Chars:  # a tokenizer whose tokens are character codes; BOS 1, EOS 2
    ...     bos_token_id, eos_token_id = 1, 2
    ...     def __call__(self, texts, **kw):
    ...         return {"input_ids": [[ord(c) for c in t] for t in texts]}
    >>> [r.tolist() for r in pack_documents(["ab", "cde"], Chars(), context_size=4, max_tokens=100)]
    [[1, 97, 98, 2], [1, 99, 100, 101]]
    """
    items = (_Text(d) if isinstance(d, str) else _Ids(list(d)) for d in docs)
    for row in _pack_items(items, tokenizer, context_size, max_tokens // context_size, _Stats()):
        yield torch.tensor(row, dtype=torch.long)


# ---- public entry points ------------------------------------------------------------------------

def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """Streamed text documents of ``cfg.data`` (a large .txt file comes in pieces of whole lines)."""
    if cfg.data is None or cfg.data in DATA_PROVIDERS:
        raise FeatgraphError(f"--data {cfg.data!r} is not a text source; pass a file, folder, glob pattern or dataset name")
    source = _resolve(cfg.data, cfg)
    for item in source.items():
        if not isinstance(item, _Text):
            raise FeatgraphError(f"{source.label} is pre-tokenised, not text; read it with load_token_rows")
        if item.text:
            yield item.text


def load_token_rows(cfg: DataConfig, model: Any, *, seed: int = 0, size: str = "default", progress: bool = False) -> TokenRows:
    """Read ``cfg.data`` into token rows for ``model`` (a HookedTransformer) and split off validation rows.

    Same inputs and ``seed`` give identical rows and the same split. ``size`` is passed to data providers.
    """
    name = cfg.data if cfg.data is not None else _default_data(model)
    T = cfg.context_size or min(DEFAULT_CONTEXT, model.cfg.n_ctx)
    if T > model.cfg.n_ctx:
        raise FeatgraphError(f"--context-size {T} is longer than the model's context of {model.cfg.n_ctx} tokens; pass at most {model.cfg.n_ctx}")
    max_tokens = cfg.max_tokens if cfg.max_tokens is not None else DEFAULT_MAX_TOKENS
    max_rows = max_tokens // T
    if max_rows < 2:
        raise FeatgraphError(f"--max-tokens {max_tokens} gives fewer than 2 rows of {T} tokens; raise it to at least {2 * T}")

    if name in DATA_PROVIDERS:
        out = DATA_PROVIDERS.get(name)(cfg, model, seed=seed, size=size, progress=progress)
        if isinstance(out, TokenRows):
            log.info("data provider %s: %s", name, out.source)
            return out
        source = _Source(f"data provider {name}", lambda: (_Text(d) if isinstance(d, str) else _Ids(list(d)) for d in out))
    else:
        source = _resolve(name, cfg)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise FeatgraphError(f"model {model.cfg.model_name!r} has no tokenizer to read {source.label}; save one beside its config.json")

    log.info("reading %s", source.label)
    stats = _Stats()
    bar = tqdm(total=max_rows, unit="row", desc="reading data", disable=not progress, leave=False)
    blocks: list[torch.Tensor] = []  # (≤ ROW_BLOCK, T) int64 each: the rows, without a Python list per row
    block: list[list[int]] = []
    for row in _pack_items(source.items(), tokenizer, T, max_rows, stats):
        block.append(row)
        if len(block) == ROW_BLOCK:
            blocks.append(torch.tensor(block, dtype=torch.long))
            block = []
        bar.update()
    bar.close()
    if block:
        blocks.append(torch.tensor(block, dtype=torch.long))
    n_rows = sum(len(b) for b in blocks)
    if n_rows < 2:
        what = "no text" if stats.tokens == 0 else f"{stats.tokens:,} tokens, {n_rows} row(s) of {T}"
        raise FeatgraphError(f"{source.label} gives {what}; at least 2 rows are needed: give more data or lower --context-size")
    rows_NT = torch.cat(blocks)  # (N, T)
    _check_vocab(rows_NT, model.cfg.d_vocab, source.label)
    train_NT, val_NT = _split(rows_NT, cfg.val_fraction, seed)
    description = f"{source.label} ({rows_NT.numel():,} tokens in {n_rows:,} rows of {T})"
    log.info("read %s: %d documents, %d tokens → %d rows of %d (%d train, %d validation)%s", source.label, stats.documents,
             stats.tokens, n_rows, T, len(train_NT), len(val_NT), "; stopped at --max-tokens" if n_rows == max_rows else "")
    return TokenRows(train_NT, val_NT, description)


def _default_data(model: Any) -> str:
    if getattr(model.cfg, "model_name", None) == EMBEDDED_MODEL_NAME:
        return "embedded"
    known = ", ".join(DATA_PROVIDERS.names()) or "none registered"
    raise FeatgraphError(f"model {model.cfg.model_name!r} has no default data; pass --data with a file, folder, glob pattern, "
                         f"HuggingFace dataset or data provider ({known})")


def _check_vocab(rows_NT: torch.Tensor, d_vocab: int, label: str) -> None:
    bad = (rows_NT < 0) | (rows_NT >= d_vocab)
    if bad.any():
        value = rows_NT[bad][0].item()
        raise FeatgraphError(f"token id {value} in {label} is outside the model's vocabulary of {d_vocab}; "
                             "the tokens were made by another tokenizer: use the matching model or give text")


def _split(rows_NT: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random choice of max(1, ⌊N · val_fraction⌋) validation rows; both parts keep the reading order."""
    n = rows_NT.shape[0]
    n_val = min(n - 1, max(1, int(n * val_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[perm[:n_val]] = True
    return rows_NT[~is_val], rows_NT[is_val]
