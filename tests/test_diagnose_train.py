"""Diagnose's training arms (featgraph.diagnose_train): L0 by pruning vs by penalty, and the width sweep, on the tiny
embedded model with tiny dictionaries and short runs."""

import copy
import json

import numpy as np
import pytest
import torch

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, FitConfig, TrainConfig
from crosscoder.data import TokenRows
from crosscoder.errors import FeatgraphError
from crosscoder.fitting import fit
from crosscoder.harvest import harvest
from crosscoder.io import strict_json
from featgraph import diagnose_train as dt
from featgraph.diagnose_train import (prune_vs_penalty, prune_vs_penalty_figure, switch_off, width_sweep,
                                      width_sweep_figure)

from conftest import planted_batches

HOOKPOINTS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
FIT = FitConfig(buffer_tokens=512, norm_tokens=1000, eval_rows=3, model_batch_size=16)
SHORT = TrainConfig(steps=30, batch_size=64, l1_coeff=1.0)
FREQ_ROWS = 24


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def setup(tiny_embedded):
    rows = TokenRows(tiny_embedded.tokens_train_NT[:48], tiny_embedded.tokens_val_NT[:6], "tiny embedded")
    return tiny_embedded.model, rows


@pytest.fixture(scope="module")
def parents(setup):
    """A parent of each architecture, trained briefly (λ = 1 for relu and jumprelu; k = 8 for batchtopk)."""
    model, rows = setup
    out = {}
    for arch, kw in (("relu", {}), ("jumprelu", {}), ("batchtopk", {"k": 8})):
        cfg = CrosscoderConfig.from_flat(HOOKPOINTS, model.cfg.d_model, 32, architecture=arch, **kw)
        out[arch] = fit(model, rows, TrainConfig(steps=60, batch_size=64, l1_coeff=1.0), cc_cfg=cfg, fit_cfg=FIT, progress=False).cc
    return out


def _snapshot(cc):
    return {k: v.clone() for k, v in cc.state_dict().items()}, copy.deepcopy(cc.cfg.to_dict()), cc.training


def _unchanged(cc, snap):
    state, cfg, training = snap
    now = cc.state_dict()
    return state.keys() == now.keys() and all(torch.equal(v, now[k]) for k, v in state.items()) and cc.cfg.to_dict() == cfg \
        and cc.training == training


def _counts(cc, model, tokens_NT):
    """Firing counts by hand: every token's features in eval mode."""
    with torch.no_grad():
        f = torch.cat([cc.encode(x) for x in harvest(model, tokens_NT, cc.cfg.all_hookpoints, 7)])
    return (f > 0).sum(0), f.shape[0]


@pytest.fixture(scope="module")
def relu_like(setup, parents):
    model, rows = setup
    out = {}
    for arch in ("relu", "jumprelu"):
        snap = _snapshot(parents[arch])
        r = prune_vs_penalty(parents[arch], model, rows, [4.0, 2.0], SHORT, FIT, seed=0, progress=False, freq_rows=FREQ_ROWS,
                             max_penalty_runs=3)
        out[arch] = (r, snap)
    return out


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_pruning_removes_the_most_frequent_latents_and_the_parent_is_left_alone(setup, parents, relu_like, arch):
    model, rows = setup
    cc = parents[arch]
    r, snap = relu_like[arch]
    assert _unchanged(cc, snap)
    counts, n = _counts(cc, model, rows.train_NT[:FREQ_ROWS])
    assert r.frequency_tokens == n == FREQ_ROWS * (rows.train_NT.shape[1] - 1)
    assert r.parent_l0_frequency_rows == pytest.approx(counts.sum().item() / n)
    for t in r.targets:
        p = t.pruning
        kept = sorted(set(range(32)) - set(p.pruned_features))
        assert p.n_pruned == len(p.pruned_features) > 0
        assert counts[p.pruned_features].min() >= counts[kept].max()  # the most frequent ones
        assert list(counts[p.pruned_features]) == sorted(counts[p.pruned_features], reverse=True)
        remaining = (counts.sum() - counts[p.pruned_features].sum()).item()
        assert p.l0_frequency_rows == pytest.approx(remaining / n) and p.l0_frequency_rows <= t.target_l0
        assert (remaining + counts[p.pruned_features[-1]].item()) / n > t.target_l0  # one fewer would not do: the fewest
    assert r.targets[1].pruning.n_pruned >= r.targets[0].pruning.n_pruned
    # the held-out numbers of the pruned copy are what evaluate gives for the parent with those latents switched off
    cut = switch_off(cc, r.targets[0].pruning.pruned_features)
    m = dt._evaluate(cut, model, rows, FIT)
    assert r.targets[0].pruning.fvu_pooled == pytest.approx(m.fvu_pooled) and r.targets[0].pruning.l0 == pytest.approx(m.l0)
    assert len(r.targets[0].pruning.ce_loss_recovered) == len(HOOKPOINTS)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_a_larger_penalty_gives_a_lower_l0_than_the_control(relu_like, arch):
    r, _ = relu_like[arch]
    assert r.knob == "l1_coeff" and r.control.l1_coeff == SHORT.l1_coeff
    for t in r.targets:
        pen = t.penalty
        assert pen.runs[0] == r.control  # the control is the first run of the search
        assert 2 <= len(pen.runs) <= 4  # the control and at most max_penalty_runs = 3 more
        assert pen.l1_coeff > r.control.l1_coeff and pen.l0 < r.control.l0
        coeffs = [x.l1_coeff for x in pen.runs]
        assert coeffs[:3] == [1.0, 2.0, 4.0][: len(coeffs[:3])]  # ×2 steps from the parent's λ
        below = [x for x in pen.runs if x.l0 <= t.target_l0]
        if below:  # closest from below; else the sparsest
            assert pen.reached and pen.l0 == max(x.l0 for x in below)
        else:
            assert not pen.reached and pen.l0 == min(x.l0 for x in pen.runs)
    json.dumps(strict_json(r.to_dict()), allow_nan=False)


