"""Induction and previous-token scores of attention heads (Olsson et al. 2022, "In-context learning
and induction heads").

An induction head, at a token that occurred before, attends to the token right AFTER that earlier
occurrence (it completes `A B ... A -> B`). Its score here is the attention mass a query gives to
all such positions (any earlier occurrence counts: in a sequence where a token is always followed by
the same thing, a head that spreads over every earlier copy copies just as well), averaged over the
queries that have at least one. Heads that attend evenly to the past score `uniform_induction`,
the baseline to compare against. A previous-token head (the circuit's first half) attends to t - 1.

Patterns are the lens's `blocks.<i>.attn.pattern` points stacked: (layers, B, H, T, T), rows are
queries, causal, each row summing to 1.
"""
from __future__ import annotations

from typing import Optional

import torch


def induction_targets(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool: [b, t, s] is True when s = j + 1 for some j < t with ids[b, j] == ids[b, t]."""
    T = ids.shape[1]
    same = ids[:, :, None] == ids[:, None, :]  # (B, T, T): [t, j] same token
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # j < t
    occurrence = same & earlier
    targets = torch.zeros_like(occurrence)
    targets[:, :, 1:] = occurrence[:, :, :-1]  # the position after each earlier occurrence
    return targets


def induction_scores(patterns: torch.Tensor, ids: torch.Tensor, queries: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, float]:
    """(layers, heads) mean induction score, and what an even split of attention over the past would
    score on the same queries. `queries` (B, T) bool limits which positions count (default: all
    positions whose token occurred before)."""
    targets = induction_targets(ids)  # (B, T, T)
    scored = targets.any(-1) if queries is None else queries & targets.any(-1)  # (B, T)
    if not bool(scored.any()):
        raise ValueError("no position repeats an earlier token, so there is no induction target to score.")
    mass = (patterns * targets[None, :, None]).sum(-1)  # (L, B, H, T)
    per_head = mass.permute(0, 2, 1, 3)[..., scored].mean(-1)  # (L, H)
    positions = torch.arange(ids.shape[1]) + 1  # how many positions query t can attend to
    uniform = (targets.sum(-1) / positions)[scored].float().mean()
    return per_head, float(uniform)


def previous_token_scores(patterns: torch.Tensor, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(layers, heads) mean attention from position t to t - 1, over t >= 1 (or the `queries` mask)."""
    T = patterns.shape[-1]
    previous = patterns.diagonal(offset=-1, dim1=-2, dim2=-1)  # (L, B, H, T - 1): [t] = attention t+1 -> t
    if queries is None:
        return previous.mean((1, 3))
    mask = queries[:, 1:T]  # query positions 1..T-1
    return previous.permute(0, 2, 1, 3)[..., mask].mean(-1)
