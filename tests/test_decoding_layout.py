"""While decoding on CPU the LM head is stored transposed (the fast layout for one-token steps):
same tokens, the original storage comes back afterwards (also when a stream is abandoned), the
parameters stay trainable, and small heads or short generations are left alone."""
from __future__ import annotations

import pytest
import torch

from stratalm.families import preset
from stratalm.generate import sampling, stream_tokens
from stratalm.models import CausalLM


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=300, max_seq_len=64, n_layers=2, d_model=64)).eval()


@pytest.fixture
def relayout_always(monkeypatch):
    monkeypatch.setattr(sampling, "DECODE_LAYOUT_MIN_BYTES", 0)
    monkeypatch.setattr(sampling, "DECODE_LAYOUT_MIN_STEPS", 1)


def greedy(model, ids, n):
    return torch.stack(list(stream_tokens(model, ids, n, temperature=0)), dim=1)


def test_same_tokens_and_the_original_storage_comes_back(model, relayout_always, monkeypatch):
    ids = torch.randint(0, 300, (3, 5))
    head = model.lm_head.weight
    pointer, values = head.data_ptr(), head.detach().clone()
    stream = stream_tokens(model, ids, 20, temperature=0)
    first = next(stream)
    # Inside the stream: transposed storage, (out, in) shape, tied to the embedding as before.
    assert not head.is_contiguous() and head.stride() == (1, 300) and tuple(head.shape) == (300, 64)
    assert model.stack.tok_embed.weight is head and torch.equal(head, values)
    fast = torch.stack([first, *stream], dim=1)
    assert head.is_contiguous() and head.data_ptr() == pointer and torch.equal(head, values)
    monkeypatch.setattr(sampling, "DECODE_LAYOUT_MIN_BYTES", 1 << 60)  # never re-layout
    assert torch.equal(fast, greedy(model, ids, 20))


def test_an_abandoned_stream_restores_the_layout(model, relayout_always):
    stream = stream_tokens(model, torch.tensor([[1, 2, 3]]), 30, temperature=0)
    next(stream)
    assert not model.lm_head.weight.is_contiguous()
    stream.close()  # what a caller's `break` does to the generator
    assert model.lm_head.weight.is_contiguous()


def test_nested_streams_share_one_relayout(model, relayout_always):
    head = model.lm_head.weight
    outer, inner = (stream_tokens(model, torch.tensor([[4, 5]]), 10, temperature=0) for _ in range(2))
    next(outer)
    transposed = head.data_ptr()
    next(inner)
    assert head.data_ptr() == transposed  # the second stream reused the first one's layout
    list(inner)
    assert not head.is_contiguous()  # the outer stream still decodes
    list(outer)
    assert head.is_contiguous()


def test_parameters_stay_trainable_after_decoding(model, relayout_always):
    greedy(model, torch.tensor([[7, 8, 9]]), 8)
    head = model.lm_head.weight
    assert not head.is_inference() and head.requires_grad
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = head.detach().clone()
    loss = model(torch.randint(0, 300, (2, 8))).logits.logsumexp(-1).mean()
    loss.backward()
    opt.step()
    assert float((head.detach() - before).abs().max()) > 1e-4


def test_small_heads_short_runs_and_training_mode_are_left_alone(model, monkeypatch):
    head = model.lm_head.weight
    assert model.lm_head.weight.numel() * 4 < sampling.DECODE_LAYOUT_MIN_BYTES  # the default threshold
    with sampling.decoding_layout(model, steps=1000):
        assert head.is_contiguous()
    monkeypatch.setattr(sampling, "DECODE_LAYOUT_MIN_BYTES", 0)
    with sampling.decoding_layout(model, steps=sampling.DECODE_LAYOUT_MIN_STEPS - 1):
        assert head.is_contiguous()
    model.train()
    with sampling.decoding_layout(model, steps=1000):
        assert head.is_contiguous()
    model.eval()
    with sampling.decoding_layout(model, steps=1000):
        assert not head.is_contiguous()
    assert head.is_contiguous()
