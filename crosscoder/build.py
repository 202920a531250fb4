"""Build the crosscoder a config names: one registry of architectures."""

from __future__ import annotations

from .batchtopk import BatchTopKCrosscoder
from .config import CrosscoderConfig
from .crosscoder import Crosscoder
from .jumprelu import JumpReLUCrosscoder
from .relu import ReLUCrosscoder

__all__ = ["build_crosscoder", "ARCHITECTURES"]

ARCHITECTURES: dict[str, type[Crosscoder]] = {
    "relu": ReLUCrosscoder,
    "batchtopk": BatchTopKCrosscoder,
    "jumprelu": JumpReLUCrosscoder,
}


def build_crosscoder(cfg: CrosscoderConfig) -> Crosscoder:
    """A freshly initialised crosscoder of ``cfg.architecture``."""
    return ARCHITECTURES[cfg.architecture](cfg)
