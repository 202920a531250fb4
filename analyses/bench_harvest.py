"""Crosscoder training throughput by where the activations come from: ``python -m analyses.bench_harvest``.

The demo's shape on the embedded default model (4 layers, d_model 128, rows of 128 tokens): the 5 default hookpoints,
F = 1,024 features, batches of B = 1,024 tokens, a 16,384-token buffer (``FitConfig(buffer_tokens=16 * B)``, as the
demo sets it). Each mode trains a fresh crosscoder (same seed) with :func:`~crosscoder.train.train_crosscoder` from
an :class:`~crosscoder.harvest.ActivationBuffer` over the same training rows; only the training loop is timed (the
buffer's first fill and the cache's writing are one-off costs, reported apart):

* ``on the fly``: the buffer runs the model on each refill, in the training thread (``FitConfig(prefetch=False)``);
* ``on the fly + prefetch``: the next refill is harvested on a background thread while training reads the current
  one (the default);
* ``from cache``: refills read a memory-mapped activation cache written beforehand (``--activation-cache``);
* ``from cache + prefetch``: the same, the reads on the background thread;
* ``train only``: batches sliced from one in-memory tensor, no refills at all (the ceiling).

Two more lines time the parts alone: harvesting (the model's forward passes, tokens/s) and a training step. Modes are
interleaved over ``--repeats`` and the median is printed, since other processes share the CPU. Goal (issue 15): on the
fly with prefetch costs less than twice training from the cache. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable

import torch

from analyses.tiny_model import TINY, EmbeddedConfig, load_embedded
from crosscoder.activation_cache import write_activation_cache
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig, default_hookpoints
from crosscoder.harvest import ActivationBuffer, estimate_norm_scales, harvest
from crosscoder.train import train_crosscoder


def _timed_training(make_source: Callable[[], object], cc_cfg: CrosscoderConfig, train_cfg: TrainConfig, scales_L: torch.Tensor,
                    device: str) -> float:
    """Seconds of the training loop alone (the source is built, and its first fill done, before the clock starts)."""
    source = make_source()
    cc = build_crosscoder(cc_cfg).to(device)
    cc.norm_scale_L.copy_(scales_L)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_crosscoder(cc, source, train_cfg, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if hasattr(source, "close"):
        source.close()
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["default", "tiny"], default="default", help="embedded model (tiny: a quick check)")
    p.add_argument("--rows", type=int, default=512, help="training rows (the cache holds their activations)")
    p.add_argument("--steps", type=int, default=48, help="training steps per mode and repeat")
    p.add_argument("--features", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--buffer-batches", type=int, default=16, help="buffer size in batches (the demo: 16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    emb = load_embedded(TINY if args.size == "tiny" else EmbeddedConfig(), device=args.device, progress=False)
    model, rows_NT = emb.model, emb.tokens_train_NT[: args.rows]
    hps = default_hookpoints(model.cfg.n_layers)
    scales_L = estimate_norm_scales(model, rows_NT, hps)
    cc_cfg = CrosscoderConfig(hps, model.cfg.d_model, args.features, seed=0)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=2e-3)
    n_buffer = args.buffer_batches * args.batch
    tokens = args.steps * args.batch
    print(f"model {args.size}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, rows of {rows_NT.shape[1]} tokens; "
          f"{len(hps)} hookpoints, F={args.features}, B={args.batch}, buffer {n_buffer} tokens, {args.rows} rows, "
          f"{args.steps} steps; torch threads {torch.get_num_threads()}, device {args.device}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = write_activation_cache(model, rows_NT, hps, tmp, progress=False)
        write_s = time.perf_counter() - t0
        n_cached = rows_NT.shape[0] * (rows_NT.shape[1] - 1)
        print(f"cache written once: {n_cached:,} tokens in {write_s:.1f} s ({n_cached / write_s:,.0f} tokens/s)")

        def buffer(prefetch: bool, source=None) -> Callable[[], ActivationBuffer]:
            return lambda: ActivationBuffer(model, rows_NT, hps, scales_L, args.batch, n_buffer_tokens=n_buffer, seed=0,
                                            device=args.device, source=source, prefetch=prefetch)

        def in_memory() -> Callable[[], torch.Tensor]:
            acts_BLD = torch.cat(list(cache.activations(torch.arange(min(64, cache.n_rows)), args.device))) * scales_L.to(args.device)[:, None]
            n = acts_BLD.shape[0] // args.batch
            state = {"i": 0}

            def next_batch() -> torch.Tensor:
                state["i"] = (state["i"] + 1) % n
                return acts_BLD[state["i"] * args.batch : (state["i"] + 1) * args.batch].clone()

            return next_batch

        modes = {
            "on the fly": buffer(False),
            "on the fly + prefetch": buffer(True),
            "from cache": buffer(False, cache),
            "from cache + prefetch": buffer(True, cache),
            "train only": in_memory,
        }
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        harvest_s: list[float] = []
        for _ in range(args.repeats):
            for name, make in modes.items():
                seconds[name].append(_timed_training(make, cc_cfg, train_cfg, scales_L, args.device))
            t0 = time.perf_counter()
            n = sum(a.shape[0] for a in harvest(model, rows_NT[: n_buffer // rows_NT.shape[1] + 1], hps, device=args.device))
            harvest_s.append((time.perf_counter() - t0) / n)

    print(f"\n{'mode':<24}{'tokens/s':>12}{'s / step':>10}{'vs cache':>10}   (median of {args.repeats})")
    base = statistics.median(seconds["from cache"])
    for name, s in seconds.items():
        med = statistics.median(s)
        runs = ", ".join(f"{x / args.steps:.3f}" for x in s)
        print(f"{name:<24}{tokens / med:>12,.0f}{med / args.steps:>10.3f}{med / base:>9.2f}×   s / step each run: {runs}")
    per_token = statistics.median(harvest_s)
    print(f"{'harvest alone':<24}{1 / per_token:>12,.0f}{per_token * args.batch:>10.3f}   (the model's forward passes, per batch of tokens)")
    fly, pre = statistics.median(seconds["on the fly"]), statistics.median(seconds["on the fly + prefetch"])
    print(f"\non the fly + prefetch / from cache = {pre / base:.2f} (goal < 2); prefetch saves {100 * (1 - pre / fly):.0f} % of "
          f"on the fly's time")


if __name__ == "__main__":
    main()
