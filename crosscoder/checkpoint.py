"""Training checkpoints that resume bit-identically, with nothing pickled.

A checkpoint folder ``<dir>/step-000123/`` holds the crosscoder (cfg.json + safetensors), the optimiser's tensors
(``optimizer.safetensors``) and scalars, each rank's data-source state (``data-rank0.safetensors`` + JSON: e.g. the
shuffled buffer's pool, pointer and generator state) and the trainer's step and history (``trainer.json``). It is
written to a hidden temporary folder and renamed; ``<dir>/latest`` (a one-line text file, itself replaced
atomically) names the newest complete one, so a run killed at any instant resumes from a whole checkpoint. Under
torch.distributed every rank writes its own data state and rank 0 the rest, with barriers between.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .crosscoder import Crosscoder
from .errors import FeatgraphError
from .io import apply_umask, atomic_file, load_crosscoder, save_crosscoder

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


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    root: str | os.PathLike, step: int, cc: Crosscoder, optimizer: torch.optim.Optimizer, data_state: dict | None,
    trainer_state: dict, keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root``, point ``latest`` at it, keep the newest ``keep``."""
    root = Path(root)
    rank, world = _rank_world()
    target, tmp = root / f"step-{step:09d}", root / f".step-{step:09d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if data_state is not None:
        _save_state(data_state, tmp, f"data-rank{rank}")
    if rank == 0:
        save_crosscoder(cc, tmp / "crosscoder")
        _save_state(optimizer.state_dict(), tmp, "optimizer")
        (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "step": step, "world_size": world}))
    _barrier()
    if rank == 0:
        apply_umask(tmp)  # safetensors writes 0600
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        with atomic_file(root / "latest") as pointer:
            pointer.write_text(target.name + "\n")
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return target


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "trainer.json").is_file() else None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint at ``path`` (a ``step-*`` folder); its crosscoder comes in eval mode, like any loaded one
    (training puts the crosscoder it restores into back in training mode)."""
    path = Path(path)
    if not (path / "trainer.json").is_file():
        raise FeatgraphError(f"{path} is not a training checkpoint (no trainer.json); pass a step-* folder or its parent")
    trainer = json.loads((path / "trainer.json").read_text())
    rank, world = _rank_world()
    if trainer.get("world_size", 1) != world:
        raise FeatgraphError(f"checkpoint {path} was written by {trainer.get('world_size', 1)} processes; resume with the same number (now {world})")
    cc = load_crosscoder(path / "crosscoder", device=device)
    name = f"data-rank{rank}"
    data = _load_state(path, name) if (path / f"{name}.safetensors").is_file() else None
    return Checkpoint(cc, _load_state(path, "optimizer"), data, trainer, path)
