"""Attribution graphs of a prompt through a cross-layer transcoder's local replacement model.

Method (Ameisen et al., "Circuit Tracing", 2025; the ``circuit-tracer`` library's conventions):

1. Run the model on the prompt. At every position record each layer's CLT feature activations (the active ones are
   the feature nodes), the MLP-output error ``e_l = mlp_out_l − ĉlt_l`` (one error node per layer × position) and
   the embedding (one node per position: token plus positional embedding).
2. The *local replacement model* freezes the attention patterns and the LayerNorm scales at their clean values and
   replaces every MLP output by ``Σ_i a_i W_dec,i^l + b_dec^l + e_l``. With the node values as leaves, the residual
   stream, every feature's pre-activation and every logit are then affine in the node values (the constant part
   comes from the biases, which are not nodes), and at the clean node values it reproduces the clean run exactly.
3. Edge ``s → t`` is ``A[t, s] = value_s · ∂target_t/∂value_s``: the direct effect through the frozen residual
   stream and attention OV circuits. A feature's target is its pre-activation (what the CLT encoder reads at its
   layer, normalised as the CLT normalises); a logit's target is the logit minus the mean logit at the last position
   of the most likely tokens (at most ``max_logits``, until their probability reaches ``logit_probability``).
   Since the targets are affine, ``Σ_s A[t, s] = target_t − target_t(all nodes 0)``.
4. Pruning and scores are circuit-tracer's: influence ``w (Â + Â² + …)`` of the row-normalised ``|A|`` from the
   logit probabilities ``w``, nodes kept to ``node_threshold`` of the cumulative influence and edges to
   ``edge_threshold``; the replacement score (share of the influence on the logits that starts at embeddings rather
   than error nodes) and the completeness score (influence-weighted share of incoming edges not from error nodes).

Simplifications against circuit-tracer: dense adjacency, one backward per batch of target rows with no
feature-ranking / ``max_feature_nodes`` cut (all active features are nodes); the embedding node includes the
positional embedding; BOS-position features are dropped (``zero_bos``: our CLTs are trained without BOS), so the
BOS error node carries that MLP output; TransformerLens models with a standard block (attention then MLP) only.

The adjacency's rows are targets and its columns sources; nodes are ordered [features, errors (layer-major), embeddings,
logits], as circuit-tracer orders them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from crosscoder.errors import FeatgraphError

from .graph import FeatureGraph

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from crosscoder.crosscoder import Crosscoder

__all__ = [
    "AttributionConfig", "AttributionGraph", "AttributionNode", "LinearisedReplacement", "PruneResult", "ReplacementOutput",
    "attribution_graph", "compute_influence", "find_threshold", "graph_scores", "normalize_matrix", "prune_graph",
]

log = logging.getLogger(__name__)

READ_HOOKS = ("hook_resid_pre", "hook_resid_mid", "ln2.hook_normalized")
"""Per-block hookpoints a CLT may read (all before that block's MLP)."""


@dataclass
class AttributionConfig:
    """What an attribution graph targets, how it is computed and how it is pruned."""

    max_logits: int = 10
    """Most output tokens (at the last position) whose logits are targets."""
    logit_probability: float = 0.95
    """Take the most likely tokens until their summed probability reaches this (at most ``max_logits``)."""
    node_threshold: float = 0.8
    """Pruning keeps the most influential nodes carrying this share of the total influence on the logits."""
    edge_threshold: float = 0.98
    """Pruning keeps the most influential edges carrying this share of the total edge influence."""
    batch_size: int = 64
    """Target rows per backward pass (the prompt is repeated this many times in one forward pass)."""
    zero_bos: bool = True
    """Drop the features at position 0 (BOS; the CLT is trained without it): its error node carries that MLP output."""

    def __post_init__(self) -> None:
        if self.max_logits < 1:
            raise FeatgraphError(f"max_logits must be at least 1, got {self.max_logits}")
        if self.batch_size < 1:
            raise FeatgraphError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("logit_probability", "node_threshold", "edge_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise FeatgraphError(f"{name} must lie in [0, 1], got {v}")


@dataclass(frozen=True)
class AttributionNode:
    """One node: a feature (layer, position, feature index, activation), an error (layer, position), an embedding
    (position, token) or a logit (token, probability as ``activation``)."""

    id: str
    kind: str  # "feature" | "error" | "embedding" | "logit"
    layer: int | None
    position: int
    feature: int | None = None
    token: int | None = None
    activation: float | None = None


class PruneResult(NamedTuple):
    node_mask: torch.Tensor          # (N,) bool: nodes kept
    edge_mask: torch.Tensor          # (N, N) bool: edges kept (rows targets, columns sources)
    cumulative_scores: torch.Tensor  # (N,) each node's cumulative share of the influence, in descending order of influence


class ReplacementOutput(NamedTuple):
    pre_BN: torch.Tensor     # (B, N) pre-activations of the active features
    logits_BV: torch.Tensor   # (B, V) logits at the last position
    targets_BK: torch.Tensor  # (B, K) demeaned logits of the target tokens at the last position


@dataclass
class AttributionGraph:
    """An attribution graph: nodes, the dense adjacency (rows targets, columns sources), pruning and scores."""

    tokens_T: torch.Tensor
    nodes: list[AttributionNode]
    adjacency: torch.Tensor  # (N, N) float: A[t, s] = direct effect of node s on target t
    n_features: int
    n_errors: int
    n_embeddings: int
    n_logits: int
    logit_tokens: torch.Tensor         # (K,) long
    logit_probabilities: torch.Tensor  # (K,) float
    prune: PruneResult
    replacement_score: float
    completeness_score: float
    cfg: AttributionConfig = field(default_factory=AttributionConfig)

    @property
    def logit_weights(self) -> torch.Tensor:
        """(N,) the logit probabilities at the logit nodes, 0 elsewhere."""
        w = torch.zeros(len(self.nodes), dtype=self.adjacency.dtype)
        w[-self.n_logits:] = self.logit_probabilities.to(w.dtype)
        return w

    def to_feature_graph(self, token_str: Callable[[int], str] | None = None, pruned: bool = True) -> FeatureGraph:
        """The graph as a directed :class:`~featgraph.graph.FeatureGraph` (every exporter, the page and Leiden take it):
        the kept nodes (all when not ``pruned``) in node order and the kept nonzero edges ``source → target``.

        Node attributes: ``kind`` (feature / error / embedding / logit), ``layer`` (the CLT layer; −1 for embeddings,
        ``n_layers`` for logits — the rows of the page), ``position`` (the token column; logits at the last one),
        ``feature`` (the CLT feature index; None for other kinds), ``token`` (id at that position; the output token
        for a logit), ``token_text``, ``activation`` (a feature's value; a logit's probability), ``influence``
        (circuit-tracer's cumulative influence share, smaller = more influential), ``label`` (a short description:
        ``Emb "the"``, ``Err L1@4``, ``Logit " cat" (p=0.42)``, a feature's id until dashboards label it). Edge
        attributes: ``weight`` (the signed direct effect A[t, s]) and ``abs_weight``. Meta: ``kind`` "attribution",
        ``prompt_tokens``, ``prompt``, ``n_layers``, the scores, ``logit_tokens`` and the config.
        """
        token_str = token_str or str
        keep = self.prune.node_mask if pruned else torch.ones(len(self.nodes), dtype=torch.bool)
        emask = (self.prune.edge_mask if pruned else torch.ones_like(self.prune.edge_mask)) & (self.adjacency != 0)
        emask &= keep[:, None] & keep[None, :]
        kept = keep.nonzero(as_tuple=True)[0].tolist()
        new = {old: i for i, old in enumerate(kept)}
        n_layers = self.n_errors // max(len(self.tokens_T), 1)
        nodes = [self.nodes[i] for i in kept]
        influence = self.prune.cumulative_scores
        attrs: dict[str, list] = {k: [] for k in ("kind", "layer", "position", "feature", "token", "token_text", "activation",
                                                  "influence", "label")}
        for i, n in zip(kept, nodes):
            text = token_str(int(n.token)) if n.token is not None else ""
            layer = n.layer if n.layer is not None else (-1 if n.kind == "embedding" else n_layers)
            label = {"feature": f"L{n.layer}/F{n.feature}", "error": f"Err L{n.layer}@{n.position}", "embedding": f"Emb {json.dumps(text)}",
                     "logit": f"Logit {json.dumps(text)} (p={n.activation:.3g})" if n.activation is not None else "Logit"}[n.kind]
            for k, v in (("kind", n.kind), ("layer", int(layer)), ("position", int(n.position)), ("feature", n.feature),
                         ("token", n.token), ("token_text", text), ("activation", n.activation), ("influence", float(influence[i])),
                         ("label", label)):
                attrs[k].append(v)
        t_idx, s_idx = emask.nonzero(as_tuple=True)
        w = self.adjacency[t_idx, s_idx].double().numpy()
        src = np.asarray([new[s] for s in s_idx.tolist()], dtype=np.int64)
        dst = np.asarray([new[t] for t in t_idx.tolist()], dtype=np.int64)
        prompt_tokens = [token_str(int(t)) for t in self.tokens_T.tolist()]
        meta = {"kind": "attribution", "prompt_tokens": prompt_tokens, "prompt": "".join(prompt_tokens), "n_layers": n_layers,
                "replacement_score": self.replacement_score, "completeness_score": self.completeness_score,
                "logit_tokens": self.logit_tokens.tolist(), "logit_probabilities": self.logit_probabilities.tolist(),
                "n_nodes_unpruned": {"features": self.n_features, "errors": self.n_errors, "embeddings": self.n_embeddings,
                                     "logits": self.n_logits},
                "attribution_config": asdict(self.cfg), "measure": "direct effect (attribution)"}
        return FeatureGraph([n.id for n in nodes], attrs, src, dst, {"weight": w, "abs_weight": np.abs(w)}, directed=True, meta=meta)

    def to_dict(self, pruned: bool = True) -> dict:
        """JSON-ready: nodes and nonzero edges (only the kept ones when ``pruned``), scores and the config."""
        keep = self.prune.node_mask if pruned else torch.ones(len(self.nodes), dtype=torch.bool)
        emask = self.prune.edge_mask if pruned else self.adjacency != 0
        emask = emask & (self.adjacency != 0) & keep[:, None] & keep[None, :]
        t_idx, s_idx = emask.nonzero(as_tuple=True)
        return {
            "tokens": self.tokens_T.tolist(),
            "nodes": [asdict(n) for n, k in zip(self.nodes, keep.tolist()) if k],
            "links": [{"source": self.nodes[s].id, "target": self.nodes[t].id, "weight": float(self.adjacency[t, s])}
                      for t, s in zip(t_idx.tolist(), s_idx.tolist())],
            "replacement_score": self.replacement_score,
            "completeness_score": self.completeness_score,
            "config": asdict(self.cfg),
        }


# ---- pruning and scores (pure functions of the adjacency) -----------------------------------------------------------

def normalize_matrix(A: torch.Tensor) -> torch.Tensor:
    """Row-normalised |A|: each target's incoming absolute weights sum to 1 (rows of zeros stay zero)."""
    absA = A.abs()
    return absA / absA.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(A: torch.Tensor, logit_weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``w (A + A² + A³ + …) = w ((I − A)⁻¹ − I)`` for an acyclic (nilpotent) A, summed until a term is exactly zero."""
    current = logit_weights @ A
    influence = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return influence
        current = current @ A
        influence += current
    raise FeatgraphError(f"influence did not converge in {max_iter} steps: the adjacency has a cycle")


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The smallest score among the top ones whose cumulative share of the total first reaches ``threshold``."""
    sorted_scores = torch.sort(scores.flatten(), descending=True).values
    cumulative = torch.cumsum(sorted_scores, dim=0) / sorted_scores.sum().clamp(min=1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype))), len(cumulative) - 1)
    return sorted_scores[index]


