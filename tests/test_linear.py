"""layers.Linear: nn.Linear with a faster CPU path for inference on few rows. Same values as
F.linear, same parameters and state dict, plain nn.Linear whenever autograd is on; decoding gives
the same tokens with and without the fast path; `logits_to_keep` keeps the last positions only."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stratalm.families import preset
from stratalm.generate import stream_tokens
from stratalm.layers import Linear, linear
from stratalm.models import CausalLM


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (3, 1, 48), (4, 25, 48), (linear.FEW_ROWS + 1, 48), (0, 48)])
def test_same_values_as_f_linear_and_row_major(bias, shape):
    torch.manual_seed(0)
    layer = Linear(48, 40, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        ours = layer(x)
    expected = F.linear(x, layer.weight, layer.bias)
    assert ours.shape == expected.shape and ours.is_contiguous()
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)


def test_with_autograd_it_is_nn_linear_exactly():
    torch.manual_seed(0)
    layer = Linear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_parameters_and_state_dict_are_nn_linears():
    layer = Linear(16, 8)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == list(nn.Linear(16, 8).state_dict()) == ["weight", "bias"]


def test_decoding_gives_the_same_tokens_with_and_without_the_fast_path(monkeypatch):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=300, max_seq_len=64, n_layers=2, d_model=64)).eval()
    ids = torch.randint(0, 300, (3, 5))

    def greedy():
        return torch.stack(list(stream_tokens(model, ids, 30, temperature=0)), dim=1)

    fast = greedy()
    monkeypatch.setattr(linear, "FEW_ROWS", -1)  # every product through F.linear
    assert torch.equal(fast, greedy())


def test_logits_to_keep_applies_the_head_to_the_last_positions():
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=300, max_seq_len=64, n_layers=2, d_model=64)).eval()
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
        last3 = model(ids, logits_to_keep=3).logits
    assert last.shape == (2, 1, 300) and last3.shape == (2, 3, 300)
    assert torch.allclose(last, full[:, -1:], atol=1e-5) and torch.allclose(last3, full[:, -3:], atol=1e-5)
