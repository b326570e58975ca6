"""The settings of the objectives that have them (the `mlm.*`, `rtd.*`, `simcse.*` and `plm.*` sections
of a pretraining config), in a module without torch so that `stratalm pretrain --help` stays instant."""
from __future__ import annotations

from dataclasses import dataclass

from ..config_fields import above, above_up_to, at_least, from_to, setting


@dataclass(frozen=True)
class MaskingConfig:
    rate: float = setting(0.15, "share of (non-special) tokens selected for prediction", above_up_to(0, 1))
    mask_fraction: float = setting(0.8, "of the selected tokens, the share replaced by [MASK]", from_to(0, 1))
    random_fraction: float = setting(0.1, "of the selected tokens, the share replaced by a random token (the rest stay)", from_to(0, 1))
    whole_word: bool = setting(False, "select all pieces of a word together")
    max_ngram: int = setting(1, "select spans of up to this many words, p(n) ∝ 1/n (ALBERT uses 3)", at_least(1))


@dataclass(frozen=True)
class ReplacedTokenConfig:
    generator_ratio: float = setting(0.25, "generator width (hidden size, heads, MLP) as a share of the discriminator's", above_up_to(0, 1))
    discriminator_weight: float = setting(50.0, "weight of the discriminator loss against the generator's MLM loss", at_least(0))
    rate: float = setting(0.15, "share of tokens selected for the generator to fill", above_up_to(0, 1))
    mask_fraction: float = setting(0.85, "of the selected tokens, the share shown to the generator as [MASK] (the rest stay)", from_to(0, 1))


@dataclass(frozen=True)
class ContrastiveConfig:
    temperature: float = setting(0.05, "softmax temperature of the cosine similarities", above(0))
    pooling: str = setting("mean", "sentence vector: mean of the last hidden states, or cls (the pooler's output when the model has one, as in the SimCSE paper; from random initialisation it collapses)")
    pairs: str = setting("", "supervised SimCSE: a .tsv/.csv/.jsonl file of text pairs (empty = unsupervised, from the corpus)")
    first_column: str = setting("sent0", "pairs file: the column of the anchor text")
    second_column: str = setting("sent1", "pairs file: the column of the positive text")
    negative_column: str = setting("hard_neg", "pairs file: the column of an optional hard negative (used when present)")
    augment: str = setting("", "comma-separated cross-view augmentations: reorder, delete, replace (empty = dropout only)")
    augment_rate: float = setting(0.1, "probability per word (delete) or token (replace)", from_to(0, 1))
    eval_augment: str = setting("delete", "unsupervised validation: the augmentation that makes each held-out text's positive (dropout is off in evaluation, so it cannot)")
    eval_augment_rate: float = setting(0.1, "unsupervised validation: eval_augment's probability per word or token", from_to(0, 1))
    eval_pairs: str = setting("", "a scored pairs file (.tsv/.csv/.jsonl, e.g. STS-B) for validation: Spearman of cosine with the score, alignment, uniformity")
    eval_first_column: str = setting("sentence1", "eval_pairs: the column of the first text")
    eval_second_column: str = setting("sentence2", "eval_pairs: the column of the second text")
    eval_score_column: str = setting("score", "eval_pairs: the column of the similarity score (a number; higher = more similar)")


@dataclass(frozen=True)
class PermutationConfig:
    partial_prediction: int = setting(6, "K of partial prediction: one token in K is a target, the last 1/K of the "
                                         "factorisation order (XLNet: 6)", at_least(2))
    max_span: int = setting(5, "targets are chosen in spans of 1..max_span tokens, p(n) ∝ 1/n (XLNet: 5; 1 = single tokens)",
                            at_least(1))
