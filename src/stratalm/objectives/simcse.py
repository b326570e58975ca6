"""Contrastive sentence embeddings (SimCSE, Gao et al. 2021).

Unsupervised: every text of the batch is encoded twice; dropout alone makes the two views differ,
and each first view must pick its own second view among all second views of the batch (in-batch
negatives, cross-entropy over cosine similarities / temperature 0.05). Supervised: the views are
the two sides of a pair from a file (e.g. an NLI premise and its entailment), with an optional hard
negative per pair whose embedding joins the candidates. Under DDP the candidates are gathered from
every process; as in the paper's code, gradients flow through this process's own embeddings only.

Optional cross-view augmentations from the classic literature (CLEAR, Wu et al. 2020; ConSERT, Yan
et al. 2021): `reorder` swaps two sentences of the text, `delete` drops each word with probability
`augment_rate`, `replace` swaps each token for a random one with that probability.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..config_fields import setting
from ..errors import ConfigError, DataError
from ..model_config import ModelConfig
from ..models import ModelOutput
from ..tokenize import Tokenizer
from .base import Objective
from .mlm import continuation_table
from .pairs import longest_piece

AUGMENTATIONS = ("reorder", "delete", "replace")


@dataclass(frozen=True)
class ContrastiveConfig:
    temperature: float = setting(0.05, "softmax temperature of the cosine similarities")
    pooling: str = setting("mean", "sentence vector: mean of the last hidden states, or cls (the pooler's output when the model has one, as in the SimCSE paper; from random initialisation it collapses)")
    pairs: str = setting("", "supervised SimCSE: a .tsv/.csv/.jsonl file of text pairs (empty = unsupervised, from the corpus)")
    first_column: str = setting("sent0", "pairs file: the column of the anchor text")
    second_column: str = setting("sent1", "pairs file: the column of the positive text")
    negative_column: str = setting("hard_neg", "pairs file: the column of an optional hard negative (used when present)")
    augment: str = setting("", "comma-separated cross-view augmentations: reorder, delete, replace (empty = dropout only)")
    augment_rate: float = setting(0.1, "probability per word (delete) or token (replace)")


def read_pairs(path: str, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Rows of a TSV/CSV (with a header) or JSONL file as tuples of the named columns; the last
    column is dropped everywhere when the file does not have it (an optional hard negative)."""
    if not os.path.isfile(path):
        raise DataError(f"pairs file '{path}' does not exist.")
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    elif path.endswith((".tsv", ".csv")):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if path.endswith(".tsv") else ","))
    else:
        raise DataError(f"pairs file '{path}' must end in .tsv, .csv or .jsonl.")
    if not rows:
        raise DataError(f"pairs file '{path}' has no rows.")
    found = list(rows[0])
    wanted = list(columns) if columns[-1] in found else list(columns[:-1])
    for column in wanted:
        if column not in found:
            raise DataError(f"pairs file '{path}' has no column '{column}'; its columns are: {', '.join(found)}.")
    return [tuple(str(row[c]) for c in wanted) for row in rows]


