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


# XLNet blocks masked scores with -1e30 rather than -inf, as the reference does: a query stream
# row that may see no key at all then attends uniformly instead of giving NaN.
BLOCKED = -1e30


def two_stream_masks(
    attention_mask: Optional[torch.Tensor], perm_mask: Optional[torch.Tensor], n_queries: int, n_past: int,
    causal: bool, device,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """XLNet's masks as additive biases (B or 1, 1, T, S), S = n_past + T: (content stream, query stream).

    A query may not see a key that is padding (`attention_mask` 0), that `perm_mask` (B, T, T; 1 =
    may not see) hides from it, or (causal, XLNet's attn_type uni) that comes after it. Memory of
    earlier segments is always visible. The query stream obeys exactly that; the content stream
    also sees its own position, so a token's content includes itself while its query does not.
    (None, None) when nothing is hidden."""
    blocked = None  # (B or 1, T or 1, S) bool
    if causal:
        blocked = torch.ones(n_queries, n_past + n_queries, device=device).triu(n_past + 1).bool()[None]
    hidden = None
    if attention_mask is not None:
        hidden = (attention_mask == 0)[:, None, :]  # (B, 1, T) over the keys
    if perm_mask is not None:
        hidden = perm_mask > 0 if hidden is None else hidden | (perm_mask > 0)
    if hidden is not None:
        if n_past:
            hidden = torch.cat([hidden.new_zeros(*hidden.shape[:2], n_past), hidden], dim=-1)
        blocked = hidden if blocked is None else blocked | hidden
    if blocked is None:
        return None, None
    itself = torch.zeros(n_queries, n_past + n_queries, dtype=torch.bool, device=device)
    itself[:, n_past:] = torch.eye(n_queries, dtype=torch.bool, device=device)
    content = blocked & ~itself
    as_bias = lambda m: torch.zeros(m.shape, device=device).masked_fill(m, BLOCKED)[:, None]  # noqa: E731
    return as_bias(content), as_bias(blocked)
