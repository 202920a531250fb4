"""Attention interactions of crosscoder features: which feature pairs drive attention (QK), and what a key-side
feature writes through a head (OV), data-free and weighted by data.

Following the compact-proofs treatment of attention in Manning-Coe, Read, Soligo, Clive-Griffin, Yip, Agrawal and Gross,
"Interactions between crosscoder features: a compact proofs perspective" (arXiv 2606.09940; chainik1125/crosscoders-feature-interactions,
``attention_analysis.py``). The *site* is the attention input of layer N, ``blocks.N.ln1.hook_normalized``, read
from a crosscoder that writes that hookpoint.

Conventions (all stated once here, used everywhere below):

* d_i ∈ R^D is feature i's raw-space decoder vector at the site: ``W_dec_FLD[i, l] / norm_scale_L[out_idx[l]]``
  with l the site's position in ``cfg.writes``.
* ``ln1.hook_normalized`` is taken *before* ln1's elementwise weight w (TransformerLens applies ``x·w + b`` after
  the hook; with ``fold_ln`` there is no w). The weight is folded into the head matrices:
  W_Q^h ← diag(w) W_Q^h, likewise W_K^h, W_V^h. Additive constants (ln1's b, b_Q, b_K, b_V, b_O) are no part of a
  feature *pair* term and are left out, as in the reference.
* Head matrices are TransformerLens's: W_Q^h, W_K^h, W_V^h (D, d_head) and W_O^h (d_head, D), multiplying on the
  right; scores are divided by the block's ``attn_scale`` (√d_head by default). Grouped-query models repeat W_K, W_V
  per query head. Rotary or ALiBi position terms are not in the data-free score (a warning is logged).
* Features are harvested with BOS dropped (:func:`crosscoder.harvest.harvest`); positions below are the non-BOS
  positions 1..T−1 of each row.

Formulas:

* data-free QK, query-side i, key-side j:  S^h[i, j] = (d_i W_Q^h) · (d_j W_K^h) / attn_scale.
* data-weighted QK:  QK^h(i, j) = Σ_n Σ_{q ≥ k} f_i(n, q) f_j(n, k) · S^h[i, j] = C[i, j] · S^h[i, j], with
  C = Σ_n F_nᵀ (M F_n) and M the causal (lower-triangular) mask, strictly lower when the diagonal k = q is excluded.
* per-token QK total at query position q of row n:  Σ_h Σ_{k ≤ q} Σ_{i,j} |f_i(n,q)| |f_j(n,k)| |S^h[i, j]|.
* OV write of key-side feature j through head h:  o_j^h = d_j W_V^h W_O^h ∈ R^D, its norm ‖o_j^h‖.
* OV interaction with feature i read at a later hookpoint r:  OV^h(j → i) = o_j^h · e_i, where
  e_i = s_r · W_enc_LDF[r, :, i] is i's raw-space encoder direction (s_r the crosscoder's norm scale at r): the
  direct-path change of i's pre-activation per unit of f_j written at the key position.
* attention mass of key-side feature j:  m^h_j = Σ_n Σ_k (Σ_q A^h_n[q, k]) f_j(n, k), A the model's pattern
  (``blocks.N.attn.hook_pattern``); data-weighted OV = m^h_j · OV^h(j → i), data-weighted write = m^h_j ‖o_j^h‖.

Memory: the data-free (H, F, F) tensor and the data-weighted accumulators are dense. :func:`qk_top_pairs_data_free`
streams row blocks and keeps only the top pairs, for any F. :func:`qk_interactions` keeps C (F', F') dense over at
most ``max_features`` features; when the crosscoder has more, a first pass over the tokens picks the ``max_features``
features with the largest activation mass Σ_n,q |f_i| and everything is reported over those (``features_F``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from transformer_lens import HookedTransformer

from crosscoder.model_loading import require_hooked
from crosscoder.apply import check_compatible
from crosscoder.crosscoder import Crosscoder
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import harvest

__all__ = [
    "AttentionSite",
    "HeadTopPairs",
    "OVResult",
    "QKResult",
    "TopPairs",
    "attention_site",
    "causal_pair_counts",
    "ov_attention_mass",
    "ov_data_weighted",
    "ov_interactions",
    "ov_write_norms",
    "qk_interactions",
    "qk_scores_data_free",
    "qk_top_pairs_data_free",
    "top_pairs",
]

log = logging.getLogger(__name__)

_SITE = "blocks.{}.ln1.hook_normalized"
_SITE_RE = re.compile(r"^blocks\.(\d+)\.ln1\.hook_normalized$")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
# Order of hookpoints inside a block; those ranked ≥ 3 come after the block's attention has written.
_IN_BLOCK_RANK = {"hook_resid_pre": 0, "ln1": 1, "attn": 2, "hook_attn_out": 3, "hook_resid_mid": 4, "ln2": 5,
                  "mlp": 6, "hook_mlp_out": 7, "hook_resid_post": 8}


# ---- results -------------------------------------------------------------------------------------
class AttentionSite(NamedTuple):
    """One attention layer seen through a crosscoder: its features' decoder vectors and the (folded) head weights."""

    layer: int
    hookpoint: str            # blocks.{layer}.ln1.hook_normalized
    d_FD: torch.Tensor        # (F, D) raw-space decoder vectors at the site
    W_Q_HDd: torch.Tensor     # (H, D, d_head) diag(ln1.w) W_Q
    W_K_HDd: torch.Tensor     # (H, D, d_head) diag(ln1.w) W_K
    W_V_HDd: torch.Tensor     # (H, D, d_head) diag(ln1.w) W_V
    W_O_HdD: torch.Tensor     # (H, d_head, D)
    attn_scale: float         # scores are q·k / attn_scale

    @property
    def n_heads(self) -> int:
        return self.W_Q_HDd.shape[0]

    @property
    def n_features(self) -> int:
        return self.d_FD.shape[0]


