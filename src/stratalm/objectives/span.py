"""T5 span corruption (Raffel et al. 2020): drop 15% of the tokens in spans of mean length 3;
each dropped span becomes one sentinel in the encoder's input, and the decoder writes every span
after its sentinel, then end-of-text.

For a window of L tokens: noise = round(0.15 L) tokens in round(noise / 3) spans (at least one),
the noise and the kept tokens each split into that many non-empty runs at random, interleaved
kept-first. Every row of a batch has the same counts, so no padding is needed.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model_config import ModelConfig
from ..models import ModelOutput
from ..models.seq2seq import shift_right
from ..tokenize import Tokenizer
from .base import Objective

NOISE_DENSITY, MEAN_SPAN_LENGTH = 0.15, 3.0


def span_counts(length: int) -> tuple[int, int]:
    """(noise tokens, noise spans) for a window of `length` tokens, as T5's formula gives."""
    noise = min(max(round(length * NOISE_DENSITY), 1), length - 1)
    return noise, max(round(noise / MEAN_SPAN_LENGTH), 1)


def random_partition(total: int, parts: int, rng: torch.Generator) -> list[int]:
    """`total` items cut into `parts` non-empty runs at uniformly random places."""
    cuts = (torch.randperm(total - 1, generator=rng)[: parts - 1] + 1).sort().values.tolist()
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


def sentinel_ids(tokenizer: Tokenizer, count: int) -> list[int]:
    ids = [tokenizer.backend.token_to_id(f"<extra_id_{i}>") for i in range(count)]
    if any(i is None for i in ids):
        raise ConfigError(
            f"the span objective needs {count} sentinel tokens (<extra_id_0> ...); "
            "prepare the data with `stratalm prepare ... --sentinels 100`."
        )
    return ids


class SpanCorruptionObjective(Objective):
    name = "span"
    reports_perplexity = True

    def __init__(self, tokenizer: Tokenizer, options=None) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_id
        self.start_id, self.pad_id = 0, 0
        self.sentinels: Optional[list[int]] = None

    def check(self, config: ModelConfig, data) -> None:
        if config.stack != "encoder-decoder":
            raise ConfigError(f"the span objective needs an encoder-decoder model (t5); '{config.family}' is a {config.stack} model.")
        _, spans = span_counts(config.max_seq_len)
        self.sentinels = sentinel_ids(self.tokenizer, spans)
        self.start_id, self.pad_id = config.decoder_start_token_id, config.pad_token_id

    def corrupt(self, row: list[int], rng: torch.Generator) -> tuple[list[int], list[int]]:
        """One window -> (encoder input, decoder target)."""
        noise, spans = span_counts(len(row))
        if self.sentinels is None:
            self.sentinels = sentinel_ids(self.tokenizer, spans)
        noise_runs = random_partition(noise, spans, rng)
        kept_runs = random_partition(len(row) - noise, spans, rng)
        source, target, at = [], [], 0
        for i, (kept, dropped) in enumerate(zip(kept_runs, noise_runs)):
            source += row[at:at + kept] + [self.sentinels[i]]
            at += kept
            target += [self.sentinels[i]] + row[at:at + dropped]
            at += dropped
        return source, target + [self.eos_id]

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        pairs = [self.corrupt(row, rng) for row in windows.tolist()]
        inputs = torch.tensor([p[0] for p in pairs])
        labels = torch.tensor([p[1] for p in pairs])
        return ({"input_ids": inputs, "decoder_input_ids": shift_right(labels, self.start_id, self.pad_id)},
                {"labels": labels})

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        logits, labels = output.logits, targets["labels"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "token_accuracy": accuracy.detach()}
