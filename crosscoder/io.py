"""Save and load a crosscoder as a folder: ``cfg.json`` + ``crosscoder.safetensors``.

Nothing is pickled. The normalisation scales travel in the safetensors file, so a loaded crosscoder works on
raw activations. Writes go to a temporary sibling folder that is renamed into place, so an interrupted save
never leaves a half-written crosscoder behind. A loaded crosscoder is in eval mode, so it encodes at inference
(BatchTopK: its learned threshold, a token's features independent of its batch-mates); training puts it back in
training mode (:func:`crosscoder.train.train_crosscoder`).

This module reads and writes the format; the crosscoder classes know nothing of files (one import direction:
io → build → architectures).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .build import build_crosscoder
from .config import CrosscoderConfig
from .crosscoder import Crosscoder
from .errors import FeatgraphError

__all__ = ["save_crosscoder", "load_crosscoder", "atomic_dir", "atomic_file", "strict_json", "FORMAT_NAME"]

FORMAT_NAME = "featgraph.crosscoder"
FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "crosscoder.safetensors"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target`` whole."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FeatgraphError(f"output path {target} is a file, not a folder; pass a folder path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a saved folder gets normal permissions
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``."""
    target = Path(target)
    if target.is_dir():
        raise FeatgraphError(f"output path {target} is a folder, not a file; pass a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_crosscoder(cc: Crosscoder, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``cc`` to ``folder`` (replaced atomically); ``extra`` (JSON-able, e.g. metrics) goes into cfg.json."""
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "architecture": cc.cfg.architecture,
        "config": cc.cfg.to_dict(),
        "lineage": list(getattr(cc, "lineage", [])),
        "extra": extra or {},
    }
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous() for k, v in cc.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(strict_json(meta), indent=2, allow_nan=False))
    return Path(folder)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, so the JSON written is strict (no bare ``NaN``,
    which ``JSON.parse`` rejects): a missing value is ``null`` — e.g. the latent-scaling β of a feature that never fired.

    >>> strict_json({"beta": [1.0, float("nan")], "x": float("inf")})
    {'beta': [1.0, None], 'x': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def load_json_file(path: Path, fix: str) -> Any:
    """Parse a JSON file; a syntax error becomes one line naming the file, the place and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise FeatgraphError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None


def load_safetensors_file(path: Path, what: str, incomplete_fix: str, corrupt_fix: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or unreadable file becomes one line naming ``what`` and the fix."""
    if not path.is_file():
        raise FeatgraphError(f"{path} is missing; {incomplete_fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FeatgraphError(f"{what} {path} are truncated or corrupt ({e}); {corrupt_fix}") from None


def read_crosscoder_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed cfg.json of a crosscoder folder, checked for format."""
    folder = Path(folder)
    cfg_path = folder / CFG_FILE
    if not folder.is_dir() or not cfg_path.is_file():
        raise FeatgraphError(f"{folder} is not a crosscoder folder (no {CFG_FILE}); pass a folder written by `featgraph demo` or save_crosscoder")
    meta = load_json_file(cfg_path, "re-save the crosscoder")
    if meta.get("format") != FORMAT_NAME:
        raise FeatgraphError(f"{cfg_path} is not a featgraph crosscoder config (format={meta.get('format')!r})")
    return meta


def load_crosscoder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Crosscoder:
    """Load a crosscoder saved by :func:`save_crosscoder`, checking that weights match the config; in eval mode."""
    folder = Path(folder)
    meta = read_crosscoder_meta(folder)
    cc = build_crosscoder(CrosscoderConfig.from_dict(meta["config"]))
    weights_path = folder / WEIGHTS_FILE
    state = load_safetensors_file(weights_path, "crosscoder weights", "the crosscoder folder is incomplete — re-save it",
                                  "re-save or re-train it")
    expected = {k: tuple(v.shape) for k, v in cc.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise FeatgraphError(f"crosscoder weights {weights_path} do not match cfg.json (expected {expected}, found {got}); the folder mixes two crosscoders")
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise FeatgraphError(f"crosscoder weights {weights_path} contain NaN or inf; the run that wrote them diverged — re-train with a lower lr")
    cc.load_state_dict(state)
    cc.lineage = list(meta.get("lineage", []))
    return cc.eval().to(device)
