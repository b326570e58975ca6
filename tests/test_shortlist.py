"""generate/shortlist.py: greedy decoding's argmax from an int8 first pass and a float32 shortlist
is the argmax of the full logits (the bound holds for every token, ties go to the lowest index
as torch.argmax's), falls back to the full head where it cannot gain, is remade when the head
changes, is used only where it is exact, and decoding gives the same tokens with it and without."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stratalm.families import preset
from stratalm.generate import shortlist as shortlists
from stratalm.generate import stream_tokens
from stratalm.layers import linear, native
from stratalm.models import CausalLM

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no kernels here: {native.unavailable_reason()}")


def tiny_model(**options) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=700, max_seq_len=64, n_layers=2, d_model=64, **options)).eval()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_the_first_pass_is_within_its_bound_and_the_argmax_is_the_full_ones(seed, rows):
    torch.manual_seed(seed)
    weight = torch.randn(2000, 96) * torch.rand(2000, 1)  # rows of very different scales
    hidden = torch.randn(rows, 96) * 3
    shortlist = shortlists.Shortlist(weight)
    full = F.linear(hidden, weight)
    first = native.int8_rows_linear(hidden, shortlist.quantized, shortlist.scale)
    reach = shortlist.scale * shortlist.slack * hidden.abs().sum(-1, keepdim=True)
    assert bool(((first - full).abs() <= reach).all())
    logits = shortlist.logits(hidden)
    assert torch.equal(logits.argmax(-1), full.argmax(-1))
    kept = torch.isfinite(logits)
    assert 1 <= int(kept.sum(-1).max()) < 2000 / 16  # a shortlist, not the vocabulary
    assert torch.allclose(logits[kept], full[kept], atol=1e-5)


def test_a_tie_goes_to_the_lowest_token_as_in_argmax():
    torch.manual_seed(0)
    weight = torch.randn(500, 32)
    weight[77] *= 5
    weight[400] = weight[123] = weight[77]  # three tokens with one logit, well above the rest
    hidden = weight[77:78] / weight[77].norm()
    logits = shortlists.Shortlist(weight).logits(hidden)
    assert int(logits.argmax()) == int(F.linear(hidden, weight).argmax()) == 77


def test_it_falls_back_where_it_cannot_gain_or_the_input_is_not_finite():
    shortlist = shortlists.Shortlist(torch.ones(320, 16))  # every token ties: all are candidates
    assert shortlist.logits(torch.randn(1, 16)) is None
    shortlist = shortlists.Shortlist(torch.randn(320, 16))
    assert shortlist.logits(torch.full((1, 16), float("nan"))) is None


def test_only_a_plain_float32_head_without_soft_cap_on_the_cpu_gets_one():
    model = tiny_model()
    assert shortlists.shortlist_for(model) is not None
    assert shortlists.shortlist_for(tiny_model(logit_softcap=30.0)) is None  # tanh can tie what was not tied
    assert shortlists.shortlist_for(tiny_model().double()) is None


def test_a_changed_head_is_quantized_again():
    model = tiny_model()
    first = shortlists.shortlist_for(model)
    assert shortlists.shortlist_for(model) is first
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # as an optimizer step would change it
    again = shortlists.shortlist_for(model)
    assert again is not first and torch.allclose(again.scale, 2 * first.scale)


@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_decoding_gives_the_same_tokens_with_the_shortlist(batch, monkeypatch):
    model = tiny_model()
    ids = torch.randint(0, 700, (batch, 5), generator=torch.Generator().manual_seed(1))

    def greedy(head):
        monkeypatch.setenv("STRATALM_PATHS", f"linear:plain,greedy_head:{head}")
        for choice in (linear.CHOICE, linear.STEP_CHOICE, shortlists.HEAD_CHOICE):
            choice.reset()
        return torch.stack(list(stream_tokens(model, ids, 40, temperature=0)), dim=1)

    calls = []
    real = shortlists.Shortlist.logits
    monkeypatch.setattr(shortlists.Shortlist, "logits", lambda self, hidden: calls.append(1) or real(self, hidden))
    full = greedy("full")
    assert not calls
    assert torch.equal(greedy("shortlist"), full)
    assert len(calls) == 39  # every step after the prompt's
    shortlists.HEAD_CHOICE.reset()


def test_sampling_and_repetition_penalty_never_use_it(monkeypatch):
    monkeypatch.setenv("STRATALM_PATHS", "greedy_head:shortlist")
    shortlists.HEAD_CHOICE.reset()
    model, ids = tiny_model(), torch.randint(0, 700, (1, 5))
    monkeypatch.setattr(shortlists.Shortlist, "logits", lambda self, hidden: pytest.fail("shortlist used"))
    list(stream_tokens(model, ids, 10, temperature=0.8, generator=torch.Generator().manual_seed(0)))
    list(stream_tokens(model, ids, 10, temperature=0, repetition_penalty=1.3))
    shortlists.HEAD_CHOICE.reset()
