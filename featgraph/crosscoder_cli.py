"""``featgraph crosscoder train|finetune|eval``: a typed run config (file and/or flags) → a saved crosscoder.

A config file (JSON or TOML) has up to three sections, each the fields of one dataclass::

    [run]         # RunConfig: model, size, hookpoints, out, seed, device, checkpoints
    [crosscoder]  # CrosscoderConfig: architecture, n_features, k, sparsity_norm, ...
    [train]       # TrainConfig: steps, batch_size, lr, l1_coeff, ...

Flags override the file. The model and its token rows come from :mod:`analyses.data` (the embedded default or
any TransformerLens model with the built-in story corpus): the CLI is the one place that wires studies in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosscoder.config import CrosscoderConfig, TrainConfig, default_hookpoints, resolve_device
from crosscoder.errors import FeatgraphError

__all__ = ["RunConfig", "add_crosscoder_parser", "load_config_file"]


@dataclass
class RunConfig:
    """Where the activations come from and where the crosscoder goes."""

    out: Path = Path("crosscoder_out")
    """Folder of the saved crosscoder (replaced atomically)."""
    model: str = "embedded"
    """``embedded``, a TransformerLens model name, or a local checkpoint folder."""
    size: str = "default"
    """Embedded-model size (``default`` or ``tiny``); also sets how much of the story corpus other models read."""
    hookpoints: list[str] | None = None
    """Hookpoints read (and written); default blocks.0.hook_resid_pre and every blocks.N.hook_resid_post."""
    seed: int = 0
    device: str = "auto"
    buffer_tokens: int = 65_536
    """Activations held by the shuffled buffer."""
    checkpoint_every: int = 0
    """Steps between training checkpoints (0: none); they go to ``<out>.ckpt/``."""
    resume: bool = False
    """Continue from the newest checkpoint in ``<out>.ckpt/``."""
    eval_rows: int = 64
    """Held-out token rows for the final metrics."""
    activation_cache: Path | None = None
    """Harvest the training activations once into this folder (memory-mapped shards; resumes if interrupted)
    and train from it, instead of running the model during training."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise FeatgraphError(f"output path {self.out} is a file; pass --out with a folder path")


