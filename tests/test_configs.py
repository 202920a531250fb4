"""Flags generated from the config dataclasses, and strict config files (featgraph.configs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from featgraph.configs import (
    add_config_arguments,
    build_config,
    coerce,
    field_docs,
    flag_name,
    load_config_file,
    parse_flag,
    values_from_args,
)


@dataclass
class Toy:
    """A small config with one field of every supported kind."""

    steps: int = 10
    """Optimiser steps."""
    lr: float = 1e-3
    """Peak learning rate; 100% at the plateau."""
    name: str = "toy"
    mode: Literal["fast", "slow"] = "fast"
    """How to run: ``fast`` or
       ``slow``."""
    verbose: bool = False
    """Log more."""
    layers: list[int] = field(default_factory=lambda: [0, 1])
    """Layers read."""
    hookpoints: list[str] | None = None
    """Hookpoints read."""
    out: Path = Path("out")
    """Output folder."""
    cache: Optional[Path] = None  # noqa: UP045 - the typing spelling is supported too
    """Cache folder."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes."""
    seed: int = 0
    """Seed of the toy."""

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise FeatgraphError(f"steps must be positive, got {self.steps}")
        if self.lr > 1:
            raise ValueError(f"lr {self.lr} is too large")


@dataclass
class ToyPlus(Toy):
    """Toy with one more field and a new docstring on an inherited one."""

    warmup: int = 0
    """Warm-up steps (new field)."""


@dataclass
class Needs:
    width: int
    """Width (required)."""
    depth: int = 2


def _parser(cls=Toy, **kw) -> tuple[argparse.ArgumentParser, list[str]]:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    return p, add_config_arguments(p, cls, **kw)


def _help(p: argparse.ArgumentParser, flag: str) -> str:
    return next(a.help for a in p._actions if flag in a.option_strings)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


REAL = {"crosscoder": CrosscoderConfig, "train": TrainConfig}


# ---------------------------------------------------------------------------------------------------- docstrings


def test_field_docs_read_the_string_under_each_field_and_follow_bases():
    docs = field_docs(Toy)
    assert docs["steps"] == "Optimiser steps."
    assert docs["mode"] == "How to run: ``fast`` or ``slow``."  # two lines, whitespace normalised
    assert "name" not in docs  # no docstring
    plus = field_docs(ToyPlus)
    assert plus["warmup"] == "Warm-up steps (new field)." and plus["steps"] == "Optimiser steps."
    assert set(plus) == set(docs) | {"warmup"}
    real = field_docs(TrainConfig)
    assert real["lr"] == "Peak Adam learning rate."
    assert real["autocast"].endswith("Weights and Adam's state stay fp32 either way.") and "\n" not in real["autocast"]
    real["lr"] = "changed"  # a copy: the cache is not mutated
    assert field_docs(TrainConfig)["lr"] == "Peak Adam learning rate."


# ---------------------------------------------------------------------------------------------------- flags


def test_every_flaggable_field_is_a_flag_with_its_docstring_and_default_as_help():
    p, added = _parser()
    assert added == ["steps", "lr", "name", "mode", "verbose", "layers", "hookpoints", "out", "cache", "betas", "seed"]
    assert _help(p, "--steps") == "Optimiser steps. (default: 10)"
    assert _help(p, "--mode") == "How to run: fast or slow. (default: fast)"  # reST markup stripped
    assert _help(p, "--layers") == "Layers read. (default: 0,1)"
    assert _help(p, "--name") == "(default: toy)"
    text = p.format_help()  # the '%' in lr's docstring is escaped for argparse's formatting
    assert "100% at the plateau" in text and "--extra" not in text
    assert "--verbose, --no-verbose" in text and "SUPPRESS" not in text
    assert _help(p, "--verbose") == "Log more. (default: false)"


def test_a_new_field_becomes_a_new_flag_without_other_edits():
    _, base = _parser(Toy)
    p, plus = _parser(ToyPlus)
    assert set(plus) - set(base) == {"warmup"}
    assert _help(p, "--warmup") == "Warm-up steps (new field). (default: 0)"
    assert values_from_args(p.parse_args(["--warmup", "7"]), ToyPlus) == {"warmup": 7}


