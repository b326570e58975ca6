"""Families are data: each is a set of ModelConfig values plus a weight map to and from Hugging Face."""
from __future__ import annotations

from ..errors import CheckpointError
from ..model_config import ModelConfig
from .albert import ALBERT
from .bert import BERT
from .electra import ELECTRA
from .gpt2 import GPT2
from .llama import LLAMA
from .presets import PRESETS, preset, preset_names
from .roberta import ROBERTA
from .spec import Family, Rule
from .t5 import T5
from .xlnet import XLNET

FAMILIES: dict[str, Family] = {f.name: f for f in (GPT2, LLAMA, BERT, ROBERTA, ELECTRA, ALBERT, T5, XLNET)}
_BY_HF_TYPE: dict[str, Family] = {f.hf_model_type: f for f in FAMILIES.values()}


def hf_family(model_type: object, source: str) -> Family:
    """The family of an HF config's `model_type`; the error lists the supported ones."""
    if model_type not in _BY_HF_TYPE:
        raise CheckpointError(
            f"'{source}' has model_type {model_type!r}, which stratalm does not support; supported: {', '.join(_BY_HF_TYPE)}."
        )
    return _BY_HF_TYPE[model_type]


def hf_family_of(config: ModelConfig) -> Family:
    if config.family not in FAMILIES:
        raise CheckpointError(f"family '{config.family}' has no Hugging Face format; supported: {', '.join(FAMILIES)}.")
    return FAMILIES[config.family]


__all__ = ["FAMILIES", "Family", "Rule", "PRESETS", "preset", "preset_names", "hf_family", "hf_family_of"]
