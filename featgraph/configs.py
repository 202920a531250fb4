"""Command-line flags and config files built from typed config dataclasses (sparsify's / simple_parsing's way).

A config is a dataclass whose fields carry a type hint and, on the line after each field, a docstring::

    @dataclass
    class TrainConfig:
        steps: int = 2000
        \"\"\"Optimiser steps.\"\"\"

From that one definition this module makes

* the flag ``--steps`` (help: the docstring and the default) with :func:`add_config_arguments`, read back with
  :func:`values_from_args` (only what the user typed);
* strict reading of a TOML or JSON file with one section per config (:func:`load_config_file`): an unknown
  section or key, or a value of the wrong type, is one :class:`~crosscoder.errors.FeatgraphError` line that names
  the file, the section, the field and the fix;
* the config itself from layers of values, later layers winning (:func:`build_config`: defaults < file < flags).

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Path``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, Y]`` / ``tuple[X, ...]`` and ``dict[str, Any]`` (file only; no flag).

Three rules hold for every field, from a flag and from a file alike: a ``float`` is finite (``nan`` and ``inf`` are
refused: no setting means them); a ``Path`` is not empty (``--out ""`` would be the current folder); and an optional
list (``list[X] | None``) is never empty — ``--hookpoints ""`` or ``hookpoints = []`` is an error, not a silent "use
the default" (leave the field out, or pass ``none``, for that).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import operator
import re
import reprlib
import textwrap
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal, Union

from crosscoder.errors import FeatgraphError

__all__ = [
    "int_at_least", "finite_float", "float_list",
    "add_config_arguments",
    "build_config",
    "coerce",
    "config_hints",
    "field_docs",
    "flag_name",
    "load_config_file",
    "parse_flag",
    "values_from_args",
]

_UNION_TYPES: tuple = (Union, types.UnionType) if hasattr(types, "UnionType") else (Union,)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans (true or false)", Path: "paths (strings)"}
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


# ---------------------------------------------------------------------------------------------------- docstrings


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (and of its base classes), whitespace-normalised.

    Fields without one are absent; a subclass's docstring replaces its base's. Classes whose source cannot be read
    (made at run time) contribute nothing.

    >>> from crosscoder.config import TrainConfig
    >>> field_docs(TrainConfig)["steps"]
    'Optimiser steps.'
    """
    return dict(_field_docs(cls))


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        docs.update(_class_field_docs(klass))
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        docs = {k: v for k, v in docs.items() if k in names}
    return docs


