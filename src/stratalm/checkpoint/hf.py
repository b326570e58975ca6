"""Hugging Face `transformers` folders: read config.json + weights into a stratalm model, and write
a stratalm model as a folder that `transformers` loads into the matching class. Each family's
data (families/) says how names and config keys translate; this module only moves tensors."""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..families import hf_family, hf_family_of
from ..model_config import ModelConfig
from ..models import build_model
from ..tokenize import Tokenizer
from ..tokenize.convert import VOCABULARY_FILES
from .chat_template import drop_stale_templates
from .hf_tokenizer import GENERATION_CONFIG, generation_config, token_ids, write_json, write_tokenizer_files
from .native import CONFIG, TOKENIZER, WEIGHTS, check_tokenizer
from .transaction import atomic_update
from .weights import load_state_into, model_state, release_weights, unique_weights


def read_hf_weights(path: str) -> dict[str, torch.Tensor]:
    """model.safetensors, a sharded model.safetensors.index.json, or (never unpickled freely)
    pytorch_model.bin through torch.load(weights_only=True)."""
    single, index = os.path.join(path, WEIGHTS), os.path.join(path, WEIGHTS + ".index.json")
    try:
        if os.path.isfile(single):
            return load_file(single)
        if os.path.isfile(index):
            with open(index) as handle:
                files = sorted(set(json.load(handle)["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for name in files:
                state.update(load_file(os.path.join(path, name)))
            return state
    except Exception as exc:  # safetensors raises its own exception types
        raise CheckpointError(f"the weights in '{path}' are corrupt or truncated ({str(exc)[:100]}).") from None
    pickle = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(pickle):
        try:
            with warnings.catch_warnings():  # torch warns about a bare pickle's protocol before refusing it
                warnings.simplefilter("ignore")
                return torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(
                f"'{pickle}' is a pickle that does not load with weights_only=True; stratalm refuses arbitrary pickles."
            ) from None
    raise CheckpointError(f"checkpoint '{path}' is incomplete: no {WEIGHTS} (or pytorch_model.bin) found.")


def config_from_hf(hf_config: dict[str, Any], source: str, weight_names: set[str] = frozenset()) -> ModelConfig:
    family = hf_family(hf_config.get("model_type"), source)
    try:
        return ModelConfig.from_dict(family.config_from_hf(hf_config, set(weight_names)))
    except KeyError as exc:
        raise CheckpointError(f"'{source}/{CONFIG}' lacks the key {exc} that a {family.name} config needs.") from None


def hf_weight_names(path: str) -> Optional[set[str]]:
    """The weight names of a safetensors checkpoint, read without loading the weights (None for
    a pickle, whose names come only with its tensors)."""
    single, index = os.path.join(path, WEIGHTS), os.path.join(path, WEIGHTS + ".index.json")
    try:
        if os.path.isfile(single):
            with safe_open(single, framework="pt") as handle:
                return set(handle.keys())
        if os.path.isfile(index):
            with open(index) as handle:
                return set(json.load(handle)["weight_map"])
    except Exception:  # a corrupt file: read_hf_weights says so
        return None
    return None


def load_hf(path: str, hf_config: dict[str, Any]) -> torch.nn.Module:
    family = hf_family(hf_config.get("model_type"), path)
    names = hf_weight_names(path)
    weights = read_hf_weights(path) if names is None else None
    config = config_from_hf(hf_config, path, names if names is not None else set(weights))
    model = build_model(config)
    expected = set(unique_weights(model))
    release_weights(model)  # built before the weights are read, so the two are never held together
    if weights is None:
        weights = read_hf_weights(path)
    converted = family.from_hf_state(weights, config, path, expected)
    del weights  # each original now lives only in its converted view, and goes as the model takes it
    load_state_into(model, converted, path, adopt=True)
    # tokenizer.json, else the family's vocab.txt or spiece.model, converted (tokenize/convert.py)
    if any(os.path.isfile(os.path.join(path, name)) for name in (TOKENIZER, *VOCABULARY_FILES)):
        model.tokenizer = Tokenizer.load(path)
        check_tokenizer(model.tokenizer, config, path)
    return model


def refuse_unrepresentable(model: torch.nn.Module) -> None:
    """A CheckpointError naming every setting the family's transformers class cannot represent
    (it would load with weights missing, or compute something else), before anything is written."""
    family = hf_family_of(model.config)
    problems = family.unrepresentable(model.config)
    if problems:
        raise CheckpointError(
            f"{family.architecture(model.config)} in transformers cannot represent {'; '.join(problems)}, "
            "so this model has no Hugging Face export; keep it in the stratalm format."
        )


def save_hf(model: torch.nn.Module, path: str) -> None:
    """Write `model` as a transformers folder: config.json, model.safetensors and, with a tokenizer,
    the files AutoTokenizer reads (hf_tokenizer.py); generation_config.json for generators."""
    refuse_unrepresentable(model)
    family, config = hf_family_of(model.config), model.config
    tokenizer = getattr(model, "tokenizer", None)
    hf_config = {"model_type": family.hf_model_type, "architectures": [family.architecture(config)],
                 **family.config_to_hf(config), **token_ids(tokenizer, config), "torch_dtype": "float32"}
    with atomic_update(path, "the Hugging Face model") as staging:  # a full disk is one sentence, the folder intact
        state = family.to_hf_state(model_state(model), config)
        save_file({k: v.cpu() for k, v in state.items()}, os.path.join(staging, WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            write_tokenizer_files(tokenizer, config, family.special_tokens, staging, getattr(model, "chat_template", None))
        if config.stack != "encoder":
            write_json(os.path.join(staging, GENERATION_CONFIG), generation_config(hf_config))
        write_json(os.path.join(staging, CONFIG), hf_config)
    drop_stale_templates(path, wrote_config=tokenizer is not None)