def test_switch_off_silences_exactly_those_latents_in_every_architecture():
    x = planted_batches()()
    for arch, kw in (("relu", {}), ("jumprelu", {"init_threshold": 0.01}), ("batchtopk", {"k": 4})):
        cc = build_crosscoder(CrosscoderConfig.from_flat(["h0", "h1"], 8, 16, architecture=arch, **kw)).eval()
        with torch.no_grad():
            cc.b_enc_F.fill_(0.05)
            if arch == "batchtopk":
                cc.threshold.fill_(0.01)
        snap = _snapshot(cc)
        before = cc.encode(x).detach()
        off = [int(i) for i in (before > 0).sum(0).argsort(descending=True)[:5]]
        cut = switch_off(cc, off)
        after = cut.encode(x).detach()
        keep = [i for i in range(16) if i not in off]
        assert not cut.training and _unchanged(cc, snap)
        assert (before[:, off] > 0).any() and not (after[:, off] > 0).any()  # they fired and now never do
        assert torch.equal(after[:, keep], before[:, keep])  # the others are untouched, so L0 drops by their counts
        assert torch.equal(cut.W_dec_FLD[off], torch.zeros_like(cut.W_dec_FLD[off]))
    with pytest.raises(FeatgraphError, match="0..15"):
        switch_off(cc, [16])


def test_batchtopk_penalty_is_a_smaller_k_and_the_same_seed_gives_the_same_numbers(setup, parents):
    model, rows = setup
    cc = parents["batchtopk"]
    snap = _snapshot(cc)
    r = prune_vs_penalty(cc, model, rows, [3.0], SHORT, FIT, seed=3, progress=False, freq_rows=FREQ_ROWS)
    assert _unchanged(cc, snap)  # its k and θ too
    assert r.knob == "k" and r.control.k == 8 and r.control.l1_coeff is None
    pen = r.targets[0].penalty
    assert pen.k == 3 and [x.k for x in pen.runs] == [8, 3]
    assert pen.l0 < r.control.l0
    counts, n = _counts(cc, model, rows.train_NT[:FREQ_ROWS])
    p = r.targets[0].pruning
    assert p.l0_frequency_rows <= 3.0 and counts[p.pruned_features].min() >= np.delete(counts.numpy(), p.pruned_features).max()
    again = prune_vs_penalty(cc, model, rows, [3.0], SHORT, FIT, seed=3, progress=False, freq_rows=FREQ_ROWS)
    assert again.to_dict() == r.to_dict()


