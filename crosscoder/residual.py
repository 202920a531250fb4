"""Residual dictionaries: a new dictionary trained on what a frozen one fails to reconstruct, and their sum as one.

A residual dictionary reads the same activations as the frozen one and learns the frozen one's error (normalised
space, the frozen one's scales):

    r = y − ŷ_frozen(x)          loss = ‖r − (W_dec f_new(x) + b_dec)‖² + sparsity(f_new)

so every architecture's own loss (ReLU's penalty, BatchTopK with AuxK, JumpReLU) applies unchanged with its targets
replaced by r (:func:`residual_of` sets :attr:`~crosscoder.crosscoder.Crosscoder.target_offset`); the frozen one runs
in eval mode under ``no_grad`` and is never trained. Because the new encoder reads the original activations,
``frozen + new`` is one crosscoder (:func:`combine_crosscoders`): encoders and decoders concatenated along F (the
first dictionary's latents first), b_dec the sum, so its reconstruction is ŷ_frozen + ŷ_new exactly.

A combined crosscoder encodes as its parts do at inference (eval mode): all ReLU → ReLU; any other mix → JumpReLU with
a threshold on the pre-activation per latent (ReLU latents the smallest threshold JumpReLU's log parametrisation
holds, float32 tiny; BatchTopK latents θ / n_i, where they fire since relu(pre_i)·n_i > θ ⇔ pre_i > θ / n_i with
n_i that dictionary's feature norm; JumpReLU latents their own). Subclasses (e.g. Matryoshka variants) combine by the
inference rule of the architecture they subclass. ``featgraph crosscoder train --residual-of CC`` and
``featgraph crosscoder combine`` are the commands; :func:`crosscoder.fitting.train_residual_rounds` runs rounds.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

import torch

from .batchtopk import BatchTopKCrosscoder, _thresholds_on_pre
from .build import build_crosscoder
from .config import CrosscoderConfig
from .crosscoder import Crosscoder
from .errors import FeatgraphError
from .jumprelu import NEVER, TINY, JumpReLUCrosscoder, JumpReLUOptions
from .relu import ReLUCrosscoder, ReLUOptions

__all__ = ["FrozenReconstruction", "check_combinable", "check_same_slots", "combine_crosscoders", "inference_rule", "residual_of"]

log = logging.getLogger(__name__)

_RULES = ((BatchTopKCrosscoder, "batchtopk"), (JumpReLUCrosscoder, "jumprelu"), (ReLUCrosscoder, "relu"))


def inference_rule(cc: Crosscoder | type) -> str:
    """``relu``, ``batchtopk`` or ``jumprelu``: how ``cc`` (a crosscoder or an architecture class) encodes at inference
    (its class or the one it subclasses)."""
    arch = cc if isinstance(cc, type) else type(cc)
    for cls, rule in _RULES:
        if issubclass(arch, cls):
            return rule
    raise FeatgraphError(f"a {arch.name or arch.__name__} crosscoder cannot be combined: combine and residual dictionaries "
                         "handle relu, batchtopk and jumprelu crosscoders (and their subclasses)")


def _label(i: int, names: Sequence[str] | None) -> str:
    return f"crosscoder {names[i]}" if names is not None else f"crosscoder #{i + 1}"


def check_same_slots(cfgs: Sequence[CrosscoderConfig], names: Sequence[str] | None = None) -> None:
    """One FeatgraphError line unless the configs read and write the same slots: hookpoints, out_hookpoints, d_model
    and models."""
    if len(cfgs) < 1:
        raise FeatgraphError("nothing to combine; pass at least one crosscoder")
    first = cfgs[0]
    for i, cfg in enumerate(cfgs):
        for what, a, b in (("models", first.models, cfg.models), ("hookpoints", first.hookpoints, cfg.hookpoints),
                           ("out_hookpoints", first.model_writes, cfg.model_writes), ("d_model", first.d_model, cfg.d_model)):
            if a != b:
                raise FeatgraphError(f"{_label(i, names)} has {what} {b} but {_label(0, names)} has {a}; combine and residual "
                                     "dictionaries need the same hookpoints, out_hookpoints, d_model and models")


def check_combinable(ccs: Sequence[Crosscoder], names: Sequence[str] | None = None, *, last_untrained: bool = False) -> None:
    """One FeatgraphError line unless ``ccs`` read and write the same slots (:func:`check_same_slots`) and each has an
    inference rule :func:`combine_crosscoders` can express (a BatchTopK one needs its learned threshold, except the
    last with ``last_untrained``: a dictionary about to be trained)."""
    check_same_slots([cc.cfg for cc in ccs], names)
    for i, cc in enumerate(ccs):
        if cc.cfg.layout != "acausal":  # the sum's features would not form one layout's contiguous per-layer blocks
            raise FeatgraphError(f"{_label(i, names)} has layout {cc.cfg.layout}; combining and residual rounds take acausal "
                                 "crosscoders only — train one wider causal crosscoder instead")
        trained = not (last_untrained and i == len(ccs) - 1)
        if inference_rule(cc) == "batchtopk" and trained and float(cc.threshold) < 0:
            raise FeatgraphError(f"{_label(i, names)} is a batchtopk crosscoder without a learned inference threshold "
                                 "(threshold < 0); train it first (the threshold is learned during training)")
    first = ccs[0].cfg
    if first.model_name and any(cc.cfg.model_name not in ("", first.model_name) for cc in ccs):
        log.warning("combining crosscoders recorded for different models: %s", sorted({cc.cfg.model_name for cc in ccs}))


class FrozenReconstruction:
    """``x_BLD ↦ ŷ_frozen``: the frozen dictionary's reconstruction of normalised activations (B, L, D) at the written
    hookpoints, (B, L_out, D), in the normalised space of ``cc`` (the two scale vectors may differ; a residual
    dictionary copies the frozen one's). Computed in float32 (outside any autocast: the reconstruction the sum gives at
    inference) under ``no_grad``, and kept for the last batch, so the loss and BatchTopK's AuxK, which both ask for
    the targets, run the frozen one once per batch."""

    def __init__(self, frozen: Crosscoder, cc: Crosscoder):
        self.frozen = frozen
        r_L = frozen.norm_scale_L / cc.norm_scale_L  # frozen's scale relative to cc's, per slot of all_hookpoints
        self.ratio_L = None if torch.equal(r_L, torch.ones_like(r_L)) else r_L
        self._key: tuple[int, int] | None = None
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, x_BLD: torch.Tensor) -> torch.Tensor:
        if self._x is x_BLD and self._key == (id(x_BLD), x_BLD._version):
            return self._y
        frozen = self.frozen
        with torch.autocast(x_BLD.device.type, enabled=False):  # float32 as at inference, also under training's bf16
            x_in_BLD = x_BLD.float() if self.ratio_L is None else x_BLD.float() * self.ratio_L[:, None]
            y_BLD = frozen.decode(frozen.encode(x_in_BLD, normalised=True), normalised=True)
            if self.ratio_L is not None:
                y_BLD = y_BLD / self.ratio_L[frozen.out_idx][:, None]
        self._x, self._key, self._y = x_BLD, (id(x_BLD), x_BLD._version), y_BLD
        return y_BLD


@contextlib.contextmanager
def residual_of(cc: Crosscoder, frozen: Crosscoder) -> Iterator[Crosscoder]:
    """While inside, ``cc.targets(x)`` is the written activations minus ``frozen``'s reconstruction, so
    ``cc.loss`` trains it on the residual (MSE on the residual, sparsity on ``cc``'s latents only) and
    :func:`crosscoder.metrics.reconstruction_metrics` measures how much of the residual it explains. ``frozen`` is
    put in eval mode (its inference rule, as :func:`combine_crosscoders` uses it), never trained, and not a
    submodule of ``cc`` (neither in its parameters nor in its state dict); it must sit on ``cc``'s device.

    >>> from crosscoder.config import CrosscoderConfig
    >>> from crosscoder.build import build_crosscoder
    >>> old = build_crosscoder(CrosscoderConfig(["h0"], 4, 8)).eval()
    >>> new = build_crosscoder(CrosscoderConfig(["h0"], 4, 8, seed=1))
    >>> x = torch.randn(3, 1, 4)
    >>> with residual_of(new, old):
    ...     torch.allclose(new.targets(x), x - old(x, normalised=True))
    True
    >>> new.target_offset is None and len(list(new.parameters())) == 4
    True
    """
    if cc is frozen:
        raise FeatgraphError("a crosscoder cannot be the residual of itself; pass a new dictionary and the frozen one")
    check_combinable([frozen, cc], ["(frozen)", "(new)"], last_untrained=True)
    was_training, previous = frozen.training, cc.target_offset
    frozen.eval()
    cc.target_offset = FrozenReconstruction(frozen, cc)
    try:
        yield cc
    finally:
        cc.target_offset = previous
        frozen.train(was_training)


def _combined_config(ccs: Sequence[Crosscoder], rules: list[str]) -> CrosscoderConfig:
    """The config of the sum: the first's shape and settings, F = Σ F_i; relu if every part is, else jumprelu."""
    first = ccs[0].cfg
    if all(r == "relu" for r in rules):
        architecture, fields = "relu", ReLUOptions.__dataclass_fields__
    else:
        architecture, fields = "jumprelu", JumpReLUOptions.__dataclass_fields__
    same = first.architecture == architecture or rules[0] == architecture
    options = {k: v for k, v in first.options.items() if k in fields} if same else {}
    return CrosscoderConfig(
        list(first.hookpoints), first.d_model, sum(cc.cfg.n_features for cc in ccs), dec_init_norm=first.dec_init_norm,
        model_name=first.model_name, seed=first.seed, out_hookpoints=first.out_hookpoints, architecture=architecture,
        options=options, dead_after_tokens=first.dead_after_tokens, models=first.models, model_norm=first.model_norm,
        shared_sparsity_scale=first.shared_sparsity_scale,
    )


def _log_thresholds(cc: Crosscoder, rule: str) -> torch.Tensor:
    """(F,) log of the threshold on the pre-activation at which each latent of ``cc`` fires at inference."""
    if rule == "jumprelu":
        return cc.log_threshold_F.detach()
    if rule == "batchtopk":
        t_F = _thresholds_on_pre(float(cc.threshold), cc.feature_norms().detach())
    else:
        t_F = torch.zeros(cc.cfg.n_features, device=cc.device)
    return t_F.float().clamp(min=TINY, max=NEVER).log()


@torch.no_grad()
def combine_crosscoders(ccs: Sequence[Crosscoder], names: Sequence[str] | None = None) -> Crosscoder:
    """One crosscoder that encodes and decodes as the sum of ``ccs`` (same slots; :func:`check_combinable`).

    With part i's weights brought into the first part's normalised space (scales s and s_i: W_enc,i^l · s_i^l / s^l,
    W_dec,i^l and b_dec,i^l · s^l / s_i^l, identity when the scales agree, as a residual dictionary's do)::

        W_enc = [W_enc,1 | … | W_enc,n]   b_enc = [b_enc,1 | …]   W_dec = [W_dec,1; …; W_dec,n]   b_dec = Σ_i b_dec,i

    so ``encode`` is the parts' codes side by side and ``decode`` of it Σ_i decode_i, in eval mode (module docstring
    for the architecture and thresholds). Designated shared latents become ordinary latents (their decoders as
    assembled); dead-latent counters are concatenated; the lineage records the parts (``names``: where they came
    from) and their own lineages. The result is in eval mode on the first part's device.
    """
    check_combinable(ccs, names)
    rules = [inference_rule(cc) for cc in ccs]
    first = ccs[0]
    out = build_crosscoder(_combined_config(ccs, rules)).to(first.device)
    s_L = first.norm_scale_L
    W_enc, b_enc, W_dec, log_t, dead = [], [], [], [], []
    b_dec_LD = torch.zeros_like(out.b_dec_LD)
    for cc, rule in zip(ccs, rules):
        r_L = (cc.norm_scale_L / s_L).to(first.device)  # this part's scale relative to the combined one's
        r_in, r_out = r_L[out.in_idx], r_L[out.out_idx]
        W_enc.append(cc.W_enc_LDF.detach().to(first.device) * r_in[:, None, None])
        b_enc.append(cc.b_enc_F.detach().to(first.device))
        W_dec.append(cc.W_dec_FLD.detach().to(first.device) / r_out[None, :, None])
        b_dec_LD += cc.b_dec_LD.detach().to(first.device) / r_out[:, None]
        log_t.append(_log_thresholds(cc, rule).to(first.device))
        dead.append(cc.tokens_since_fired_F.to(first.device))
    out.W_enc_LDF.copy_(torch.cat(W_enc, dim=2))
    out.b_enc_F.copy_(torch.cat(b_enc))
    out.W_dec_FLD.copy_(torch.cat(W_dec, dim=0))
    out.b_dec_LD.copy_(b_dec_LD)
    out.norm_scale_L.copy_(s_L)
    out.tokens_since_fired_F.copy_(torch.cat(dead))
    if out.cfg.architecture == "jumprelu":
        out.log_threshold_F.copy_(torch.cat(log_t))
    parts = [{"source": None if names is None else str(names[i]), "architecture": cc.cfg.architecture,
              "n_features": cc.cfg.n_features, "lineage": list(cc.lineage)} for i, cc in enumerate(ccs)]
    out.lineage = [{"stage": "combine", "parent": None, "parts": parts}]
    return out.eval()
