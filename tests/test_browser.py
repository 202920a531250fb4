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
    tags = [t for t, attrs in dom.tags if not (t == "svg" and attrs.get("class") == "act-hist")]  # the page's own chart
    assert "img" not in tags and "svg" not in tags and "iframe" not in tags
    source_scripts = [t for t, _ in DomSummary(page.read_text()).tags].count("script")
    assert tags.count("script") == source_scripts == 3  # no script element came from the data
    handlers = [(t, k) for t, attrs in dom.tags for k in attrs if k.startswith("on")]
    assert handlers == []


def hostile_graph() -> FeatureGraph:
    """8 nodes whose id, labels, tokens, contexts, hookpoints, community labels, dashboard data (quantile examples,
    output tokens, per-model names) and a string edge attribute are all hostile strings."""
    n = 8
    rng = np.random.default_rng(0)
    ids = [f"F{i}" for i in range(n - 1)] + [HOSTILE[0]]
    h = lambda i: HOSTILE[i % 5]  # noqa: E731
    contexts = [[{"left": h(i + 1), "token": h(i), "right": h(i + 2), "act": 1.5}] for i in range(n)]
    quantiles = [[{"range": [0.5, 1.0], "examples": [{"left": h(i + 3), "token": h(i + 4), "right": "", "act": 0.7}]}] for i in range(n)]
    return FeatureGraph(
        ids,
        {"community": [0, 0, 1, 1, 2, 2, 0, 1], "frequency": rng.random(n).tolist(), "max_act": rng.random(n).tolist(),
         "peak_layer": [0, 1, 2, 0, 1, 2, 0, 1], "peak_hookpoint": [HOSTILE[2]] * n, "layer_profile": rng.random((n, 3)).round(3).tolist(),
         "label": [h(i) for i in range(n)], "top_contexts": contexts, "rel_norm": rng.random(n).tolist(),
         "density": rng.random(n).tolist(), "act_histogram": [{"edges": [0.0, 0.5, 1.0, 1.5], "counts": [5, 2, 1]}] * n,
         "quantile_examples": quantiles, "top_logits": [[[h(i + 1), 2.5], [h(i + 2), 1.5]] for i in range(n)],
         "bottom_logits": [{h(i + 3): [[h(i + 4), -2.0]]} for i in range(n)]},
        [0, 1, 2, 3, 4, 5, 6, 7, 0], [1, 2, 3, 4, 5, 6, 7, 0, 4],
        {"weight": rng.random(9), "pearson": rng.random(9), "type": np.array([h(k) for k in range(9)], dtype=object)},
        meta={"hookpoints": [HOSTILE[1], "h1", "h2"], "community_labels": {"0": HOSTILE[0], "1": HOSTILE[1], "2": HOSTILE[3]}},
    )


PROBE = """<script>
// Test probe (not part of the page): records every text drawn on a canvas, then, after the page's load handlers
// and the test's actions, writes what the network shows into <body data-probe>.
window.__drawn = {};
(function () {
  var fill = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (t) { window.__drawn[t] = 1; return fill.apply(this, arguments); };
})();
window.addEventListener("load", function () { setTimeout(function () {
  /*ACTIONS*/
  setTimeout(function () {
    var fg = window.featgraph, net = fg.network, groups = {};
    fg.nodes.forEach(function (n) { groups[n.id] = n.community; });
    window.__drawn = {};
    net.redraw();  // draw once more with the recorder cleared: the labels of the view as it is now
    setTimeout(function () { document.body.setAttribute("data-probe", JSON.stringify({
      positions: net.getPositions(), groups: groups, view: net.getViewPosition(), scale: net.getScale(),
      canvas: [container.clientWidth, container.clientHeight], drawn: Object.keys(window.__drawn),
      selected: document.body.getAttribute("data-selected"), dimmed: document.body.getAttribute("data-dimmed"),
      community: document.body.getAttribute("data-focus-community"), layout: document.body.getAttribute("data-layout"),
      hash: decodeURIComponent(location.hash)})); }, 50);
  }, 300);
}, 300); });
</script>"""


