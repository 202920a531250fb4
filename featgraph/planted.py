"""Synthetic feature activations with planted communities: the validation fixture for the graph pipeline.

Generative model (K communities of S features each, F = K·S, N tokens; feature f belongs to community f // S):

1. *Topics.* Every token t carries one topic drawn uniformly from the K communities and, with probability
   ``p_topic``, a second distinct topic drawn uniformly from the remaining K − 1. So each token has 1–2 active
   topics and each topic is active on a fraction (1 + p_topic) / K of the tokens.
2. *Members.* Each member feature of an active topic fires independently with probability ``p_member``.
3. *Background.* Independently of the topics, every feature fires on each token with probability ``noise``
   (spurious firing unrelated to any community; about 2 % is a realistic level for crosscoder features).
4. *Magnitudes.* Every firing draws an activation from Exp(``scale``); a feature that fires from both a topic
   and the background gets the sum, so activations are non-negative and zero wherever the feature is silent.

Within a community, features share a topic and are positively correlated; across communities they meet only
through second topics and background noise. With p = (1 + p_topic)/K and q = p_member the co-activation rate of
two members is ≈ p q² against ≈ (p q)² for features of different communities (noise aside), so the planted
partition is what co-activation community detection should recover (measured by NMI, see
:func:`featgraph.communities.normalized_mutual_info`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["PlantedActivations", "planted_activations"]


class PlantedActivations(NamedTuple):
    f_NF: torch.Tensor       # (N, F) float32, non-negative, sparse feature activations
    truth: np.ndarray        # (F,) int64 planted community of each feature (f // features_per_community)
    topics_NK: np.ndarray    # (N, K) bool, which topics are active on each token


def planted_activations(
    n_communities: int,
    features_per_community: int,
    n_tokens: int,
    seed: int = 0,
    p_topic: float = 0.3,
    p_member: float = 0.2,
    noise: float = 0.02,
    scale: float = 1.0,
) -> PlantedActivations:
    """Sample activations ``(n_tokens, n_communities · features_per_community)`` with planted communities.

    Parameters
    ----------
    n_communities : int
        K ≥ 2, the number of planted communities (topics).
    features_per_community : int
        S ≥ 1 features per community.
    n_tokens : int
        N tokens.
    seed : int
        Seeds the one ``numpy.random.Generator`` that draws everything.
    p_topic : float
        Probability that a token carries a second topic besides its first.
    p_member : float
        Probability that a member of an active topic fires.
    noise : float
        Probability that any feature fires at random on a token (background).
    scale : float
        Mean of the exponential activation magnitude.

    Examples
    --------
    >>> p = planted_activations(4, 3, 1000, seed=0)
    >>> tuple(p.f_NF.shape), p.truth.tolist()
    ((1000, 12), [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    >>> bool((p.f_NF >= 0).all()), bool(p.topics_NK.sum(1).min() >= 1)
    (True, True)
    """
    _check(n_communities, features_per_community, n_tokens, p_topic=p_topic, p_member=p_member, noise=noise)
    K, S, N = n_communities, features_per_community, n_tokens
    rng = np.random.default_rng(seed)
    topics_NK = _sample_topics(rng, N, K, p_topic)
    truth = np.repeat(np.arange(K, dtype=np.int64), S)  # (F,)
    member_NF = topics_NK[:, truth] & (rng.random((N, K * S)) < p_member)
    background_NF = rng.random((N, K * S)) < noise
    f_NF = (member_NF * rng.exponential(scale, (N, K * S)) + background_NF * rng.exponential(scale, (N, K * S)))
    return PlantedActivations(torch.from_numpy(f_NF.astype(np.float32)), truth, topics_NK)


def _sample_topics(rng: np.random.Generator, N: int, K: int, p_topic: float) -> np.ndarray:
    """(N, K) bool: one uniform topic per token, plus a distinct second one with probability ``p_topic``."""
    first = rng.integers(0, K, N)
    second = (first + rng.integers(1, K, N)) % K  # uniform over the other K − 1 topics
    topics_NK = np.zeros((N, K), dtype=bool)
    topics_NK[np.arange(N), first] = True
    has_second = rng.random(N) < p_topic
    topics_NK[np.flatnonzero(has_second), second[has_second]] = True
    return topics_NK


def _check(K: int, S: int, N: int, **probabilities: float) -> None:
    if K < 2 or S < 1 or N < 1:
        raise ValueError(f"need n_communities ≥ 2, features_per_community ≥ 1, n_tokens ≥ 1; got {K}, {S}, {N}")
    for name, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1]; got {p}")
