"""Attribution graphs on the embedded default: time per prompt, and edges checked against ablations.

    featgraph crosscoder train --architecture clt --n-features 1024 --k 16 --steps 600 --batch-size 1024 --lr 0.002 --out CLT
    python -m analyses.bench_attribution --crosscoder CLT              # the figures in docs/graphs.md
    python -m analyses.bench_attribution --crosscoder CLT --prompts 2 --top 20

For each of ``--prompts`` held-out rows of the embedded model's stories (cut to ``--tokens`` tokens, BOS first) it
times :func:`featgraph.attribution.attribution_graph` (after one warm-up graph) and :func:`featgraph.attribution_run.run_attribution`
(dashboards over 64 rows and supernodes too), then checks the ``--top`` strongest feature → feature edges against
ablation: zero the source feature and measure the target feature's pre-activation (a) in the frozen replacement model —
equal to the edge by construction, a check of the implementation — and (b) with attention patterns and LayerNorm scales
recomputed (the features still held at their values: direct effects through the real nonlinear attention), the
meaningful check; reported as Spearman ρ between edge weights and effects, and the largest relative error in (a).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from scipy.stats import spearmanr

from analyses.tiny_model import EmbeddedConfig, load_embedded
from crosscoder.io import load_crosscoder
from featgraph.attribution import LinearisedReplacement, attribution_graph
from featgraph.attribution_run import run_attribution


def ablation_check(model, cc, tokens_T: torch.Tensor, g, top: int) -> tuple[float, float, float]:
    """(Spearman frozen, Spearman unfrozen, max relative error frozen) over the ``top`` strongest feature edges."""
    rep = LinearisedReplacement(model, cc, tokens_T)
    nf = g.n_features
    A_FF = g.adjacency[:nf, :nf]
    k = min(top, int((A_FF != 0).sum()))
    idx = torch.topk(A_FF.abs().flatten(), k).indices
    tgt, src = idx // nf, idx % nf
    edge = A_FF[tgt, src]
    a, e, m = rep.clean_values(k)
    ablated = a.clone()
    ablated[torch.arange(k), src] = 0
    out = []
    with torch.no_grad():
        base = rep.forward(a[:1], e[:1], m[:1]).pre_BN[0]
        for frozen in (True, False):
            effect = (base[tgt] - rep.forward(ablated, e, m, frozen=frozen).pre_BN[torch.arange(k), tgt]).cpu()
            out.append(effect)
    rel = float(((out[0] - edge).abs() / edge.abs().clamp(min=1e-6)).max())
    return float(spearmanr(out[0].numpy(), edge.numpy()).statistic), float(spearmanr(out[1].numpy(), edge.numpy()).statistic), rel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crosscoder", required=True, help="a CLT trained on the embedded default (command above)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--top", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    emb = load_embedded(EmbeddedConfig(), progress=False)
    model, cc = emb.model, load_crosscoder(args.crosscoder, device="cpu")
    rows = emb.tokens_val_NT[: args.prompts, : args.tokens]
    attribution_graph(model, cc, rows[0])  # warm-up
    times, full, rho_f, rho_u, rel, kept, feats, rep, comp = [], [], [], [], [], [], [], [], []
    for tokens_T in rows:
        t0 = time.perf_counter()
        g = attribution_graph(model, cc, tokens_T)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_attribution(model, cc, tokens_T, rows_NT=emb.tokens_val_NT)
        full.append(time.perf_counter() - t0)
        f, u, r = ablation_check(model, cc, tokens_T, g, args.top)
        rho_f.append(f)
        rho_u.append(u)
        rel.append(r)
        feats.append(g.n_features)
        kept.append(int(g.prune.node_mask[: g.n_features].sum()))
        rep.append(g.replacement_score)
        comp.append(g.completeness_score)
    med = statistics.median
    print(f"embedded default, CLT {args.crosscoder}: {cc.cfg.n_features} features, {args.prompts} prompts of {args.tokens} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"  attribution graph        median {med(times):.2f} s (max {max(times):.2f})")
    print(f"  with dashboards + supernodes  median {med(full):.2f} s (max {max(full):.2f})")
    print(f"  active features          median {med(feats):.0f}, kept after pruning {med(kept):.0f}")
    print(f"  replacement score        median {med(rep):.3f}; completeness {med(comp):.3f}")
    print(f"  ablation vs edge, top {args.top} feature edges:")
    print(f"    frozen replacement     Spearman min {min(rho_f):.4f}, max relative error {max(rel):.2e}")
    print(f"    attention + LN live    Spearman median {med(rho_u):.3f}, min {min(rho_u):.3f}")


if __name__ == "__main__":
    main()
