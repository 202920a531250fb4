"""Build the crosscoder a config names, through the registry of architectures."""

from __future__ import annotations

from .architectures import ARCHITECTURES
from .config import CrosscoderConfig
from .crosscoder import Crosscoder

__all__ = ["build_crosscoder", "ARCHITECTURES"]


def build_crosscoder(cfg: CrosscoderConfig) -> Crosscoder:
    """A freshly initialised crosscoder of ``cfg.architecture`` (in training mode, as a new ``nn.Module`` is)."""
    return ARCHITECTURES.get(cfg.architecture)(cfg)
