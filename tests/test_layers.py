"""Level 1: each layer against its definition."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stratalm.families import preset
from stratalm.layers import Attention, Block, FeedForward, make_norm
from stratalm.layers.positions import AbsolutePositions, RotaryEmbedding, apply_rotary, sinusoid_table
from stratalm.models.masks import attention_mask_for


def reference_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + mask) v, with grouped heads expanded by hand."""
    groups = q.shape[1] // k.shape[1]
    k = torch.cat([k[:, i // groups:i // groups + 1] for i in range(q.shape[1])], dim=1)
    v = torch.cat([v[:, i // groups:i // groups + 1] for i in range(q.shape[1])], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (6, 1), (3, 3)])
def test_attention_matches_the_formula_with_causal_and_padding_masks(n_heads, n_kv_heads):
    cfg = preset("tiny", d_model=48, n_heads=n_heads, n_kv_heads=n_kv_heads, max_seq_len=16)
    attn = Attention(cfg).eval()
    x = torch.randn(2, 7, 48)
    padding = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    for causal in (True, False):
        mask, is_causal = attention_mask_for(padding, 7, 7, causal, x.device)
        got, _ = attn(x, mask=mask, is_causal=is_causal)
        B, T, hd = 2, 7, cfg.dim_per_head
        q, k, v = attn.qkv(x).split([n_heads * hd, n_kv_heads * hd, n_kv_heads * hd], -1)
        q = q.view(B, T, n_heads, hd).transpose(1, 2)
        k = k.view(B, T, n_kv_heads, hd).transpose(1, 2)
        v = v.view(B, T, n_kv_heads, hd).transpose(1, 2)
        full = torch.ones(T, T, dtype=torch.bool)
        full = full.tril() if causal else full
        want_mask = full[None, None] & padding[:, None, None, :].bool()
        want = attn.out(reference_attention(q, k, v, want_mask).transpose(1, 2).reshape(B, T, -1))
        real = padding.bool()  # outputs at padding positions are ignored by design
        assert (got - want)[real].abs().max() < 1e-5
        weighted, weights = attn(x, mask=mask, is_causal=is_causal, need_weights=True)
        assert (weighted - want)[real].abs().max() < 1e-5
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)


def test_no_padding_takes_the_fused_path():
    assert attention_mask_for(None, 5, 5, True, "cpu") == (None, True)
    assert attention_mask_for(torch.ones(2, 5), 5, 5, True, "cpu") == (None, True)
    assert attention_mask_for(None, 1, 9, True, "cpu") == (None, False)  # one new token over the cache
    mask, is_causal = attention_mask_for(None, 3, 9, True, "cpu")  # a chunk after a cached prefix
    assert not is_causal and mask[0, 0].tolist()[0] == [True] * 7 + [False] * 2


def test_rotary_scores_depend_only_on_the_distance():
    rope = RotaryEmbedding(16, 64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cos_m, sin_m = rope.tables(torch.tensor([m]))
        cos_n, sin_n = rope.tables(torch.tensor([n]))
        return float((apply_rotary(q, cos_m, sin_m) * apply_rotary(k, cos_n, sin_n)).sum())

    assert abs(score(10, 7) - score(33, 30)) < 1e-4
    assert abs(score(5, 5) - float((q * k).sum())) < 1e-4  # no rotation between equal positions
    assert abs(score(10, 7) - score(10, 8)) > 1e-3


def test_sinusoidal_table_follows_vaswani():
    table = sinusoid_table(50, 8)
    pos, i = 17, 2  # dimension 2i uses sin, 2i+1 cos, with frequency 10000^(-2i/d)
    angle = pos / 10000 ** (2 * i / 8)
    assert abs(table[pos, 2 * i] - math.sin(angle)) < 1e-6 and abs(table[pos, 2 * i + 1] - math.cos(angle)) < 1e-6
    assert not list(AbsolutePositions("sinusoidal", 50, 8).parameters())


def test_norms():
    x = torch.randn(3, 10)
    rms = make_norm("rmsnorm", 10, 1e-6)
    assert torch.allclose(rms(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), atol=1e-6)
    ln = make_norm("layernorm", 10, 1e-5, bias=False)
    assert ln.bias is None and torch.allclose(ln(x), F.layer_norm(x, (10,), eps=1e-5), atol=1e-6)


@pytest.mark.parametrize("activation,gated", [("gelu", False), ("gelu_tanh", False), ("relu", False), ("silu", False),
                                              ("silu", True), ("gelu", True)])
def test_feedforward(activation, gated):
    cfg = preset("tiny", d_model=16, d_ff=24, activation=activation, gated=gated)
    ff = FeedForward(cfg)
    x = torch.randn(2, 3, 16)
    act = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "relu": F.relu, "silu": F.silu}[activation]
    h = x @ ff.up.weight.T + ff.up.bias
    if gated:  # SwiGLU / GeGLU: act(gate) * up, gate first
        h = act(h[..., :24]) * h[..., 24:]
    else:
        h = act(h)
    assert torch.allclose(ff(x), h @ ff.down.weight.T + ff.down.bias, atol=1e-5)


def test_pre_and_post_norm_blocks():
    x = torch.randn(2, 5, 32)
    for position in ("pre", "post"):
        cfg = preset("tiny", d_model=32, n_heads=4, d_ff=64, norm_position=position)
        block = Block(cfg).eval()
        out, _ = block(x, is_causal=True)
        a, _ = block.attn(block.attn_norm(x) if position == "pre" else x, is_causal=True)
        if position == "pre":
            h = x + a
            want = h + block.ff(block.ff_norm(h))
        else:
            h = block.attn_norm(x + a)
            want = block.ff_norm(h + block.ff(h))
        assert torch.allclose(out, want, atol=1e-6)


def test_dropout_is_active_only_in_training():
    cfg = preset("tiny", d_model=32, n_heads=4, d_ff=64, dropout=0.5)
    block = Block(cfg)
    x = torch.randn(2, 5, 32)
    block.train()
    assert not torch.equal(block(x, is_causal=True)[0], block(x, is_causal=True)[0])
    block.eval()
    assert torch.equal(block(x, is_causal=True)[0], block(x, is_causal=True)[0])
