"""Training throughput side by side: featgraph's crosscoders and the peers (SAELens, dictionary_learning, sparsify)
on the same activations, device and batch. Used by ``python -m analyses.benchmark --only train,peers``.

The main process writes one seeded activation tensor (safetensors, ``acts_NLD`` float32) to a temporary folder;
each line is one runner script under bench/peers/ run as a subprocess with its own venv's python (featgraph and
SAELens: this interpreter; dictionary_learning and sparsify: the venvs bench/peers/make_venvs.sh builds under
``$PEER_VENVS``, default /work/peer-venvs, because their dependency trees clash with featgraph's). A runner prints
one JSON line (steps/s, tokens/s, peak RSS; see bench/peers/_common.py). A peer whose venv is missing or whose
runner fails prints one line saying so and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RUNNERS = REPO / "bench" / "peers"
DEFAULT_PEER_VENVS = "/work/peer-venvs"


def peer_venvs() -> Path:
    return Path(os.environ.get("PEER_VENVS", DEFAULT_PEER_VENVS))


@dataclass(frozen=True)
class Line:
    """One benchmark line: which runner with which python (``venv`` None: this interpreter) and which architecture."""

    group: str  # "train" (featgraph) or "peer"
    runner: str  # bench/peers/run_<runner>.py
    arch: str
    venv: str | None = None  # name under $PEER_VENVS

    def python(self) -> Path:
        """The peer venv's python; this interpreter for featgraph and SAELens, and for every peer where
        ``PEER_SAME_PYTHON=1`` (a machine where the peers are pip-installed into folders instead: see ``site``)."""
        if self.venv is None or os.environ.get("PEER_SAME_PYTHON") == "1":
            return Path(sys.executable)
        return peer_venvs() / self.venv / "bin" / "python"

    def site(self) -> Path | None:
        """With ``PEER_SAME_PYTHON=1``: ``$PEER_VENVS/<venv>/site`` when it exists (a ``pip install --target`` folder
        put first on the runner's path: two versions of one package, such as dictionary_learning's, each in its own)."""
        if self.venv is None or os.environ.get("PEER_SAME_PYTHON") != "1":
            return None
        folder = peer_venvs() / self.venv / "site"
        return folder if folder.is_dir() else None


FEATGRAPH = [Line("train", "featgraph", a) for a in ("relu", "batchtopk", "jumprelu")]
PEERS = [
    Line("peer", "saelens", "standard"),
    Line("peer", "saelens", "topk"),
    Line("peer", "saelens", "batchtopk"),
    Line("peer", "saelens", "jumprelu"),
    Line("peer", "dictionary_learning", "batchtopk", "dictionary-learning"),
    Line("peer", "dictionary_learning", "crosscoder", "dictionary-learning-xc"),
    Line("peer", "sparsify", "topk", "sparsify"),
]
TOPK_FAMILY = {"batchtopk", "topk"}


def write_activations(path: Path, n_rows: int, L: int, D: int, seed: int = 0) -> Path:
    """Seeded synthetic activations (n_rows, L, D), float32, unit variance per coordinate — what featgraph's
    normalised activations look like to a trainer — saved as ``acts_NLD``."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    save_file({"acts_NLD": torch.randn(n_rows, L, D, generator=gen)}, str(path))
    return path


def dense_flops_per_step(L: int, D: int, F: int, B: int) -> float:
    """FLOPs of one dense training step: encoder and decoder matmuls (2·B·L·D·F each) forward, twice that backward."""
    return 12.0 * B * L * D * F


def run_line(line: Line, data: Path, F: int, B: int, k: int, steps: int, warmup: int, device: str,
             timeout: float = 600.0) -> dict | str:
    """The runner's JSON record, or one line saying why there is none."""
    py = line.python()
    if not py.exists():
        return (f"not installed: no venv at {py.parent.parent} (build it with `bash bench/peers/make_venvs.sh "
                f"{line.venv}`)")
    cmd = [str(py), str(RUNNERS / f"run_{line.runner}.py"), "--data", str(data), "--arch", line.arch,
           "--features", str(F), "--batch", str(B), "--k", str(k), "--steps", str(steps), "--warmup", str(warmup),
           "--device", device]
    site = line.site()
    path = [str(RUNNERS), str(site) if site else None, str(REPO), os.environ.get("PYTHONPATH")]
    if line.venv is not None and os.environ.get("PEER_SAME_PYTHON") != "1":
        path = [str(RUNNERS)]  # a peer venv must not see featgraph or its packages through PYTHONPATH
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:.0f} s"
    for ln in reversed(p.stdout.splitlines()):
        if ln.startswith("{"):
            return json.loads(ln)
    err = [ln for ln in (p.stderr or "").splitlines() if ln.strip()]
    return f"failed (exit {p.returncode}): {err[-1].strip() if err else 'no output'}"


def label(line: Line) -> str:
    if line.runner == "featgraph":
        return f"featgraph {line.arch}"
    peer = {"saelens": "sae-lens", "dictionary_learning": "dictionary_learning", "sparsify": "sparsify"}[line.runner]
    return f"{peer} {line.arch}"


def format_line(line: Line, res: dict | str, F: int, B: int, L: int, D: int, matmul_tflops: float | None) -> str:
    head = f"{line.group:<6} {label(line):<32} L={L} D={D} F={F:,} B={B:,}:"
    if isinstance(res, str):
        return f"{head} {res}"
    s = (f"{head} {res['steps_per_s']:8.2f} steps/s {res['tokens_per_s']:12,.0f} tokens/s  peak RSS "
         f"{res['peak_rss_mib']:6,.0f} MiB (data loaded: {res['rss_after_load_mib']:,.0f})")
    if "peak_cuda_mib" in res:
        s += f"  peak CUDA {res['peak_cuda_mib']:,.0f} MiB"
    if matmul_tflops:
        tf = dense_flops_per_step(L, D, F, B) * res["steps_per_s"] / 1e12
        s += f"  dense-equivalent {tf:6.1f} TFLOP/s = {100 * tf / matmul_tflops:4.1f} % of the bf16 matmul limit"
    return s


def bf16_matmul_tflops(device: str, n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matmul limit: mean of ``reps`` n×n×n products after 3 warm-ups, random data."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2.0 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def bench_training(lines: list[Line], device: str, shapes: list[tuple[int, int, int, int, int, bool]], steps: int,
                   warmup: int, workdir: Path, records: list) -> None:
    """Each shape (L, D, F, B, k, topk_only) on the same activations file per (L, D, B)."""
    matmul = None
    if device.startswith("cuda"):
        matmul = bf16_matmul_tflops(device)
        print(f"# bf16 matmul limit measured here (8192³, mean of 10): {matmul:.0f} TFLOP/s", flush=True)
    for L, D, F, B, k, topk_only in shapes:
        data = workdir / f"acts_L{L}_D{D}_B{B}.safetensors"
        if not data.exists():
            write_activations(data, 4 * B, L, D)
        for line in lines:
            if topk_only and line.arch not in TOPK_FAMILY:
                continue
            res = run_line(line, data, F, B, k, steps, warmup, device)
            print(format_line(line, res, F, B, L, D, matmul), flush=True)
            records.append({"part": line.group, "line": label(line), "L": L, "D": D, "F": F, "B": B, "k": k,
                            "result": res})
