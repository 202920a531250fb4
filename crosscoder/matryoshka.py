"""Matryoshka crosscoders: nested prefixes of the dictionary, each trained to reconstruct on its own.

The dictionary's first m_1 < m_2 < … < m_J = F latents form nested prefixes (m_j = round(p_j·F) for the fractions
``prefixes`` p_j). Prefix j reconstructs with its latents only, sharing the decoder bias:

    â_j = Σ_{i < m_j} f_i W_dec,i + b_dec
    loss = Σ_j ‖a − â_j‖² + (the base architecture's sparsity or auxiliary term, once)

The prefix losses are summed, not averaged, as Bussmann et al. 2025 ("Learning Multi-Level Features with Matryoshka
Sparse Autoencoders", BatchTopK) and SAELens's ``matryoshka_batchtopk`` do; Nabeshima 2024 ("Matryoshka Sparse
Autoencoders", ReLU + L1) introduced the nested losses. The codes f are the base architecture's, computed once over
all F latents (the batch top-k chooses among all of them); only the reconstruction is nested. Small prefixes must
then reconstruct without the later latents, so a general feature (a parent that fires whenever any of its children
fires) keeps its own latent early instead of being absorbed into its children's latents
(:mod:`crosscoder.absorption` measures it).

Two architectures: ``matryoshka_relu`` (:class:`~crosscoder.relu.ReLUCrosscoder`'s encoder and L1-of-norms penalty)
and ``matryoshka_batchtopk`` (:class:`~crosscoder.batchtopk.BatchTopKCrosscoder`'s batch top-k, AuxK and learned
inference threshold, sparse kernels included: the inner prefixes decode through the kept entries with feature < m_j).
Encoding, inference, saving and the SAELens forms are the base's: a matryoshka crosscoder is used exactly like its
base (a one-hookpoint ``matryoshka_batchtopk`` exports as SAELens ``jumprelu``, as SAELens saves its own Matryoshka
BatchTopK SAEs), and it works for every shape (crosscoder, SAE, transcoder, model crosscoder). :func:`truncate` gives
a prefix as a plain crosscoder of the base architecture; :func:`prefix_metrics` evaluates every prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .batchtopk import BatchTopKCrosscoder, BatchTopKOptions
from .build import build_crosscoder
from .config import CrosscoderConfig
from .crosscoder import Crosscoder, LossOutput, SAELensImport, SAELensSAE
from .errors import FeatgraphError
from .metrics import evaluate
from .model_diff import model_reconstruction_metrics
from .relu import ReLUCrosscoder, ReLUOptions
from .sparse_ops import SparseCode, sparse_decode

__all__ = ["DEFAULT_PREFIXES", "MatryoshkaReLUCrosscoder", "MatryoshkaBatchTopKCrosscoder", "MatryoshkaReLUOptions",
           "MatryoshkaBatchTopKOptions", "prefix_sizes", "truncate", "prefix_metrics"]

DEFAULT_PREFIXES = (1 / 16, 1 / 4, 1.0)
"""Default nested sizes as fractions of F: each prefix 4× the previous one, a geometric ladder as in Bussmann et al."""


def _check_prefixes(prefixes: Any) -> list[float]:
    """``prefixes`` as a list of floats, or one FeatgraphError line saying what is allowed."""
    ok = isinstance(prefixes, (list, tuple)) and len(prefixes) > 0 and all(
        isinstance(p, (int, float)) and not isinstance(p, bool) for p in prefixes)
    values = [float(p) for p in prefixes] if ok else []
    if not ok or not all(0 < p <= 1 for p in values) or any(b <= a for a, b in zip(values, values[1:])) or values[-1] != 1.0:
        raise FeatgraphError(f"prefixes must be increasing fractions of n_features in (0, 1] ending with 1, got {prefixes!r}; "
                             "e.g. 0.0625,0.25,1")
    return values


def prefix_sizes(prefixes: list[float], n_features: int) -> list[int]:
    """m_j = round(p_j·F), at least 1; one FeatgraphError line unless they strictly increase.

    >>> prefix_sizes([1 / 16, 1 / 4, 1.0], 64)
    [4, 16, 64]
    """
    sizes = [max(1, round(p * n_features)) for p in prefixes]
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise FeatgraphError(f"prefixes {list(prefixes)} give prefix sizes {sizes} of n_features={n_features}, which repeat; "
                             "use fewer or wider-spaced prefixes, or more features")
    return sizes


@dataclass
class MatryoshkaReLUOptions(ReLUOptions):
    """Options of the Matryoshka ReLU crosscoder: the ReLU options plus the nested prefixes."""

    prefixes: list[float] = field(default_factory=lambda: list(DEFAULT_PREFIXES))
    """Matryoshka: nested prefix sizes as increasing fractions of n_features, the last 1 (each reconstructs on its own)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prefixes = _check_prefixes(self.prefixes)


