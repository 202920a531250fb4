"""Training-step throughput on the CPU: ``python -m analyses.bench_train [--quick] [--repeats N] [--threads N] [--compile] [--profile]``.

Prints, side by side in one run (the variants take turns, ``--repeats`` times; medians):

* BatchTopK, k = 32, F = 16,384, L = 5 hookpoints × D = 128, B = 1,024: steps/s with the dense matmuls
  (``sparse_kernels="off"``, the path every step took before :mod:`crosscoder.sparse_ops`) and with the sparse
  kernels, and the ratio;
* the ReLU crosscoder on the demo's shape (L = 5, D = 128, F = 1,024, B = 1,024) against SAELens's
  ``StandardTrainingSAE`` on d_in = 640 (the same arithmetic: an acausal crosscoder is a standard SAE on the
  concatenated hookpoints plus its per-layer norm penalty), with a plain ``torch.mm`` of the same shape in the same
  run, to read each step's matmul FLOPs as achieved GFLOP/s;
* with ``--compile``, ``torch.compile`` of the ReLU loss against eager (compile time, gradients, speed);
* with ``--profile``, a ``torch.profiler`` table of a few steps of each ReLU step, and the share of their time spent
  in matmuls.

A benchmark is this script, not a timed test. Our steps are timed inside :func:`crosscoder.train.train_crosscoder`
(the real loop: clipping, Adam, dead-latent bookkeeping), after ``--warmup`` steps of each call.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from typing import Callable, Iterator

import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.train import train_crosscoder

MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::_embedding_bag", "aten::_embedding_bag_forward_only")


def _batches(L: int, D: int, B: int, n: int = 8) -> Callable[[], torch.Tensor]:
    data = torch.randn(n, B, L, D, generator=torch.Generator().manual_seed(0))
    i = iter(range(10**12))
    return lambda: data[next(i) % n]


def _crosscoder(arch: str, L: int, D: int, F: int, k: int = 32):
    return build_crosscoder(CrosscoderConfig.from_flat([f"h{l}" for l in range(L)], D, F, architecture=arch, k=k))


@contextlib.contextmanager
def _per_tensor_adam() -> Iterator[None]:
    """torch's per-tensor Adam loop (its CPU default), which train_crosscoder used before it asked for foreach."""
    adam = torch.optim.Adam
    torch.optim.Adam = lambda params, **kw: adam(params, **{**kw, "foreach": False})  # type: ignore[misc]
    try:
        yield
    finally:
        torch.optim.Adam = adam  # type: ignore[misc]


def ours(arch: str, L: int, D: int, F: int, B: int, warmup: int, before: bool = False, **train) -> Callable[[int], float]:
    """Seconds per step of our training loop (after ``warmup`` steps of each call), as a function of the step count;
    ``before``: with the per-tensor Adam of earlier versions."""
    cc, source = _crosscoder(arch, L, D, F), _batches(L, D, B)

    def run(steps: int) -> float:
        stamps: list[float] = []
        cfg = TrainConfig(steps=warmup + steps, batch_size=B, log_every=10**9, **train)
        with _per_tensor_adam() if before else contextlib.nullcontext():
            train_crosscoder(cc, source, cfg, progress=False, on_step=lambda step: stamps.append(time.perf_counter()))
        return (stamps[-1] - stamps[warmup - 1]) / steps

    return run


def saelens(d_in: int, F: int, B: int, warmup: int) -> Callable[[int], float] | None:
    """Seconds per step of SAELens's standard SAE with the same loop as analyses.benchmark.bench_saelens_peer."""
    try:
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    except ImportError:
        return None
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=F, device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    data = torch.randn(8, B, d_in, generator=torch.Generator().manual_seed(0))

    def step(i: int) -> None:
        out = sae.training_forward_pass(TrainStepInput(data[i % 8], {"l1": 2.0}, None, i, False))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()

    def run(steps: int) -> float:
        for i in range(warmup):
            step(i)
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        return (time.perf_counter() - t) / steps

    return run


def plain_mm(B: int, K: int, N: int) -> Callable[[int], float]:
    a, w = torch.randn(B, K), torch.randn(K, N)

    def run(steps: int) -> float:
        a @ w
        t = time.perf_counter()
        for _ in range(steps):
            a @ w
        return (time.perf_counter() - t) / steps

    return run


