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
from typing import Any, Mapping

from crosscoder.data import DataConfig
from crosscoder.sources import ModelConfig

from .configs import add_config_arguments, build_config, values_from_args

__all__ = ["add_input_arguments", "input_configs", "load_any_crosscoder"]


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
