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
import logging
import math
import os
import re
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

log = logging.getLogger(__name__)

__all__ = ["save_crosscoder", "load_crosscoder", "atomic_dir", "atomic_file", "strict_json", "check_output", "clean_leftovers",
           "apply_umask", "os_error_line", "record_path", "resolve_recorded", "absolute_spec",
           "check_replaceable", "FORMAT_NAME"]

FORMAT_NAME = "featgraph.crosscoder"
FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "crosscoder.safetensors"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions a plain write would: 0666/0777 less the
    user's umask. Writers that make private files (mkstemp, mkdtemp, safetensors' 0600) are undone, so a shared cache
    or a colleague's crosscoder stays readable."""
    mask = _umask()
    path = Path(path)
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:-.*)?$")


def clean_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left beside ``target``: its hidden ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` siblings whose
    process is gone (a live writer's are kept, so two runs on one place do not break each other). The removed paths."""
    target = Path(target)
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = _LEFTOVER.match(p.name)
        if m is None or m["name"] != target.name or _alive(int(m["pid"])):
            continue
        if ".old-" in p.name and not target.exists():  # killed between the two renames of a swap: the old one is the copy
            os.replace(p, target)
            log.info("restored %s from %s, left by a run stopped mid-swap", target, p)
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
        log.info("removed %s, left by a run that was stopped", p)
    return removed


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(target: str | os.PathLike, *, folder: bool = True, need_bytes: int = 0, flag: str = "--out", replace: bool = True) -> Path:
    """Check, before any expensive work, that ``target`` can be written: not a file where a folder goes (or the
    reverse), its nearest existing parent is a folder we can create files in, and that parent's disk has ``need_bytes``
    free (an estimate of what the run writes, with a margin); ``replace``: an existing folder must be a featgraph output
    (:func:`check_replaceable`), as it will be replaced whole. Nothing is created. The absolute target."""
    target = Path(target).absolute()
    if target.exists() and folder and not target.is_dir():
        raise FeatgraphError(f"{flag} {target} is a file, not a folder; pass a folder path (or remove the file)")
    if folder and replace:
        check_replaceable(target, flag)
    if target.exists() and not folder and target.is_dir():
        raise FeatgraphError(f"{flag} {target} is a folder, not a file; pass a file path")
    base = _nearest_existing(target.parent)
    if not base.is_dir():
        raise FeatgraphError(f"{flag} {target}: {base} is a file, so nothing can be created under it; pass another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FeatgraphError(f"cannot write under {base} ({e.strerror.lower() if e.strerror else e}); pass a writable {flag} path") from None
    if need_bytes > 0:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise FeatgraphError(f"not enough disk space for {flag} {target}: the run writes about {_human(need_bytes)} and "
                                 f"{base} has {_human(free)} free; free some space or pass another {flag}")
    return target


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def os_error_line(e: OSError) -> str:
    """One line for an I/O error (permission, read-only, disk full, missing), naming the path and the fix."""
    import errno

    path = e.filename if e.filename is not None else ""
    what = (e.strerror or str(e)).rstrip(".").lower()
    fixes = {
        errno.ENOSPC: "free some disk space or write somewhere else (--out); nothing was left half-written",
        errno.EDQUOT: "free some space in your quota or write somewhere else (--out); nothing was left half-written",
        errno.EROFS: "that file system is read-only; write somewhere else (--out)",
        errno.EACCES: "check its permissions (it must be readable, and its folder writable for outputs) or use another path",
        errno.EPERM: "check its permissions or use another path",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
        errno.EISDIR: "it is a folder; pass a file",
        errno.ENAMETOOLONG: "use a shorter path",
        errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    }
    fix = fixes.get(e.errno, "check the path, its permissions and the free disk space")
    where = f" {path}" if path else ""
    return f"cannot access{where}: {what}; {fix}" if path else f"{what}; {fix}"


MARKER = ".featgraph"
"""A one-line file in every folder written by :func:`atomic_dir`: a later run may replace that folder whole."""
_LEGACY_OUTPUTS = ("cfg.json", "graph.json", "summary.json", "report.json", "interactions.json")


def check_replaceable(target: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse to replace an existing folder that is not a featgraph output (no marker, not empty): replacing it whole
    would delete the user's other files."""
    target = Path(target)
    if not target.is_dir():
        return
    try:
        names = set(os.listdir(target))
    except OSError:
        return  # unreadable: the write itself reports it
    if names and MARKER not in names and not names & set(_LEGACY_OUTPUTS):
        shown = ", ".join(sorted(names)[:3]) + (", …" if len(names) > 3 else "")
        raise FeatgraphError(f"{flag} {target} is a folder of other files ({shown}), which an output would replace whole; "
                             f"pass a new or empty folder")


@contextmanager
def atomic_dir(target: str | os.PathLike, *, keep: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target`` whole, so a reader sees the old
    folder or the new one, never a mix. ``keep``: the temporary folder starts as a copy of the existing ``target`` (a
    command that updates some files of a folder). Leftovers of killed runs beside ``target`` are removed first; files
    get the user's umask."""
    target = Path(os.path.abspath(target))
    if target.exists() and not target.is_dir():
        raise FeatgraphError(f"output path {target} is a file, not a folder; pass a folder path")
    if not keep:  # keep copies the folder's files over: nothing of the user's is lost
        check_replaceable(target, "output path")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        if keep and target.is_dir():
            shutil.copytree(target, tmp, dirs_exist_ok=True)
        yield tmp
        (tmp / MARKER).write_text("written by featgraph; a later run may replace this folder whole\n")
        apply_umask(tmp)  # mkdtemp makes 0700 and safetensors 0600; a saved folder gets normal permissions
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
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
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target`` (with the user's umask)."""
    target = Path(os.path.abspath(target))
    if target.is_dir():
        raise FeatgraphError(f"output path {target} is a folder, not a file; pass a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        apply_umask(tmp)  # mkstemp makes 0600
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def record_path(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """How an output written to ``folder`` records ``path`` (the one rule): relative to ``folder`` when it lies inside it
    (so the folder can be moved or copied whole and still work), absolute otherwise (so it works from any directory).

    >>> record_path("/runs/demo/crosscoder", "/runs/demo"), record_path("/data/cc", "/runs/demo")
    ('crosscoder', '/data/cc')
    """
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def resolve_recorded(recorded: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """A path recorded by :func:`record_path` in an output now in ``folder``: relative ones are read against ``folder``."""
    recorded = Path(recorded)
    return recorded if recorded.is_absolute() else Path(folder) / recorded


def absolute_spec(spec: str | None) -> str | None:
    """A model or data spec as recorded: a local path (or a glob whose folder exists) made absolute, so a later command
    run from another directory finds it; a registered name or a hub/dataset name unchanged."""
    if spec is None or not str(spec).strip():
        return spec
    spec = str(spec)
    if "=" in spec and not os.path.exists(spec):  # NAME=SPEC (--models)
        name, _, rest = spec.partition("=")
        return f"{name}={absolute_spec(rest)}"
    if os.path.exists(spec) or (any(c in spec for c in "*?[") and os.path.isdir(os.path.dirname(spec) or ".")):
        return os.path.abspath(spec)
    return spec


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
    except PermissionError:
        raise FeatgraphError(f"{path} cannot be read (permission denied); ask its owner to make it readable (chmod a+r)") from None
    except UnicodeDecodeError:
        raise FeatgraphError(f"{path} is not valid JSON (not UTF-8 text); {fix}") from None
    except json.JSONDecodeError as e:
        raise FeatgraphError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None


def load_safetensors_file(path: Path, what: str, incomplete_fix: str, corrupt_fix: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing or unreadable file becomes one line naming ``what`` and the fix."""
    if not path.is_file():
        raise FeatgraphError(f"{path} is missing; {incomplete_fix}")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise FeatgraphError(f"{what} {path} cannot be read (permission denied); ask its owner to make it readable (chmod a+r) "
                             f"or copy it somewhere you can read") from None
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
    if not isinstance(meta, dict):
        raise FeatgraphError(f"{cfg_path} holds a JSON {type(meta).__name__}, not a crosscoder config object; re-save the crosscoder")
    if meta.get("format") != FORMAT_NAME:
        raise FeatgraphError(f"{cfg_path} is not a featgraph crosscoder config (format={meta.get('format')!r})")
    return meta


def load_crosscoder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Crosscoder:
    """Load a crosscoder saved by :func:`save_crosscoder`, checking that weights match the config; in eval mode."""
    folder = Path(folder)
    meta = read_crosscoder_meta(folder)
    if not isinstance(meta.get("config"), dict):
        raise FeatgraphError(f"{folder / CFG_FILE} has no \"config\" object; the folder is damaged — re-save or re-train the crosscoder")
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
