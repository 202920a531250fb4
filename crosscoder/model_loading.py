"""Load a language model through TransformerLens: a ``HookedTransformer`` or a ``TransformerBridge``.

Two sources are accepted:

* a local HuggingFace checkpoint directory (``config.json`` plus weights, as written by
  ``save_pretrained``), loaded fully offline; and
* a model name: a TransformerLens name or alias (``roneneldan/TinyStories-33M``, ``gpt2``,
  ``tiny-stories-33M``) or, with the bridge backend, any HuggingFace model id of an
  architecture the bridge supports.

Two backends (:data:`BACKENDS`) build the model: ``hooked`` (``HookedTransformer``, TransformerLens's
own re-implementation; deprecated in TransformerLens 3, removed in 4) and ``bridge``
(``TransformerBridge``, which wraps the HuggingFace model and, in compatibility mode, exposes
HookedTransformer's hook names and weight processing). See :func:`load_model` for what each
backend supports and why ``hooked`` is the default (:data:`DEFAULT_BACKEND`).

Our own embedded-model directories are handled elsewhere; callers check
:func:`is_hf_checkpoint_dir` (or their own format) before calling :func:`load_model`.

Every route applies the same weight processing as ``HookedTransformer.from_pretrained``'s
defaults (see :data:`PROCESSING`), so a model loaded from a directory and the same model
loaded by name, by either backend, have the same weights and activations.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import torch

from crosscoder.errors import FeatgraphError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "PROCESSING",
    "Backend",
    "CORRUPT_WEIGHTS_FIX",
    "check_finite_parameters",
    "first_nonfinite_tensor",
    "is_bridge",
    "is_hf_checkpoint_dir",
    "load_model",
    "require_hooked",
    "require_patchable",
    "unpatchable_hookpoints",
]

logger = logging.getLogger(__name__)

#: Weight processing requested on both routes (``HookedTransformer.from_pretrained``'s
#: defaults). TransformerLens turns a flag off where it is invalid for the architecture:
#: no folding or centring for shortformer or post-norm models, no unembedding centring
#: with logit soft-capping.
PROCESSING: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}

Backend = Literal["hooked", "bridge"]
#: The model backends :func:`load_model` accepts.
BACKENDS: tuple[str, ...] = ("hooked", "bridge")
#: The backend used when none is named; see :func:`load_model` for the reasons. Moving to
#: TransformerLens 4 (which removes HookedTransformer) is this constant becoming "bridge".
DEFAULT_BACKEND: Backend = "hooked"

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
PROBE_TIMEOUT_S = 2.0
_RESID_MID_RE = re.compile(r"^blocks\.\d+\.hook_resid_mid$")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
#: The fix :func:`check_finite_parameters` names when none is given.
CORRUPT_WEIGHTS_FIX = "the checkpoint is corrupt or diverged; re-download or re-train it"


def first_nonfinite_tensor(module: torch.nn.Module, buffers: bool = False) -> tuple[str, int, int] | None:
    """``(name, number of NaN/inf elements, number of elements)`` of the first parameter of ``module`` (then, with
    ``buffers``, the first floating-point buffer) holding NaN or inf; None when all are finite.

    One ``torch.isfinite(p).all()`` per tensor, nothing copied; the bad elements are counted only for the one found.
    """
    tensors = list(module.named_parameters())
    if buffers:
        tensors += [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    with torch.no_grad():
        for name, p in tensors:
            if not bool(torch.isfinite(p).all()):
                return name, int((~torch.isfinite(p)).sum()), p.numel()
    return None


def check_finite_parameters(model: torch.nn.Module, where: str, fix: str = CORRUPT_WEIGHTS_FIX) -> None:
    """Raise one FeatgraphError line naming the first parameter of ``model`` that holds NaN or inf.

    One pass over ``model.named_parameters()`` (a tensor shared by several names is checked once), one
    ``torch.isfinite(p).all()`` per parameter and nothing copied (:func:`first_nonfinite_tensor`). Buffers are not
    checked: attention masks legitimately hold -inf.

    Parameters
    ----------
    model : torch.nn.Module
        The loaded model (a HookedTransformer, a TransformerBridge, a HuggingFace model, a crosscoder).
    where : str
        What the model is, for the message (e.g. ``"model 'gpt2'"``).
    fix : str, default :data:`CORRUPT_WEIGHTS_FIX`
        What to do about it, for the message.

    Raises
    ------
    FeatgraphError
        ``<where> has <k> NaN/inf values (of <n>) in parameter <name>; <fix>``.
    """
    bad = first_nonfinite_tensor(model)
    if bad is not None:
        name, n_bad, numel = bad
        raise FeatgraphError(f"{where} has {n_bad} NaN/inf value{'s' if n_bad != 1 else ''} (of {numel}) in parameter {name}; {fix}")


def is_hf_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    """Say whether ``path`` is a directory holding a HuggingFace checkpoint.

    Parameters
    ----------
    path : str or os.PathLike
        Candidate directory.

    Returns
    -------
    bool
        True when the directory has ``config.json`` and a weights file
        (``model.safetensors`` or its sharded index; pickled ``pytorch_model.bin`` files are refused).
    """
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        return False
    return any((path / name).is_file() for name in WEIGHT_FILES)


def load_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: Backend = DEFAULT_BACKEND,
) -> HookedTransformer | TransformerBridge:
    """Load a model through TransformerLens, in eval mode, with :data:`PROCESSING` applied.

    Parameters
    ----------
    name_or_path : str
        A local HuggingFace checkpoint directory (``config.json`` plus weights and,
        optionally, a tokenizer saved beside them), or a model name: a TransformerLens name
        or alias from ``transformer_lens.loading.OFFICIAL_MODEL_NAMES`` (either backend) or
        any HuggingFace model id whose architecture the bridge supports (``bridge`` only).
    device : str or torch.device, default "cpu"
        Device the model's weights are placed on.
    dtype : torch.dtype, default torch.float32
        Dtype of the weights.
    backend : {"hooked", "bridge"}, default :data:`DEFAULT_BACKEND` ("hooked")
        ``hooked`` builds a ``HookedTransformer``; ``bridge`` boots a
        ``transformer_lens.model_bridge.TransformerBridge`` around the HuggingFace model and
        calls ``enable_compatibility_mode`` with :data:`PROCESSING`, which gives
        HookedTransformer's hook names (``blocks.N.hook_resid_pre``, ``blocks.N.hook_mlp_out``,
        ``blocks.N.ln2.hook_normalized``, ...) and its weight processing.

    Returns
    -------
    transformer_lens.HookedTransformer or transformer_lens.model_bridge.TransformerBridge
        The model with :data:`PROCESSING` applied: LayerNorm weights folded into the
        following linear maps, writing weights centred, the unembedding centred (logits
        shift by a constant per position, so log-probabilities are unchanged) and value
        biases folded into the output bias. A local directory without a tokenizer gives a
        model with ``tokenizer=None`` that takes token ids only. ``cfg.model_name`` is the
        directory's name, or the HuggingFace name without its owner (``TinyStories-33M``).

    Raises
    ------
    FeatgraphError
        For an unknown backend, a directory that is not a loadable checkpoint, an
        architecture the backend cannot convert, an unknown name, a name whose weights
        cannot be fetched (for example offline with an empty HuggingFace cache), or weights
        holding NaN or inf (:func:`check_finite_parameters`: a local checkpoint is checked under
        its HuggingFace parameter names before weight processing, a named model after it).

    Notes
    -----
    **What works with each backend.** Both give the same hookpoint names and, on GPT-2 and
    GPT-Neo checkpoints (tested), the same activations, logits and weights to float
    tolerance. Works with ``bridge``: harvesting (``hook_dict``, ``run_with_cache(names_filter=...,
    stop_at_layer=...)``), the activation cache and buffer, feature activations, splice
    metrics and other patching through ``run_with_hooks`` / ``hooks(...)`` (except at
    ``hook_resid_mid``, below), ``cfg.{n_layers, d_model, n_ctx, d_vocab, d_head, n_heads,
    d_mlp, device, model_name, original_architecture}``, ``tokenizer``, ``to_tokens``,
    ``to(device, print_details=False)``, and the weights ``blocks[i].mlp.W_in/W_out/b_in``,
    ``blocks[i].attn.W_Q/W_K/W_V/W_O`` and ``W_U`` (HookedTransformer's shapes and values).

    Does not work with ``bridge``:

    * writing to ``blocks.N.hook_resid_mid``: the bridge reads it correctly but a patch there
      misses the residual stream (:func:`unpatchable_hookpoints`; callers that patch use
      :func:`require_patchable`);
    * the feature-interaction analyses (``featgraph.mlp_interactions``,
      ``featgraph.attention_interactions``), which read HookedTransformer's component classes
      (``MLP``, ``LayerNormPre``) and ``attn.attn_scale`` (:func:`require_hooked`);
    * on GPT-Neo, ``attn.hook_attn_scores`` holds other values than HookedTransformer's (the
      attention pattern agrees) and a write to ``attn.hook_pattern`` is lost.

    **Why ``hooked`` is the default.** SAE Lens, whose format ``crosscoder.saelens`` exports,
    needs transformer-lens < 4 and runs SAEs on HookedTransformer (``HookedSAETransformer``;
    its ``SAETransformerBridge`` is beta in 6.54); the interaction analyses need
    HookedTransformer's components; and the bridge cannot patch ``hook_resid_mid``. Speed is
    not the reason: harvesting the test checkpoint (a 4-layer, 768-wide GPT-Neo) takes about
    as long through either (bridge/hooked 0.9-1.1 on CPU); only on tiny models (d_model 64)
    does the bridge's per-call overhead show (1.3-1.9). The bridge's weight processing matches HookedTransformer's wherever we checked
    (GPT-2, GPT-Neo). When featgraph moves to TransformerLens 4, which removes
    HookedTransformer, the move is :data:`DEFAULT_BACKEND` becoming ``"bridge"``.

    A named model is fetched through the HuggingFace cache. When ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) is set, or a quick connection probe to the hub fails, the
    load runs in HuggingFace offline mode so that it fails at once instead of retrying
    for tens of seconds; the probe is skipped when a proxy is configured. A local
    directory is always loaded in offline mode.
    """
    if backend not in BACKENDS:
        raise FeatgraphError(
            f"unknown model backend {backend!r}; choose hooked (HookedTransformer) or bridge (TransformerBridge)"
        )
    path = Path(name_or_path).expanduser()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*HookedTransformer", category=DeprecationWarning
        )
        if path.is_dir():
            if backend == "bridge":
                return _load_local_bridge(path, str(device), dtype)
            return _load_local(path, str(device), dtype)
        if path.exists():
            raise FeatgraphError(
                f"model path '{path}' is a file, not a directory; pass a checkpoint directory "
                "with config.json or a TransformerLens model name"
            )
        if backend == "bridge":
            model = _load_named_bridge(name_or_path, str(device), dtype)
        else:
            model = _load_named(name_or_path, str(device), dtype)
    check_finite_parameters(model, f"model '{name_or_path}'")
    return model


def is_bridge(model: Any) -> bool:
    """Say whether ``model`` is a TransformerLens ``TransformerBridge`` (the ``bridge`` backend)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # transformer-lens < 3
        return False
    return isinstance(model, TransformerBridge)


