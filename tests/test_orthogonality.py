"""The decoder-orthogonality penalty (TrainConfig.decoder_orthogonality): co-active pairs, hand-computed values, its
effect on co-firing decoders, bit-identical results when off and on resume, and the CLI flag."""

import itertools

import pytest
import torch

from crosscoder.absorption import PlantedHierarchy
from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.errors import FeatgraphError
from crosscoder.train import coactive_pairs, decoder_orthogonality_penalty, pair_generator, train_crosscoder

from conftest import cli_help




def test_pairs_are_distinct_features_active_on_one_token():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(50, 20, generator=g) * (torch.rand(50, 20, generator=g) < 0.2)
    f[3] = 0  # an empty token, and tokens with one active feature, are never drawn
    f[4] = 0
    f[4, 7] = 1.0
    i, j = coactive_pairs(f, 5000, pair_generator(0, 0))
    assert i.shape == j.shape == (5000,) and (i != j).all()
    active = f > 0
    assert (active[:, i] & active[:, j]).any(dim=0).all()  # every pair fires together somewhere
    i2, j2 = coactive_pairs(f, 5000, pair_generator(0, 0))
    assert torch.equal(i, i2) and torch.equal(j, j2)  # a function of (seed, step)
    assert not torch.equal(i, coactive_pairs(f, 5000, pair_generator(0, 1))[0])
    assert coactive_pairs(torch.eye(4), 10, pair_generator(0, 0))[0].numel() == 0  # no token with two features


def test_pairs_are_uniform_over_coactive_pair_occurrences():
    """Token 0 has 2 active features (1 pair), token 1 has 5 (10 pairs): 10 of every 11 draws come from token 1, and
    each of its 10 pairs equally often — the mean over pair occurrences, not over tokens."""
    f = torch.zeros(2, 8)
    f[0, [0, 1]] = 1.0
    f[1, [3, 4, 5, 6, 7]] = 1.0
    n = 44_000
    i, j = coactive_pairs(f, n, pair_generator(3, 0))
    from_second = (i >= 3).float().mean().item()
    assert from_second == pytest.approx(10 / 11, abs=0.006)  # 4 standard errors
    pairs = torch.stack([torch.minimum(i, j), torch.maximum(i, j)], dim=1)[i >= 3]
    counts = torch.unique(pairs, dim=0, return_counts=True)[1].float()
    assert len(counts) == 10 and (counts / counts.sum() - 0.1).abs().max() < 0.01


def test_penalty_by_hand():
    """d_0 = (1, 0), d_1 = (1, 1)/√2·2, d_2 = (0, −3): |cos| = 1/√2 for (0, 1), 0 for (0, 2), 1/√2 for (1, 2).
    Token 0 has features 0 and 1 only: every pair is {0, 1} and the penalty is exactly 1/√2. Token 1 has 0, 1, 2: the
    pairs are uniform over the three (checked by frequency) and the penalty tends to (1/√2 + 0 + 1/√2)/3."""
    W = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, -3.0]])[:, None].requires_grad_(True)  # (F, L=1, D=2)
    one = torch.tensor([[0.5, 2.0, 0.0]])
    assert decoder_orthogonality_penalty(W, one, 64, pair_generator(0, 0)).item() == pytest.approx(2**-0.5)
    three = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    i, j = coactive_pairs(three, 30000, pair_generator(1, 0))
    pair = torch.minimum(i, j) * 3 + torch.maximum(i, j)
    for a, b in itertools.combinations(range(3), 2):
        assert (pair == a * 3 + b).float().mean().item() == pytest.approx(1 / 3, abs=0.015)
    p = decoder_orthogonality_penalty(W, three, 30000, pair_generator(1, 0))
    assert p.item() == pytest.approx(2 * 2**-0.5 / 3, abs=0.01)
    p.backward()
    assert W.grad is not None and W.grad.abs().sum() > 0
    assert decoder_orthogonality_penalty(W, torch.eye(3), 10, pair_generator(0, 0)).item() == 0.0


def test_config_checks():
    for kw, msg in [(dict(decoder_orthogonality=-1.0), "decoder_orthogonality must be a number >= 0"),
                    (dict(decoder_orthogonality=float("nan")), "decoder_orthogonality must be a number >= 0"),
                    (dict(orthogonality_pairs=0), "orthogonality_pairs must be positive")]:
        with pytest.raises(FeatgraphError, match=msg):
            TrainConfig(**kw)


