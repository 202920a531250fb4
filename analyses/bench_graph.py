"""Graph-side figures for ``python -m analyses.benchmark --only leiden,page``: community detection on large random
graphs (featgraph's :func:`featgraph.communities.leiden`, igraph's Leiden, against networkx's
``louvain_communities``) and the WebGL page's build and first draw.

Every case runs in a fresh subprocess (``python -m analyses.bench_graph CASE-JSON``) that prints one JSON line; its
peak memory is the peak resident set size (VmHWM) during the timed call, counted from the resident size just before
it (``rss_before_mib``: the interpreter and the input graph), its peak restarted there (:func:`reset_peak_rss`), and a case that runs too long
is stopped at its time cap. networkx also gets an address-space cap (``RLIMIT_AS``) so that a graph too large for
it fails alone instead of starving the machine.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def rss_now_mib() -> float:
    """Current resident set size (Linux /proc; 0 where it is unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB: VmHWM (Linux /proc), else ``ru_maxrss``. Not ``ru_maxrss`` first:
    on Linux it starts at the resident size of the parent that spawned the process, so a case spawned by a large
    benchmark process would report at least that."""
    try:
        with open("/proc/self/status") as fh:
            for ln in fh:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Start the peak resident size (VmHWM) afresh from the current one (Linux ≥ 4.0: ``5`` into
    /proc/self/clear_refs), so that a later :func:`peak_rss_mib` is the peak of what follows, not of building the input.
    False where that is not possible (the peak then covers the whole process)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


_CHILD_PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stdout.write(p.stdout); sys.stderr.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
               "sys.exit(p.returncode)")
"""Runs a command from a small interpreter and writes to stderr the largest peak RSS (KiB) among its processes
(``RUSAGE_CHILDREN``: the max over every waited-for descendant, not their sum); spawned from this small process,
the inherited starting value is the helper's own few MiB."""


def planted_edges(n_nodes: int, n_edges: int, community_size: int = 100, p_in: float = 0.7, seed: int = 0):
    """(src, dst, weight) of a seeded planted-partition graph: nodes in consecutive communities of
    ``community_size``; each edge joins two members of one community with probability ``p_in``, else two uniform
    nodes; weights uniform in [0.05, 1); no self-loops, no duplicate pairs, src < dst, exactly ``n_edges`` edges
    (where that many distinct pairs are drawn)."""
    rng = np.random.default_rng(seed)
    n_comm = max(1, n_nodes // community_size)
    keys = np.zeros(0, dtype=np.int64)
    while len(keys) < n_edges:
        m = int((n_edges - len(keys)) * 1.1) + 1024
        inside = rng.random(m) < p_in
        c = rng.integers(0, n_comm, m)
        lo, size = c * community_size, np.minimum(community_size, n_nodes - c * community_size)
        a = np.where(inside, lo + (rng.random(m) * size).astype(np.int64), rng.integers(0, n_nodes, m))
        b = np.where(inside, lo + (rng.random(m) * size).astype(np.int64), rng.integers(0, n_nodes, m))
        ok = a != b
        a, b = a[ok], b[ok]
        keys = np.unique(np.r_[keys, np.minimum(a, b) * n_nodes + np.maximum(a, b)])
    keys = keys[rng.permutation(len(keys))[:n_edges]]
    keys.sort()
    src, dst = keys // n_nodes, keys % n_nodes
    return src, dst, rng.uniform(0.05, 1.0, len(src))


def feature_graph(n_nodes: int, n_edges: int, seed: int = 0):
    from featgraph.graph import FeatureGraph

    src, dst, w = planted_edges(n_nodes, n_edges, seed=seed)
    return FeatureGraph([f"F{i}" for i in range(n_nodes)], {}, src, dst, {"weight": w})


# ---- cases (each in its own process) ---------------------------------------------------------------------------
def case_leiden(n_nodes: int, n_edges: int, method: str = "leiden") -> dict:
    """featgraph's leiden() (or louvain(): igraph's multilevel) on a planted-partition graph, timed from the
    FeatureGraph (its conversion to igraph included)."""
    from featgraph.communities import leiden, louvain

    g = feature_graph(n_nodes, n_edges)
    before = rss_now_mib()
    reset_peak_rss()
    t = time.perf_counter()
    r = (leiden if method == "leiden" else louvain)(g, seed=0)
    dt = time.perf_counter() - t
    return {"seconds": dt, "communities": r.n_communities, "modularity": r.modularity, "rss_before_mib": before,
            "peak_rss_mib": peak_rss_mib()}


def case_networkx(n_nodes: int, n_edges: int, mem_cap_gib: float) -> dict:
    """networkx.community.louvain_communities (seed 0, weighted) on the same graph, timed from a built nx.Graph."""
    if mem_cap_gib > 0:
        cap = int(mem_cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import networkx as nx

    src, dst, w = planted_edges(n_nodes, n_edges)
    t = time.perf_counter()
    G = nx.Graph()
    G.add_nodes_from(range(n_nodes))
    G.add_weighted_edges_from(zip(src.tolist(), dst.tolist(), w.tolist()))
    build = time.perf_counter() - t
    del src, dst, w
    before = rss_now_mib()
    reset_peak_rss()
    t = time.perf_counter()
    comms = nx.community.louvain_communities(G, weight="weight", seed=0)
    dt = time.perf_counter() - t
    q = nx.community.modularity(G, comms, weight="weight")
    return {"seconds": dt, "build_seconds": build, "communities": len(comms), "modularity": q,
            "rss_before_mib": before, "peak_rss_mib": peak_rss_mib()}


def case_page(n_nodes: int, n_edges: int, draw: bool) -> dict:
    """Layout, write_html (WebGL above 5,000 nodes) and, where chromium is on PATH, the time to first draw."""
    from featgraph.html import write_html
    from featgraph.layout import add_layout

    g = feature_graph(n_nodes, n_edges, seed=2)
    rng = np.random.default_rng(0)
    g.set_node_attr("frequency", rng.random(n_nodes).tolist())
    g.set_node_attr("label", [f"feature {i} · word {i % 97}" for i in range(n_nodes)])
    t = time.perf_counter()
    g = add_layout(g)
    layout_s = time.perf_counter() - t
    out: dict = {"layout_seconds": layout_s}
    with tempfile.TemporaryDirectory() as d:
        before = rss_now_mib()
        reset_peak_rss()
        t = time.perf_counter()
        page = write_html(g, Path(d) / "page.html")
        out.update(build_seconds=time.perf_counter() - t, mb=page.stat().st_size / 1e6, rss_before_mib=before,
                   peak_rss_mib=peak_rss_mib(), webgl="featgraphWebGL.Network" in page.read_text())
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not draw:
            out["draw"] = "not asked"
        elif chromium is None:
            out["draw"] = "no chromium on PATH: first draw not measured"
        else:
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,800", f"--user-data-dir={d}/profile", "--dump-dom", page.resolve().as_uri()]
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", _CHILD_PEAK, chromium, *flags], capture_output=True, text=True,
                               timeout=180)
            out["chromium_seconds"] = time.perf_counter() - t
            tail = p.stderr.strip().splitlines()
            out["chromium_peak_rss_mib"] = int(tail[-1]) / 1024 if tail and tail[-1].isdigit() else None
            m = re.search(r'data-first-draw-ms="(\d+)"', p.stdout)
            out["first_draw_ms"] = int(m.group(1)) if m else None
            if m is None:
                out["draw"] = f"chromium exit {p.returncode}: the page reported no first draw"
    return out


CASES = {"leiden": case_leiden, "networkx": case_networkx, "page": case_page}


def run_case(case: dict, timeout: float, module: str = "analyses.bench_graph", flag: tuple[str, ...] = ()) -> dict | str:
    """Run one case in a fresh interpreter (``python -m module *flag CASE_JSON``); its JSON record (the last line
    that is one), or one line saying why there is none."""
    cmd = [sys.executable, "-m", module, *flag, json.dumps(case)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:.0f} s"
    for ln in reversed(p.stdout.splitlines()):
        if ln.startswith("{"):
            return json.loads(ln)
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    last = err[-1].strip() if err else "no output"
    if "MemoryError" in last or p.returncode in (-9, 137):
        return f"stopped at the memory cap ({last})"
    return f"failed (exit {p.returncode}): {last}"


def _mem(res: dict) -> str:
    return f"peak RSS {res['peak_rss_mib']:7,.0f} MiB (before the call: {res['rss_before_mib']:,.0f})"


def bench_leiden(sizes: list[tuple[int, int]], nx_timeout: float, nx_mem_gib: float, timeout: float,
                 records: list) -> None:
    for n, m in sizes:
        head = f"{n:,} nodes / {m:,} edges"
        for method in ("leiden", "louvain"):
            res = run_case({"case": "leiden", "n_nodes": n, "n_edges": m, "method": method}, timeout)
            name = "featgraph leiden (igraph)" if method == "leiden" else "featgraph louvain (igraph multilevel)"
            if isinstance(res, str):
                print(f"leiden {name:<38} {head}: {res}", flush=True)
            else:
                print(f"leiden {name:<38} {head}: {res['seconds']:8.1f} s  Q={res['modularity']:.3f} "
                      f"{res['communities']:,} communities  {_mem(res)}", flush=True)
            records.append({"part": "leiden", "line": name, "n_nodes": n, "n_edges": m, "result": res})
        res = run_case({"case": "networkx", "n_nodes": n, "n_edges": m, "mem_cap_gib": nx_mem_gib}, nx_timeout)
        name = "networkx louvain_communities"
        if isinstance(res, str):
            cap = f" (caps: {nx_timeout:.0f} s including building the nx.Graph, {nx_mem_gib:g} GiB address space)"
            print(f"leiden {name:<38} {head}: {res}{cap}", flush=True)
        else:
            print(f"leiden {name:<38} {head}: {res['seconds']:8.1f} s  Q={res['modularity']:.3f} "
                  f"{res['communities']:,} communities  {_mem(res)} (nx.Graph built in {res['build_seconds']:.0f} s)",
                  flush=True)
        records.append({"part": "leiden", "line": name, "n_nodes": n, "n_edges": m, "result": res})


def bench_page(n_nodes: int, n_edges: int, draw: bool, timeout: float, records: list) -> None:
    res = run_case({"case": "page", "n_nodes": n_nodes, "n_edges": n_edges, "draw": draw}, timeout)
    head = f"page   write_html {n_nodes:,} nodes / {n_edges:,} edges:"
    if isinstance(res, str):
        print(f"{head} {res}", flush=True)
    else:
        kind = "WebGL" if res["webgl"] else "vis-network"
        draw_s = (f"first draw {res['first_draw_ms']:,} ms after navigation (headless chromium, software GL; "
                  f"largest chromium process's peak RSS {res['chromium_peak_rss_mib'] or 0:,.0f} MiB)" if res.get("first_draw_ms") is not None
                  else res.get("draw", ""))
        print(f"{head} build {res['build_seconds']:.2f} s ({kind}, {res['mb']:.1f} MB; layout before it "
              f"{res['layout_seconds']:.1f} s)  {_mem(res)};  {draw_s}", flush=True)
    records.append({"part": "page", "n_nodes": n_nodes, "n_edges": n_edges, "result": res})


def main() -> None:
    case = json.loads(sys.argv[1])
    fn = CASES[case.pop("case")]
    print(json.dumps(fn(**case)), flush=True)


if __name__ == "__main__":
    main()