def unpatchable_hookpoints(model: Any, hookpoints: Sequence[str]) -> list[str]:
    """The hookpoints of ``hookpoints`` that ``model`` reads correctly but cannot patch as HookedTransformer does.

    On a TransformerBridge, ``blocks.N.hook_resid_mid`` is an alias of ``blocks.N.ln2.hook_in``:
    its value is the residual stream between attention and MLP, but what a hook writes there
    never reaches the residual path that skips the MLP (on GPT-2 the write is lost entirely; on
    GPT-Neo it reaches the MLP input only). Every other hookpoint featgraph reads patches alike
    (tested on GPT-2 and GPT-Neo). A HookedTransformer has none.
    """
    if not is_bridge(model):
        return []
    return [h for h in hookpoints if _RESID_MID_RE.match(h)]


def require_patchable(model: Any, hookpoints: Sequence[str], use: str) -> None:
    """Raise one FeatgraphError line when ``use`` would patch a hookpoint ``model`` cannot patch.

    See :func:`unpatchable_hookpoints`.
    """
    bad = unpatchable_hookpoints(model, hookpoints)
    if bad:
        raise FeatgraphError(
            f"{use} patch {bad[0]}, which the TransformerBridge backend reads correctly but cannot write "
            "(a patch there misses the residual stream); load the model with backend hooked"
        )


