"""The crosscoder contract: shared weights, normalisation and decoder; each architecture adds its encoder and loss.

An acausal crosscoder reads L hookpoints at once and writes all L back (Anthropic, "Sparse Crosscoders", 2024):

    pre = Σ_l W_enc^l a^l + b_enc        f = σ(pre) ∈ R^F        â^l = W_dec^l f + b_dec^l

σ and the loss are the architecture's (:mod:`crosscoder.relu`, :mod:`crosscoder.batchtopk`,
:mod:`crosscoder.jumprelu`). Activations are normalised per hookpoint (scale s_l such that mean ‖s_l a^l‖ =
√d_model) before encoding; the scales are stored with the weights, so ``encode``/``decode`` on raw activations just
work. A per-layer SAE is one hookpoint; a transcoder is the same code reading one hookpoint and trained to write
another. A model crosscoder (``cfg.models``) reads and writes several models at once: its L axis is models ×
hookpoints, model-major (slots ``base/blocks.1.hook_resid_post``, ...), so the same formulas hold with l running over
(model, hookpoint) pairs; :mod:`crosscoder.model_diff` compares the models' decoders. A causal layout
(``cfg.layout``, :mod:`crosscoder.layouts`: weakly or strictly causal crosscoders, cross-layer transcoders) restricts
each feature to reading one layer and writing that layer and/or later ones: the masked entries of W_enc and W_dec are
held at exactly zero (:meth:`Crosscoder.enforce_layout`).

An architecture is a subclass with a ``name``, a typed ``Options`` dataclass (its settings, kept in
``cfg.options``, available as ``self.opts``), ``encode`` and ``loss``, registered under its name in
:data:`~crosscoder.architectures.ARCHITECTURES`. The generic code calls its hooks: :meth:`Crosscoder.check_config`
(config checks that need more than the options), :meth:`Crosscoder.sync_distributed` (state to agree on across
ranks after each step) and the SAELens mapping (:attr:`Crosscoder.saelens_architecture`,
:meth:`Crosscoder.saelens_export`, :attr:`Crosscoder.saelens_imports`, :meth:`Crosscoder.from_saelens`, driven by
:mod:`crosscoder.saelens`). Saving and loading are :func:`crosscoder.io.save_crosscoder` /
:func:`~crosscoder.io.load_crosscoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import nn

from .config import CrosscoderConfig
from .errors import FeatgraphError
from .layouts import layout_masks

__all__ = ["Crosscoder", "LossOutput", "NoOptions", "SAELensSAE", "SAELensImport"]


class LossOutput(NamedTuple):
    loss: torch.Tensor          # () total
    mse: torch.Tensor           # () Σ_l ‖a^l − â^l‖², mean over the batch
    sparsity: torch.Tensor      # () the architecture's sparsity (or auxiliary) term, mean over the batch
    l0: torch.Tensor            # () mean number of active features per token
    f_BF: torch.Tensor          # (B, F) feature activations


@dataclass
class NoOptions:
    """Options of an architecture that has none."""


class SAELensSAE(NamedTuple):
    """A SAELens SAE being imported, as :meth:`Crosscoder.from_saelens` sees it."""

    architecture: str                 # SAELens's name for it (cfg.json ``architecture``)
    cfg: dict[str, Any]               # SAELens cfg.json
    metadata: dict[str, Any]          # its ``metadata`` ({} if none)
    featgraph: dict[str, Any]         # ``metadata.featgraph`` written by save_saelens ({} for any other SAE)
    weights: dict[str, torch.Tensor]  # float64 in featgraph's normalised space, b_dec folded out of the input:
    #                                   W_enc (D, F), b_enc (F,), W_dec (F, D), b_dec (D,) and the architecture's extras
    scale: float                      # the normalisation scale s it will get (1 unless featgraph wrote it)


class SAELensImport(NamedTuple):
    """What an architecture makes of a SAELens SAE (:meth:`Crosscoder.from_saelens`)."""

    options: dict[str, Any]            # its options read from the SAE (a recorded featgraph config overrides them)
    weights: dict[str, torch.Tensor]   # W_enc (D, F), b_enc (F,), W_dec (F, D), b_dec (D,), normalised space
    state: dict[str, torch.Tensor]     # its own parameters and buffers, by state_dict name


class Crosscoder(nn.Module):
    """Base of every architecture; weights named by their dimensions (L hookpoints, D, F)."""

    name: ClassVar[str] = ""
    """The architecture's registry name, as ``cfg.architecture`` spells it."""
    Options: ClassVar[type] = NoOptions
    """Dataclass of the architecture's own settings (``cfg.options`` holds its fields, ``self.opts`` an instance)."""
    saelens_architecture: ClassVar[str | None] = None
    """SAELens architecture it exports to (:func:`crosscoder.saelens.save_saelens`); None: no export."""
    saelens_imports: ClassVar[dict[str, dict[str, str]]] = {}
    """SAELens architectures it may hold → their tensors beyond W_enc, b_enc, W_dec, b_dec, as name → dimension
    letters (``{"jumprelu": {"threshold": "F"}}``); :meth:`from_saelens` decides for each SAE."""
    saelens_precedence: ClassVar[int] = 0
    """Among architectures that can hold the same SAELens SAE, the highest tries first."""
    sparse_kernels: str = "auto"
    """``auto``, ``on`` or ``off``: whether :meth:`loss` uses the architecture's sparse kernels
    (:mod:`crosscoder.sparse_ops`), if it has any; training sets it from :attr:`TrainConfig.sparse_kernels`."""
    target_offset: Callable[[torch.Tensor], torch.Tensor] | None = None
    """None, or a function of the normalised activations (B, L, D) whose result (B, L_out, D) :meth:`targets`
    subtracts: a residual dictionary learns what a frozen one leaves (:func:`crosscoder.residual.residual_of` sets it
    while training). Not a parameter, not saved."""

    def __init__(self, cfg: CrosscoderConfig):
        super().__init__()
        if cfg.architecture != self.name:
            raise FeatgraphError(f"this config is for a {cfg.architecture} crosscoder, not {self.name or type(self).__name__}; build it with build_crosscoder(cfg)")
        self.cfg = cfg
        self.opts = self.Options(**cfg.options)
        D, F, S = cfg.d_model, cfg.n_features, cfg.n_shared_latents
        everything, reads, writes = cfg.all_hookpoints, cfg.reads, cfg.writes
        L_in, L_out = len(reads), len(writes)
        gen = torch.Generator().manual_seed(cfg.seed)
        W_dec_FLD = torch.randn(F, L_out, D, generator=gen)
        W_dec_FLD = W_dec_FLD / W_dec_FLD.norm(dim=-1, keepdim=True) * cfg.dec_init_norm
        if S:  # designated shared latents: one decoder (S, H_out, D) serves every model's slots
            H_out = L_out // cfg.n_models
            self.W_dec_shared_SHD = nn.Parameter(W_dec_FLD[:S, :H_out].clone())
            self.W_dec_unshared_FLD = nn.Parameter(W_dec_FLD[S:].clone())
            W_dec_FLD = self.W_dec_FLD.detach()
        else:
            self.W_dec_FLD = nn.Parameter(W_dec_FLD)
        if writes == reads:  # crosscoder / SAE: the encoder starts as the decoder's transpose
            W_enc_LDF = W_dec_FLD.permute(1, 2, 0).clone()
        else:  # transcoder: same norms, independent directions
            W_enc_LDF = torch.randn(L_in, D, F, generator=gen)
            W_enc_LDF = W_enc_LDF / W_enc_LDF.norm(dim=1, keepdim=True) * cfg.dec_init_norm
        self.W_enc_LDF = nn.Parameter(W_enc_LDF)
        self.b_enc_F = nn.Parameter(torch.zeros(F))
        self.b_dec_LD = nn.Parameter(torch.zeros(L_out, D))
        # Per-hookpoint scale s_l (raw → normalised) over cfg.all_hookpoints; 1 until set from data.
        self.register_buffer("norm_scale_L", torch.ones(len(everything)))
        # Where the read and written hookpoints sit in cfg.all_hookpoints (derived from cfg, not saved).
        self.register_buffer("in_idx", torch.tensor([everything.index(h) for h in reads]), persistent=False)
        self.register_buffer("out_idx", torch.tensor([everything.index(h) for h in writes]), persistent=False)
        self.same_io = writes == reads
        # Factor on each latent's sparsity penalty: shared_sparsity_scale for the designated shared latents.
        scale_F = torch.ones(F)
        scale_F[:S] = cfg.shared_sparsity_scale
        self.register_buffer("penalty_scale_F", scale_F, persistent=False)
        # Stages this crosscoder went through, oldest first (saved in cfg.json), e.g. S then D.
        self.lineage: list[dict] = []
        # Training tokens since each latent last fired (dead-latent tracking).
        self.register_buffer("tokens_since_fired_F", torch.zeros(F, dtype=torch.long))
        self._init_layout()

    # ---- causal layouts (crosscoder.layouts) ----------------------------------------------------------------
    # A causal layout's masked weights are exactly zero: zeroed here, their gradients masked by tensor hooks (Adam
    # then leaves them at zero, as do gradient clipping and the all-reduce of zero gradients), and re-zeroed after
    # every load_state_dict. The masks are buffers derived from cfg, not saved.
    def _init_layout(self) -> None:
        masks = layout_masks(self.cfg)
        self.has_layout = masks is not None
        if masks is None:
            return
        self.register_buffer("layout_read_LF", masks.read_LF, persistent=False)
        self.register_buffer("layout_write_FL", masks.write_FL, persistent=False)
        self.register_buffer("layout_layer_F", masks.layer_F, persistent=False)
        self.enforce_layout()
        self._register_layout_hooks()
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.enforce_layout())

    def _register_layout_hooks(self) -> None:
        """Mask the gradients of W_enc_LDF and W_dec_FLD (again after a deepcopy, which drops tensor hooks)."""
        self.W_enc_LDF.register_hook(self._mask_enc_grad)
        self.W_dec_FLD.register_hook(self._mask_dec_grad)

    def _mask_enc_grad(self, grad_LDF: torch.Tensor) -> torch.Tensor:
        return grad_LDF * self.layout_read_LF[:, None, :].to(grad_LDF.dtype)

    def _mask_dec_grad(self, grad_FLD: torch.Tensor) -> torch.Tensor:
        return grad_FLD * self.layout_write_FL[:, :, None].to(grad_FLD.dtype)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if state.get("has_layout"):
            self._register_layout_hooks()

    @torch.no_grad()
    def enforce_layout(self) -> None:
        """Zero the weights the layout masks (encoder entries of unread hookpoints, decoder vectors at unwritten
        ones); a no-op for the acausal layout."""
        if not self.has_layout:
            return
        self.W_enc_LDF.masked_fill_(~self.layout_read_LF[:, None, :], 0.0)
        self.W_dec_FLD.masked_fill_(~self.layout_write_FL[:, :, None], 0.0)

    # The decoder W_dec_FLD (F, L_out, D). Usually one parameter; with designated shared latents it is assembled from
    # the shared decoder (repeated over the models, model-major) and the rest. Trap: with shared latents it is a fresh
    # tensor on every access, so writing into it changes nothing — write into W_dec_shared_SHD / W_dec_unshared_FLD.
    @property
    def W_dec_FLD(self) -> torch.Tensor:
        params = self._parameters
        if "W_dec_FLD" in params:
            return params["W_dec_FLD"]
        if "W_dec_shared_SHD" in params:
            shared_SLD = params["W_dec_shared_SHD"].repeat(1, self.cfg.n_models, 1)
            return torch.cat([shared_SLD, params["W_dec_unshared_FLD"]], dim=0)
        raise AttributeError("W_dec_FLD")

    @property
    def device(self) -> torch.device:
        return self.W_dec_FLD.device

    # ---- normalisation -------------------------------------------------------------------------
    # Activations x_BLD come at cfg.all_hookpoints (for a crosscoder or SAE: just cfg.hookpoints).
    def normalise(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return x_BLD * self.norm_scale_L[:, None].to(x_BLD.dtype)

    def denormalise(self, x_hat_BLD: torch.Tensor) -> torch.Tensor:
        """Reconstruction at the written hookpoints back to raw scale."""
        return x_hat_BLD / self.norm_scale_L[self.out_idx][:, None].to(x_hat_BLD.dtype)

    def targets(self, x_BLD: torch.Tensor) -> torch.Tensor:
        """The activations the decoder should reproduce: those at the written hookpoints, (B, L_out, D), less
        :attr:`target_offset` of them when one is set."""
        y_BLD = x_BLD if self.same_io else x_BLD[:, self.out_idx]
        return y_BLD if self.target_offset is None else y_BLD - self.target_offset(x_BLD)

    # ---- the model -----------------------------------------------------------------------------
    def pre_activations(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Σ_l W_enc^l a^l + b_enc over the read hookpoints, (B, F)."""
        if not normalised:
            x_BLD = self.normalise(x_BLD)
        x_in_BLD = x_BLD if self.same_io else x_BLD[:, self.in_idx]
        return torch.einsum("bld,ldf->bf", x_in_BLD, self.W_enc_LDF) + self.b_enc_F

    def encode(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Feature activations (B, F) of activations (B, L, D); raw unless ``normalised``."""
        raise NotImplementedError

    def decode(self, f_BF: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Reconstruction (B, L, D) of feature activations (B, F); raw unless ``normalised``."""
        x_hat_BLD = torch.einsum("bf,fld->bld", f_BF, self.W_dec_FLD) + self.b_dec_LD
        return x_hat_BLD if normalised else self.denormalise(x_hat_BLD)

    def forward(self, x_BLD: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Reconstruction at the written hookpoints, (B, L_out, D)."""
        return self.decode(self.encode(x_BLD, normalised), normalised)

    def decoder_norms(self) -> torch.Tensor:
        """‖W_dec,i^l‖ as (F, L_out): each feature's layer profile."""
        return self.W_dec_FLD.norm(dim=-1)

    def model_decoder_norms(self, hookpoint_norm: str = "l1_of_norms") -> torch.Tensor:
        """n_i^m as (F, M): each model's decoder norm over its written hookpoints, Σ_h ‖W_dec,i^{m,h}‖
        (``l1_of_norms``) or ‖concat_h W_dec,i^{m,h}‖ (``l2_of_norms``); M = 1 without ``cfg.models``."""
        W_FMHD = self.W_dec_FLD.unflatten(1, (self.cfg.n_models, -1))
        if hookpoint_norm == "l2_of_norms":
            return W_FMHD.flatten(2).norm(dim=2)
        return W_FMHD.norm(dim=-1).sum(dim=2)

    def feature_norms(self, hookpoint_norm: str = "l1_of_norms") -> torch.Tensor:
        """(F,) the decoder norm that weighs each feature in the sparsity penalty and the BatchTopK score: the
        per-model norms combined by ``cfg.model_norm`` (Σ_m n_i^m or √Σ_m (n_i^m)²); for one model, Σ_l ‖W_dec,i^l‖
        (``l1_of_norms``) or the norm of the concatenated decoder (``l2_of_norms``)."""
        if not self.cfg.models:  # one model: exactly the single-model expressions
            if hookpoint_norm == "l2_of_norms":
                return self.W_dec_FLD.flatten(1).norm(dim=1)
            return self.decoder_norms().sum(dim=1)
        n_FM = self.model_decoder_norms(hookpoint_norm)
        return n_FM.norm(dim=1) if self.cfg.model_norm == "concat" else n_FM.sum(dim=1)

    def loss(self, x_BLD: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        """Training loss on *normalised* activations (B, L, D) at the scheduled sparsity coefficient λ."""
        raise NotImplementedError

    def mse(self, x_BLD: torch.Tensor, x_hat_BLD: torch.Tensor) -> torch.Tensor:
        """Σ_l ‖a^l − â^l‖² over the written hookpoints, mean over the batch."""
        return (x_hat_BLD - self.targets(x_BLD)).pow(2).sum(dim=(1, 2)).mean()

    @torch.no_grad()
    def update_dead(self, fired_F: torch.Tensor, n_tokens: int) -> None:
        """Advance the tokens-since-fired counters by a training batch of ``n_tokens`` in which ``fired_F`` fired."""
        self.tokens_since_fired_F += n_tokens
        self.tokens_since_fired_F[fired_F] = 0

    def dead_mask(self) -> torch.Tensor:
        """(F,) latents silent for more than ``cfg.dead_after_tokens`` training tokens."""
        return self.tokens_since_fired_F > self.cfg.dead_after_tokens

    # ---- hooks the generic code calls -------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: CrosscoderConfig) -> None:
        """Reject a config this architecture cannot build (checks that need more than the options, e.g. k ≤ F)."""

    def sync_distributed(self) -> None:
        """Make the architecture's own state agree across ranks; called by training after every gradient all-reduce
        when torch.distributed runs more than one process. Parameters need nothing: their gradients are averaged."""

    def saelens_export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Its SAELens tensors beyond W_enc, b_enc, W_dec, b_dec (they act on the pre-activation, which the export
        leaves unchanged) and extra entries for ``metadata.featgraph``; a FeatgraphError if it cannot be exported."""
        return {}, {}

    @classmethod
    def from_saelens(cls, sae: SAELensSAE) -> SAELensImport | None:
        """This architecture's exact form of ``sae`` (one of :attr:`saelens_imports`), or None if it has none."""
        return None
