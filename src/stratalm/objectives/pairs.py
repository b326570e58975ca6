"""Sentence-pair tasks, as [CLS] A [SEP] B [SEP] with token types 0 then 1:

- next-sentence prediction (BERT, Devlin et al. 2019): B follows A in its document half of the
  time (label 0), and half of the time is a segment of another document (label 1);
- sentence-order prediction (ALBERT, Lan et al. 2020): A and B are consecutive segments of one
  document, swapped half of the time (label 1 = swapped).

`mlm+nsp` / `mlm+sop` add BERT masking of the same inputs, and the two losses are summed. A window
of the token stream is cut at its end-of-document tokens, so a pair never crosses a document
boundary; the piece is split at a uniformly random point.
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


def pieces(row: list[int], boundary: Optional[int]) -> list[list[int]]:
    """`row` cut at end-of-document tokens: the rest of the first document, then the next ones."""
    out, current = [], []
    for token in row:
        if token == boundary:
            out.append(current)
            current = []
        else:
            current.append(token)
    return out + [current]


def longest_piece(row: list[int], boundary: Optional[int]) -> list[int]:
    return max(pieces(row, boundary), key=len)


def first_piece(row: list[int], boundary: Optional[int]) -> tuple[list[int], int]:
    """The text of the window's first document, or of the next one when that is too short for a
    pair; with how many documents after the window's first it lies (0 or 1)."""
    cut = pieces(row, boundary)
    if len(cut[0]) >= 2 or len(cut) == 1:
        return cut[0], 0
    return cut[1], 1


class SentencePairObjective(Objective):
    extra_tokens = -3  # [CLS] A [SEP] B [SEP]

    def __init__(self, tokenizer: Tokenizer, options: Optional[MaskingConfig] = None, with_mlm: bool = False,
                 kind: str = "sop") -> None:
        self.tokenizer, self.kind = tokenizer, kind
        self.needs_documents = kind == "nsp"
        self.masker = Masker(tokenizer, options or MaskingConfig()) if with_mlm else None
        self.heads = ("pooler", "nsp_head", "mlm_head") if with_mlm else ("pooler", "nsp_head")
        for role in ("cls", "sep", "pad"):
            if getattr(tokenizer, f"{role}_id") is None:
                raise ConfigError(f"sentence-pair objectives need a {role} token, and this tokenizer has none.")

    def check(self, config: ModelConfig, data) -> None:
        if self.kind == "nsp" and data is not None and data.manifest.get("n_documents", 0) < 2:
            raise ConfigError("the nsp objective pairs segments of different documents, and this corpus has only one; "
                              "give prepare several files or a JSONL with one document per line.")
        if config.stack != "encoder" or not config.nsp_head or (self.masker is not None and not config.mlm_head):
            needs = "a sentence-pair head" + (" and an MLM head" if self.masker is not None else "")
            raise ConfigError(f"the {self.name} objective needs an encoder with {needs} (bert, albert); "
                              f"'{config.family}' ({config.stack}) has not.")

    @property
    def name(self) -> str:  # type: ignore[override]
        return ("mlm+" if self.masker is not None else "") + self.kind

    def pair(self, r: int, rows: list[list[int]], firsts: list[tuple[list[int], int]], flip: bool,
             rng: torch.Generator) -> tuple[list[int], list[int], int]:
        """Segments A and B of row r, and the label. `firsts[j]` is row j's first document piece
        and that document's index (for nsp)."""
        piece = longest_piece(rows[r], self.tokenizer.eos_id) if self.kind == "sop" else firsts[r][0]
        if len(piece) < 2:
            piece = rows[r][:2]  # a window of end-of-document tokens only: degenerate but valid
        cut = int(torch.randint(1, len(piece), (1,), generator=rng))
        first, second = piece[:cut], piece[cut:]
        if self.kind == "sop":
            return (second, first, 1) if flip else (first, second, 0)
        if not flip:
            return first, second, 0
        # B from another document: a row whose first document differs from this row's
        others = [j for j in range(len(rows)) if firsts[j][1] != firsts[r][1] and firsts[j][0]]
        if not others:
            return first, second, 0  # every row of the batch is one document: keep the true next
        other = firsts[others[int(torch.randint(len(others), (1,), generator=rng))]][0]
        return first, other[:len(second)], 1

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        tok = self.tokenizer
        B, W = windows.shape
        ids = torch.full((B, W + 3), tok.pad_id)
        types = torch.zeros((B, W + 3), dtype=torch.long)
        mask = torch.zeros((B, W + 3), dtype=torch.long)
        flips = (torch.rand(B, generator=rng) < 0.5).tolist()
        rows = windows.tolist()
        firsts = []
        if self.kind == "nsp":  # each row's first document piece, and which document it is
            for r, row in enumerate(rows):
                piece, later = first_piece(row, tok.eos_id)
                firsts.append((piece, int(documents[r]) + later))
        labels = torch.zeros(B, dtype=torch.long)
        for r in range(B):
            first, second, labels[r] = self.pair(r, rows, firsts, flips[r], rng)
            tokens = [tok.cls_id, *first, tok.sep_id, *second, tok.sep_id]
            ids[r, :len(tokens)] = torch.tensor(tokens)
            types[r, len(first) + 2:len(tokens)] = 1
            mask[r, :len(tokens)] = 1
        targets = {"labels": labels}
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
