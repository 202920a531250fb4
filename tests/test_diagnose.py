"""Dictionary diagnostics (featgraph.diagnose, `featgraph crosscoder diagnose`) and the three FVUs of crosscoder.metrics."""

import argparse
import json
import math
import sys

import numpy as np
import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.harvest import harvest
from crosscoder.io import save_crosscoder, strict_json
from crosscoder.metrics import RECONSTRUCTION, evaluate, reconstruction_metrics, splice_in, splice_metrics
from crosscoder.train import train_crosscoder
from featgraph.diagnose import _correlation, drop_k_curves, embed_2d, first_drop, hookpoint_table, per_token_loss

HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


# ---- item 6: FVU of the concatenated vector, normalised and raw ------------------------------------------------------

def test_three_fvus_match_hand_computations_on_concatenated_vectors():
    L, D, F = 3, 8, 16
    cc = build_crosscoder(CrosscoderConfig.from_flat([f"h{l}" for l in range(L)], D, F, architecture="relu"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cc.b_enc_F.normal_(0.0, 0.1, generator=g)
        cc.b_dec_LD.normal_(0.0, 0.1, generator=g)
        cc.norm_scale_L.copy_(torch.tensor([2.0, 0.5, 0.125]))  # raw norms grow along the layers, as in a real model
    x = torch.randn(200, L, D, generator=g) / cc.norm_scale_L[:, None] + torch.randn(L, D, generator=g)  # raw, with a mean
    m = reconstruction_metrics(cc, list(x.split(64)))

    def fvu(y, y_hat):  # mean-centred FVU of the rows of (n, K)
        return float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())

    with torch.no_grad():
        x_hat = cc(x)  # raw reconstruction
        xn = cc.normalise(x)
        xn_hat = cc.decode(cc.encode(xn, normalised=True), normalised=True)
    x, x_hat, xn, xn_hat = (t.double() for t in (x, x_hat, xn, xn_hat))
    assert m.fvu_concatenated_raw == pytest.approx(fvu(x.flatten(1), x_hat.flatten(1)), rel=1e-5)
    assert m.fvu_pooled == pytest.approx(fvu(xn.flatten(1), xn_hat.flatten(1)), rel=1e-5)
    per = [fvu(xn[:, l], xn_hat[:, l]) for l in range(L)]
    assert m.fvu_per_hookpoint == pytest.approx(per, rel=1e-5)
    assert m.fvu_per_hookpoint == pytest.approx([fvu(x[:, l], x_hat[:, l]) for l in range(L)], rel=1e-5)  # scale-free per hookpoint
    assert m.fvu_unweighted_mean == pytest.approx(sum(per) / L, rel=1e-5)
    # raw units weigh the last hookpoint (largest variance) most: the raw number is near its FVU, unlike the pooled one
    assert abs(m.fvu_concatenated_raw - per[-1]) < abs(m.fvu_pooled - per[-1])
    assert json.loads(json.dumps(strict_json(m.to_dict()), allow_nan=False))["fvu_concatenated_raw"] == pytest.approx(m.fvu_concatenated_raw)


# ---- a small trained crosscoder on the tiny embedded model ----------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_embedded):
    """A ReLU crosscoder (32 features over the tiny model's 3 residual hookpoints) trained for 100 steps."""
    model = tiny_embedded.model
    acts = torch.cat(list(harvest(model, tiny_embedded.tokens_train_NT[:64], HOOKS, batch_size=32)))
    D = acts.shape[-1]
    cc = build_crosscoder(CrosscoderConfig.from_flat(HOOKS, D, 32, architecture="relu", seed=0))
    cc.norm_scale_L.copy_(D**0.5 / acts.norm(dim=-1).mean(0))
    xn = cc.normalise(acts)
    g = torch.Generator().manual_seed(0)
    train_crosscoder(cc, lambda: xn[torch.randint(len(xn), (128,), generator=g)],
                     TrainConfig(steps=100, batch_size=128, lr=1e-2, l1_coeff=1.0), progress=False)
    return cc.eval()


@pytest.fixture(scope="module")
def rows(tiny_embedded):
    return tiny_embedded.tokens_val_NT[:8]


def test_splice_in_takes_any_reconstruction(trained, tiny_embedded, rows):
    model = tiny_embedded.model
    cc = trained

    def two(f):
        yield "mine", cc.decode(f)
        yield "zero", torch.zeros_like(cc.decode(f))

    run = splice_in(cc, model, rows, two, batch_size=3, convention="keep_bos", per_token=True)
    ref = splice_metrics(cc, model, rows, batch_size=3, convention="keep_bos")
    assert run.summary("mine") == ref  # the same numbers as splice_metrics, whatever the reconstruction is called
    assert list(splice_in(cc, model, rows[:2], convention="keep_bos").ce_spliced) == [RECONSTRUCTION]  # the default: cc.decode
    # keep_bos zero-ablation zeroes positions 1…T−1, which is exactly splicing in zeros there: nothing recovered
    assert run.ce_spliced["zero"] == pytest.approx(run.ce_zero_ablated, rel=1e-12)
    assert run.ce_loss_recovered("zero") == pytest.approx([0.0] * 3, abs=1e-9)
    n = rows.shape[0] * (rows.shape[1] - 1)  # keep_bos scores every prediction
    assert run.n_scored == n and run.token_pos_N2.shape == (n, 2) and run.token_ce_spliced_NL["mine"].shape == (n, 3)
    assert run.token_ce_clean_N.mean().item() == pytest.approx(run.ce_clean, rel=1e-12)


def test_drop_k_at_zero_is_evaluate(trained, tiny_embedded, rows):
    """k = 0 reproduces evaluate's FVU, CE loss recovered and KL on the same rows (one batch each: bit for bit)."""
    m = evaluate(trained, tiny_embedded.model, rows, batch_size=16)
    d = drop_k_curves(trained, tiny_embedded.model, rows, k_values=[0, 1, 2], batch_size=8)
    assert d.k_values == [0, 1, 2] and d.n_tokens == m.n_tokens
    for mode in d.modes:
        assert d.fvu[mode][0] == m.fvu_per_hookpoint
        assert d.ce_loss_recovered[mode][0] == m.ce_loss_recovered
        assert d.kl[mode][0] == m.kl_per_hookpoint
        assert d.l0[mode][0] == pytest.approx(m.l0, rel=1e-12)
    assert d.ce_clean == m.ce_clean and d.ce_zero_ablated == m.ce_zero_ablated


def test_dropping_the_strongest_hurts_more_than_the_weakest(trained, tiny_embedded, rows):
    d = drop_k_curves(trained, tiny_embedded.model, rows, seed=1, batch_size=8)
    assert d.k_values == list(range(math.ceil(d.l0["weakest"][0]) + 1))  # default: 0 … ⌈mean L0⌉
    fvu = {m: np.array(d.fvu[m])[1:] for m in d.modes}  # (k ≥ 1, hookpoint)
    ce = {m: np.array(d.ce_loss_recovered[m])[1:] for m in d.modes}
    assert (fvu["strongest"] > fvu["weakest"]).mean() > 0.9
    assert (fvu["strongest"].mean(0) > fvu["random"].mean(0)).all() and (fvu["random"].mean(0) > fvu["weakest"].mean(0)).all()
    assert (ce["strongest"].mean(0) < ce["weakest"].mean(0)).all()
    assert d.l0["weakest"] == d.l0["strongest"] == d.l0["random"]  # the same number of features goes, whichever they are
    assert all(b <= a for a, b in zip(d.l0["weakest"], d.l0["weakest"][1:]))
    assert d.k_first_drop == [first_drop([r[l] for r in d.ce_loss_recovered["weakest"]], d.k_values) for l in range(3)]
    again = drop_k_curves(trained, tiny_embedded.model, rows, seed=1, batch_size=8, splice=False)
    assert again.fvu["random"] == d.fvu["random"]  # seeded
    other = drop_k_curves(trained, tiny_embedded.model, rows, seed=2, batch_size=8, splice=False)
    assert other.fvu["random"] != d.fvu["random"] and other.fvu["weakest"] == d.fvu["weakest"]


def test_dropping_every_feature_leaves_the_bias(trained, tiny_embedded, rows):
    cc = trained
    d = drop_k_curves(cc, tiny_embedded.model, rows, k_values=[1000], splice=False, batch_size=8)
    assert d.k_values == [0, 1000] and d.max_active < 1000
    with torch.no_grad():
        y = cc.normalise(torch.cat(list(harvest(tiny_embedded.model, rows, HOOKS)))).double()
        b = cc.b_dec_LD.double()
    hand = (((y - b) ** 2).sum(dim=(0, 2)) / ((y - y.mean(0)) ** 2).sum(dim=(0, 2))).tolist()
    for mode in d.modes:
        assert d.fvu[mode][1] == pytest.approx(hand, rel=1e-6)
        assert d.l0[mode][1] == 0.0
    assert d.ce_loss_recovered == {} and d.k_first_drop == []


def test_first_drop_is_more_than_one_percent():
    assert first_drop([0.5, 0.496, 0.494, 0.4], [0, 1, 2, 3]) == 2  # 0.495 is the line: 0.496 is within it
    assert first_drop([-0.2, -0.201, -0.203], [0, 1, 2]) == 2  # 1 % of |k = 0 value| for a negative one too
    assert first_drop([float("nan"), 0.1, 0.0], [0, 1, 2]) is None  # undefined at k = 0: no drop to report


def test_hookpoint_table(trained, tiny_embedded, rows):
    m = evaluate(trained, tiny_embedded.model, rows, splice=False)
    t = hookpoint_table(trained, tiny_embedded.model, rows, metrics=m)
    acts = torch.cat(list(harvest(tiny_embedded.model, rows, HOOKS))).double()
    assert t.act_norm == pytest.approx(acts.norm(dim=-1).mean(0).tolist(), rel=1e-6)
    assert t.fvu == m.fvu_per_hookpoint and t.l0 == m.l0 and t.ce_loss_recovered == []
    assert sum(t.decoder_mass) == pytest.approx(1.0) and all(0 < v < 1 for v in t.decoder_mass)
    assert [r["hookpoint"] for r in t.rows()] == HOOKS and t.rows()[0]["kl"] is None
    json.dumps(strict_json(t.to_dict()), allow_nan=False)


def test_per_token_loss(trained, tiny_embedded, rows):
    model = tiny_embedded.model
    p = per_token_loss(trained, model, rows, embedding="pca", embed_tokens=60, n_worst=4, seed=3)
    ref = splice_metrics(trained, model, rows)
    assert p.mean == pytest.approx([s - ref["ce_clean"] for s in ref["ce_spliced"]], rel=1e-9, abs=1e-12)
    C = np.array(p.correlation)
    np.testing.assert_allclose(C, C.T)
    assert np.diag(C).tolist() == [1.0, 1.0, 1.0] and np.all(np.abs(C) <= 1)
    q = p.quantiles
    for l in range(3):
        assert q["p50"][l] <= q["p90"][l] <= q["p99"][l] <= q["p99.9"][l] <= q["max"][l]
        assert sum(p.histogram["counts"][l]) == p.n_tokens
    worst = p.worst[HOOKS[-1]]
    assert [w["ce_diff"] for w in worst] == sorted((w["ce_diff"] for w in worst), reverse=True) and len(worst) == 4
    assert worst[0]["ce_diff"] == pytest.approx(q["max"][2])
    tok = model.tokenizer
    for w in worst:
        assert len(w["context"]) == min(12, w["position"])
        assert w["token"] == tok.decode([int(rows[w["row"], w["position"]])])
        assert w["next_token"] == tok.decode([int(rows[w["row"], w["position"] + 1])])
        assert w["ce_spliced"] - w["ce_clean"] == pytest.approx(w["ce_diff"])
    e = p.embedding
    assert e["method"] == "pca" and e["hookpoint"] == HOOKS[-1] and e["n"] == 60 == len(e["x"]) == len(e["ce_diff"])
    assert all(math.isfinite(v) for v in e["x"] + e["y"]) and "PCA" in e["note"]
    doc = json.loads(json.dumps(strict_json(p.to_dict()), allow_nan=False))
    assert doc["quantiles"]["max"] == q["max"]


def test_correlation_of_a_constant_hookpoint_is_undefined():
    d = np.array([[1.0, 2.0, 0.5], [2.0, 4.0, 0.5], [3.0, 5.0, 0.5], [0.0, 1.0, 0.5]])
    C = _correlation(d)
    assert C[0, 0] == C[1, 1] == 1.0 and C[0, 1] == pytest.approx(np.corrcoef(d[:, 0], d[:, 1])[0, 1])
    assert np.isnan(C[2]).all() and np.isnan(C[:, 2]).all()
    assert json.loads(json.dumps(strict_json(C.tolist()), allow_nan=False))[2] == [None, None, None]


def test_pca_embedding_is_the_top_principal_components():
    X = np.random.default_rng(0).normal(size=(40, 7)) * np.array([5, 3, 1, 1, 1, 1, 1])
    Y, method, note = embed_2d(X, "pca")
    U, S, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(Y), np.abs(U[:, :2] * S[:2]), rtol=1e-8, atol=1e-10)
    assert method == "pca" and "asked for" in note


