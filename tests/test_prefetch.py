"""The activation buffer's background refill: the same stream as the synchronous buffer, resumable, errors surfaced in
the main thread, no thread outliving the buffer."""

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, FitConfig, TrainConfig, default_hookpoints
from crosscoder.data import TokenRows
from crosscoder.errors import FeatgraphError
from crosscoder.fitting import fit
from crosscoder.harvest import ActivationBuffer, check_finite_activations, estimate_norm_scales
from crosscoder.train import train_crosscoder

HPS = ["a", "b"]


class TensorRows:
    """An in-memory row source: row r is ``acts_NTLD[r]``. Records the thread of every call; can sleep per call and
    raise ``error`` on call number ``fail_at`` (0 = the first fill)."""

    def __init__(self, acts_NTLD, fail_at=None, error=None, delay=0.0):
        self.acts_NTLD, self.fail_at, self.error, self.delay = acts_NTLD, fail_at, error, delay
        self.hookpoints = HPS
        self.n_rows, self.tokens_per_row, self.n_hookpoints, self.d_model = acts_NTLD.shape
        self.threads: list[threading.Thread] = []

    def activations(self, rows, device):
        self.threads.append(threading.current_thread())
        if self.delay:
            time.sleep(self.delay)
        if len(self.threads) - 1 == self.fail_at:
            raise self.error
        for a in range(0, len(rows), 3):
            block_BLD = self.acts_NTLD[rows[a : a + 3]].reshape(-1, self.n_hookpoints, self.d_model)
            check_finite_activations(block_BLD, HPS, "the test rows")
            yield block_BLD.to(device)


def random_rows(n_rows=40, seed=0):
    return torch.randn(n_rows, 5, 2, 6, generator=torch.Generator().manual_seed(seed))


def buffer(source, prefetch, seed=3, batch_size=8):
    return ActivationBuffer(None, None, HPS, torch.tensor([1.0, 0.5]), batch_size, n_buffer_tokens=40, seed=seed,
                            source=source, prefetch=prefetch)


def stream(buf, n):
    return [buf.next_batch() for _ in range(n)]


def test_same_stream_with_and_without_prefetch_on_the_model(tiny_embedded):
    model, rows = tiny_embedded.model, tiny_embedded.tokens_train_NT[:30]
    hps = default_hookpoints(model.cfg.n_layers)
    scales = estimate_norm_scales(model, rows, hps)

    def batches(prefetch):
        with ActivationBuffer(model, rows, hps, scales, batch_size=64, n_buffer_tokens=256, seed=2, prefetch=prefetch) as buf:
            return torch.cat(stream(buf, 24))  # 24 batches of 64 from a 279-token pool: 12 refills, 2+ passes over the rows

    sync, pre = batches(False), batches(True)
    assert torch.equal(sync, pre)
    assert not torch.equal(sync[:64], sync[64:128])


def test_refills_run_on_the_worker_thread_and_match():
    sync_src, pre_src = TensorRows(random_rows()), TensorRows(random_rows())
    a, b = buffer(sync_src, False), buffer(pre_src, True)
    for x, y in zip(stream(a, 30), stream(b, 30)):
        assert torch.equal(x, y)
    b.close()
    assert all(t is threading.main_thread() for t in sync_src.threads)
    assert pre_src.threads[0] is threading.main_thread()  # the first fill, in the constructor
    assert len(pre_src.threads) >= 10 and all(t.name == "featgraph-prefetch" for t in pre_src.threads[1:])


def test_state_dict_resumes_exactly_across_modes():
    """A checkpoint taken while a refill is in flight continues the stream in a new buffer, prefetching or not, and
    equals the synchronous buffer's checkpoint at the same point."""
    src = lambda: TensorRows(random_rows(23))  # noqa: E731 — 23 rows: row passes end mid-refill
    pre, sync = buffer(src(), True), buffer(src(), False)
    stream(pre, 7), stream(sync, 7)
    state, sync_state = pre.state_dict(), sync.state_dict()
    assert state.keys() == sync_state.keys()
    for k in state:
        assert torch.equal(torch.as_tensor(state[k]), torch.as_tensor(sync_state[k])), k
    rest = stream(pre, 20)
    for prefetch in (True, False):
        again = buffer(src(), prefetch, seed=99)  # another seed: everything comes from the state
        stream(again, 3)  # and a refill of its own in flight
        again.load_state_dict(state)
        assert all(torch.equal(x, y) for x, y in zip(rest, stream(again, 20)))
        again.close()
    pre.close()


def test_close_keeps_the_stream_and_leaves_no_thread():
    src = TensorRows(random_rows(), delay=0.05)
    ref = stream(buffer(TensorRows(random_rows()), False), 25)
    buf = buffer(src, True)
    got = stream(buf, 10)
    buf.close()  # a refill is in flight: close waits for it
    assert not any(t.is_alive() for t in src.threads[1:])  # [0] is this thread (the first fill)
    got += stream(buf, 15)  # later refills run in this thread
    assert all(torch.equal(x, y) for x, y in zip(ref, got))
    assert src.threads[-1] is threading.main_thread()


