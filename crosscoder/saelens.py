"""Interop with SAELens (the ``sae-lens`` package): a one-hookpoint crosscoder as a SAELens SAE folder, and back.

A SAELens folder holds ``cfg.json`` (the SAE config, with ``metadata.hook_name`` / ``metadata.model_name``) and
``sae_weights.safetensors``; SAELens reads it with ``SAE.load_from_disk(folder)`` and writes it with
``sae.save_model(folder)``. Both directions here use only json and safetensors: nothing is unpickled, and
sae-lens itself need not be installed. (SAELens's own ``load_from_disk`` reads the same two files with
``json``/``safetensors``; sae-lens 6.54 calls ``torch.load`` only in its converters for a few third-party
Hugging Face releases and when its trainer resumes a checkpoint's optimiser state, neither used here.)

SAELens computes, on raw activations x ∈ R^d_in (``apply_b_dec_to_input`` subtracts b_dec first)::

    pre = (x − [b_dec]) W_enc + b_enc      f = σ(pre)      x̂ = f W_dec + b_dec

and a featgraph crosscoder with one hookpoint, scale s = ``norm_scale_L[0]``, computes
``pre = (s·x) W_enc[0] + b_enc``, ``x̂ = (f W_dec[:, 0] + b_dec[0]) / s``. So:

Export (:func:`save_saelens`), with ``apply_b_dec_to_input = False`` and ``normalize_activations = "none"``::

    W_enc_sae = s · W_enc[0]      (d_in, d_sae)       b_enc_sae = b_enc
    W_dec_sae = W_dec[:, 0] / s   (d_sae, d_in)       b_dec_sae = b_dec[0] / s

so ``pre`` and f are identical and x̂ is returned in raw units. Each architecture adds its own tensors (they act on
``pre``, which the fold leaves unchanged) and says which SAELens architecture it becomes
(:meth:`~crosscoder.crosscoder.Crosscoder.saelens_export`, ``saelens_architecture``): relu → SAELens ``standard``,
jumprelu → ``jumprelu`` (threshold = exp(log_threshold_F)), batchtopk → ``jumprelu`` with threshold_i = θ / ‖W_dec_i‖,
its inference rule (eval mode), as SAELens itself saves its BatchTopK SAEs. The folder's ``metadata.featgraph``
records the featgraph config, s, the lineage and the architecture's extras (batchtopk: θ), so that
:func:`load_saelens` gives back the same crosscoder (same config, ``norm_scale_L``, architecture and numbers).

Import (:func:`load_saelens`), for a folder written by SAELens's ``save_model`` / ``save_inference_model``
(the SAELens 6.x layout)::

    W_enc[0] = W_enc_sae        b_enc = b_enc_sae − b_dec_sae W_enc_sae   (only if apply_b_dec_to_input)
    W_dec[:, 0] = W_dec_sae     b_dec[0] = b_dec_sae        norm_scale_L = [1]

hookpoints = [``metadata.hook_name``], d_model = d_in, n_features = d_sae, model_name = ``metadata.model_name``
(for a featgraph-written folder, s and the config come back from ``metadata.featgraph``: W_enc /= s, W_dec and
b_dec *= s). Which featgraph architecture it becomes is the architectures' call: every registered one that lists the
SAELens architecture in ``saelens_imports`` is asked (:meth:`~crosscoder.crosscoder.Crosscoder.from_saelens`),
highest ``saelens_precedence`` first, and the first exact form wins. Built in: ``standard`` → relu; ``jumprelu`` →
batchtopk when it was trained as BatchTopK with one score threshold θ, else jumprelu; ``batchtopk`` (SAELens's
training checkpoint) → batchtopk with ``rescale_acts_by_decoder_norm``, else jumprelu (the architecture modules
give the details and where the mapping is not exact). Anything else (``topk``: per-token top-k; ``gated``,
``abstopk``, transcoders, ...) is refused, as are run-time input normalisation (``normalize_activations`` other
than ``none``), ``hook_z`` reshaping and per-head SAEs (``hook_head_index``).

The crosscoder comes back in eval mode (for batchtopk that selects the threshold rule), with
``tokens_since_fired_F`` at zero. Usage::

    save_saelens(cc, "out/sae_layer3")                     # then SAE.load_from_disk("out/sae_layer3")
    ccs = [load_saelens(f"saes/layer{i}") for i in range(12)]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .architectures import ARCHITECTURES
from .build import build_crosscoder
from .config import CrosscoderConfig
from .crosscoder import Crosscoder, SAELensImport, SAELensSAE
from .errors import FeatgraphError
from .io import CFG_FILE, FORMAT_NAME, WEIGHTS_FILE, atomic_dir, load_json_file, load_safetensors_file

__all__ = ["save_saelens", "load_saelens", "crosscoder_folder_kind", "SAELENS_CFG_FILE", "SAELENS_WEIGHTS_FILE"]

SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
# The SAELens config layout written; SAELens treats configs without a version >= 6 as the old (pre-6) layout.
SAELENS_FORMAT_VERSION = "6.0.0"
FEATGRAPH_META = "featgraph"
FEATGRAPH_META_FORMAT = "featgraph.saelens"
# SAELens architectures featgraph cannot hold, with the reason (the rest get the generic message).
_WHY_NOT = {
    "topk": "keeps the top k latents of each token, which featgraph cannot represent (its batchtopk keeps k·B per "
            "batch, or thresholds at inference)",
}


# ---- export ------------------------------------------------------------------------------------------------


def save_saelens(cc: Crosscoder, folder: str | os.PathLike) -> Path:
    """Write a one-hookpoint crosscoder as a SAELens SAE folder.

    Parameters
    ----------
    cc : Crosscoder
        A crosscoder reading and writing one hookpoint (a per-layer SAE) of an architecture with a SAELens form
        (built in: relu, jumprelu, batchtopk with a learned threshold).
    folder : str or os.PathLike
        Destination; replaced whole, atomically.

    Returns
    -------
    Path
        ``folder``, loadable with SAELens's ``SAE.load_from_disk(folder)`` and with :func:`load_saelens`.

    Raises
    ------
    FeatgraphError
        If the crosscoder has several hookpoints, is a transcoder, has an architecture without a SAELens form or
        cannot be exported yet (batchtopk without a learned threshold), or has non-finite weights.
    """
    sae_arch = _check_exportable(cc)
    extra_tensors, extra_meta = cc.saelens_export()
    scale = float(cc.norm_scale_L[0])
    _check_finite(cc, scale)
    tensors = {**_export_tensors(cc, scale), **{k: v.detach().to("cpu", torch.float32).contiguous() for k, v in extra_tensors.items()}}
    cfg = _export_cfg(cc, sae_arch, scale, extra_meta)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS_FILE))
        (tmp / SAELENS_CFG_FILE).write_text(json.dumps(cfg, indent=2))
    return Path(folder)


def _check_exportable(cc: Crosscoder) -> str:
    """The SAELens architecture ``cc`` maps to, or a FeatgraphError saying why it cannot be exported."""
    cfg = cc.cfg
    if cfg.models:
        raise FeatgraphError(f"SAELens holds one model's SAE; this crosscoder reads the models {cfg.models} — save it with featgraph's own format (save_crosscoder)")
    if len(cfg.hookpoints) != 1:
        raise FeatgraphError(
            f"SAELens holds one hookpoint; this crosscoder has {len(cfg.hookpoints)} — export a one-hookpoint "
            "crosscoder or save with featgraph's own format (save_crosscoder)"
        )
    if cfg.writes != cfg.hookpoints:
        raise FeatgraphError(
            f"this crosscoder is a transcoder (reads {cfg.hookpoints[0]}, writes {', '.join(cfg.writes)}); "
            "SAELens export takes SAEs only — save it with featgraph's own format (save_crosscoder)"
        )
    sae_arch = type(cc).saelens_architecture
    if sae_arch is None:
        exportable = ", ".join(name for name, cls in ARCHITECTURES.items() if cls.saelens_architecture) or "none"
        raise FeatgraphError(f"cannot export architecture {cfg.architecture!r} to SAELens; supported: {exportable}")
    return sae_arch


def _check_finite(cc: Crosscoder, scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise FeatgraphError(f"norm_scale_L[0] is {scale}, not a positive number; re-estimate the normalisation before exporting")
    if not all(torch.isfinite(p).all() for p in cc.parameters()):
        raise FeatgraphError("the crosscoder's weights contain NaN or inf; re-train it before exporting")


@torch.no_grad()
def _export_tensors(cc: Crosscoder, scale: float) -> dict[str, torch.Tensor]:
    """SAELens W_enc, b_enc, W_dec, b_dec of ``cc`` with the normalisation scale folded in, float32 on the CPU."""
    f32 = {"device": "cpu", "dtype": torch.float32}
    W_enc = cc.W_enc_LDF[0].to(**f32) * scale
    W_dec = cc.W_dec_FLD[:, 0].to(**f32) / scale
    tensors = {"W_enc": W_enc, "b_enc": cc.b_enc_F.to(**f32), "W_dec": W_dec, "b_dec": cc.b_dec_LD[0].to(**f32) / scale}
    return {k: v.contiguous() for k, v in tensors.items()}


def _export_cfg(cc: Crosscoder, sae_arch: str, scale: float, extra_meta: dict[str, Any]) -> dict[str, Any]:
    """The SAELens cfg.json of ``cc``, with featgraph's own config in ``metadata.featgraph``."""
    featgraph = {
        "format": FEATGRAPH_META_FORMAT,
        "version": 1,
        "architecture": cc.cfg.architecture,
        "config": cc.cfg.to_dict(),
        "norm_scale": scale,
        "lineage": list(getattr(cc, "lineage", [])),
        **extra_meta,
    }
    metadata: dict[str, Any] = {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None}
    if cc.cfg.model_name:
        metadata["model_name"] = cc.cfg.model_name
    metadata.update({"hook_name": cc.cfg.hookpoints[0], FEATGRAPH_META: featgraph})
    return {
        "architecture": sae_arch,
        "d_in": cc.cfg.d_model,
        "d_sae": cc.cfg.n_features,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }


