"""An on-disk activation cache: harvest once, train many times.

Layout of a cache folder::

    meta.json                   hookpoints, d_model, tokens per row, dtype, shard sizes, model name, complete flag
    shard-00000.bin ...         raw little-endian arrays (rows, T−1, L, D), memory-mapped when read

Each shard is written to a temporary name and renamed, so a harvest that is interrupted resumes at the first
missing shard (:func:`write_activation_cache` skips the shards already there). Reading memory-maps the shards and
serves whole sequences (rows) in any order, so :class:`~crosscoder.harvest.ActivationBuffer` shuffles across
sequences exactly as it does when it runs the model.
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

__all__ = ["write_activation_cache", "ActivationCache"]

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
    N, T = tokens_NT.shape
    sizes = [min(rows_per_shard, N - a) for a in range(0, N, rows_per_shard)]
    meta = {"format": "featgraph.activation_cache", "version": 1, "hookpoints": list(hookpoints), "d_model": model.cfg.d_model,
            "tokens_per_row": T - 1, "dtype": dtype, "shard_rows": sizes, "model_name": model.cfg.model_name, "complete": False}
    old = folder / "meta.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        if {k: prev.get(k) for k in meta if k != "complete"} != {k: v for k, v in meta.items() if k != "complete"}:
            raise FeatgraphError(f"{folder} holds a different activation cache; pass an empty folder or the same settings")
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
