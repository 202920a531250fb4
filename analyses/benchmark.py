"""Throughput figures: ``python -m analyses.benchmark [--device cpu|cuda] [--quick]``.

Prints, for synthetic activations of the demo's shape (L hookpoints × d_model, F features):

* crosscoder training steps per second and tokens per second, per architecture;
* streamed co-activation statistics, tokens per second;
* HTML page build time for a graph of 2,000 nodes and 20,000 edges.

A benchmark is this script, not a timed test; copy its output into docs/benchmarks.md with the command.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.train import train_crosscoder
from featgraph.graph import FeatureGraph
from featgraph.html import write_html
from featgraph.stats import CoactivationStats


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_training(device: str, L: int, D: int, F: int, B: int, steps: int) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    data = torch.randn(8, B, L, D, device=device, generator=gen)
    i = iter(range(10**9))
    source = lambda: data[next(i) % 8]  # noqa: E731
    for arch in ("relu", "batchtopk", "jumprelu"):
        cc = build_crosscoder(CrosscoderConfig.from_flat([f"h{l}" for l in range(L)], D, F, architecture=arch, k=32)).to(device)
        train_crosscoder(cc, source, TrainConfig(steps=5, batch_size=B, log_every=10**9), progress=False)  # warm-up
        _sync(device)
        t = time.perf_counter()
        train_crosscoder(cc, source, TrainConfig(steps=steps, batch_size=B, log_every=10**9), progress=False)
        _sync(device)
        dt = time.perf_counter() - t
        print(f"train  {arch:<10} L={L} D={D} F={F} B={B}: {steps / dt:8.1f} steps/s  {steps * B / dt:12,.0f} tokens/s")


def bench_saelens_peer(device: str, d_in: int, F: int, B: int, steps: int) -> None:
    """The same work in SAELens (if installed): a standard (ReLU + L1) SAE on the concatenated hookpoints, one
    Adam step per batch — what an acausal crosscoder is, minus the per-layer norm penalty."""
    try:
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    except ImportError:
        print("peer   sae-lens not installed: skipped")
        return
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=F, device=device))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    data = torch.randn(8, B, d_in, device=device, generator=torch.Generator(device=device).manual_seed(0))

    def step(i: int) -> None:
        out = sae.training_forward_pass(TrainStepInput(data[i % 8], {"l1": 2.0}, None, i, False))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()

    for i in range(5):
        step(i)
    _sync(device)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    dt = time.perf_counter() - t
    print(f"peer   sae-lens standard SAE d_in={d_in} F={F} B={B}: {steps / dt:8.1f} steps/s  {steps * B / dt:12,.0f} tokens/s")


def bench_stats(device: str, F: int, n_tokens: int, l0: int, chunk: int = 4096) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    stats = CoactivationStats(F)
    chunks = []
    for _ in range(n_tokens // chunk):
        f = torch.zeros(chunk, F, device=device)
        idx = torch.randint(0, F, (chunk, l0), device=device, generator=gen)
        f.scatter_(1, idx, torch.rand(chunk, l0, device=device, generator=gen))
        chunks.append(f)
    t = time.perf_counter()
    for f in chunks:
        stats.update(f)
    dt = time.perf_counter() - t
    print(f"stats  F={F} L0={l0}: {n_tokens / dt:12,.0f} tokens/s ({stats.co_count.nnz:,} co-active pairs kept)")


def bench_html(n_nodes: int = 2000, n_edges: int = 20_000) -> None:
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, n_nodes, n_edges), rng.integers(0, n_nodes, n_edges)
    g = FeatureGraph(
        [f"F{i}" for i in range(n_nodes)],
        {"frequency": rng.random(n_nodes).tolist(), "community": rng.integers(0, 20, n_nodes).tolist(),
         "peak_layer": rng.integers(0, 5, n_nodes).tolist(), "top_contexts": [[{"left": "a ", "token": "b", "right": " c", "act": 1.0}]] * n_nodes},
        src, dst, {"weight": rng.random(n_edges)},
    )
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path = write_html(g, Path(d) / "g.html")
        dt = time.perf_counter() - t
        size = path.stat().st_size
    print(f"html   {n_nodes:,} nodes, {n_edges:,} edges: {dt:.2f} s, {size / 1e6:.1f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer steps and tokens")
    a = p.parse_args()
    print(f"# featgraph benchmark on {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    big = a.device.startswith("cuda")
    bench_training(a.device, L=5, D=128, F=1024, B=1024, steps=20 if a.quick else 100)
    bench_saelens_peer(a.device, d_in=5 * 128, F=1024, B=1024, steps=20 if a.quick else 100)
    if big:
        bench_training(a.device, L=5, D=768, F=16_384, B=4096, steps=50)
    bench_stats(a.device, F=1024, n_tokens=(32_768 if a.quick else 262_144), l0=16)
    bench_html()


if __name__ == "__main__":
    main()
