"""Sentence-order prediction (ALBERT, Lan et al. 2020): two consecutive segments of one document,
[CLS] A [SEP] B [SEP] with token types 0 then 1, swapped half of the time; the model tells which.
`mlm+sop` adds BERT masking of the same inputs, and the two losses are summed.

A window of the token stream is cut at its end-of-document tokens, so both segments always come
from the same document; the longest piece is split at a uniformly random point.
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
from .mlm import Masker, MaskingConfig


def longest_piece(row: list[int], boundary: Optional[int]) -> list[int]:
    """The longest run of `row` between end-of-document tokens."""
    pieces, current = [], []
    for token in row:
        if token == boundary:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    return max(pieces + [current], key=len)


class SentenceOrderObjective(Objective):
    name = "sop"
    extra_tokens = -3  # [CLS] A [SEP] B [SEP]

    def __init__(self, tokenizer: Tokenizer, options: Optional[MaskingConfig] = None, with_mlm: bool = False) -> None:
        self.tokenizer = tokenizer
        self.masker = Masker(tokenizer, options or MaskingConfig()) if with_mlm else None
        self.heads = ("pooler", "nsp_head", "mlm_head") if with_mlm else ("pooler", "nsp_head")
        for role in ("cls", "sep", "pad"):
            if getattr(tokenizer, f"{role}_id") is None:
                raise ConfigError(f"sentence-order prediction needs a {role} token, and this tokenizer has none.")

    def check(self, config: ModelConfig, data) -> None:
        if config.stack != "encoder" or not config.nsp_head or (self.masker is not None and not config.mlm_head):
            needs = "a sentence-pair head" + (" and an MLM head" if self.masker is not None else "")
            raise ConfigError(f"the {self.label} objective needs an encoder with {needs} (bert, albert); "
                              f"'{config.family}' ({config.stack}) has not.")

    @property
    def label(self) -> str:
        return "mlm+sop" if self.masker is not None else "sop"

    def prepare(self, windows: torch.Tensor, rng: torch.Generator):
        tok = self.tokenizer
        B, W = windows.shape
        ids = torch.full((B, W + 3), tok.pad_id)
        types = torch.zeros((B, W + 3), dtype=torch.long)
        mask = torch.zeros((B, W + 3), dtype=torch.long)
        swapped = torch.rand(B, generator=rng) < 0.5
        for r, row in enumerate(windows.tolist()):
            piece = longest_piece(row, tok.eos_id)
            if len(piece) < 2:
                piece = row[:2]  # a window of end-of-document tokens only: degenerate but valid
            cut = int(torch.randint(1, len(piece), (1,), generator=rng))
            first, second = (piece[cut:], piece[:cut]) if swapped[r] else (piece[:cut], piece[cut:])
            tokens = [tok.cls_id, *first, tok.sep_id, *second, tok.sep_id]
            ids[r, :len(tokens)] = torch.tensor(tokens)
            types[r, len(first) + 2:len(tokens)] = 1
            mask[r, :len(tokens)] = 1
        targets = {"labels": swapped.long()}
        if self.masker is not None:
            ids, targets["mlm_labels"] = self.masker(ids, rng)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}, targets

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        pair_logits = output.nsp_logits  # (B, 2)
        loss = F.cross_entropy(pair_logits.float(), targets["labels"])
        metrics = {"pair_accuracy": (pair_logits.argmax(-1) == targets["labels"]).float().mean().detach()}
        if self.masker is not None:
            labels = targets["mlm_labels"]
            chosen = labels != -100
            logits = output.logits[chosen]
            mlm_loss = F.cross_entropy(logits.float(), labels[chosen])
            metrics["masked_accuracy"] = (logits.argmax(-1) == labels[chosen]).float().mean().detach()
            metrics["mlm_loss"] = mlm_loss.detach()
            loss = loss + mlm_loss
        metrics["loss"] = loss.detach()
        return loss, metrics
