"""What a fine-tuning task is, and the pieces every task shares.

A task turns examples (read from a data file) into model inputs and targets, computes a loss,
predicts, and scores predictions. The loop in `finetune.py` knows nothing else about it, so a new
task is a subclass of `Task` plus one line in the registry (`tasks/__init__.py`):

    read(path, labelled)        -> examples (dicts); checks labels against `state` once it is learned
    learn(train_examples)       -> fills `state` (label names, ...) from the training file
    check_model(config)         -> refuses, in one sentence, a model the task cannot use
    prepare_model(base)         -> the model to fine-tune (a fresh task head) + the head's module names
    load_base(path, train)      -> the pretrained model (default: the folder; seq2seq may build a preset)
    encode(examples, tok, max_length) -> training features (dicts of lists), targets included
    collate(features)           -> a batch: dict of tensors
    loss(model, batch)          -> scalar loss
    predict(model, examples, max_length, batch_size) -> one prediction per example
    score(examples, predictions) -> metrics (higher is better for `main_metric`)
    format(example, prediction) -> one JSON line of `stratalm predict`

`OPTIONS` declares the task's settings: each becomes a flag of `stratalm finetune/evaluate/predict`
(`text_column` -> `--text-column`) and is stored in the fine-tuned folder's task.json together with
`state`, so evaluation and prediction need nothing but that folder.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError, StratalmError
from ..model_config import ModelConfig
from ..tokenize import Tokenizer

IGNORE = -100  # targets the loss skips (padding, special tokens, non-first sub-tokens)


@dataclass(frozen=True)
class Option:
    """A task setting: a --flag of finetune/evaluate/predict and a key of task.json."""

    default: Any
    help: str
    type: type = str

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")


class Task(ABC):
    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Option]] = {}
    main_metric: ClassVar[str] = ""  # the dev metric that picks the best weights (higher is better)
    stacks: ClassVar[tuple[str, ...]] = ("encoder",)  # model stacks the task can fine-tune

    def __init__(self, options: Optional[dict[str, Any]] = None, state: Optional[dict[str, Any]] = None) -> None:
        given = {k: v for k, v in (options or {}).items()}
        unknown = sorted(set(given) - set(self.OPTIONS))
        if unknown:
            valid = ", ".join(Option.flag(k) for k in self.OPTIONS) or "none"
            raise ConfigError(f"{Option.flag(unknown[0])} does not apply to the {self.name} task; its options are: {valid}.")
        self.options = {k: given.get(k, spec.default) for k, spec in self.OPTIONS.items()}
        self.state: dict[str, Any] = dict(state or {})

    # -- data --------------------------------------------------------------------------------
    @abstractmethod
    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        """Examples of a data file; `labelled=False` (prediction) lets targets be absent."""

    def learn(self, train: list[dict[str, Any]]) -> None:
        """Learn what the training file defines (the label set, ...) into `self.state`."""

    # -- model -------------------------------------------------------------------------------
    def load_base(self, path: str, train_path: str) -> nn.Module:
        """The pretrained model `--model` names (a folder); a task may also build one from scratch
        (seq2seq: a preset name with a tokenizer trained on `train_path`)."""
        from ..io import load

        return load(path)

    def check_model(self, config: ModelConfig) -> None:
        if config.stack not in self.stacks:
            kinds = {"encoder": "an encoder (bert, roberta, albert, electra)", "decoder": "a decoder (gpt2, llama)",
                     "encoder-decoder": "an encoder-decoder (t5)"}
            raise ConfigError(f"the {self.name} task needs {' or '.join(kinds[s] for s in self.stacks)}; "
                              f"this model is a {config.family} {config.stack}.")

    def prepare_model(self, base: nn.Module) -> tuple[nn.Module, list[str]]:
        """The model to fine-tune, built from the pretrained `base` (its tokenizer attached), and the
        names of its top-level modules that are the task's head (what `--train-only head` trains)."""
        return base, []

    # -- training ----------------------------------------------------------------------------
    @abstractmethod
    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Training features, targets included (one or more per example)."""

    @abstractmethod
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A batch of features as tensors (padded)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss of a batch."""

    # -- evaluation --------------------------------------------------------------------------
    @abstractmethod
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[Any]:
        """One prediction per example, in order."""

    @abstractmethod
    def score(self, examples: list[dict[str, Any]], predictions: list[Any]) -> dict[str, float]:
        """Metrics of predictions against the examples' targets."""

    @abstractmethod
    def format(self, example: dict[str, Any], prediction: Any) -> dict[str, Any]:
        """One line of `stratalm predict` output."""


# -- shared helpers -----------------------------------------------------------------------------
def model_tokenizer(model: nn.Module) -> Tokenizer:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise StratalmError("this model has no tokenizer; fine-tune a folder that holds tokenizer.json.")
    return tokenizer


def has_template(tokenizer: Tokenizer) -> bool:
    """Whether tokenizer.json says how to add special tokens ([CLS] A [SEP] B [SEP] for BERT,
    <s> A </s></s> B </s> for RoBERTa). Tokenizers trained by stratalm have no template."""
    return tokenizer.backend.post_processor is not None


def _specials(tokenizer: Tokenizer) -> tuple[Optional[int], Optional[int]]:
    start = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
    end = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    return start, end


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]],
                 max_length: int) -> list[tuple[list[int], list[int]]]:
    """(ids, token types) of each text, or of each (text, pair) as [CLS] A [SEP] B [SEP] with types
    0 then 1, truncated to `max_length` by cutting the longer side first. The tokenizer's own
    template is used when it has one, else [CLS]/[SEP] (or <bos>/<eos>) are added here."""
    backend = tokenizer.backend
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    if has_template(tokenizer):
        backend.enable_truncation(max_length, strategy="longest_first")
        try:
            return [(e.ids, e.type_ids) for e in backend.encode_batch(inputs, add_special_tokens=True)]
        finally:
            backend.no_truncation()
    start, end = _specials(tokenizer)
    wrap = [t for t in (start, end) if t is not None]
    a_ids = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    b_ids = [e.ids for e in backend.encode_batch(list(pairs), add_special_tokens=False)] if pairs is not None else None
    out = []
    for i, a in enumerate(a_ids):
        b = b_ids[i] if b_ids is not None else None
        budget = max_length - len(wrap) - (1 if b is not None and end is not None else 0)
        while len(a) + (len(b) if b is not None else 0) > max(budget, 0):
            if b is not None and len(b) >= len(a) and b:
                b = b[:-1]
            else:
                a = a[:-1]
        ids = ([start] if start is not None else []) + a + ([end] if end is not None else [])
        types = [0] * len(ids)
        if b is not None:
            tail = b + ([end] if end is not None else [])
            ids, types = ids + tail, types + [1] * len(tail)
        out.append((ids, types))
    return out


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The padding id: the tokenizer's (RoBERTa's position ids depend on it), else 0 (masked anyway)."""
    return tokenizer.pad_id if tokenizer.pad_id is not None else 0


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ints into a (B, T) tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def text_batch(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and token_type_ids of features that carry `ids` and `types`."""
    return {"input_ids": pad([f["ids"] for f in features], pad_id),
            "attention_mask": pad([[1] * len(f["ids"]) for f in features], 0),
            "token_type_ids": pad([f["types"] for f in features], 0)}


def by_length(features: list[dict[str, Any]], batch_size: int) -> Iterator[list[int]]:
    """Indices of `features` in batches of similar length (little padding), for inference."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs of `batch` on the model's device; token types only for models with segments."""
    device = next(model.parameters()).device
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.type_vocab_size else [])
    return {k: batch[k].to(device) for k in keys if k in batch}
