"""featgraph: feature graphs of a language model — crosscoders → co-activation and interaction graphs → communities,
diffs, pages and exports.

The names a researcher needs, importable from here (``import featgraph as fg``); each loads its module on first use.
The crosscoder side (models, data, fitting) is re-exported from :mod:`crosscoder`::

    inputs = fg.load_inputs(fg.ModelConfig("gpt2"), fg.DataConfig("my_text.jsonl"))
    ...
    graph, stats = fg.build_graph(crosscoder, inputs.model, inputs.rows.val_NT, fg.GraphConfig(top_k=8))
    fg.write_html(graph, "graph.html")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "crosscoder.sources", "load_inputs": "crosscoder.sources", "load_multi_inputs": "crosscoder.sources",
    "load_model": "crosscoder.model_loading",
    "DataConfig": "crosscoder.data", "TokenRows": "crosscoder.data", "load_token_rows": "crosscoder.data",
    "CrosscoderConfig": "crosscoder.config", "TrainConfig": "crosscoder.config", "default_hookpoints": "crosscoder.config",
    "FitConfig": "crosscoder.config", "fit": "crosscoder.fitting",
    "attribution_graph": "featgraph.attribution", "AttributionGraph": "featgraph.attribution",
    "AttributionConfig": "featgraph.attribution", "LinearisedReplacement": "featgraph.attribution",
    "run_attribution": ".attribution_run", "write_attribution": ".attribution_run", "write_attribution_html": ".attribution_page",
    "find_supernodes": ".supernodes", "supernode_effects": ".supernodes",
    "linear_cka": ".similarity", "svcca": ".similarity", "rsa": ".similarity", "representation_similarity": ".similarity",
    "feature_similarity": ".similarity", "stage_feature_similarity": ".similarity",
    "build_crosscoder": "crosscoder.build", "load_crosscoder": "crosscoder.io", "save_crosscoder": "crosscoder.io",
    "evaluate": "crosscoder.metrics", "feature_activations": "crosscoder.apply", "model_diff": "crosscoder.model_diff",
    "FeatgraphError": "crosscoder.errors",
    "GraphConfig": ".options", "GraphResult": ".pipeline", "build_graph": ".pipeline", "token_decoder": ".pipeline",
    "FeatureGraph": ".graph",
    "CoactivationStats": ".stats", "save_stats": ".stats", "load_stats": ".stats",
    "coactivation_graph": ".coactivation",
    "leiden": ".communities", "louvain": ".communities", "community_summaries": ".communities", "resolution_sweep": ".communities",
    "stability": ".communities",
    "edge_diff": ".diff", "feature_change": ".diff", "track_communities": ".diff", "community_change": ".diff",
    "write_html": ".html", "write_diff_html": ".html",
    "export_graph": ".export", "write_json": ".export", "read_json": ".export", "write_graphml": ".export", "write_gexf": ".export",
    "write_cytoscape": ".export", "write_csv": ".export", "write_neuronpedia": ".export",
    "write_report": ".report",
    "add_labels": ".labels", "read_user_labels": ".labels", "add_dashboards": ".dashboards", "logit_lens": ".dashboards",
    "write_feature_json": ".dashboards",
    "mlp_interactions": ".mlp_interactions", "qk_interactions": ".attention_interactions", "ov_interactions": ".attention_interactions",
    "stack_graph": ".crosslayer", "prompt_graph": ".crosslayer", "find_gates": ".crosslayer", "pass_through_counts": ".crosslayer",
    "DemoConfig": ".options", "run_demo": ".demo",
    "STUDIES": ".studies", "Study": ".studies",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'featgraph' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