# ---- import ------------------------------------------------------------------------------------------------

_EITHER = ("a folder written by featgraph (cfg.json + crosscoder.safetensors) or a SAELens SAE folder "
           "(cfg.json + sae_weights.safetensors)")
_FEATGRAPH = "a folder written by `featgraph demo`, `featgraph crosscoder train` or save_crosscoder"


def crosscoder_folder_kind(folder: str | os.PathLike, *, saelens: bool = True) -> str:
    """``"featgraph"`` or ``"saelens"``: which saved form ``folder`` holds, or one FeatgraphError line naming what is wrong.

    Checks what can be checked without loading weights: the folder exists and is a folder, cfg.json is there, is JSON
    and is a featgraph crosscoder config (or, with ``saelens``, a SAELens SAE config), and a featgraph folder has its
    weights file. A folder with the weights but no cfg.json, or a cfg.json that does not parse, is named as the
    incomplete or broken crosscoder (or SAE) it is.
    """
    folder = Path(folder)
    want = _EITHER if saelens else _FEATGRAPH
    if not folder.exists():
        raise FeatgraphError(f"crosscoder {folder} does not exist; pass {want}")
    if not folder.is_dir():
        inside = folder.name in (CFG_FILE, WEIGHTS_FILE, SAELENS_WEIGHTS_FILE)
        fix = f"pass the folder that holds it, {folder.parent}" if inside else f"pass {want}"
        raise FeatgraphError(f"crosscoder {folder} is a file, not a folder; {fix}")
    cfg_path = folder / CFG_FILE
    weights = [name for name in (WEIGHTS_FILE, SAELENS_WEIGHTS_FILE) if (folder / name).is_file()]
    what = "SAE" if weights == [SAELENS_WEIGHTS_FILE] else "crosscoder"
    if not cfg_path.is_file():
        if weights:
            raise FeatgraphError(f"{folder} holds {weights[0]} but no {CFG_FILE}: the {what} folder is incomplete — re-save the {what}")
        raise FeatgraphError(f"{folder} is not a crosscoder folder (no {CFG_FILE}); pass {want}")
    meta = load_json_file(cfg_path, f"re-save the {what}")
    if not isinstance(meta, dict):
        raise FeatgraphError(f"{cfg_path} holds a JSON {type(meta).__name__}, not a crosscoder config; re-save the {what}")
    if meta.get("format") == FORMAT_NAME or (meta.get("format") is None and WEIGHTS_FILE in weights):
        if not isinstance(meta.get("config"), dict):
            raise FeatgraphError(f"{cfg_path} has no crosscoder config (its 'config' entry is missing or not an object); re-save the crosscoder")
        CrosscoderConfig.from_dict(meta["config"])  # a malformed config: one line now, before any model loads
        if WEIGHTS_FILE not in weights:
            raise FeatgraphError(f"{folder / WEIGHTS_FILE} is missing; the crosscoder folder is incomplete — re-save it")
        return "featgraph"
    if saelens and "d_in" in meta and "d_sae" in meta:
        return "saelens"
    kind = "featgraph crosscoder config" + (" nor a SAELens SAE config" if saelens else "")
    raise FeatgraphError(f"{cfg_path} is not a {kind} (format={meta.get('format')!r}); pass {want}")