def require_hooked(model: Any, use: str) -> None:
    """Raise one FeatgraphError line when ``model`` is a TransformerBridge and ``use`` needs a HookedTransformer.

    Parameters
    ----------
    model : HookedTransformer or TransformerBridge
        The loaded model.
    use : str
        What needs HookedTransformer's components, for the message (e.g. "MLP interactions").
    """
    if is_bridge(model):
        raise FeatgraphError(
            f"{use} read HookedTransformer components that the TransformerBridge backend does not have; "
            "load the model with backend hooked (--backend hooked)"
        )


# --- local HuggingFace checkpoint -------------------------------------------------------


def _load_local(path: Path, device: str, dtype: torch.dtype) -> HookedTransformer:
    """Load a local HuggingFace checkpoint directory offline into a HookedTransformer."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    _check_checkpoint_dir(path)
    hf_model = _load_hf_model(path, dtype)
    cfg = _local_config(path, hf_model, device, dtype)
    tokenizer = _load_local_tokenizer(path)
    cfg.tokenizer_name = str(path) if tokenizer is not None else None
    state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf_model, dtype=dtype)
    del hf_model
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **_processing_flags(cfg))
    model.move_model_modules_to_device()
    logger.info("loaded %s (%s) from %s", cfg.model_name, cfg.original_architecture, path)
    return model.eval()


def _check_checkpoint_dir(path: Path) -> None:
    """Raise FeatgraphError unless ``path`` holds a HuggingFace config and weights."""
    if not (path / "config.json").is_file():
        raise FeatgraphError(
            f"directory '{path}' has no config.json, so it is not a HuggingFace checkpoint; "
            "pass a directory written by save_pretrained or a TransformerLens model name"
        )
    if not is_hf_checkpoint_dir(path) and (path / "pytorch_model.bin").is_file():
        raise FeatgraphError(
            f"directory '{path}' holds only pickled weights (pytorch_model.bin), which featgraph never unpickles; "
            "re-save the model with save_pretrained(..., safe_serialization=True) to get model.safetensors"
        )
    if not is_hf_checkpoint_dir(path):
        raise FeatgraphError(
            f"directory '{path}' has config.json but no weights ({', '.join(WEIGHT_FILES)}); "
            "save the model with save_pretrained into that directory"
        )


def _load_hf_model(path: Path, dtype: torch.dtype, **kwargs: Any) -> Any:
    """Load the HuggingFace causal LM from ``path`` without touching the network."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, use_safetensors=True, **kwargs
        )
    except (OSError, ValueError, KeyError) as err:
        raise FeatgraphError(
            f"cannot load the HuggingFace checkpoint in '{path}' ({_first_line(err)}); "
            "it must be a causal language model saved with save_pretrained"
        ) from err
    # Checked before any weight processing, so the names are the checkpoint's own (transformer.ln_f.weight).
    check_finite_parameters(model, f"model checkpoint '{path}'")
    return model.eval()


