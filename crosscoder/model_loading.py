"""Load a language model as a TransformerLens ``HookedTransformer``.

Two sources are accepted:

* a local HuggingFace checkpoint directory (``config.json`` plus weights, as written by
  ``save_pretrained``), loaded fully offline; and
* a TransformerLens model name or alias (``roneneldan/TinyStories-33M``, ``gpt2``,
  ``tiny-stories-33M``), loaded through ``HookedTransformer.from_pretrained``.

Our own embedded-model directories are handled elsewhere; callers check
:func:`is_hf_checkpoint_dir` (or their own format) before calling :func:`load_model`.

Both routes apply the same weight processing as ``HookedTransformer.from_pretrained``'s
defaults (see :data:`PROCESSING`), so a model loaded from a directory and the same model
loaded by name have identical weights and activations.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from crosscoder.errors import FeatgraphError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = ["PROCESSING", "is_hf_checkpoint_dir", "load_model"]

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

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
PROBE_TIMEOUT_S = 2.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


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
) -> HookedTransformer:
    """Load a model as a TransformerLens ``HookedTransformer`` in eval mode.

    Parameters
    ----------
    name_or_path : str
        A local HuggingFace checkpoint directory (``config.json`` plus weights and,
        optionally, a tokenizer saved beside them), or a TransformerLens model name or
        alias from ``transformer_lens.loading.OFFICIAL_MODEL_NAMES``.
    device : str or torch.device, default "cpu"
        Device the model's weights are placed on.
    dtype : torch.dtype, default torch.float32
        Dtype of the weights.

    Returns
    -------
    transformer_lens.HookedTransformer
        The model with :data:`PROCESSING` applied: LayerNorm weights folded into the
        following linear maps (LayerNorms become ``LNPre``), writing weights centred, the
        unembedding centred (logits shift by a constant per position, so log-probabilities
        are unchanged) and value biases folded into the output bias. A local directory
        without a tokenizer gives a model with ``tokenizer=None`` that takes token ids only.

    Raises
    ------
    FeatgraphError
        For a directory that is not a loadable checkpoint, an architecture TransformerLens
        cannot convert, an unknown name, or a name whose weights cannot be fetched (for
        example offline with an empty HuggingFace cache).

    Notes
    -----
    A named model is fetched through the HuggingFace cache. When ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) is set, or a quick connection probe to the hub fails, the
    load runs in HuggingFace offline mode so that it fails at once instead of retrying
    for tens of seconds; the probe is skipped when a proxy is configured.
    """
    path = Path(name_or_path).expanduser()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*HookedTransformer", category=DeprecationWarning
        )
        if path.is_dir():
            return _load_local(path, str(device), dtype)
        if path.exists():
            raise FeatgraphError(
                f"model path '{path}' is a file, not a directory; pass a checkpoint directory "
                "with config.json or a TransformerLens model name"
            )
        return _load_named(name_or_path, str(device), dtype)


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


def _load_hf_model(path: Path, dtype: torch.dtype) -> Any:
    """Load the HuggingFace causal LM from ``path`` without touching the network."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as err:
        raise FeatgraphError(
            f"cannot load the HuggingFace checkpoint in '{path}' ({_first_line(err)}); "
            "it must be a causal language model saved with save_pretrained"
        ) from err
    return model.eval()


def _local_config(
    path: Path, hf_model: Any, device: str, dtype: torch.dtype
) -> HookedTransformerConfig:
    """Build the HookedTransformerConfig for a local checkpoint, as from_pretrained would.

    TransformerLens picks some architectures by substrings of the model name ("llama",
    "gemma", "t5", ...), which a directory path may contain by accident; the config is
    therefore converted from a copy of ``config.json`` in a neutrally named directory.
    """
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory() as tmp:
        neutral = Path(tmp) / "checkpoint"
        neutral.mkdir()
        shutil.copy(path / "config.json", neutral / "config.json")
        try:
            cfg = loading.get_pretrained_model_config(
                str(neutral),
                hf_cfg=hf_model.config.to_dict(),
                fold_ln=PROCESSING["fold_ln"],
                device=device,
                dtype=dtype,
            )
        except NotImplementedError as err:
            raise FeatgraphError(
                f"checkpoint '{path}' cannot be converted: {_first_line(err)}; use an "
                "architecture TransformerLens supports (GPT-2, GPT-Neo, GPT-NeoX, Llama, ...)"
            ) from err
    cfg.model_name = path.resolve().name
    return _fix_gpt_neo_mlp(cfg, hf_model.config)


def _fix_gpt_neo_mlp(cfg: HookedTransformerConfig, hf_config: Any) -> HookedTransformerConfig:
    """Take GPT-Neo's MLP width from ``intermediate_size``; TransformerLens assumes 4 * d_model."""
    d_mlp = getattr(hf_config, "intermediate_size", None)
    if cfg.original_architecture != "GPTNeoForCausalLM" or d_mlp in (None, cfg.d_mlp):
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
