"""Apply a trained crosscoder to a model: compatibility checks and streamed feature activations."""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from transformer_lens import HookedTransformer

from .crosscoder import Crosscoder
from .errors import FeatgraphError
from .harvest import check_hookpoints, harvest
from .model_loading import first_nonfinite_tensor

__all__ = ["check_compatible", "check_finite_features", "describe_crosscoder", "nonfinite_crosscoder_cause", "feature_activations",
           "stack_feature_activations", "FeatureChunk"]


class FeatureChunk(NamedTuple):
    f_nF: torch.Tensor        # (n, F) feature activations of n tokens (BOS dropped)
    token_index_n: torch.Tensor  # (n,) flat index row·T + pos into the token rows (CPU, int64)


def check_compatible(cc: Crosscoder, model: HookedTransformer, where: str = "the crosscoder") -> None:
    """Raise one clear line if ``cc`` cannot read ``model``'s activations (width or hookpoints)."""
    if cc.cfg.models:
        raise FeatgraphError(
            f"{where} reads the models {cc.cfg.models}, not one model; apply it with crosscoder.model_diff "
            f"(model_feature_activations, model_reconstruction_metrics) and pass every model"
        )
    if cc.cfg.d_model != model.cfg.d_model:
        raise FeatgraphError(
            f"{where} was trained on d_model={cc.cfg.d_model} (model {cc.cfg.model_name or '?'}) but this model has "
            f"d_model={model.cfg.d_model}; use the model it was trained on or train a new crosscoder"
        )
    check_hookpoints(model, cc.cfg.all_hookpoints)


def describe_crosscoder(cc: Crosscoder) -> str:
    """``the relu crosscoder of model 'gpt2' at blocks.0.hook_resid_post … blocks.3.hook_resid_post (4 hookpoints)``."""
    hps = cc.cfg.all_hookpoints
    at = hps[0] if len(hps) == 1 else f"{hps[0]} … {hps[-1]} ({len(hps)} hookpoints)"
    model = f" of model {cc.cfg.model_name!r}" if cc.cfg.model_name else ""
    return f"the {cc.cfg.architecture} crosscoder{model} at {at}"


def nonfinite_crosscoder_cause(cc: Crosscoder) -> str:
    """Why ``cc`` computes NaN/inf from finite input and what to do, for an error message (checks its weights)."""
    bad = first_nonfinite_tensor(cc, buffers=True)
    if bad is None:
        return "its weights are finite, so the values overflow; check its normalisation scales (norm_scale_L) or retrain it"
    name, n_bad, numel = bad
    return f"its {name} holds {n_bad} NaN/inf value{'s' if n_bad != 1 else ''} (of {numel}): it is corrupt or its training diverged; retrain it (lower lr)"


def check_finite_features(f_nF: torch.Tensor, cc: Crosscoder) -> None:
    """Raise one :class:`FeatgraphError` line when feature activations ``(n, F)`` of ``cc`` hold NaN or inf.

    One ``isfinite().all()`` on the device (one sync) per chunk; the tokens and the first bad feature are found only
    on failure. Called on features of activations that :func:`~crosscoder.harvest.harvest` found finite, so the
    crosscoder is the cause.
    """
    if bool(torch.isfinite(f_nF).all()):
        return
    bad_nF = ~torch.isfinite(f_nF)
    n_bad, feature = int(bad_nF.any(dim=1).sum()), int(bad_nF.any(dim=0).nonzero()[0, 0])
    raise FeatgraphError(
        f"{describe_crosscoder(cc)} gave NaN/inf feature activations on {n_bad} of {f_nF.shape[0]} tokens (first feature "
        f"{feature}) from finite model activations; {nonfinite_crosscoder_cause(cc)}"
    )


@torch.no_grad()
def feature_activations(
    cc: Crosscoder, model: HookedTransformer, tokens_NT: torch.Tensor, batch_size: int = 32
) -> Iterator[FeatureChunk]:
    """Stream feature activations over token rows, one model batch at a time (never the whole set at once)."""
    check_compatible(cc, model)
    T = tokens_NT.shape[1]
    positions_T = torch.arange(1, T)
    for b, acts_BLD in enumerate(harvest(model, tokens_NT, cc.cfg.all_hookpoints, batch_size, device=cc.device)):
        rows = torch.arange(b * batch_size, min((b + 1) * batch_size, tokens_NT.shape[0]))
        index_n = (rows[:, None] * T + positions_T[None, :]).reshape(-1)
        f_nF = cc.encode(acts_BLD)
        check_finite_features(f_nF, cc)
        yield FeatureChunk(f_nF, index_n)


@torch.no_grad()
def stack_feature_activations(
    ccs: list[Crosscoder], model: HookedTransformer, tokens_NT: torch.Tensor, batch_size: int = 32
) -> Iterator[FeatureChunk]:
    """Feature activations of several crosscoders (e.g. a stack of per-layer SAEs) on the same tokens, concatenated
    along the feature axis in the order given: ``(n, Σ F_k)``. One forward pass harvests every hookpoint needed."""
    for cc in ccs:
        check_compatible(cc, model)
    hookpoints = list(dict.fromkeys(h for cc in ccs for h in cc.cfg.all_hookpoints))
    where = [[hookpoints.index(h) for h in cc.cfg.all_hookpoints] for cc in ccs]
    T = tokens_NT.shape[1]
    positions_T = torch.arange(1, T)
    device = ccs[0].device
    for b, acts_BLD in enumerate(harvest(model, tokens_NT, hookpoints, batch_size, device=device)):
        rows = torch.arange(b * batch_size, min((b + 1) * batch_size, tokens_NT.shape[0]))
        index_n = (rows[:, None] * T + positions_T[None, :]).reshape(-1)
        parts = [cc.encode(acts_BLD[:, idx]) for cc, idx in zip(ccs, where)]
        f = torch.cat(parts, dim=1)
        if not bool(torch.isfinite(f).all()):  # one sync per batch; on failure, name the crosscoder
            for cc, f_nF in zip(ccs, parts):
                check_finite_features(f_nF, cc)
        yield FeatureChunk(f, index_n)