def _class_field_docs(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return {}
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return {}
    docs = {}
    for stmt, nxt in zip(node.body, node.body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _plain(doc: str) -> str:
    """reST markup → plain text for ``--help``: ``x`` and :role:`x` become x."""
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "")


# ---------------------------------------------------------------------------------------------------- type hints


@functools.cache
def config_hints(cls: type) -> dict[str, Any]:
    """Field name → resolved type hint of a config dataclass (string annotations evaluated; cached)."""
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # a programming error in the config class, said plainly
        raise TypeError(f"cannot evaluate the type hints of {cls.__name__}: {e}") from e


def _init_fields(cls: type) -> list[dataclasses.Field]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return [f for f in dataclasses.fields(cls) if f.init]


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); other hints → (hint, False). ``A | B | None`` → (A | B, True)."""
    if typing.get_origin(hint) in _UNION_TYPES:
        args = typing.get_args(hint)
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) < len(args):
            return (rest[0] if len(rest) == 1 else functools.reduce(operator.or_, rest)), True
    return hint, False


def _describe(hint: Any, none: str | None = None) -> str:
    """What a value of ``hint`` looks like, for an error message: ``an integer``, ``a list of strings``.

    >>> _describe(list[str])
    'a list of strings'
    >>> _describe(Literal["a", "b"] | None, none="none")
    'one of a, b or none'
    """
    inner, optional = _split_optional(hint)
    if optional:
        text = _describe(inner)
        if none is None:
            return text
        if text.startswith("one of "):
            return text.replace(" or ", ", ") + f" or {none}"
        return f"{text} or {none}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if isinstance(hint, type) and issubclass(hint, Path):
        return "a path (a string)"
    if hint is Any:
        return "any value"
    if origin is Literal:
        names = [str(a) for a in args]
        return "one of " + (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0])
    if origin in _UNION_TYPES:
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple) and (origin is list or (len(args) == 2 and args[1] is Ellipsis)):
        item = args[0] if args else Any
        return f"a list of {_PLURAL.get(item, 'items, each ' + _describe(item))}"
    if origin is tuple:
        if len(set(args)) == 1 and args[0] in _PLURAL:
            return f"a list of {len(args)} {_PLURAL[args[0]]}"
        return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
    if origin is dict or hint is dict:
        return "a table of keys and values"
    return f"a {getattr(hint, '__name__', hint)}"


def _got(value: Any) -> str:
    return f"{_repr.repr(value)} ({type(value).__name__})"


# ---------------------------------------------------------------------------------------------------- config values


def coerce(value: Any, hint: Any, where: str, field: str = "value") -> Any:
    """Check a value read from a config file (TOML/JSON types) against a field's type hint and convert it.

    ``int`` takes integers (and integral floats such as ``1e5``), ``float`` any number, ``bool`` only true/false,
    ``Path`` a string, ``list``/``tuple`` a list (never a plain string), ``dict`` a table. Anything else is one
    :class:`FeatgraphError` line: ``<where>: <field> must be <what>, got <value> (<type>)``.

    >>> coerce(3, float, "run.toml [train]", "lr")
    3.0
    >>> coerce([0.9, 1], tuple[float, float], "run.toml [train]", "betas")
    (0.9, 1.0)
    >>> coerce(5.5, int, "run.toml [train]", "steps")
    Traceback (most recent call last):
    ...
    crosscoder.errors.FeatgraphError: run.toml [train]: steps must be an integer, got 5.5 (float)
    """
    inner, optional = _split_optional(hint)
    if optional:
        if value is None:
            return None
        if typing.get_origin(inner) is list and isinstance(value, (list, tuple)) and not value:
            raise FeatgraphError(f"{where}: {field} is an empty list; give at least one item, or leave {field} out for the default")
        return coerce(value, inner, where, field)
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(fix: str = "") -> FeatgraphError:
        return FeatgraphError(f"{where}: {field} must be {_describe(hint)}, got {_got(value)}{fix}")

    if hint is Any or hint is object:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail(_unquote_fix(value, hint, field))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail(_unquote_fix(value, hint, field))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                number = math.inf
            if not math.isfinite(number):
                raise FeatgraphError(f"{where}: {field} must be a finite number, got {_got(value)}")
            return number
        raise fail(_unquote_fix(value, hint, field))
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail()
    if isinstance(hint, type) and issubclass(hint, Path):
        if isinstance(value, (str, Path)) and str(value).strip():
            return hint(value)
        raise fail()
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        raise fail(f"; did you mean {close[0]}?" if close else "")
    if origin in _UNION_TYPES:
        for option in args:
            try:
                return coerce(value, option, where, field)
            except FeatgraphError:
                pass
        raise fail()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(_list_fix(value, field))
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            out = [coerce(v, item, where, f"{field}[{i}]") for i, v in enumerate(value)]
            return out if origin is list else tuple(out)
        if len(value) != len(args):
            raise fail()
        return tuple(coerce(v, a, where, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise fail()
        key_hint, value_hint = args if args else (Any, Any)
        return {coerce(k, key_hint, where, f"{field} key"): coerce(v, value_hint, where, f"{field}.{k}") for k, v in value.items()}
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise fail()
    raise TypeError(f"{where}: {field} has a type hint {hint!r} that config files do not support")


def _unquote_fix(value: Any, hint: Any, field: str) -> str:
    """``steps = "10"`` → ``; write it without quotes: steps = 10``."""
    if not isinstance(value, str):
        return ""
    try:
        parsed = parse_flag(value, hint)
    except FeatgraphError:
        return ""
    return f"; write it without quotes: {field} = {json.dumps(parsed)}"


def _list_fix(value: Any, field: str) -> str:
    """``hookpoints = "a,b"`` → ``; write a list, e.g. hookpoints = ["a", "b"]``."""
    items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else [value]
    return f"; write a list, e.g. {field} = {json.dumps(items or ['...'])}"


# ---------------------------------------------------------------------------------------------------- flags


def parse_flag(text: str, hint: Any) -> Any:
    """A command-line string → a value of the type ``hint`` (what an argparse ``type=`` does), or FeatgraphError.

    Integers (``65_536``, ``1e5``), floats (``1e-3``), booleans (true/false, yes/no, on/off, 1/0), ``Literal``
    choices, paths; lists and tuples as one comma-separated string (items stripped, empty ones dropped);
    ``none`` for an optional field (``X | None``) means None.

    >>> parse_flag("1e-3", float), parse_flag("1e5", int), parse_flag("no", bool)
    (0.001, 100000, False)
    >>> parse_flag("blocks.0.hook_resid_pre, blocks.1.hook_resid_post", list[str] | None)
    ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_post']
    >>> parse_flag("none", list[str] | None) is None
    True
    """
    inner, optional = _split_optional(hint)
    if optional:
        if text.strip().lower() == "none":
            return None
        if typing.get_origin(inner) is list and not text.replace(",", "").strip():
            raise FeatgraphError(f"{text!r} is an empty list; give at least one comma-separated value, or none for the default")
        try:
            return parse_flag(text, inner)
        except FeatgraphError as e:  # say that none is allowed too
            message, start = str(e), f"{text!r} is not {_describe(inner)}"
            if message.startswith(start):
                message = f"{text!r} is not {_describe(hint, none='none')}{message[len(start):]}"
            raise FeatgraphError(message) from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail() -> FeatgraphError:
        return FeatgraphError(f"{text!r} is not {_describe(hint, none='none')}")

    s = text.strip()
    if hint is str or hint is Any:
        return text
    if isinstance(hint, type) and issubclass(hint, Path):
        if not s:
            raise FeatgraphError(f"{text!r} is an empty path; give a file or folder path")
        return hint(text)
    if hint is bool:
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise FeatgraphError(f"{text!r} is not true or false (also yes/no, on/off, 1/0)")
    if hint is int:
        try:
            return int(s)
        except ValueError:
            pass
        try:
            number = float(s)
        except ValueError:
            raise fail() from None
        if number.is_integer():
            return int(number)
        raise fail()
    if hint is float:
        try:
            number = float(s)
        except ValueError:
            raise fail() from None
        if not math.isfinite(number):
            raise FeatgraphError(f"{text!r} is not a finite number")
        return number
    if origin is Literal:
        for choice in args:
            if s == str(choice):
                return choice
        raise fail()
    if origin in _UNION_TYPES:
        for option in args:
            try:
                return parse_flag(text, option)
            except FeatgraphError:
                pass
        raise fail()
    if origin in (list, tuple):
        items = [t.strip() for t in text.split(",") if t.strip()]
        variable = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        if not variable and len(items) != len(args):
            raise FeatgraphError(f"{text!r} is not {_describe(hint)}; write {len(args)} comma-separated values, e.g. 0.9,0.999")
        item_hints = [args[0] if args else str] * len(items) if variable else args
        try:
            out = [parse_flag(t, h) for t, h in zip(items, item_hints)]
        except FeatgraphError as e:
            raise FeatgraphError(f"{text!r} is not {_describe(hint)} ({e})") from None
        return out if origin is list else tuple(out)
    raise FeatgraphError(f"a {_describe(hint)} cannot be given as a flag; set it in the config file")


def _flaggable(hint: Any) -> bool:
    """Whether ``hint`` can come from one command-line string (scalars, Literal, lists and tuples of scalars)."""
    inner, _ = _split_optional(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    scalar = lambda h: h in (int, float, str, bool) or typing.get_origin(h) is Literal or (
        isinstance(h, type) and issubclass(h, Path))
    if scalar(inner):
        return True
    if origin in (list, tuple):
        return bool(args) and all(scalar(a) or a is Ellipsis for a in args)
    if origin in _UNION_TYPES:
        return all(_flaggable(a) for a in args)
    return False


def flag_name(field: str, rename: Mapping[str, str] | None = None) -> str:
    """The flag of a field: ``--batch-size`` for ``batch_size``; ``rename`` maps a field to another name.

    >>> flag_name("batch_size"), flag_name("seed", {"seed": "train_seed"})
    ('--batch-size', '--train-seed')
    """
    name = (rename or {}).get(field, field)
    return "--" + name.lstrip("-").replace("_", "-")


def _dest(field: str, rename: Mapping[str, str] | None) -> str:
    return flag_name(field, rename)[2:].replace("-", "_") if rename and field in rename else field


def _default_text(f: dataclasses.Field) -> str | None:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "empty"
    return str(value)


def _flag_type(hint: Any) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_flag(text, hint)
        except FeatgraphError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = _describe(hint)  # argparse names the type in its own messages
    return convert


class _OnOff(argparse.BooleanOptionalAction):
    """``--x/--no-x`` with our help text as is (before Python 3.10.3 argparse's own ``(default: ...)`` addition
    breaks ``--help`` when the default is ``SUPPRESS``: cpython issue 90238)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=help, **kwargs)
        self.help = help


