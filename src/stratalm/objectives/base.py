"""The contract every objective follows (DESIGN.md, level 3)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

import torch

from ..model_config import ModelConfig
from ..models import ModelOutput


class Objective(ABC):
    name = "base"
    # How many tokens beyond the model's context one example reads from the stream: a causal LM
    # reads one more (the last input still needs its next token); MLM reads two fewer (it adds
    # [CLS] and [SEP] around them).
    extra_tokens = 0
    # Tokens shared by consecutive evaluation windows, so that every token is scored once.
    overlap = 0
    # The encoder heads this objective trains; the trainer freezes the others.
    heads: tuple[str, ...] = ()
    # Whether prepare needs the document of each window's first token (next-sentence prediction).
    needs_documents = False
    # Whether the validation loss is a mean token cross-entropy, so exp(loss) is a perplexity.
    reports_perplexity = False
    # Whether it can be one part of a weighted mixture (`mlm+simcse:0.1`).
    mixable = True

    def check(self, config: ModelConfig, data: Any) -> None:
        """Raise a ConfigError at start when this model or corpus cannot carry the objective."""

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: the model itself, or (rtd) the model with a generator beside it."""
        return model

    def compute(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Run the model on prepared inputs and score it (one forward)."""
        return self.loss(model(**inputs), targets)

    def parts(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
              ) -> list[tuple["Objective", float, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """(objective, weight, inputs, targets) per backward pass: one, or one per mixed objective."""
        return [(self, 1.0, inputs, targets)]

    def validation_scores(self, model: torch.nn.Module, batch_size: int = 64) -> dict[str, float]:
        """Held-out measures that are not means over evaluation batches (a rank correlation over a
        whole file), computed once per evaluation, after the batches; none by default. The loop
        logs each as `val_<name>`. Every process calls it (a sharded model needs all of them in
        its forwards) and gets the same numbers."""
        return {}

    @abstractmethod
    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents: Optional[torch.Tensor] = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(B, T + extra_tokens) token ids -> (model inputs, targets). Randomness only from `rng`.
        `documents` (B,) is given when the objective asks for it (`needs_documents`)."""

    @abstractmethod
    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss to minimise, and metrics to log."""
