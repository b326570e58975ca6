"""Feed-forward sublayer: a plain two-layer MLP, or a gated one (SwiGLU, GeGLU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model_config import ModelConfig
from .linear import Linear


def activation_fn(name: str):
    return {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "relu2": lambda x: F.relu(x).square(),  # ReLU squared (So et al. 2021, Primer): sparse like relu, smooth at 0
        "silu": F.silu,
        "tanh": torch.tanh,
    }[name]


class FeedForward(nn.Module):
    """up -> activation -> down, or with gating: (act(gate) * up) -> down (Shazeer 2020).

    The gate and up projections of a gated layer are one matrix (`up` has 2 x d_ff rows, gate
    first), so a step does one matrix multiply instead of two.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gated = config.gated
        self.act = activation_fn(config.activation)
        width = config.d_ff * (2 if config.gated else 1)
        self.up = Linear(config.d_model, width, bias=config.mlp_bias)
        self.down = Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor, tap=None) -> torch.Tensor:
        """`tap` (block.py's lens protocol) sees the hidden activations as `hidden` (B, T, d_ff)."""
        h = self.up(x)  # (B, T, d_ff) or (B, T, 2 d_ff)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        if tap is not None:
            h = tap("hidden", h)
        return self.down(h)