class ContrastiveObjective(Objective):
    name = "simcse"
    extra_tokens = -2  # [CLS] text [SEP]

    def __init__(self, tokenizer: Tokenizer, options: Optional[ContrastiveConfig] = None) -> None:
        self.options = options = options or ContrastiveConfig()
        self.tokenizer = tokenizer
        self.heads = ("pooler",) if options.pooling == "cls" else ()
        self.augment = [a for a in options.augment.replace(" ", "").split(",") if a]
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown or options.pooling not in ("cls", "mean") or options.temperature <= 0:
            raise ConfigError(f"simcse options: augment must be among {', '.join(AUGMENTATIONS)}, pooling cls or mean, "
                              f"temperature above 0 (got augment '{options.augment}', pooling '{options.pooling}').")
        for role in ("cls", "sep", "pad"):
            if getattr(tokenizer, f"{role}_id") is None:
                raise ConfigError(f"the simcse objective needs a {role} token, and this tokenizer has none.")
        self.pairs = read_pairs(options.pairs, (options.first_column, options.second_column, options.negative_column)) \
            if options.pairs else None
        self.starts_word = ~continuation_table(tokenizer) if "delete" in self.augment else None
        self.sentence_ends = self._sentence_end_ids() if "reorder" in self.augment else None

    def check(self, config: ModelConfig, data) -> None:
        if config.stack != "encoder":
            raise ConfigError(f"the simcse objective trains sentence encoders; '{config.family}' is a {config.stack} model.")

    def _sentence_end_ids(self) -> set[int]:
        vocab = self.tokenizer.backend.get_vocab(with_added_tokens=False)
        return {i for token, i in vocab.items() if token.rstrip().endswith((".", "!", "?"))}

    # -- views ------------------------------------------------------------------------------
    def _augmented(self, tokens: list[int], rng: torch.Generator) -> list[int]:
        rate = self.options.augment_rate
        if "reorder" in self.augment:
            cuts = [i + 1 for i, t in enumerate(tokens[:-1]) if t in self.sentence_ends]
            if cuts:  # swap the text before and after one sentence end
                cut = cuts[int(torch.randint(len(cuts), (1,), generator=rng))]
                tokens = tokens[cut:] + tokens[:cut]
        if "delete" in self.augment and len(tokens) > 1:
            words = torch.tensor(tokens)
            word_of = self.starts_word[words].long().cumsum(0)
            dropped = torch.rand(int(word_of.max()) + 1, generator=rng) < rate
            kept = [t for t, w in zip(tokens, word_of.tolist()) if not dropped[w]]
            tokens = kept or tokens[:1]
        if "replace" in self.augment:
            swap = (torch.rand(len(tokens), generator=rng) < rate).tolist()
            random_ids = torch.randint(7, self.tokenizer.vocab_size, (len(tokens),), generator=rng).tolist()
            tokens = [r if s else t for t, s, r in zip(tokens, swap, random_ids)]
        return tokens

    def _batch(self, views: list[list[list[int]]], width: int) -> dict[str, torch.Tensor]:
        """(B, V, width) ids and attention masks of [CLS] text [SEP], right-padded."""
        tok = self.tokenizer
        B, V = len(views), len(views[0])
        ids = torch.full((B, V, width), tok.pad_id)
        mask = torch.zeros((B, V, width), dtype=torch.long)
        for b, row in enumerate(views):
            for v, text in enumerate(row):
                tokens = [tok.cls_id, *text[:width - 2], tok.sep_id]
                ids[b, v, :len(tokens)] = torch.tensor(tokens)
                mask[b, v, :len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        B, W = windows.shape
        if self.pairs is not None:
            chosen = torch.randint(len(self.pairs), (B,), generator=rng).tolist()
            texts = [self.pairs[i] for i in chosen]
            views = [[self._augmented(t, rng) if self.augment else t for t in self.tokenizer.encode_batch(list(row))]
                     for row in texts]
        else:
            eos = self.tokenizer.eos_id
            pieces = [longest_piece(row, eos) or row[:1] for row in windows.tolist()]
            views = [[self._augmented(p, rng), self._augmented(p, rng)] if self.augment else [p, p] for p in pieces]
        inputs = self._batch(views, W + 2)
        return inputs, {"labels": torch.arange(B)}  # row i's positive is candidate i (over all processes)

    # -- loss -------------------------------------------------------------------------------
    def compute(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        B, V, T = ids.shape
        output = model(input_ids=ids.view(B * V, T), attention_mask=mask.view(B * V, T))
        return self.loss(output, {**targets, "attention_mask": mask.view(B * V, T), "views": torch.tensor(V)})

    def embed(self, output: ModelOutput, mask: torch.Tensor) -> torch.Tensor:
        if self.options.pooling == "cls":
            return output.pooled if output.pooled is not None else output.last_hidden_state[:, 0]
        weights = mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
        return (output.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        V = int(targets["views"])
        z = F.normalize(self.embed(output, targets["attention_mask"]).float(), dim=-1)
        z = z.view(-1, V, z.shape[-1])  # (B, V, C): anchor, positive[, hard negative]
        anchors = z[:, 0]
        candidates = gather_rows(torch.cat([z[:, 1], z[:, 2]]) if V == 3 else z[:, 1], V - 1)
        logits = anchors @ candidates.T / self.options.temperature  # (B, B_all x (V - 1))
        labels = targets["labels"]
        loss = F.cross_entropy(logits, labels)
        positive = (anchors * candidates[labels]).sum(-1).mean()
        others = (logits * self.options.temperature).sum(-1) - (anchors * candidates[labels]).sum(-1)
        metrics = {"loss": loss.detach(), "contrastive_accuracy": (logits.argmax(-1) == labels).float().mean().detach(),
                   "positive_cosine": positive.detach(), "negative_cosine": (others.mean() / max(logits.shape[1] - 1, 1)).detach()}
        return loss, metrics


def gather_rows(local: torch.Tensor, groups: int) -> torch.Tensor:
    """Every process's candidates, in process order (positives first, then hard negatives); this
    process's own rows keep their gradient. `local` is `groups` blocks of this process's rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world, rank = dist.get_world_size(), dist.get_rank()
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local.detach().contiguous())
    gathered[rank] = local
    blocks = [part.chunk(groups) for part in gathered]  # per process: (positives, negatives)
    return torch.cat([blocks[r][g] for g in range(groups) for r in range(world)])
