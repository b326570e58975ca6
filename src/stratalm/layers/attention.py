"""Multi-head attention: one implementation for causal and bidirectional, MHA and grouped-query,
with padding masks and a KV cache for decoding. The math runs in `F.scaled_dot_product_attention`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from .positions import RelativeAttentionTerms, RelativeContext, apply_rotary
from .linear import Linear, linear
from .norms import RMSNorm


class KVCache:
    """Keys and values of every layer, preallocated for the whole context so decoding never copies.

    Layer i writes its new keys/values at positions [length, length + T) and attends over
    [0, length + T); the model calls `advance(T)` once all layers have run.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device) -> None:
        shape = (config.n_layers, batch_size, config.kv_heads, max_len, config.dim_per_head)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.max_len = max_len
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per layer: keys/values of the encoder output

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.length += n_tokens


class Attention(nn.Module):
    """Self-attention, or with `cross` attention from the decoder to the encoder's output (queries
    from x, keys and values from `memory`)."""

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.dim_per_head
        self.cross = cross
        q_width, kv_width = self.n_heads * self.head_dim, 2 * self.n_kv_heads * self.head_dim
        if cross:
            self.q = Linear(config.d_model, q_width, bias=config.attention_bias)
            self.kv = Linear(config.d_model, kv_width, bias=config.attention_bias)
        else:
            # Queries, keys and values come from one matrix: one matmul per step instead of three.
            self.qkv = Linear(config.d_model, q_width + kv_width, bias=config.attention_bias)
        self.out = Linear(q_width, config.d_model, bias=config.attention_bias)
        # QK-norm: each head's queries and keys at unit RMS, so no score can grow with the weights'
        # scale (modded-nanogpt; OLMo 2 and Qwen 3 do the same); one gain over head_dim, shared by heads.
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        # XLNet: content and position biases, the relative-position projection, segment terms.
        self.relative = (
            RelativeAttentionTerms(config.d_model, self.n_heads, self.head_dim, config.relative_segments)
            if config.position == "relative_sinusoidal" and not cross else None
        )
        self.dropout = config.attention_dropout
        self.scale = config.attention_scale  # None: 1/sqrt(head_dim)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        cache: Optional[KVCache] = None,
        need_weights: bool = False,
        layer: int = 0,
        memory: Optional[torch.Tensor] = None,
        tap=None,
        relative: Optional[RelativeContext] = None,
        keys_from: Optional[torch.Tensor] = None,
        target_mapping: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`layer` is the position in the stack, which names this call's slot in the cache (a
        block shared by several positions keeps one slot per position). `mask` is boolean (True =
        attend) or float (added to the scores: T5's position bias with -inf where masked). `tap`
        (block.py's lens protocol) sees q, k, v (B, n, S, hd, after rotary and the cache), the
        pattern (B, nh, T, S) and z, each head's output before the output projection (B, nh, T, hd).

        XLNet: `relative` carries the stack's relative sinusoids (and segments); `keys_from` (B, S,
        C) gives the keys and values when they are not x's own (the content stream, after any
        memory of earlier segments); `target_mapping` (B, M, T) places query stream x's M
        predictions at their target positions for the attention and gathers them back after."""
        B, T, _ = x.shape
        if self.cross:
            q = self.q(x)
            if cache is not None and layer in cache.cross:
                k, v = cache.cross[layer]  # the encoder output does not change while decoding
            else:
                k, v = self._heads(self.kv(memory)).chunk(2, dim=1)  # (B, nkv, S, hd) each
                k = self._qk_norm(k, self.k_norm)  # cached normed: decoding reuses them as they are
                if cache is not None:
                    cache.cross[layer] = (k, v)
            q = self._qk_norm(self._heads(q), self.q_norm)
        else:
            q, k, v = self._projections(x, keys_from)
            q = self._heads(q)  # (B, nh, T, hd)
            k, v = self._heads(k), self._heads(v)  # (B, nkv, T, hd)
            q, k = self._qk_norm(q, self.q_norm), self._qk_norm(k, self.k_norm)  # before rotary, which keeps norms
            if target_mapping is not None:  # a prediction's query stands at its target's position
                q = target_mapping.transpose(1, 2)[:, None] @ q  # (B, 1, T, M) @ (B, nh, M, hd)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, nkv, S, hd), S = cached + T
        if tap is not None:
            q, k, v = tap("q", q), tap("k", k), tap("v", v)
        if self.relative is not None:  # XLNet: position and segment scores join the mask as a bias
            scale = self.scale if self.scale is not None else self.head_dim ** -0.5
            bias = self.relative(q, relative, k.shape[2]) * scale
            mask = (bias if mask is None else bias + mask).to(q.dtype)  # autocast: SDPA wants q's dtype
            q = q + self.relative.content_bias[:, None]
        weights = None
        if tap is not None and tap.changes("pattern"):  # an intervention on the pattern: the output comes from it
            weights = tap("pattern", attention_weights(q, k, mask, is_causal, self.scale))
            y = weights @ repeat_kv(v, q.shape[1] // v.shape[1])
        elif need_weights:
            y, weights = attention_with_weights(q, k, v, mask, is_causal, self.scale)
            if tap is not None:
                weights = tap("pattern", weights)
        else:
            y = self._fused(q, k, v, mask, is_causal)  # (B, nh, T, hd)
            if tap is not None and tap.wants("pattern"):
                # Captured, not changed: the output still comes from the fused kernel, so a traced
                # forward gives bitwise the logits of a plain one.
                tap("pattern", attention_weights(q, k, mask, is_causal, self.scale))
        if target_mapping is not None:
            y = target_mapping[:, None] @ y  # (B, nh, M, hd): back to the predictions
        if tap is not None:
            y = tap("z", y)
        return self._output(y, B, y.shape[2]), weights

    def _projections(self, x: torch.Tensor, keys_from: Optional[torch.Tensor]):
        """Queries from x; keys and values from x too, or from `keys_from` (XLNet's streams)."""
        widths = (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim)
        if keys_from is None:
            return self.qkv(x).split_with_sizes(widths, dim=-1)
        weight, bias = self.qkv.weight.split([widths[0], widths[1] + widths[2]]), self.qkv.bias
        biases = bias.split([widths[0], widths[1] + widths[2]]) if bias is not None else (None, None)
        q = linear(x, weight[0], biases[0])
        return (q, *linear(keys_from, weight[1], biases[1]).split(widths[1:], dim=-1))

    def _fused(self, q, k, v, mask, is_causal) -> torch.Tensor:
        if self.relative is not None and mask.requires_grad:
            # XLNet while training: a learned float mask sends SDPA to its generic path, whose
            # NaN-safe softmax costs more than the plain product; the explicit form is the same math.
            weights = attention_weights(q, k, mask, is_causal, self.scale)
            weights = F.dropout(weights, self.dropout, self.training) if self.dropout > 0 else weights
            return weights @ repeat_kv(v, q.shape[1] // v.shape[1])
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale, enable_gqa=self.n_kv_heads != self.n_heads)

    def _output(self, y: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """(B, nh, T, hd) -> the output projection of the heads side by side."""
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    @staticmethod
    def _qk_norm(x: torch.Tensor, norm: Optional[nn.Module]) -> torch.Tensor:
        return x if norm is None else norm(x)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n x hd) -> (B, n, T, hd)."""
        return x.view(x.shape[0], x.shape[1], -1, self.head_dim).transpose(1, 2)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query keys or values (B, nkv, S, hd) -> one per query head (B, nkv x groups, S, hd)."""
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


def attention_with_weights(q, k, v, mask, is_causal, scale=None):
    """The explicit softmax(q k^T * scale + mask) v, used only when the caller asks for the weights."""
    weights = attention_weights(q, k, mask, is_causal, scale)
    return weights @ repeat_kv(v, q.shape[1] // v.shape[1]), weights


def attention_weights(q, k, mask, is_causal, scale=None) -> torch.Tensor:
    """softmax(q k^T * scale + mask): (B, nh, T, S)."""
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))  # (B, nh, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1)
