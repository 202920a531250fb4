"""Exact streamed pair sums of sparse activations: co-count and co-moment of every pair of co-active features.

For each token with active features a₁ < a₂ < … (its non-zero entries, in ascending feature order) every pair
aᵢ ≤ aⱼ is visited once: the co-moment M[aᵢ, aⱼ] += f(aᵢ)·f(aⱼ) and, where both entries are *counted* (above the
co-count threshold), the co-count C[aᵢ, aⱼ] += 1. That is L0·(L0 + 1)/2 updates per token, the physical minimum
for exact pair statistics, done by one compiled loop (numba) over the chunk's CSR entries, with no per-chunk
temporary of pair keys. Two stores, one result (:meth:`PairSums.to_coo`):

* ``"triangle"``: the packed upper triangle of an F × F matrix (int32 counts, promoted to int64 before they could
  overflow, and float64 moments): 12·F(F + 1)/2 bytes — 1.6 GB at F = 16,384 — mapped by the OS on first touch
  (pages never touched cost nothing; a process's first 1.6 GB took 2–3 s to map on the loaded 2-core machine, ~0.2 s
  when reused). The fastest store; chosen while it fits ``dense_bytes``.
* ``"hash"``: an open-addressing hash table keyed by i·F + j (linear probing, int64 key + int64 count + float64
  moment per slot, grown ×2 when 70 % full): between 34 and 69 bytes per pair kept, whatever F is. Memory
  O(pairs kept); used above ``dense_bytes``.

Sums are float64, accumulated in token order; statistics of disjoint token sets add up (the result is a scipy
matrix, which :class:`featgraph.stats.CoactivationStats` merges and all-reduces).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PairSums", "DENSE_BYTES", "triangle_bytes", "csr_of_nonzero", "feature_pass"]

DENSE_BYTES = 2 << 30
"""Default bound of the triangle store: 2 GiB (F ≤ 18,918 features); above it the hash store is used."""

_MAX_LOAD = 0.7
_EMPTY = -1


def _jit(fn):
    """numba's njit with an on-disk cache, falling back to no cache where no cache folder is writable."""
    import numba

    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "no locator available": a read-only install and no writable user cache
        return numba.njit(cache=False, nogil=True)(fn)


def triangle_bytes(n_features: int) -> int:
    """Bytes of the triangle store for F features (int32 counts + float64 moments)."""
    return 12 * n_features * (n_features + 1) // 2


# ---- compiled kernels ----------------------------------------------------------------------------------------------


def _triangle_add(indptr, cols, vals, counted, F, cnt, mom):
    """Add every pair of each token's entries; returns how many pairs were new (moment 0 before: products are > 0).

    The entries are visited feature by feature (a counting sort of the chunk by column, stable, so each pair still
    gets its products in token order): all the updates of triangle row i — one 12·F-byte stretch, in cache — come
    together, instead of every token touching L0 rows spread over the whole triangle."""
    n = len(indptr) - 1
    nnz = indptr[n]  # the entries the rows cover (the arrays may be longer)
    row = np.empty(nnz, dtype=np.int64)
    for t in range(n):
        for p in range(indptr[t], indptr[t + 1]):
            row[p] = t
    colptr = np.zeros(F + 1, dtype=np.int64)
    for p in range(nnz):
        colptr[cols[p] + 1] += 1
    for i in range(F):
        colptr[i + 1] += colptr[i]
    order = np.empty(nnz, dtype=np.int64)
    nxt = colptr[:-1].copy()
    for p in range(nnz):
        order[nxt[cols[p]]] = p
        nxt[cols[p]] += 1
    new = 0
    for i in range(F):
        base = i * F - (i * (i + 1)) // 2  # packed row-major upper triangle: (i, j) at i·F − i(i+1)/2 + j
        for r in range(colptr[i], colptr[i + 1]):
            p = order[r]
            e = indptr[row[p] + 1]
            vi = vals[p]
            ci = counted[p]
            for q in range(p, e):
                k = base + cols[q]
                if mom[k] == 0:
                    new += 1
                mom[k] += vi * vals[q]
                if ci and counted[q]:
                    cnt[k] += 1
    return new


