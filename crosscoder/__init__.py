"""crosscoder: sparse dictionaries over a language model's activations — models and data in, trained crosscoders out.

The names a user needs, importable from here (``import crosscoder as cc``); each loads its module on first use, so
``import crosscoder`` stays cheap::

    inputs = cc.load_inputs(cc.ModelConfig("gpt2"), cc.DataConfig("my_text.jsonl"))
    cfg = cc.CrosscoderConfig(cc.default_hookpoints(inputs.model.cfg.n_layers), inputs.model.cfg.d_model, 4096)
    result = cc.fit(inputs.model, inputs.rows, cc.TrainConfig(steps=2000), cc_cfg=cfg, out="my_crosscoder")
"""

from __future__ import annotations

import importlib
from typing import Any

# Names that are also submodules (harvest, model_diff) are not exported: importing the submodule would replace them.
_EXPORTS = {
    "ModelConfig": "sources", "load_inputs": "sources", "load_multi_inputs": "sources", "load_model_spec": "sources",
    "MODEL_PROVIDERS": "sources",
    "load_model": "model_loading",
    "DataConfig": "data", "TokenRows": "data", "load_token_rows": "data", "DATA_PROVIDERS": "data",
    "CrosscoderConfig": "config", "TrainConfig": "config", "default_hookpoints": "config", "resolve_device": "config",
    "FitConfig": "config", "FitResult": "fitting", "fit": "fitting",
    "Crosscoder": "crosscoder", "build_crosscoder": "build", "ARCHITECTURES": "build",
    "save_crosscoder": "io", "load_crosscoder": "io",
    "evaluate": "metrics", "CrosscoderMetrics": "metrics",
    "feature_activations": "apply", "stack_feature_activations": "apply",
    "ActivationBuffer": "harvest",
    "train_crosscoder": "train", "finetune_crosscoder": "train",
    "latent_scaling": "model_diff", "model_feature_activations": "model_diff",
    "save_saelens": "saelens", "load_saelens": "saelens",
    "truncate": "matryoshka", "prefix_metrics": "matryoshka", "absorption_report": "absorption",
    "combine_crosscoders": "residual", "residual_of": "residual", "train_residual_rounds": "fitting",
    "Registry": "registry",
    "FeatgraphError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crosscoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