class TopPairs(NamedTuple):
    """The K pairs of largest |score|, largest first; indices are crosscoder feature ids."""

    query_K: torch.Tensor     # (K,) long: query-side (row) feature i
    key_K: torch.Tensor       # (K,) long: key-side (column) feature j
    score_K: torch.Tensor     # (K,) the signed score at (i, j)


class HeadTopPairs(NamedTuple):
    """Per head, the K pairs of largest |score|, largest first; indices are crosscoder feature ids."""

    heads_H: torch.Tensor     # (H,) long: model head index of each row
    query_HK: torch.Tensor    # (H, K) long
    key_HK: torch.Tensor      # (H, K) long
    score_HK: torch.Tensor    # (H, K) signed


class QKResult(NamedTuple):
    """Data-weighted QK interactions over the features ``features_F`` (local index a ↔ feature features_F[a])."""

    features_F: torch.Tensor  # (F',) long: crosscoder ids of the features analysed, ascending
    heads_H: torch.Tensor     # (H,) long: model head index of each row of the per-head tensors
    S_HFF: torch.Tensor       # (H, F', F') data-free score S^h[i, j] (query i, key j)
    C_FF: torch.Tensor        # (F', F') Σ_n Σ_{q≥k} f_i(q) f_j(k)
    QK_HFF: torch.Tensor      # (H, F', F') C ⊙ S^h
    abs_FF: torch.Tensor      # (F', F') Σ_h |QK^h|
    top: TopPairs             # top pairs of abs_FF (crosscoder ids)
    top_per_head: HeadTopPairs  # top pairs of each QK^h by |·| (crosscoder ids)
    token_total_NT: torch.Tensor  # (N, T) per query token Σ_h Σ_{k≤q} Σ_ij |f_i(q) f_j(k) S^h[i,j]|; 0 at BOS

    def abs_full(self, n_features: int) -> torch.Tensor:
        """abs_FF scattered into an (n_features, n_features) matrix over crosscoder ids (rows = query)."""
        out = torch.zeros(n_features, n_features, dtype=self.abs_FF.dtype, device=self.abs_FF.device)
        idx = self.features_F.to(out.device)
        out[idx[:, None], idx[None, :]] = self.abs_FF
        return out