def load_saelens(folder: str | os.PathLike, device: str | torch.device = "cpu", hookpoint: str | None = None) -> Crosscoder:
    """Load a SAELens SAE folder as a one-hookpoint crosscoder with the same encode/decode on raw activations.

    Parameters
    ----------
    folder : str or os.PathLike
        A folder written by SAELens's ``sae.save_model`` / ``save_inference_model`` or by :func:`save_saelens`.
    device : str or torch.device
        Where the crosscoder goes.
    hookpoint : str, optional
        The hookpoint it reads; defaults to the SAE's ``metadata.hook_name``.

    Returns
    -------
    Crosscoder
        In eval mode, of the first architecture that holds the SAE exactly (module docstring).

    Raises
    ------
    FeatgraphError
        If the folder is missing or corrupt, or the SAE has an architecture or an option featgraph cannot
        represent exactly.
    """
    folder = Path(folder)
    sae_cfg = _read_cfg(folder)
    sae_arch, hook, candidates = _check_importable(folder, sae_cfg, hookpoint)
    scale = _saved_scale(sae_cfg)
    w = _normalised(sae_cfg, _read_weights(folder, sae_cfg, sae_arch, candidates[0].saelens_imports[sae_arch]), scale)
    sae = SAELensSAE(sae_arch, sae_cfg, _metadata(sae_cfg), _featgraph_meta(sae_cfg), w, scale)
    for arch in candidates:
        imported = arch.from_saelens(sae)
        if imported is not None:
            break
    else:
        names = ", ".join(a.name for a in candidates)
        raise FeatgraphError(f"SAELens {sae_arch} SAE {folder} has options none of {names} can represent exactly; re-save it in a supported form")
    cc = _build(_featgraph_config(sae_cfg, arch.name, hook, imported.options), imported, scale)
    cc.lineage = _lineage(folder, sae_cfg, sae_arch)
    return cc.eval().to(device)