def side_by_side(variants: dict[str, Callable[[int], float]], steps: int, repeats: int) -> dict[str, list[float]]:
    """Each variant's seconds per step, ``repeats`` times, the variants taking turns."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run(steps))
    return times


def _ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    return statistics.median(s / f for s, f in zip(times[slow], times[fast]))


def _report(times: dict[str, list[float]], flops: dict[str, float] | None = None) -> None:
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = f"  {flops[name] / med / 1e9:7.1f} GFLOP/s" if flops and name in flops else ""
        spread = ", ".join(f"{1 / t:.2f}" for t in ts)
        print(f"  {name:<44} {1 / med:8.2f} steps/s  {med * 1e3:8.1f} ms{rate}   (repeats: {spread})")


def bench_batchtopk(steps: int, repeats: int, warmup: int, F: int = 16_384, B: int = 1024) -> None:
    L, D = 5, 128
    print(f"\nbatchtopk k=32 F={F:,} L={L} D={D} B={B:,} ({steps} steps x {repeats} repeats)")
    before, dense, sparse = "before: dense, per-tensor Adam", "dense (sparse_kernels=off)", "now: sparse (auto = on here)"
    times = side_by_side({
        before: ours("batchtopk", L, D, F, B, warmup, before=True, sparse_kernels="off"),
        dense: ours("batchtopk", L, D, F, B, warmup, sparse_kernels="off"),
        sparse: ours("batchtopk", L, D, F, B, warmup),
    }, steps, repeats)
    _report(times)
    print(f"  speed-up now / before: {_ratio(times, before, sparse):.2f}x; sparse / dense, same Adam: {_ratio(times, dense, sparse):.2f}x"
          " (medians of paired repeats)")


def bench_relu(steps: int, repeats: int, warmup: int, F: int = 1024, B: int = 1024) -> None:
    L, D = 5, 128
    d_in = L * D
    mm = 2 * B * d_in * F
    print(f"\nrelu crosscoder L={L} D={D} F={F:,} B={B:,} vs SAELens standard SAE d_in={d_in} ({steps} steps x {repeats} repeats)")
    variants = {"featgraph relu crosscoder": ours("relu", L, D, F, B, warmup),
                "featgraph relu, before (per-tensor Adam)": ours("relu", L, D, F, B, warmup, before=True)}
    peer = saelens(d_in, F, B, warmup)
    if peer is None:
        print("  sae-lens not installed: peer skipped")
    else:
        variants["sae-lens StandardTrainingSAE"] = peer
    variants[f"torch.mm ({B}x{d_in} @ {d_in}x{F})"] = plain_mm(B, d_in, F)
    # Matmuls per step: encoder forward, encoder weight grad, decoder forward, decoder weight grad, grad of the code
    # (5); SAELens subtracts b_dec from the input, so its encoder also back-propagates to the input (6).
    flops = {"featgraph relu crosscoder": 5 * mm, "featgraph relu, before (per-tensor Adam)": 5 * mm,
             "sae-lens StandardTrainingSAE": 6 * mm, f"torch.mm ({B}x{d_in} @ {d_in}x{F})": mm}
    times = side_by_side(variants, steps, repeats)
    _report(times, flops)
    if peer is not None:
        print(f"  featgraph / sae-lens speed-up (median of paired repeats): {_ratio(times, 'sae-lens StandardTrainingSAE', 'featgraph relu crosscoder'):.2f}x")


def bench_compile(steps: int, repeats: int, F: int = 1024, B: int = 1024) -> None:
    """torch.compile of the ReLU crosscoder's loss on the demo's shape: compile time, agreement with eager, and eager
    against compiled loss + backward, taking turns (the optimiser step is the same for both, so it is left out)."""
    L, D = 5, 128
    cc, x = _crosscoder("relu", L, D, F), _batches(L, D, B)()

    def grads(fn) -> list[torch.Tensor]:
        cc.zero_grad(set_to_none=True)
        fn(x, 2.0).loss.backward()
        return [p.grad.clone() for p in cc.parameters()]

    def timed(fn) -> Callable[[int], float]:
        def run(n: int) -> float:
            t = time.perf_counter()
            for _ in range(n):
                grads(fn)
            return (time.perf_counter() - t) / n
        return run

    print(f"\ntorch.compile of the relu loss L={L} D={D} F={F:,} B={B:,} ({steps} steps x {repeats} repeats)")
    compiled = torch.compile(cc.loss)
    t = time.perf_counter()
    try:
        got = grads(compiled)
    except Exception as e:  # noqa: BLE001 (a benchmark reports what torch.compile does here)
        print(f"  torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0]}")
        return
    print(f"  compile + first step: {time.perf_counter() - t:.1f} s; largest gradient difference to eager: "
          f"{max(float((a - b).abs().max()) for a, b in zip(got, grads(cc.loss))):.1e}")
    times = side_by_side({"eager loss + backward": timed(cc.loss), "compiled loss + backward": timed(compiled)}, steps, repeats)
    _report(times)
    print(f"  compiled / eager speed-up (median of paired repeats): {_ratio(times, 'eager loss + backward', 'compiled loss + backward'):.2f}x")


def profile_relu(steps: int, F: int = 1024, B: int = 1024) -> None:
    from torch.profiler import ProfilerActivity, profile

    L, D = 5, 128
    runs = {"featgraph relu crosscoder": ours("relu", L, D, F, B, warmup=2)}
    peer = saelens(L * D, F, B, warmup=2)
    if peer is not None:
        runs["sae-lens StandardTrainingSAE"] = peer
    for name, run in runs.items():
        run(2)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(steps)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
        print(f"\nprofile: {name}, {steps} steps (+2 warm-up); matmuls {matmul / total:.0%} of op time")
        print(events.table(sort_by="self_cpu_time_total", row_limit=18))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps")
    p.add_argument("--repeats", type=int, default=5, help="turns per variant (medians are reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each timed call")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of the ReLU steps")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the ReLU loss (compiles for ~30 s)")
    p.add_argument("--only", choices=["batchtopk", "relu"], default=None, help="run one of the two comparisons")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"# featgraph training benchmark ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    if a.only in (None, "batchtopk"):
        bench_batchtopk(steps=3 if a.quick else 8, repeats=a.repeats, warmup=a.warmup)
    if a.only in (None, "relu"):
        bench_relu(steps=10 if a.quick else 30, repeats=a.repeats, warmup=a.warmup)
    if a.compile:
        bench_compile(steps=10 if a.quick else 30, repeats=a.repeats)
    if a.profile:
        profile_relu(steps=5 if a.quick else 10)


if __name__ == "__main__":
    main()
