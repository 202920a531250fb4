"""An on-disk activation cache: harvest once, train many times.

Layout of a cache folder::

    meta.json                   hookpoints, d_model, tokens per row, dtype, shard sizes, model name, complete flag
    shard-00000.bin ...         raw little-endian arrays (rows, T−1, L, D), memory-mapped when read

Each shard is written to a temporary name and renamed, so a harvest that is interrupted resumes at the first
missing shard (:func:`write_activation_cache` skips the shards already there). Reading memory-maps the shards and
serves whole sequences (rows) in any order, so :class:`~crosscoder.harvest.ActivationBuffer` shuffles across
sequences exactly as it does when it runs the model.

One process writes a cache; any number read it. Under torchrun every rank opens the finished cache with
:func:`open_activation_cache` (which checks it and never writes) and serves its own share of the rows
(:func:`~crosscoder.harvest.rank_rows`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import FeatgraphError
from .harvest import check_finite_activations, check_hookpoints, harvest
from .io import atomic_file

__all__ = ["write_activation_cache", "open_activation_cache", "ActivationCache"]

DTYPES = {"float32": np.float32, "float16": np.float16}


def _shard_path(folder: Path, i: int) -> Path:
    return folder / f"shard-{i:05d}.bin"


def write_activation_cache(
    model, tokens_NT: torch.Tensor, hookpoints: Sequence[str], folder: str | os.PathLike,
    rows_per_shard: int = 256, dtype: str = "float32", batch_size: int = 32, progress: bool = True,
) -> "ActivationCache":
    """Harvest ``hookpoints`` for every row of ``tokens_NT`` into ``folder`` (resuming if shards exist)."""
    if dtype not in DTYPES:
        raise FeatgraphError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_hookpoints(model, hookpoints)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FeatgraphError(f"cache path {folder} is a file; pass a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    meta = _expected_meta(model, tokens_NT, hookpoints, rows_per_shard, dtype)
    sizes = meta["shard_rows"]
    old = folder / "meta.json"
    if old.is_file():
        _check_same(json.loads(old.read_text()), meta, folder)
    with atomic_file(old) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    for i, n in enumerate(tqdm(sizes, desc="cache shards", disable=not progress, leave=False)):
        if _shard_path(folder, i).is_file():
            continue  # written by an earlier, interrupted run
        start = sum(sizes[:i])
        acts = torch.cat(list(harvest(model, tokens_NT[start : start + n], hookpoints, batch_size, device="cpu")))
        with np.errstate(over="ignore"):  # an overflow is reported below, by hookpoint
            stored = acts.numpy().astype(DTYPES[dtype])
        if dtype != "float32":  # the model's activations are finite (harvest checks them); the cast may overflow
            check_finite_activations(torch.from_numpy(stored), hookpoints, f"the {dtype} activation cache {folder}",
                                     fix=f"activations exceed {dtype}'s range; write the cache with dtype float32")
        with atomic_file(_shard_path(folder, i)) as tmp:
            stored.tofile(tmp)
    meta["complete"] = True
    with atomic_file(old) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return ActivationCache(folder)


def _expected_meta(model, tokens_NT: torch.Tensor, hookpoints: Sequence[str], rows_per_shard: int, dtype: str) -> dict:
    """meta.json of the cache of ``hookpoints`` of ``model`` on ``tokens_NT``, before it is complete."""
    N, T = tokens_NT.shape
    sizes = [min(rows_per_shard, N - a) for a in range(0, N, rows_per_shard)]
    return {"format": "featgraph.activation_cache", "version": 1, "hookpoints": list(hookpoints), "d_model": model.cfg.d_model,
            "tokens_per_row": T - 1, "dtype": dtype, "shard_rows": sizes, "model_name": model.cfg.model_name, "complete": False}


def _check_same(found: dict, expected: dict, folder: Path) -> None:
    differ = [k for k in expected if k != "complete" and found.get(k) != expected[k]]
    if differ:
        raise FeatgraphError(f"{folder} holds a different activation cache (its {differ[0]} differs); pass an empty folder or the same settings")


def open_activation_cache(
    model, tokens_NT: torch.Tensor, hookpoints: Sequence[str], folder: str | os.PathLike, rows_per_shard: int = 256,
    dtype: str = "float32",
) -> "ActivationCache":
    """Open the complete cache that :func:`write_activation_cache` (same arguments) wrote, never writing to it.

    For readers that must not write, such as torchrun ranks. Raises one :class:`FeatgraphError` line when the folder
    holds no complete cache or a cache of other settings (hookpoints, model, rows).
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file() or not json.loads(meta_path.read_text()).get("complete"):
        state = "is incomplete" if meta_path.is_file() else "does not exist"
        raise FeatgraphError(f"activation cache {folder} {state}; write it first in one process (the same `featgraph crosscoder "
                             f"train ... --activation-cache {folder}` without torchrun, or write_activation_cache), then launch torchrun on it")
    _check_same(json.loads(meta_path.read_text()), _expected_meta(model, tokens_NT, hookpoints, rows_per_shard, dtype), folder)
    return ActivationCache(folder)


class ActivationCache:
    """Read side: a row source for :class:`~crosscoder.harvest.ActivationBuffer` (``source=``)."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise FeatgraphError(f"{folder} is not an activation cache (no meta.json); write one with write_activation_cache")
        meta = json.loads(meta_path.read_text())
        if not meta.get("complete"):
            raise FeatgraphError(f"activation cache {folder} is incomplete; run write_activation_cache again to finish it")
        self.folder, self.meta = folder, meta
        self.hookpoints = meta["hookpoints"]
        self.n_hookpoints, self.d_model, self.tokens_per_row = len(self.hookpoints), meta["d_model"], meta["tokens_per_row"]
        self.shard_rows = meta["shard_rows"]
        self.n_rows = sum(self.shard_rows)
        self.starts = np.cumsum([0] + self.shard_rows[:-1])
        dt = DTYPES[meta["dtype"]]
        shape = lambda n: (n, self.tokens_per_row, self.n_hookpoints, self.d_model)  # noqa: E731
        self.shards = []
        for i, n in enumerate(self.shard_rows):
            path = _shard_path(folder, i)
            expected = int(np.prod(shape(n))) * np.dtype(dt).itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise FeatgraphError(f"cache shard {path} is missing or truncated; run write_activation_cache again to rewrite it")
            self.shards.append(np.memmap(path, dtype=dt, mode="r", shape=shape(n)))

    def activations(self, rows: torch.Tensor, device: str | torch.device, chunk: int = 32) -> Iterator[torch.Tensor]:
        """Activations (b·(T−1), L, D) of the given global row indices, in that order."""
        rows_np = rows.numpy()
        shard = np.searchsorted(self.starts, rows_np, side="right") - 1
        for a in range(0, len(rows_np), chunk):
            parts = [self.shards[s][r - self.starts[s]] for s, r in zip(shard[a : a + chunk], rows_np[a : a + chunk])]
            block_BLD = torch.from_numpy(np.stack(parts).astype(np.float32)).reshape(-1, self.n_hookpoints, self.d_model)
            check_finite_activations(block_BLD, self.hookpoints, f"activation cache {self.folder}",
                                     fix="the cache is corrupt; delete it and write it again with write_activation_cache")
            yield block_BLD.to(device)
