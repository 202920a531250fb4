"""Side-by-side throughput: ``python -m analyses.benchmark [--device cpu|cuda] [--quick] [--only PARTS] [--seed-scale]``.

Prints, in one run, on the same synthetic activations, device and batch (one line each, with tokens/s or seconds
and peak memory):

* ``train``: featgraph's three crosscoder architectures (relu, batchtopk, jumprelu);
* ``peers``: SAELens (standard, TopK, BatchTopK, JumpReLU), dictionary_learning (its BatchTopK and crosscoder
  trainers) and sparsify (TopK), each in its own venv where their pins clash (:mod:`analyses.bench_peers`,
  bench/peers/);
* ``stats``: co-activation statistics at F = 1,024 / 4,096 / 16,384 / 65,536, L0 = 32 (Zipf feature frequencies):
  :class:`featgraph.stats.CoactivationStats` with dashboards off and on against a naive pair-key accumulator and a
  dense running-sum reference (:mod:`analyses.bench_stats`; dense only up to F = 4,096);
* ``leiden``: featgraph's Leiden on 100 k nodes / 5 M edges and 1 M nodes / 20 M edges against networkx's Louvain
  (:mod:`analyses.bench_graph`; networkx under a time and memory cap);
* ``page``: the WebGL page's build and first draw for 20 k nodes / 200 k edges.

Every case runs in a fresh subprocess, so each peak memory is that process's own peak RSS
(VmHWM: interpreter, libraries and input data included; the lines also give the
resident size before the timed part). ``--seed-scale`` (CUDA) times training at L = 5, D = 768, F = 16,384,
B = 4,096 under bf16 autocast and the statistics at F = 16,384 only. ``--json FILE`` also writes every record.
A benchmark is this script, not a timed test; copy its output into docs/benchmarks.md with the command.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PARTS = ("train", "peers", "stats", "leiden", "page")
QUICK_PEER_ARCHS = {"saelens": {"standard"}, "dictionary_learning": {"batchtopk", "crosscoder"}, "sparsify": {"topk"}}
"""--quick runs one line per peer library (its start-up, not its steps, is what a quick run pays for)."""
STATS_ACCUMULATORS = ("coactivation", "coactivation+dashboards", "coactivation-nonzero", "naive", "dense")


# ---- statistics (one case per subprocess) ------------------------------------------------------------------------
def stats_chunk_size(F: int) -> int:
    """Tokens per chunk: 4,096, fewer where a dense float32 chunk would exceed 256 MiB (1,024 at F = 65,536)."""
    return int(min(4096, max(256, 2**26 // F)))


def case_stats(acc: str, F: int, tokens: int, l0: int, alpha: float, device: str) -> dict:
    """Time one accumulator on ``tokens`` Zipf tokens (chunk construction not timed). The references (naive, dense)
    and ``coactivation-nonzero`` get each chunk's non-zeros (rows, cols, values); ``coactivation`` gets the dense
    (n, F) chunk on ``device`` and does everything its ``update`` does (per-feature statistics, top activations,
    pairs; dashboards when asked)."""
    from analyses.bench_graph import peak_rss_mib, reset_peak_rss, rss_now_mib
    from analyses.bench_stats import Dense, Naive, zipf_chunks
    from featgraph.stats import CoactivationStats

    chunk = stats_chunk_size(F)
    chunks = list(zipf_chunks(F, l0, tokens, chunk, alpha))
    nnz = sum(len(c[1]) for c in chunks)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    dense_chunks: list[torch.Tensor] = []
    if acc.startswith("coactivation") and acc != "coactivation-nonzero" and cuda:  # built once, off the clock
        for n, rows, cols, vals in chunks[:8]:
            f = torch.zeros(n, F, device=device)
            f[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = torch.from_numpy(vals).to(device)
            dense_chunks.append(f)
    before = rss_now_mib()
    reset_peak_rss()  # the peak of the accumulator's run, not of building the chunks
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dt, done = 0.0, 0
    if acc in ("naive", "dense"):
        ref = (Naive if acc == "naive" else Dense)(F)
        t = time.perf_counter()
        for n, rows, cols, vals in chunks:
            ref.update(n, rows, cols, vals)
        ref.result()
        dt = time.perf_counter() - t
        done = tokens
    else:
        dashboards = acc == "coactivation+dashboards"
        # warm-up on a throwaway accumulator: numba's compilation (or loading its cache) and torch's first calls are
        # one-off costs of a process, not of the statistics
        n, rows, cols, vals = chunks[0]
        m = min(n, 256)
        keep = rows < m
        warm = CoactivationStats(F, dashboards=dashboards)
        if acc == "coactivation-nonzero":
            indptr = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows[keep], minlength=m), out=indptr[1:])
            warm.update_nonzero(indptr, cols[keep], vals[keep])
        else:
            f = torch.zeros(m, F, device=device)
            f[torch.from_numpy(rows[keep]).to(device), torch.from_numpy(cols[keep]).to(device)] = torch.from_numpy(vals[keep]).to(device)
            warm.update(f)
        warm.upper()
        sync()
        del warm
        stats = CoactivationStats(F, dashboards=dashboards)
        for i, (n, rows, cols, vals) in enumerate(chunks):
            f = None
            if acc == "coactivation-nonzero":
                indptr = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
                t = time.perf_counter()
                stats.update_nonzero(indptr, cols, vals)
            elif cuda:
                f = dense_chunks[i % len(dense_chunks)]
                t = time.perf_counter()
                stats.update(f)
            else:
                f = torch.zeros(n, F)
                f[torch.from_numpy(rows), torch.from_numpy(cols)] = torch.from_numpy(vals)
                t = time.perf_counter()
                stats.update(f)
            sync()
            dt += time.perf_counter() - t
            done += n
            del f
        t = time.perf_counter()
        stats.upper()  # the result as the graph builder reads it (upper-triangle CSR)
        dt += time.perf_counter() - t
    out = {"tokens": done, "seconds": dt, "tokens_per_s": done / dt, "l0": nnz / tokens, "chunk": chunk,
           "rss_before_mib": before, "peak_rss_mib": peak_rss_mib()}
    if cuda:
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _worker(case: dict) -> None:
    kind = case.pop("case")
    if kind == "stats":
        print(json.dumps(case_stats(**case)), flush=True)
    else:
        raise SystemExit(f"unknown case {kind!r}")


def run_stats_case(case: dict, timeout: float) -> dict | str:
    from analyses.bench_graph import run_case

    return run_case(case, timeout, module="analyses.benchmark", flag=("--case",))


def bench_stats(features: list[int], tokens: int, l0: int, alpha: float, device: str, dense_max: int, timeout: float,
                records: list, accumulators=STATS_ACCUMULATORS) -> None:
    from featgraph.stats import CoactivationStats

    accs = [a for a in accumulators if a != "coactivation-nonzero" or hasattr(CoactivationStats, "update_nonzero")]
    for F in features:
        for acc in accs:
            if acc == "dense" and F > dense_max:
                print(f"stats  {acc:<26} F={F:6,}: not run (F² sums need {16 * F * F / 2**30:.1f} GiB; "
                      f"the dense reference runs up to F = {dense_max:,})", flush=True)
                continue
            res = run_stats_case({"case": "stats", "acc": acc, "F": F, "tokens": tokens, "l0": l0, "alpha": alpha,
                                  "device": device if acc.startswith("coactivation") else "cpu"}, timeout)
            if isinstance(res, str):
                print(f"stats  {acc:<26} F={F:6,}: {res}", flush=True)
            else:
                cuda = f"  peak CUDA {res['peak_cuda_mib']:,.0f} MiB" if "peak_cuda_mib" in res else ""
                print(f"stats  {acc:<26} F={F:6,} L0={res['l0']:.1f} chunk={res['chunk']:,}: {res['tokens_per_s']:12,.0f} "
                      f"tokens/s ({res['tokens']:,} tokens in {res['seconds']:.2f} s)  peak RSS {res['peak_rss_mib']:7,.0f} "
                      f"MiB (before: {res['rss_before_mib']:,.0f}){cuda}", flush=True)
            records.append({"part": "stats", "line": acc, "F": F, "result": res})


# ---- the run -------------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="CI-sized: few steps, small graphs and token counts (< 1 min)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {','.join(PARTS)}")
    p.add_argument("--seed-scale", action="store_true", help="CUDA shapes: L=5, D=768, F=16,384, B=4,096; stats at F=16,384")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per line (default 30; 3 with --quick)")
    p.add_argument("--train-shapes", default="demo,topk16k",
                   help="training shapes: demo (L=5, D=128, F=1,024, B=1,024, every line) and/or topk16k (F=16,384, k=32, the TopK family); "
                        "on CUDA the seed shape is added")
    p.add_argument("--stats-features", default=None, help="comma-separated F for the statistics (default 1024,4096,16384,65536)")
    p.add_argument("--stats-tokens", type=int, default=None, help="tokens per statistics line (default 40,960; 409,600 on CUDA)")
    p.add_argument("--stats-accumulators", default=None,
                   help=f"comma-separated among {','.join(STATS_ACCUMULATORS)} (default all; coactivation,coactivation+dashboards with --seed-scale)")
    p.add_argument("--leiden-sizes", default=None, help="NODES:EDGES,... (default 100000:5000000,1000000:20000000)")
    p.add_argument("--nx-timeout", type=float, default=300.0, help="seconds networkx gets per graph, building it included")
    p.add_argument("--nx-memory-gib", type=float, default=8.0, help="address-space cap of the networkx process (0: none)")
    p.add_argument("--no-draw", action="store_true", help="skip the headless-chromium first draw of the page")
    p.add_argument("--json", default=None, help="also write every record to this JSON file")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one statistics case in this process
    a = p.parse_args(argv)
    if a.case is not None:
        _worker(json.loads(a.case))
        return
    parts = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in parts if s not in PARTS]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}; choose among {', '.join(PARTS)}")
    cuda = a.device.startswith("cuda")
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h"], capture_output=True, text=True,
                                cwd=str(Path(__file__).resolve().parent.parent)).stdout.strip() or "?"
    except OSError:
        commit = "?"
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    print(f"# featgraph benchmark on {a.device} ({name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"commit {commit}){' --quick' if a.quick else ''}", flush=True)
    records: list = []
    t_all = time.perf_counter()

    if "train" in parts or "peers" in parts:
        from analyses.bench_peers import FEATGRAPH, PEERS, bench_training

        peers = [ln for ln in PEERS if not a.quick or ln.arch in QUICK_PEER_ARCHS[ln.runner]]
        lines = (FEATGRAPH if "train" in parts else []) + (peers if "peers" in parts else [])
        if a.seed_scale:
            shapes = [(5, 768, 16_384, 4096, 32, False)]
            steps, warmup = a.steps or 50, 5
        elif a.quick:
            shapes = [(5, 64, 512, 256, 16, False)]
            steps, warmup = a.steps or 3, 1
        else:
            shapes = [(5, 128, 1024, 1024, 32, False)] * ("demo" in a.train_shapes) + [(5, 128, 16_384, 1024, 32, True)] * ("topk16k" in a.train_shapes)
            if cuda:  # and the seed-scale shape, every line
                shapes.append((5, 768, 16_384, 4096, 32, False))
            steps, warmup = a.steps or 30, 3
        with tempfile.TemporaryDirectory() as d:
            bench_training(lines, a.device, shapes, steps, warmup, Path(d), records)

    if "stats" in parts:
        default_F = "16384" if a.seed_scale else ("1024" if a.quick else "1024,4096,16384,65536")
        features = [int(x) for x in (a.stats_features or default_F).split(",")]
        tokens = a.stats_tokens or (4096 if a.quick else (409_600 if cuda else 40_960))
        accs = (a.stats_accumulators or ("coactivation,coactivation+dashboards" if a.seed_scale else ",".join(STATS_ACCUMULATORS))).split(",")
        unknown = [x for x in accs if x not in STATS_ACCUMULATORS]
        if unknown:
            p.error(f"unknown accumulator(s) {', '.join(unknown)}; choose among {', '.join(STATS_ACCUMULATORS)}")
        bench_stats(features, tokens, 32, 1.0, a.device, 4096, 1200.0, records, accs)

    if "leiden" in parts:
        from analyses.bench_graph import bench_leiden

        spec = a.leiden_sizes or ("10000:50000" if a.quick else "100000:5000000,1000000:20000000")
        sizes = [tuple(int(v) for v in s.split(":")) for s in spec.split(",")]
        bench_leiden(sizes, 20.0 if a.quick else a.nx_timeout, a.nx_memory_gib, 1800.0, records)

    if "page" in parts:
        from analyses.bench_graph import bench_page

        n, m = (5001, 20_000) if a.quick else (20_000, 200_000)
        bench_page(n, m, not a.no_draw, 600.0, records)

    print(f"# done in {time.perf_counter() - t_all:.0f} s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": a.device, "name": name, "commit": commit, "records": records}, indent=1))


if __name__ == "__main__":
    main()