def test_real_train_config_flags_match_its_fields():
    p, added = _parser(TrainConfig)
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert added == [f for f in fields if f != "extra"]  # dict[str, Any] has no flag
    assert {o for a in p._actions for o in a.option_strings} >= {flag_name(f) for f in added}
    assert _help(p, "--steps") == "Optimiser steps. (default: 2000)"
    assert _help(p, "--batch-size") == "Tokens per step (each token carries all hookpoints). (default: 1024)"
    assert next(a for a in p._actions if a.dest == "autocast").choices == ["auto", "bf16", "off"]
    args = p.parse_args(["--steps", "5", "--lr", "1e-4", "--betas", "0.8,0.95", "--autocast", "off"])
    got = build_config(TrainConfig, values_from_args(args, TrainConfig))
    assert got == TrainConfig(steps=5, lr=1e-4, betas=(0.8, 0.95), autocast="off")


def test_unset_flags_are_absent_so_they_do_not_override():
    p, _ = _parser()
    assert values_from_args(p.parse_args([]), Toy) == {}
    assert values_from_args(p.parse_args(["--steps", "3"]), Toy) == {"steps": 3}


def test_literal_fields_get_choices():
    p, _ = _parser()
    action = next(a for a in p._actions if a.dest == "mode")
    assert action.choices == ["fast", "slow"]
    assert p.parse_args(["--mode", "slow"]).mode == "slow"
    with pytest.raises(argparse.ArgumentError, match="one of fast or slow"):
        p.parse_args(["--mode", "medium"])


def test_bool_fields_are_on_off_pairs():
    p, _ = _parser()
    assert values_from_args(p.parse_args(["--verbose"]), Toy) == {"verbose": True}
    assert values_from_args(p.parse_args(["--no-verbose"]), Toy) == {"verbose": False}
    assert "verbose" not in values_from_args(p.parse_args([]), Toy)


def test_lists_tuples_numbers_and_none_from_strings():
    p, _ = _parser()
    args = p.parse_args(["--layers", "3, 1,,2", "--hookpoints", "blocks.0.hook_resid_pre,blocks.1.hook_resid_post",
                         "--betas", "0.5,0.75", "--lr", "1e-4", "--steps", "1e3", "--cache", "none", "--out", "runs/a"])
    assert values_from_args(args, Toy) == {
        "layers": [3, 1, 2], "hookpoints": ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"],
        "betas": (0.5, 0.75), "lr": 1e-4, "steps": 1000, "cache": None, "out": Path("runs/a")}
    with pytest.raises(argparse.ArgumentError, match="'ten' is not an integer"):
        p.parse_args(["--steps", "ten"])
    with pytest.raises(argparse.ArgumentError, match=r"'1,x' is not a list of integers \('x' is not an integer\)"):
        p.parse_args(["--layers", "1,x"])  # the item error is reported for the whole list
    with pytest.raises(argparse.ArgumentError, match="2 comma-separated values"):
        p.parse_args(["--betas", "0.5"])


@pytest.mark.parametrize("text, hint, want", [
    ("42", int, 42), ("65_536", int, 65536), ("-3", int, -3), ("2e3", int, 2000),
    ("1e-3", float, 0.001), ("3", float, 3.0),
    ("true", bool, True), ("Yes", bool, True), ("1", bool, True), ("off", bool, False), ("0", bool, False),
    ("slow", Literal["fast", "slow"], "slow"), ("2", Literal[1, 2], 2),
    ("a, b", list[str], ["a", "b"]), ("", list[str], []), ("1,2", list[float], [1.0, 2.0]),
    ("0.1,0.2", tuple[float, float], (0.1, 0.2)), ("1,2,3", tuple[int, ...], (1, 2, 3)),
    ("none", int | None, None), ("NONE", list[str] | None, None), ("5", Optional[int], 5),  # noqa: UP045
    (" keep spaces ", str, " keep spaces "),
])
def test_parse_flag_values(text, hint, want):
    got = parse_flag(text, hint)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("text, hint, match", [
    ("ten", int, "'ten' is not an integer"), ("1.5", int, "not an integer"), ("abc", float, "not a number"),
    ("maybe", bool, "not true or false"), ("medium", Literal["fast", "slow"], "one of fast or slow"),
    ("x", int | None, "an integer or none"), ("1,2,3", tuple[float, float], "2 comma-separated"),
    ('{"a": 1}', dict[str, Any], "cannot be given as a flag"),
])
def test_parse_flag_errors(text, hint, match):
    with pytest.raises(FeatgraphError, match=match):
        parse_flag(text, hint)


