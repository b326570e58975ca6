"""Level 3: pretraining objectives. Each turns windows of token ids into model inputs + targets,
and the model's output into a loss and metrics. Names load on first use (settings.py has no torch)."""
from __future__ import annotations

from ..lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "Objective": ".base", "CausalLMObjective": ".clm", "MaskedLMObjective": ".mlm", "Masker": ".mlm",
    "MaskingConfig": ".settings", "SpanCorruptionObjective": ".span", "SentencePairObjective": ".pairs",
    "ReplacedTokenObjective": ".rtd", "ReplacedTokenConfig": ".settings", "ContrastiveObjective": ".simcse",
    "ContrastiveConfig": ".settings", "PermutationLMObjective": ".plm", "PermutationConfig": ".settings",
    "Mixture": ".mixture", "OBJECTIVES": ".registry", "get_objective": ".registry",
})

__all__ = ["Objective", "CausalLMObjective", "MaskedLMObjective", "Masker", "MaskingConfig", "SpanCorruptionObjective",
           "SentencePairObjective", "ReplacedTokenObjective", "ReplacedTokenConfig", "ContrastiveObjective",
           "ContrastiveConfig", "PermutationLMObjective", "PermutationConfig", "Mixture", "OBJECTIVES", "get_objective"]
