"""The objectives by name, and weighted mixtures of them: `get_objective("mlm+simcse:0.1")`."""
from __future__ import annotations

from typing import Any, Optional

from ..config_fields import did_you_mean
from ..errors import ConfigError
from ..tokenize import Tokenizer
from .base import Objective
from .clm import CausalLMObjective
from .mixture import Mixture
from .mlm import MaskedLMObjective
from .pairs import SentencePairObjective
from .plm import PermutationLMObjective
from .rtd import ReplacedTokenObjective
from .simcse import ContrastiveObjective
from .span import SpanCorruptionObjective

# name -> (class, the run-config section that holds its options)
OBJECTIVES: dict[str, tuple[type[Objective], Optional[str]]] = {
    "clm": (CausalLMObjective, None), "mlm": (MaskedLMObjective, "mlm"), "span": (SpanCorruptionObjective, None),
    "rtd": (ReplacedTokenObjective, "rtd"), "simcse": (ContrastiveObjective, "simcse"),
    "plm": (PermutationLMObjective, "plm"),
}
# Sentence-pair objectives, alone or with masking of the same inputs: name -> (kind, with_mlm)
PAIRS = {"nsp": ("nsp", False), "sop": ("sop", False), "mlm+nsp": ("nsp", True), "mlm+sop": ("sop", True)}


def _section(options: Any, name: Optional[str]) -> Any:
    """The options of one objective: `options` is a run config (with mlm, rtd, simcse, plm sections),
    or, for a single objective, its own options object."""
    if options is None or name is None:
        return None
    return getattr(options, name) if hasattr(options, name) else options


def _single(name: str, tokenizer: Optional[Tokenizer], options: Any) -> Objective:
    if name in PAIRS:
        kind, with_mlm = PAIRS[name]
        return SentencePairObjective(tokenizer, _section(options, "mlm"), with_mlm=with_mlm, kind=kind)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'{did_you_mean(name, [*OBJECTIVES, *PAIRS])}; choose one of: {', '.join([*OBJECTIVES, *PAIRS])}, "
                          f"or a mixture such as mlm+simcse:0.1.")
    cls, section = OBJECTIVES[name]
    return cls(tokenizer, _section(options, section))


def get_objective(name: str, tokenizer: Optional[Tokenizer] = None, options: Optional[Any] = None) -> Objective:
    """The objective called `name` with its options (the run config, or one objective's options).
    `a+b:0.5` is a weighted mixture: each component's loss times its weight (default 1)."""
    name = name.replace(" ", "")
    if name in PAIRS or ("+" not in name and ":" not in name):
        return _single(name, tokenizer, options)
    components = []
    for part in name.split("+"):
        component, _, weight = part.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"the weight in '{part}' is not a number; write mixtures as mlm+simcse:0.1.") from None
        components.append((_single(component, tokenizer, options), value))
    return Mixture(components)
