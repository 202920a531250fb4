"""One call from a crosscoder, a model and token rows to an annotated, clustered co-activation graph."""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from crosscoder.apply import feature_activations
from crosscoder.crosscoder import Crosscoder

from .coactivation import add_layer_profiles, add_top_contexts, coactivation_graph
from .communities import leiden
from .graph import FeatureGraph
from .stats import CoactivationStats

__all__ = ["crosscoder_graph", "token_decoder"]


def token_decoder(model) -> Callable[[int], str]:
    """Token id → its text, decoded once for the whole vocabulary (``str`` of the id without a tokenizer)."""
    if model.tokenizer is None:
        return str
    vocab = [model.tokenizer.decode([i]) for i in range(model.cfg.d_vocab)]
    return vocab.__getitem__


def crosscoder_graph(
    cc: Crosscoder, model, rows_NT: torch.Tensor, token_str: Callable[[int], str], top_k: int = 8, min_cocount: int = 5,
    seed: int = 0, progress: bool = False, batch_size: int = 32,
) -> tuple[FeatureGraph, CoactivationStats]:
    """Stream feature activations over ``rows_NT`` into statistics; build the Pearson co-activation graph, add layer
    profiles, top contexts and Leiden communities (modularity in ``meta``). Raises a clear error for an empty graph."""
    stats = CoactivationStats(cc.cfg.n_features)
    n_batches = -(-rows_NT.shape[0] // batch_size)
    for chunk in tqdm(feature_activations(cc, model, rows_NT, batch_size), total=n_batches, desc="graph stats", disable=not progress, leave=False):
        stats.update(chunk.f_nF, chunk.token_index_n)
    graph = coactivation_graph(stats, top_k=top_k, min_cocount=min_cocount)
    graph.require_edges()
    add_layer_profiles(graph, cc.decoder_norms().detach().cpu().numpy(), cc.cfg.writes)
    add_top_contexts(graph, stats, rows_NT.cpu().numpy(), token_str)
    comm = leiden(graph, seed=seed)
    graph.set_node_attr("community", comm.membership.tolist())
    graph.meta.update({"modularity": comm.modularity, "n_communities": comm.n_communities, "seed": seed})
    return graph, stats