def probe(chromium: str, tmp: Path, page: Path, fragment: str = "", actions: str = "") -> dict:
    """Open a copy of ``page`` with :data:`PROBE` in its <head> (at ``#fragment``), run ``actions`` (JS) after load,
    and return what the page reported: node positions and communities, the view (centre, scale, canvas size), the
    texts drawn on the canvas, the selection and dimming."""
    copy = page.with_name(page.stem + ".probe.html")
    copy.write_text(page.read_text().replace("<head>", "<head>" + PROBE.replace("/*ACTIONS*/", actions), 1))
    url = copy.resolve().as_uri() + (fragment and "#" + fragment)
    dom = DomSummary(run_chromium(chromium, tmp, url, "--dump-dom").stdout)
    if "data-probe" not in dom.body:
        dom = DomSummary(run_chromium(chromium, tmp, url, "--dump-dom", "--virtual-time-budget=20000").stdout)
    assert json.loads(dom.body["data-errors"]) == []
    assert "data-probe" in dom.body, dom.body
    return json.loads(dom.body["data-probe"])


def separation(report: dict) -> tuple[float, float]:
    """(mean distance of a node to its community's centre, mean distance between community centres), as drawn."""
    ids = list(report["positions"])
    pos = np.array([[report["positions"][i]["x"], report["positions"][i]["y"]] for i in ids])
    comm = np.array([report["groups"][i] for i in ids])
    labels = np.unique(comm)
    centres = np.array([pos[comm == c].mean(0) for c in labels])
    within = np.mean(np.concatenate([np.linalg.norm(pos[comm == c] - centres[k], axis=1) for k, c in enumerate(labels)]))
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    return float(within), float(d[np.triu_indices(len(labels), 1)].mean())


def on_screen(report: dict, x: float, y: float) -> bool:
    """Whether the point (x, y) of the network lies inside the canvas in the view the page reported."""
    w, h = report["canvas"]
    sx = (x - report["view"]["x"]) * report["scale"] + w / 2
    sy = (y - report["view"]["y"]) * report["scale"] + h / 2
    return 0 <= sx <= w and 0 <= sy <= h


def view_offset_px(report: dict, x: float, y: float) -> float:
    """How far (screen pixels) the centre of the view is from the point (x, y) of the network."""
    return float(np.hypot(report["view"]["x"] - x, report["view"]["y"] - y) * report["scale"])


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
    if color_by is None:  # the legend names communities by their (hostile) labels
        for s in (HOSTILE[0], HOSTILE[1], HOSTILE[3]):
            assert s in dom.text_by_id["legend"], s
    assert "output tokens" in details and "examples by activation quantile" in details and "strongest neighbours" in details
    assert "pearson" in details and "type" in details  # edge measures, the string one as text
    svgs = [a for t, a in dom.tags if t == "svg"]
    assert [a.get("class") for a in svgs] == ["act-hist"]  # the activation histogram is drawn
    assert dom.body.get("data-selected") == HOSTILE[0]
    name = f"hostile-{color_by or 'communities'}.png"
    save_screenshot(chromium, tmp_path, page, artifacts / name, node=HOSTILE[0])


@pytest.mark.parametrize("physics", [True, False])
def test_page_draws_without_animation_frames(chromium, tmp_path, physics):
    """A headless or background tab may never grant requestAnimationFrame (CI saw a page left undrawn that way): the
    page must still draw, after stabilisation (physics on, small graphs) and on load (physics off, large graphs)."""
    from test_html import synthetic_graph

    g = hostile_graph() if physics else synthetic_graph(400, 1200)
    page = write_html(g, tmp_path / "noraf.html", physics_max_nodes=300 if physics else 0)
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
    page = write_html(g, tmp_path / "big.html", renderer="vis")  # sampled; the default for this size is WebGL
    t0 = time.perf_counter()
    dom = load(chromium, tmp_path, page)
    print(f"chromium, 5,000-node page: {time.perf_counter() - t0:.1f} s")
    n_edges = len(json.loads(page.read_text().split("var edges = new vis.DataSet(", 1)[1].split(");\n", 1)[0]))
    assert_healthy(dom, 5000, n_edges)
    assert dom.text_by_id["sample-note"].startswith("showing 5,000 of 20,000 features")


