"""What every model's forward returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .anatomy import is_embedding_table


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
    rtd_logits: Optional[torch.Tensor] = None  # (B, T): ELECTRA pretraining, the discriminator's "replaced?" logits
    rtd_labels: Optional[torch.Tensor] = None  # (B, T): 1 where the generator's sample differs from the original
    query_hidden_states: Optional[tuple[torch.Tensor, ...]] = None  # XLNet: the query stream's, (B, M, C) each
    mems: Optional[tuple[torch.Tensor, ...]] = None  # XLNet with use_mems: per layer, (B, P, C) for the next segment


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Unique parameters (a tied or shared tensor counts once), split into the embedding tables
    and the rest."""
    unique = dict(model.named_parameters())  # named_parameters already skips repeated tensors
    total = sum(p.numel() for p in unique.values())
    embedding = sum(p.numel() for n, p in unique.items() if is_embedding_table(n))
    return {"total": total, "embeddings": embedding, "non_embedding": total - embedding}
