"""featgraph crosscoder train | finetune | eval on the tiny embedded model."""

import json

from crosscoder.io import load_crosscoder
from featgraph.cli import main


def test_train_eval_finetune(tmp_path, capsys, tiny_embedded):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[crosscoder]\narchitecture = "jumprelu"\nn_features = 48\n[train]\nsteps = 30\nbatch_size = 128\nlr = 0.003\n[run]\nsize = "tiny"\neval_rows = 8\n')
    out = tmp_path / "S"
    assert main(["crosscoder", "train", "--config", str(cfg), "--out", str(out), "--steps", "40", "--quiet", "--checkpoint-every", "20"]) == 0
    printed = capsys.readouterr().out
    assert "jumprelu crosscoder, 48 features" in printed and "CE loss recovered" in printed
    cc = load_crosscoder(out)
    meta = json.loads((out / "cfg.json").read_text())
    assert cc.cfg.architecture == "jumprelu" and meta["extra"]["train"]["steps"] == 40  # the flag beat the file
    assert (tmp_path / "S.ckpt" / "latest").read_text().strip() == "step-000000040"

    assert main(["crosscoder", "eval", str(out), "--size", "tiny", "--rows", "8", "--json", str(tmp_path / "m.json"), "--quiet"]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert len(m["fvu_per_hookpoint"]) == 3 and len(m["ce_loss_recovered"]) == 3 and len(m["latent_scaling_beta"]) == 48

    assert main(["crosscoder", "finetune", str(out), "--stage", "D", "--size", "tiny", "--steps", "10", "--batch-size", "64",
                 "--out", str(tmp_path / "D"), "--quiet", "--activation-cache", str(tmp_path / "acts")]) == 0
    assert json.loads((tmp_path / "acts" / "meta.json").read_text())["complete"]
    d = load_crosscoder(tmp_path / "D")
    assert [s["stage"] for s in d.lineage] == ["base", "D"]


def test_bad_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"crosscoder": {"n_feature": 10}}))
    assert main(["crosscoder", "train", "--config", str(cfg), "--size", "tiny", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[crosscoder]: unknown key 'n_feature'; did you mean n_features?" in err[0]
    cfg.write_text(json.dumps({"crosscoder": {"architecture": "gated"}}))
    assert main(["crosscoder", "train", "--config", str(cfg), "--size", "tiny", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "unknown architecture 'gated'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_architecture_options_from_flags(tmp_path, capsys, tiny_embedded):
    """An option flag reaches its architecture's options; one of another architecture is one clear line."""
    out = tmp_path / "r"
    assert main(["crosscoder", "train", "--size", "tiny", "--sparsity-norm", "l2_of_norms", "--n-features", "16", "--steps", "5",
                 "--batch-size", "64", "--buffer-tokens", "256", "--eval-rows", "2", "--no-splice", "--out", str(out), "--quiet"]) == 0
    assert load_crosscoder(out).cfg.options["sparsity_norm"] == "l2_of_norms"
    capsys.readouterr()
    assert main(["crosscoder", "train", "--size", "tiny", "--k", "4", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--k is an option of architecture batchtopk, not relu" in err[0]
    assert main(["crosscoder", "train", "--size", "tiny", "--architecture", "jumprelu", "--jumprelu-threshold-grad", "jumping_ahead",
                 "--n-features", "16", "--steps", "5", "--batch-size", "64", "--buffer-tokens", "256", "--eval-rows", "2", "--no-splice",
                 "--out", str(tmp_path / "j"), "--quiet"]) == 0
    assert load_crosscoder(tmp_path / "j").cfg.options["threshold_grad"] == "jumping_ahead"
