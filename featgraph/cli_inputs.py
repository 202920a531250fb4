"""What every command that runs a model shares: model and data flags, and the inputs they name.

The flags are generated from :class:`~crosscoder.sources.ModelConfig` and :class:`~crosscoder.data.DataConfig`
(:func:`featgraph.configs.add_config_arguments`), so every command takes the same ``--model``, ``--size``,
``--backend``, ``--device``, ``--data``, ``--text-column``, ``--data-split``, ``--data-config``, ``--context-size``,
``--max-tokens`` and ``--val-fraction``. A command that reads a saved crosscoder or graph starts from the model and data
recorded in it (so ``graph build --crosscoder CC`` runs on the text CC was trained on) and the flags override them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from crosscoder.data import DataConfig
from crosscoder.sources import ModelConfig

from .configs import add_config_arguments, build_config, values_from_args

__all__ = ["SavedWithInputs", "add_input_arguments", "input_configs", "load_any_crosscoder", "saved_crosscoder_and_inputs"]


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--data`` and the rest of :class:`ModelConfig` and :class:`DataConfig` in one group."""
    group = parser.add_argument_group("model and data")
    add_config_arguments(group, ModelConfig)
    add_config_arguments(group, DataConfig)


def input_configs(args: argparse.Namespace, *recorded: Mapping[str, Any], where: str = "") -> tuple[ModelConfig, DataConfig]:
    """ModelConfig and DataConfig from the ``recorded`` layers (a crosscoder's or graph's, a config file's; later
    wins), then the flags the user typed."""
    model = build_config(ModelConfig, *[r.get("model", {}) for r in recorded], values_from_args(args, ModelConfig), where=where,
                         skip_none=False)
    data = build_config(DataConfig, *[r.get("data", {}) for r in recorded], values_from_args(args, DataConfig), where=where,
                        skip_none=False)
    return model, data


def load_any_crosscoder(path: Path, device: str):
    """A featgraph crosscoder folder, or a SAELens SAE folder (a path that is neither is one line saying what it is)."""
    from crosscoder.io import load_crosscoder
    from crosscoder.saelens import crosscoder_folder_kind, load_saelens

    if crosscoder_folder_kind(path) == "featgraph":
        return load_crosscoder(path, device=device)
    return load_saelens(path, device=device)


class SavedWithInputs(NamedTuple):
    cc: Any                 # the saved crosscoder, on the device the flags (or auto) name
    inputs: Any             # crosscoder.sources.Inputs: the model and its token rows
    seed: int               # --seed, else the crosscoder's recorded run seed, else 0
    model_cfg: ModelConfig
    data_cfg: DataConfig


def saved_crosscoder_and_inputs(args: argparse.Namespace, what: str, *, any_format: bool = False, one_model: bool = True,
                                before_inputs: Callable[[Any], None] | None = None) -> SavedWithInputs:
    """What a command on a saved crosscoder (``args.crosscoder``) starts from: the crosscoder, and the model and data it
    was trained on (flags override), checked compatible. ``any_format`` also reads SAELens folders; ``one_model``
    refuses a model crosscoder in one line naming the command (``what``); ``before_inputs(cc)`` runs the command's own
    checks before the model loads."""
    from crosscoder.apply import check_compatible
    from crosscoder.config import resolve_device
    from crosscoder.errors import FeatgraphError
    from crosscoder.io import load_crosscoder
    from crosscoder.sources import load_inputs, recorded_inputs

    recorded = recorded_inputs(args.crosscoder)
    model_cfg, data_cfg = input_configs(args, recorded)
    device = resolve_device(model_cfg.device)
    cc = load_any_crosscoder(args.crosscoder, device=device) if any_format else load_crosscoder(args.crosscoder, device=device)
    if one_model and cc.cfg.models:
        raise FeatgraphError(f"{what} reads one model's activations; this is a model crosscoder (several models)")
    if before_inputs is not None:
        before_inputs(cc)
    seed = args.seed if args.seed is not None else recorded["seed"] or 0
    inputs = load_inputs(model_cfg, data_cfg, seed=seed, progress=not args.quiet)
    check_compatible(cc, inputs.model, where=f"crosscoder {args.crosscoder}")
    return SavedWithInputs(cc, inputs, seed, model_cfg, data_cfg)
