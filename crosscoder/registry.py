"""Registries of pluggable things: architectures, model providers, data providers, studies.

A registry maps a name to an object. Entries come from two places:

* ``registry.register(name, obj)`` (or ``@registry.register(name)`` as a decorator) at import time, and
* Python entry points in the registry's group, e.g. in a third party's ``pyproject.toml``::

      [project.entry-points."featgraph.architectures"]
      mine = "my_package.my_module:MyCrosscoder"

  An entry point is loaded only when its name is looked up (or when every name is listed), so a heavy
  optional dependency costs nothing until it is used. featgraph's own built-ins are registered the same way
  (``pyproject.toml``), so adding one never edits a list in another file.

A missing name is one :class:`~crosscoder.errors.FeatgraphError` line that lists what is available.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from .errors import FeatgraphError

__all__ = ["Registry"]

T = TypeVar("T")
log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """Name → object, filled by :meth:`register` and by the entry points of ``group``.

    >>> colours = Registry("colour", group="featgraph.test-colours")
    >>> colours.register("red", "#f00")
    '#f00'
    >>> colours.get("red")
    '#f00'
    >>> "red" in colours, colours.names()
    (True, ['red'])
    """

    def __init__(self, kind: str, group: str):
        self.kind = kind
        """What an entry is, for messages (``architecture``, ``data provider``)."""
        self.group = group
        """Entry-point group whose entries are loaded on demand."""
        self._entries: dict[str, T] = {}
        self._points: dict[str, object] | None = None

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` (a later registration replaces an earlier one); without ``obj``, a decorator."""
        if obj is None:
            def decorate(o: T) -> T:
                self._entries[name] = o
                return o

            return decorate
        self._entries[name] = obj
        return obj

    def _entry_points(self) -> dict[str, object]:
        if self._points is None:
            self._points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._points

    def _load(self, name: str) -> bool:
        ep = self._entry_points().get(name)
        if ep is None:
            return False
        try:
            self._entries[name] = ep.load()
        except ImportError as e:
            raise FeatgraphError(f"{self.kind} {name!r} is registered by {ep.value} but does not import ({e}); install what it needs") from None
        return True

    def get(self, name: str) -> T:
        """The entry called ``name``, loading its entry point if needed; a clear error when there is none."""
        if name not in self._entries and not self._load(name):
            known = ", ".join(self.names()) or "none"
            raise FeatgraphError(f"unknown {self.kind} {name!r}; choose one of: {known}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._entry_points())

    def names(self) -> list[str]:
        """Every registered name, sorted (entry points included, not loaded)."""
        return sorted(set(self._entries) | set(self._entry_points()))

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) for every name that loads, loading the entry points; an installed plug-in that does not import
        is skipped with a warning here (and says why when it is asked for by name), so one broken plug-in does not
        break every command."""
        for name in self.names():
            try:
                entry = self.get(name)
            except FeatgraphError as e:
                log.warning("skipping %s: %s", self.kind, e)
                continue
            yield name, entry