def test_shared_field_names_do_not_crash_and_share_the_flag():
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    first = add_config_arguments(p.add_argument_group("toy"), Toy)
    second = add_config_arguments(p.add_argument_group("train"), TrainConfig)
    third = add_config_arguments(p, CrosscoderConfig, exclude=["d_model"])
    assert "seed" in first and "seed" not in second and "seed" not in third
    assert "betas" not in second and "lr" not in second  # Toy defined them first
    assert "n_features" in third
    args = p.parse_args(["--seed", "3", "--l1-coeff", "0.5"])
    assert values_from_args(args, Toy) == {"seed": 3}
    assert values_from_args(args, TrainConfig) == {"seed": 3, "l1_coeff": 0.5}
    assert values_from_args(args, TrainConfig, only=second) == {"l1_coeff": 0.5}


def test_rename_exclude_and_only():
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_config_arguments(p, Toy, only=["seed", "steps"])
    added = add_config_arguments(p, TrainConfig, rename={"seed": "train-seed"}, exclude=["steps"])
    assert "seed" in added and "steps" not in added
    args = p.parse_args(["--seed", "1", "--train-seed", "2", "--steps", "4"])
    assert values_from_args(args, Toy) == {"seed": 1, "steps": 4}
    assert values_from_args(args, TrainConfig, rename={"seed": "train-seed"}, only=added) == {"seed": 2}
    with pytest.raises(ValueError, match="stpes"):
        add_config_arguments(argparse.ArgumentParser(), Toy, exclude=["stpes"])


# ---------------------------------------------------------------------------------------------------- coerce


@pytest.mark.parametrize("value, hint, want", [
    (3, int, 3), (1e5, int, 100000), (3, float, 3.0), (0.5, float, 0.5), (True, bool, True), ("a", str, "a"),
    ("runs/a", Path, Path("runs/a")), ("fast", Literal["fast", "slow"], "fast"), (None, int | None, None),
    (["a", "b"], list[str], ["a", "b"]), ([1, 2.0], list[int], [1, 2]), ([0.9, 1], tuple[float, float], (0.9, 1.0)),
    ({"a": [1]}, dict[str, Any], {"a": [1]}), (["x"], list[str] | None, ["x"]), (7, Any, 7),
])
def test_coerce_accepts_and_converts(value, hint, want):
    got = coerce(value, hint, "f.toml [s]", "x")
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("value, hint, message", [
    (5.5, int, "f.toml [s]: x must be an integer, got 5.5 (float)"),
    (True, int, "f.toml [s]: x must be an integer, got True (bool)"),
    ("10", int, "f.toml [s]: x must be an integer, got '10' (str); write it without quotes: x = 10"),
    (1, bool, "f.toml [s]: x must be true or false, got 1 (int)"),
    ("true", bool, "f.toml [s]: x must be true or false, got 'true' (str); write it without quotes: x = true"),
    (False, float, "f.toml [s]: x must be a number, got False (bool)"),
    (3, str, "f.toml [s]: x must be a string, got 3 (int)"),
    ("slwo", Literal["fast", "slow"], "f.toml [s]: x must be one of fast or slow, got 'slwo' (str); did you mean slow?"),
    ("a,b", list[str], 'f.toml [s]: x must be a list of strings, got \'a,b\' (str); write a list, e.g. x = ["a", "b"]'),
    (["a", 3], list[str], "f.toml [s]: x[1] must be a string, got 3 (int)"),
    ([0.9], tuple[float, float], "f.toml [s]: x must be a list of 2 numbers, got [0.9] (list)"),
    ([1, 2], dict[str, Any], "f.toml [s]: x must be a table of keys and values, got [1, 2] (list)"),
])
def test_coerce_errors_are_one_line(value, hint, message):
    with pytest.raises(FeatgraphError) as e:
        coerce(value, hint, "f.toml [s]", "x")
    assert str(e.value) == message


