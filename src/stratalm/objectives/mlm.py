"""Masked language modelling (Devlin et al. 2019): select 15% of the tokens, replace 80% of those
with [MASK], 10% with a random token and leave 10% unchanged, and predict the originals.

Options (`mlm.*` in the run config): whole-word masking, where a word's pieces are selected
together (WordPiece "##" continuations, SentencePiece pieces without the "▁" of a word start, or
byte-level BPE pieces that do not start a word), and
ALBERT's n-gram masking, where spans of 1..max_ngram words are selected with p(n) ∝ 1/n.
Special tokens and padding are never selected; masks are drawn afresh every time a window is seen.
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
from .settings import MaskingConfig


def continuation_table(tokenizer: Tokenizer) -> torch.Tensor:
    """For every id, whether the token continues the previous word instead of starting one."""
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    table = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    wordpiece = any(token.startswith("##") for token in vocab)
    metaspace = any(token.startswith("▁") for token in vocab)  # SentencePiece (T5, ALBERT, XLNet)
    byte_level = any(token.startswith("Ġ") for token in vocab)
    for token, index in vocab.items():
        if wordpiece:
            table[index] = token.startswith("##")
        elif metaspace:  # "▁" marks a word's first piece; the pieces after it carry none
            table[index] = not token.startswith("▁")
        elif byte_level:  # "Ġ" marks a leading space, "Ċ" a newline: both start a new word
            table[index] = not token.startswith(("Ġ", "Ċ", "ĉ")) and token.isprintable()
        else:  # characters: a word is a run of non-space characters
            table[index] = len(token) == 1 and not token.isspace()
    return table


def span_start_rate(rate: float, length_probs: torch.Tensor) -> float:
    """The per-word chance of starting a span that makes `rate` of the words covered, allowing for
    overlaps: solve 1 - prod_k (1 - p * P(n > k)) = rate by bisection."""
    tails = [float(length_probs[k:].sum()) for k in range(len(length_probs))]
    low, high = 0.0, 1.0
    for _ in range(60):
        p = (low + high) / 2
        uncovered = 1.0
        for tail in tails:
            uncovered *= 1 - p * tail
        low, high = (p, high) if 1 - uncovered < rate else (low, p)
    return (low + high) / 2


class Masker:
    """Turns token ids into (masked ids, labels) following the recipe; randomness from `rng` only."""

    def __init__(self, tokenizer: Tokenizer, config: MaskingConfig) -> None:
        if tokenizer.mask_id is None:
            raise ConfigError("masked language modelling needs a [MASK] token, and this tokenizer has none.")
        if not 0 < config.rate < 1 or config.mask_fraction + config.random_fraction > 1 or config.max_ngram < 1:
            raise ConfigError("mlm.rate must be in (0, 1), mask_fraction + random_fraction at most 1, max_ngram at least 1.")
        self.config, self.mask_id = config, tokenizer.mask_id
        special = {i for i in tokenizer.special_ids.values() if i is not None}
        special |= {i for i, token in tokenizer.backend.get_added_tokens_decoder().items() if token.special}
        self.special = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        self.special[sorted(special)] = True
        self.replacements = (~self.special).nonzero().squeeze(1)  # random tokens are never special
        self.continues = continuation_table(tokenizer) if (config.whole_word or config.max_ngram > 1) else None
        lengths = torch.arange(1, config.max_ngram + 1, dtype=torch.float64)
        self.length_probs = (1 / lengths) / (1 / lengths).sum()
        self.start_rate = span_start_rate(config.rate, self.length_probs)

    def word_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) index of the word each token belongs to (each token its own word without whole_word)."""
        if self.continues is None:
            return torch.arange(ids.shape[1]).expand_as(ids)
        starts = ~self.continues[ids] | self.special[ids]
        starts[:, 0] = True
        return starts.long().cumsum(dim=1) - 1

    def select(self, ids: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """(B, T) True where a token is selected for prediction."""
        words = self.word_ids(ids)
        B, W = ids.shape  # at most one word per token
        starts = torch.rand(B, W, generator=rng) < self.start_rate
        lengths = torch.multinomial(self.length_probs.float(), B * W, replacement=True, generator=rng).view(B, W) + 1
        covered = torch.zeros(B, W, dtype=torch.bool)
        for k in range(self.config.max_ngram):  # a span starting at word s covers s .. s + n - 1
            reach = starts & (lengths > k)
            covered[:, k:] |= reach[:, : W - k]
        return covered.gather(1, words) & ~self.special[ids]

    def __call__(self, ids: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        selected = self.select(ids, rng)
        labels = ids.masked_fill(~selected, -100)
        decide = torch.rand(ids.shape, generator=rng)
        to_mask = selected & (decide < self.config.mask_fraction)
        to_random = selected & (decide >= self.config.mask_fraction) & (
            decide < self.config.mask_fraction + self.config.random_fraction)
        random_ids = self.replacements[torch.randint(len(self.replacements), ids.shape, generator=rng)]
        masked = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        return torch.where(to_random, random_ids, masked), labels


class MaskedLMObjective(Objective):
    name = "mlm"
    reports_perplexity = True
    extra_tokens = -2  # each window is wrapped as [CLS] window [SEP]
    heads = ("mlm_head",)

    def __init__(self, tokenizer: Tokenizer, options: Optional[MaskingConfig] = None) -> None:
        self.masker = Masker(tokenizer, options or MaskingConfig())
        self.cls_id, self.sep_id = tokenizer.cls_id, tokenizer.sep_id

    def check(self, config: ModelConfig, data) -> None:
        if config.stack != "encoder" or not config.mlm_head:
            raise ConfigError(
                f"the mlm objective needs an encoder with an MLM head (bert, roberta, albert, electra-generator); "
                f"'{config.family}' is a {config.stack} model" + ("" if config.stack != "encoder" else " without one") + "."
            )

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        B = windows.shape[0]
        ids = torch.cat([torch.full((B, 1), self.cls_id), windows, torch.full((B, 1), self.sep_id)], dim=1)
        masked, labels = self.masker(ids, rng)
        return {"input_ids": masked}, {"labels": labels}

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        labels = targets["labels"]
        chosen = labels != -100
        logits = output.logits[chosen]  # (N, V): only the selected positions
        loss = F.cross_entropy(logits.float(), labels[chosen])
        accuracy = (logits.argmax(-1) == labels[chosen]).float().mean()
        return loss, {"loss": loss.detach(), "masked_accuracy": accuracy.detach()}
