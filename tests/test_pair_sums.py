"""The compiled pair-sum stores (featgraph.pair_sums) against brute force: both stores, growth, restarts, overflow."""

import numpy as np
import pytest

from featgraph.pair_sums import PairSums, csr_of_nonzero, feature_pass, triangle_bytes


def _random_chunks(F, sizes, density, seed):
    rng = np.random.default_rng(seed)
    return [np.where(rng.random((n, F)) < density, rng.exponential(1.0, (n, F)) + 1e-3, 0.0).astype(np.float32) for n in sizes]


def _brute(chunks, thr):
    f = np.concatenate(chunks).astype(np.float64)
    B = (f > thr).astype(np.int64)
    return B.T @ B, f.T @ f


@pytest.mark.parametrize("store,capacity", [("triangle", 2), ("hash", 2), ("hash", 1 << 16)])
def test_both_stores_equal_brute_force_through_growth(store, capacity):
    F, thr = 41, 0.7
    chunks = _random_chunks(F, [7, 0, 1, 50, 13, 120], density=0.3, seed=3)
    ps = PairSums(F, store, capacity=capacity)
    for f in chunks:
        indptr, cols, vals, bad = csr_of_nonzero(f)
        assert bad == 0
        ps.add(indptr, cols, vals, vals > thr)
    C, M = _brute(chunks, thr)
    i, j, cnt, mom = ps.to_coo()
    assert np.all(i <= j) and np.all(np.diff(i * F + j) > 0)  # upper triangle, sorted, no repeats
    assert len(i) == np.count_nonzero(np.triu(M))  # every co-active pair, counted or not
    assert np.array_equal(cnt, C[i, j]) and np.count_nonzero(cnt) == np.count_nonzero(np.triu(C))
    np.testing.assert_allclose(mom, M[i, j], rtol=1e-12, atol=0)
    if store == "hash" and capacity == 2:
        assert ps.nbytes >= 24 * len(i) / 0.7  # it grew past the pairs it holds, under the load bound


@pytest.mark.parametrize("store", ["triangle", "hash"])
def test_add_coo_continues_saved_sums(store):
    F = 17
    a, b = _random_chunks(F, [30, 25], density=0.4, seed=5)
    whole = PairSums(F, store)
    for f in (a, b):
        whole.add(*csr_of_nonzero(f)[:3])
    first = PairSums(F, store)
    first.add(*csr_of_nonzero(a)[:3])
    resumed = PairSums(F, store)
    resumed.add_coo(*first.to_coo())
    resumed.add(*csr_of_nonzero(b)[:3])
    for x, y in zip(resumed.to_coo(), whole.to_coo()):
        np.testing.assert_allclose(x, y, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="i <= j"):
        resumed.add_coo(np.array([3]), np.array([1]), np.array([1]), np.array([1.0]))


def test_triangle_counts_move_to_int64_before_they_could_overflow():
    ps = PairSums(5, "triangle")
    ps.n_tokens = 2**31 - 2  # as if that many tokens had been added
    ps.add(np.array([0, 2, 3, 4]), np.array([1, 3, 3, 0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert ps._cnt.dtype == np.int64
    i, j, cnt, mom = ps.to_coo()
    assert list(zip(i, j, cnt, mom)) == [(0, 0, 1, 16.0), (1, 1, 1, 1.0), (1, 3, 1, 2.0), (3, 3, 2, 4.0 + 9.0)]


def test_auto_store_follows_the_bound_and_bad_arguments_fail():
    assert PairSums(100, dense_bytes=triangle_bytes(100)).store == "triangle"
    assert PairSums(100, dense_bytes=triangle_bytes(100) - 1).store == "hash"
    with pytest.raises(ValueError, match="store"):
        PairSums(10, "dense")
    with pytest.raises(ValueError, match="power of two"):
        PairSums(10, "hash", capacity=6)


def test_csr_of_nonzero_skips_silent_entries_and_counts_non_finite():
    f = np.array([[0.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [np.nan, 1.0, np.inf, 0.0]], dtype=np.float32)
    indptr, cols, vals, bad = csr_of_nonzero(f)
    assert indptr.tolist() == [0, 2, 2, 4] and cols.tolist() == [1, 3, 1, 2] and bad == 2
    assert vals[:3].tolist() == [2.0, 0.5, 1.0] and np.isinf(vals[3])


def test_csr_of_nonzero_grows_its_output_mid_chunk():
    rng = np.random.default_rng(4)
    f = np.where(rng.random((300, 200)) < 0.5, rng.random((300, 200)) + 0.1, 0.0).astype(np.float32)
    f[250, 3] = np.nan  # counted once, although the pass restarts the row that did not fit
    indptr, cols, vals, bad = csr_of_nonzero(f)  # ~100 entries a row: more than the first guess of 64 a row
    r, c = np.nonzero(f > 0)
    assert np.array_equal(cols, c) and np.array_equal(vals, f[r, c]) and bad == 1
    assert np.array_equal(np.repeat(np.arange(300), np.diff(indptr)), r)


def test_feature_pass_keeps_the_top_m_and_ties_keep_the_earlier_token():
    F, M = 3, 2
    rows, cols = np.array([0, 0, 1, 2, 3]), np.array([0, 2, 0, 0, 0])
    vals = np.array([1.0, 5.0, 3.0, 3.0, 0.5], dtype=np.float32)
    count, s, sq, mx = np.zeros(F, np.int64), np.zeros(F), np.zeros(F), np.zeros(F)
    top_v, top_i = np.full((F, M), -np.inf), np.full((F, M), -1, np.int64)
    feature_pass(rows, cols, vals, 0.9, np.array([10, 11, 12, 13]), count, s, sq, mx, top_v, top_i)
    assert count.tolist() == [3, 0, 1] and s.tolist() == [7.5, 0.0, 5.0] and sq.tolist() == [19.25, 0.0, 25.0]
    assert mx.tolist() == [3.0, 0.0, 5.0]
    assert top_v[0].tolist() == [3.0, 3.0] and top_i[0].tolist() == [11, 12]  # equal values: the earlier token first
    assert top_i[1].tolist() == [-1, -1] and top_v[2, 0] == 5.0 and top_i[2].tolist() == [10, -1]