def _cc(arch="relu", F=32):
    extra = {"k": 3} if arch == "batchtopk" else {}
    return build_crosscoder(CrosscoderConfig.from_flat(["h0"], 32, F, architecture=arch, seed=1, dead_after_tokens=2000, **extra))


DATA = PlantedHierarchy(n_parents=4, children=4, n_independent=8, d_model=32, p_child=0.3, p_parent_alone=0.1, seed=0)


def cofiring_cos(cc, x):
    """Mean |cos(d_i, d_j)| over pairs of distinct features, weighted by how often they fire together on ``x``."""
    cc.eval()
    a = (cc.encode(x) > 0).float()
    C = a.T @ a
    C.fill_diagonal_(0)
    d = torch.nn.functional.normalize(cc.W_dec_FLD.detach().flatten(1), dim=1)
    return float((C * (d @ d.T).abs()).sum() / C.sum())


@pytest.mark.parametrize("arch", ["relu", "batchtopk"])
def test_penalty_lowers_the_cosine_between_cofiring_decoders(arch, one_thread):
    x = DATA.sample(4096, torch.Generator().manual_seed(9)).x_BLD
    cos = {}
    for coeff in (0.0, 1.0):
        cc = _cc(arch)
        res = train_crosscoder(cc, DATA.batches(128, seed=2), TrainConfig(steps=400, batch_size=128, lr=3e-3, l1_coeff=0.1, log_every=100,
                                                                           decoder_orthogonality=coeff, orthogonality_pairs=1024), progress=False)
        assert ("orthogonality" in res.history[-1]) == (coeff > 0)
        cos[coeff] = cofiring_cos(cc, x)
    assert cos[1.0] < 0.6 * cos[0.0], cos


def test_off_is_bit_identical_and_touches_no_global_rng():
    """Coefficient 0 (the default) skips the penalty entirely: the number of pairs is irrelevant and the global RNG
    is untouched, so results equal the runs made before the option existed."""
    runs = []
    for tc in (TrainConfig(steps=30, batch_size=64), TrainConfig(steps=30, batch_size=64, decoder_orthogonality=0.0, orthogonality_pairs=3)):
        cc = _cc("batchtopk")
        torch.manual_seed(0)
        res = train_crosscoder(cc, DATA.batches(64, seed=2), tc, progress=False)
        runs.append((cc.state_dict(), res.history, torch.rand(1)))
    (a, ha, ra), (b, hb, rb) = runs
    assert all(torch.equal(a[k], b[k]) for k in a) and ha == hb and torch.equal(ra, rb)
    assert all("orthogonality" not in rec for rec in ha)


class CountingSource:
    """Batch n is drawn from a generator seeded with n: a data stream that checkpoints and resumes exactly."""

    def __init__(self):
        self.n = 0

    def next_batch(self):
        self.n += 1
        return DATA.sample(64, torch.Generator().manual_seed(self.n)).x_BLD

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = int(state["n"])


def test_resume_with_the_penalty_is_bit_identical(tmp_path):
    tc = TrainConfig(steps=20, batch_size=64, lr=3e-3, decoder_orthogonality=0.5, orthogonality_pairs=256, log_every=5, seed=4)
    straight = _cc()
    train_crosscoder(straight, CountingSource(), tc, progress=False, checkpoint_dir=tmp_path / "a", checkpoint_every=10)

    def stop(step):
        if step == 13:
            raise KeyboardInterrupt

    resumed = _cc()
    with pytest.raises(KeyboardInterrupt):
        train_crosscoder(resumed, CountingSource(), tc, progress=False, checkpoint_dir=tmp_path / "b", checkpoint_every=10, on_step=stop)
    resumed = _cc()
    res = train_crosscoder(resumed, CountingSource(), tc, progress=False, checkpoint_dir=tmp_path / "b", checkpoint_every=10, resume=True)
    assert res.resumed_from == 10
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_flags():
    text = cli_help("crosscoder", "train")
    assert "--decoder-orthogonality" in text and "--orthogonality-pairs" in text