def _local_config(
    path: Path, hf_model: Any, device: str, dtype: torch.dtype
) -> HookedTransformerConfig:
    """Build the HookedTransformerConfig for a local checkpoint, as from_pretrained would.

    TransformerLens picks some architectures by substrings of the model name ("llama",
    "gemma", "t5", ...), which a directory path may contain by accident; the config is
    therefore converted from a copy of ``config.json`` in a neutrally named directory.
    That copy also gets the fields TransformerLens reads but a config written by current
    transformers may lack (:func:`_tl_config_fields`).
    """
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory() as tmp:
        neutral = Path(tmp) / "checkpoint"
        neutral.mkdir()
        config = json.loads((path / "config.json").read_text())
        (neutral / "config.json").write_text(json.dumps({**config, **_tl_config_fields(config)}))
        try:
            cfg = loading.get_pretrained_model_config(
                str(neutral),
                hf_cfg=hf_model.config.to_dict(),
                fold_ln=PROCESSING["fold_ln"],
                device=device,
                dtype=dtype,
            )
        except (NotImplementedError, AttributeError, KeyError) as err:
            raise FeatgraphError(
                f"checkpoint '{path}' cannot be converted to a HookedTransformer: {_first_line(err)}; use an "
                "architecture TransformerLens supports (GPT-2, GPT-Neo, GPT-NeoX, Llama, ...) or backend bridge"
            ) from err
    cfg.model_name = path.resolve().name
    return _fix_mlp_width(cfg, hf_model.config)


