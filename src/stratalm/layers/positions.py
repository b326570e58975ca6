"""Position information: added to the embeddings (learned, sinusoidal), rotated into q/k (RoPE), or
added to the attention scores (T5's relative buckets, XLNet's relative sinusoids)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .linear import Linear


class AbsolutePositions(nn.Module):
    """Position vectors added to the token embeddings: a learned table, or fixed sinusoids."""

    def __init__(self, kind: str, max_len: int, dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "learned":
            self.weight = nn.Parameter(torch.zeros(max_len, dim))
        else:  # sinusoidal (Vaswani et al. 2017): not a parameter, not saved
            self.register_buffer("weight", sinusoid_table(max_len, dim), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[position_ids]  # (B, T, C) or (T, C)


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), in the half-split layout that Llama checkpoints use.

    The cos/sin tables are computed once for the whole context and indexed by position, so the
    decoding loop does no trigonometry.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def tables(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for the given positions, shaped to broadcast over heads: (B or 1, 1, T, hd)."""
        cos, sin = self.cos[position_ids], self.sin[position_ids]
        if cos.dim() == 2:
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) of every head by the position's angle. x: (B, nh, T, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class RelativePositionBias(nn.Module):
    """T5's position information (Raffel et al. 2020): a learned bias per head, added to the
    attention scores, indexed by the bucket of the key's offset from the query. Small offsets get
    a bucket each; larger ones share logarithmically wider buckets up to `max_distance`. An encoder
    tells left from right (half the buckets each); a decoder only looks back."""

    def __init__(self, n_buckets: int, max_distance: int, n_heads: int, bidirectional: bool) -> None:
        super().__init__()
        self.n_buckets, self.max_distance, self.bidirectional = n_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.zeros(n_buckets, n_heads))

    def bucket(self, offset: torch.Tensor) -> torch.Tensor:
        """offset = key position - query position -> bucket index."""
        n = self.n_buckets
        base = torch.zeros_like(offset)
        if self.bidirectional:
            n //= 2
            base = (offset > 0).long() * n  # keys to the right use the upper half
            distance = offset.abs()
        else:
            distance = (-offset).clamp(min=0)  # only the past counts
        exact = n // 2
        log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
        far = (exact + (log_ratio * (n - exact)).long()).clamp(max=n - 1)
        return base + torch.where(distance < exact, distance, far)

    def forward(self, n_queries: int, n_keys: int, past: int = 0) -> torch.Tensor:
        """The bias for queries at positions past..past+n_queries over keys 0..n_keys: (1, nh, T, S)."""
        device = self.weight.device
        queries = torch.arange(past, past + n_queries, device=device)[:, None]
        keys = torch.arange(n_keys, device=device)[None, :]
        return self.weight[self.bucket(keys - queries)].permute(2, 0, 1).unsqueeze(0)


def relative_sinusoids(n_queries: int, n_keys: int, dim: int, bidirectional: bool, clamp: int, device) -> torch.Tensor:
    """XLNet's (Transformer-XL's) position vectors, one per relative offset, largest first: offsets
    n_keys .. -n_queries + 1 (bidirectional) or n_keys .. 0 (unidirectional), each [sin | cos] of
    offset x 10000^(-2i/dim) (halves side by side, not interleaved). (R, dim)."""
    inv_freq = 1 / torch.pow(10000, torch.arange(0, dim, 2, device=device).float() / dim)
    end = -n_queries if bidirectional else -1
    offsets = torch.arange(n_keys, end, -1, device=device).float()
    if clamp > 0:
        offsets = offsets.clamp(-clamp, clamp)
    angles = offsets[:, None] * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def relative_shift(scores: torch.Tensor, n_keys: int) -> torch.Tensor:
    """(B, nh, T, R) scores of each query against every relative offset -> (B, nh, T, n_keys)
    against every key: Transformer-XL's reshape trick, which moves row i left by T - i so that
    column j holds the offset of key j from query i."""
    B, n, T, R = scores.shape
    shifted = scores.reshape(B, n, R, T)[:, :, 1:].reshape(B, n, T, R - 1)
    return shifted[..., :n_keys]


@dataclass
class RelativeContext:
    """What every layer's RelativeAttentionTerms read in one forward, computed once by the stack."""

    sinusoids: torch.Tensor  # (R, C): relative_sinusoids of this forward's lengths
    different_segment: Optional[torch.Tensor] = None  # (B, T, S) bool: key j in another segment than query i


class RelativeAttentionTerms(nn.Module):
    """XLNet's per-layer additions to a head's score of query i on key j (Yang et al. 2019, after
    Transformer-XL): the content bias r_w added to every query, a position term
    (q_i + r_r) . W_r p(i - j) from the relative sinusoids, and, with segments, a term
    (q_i + r_s) . s_same/different telling whether i and j sit in the same segment (so a model
    is not tied to two segments)."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, segments: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.pos = Linear(d_model, n_heads * head_dim, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(n_heads, head_dim))
        self.position_bias = nn.Parameter(torch.zeros(n_heads, head_dim))
        if segments:
            self.segment_bias = nn.Parameter(torch.zeros(n_heads, head_dim))
            self.segment_embed = nn.Parameter(torch.zeros(2, n_heads, head_dim))
        self.segments = segments

    def forward(self, q: torch.Tensor, context: RelativeContext, n_keys: int) -> torch.Tensor:
        """q (B, nh, T, hd) before any bias -> the position (+ segment) scores (B, nh, T, n_keys),
        before the 1/sqrt(hd) scale."""
        different_segment = context.different_segment
        r = self.pos(context.sinusoids).view(-1, self.n_heads, self.head_dim).permute(1, 2, 0)  # (nh, hd, R)
        scores = relative_shift((q + self.position_bias[:, None]) @ r, n_keys)
        if self.segments and different_segment is not None:
            per_kind = (q + self.segment_bias[:, None]) @ self.segment_embed.permute(1, 2, 0)  # (B, nh, T, 2)
            scores = scores + torch.where(different_segment[:, None], per_kind[..., 1:], per_kind[..., :1])
        return scores