def _read_cfg(folder: Path) -> dict[str, Any]:
    path = folder / SAELENS_CFG_FILE
    if not folder.is_dir():
        raise FeatgraphError(f"{folder} is not a SAELens SAE folder ({'it is a file' if folder.exists() else 'it does not exist'}); "
                             "pass a folder written by sae.save_model or save_saelens")
    if not path.is_file():
        if (folder / WEIGHTS_FILE).is_file():  # featgraph's own weights: a featgraph crosscoder that lost its cfg.json
            raise FeatgraphError(f"{folder} holds {WEIGHTS_FILE} but no {CFG_FILE}: the crosscoder folder is incomplete — re-save the crosscoder")
        raise FeatgraphError(f"{folder} is not a SAELens SAE folder (no {SAELENS_CFG_FILE}); pass a folder written by sae.save_model or save_saelens")
    sae_cfg = load_json_file(path, "re-save the SAE")
    if not isinstance(sae_cfg, dict) or "d_in" not in sae_cfg or "d_sae" not in sae_cfg:
        raise FeatgraphError(f"{path} is not a SAELens SAE config (no d_in/d_sae); pass a folder written by sae.save_model")
    return sae_cfg


def _metadata(sae_cfg: dict[str, Any]) -> dict[str, Any]:
    meta = sae_cfg.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _featgraph_meta(sae_cfg: dict[str, Any]) -> dict[str, Any]:
    meta = _metadata(sae_cfg).get(FEATGRAPH_META)
    return meta if isinstance(meta, dict) and meta.get("format") == FEATGRAPH_META_FORMAT else {}