# ---------------------------------------------------------------------------------------------------- files


TOML = """
[toy]
steps = 20
lr = 1
layers = [2, 4]
hookpoints = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
out = "runs/toy"
betas = [0.8, 0.9]
mode = "slow"
verbose = true
extra = {note = "hi", n = 2}

[train]
batch_size = 1e3
autocast = "bf16"
"""


def test_toml_file_loads_with_types(tmp_path):
    got = load_config_file(_write(tmp_path, "run.toml", TOML), {"toy": Toy, "train": TrainConfig, "more": ToyPlus})
    assert got["toy"] == {"steps": 20, "lr": 1.0, "layers": [2, 4], "out": Path("runs/toy"), "betas": (0.8, 0.9),
                          "hookpoints": ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"], "mode": "slow",
                          "verbose": True, "extra": {"note": "hi", "n": 2}}
    assert type(got["toy"]["lr"]) is float
    assert got["train"] == {"batch_size": 1000, "autocast": "bf16"} and type(got["train"]["batch_size"]) is int
    assert got["more"] == {}  # a section the file lacks is empty
    toy = build_config(Toy, got["toy"])
    assert toy.out == Path("runs/toy") and toy.betas == (0.8, 0.9) and toy.name == "toy"


def test_json_file_loads_the_same(tmp_path):
    data = {"toy": {"steps": 20, "lr": 3, "layers": [2, 4], "cache": None, "betas": [0.8, 0.9]}, "train": {"seed": 4}}
    got = load_config_file(_write(tmp_path, "run.json", json.dumps(data)), {"toy": Toy, "train": TrainConfig})
    assert got == {"toy": {"steps": 20, "lr": 3.0, "layers": [2, 4], "cache": None, "betas": (0.8, 0.9)},
                   "train": {"seed": 4}}
    assert load_config_file(None, {"toy": Toy}) == {"toy": {}}


def test_file_then_flags_then_fixed(tmp_path):
    file = load_config_file(_write(tmp_path, "run.toml", "[train]\nsteps = 100\nlr = 0.01\nseed = 2\n"), REAL)
    p, _ = _parser(TrainConfig)
    flags = values_from_args(p.parse_args(["--lr", "0.02"]), TrainConfig)
    cfg = build_config(TrainConfig, file["train"], flags, seed=9)
    assert (cfg.steps, cfg.lr, cfg.seed, cfg.batch_size) == (100, 0.02, 9, 1024)


def _one_line_error(path: Path, sections=REAL) -> str:
    with pytest.raises(FeatgraphError) as e:
        load_config_file(path, sections)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("section, line, field, fix", [
    ("train", 'seed = "abc"', "seed", "must be an integer, got 'abc' (str)"),
    ("train", "steps = 5.5", "steps", "must be an integer, got 5.5 (float)"),
    ("train", 'steps = "ten"', "steps", "must be an integer, got 'ten' (str)"),
    ("crosscoder", 'hookpoints = "blocks.0.hook_resid_pre"', "hookpoints",
     'write a list, e.g. hookpoints = ["blocks.0.hook_resid_pre"]'),
    ("crosscoder", 'model_norm = "mean"', "model_norm", "must be one of sum or concat"),
    ("train", "betas = [0.9]", "betas", "must be a list of 2 numbers"),
])
def test_wrong_types_in_the_real_configs_are_one_line_naming_the_field(tmp_path, section, line, field, fix):
    path = _write(tmp_path, "run.toml", f"[{section}]\n{line}\n")
    message = _one_line_error(path)
    assert message.startswith(f"{path} [{section}]: {field} ") and fix in message