def _tl_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Fields TransformerLens's converter reads that ``config`` lacks, filled as the model reads them.

    A GPT-2 config made by transformers 5 has no ``n_ctx`` (older ``config.json`` files, such
    as the hub's gpt2, still carry it); the model's context length is ``n_positions``.
    """
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        return {"n_ctx": config["n_positions"]}
    return {}


def _fix_mlp_width(cfg: HookedTransformerConfig, hf_config: Any) -> HookedTransformerConfig:
    """Take the MLP width from the HuggingFace config where TransformerLens assumes 4 * d_model.

    GPT-Neo's width is ``intermediate_size`` and GPT-2's is ``n_inner`` (None means 4 * d_model).
    """
    field = {"GPTNeoForCausalLM": "intermediate_size", "GPT2LMHeadModel": "n_inner"}.get(
        cfg.original_architecture or ""
    )
    d_mlp = getattr(hf_config, field, None) if field else None
    if d_mlp in (None, cfg.d_mlp):
        return cfg
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig.from_dict({**cfg.to_dict(), "d_mlp": d_mlp})


def _load_local_tokenizer(path: Path) -> Any | None:
    """Load the tokenizer saved beside the checkpoint, or None when there is none."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        logger.info("no tokenizer in %s: the model takes token ids only", path)
        return None
    from transformers import AutoTokenizer

    # add_bos_token=True as HookedTransformer.__init__ does, so that TransformerLens keeps
    # this tokenizer instead of reloading it by name.
    return AutoTokenizer.from_pretrained(path, add_bos_token=True, local_files_only=True)


def _processing_flags(cfg: HookedTransformerConfig) -> dict[str, bool]:
    """Return :data:`PROCESSING` with the flags that are invalid for ``cfg`` turned off."""
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:  # transformer-lens < 3
        POST_NORM_ARCHITECTURES = ()
    flags = dict(PROCESSING)
    shortformer = cfg.positional_embedding_type == "shortformer"
    post_norm = cfg.original_architecture in POST_NORM_ARCHITECTURES
    softcap = (getattr(cfg, "output_logits_soft_cap", None) or 0) > 0
    if shortformer or post_norm:
        flags["fold_ln"] = flags["center_writing_weights"] = False
    if shortformer or softcap:
        flags["center_unembed"] = False
    return flags


# --- TransformerBridge ---------------------------------------------------------------------


def _load_local_bridge(path: Path, device: str, dtype: torch.dtype) -> TransformerBridge:
    """Boot a TransformerBridge around a local HuggingFace checkpoint directory, offline."""
    from transformer_lens.model_bridge import TransformerBridge

    _check_checkpoint_dir(path)
    # Eager attention, as boot_transformers asks for when it loads a model itself.
    hf_model = _load_hf_model(path, dtype, attn_implementation="eager").to(device)
    tokenizer = _load_local_tokenizer(path)
    try:
        with _hub_offline_mode(True), _quiet():
            bridge = TransformerBridge.boot_transformers(
                str(path), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
            )
    except (ValueError, NotImplementedError, OSError, KeyError, AttributeError) as err:
        raise FeatgraphError(
            f"checkpoint '{path}' cannot be loaded as a TransformerBridge ({_first_line(err)}); "
            "use an architecture the bridge supports or backend hooked"
        ) from err
    if tokenizer is None:
        bridge.tokenizer = None  # boot_transformers made an empty one from the bare directory
    return _compatible_bridge(bridge, path.resolve().name)


def _load_named_bridge(name: str, device: str, dtype: torch.dtype) -> TransformerBridge:
    """Boot a TransformerBridge for a TransformerLens name or alias, or a HuggingFace model id."""
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.model_bridge import TransformerBridge

    hf_name = loading.make_model_alias_map().get(name.lower(), name)  # TL alias → HF id
    offline_reason = _offline_reason()
    try:
        with _hub_offline_mode(offline_reason is not None), _quiet():
            bridge = TransformerBridge.boot_transformers(hf_name, device=device, dtype=dtype)
    except _fetch_errors() as err:
        raise _fetch_error(name, offline_reason, err) from err
    except (ValueError, NotImplementedError) as err:
        raise FeatgraphError(
            f"model '{name}' cannot be loaded as a TransformerBridge ({_first_line(err)}); "
            "use a model of an architecture the bridge supports or backend hooked"
        ) from err
    return _compatible_bridge(bridge, hf_name.split("/")[-1])  # HookedTransformer's model_name


def _compatible_bridge(bridge: TransformerBridge, model_name: str) -> TransformerBridge:
    """Turn on HookedTransformer compatibility (hook names, :data:`PROCESSING`) and align the config.

    ``cfg.original_architecture`` is set from the bridge's ``cfg.architecture`` (HookedTransformer
    fills it, and :func:`_processing_flags` and featgraph's checks read it).
    """
    cfg = bridge.cfg
    if getattr(cfg, "original_architecture", None) is None:
        cfg.original_architecture = getattr(cfg, "architecture", None)
    cfg.model_name = model_name
    try:
        with _quiet():
            bridge.enable_compatibility_mode(disable_warnings=True, **_processing_flags(cfg))
    except RuntimeError as err:
        raise FeatgraphError(
            f"model '{model_name}' has no HookedTransformer compatibility mode in TransformerBridge "
            f"({_first_line(err)}); use backend hooked"
        ) from err
    logger.info("loaded %s (%s) as a TransformerBridge", model_name, cfg.original_architecture)
    return bridge.eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Send what TransformerLens prints to stdout to the log instead."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        if out.getvalue().strip():
            logger.info("%s", out.getvalue().strip())


# --- TransformerLens model name -----------------------------------------------------------


def _load_named(name: str, device: str, dtype: torch.dtype) -> HookedTransformer:
    """Load a TransformerLens official model name or alias through from_pretrained."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    if name.lower() not in loading.make_model_alias_map():
        raise FeatgraphError(
            f"unknown model '{name}': not a local directory and not a TransformerLens model "
            "name (e.g. roneneldan/TinyStories-33M); pass a directory with config.json or a "
            "name from transformer_lens.loading.OFFICIAL_MODEL_NAMES"
        )
    offline_reason = _offline_reason()
    out = io.StringIO()
    try:
        with _hub_offline_mode(offline_reason is not None), contextlib.redirect_stdout(out):
            model = HookedTransformer.from_pretrained(
                name, device=device, dtype=dtype, **PROCESSING
            )
    except _fetch_errors() as err:
        raise _fetch_error(name, offline_reason, err) from err
    logger.info("%s", out.getvalue().strip() or f"loaded {name}")
    return model.eval()


def _fetch_error(name: str, offline_reason: str | None, err: BaseException) -> FeatgraphError:
    """Build the one-line FeatgraphError for a named model whose files could not be had."""
    if offline_reason is not None:
        return FeatgraphError(
            f"model '{name}' could not be loaded offline: weights are not in the HuggingFace "
            f"cache and {offline_reason}; download it once with network access or pass a "
            "local checkpoint directory"
        )
    return FeatgraphError(
        f"model '{name}' could not be fetched from the HuggingFace hub ({_first_line(err)}); "
        "check the network (and HF_TOKEN for gated models) or pass a local checkpoint directory"
    )


def _fetch_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the files could not be fetched or found"."""
    errors: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import HfHubHTTPError

        errors.append(HfHubHTTPError)
    with contextlib.suppress(ImportError):
        import httpx

        errors.append(httpx.HTTPError)
    return tuple(errors)


def _offline_reason() -> str | None:
    """Say why the hub counts as unreachable, or None when it looks reachable."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{var} is set"
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return None  # a direct probe says nothing about a proxied connection
    if not _hub_reachable():
        return "the hub is unreachable"
    return None


def _hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Try a TCP connection to the hub endpoint, DNS included, within ``timeout`` seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    reachable = bool(result and result[0])
    logger.debug("hub %s reachable: %s", url.hostname, reachable)
    return reachable


@contextlib.contextmanager
def _hub_offline_mode(enabled: bool) -> Iterator[None]:
    """Put huggingface_hub (and transformers, which asks it) in offline mode for a while."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved_flag, saved_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
