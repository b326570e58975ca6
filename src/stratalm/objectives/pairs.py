"""Sentence-pair tasks, as [CLS] A [SEP] B [SEP] with token types 0 then 1:

- next-sentence prediction (BERT, Devlin et al. 2019): B follows A in its document half of the
  time (label 0), and half of the time is a segment of another document (label 1);
- sentence-order prediction (ALBERT, Lan et al. 2020): A and B are consecutive segments of one
  document, swapped half of the time (label 1 = swapped).

As in both papers, segments are runs of whole sentences: a piece of text is trimmed to its first
and last sentence end and cut at a sentence end between them (tokens that end in . ! ? or hold a
line break mark sentence ends). Without that, a cut inside a word or sentence would hand the model
a shortcut (the segment that starts mid-word is the swapped one). A piece with fewer than two
whole sentences is cut at a uniformly random token instead.

`mlm+nsp` / `mlm+sop` add BERT masking of the same inputs, and the two losses are summed. A window
of the token stream is cut at its end-of-document tokens, so a pair never crosses a document
boundary.
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


def sentence_end_ids(tokenizer: Tokenizer) -> set[int]:
    """Tokens that end a sentence: their text ends in . ! or ? (with any trailing spaces), or holds a
    line break (byte-level BPE writes it as "Ċ")."""
    vocab = tokenizer.backend.get_vocab(with_added_tokens=False)
    return {i for token, i in vocab.items()
            if token.rstrip().endswith((".", "!", "?")) or "\n" in token or "Ċ" in token}


def sentence_split(piece: list[int], ends: set[int], rng: torch.Generator) -> tuple[list[int], list[int]]:
    """Two consecutive runs of whole sentences from `piece`, or a random cut when it has too few."""
    bounds = [i for i in range(1, len(piece)) if piece[i - 1] in ends]
    if len(bounds) >= 3:
        cut = bounds[1 + int(torch.randint(len(bounds) - 2, (1,), generator=rng))]
        return piece[bounds[0]:cut], piece[cut:bounds[-1]]
    cut = int(torch.randint(1, len(piece), (1,), generator=rng))
    return piece[:cut], piece[cut:]


def sentence_start(piece: list[int], ends: set[int]) -> list[int]:
    """`piece` from its first sentence start (after the first sentence end), when it has one."""
    for i in range(1, len(piece)):
        if piece[i - 1] in ends and i < len(piece) - 1:
            return piece[i:]
    return piece


class SentencePairObjective(Objective):
    extra_tokens = -3  # [CLS] A [SEP] B [SEP]

    def __init__(self, tokenizer: Tokenizer, options: Optional[MaskingConfig] = None, with_mlm: bool = False,
                 kind: str = "sop") -> None:
        self.tokenizer, self.kind = tokenizer, kind
        self.needs_documents = kind == "nsp"
        self.masker = Masker(tokenizer, options or MaskingConfig()) if with_mlm else None
        self.sentence_ends = sentence_end_ids(tokenizer)
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
        first, second = sentence_split(piece, self.sentence_ends, rng)
        if self.kind == "sop":
            return (second, first, 1) if flip else (first, second, 0)
        if not flip:
            return first, second, 0
        # B from another document: a row whose first document differs from this row's
        others = [j for j in range(len(rows)) if firsts[j][1] != firsts[r][1] and firsts[j][0]]
        if not others:
            return first, second, 0  # every row of the batch is one document: keep the true next
        other = firsts[others[int(torch.randint(len(others), (1,), generator=rng))]][0]
        return first, sentence_start(other, self.sentence_ends)[:len(second)], 1

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
