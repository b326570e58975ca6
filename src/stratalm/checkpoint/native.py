"""The native checkpoint format: a folder with model.safetensors (each tensor once), config.json
(the ModelConfig plus stratalm_version and the architecture) and tokenizer.json; a model with a
chat template (`model.chat_template`: a chat fine-tune, or a Hugging Face folder converted) also has
tokenizer_config.json holding it (chat_template.py). No pickle anywhere.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..model_config import ModelConfig
from ..models import build_model
from ..tokenize import Tokenizer
from ..version import __version__
from .transaction import atomic_update
from .weights import load_state_into, model_state, release_weights

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


def write_model_files(model: torch.nn.Module, folder: str, metadata: Optional[dict[str, str]] = None,
                      weights: Optional[dict[str, torch.Tensor]] = None) -> None:
    """model.safetensors (`weights`, or every weight of `model`), config.json and tokenizer.json."""
    weights = model_state(model) if weights is None else weights
    save_file({k: v.cpu() for k, v in weights.items()}, os.path.join(folder, WEIGHTS),
              metadata={"format": "pt", **(metadata or {})})
    write_model_description(model, folder)


def write_model_description(model: torch.nn.Module, folder: str) -> None:
    """config.json and tokenizer.json: all of a folder but its weights."""
    config = {"stratalm_version": __version__, "architecture": type(model).__name__, **model.config.to_dict()}
    with open(os.path.join(folder, CONFIG), "w") as handle:
        json.dump(config, handle, indent=2)
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save(os.path.join(folder, TOKENIZER))


def save_native(model: torch.nn.Module, path: str) -> None:
    """Write `model` (its tokenizer, its chat template) as a stratalm checkpoint folder, atomically."""
    from .chat_template import drop_stale_templates, write_chat_template

    template = getattr(model, "chat_template", None)
    with atomic_update(path, "the model") as staging:
        write_model_files(model, staging)
        if template is not None:
            write_chat_template(staging, template, getattr(model, "tokenizer", None), model.config)
    drop_stale_templates(path, wrote_config=template is not None)


def read_config(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise CheckpointError(f"'{path}' does not exist; give a checkpoint folder.")
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise CheckpointError(f"'{path}' is not a checkpoint folder: {CONFIG} is missing.")
    try:
        with open(file) as handle:
            config = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"'{file}' is corrupt (not valid JSON).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"'{file}' is corrupt (not a JSON object).")
    return config


def load_config(path: str) -> ModelConfig:
    config = read_config(path)
    if "stratalm_version" not in config:
        raise CheckpointError(f"'{path}' is not a stratalm checkpoint (its {CONFIG} has no stratalm_version).")
    fields = {k: v for k, v in config.items() if k not in ("stratalm_version", "architecture")}
    return ModelConfig.from_dict(fields)


def load_weights(path: str) -> dict[str, torch.Tensor]:
    file = os.path.join(path, WEIGHTS)
    if not os.path.isfile(file):
        if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            raise CheckpointError(f"'{path}' holds only a pickle checkpoint (pytorch_model.bin); stratalm reads model.safetensors.")
        raise CheckpointError(f"checkpoint '{path}' is incomplete: {WEIGHTS} is missing.")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as exc:
        with open(file, "rb") as handle:
            head = handle.read(4)
        if head[:1] == b"\x80" or head == b"PK\x03\x04":  # a pickle (protocol 2+), or torch.save's zip of pickles
            raise CheckpointError(f"'{file}' is a pickle, not safetensors, and stratalm never unpickles; save the weights "
                                  f"with safetensors (safetensors.torch.save_file).") from None
        raise CheckpointError(f"'{file}' is corrupt or truncated ({str(exc)[:100]}).") from None


def check_tokenizer(tokenizer: Tokenizer, config: ModelConfig, source: str) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer of '{source}' has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{config.vocab_size}; use the tokenizer the model was trained with."
        )


def load_native(path: str) -> torch.nn.Module:
    """A stratalm checkpoint folder as a model (its tokenizer as `model.tokenizer`, or None)."""
    config = load_config(path)
    model = build_model(config)
    release_weights(model)
    load_state_into(model, load_weights(path), path, adopt=True)
    attach_tokenizer(model, path)
    return model


def attach_tokenizer(model: torch.nn.Module, path: str) -> None:
    """The folder's tokenizer.json as `model.tokenizer` (None when the folder has none)."""
    tokenizer_file = os.path.join(path, TOKENIZER)
    if os.path.isfile(tokenizer_file):
        model.tokenizer = Tokenizer.load(tokenizer_file)
        check_tokenizer(model.tokenizer, model.config, path)
