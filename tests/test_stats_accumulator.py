"""The sparse pair statistics of CoactivationStats against brute-force dense sums: exact, mergeable, small at large F."""

import tracemalloc

import numpy as np
import pytest
import torch

from featgraph.stats import CoactivationStats, load_stats, save_stats


def _chunks(F, sizes, density, seed, hot=4):
    """Random sparse chunks; the first ``hot`` features fire on most tokens, so pairs repeat within and across chunks."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        on = rng.random((n, F)) < density
        on[:, :hot] |= rng.random((n, hot)) < 0.7
        f = np.where(on, rng.exponential(1.0, (n, F)) + 1e-3, 0.0).astype(np.float32)
        out.append(torch.from_numpy(f))
    return out


def _brute(chunks, thr):
    f = torch.cat(chunks).double().numpy()
    B = (f > np.asarray(thr)).astype(np.int64)
    X = np.where(f > 0, f, 0.0)
    Z = (f > 0).astype(np.int64)
    return B.T @ B, X.T @ X, (Z.T @ Z) > 0


def _check(stats, C, M, M_in):
    c, m = stats.co_count, stats.co_moment
    assert c.dtype == np.int64 and m.dtype == np.float64
    assert np.array_equal(c.toarray(), C)
    assert c.nnz == np.count_nonzero(C)  # no stored zeros: the same structure as before
    assert m.nnz == M_in.sum() and np.array_equal(m.toarray() != 0, M_in)
    np.testing.assert_allclose(m.toarray(), M, rtol=1e-12, atol=0)
    assert c.has_sorted_indices and m.has_sorted_indices


@pytest.mark.parametrize("store", ["triangle", "hash", "device"])
@pytest.mark.parametrize("read_between", [False, True])
@pytest.mark.parametrize("thr", [0.0, 0.8, "per-feature"])
def test_pair_sums_match_brute_force(read_between, thr, store):
    """Each accumulator — the host's two stores and the device path (the GPU's, run here on the CPU) — against brute
    force."""
    F = 23
    chunks = _chunks(F, [5, 1, 17, 9, 30, 2], density=0.15, seed=int(read_between))
    thr = np.linspace(0.0, 1.5, F) if thr == "per-feature" else thr
    s = (CoactivationStats(F, thr, dashboards=False, dense=True) if store == "device"
         else CoactivationStats(F, thr, dashboards=False, store=store))
    for c in chunks:
        s.update(c)
        if read_between:
            s.co_count  # noqa: B018 - a read between chunks builds the CSR; later chunks must still add on
    _check(s, *_brute(chunks, thr))
    i, j, cnt = s.pairs(min_cocount=2)
    C = _brute(chunks, thr)[0]
    assert np.all(i < j) and np.array_equal(cnt, C[i, j]) and np.all(cnt >= 2)
    assert len(i) == np.count_nonzero(np.triu(C, 1) >= 2)
    np.testing.assert_allclose(s.co_moment_of(i, j), _brute(chunks, thr)[1][i, j], rtol=1e-12)


@pytest.mark.parametrize("thr", [0.0, 0.8])
def test_merge_of_halves_equals_whole_and_brute_force(thr):
    F = 31
    chunks = _chunks(F, [12, 7, 20, 3, 11, 16], density=0.12, seed=5)
    whole, a, b = (CoactivationStats(F, thr, dashboards=False) for _ in range(3))
    for k, c in enumerate(chunks):
        whole.update(c)
        (a if k % 2 else b).update(c)
    merged = a.merge(b)
    assert np.array_equal(merged.co_count.toarray(), whole.co_count.toarray())
    assert (merged.co_moment != 0).nnz == whole.co_moment.nnz
    np.testing.assert_allclose(merged.co_moment.toarray(), whole.co_moment.toarray(), rtol=1e-12, atol=0)
    _check(merged, *_brute(chunks, thr))
    # merging an empty side changes nothing, and the inputs stay usable
    empty = CoactivationStats(F, thr, dashboards=False)
    assert np.array_equal(merged.merge(empty).co_count.toarray(), whole.co_count.toarray())
    a.update(chunks[0])
    assert a.co_count[0, 0] == (torch.cat(chunks[1::2] + [chunks[0]])[:, 0] > thr).sum().item()


def test_save_load_then_stream_on_is_exact(tmp_path):
    F = 19
    chunks = _chunks(F, [10, 14, 6, 9], density=0.2, seed=7)
    thr = 0.5
    s = CoactivationStats(F, thr, dashboards=False)
    for c in chunks[:2]:
        s.update(c)
    save_stats(s, tmp_path / "st")
    loaded, _ = load_stats(tmp_path / "st")
    for c in chunks[2:]:
        loaded.update(c)
    _check(loaded, *_brute(chunks, thr))


def test_65536_features_few_tokens_stays_small():
    F = 65_536
    rows = [[0, 1, 65_535], [1, 65_535], [0, 40_000, 65_535], []]
    f = torch.zeros(len(rows), F)
    for t, feats in enumerate(rows):
        f[t, feats] = torch.arange(1, len(feats) + 1, dtype=torch.float32)
    tracemalloc.start()
    s = CoactivationStats(F, dashboards=False, top_m=1)
    s.update(f[:2])
    s.update(f[2:])
    C, M = s.co_count, s.co_moment
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20  # a dense F × F int64 matrix would be 32 GiB
    assert C.shape == (F, F) and C[0, 65_535] == 2 and C[65_535, 0] == 2 and C[65_535, 65_535] == 3 and C[1, 65_535] == 2
    assert C[0, 1] == 1 and C[40_000, 65_535] == 1 and C.nnz == 4 + 2 * 5  # 4 features on the diagonal, 5 pairs
    # M: token 0 (1, 2, 3 on 0, 1, 65535), token 1 (1, 2 on 1, 65535), token 2 (1, 2, 3 on 0, 40000, 65535)
    assert M[0, 65_535] == 1 * 3 + 1 * 3 and M[1, 65_535] == 2 * 3 + 1 * 2 and M[65_535, 65_535] == 9 + 4 + 9
    assert M[40_000, 0] == 2 and (M != M.T).nnz == 0


@pytest.mark.parametrize("store", ["triangle", "hash"])
@pytest.mark.parametrize("thr", [0.0, 0.6])
def test_same_numbers_as_per_chunk_scipy_running_sums(thr, store):
    """Today's and yesterday's sums side by side: the same structure and co-counts as scipy's X.T @ X of each chunk
    added to a running sparse matrix (the accumulator this replaced), and co-moments that are the sequential float64
    sum in token order — bit for bit — which differs from the per-chunk partial sums by a few ulps at most."""
    import scipy.sparse as sp

    F = 29
    chunks = _chunks(F, [40, 3, 25, 60, 9, 33], density=0.25, seed=11)
    s = CoactivationStats(F, thr, dashboards=False, store=store)
    M = C = None
    seq = np.zeros((F, F))
    for c in chunks:
        s.update(c)
        f = c.double().numpy()
        X, B = sp.csr_matrix(np.where(f > 0, f, 0.0)), sp.csr_matrix((f > thr).astype(np.int64))
        M = (X.T @ X).tocsr() if M is None else M + (X.T @ X).tocsr()
        C = (B.T @ B).tocsr() if C is None else C + (B.T @ B).tocsr()
        for row in f:
            seq += np.outer(row, row)  # one product per pair per token, added in token order
    M.sort_indices()
    C.sort_indices()
    for mine, ref in [(s.co_count, C), (s.co_moment, M)]:
        assert np.array_equal(mine.indptr, ref.indptr) and np.array_equal(mine.indices, ref.indices)
    assert np.array_equal(s.co_count.data, C.data)
    np.testing.assert_allclose(s.co_moment.data, M.data, rtol=1e-14, atol=0)
    assert np.array_equal(s.co_moment.toarray(), seq)


def test_statistics_saved_before_upper_triangle_files_still_load(tmp_path):
    """Files written before the upper-triangle format held the symmetric matrices and no "pairs" key: same result."""
    import json

    import scipy.sparse as sp
    from safetensors.numpy import load_file, save_file

    F = 13
    s = CoactivationStats(F, 0.3, dashboards=False)
    for c in _chunks(F, [20, 9], density=0.3, seed=2):
        s.update(c)
    save_stats(s, tmp_path)
    a = load_file(str(tmp_path / "stats.safetensors"))
    C, M = s.co_count.tocoo(), s.co_moment.tocoo()  # what the old writer stored
    a.update({"c_row": C.row.astype(np.int64), "c_col": C.col.astype(np.int64), "c_val": C.data.astype(np.int64),
              "m_row": M.row.astype(np.int64), "m_col": M.col.astype(np.int64), "m_val": M.data})
    save_file(a, str(tmp_path / "stats.safetensors"))
    info = json.loads((tmp_path / "stats.json").read_text())
    del info["pairs"]
    (tmp_path / "stats.json").write_text(json.dumps(info))
    old, extra = load_stats(tmp_path)
    assert "pairs" not in extra
    assert (old.co_count != s.co_count).nnz == 0 and (old.co_moment != s.co_moment).nnz == 0
    i, j, c = s.pairs()
    assert np.array_equal(old.co_count_of(j, i), c) and np.array_equal(old.co_moment_of(i, j), s.co_moment_of(j, i))
    assert sp.issparse(old.upper()[0]) and old.upper()[0].nnz == sp.triu(s.co_count).nnz
