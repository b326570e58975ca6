"""Level 3: pretraining objectives. Each turns windows of token ids into model inputs + targets,
and the model's output into a loss and metrics."""
from __future__ import annotations

from typing import Any, Optional

from ..errors import ConfigError
from ..tokenize import Tokenizer
from .base import Objective
from .clm import CausalLMObjective
from .mlm import MaskedLMObjective, Masker, MaskingConfig
from .pairs import SentencePairObjective
from .span import SpanCorruptionObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "clm": CausalLMObjective, "mlm": MaskedLMObjective, "span": SpanCorruptionObjective,
}
# Sentence-pair objectives, alone or with masking: name -> (kind, with_mlm)
PAIRS = {"nsp": ("nsp", False), "sop": ("sop", False), "mlm+nsp": ("nsp", True), "mlm+sop": ("sop", True)}


def get_objective(name: str, tokenizer: Optional[Tokenizer] = None, options: Optional[Any] = None) -> Objective:
    """The objective called `name`, with its options (e.g. the run's `mlm` section)."""
    if name in PAIRS:
        kind, with_mlm = PAIRS[name]
        return SentencePairObjective(tokenizer, options, with_mlm=with_mlm, kind=kind)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; choose one of: {', '.join([*OBJECTIVES, *PAIRS])}.")
    return OBJECTIVES[name](tokenizer, options)


__all__ = ["Objective", "CausalLMObjective", "MaskedLMObjective", "Masker", "MaskingConfig", "SpanCorruptionObjective", "SentencePairObjective", "OBJECTIVES", "get_objective"]
