"""Causal layouts: which hookpoints each feature reads and writes (orthogonal to the sparsity architecture).

An acausal crosscoder's features read and write every hookpoint. A causal layout assigns each feature to one layer
and restricts its encoder and decoder (Anthropic, "Sparse Crosscoders", 2024, causal variants; Anthropic, "Circuit
Tracing", 2025, for the cross-layer transcoder), with L hookpoints l = 0..L−1 in ``cfg.hookpoints`` order:

``weakly_causal``    a feature of layer l reads hookpoint l and writes hookpoints l, l+1, …, L−1.
``strictly_causal``  a feature of layer l reads hookpoint l and writes hookpoints l+1, …, L−1 only; layer L−1 would
                     write nothing, so only layers 0..L−2 own features.
``clt``              cross-layer transcoder: ``hookpoints`` are the L reads (the residual stream before block l's MLP,
                     e.g. ``blocks.l.hook_resid_mid`` or ``blocks.l.ln2.hook_normalized``) and ``out_hookpoints`` the
                     L writes (``blocks.l.hook_mlp_out``); a feature of layer l reads read l and writes the MLP
                     outputs l, l+1, …, L−1 (circuit-tracer's convention).

Features go to the owning layers in equal contiguous blocks: with n owning layers, feature i belongs to owning layer
i // (F / n), so F must be divisible by n. The masks are exact: :class:`~crosscoder.crosscoder.Crosscoder` zeroes the
masked weights at init and masks their gradients, so a feature's code never depends on a hookpoint it does not read
and its decoder vector is exactly zero at a hookpoint it does not write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .errors import FeatgraphError

if TYPE_CHECKING:  # torch loads with the crosscoder, not with the config (the CLI parses flags first)
    import torch

    from .config import CrosscoderConfig

__all__ = ["LAYOUTS", "LAYOUT_SHORTHANDS", "LayoutMasks", "check_layout", "feature_layers", "layout_masks", "owning_layers"]

LAYOUTS = ("acausal", "weakly_causal", "strictly_causal", "clt")
"""The layouts ``CrosscoderConfig.layout`` takes."""
LAYOUT_SHORTHANDS = {"clt": "batchtopk", "weakly_causal": "batchtopk", "strictly_causal": "batchtopk"}
"""``architecture`` names that set the layout of that name and mean this sparsity architecture
(``--architecture clt`` = ``--layout clt --architecture batchtopk``)."""


class LayoutMasks(NamedTuple):
    read_LF: torch.Tensor   # (L_in, F) bool: feature i reads hookpoint l
    write_FL: torch.Tensor  # (F, L_out) bool: feature i writes hookpoint l
    layer_F: torch.Tensor   # (F,) long: the layer that owns feature i


def owning_layers(layout: str, n_layers: int) -> list[int]:
    """Layers that own features: every one, except the last for ``strictly_causal`` (it would write nothing)."""
    return list(range(n_layers - 1)) if layout == "strictly_causal" else list(range(n_layers))


def check_layout(cfg: "CrosscoderConfig") -> None:
    """One FeatgraphError line for a config whose layout cannot be built."""
    layout = cfg.layout
    if layout not in LAYOUTS:
        raise FeatgraphError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "acausal":
        return
    if cfg.architecture.startswith("matryoshka_"):  # its nested prefixes are not the layers' equal blocks
        raise FeatgraphError(f"layout {layout} does not combine with {cfg.architecture}; use relu, batchtopk or jumprelu (or layout acausal)")
    if cfg.models:
        raise FeatgraphError(f"layout {layout} reads one model's layers; drop models (or use layout acausal for a model crosscoder)")
    L = len(cfg.hookpoints)
    if layout == "clt":
        if cfg.out_hookpoints is None or len(cfg.out_hookpoints) != L:
            raise FeatgraphError(f"layout clt needs out_hookpoints, one MLP output per read hookpoint ({L} read, "
                                 f"{0 if cfg.out_hookpoints is None else len(cfg.out_hookpoints)} written); e.g. hookpoints "
                                 "blocks.N.ln2.hook_normalized and out_hookpoints blocks.N.hook_mlp_out for each layer N")
    elif cfg.out_hookpoints is not None and cfg.out_hookpoints != cfg.hookpoints:
        raise FeatgraphError(f"layout {layout} reads and writes the same hookpoints; drop out_hookpoints (or use layout clt)")
    n_owners = len(owning_layers(layout, L))
    if n_owners < 1:
        raise FeatgraphError(f"layout {layout} needs at least two hookpoints (the last layer's features would write nothing), got {L}")
    if cfg.n_features % n_owners:
        raise FeatgraphError(f"layout {layout} splits the features equally over {n_owners} layers: n_features "
                             f"({cfg.n_features}) must be divisible by {n_owners}")


def feature_layers(layout: str, n_layers: int, n_features: int) -> torch.Tensor:
    """(F,) the layer owning each feature: equal contiguous blocks over :func:`owning_layers`."""
    import torch

    owners = owning_layers(layout, n_layers)
    per = n_features // len(owners)
    return torch.tensor(owners, dtype=torch.long).repeat_interleave(per)


def layout_masks(cfg: "CrosscoderConfig") -> LayoutMasks | None:
    """The read and write masks of ``cfg.layout`` (None for ``acausal``: nothing is masked)."""
    import torch

    if cfg.layout == "acausal":
        return None
    L = len(cfg.hookpoints)
    layer_F = feature_layers(cfg.layout, L, cfg.n_features)
    l_L = torch.arange(L)
    read_LF = l_L[:, None] == layer_F[None, :]
    write_FL = l_L[None, :] > layer_F[:, None] if cfg.layout == "strictly_causal" else l_L[None, :] >= layer_F[:, None]
    return LayoutMasks(read_LF, write_FL, layer_F)