class OVResult(NamedTuple):
    """OV writes and interactions of the key-side features, data-free and attention-weighted."""

    heads_H: torch.Tensor         # (H,) long: model head index of each row
    out_features_G: torch.Tensor  # (G,) long: ids of the downstream features (columns of OV_HFG)
    mass_HF: torch.Tensor         # (H, F) attention mass m^h_j = Σ_n Σ_k (Σ_q A^h[q, k]) f_j(k)
    write_norm_HF: torch.Tensor   # (H, F) ‖o_j^h‖
    weighted_write_HF: torch.Tensor  # (H, F) m^h_j ‖o_j^h‖
    OV_HFG: torch.Tensor          # (H, F, G) o_j^h · e_i
    weighted_OV_HFG: torch.Tensor  # (H, F, G) m^h_j · o_j^h · e_i


# ---- the site -------------------------------------------------------------------------------------
@torch.no_grad()
def attention_site(model: HookedTransformer, cc: Crosscoder, layer: int) -> AttentionSite:
    """The attention input of ``layer`` as seen by ``cc``: raw decoder vectors d_i and ln1-folded head weights.

    d_i = W_dec[i, l] / s_l at l = ``blocks.{layer}.ln1.hook_normalized`` in ``cc.cfg.writes``; W_{Q,K,V}^h are
    multiplied on the left by diag(ln1.w) when ln1 has a weight (see the module docstring).

    Raises
    ------
    FeatgraphError
        for a layer outside 0..n_layers−1, a model without the ln1 hook, a crosscoder of another width, or one that
        does not write the site (naming the attention-input sites it does write and those the model has).
    """
    require_hooked(model, "attention interactions")
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise FeatgraphError(f"unknown layer {layer!r} for this {n}-layer model; choose a layer in 0..{n - 1}")
    hookpoint = _SITE.format(layer)
    if hookpoint not in model.hook_dict:
        raise FeatgraphError(f"this model has no {hookpoint} (normalization_type={model.cfg.normalization_type!r}); "
                             "attention sites need a model whose blocks normalise their input (LN, LNPre, RMS, RMSPre)")
    if cc.cfg.d_model != model.cfg.d_model:
        raise FeatgraphError(f"crosscoder width {cc.cfg.d_model} differs from the model's d_model {model.cfg.d_model}; "
                             "use a crosscoder trained on this model")
    writes = cc.cfg.writes
    if hookpoint not in writes:
        has = [h for h in writes if _SITE_RE.match(h)]
        valid = [_SITE.format(i) for i in range(n) if _SITE.format(i) in model.hook_dict]
        raise FeatgraphError(f"the crosscoder has no decoder at {hookpoint}; it writes the attention inputs "
                             f"{has or 'none'}; train one that writes one of {valid}")
    l_out = writes.index(hookpoint)
    s = cc.norm_scale_L[cc.out_idx[l_out]].float()
    d_FD = cc.W_dec_FLD[:, l_out].detach().float() / s
    attn, ln1 = model.blocks[layer].attn, model.blocks[layer].ln1
    w_D = getattr(ln1, "w", None)
    w_1D1 = (w_D.detach().float() if w_D is not None else torch.ones(model.cfg.d_model))[None, :, None]
    if model.cfg.positional_embedding_type in ("rotary", "alibi", "relative_positional_bias"):
        log.warning("layer %d uses %s positions: the feature-pair QK score leaves out the position-dependent part",
                    layer, model.cfg.positional_embedding_type)
    dev = d_FD.device

    def fold(W_HDd: torch.Tensor) -> torch.Tensor:  # diag(w) W, (H, D, d_head)
        return W_HDd.detach().float().to(dev) * w_1D1.to(dev)

    return AttentionSite(layer, hookpoint, d_FD, fold(attn.W_Q), fold(attn.W_K), fold(attn.W_V),
                         attn.W_O.detach().float().to(dev), float(attn.attn_scale))


def _heads(site: AttentionSite, heads: Sequence[int] | None) -> torch.Tensor:
    H = site.n_heads
    if heads is None:
        return torch.arange(H)
    idx = torch.as_tensor(list(heads), dtype=torch.long)
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= H:
        raise FeatgraphError(f"heads {list(heads)} out of range; choose heads in 0..{H - 1}")
    return idx