def test_demo_page_in_the_browser(chromium, artifacts, tmp_path, tiny_embedded):
    """The page the real demo pipeline writes (tiny size; the embedded model comes from the session cache), checked as
    a person sees it: communities are separate regions, labels are drawn, a #id link centres its feature."""
    from featgraph.demo import DemoConfig, run_demo
    from featgraph.export import read_json

    summary = run_demo(DemoConfig(out=tmp_path / "demo", size="tiny", progress=False))
    page = Path(summary.paths["html"])
    dom = load(chromium, tmp_path, page)
    assert_healthy(dom, summary.n_nodes, summary.n_edges)
    assert_nothing_injected(dom, page)
    assert dom.text_by_id["summary"].startswith(f"{summary.n_nodes} features, {summary.n_edges} edges")
    save_screenshot(chromium, tmp_path, page, artifacts / "demo-tiny.png")
    graph = read_json(summary.paths["json"])
    labels = {nid: str(lbl or nid) for nid, lbl in zip(graph.node_ids, graph.node_attrs.get("label", graph.node_ids))}

    overview = probe(chromium, tmp_path, page)
    within, between = separation(overview)
    print(f"demo page: mean distance to own community centre {within:.0f}, between community centres {between:.0f}")
    assert within < 0.3 * between, (within, between)
    assert all(on_screen(overview, p["x"], p["y"]) for p in overview["positions"].values())  # the overview frames them all
    drawn = set(overview["drawn"]) & set(labels.values())
    assert len(drawn) >= 5, overview["drawn"]  # the largest features are named at the overview zoom

    degree = np.bincount(np.r_[graph.edge_src, graph.edge_dst], minlength=graph.n_nodes)
    hub = graph.node_ids[int(degree.argmax())]
    neighbours = {graph.node_ids[int(j)] for i, j in zip(np.r_[graph.edge_src, graph.edge_dst], np.r_[graph.edge_dst, graph.edge_src])
                  if graph.node_ids[int(i)] == hub} - {hub}
    chosen = probe(chromium, tmp_path, page, fragment=urllib.parse.quote(hub, safe=""))
    assert chosen["selected"] == hub
    assert view_offset_px(chosen, chosen["positions"][hub]["x"], chosen["positions"][hub]["y"]) < 2  # centred on it
    assert int(chosen["dimmed"]) == graph.n_nodes - 1 - len(neighbours)  # all but it and its neighbours dimmed
    assert labels[hub] in chosen["drawn"]
    save_screenshot(chromium, tmp_path, page, artifacts / "demo-tiny-feature.png", node=hub)


def labelled_graph() -> FeatureGraph:
    """A planted partition of 300 features in 6 communities with labels, community labels and layers."""
    from test_layout import planted

    g = planted(300, 2400, 6, seed=1)
    words = ["breath", "river", "castle", "dragon", "apple", "engine"]
    comm = g.node_attrs["community"]
    g.set_node_attr("label", [f'" {words[c]}" · took _ {i}' for i, c in enumerate(comm)])
    g.set_node_attr("peak_layer", [i % 4 for i in range(300)])
    g.set_node_attr("top_contexts", [[{"left": "a", "token": f" {words[c]}", "right": "b", "act": 1.0}] for c in comm])
    g.meta["community_labels"] = {str(c): f"{w} things" for c, w in enumerate(words)}
    return g


