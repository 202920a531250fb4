"""Absorption, FVU and L0 of flat vs Matryoshka dictionaries, with and without the decoder-orthogonality penalty, on
planted hierarchical features (crosscoder.absorption.PlantedHierarchy; no model needed).

    python -m analyses.bench_absorption                       # the table in docs/crosscoders.md
    python -m analyses.bench_absorption --seeds 1 --steps 400 # quicker

Data: 4 parents × 4 children + 8 independent features, orthonormal in d = 32; per token and parent one child fires
with p = 0.3 (and then the parent), the parent alone with p = 0.1, each independent feature with p = 0.05, unit
magnitudes, noise 0.01. Dictionaries of 32 latents; Matryoshka prefixes (1/8, 1): a first prefix of 4 latents, where
the parents are looked for. Absorption measure: crosscoder.absorption (parent latent = best decoder cosine with the
parent direction; recall = fraction of the parent's tokens on which it fires; child→parent cos = the parent direction
carried by the child latents). FVU and L0 on 8,192 held-out tokens (crosscoder.metrics.reconstruction_metrics), means
over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crosscoder.absorption import PlantedHierarchy, absorption_report
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.metrics import reconstruction_metrics
from crosscoder.train import train_crosscoder

F, D, FIRST = 32, 32, 4


def run(arch: str, matryoshka: bool, coeff: float, seed: int, steps: int, data: PlantedHierarchy, ev) -> dict[str, float]:
    name = f"matryoshka_{arch}" if matryoshka else arch
    opts = ({"k": 3, "aux_k": 8} if arch == "batchtopk" else {}) | ({"prefixes": [FIRST / F, 1.0]} if matryoshka else {})
    cc = build_crosscoder(CrosscoderConfig.from_flat(["h0"], D, F, architecture=name, seed=seed, dead_after_tokens=2000, **opts))
    tc = TrainConfig(steps=steps, batch_size=128, lr=3e-3, l1_coeff=0.1, log_every=steps, seed=seed, decoder_orthogonality=coeff)
    train_crosscoder(cc, data.batches(128, seed=100 + seed), tc, progress=False)
    m = reconstruction_metrics(cc, [ev.x_BLD])
    rep = absorption_report(cc, ev.x_BLD, data.parent_dirs_PLD, ev.parent_BP, data.child_dirs_CLD, data.child_parent_C,
                            among=FIRST if matryoshka else None)
    return {"fvu": m.fvu_pooled, "l0": m.l0, **rep.summary()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--coeffs", default="0,0.1,1", help="decoder_orthogonality values, comma-separated")
    p.add_argument("--archs", default="relu,batchtopk")
    a = p.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest and results do not depend on the core count
    data = PlantedHierarchy(n_parents=4, children=4, n_independent=8, d_model=D, p_child=0.3, p_parent_alone=0.1, seed=0)
    ev = data.sample(8192, torch.Generator().manual_seed(123))
    cols = ["fvu", "l0", "parent_cos", "parent_recall", "absorption", "child_parent_cos"]
    print(f"| dictionary | orthogonality | {' | '.join(cols)} |")
    print("|---|---|" + "---|" * len(cols))
    t0 = time.time()
    for arch in a.archs.split(","):
        for matryoshka in (False, True):
            for coeff in (float(c) for c in a.coeffs.split(",")):
                rows = [run(arch, matryoshka, coeff, s, a.steps, data, ev) for s in range(1, a.seeds + 1)]
                mean = {c: statistics.fmean(r[c] for r in rows) for c in cols}
                label = f"{'matryoshka_' if matryoshka else ''}{arch}"
                print(f"| {label} | {coeff:g} | " + " | ".join(f"{mean[c]:.3f}" for c in cols) + " |", flush=True)
    print(f"\n{a.seeds} seeds × {a.steps} steps each, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