def _restrict(site: AttentionSite, features_F: torch.Tensor) -> AttentionSite:
    return site._replace(d_FD=site.d_FD[features_F.to(site.d_FD.device)])


# ---- data-free QK --------------------------------------------------------------------------------
@torch.no_grad()
def qk_scores_data_free(site: AttentionSite, heads: Sequence[int] | None = None, max_elements: int = 2**28) -> torch.Tensor:
    """Data-free QK score of every feature pair, per head: (H, F, F), rows = query-side i, columns = key-side j.

    S^h[i, j] = (d_i W_Q^h) · (d_j W_K^h) / attn_scale   (arXiv 2606.09940; attention_analysis.py)

    Dense: refuses more than ``max_elements`` entries; use :func:`qk_top_pairs_data_free` for large F.
    """
    idx = _heads(site, heads)
    F = site.n_features
    if len(idx) * F * F > max_elements:
        raise FeatgraphError(f"{len(idx)} heads × {F}² features is over {max_elements} scores; use "
                             "qk_top_pairs_data_free, fewer heads, or raise max_elements")
    q_HFd = torch.einsum("fd,hde->hfe", site.d_FD, site.W_Q_HDd[idx])
    k_HFd = torch.einsum("fd,hde->hfe", site.d_FD, site.W_K_HDd[idx])
    return q_HFd @ k_HFd.transpose(1, 2) / site.attn_scale


