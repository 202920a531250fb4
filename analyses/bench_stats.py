"""Throughput of the co-activation pair statistics: ``python -m analyses.bench_stats``.

Synthetic chunks (seeded): every token draws features from a Zipf-like frequency p_i ∝ 1/(rank_i + 1)^α (ranks
shuffled over feature ids) until about L0 distinct ones are active, with positive float32 activations. Each
accumulator gets the same chunks as host (rows, cols, values) of the non-zero entries, so only the pair statistics
are timed; one more line times the whole :meth:`CoactivationStats.update` on dense (n, F) chunks. Compared:

* ``triangle`` / ``hash``: featgraph's accumulator (:class:`featgraph.pair_sums.PairSums`: compiled loops adding
  every pair of a token's active features into a packed F × F triangle, or into a hash table of the pairs kept —
  the store ``CoactivationStats`` picks above the triangle's memory bound);
* ``old``: the accumulator it replaced (scipy X.T @ X per chunk added to a running CSR; copied here);
* ``naive``: every chunk's pair keys and products collected, one ``np.unique`` at the end;
* ``dense``: running F × F sums with numpy matmuls (only at F ≤ 4,096).

``update`` times the whole :meth:`CoactivationStats.update` on dense (n, F) chunks (finding the non-zeros, the
per-feature statistics, the pairs, the dashboards when on) and the CSR of the result. Peak memory: the tracemalloc
peak (numpy allocations) of each accumulator's run; for ``update``, the growth of the process's peak RSS. Kernels
are compiled before any timing. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp
import torch

from analyses.bench_graph import peak_rss_mib
from featgraph.pair_sums import PairSums
from featgraph.stats import CoactivationStats

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


class Triangle:
    """featgraph's pair store (featgraph.pair_sums.PairSums), the packed triangle."""

    store = "triangle"

    def __init__(self, F: int):
        self.acc = PairSums(F, self.store)

    def update(self, n, rows, cols, vals):
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        self.acc.add(indptr, cols, vals)

    def result(self):
        return self.acc.to_coo()


class Hash(Triangle):
    """featgraph's pair store, the hash table of the pairs kept (what F above the triangle's bound gets)."""

    store = "hash"


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


def _warm_up() -> None:
    """Compile (or load from numba's cache) the kernels, outside every timing."""
    for store in ("triangle", "hash"):
        acc = PairSums(8, store)
        acc.add(np.array([0, 2]), np.array([1, 3]), np.array([1.0, 2.0]))
        acc.to_coo()
    CoactivationStats(8).update(torch.rand(4, 8))


def time_update(F: int, chunks, dashboards: bool, store: str = "auto") -> tuple[float, float]:
    """Tokens/s of the whole :meth:`CoactivationStats.update` on dense (n, F) chunks, the result's CSR included
    (building the dense chunks is not timed), and the peak resident memory growth in MiB."""
    stats = CoactivationStats(F, dashboards=dashboards, store=store)
    dt, n_tok = 0.0, 0
    rss0 = peak_rss_mib()
    for n, rows, cols, vals in chunks:
        f = torch.zeros(n, F)
        f[torch.from_numpy(rows), torch.from_numpy(cols)] = torch.from_numpy(vals)
        t0 = time.perf_counter()
        stats.update(f)
        dt += time.perf_counter() - t0
        n_tok += n
    t0 = time.perf_counter()
    stats.upper()  # the result as the graph builder reads it (upper-triangle CSR)
    dt += time.perf_counter() - t0
    return n_tok / dt, peak_rss_mib() - rss0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, nargs="+", default=[16_384])
    ap.add_argument("--l0", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=40_960)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--alpha", type=float, nargs="+", default=[1.0, 0.0], help="Zipf exponents of the feature frequencies (0: uniform)")
    ap.add_argument("--skip-old", action="store_true", help="skip the old accumulator (slow)")
    ap.add_argument("--skip-naive", action="store_true", help="skip the naive pair-key accumulator (memory grows with tokens)")
    ap.add_argument("--update", action="store_true", help="also time the whole CoactivationStats.update on dense chunks")
    a = ap.parse_args(argv)
    _warm_up()
    for alpha in a.alpha:
        for F in a.features:
            chunks = list(zipf_chunks(F, a.l0, a.tokens, a.chunk, alpha))
            nnz = sum(len(c[1]) for c in chunks)
            print(f"F={F} L0={nnz / a.tokens:.1f} tokens={a.tokens} chunk={a.chunk} alpha={alpha}", flush=True)
            _, _, hashed = run("hash", Hash, F, chunks)
            print(f"         pairs kept (i<=j): {len(hashed[0]):,}")
            if 12 * F * (F + 1) // 2 <= 4 << 30:
                _, _, tri = run("triangle", Triangle, F, chunks)
                assert all(np.array_equal(x, y) for x, y in zip(tri, hashed))
                print("         triangle == hash: identical pairs, counts and moments")
            if not a.skip_naive:
                _, _, naive = run("naive", Naive, F, chunks)
                assert np.array_equal(naive[1], hashed[2]) and np.allclose(naive[2], hashed[3], rtol=1e-12, atol=0)
            if not a.skip_old:
                _, _, old = run("old", OldSparse, F, chunks)
                C = sp.triu(old[0]).tocoo()
                assert np.array_equal(C.data, hashed[2])
                print("         hash == old (scipy running sums): identical co-counts")
            if F <= 4096:
                _, _, dense = run("dense", Dense, F, chunks)
                i, j = hashed[0], hashed[1]
                assert np.array_equal(dense[0][i, j], hashed[2]) and np.allclose(dense[1][i, j], hashed[3], rtol=1e-12, atol=0)
                print("         hash == dense: co-counts identical, co-moments within 1e-12 relative")
            if a.update:
                for dash in (False, True):
                    tps, mib = time_update(F, chunks, dash)
                    print(f"  update    F={F:6d}: {tps:9,.0f} tokens/s (whole update() on dense chunks + the CSR, "
                          f"dashboards {'on' if dash else 'off'}), peak RSS growth {mib:7.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
