"""What every model's forward returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab) for language-model heads
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None  # embedding output, then one per block
    attentions: Optional[tuple[torch.Tensor, ...]] = None  # (B, nh, T, S) per block
    last_hidden_state: Optional[torch.Tensor] = None  # (B, T, C), after any final norm
    pooled: Optional[torch.Tensor] = None  # (B, C): the pooler's sentence vector
    nsp_logits: Optional[torch.Tensor] = None  # (B, 2): is-next / in-order logits
    encoder_last_hidden_state: Optional[torch.Tensor] = None  # encoder-decoder: the encoder's output
    encoder_hidden_states: Optional[tuple[torch.Tensor, ...]] = None  # encoder-decoder, when asked
