"""Model folders on disk: model.safetensors + config.json + tokenizer.json, written atomically.

`save` and `load` are the public entry points (`stratalm.save`, `stratalm.load`). Updates to a folder
go through `commit_files`: everything is written into `<folder>/.pending/`, a COMMITTED marker is
written, and only then are the files moved into place. A crash before the marker leaves the old
files untouched; a crash after it is finished by `recover` on the next start. No pickle anywhere.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import CheckpointError
from .model_config import ModelConfig
from .models import build_model
from .tokenize import Tokenizer

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
PENDING, COMMITTED = ".pending", "COMMITTED"


# -- atomic updates of a folder ---------------------------------------------------------------
def pending_folder(dest: str) -> str:
    """A clean staging folder inside `dest` (same file system, so the final moves are renames)."""
    os.makedirs(dest, exist_ok=True)
    recover(dest)
    staging = os.path.join(dest, PENDING)
    os.makedirs(staging)
    return staging


def commit_files(dest: str) -> None:
    """Move every file of `<dest>/.pending` into `dest`, as one all-or-nothing update."""
    staging = os.path.join(dest, PENDING)
    for folder, _, names in os.walk(staging):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
    marker = os.path.join(staging, COMMITTED)
    with open(marker, "w") as handle:
        handle.flush()
        os.fsync(handle.fileno())
    _finish(dest)


def _finish(dest: str) -> None:
    staging = os.path.join(dest, PENDING)
    for name in sorted(os.listdir(staging)):
        if name == COMMITTED:
            continue
        source, target = os.path.join(staging, name), os.path.join(dest, name)
        if os.path.isdir(source) and os.path.isdir(target):  # a sub-folder (ELECTRA's generator/) is replaced whole
            shutil.rmtree(target)
        os.replace(source, target)
    os.remove(os.path.join(staging, COMMITTED))
    os.rmdir(staging)


def recover(dest: str) -> None:
    """Finish an update that was committed before a crash, or drop one that was not."""
    staging = os.path.join(dest, PENDING)
    if not os.path.isdir(staging):
        return
    if os.path.exists(os.path.join(staging, COMMITTED)):
        _finish(dest)
    else:
        shutil.rmtree(staging)


# -- model files ------------------------------------------------------------------------------
def unique_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers, each once, under the name model_state uses."""
    out, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to save, each tensor once: a tied head is the embedding, stored under the
    embedding's name (the first name a shared tensor has in the module tree)."""
    return {name: tensor.detach().contiguous() for name, tensor in unique_weights(model).items()}


def write_model_files(model: torch.nn.Module, folder: str, metadata: Optional[dict[str, str]] = None) -> None:
    save_file({k: v.cpu() for k, v in model_state(model).items()}, os.path.join(folder, WEIGHTS),
              metadata={"format": "pt", **(metadata or {})})
    config = {"stratalm_version": __version__, "architecture": type(model).__name__, **model.config.to_dict()}
    with open(os.path.join(folder, CONFIG), "w") as handle:
        json.dump(config, handle, indent=2)
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save(os.path.join(folder, TOKENIZER))


def save(model: torch.nn.Module, path: str, format: str = "stratalm") -> None:
    """Write `model` (and its tokenizer) as a checkpoint folder at `path`: format "stratalm", or
    "hf" for a folder that Hugging Face `transformers` loads into the family's class."""
    if format == "hf":
        from .hf import save_hf  # hf builds on this module

        return save_hf(model, path)
    if format != "stratalm":
        raise CheckpointError(f"unknown checkpoint format '{format}'; use 'stratalm' or 'hf'.")
    staging = pending_folder(path)
    write_model_files(model, staging)
    commit_files(path)


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
        raise CheckpointError(f"'{file}' is corrupt or truncated ({str(exc)[:100]}).") from None


def release_weights(model: torch.nn.Module) -> None:
    """Swap every weight for a stand-in of the same shape and dtype that holds no memory: a
    checkpoint is about to replace them all, and keeping the random ones meanwhile would hold the
    model twice while it loads."""
    with torch.no_grad():
        for tensor in unique_weights(model).values():
            tensor.data = torch.zeros((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, adopt: bool = False) -> None:
    """Copy `state` into `model`, naming any weight that is missing, unexpected or mis-shaped.
    With `adopt`, the model takes the tensors of `state` themselves (emptying the dict) instead of
    copying them, so loading never holds two copies (see release_weights)."""
    expected = unique_weights(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"'{source}' does not match its config: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}."
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"weight '{name}' in '{source}' has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}."
            )
    if not adopt:
        model.load_state_dict(state, strict=False)
        return
    with torch.no_grad():
        for name in list(state):
            target = expected[name]
            target.data = state.pop(name).to(device=target.device, dtype=target.dtype).contiguous()


def check_tokenizer(tokenizer: Tokenizer, config: ModelConfig, source: str) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer of '{source}' has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{config.vocab_size}; use the tokenizer the model was trained with."
        )


def load(path: str, device: str = "cpu") -> torch.nn.Module:
    """Load a stratalm checkpoint folder, or a folder written by `transformers`' save_pretrained;
    the model carries its tokenizer as `model.tokenizer` (or None)."""
    if os.path.isdir(path):
        recover(path)
    raw = read_config(path)
    if "stratalm_version" not in raw:
        from .hf import load_hf  # hf builds on this module

        return load_hf(path, raw).to(device).eval()
    config = load_config(path)
    model = build_model(config)
    release_weights(model)
    load_state_into(model, load_weights(path), path, adopt=True)
    tokenizer_file = os.path.join(path, TOKENIZER)
    if os.path.isfile(tokenizer_file):
        model.tokenizer = Tokenizer.load(tokenizer_file)
        check_tokenizer(model.tokenizer, config, path)
    return model.to(device).eval()
