"""Decoding: greedy is deterministic and cache-exact, sampling follows its knobs, eos stops it."""
from __future__ import annotations

import pytest
import torch

import stratalm
from stratalm.errors import InputTooLongError
from stratalm.families import preset
from stratalm.generate import pick_next, stream_tokens
from stratalm.models import CausalLM
from stratalm.tokenize import train_char


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CausalLM(preset("tiny", vocab_size=60, max_seq_len=24, n_layers=2, d_model=64)).eval()
    m.tokenizer = train_char(iter(["abcdefghijklmnopqrstuvwxyz .,\n"]))
    return m


def greedy_without_cache(model, ids, n):
    ids = ids.clone()
    for _ in range(n):
        nxt = model(ids[:, -model.config.max_seq_len:]).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids[:, -n:]


def test_greedy_with_cache_equals_recomputing_everything(model):
    ids = torch.randint(7, 37, (2, 5))
    got = torch.stack(list(stream_tokens(model, ids, 15, temperature=0)), dim=1)
    with torch.no_grad():
        assert torch.equal(got, greedy_without_cache(model, ids, 15))


def test_generation_runs_past_the_context_by_sliding(model):
    out = list(stream_tokens(model, torch.randint(7, 37, (1, 20)), 40, temperature=0))
    assert len(out) == 40  # the context is 24; the window slides instead of stopping


def test_sampling_knobs():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert pick_next(logits, temperature=0).item() == 0
    assert all(pick_next(logits, 1.0, top_k=1, generator=g).item() == 0 for _ in range(20))
    assert all(pick_next(logits, 1.0, top_p=0.1, generator=g).item() == 0 for _ in range(20))
    draws = torch.cat([pick_next(logits, 1.0, top_k=2, generator=g) for _ in range(400)])
    assert set(draws.tolist()) == {0, 1}
    share = (draws == 0).float().mean().item()  # p(0 | top-2) = e^2 / (e^2 + e^1) = 0.73
    assert 0.65 < share < 0.81


def test_seed_makes_sampling_reproducible(model):
    a = stratalm.generate(model, "abc", max_new_tokens=20, temperature=1.0, seed=3)
    b = stratalm.generate(model, "abc", max_new_tokens=20, temperature=1.0, seed=3)
    c = stratalm.generate(model, "abc", max_new_tokens=20, temperature=1.0, seed=4)
    assert a == b and a != c


def test_generation_stops_at_eos(model):
    eos = model.tokenizer.eos_id

    def favour_eos(module, inputs, logits):
        logits[..., eos] += 100.0  # make eos the greedy choice
        return logits

    hook = model.lm_head.register_forward_hook(favour_eos)
    try:
        tokens = list(stream_tokens(model, torch.tensor([[10, 11]]), 30, temperature=0, eos_id=eos))
        text = stratalm.generate(model, "ab", max_new_tokens=5, temperature=0)
    finally:
        hook.remove()
    assert len(tokens) == 1 and tokens[0].item() == eos
    assert text == ""  # the end-of-text token itself is never shown


def test_a_prompt_longer_than_the_context_is_refused(model):
    with pytest.raises(InputTooLongError, match="context is 24"):
        stratalm.generate(model, "abcdefghijklmnopqrstuvwxyz", max_new_tokens=5)


def test_streamed_pieces_add_up_to_the_returned_text(model):
    pieces = []
    text = stratalm.generate(model, "abc", max_new_tokens=15, temperature=0.9, seed=1, on_text=pieces.append)
    assert "".join(pieces) == text and len(text) > 0


def test_generate_refuses_models_that_do_not_continue_text():
    from stratalm.errors import StratalmError
    from stratalm.models import build_model

    encoder = build_model(preset("bert", vocab_size=60, n_layers=1))
    with pytest.raises(StratalmError, match="decoder model; this is a bert encoder model"):
        stratalm.generate(encoder, "abc")
