"""Greedy and beam search: one beam is greedy, beams find sequences at least as likely as greedy,
the KV-cached batched search equals a plain reference without a cache, for decoders and T5."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stratalm.families import preset
from stratalm.generate import beam_search, greedy_search, stream_tokens
from stratalm.models import build_model

VOCAB = 40


def tiny(kind: str) -> torch.nn.Module:
    # A wide initialisation makes the random model's distributions peaked, so no two candidates
    # tie within float rounding and the comparisons below are exact (T5 scales its logits down
    # by sqrt(d_model), so it needs a wider one).
    small = dict(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=64, dropout=0.0)
    config = {"gpt2": lambda: preset("tiny", **small, init_std=0.3),
              "llama": lambda: preset("llama-tiny", **small, init_std=0.3, n_kv_heads=2),
              "t5": lambda: preset("t5", **small, init_std=1.0, head_dim=8, n_decoder_layers=3, relative_buckets=8)}[kind]()
    torch.manual_seed(1)
    return build_model(config).eval()


PROMPTS = [[5, 9, 11], [7], [12, 13, 14, 15, 16, 17], [20, 3, 20, 3]]


def reference_beam(model, prompt, beams, max_new_tokens, eos_id, length_penalty):
    """Beam search written plainly: one prompt, the whole sequence through the model at every
    step (no cache, no padding), candidates ranked in Python."""
    seq2seq = model.config.stack == "encoder-decoder"

    def log_probs(generated):
        with torch.no_grad():
            if seq2seq:
                decoder = [model.config.decoder_start_token_id] + generated
                logits = model(torch.tensor([prompt]), decoder_input_ids=torch.tensor([decoder])).logits
            else:
                logits = model(torch.tensor([prompt + generated])).logits
        return F.log_softmax(logits[0, -1].float(), dim=-1).tolist()

    live, finished = [([], 0.0)], []
    for step in range(max_new_tokens):
        candidates = sorted(((score + lp, b, token) for b, (generated, score) in enumerate(live)
                             for token, lp in enumerate(log_probs(generated))), key=lambda c: -c[0])[:2 * beams]
        kept = []
        for rank, (score, b, token) in enumerate(candidates):
            if token == eos_id:
                if rank < beams:
                    finished.append((live[b][0], score, step + 1))
                continue
            kept.append((live[b][0] + [token], score))
            if len(kept) == beams:
                break
        live = kept
        if len(finished) >= beams:
            break
    pool = finished + ([(g, s, len(g)) for g, s in live] if len(finished) < beams else [])
    return max(pool, key=lambda h: h[1] / h[2] ** length_penalty)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_one_beam_is_greedy(kind):
    model = tiny(kind)
    free = greedy_search(model, PROMPTS, max_new_tokens=12)
    eos = free[0].tokens[4]  # a token greedy produces, so rows stop early
    greedy = greedy_search(model, PROMPTS, max_new_tokens=12, eos_id=eos)
    beam = beam_search(model, PROMPTS, beams=1, max_new_tokens=12, eos_id=eos, length_penalty=1.0)
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]
    assert len(greedy[0].tokens) <= 4 and greedy[0].length == len(greedy[0].tokens) + 1  # stopped at eos
    for b, g in zip(beam, greedy):
        assert b.score == pytest.approx(g.score, abs=1e-4) and b.length == g.length


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_greedy_equals_the_sampler_one_prompt_at_a_time(kind):
    model = tiny(kind)
    batched = greedy_search(model, PROMPTS, max_new_tokens=10)  # left padding, position ids per row
    for prompt, hypothesis in zip(PROMPTS, batched):
        alone = [int(t) for t in stream_tokens(model, torch.tensor([prompt]), 10, temperature=0)]
        assert hypothesis.tokens == alone


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_beam_finds_sequences_at_least_as_likely_as_greedy(kind):
    model = tiny(kind)
    greedy = greedy_search(model, PROMPTS, max_new_tokens=8)
    beam = beam_search(model, PROMPTS, beams=4, max_new_tokens=8, length_penalty=0.0)
    gains = [b.score - g.score for b, g in zip(beam, greedy)]
    assert all(gain >= -1e-5 for gain in gains), gains
    assert max(gains) > 0.05, "a 4-wide beam should beat greedy on some prompt of a random model"


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_cached_batched_beam_equals_the_reference(kind):
    model = tiny(kind)
    eos = greedy_search(model, PROMPTS[:1], max_new_tokens=8)[0].tokens[2]
    for length_penalty in (0.0, 1.0):
        cached = beam_search(model, PROMPTS, beams=3, max_new_tokens=10, eos_id=eos, length_penalty=length_penalty)
        plain = beam_search(model, PROMPTS, beams=3, max_new_tokens=10, eos_id=eos, length_penalty=length_penalty,
                            use_cache=False)
        for prompt, got, without_cache in zip(PROMPTS, cached, plain):
            tokens, score, length = reference_beam(model, prompt, 3, 10, eos, length_penalty)
            assert got.tokens == tokens == without_cache.tokens
            assert got.score == pytest.approx(score, abs=1e-4) and got.length == length


def test_decoding_refuses_encoders_and_long_prompts():
    from stratalm.errors import InputTooLongError, StratalmError

    encoder = build_model(preset("bert", vocab_size=VOCAB, n_layers=1, d_model=32, n_heads=2, d_ff=32))
    with pytest.raises(StratalmError, match="decoder or an encoder-decoder"):
        beam_search(encoder, [[1, 2]], beams=2)
    with pytest.raises(InputTooLongError, match="context of 64"):
        greedy_search(tiny("gpt2"), [[1] * 60], max_new_tokens=10)