@dataclass
class MatryoshkaBatchTopKOptions(BatchTopKOptions):
    """Options of the Matryoshka BatchTopK crosscoder: the BatchTopK options plus the nested prefixes."""

    prefixes: list[float] = field(default_factory=lambda: list(DEFAULT_PREFIXES))
    """Matryoshka: nested prefix sizes as increasing fractions of n_features, the last 1 (each reconstructs on its own)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prefixes = _check_prefixes(self.prefixes)


class _Matryoshka:
    """The nested-prefix loss, mixed in before a base architecture (which supplies encode, loss and the rest)."""

    cfg: CrosscoderConfig
    opts: Any
    base: type[Crosscoder]  # the architecture whose encoder, sparsity term and SAELens form it keeps

    @property
    def prefix_sizes(self) -> list[int]:
        """m_1 < … < m_J = F."""
        return prefix_sizes(self.opts.prefixes, self.cfg.n_features)

    @classmethod
    def check_config(cls, cfg: CrosscoderConfig) -> None:
        super().check_config(cfg)  # type: ignore[misc]
        prefix_sizes(cfg.options["prefixes"], cfg.n_features)

    def _cumulative_decodes(self, f_BF: torch.Tensor, sizes: list[int]) -> Iterator[torch.Tensor]:
        """â_j (B, L_out, D), normalised, for the prefixes of ``sizes``, each adding its new latents to the last."""
        x_hat_BLD, start = self.b_dec_LD.expand(f_BF.shape[0], *self.b_dec_LD.shape), 0
        for m in sizes:
            x_hat_BLD = x_hat_BLD + torch.einsum("bf,fld->bld", f_BF[:, start:m], self.W_dec_FLD[start:m])
            start = m
            yield x_hat_BLD

    def prefix_reconstructions(self, f_BF: torch.Tensor, normalised: bool = False) -> list[torch.Tensor]:
        """â_j (B, L_out, D) of codes (B, F) for every prefix j, the last equal to :meth:`decode`; raw unless
        ``normalised``. Cumulative: one decode's cost in all."""
        outs = list(self._cumulative_decodes(f_BF, self.prefix_sizes))
        return outs if normalised else [self.denormalise(x) for x in outs]

    def _inner_mse(self, x_BLD: torch.Tensor, f_BF: torch.Tensor, sparse: bool) -> torch.Tensor:
        """Σ_{j < J} ‖a − â_j‖² over the inner prefixes (the base's loss already holds the full one)."""
        inner = self.prefix_sizes[:-1]
        total = x_BLD.new_zeros(())
        if not inner:
            return total
        if sparse:  # decode through the kept entries with feature < m_j, never the dense (B, m_j) block
            code, W_dec_FO = SparseCode.from_dense(f_BF), self.W_dec_FLD.flatten(1)
            for m in inner:
                keep_N = code.feat_N < m
                part = SparseCode(code.row_N[keep_N], code.feat_N[keep_N], code.val_N[keep_N], code.n_rows, code.n_features)
                x_hat_BLD = sparse_decode(part, W_dec_FO).view(f_BF.shape[0], *self.b_dec_LD.shape) + self.b_dec_LD
                total = total + self.mse(x_BLD, x_hat_BLD)
            return total
        for x_hat_BLD in self._cumulative_decodes(f_BF, inner):
            total = total + self.mse(x_BLD, x_hat_BLD)
        return total

    def loss(self, x_BLD: torch.Tensor, sparsity_coeff: float) -> LossOutput:
        """The base's loss (its codes, full reconstruction and sparsity term) plus the inner prefixes' squared errors;
        ``mse`` stays the full dictionary's."""
        out = super().loss(x_BLD, sparsity_coeff)  # type: ignore[misc]
        sparse = isinstance(self, BatchTopKCrosscoder) and self.uses_sparse_kernels(x_BLD.shape[0])
        return out._replace(loss=out.loss + self._inner_mse(x_BLD, out.f_BF, sparse))

    def truncated(self, m: int) -> Crosscoder:
        """:func:`truncate`: the first ``m`` latents as a plain crosscoder of the base architecture."""
        return truncate(self, m)  # type: ignore[arg-type]

    def prefix_metrics(self, model: Any, tokens_NT: torch.Tensor, **kwargs: Any) -> list[dict[str, Any]]:
        """:func:`prefix_metrics` of this crosscoder (so that generic code needs no import of this module)."""
        return prefix_metrics(self, model, tokens_NT, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_saelens(cls, sae: SAELensSAE) -> SAELensImport | None:
        """Only a SAE that featgraph wrote from this architecture (``metadata.featgraph``); its prefixes come back
        from the recorded config. Any other SAE is left to the base architectures."""
        if sae.featgraph.get("architecture") != cls.name:
            return None
        return super().from_saelens(sae)  # type: ignore[misc]


class MatryoshkaReLUCrosscoder(_Matryoshka, ReLUCrosscoder):
    """ReLU + L1-of-norms penalty with nested prefix losses (Nabeshima 2024)."""

    name = "matryoshka_relu"
    Options = MatryoshkaReLUOptions
    base = ReLUCrosscoder
    saelens_precedence = 1  # asked before relu, which would take any SAELens standard SAE
    opts: MatryoshkaReLUOptions


class MatryoshkaBatchTopKCrosscoder(_Matryoshka, BatchTopKCrosscoder):
    """BatchTopK + AuxK with nested prefix losses (Bussmann et al. 2025)."""

    name = "matryoshka_batchtopk"
    Options = MatryoshkaBatchTopKOptions
    base = BatchTopKCrosscoder
    saelens_precedence = 2  # asked before batchtopk, which would take a featgraph-written jumprelu SAE of this
    opts: MatryoshkaBatchTopKOptions


def _base_of(cc: Crosscoder) -> type[Crosscoder]:
    base = getattr(cc, "base", None)
    if base is None:
        raise FeatgraphError(f"{cc.cfg.architecture} is not a Matryoshka architecture; truncate takes a matryoshka_relu or matryoshka_batchtopk crosscoder")
    return base


@torch.no_grad()
def truncate(cc: Crosscoder, m: int) -> Crosscoder:
    """The first ``m`` latents of a Matryoshka crosscoder as a plain crosscoder of its base architecture (relu or
    batchtopk), in eval mode: the same codes for those latents, the later ones switched off.

    In eval mode the codes are exactly the full crosscoder's first m (ReLU, and BatchTopK's per-latent threshold
    rule, θ kept); a batchtopk truncation's k is min(k, m), which only its training mode would use. Designated shared
    latents beyond m − 1 become ordinary latents with the same (repeated) decoder.
    """
    base = _base_of(cc)
    cfg = cc.cfg
    if not 1 <= m <= cfg.n_features:
        raise FeatgraphError(f"a prefix has 1..{cfg.n_features} latents, got m={m}")
    options = {k: v for k, v in cfg.options.items() if k != "prefixes"}
    if "k" in options:
        options["k"] = min(options["k"], m)
    S = min(cfg.n_shared_latents, m - 1)
    small_cfg = CrosscoderConfig(**{**cfg.to_dict(), "architecture": base.name, "options": options, "n_features": m, "n_shared_latents": S})
    small = build_crosscoder(small_cfg).to(cc.device)
    state = {
        "W_enc_LDF": cc.W_enc_LDF[..., :m], "b_enc_F": cc.b_enc_F[:m], "b_dec_LD": cc.b_dec_LD,
        "norm_scale_L": cc.norm_scale_L, "tokens_since_fired_F": cc.tokens_since_fired_F[:m],
    }
    if S:
        state.update(W_dec_shared_SHD=cc.W_dec_shared_SHD[:S], W_dec_unshared_FLD=cc.W_dec_FLD[S:m])
    else:
        state["W_dec_FLD"] = cc.W_dec_FLD[:m]
    if hasattr(cc, "threshold"):
        state["threshold"] = cc.threshold
    missing = set(small.state_dict()) - set(state)
    if missing:  # a base architecture with state this function does not know how to slice
        raise FeatgraphError(f"truncate does not know how to slice {sorted(missing)} of {base.name}; extend crosscoder.matryoshka.truncate")
    small.load_state_dict({k: v.clone() for k, v in state.items()})
    small.lineage = [*cc.lineage, {"stage": "matryoshka_prefix", "n_features": m, "of": cfg.n_features}]
    return small.eval()


def prefix_metrics(cc: Crosscoder, model: Any, tokens_NT: torch.Tensor, splice: bool = True,
                   splice_convention: str = "saelens", batch_size: int = 32, full: Any = None) -> list[dict[str, Any]]:
    """Metrics of every prefix of a Matryoshka crosscoder, smallest first: one dict per prefix with ``n_features``
    (m_j), ``fraction`` (p_j) and every field of :class:`~crosscoder.metrics.CrosscoderMetrics` (FVU per hookpoint
    and pooled, L0, dead fraction, CE loss recovered and KL when ``splice``...) of :func:`truncate` (cc, m_j) on
    ``tokens_NT``. A model crosscoder (``cfg.models``; ``model`` then maps each name to its model) gets the
    reconstruction metrics only, as :func:`crosscoder.fitting.fit` gives it. ``full``: the whole crosscoder's
    metrics on the same tokens, if already computed, used for the last prefix instead of evaluating it again."""
    _base_of(cc)
    out = []
    for frac, m in zip(cc.opts.prefixes, cc.prefix_sizes):
        if m == cc.cfg.n_features and full is not None:
            out.append({"n_features": m, "fraction": frac, **_fields(full)})
            continue
        small = truncate(cc, m)
        if cc.cfg.models:
            metrics = model_reconstruction_metrics(small, model, tokens_NT, batch_size=batch_size)
        else:
            metrics = evaluate(small, model, tokens_NT, batch_size=batch_size, splice=splice, splice_convention=splice_convention)
        out.append({"n_features": m, "fraction": frac, **_fields(metrics)})
    return out


def _fields(metrics: Any) -> dict[str, Any]:
    """A metrics record as a dict, without a ``prefixes`` field of its own (if the record type has one)."""
    return {k: v for k, v in metrics.to_dict().items() if k != "prefixes"}
