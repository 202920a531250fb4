"""An activation cache written by one process and read under torchrun: each rank serves its own share of the rows
(disjoint, together all of them, from the seed), exactly the rows it would run through the model."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from crosscoder.activation_cache import open_activation_cache
from crosscoder.config import CrosscoderConfig, FitConfig, TrainConfig
from crosscoder.data import TokenRows
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import ActivationBuffer, RowSubset, rank_rows

HPS = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def random_model_and_rows():
    """A seeded random model and token rows that the test and every rank build identically."""
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=8, d_vocab=50, act_fn="relu"))
    g = torch.Generator().manual_seed(1)
    rows = TokenRows(torch.randint(0, 50, (41, 8), generator=g), torch.randint(0, 50, (4, 8), generator=g), "random")
    return model, rows


def configs(cache=None):
    cc = CrosscoderConfig(HPS, 16, 32, seed=2)
    fit = FitConfig(buffer_tokens=96, norm_tokens=200, eval_rows=4, splice=False, activation_cache=cache)
    return cc, fit, TrainConfig(steps=8, batch_size=16, lr=3e-3)


RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.simplefilter("ignore")
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from crosscoder.errors import FeatgraphError
    from crosscoder.fitting import _buffer, fit

    cache, out = sys.argv[1], sys.argv[2]
    sys.path.insert(0, sys.argv[3])
    from test_cache_ranks import configs, random_model_and_rows  # the test's own model, rows and configs
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, rows = random_model_and_rows()
    record = {}
    try:  # no rank may write a cache: one that is not there is refused
        cc_cfg, fit_cfg, train_cfg = configs(os.path.join(out, "missing"))
        fit(model, rows, train_cfg, cc_cfg=cc_cfg, fit_cfg=fit_cfg, seed=3, progress=False)
    except FeatgraphError as e:
        record["missing"] = str(e)
    cc_cfg, fit_cfg, train_cfg = configs(cache)
    result = fit(model, rows, train_cfg, cc_cfg=cc_cfg, fit_cfg=fit_cfg, seed=3, progress=False)
    buf = _buffer(result.cc, model, rows, train_cfg, fit_cfg, 3, "cpu", False)
    record["rows"] = buf.source.rows.tolist()
    cached = torch.cat([buf.next_batch() for _ in range(12)])
    buf.close()
    _, fly_cfg, _ = configs(None)
    fly = _buffer(result.cc, model, rows, train_cfg, fly_cfg, 3, "cpu", False)
    on_the_fly = torch.cat([fly.next_batch() for _ in range(12)])
    fly.close()
    fly_result = fit(model, rows, train_cfg, cc_cfg=cc_cfg, fit_cfg=fly_cfg, seed=3, progress=False)
    tensors = {f"cache.{k}": v.contiguous() for k, v in result.cc.state_dict().items()}
    tensors |= {f"fly.{k}": v.contiguous() for k, v in fly_result.cc.state_dict().items()}
    tensors |= {"batches.cache": cached, "batches.fly": on_the_fly}
    save_file(tensors, os.path.join(out, f"rank{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.barrier()  # every rank waits for the others' files, then all leave together (a rank leaving alone can abort gloo)
    dist.destroy_process_group()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown: with gloo a rank sometimes aborts there (see test_distributed.py)
    """
)

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n_rows", [10, 11, 2])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_rows_are_disjoint_cover_all_and_follow_the_seed(n_rows, world):
    if n_rows < world:
        return
    shares = [rank_rows(n_rows, r, world, seed=7) for r in range(world)]
    every = torch.cat(shares)
    assert sorted(every.tolist()) == list(range(n_rows))  # disjoint and covering
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1
    assert all(torch.equal(s, rank_rows(n_rows, r, world, seed=7)) for r, s in enumerate(shares))
    if world > 1 and n_rows >= 10:
        assert any(not torch.equal(s, rank_rows(n_rows, r, world, seed=8)) for r, s in enumerate(shares))
        assert not torch.equal(shares[0], torch.arange(n_rows)[::world])  # a shuffled order, not a stride
    with pytest.raises(FeatgraphError, match="rank 3 is not in"):
        rank_rows(n_rows, 3, world, seed=7)