def prune_graph(A: torch.Tensor, logit_weights: torch.Tensor, n_features: int, n_embeddings: int, n_logits: int,
                node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """circuit-tracer's pruning: keep nodes by cumulative influence (embeddings and logits always), then edges by
    cumulative edge influence ``|Â|[t, s] · (influence_t + w_t)`` on the node-pruned graph, then drop, until stable,
    features and errors left without outgoing edges and features left without incoming ones."""
    fixed = n_embeddings + n_logits
    node_influence = compute_influence(normalize_matrix(A), logit_weights)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[-fixed:] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    normed = normalize_matrix(pruned)
    edge_scores = normed * (compute_influence(normed, logit_weights) + logit_weights)[:, None]
    edge_mask = edge_scores >= find_threshold(edge_scores, edge_threshold)
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-fixed] &= edge_mask[:, :-fixed].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
        if torch.equal(old, node_mask):
            break
    sorted_scores, order = torch.sort(node_influence, descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order] = torch.cumsum(sorted_scores, dim=0) / sorted_scores.sum().clamp(min=1e-30)
    return PruneResult(node_mask, edge_mask, cumulative)


def graph_scores(A: torch.Tensor, logit_weights: torch.Tensor, errors: slice, embeddings: slice) -> tuple[float, float]:
    """circuit-tracer's (replacement score, completeness score), both in [0, 1].

    replacement = I_emb / (I_emb + I_err), the influence on the logits that starts at embeddings rather than errors;
    completeness = Σ_t (1 − Σ_{s∈errors} Â[t, s]) (I_t + w_t) / Σ_t (I_t + w_t), the influence-weighted share of
    each node's normalised input that does not come from error nodes.
    """
    normed = normalize_matrix(A)
    influence = compute_influence(normed, logit_weights)
    emb, err = influence[embeddings].sum(), influence[errors].sum()
    replacement = emb / (emb + err).clamp(min=1e-30)
    non_error = 1 - normed[:, errors].sum(dim=-1)
    out = influence + logit_weights
    return float(replacement), float((non_error * out).sum() / out.sum())


