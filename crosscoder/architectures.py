"""The registry of crosscoder architectures: name → :class:`~crosscoder.crosscoder.Crosscoder` subclass.

An architecture is one module with one class (its ``name``, its typed ``Options``, its encoder and loss, and the
hooks the generic code calls) plus one entry point. featgraph's own are declared in ``pyproject.toml``::

    [project.entry-points."featgraph.architectures"]
    relu = "crosscoder.relu:ReLUCrosscoder"

and a third party adds its own the same way, or at run time with ``ARCHITECTURES.register("mine", MyCrosscoder)``.
Entry points load on first use, so this module imports nothing but the registry: :mod:`crosscoder.config`
validates ``architecture`` and fills ``options`` through it without importing any architecture module.
"""

from __future__ import annotations

from typing import Any

from .registry import Registry

__all__ = ["ARCHITECTURES"]

ARCHITECTURES: Registry[Any] = Registry("architecture", "featgraph.architectures")
"""Architecture name → its Crosscoder subclass (``ARCHITECTURES.get(name)``, ``ARCHITECTURES.names()``)."""
