"""Streamed sufficient statistics of feature activations.

Feature activations arrive in chunks ``(n, F)`` on any device; what is kept grows with F and with the number of
feature pairs that ever fire together, never with tokens × features:

* per feature: active count n_i, Σ f_i, Σ f_i², max f_i, and the top-m activations with their token indices;
* per co-active pair (symmetric): co-count C_ij = #{t : f_i(t) > θ_i and f_j(t) > θ_j} and co-moment
  M_ij = Σ_t f_i(t) f_j(t) (exact: the product is zero wherever either feature is silent);
* for feature dashboards (``dashboards=True``, the default): a histogram of each feature's non-zero activations over
  fixed log-spaced bins (:func:`hist_edges`; exact counts, so they add up across chunks and ranks), and a uniform
  random sample of ``sample`` of its non-zero activations with their token indices, kept as a *bottom-k sketch*:
  every (token, feature) pair gets a pseudo-random key u ∈ [0, 1) from a splitmix64 mix of (seed, token index, feature) (:func:`sample_keys`) and a feature
  keeps the ``sample`` activations with the smallest keys — a uniform sample without replacement (Cohen & Kaplan,
  "Summarizing data using bottom-k sketches", PODC 2007) that depends only on the seed and the data, never on the
  chunking, the device or how tokens are split over ranks, so :meth:`CoactivationStats.merge` is exact. Quantile
  examples are drawn from it (:mod:`featgraph.dashboards`).

Two accumulators, one result. On the host (any CPU, and a GPU whose memory cannot hold the triangle below) the
chunk's positive entries are found by one compiled pass over it, and compiled loops over those entries add the
per-feature statistics and every co-active pair's co-count and co-moment (:mod:`featgraph.pair_sums`: L0·(L0 + 1)/2
updates a token, into a packed F × F triangle while it fits ``dense_bytes`` — 2 GiB or a quarter of the machine's
memory — else into a hash table of the pairs kept, O(F + pairs kept) memory). On a GPU, while the same triangle with
int64 counts, 8·F(F + 1) bytes, fits in ``DENSE_MEMORY_FRACTION`` (25 %) of the device's free memory (or up to
``dense_limit`` features when that is given), everything stays on the device: per-feature reductions over the chunk,
and the pairs scattered into the triangle (sorted keys and segment sums: deterministic). ``co_count`` and
``co_moment`` are always returned as symmetric scipy CSR matrices (the diagonal holds each feature's own sums). Sums
are float64; statistics of disjoint token sets add up (:meth:`CoactivationStats.merge`), and
:meth:`CoactivationStats.all_reduce` combines ranks under torch.distributed.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import scipy.sparse as sp
import torch

from .pair_sums import DENSE_BYTES, PairSums, csr_of_nonzero, feature_pass

log = logging.getLogger(__name__)

__all__ = ["CoactivationStats", "DENSE_MEMORY_FRACTION", "host_dense_bytes", "feature_max", "save_stats", "load_stats", "hist_edges", "sample_keys", "HIST_BINS"]

HIST_LOW, HIST_DECADES, HIST_PER_DECADE = 1e-3, 7, 12
"""Histogram bins: 12 per decade from 10⁻³ to 10⁴, with one bin below (0, 10⁻³) and one above [10⁴, ∞)."""
HIST_BINS = HIST_DECADES * HIST_PER_DECADE + 2


def hist_edges() -> np.ndarray:
    """The ``HIST_BINS + 1`` edges of the activation histogram: 0, 10⁻³, 10^(−3 + 1/12), …, 10⁴, ∞ (bin b holds
    edges[b] ≤ f < edges[b + 1])."""
    inner = 10.0 ** (np.log10(HIST_LOW) + np.arange(HIST_DECADES * HIST_PER_DECADE + 1) / HIST_PER_DECADE)
    return np.r_[0.0, inner, np.inf]


def _hist_bin(vals: np.ndarray) -> np.ndarray:
    """Bin of each positive activation in :func:`hist_edges` (vectorised; float64 log)."""
    b = np.floor((np.log10(vals.astype(np.float64)) - np.log10(HIST_LOW)) * HIST_PER_DECADE).astype(np.int64) + 1
    return np.clip(b, 0, HIST_BINS - 1)


_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def sample_keys(token_index: np.ndarray, feature: np.ndarray, seed: int) -> np.ndarray:
    """Pseudo-random keys in [0, 1), one per (token index, feature) pair: splitmix64's finaliser (Steele et al., 2014)
    of token·φ + feature·M₂ + seed·M₁ (mod 2⁶⁴), top 53 bits. Deterministic, vectorised, independent of the order
    in which pairs are seen."""
    with np.errstate(over="ignore"):
        z = (np.asarray(token_index).astype(np.uint64) * _GOLD + np.asarray(feature).astype(np.uint64) * _M2
             + np.uint64(seed % 2**64) * _M1)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def feature_max(chunks) -> np.ndarray:
    """Per-feature maximum over an iterable of ``(n, F)`` chunks — the first pass for relative thresholds."""
    out = None
    for f_nF in chunks:
        m = f_nF.max(dim=0).values.double().cpu().numpy()
        _check_finite_chunk(m)  # torch's max propagates NaN
        out = m if out is None else np.maximum(out, m)
    if out is None:
        raise ValueError("feature_max() got no chunks")
    return out


def _check_finite_chunk(per_feature_F: np.ndarray) -> None:
    """Raise one FeatgraphError line when a per-feature reduction of a chunk (its sum or max, already on the host) is
    NaN/inf: the chunk held a non-finite activation (a sum of float32 values cannot overflow float64), so the
    check costs no device work."""
    bad = np.flatnonzero(~np.isfinite(per_feature_F))
    if len(bad):
        from crosscoder.errors import FeatgraphError

        raise FeatgraphError(
            f"feature activations hold NaN/inf (first at feature {int(bad[0])}; {len(bad)} feature{'s' if len(bad) != 1 else ''} "
            "affected), which would poison the "
            "graph statistics; the crosscoder that made them is corrupt or its training diverged: retrain it"
        )


DENSE_MEMORY_FRACTION = 0.25
"""Share of the device's free memory the GPU pair triangle may take: 8·F(F+1) bytes (int64 counts + float64
moments; 2.1 GB at F = 16,384, 34 GB at F = 65,536)."""


def _dense_fits(F: int, device: torch.device, fraction: float = DENSE_MEMORY_FRACTION) -> bool:
    """Whether the device pair triangle for F features (int64 count + float64 moment, 8·F(F+1) bytes) fits in
    ``fraction`` of ``device``'s free memory."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except Exception:  # no answer from the CUDA runtime: the former fixed limit
        return F <= 4096
    return 8 * F * (F + 1) <= fraction * free


