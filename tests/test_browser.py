"""The pages in a real browser: headless Chromium loads them from file:// with no network, and the page reports
what it drew and any error into <body> attributes, read back with --dump-dom.

Hostile tokens, contexts, labels, ids and titles must show as text and never run. Screenshots are kept as test
artefacts in $FEATGRAPH_TEST_ARTIFACTS (else pytest's temporary folder).
"""

import json
import os
import shutil
import struct
import subprocess
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from featgraph.diff import edge_diff, feature_change
from featgraph.graph import FeatureGraph
from featgraph.html import write_diff_html, write_html

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "</script><script>document.title='pwned'</script>",
    "<svg onload=\"document.title='pwned'\">",
    "\"'><iframe src=javascript:alert(2)>",
    "{{ 7*7 }} ${7*7} &amp; &lt;b&gt;",
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000", "--window-size=1280,800"]


@pytest.fixture(scope="session")
def chromium():
    """Path of a Chromium binary; installed with apt-get when missing and we are root, else the tests skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium on PATH, and apt-get as root is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "chromium"]
    try:
        if subprocess.run(install, capture_output=True, timeout=600, env=env).returncode != 0:  # a fresh machine: no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300, env=env)
            subprocess.run(install, check=True, capture_output=True, timeout=600, env=env)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {str(e).splitlines()[0]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no `chromium` binary is on PATH")
    return found


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("FEATGRAPH_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_chromium(chromium: str, tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{time.monotonic_ns()}"
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=120, check=True)


class DomSummary(HTMLParser):
    """What a dumped DOM holds: <body> attributes, the text under each element id, every start tag, <title>."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.body: dict[str, str] = {}
        self.tags: list[tuple[str, dict]] = []
        self.text_by_id: dict[str, str] = {}
        self.title = ""
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the elements we are inside
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "body":
            self.body = {k: v or "" for k, v in attrs.items()}
        if tag not in ("meta", "input", "br", "link", "img", "hr"):
            self._open.append((tag, attrs.get("id")))

    def handle_endtag(self, tag):
        for k in range(len(self._open) - 1, -1, -1):
            if self._open[k][0] == tag:
                del self._open[k:]
                break

    def handle_data(self, data):
        if self._open and self._open[-1][0] == "title":
            self.title += data
        for _, eid in self._open:
            if eid:
                self.text_by_id[eid] = self.text_by_id.get(eid, "") + data


def load(chromium: str, tmp: Path, page: Path, node: str | None = None) -> DomSummary:
    """The DOM of ``page`` after 5 s of virtual time, opened on ``node`` (a URL fragment) when given."""
    url = page.resolve().as_uri() + ("#" + urllib.parse.quote(node, safe="") if node else "")
    dom = DomSummary(run_chromium(chromium, tmp, url, "--dump-dom").stdout)
    if dom.body.get("data-ready") != "1":  # a loaded CI machine can take longer to lay out than the virtual-time budget
        dom = DomSummary(run_chromium(chromium, tmp, url, "--dump-dom", "--virtual-time-budget=20000").stdout)
    return dom


def assert_healthy(dom: DomSummary, n_nodes: int, n_edges: int) -> None:
    assert dom.body.get("data-ready") == "1", dom.body  # vis-network drew at least once
    assert json.loads(dom.body["data-errors"]) == []
    assert int(dom.body["data-nodes-drawn"]) == n_nodes
    assert int(dom.body["data-edges-drawn"]) == n_edges


def assert_nothing_injected(dom: DomSummary, page: Path) -> None:
    assert dom.title != "pwned"  # what the injected scripts would set
    tags = [t for t, _ in dom.tags]
    assert "img" not in tags and "svg" not in tags and "iframe" not in tags
    source_scripts = [t for t, _ in DomSummary(page.read_text()).tags].count("script")
    assert tags.count("script") == source_scripts == 3  # no script element came from the data
    handlers = [(t, k) for t, attrs in dom.tags for k in attrs if k.startswith("on")]
    assert handlers == []


def hostile_graph() -> FeatureGraph:
    n = 8
    rng = np.random.default_rng(0)
    ids = [f"F{i}" for i in range(n - 1)] + [HOSTILE[0]]
    contexts = [[{"left": HOSTILE[(i + 1) % 5], "token": HOSTILE[i % 5], "right": HOSTILE[(i + 2) % 5], "act": 1.5}] for i in range(n)]
    return FeatureGraph(
        ids,
        {"community": [0, 0, 1, 1, 2, 2, 0, 1], "frequency": rng.random(n).tolist(), "max_act": rng.random(n).tolist(),
         "peak_layer": [0, 1, 2, 0, 1, 2, 0, 1], "peak_hookpoint": [HOSTILE[2]] * n, "layer_profile": rng.random((n, 3)).round(3).tolist(),
         "label": [HOSTILE[i % 5] for i in range(n)], "top_contexts": contexts, "rel_norm": rng.random(n).tolist()},
        [0, 1, 2, 3, 4, 5, 6, 7, 0], [1, 2, 3, 4, 5, 6, 7, 0, 4], {"weight": rng.random(9)},
        meta={"hookpoints": [HOSTILE[1], "h1", "h2"]},
    )


