"""Studies as plug-ins: a study is a typed config, a runner and a summary, registered by name.

``featgraph study NAME`` builds its flags from the study's config dataclass (and the data options every command
takes), runs it and prints its summary. Studies are found through the ``featgraph.studies`` entry points, so a third
party adds one in its own ``pyproject.toml`` without editing featgraph::

    [project.entry-points."featgraph.studies"]
    mystudy = "my_package.study:STUDY"      # a featgraph.studies.Study
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from crosscoder.registry import Registry

__all__ = ["Study", "STUDIES"]


@dataclass(frozen=True)
class Study:
    """A registered study. ``run`` and ``summary_lines`` may be ``"module:function"`` strings, imported only when the
    study runs, so that listing the studies and building their flags stays cheap."""

    config: type
    """Its config dataclass (fields documented: they become the command's flags)."""
    run: Callable[..., dict] | str
    """``run(cfg, data=DataConfig) -> report`` (JSON-able); writes its own files under the config's output folder."""
    summary_lines: Callable[[dict], list[str]] | str
    """The printed summary of a report."""
    help: str = ""
    """One line for ``featgraph study --help``."""

    def runner(self) -> Callable[..., dict]:
        return _resolve(self.run)

    def summarise(self, report: dict) -> list[str]:
        return _resolve(self.summary_lines)(report)


def _resolve(target: Callable | str) -> Callable:
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


STUDIES: Registry[Any] = Registry("study", "featgraph.studies")