# ---- the local replacement model -------------------------------------------------------------------------------------

def _check(model: HookedTransformer, cc: Crosscoder) -> None:
    """One FeatgraphError line for a model or crosscoder this cannot trace."""
    cfg = cc.cfg
    if cfg.layout != "clt":
        raise FeatgraphError(f"attribution graphs need a cross-layer transcoder (layout clt), got layout {cfg.layout}; train one with --architecture clt")
    n = model.cfg.n_layers
    want = [f"blocks.{l}.hook_mlp_out" for l in range(n)]
    if list(cfg.out_hookpoints) != want:
        raise FeatgraphError(f"the CLT must write every MLP output in order ({want[0]} … {want[-1]}), got {', '.join(cfg.out_hookpoints)}")
    if getattr(model.cfg, "attn_only", False) or getattr(model.cfg, "parallel_attn_mlp", False):
        raise FeatgraphError("attribution graphs need a standard block (attention then MLP); this model is attention-only or parallel")
    for l, h in enumerate(cfg.hookpoints):
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", h)
        if m is None or int(m.group(1)) != l or m.group(2) not in READ_HOOKS:
            raise FeatgraphError(f"CLT read hookpoint {h!r} must be blocks.{l}.<{'|'.join(READ_HOOKS)}>")


class LinearisedReplacement:
    """The local replacement model of one prompt: attention patterns and LayerNorm scales frozen from the clean run,
    each MLP output replaced by the CLT's decoded features plus the error node. :meth:`forward` is affine in the node
    values and, at the clean values, reproduces the clean run (logits, residual stream) up to float rounding.
    """

    def __init__(self, model: HookedTransformer, cc: Crosscoder, tokens_T: torch.Tensor, zero_bos: bool = True):
        _check(model, cc)
        self.model, self.cc = model, cc
        self.tokens_T = tokens_T.to(model.cfg.device)
        T = len(tokens_T)
        self.reads, self.writes = list(cc.cfg.hookpoints), list(cc.cfg.out_hookpoints)
        hd = model.hook_dict
        self.frozen = [h for h in hd if h.endswith("attn.hook_pattern") or h.endswith("hook_scale")]
        self.embed_hooks = [h for h in ("hook_embed", "hook_pos_embed") if h in hd]
        names = set(self.frozen + self.embed_hooks + self.reads + self.writes)
        with torch.no_grad():
            self.clean_logits_TV, cache = model.run_with_cache(self.tokens_T[None], names_filter=lambda n: n in names)
            self.clean_logits_TV = self.clean_logits_TV[0]
            self.cache = {h: cache[h].detach() for h in names}
            x_TLD = torch.stack([self.cache[h][0] for h in cc.cfg.all_hookpoints], dim=1)
            was = cc.training
            cc.eval()
            try:
                f_TF = cc.encode(x_TLD.to(cc.device)).to(x_TLD.device)
                pre_TF = cc.pre_activations(x_TLD.to(cc.device)).to(x_TLD.device)
            finally:
                cc.train(was)
            if zero_bos:
                f_TF[0] = 0
            s_out = cc.norm_scale_L[cc.out_idx].to(x_TLD)
            self.W_dec_FLD = (cc.W_dec_FLD.detach().to(x_TLD) / s_out[None, :, None])  # raw scale
            self.b_dec_LD = cc.b_dec_LD.detach().to(x_TLD) / s_out[:, None]
            recon_TLD = torch.einsum("tf,fld->tld", f_TF, self.W_dec_FLD) + self.b_dec_LD
            mlp_TLD = torch.stack([self.cache[h][0] for h in self.writes], dim=1)
            self.error_LTD = (mlp_TLD - recon_TLD).transpose(0, 1).contiguous()
        self.pos_N, self.feat_N = f_TF.nonzero(as_tuple=True)  # active features, position-major
        self.layer_N = cc.layout_layer_F.to(self.feat_N.device)[self.feat_N]
        order = torch.argsort(self.layer_N * T + self.pos_N, stable=True)  # layer-major, as the error nodes
        self.pos_N, self.feat_N, self.layer_N = self.pos_N[order], self.feat_N[order], self.layer_N[order]
        self.act_N = f_TF[self.pos_N, self.feat_N]
        self.clean_pre_N = pre_TF[self.pos_N, self.feat_N]
        self.n_layers, self.T, self.F = len(self.writes), T, cc.cfg.n_features
        # Each position's active features packed into G slots: decoding and the pre-activations then cost O(B·T·G·D)
        # rather than O(B·T·F·D) (G = the most features active at one position).
        N, dev = len(self.pos_N), x_TLD.device
        counts = torch.bincount(self.pos_N, minlength=T)
        self.G = G = max(int(counts.max()) if N else 0, 1)
        by_pos = torch.argsort(self.pos_N, stable=True)
        self.slot_N = torch.empty_like(self.pos_N)
        self.slot_N[by_pos] = torch.arange(N, device=dev) - (torch.cumsum(counts, 0) - counts)[self.pos_N[by_pos]]
        self.index_N = self.pos_N * G + self.slot_N  # flat (position, slot)
        with torch.no_grad():
            self.W_dec_TGLD = x_TLD.new_zeros(T, G, len(self.writes), x_TLD.shape[-1])
            self.W_dec_TGLD[self.pos_N, self.slot_N] = self.W_dec_FLD[self.feat_N]
            s_in = cc.norm_scale_L[cc.in_idx].to(x_TLD)  # pre = Σ_i W_enc[i]·(s_i x_i) + b_enc: the raw-unit encoder is s_i W_enc[i]
            enc_NLD = cc.W_enc_LDF.detach().to(x_TLD)[:, :, self.feat_N].permute(2, 0, 1) * s_in[None, :, None]
            self.W_enc_TGLD = x_TLD.new_zeros(T, G, len(self.reads), x_TLD.shape[-1])
            self.W_enc_TGLD[self.pos_N, self.slot_N] = enc_NLD
            self.b_enc_N = cc.b_enc_F.detach().to(x_TLD)[self.feat_N]
        del self.W_dec_FLD  # the packed copy is all forward() needs

    def forward(self, act_BN: torch.Tensor, error_BLT: torch.Tensor, embed_BT: torch.Tensor,
                logit_tokens_K: torch.Tensor | None = None, frozen: bool = True) -> ReplacementOutput:
        """Run the replacement model with feature values ``act_BN``, error-node coefficients ``error_BLT`` (1 = the
        clean error) and embedding coefficients ``embed_BT`` (1 = the clean embedding), batch B. ``frozen=False``
        recomputes the attention patterns and LayerNorm scales (features still held at ``act_BN``: direct effects
        through the nonlinear attention and LayerNorm, for checks)."""
        B, T, G = act_BN.shape[0], self.T, self.G
        act_BTG = act_BN.new_zeros(B, T * G).scatter(1, self.index_N[None].expand(B, -1), act_BN).view(B, T, G)
        reads: dict[str, torch.Tensor] = {}

        def freeze(act, hook):
            return self.cache[hook.name].expand_as(act)

        def freeze_last(act, hook):  # the final LayerNorm runs on the last position only
            return self.cache[hook.name][:, -1:].expand_as(act)

        def embed(act, hook):
            return embed_BT[:, :, None] * self.cache[hook.name].expand(B, T, -1)

        def mlp_out(l):
            def replace(act, hook):
                recon_BTD = torch.einsum("btg,tgd->btd", act_BTG, self.W_dec_TGLD[:, :, l]) + self.b_dec_LD[l]
                return recon_BTD + error_BLT[:, l, :, None] * self.error_LTD[l]
            return replace

        def capture(act, hook):
            reads[hook.name] = act
            return act

        final = "ln_final.hook_scale"
        hooks = [(h, freeze) for h in self.frozen if h != final] if frozen else []
        hooks += [(h, embed) for h in self.embed_hooks]
        hooks += [(h, mlp_out(l)) for l, h in enumerate(self.writes)] + [(h, capture) for h in self.reads]
        model = self.model
        with model.hooks(fwd_hooks=hooks):
            resid_BTD = model(self.tokens_T[None].expand(B, T), stop_at_layer=model.cfg.n_layers)
        with model.hooks(fwd_hooks=[(final, freeze_last)] if frozen and final in self.frozen else []):
            logits_BV = model.unembed(model.ln_final(resid_BTD[:, -1:]))[:, 0]
        x_BTLD = torch.stack([reads[h] for h in self.reads], dim=2)
        pre_BTG = torch.einsum("btld,tgld->btg", x_BTLD, self.W_enc_TGLD)
        pre_BN = pre_BTG.reshape(B, T * G)[:, self.index_N] + self.b_enc_N
        if logit_tokens_K is None:
            targets_BK = logits_BV.new_zeros(B, 0)
        else:
            targets_BK = logits_BV[:, logit_tokens_K] - logits_BV.mean(-1, keepdim=True)
        return ReplacementOutput(pre_BN, logits_BV, targets_BK)

    def clean_values(self, B: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The clean node values as a batch of B: (act_BN, error_BLT, embed_BT)."""
        dev = self.act_N.device
        return (self.act_N.expand(B, -1).clone(), torch.ones(B, self.n_layers, self.T, device=dev),
                torch.ones(B, self.T, device=dev))


# ---- the graph -------------------------------------------------------------------------------------------------------

def _salient_logits(logits_V: torch.Tensor, max_logits: int, probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    probs_V = torch.softmax(logits_V.float(), dim=-1)
    top_p, top_i = torch.topk(probs_V, min(max_logits, len(probs_V)))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(probability, dtype=top_p.dtype))) + 1
    return top_i[:cutoff], top_p[:cutoff]


def _nodes(rep: LinearisedReplacement, logit_tokens: torch.Tensor, logit_probs: torch.Tensor) -> list[AttributionNode]:
    toks = rep.tokens_T.tolist()
    nodes = [AttributionNode(f"L{l}/F{f}@{p}", "feature", l, p, feature=f, token=toks[p], activation=a)
             for l, f, p, a in zip(rep.layer_N.tolist(), rep.feat_N.tolist(), rep.pos_N.tolist(), rep.act_N.tolist())]
    nodes += [AttributionNode(f"L{l}/E@{p}", "error", l, p, token=toks[p])
              for l in range(rep.n_layers) for p in range(rep.T)]
    nodes += [AttributionNode(f"E@{p}", "embedding", None, p, token=toks[p]) for p in range(rep.T)]
    nodes += [AttributionNode(f"logit/{t}", "logit", None, rep.T - 1, token=t, activation=pr)
              for t, pr in zip(logit_tokens.tolist(), logit_probs.tolist())]
    return nodes


def attribution_graph(model: HookedTransformer, cc: Crosscoder, tokens_T: torch.Tensor | str, max_logits: int = 10,
                      logit_probability: float = 0.95, batch_size: int = 64, node_threshold: float = 0.8,
                      edge_threshold: float = 0.98, zero_bos: bool = True,
                      logit_tokens: Sequence[int] | None = None, progress: bool = False) -> AttributionGraph:
    """The attribution graph of a prompt (token ids ``(T,)``, BOS first, or a string) through the CLT ``cc``'s local
    replacement model; see the module docstring for the method and :class:`AttributionConfig` for the options.

    ``logit_tokens`` names the output tokens to attribute (e.g. the first token of a behaviour) instead of the most
    likely ones; they are weighted by their probabilities, as circuit-tracer weights its targets."""
    cfg = AttributionConfig(max_logits, logit_probability, node_threshold, edge_threshold, batch_size, zero_bos)
    if isinstance(tokens_T, str):
        tokens_T = model.to_tokens(tokens_T)[0]
    if tokens_T.dim() != 1 or len(tokens_T) < 1:
        raise FeatgraphError(f"tokens_T must be one prompt of token ids, shape (T,), got shape {tuple(tokens_T.shape)}")
    rep = LinearisedReplacement(model, cc, tokens_T, zero_bos=cfg.zero_bos)
    if logit_tokens is None:
        logit_tokens, logit_probs = _salient_logits(rep.clean_logits_TV[-1], cfg.max_logits, cfg.logit_probability)
    else:
        ids = [int(t) for t in logit_tokens]
        V = rep.clean_logits_TV.shape[-1]
        if not ids or len(set(ids)) != len(ids) or not all(0 <= t < V for t in ids):
            raise FeatgraphError(f"logit_tokens must be distinct token ids in [0, {V}), got {ids}")
        logit_tokens = torch.tensor(ids, device=rep.clean_logits_TV.device)
        logit_probs = torch.softmax(rep.clean_logits_TV[-1].float(), -1)[logit_tokens]
    n_feat, n_err, n_emb, n_log = len(rep.act_N), rep.n_layers * rep.T, rep.T, len(logit_tokens)
    N = n_feat + n_err + n_emb + n_log
    A = torch.zeros(N, N)
    B = min(cfg.batch_size, max(n_feat, n_log))
    # The replacement model is the same function for every target: one forward pass of B copies, then one backward pass
    # per chunk of B targets (copy b carries target b's gradient); feature targets and logit targets in separate
    # chunks, so the features' backward passes skip the unembedding.
    act, err, emb = (v.requires_grad_(True) for v in rep.clean_values(B))
    out = rep.forward(act, err, emb, logit_tokens)
    chunks = [(out.pre_BN, list(range(a, min(a + B, n_feat))), 0) for a in range(0, n_feat, B)]
    chunks += [(out.targets_BK, list(range(N - n_log + a, min(N - n_log + a + B, N))), N - n_log) for a in range(0, n_log, B)]
    bar = tqdm(total=n_feat + n_log, desc="attribution", unit="target", disable=not progress or len(chunks) <= 1, leave=False)
    for k, (targets_BR, chunk, offset) in enumerate(chunks):
        seed_BR = torch.zeros_like(targets_BR)
        seed_BR[torch.arange(len(chunk), device=seed_BR.device), torch.tensor(chunk, device=seed_BR.device) - offset] = 1
        g_act, g_err, g_emb = torch.autograd.grad(targets_BR, (act, err, emb), grad_outputs=seed_BR, allow_unused=True,
                                                  retain_graph=k + 1 < len(chunks))
        g_act = torch.zeros_like(act) if g_act is None else g_act
        g_err = torch.zeros_like(err) if g_err is None else g_err
        g_emb = torch.zeros_like(emb) if g_emb is None else g_emb
        row_BS = torch.cat([(act * g_act).detach(), g_err.reshape(B, -1), g_emb], dim=1)[: len(chunk)]  # values × gradients
        A[chunk, : N - n_log] = row_BS.float().cpu()
        bar.update(len(chunk))
    bar.close()
    del out, chunks
    weights = torch.zeros(N)
    probs = logit_probs.double().cpu()
    weights[-n_log:] = (probs / probs.sum() if probs.sum() > 0 else torch.full_like(probs, 1 / n_log)).float()  # scale-free
    prune = prune_graph(A, weights, n_feat, n_emb, n_log, cfg.node_threshold, cfg.edge_threshold)
    replacement, completeness = graph_scores(A, weights, slice(n_feat, n_feat + n_err), slice(n_feat + n_err, n_feat + n_err + n_emb))
    log.info("attribution graph: %d features, %d logits; kept %d nodes; replacement %.3f, completeness %.3f",
             n_feat, n_log, int(prune.node_mask.sum()), replacement, completeness)
    return AttributionGraph(rep.tokens_T.cpu(), _nodes(rep, logit_tokens, logit_probs), A, n_feat, n_err, n_emb, n_log,
                            logit_tokens.cpu(), logit_probs.float().cpu(), prune, replacement, completeness, cfg)