def top_pairs(score_FF: torch.Tensor, k: int) -> TopPairs:
    """The ``k`` entries of largest |score| of a (F_q, F_k) matrix, largest first (fewer if it has fewer entries).

    >>> top_pairs(torch.tensor([[0.0, -3.0], [2.0, 1.0]]), 2)
    TopPairs(query_K=tensor([0, 1]), key_K=tensor([1, 0]), score_K=tensor([-3.,  2.]))
    """
    if score_FF.dim() != 2:
        raise FeatgraphError(f"top_pairs takes one (F, F) matrix, got shape {tuple(score_FF.shape)}; index a head first")
    flat = score_FF.reshape(-1)
    kk = max(0, min(int(k), flat.numel()))
    order = flat.abs().topk(kk).indices
    n_cols = score_FF.shape[1]
    return TopPairs(order // n_cols, order % n_cols, flat[order])


@torch.no_grad()
def qk_top_pairs_data_free(
    site: AttentionSite, k: int = 100, heads: Sequence[int] | None = None, block_size: int = 1024
) -> HeadTopPairs:
    """Per head, the ``k`` pairs of largest |S^h[i, j]| (see :func:`qk_scores_data_free`), streaming row blocks.

    Memory: block_size × F scores at a time plus 2k kept, whatever F.
    """
    idx = _heads(site, heads)
    F = site.n_features
    kk = min(int(k), F * F)
    rows = []
    for h in idx.tolist():
        q_Fd, k_Fd = site.d_FD @ site.W_Q_HDd[h], site.d_FD @ site.W_K_HDd[h]
        best_v, best_i = q_Fd.new_zeros(0), torch.zeros(0, dtype=torch.long, device=q_Fd.device)
        for r0 in range(0, F, block_size):
            blk = (q_Fd[r0 : r0 + block_size] @ k_Fd.T / site.attn_scale).reshape(-1)  # (b·F,)
            top = blk.abs().topk(min(kk, blk.numel())).indices
            cand_v, cand_i = torch.cat([best_v, blk[top]]), torch.cat([best_i, top + r0 * F])
            keep = cand_v.abs().topk(min(kk, cand_v.numel())).indices
            best_v, best_i = cand_v[keep], cand_i[keep]
        rows.append((best_i // F, best_i % F, best_v))
    return HeadTopPairs(idx, *(torch.stack(t) for t in zip(*rows)))


# ---- data-weighted QK ----------------------------------------------------------------------------
def _causal_prefix(f_bTF: torch.Tensor, include_diagonal: bool) -> torch.Tensor:
    """(M f)[q] = Σ_{k ≤ q} f(k) (k < q without the diagonal), (b, T, F)."""
    P = f_bTF.cumsum(dim=1)
    return P if include_diagonal else P - f_bTF


def causal_pair_counts(f_bTF: torch.Tensor, include_diagonal: bool = True) -> torch.Tensor:
    """C[i, j] = Σ_n Σ_{q ≥ k} f_i(n, q) f_j(n, k) of feature activations (b, T, F): Σ_n F_nᵀ (M F_n), (F, F).

    ``include_diagonal=False`` keeps q > k only. The data-weighted QK of head h is C ⊙ S^h.

    >>> causal_pair_counts(torch.tensor([[[1.0, 0.0], [2.0, 3.0]]]))
    tensor([[7., 6.],
            [9., 9.]])
    """
    return torch.einsum("bti,btj->ij", f_bTF, _causal_prefix(f_bTF, include_diagonal))


def _feature_batches(
    cc: Crosscoder, model: HookedTransformer, tokens_NT: torch.Tensor, batch_size: int, pattern_layer: int | None = None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield (first row, f_bTF (b, T−1, F) BOS dropped, pattern_bHTT of ``pattern_layer`` or None) per batch."""
    if tokens_NT.dim() != 2 or tokens_NT.shape[1] < 2:
        raise FeatgraphError(f"tokens must be (N, T) rows with BOS at position 0 and T ≥ 2, got shape {tuple(tokens_NT.shape)}")
    T = tokens_NT.shape[1]
    patterns: list[torch.Tensor] = []
    hooks = []
    if pattern_layer is not None:
        hooks = [(f"blocks.{pattern_layer}.attn.hook_pattern", lambda t, hook: patterns.append(t.detach()))]
    check_compatible(cc, model)
    was_training = cc.training
    cc.eval()  # inference encoding (BatchTopK: its learned threshold, not a top-k across the batch)
    try:
        with model.hooks(fwd_hooks=hooks):  # harvest's forward pass stops after the site's block, which computes it
            for b, acts_BLD in enumerate(harvest(model, tokens_NT, cc.cfg.all_hookpoints, batch_size, cc.device)):
                f_BF = cc.encode(acts_BLD)
                pattern = patterns.pop().float().to(cc.device) if patterns else None
                yield b * batch_size, f_BF.reshape(-1, T - 1, f_BF.shape[-1]), pattern
    finally:
        cc.train(was_training)


def _per_head_top(QK_HFF: torch.Tensor, heads_H: torch.Tensor, features_F: torch.Tensor, k: int) -> HeadTopPairs:
    rows = [top_pairs(QK_HFF[h], k) for h in range(QK_HFF.shape[0])]
    f = features_F.to(QK_HFF.device)
    return HeadTopPairs(heads_H, torch.stack([f[r.query_K] for r in rows]), torch.stack([f[r.key_K] for r in rows]),
                        torch.stack([r.score_K for r in rows]))


@torch.no_grad()
def qk_interactions(
    cc: Crosscoder,
    model: HookedTransformer,
    tokens_NT: torch.Tensor,
    layer: int,
    batch_size: int = 8,
    *,
    include_diagonal: bool = True,
    max_features: int = 2048,
    heads: Sequence[int] | None = None,
    k: int = 100,
) -> QKResult:
    """Data-weighted QK interactions at the attention input of ``layer`` over token rows (N, T), BOS at 0.

    QK^h(i, j) = Σ_n Σ_{q ≥ k} f_i(n, q) f_j(n, k) S^h[i, j] = C[i, j] S^h[i, j], accumulating
    C += F_nᵀ (M F_n) per row (M causal; strictly causal when ``include_diagonal`` is False), BOS excluded;
    summed over heads as Σ_h |QK^h|; per query token the total Σ_h Σ_{k≤q} Σ_ij |f_i(q) f_j(k) S^h[i, j]|
    (the entries of abs_FF split by query token when f ≥ 0). (arXiv 2606.09940; attention_analysis.py)

    Memory: H·F'² scores with F' = min(F, ``max_features``); when F > max_features a first pass picks the
    ``max_features`` features of largest activation mass Σ |f_i| and everything (per-token totals included) is
    restricted to them. ``k`` top pairs are reported overall and per head, as crosscoder ids.
    """
    site = attention_site(model, cc, layer)
    heads_H = _heads(site, heads)
    F, dev = cc.cfg.n_features, cc.device
    if max_features < 1:
        raise FeatgraphError(f"max_features must be ≥ 1, got {max_features}")
    features_F = torch.arange(F, device=dev)
    if F > max_features:
        mass_F = torch.zeros(F, device=dev)
        for _, f_bTF, _ in _feature_batches(cc, model, tokens_NT, batch_size):
            mass_F += f_bTF.abs().sum(dim=(0, 1))
        features_F = mass_F.topk(max_features).indices.sort().values
        log.info("qk_interactions: %d features, keeping the %d of largest activation mass", F, max_features)
    S_HFF = qk_scores_data_free(_restrict(site, features_F), heads_H.tolist(), max_elements=2**62)
    G_FF = S_HFF.abs().sum(dim=0)  # Σ_h |S^h|, for the per-token totals
    Fp = len(features_F)
    C_FF = torch.zeros(Fp, Fp, device=dev)
    token_total_NT = torch.zeros(tokens_NT.shape, device=dev)
    for start, f_bTF, _ in _feature_batches(cc, model, tokens_NT, batch_size):
        f_bTF = f_bTF[..., features_F]
        C_FF += causal_pair_counts(f_bTF, include_diagonal)
        a_bTF = f_bTF.abs()
        reach_bTF = _causal_prefix(a_bTF, include_diagonal) @ G_FF.T  # Σ_j G[i, j] Σ_{k≤q} |f_j(k)|
        token_total_NT[start : start + f_bTF.shape[0], 1:] = (a_bTF * reach_bTF).sum(dim=-1)
    QK_HFF = C_FF * S_HFF
    abs_FF = QK_HFF.abs().sum(dim=0)
    t = top_pairs(abs_FF, k)
    top = TopPairs(features_F[t.query_K], features_F[t.key_K], t.score_K)
    return QKResult(features_F, heads_H, S_HFF, C_FF, QK_HFF, abs_FF, top,
                    _per_head_top(QK_HFF, heads_H, features_F, k), token_total_NT)


# ---- OV ------------------------------------------------------------------------------------------
def _ov_write(site: AttentionSite, h: int) -> torch.Tensor:
    """o_j^h = d_j W_V^h W_O^h for every feature j, (F, D)."""
    return (site.d_FD @ site.W_V_HDd[h]) @ site.W_O_HdD[h]


@torch.no_grad()
def ov_write_norms(site: AttentionSite, heads: Sequence[int] | None = None) -> torch.Tensor:
    """‖o_j^h‖ = ‖d_j W_V^h W_O^h‖, what key-side feature j writes through head h per unit activation: (H, F)."""
    return torch.stack([_ov_write(site, h).norm(dim=-1) for h in _heads(site, heads).tolist()])


def _after_attention(hookpoint: str, layer: int) -> bool:
    """Whether ``hookpoint`` comes after the attention of ``layer`` has written to the residual stream."""
    m = _BLOCK_RE.match(hookpoint)
    if m is None:
        return hookpoint.startswith(("ln_final", "unembed"))
    n, rest = int(m.group(1)), m.group(2)
    if n != layer:
        return n > layer
    return _IN_BLOCK_RANK.get(rest.split(".")[0], -1) >= _IN_BLOCK_RANK["hook_attn_out"]


@torch.no_grad()
def ov_interactions(
    cc: Crosscoder,
    site: AttentionSite,
    read_hookpoint: str,
    heads: Sequence[int] | None = None,
    out_features: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """OV interaction of key-side feature j (at ``site``) with feature i that ``cc`` reads at ``read_hookpoint``.

    OV^h(j → i) = (d_j W_V^h W_O^h) · e_i,   e_i = s_r W_enc[r, :, i]

    with r = ``read_hookpoint`` in ``cc.cfg.hookpoints`` and s_r its norm scale, so e_i is i's raw-space encoder
    direction: OV^h(j → i) is the change of i's pre-activation per unit of f_j at an attended key position, along
    the direct residual path (a LayerNorm between write and read rescales it; later layers are not counted).
    Returns (H, F_key, G) with G = F, or the ``out_features`` given (rows = source j, columns = target i).

    Raises
    ------
    FeatgraphError
        if ``cc`` does not read ``read_hookpoint``, or it does not come after the attention of ``site.layer``.
    """
    layer = site.layer
    if read_hookpoint not in cc.cfg.hookpoints:
        raise FeatgraphError(f"the crosscoder does not read {read_hookpoint}; choose one of {cc.cfg.hookpoints}")
    if not _after_attention(read_hookpoint, layer):
        raise FeatgraphError(f"{read_hookpoint} comes before the attention of layer {layer} writes; read at "
                             f"blocks.{layer}.hook_resid_mid, blocks.{layer}.hook_resid_post or a later layer")
    if cc.cfg.d_model != site.d_FD.shape[1]:
        raise FeatgraphError(f"crosscoder width {cc.cfg.d_model} differs from the site's {site.d_FD.shape[1]}; use one model")
    r = cc.cfg.hookpoints.index(read_hookpoint)
    e_DG = cc.W_enc_LDF[r].detach().float() * cc.norm_scale_L[cc.in_idx[r]].float()
    if out_features is not None:
        e_DG = e_DG[:, torch.as_tensor(out_features, dtype=torch.long, device=e_DG.device)]
    e_DG = e_DG.to(site.d_FD.device)
    return torch.stack([_ov_write(site, h) @ e_DG for h in _heads(site, heads).tolist()])


@torch.no_grad()
def ov_attention_mass(
    cc: Crosscoder, model: HookedTransformer, tokens_NT: torch.Tensor, layer: int, batch_size: int = 8,
    heads: Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention mass of each key-side feature: m^h_j = Σ_n Σ_k (Σ_q A^h_n[q, k]) f_j(n, k), (H, F).

    A^h is the model's pattern ``blocks.{layer}.attn.hook_pattern`` on the same forward pass as the features; keys
    run over the non-BOS positions, queries over all positions q ≥ k (A is causal).
    """
    idx = _heads(attention_site(model, cc, layer), heads).to(cc.device)
    mass_HF = torch.zeros(len(idx), cc.cfg.n_features, device=cc.device)
    for _, f_bTF, pattern_bHTT in _feature_batches(cc, model, tokens_NT, batch_size, pattern_layer=layer):
        received_bHT = pattern_bHTT[:, idx].sum(dim=2)[:, :, 1:]  # Σ_q A[q, k], BOS key dropped
        mass_HF += torch.einsum("bht,btf->hf", received_bHT, f_bTF)
    return mass_HF


@torch.no_grad()
def ov_data_weighted(
    cc: Crosscoder, model: HookedTransformer, tokens_NT: torch.Tensor, layer: int, read_hookpoint: str,
    batch_size: int = 8, heads: Sequence[int] | None = None, out_features: Sequence[int] | torch.Tensor | None = None,
) -> OVResult:
    """OV writes and interactions of ``cc``'s features at the attention of ``layer``, weighted by attention mass.

    weighted_write = m^h_j ‖o_j^h‖ and weighted_OV = m^h_j · OV^h(j → i), with m from :func:`ov_attention_mass`
    and OV from :func:`ov_interactions` (downstream features read by ``cc`` at ``read_hookpoint``).
    """
    site = attention_site(model, cc, layer)
    heads_H = _heads(site, heads)
    OV_HFG = ov_interactions(cc, site, read_hookpoint, heads_H.tolist(), out_features)
    mass_HF = ov_attention_mass(cc, model, tokens_NT, layer, batch_size, heads_H.tolist()).to(OV_HFG.device)
    norm_HF = ov_write_norms(site, heads_H.tolist())
    G = OV_HFG.shape[-1]
    out_G = torch.arange(G) if out_features is None else torch.as_tensor(out_features, dtype=torch.long)
    return OVResult(heads_H, out_G, mass_HF, norm_HF, mass_HF * norm_HF, OV_HFG, mass_HF[:, :, None] * OV_HFG)