def save_screenshot(chromium: str, tmp: Path, page: Path, out: Path, node: str | None = None) -> Path:
    url = page.resolve().as_uri() + ("#" + urllib.parse.quote(node, safe="") if node else "")
    run_chromium(chromium, tmp, url, f"--screenshot={out}")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 800)
    assert len(data) > 20_000, len(data)  # a drawn graph and panel, not a blank page (a blank one is ~5 kB)
    return out


@pytest.mark.parametrize("color_by", [None, "rel_norm"])
def test_hostile_strings_render_as_text(chromium, artifacts, tmp_path, color_by):
    g = hostile_graph()
    page = write_html(g, tmp_path / "hostile.html", title=HOSTILE[1], color_by=color_by)
    t0 = time.perf_counter()
    dom = load(chromium, tmp_path, page, node=HOSTILE[0])  # opens the details of the node whose id is hostile
    print(f"chromium --dump-dom: {time.perf_counter() - t0:.1f} s")
    assert_healthy(dom, g.n_nodes, g.n_edges)
    assert_nothing_injected(dom, page)
    assert dom.title == HOSTILE[1]  # the title is the literal text
    details = dom.text_by_id["details"]
    assert details.startswith(HOSTILE[0])  # the id heading
    for s in HOSTILE:  # labels, tokens and contexts, each shown verbatim as text
        assert s in details, s
    assert dom.text_by_id["page-title"] == HOSTILE[1]
    name = f"hostile-{color_by or 'communities'}.png"
    save_screenshot(chromium, tmp_path, page, artifacts / name, node=HOSTILE[0])


@pytest.mark.parametrize("physics", [True, False])
def test_page_draws_without_animation_frames(chromium, tmp_path, physics):
    """A headless or background tab may never grant requestAnimationFrame (CI saw a page left undrawn that way): the
    page must still draw, after stabilisation (physics on, small graphs) and on load (physics off, large graphs)."""
    from test_html import synthetic_graph

    g = hostile_graph() if physics else synthetic_graph(400, 1200)
    page = write_html(g, tmp_path / "noraf.html")
    html = page.read_text()
    assert json.loads(html.split("var options = ", 1)[1].split(";\n", 1)[0])["physics"]["enabled"] == physics
    page.write_text(html.replace("<head>", "<head><script>window.requestAnimationFrame = function () { return 0; };</script>", 1))
    assert_healthy(load(chromium, tmp_path, page), g.n_nodes, g.n_edges)


def test_diff_page_in_the_browser(chromium, artifacts, tmp_path):
    a = hostile_graph()
    b = FeatureGraph(a.node_ids[:6] + ["F99"], {k: v[:6] + [v[0]] for k, v in a.node_attrs.items()},
                     [0, 1, 2, 6, 3], [1, 3, 6, 5, 4], {"weight": np.array([0.9, 0.5, 0.4, 0.3, 0.2])}, meta=a.meta)
    diff, change = edge_diff(a, b, min_change=0.05), feature_change(a, b)
    assert min(diff.counts[s] for s in ("gained", "lost", "reweighted")) > 0  # every edge colour is on the page
    page = write_diff_html(a, b, diff, change, tmp_path / "diff.html", title=HOSTILE[3], names=(HOSTILE[4], "b"))
    dom = load(chromium, tmp_path, page, node=change.ranked()[0])
    assert_healthy(dom, len(change.node_ids), len(diff.delta))
    assert_nothing_injected(dom, page)
    ranked = dom.text_by_id["ranked"]
    assert all(nid in ranked for nid in change.ranked())
    assert HOSTILE[4] in dom.text_by_id["summary"]
    legend = dom.text_by_id["legend"]
    for status, count in (("gained", diff.counts["gained"]), ("lost", diff.counts["lost"])):
        assert f"{status} {count}" in legend
    save_screenshot(chromium, tmp_path, page, artifacts / "diff.png", node=change.ranked()[0])


def test_large_page_draws_its_sample(chromium, tmp_path):
    from test_html import synthetic_graph

    g = synthetic_graph(20_000, 60_000)
    page = write_html(g, tmp_path / "big.html")
    t0 = time.perf_counter()
    dom = load(chromium, tmp_path, page)
    print(f"chromium, 5,000-node page: {time.perf_counter() - t0:.1f} s")
    n_edges = len(json.loads(page.read_text().split("var edges = new vis.DataSet(", 1)[1].split(");\n", 1)[0]))
    assert_healthy(dom, 5000, n_edges)
    assert dom.text_by_id["sample-note"].startswith("showing 5,000 of 20,000 features")


def test_demo_page_in_the_browser(chromium, artifacts, tmp_path, tiny_embedded):
    """The page the real demo pipeline writes (tiny size; the embedded model comes from the session cache)."""
    from featgraph.demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(out=tmp_path / "demo", size="tiny", progress=False))
    page = Path(summary.paths["html"])
    dom = load(chromium, tmp_path, page)
    assert_healthy(dom, summary.n_nodes, summary.n_edges)
    assert_nothing_injected(dom, page)
    assert dom.text_by_id["summary"].startswith(f"{summary.n_nodes} features, {summary.n_edges} edges")
    save_screenshot(chromium, tmp_path, page, artifacts / "demo-tiny.png")
