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


def tinystories_shape(n_features: int, per_layer_l0: int, T: int, seed: int = 0):
    """A random-weight model of TinyStories-33M's architecture (GPT-Neo: 4 layers, d 768, 16 heads, MLP 3072,
    vocab 50,257, local/global attention) saved and loaded as a user's local checkpoint, a ReLU CLT over it with random
    weights whose encoder biases make ``per_layer_l0`` features per layer fire per token (no training: only the
    number of active features matters for time), and a random T-token prompt."""
    import tempfile

    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from crosscoder.build import build_crosscoder
    from crosscoder.config import CrosscoderConfig, clt_hookpoints
    from crosscoder.harvest import estimate_norm_scales
    from crosscoder.model_loading import load_model

    torch.manual_seed(seed)
    config = GPTNeoConfig(vocab_size=50257, hidden_size=768, num_layers=4, num_heads=16, attention_types=[[["global", "local"], 2]],
                          window_size=256, max_position_embeddings=2048, intermediate_size=3072, bos_token_id=50256, eos_token_id=50256)
    path = tempfile.mkdtemp(prefix="tinystories-shape-")
    GPTNeoForCausalLM(config).eval().save_pretrained(path)
    model = load_model(path, device="cpu")
    reads, writes = clt_hookpoints(4)
    cc = build_crosscoder(CrosscoderConfig(reads, 768, n_features, out_hookpoints=writes, architecture="relu", layout="clt", seed=seed))
    rows = torch.randint(0, 50256, (16, T), generator=torch.Generator().manual_seed(seed))
    rows[:, 0] = 50256
    cc.norm_scale_L.copy_(estimate_norm_scales(model, rows, cc.cfg.all_hookpoints))
    with torch.no_grad():
        _, cache = model.run_with_cache(rows, names_filter=lambda n: n in cc.cfg.all_hookpoints)
        x = torch.stack([cache[h] for h in cc.cfg.all_hookpoints], dim=2).reshape(-1, len(cc.cfg.all_hookpoints), 768)
        pre = cc.pre_activations(x.to(cc.device))
        per_layer = n_features // 4
        cut = torch.quantile(pre[:, :].float(), 1 - per_layer_l0 / per_layer, dim=0)  # each feature fires on that share of tokens
        cc.b_enc_F -= cut
    tokens = torch.randint(0, 50256, (T,), generator=torch.Generator().manual_seed(seed + 1))
    tokens[0] = 50256
    return model, cc, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crosscoder", help="a CLT trained on the embedded default (command above)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--top", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tinystories-shape", action="store_true",
                   help="time one --tokens prompt on a random-weight model of TinyStories-33M's architecture instead (no --crosscoder)")
    p.add_argument("--n-features", type=int, default=16384, help="--tinystories-shape: CLT features (over 4 layers)")
    p.add_argument("--l0", type=int, default=32, help="--tinystories-shape: active features per layer per token")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tinystories_shape:
        model, cc, tokens_T = tinystories_shape(args.n_features, args.l0, args.tokens)
        t0 = time.perf_counter()
        g = attribution_graph(model, cc, tokens_T, progress=True)
        dt = time.perf_counter() - t0
        print(f"TinyStories-33M architecture (random weights), CLT {args.n_features} features, ~{args.l0} active per layer per token, "
              f"{args.tokens}-token prompt, {torch.get_num_threads()} CPU threads")
        print(f"  attribution graph {dt:.1f} s: {g.n_features} active features, {len(g.nodes)} nodes, "
              f"{int(g.prune.node_mask.sum())} kept after pruning")
        return
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