def _importers(sae_arch: str) -> list[Any]:
    """The registered architectures that may hold a SAELens ``sae_arch`` SAE, in the order they are asked."""
    found = [cls for _, cls in ARCHITECTURES.items() if sae_arch in cls.saelens_imports]
    return sorted(found, key=lambda cls: -cls.saelens_precedence)


def _supported() -> str:
    return ", ".join(sorted({a for _, cls in ARCHITECTURES.items() for a in cls.saelens_imports})) or "none"


def _check_importable(folder: Path, sae_cfg: dict[str, Any], hookpoint: str | None) -> tuple[str, str, list[Any]]:
    """SAELens architecture, hookpoint and candidate architectures, or a FeatgraphError naming what featgraph cannot hold."""
    sae_arch = sae_cfg.get("architecture", "standard")
    candidates = _importers(sae_arch)
    if not candidates:
        why = _WHY_NOT.get(sae_arch, "has no featgraph equivalent")
        raise FeatgraphError(f"SAELens architecture {sae_arch!r} ({folder}) {why}; supported: {_supported()}")
    norm = sae_cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise FeatgraphError(
            f"SAE {folder} normalises its input at run time (normalize_activations={norm!r}), which featgraph cannot "
            "represent; supported: 'none' — for expected_average_only_in fold the factor first "
            "(sae.fold_activation_norm_scaling_factor(factor), then sae.save_model)"
        )
    if sae_cfg.get("reshape_activations", "none") not in ("none", None):
        raise FeatgraphError(f"SAE {folder} reshapes hook_z activations per head (reshape_activations={sae_cfg['reshape_activations']!r}); featgraph reads flat hookpoints only")
    meta = _metadata(sae_cfg)
    if meta.get("hook_head_index") is not None:
        raise FeatgraphError(f"SAE {folder} reads one attention head (hook_head_index={meta['hook_head_index']}); featgraph reads whole hookpoints only")
    hook = hookpoint or meta.get("hook_name") or sae_cfg.get("hook_name")
    if not hook:
        raise FeatgraphError(f"SAE {folder} does not say which hookpoint it reads (no metadata.hook_name); pass hookpoint=, e.g. 'blocks.3.hook_resid_post'")
    return sae_arch, str(hook), candidates


