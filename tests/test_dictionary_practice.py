"""Issue 16 end to end on a model and text of the user's own: a local random-weight GPT-2 checkpoint and a .txt file,
through the commands a researcher types — a Matryoshka SAE trained with the orthogonality option, diagnosed (drop-k,
per-hookpoint table, per-token loss, pruning vs penalty, width sweep), grown by residual rounds, combined and re-fitted.
The embedded default is covered by each part's own tests; this one shows nothing in them depends on it."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_gpt2_world
from featgraph.cli import main

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def user_world(tmp_path_factory):
    """A two-layer random-weight GPT-2 saved as a HuggingFace checkpoint, and a text file of a few hundred lines."""
    root = tiny_gpt2_world(tmp_path_factory.mktemp("user"))
    return root


def _run(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_matryoshka_diagnose_residual_combine_on_a_local_checkpoint(user_world, tmp_path, capsys):
    w = user_world
    inputs = ["--model", w / "ckpt", "--data", w / "text.txt", "--context-size", "32", "--quiet"]
    small = ["--buffer-tokens", "2048", "--norm-tokens", "1000", "--eval-rows", "8"]
    cc = tmp_path / "cc"
    out = _run(["crosscoder", "train", *inputs, "--hookpoints", HOOK, "--architecture", "matryoshka_batchtopk", "--k", "4",
                "--n-features", "64", "--prefixes", "0.25,1", "--decoder-orthogonality", "0.1", "--steps", "30",
                "--batch-size", "128", *small, "--out", cc], capsys)
    assert "prefix     16 latents" in out and "prefix     64 latents" in out  # per-prefix metrics printed
    meta = json.loads((cc / "cfg.json").read_text())
    assert [p["n_features"] for p in meta["extra"]["metrics"]["prefixes"]] == [16, 64]
    assert meta["extra"]["train"]["decoder_orthogonality"] == 0.1

    diag = tmp_path / "diag"
    out = _run(["crosscoder", "diagnose", cc, "--out", diag, "--rows", "4", "--k-values", "0,2,4", "--embedding", "pca",
                "--embed-tokens", "40", "--target-l0", "2", "--widths", "16,32", "--train-steps", "5", "--quiet"], capsys)
    doc = json.loads((diag / "diagnose.json").read_text())
    assert doc["model"] == str(w / "ckpt") and doc["hookpoints"] == [HOOK]
    assert doc["drop_k"]["k_values"] == [0, 2, 4] and doc["per_token"]["embedding"]["method"] == "pca"
    assert doc["prune_vs_penalty"]["knob"] == "k" and [r["n_features"] for r in doc["width_sweep"]["runs"]] == [16, 32]
    assert doc["metrics"]["prefixes"] and doc["hookpoint_table"]["fvu"] == doc["metrics"]["fvu_per_hookpoint"]

    res = tmp_path / "res"
    out = _run(["crosscoder", "train", "--residual-of", cc, "--rounds", "2", "--n-features", "32", "--steps", "20",
                "--batch-size", "128", *small, "--quiet", "--out", res], capsys)
    rounds = json.loads((res / "cfg.json").read_text())["extra"]["residual_rounds"]
    assert len(rounds["rounds"] if isinstance(rounds, dict) else rounds) >= 2
    both = tmp_path / "both"
    _run(["crosscoder", "combine", cc, res, "--out", both, "--eval-rows", "4", "--no-splice"], capsys)
    combined = json.loads((both / "cfg.json").read_text())["config"]
    assert combined["n_features"] == 64 + 2 * 32 and combined["architecture"] == "jumprelu"

    refit = tmp_path / "refit"
    out = _run(["crosscoder", "refit", both, "--what", "scale", "--rows", "16", "--eval-rows", "4", "--no-splice", "--out", refit,
                "--quiet"], capsys)
    assert "after the scale refit" in out and (refit / "cfg.json").exists()
