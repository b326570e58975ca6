"""What a fine-tuning task is: the `Task` API, its `Option`s, and `IGNORE`.

A task turns examples (read from a data file) into model inputs and targets, computes a loss,
predicts, and scores predictions. The loop in `finetune.py` knows nothing else about it, so a new
task is a subclass of `Task` plus one line in the registry (`tasks/__init__.py`):

    read(path, labelled)        -> examples (dicts); checks labels against `state` once it is learned
    learn(train_examples)       -> fills `state` (label names, ...) from the training file
    check_model(config)         -> refuses, in one sentence, a model the task cannot use
    prepare_model(base)         -> the model to fine-tune (a fresh task head) + the head's module names
    load_base(path, train)      -> the pretrained model (default: the folder; seq2seq may build a preset)
    encode(examples, tok, max_length) -> training features (dicts of lists), targets included
    collate(features, pad_id)   -> a batch: dict of tensors, ids padded with `pad_id`
    loss(model, batch)          -> scalar loss
    predict(model, examples, max_length, batch_size) -> one prediction per example
    score(examples, predictions) -> metrics (higher is better for `main_metric`)
    format(example, prediction) -> one JSON line of `stratalm predict`
    write_files(folder, model)  -> extra files of the fine-tuned folder (optional; chat's template)

`OPTIONS` declares the task's settings (its table in options.py, which needs no torch, so the
command's --help stays instant): each becomes a flag of `stratalm finetune/evaluate/predict`
(`text_column` -> `--text-column`) and is stored in the fine-tuned folder's task.json together with
`state`, so evaluation and prediction need nothing but that folder.

A task holds no state that `encode` sets and `collate` reads: whoever batches features passes the
padding id (`common.pad_id_of(tokenizer)`, the tokenizer the features were encoded with), and
`predict` takes it from the model's tokenizer. So batching never depends on which tokenizer the
last `encode` call saw (a task restored from task.json collates without encoding first).
Helpers the tasks share are in `common.py`, the data readers in `data_files.py`; task modules
never import one another.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..model_config import ModelConfig
from ..tokenize import Tokenizer
from .options import Option

IGNORE = -100  # targets the loss skips (padding, special tokens, non-first sub-tokens)


def summed_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (B, T, V) logits against (B, T) labels: the summed cross-entropy of the labelled
    positions (IGNORE elsewhere) and how many there are, so rows can be averaged per token."""
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE,
                                               reduction="none")
    return losses.sum(dim=1), (labels != IGNORE).sum(dim=1)


def mean_token_loss(summed: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The loss per labelled token of a batch, from `summed_token_losses`."""
    total, count = summed
    return total.sum() / count.sum().clamp(min=1)


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
        from ..checkpoint import load

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

    def write_files(self, folder: str, model: nn.Module) -> None:
        """Files of the task beyond task.json that go into the fine-tuned folder (the chat task's
        tokenizer_config.json with its template); none by default."""

    # -- training ----------------------------------------------------------------------------
    @abstractmethod
    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Training features, targets included (one or more per example)."""

    @abstractmethod
    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        """A batch of features as tensors, token ids padded with `pad_id` (masks and targets with
        their own fill values)."""

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
