"""Outputs are strict JSON, and `featgraph export` of something that is not a graph is one clear line."""

import json

import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.io import save_crosscoder
from crosscoder.metrics import reconstruction_metrics
from featgraph.cli import main


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-strict JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def test_cfg_json_is_strict_when_features_are_dead(tmp_path):
    cc = build_crosscoder(CrosscoderConfig(["a"], 4, 8))
    with torch.no_grad():
        cc.b_enc_F[:4] = -100.0  # four features that never fire: their latent-scaling β is undefined
    metrics = reconstruction_metrics(cc, [torch.randn(64, 1, 4)])
    assert any(b != b for b in metrics.latent_scaling_beta)  # NaN in memory
    save_crosscoder(cc, tmp_path / "cc", extra={"metrics": metrics.to_dict(), "inf": float("inf")})
    meta = _strict((tmp_path / "cc" / "cfg.json").read_text())  # would raise on a bare NaN
    beta = meta["extra"]["metrics"]["latent_scaling_beta"]
    assert beta[:4] == [None] * 4 and all(isinstance(b, float) for b in beta[4:]) and meta["extra"]["inf"] is None


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.json", "does not exist"),
    (lambda d: d, "is a folder"),
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "is not a JSON graph"),
    (lambda d: (d / "cfg.json").write_text(json.dumps({"format": "featgraph.crosscoder"})) and d / "cfg.json", "not a featgraph graph"),
    (lambda d: (d / "g.json").write_text(json.dumps({"nodes": 5, "links": [], "graph": {}})) and d / "g.json",
     "not a well-formed featgraph graph"),
])
def test_export_of_something_else_is_one_line(tmp_path, capsys, make, words):
    target = make(tmp_path)
    assert main(["export", str(target), "--format", "csv", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "out").exists()
