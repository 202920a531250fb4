"""Throughput of the co-activation pair statistics: ``python -m analyses.bench_stats``.

Synthetic chunks (seeded): every token draws features from a Zipf-like frequency p_i ∝ 1/(rank_i + 1)^α (ranks
shuffled over feature ids) until about L0 distinct ones are active, with positive float32 activations. Each
accumulator gets the same chunks as host (rows, cols, values) of the non-zero entries, so only the pair statistics
are timed; one more line times the whole :meth:`CoactivationStats.update` on dense (n, F) chunks. Compared:

* ``old``: the sparse path of :class:`CoactivationStats` (scipy X.T @ X per chunk added to a running CSR; copied
  here);
* ``new``: :class:`_PairSums` below, a candidate replacement (sorted pair keys i·F + j packed with their position in
  one uint64, buffered until the buffer holds as many entries as pairs kept, then one sort with the pairs kept,
  segment sums in chunk order — the same floats as ``old`` — and a dense H × H block for the most frequent
  features' pairs, filled by ``np.bincount``). It is exact (bit-identical to ``old``) but was not adopted: on this
  2-core CPU it is no faster than ``old`` at F = 16,384 with Zipf frequencies and 2× slower with uniform ones;
  see ``CoactivationStats`` for what the library uses;
* ``new-nohot``: the same without the dense block for the most frequent features;
* ``naive``: every chunk's pair keys and products collected, one ``np.unique`` at the end;
* ``dense``: running F × F sums (only at small F).

``update`` times the whole :meth:`CoactivationStats.update` (dense chunks, no dashboards). Peak memory is the tracemalloc peak (numpy and scipy allocations) of each accumulator's run. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp
import torch

from featgraph.stats import CoactivationStats

# ---- the candidate accumulator (measured here; not adopted: see the module docstring) ----------------------------

_LOW32 = np.uint64(0xFFFFFFFF)


def _sort_keys(keys: np.ndarray, max_key: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, order) of uint64 ``keys``, stable. Where keys < 2³² and there are < 2³² of them, key and position
    are packed into one uint64 and sorted by value (numpy's vectorised sort, ~10× faster than argsort)."""
    n = len(keys)
    if max_key < 2**32 and n < 2**32:
        packed = (keys << np.uint64(32)) | np.arange(n, dtype=np.uint64)
        packed.sort()
        order = packed & _LOW32
        packed >>= np.uint64(32)
        return packed, order.view(np.int64)  # positions < 2³²: the same bits as int64
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def _segments(sorted_keys: np.ndarray) -> np.ndarray:
    """Start of each run of equal values in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _pair_index(rows: np.ndarray, n: int, starters: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first, second): every pair of entries p ≤ q of the same row, given entries sorted by row, for the entries p in
    ``starters`` (all when None)."""
    nnz = len(rows)
    ends = np.cumsum(np.bincount(rows, minlength=n))
    p = np.arange(nnz, dtype=np.int64) if starters is None else starters
    length = ends[rows[p]] - p  # entry p pairs with p, …, its row's last entry
    total = int(length.sum())
    cstart = np.cumsum(length) - length
    small = nnz < 2**31 and total < 2**31
    idt = np.int32 if small else np.int64
    first = np.repeat(p.astype(idt), length)
    second = np.arange(total, dtype=idt) - np.repeat((cstart - p).astype(idt), length)
    return first, second


