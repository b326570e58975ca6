"""Permutation language modelling (Yang et al. 2019, XLNet), as the reference data pipeline
(zihangdai/xlnet, data_utils.py) builds it.

Each window becomes `window <sep> <cls>` (segment ids 0 ... 0 2, as the reference ends every
input). Then, per sequence:
- partial prediction: about 1/K of the window's tokens (K = 6: the reference's mask_alpha /
  mask_beta, 85 of 512) are targets, the last part of a factorisation order;
- span-based selection: spans of n tokens, p(n) ∝ 1/n for n = 1..5, each placed at a uniform
  offset inside a context of K n tokens that the next span starts after; random single tokens
  top the count up to exactly round(L / K), so every row has the same number of targets;
- a random factorisation order. Non-targets come first, as one block: everyone sees them, they
  see no target (nor <sep>/<cls>). A target's query sees the non-targets and the targets and
  functional tokens before it in the order, never itself; its content stream also sees itself.
  <sep> and <cls> take part in the order without being predicted and see themselves.

K and the longest span are the `plm.*` settings (settings.py: plm.partial_prediction, plm.max_span).

The model gets the original tokens (XLNet hides nothing in the input: the masks do it), the
`perm_mask` and a `target_mapping` of the targets in position order, and predicts each target
from its query stream.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model_config import ModelConfig
from ..models import ModelOutput
from ..tokenize import Tokenizer
from .base import Objective
from .settings import PermutationConfig

PARTIAL_PREDICTION = PermutationConfig.partial_prediction  # K: one target in six tokens
MAX_SPAN = PermutationConfig.max_span  # longest span of targets
CLS_SEGMENT = 2  # the reference's segment id of <cls>


def target_count(length: int, partial: int = PARTIAL_PREDICTION) -> int:
    return min(max(round(length / partial), 1), length)


def sample_spans(length: int, goal: int, rng: torch.Generator, partial: int = PARTIAL_PREDICTION,
                 max_span: int = MAX_SPAN) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(length,) True at `goal` targets, and the (start, length) of the spans placed before the
    random top-up: the reference's _sample_mask with tokens as units."""
    selected = torch.zeros(length, dtype=torch.bool)
    lengths = torch.arange(1, max_span + 1, dtype=torch.float)
    draws = (torch.multinomial(1 / lengths, length, replacement=True, generator=rng) + 1).tolist()
    offsets = torch.rand(length, generator=rng).tolist()
    spans, count, cursor = [], 0, 0
    for n, u in zip(draws, offsets):
        if cursor >= length or count >= goal:
            break
        n = min(n, goal - count)
        context = n * partial
        left = int(u * context)  # uniform in [0, context)
        start = cursor + left
        if start + n >= length:  # as the reference: a span must end before the last token
            break
        selected[start:start + n] = True
        spans.append((start, n))
        count += n
        cursor = start + n + context - left
    if count < goal:  # the top-up: random further tokens, one at a time
        free = (~selected).nonzero().squeeze(1)
        selected[free[torch.randperm(len(free), generator=rng)[: goal - count]]] = True
    return selected, spans


def permutation_mask(rank: torch.Tensor, targets: torch.Tensor, functional: torch.Tensor) -> torch.Tensor:
    """(B, T, T) float, 1 where query i may not see token j (XLNet's perm_mask), from each
    position's `rank` in the factorisation order and which positions are targets / functional."""
    context = ~targets & ~functional
    order = torch.where(context, torch.full_like(rank, -1), rank)  # the context block comes first
    own = torch.where(targets, order, order + 1)  # a functional token sees itself, a target does not
    return ((own[:, :, None] <= order[:, None, :]) & ~context[:, None, :]).float()


class PermutationLMObjective(Objective):
    name = "plm"
    reports_perplexity = True
    heads = ("mlm_head",)

    def __init__(self, tokenizer: Tokenizer, options: Optional[PermutationConfig] = None) -> None:
        options = options or PermutationConfig()
        self.partial, self.max_span = options.partial_prediction, options.max_span
        self.functional_ids = [i for i in (tokenizer.sep_id, tokenizer.cls_id) if i is not None]
        self.has_cls = tokenizer.cls_id is not None
        # Each window is followed by <sep> <cls> when the tokenizer has them.
        self.extra_tokens = -len(self.functional_ids)

    def check(self, config: ModelConfig, data) -> None:
        if not (config.query_stream and config.mlm_head):
            raise ConfigError(
                f"the plm objective needs a two-stream model with an LM head (xlnet); '{config.family}' has "
                + ("no query stream." if not config.query_stream else "no LM head.")
            )

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        B, L = windows.shape
        tail = torch.tensor(self.functional_ids, dtype=windows.dtype).expand(B, -1)
        ids = torch.cat([windows, tail], dim=1)  # (B, T)
        T = ids.shape[1]
        functional = torch.zeros(B, T, dtype=torch.bool)
        functional[:, L:] = True
        goal = target_count(L, self.partial)
        targets = torch.zeros(B, T, dtype=torch.bool)
        for row in range(B):
            targets[row, :L] = sample_spans(L, goal, rng, self.partial, self.max_span)[0]
        rank = torch.rand(B, T, generator=rng).argsort(dim=1)  # a random factorisation order per row
        positions = targets.nonzero()[:, 1].view(B, goal)  # (B, M) targets in position order
        segments = torch.zeros(B, T, dtype=torch.long)
        if self.has_cls:
            segments[:, -1] = CLS_SEGMENT
        inputs = {"input_ids": ids, "token_type_ids": segments, "perm_mask": permutation_mask(rank, targets, functional),
                  "target_mapping": F.one_hot(positions, T).float()}
        return inputs, {"labels": ids.gather(1, positions)}

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        logits, labels = output.logits, targets["labels"]  # (B, M, V), (B, M)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "target_accuracy": accuracy.detach()}