def _check_names(cls: type, what: str, names: Collection[str]) -> None:
    unknown = set(names) - {f.name for f in _init_fields(cls)}
    if unknown:
        raise ValueError(f"{what} names {sorted(unknown)}, which are not fields of {cls.__name__}")


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                         exclude: Collection[str] = (), rename: Mapping[str, str] | None = None,
                         only: Collection[str] | None = None) -> list[str]:
    """Add one flag per field of dataclass ``cls`` to ``parser`` (or an argument group); return the fields added.

    Each field ``batch_size`` becomes ``--batch-size`` with ``dest="batch_size"`` (a field in ``rename`` gets that
    flag instead, e.g. ``{"seed": "train-seed"}`` → ``--train-seed`` with ``dest="train_seed"``), help = its
    docstring and ``(default: ...)``, and ``default=argparse.SUPPRESS``, so a flag the user did not type is absent
    from the namespace (:func:`values_from_args` reads back only what was typed). ``Literal`` fields get
    ``choices``, ``bool`` fields ``--x/--no-x``, lists and tuples one comma-separated string, optional fields
    accept ``none``. Fields that cannot come from one string (``dict``) get no flag.

    A field whose flag or ``dest`` the parser already has (e.g. ``seed`` of a second config on the same parser) is
    skipped and left out of the returned list: that flag then sets the field in every config that has it. Use
    ``exclude`` or ``rename`` to keep them apart.
    """
    _check_names(cls, "exclude", exclude)
    _check_names(cls, "rename", rename or {})
    if only is not None:
        _check_names(cls, "only", only)
    hints, docs = config_hints(cls), field_docs(cls)
    taken_flags = set(parser._option_string_actions)
    taken_dests = {a.dest for a in parser._actions}
    added = []
    for f in _init_fields(cls):
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        hint = hints[f.name]
        if not _flaggable(hint):
            continue
        flag, dest = flag_name(f.name, rename), _dest(f.name, rename)
        inner, optional = _split_optional(hint)
        flags = [flag, "--no-" + flag[2:]] if inner is bool else [flag]
        if taken_flags.intersection(flags) or dest in taken_dests:
            continue
        help_text = _plain(docs.get(f.name, ""))
        default = _default_text(f)
        if default is not None:
            help_text = f"{help_text} (default: {default})".strip()
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text.replace("%", "%%")}
        if inner is bool:
            kwargs["action"] = _OnOff
        else:
            kwargs["type"] = _flag_type(hint)
            if typing.get_origin(inner) is Literal:
                choices = list(typing.get_args(inner))
                kwargs["choices"] = choices + [None] if optional else choices
                kwargs["metavar"] = "{" + ",".join(str(c) for c in choices) + (",none}" if optional else "}")
            elif typing.get_origin(inner) in (list, tuple):
                args = typing.get_args(inner)
                kwargs["metavar"] = "X,Y" if typing.get_origin(inner) is tuple and Ellipsis not in args else "X,Y,..."
        parser.add_argument(flags[0], **kwargs)
        taken_flags.update(flags)
        taken_dests.add(dest)
        added.append(f.name)
    return added