def test_unknown_key_names_it_and_the_close_field(tmp_path):
    path = _write(tmp_path, "run.toml", "[train]\nstpes = 3\n")
    assert _one_line_error(path) == f"{path} [train]: unknown key 'stpes'; did you mean steps?"
    dashed = _write(tmp_path, "dash.toml", "[train]\nbatch-size = 3\n")
    assert _one_line_error(dashed).endswith("unknown key 'batch-size'; did you mean batch_size?")
    far = _write(tmp_path, "far.toml", "[train]\nzzz = 3\n")
    assert "unknown key 'zzz'; allowed: steps, batch_size, lr," in _one_line_error(far)


def test_unknown_section_names_it_and_the_allowed_ones(tmp_path):
    path = _write(tmp_path, "run.toml", "[trian]\nsteps = 3\n")
    assert _one_line_error(path) == (f"config file {path} has an unknown section [trian]; did you mean [train]? "
                                     "allowed: [crosscoder], [train]")
    flat = _write(tmp_path, "flat.json", '{"train": 3}')
    assert "[train] must be a table" in _one_line_error(flat)


def test_bad_syntax_is_one_line_with_the_position(tmp_path):
    toml = _write(tmp_path, "run.toml", "[train]\nsteps = = 3\n")
    message = _one_line_error(toml)
    assert message.startswith(f"config file {toml} is not valid TOML: ") and "line 2" in message
    assert "syntax error in Python" not in message
    bad_json = _write(tmp_path, "run.json", '{"train": {"steps": }}')
    message = _one_line_error(bad_json)
    assert message.startswith(f"config file {bad_json} is not valid JSON: ") and "line 1 column 21" in message


def test_other_suffixes_and_missing_files(tmp_path):
    assert "must end in .toml or .json" in _one_line_error(_write(tmp_path, "run.yaml", "train: {}\n"))
    assert "does not exist" in _one_line_error(tmp_path / "nope.toml")


def test_python_310_falls_back_to_tomli(tmp_path, monkeypatch):
    pytest.importorskip("tomli")
    import tomli

    calls = []
    fake = types.SimpleNamespace(loads=lambda s: calls.append(s) or tomli.loads(s), TOMLDecodeError=tomli.TOMLDecodeError)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` fails as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", fake)
    path = _write(tmp_path, "run.toml", "[train]\nsteps = 7\n")
    assert load_config_file(path, REAL)["train"] == {"steps": 7}
    assert calls == ["[train]\nsteps = 7\n"]
    assert "is not valid TOML" in _one_line_error(_write(tmp_path, "bad.toml", "[train\n"))


def test_no_toml_reader_says_pip_install_tomli(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(FeatgraphError, match="pip install tomli") as e:
        load_config_file(_write(tmp_path, "run.toml", "[train]\n"), REAL)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------- build_config


def test_build_config_merges_layers_later_wins_and_skips_none():
    cfg = build_config(Toy, {"steps": 5, "lr": 0.1}, {"steps": 6, "lr": None, "unrelated": 1}, name="fixed")
    assert (cfg.steps, cfg.lr, cfg.name) == (6, 0.1, "fixed")
    explicit = build_config(Toy, {"cache": Path("c")}, {"cache": None}, skip_none=False)
    assert explicit.cache is None
    with pytest.raises(TypeError, match="nope"):
        build_config(Toy, nope=1)


def test_build_config_errors():
    with pytest.raises(FeatgraphError) as e:
        build_config(Needs, {"depth": 3}, where="run.toml and flags")
    assert str(e.value) == "run.toml and flags: Needs needs width; set it in the config file or with --width"
    with pytest.raises(FeatgraphError) as e:
        build_config(Toy, {"lr": 5.0}, where="flags")
    assert str(e.value) == "flags: Toy: lr 5.0 is too large"  # ValueError → one line naming the class
    with pytest.raises(FeatgraphError) as e:
        build_config(Toy, {"steps": 0})
    assert str(e.value) == "steps must be positive, got 0"  # FeatgraphError passes through unchanged
    with pytest.raises(FeatgraphError, match="^TrainConfig: "):
        build_config(TrainConfig, {"steps": "ten"})  # a TypeError inside __post_init__