def test_auto_embedding_without_umap_is_pca(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap → ImportError
    X = np.random.default_rng(0).normal(size=(30, 5))
    Y, method, note = embed_2d(X, "auto")
    assert method == "pca" and "umap-learn is not installed" in note and Y.shape == (30, 2)
    from crosscoder.errors import FeatgraphError

    with pytest.raises(FeatgraphError, match="pip install umap-learn"):
        embed_2d(X, "umap")


@pytest.mark.slow
def test_umap_embedding_where_it_installs():
    pytest.importorskip("umap")
    X = np.random.default_rng(0).random((60, 10))
    Y, method, note = embed_2d(X, "umap", seed=0)
    assert method == "umap" and Y.shape == (60, 2) and np.isfinite(Y).all() and "UMAP" in note


# ---- the command and its report section ------------------------------------------------------------------------------

def _main(argv):
    """``featgraph.cli.main`` once ``diagnose`` is wired into ``featgraph crosscoder``; until then the same dispatch."""
    from featgraph import cli
    from featgraph.diagnose_cli import add_diagnose_parser

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["crosscoder"]
    cmds = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
    if "diagnose" in cmds.choices:
        return cli.main([str(a) for a in argv])
    add_diagnose_parser(cmds)
    args = parser.parse_args([str(a) for a in argv])
    return cli._run(args)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("diag") / "cc"
    save_crosscoder(trained, path, extra={"model": {"model": "embedded", "size": "tiny"}, "seed": 0})
    return path


def test_cli_writes_the_folder_and_the_report_renders_it(saved, tmp_path, capsys):
    from featgraph.report import write_report

    out = tmp_path / "diag"
    assert _main(["crosscoder", "diagnose", saved, "--out", out, "--rows", "4", "--k-values", "0,1,3", "--embedding", "pca",
                  "--embed-tokens", "50", "--worst", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "drop-k (weakest)" in printed and "embedding             pca of 50 tokens" in printed
    names = {p.name for p in out.iterdir()}
    assert {"diagnose.json", "drop_k.png", "hookpoints.png", "ce_diff_histogram.png", "ce_diff_correlation.png", "embedding.png"} <= names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".diag")]  # no temporary folder left
    doc = json.loads((out / "diagnose.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert doc["format"] == "featgraph.diagnose" and doc["drop_k"]["k_values"] == [0, 1, 3] and doc["rows"] == 4
    assert doc["hookpoint_table"]["fvu"] == doc["drop_k"]["fvu"]["weakest"][0] == doc["metrics"]["fvu_per_hookpoint"]
    assert doc["per_token"]["embedding"]["method"] == "pca" and len(doc["per_token"]["worst"][HOOKS[0]]) == 3
    assert doc["prune_vs_penalty"] is None and doc["width_sweep"] is None
    # the report: a section with the tables and plots, every string escaped
    doc["per_token"]["worst"][HOOKS[0]][0]["token"] = "<script>alert(1)</script>"
    (out / "diagnose.json").write_text(json.dumps(doc))
    page = write_report(out).read_text()
    section = page.split('<section id="diagnostics">')[1].split("</section>")[0]
    assert "Dictionary diagnostics" in section and "not in this folder" not in section
    assert section.count("<img") == 5 and "drop-k curves" in section and "worst tokens at" in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<script>" not in page
    assert "PCA" in section


def test_cli_bad_input_is_one_line_and_writes_nothing(saved, tmp_path, capsys):
    out = tmp_path / "never"
    assert _main(["crosscoder", "diagnose", tmp_path / "missing", "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]
    with pytest.raises(SystemExit) as e:
        _main(["crosscoder", "diagnose", saved, "--out", out, "--k-values", "a,b"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert e.value.code == 2 and len(err) == 1 and "--k-values" in err[0] and "0,1,2,4,8" in err[0]
    assert _main(["crosscoder", "diagnose", saved, "--out", out, "--embed-hookpoint", "blocks.9.hook_resid_post", "--quiet"]) == 2
    assert "--embed-hookpoint" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_cli_training_parts_prune_vs_penalty_and_width_sweep(saved, tmp_path, capsys):
    """--target-l0 and --widths run the short fits, land in diagnose.json, redraw from it and render in the report."""
    from featgraph.diagnose_train import PruneVsPenalty, WidthSweep
    from featgraph.report import write_report

    out = tmp_path / "diag"
    assert _main(["crosscoder", "diagnose", saved, "--out", out, "--rows", "4", "--k-values", "0,1", "--embed-tokens", "0",
                  "--target-l0", "2", "--widths", "8,16", "--train-steps", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "target L0 2" in printed and "width sweep           8: FVU" in printed
    doc = json.loads((out / "diagnose.json").read_text())
    pvp, ws = doc["prune_vs_penalty"], doc["width_sweep"]
    assert [t["target_l0"] for t in pvp["targets"]] == [2.0] and pvp["targets"][0]["pruning"]["l0_frequency_rows"] <= 2.0
    assert pvp["train_steps"] == 4 and pvp["eval_rows"] == 4
    assert [r["n_features"] for r in ws["runs"]] == [8, 16] and ws["train_steps"] == 4
    # the JSON form reads back into the records (null → NaN) and writes out the same
    assert strict_json(PruneVsPenalty.from_dict(pvp).to_dict()) == pvp and strict_json(WidthSweep.from_dict(ws).to_dict()) == ws
    assert {"prune_vs_penalty.png", "width_sweep.png"} <= {p.name for p in out.iterdir()}
    section = write_report(out).read_text().split('<section id="diagnostics">')[1].split("</section>")[0]
    assert "L0 by pruning vs by penalty" in section and "width sweep" in section and "cannot be" not in section
    assert "pruning: " in section and "control (fine-tune at the parent" in section


def test_codes_at_sampled_positions_are_the_full_encoding(trained, tiny_embedded, rows):
    """The embedding's codes, gathered batch by batch at the sampled (row, position) pairs, are those of encoding every
    token of every row (BOS dropped)."""
    from featgraph.diagnose import _codes_at

    model = tiny_embedded.model
    T = rows.shape[1]
    full = torch.cat([trained.encode(a) for a in harvest(model, rows, trained.cfg.all_hookpoints, 3, device="cpu")])
    pos = np.array([[2, 5], [0, 1], [2, T - 1], [1, 3], [0, 1]])
    got = _codes_at(trained, model, rows, pos, batch_size=2)
    want = full[torch.as_tensor([r * (T - 1) + t - 1 for r, t in pos])].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
