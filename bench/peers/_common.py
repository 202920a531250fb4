"""The harness every training runner shares (featgraph's and each peer's), so all lines are timed alike.

A runner is a script run as ``VENV_PYTHON bench/peers/run_NAME.py --data ACTS.safetensors --arch ARCH ...`` with
the peer's own venv; it imports nothing from featgraph except where it benchmarks featgraph itself. It loads the
shared activations, builds the peer's trainer with the matched shape, runs ``--warmup`` steps, times ``--steps``
steps (CUDA synchronised before and after), and prints one JSON line: {name, steps_per_s, tokens_per_s,
peak_rss_mib, ...}. Peak memory is the runner process's peak resident set size (VmHWM; the interpreter,
torch and the data included; ``rss_after_load_mib`` is the same figure before the trainer was built) and, on CUDA,
``torch.cuda.max_memory_allocated``.

Shapes: the activations file holds ``acts_NLD`` (float32, N = n_batches·B rows of L hookpoints × D). SAE peers see
each row as one vector of d_in = L·D (an acausal crosscoder is an SAE on the concatenation, minus the per-layer
decoder-norm penalty); crosscoder peers see (B, L, D).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import struct
import sys
import time

import torch

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def load_acts(path: str) -> torch.Tensor:
    """``acts_NLD`` from a safetensors file, read without the safetensors package (not every peer venv has it):
    8-byte little-endian header length, JSON header, raw little-endian tensor bytes."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        meta = header["acts_NLD"]
        start, end = meta["data_offsets"]
        fh.seek(8 + n + start)
        buf = bytearray(fh.read(end - start))
    return torch.frombuffer(buf, dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"]).clone()


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB: VmHWM from /proc/self/status where there is one (fresh
    at exec), else ``ru_maxrss`` (KiB on Linux, bytes on macOS), which on Linux starts at the spawning parent's
    resident size — a child spawned by a large process would report at least that."""
    try:
        with open("/proc/self/status") as fh:
            for ln in fh:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if platform.system() == "Darwin" else r / 1024


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="safetensors file with acts_NLD")
    p.add_argument("--arch", required=True)
    p.add_argument("--features", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p


class Setup:
    """What a runner gets: the parsed arguments, the data on the device as (n_batches, B, L, D), and a batch cycler."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        acts = load_acts(args.data)
        N, L, D = acts.shape
        B = args.batch
        if N < B:
            sys.exit(f"the activations file holds {N} rows, fewer than one batch of {B}")
        self.L, self.D, self.B = L, D, B
        self.batches = acts[: (N // B) * B].reshape(N // B, B, L, D).to(args.device)
        del acts
        self.rss_after_load = rss_mib()
        self.i = 0

    def next_NLD(self) -> torch.Tensor:
        x = self.batches[self.i % len(self.batches)]
        self.i += 1
        return x

    def next_flat(self) -> torch.Tensor:
        """The next batch as (B, L·D)."""
        return self.next_NLD().reshape(self.B, self.L * self.D)

    def autocast(self):
        """bf16 autocast on CUDA (what featgraph's trainer uses there), nothing on the CPU."""
        if self.args.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def sync(self) -> None:
        if self.args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def measure(self, name: str, run_steps, **extra) -> None:
        """Warm up, time ``run_steps(n)`` for ``--steps`` steps and print the JSON line."""
        a = self.args
        if a.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        run_steps(a.warmup)
        self.sync()
        t = time.perf_counter()
        run_steps(a.steps)
        self.sync()
        dt = time.perf_counter() - t
        out = {
            "name": name, "arch": a.arch, "L": self.L, "D": self.D, "F": a.features, "B": self.B, "k": a.k,
            "device": a.device, "steps": a.steps, "seconds": dt, "steps_per_s": a.steps / dt,
            "tokens_per_s": a.steps * self.B / dt, "peak_rss_mib": rss_mib(), "rss_after_load_mib": self.rss_after_load,
            "torch": torch.__version__, "threads": torch.get_num_threads(), **extra,
        }
        if a.device.startswith("cuda"):
            out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(out), flush=True)
