"""Position information: added to the embeddings (learned, sinusoidal) or rotated into q/k (RoPE)."""
from __future__ import annotations

import math

import torch
from torch import nn


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
