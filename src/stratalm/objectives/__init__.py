"""Level 3: pretraining objectives. Each turns windows of token ids into model inputs + targets,
and the model's output into a loss and metrics."""
from __future__ import annotations

from ..errors import ConfigError
from .base import Objective
from .clm import CausalLMObjective

OBJECTIVES: dict[str, type[Objective]] = {"clm": CausalLMObjective}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'; choose one of: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[name]()


__all__ = ["Objective", "CausalLMObjective", "OBJECTIVES", "get_objective"]