def test_search_hash_links_community_focus_and_layout_switch(chromium, artifacts, tmp_path):
    g = labelled_graph()
    page = write_html(g, tmp_path / "labelled.html", title="labelled")
    dom = load(chromium, tmp_path, page)
    assert_healthy(dom, g.n_nodes, g.n_edges)
    legend = dom.text_by_id["legend"]
    sizes = np.bincount(g.node_attrs["community"])
    for c in range(6):  # the legend names each community by its label, with its size
        assert f"{g.meta['community_labels'][str(c)]}· {sizes[c]} · #{c}" in legend.replace("\n", "")
    assert "community 0 (" not in legend

    # search by a label's words: the best match is selected and centred
    found = probe(chromium, tmp_path, page, actions="""
        var box = document.getElementById("search"); box.value = "took _ 17"; box.dispatchEvent(new Event("change"));""")
    assert found["selected"] == "F17"
    assert view_offset_px(found, found["positions"]["F17"]["x"], found["positions"]["F17"]["y"]) < 2

    # a link followed after load (hashchange) selects and centres too
    hopped = probe(chromium, tmp_path, page, fragment="F3", actions='location.hash = "#F42";')
    assert hopped["selected"] == "F42" and hopped["hash"] == "#F42"
    assert view_offset_px(hopped, hopped["positions"]["F42"]["x"], hopped["positions"]["F42"]["y"]) < 2

    # #community=2 fits the view to community 2 and dims the rest
    focus = probe(chromium, tmp_path, page, fragment="community=2")
    members = [nid for nid, c in focus["groups"].items() if c == 2]
    xs = [focus["positions"][m]["x"] for m in members]
    ys = [focus["positions"][m]["y"] for m in members]
    assert focus["community"] == "2" and int(focus["dimmed"]) == g.n_nodes - len(members)
    # vis-network fits the members' boxes, labels included, so the centre is near (not at) the nodes' centre
    assert view_offset_px(focus, (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2) < 0.05 * min(focus["canvas"])
    assert all(on_screen(focus, x, y) for x, y in zip(xs, ys))  # all of it in view
    span = max(max(xs) - min(xs), max(ys) - min(ys)) * focus["scale"]
    assert span > 0.4 * min(focus["canvas"])  # and zoomed in on it
    save_screenshot(chromium, tmp_path, page, artifacts / "community-focus.png", node="community=2")

    # the layer view is one switch away: x then follows the peak layer
    layers = probe(chromium, tmp_path, page, actions="""
        var s = document.getElementById("layout-switch"); s.value = "layers"; s.dispatchEvent(new Event("change"));""")
    assert layers["layout"] == "layers"
    layer = dict(zip(g.node_ids, g.node_attrs["peak_layer"]))
    for a in range(3):
        left = max(p["x"] for nid, p in layers["positions"].items() if layer[nid] == a)
        right = min(p["x"] for nid, p in layers["positions"].items() if layer[nid] == a + 1)
        assert left < right


def test_pyvis_network_renders_offline(chromium, artifacts, tmp_path):
    """FeatureGraph.to_pyvis() → pyvis's own page: every node drawn where featgraph puts it, nothing fetched, no error,
    hostile tooltips and labels inert."""
    g = hostile_graph()
    net = g.to_pyvis()
    page = tmp_path / "pyvis.html"
    net.write_html(str(page))
    watch = """<script>
      window.__errors = [];
      window.addEventListener("error", function (e) { window.__errors.push(String(e.message || e)); });
      window.addEventListener("load", function () { setTimeout(function () {
        document.body.setAttribute("data-probe", JSON.stringify({drawn: network.body.nodeIndices.length,
          edges: network.body.edgeIndices.length, positions: network.getPositions(), errors: window.__errors}));
      }, 300); });
    </script>"""
    page.write_text(page.read_text().replace("<head>", "<head>" + watch, 1))
    dom = DomSummary(run_chromium(chromium, tmp_path, page.resolve().as_uri(), "--dump-dom").stdout)
    report = json.loads(dom.body["data-probe"])
    assert report["errors"] == [] and report["drawn"] == g.n_nodes and report["edges"] == g.n_edges
    for n in net.nodes:
        assert report["positions"][n["id"]] == {"x": pytest.approx(n["x"], abs=1), "y": pytest.approx(n["y"], abs=1)}  # vis rounds
    assert dom.title != "pwned"
    assert not [t for t, _ in dom.tags if t in ("img", "iframe")]
    assert not [(t, k) for t, attrs in dom.tags for k in attrs if k.startswith("on") and t != "body"]
    run_chromium(chromium, tmp_path, page.resolve().as_uri(), f"--screenshot={artifacts / 'pyvis.png'}")


def test_webgl_page_draws_20000_features_200000_edges_within_5_s(chromium, artifacts, tmp_path, record_property):
    """Above 5,000 features the page draws with WebGL (sigma.js), every feature shown: a 20,000-feature,
    200,000-edge graph is drawn within 5 s of load, labels included, and pans, zooms and selects like the small page."""
    from featgraph.layout import add_layout
    from test_layout import planted

    g = add_layout(planted(20_000, 200_000, 200, seed=2))
    g.set_node_attr("label", [f"feature {i} · word {i % 97}" for i in range(g.n_nodes)])
    page = write_html(g, tmp_path / "webgl.html")
    html = page.read_text()
    assert "new featgraphWebGL.Network" in html
    print(f"WebGL page: {page.stat().st_size / 1e6:.1f} MB")

    # real time, no virtual clock: Chromium loads the page, the page stamps its first draw (ms since navigation); a
    # second load only when the first missed 5 s, since a shared machine's load spikes can stall one run
    for attempt in range(2):
        t0 = time.perf_counter()
        dom = DomSummary(subprocess.run([chromium, *[f for f in FLAGS if not f.startswith("--virtual-time")],
                                         f"--user-data-dir={tmp_path / f'profile-webgl-{attempt}'}", "--dump-dom", page.resolve().as_uri()],
                                        capture_output=True, text=True, timeout=120, check=True).stdout)
        wall = time.perf_counter() - t0
        first_draw = int(dom.body["data-first-draw-ms"])
        if first_draw < 5000:
            break
    record_property("webgl_first_draw_ms", first_draw)
    print(f"WebGL page, 20,000 features / {g.n_edges:,} edges: first drawn {first_draw} ms after navigation; chromium run {wall:.1f} s")
    assert dom.body.get("data-renderer") == "webgl" and dom.body.get("data-ready") == "1"
    assert json.loads(dom.body["data-errors"]) == []
    assert int(dom.body["data-nodes-drawn"]) == 20_000 and int(dom.body["data-edges-drawn"]) == 30_000
    assert first_draw < 5000, first_draw
    assert "drawing the 30,000 strongest of" in dom.text_by_id["sample-note"]

    overview = probe(chromium, tmp_path, page)
    labels = set(g.node_attrs["label"])
    assert len(set(overview["drawn"]) & labels) >= 5  # sigma names the largest features
    within, between = separation(overview)
    assert within < 0.25 * between, (within, between)
    # select by link: centred, neighbours kept (all of its edges, drawn or not), the rest dimmed
    chosen = probe(chromium, tmp_path, page, fragment="F123")
    nb = {g.node_ids[int(j)] for i, j in zip(np.r_[g.edge_src, g.edge_dst], np.r_[g.edge_dst, g.edge_src]) if int(i) == 123} - {"F123"}
    assert chosen["selected"] == "F123" and int(chosen["dimmed"]) == g.n_nodes - 1 - len(nb)
    assert view_offset_px(chosen, chosen["positions"]["F123"]["x"], chosen["positions"]["F123"]["y"]) < 2
    assert "feature 123 · word 26" in chosen["drawn"]
    # pan and zoom (what a mouse drag and wheel do to sigma's camera): the view follows
    moved = probe(chromium, tmp_path, page, actions="""
        var cam = network.renderer.getCamera(); cam.setState({x: 0.3, y: 0.6, ratio: 0.25}); network.redraw();""")
    assert moved["scale"] == pytest.approx(4 * overview["scale"], rel=0.02)
    assert abs(moved["view"]["x"] - overview["view"]["x"]) > 100
    save_screenshot(chromium, tmp_path, page, artifacts / "webgl-20k.png")
    save_screenshot(chromium, tmp_path, page, artifacts / "webgl-20k-feature.png", node="F123")