def test_a_dropped_buffer_leaves_no_thread():
    src = TensorRows(random_rows(), delay=0.2)
    buf = buffer(src, True)  # its first refill is in flight for 0.2 s
    del buf
    gc.collect()
    assert len(src.threads) == 2 and not src.threads[1].is_alive()  # __del__ joined it
    assert not any(t.name == "featgraph-prefetch" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("prefetch", [False, True])
def test_worker_errors_surface_at_the_same_batch(prefetch):
    """NaN activations (check_finite_activations' FeatgraphError) and any other exception from the source are raised
    by the same next_batch call as without prefetch, as the same exception object."""
    clean = buffer(TensorRows(random_rows()), False)
    late_row = int(clean.row_order[-1])  # read by a refill, not by the first fill
    acts = random_rows()
    acts[late_row, 2, 1, 3] = float("nan")
    bad = buffer(TensorRows(acts), prefetch)
    with pytest.raises(FeatgraphError, match=r"the test rows produced NaN/inf activations first at b .* at 1 of") as e:
        for i in range(30):
            bad.next_batch()
    assert i == _failing_batch(acts)
    boom = RuntimeError("boom")
    src = TensorRows(random_rows(), fail_at=3, error=boom)
    buf = buffer(src, prefetch)
    with pytest.raises(RuntimeError) as e:
        for i in range(30):
            buf.next_batch()
    # A 45-token pool (9 rows of 5) serves 2 batches of 8 from its 22-token front half per refill: batches 0-1 come
    # from the first fill (call 0), and call 3 is the refill batch 6 needs.
    assert e.value is boom and i == 6
    buf.close()


def _failing_batch(acts):
    buf = buffer(TensorRows(acts), False)
    for i in range(30):
        try:
            buf.next_batch()
        except FeatgraphError:
            return i
    raise AssertionError("the NaN row was never read")


def test_fit_is_the_same_with_and_without_prefetch(tiny_embedded, monkeypatch):
    import crosscoder.fitting

    monkeypatch.setattr(crosscoder.fitting, "_prefetch_pays", lambda device: True)  # as on CUDA: the thread runs here too
    model, emb = tiny_embedded.model, tiny_embedded
    rows = TokenRows(emb.tokens_train_NT[:40], emb.tokens_val_NT[:4], "tiny")
    hps = default_hookpoints(model.cfg.n_layers)

    def run(prefetch):
        cfg = CrosscoderConfig(hps, model.cfg.d_model, 32, seed=1)
        fit_cfg = FitConfig(buffer_tokens=256, eval_rows=4, splice=False, prefetch=prefetch)
        return fit(model, rows, TrainConfig(steps=12, batch_size=64, lr=3e-3), cc_cfg=cfg, fit_cfg=fit_cfg, seed=5, progress=False)

    a, b = run(False), run(True)
    for (k, x), y in zip(a.cc.state_dict().items(), b.cc.state_dict().values()):
        assert torch.equal(x, y), k
    assert a.metrics.fvu_per_hookpoint == b.metrics.fvu_per_hookpoint
    assert not any(t.name == "featgraph-prefetch" and t.is_alive() for t in threading.enumerate())


def test_interrupted_training_with_prefetch_resumes_bit_identically(tiny_embedded, tmp_path):
    model, rows = tiny_embedded.model, tiny_embedded.tokens_train_NT[:30]
    hps = default_hookpoints(model.cfg.n_layers)
    scales = estimate_norm_scales(model, rows, hps)
    tcfg = TrainConfig(steps=14, batch_size=64, lr=3e-3, l1_coeff=0.5)

    def run(ckpt, prefetch, stop_at=None):
        cc = build_crosscoder(CrosscoderConfig(hps, model.cfg.d_model, 32, seed=2))
        cc.norm_scale_L.copy_(scales)

        def stop(step):
            if step == stop_at:
                raise KeyboardInterrupt

        with ActivationBuffer(model, rows, hps, scales, batch_size=64, n_buffer_tokens=256, seed=4, prefetch=prefetch) as buf:
            train_crosscoder(cc, buf, tcfg, progress=False, checkpoint_dir=ckpt, checkpoint_every=3, resume=True, on_step=stop)
        return cc

    whole = run(tmp_path / "a", prefetch=False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", prefetch=True, stop_at=7)  # last checkpoint at step 6, with a refill in flight
    resumed = run(tmp_path / "b", prefetch=True)
    for (k, x), y in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), k


EXIT_SCRIPT = textwrap.dedent(
    """
    import torch
    from crosscoder.harvest import ActivationBuffer

    class Slow:
        hookpoints, n_rows, tokens_per_row, n_hookpoints, d_model = ["a"], 8, 4, 1, 3

        def activations(self, rows, device):
            y = torch.randn(600, 600)
            for _ in range(int(torch.randint(2, 5, ()))):  # a refill in flight, inside torch ops, when the script ends
                y = torch.tanh(y @ y)
            yield torch.ones(len(rows) * 4, 1, 3)

    buf = ActivationBuffer(None, None, ["a"], torch.ones(1), 4, n_buffer_tokens=8, source=Slow(), prefetch=True)
    """
)


def test_exit_with_a_refill_in_flight_is_clean(tmp_path):
    """A daemon thread inside a torch op at interpreter exit aborts the process; the atexit hook joins it first."""
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
