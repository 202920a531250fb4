"""Deterministic kernels for the length of a block (global torch state, so only inside a context manager).

On the CPU, some backward kernels (the embedding gradient's scatter-add among them) accumulate in a
thread-dependent order, so two runs with one seed drift apart at the 1e-8 level and a graph built from them
can gain or lose an edge. Training runs inside :func:`deterministic_algorithms`, which costs ~5 % here.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["deterministic_algorithms"]


@contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
