"""Activation harvesting: run a TransformerLens model on token rows and collect hookpoint activations.

The model is a ``HookedTransformer`` or a ``TransformerBridge`` in compatibility mode (see
:func:`crosscoder.model_loading.load_model`): both have ``hook_dict`` and ``run_with_cache(names_filter=...,
stop_at_layer=...)`` with the same hookpoint names.

Token rows are ``(N, T)`` with a BOS token at position 0; BOS positions are dropped (their residual stream is
an outlier with a huge norm that would dominate any dictionary). The forward pass stops after the last
block a hookpoint needs. A shuffled :class:`ActivationBuffer` turns the stream into training batches.

A model crosscoder reads several models (a base model and its fine-tune) on the same tokens: :func:`harvest_models`
runs every model on each batch of rows — one pass over the data — and concatenates their activations model-major
along the L axis, ``(B, M·L, D)``, in the order of ``cfg.all_hookpoints`` (``model/hookpoint`` slots).
:class:`MultiModelRows` is the buffer's row source for it, and the scales are estimated per model and hookpoint.

Under torchrun each rank streams its own share of the training rows (:func:`rank_rows`, served through
:class:`RowSubset`), whether the rows come from the model or from an activation cache written beforehand.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import threading
import weakref
from typing import Iterator, Mapping, Sequence

import torch
from transformer_lens import HookedTransformer

from .config import SOURCE_SEP, source_name, split_source
from .errors import FeatgraphError

__all__ = [
    "check_hookpoints",
    "check_finite_activations",
    "forward_order",
    "stop_at_layer",
    "harvest",
    "estimate_norm_scales",
    "ActivationBuffer",
    "ModelRows",
    "check_models",
    "harvest_models",
    "estimate_model_norm_scales",
    "MultiModelRows",
    "RowSubset",
    "rank_rows",
]

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.*)$")
# Where each hookpoint of a TransformerLens block is computed, in forward-pass order (unknown names go last).
_BLOCK_STAGES = {
    "hook_resid_pre": 0, "ln1.hook_scale": 1, "ln1.hook_normalized": 1.1, "hook_attn_in": 1.2, "hook_q_input": 1.2,
    "hook_k_input": 1.2, "hook_v_input": 1.2, "attn.hook_q": 2, "attn.hook_k": 2, "attn.hook_v": 2, "attn.hook_rot_q": 2.05,
    "attn.hook_rot_k": 2.05, "attn.hook_attn_scores": 2.1, "attn.hook_pattern": 2.2, "attn.hook_z": 2.3,
    "attn.hook_result": 2.4, "hook_attn_out": 3, "hook_resid_mid": 4, "ln2.hook_scale": 5, "ln2.hook_normalized": 5.1,
    "hook_mlp_in": 5.2, "mlp.hook_pre": 6, "mlp.hook_pre_linear": 6, "mlp.hook_post": 6.1, "hook_mlp_out": 7,
    "hook_resid_post": 8,
}
ACTIVATIONS_FIX = "check the model weights and dtype (try float32)"
"""What :func:`check_finite_activations` tells the user to do when none is given."""


def check_hookpoints(model: HookedTransformer, hookpoints: Sequence[str]) -> None:
    """Raise a one-line :class:`FeatgraphError` naming any hookpoint the model does not have."""
    missing = [h for h in hookpoints if h not in model.hook_dict]
    if missing:
        n = model.cfg.n_layers
        raise FeatgraphError(
            f"unknown hookpoint {missing[0]!r} for this {n}-layer model; use names such as "
            f"blocks.0.hook_resid_pre, blocks.N.hook_resid_post, blocks.N.hook_resid_mid, blocks.N.hook_mlp_out "
            f"or blocks.N.ln2.hook_normalized with N in 0..{n - 1}"
        )


def forward_order(hookpoint: str) -> tuple[float, float]:
    """Sort key putting TransformerLens hookpoints in the order the forward pass computes them: (block, stage).

    Embedding hookpoints come first (block −1), ``ln_final`` and ``unembed`` last; within a block the residual stream
    before the block, then attention, ``hook_resid_mid``, the MLP and ``hook_resid_post``.

    >>> sorted(["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.0.hook_resid_mid", "hook_embed"], key=forward_order)
    ['hook_embed', 'blocks.0.hook_resid_mid', 'blocks.0.hook_resid_post', 'blocks.1.hook_resid_pre']
    """
    m = _BLOCK_RE.match(hookpoint)
    if m is not None:
        return float(m.group(1)), float(_BLOCK_STAGES.get(m.group(2), 9))
    if hookpoint in ("hook_tokens", "hook_embed", "hook_pos_embed"):
        return -1.0, 0.0
    return float("inf"), 0.0  # ln_final, unembed


def _layer_of(hookpoint: str) -> str:
    m = _BLOCK_RE.match(hookpoint)
    if m is not None:
        return f"layer {m.group(1)}"
    return "the embedding" if forward_order(hookpoint)[0] < 0 else "after the last block"


def check_finite_activations(acts_BLD: torch.Tensor, hookpoints: Sequence[str], where: str, fix: str = ACTIVATIONS_FIX) -> None:
    """Raise one :class:`FeatgraphError` line naming the first hookpoint, in forward-pass order, where ``acts_BLD``
    (B, L, D; slot l is ``hookpoints[l]``) holds NaN or inf, its layer and at how many of the B token positions.

    NaN spreads forward through the model, so the first bad hookpoint is the one nearest to where it entered. Model
    crosscoder slots (``model/hookpoint``) are ordered by model as given, then by forward order. One
    ``isfinite().all()`` on the device (one sync) when everything is finite; the positions are counted only on failure.

    Parameters
    ----------
    acts_BLD : torch.Tensor
        Activations, any device and float dtype.
    hookpoints : sequence of str
        The name of each slot of the L axis.
    where : str
        What produced them, for the message (``"model 'gpt2'"``, ``"activation cache /data/acts"``).
    fix : str
        What to do about it, for the message.
    """
    if bool(torch.isfinite(acts_BLD).all()):
        return
    bad_L = (~torch.isfinite(acts_BLD)).flatten(2).any(dim=-1).sum(dim=0).tolist()
    slots = [h.partition(SOURCE_SEP) for h in hookpoints]  # (model, "/", hookpoint) or (hookpoint, "", "")
    models = list(dict.fromkeys(m for m, sep, _ in slots if sep))

    def key(l: int) -> tuple:
        model, sep, hookpoint = slots[l]
        return (models.index(model), *forward_order(hookpoint), l) if sep else (0, *forward_order(model), l)

    first = min((l for l, n in enumerate(bad_L) if n), key=key)
    n_bad, others = bad_L[first], sum(1 for n in bad_L if n) - 1
    rest = f" (and at {others} other hookpoint{'s' if others != 1 else ''})" if others else ""
    raise FeatgraphError(
        f"{where} produced NaN/inf activations first at {hookpoints[first]} ({_layer_of(slots[first][2] or slots[first][0])}), "
        f"at {n_bad} of {acts_BLD.shape[0]} token positions{rest}; {fix}"
    )


def stop_at_layer(hookpoints: Sequence[str]) -> int | None:
    """Number of blocks the forward pass needs to reach every hookpoint (None = the whole model)."""
    last = -1
    for h in hookpoints:
        m = _BLOCK_RE.match(h)
        if m is None:
            if h in ("hook_embed", "hook_pos_embed", "hook_tokens"):
                continue
            return None  # ln_final, unembed: need everything
        last = max(last, int(m.group(1)))
    return last + 1


@torch.no_grad()
def harvest(
    model: HookedTransformer,
    tokens_NT: torch.Tensor,
    hookpoints: Sequence[str],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    *,
    where: str | None = None,
) -> Iterator[torch.Tensor]:
    """Yield activations ``(b·(T−1), L, D)`` per batch of token rows, BOS positions dropped.

    Raises :class:`FeatgraphError` for an unknown hookpoint, hookpoints of different widths, or NaN/inf
    activations (:func:`check_finite_activations`; ``where`` names the model in that message, by default
    ``model '<cfg.model_name>'``).
    """
    check_hookpoints(model, hookpoints)
    where = where or f"model {getattr(model.cfg, 'model_name', None) or '?'!r}"
    device = device or model.cfg.device
    stop = stop_at_layer(hookpoints)
    names = set(hookpoints)
    for start in range(0, tokens_NT.shape[0], batch_size):
        batch_bT = tokens_NT[start : start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch_bT, names_filter=lambda n: n in names, stop_at_layer=stop)
        _check_fired(hookpoints, set(cache.keys()))
        acts = [cache[h][:, 1:] for h in hookpoints]  # drop BOS: (b, T-1, D) each
        widths = {a.shape[-1] for a in acts}
        if len(widths) != 1 or acts[0].dim() != 3:
            shapes = {h: tuple(cache[h].shape) for h in hookpoints}
            raise FeatgraphError(f"hookpoints must all be (batch, pos, d_model) of one width, got {shapes}; pick residual-stream hookpoints")
        acts_bTLD = torch.stack(acts, dim=2)
        acts_BLD = acts_bTLD.reshape(-1, len(hookpoints), acts_bTLD.shape[-1]).float()
        check_finite_activations(acts_BLD, hookpoints, where)
        yield acts_BLD.to(device)


def _check_fired(hookpoints: Sequence[str], cached: set[str]) -> None:
    """Raise one line for a hookpoint the model has but did not run (TransformerLens gates some, e.g. hook_mlp_in)."""
    silent = [h for h in hookpoints if h not in cached]
    if silent:
        raise FeatgraphError(
            f"hookpoint {silent[0]!r} did not fire in the forward pass: TransformerLens computes it only when switched on "
            f"(set_use_hook_mlp_in, set_use_attn_in, set_use_split_qkv_input, set_use_attn_result); pick one that always "
            f"fires, such as blocks.N.hook_resid_mid or blocks.N.ln2.hook_normalized"
        )


@torch.no_grad()
def estimate_norm_scales(
    model: HookedTransformer, tokens_NT: torch.Tensor, hookpoints: Sequence[str], n_tokens: int = 20_000, batch_size: int = 32
) -> torch.Tensor:
    """Per-hookpoint scales s_l with mean ‖s_l a^l‖ = √d_model over about ``n_tokens`` tokens; shape (L,)."""
    return _scales(harvest(model, tokens_NT, hookpoints, batch_size), model.cfg.d_model, n_tokens)


def _scales(batches: Iterator[torch.Tensor], d_model: int, n_tokens: int) -> torch.Tensor:
    total = None
    count = 0
    for acts_BLD in batches:
        norms = acts_BLD.norm(dim=-1).sum(dim=0)
        total = norms if total is None else total + norms
        count += acts_BLD.shape[0]
        if count >= n_tokens:
            break
    if total is None:
        raise FeatgraphError("no tokens to estimate normalisation from; the token set is empty")
    mean_norm_L = total / count
    return (d_model**0.5 / mean_norm_L.clamp_min(1e-8)).cpu()


class ModelRows:
    """Row source for :class:`ActivationBuffer`: token rows run through the model on demand."""

    def __init__(self, model: HookedTransformer, tokens_NT: torch.Tensor, hookpoints: Sequence[str], batch_size: int = 32):
        check_hookpoints(model, hookpoints)
        self.model, self.tokens_NT, self.hookpoints, self.batch_size = model, tokens_NT, list(hookpoints), batch_size
        self.n_rows, self.tokens_per_row = tokens_NT.shape[0], tokens_NT.shape[1] - 1
        self.n_hookpoints, self.d_model = len(self.hookpoints), model.cfg.d_model

    def activations(self, rows: torch.Tensor, device: str | torch.device) -> Iterator[torch.Tensor]:
        """Activations (b·(T−1), L, D) of the given row indices, in that order."""
        yield from harvest(self.model, self.tokens_NT[rows], self.hookpoints, self.batch_size, device)


def check_models(models: Sequence[HookedTransformer], hookpoints: Sequence[str], names: Sequence[str] | None = None) -> None:
    """Raise one clear line unless every model has ``hookpoints`` and all share one d_model and one vocabulary."""
    names = list(names) if names is not None else [f"#{i}" for i in range(len(models))]
    if len(models) == 0 or len(names) != len(models):
        raise FeatgraphError(f"give one name per model: {len(models)} models, names {names}")
    widths = {n: m.cfg.d_model for n, m in zip(names, models)}
    if len(set(widths.values())) != 1:
        raise FeatgraphError(f"the models disagree on d_model {widths}; a model crosscoder needs models of one width, e.g. a base model and its fine-tune")
    vocabs = {n: m.cfg.d_vocab for n, m in zip(names, models)}
    if len(set(vocabs.values())) != 1:
        raise FeatgraphError(f"the models disagree on d_vocab {vocabs}; they read the same token ids, so they need one tokenizer")
    for n, m in zip(names, models):
        try:
            check_hookpoints(m, hookpoints)
        except FeatgraphError as e:
            raise FeatgraphError(f"model {n!r}: {e}") from None


@torch.no_grad()
def harvest_models(
    models: Sequence[HookedTransformer],
    tokens_NT: torch.Tensor,
    hookpoints: Sequence[str],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    names: Sequence[str] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield activations ``(b·(T−1), M·L, D)`` per batch of token rows: every model runs on the same batch and
    their activations at ``hookpoints`` are concatenated model-major (slot m·L + l is model m at hookpoint l)."""
    check_models(models, hookpoints, names)
    names = list(names) if names is not None else [f"#{i}" for i in range(len(models))]
    device = device or models[0].cfg.device
    for start in range(0, tokens_NT.shape[0], batch_size):
        batch_bT = tokens_NT[start : start + batch_size]
        acts = [next(harvest(m, batch_bT, hookpoints, batch_size=len(batch_bT), device=device, where=f"model {n!r}"))
                for m, n in zip(models, names)]
        yield torch.cat(acts, dim=1)