def test_a_row_subset_serves_its_rows():
    class Rows:
        hookpoints, n_rows, tokens_per_row, n_hookpoints, d_model = ["a"], 6, 2, 1, 1

        def activations(self, rows, device):
            yield (rows.float()[:, None, None, None] * 10 + torch.arange(2.0)[None, :, None, None]).reshape(-1, 1, 1)

    sub = RowSubset(Rows(), torch.tensor([5, 1, 3]))
    assert sub.n_rows == 3 and sub.tokens_per_row == 2
    got = torch.cat(list(sub.activations(torch.tensor([2, 0]), "cpu")))
    assert got.flatten().tolist() == [30.0, 31.0, 50.0, 51.0]
    with pytest.raises(FeatgraphError, match="no token rows"):
        ActivationBuffer(None, None, ["a"], torch.ones(1), 2, source=RowSubset(Rows(), torch.tensor([], dtype=torch.long)))


def test_open_refuses_a_missing_incomplete_or_different_cache(tmp_path):
    from crosscoder.activation_cache import write_activation_cache

    model, rows = random_model_and_rows()
    hps = HPS
    with pytest.raises(FeatgraphError, match=r"does not exist; write it first in one process .*--activation-cache") as e:
        open_activation_cache(model, rows.train_NT, hps, tmp_path / "c")
    assert "\n" not in str(e.value)
    write_activation_cache(model, rows.train_NT, hps, tmp_path / "c", progress=False)
    assert open_activation_cache(model, rows.train_NT, hps, tmp_path / "c").n_rows == 41
    with pytest.raises(FeatgraphError, match="holds a different activation cache \\(its hookpoints differs\\)"):
        open_activation_cache(model, rows.train_NT, hps[:2], tmp_path / "c")
    with pytest.raises(FeatgraphError, match="its shard_rows differs"):
        open_activation_cache(model, rows.train_NT[:40], hps, tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(FeatgraphError, match="is incomplete; write it first in one process"):
        open_activation_cache(model, rows.train_NT, hps, tmp_path / "c")


def test_two_gloo_ranks_read_one_cache(tmp_path):
    from crosscoder.fitting import fit

    # One process writes the cache (and trains from it), as `featgraph crosscoder train --activation-cache DIR` does.
    model, rows = random_model_and_rows()
    cc_cfg, fit_cfg, train_cfg = configs(tmp_path / "cache")
    fit(model, rows, train_cfg, cc_cfg=cc_cfg, fit_cfg=fit_cfg, seed=3, progress=False)
    assert json.loads((tmp_path / "cache" / "meta.json").read_text())["complete"]

    script = tmp_path / "ranks_script.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(tmp_path / "cache"), str(tmp_path), os.path.dirname(__file__)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    saved = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]

    # Every rank refused the missing cache with the one-line command to write it first.
    for rec in records:
        assert "does not exist; write it first in one process" in rec["missing"] and "\n" not in rec["missing"]
    # The shares are disjoint, cover the cache and are the seed's.
    shares = [rec["rows"] for rec in records]
    assert sorted(shares[0] + shares[1]) == list(range(41))
    assert shares == [rank_rows(41, r, 2, seed=3).tolist() for r in range(2)]
    for s in saved:  # each rank's batches from the cache are the ones its own rows give through the model
        torch.testing.assert_close(s["batches.cache"], s["batches.fly"], rtol=1e-5, atol=1e-5)
    assert not torch.equal(saved[0]["batches.cache"], saved[1]["batches.cache"])
    # Data-parallel training keeps the ranks' parameters identical, and training from the cache equals training on
    # the fly up to float rounding (a row's activations are harvested in another batch).
    for k in saved[0]:
        if k.startswith(("cache.", "fly.")):
            assert torch.equal(saved[0][k], saved[1][k]), k
    for k in (k for k in saved[0] if k.startswith("cache.")):
        a, b = saved[0][k], saved[0]["fly." + k[len("cache."):]]
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(a, b), k