def _read_weights(folder: Path, sae_cfg: dict[str, Any], sae_arch: str, extras: dict[str, str]) -> dict[str, torch.Tensor]:
    """The SAE's tensors as float64, checked for names, shapes (``extras``: name → dimension letters) and finiteness."""
    path = folder / SAELENS_WEIGHTS_FILE
    state = load_safetensors_file(path, "SAE weights", "the SAELens folder is incomplete — re-save the SAE", "re-save the SAE")
    if "threshold" in extras and "log_threshold" in state and "threshold" not in state:  # older SAELens checkpoints
        state["threshold"] = state.pop("log_threshold").double().exp()
    D, F = int(sae_cfg["d_in"]), int(sae_cfg["d_sae"])
    dims = {"D": D, "F": F}
    layout = {"W_enc": "DF", "b_enc": "F", "W_dec": "FD", "b_dec": "D", **extras}
    expected = {k: tuple(dims[c] for c in v) for k, v in layout.items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise FeatgraphError(f"SAE weights {path} do not match a {sae_arch} SAE with d_in={D}, d_sae={F} (expected {expected}, found {got})")
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise FeatgraphError(f"SAE weights {path} contain NaN or inf; re-train or re-save the SAE")
    return {k: v.double() for k, v in state.items()}


def _normalised(sae_cfg: dict[str, Any], w: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """featgraph's normalised-space weights: b_dec folded out of the input (if SAELens subtracts it), then s folded in."""
    b_enc = w["b_enc"] - w["b_dec"] @ w["W_enc"] if sae_cfg.get("apply_b_dec_to_input", True) else w["b_enc"]
    return {**w, "b_enc": b_enc, "W_enc": w["W_enc"] / scale, "W_dec": w["W_dec"] * scale, "b_dec": w["b_dec"] * scale}


def _saved_scale(sae_cfg: dict[str, Any]) -> float:
    """featgraph's normalisation scale s recorded by :func:`save_saelens`; 1 for any other SAE."""
    s = _featgraph_meta(sae_cfg).get("norm_scale", 1.0)
    return float(s) if isinstance(s, (int, float)) and math.isfinite(s) and s > 0 else 1.0


def _featgraph_config(sae_cfg: dict[str, Any], arch: str, hook: str, options: dict[str, Any]) -> CrosscoderConfig:
    """featgraph config: the one recorded by save_saelens if any, with the SAE's shape, hookpoint and architecture;
    the recorded options win over those read from the SAE when the architecture is the same."""
    recorded = _featgraph_meta(sae_cfg).get("config")
    base = CrosscoderConfig.from_dict(recorded).to_dict() if isinstance(recorded, dict) else {}
    if base.get("architecture") == arch:
        options = {**options, **base["options"]}
    meta = _metadata(sae_cfg)
    base.update(
        hookpoints=[hook],
        out_hookpoints=None,
        d_model=int(sae_cfg["d_in"]),
        n_features=int(sae_cfg["d_sae"]),
        architecture=arch,
        options=options,
        model_name=str(meta.get("model_name") or base.get("model_name") or ""),
    )
    return CrosscoderConfig(**base)


@torch.no_grad()
def _build(cfg: CrosscoderConfig, imported: SAELensImport, scale: float) -> Crosscoder:
    """The crosscoder of ``cfg`` holding the imported normalised-space weights and normalisation scale ``scale``."""
    cc = build_crosscoder(cfg)
    f32, w = torch.float32, imported.weights
    cc.W_enc_LDF.copy_(w["W_enc"][None].to(f32))
    cc.b_enc_F.copy_(w["b_enc"].to(f32))
    cc.W_dec_FLD.copy_(w["W_dec"][:, None].to(f32))
    cc.b_dec_LD.copy_(w["b_dec"][None].to(f32))
    cc.norm_scale_L.fill_(scale)
    state = cc.state_dict()
    for name, value in imported.state.items():
        state[name].copy_(value.to(state[name].dtype))
    return cc


def _lineage(folder: Path, sae_cfg: dict[str, Any], sae_arch: str) -> list[dict]:
    """The recorded featgraph lineage, or one stage saying the crosscoder came from a SAELens SAE."""
    fg = _featgraph_meta(sae_cfg)
    if fg:
        return list(fg.get("lineage", []))
    meta = _metadata(sae_cfg)
    return [{"stage": "saelens", "parent": str(folder), "saelens": {"architecture": sae_arch, "sae_lens_version": meta.get("sae_lens_version"), "metadata": meta}}]