@torch.no_grad()
def estimate_model_norm_scales(
    models: Sequence[HookedTransformer], tokens_NT: torch.Tensor, hookpoints: Sequence[str], n_tokens: int = 20_000,
    batch_size: int = 32,
) -> torch.Tensor:
    """Scales s_{m,l} with mean ‖s_{m,l} a^{m,l}‖ = √d_model for each model m and hookpoint l, on the same tokens;
    shape (M·L,), model-major like ``cfg.all_hookpoints`` of a model crosscoder."""
    batches = harvest_models(models, tokens_NT, hookpoints, batch_size, device="cpu")
    return _scales(batches, models[0].cfg.d_model, n_tokens)


class MultiModelRows:
    """Row source for :class:`ActivationBuffer` over several models: each batch of token rows runs through every
    model, activations concatenated model-major; ``hookpoints`` are the ``model/hookpoint`` slot names."""

    def __init__(
        self, models: Sequence[HookedTransformer], names: Sequence[str], tokens_NT: torch.Tensor, hookpoints: Sequence[str],
        batch_size: int = 32,
    ):
        check_models(models, hookpoints, names)
        self.models, self.names, self.tokens_NT, self.batch_size = list(models), list(names), tokens_NT, batch_size
        self.model_hookpoints = list(hookpoints)
        self.hookpoints = [source_name(n, h) for n in self.names for h in self.model_hookpoints]
        self.n_rows, self.tokens_per_row = tokens_NT.shape[0], tokens_NT.shape[1] - 1
        self.n_hookpoints, self.d_model = len(self.hookpoints), models[0].cfg.d_model

    @classmethod
    def from_slots(cls, models: Mapping[str, HookedTransformer], tokens_NT: torch.Tensor, slots: Sequence[str], batch_size: int = 32) -> "MultiModelRows":
        """Rows for the ``model/hookpoint`` slots ``slots`` (e.g. ``cfg.all_hookpoints``) from models keyed by name."""
        pairs = [split_source(s) for s in slots]
        names = list(dict.fromkeys(m for m, _ in pairs))
        hookpoints = [h for m, h in pairs if m == names[0]]
        missing = [n for n in names if n not in models]
        if missing:
            raise FeatgraphError(f"no model named {missing[0]!r} among {sorted(models)}; pass every model the crosscoder reads, keyed by its name")
        rows = cls([models[n] for n in names], names, tokens_NT, hookpoints, batch_size)
        if rows.hookpoints != list(slots):
            raise FeatgraphError(f"slots {list(slots)} are not models × hookpoints in model-major order; pass cfg.all_hookpoints of a model crosscoder")
        return rows

    def activations(self, rows: torch.Tensor, device: str | torch.device) -> Iterator[torch.Tensor]:
        """Activations (b·(T−1), M·L, D) of the given row indices, in that order."""
        yield from harvest_models(self.models, self.tokens_NT[rows], self.model_hookpoints, self.batch_size, device, self.names)