class CoactivationStats:
    """Sufficient statistics for co-activation measures over F features.

    Parameters
    ----------
    n_features : int
        F.
    threshold : float or array of shape (F,)
        θ: a feature is *active* on a token when f > θ (0: any positive activation). For "active above a fraction
        of the feature's max", pass ``frac * feature_max(...)`` from a first pass.
    top_m : int
        How many top activations (and their token indices) to keep per feature, for contexts.
    dense_limit : int or None
        On CUDA, keep everything on the device (the pair triangle included) up to this many features; None: while
        the triangle fits in ``DENSE_MEMORY_FRACTION`` of the device's free memory.
    dense : bool or None
        Force the device path (True; on a CPU tensor it runs there, for tests) or the host path (False); None chooses
        by device and ``dense_limit``.
    dashboards : bool
        Also keep each feature's activation histogram and a random sample of its non-zero activations (for feature
        dashboards); about (8·HIST_BINS + 24·sample) bytes per feature (1.5 KB with the defaults).
    sample : int
        Non-zero activations kept per feature in the random sample (the quantile examples are drawn from it).
    seed : int
        Seed of the sample's keys (:func:`sample_keys`): the only randomness here.
    store : {"auto", "triangle", "hash"}
        Host pair store (:class:`featgraph.pair_sums.PairSums`): a packed F × F triangle (12·F(F+1)/2 bytes) or a
        hash table of the pairs kept (34–69 bytes a pair); "auto": the triangle while it fits ``dense_bytes``.
    dense_bytes : int or None
        Bound of the triangle store; None: :func:`host_dense_bytes` (2 GiB or a quarter of the machine's memory,
        whichever is smaller).
    """

    def __init__(
        self, n_features: int, threshold: float | np.ndarray = 0.0, top_m: int = 8, dense_limit: int | None = None, dense: bool | None = None,
        dashboards: bool = True, sample: int = 32, seed: int = 0, store: str = "auto", dense_bytes: int | None = None,
    ):
        F, M = n_features, top_m
        if sample < 1:
            raise ValueError(f"sample must be >= 1, got {sample}")
        self.n_features, self.top_m, self.dense_limit, self.dense = F, M, dense_limit, dense
        if dense_bytes is None:
            dense_bytes = host_dense_bytes()
        self.dashboards, self.sample, self.seed = dashboards, sample, seed
        self.threshold = np.asarray(threshold, dtype=np.float64)
        if self.threshold.ndim not in (0, 1) or (self.threshold.ndim == 1 and len(self.threshold) != F):
            raise ValueError(f"threshold must be a scalar or have one value per feature ({F})")
        self.n_tokens = 0
        self.count_F = np.zeros(F, dtype=np.int64)
        self.sum_F = np.zeros(F, dtype=np.float64)
        self.sumsq_F = np.zeros(F, dtype=np.float64)
        self.max_F = np.zeros(F, dtype=np.float64)
        self.top_val_FM = np.full((F, M), -np.inf, dtype=np.float64)
        self.top_idx_FM = np.full((F, M), -1, dtype=np.int64)
        self.store, self.dense_bytes = store, dense_bytes
        self._count = None  # the device path's torch (F, F) sums
        self._moment = None
        self._pairs: PairSums | None = None  # the host path's pair sums (of the tokens added since _base)
        self._base: tuple[sp.csr_matrix, sp.csr_matrix] | None = None  # pair statistics merged or loaded in
        self._upper: tuple[sp.csr_matrix, sp.csr_matrix] | None = None  # results, built on first read
        self._last_nnz = 0  # positive entries of the last dense chunk: the next one's first guess
        self._csr: tuple[sp.csr_matrix, sp.csr_matrix] | None = None
        # Dashboard statistics (hist_FB None and a zero-width buffer without ``dashboards``). The sample buffer holds up to 2·sample entries per
        # feature (filled slots first); when a row would overflow it is compacted to its ``sample`` smallest keys and
        # ``sample_kmax_F`` (the largest key kept, +inf until then) then rejects later pairs that cannot enter.
        C = 2 * sample if dashboards else 0
        self.hist_FB = np.zeros((F, HIST_BINS), dtype=np.int64) if dashboards else None
        self.sample_val_FC = np.zeros((F, C), dtype=np.float32)
        self.sample_idx_FC = np.full((F, C), -1, dtype=np.int64)
        self.sample_fill_F = np.zeros(F, dtype=np.int64)
        self.sample_kmax_F = np.full(F, np.inf)

    def __repr__(self) -> str:
        return f"CoactivationStats(n_features={self.n_features}, n_tokens={self.n_tokens}, dense={self.dense})"

    # ---- accumulation ----------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, f_nF: torch.Tensor, token_index_n: torch.Tensor | None = None) -> None:
        """Add a chunk of activations ``(n, F)`` (any device); ``token_index_n`` labels its tokens for contexts.
        Activations ≤ 0 are silent (what ReLU, TopK and JumpReLU codes give)."""
        n, F = f_nF.shape
        if F != self.n_features:
            raise ValueError(f"chunk has {F} features, stats were made for {self.n_features}")
        if token_index_n is None:
            token_index_n = torch.arange(self.n_tokens, self.n_tokens + n)
        f_nF = f_nF.float()
        if self.dense is None:
            self.dense = f_nF.is_cuda and (F <= self.dense_limit if self.dense_limit is not None else _dense_fits(F, f_nF.device))
        if self.dense:
            self._update_on_device(f_nF, token_index_n)
        else:
            if f_nF.is_cuda:  # the positive entries found on the device, the rest on the host
                rows, cols = (f_nF > 0).nonzero(as_tuple=True)
                vals = f_nF[rows, cols]
                _check_finite_chunk(f_nF.sum(0).double().cpu().numpy())
                rows, cols, vals = rows.cpu().numpy(), cols.cpu().numpy(), vals.cpu().numpy()
                indptr = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
            else:
                indptr, cols, vals, bad = csr_of_nonzero(f_nF.numpy(), capacity=self._last_nnz + self._last_nnz // 4)
                self._last_nnz = len(cols)
                if bad:  # before anything is added: a bad chunk leaves the statistics as they were
                    _check_finite_chunk(f_nF.sum(0).double().numpy())
            self.update_nonzero(indptr, cols, vals, token_index_n.cpu().numpy())
            return
        self._csr = self._upper = None
        self.n_tokens += n

    def update_nonzero(self, indptr: np.ndarray, cols: np.ndarray, vals: np.ndarray, token_index_n: np.ndarray | None = None) -> None:
        """Add a chunk of n tokens given by its positive entries in CSR form (host arrays): ``indptr`` (n + 1,),
        ``cols`` ascending within each row, ``vals`` (> 0, finite) — what :meth:`update` does after finding them,
        for callers that already hold sparse codes (a TopK encoder's indices and values)."""
        n = len(indptr) - 1
        if token_index_n is None:
            token_index_n = np.arange(self.n_tokens, self.n_tokens + n)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        vals = np.ascontiguousarray(vals, dtype=np.float32)
        rows = np.repeat(np.arange(n), np.diff(indptr))
        tidx = np.ascontiguousarray(token_index_n, dtype=np.int64)
        feature_pass(rows, cols, vals, self.threshold, tidx, self.count_F, self.sum_F, self.sumsq_F, self.max_F,
                     self.top_val_FM, self.top_idx_FM)
        if self._pairs is None:
            self._pairs = PairSums(self.n_features, self.store, self.dense_bytes)
            log.debug("pair statistics of %d features in the %s store", self.n_features, self._pairs.store)
        counted = None if (self.threshold.ndim == 0 and self.threshold == 0) else vals > (self.threshold if self.threshold.ndim == 0 else self.threshold[cols])
        self._pairs.add(indptr, cols, vals, counted)
        if self.dashboards:
            self._update_dashboards(cols, vals, tidx[rows])
        self._csr = self._upper = None
        self.n_tokens += n

    def _update_on_device(self, f_nF: torch.Tensor, token_index_n: torch.Tensor) -> None:
        """The device path (a GPU while the pair triangle fits): per-feature reductions over the dense chunk and the
        pairs scattered into a triangle, all on the device; the host sees per-feature sums and dashboard entries."""
        f64_nF = f_nF.double()  # accumulate in float64 so shards add up to one pass
        chunk_sum_F = f64_nF.sum(0).cpu().numpy()
        _check_finite_chunk(chunk_sum_F)  # before anything is added: a bad chunk leaves the statistics as they were
        thr = torch.as_tensor(self.threshold, dtype=torch.float32, device=f_nF.device)
        active_nF = f_nF > thr
        self.count_F += active_nF.sum(0).cpu().numpy()
        self.sum_F += chunk_sum_F
        self.sumsq_F += f64_nF.pow(2).sum(0).cpu().numpy()
        self.max_F = np.maximum(self.max_F, f_nF.max(0).values.double().cpu().numpy())
        self._update_top(f_nF, token_index_n)
        rows, cols = (f_nF > 0).nonzero(as_tuple=True)  # row-major: columns ascending within a row
        vals = f_nF[rows, cols]
        counted = None if (self.threshold.ndim == 0 and self.threshold == 0) else active_nF[rows, cols]
        self._device_pairs(rows, cols, vals, counted, f_nF.shape[0])
        if self.dashboards:
            self._update_dashboards(cols.cpu().numpy(), vals.cpu().numpy(), token_index_n.cpu().numpy()[rows.cpu().numpy()])

    def _device_pairs(self, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, counted: torch.Tensor | None, n: int) -> None:
        """Every pair of a token's positive entries (e ≤ e' within a row) scattered into the packed upper triangle on
        the device (the layout of :class:`featgraph.pair_sums.PairSums`): the products summed per pair with a stable
        sort and segment sums (deterministic, unlike atomic adds), the counts with ``index_add_`` (integers: exact)."""
        F, dev = self.n_features, rows.device
        if self._count is None:
            T = F * (F + 1) // 2
            self._count = torch.zeros(T, dtype=torch.int64, device=dev)
            self._moment = torch.zeros(T, dtype=torch.float64, device=dev)
        nnz = rows.numel()
        if nnz == 0:
            return
        ends_n = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        entry = torch.arange(nnz, device=dev)
        length = ends_n[rows] - entry  # entry e pairs with e, ..., its row's last entry
        first = torch.repeat_interleave(entry, length)
        start = torch.cumsum(length, 0) - length
        second = torch.arange(first.numel(), device=dev) - torch.repeat_interleave(start - entry, length)
        i, j = cols[first], cols[second]
        key = i * F - i * (i + 1) // 2 + j
        prod = vals[first].double() * vals[second].double()
        key, order = torch.sort(key, stable=True)  # equal keys keep token order
        uniq, seg = torch.unique_consecutive(key, return_counts=True)
        self._moment[uniq] += torch.segment_reduce(prod[order], "sum", lengths=seg)
        both = torch.ones_like(first, dtype=torch.bool) if counted is None else counted[first] & counted[second]
        self._count.index_add_(0, key[both[order]], torch.ones(int(both.sum()), dtype=torch.int64, device=dev))

    def _update_top(self, f_nF: torch.Tensor, token_index_n: torch.Tensor) -> None:
        k = min(self.top_m, f_nF.shape[0])
        vals_kF, rows_kF = f_nF.topk(k, dim=0)
        vals = np.concatenate([self.top_val_FM, vals_kF.T.double().cpu().numpy()], axis=1)
        idx = np.concatenate([self.top_idx_FM, token_index_n.cpu().numpy()[rows_kF.T.cpu().numpy()]], axis=1)
        vals = np.where(vals > 0, vals, -np.inf)  # a silent token is not a top context
        self.top_val_FM, self.top_idx_FM = _top_m(vals, idx, self.top_m)

    def _update_dashboards(self, cols: np.ndarray, vals: np.ndarray, tidx: np.ndarray) -> None:
        """Histogram and bottom-k sample of the positive activations ``vals`` of features ``cols`` at tokens ``tidx``."""
        F, R = self.n_features, self.sample
        self.hist_FB += np.bincount(cols * HIST_BINS + _hist_bin(vals), minlength=F * HIST_BINS).reshape(F, HIST_BINS)
        key = sample_keys(tidx, cols, self.seed)
        keep = key < self.sample_kmax_F[cols]  # pairs whose key cannot enter the sample are dropped first
        cols, key, vals, tidx = cols[keep], key[keep], vals[keep], tidx[keep]
        order = np.lexsort((key, cols))  # by feature, then key
        cols, vals, tidx = cols[order], vals[order], tidx[order]
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]]) if len(cols) else np.zeros(0, dtype=np.int64)
        counts = np.diff(np.r_[starts, len(cols)])
        feats = cols[starts]
        rank = np.arange(len(cols)) - np.repeat(starts, counts)
        sel = rank < R  # at most R new entries per feature per chunk
        cols, vals, tidx, rank, counts = cols[sel], vals[sel], tidx[sel], rank[sel], np.minimum(counts, R)
        full = feats[self.sample_fill_F[feats] + counts > 2 * R]
        if len(full):
            self._compact_sample(full)
        slot = self.sample_fill_F[cols] + rank
        self.sample_val_FC[cols, slot] = vals
        self.sample_idx_FC[cols, slot] = tidx
        self.sample_fill_F[feats] += counts

    def _compact_sample(self, feats: np.ndarray) -> None:
        """Keep only the ``sample`` smallest keys in the rows ``feats`` of the sample buffer."""
        R = self.sample
        idx = self.sample_idx_FC[feats]
        key = np.where(idx >= 0, sample_keys(np.maximum(idx, 0), feats[:, None], self.seed), np.inf)
        part = np.argpartition(key, R - 1, axis=1)[:, :R]
        kept_key = np.take_along_axis(key, part, axis=1)
        vals, idx = np.take_along_axis(self.sample_val_FC[feats], part, axis=1), np.take_along_axis(idx, part, axis=1)
        self.sample_val_FC[feats] = 0.0
        self.sample_idx_FC[feats] = -1
        self.sample_val_FC[feats, :R], self.sample_idx_FC[feats, :R] = vals, np.where(np.isfinite(kept_key), idx, -1)
        self.sample_fill_F[feats] = np.isfinite(kept_key).sum(1)
        self.sample_kmax_F[feats] = np.where(self.sample_fill_F[feats] == R, kept_key.max(1), np.inf)

    # ---- results ---------------------------------------------------------------------------------
    def upper(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(co-count, co-moment) as upper-triangle (F, F) CSR matrices, the diagonal included (what every reader
        needs: the pairs are symmetric); the co-count stores only non-zero counts. Built in O(pairs), no sort."""
        if self._upper is None:
            F = self.n_features
            parts = []
            if self._count is not None:  # the device path: its triangle, read as the host store
                tri = PairSums.from_triangle(self._count.cpu().numpy(), self._moment.cpu().numpy())
                parts.append(_upper_csr(*tri.to_coo(), F))
            elif self._pairs is not None:
                parts.append(_upper_csr(*self._pairs.to_coo(), F))
            if self._base is not None:
                parts.append(self._base)
            if not parts:
                self._upper = (sp.csr_matrix((F, F), dtype=np.int64), sp.csr_matrix((F, F), dtype=np.float64))
            elif len(parts) == 1:
                self._upper = parts[0]
            else:
                self._upper = (_sorted(parts[0][0] + parts[1][0]), _sorted(parts[0][1] + parts[1][1]))
        return self._upper

    def _symmetric(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        if self._csr is None:
            self._csr = tuple(_sorted(U + sp.triu(U, k=1).T) for U in self.upper())
        return self._csr

    @property
    def co_count(self) -> sp.csr_matrix:
        """C_ij, symmetric (F, F) CSR; the diagonal holds n_i. Built from :meth:`upper` on first use (readers that
        need only pairs use :meth:`pairs` and :meth:`co_count_of`, which skip it)."""
        return self._symmetric()[0]

    @property
    def co_moment(self) -> sp.csr_matrix:
        """M_ij = Σ_t f_i f_j, symmetric (F, F) CSR."""
        return self._symmetric()[1]

    @property
    def frequency_F(self) -> np.ndarray:
        """Fraction of tokens on which each feature is active."""
        return self.count_F / max(self.n_tokens, 1)

    def nonzero_count(self, feature: int) -> int:
        """How many tokens gave ``feature`` a non-zero activation (the histogram's total; needs ``dashboards``)."""
        return int(self.hist_FB[feature].sum())

    def activation_sample(self, feature: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The random sample of ``feature``'s non-zero activations: (values, token indices, keys), in key order —
        the min(``sample``, n) pairs with the smallest keys, a uniform sample without replacement of its n non-zero
        activations."""
        fill = int(self.sample_fill_F[feature])
        idx = self.sample_idx_FC[feature, :fill]
        key = sample_keys(idx, np.full(fill, feature), self.seed)
        order = np.argsort(key, kind="stable")[: self.sample]
        return self.sample_val_FC[feature, :fill][order].astype(np.float64), idx[order], key[order]

    def pairs(self, min_cocount: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Upper-triangle pairs (i < j) with co-count ≥ ``min_cocount``: (i, j, C_ij), sorted by (i, j)."""
        C = sp.triu(self.upper()[0], k=1).tocoo()
        keep = C.data >= min_cocount
        return C.row[keep].astype(np.int64), C.col[keep].astype(np.int64), C.data[keep].astype(np.int64)

    def co_moment_of(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """M_ij for arrays of pairs (either order)."""
        return _lookup(self.upper()[1], i, j).astype(np.float64)

    def co_count_of(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """C_ij for arrays of pairs (either order), int64."""
        return _lookup(self.upper()[0], i, j).astype(np.int64)

    # ---- combining -------------------------------------------------------------------------------
    def _check_compatible(self, other: "CoactivationStats") -> None:
        mine = (self.n_features, self.top_m, self.dashboards, self.sample, self.seed)
        if mine != (other.n_features, other.top_m, other.dashboards, other.sample, other.seed) or not np.array_equal(other.threshold, self.threshold):
            raise ValueError("can only merge statistics with the same n_features, threshold, top_m, dashboards, sample and seed")

    def _like(self) -> "CoactivationStats":
        return CoactivationStats(self.n_features, self.threshold, self.top_m, dense=False, dashboards=self.dashboards,
                                 sample=self.sample, seed=self.seed, store=self.store, dense_bytes=self.dense_bytes)

    def merge(self, other: "CoactivationStats") -> "CoactivationStats":
        """Statistics of the union of two disjoint token sets (exact, the sample too)."""
        self._check_compatible(other)
        out = self._like()
        out.n_tokens = self.n_tokens + other.n_tokens
        out.count_F = self.count_F + other.count_F
        out.sum_F, out.sumsq_F = self.sum_F + other.sum_F, self.sumsq_F + other.sumsq_F
        out.max_F = np.maximum(self.max_F, other.max_F)
        out.top_val_FM, out.top_idx_FM = _top_m(
            np.concatenate([self.top_val_FM, other.top_val_FM], 1), np.concatenate([self.top_idx_FM, other.top_idx_FM], 1), self.top_m
        )
        (c1, m1), (c2, m2) = self.upper(), other.upper()
        out._base = (_sorted(c1 + c2), _sorted(m1 + m2))
        if self.dashboards:
            out.hist_FB = self.hist_FB + other.hist_FB
            out._merge_samples(self, other)
        return out

    def _merge_samples(self, a: "CoactivationStats", b: "CoactivationStats") -> None:
        """This sample := the bottom-k of the union of ``a``'s and ``b``'s samples (both compacted first)."""
        R, F = self.sample, self.n_features
        val, idx = np.concatenate([a.sample_val_FC, b.sample_val_FC], 1), np.concatenate([a.sample_idx_FC, b.sample_idx_FC], 1)
        key = np.where(idx >= 0, sample_keys(np.maximum(idx, 0), np.arange(F)[:, None], self.seed), np.inf)
        part = np.argpartition(key, R - 1, axis=1)[:, :R]
        kept = np.take_along_axis(key, part, axis=1)
        ok = np.isfinite(kept)
        self.sample_val_FC[:, :R] = np.where(ok, np.take_along_axis(val, part, axis=1), 0.0)
        self.sample_idx_FC[:, :R] = np.where(ok, np.take_along_axis(idx, part, axis=1), -1)
        self.sample_fill_F = ok.sum(1)
        self.sample_kmax_F = np.where(self.sample_fill_F == R, np.where(ok, kept, -np.inf).max(1), np.inf)

    def all_reduce(self) -> "CoactivationStats":
        """Combine the statistics of every rank of the default process group; every rank gets the total.

        Counts and sums are all-reduced; maxima with MAX; top-m lists and the sparse pair statistics are
        all-gathered (as index/value tensors — nothing is pickled) and merged. A no-op without a process group.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        total = None
        for part in _gather_stats(self):
            total = part if total is None else total.merge(part)
        return total


def host_dense_bytes() -> int:
    """Bound of the host triangle store: :data:`featgraph.pair_sums.DENSE_BYTES` (2 GiB) or a quarter of the
    machine's physical memory, whichever is smaller."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): the default bound alone
        return DENSE_BYTES
    return min(DENSE_BYTES, total // 4)


def _upper_csr(i: np.ndarray, j: np.ndarray, count: np.ndarray, moment: np.ndarray, F: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Upper-triangle (F, F) CSR co-count and co-moment from triples sorted by (i, j), i ≤ j; the co-count keeps only
    non-zero counts (no stored zeros). O(pairs): the triples are already in CSR order, and where every pair is
    counted the two matrices share their index arrays."""
    idx = np.int32 if F < 2**31 else np.int64

    def build(rows, cols, data):
        indptr = np.zeros(F + 1, dtype=idx if len(rows) < 2**31 else np.int64)
        np.cumsum(np.bincount(rows, minlength=F), out=indptr[1:])
        m = sp.csr_matrix((data, cols.astype(idx, copy=False), indptr), shape=(F, F), copy=False)
        m.has_sorted_indices = True
        return m

    M = build(i, j, moment.astype(np.float64, copy=False))
    nz = count != 0
    if nz.all():
        C = sp.csr_matrix((count.astype(np.int64, copy=False), M.indices, M.indptr), shape=(F, F), copy=False)
        C.has_sorted_indices = True
    else:
        C = build(i[nz], j[nz], count[nz].astype(np.int64, copy=False))
    return C, M


def _lookup(U: sp.csr_matrix, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """U[min(i, j), max(i, j)] for arrays of pairs, from an upper-triangle CSR with sorted indices (a binary search
    in each pair's row)."""
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    if len(i) == 0:
        return np.zeros(0, dtype=U.dtype)
    a, b = np.minimum(i, j), np.maximum(i, j)
    return np.asarray(U[a, b]).ravel()


def _sorted(m: sp.csr_matrix) -> sp.csr_matrix:
    m = m.tocsr()
    if not m.has_sorted_indices:
        m.sort_indices()
    return m


def _top_m(vals: np.ndarray, idx: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-vals, axis=1, kind="stable")[:, :m]
    top_val = np.take_along_axis(vals, order, axis=1)
    return top_val, np.where(np.isfinite(top_val), np.take_along_axis(idx, order, axis=1), -1)


def _all_gather_1d(t: torch.Tensor) -> list[torch.Tensor]:
    """All-gather a 1-D CPU tensor whose length differs by rank."""
    import torch.distributed as dist

    world = dist.get_world_size()
    n = torch.tensor([t.numel()])
    sizes = [torch.zeros(1, dtype=n.dtype) for _ in range(world)]
    dist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=t.dtype)
    padded[: t.numel()] = t
    out = [torch.zeros(width, dtype=t.dtype) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[: int(s.item())] for o, s in zip(out, sizes)]


def _gather_stats(s: CoactivationStats) -> list[CoactivationStats]:
    """Every rank's statistics, rebuilt from gathered tensors (in rank order)."""
    F = s.n_features
    C, M = (U.tocoo() for U in s.upper())
    per_feature = torch.from_numpy(np.concatenate([s.count_F.astype(np.float64), s.sum_F, s.sumsq_F, s.max_F, s.top_val_FM.ravel()]))
    fields = {
        "per_feature": _all_gather_1d(per_feature),
        "top_idx": _all_gather_1d(torch.from_numpy(s.top_idx_FM.ravel())),
        "n_tokens": _all_gather_1d(torch.tensor([s.n_tokens])),
        "rows": _all_gather_1d(torch.from_numpy(C.row.astype(np.int64))),
        "cols": _all_gather_1d(torch.from_numpy(C.col.astype(np.int64))),
        "counts": _all_gather_1d(torch.from_numpy(C.data.astype(np.int64))),
        "m_rows": _all_gather_1d(torch.from_numpy(M.row.astype(np.int64))),
        "m_cols": _all_gather_1d(torch.from_numpy(M.col.astype(np.int64))),
        "moments": _all_gather_1d(torch.from_numpy(M.data.astype(np.float64))),
    }
    if s.dashboards:
        fields.update({
            "hist": _all_gather_1d(torch.from_numpy(s.hist_FB.ravel())),
            "sample_val": _all_gather_1d(torch.from_numpy(s.sample_val_FC.ravel())),
            "sample_idx": _all_gather_1d(torch.from_numpy(s.sample_idx_FC.ravel())),
            "sample_fill": _all_gather_1d(torch.from_numpy(s.sample_fill_F)),
            "sample_kmax": _all_gather_1d(torch.from_numpy(s.sample_kmax_F)),
        })
    parts = []
    for r in range(len(fields["n_tokens"])):
        p = s._like()
        if s.dashboards:
            p.hist_FB = fields["hist"][r].numpy().reshape(F, HIST_BINS)
            p.sample_val_FC = fields["sample_val"][r].numpy().reshape(F, -1)
            p.sample_idx_FC = fields["sample_idx"][r].numpy().reshape(F, -1)
            p.sample_fill_F, p.sample_kmax_F = fields["sample_fill"][r].numpy(), fields["sample_kmax"][r].numpy()
        pf = fields["per_feature"][r].numpy()
        p.count_F = pf[:F].astype(np.int64)
        p.sum_F, p.sumsq_F, p.max_F = pf[F : 2 * F], pf[2 * F : 3 * F], pf[3 * F : 4 * F]
        p.top_val_FM = pf[4 * F :].reshape(F, s.top_m)
        p.top_idx_FM = fields["top_idx"][r].numpy().reshape(F, s.top_m)
        p.n_tokens = int(fields["n_tokens"][r].item())
        rows, cols = fields["rows"][r].numpy(), fields["cols"][r].numpy()
        p._base = (_sorted(sp.csr_matrix((fields["counts"][r].numpy(), (rows, cols)), shape=(F, F))),
                   _sorted(sp.csr_matrix((fields["moments"][r].numpy(), (fields["m_rows"][r].numpy(), fields["m_cols"][r].numpy())), shape=(F, F))))
        parts.append(p)
    return parts


def save_stats(stats: CoactivationStats, folder, meta: dict | None = None) -> None:
    """Write ``stats`` to ``folder`` as ``stats.safetensors`` + ``stats.json`` (atomically; nothing pickled)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from crosscoder.io import atomic_file

    C, M = (U.tocoo() for U in stats.upper())  # the upper triangle: half the pairs of the symmetric matrices
    arrays = {
        "count_F": stats.count_F, "sum_F": stats.sum_F, "sumsq_F": stats.sumsq_F, "max_F": stats.max_F,
        "top_val_FM": stats.top_val_FM, "top_idx_FM": stats.top_idx_FM, "threshold": np.atleast_1d(stats.threshold),
        "c_row": C.row.astype(np.int64), "c_col": C.col.astype(np.int64), "c_val": C.data.astype(np.int64),
        "m_row": M.row.astype(np.int64), "m_col": M.col.astype(np.int64), "m_val": M.data.astype(np.float64),
    }
    if stats.dashboards:
        arrays.update({"hist_FB": stats.hist_FB, "sample_val_FC": stats.sample_val_FC, "sample_idx_FC": stats.sample_idx_FC,
                       "sample_fill_F": stats.sample_fill_F, "sample_kmax_F": stats.sample_kmax_F})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "stats.safetensors") as tmp:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(tmp))
    info = {"n_features": stats.n_features, "top_m": stats.top_m, "n_tokens": stats.n_tokens,
            "scalar_threshold": stats.threshold.ndim == 0, "dashboards": stats.dashboards, "sample": stats.sample,
            "seed": stats.seed, "pairs": "upper", **(meta or {})}
    with atomic_file(folder / "stats.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))


def load_stats(folder) -> tuple[CoactivationStats, dict]:
    """Read what :func:`save_stats` wrote: (statistics, the extra metadata)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from crosscoder.errors import FeatgraphError

    folder = Path(folder)
    if not (folder / "stats.json").is_file() or not (folder / "stats.safetensors").is_file():
        raise FeatgraphError(f"{folder} holds no graph statistics (stats.json + stats.safetensors); run `featgraph graph build` first")
    info = json.loads((folder / "stats.json").read_text())
    a = {k: v.numpy() for k, v in load_file(str(folder / "stats.safetensors")).items()}
    F = info["n_features"]
    thr = a["threshold"][0] if info["scalar_threshold"] else a["threshold"]
    dashboards = bool(info.get("dashboards")) and "hist_FB" in a  # statistics saved before dashboards have none
    s = CoactivationStats(F, thr, info["top_m"], dense=False, dashboards=dashboards, sample=info.get("sample", 32), seed=info.get("seed", 0))
    if dashboards:
        s.hist_FB, s.sample_val_FC, s.sample_idx_FC = a["hist_FB"], a["sample_val_FC"], a["sample_idx_FC"]
        s.sample_fill_F, s.sample_kmax_F = a["sample_fill_F"], a["sample_kmax_F"]
    s.n_tokens = info["n_tokens"]
    s.count_F, s.sum_F, s.sumsq_F, s.max_F = a["count_F"], a["sum_F"], a["sumsq_F"], a["max_F"]
    s.top_val_FM, s.top_idx_FM = a["top_val_FM"], a["top_idx_FM"]
    tri = (lambda m: m) if info.get("pairs") == "upper" else (lambda m: sp.triu(m).tocsr())  # older files: symmetric
    s._base = (_sorted(tri(sp.csr_matrix((a["c_val"], (a["c_row"], a["c_col"])), shape=(F, F)))),
               _sorted(tri(sp.csr_matrix((a["m_val"], (a["m_row"], a["m_col"])), shape=(F, F)))))
    extra = {k: v for k, v in info.items() if k not in ("n_features", "top_m", "n_tokens", "scalar_threshold", "dashboards", "sample", "seed", "pairs")}
    return s, extra