def _hash_slot(keys, key, mask):
    """Slot of int64 ``key``: its own, or the empty one where it would go (linear probing)."""
    h = ((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(24)) & mask  # Fibonacci hashing, mod 2⁶⁴
    while True:
        k = keys[h]
        if k == key or k == -1:
            return h
        h = (h + np.uint64(1)) & mask


def _hash_add(indptr, cols, vals, counted, F, keys, cnt, mom, n_used, limit):
    """Add tokens until the next token could push the table past ``limit`` used slots; returns (used, next token)."""
    mask = np.uint64(len(keys) - 1)
    for t in range(len(indptr) - 1):
        s, e = indptr[t], indptr[t + 1]
        m = e - s
        if n_used + m * (m + 1) // 2 > limit:
            return n_used, t
        for p in range(s, e):
            i = cols[p]
            vi = vals[p]
            ci = counted[p]
            for q in range(p, e):
                key = i * F + cols[q]
                h = _hash_slot_j(keys, key, mask)
                if keys[h] == -1:
                    keys[h] = key
                    n_used += 1
                mom[h] += vi * vals[q]
                if ci and counted[q]:
                    cnt[h] += 1
    return n_used, len(indptr) - 1


def _hash_insert(keys, cnt, mom, new_keys, new_cnt, new_mom):
    """Add (key, count, moment) triples into a table with room for them; returns how many new slots were used."""
    mask = np.uint64(len(keys) - 1)
    used = 0
    for p in range(len(new_keys)):
        key = new_keys[p]
        h = _hash_slot_j(keys, key, mask)
        if keys[h] == -1:
            keys[h] = key
            used += 1
        cnt[h] += new_cnt[p]
        mom[h] += new_mom[p]
    return used


def _triangle_nonzero(cnt, mom, F, out_i, out_j, out_c, out_m):
    """Write the (i, j, count, moment) of the stored pairs (a non-zero moment) in (i, j) order, up to the outputs'
    length; returns how many there are."""
    k = 0
    n = 0
    room = len(out_i)
    for i in range(F):
        for j in range(i, F):
            if mom[k] != 0:
                if n < room:
                    out_i[n] = i
                    out_j[n] = j
                    out_c[n] = cnt[k]
                    out_m[n] = mom[k]
                n += 1
            k += 1
    return n


def _dense_collect(f_nF, r0, p0, indptr, cols, vals):
    """Collect the positive entries of rows r0, r0 + 1, … of a dense array into ``cols``/``vals`` from position p0,
    until they are full; returns (first row not collected, entries written in all, NaN/±inf entries seen). One pass,
    no temporaries: a row that does not fit is left whole for the next call."""
    n, F = f_nF.shape
    room = len(cols)
    p = p0
    bad = 0
    for r in range(r0, n):
        start = p
        row_bad = 0
        for j in range(F):
            v = f_nF[r, j]
            if v > 0:
                if p == room:
                    return r, start, bad
                cols[p] = j
                vals[p] = v
                p += 1
            if v - v != 0:  # NaN or ±inf
                row_bad += 1
        indptr[r + 1] = p
        bad += row_bad
    return n, p, bad


def _feature_pass(rows, cols, vals, thr_F, tidx_n, count_F, sum_F, sumsq_F, max_F, top_val_FM, top_idx_FM):
    """Per-feature active count (f > θ), Σf, Σf², max f and the top-m (value, token) of positive entries, in one pass.
    A new value enters the top-m only if strictly larger than the m-th (ties keep the earlier token)."""
    M = top_val_FM.shape[1]
    scalar = len(thr_F) == 1
    for p in range(len(cols)):
        j = cols[p]
        v = np.float64(vals[p])
        th = thr_F[0] if scalar else thr_F[j]
        if v > th:
            count_F[j] += 1
        sum_F[j] += v
        sumsq_F[j] += v * v
        if v > max_F[j]:
            max_F[j] = v
        if M > 0 and v > top_val_FM[j, M - 1]:
            q = M - 1
            while q > 0 and v > top_val_FM[j, q - 1]:
                top_val_FM[j, q] = top_val_FM[j, q - 1]
                top_idx_FM[j, q] = top_idx_FM[j, q - 1]
                q -= 1
            top_val_FM[j, q] = v
            top_idx_FM[j, q] = tidx_n[rows[p]]


_kernels: dict = {}


def _k(name: str):
    """The compiled kernel ``name`` (compiled on first use, so importing featgraph costs no compilation)."""
    if not _kernels:
        global _hash_slot_j
        _hash_slot_j = _jit(_hash_slot)
        for fn in (_triangle_add, _triangle_nonzero, _hash_add, _hash_insert, _dense_collect, _feature_pass):
            _kernels[fn.__name__] = _jit(fn)
    return _kernels[name]


_hash_slot_j = None


# ---- public helpers -------------------------------------------------------------------------------------------------


def csr_of_nonzero(f_nF: np.ndarray, capacity: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(indptr, cols, values, non-finite count) of the positive entries of a dense (n, F) float32 array, row-major with
    columns ascending: one compiled pass, no (n, F) temporary (``capacity``: the entries expected, e.g. the last
    chunk's; the output grows when they are more). The last item counts NaN/±inf entries (the caller decides what to
    do with them; they are not among the entries, except +inf)."""
    f_nF = np.ascontiguousarray(f_nF, dtype=np.float32)
    n = f_nF.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    cap = max(int(capacity), 64 * n, 1024)
    cols, vals = np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.float32)
    r, p, bad = _k("_dense_collect")(f_nF, 0, 0, indptr, cols, vals)
    while r < n:  # full: double the room and go on from the row that did not fit
        cap *= 2
        cols, vals = np.resize(cols, cap), np.resize(vals, cap)
        r, p, more = _k("_dense_collect")(f_nF, r, p, indptr, cols, vals)
        bad += more
    return indptr, cols[:p], vals[:p], int(bad)


def feature_pass(rows, cols, vals, thr_F, tidx_n, count_F, sum_F, sumsq_F, max_F, top_val_FM, top_idx_FM) -> None:
    """Add positive entries (row, col, value) to the per-feature statistics in place (see ``_feature_pass``)."""
    _k("_feature_pass")(rows, cols, vals, np.atleast_1d(np.asarray(thr_F, dtype=np.float64)), tidx_n,
                        count_F, sum_F, sumsq_F, max_F, top_val_FM, top_idx_FM)


class PairSums:
    """Running co-count and co-moment of every co-active feature pair (i ≤ j, the diagonal included).

    Parameters
    ----------
    n_features : int
        F.
    store : {"auto", "triangle", "hash"}
        The triangle store (12·F(F+1)/2 bytes) or the hash store (O(pairs kept)); "auto": the triangle while it fits
        ``dense_bytes``.
    dense_bytes : int
        Bound of the triangle store under ``store="auto"``.
    capacity : int
        Initial slots of the hash store (a power of two; it grows as needed).
    """

    def __init__(self, n_features: int, store: str = "auto", dense_bytes: int = DENSE_BYTES, capacity: int = 1 << 16):
        if store not in ("auto", "triangle", "hash"):
            raise ValueError(f"store must be 'auto', 'triangle' or 'hash', got {store!r}")
        F = self.n_features = int(n_features)
        if store == "auto":
            store = "triangle" if triangle_bytes(F) <= dense_bytes else "hash"
        self.store = store
        self.n_tokens = 0
        if store == "triangle":
            T = F * (F + 1) // 2
            self._cnt = np.zeros(T, dtype=np.int32)  # np.zeros: pages are mapped on first touch
            self._mom = np.zeros(T, dtype=np.float64)
            self._used = 0  # pairs stored (a non-zero moment)
        else:
            if capacity < 2 or capacity & (capacity - 1):
                raise ValueError(f"capacity must be a power of two >= 2, got {capacity}")
            self._alloc(capacity)
            self._used = 0  # slots in use

    @classmethod
    def from_triangle(cls, count: np.ndarray, moment: np.ndarray) -> "PairSums":
        """A triangle store over sums kept elsewhere in the same packed layout (the GPU path's, copied to the host)."""
        T = len(moment)
        F = int(round((np.sqrt(8 * T + 1) - 1) / 2))
        if F * (F + 1) // 2 != T or len(count) != T:
            raise ValueError(f"{T} entries are not a packed upper triangle")
        out = cls(F, "triangle")  # its own zeros are never touched: no memory is mapped for them
        out._cnt, out._mom = count, moment
        out._used = int(np.count_nonzero(moment))
        return out

    def _alloc(self, cap: int) -> None:
        self._keys = np.full(cap, _EMPTY, dtype=np.int64)
        self._cnt = np.zeros(cap, dtype=np.int64)
        self._mom = np.zeros(cap, dtype=np.float64)

    @property
    def nbytes(self) -> int:
        """Bytes held (the triangle's whole allocation, of which the OS maps only touched pages)."""
        return self._cnt.nbytes + self._mom.nbytes + (self._keys.nbytes if self.store == "hash" else 0)

    def add(self, indptr: np.ndarray, cols: np.ndarray, vals: np.ndarray, counted: np.ndarray | None = None) -> None:
        """Add a chunk given as CSR of its positive entries: ``indptr`` (n + 1,), ``cols`` ascending within each row,
        ``vals`` (> 0); ``counted`` (bool per entry, default all) marks the entries above the co-count threshold."""
        indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        vals = np.ascontiguousarray(vals, dtype=np.float64)
        counted = np.ones(len(cols), dtype=np.bool_) if counted is None else np.ascontiguousarray(counted, dtype=np.bool_)
        n = len(indptr) - 1
        F = self.n_features
        if self.store == "triangle":
            if self._cnt.dtype == np.int32 and self.n_tokens + n > np.iinfo(np.int32).max:
                self._cnt = self._cnt.astype(np.int64)  # a pair count could pass 2³¹ − 1
            self._used += int(_k("_triangle_add")(indptr, cols, vals, counted, F, self._cnt, self._mom))
        else:
            t = 0
            while t < n:
                longest = int(np.diff(indptr[t:]).max()) if n > t else 0
                limit = int(_MAX_LOAD * len(self._keys))
                if self._used + longest * (longest + 1) // 2 > limit:
                    self._grow(self._used + longest * (longest + 1) // 2)
                    limit = int(_MAX_LOAD * len(self._keys))
                self._used, done = _k("_hash_add")(indptr[t:] - indptr[t], cols[indptr[t]:], vals[indptr[t]:],
                                                   counted[indptr[t]:], F, self._keys, self._cnt, self._mom, self._used, limit)
                t += int(done)
                if t < n:
                    self._grow(self._used + 1)
        self.n_tokens += n

    def _grow(self, need: int) -> None:
        """Rehash into a table at least twice as large, with room for ``need`` used slots under the load bound."""
        cap = len(self._keys) * 2
        while need > _MAX_LOAD * cap:
            cap *= 2
        keys, cnt, mom = self._keys, self._cnt, self._mom
        live = keys != _EMPTY
        self._alloc(cap)
        self._used = int(_k("_hash_insert")(self._keys, self._cnt, self._mom, keys[live], cnt[live], mom[live]))

    def add_coo(self, i: np.ndarray, j: np.ndarray, count: np.ndarray, moment: np.ndarray) -> None:
        """Add pair sums given as triples (i ≤ j): to continue from saved or merged statistics."""
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        if len(i) and (i > j).any():
            raise ValueError("add_coo takes upper-triangle pairs (i <= j)")
        F = self.n_features
        if self.store == "triangle":
            k = i * F - i * (i + 1) // 2 + j
            if self._cnt.dtype == np.int32 and len(count) and int(np.max(count)) + self.n_tokens > np.iinfo(np.int32).max:
                self._cnt = self._cnt.astype(np.int64)
            np.add.at(self._cnt, k, np.asarray(count).astype(self._cnt.dtype))
            was_empty = self._mom[k] == 0
            np.add.at(self._mom, k, np.asarray(moment, dtype=np.float64))
            self._used += int(np.count_nonzero(was_empty & (self._mom[k] != 0)))
        else:
            if self._used + len(i) > _MAX_LOAD * len(self._keys):
                self._grow(self._used + len(i))
            self._used += int(_k("_hash_insert")(self._keys, self._cnt, self._mom, i * F + j,
                                                  np.asarray(count, dtype=np.int64), np.asarray(moment, dtype=np.float64)))

    def to_coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The upper-triangle pairs with a non-zero co-moment or co-count, sorted by (i, j): (i, j, count int64,
        moment float64); i and j are int32 below 2³¹ features (half the memory of a large result)."""
        F = self.n_features
        idx = np.int32 if F < 2**31 else np.int64
        if self.store == "triangle":
            n = self._used
            out = (np.empty(n, dtype=idx), np.empty(n, dtype=idx), np.empty(n, dtype=np.int64), np.empty(n))
            if _k("_triangle_nonzero")(self._cnt, self._mom, F, *out) != n:
                raise AssertionError("pair count out of step with the triangle")  # cannot happen: moments only grow
            return out
        live = np.flatnonzero(self._keys != _EMPTY)
        keys = self._keys[live]
        if F * F < 2**63 // len(self._keys):  # key and slot packed in one int64: one plain sort, ~10× faster than argsort
            packed = keys * len(self._keys) + live
            packed.sort()
            keys, live = np.divmod(packed, len(self._keys))
        else:
            order = np.argsort(keys, kind="stable")
            keys, live = keys[order], live[order]
        i, j = np.divmod(keys, F)
        return i.astype(idx), j.astype(idx), self._cnt[live], self._mom[live]
