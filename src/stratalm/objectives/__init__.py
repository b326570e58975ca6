"""Level 3: pretraining objectives. Each turns windows of token ids into model inputs + targets,
and the model's output into a loss and metrics."""
from __future__ import annotations

from typing import Any, Optional

from ..errors import ConfigError
from ..tokenize import Tokenizer
from .base import Objective
from .clm import CausalLMObjective
from .mlm import MaskedLMObjective, Masker, MaskingConfig
from .pairs import SentenceOrderObjective
from .span import SpanCorruptionObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "clm": CausalLMObjective, "mlm": MaskedLMObjective, "span": SpanCorruptionObjective,
    "sop": SentenceOrderObjective,
}
COMBINED = {"mlm+sop": lambda tokenizer, options: SentenceOrderObjective(tokenizer, options, with_mlm=True)}


def get_objective(name: str, tokenizer: Optional[Tokenizer] = None, options: Optional[Any] = None) -> Objective:
    """The objective called `name`, with its options (e.g. the run's `mlm` section)."""
    if name in COMBINED:
        return COMBINED[name](tokenizer, options)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; choose one of: {', '.join([*OBJECTIVES, *COMBINED])}.")
    return OBJECTIVES[name](tokenizer, options)


__all__ = ["Objective", "CausalLMObjective", "MaskedLMObjective", "Masker", "MaskingConfig", "SpanCorruptionObjective", "SentenceOrderObjective", "OBJECTIVES", "get_objective"]
