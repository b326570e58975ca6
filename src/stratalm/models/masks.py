"""Turn a padding mask and the causal rule into what `scaled_dot_product_attention` takes."""
from __future__ import annotations

from typing import Optional

import torch


def attention_mask_for(
    attention_mask: Optional[torch.Tensor], n_queries: int, n_keys: int, causal: bool, device
) -> tuple[Optional[torch.Tensor], bool]:
    """Return (mask, is_causal) for queries that are the last `n_queries` of `n_keys` positions.

    `attention_mask` is (B, n_keys) with 1 for real tokens and 0 for padding. When there is no
    padding, the mask stays None so SDPA can take its fused kernels (`is_causal` for a full causal
    square; nothing at all when one new token attends over the cache).
    """
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if attention_mask is None:
        if not causal or n_queries == 1:
            return None, False
        if n_queries == n_keys:
            return None, True
    mask = torch.ones(1, 1, n_queries, n_keys, dtype=torch.bool, device=device)
    if causal:
        mask = mask.tril(n_keys - n_queries)  # query i sees keys up to its own position
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
        # A padding query that sees no key would give NaN; let it see everything (its output is ignored).
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask, False


def add_position_bias(mask: Optional[torch.Tensor], is_causal: bool, bias: torch.Tensor) -> torch.Tensor:
    """Fold a boolean mask (or the causal rule) into an additive bias (1, nh, T, S): -inf where masked."""
    if is_causal:
        T, S = bias.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=bias.device).tril(S - T)
    return bias if mask is None else bias.masked_fill(~mask, float("-inf"))
