"""``featgraph crosscoder diagnose CC --out DIR``: dictionary diagnostics of a saved crosscoder, SAE or transcoder on
held-out rows of the model and data it was trained on (or others: ``--model``, ``--data``).

DIR (replaced atomically) gets ``diagnose.json`` (strict JSON: the metrics, the per-hookpoint table, the drop-k curves,
the per-token loss; :mod:`featgraph.diagnose`) and a PNG of each plot; ``featgraph report DIR`` renders them as the
"Dictionary diagnostics" section.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

from crosscoder.errors import FeatgraphError
from crosscoder.io import check_output

from .cli_inputs import add_input_arguments, saved_crosscoder_and_inputs
from .configs import float_list, int_at_least

__all__ = ["DIAGNOSE_FILE", "DIAGNOSE_FORMAT", "add_diagnose_parser", "int_list", "run_diagnose"]

DIAGNOSE_FILE = "diagnose.json"
DIAGNOSE_FORMAT = "featgraph.diagnose"


def int_list(text: str) -> list[int]:
    """An argparse ``type``: comma-separated integers >= 0, e.g. ``0,1,2,4,8``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0 such as 0,1,2,4,8, got {text!r}")
    return values


def add_diagnose_parser(cmds) -> None:
    """Add ``diagnose`` to the ``crosscoder`` command's subparsers ``cmds``."""
    g = cmds.add_parser("diagnose", help="dictionary diagnostics: drop-k curves, per-hookpoint table, per-token loss → diagnose.json + plots")
    g.add_argument("crosscoder", type=Path, help="folder of a featgraph crosscoder or a SAELens SAE")
    add_input_arguments(g)
    g.add_argument("--out", type=Path, required=True, help="folder for diagnose.json and the plots (replaced atomically)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the model provider, the data split, the random drop and the token sample (default: the crosscoder's run)")
    g.add_argument("--rows", type=int_at_least(1), default=64, help="held-out token rows to measure on (default: 64)")
    g.add_argument("--batch-size", dest="batch_size", type=int_at_least(1), default=16, help="token rows per forward pass (default: 16); drop-k holds a few (rows·context, n_features) tensors per batch, so lower it for very wide dictionaries or long contexts")
    g.add_argument("--k-max", dest="k_max", type=int_at_least(0), default=None,
                   help="drop-k: largest k (default: ⌈mean L0⌉)")
    g.add_argument("--k-values", dest="k_values", type=int_list, default=None,
                   help="drop-k: these k only, e.g. 0,1,2,4,8 (big dictionaries: each k costs a forward pass per hookpoint and mode)")
    g.add_argument("--embedding", choices=["auto", "umap", "pca"], default="auto",
                   help="2-D embedding of tokens by their features: umap (needs umap-learn), pca, or auto (umap if installed)")
    g.add_argument("--embed-tokens", dest="embed_tokens", type=int_at_least(0), default=2000,
                   help="tokens sampled for the embedding (default: 2000; 0: no embedding)")
    g.add_argument("--embed-hookpoint", dest="embed_hookpoint", default=None,
                   help="hookpoint whose CE difference colours the embedding (default: the last written one)")
    g.add_argument("--worst", type=int_at_least(0), default=10, help="worst tokens listed per hookpoint (default: 10)")
    g.add_argument("--no-splice", dest="no_splice", action="store_true",
                   help="skip the splice-in forward passes (no CE numbers, no per-token loss)")
    g.add_argument("--splice-convention", dest="splice_convention", choices=["saelens", "keep_bos"], default="saelens",
                   help="positions patched, zeroed and scored (default: saelens, as crosscoder eval)")
    # ---- training-based diagnostics (featgraph.diagnose_train) ----
    g.add_argument("--target-l0", dest="target_l0", type=float_list, default=None,
                   help="L0 by pruning vs by penalty at these target L0s, e.g. 8,4: the most frequent latents switched off, "
                        "against short fine-tunes with a larger λ (smaller k for batchtopk) and a control at the parent's own")
    g.add_argument("--widths", type=int_list, default=None,
                   help="width sweep: short runs from scratch at these dictionary sizes, e.g. 256,512,1024 (same config otherwise)")
    g.add_argument("--train-steps", dest="train_steps", type=int_at_least(1), default=200,
                   help="steps of each short run of --target-l0 and --widths (default: 200; the crosscoder's recorded schedule otherwise)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.set_defaults(run=run_diagnose)


def run_diagnose(args: argparse.Namespace) -> int:
    """Measure, write DIR/diagnose.json and the plots, print a summary."""
    from crosscoder.io import atomic_dir, strict_json
    from crosscoder.metrics import evaluate, splice_in

    from . import plots
    from .diagnose import drop_k_curves, hookpoint_table, per_token_loss

    t0 = time.perf_counter()
    out = check_output(args.out)  # before any model is loaded

    def checks(cc) -> None:  # the flags that need the crosscoder, before the model loads
        if args.embed_hookpoint is not None and args.embed_hookpoint not in cc.cfg.writes:
            raise FeatgraphError(f"--embed-hookpoint {args.embed_hookpoint!r} is not one this crosscoder writes; choose one of {cc.cfg.writes}")
        if args.embedding == "umap" and importlib.util.find_spec("umap") is None:
            raise FeatgraphError("--embedding umap needs umap-learn, which is not installed; pip install umap-learn, or pass --embedding pca")
        if args.widths is not None and min(args.widths) < 1:
            raise FeatgraphError(f"--widths must be dictionary sizes >= 1, got {args.widths}")
        if args.target_l0 is not None and min(args.target_l0) <= 0:
            raise FeatgraphError(f"--target-l0 must be positive mean active latents per token, got {args.target_l0}")

    cc, inputs, seed, model_cfg, _ = saved_crosscoder_and_inputs(args, "diagnose", any_format=True, before_inputs=checks)
    model, rows = inputs.model, inputs.rows.val_NT[: args.rows]
    if len(rows) == 0:
        raise FeatgraphError("the data has no held-out rows to diagnose on; raise --val-fraction or give more text")
    splice, conv, bs = not args.no_splice, args.splice_convention, args.batch_size

    run = splice_in(cc, model, rows, batch_size=bs, convention=conv, per_token=True) if splice else None
    metrics = evaluate(cc, model, rows, batch_size=2 * bs, splice=False)
    if run is not None:
        for k, v in run.summary().items():
            setattr(metrics, k, v)
    if splice and hasattr(cc, "prefix_metrics"):  # Matryoshka: every prefix with its splice-in numbers too
        metrics.prefixes = cc.prefix_metrics(model, rows, splice=True, splice_convention=conv, batch_size=2 * bs, full=metrics)
    table = hookpoint_table(cc, model, rows, metrics=metrics, batch_size=2 * bs)
    drop = drop_k_curves(cc, model, rows, k_values=args.k_values, k_max=args.k_max, seed=seed, splice=splice, convention=conv,
                         batch_size=bs)
    per_token = (per_token_loss(cc, model, rows, run=run, n_worst=args.worst, embed_tokens=args.embed_tokens,
                                embedding=args.embedding, embed_hookpoint=args.embed_hookpoint, seed=seed, batch_size=bs)
                 if run is not None else None)
    doc = {"format": DIAGNOSE_FORMAT, "version": 1, "crosscoder": str(Path(args.crosscoder).resolve()),
           "architecture": cc.cfg.architecture, "n_features": cc.cfg.n_features, "hookpoints": list(cc.cfg.writes),
           "model": model_cfg.model, "data": inputs.rows.source, "rows": int(len(rows)), "seed": seed,
           "splice_convention": conv if splice else None, "metrics": metrics.to_dict(), "hookpoint_table": table.to_dict(),
           "drop_k": drop.to_dict(), "per_token": per_token.to_dict() if per_token is not None else None,
           "prune_vs_penalty": None, "width_sweep": None}
    if args.target_l0 or args.widths:  # the training-based diagnostics, each a few short runs
        from .diagnose_train import prune_vs_penalty, width_sweep

        train_cfg, fit_cfg = _short_run_configs(args.crosscoder, args.train_steps, len(rows), splice, conv)
        run_args = dict(train_cfg=train_cfg, fit_cfg=fit_cfg, seed=seed, device=str(cc.device), progress=not args.quiet)
        if args.target_l0:
            doc["prune_vs_penalty"] = prune_vs_penalty(cc, model, inputs.rows, args.target_l0, **run_args).to_dict()
        if args.widths:
            doc["width_sweep"] = width_sweep(cc, model, inputs.rows, args.widths, **run_args).to_dict()
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    doc = strict_json(doc)
    text = json.dumps(doc, indent=1, allow_nan=False)
    figs = plots.diagnose_figures(json.loads(text))
    with atomic_dir(out) as tmp:
        (tmp / DIAGNOSE_FILE).write_text(text)
        for stem, fig in figs.items():
            plots.save_png(fig, tmp / f"{stem}.png")
    print("\n".join(_summary_lines(doc, out)))
    return 0


def _short_run_configs(folder: Path, steps: int, eval_rows: int, splice: bool, convention: str):
    """The schedule and activation settings of diagnose's short runs: those the crosscoder was trained with (cfg.json
    ``extra.train`` / ``extra.fit``; defaults for a SAELens SAE or an older folder) with ``steps`` steps, metrics on the
    same held-out rows as the rest of diagnose; no checkpoints, no activation cache."""
    from crosscoder.config import FitConfig, TrainConfig

    try:
        meta = json.loads((Path(folder) / "cfg.json").read_text())
        extra = meta.get("extra") if isinstance(meta, dict) and isinstance(meta.get("extra"), dict) else {}
    except (OSError, json.JSONDecodeError):
        extra = {}

    def recorded(cls, key: str, drop: tuple[str, ...]) -> dict:
        names = {f.name for f in dataclasses.fields(cls)} - set(drop)
        values = extra.get(key) if isinstance(extra.get(key), dict) else {}
        return {k: tuple(v) if k == "betas" else v for k, v in values.items() if k in names}

    train = TrainConfig(**{**recorded(TrainConfig, "train", ("steps", "extra")), "steps": steps})
    fit = FitConfig(**{**recorded(FitConfig, "fit", ("activation_cache", "checkpoint_every", "resume", "eval_rows", "splice",
                                                     "splice_convention")),
                       "eval_rows": eval_rows, "splice": splice, "splice_convention": convention})
    return train, fit


def _summary_lines(doc: dict, out: Path) -> list[str]:
    fmt = lambda xs: ", ".join("n/a" if x is None else f"{x:.3f}" for x in xs)  # noqa: E731
    t, d, p = doc["hookpoint_table"], doc["drop_k"], doc["per_token"]
    lines = [f"diagnosed {doc['crosscoder']}: {doc['architecture']}, {doc['n_features']} features, {len(t['hookpoints'])} written "
             f"hookpoints, {t['n_tokens']} tokens",
             f"  FVU per hookpoint     {fmt(t['fvu'])}",
             f"  FVU pooled            {fmt([t['fvu_pooled']])} (normalised; mean of hookpoints {fmt([t['fvu_unweighted_mean']])}; "
             f"concatenated raw {fmt([t['fvu_concatenated_raw']])})",
             f"  L0 {t['l0']:.1f}   dead {100 * t['dead_fraction']:.1f} %   dense {100 * t['dense_fraction']:.1f} %",
             f"  shrinkage ‖x̂‖/‖x‖     {fmt(t['shrinkage'])}"]
    if t["ce_loss_recovered"]:
        lines.append(f"  CE loss recovered     {fmt(t['ce_loss_recovered'])}  ({t['splice_convention']} baseline)")
    if d.get("k_first_drop"):
        drops = ", ".join("never" if k is None else str(k) for k in d["k_first_drop"])
        lines.append(f"  drop-k (weakest)      CE recovered falls > 1 % at k = {drops} (of k ≤ {d['k_values'][-1]})")
    if p:
        lines.append(f"  per-token CE diff     mean {fmt(p['mean'])}; p99 {fmt(p['quantiles']['p99'])}")
        if p.get("embedding"):
            lines.append(f"  embedding             {p['embedding']['method']} of {p['embedding']['n']} tokens")
    if doc.get("prune_vs_penalty"):
        for t in doc["prune_vs_penalty"]["targets"]:
            pr, pe = t["pruning"], t["penalty"]
            lines.append(f"  target L0 {t['target_l0']:<6g}     pruning: L0 {pr['l0']:.1f}, FVU {fmt([pr['fvu_pooled']])}; "
                         f"penalty: L0 {pe['l0']:.1f}, FVU {fmt([pe['fvu_pooled']])}")
    if doc.get("width_sweep"):
        runs = doc["width_sweep"]["runs"]
        lines.append("  width sweep           " + ", ".join(f"{r['n_features']}: FVU {fmt([r['fvu_pooled']])}" for r in runs))
    lines += [f"  wrote                 {out} (diagnose.json and plots; `featgraph report {out}` renders them)",
              f"  time                  {doc['seconds']:.0f} s"]
    return lines