def _chunk_pairs(rows: np.ndarray, cols: np.ndarray, n: int, F: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i ≤ j of co-active features of each token: (keys i·F + j as uint64, first, second), where first and
    second index the entries (rows, cols) — given in row-major order, columns ascending within a row."""
    if len(rows) == 0:
        e = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), e, e
    first, second = _pair_index(rows, n)
    c = cols.astype(np.uint64)
    keys = c[first] * np.uint64(F) + c[second]
    return keys, first, second


class _PairSums:
    """Exact streamed sums over feature pairs i ≤ j, kept as a sorted key array (i·F + j) with per-pair count
    (int64; 0 = not in the co-count), moment (float64) and ``m_in`` (in the co-moment; None = every key). New
    contributions wait in a pending buffer that is sorted, reduced and merged in once it holds ``max(flush_entries,
    pairs kept)`` entries, so the merge's O(pairs kept) cost is amortised.

    Hot block: once the sorted store holds H²/4 pairs (H = min(``hot``, F)), pairs of two of the H features most
    frequent in that chunk go to dense H × H count and moment arrays instead (``np.bincount`` per chunk; 16·H² bytes,
    at most 64 bytes per pair kept), which spares the sort most entries under a skewed feature frequency.
    """

    def __init__(self, F: int, flush_entries: int = 1 << 22, hot: int = 2048):
        self.F, self.flush_entries, self.hot = F, flush_entries, min(hot, F)
        self.hot_rank: np.ndarray | None = None  # (F,) rank of each hot feature, -1 for the rest
        self.hot_ids = self.hot_count = self.hot_moment = None
        self.keys = np.zeros(0, dtype=np.uint64)
        self.count = np.zeros(0, dtype=np.int64)
        self.moment = np.zeros(0, dtype=np.float64)
        self.m_in: np.ndarray | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray | None, bool]] = []  # (keys, products or None, counted)
        self._pending_n = 0

    @property
    def nbytes(self) -> int:
        held = self.keys.nbytes + self.count.nbytes + self.moment.nbytes + (0 if self.m_in is None else self.m_in.nbytes)
        if self.hot_rank is not None:
            held += self.hot_rank.nbytes + self.hot_count.nbytes + self.hot_moment.nbytes
        return held + sum(k.nbytes + (0 if v is None else v.nbytes) for k, v, _ in self._pending)

    def add_chunk(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray | None, n: int, counted: bool) -> None:
        """All pairs i ≤ j of features non-zero on the same token of a chunk given as (rows, cols) in row-major order
        (columns ascending within a row): each adds 1 to its count when ``counted``, and the product of its values
        to the moment when ``vals`` (float64) is given."""
        H = self.hot
        if self.hot_rank is None and H > 0 and len(self.keys) >= H * H // 4:
            self._start_hot(np.argsort(-np.bincount(cols, minlength=self.F), kind="stable")[:H])
        if self.hot_rank is None or len(rows) == 0:
            keys, first, second = _chunk_pairs(rows, cols, n, self.F)
            prod = None if vals is None else vals[first] * vals[second]
        else:
            rc = self.hot_rank[cols]
            hot = rc >= 0
            # pairs of two hot features: ranks ascend with feature ids, so keys rank_i·H + rank_j into the dense block
            hk, first, second = _chunk_pairs(rows[hot], rc[hot], n, H)
            hk = hk.view(np.int64)
            if counted:
                self.hot_count += np.bincount(hk, minlength=H * H)
            if vals is not None:
                hv = vals[hot]
                self.hot_moment += np.bincount(hk, weights=hv[first] * hv[second], minlength=H * H)
            # the other pairs: order each row cold entries first, then pair every cold entry with all after it
            order = np.argsort(rows * 2 + hot, kind="stable")
            r2, c2, h2 = rows[order], cols[order].astype(np.uint64), hot[order]
            first, second = _pair_index(r2, n, np.flatnonzero(~h2))
            a, b = c2[first], c2[second]
            keys = np.minimum(a, b) * np.uint64(self.F) + np.maximum(a, b)
            if vals is not None:
                v2 = vals[order]
                prod = v2[first] * v2[second]
            else:
                prod = None
        self.add(keys, prod, counted)

    def _start_hot(self, ids: np.ndarray) -> None:
        """Make the hot block of features ``ids`` and move their pairs kept so far into it (each pair lives in one
        place, so its sum keeps the order of the chunks)."""
        self.flush()
        F, H = self.F, self.hot
        self.hot_ids = np.sort(ids)
        self.hot_rank = np.full(F, -1, dtype=np.int64)
        self.hot_rank[self.hot_ids] = np.arange(H)
        self.hot_count, self.hot_moment = np.zeros(H * H, dtype=np.int64), np.zeros(H * H)
        i = self.keys // np.uint64(F)
        ri, rj = self.hot_rank[i], self.hot_rank[self.keys - i * np.uint64(F)]
        move = (ri >= 0) & (rj >= 0)
        hk = ri[move] * H + rj[move]
        self.hot_count[hk], self.hot_moment[hk] = self.count[move], self.moment[move]
        keep = ~move
        self.keys, self.count, self.moment = self.keys[keep], self.count[keep], self.moment[keep]
        if self.m_in is not None:
            self.m_in = self.m_in[keep]

    def _hot_parts(self) -> list:
        """The hot block's pairs as one part for :meth:`_reduce` (a moment is in the co-moment iff positive: every
        product of positive activations is)."""
        if self.hot_rank is None:
            return []
        H = self.hot
        nz = np.flatnonzero((self.hot_count != 0) | (self.hot_moment != 0))
        ids = self.hot_ids.astype(np.uint64)
        keys = ids[nz // H] * np.uint64(self.F) + ids[nz % H]
        mom = self.hot_moment[nz]
        pin = mom > 0
        return [(keys, self.hot_count[nz], mom, None if pin.all() else pin)]

    def add(self, keys: np.ndarray, products: np.ndarray | None, counted: bool) -> None:
        """Pending contributions: each key adds 1 to its count when ``counted`` and its product to the moment
        (``products`` None: no moment contribution)."""
        if len(keys) == 0:
            return
        self._pending.append((keys, products, counted))
        self._pending_n += len(keys)
        if self._pending_n >= max(self.flush_entries, len(self.keys)):
            self.flush()

    def flush(self) -> None:
        """Sort the pending contributions together with the pairs kept and reduce them (one sort: the buffer holds at
        least as many entries as the accumulator, so this costs O(1) amortised per entry, plus the sort's log)."""
        if not self._pending:
            return
        pend, self._pending, self._pending_n = self._pending, [], 0
        self._reduce([(k, np.full(len(k), int(c), dtype=np.int64), np.zeros(len(k)) if v is None else v,
                       np.zeros(len(k), dtype=bool) if v is None else None) for k, v, c in pend])

    def _parts(self) -> list:
        return [(self.keys, self.count, self.moment, self.m_in)] if len(self.keys) else []

    def _reduce(self, parts: list) -> None:
        """Replace the accumulator by the pair sums of its own pairs and ``parts``: (keys, counts, moments, in the
        moment: bool array or None for all). Moments are summed within each part first (in order), then across parts
        (in order, the accumulator first): per chunk, then chunk after chunk, the order scipy's per-chunk products
        added to a running matrix had, so the sums are the same floats."""
        parts = self._parts() + [p for p in parts if len(p[0])]
        if not parts:
            return

        def cat(xs):
            return np.concatenate(xs) if len(xs) > 1 else xs[0]

        sk, order = _sort_keys(cat([p[0] for p in parts]), self.F * self.F - 1)
        new_key = np.r_[True, sk[1:] != sk[:-1]]
        starts = np.flatnonzero(new_key)
        self.keys = sk[starts]
        del sk
        self.count = np.add.reduceat(cat([p[1] for p in parts])[order], starts)
        if all(p[3] is None for p in parts):
            self.m_in = None
        else:
            pin = cat([np.ones(len(p[0]), dtype=bool) if p[3] is None else p[3] for p in parts])
            self.m_in = np.logical_or.reduceat(pin[order], starts)
        # moments: np.bincount adds in order (np.add.reduceat sums pairwise, a different rounding)
        mom = cat([p[2] for p in parts])[order]
        key_id = np.cumsum(new_key) - 1
        if len(parts) > 1:  # partial sums per (pair, part), then per pair
            part = np.searchsorted(np.cumsum([len(p[0]) for p in parts]), order, side="right")
            new_key[1:] |= part[1:] != part[:-1]
            del part
            sub = np.flatnonzero(new_key)
            mom = np.bincount(np.cumsum(new_key) - 1, weights=mom, minlength=len(sub))
            key_id = key_id[sub]
        self.moment = np.bincount(key_id, weights=mom, minlength=len(starts))

    def merged(self, other: "_PairSums") -> "_PairSums":
        """The sums of both (exact); neither is changed beyond flushing its pending buffer."""
        self.flush()
        other.flush()
        out = _PairSums(self.F, self.flush_entries, self.hot)
        out._reduce(self._parts() + self._hot_parts() + other._parts() + other._hot_parts())
        return out

    @classmethod
    def from_csr(cls, count: sp.spmatrix, moment: sp.spmatrix, F: int) -> "_PairSums":
        """The upper triangles (with the diagonal) of symmetric co-count and co-moment matrices."""
        out = cls(F)
        C, M = sp.triu(count, k=0).tocoo(), sp.triu(moment, k=0).tocoo()
        kc = C.row.astype(np.uint64) * np.uint64(F) + C.col.astype(np.uint64)
        km = M.row.astype(np.uint64) * np.uint64(F) + M.col.astype(np.uint64)
        out._reduce([(kc, C.data.astype(np.int64), np.zeros(len(kc)), np.zeros(len(kc), dtype=bool)),
                     (km, np.zeros(len(km), dtype=np.int64), M.data.astype(np.float64), None)])
        if out.m_in is not None and out.m_in.all():
            out.m_in = None
        return out

    def _rows(self, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row start offsets (F + 1), row of each key) of sorted keys i·F + j, without dividing."""
        F = self.F
        indptr = np.searchsorted(sorted_keys, np.arange(F + 1, dtype=np.uint64) * np.uint64(F))
        return indptr, np.repeat(np.arange(F, dtype=np.int64), np.diff(indptr))

    def to_csr(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(co-count, co-moment) as symmetric (F, F) CSR matrices, canonical (sorted indices, no duplicates)."""
        self.flush()
        if self.hot_rank is not None:  # fold the hot block in (on a copy: the stream may go on)
            tmp = _PairSums(self.F, hot=0)
            tmp._reduce(self._parts() + self._hot_parts())
            return tmp.to_csr()
        F, keys = self.F, self.keys
        _, i = self._rows(keys)
        j = (keys - i.astype(np.uint64) * np.uint64(F)).astype(np.int64)
        off = np.flatnonzero(i != j)
        full = np.concatenate([keys, j[off].astype(np.uint64) * np.uint64(F) + i[off].astype(np.uint64)])
        src = np.concatenate([np.arange(len(keys)), off])
        del i, j, off
        full, order = _sort_keys(full, F * F - 1)
        src = src[order]
        del order
        indptr, rows = self._rows(full)
        cols = (full - rows.astype(np.uint64) * np.uint64(F)).astype(np.int32 if F < 2**31 else np.int64)
        del full

        def build(mask: np.ndarray | None, data: np.ndarray) -> sp.csr_matrix:
            if mask is None:
                c, d, ptr = cols, data, indptr
            else:
                c, d = cols[mask], data[mask]
                ptr = np.r_[0, np.cumsum(np.bincount(rows[mask], minlength=F))]
            idx = np.int32 if max(len(d), F) < 2**31 else np.int64
            m = sp.csr_matrix((F, F), dtype=d.dtype)
            m.data, m.indices, m.indptr = d, c.astype(idx, copy=False), np.asarray(ptr, dtype=idx)
            return m

        cnt = self.count[src]
        count = build(None if (cnt != 0).all() else cnt != 0, cnt)
        moment = build(None if self.m_in is None else self.m_in[src], self.moment[src])
        return count, moment




def zipf_chunks(F: int, l0: int, n_tokens: int, chunk: int, alpha: float, seed: int = 0):
    """Yield (n, rows, cols, vals) of synthetic chunks: rows sorted, columns ascending within a row."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(F) + 1.0) ** alpha
    p /= p.sum()
    p = p[rng.permutation(F)]
    # draws per token so that the expected number of distinct features is l0
    lo, hi = l0, 50 * l0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if (1 - (1 - p) ** mid).sum() < l0 else (lo, mid)
    draws, cdf = hi, np.cumsum(p)
    done = 0
    while done < n_tokens:
        n = min(chunk, n_tokens - done)
        feats = np.minimum(np.searchsorted(cdf, rng.random((n, draws))), F - 1)
        key = np.unique(np.arange(n)[:, None] * F + feats)
        rows, cols = key // F, key % F
        vals = (rng.exponential(1.0, len(rows)) + 1e-3).astype(np.float32)
        yield n, rows, cols, vals
        done += n


class OldSparse:
    """The sparse accumulator as it was: per-chunk scipy products added to a growing CSR."""

    def __init__(self, F: int):
        self.F, self.count, self.moment = F, None, None

    def update(self, n, rows, cols, vals):
        X = sp.csr_matrix((vals.astype(np.float64), (rows, cols)), shape=(n, self.F))
        B = sp.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)), shape=(n, self.F))
        moment, count = (X.T @ X).tocsr(), (B.T @ B).tocsr()
        self.moment = moment if self.moment is None else self.moment + moment
        self.count = count if self.count is None else self.count + count

    def result(self):
        return self.count.tocsr(), self.moment.tocsr()


class New:
    hot = 2048

    def __init__(self, F: int):
        self.acc = _PairSums(F, hot=self.hot)

    def update(self, n, rows, cols, vals):
        self.acc.add_chunk(rows, cols, vals.astype(np.float64), n, counted=True)

    def finish(self):
        self.acc.flush()  # the last pending entries, so that "streaming" covers all the sorting

    def result(self):
        return self.acc.to_csr()


class NewNoHot(New):
    hot = 0


class Naive:
    def __init__(self, F: int):
        self.F, self.keys, self.vals = F, [], []

    def update(self, n, rows, cols, vals):
        v = vals.astype(np.float64)
        keys, first, second = _chunk_pairs(rows, cols, n, self.F)
        self.keys.append(keys)
        self.vals.append(v[first] * v[second])

    def result(self):
        uk, inv, cnt = np.unique(np.concatenate(self.keys), return_inverse=True, return_counts=True)
        mom = np.bincount(inv, weights=np.concatenate(self.vals))
        return uk, cnt, mom


class Dense:
    def __init__(self, F: int):
        self.count = np.zeros((F, F), dtype=np.int64)
        self.moment = np.zeros((F, F), dtype=np.float64)

    def update(self, n, rows, cols, vals):
        X = np.zeros((n, self.count.shape[0]))
        X[rows, cols] = vals
        B = (X > 0).astype(np.float32)
        self.count += (B.T @ B).round().astype(np.int64)
        self.moment += X.T @ X

    def result(self):
        return self.count, self.moment


def run(name: str, make, F: int, chunks) -> tuple[float, float, object]:
    acc = make(F)
    tracemalloc.start()
    t = time.perf_counter()
    n_tok = 0
    for n, rows, cols, vals in chunks:
        acc.update(n, rows, cols, vals)
        n_tok += n
    if hasattr(acc, "finish"):
        acc.finish()
    t_stream = time.perf_counter() - t
    res = acc.result()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  {name:9s} F={F:6d}: {n_tok / dt:9,.0f} tokens/s with the result ({dt:5.2f} s; streaming alone "
          f"{n_tok / t_stream:9,.0f} tokens/s), peak {peak / 2**20:7.1f} MiB", flush=True)
    return n_tok / dt, peak, res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, nargs="+", default=[16_384])
    ap.add_argument("--l0", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=40_960)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent of the feature frequencies")
    ap.add_argument("--skip-old", action="store_true", help="skip the old accumulator (slow)")
    ap.add_argument("--update", action="store_true", help="also time the whole CoactivationStats.update on dense chunks")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for F in a.features + [1024]:
        chunks = list(zipf_chunks(F, a.l0, a.tokens, a.chunk, a.alpha))
        nnz = sum(len(c[1]) for c in chunks)
        print(f"F={F} L0={nnz / a.tokens:.1f} tokens={a.tokens} chunk={a.chunk} alpha={a.alpha}")
        _, _, new = run("new", New, F, chunks)
        print(f"         pairs kept (i<=j): {new[0].nnz // 2 + F:,} (upper bound)")
        run("new-nohot", NewNoHot, F, chunks)
        _, _, naive = run("naive", Naive, F, chunks)
        if not a.skip_old:
            _, _, old = run("old", OldSparse, F, chunks)
            assert (old[0] != new[0]).nnz == 0 and abs(old[1] - new[1]).max() <= 1e-9 * abs(old[1]).max()
            print("         new == old: co-counts identical, co-moments within 1e-9 relative")
        if F <= 4096:
            _, _, dense = run("dense", Dense, F, chunks)
            assert np.array_equal(dense[0], new[0].toarray()) and np.allclose(dense[1], new[1].toarray(), rtol=1e-12, atol=0)
            print("         new == dense: co-counts identical, co-moments within 1e-12 relative")
        if a.update:
            stats = CoactivationStats(F, dashboards=False)
            dt = 0.0
            for n, rows, cols, vals in chunks:
                f = torch.zeros(n, F)
                f[torch.from_numpy(rows), torch.from_numpy(cols)] = torch.from_numpy(vals)
                t0 = time.perf_counter()
                stats.update(f)
                dt += time.perf_counter() - t0  # chunk construction not timed
            t0 = time.perf_counter()
            stats.co_count  # noqa: B018 - build the CSR
            dt += time.perf_counter() - t0
            print(f"  update F={F:6d}: {a.tokens / dt:10,.0f} tokens/s  (whole update(), dense chunks, no dashboards)")


if __name__ == "__main__":
    main()