def test_width_sweep_runs_each_width_and_clamps_k(setup, parents, monkeypatch):
    model, rows = setup
    cc = parents["batchtopk"]
    snap = _snapshot(cc)
    built = []

    def recording_fit(*args, **kwargs):
        res = fit(*args, **kwargs)
        built.append((res.cc.cfg.n_features, res.cc.opts.k, res.cc.cfg.hookpoints, res.cc.cfg.architecture))
        return res

    monkeypatch.setattr(dt, "fit", recording_fit)
    r = width_sweep(cc, model, rows, [16, 4], SHORT, FIT, seed=0, progress=False)
    assert _unchanged(cc, snap)
    assert [x.n_features for x in r.runs] == [4, 16] and [b[0] for b in built] == [4, 16]
    assert [x.k for x in r.runs] == [b[1] for b in built] == [4, 8] and [x.k_clamped for x in r.runs] == [True, False]
    assert all(b[2] == HOOKPOINTS and b[3] == "batchtopk" for b in built)
    assert r.notes == ["width 4: k clamped from 8 to 4"] and r.parent_n_features == 32
    for x in r.runs:
        assert len(x.fvu_per_hookpoint) == len(x.ce_loss_recovered) == 2 and 0 <= x.dead_fraction <= 1
        assert x.dead_fraction * x.n_features == pytest.approx(round(x.dead_fraction * x.n_features))
    json.dumps(strict_json(r.to_dict()), allow_nan=False)


def test_width_sweep_same_seed_same_numbers(setup, parents):
    model, rows = setup
    one = width_sweep(parents["relu"], model, rows, [8], SHORT, FIT, seed=1, progress=False)
    assert width_sweep(parents["relu"], model, rows, [8], SHORT, FIT, seed=1, progress=False).to_dict() == one.to_dict()
    other = width_sweep(parents["relu"], model, rows, [8], SHORT, FIT, seed=2, progress=False)
    assert other.runs[0].fvu_pooled != one.runs[0].fvu_pooled  # the seed is what fixes them
    assert one.runs[0].l1_coeff == SHORT.l1_coeff and one.runs[0].k is None


def test_model_crosscoders_and_bad_input_are_one_line(setup, parents):
    model, rows = setup
    mc = build_crosscoder(CrosscoderConfig(HOOKPOINTS, model.cfg.d_model, 16, models=["base", "tuned"]))
    for call in (lambda: prune_vs_penalty(mc, model, rows, [2.0], SHORT, FIT, progress=False),
                 lambda: width_sweep(mc, model, rows, [8], SHORT, FIT, progress=False)):
        with pytest.raises(FeatgraphError, match="diagnose's training arms take a one-model crosscoder") as e:
            call()
        assert "\n" not in str(e.value)
    cc = parents["relu"]
    for targets, match in (([], "at least one target"), ([0.0], "> 0"), ([float("nan")], "> 0")):
        with pytest.raises(FeatgraphError, match=match):
            prune_vs_penalty(cc, model, rows, targets, SHORT, FIT, progress=False)
    for widths, match in (([], "at least one width"), ([8, 0], "positive")):
        with pytest.raises(FeatgraphError, match=match):
            width_sweep(cc, model, rows, widths, SHORT, FIT, progress=False)


def test_figures_plot_the_recorded_numbers(relu_like):
    r, _ = relu_like["relu"]
    fig = prune_vs_penalty_figure(r)
    axes = fig.axes
    assert len(axes) == 2  # FVU and CE recovered
    lines = {ln.get_label(): ln for ln in axes[0].get_lines()}
    prune = sorted(t.pruning.l0 for t in r.targets)
    np.testing.assert_allclose(lines["pruning (no retraining)"].get_xdata(), prune)
    assert list(lines["control (fine-tune at the parent's λ)"].get_ydata()) == [r.control.fvu_pooled]
    ce = {ln.get_label(): ln for ln in axes[1].get_lines()}
    assert ce["parent"].get_ydata()[0] == pytest.approx(np.mean(r.parent.ce_loss_recovered))
    sweep = dt.WidthSweep("relu", HOOKPOINTS, 32, [dt.WidthRun(1.0, 0.5, [0.4, 0.6], [0.9, float("nan")], 0.0, n_features=w)
                                                   for w in (8, 32)], 10, 3, 0)
    fig = width_sweep_figure(sweep)
    fvu_ax, ce_ax = fig.axes
    assert fvu_ax.get_xscale() == "log" and [ln.get_label() for ln in fvu_ax.get_lines()] == ["0.resid_post", "1.resid_post", "pooled"]
    np.testing.assert_allclose(fvu_ax.get_lines()[1].get_ydata(), [0.6, 0.6])
    np.testing.assert_allclose(fvu_ax.get_lines()[0].get_xdata(), [8, 32])
    assert len(ce_ax.get_lines()) == 2
