"""The residual block: attention then feed-forward, each wrapped in a norm and a residual add."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from .attention import Attention, KVCache
from .positions import RelativeContext
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
        tap=None,
        relative: Optional[RelativeContext] = None,
        keys_from: Optional[torch.Tensor] = None,
        target_mapping: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`tap`, when a lens is attached (lens/points.py), is called as `tap(name, tensor)` at each
        named point and returns the tensor to carry on with (the same one, or a replacement);
        `tap.child("attn")` names the points inside a sublayer, and `tap.wants(name)` /
        `tap.changes(name)` say whether a point is captured / intervened on. The residual stream
        is `resid_pre`, then `resid_mid` after attention (`resid_mid_cross` after cross-attention),
        then `resid_post`; sublayer outputs are `attn_out`, `cross_attn_out` and `ff_out`.

        XLNet's options pass through to the attention (see Attention.forward). Its query stream is
        this same block run on the query vectors with `keys_from` set to the content stream: the
        two streams share every weight and differ only in where their queries come from."""
        if tap is None:
            attn_tap = cross_tap = ff_tap = None
        else:
            x = tap("resid_pre", x)
            attn_tap, cross_tap, ff_tap = tap.child("attn"), tap.child("cross_attn"), tap.child("ff")
        streams = dict(relative=relative, keys_from=keys_from, target_mapping=target_mapping)
        if self.pre_norm:
            a, weights = self.attn(self.attn_norm(x), mask=mask, is_causal=is_causal, rotary=rotary, cache=cache,
                                   need_weights=need_weights, layer=layer, tap=attn_tap, **streams)
            x = _seen(tap, "resid_mid", x + self._drop(_seen(tap, "attn_out", a)))
            if self.cross:
                c, _ = self.cross_attn(self.cross_norm(x), mask=memory_mask, cache=cache, layer=layer, memory=memory,
                                       tap=cross_tap)
                x = _seen(tap, "resid_mid_cross", x + self._drop(_seen(tap, "cross_attn_out", c)))
            f = _seen(tap, "ff_out", self.ff(self.ff_norm(x), tap=ff_tap))
            return _seen(tap, "resid_post", x + self._drop(f)), weights
        a, weights = self.attn(x, mask=mask, is_causal=is_causal, rotary=rotary, cache=cache, need_weights=need_weights,
                               layer=layer, tap=attn_tap, **streams)
        x = _seen(tap, "resid_mid", self.attn_norm(x + self._drop(_seen(tap, "attn_out", a))))
        if self.cross:
            c, _ = self.cross_attn(x, mask=memory_mask, cache=cache, layer=layer, memory=memory, tap=cross_tap)
            x = _seen(tap, "resid_mid_cross", self.cross_norm(x + self._drop(_seen(tap, "cross_attn_out", c))))
        f = _seen(tap, "ff_out", self.ff(x, tap=ff_tap))
        return _seen(tap, "resid_post", self.ff_norm(x + self._drop(f))), weights


def _seen(tap, name: str, x: torch.Tensor) -> torch.Tensor:
    """`x` as the lens leaves it at point `name` (itself when no lens is attached)."""
    return x if tap is None else tap(name, x)