def load_config_file(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Sections ``run``, ``crosscoder``, ``train`` of a JSON or TOML file (empty when no file)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FeatgraphError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one line
        raise FeatgraphError(f"config file {path} does not parse ({e}); fix the syntax") from None
    unknown = set(data) - {"run", "crosscoder", "train"}
    if unknown:
        raise FeatgraphError(f"config file {path} has unknown sections {sorted(unknown)}; use run, crosscoder and train")
    return data


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build(cls, file_section: dict, flags: dict, **fixed):
    unknown = set(file_section) - _fields(cls)
    if unknown:
        raise FeatgraphError(f"unknown {cls.__name__} fields {sorted(unknown)}; see the dataclass for what is allowed")
    values = {**file_section, **{k: v for k, v in flags.items() if v is not None and k in _fields(cls)}, **fixed}
    try:
        return cls(**values)
    except TypeError as e:
        raise FeatgraphError(f"{cls.__name__}: {e}; set it in the config file or with a flag") from None


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    d = dict(vars(args))
    if d.get("hookpoints"):
        d["hookpoints"] = [h.strip() for h in d["hookpoints"].split(",") if h.strip()]
    return d


def _data(run: RunConfig, progress: bool):
    from analyses.data import model_and_tokens

    return model_and_tokens(run.model, run.size, run.seed, resolve_device(run.device), progress)


def _summary(title: str, cc, metrics, out: Path, seconds: float) -> str:
    fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    lines = [
        f"{title}: {cc.cfg.architecture} crosscoder, {cc.cfg.n_features} features over {len(cc.cfg.all_hookpoints)} hookpoints",
        f"  FVU per hookpoint     {fmt(metrics.fvu_per_hookpoint)}",
        f"  FVU pooled            {metrics.fvu_pooled:.3f} (variance-weighted; unweighted mean {metrics.fvu_unweighted_mean:.3f})",
        f"  L0 {metrics.l0:.1f}   dead {100 * metrics.dead_fraction:.1f} %   dense {100 * metrics.dense_fraction:.1f} %",
        f"  shrinkage ‖x̂‖/‖x‖     {fmt(metrics.shrinkage_per_hookpoint)}",
    ]
    if metrics.ce_loss_recovered:
        lines += [
            f"  CE loss recovered     {fmt(metrics.ce_loss_recovered)}  (clean CE {metrics.ce_clean:.3f})",
            f"  KL(clean‖spliced)     {fmt(metrics.kl_per_hookpoint)}",
        ]
    lines += [f"  saved                 {out}", f"  time                  {seconds:.0f} s"]
    return "\n".join(lines)


def _init_distributed(device: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun (RANK in the environment); (rank, world size)."""
    import os

    import torch.distributed as dist

    if "RANK" not in os.environ or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def _train_and_save(args: argparse.Namespace, parent: Path | None) -> int:
    import torch

    from crosscoder.build import build_crosscoder
    from crosscoder.harvest import ActivationBuffer, check_hookpoints, estimate_norm_scales
    from crosscoder.io import load_crosscoder, save_crosscoder
    from crosscoder.metrics import evaluate
    from crosscoder.train import finetune_crosscoder, train_crosscoder

    t0 = time.perf_counter()
    file = load_config_file(args.config)
    flags = _flags(args)
    run = _build(RunConfig, file.get("run", {}), flags)
    train_cfg = _build(TrainConfig, file.get("train", {}), flags)
    device = resolve_device(run.device)
    rank, world = _init_distributed(device)
    data = _data(run, not args.quiet and rank == 0)
    ckpt = dict(checkpoint_dir=str(run.out) + ".ckpt", checkpoint_every=run.checkpoint_every, resume=run.resume)
    if parent is None:
        hookpoints = run.hookpoints or default_hookpoints(data.model.cfg.n_layers)
        section = {"n_features": 8 * data.model.cfg.d_model, **file.get("crosscoder", {})}  # default expansion 8×
        cc_cfg = _build(CrosscoderConfig, section, flags, hookpoints=hookpoints,
                        d_model=data.model.cfg.d_model, model_name=run.model, seed=run.seed)
        check_hookpoints(data.model, cc_cfg.all_hookpoints)
        torch.manual_seed(run.seed)
        scales = estimate_norm_scales(data.model, data.train_NT, cc_cfg.all_hookpoints)
        cc = build_crosscoder(cc_cfg).to(device)
        cc.norm_scale_L.copy_(scales)
    else:
        from crosscoder.apply import check_compatible

        cc = load_crosscoder(parent, device=device)
        check_compatible(cc, data.model, where=f"crosscoder {parent}")
    source = None
    if run.activation_cache is not None and world > 1:
        raise FeatgraphError("--activation-cache runs in one process; write the cache first, or drop it under torchrun (ranks harvest their own rows)")
    if run.activation_cache is not None:
        from crosscoder.activation_cache import write_activation_cache

        source = write_activation_cache(data.model, data.train_NT, cc.cfg.all_hookpoints, run.activation_cache, progress=not args.quiet)
    rows = data.train_NT[rank::world]  # each rank streams its own share of the rows
    buf = ActivationBuffer(data.model, rows, cc.cfg.all_hookpoints, cc.norm_scale_L.cpu(), train_cfg.batch_size,
                           n_buffer_tokens=run.buffer_tokens, seed=run.seed + rank, device=device,
                           source=source)
    progress = not args.quiet and rank == 0
    if parent is None:
        train_crosscoder(cc, buf, train_cfg, progress=progress, **ckpt)
    else:
        cc, _ = finetune_crosscoder(parent, buf, train_cfg, stage=args.stage, device=device, cc=cc, progress=progress, **ckpt)
    if rank != 0:
        return 0  # rank 0 evaluates and saves; the weights are identical on every rank
    metrics = evaluate(cc, data.model, data.val_NT[: run.eval_rows])
    save_crosscoder(cc, run.out, extra={"metrics": metrics.to_dict(), "run": json.loads(json.dumps(dataclasses.asdict(run), default=str)), "train": dataclasses.asdict(train_cfg)})
    print(_summary("trained" if parent is None else f"fine-tuned ({args.stage})", cc, metrics, run.out, time.perf_counter() - t0))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from crosscoder.apply import check_compatible
    from crosscoder.io import atomic_file, load_crosscoder
    from crosscoder.metrics import evaluate

    t0 = time.perf_counter()
    run = RunConfig(model=args.model, size=args.size, seed=args.seed, device=args.device, eval_rows=args.rows)
    data = _data(run, not args.quiet)
    cc = load_crosscoder(args.crosscoder, device=resolve_device(run.device))
    check_compatible(cc, data.model, where=f"crosscoder {args.crosscoder}")
    metrics = evaluate(cc, data.model, data.val_NT[: run.eval_rows], splice=not args.no_splice)
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(metrics.to_dict(), indent=2))
    print(_summary("evaluated", cc, metrics, Path(args.crosscoder), time.perf_counter() - t0))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="'embedded' (default), a TransformerLens model name, or a local checkpoint folder")
    p.add_argument("--size", default=None, choices=["default", "tiny"], help="embedded-model size")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _training_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--config", type=Path, default=None, help="JSON or TOML file with [run], [crosscoder], [train] sections")
    p.add_argument("--out", type=Path, default=None, help="folder for the crosscoder (default crosscoder_out)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--l1-coeff", dest="l1_coeff", type=float, default=None, help="λ of the sparsity penalty (ReLU, JumpReLU)")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=None)
    p.add_argument("--resume", action="store_true", default=None, help="continue from the newest checkpoint in <out>.ckpt/")
    p.add_argument("--buffer-tokens", dest="buffer_tokens", type=int, default=None)
    p.add_argument("--activation-cache", dest="activation_cache", type=Path, default=None,
                   help="harvest once into this folder (resumable) and train from it")


def add_crosscoder_parser(sub) -> None:
    p = sub.add_parser("crosscoder", help="train, fine-tune or evaluate a crosscoder")
    cmds = p.add_subparsers(dest="crosscoder_command", required=True)

    t = cmds.add_parser("train", help="train a crosscoder from scratch")
    _training_flags(t)
    t.add_argument("--hookpoints", default=None, help="comma-separated hookpoints")
    t.add_argument("--architecture", choices=["relu", "batchtopk", "jumprelu"], default=None)
    t.add_argument("--n-features", dest="n_features", type=int, default=None, help="dictionary size (default 8 × d_model)")
    t.add_argument("--k", type=int, default=None, help="BatchTopK: active latents per token")
    t.add_argument("--sparsity-norm", dest="sparsity_norm", choices=["l1_of_norms", "l2_of_norms"], default=None)
    t.set_defaults(run=lambda a: _train_and_save(_with_defaults(a), None))

    f = cmds.add_parser("finetune", help="fine-tune a saved crosscoder with its own schedule (records the stage)")
    f.add_argument("parent", type=Path, help="folder of the crosscoder to start from")
    f.add_argument("--stage", required=True, help="name of this stage, e.g. D, M, DF, MF")
    _training_flags(f)
    f.set_defaults(run=lambda a: _train_and_save(_with_defaults(a), a.parent))

    e = cmds.add_parser("eval", help="every metric of a saved crosscoder on held-out tokens")
    e.add_argument("crosscoder", type=Path)
    _common(e)
    e.add_argument("--rows", type=int, default=64, help="held-out token rows")
    e.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON here")
    e.add_argument("--no-splice", action="store_true", help="skip the splice-in forward passes")
    e.set_defaults(run=lambda a: _eval(_with_defaults(a)))


def _with_defaults(a: argparse.Namespace) -> argparse.Namespace:
    """Flags left unset fall back to the config file, then to the dataclass defaults; eval needs concrete values."""
    if getattr(a, "crosscoder_command", None) == "eval":
        a.model, a.size = a.model or "embedded", a.size or "default"
        a.seed, a.device = 0 if a.seed is None else a.seed, a.device or "auto"
    return a