def values_from_args(args: argparse.Namespace, cls: type, *, rename: Mapping[str, str] | None = None,
                     only: Collection[str] | None = None) -> dict[str, Any]:
    """The fields of ``cls`` that were set on the command line (flags from :func:`add_config_arguments`).

    Pass the same ``rename`` as to :func:`add_config_arguments`; ``only`` limits the fields read (e.g. to the list it
    returned, so that a hand-written flag with the same ``dest`` is not mistaken for the field).
    """
    present = vars(args)
    values = {}
    for f in _init_fields(cls):
        dest = _dest(f.name, rename)
        if dest in present and (only is None or f.name in only):
            values[f.name] = present[dest]
    return values


# ---------------------------------------------------------------------------------------------------- files


def _toml_loads() -> tuple[Callable[[str], Any], type[Exception]]:
    try:
        import tomllib as toml  # Python 3.11+
    except ImportError:
        try:
            import tomli as toml  # same API, for Python 3.10
        except ImportError:
            raise FeatgraphError("reading a TOML config file on Python 3.10 needs tomli: pip install tomli "
                                 "(or write the config as JSON)") from None
    return toml.loads, toml.TOMLDecodeError


def load_config_file(path: str | Path | None, sections: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    """Read a ``.toml`` or ``.json`` file whose sections are the fields of the dataclasses in ``sections``.

    Returns ``{section: {field: value}}`` with every section of ``sections`` (empty when the file lacks it, and all
    of them empty when ``path`` is None), each value checked and converted by :func:`coerce`. A file that does not
    parse, an unknown section or key, or a value of the wrong type is one :class:`FeatgraphError` line.
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in sections}
    if path is None:
        return out
    path = Path(path)
    if path.is_dir():
        raise FeatgraphError(f"config file {path} is a folder; pass the .toml or .json file itself")
    if not path.exists():
        raise FeatgraphError(f"config file {path} does not exist; check the path")
    if path.suffix not in (".toml", ".json"):
        raise FeatgraphError(f"config file {path} must end in .toml or .json (got {path.suffix or 'no suffix'!r})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FeatgraphError(f"config file {path} cannot be read as UTF-8 text ({e})") from None
    if path.suffix == ".toml":
        loads, error = _toml_loads()
        kind = "TOML"
    else:
        loads, error, kind = json.loads, json.JSONDecodeError, "JSON"
    try:
        data = loads(text)
    except error as e:
        detail = " ".join(str(e).split())
        raise FeatgraphError(f"config file {path} is not valid {kind}: {detail}; fix the syntax there") from None
    if not isinstance(data, dict):
        raise FeatgraphError(f"config file {path} must hold sections ({_names(sections)}), got {_got(data)}")
    for section, table in data.items():
        if section not in sections:
            close = difflib.get_close_matches(section, list(sections), n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise FeatgraphError(f"config file {path} has an unknown section [{section}]; {hint}allowed: {_names(sections)}")
        where = f"{path} [{section}]"
        if not isinstance(table, dict):
            raise FeatgraphError(f"{where} must be a table of field = value lines, got {_got(table)}")
        out[section] = _section_values(table, sections[section], where)
    return out


def _names(sections: Mapping[str, type]) -> str:
    return ", ".join(f"[{s}]" for s in sections)


def _section_values(table: Mapping[str, Any], cls: type, where: str) -> dict[str, Any]:
    fields = [f.name for f in _init_fields(cls)]
    hints = config_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in fields:
            close = difflib.get_close_matches(key.replace("-", "_"), fields, n=1, cutoff=0.6)
            fix = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(fields)}"
            raise FeatgraphError(f"{where}: unknown key {key!r}; {fix}")
        values[key] = coerce(value, hints[key], where, key)
    return values


# ---------------------------------------------------------------------------------------------------- building


def build_config(cls: type, *layers: Mapping[str, Any], where: str = "", skip_none: bool = True, **fixed: Any):
    """``cls(**merged)``: the ``layers`` merged left to right (later wins), then ``fixed`` on top.

    Keys that are not fields of ``cls`` are ignored in ``layers`` (so a whole ``vars(args)`` may be passed) and an
    error in ``fixed``. With ``skip_none`` (the default) a None in a layer means "unset" and does not override an
    earlier layer; pass ``skip_none=False`` when the layers hold only what the user set (:func:`load_config_file`,
    :func:`values_from_args`), so that ``--activation-cache none`` overrides a file's value. A missing required
    field, or a ``TypeError``/``ValueError`` from the constructor, becomes one :class:`FeatgraphError` line naming
    the class (prefixed with ``where``); a ``FeatgraphError`` from ``__post_init__`` passes through unchanged.
    """
    fields = {f.name: f for f in _init_fields(cls)}
    unknown = set(fixed) - set(fields)
    if unknown:
        raise TypeError(f"build_config({cls.__name__}): {sorted(unknown)} are not fields of {cls.__name__}")
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in fields and not (skip_none and v is None)})
    values.update(fixed)
    prefix = f"{where}: " if where else ""
    missing = [n for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise FeatgraphError(f"{prefix}{cls.__name__} needs {', '.join(missing)}; set "
                             f"{'it' if len(missing) == 1 else 'them'} in the config file or with "
                             f"{', '.join(flag_name(n) for n in missing)}")
    try:
        return cls(**values)
    except FeatgraphError:
        raise
    except (TypeError, ValueError) as e:
        raise FeatgraphError(f"{prefix}{cls.__name__}: {' '.join(str(e).split())}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` for a hand-written flag: an integer ``>= low`` (argparse then prints one error line naming it)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def finite_float(text: str) -> float:
    """An argparse ``type``: a finite float (no nan/inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def float_list(text: str) -> list[float]:
    """An argparse ``type``: comma-separated finite numbers, e.g. ``0.5,1,2``."""
    try:
        return [finite_float(x) for x in text.split(",") if x.strip()] or _empty_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,1,2, got {text!r}") from None


def _empty_list(text: str) -> list[float]:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,1,2, got {text!r}")
