"""Harvesting on the embedded model: hookpoints, normalisation, BOS, the shuffled buffer."""

import pytest
import torch

from crosscoder.config import default_hookpoints
from crosscoder.errors import FeatgraphError
from crosscoder.harvest import ActivationBuffer, estimate_norm_scales, harvest


def test_default_hookpoints():
    assert default_hookpoints(2) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_harvest_drops_bos_and_stops_early(tiny_embedded):
    model, rows = tiny_embedded.model, tiny_embedded.tokens_val_NT[:5]
    hps = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]
    acts = torch.cat(list(harvest(model, rows, hps, batch_size=2)))
    T = rows.shape[1]
    assert acts.shape == (5 * (T - 1), 2, model.cfg.d_model)
    with torch.no_grad():
        _, cache = model.run_with_cache(rows)
    torch.testing.assert_close(acts[:, 0], cache["blocks.0.hook_resid_pre"][:, 1:].reshape(-1, model.cfg.d_model))
    torch.testing.assert_close(acts[:, 1], cache["blocks.0.hook_resid_post"][:, 1:].reshape(-1, model.cfg.d_model))


def test_unknown_hookpoint_is_one_clear_line(tiny_embedded):
    with pytest.raises(FeatgraphError, match="unknown hookpoint 'blocks.9.hook_resid_post'") as e:
        next(harvest(tiny_embedded.model, tiny_embedded.tokens_val_NT[:2], ["blocks.9.hook_resid_post"]))
    assert "\\n" not in str(e.value)


def test_norm_scales_give_sqrt_d(tiny_embedded):
    model, rows = tiny_embedded.model, tiny_embedded.tokens_train_NT[:40]
    hps = default_hookpoints(model.cfg.n_layers)
    scales = estimate_norm_scales(model, rows, hps, n_tokens=10**9)
    acts = torch.cat(list(harvest(model, rows, hps)))
    mean_norm = (acts * scales[:, None]).norm(dim=-1).mean(0)
    torch.testing.assert_close(mean_norm, torch.full_like(mean_norm, model.cfg.d_model**0.5), rtol=1e-4, atol=1e-4)


def test_buffer_serves_normalised_shuffled_seeded_batches(tiny_embedded):
    model, rows = tiny_embedded.model, tiny_embedded.tokens_train_NT[:30]
    hps = default_hookpoints(model.cfg.n_layers)
    scales = estimate_norm_scales(model, rows, hps)
    all_acts = torch.cat(list(harvest(model, rows, hps))) * scales[:, None]

    def batches(seed):
        buf = ActivationBuffer(model, rows, hps, scales, batch_size=64, n_buffer_tokens=256, seed=seed)
        return torch.cat([buf.next_batch() for _ in range(20)])  # several refills

    got = batches(0)
    assert got.shape == (20 * 64, len(hps), model.cfg.d_model)
    assert torch.equal(got, batches(0)) and not torch.equal(got, batches(1))
    # every served activation is a real (normalised) activation of some token
    d = torch.cdist(got[:100].flatten(1), all_acts.flatten(1), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert d.max() < 1e-3
    # shuffled: consecutive served tokens are not consecutive tokens of the corpus
    first = torch.cdist(got[:8].flatten(1), all_acts.flatten(1), compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
    assert not torch.equal(first[1:] - first[:-1], torch.ones(7, dtype=torch.long))


def test_activation_cache_round_trip_resume_and_buffer(tiny_embedded, tmp_path):
    from crosscoder.activation_cache import ActivationCache, write_activation_cache

    model, rows = tiny_embedded.model, tiny_embedded.tokens_train_NT[:20]
    hps = default_hookpoints(model.cfg.n_layers)
    cache = write_activation_cache(model, rows, hps, tmp_path / "cache", rows_per_shard=6, progress=False)
    assert cache.n_rows == 20 and len(cache.shards) == 4
    direct = torch.cat(list(harvest(model, rows, hps)))
    via_cache = torch.cat(list(cache.activations(torch.arange(20), "cpu")))
    torch.testing.assert_close(via_cache, direct)
    # rows in any order come back as those rows
    order = torch.tensor([13, 2, 19])
    T = rows.shape[1] - 1
    got = torch.cat(list(cache.activations(order, "cpu")))
    torch.testing.assert_close(got, torch.cat([direct[r * T : (r + 1) * T] for r in order.tolist()]))
    # an interrupted harvest resumes: delete a shard and unfinish the meta, then write again
    (tmp_path / "cache" / "shard-00002.bin").unlink()
    with pytest.raises(FeatgraphError, match="missing or truncated"):
        ActivationCache(tmp_path / "cache")
    again = write_activation_cache(model, rows, hps, tmp_path / "cache", rows_per_shard=6, progress=False)
    torch.testing.assert_close(torch.cat(list(again.activations(torch.arange(20), "cpu"))), direct)
    # the buffer serves the same stream from the cache as from the model
    scales = estimate_norm_scales(model, rows, hps)
    a = ActivationBuffer(model, rows, hps, scales, batch_size=64, n_buffer_tokens=256, seed=3)
    b = ActivationBuffer(None, None, hps, scales, batch_size=64, n_buffer_tokens=256, seed=3, source=again)
    for _ in range(8):
        torch.testing.assert_close(a.next_batch(), b.next_batch())
