"""The residual block: attention then feed-forward, each wrapped in a norm and a residual add."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from .attention import Attention, KVCache
from .feedforward import FeedForward
from .norms import make_norm


class Block(nn.Module):
    """Pre-norm: x + f(norm(x)) (GPT-2, Llama, T5). Post-norm: norm(x + f(x)) (original
    Transformer, BERT). With `cross`, a cross-attention sublayer over the encoder's output sits
    between self-attention and the feed-forward layer (the decoder of an encoder-decoder)."""

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attn_norm = make_norm(config.norm, config.d_model, config.norm_eps, config.norm_bias)
        self.attn = Attention(config)
        if cross:
            self.cross_norm = make_norm(config.norm, config.d_model, config.norm_eps, config.norm_bias)
            self.cross_attn = Attention(config, cross=True)
        self.cross = cross
        self.ff_norm = make_norm(config.norm, config.d_model, config.norm_eps, config.norm_bias)
        self.ff = FeedForward(config)
        self.dropout = config.dropout

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # Skipping the call at p=0 keeps the fast path free of a no-op kernel per sublayer.
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x

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
        memory_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.pre_norm:
            a, weights = self.attn(self.attn_norm(x), mask=mask, is_causal=is_causal, rotary=rotary, cache=cache,
                                   need_weights=need_weights, layer=layer)
            x = x + self._drop(a)
            if self.cross:
                c, _ = self.cross_attn(self.cross_norm(x), mask=memory_mask, cache=cache, layer=layer, memory=memory)
                x = x + self._drop(c)
            return x + self._drop(self.ff(self.ff_norm(x))), weights
        a, weights = self.attn(x, mask=mask, is_causal=is_causal, rotary=rotary, cache=cache, need_weights=need_weights,
                               layer=layer)
        x = self.attn_norm(x + self._drop(a))
        if self.cross:
            c, _ = self.cross_attn(x, mask=memory_mask, cache=cache, layer=layer, memory=memory)
            x = self.cross_norm(x + self._drop(c))
        return self.ff_norm(x + self._drop(self.ff(x))), weights
