"""Training checkpoints: the model folder plus optimizer.safetensors and trainer_state.json.

Everything needed to continue bit for bit is saved: weights, AdamW moments and step counts, the
step, and the states of every random generator (data order, dropout, masking). RNG states are raw
bytes, stored base64 in the JSON. Each file records the step it belongs to, so a mix of files from
two checkpoints is detected instead of silently resumed.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .native import WEIGHTS, load_weights, write_model_files
from .transaction import commit_files, pending_folder
from .weights import load_state_into, model_state

TRAINER_STATE, OPTIMIZER = "trainer_state.json", "optimizer.safetensors"
# A model with this attribute set gets its frozen weights again from its base whenever its run
# starts (a LoRA fine-tune), so its checkpoints keep only the weights training changes.
FROZEN_FROM_BASE = "frozen_from_base"


def resumable_weights(part: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a training checkpoint keeps of `part` (see FROZEN_FROM_BASE)."""
    state = model_state(part)
    if not getattr(part, FROZEN_FROM_BASE, False):
        return state
    frozen = {name for name, param in part.named_parameters() if not param.requires_grad}
    return {name: tensor for name, tensor in state.items() if name not in frozen}


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {
        f"state.{index}.{name}": value.detach().cpu().contiguous()
        for index, entries in optimizer.state_dict()["state"].items()
        for name, value in entries.items()
    }


def checkpoint_parts(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Sub-folder -> model: the model itself at the root, or (ELECTRA pretraining) the
    discriminator at the root and the generator in generator/."""
    return model.checkpoint_parts() if hasattr(model, "checkpoint_parts") else {"": model}


def save_training_checkpoint(out: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write model, optimizer and trainer state into `out` as one atomic update."""
    staging = pending_folder(out)
    step = {"step": str(state["step"])}
    for name, part in checkpoint_parts(model).items():
        folder = os.path.join(staging, name)
        os.makedirs(folder, exist_ok=True)
        write_model_files(part, folder, metadata=step, weights=resumable_weights(part))
    save_file(optimizer_tensors(optimizer), os.path.join(staging, OPTIMIZER), metadata=step)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    with open(os.path.join(staging, TRAINER_STATE), "w") as handle:
        json.dump({**state, "optimizer_param_groups": groups}, handle, indent=2)
    commit_files(out)


def has_checkpoint(out: str) -> bool:
    return os.path.isfile(os.path.join(out, TRAINER_STATE))


def _file_step(path: str) -> str:
    try:
        with safe_open(path, framework="pt") as handle:
            return (handle.metadata() or {}).get("step", "?")
    except (SafetensorError, OSError):
        raise CheckpointError(f"'{path}' is corrupt or truncated; the checkpoint cannot be resumed.") from None


def load_training_checkpoint(out: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place from `out`; return the trainer state."""
    try:
        with open(os.path.join(out, TRAINER_STATE)) as handle:
            state = json.load(handle)
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"'{out}/{TRAINER_STATE}' is missing or corrupt; the run cannot be resumed.") from None
    opt_path = os.path.join(out, OPTIMIZER)
    if not os.path.isfile(opt_path):
        raise CheckpointError(f"checkpoint '{out}' is incomplete: {OPTIMIZER} is missing.")
    parts = {os.path.join(out, name): part for name, part in checkpoint_parts(model).items()}
    steps = {_file_step(os.path.join(folder, WEIGHTS)) for folder in parts} | {_file_step(opt_path), str(state.get("step"))}
    if len(steps) != 1:
        raise CheckpointError(f"checkpoint '{out}' mixes files from different steps ({sorted(steps)}); it cannot be resumed.")

    for folder, part in parts.items():
        weights = load_weights(folder)
        if getattr(part, FROZEN_FROM_BASE, False) and set(weights) == set(resumable_weights(part)):
            weights = {**model_state(part), **weights}  # the frozen ones are the base's already
        load_state_into(part, weights, folder)
    tensors = load_file(opt_path)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    groups = optimizer.state_dict()["param_groups"]
    saved_groups = state.get("optimizer_param_groups", [])
    if len(saved_groups) != len(groups):
        raise CheckpointError(f"the optimizer state in '{out}' does not match this model.")
    for group, saved in zip(groups, saved_groups):
        group.update(saved)
    device = next(model.parameters()).device
    try:
        optimizer.load_state_dict({
            "state": {i: {k: v.to(device) for k, v in entry.items()} for i, entry in per_param.items()},
            "param_groups": groups,
        })
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the optimizer state in '{out}' does not match this model ({exc}).") from None
    return state
