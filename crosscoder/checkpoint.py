"""Training checkpoints that resume bit-identically, with nothing pickled.

A checkpoint folder ``<dir>/step-000123/`` holds the crosscoder (cfg.json + safetensors), the optimiser's tensors
(``optimizer.safetensors``) and scalars, the data source's state (``data.safetensors`` + JSON: e.g. the shuffled
buffer's pool, pointer and generator state) and the trainer's step and history (``trainer.json``). Each is
written to a temporary folder and renamed; ``<dir>/latest`` (a one-line text file, itself replaced atomically)
names the newest complete one, so a run killed at any instant resumes from a whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .crosscoder import Crosscoder
from .errors import FeatgraphError
from .io import atomic_dir, atomic_file, load_crosscoder, save_crosscoder

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "Checkpoint"]


def _split_state(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Nested dict → (flat tensors keyed 'a.b.c', the JSON-able rest with the same nesting)."""
    tensors, rest = {}, {}
    for k, v in state.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            tensors[key] = v.detach().cpu().contiguous()
            rest[str(k)] = {"__tensor__": key}
        elif isinstance(v, dict):
            t, r = _split_state(v, key + ".")
            tensors.update(t)
            rest[str(k)] = {"__dict__": r, "__int_keys__": all(isinstance(x, int) for x in v)}
        else:
            rest[str(k)] = v
    return tensors, rest


def _join_state(rest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[Any, Any] = {}
    for k, v in rest.items():
        if isinstance(v, dict) and "__tensor__" in v:
            out[k] = tensors[v["__tensor__"]]
        elif isinstance(v, dict) and "__dict__" in v:
            inner = _join_state(v["__dict__"], tensors)
            out[k] = {int(a): b for a, b in inner.items()} if v["__int_keys__"] else inner
        else:
            out[k] = v
    return out


def _save_state(state: dict[str, Any], folder: Path, name: str) -> None:
    tensors, rest = _split_state(state)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(rest))


def _load_state(folder: Path, name: str) -> dict[str, Any]:
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _join_state(json.loads((folder / f"{name}.json").read_text()), tensors)


class Checkpoint:
    """What :func:`load_checkpoint` returns: the crosscoder and the states to restore."""

    def __init__(self, cc: Crosscoder, optimizer: dict, data: dict | None, trainer: dict, path: Path):
        self.cc, self.optimizer, self.data, self.trainer, self.path = cc, optimizer, data, trainer, path


def save_checkpoint(
    root: str | os.PathLike, step: int, cc: Crosscoder, optimizer: torch.optim.Optimizer, data_state: dict | None,
    trainer_state: dict, keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root``, point ``latest`` at it, keep the newest ``keep``."""
    root = Path(root)
    target = root / f"step-{step:09d}"
    with atomic_dir(target) as tmp:
        save_crosscoder(cc, tmp / "crosscoder")
        _save_state(optimizer.state_dict(), tmp, "optimizer")
        if data_state is not None:
            _save_state(data_state, tmp, "data")
        (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "step": step}))
    with atomic_file(root / "latest") as tmp:
        tmp.write_text(target.name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "trainer.json").is_file() else None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not (path / "trainer.json").is_file():
        raise FeatgraphError(f"{path} is not a training checkpoint (no trainer.json); pass a step-* folder or its parent")
    cc = load_crosscoder(path / "crosscoder", device=device)
    data = _load_state(path, "data") if (path / "data.safetensors").is_file() else None
    return Checkpoint(cc, _load_state(path, "optimizer"), data, json.loads((path / "trainer.json").read_text()), path)