def rank_rows(n_rows: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``n_rows`` training rows among ``world`` data-parallel ranks, sorted: the positions
    ``rank, rank + world, ...`` of one permutation drawn from ``seed``.

    Every rank draws the same permutation from the same seed, so the shares are disjoint and together hold every row,
    and a run is reproducible. The permutation keeps a corpus stored in order (by document, by source) from giving one
    rank a biased slice.

    >>> [rank_rows(5, r, 2, seed=0).tolist() for r in range(2)]
    [[1, 2, 4], [0, 3]]
    """
    if not 0 <= rank < world:
        raise FeatgraphError(f"rank {rank} is not in 0..{world - 1}; pass the rank and world size of torch.distributed")
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    return order[rank::world].sort().values


class RowSubset:
    """A row source restricted to some of its rows (a torchrun rank's share): row i here is row ``rows[i]`` there.

    Wraps anything :class:`ActivationBuffer` takes as ``source`` (:class:`ModelRows`, :class:`MultiModelRows`, an
    :class:`~crosscoder.activation_cache.ActivationCache`).
    """

    def __init__(self, source, rows: torch.Tensor):
        self.source, self.rows = source, torch.as_tensor(rows, dtype=torch.long)
        self.hookpoints, self.tokens_per_row = source.hookpoints, source.tokens_per_row
        self.n_hookpoints, self.d_model = source.n_hookpoints, source.d_model
        self.n_rows = len(self.rows)

    def activations(self, rows: torch.Tensor, device: str | torch.device) -> Iterator[torch.Tensor]:
        """Activations (b·(T−1), L, D) of the given rows of this subset, in that order."""
        yield from self.source.activations(self.rows[rows], device)


def _fill_from(source, rows: torch.Tensor, out_BLD: torch.Tensor, scale_L1: torch.Tensor, device: str | torch.device) -> None:
    """Write the activations of ``rows`` (the first ``len(out_BLD)`` of their tokens), times ``scale_L1``, into ``out_BLD``."""
    pos, end = 0, out_BLD.shape[0]
    for acts_BLD in source.activations(rows, device):
        take = min(acts_BLD.shape[0], end - pos)
        out_BLD[pos : pos + take] = acts_BLD[:take].to(out_BLD.dtype) * scale_L1
        pos += take
        if pos >= end:
            break


_IN_FLIGHT: "weakref.WeakSet[_Prefetch]" = weakref.WeakSet()


@atexit.register
def _join_in_flight() -> None:
    """At interpreter exit, wait for refills still running: a daemon thread left inside a torch op while the
    interpreter tears down aborts the process ("terminate called without an active exception")."""
    for prefetch in list(_IN_FLIGHT):
        prefetch.thread.join()


class _Prefetch:
    """One refill harvested on a daemon thread (on CUDA in a side stream) while training reads the pool.

    The rows and the pool's next permutation were drawn by the buffer before the thread started; ``resume_state`` is
    the buffer's row order, row pointer and generator state before those draws (what a checkpoint records). The thread
    holds no reference to the buffer, so a buffer dropped mid-refill is collected (and its ``__del__`` joins it); a
    refill still running at interpreter exit is joined by an ``atexit`` hook.
    """

    def __init__(self, source, rows: torch.Tensor, out_BLD: torch.Tensor, scale_L1: torch.Tensor, device: str | torch.device,
                 stream, perm: torch.Tensor, resume_state: tuple):
        self.perm, self.resume_state = perm, resume_state
        self.error: BaseException | None = None
        self.done = None  # a CUDA event recorded on the side stream after the last write
        self.thread = threading.Thread(target=self._run, args=(source, rows, out_BLD, scale_L1, device, stream),
                                       name="featgraph-prefetch", daemon=True)
        _IN_FLIGHT.add(self)
        self.thread.start()

    def _run(self, source, rows, out_BLD, scale_L1, device, stream) -> None:
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                _fill_from(source, rows, out_BLD, scale_L1, device)
                if stream is not None:
                    self.done = torch.cuda.Event()
                    self.done.record(stream)
        except BaseException as e:  # noqa: BLE001 — handed to the main thread, which re-raises it in wait()
            self.error = e
        finally:
            _IN_FLIGHT.discard(self)

    def wait(self, device: str | torch.device) -> None:
        """Block until the refill is written; re-raise, in this thread, the exception the worker raised."""
        self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.done is not None:
            torch.cuda.current_stream(torch.device(device)).wait_event(self.done)


class ActivationBuffer:
    """A shuffled pool of normalised activations that refills as it empties.

    Holds ``n_buffer_tokens`` activations (B, L, D) on ``device``; every time half of it has been served, that
    half is refilled from the next rows of ``source`` (cycling through them in an order reshuffled each pass)
    and the pool is reshuffled. All randomness flows from ``seed``. The source is a :class:`ModelRows` (built
    from ``model`` and ``tokens_NT``), a :class:`MultiModelRows` (built when ``model`` is a mapping name → model
    and ``hookpoints`` are a model crosscoder's ``model/hookpoint`` slots), an on-disk
    :class:`~crosscoder.activation_cache.ActivationCache` or a :class:`RowSubset` of one.

    With ``prefetch`` the next refill is harvested on one background thread (on CUDA in a side stream) while the
    current half is served, so running the model overlaps training (SAELens prefetches the same way). The stream is
    the same with and without it: the refill's rows and the pool's next permutation are drawn from the generator, in
    the same order, as soon as the previous refill is done, and the worker only computes activations into a staging
    half (half the pool's memory again). An exception in the worker (a NaN from :func:`check_finite_activations`) is
    raised again, the same object, by the :meth:`next_batch` that needs that refill. :meth:`state_dict` does not wait
    for an in-flight refill: it records the generator and row order as they were before that refill's draws, which is
    exactly the synchronous buffer's state, so checkpoints are interchangeable between the two modes;
    :meth:`load_state_dict` waits for and discards the in-flight refill, then starts one from the loaded state.

    While a refill is in flight the worker runs the model, and TransformerLens hooks are per model, not per thread:
    :meth:`close` (or leave a ``with`` block) before running the model elsewhere. ``close`` waits for the in-flight
    refill and keeps it, so the stream goes on unchanged, with later refills in the calling thread. The worker is a
    daemon thread and is joined by ``close`` and by ``__del__``.
    """

    def __init__(
        self,
        model: HookedTransformer | Mapping[str, HookedTransformer] | None,
        tokens_NT: torch.Tensor | None,
        hookpoints: Sequence[str],
        norm_scale_L: torch.Tensor,
        batch_size: int,
        n_buffer_tokens: int = 65_536,
        model_batch_size: int = 32,
        seed: int = 0,
        device: str | torch.device = "cpu",
        source=None,
        prefetch: bool = False,
    ):
        self._pending: _Prefetch | None = None
        if source is None:
            if isinstance(model, Mapping):
                source = MultiModelRows.from_slots(model, tokens_NT, hookpoints, model_batch_size)
            else:
                source = ModelRows(model, tokens_NT, hookpoints, model_batch_size)
        self.source = source
        if list(self.source.hookpoints) != list(hookpoints):
            raise FeatgraphError(f"activation source holds {list(self.source.hookpoints)}, not {list(hookpoints)}; use a cache of these hookpoints")
        if self.source.n_rows == 0:
            raise FeatgraphError("the activation buffer has no token rows to stream; give it at least one training row")
        self.scale_L1 = norm_scale_L.to(device)[:, None]
        self.batch_size, self.device, self.prefetch = batch_size, device, prefetch
        self.gen = torch.Generator().manual_seed(seed)
        per_row = self.source.tokens_per_row
        self.n_buffer = max(n_buffer_tokens, 2 * batch_size)
        self.n_buffer = (self.n_buffer // per_row + 1) * per_row
        self.row_order = torch.randperm(self.source.n_rows, generator=self.gen)
        self.next_row = 0
        shape = (self.n_buffer, self.source.n_hookpoints, self.source.d_model)
        self.pool_BLD = torch.empty(shape, device=device)
        self._staging_BLD = torch.empty((self.n_buffer // 2, *shape[1:]), device=device) if prefetch else None
        self._stream = torch.cuda.Stream(torch.device(device)) if prefetch and torch.device(device).type == "cuda" else None
        self._fill(0, self.n_buffer)
        self.pointer = 0
        self._launch()

    def _next_rows(self, n_rows: int) -> torch.Tensor:
        rows = []
        while n_rows > 0:
            if self.next_row >= len(self.row_order):
                self.row_order = torch.randperm(self.source.n_rows, generator=self.gen)
                self.next_row = 0
            take = self.row_order[self.next_row : self.next_row + n_rows]
            self.next_row += len(take)
            n_rows -= len(take)
            rows.append(take)
        return torch.cat(rows)

    def _fill(self, start: int, end: int) -> None:
        """Synchronously: draw the rows, write their activations into pool[start:end], draw and apply a permutation."""
        rows = self._next_rows(-(-(end - start) // self.source.tokens_per_row))
        _fill_from(self.source, rows, self.pool_BLD[start:end], self.scale_L1, self.device)
        perm = torch.randperm(self.n_buffer, generator=self.gen).to(self.device)
        self.pool_BLD = self.pool_BLD[perm]

    def _launch(self) -> None:
        """Start harvesting the next refill of the front half in the background (when prefetching)."""
        if not self.prefetch:
            return
        resume_state = (self.row_order, self.next_row, self.gen.get_state())
        half = self.n_buffer // 2
        rows = self._next_rows(-(-half // self.source.tokens_per_row))
        perm = torch.randperm(self.n_buffer, generator=self.gen)  # drawn now: the same order as _fill's draws
        if self._stream is not None:  # the staging half was last read on the main stream
            self._stream.wait_stream(torch.cuda.current_stream(torch.device(self.device)))
        self._pending = _Prefetch(self.source, rows, self._staging_BLD, self.scale_L1, self.device, self._stream, perm, resume_state)

    def _refill_front(self) -> None:
        """Refill the served front half (from the finished prefetch, or synchronously) and reshuffle the pool."""
        half = self.n_buffer // 2
        pending, self._pending = self._pending, None
        if pending is None:
            self._fill(0, half)
        else:
            pending.wait(self.device)
            self.pool_BLD[:half].copy_(self._staging_BLD)
            self.pool_BLD = self.pool_BLD[pending.perm.to(self.device)]
        self.pointer = 0
        self._launch()

    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly (for checkpoints); the same with and without prefetch.

        The pool is a copy: the next refill writes into the buffer's own pool in place.
        """
        if self._pending is not None:
            row_order, next_row, gen_state = self._pending.resume_state
        else:
            row_order, next_row, gen_state = self.row_order, self.next_row, self.gen.get_state()
        return {"pool_BLD": self.pool_BLD.clone(), "pointer": self.pointer, "row_order": row_order, "next_row": next_row,
                "generator": gen_state}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["pool_BLD"].shape) != tuple(self.pool_BLD.shape):
            raise FeatgraphError(f"buffer state of shape {tuple(state['pool_BLD'].shape)} does not fit this buffer {tuple(self.pool_BLD.shape)}; resume with the same buffer size and hookpoints")
        pending, self._pending = self._pending, None
        if pending is not None:  # its rows were drawn from the state being replaced
            pending.thread.join()
        self.pool_BLD = state["pool_BLD"].to(self.device, copy=True)  # refills write into the pool in place
        self.pointer, self.next_row = int(state["pointer"]), int(state["next_row"])
        self.row_order = state["row_order"].clone()
        self.gen.set_state(state["generator"])
        self._launch()

    def next_batch(self) -> torch.Tensor:
        """A batch (batch_size, L, D) of normalised activations."""
        if self.pointer + self.batch_size > self.n_buffer // 2:
            self._refill_front()  # the served half sits at the front: refill it, reshuffle all
        # A copy, not a view: the next refill writes into the pool in place and would change a batch still held.
        batch = self.pool_BLD[self.pointer : self.pointer + self.batch_size].clone()
        self.pointer += self.batch_size
        return batch

    def close(self) -> None:
        """Stop prefetching: wait for the in-flight refill (kept, so the stream goes on unchanged) and start no more."""
        self.prefetch = False
        pending = getattr(self, "_pending", None)  # absent when __init__ failed early
        if pending is not None:
            pending.thread.join()

    def __enter__(self) -> "ActivationBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 — never raise from a finaliser (e.g. at interpreter exit)
            pass
