"""Training checkpoints: the model folder plus optimizer.safetensors and trainer_state.json.

Everything needed to continue bit for bit is saved: weights, AdamW moments and step counts, the
step, and the states of every random generator (data order, dropout, masking). RNG states are raw
bytes, stored base64 in the JSON. Each file records the step it belongs to, so a mix of files from
two checkpoints is detected instead of silently resumed, and trainer_state.json (written last)
records the sha256 of every other file, so a truncated or damaged one is named, not loaded. The
K - 1 checkpoints before the latest are kept in checkpoints/ (history.py): `resume_training_checkpoint`
falls back on the newest good one when the latest is bad.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .history import earlier_checkpoints, keep_latest, promote, prune
from .native import WEIGHTS, load_weights, write_model_files
from .transaction import atomic_update
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


def file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _digests(folder: str) -> dict[str, str]:
    """sha256 of every file under `folder`, by path relative to it."""
    return {os.path.relpath(os.path.join(root, name), folder): file_sha256(os.path.join(root, name))
            for root, _, names in os.walk(folder) for name in sorted(names)}


def checkpoint_step(out: str) -> Optional[int]:
    """The step of the checkpoint in `out`, or None when it has no readable one."""
    try:
        with open(os.path.join(out, TRAINER_STATE)) as handle:
            return int(json.load(handle)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_training_checkpoint(out: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                             keep: int = 1) -> None:
    """Write model, optimizer and trainer state into `out` as one atomic update, keeping the
    checkpoint it replaces among the `keep - 1` earlier ones. A failed write (disk full, no
    permission) is one sentence, and the previous checkpoint stays as it was."""
    step, before = int(state["step"]), checkpoint_step(out)
    intact = (f"the previous checkpoint (step {before}) is intact and --resume continues from it" if before is not None
              else "no earlier checkpoint was there to lose")
    with atomic_update(out, f"the checkpoint of step {step}", intact, step) as staging:
        metadata = {"step": str(step)}
        for name, part in checkpoint_parts(model).items():
            folder = os.path.join(staging, name)
            os.makedirs(folder, exist_ok=True)
            write_model_files(part, folder, metadata=metadata, weights=resumable_weights(part))
        save_file(optimizer_tensors(optimizer), os.path.join(staging, OPTIMIZER), metadata=metadata)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
        files = _digests(staging)
        with open(os.path.join(staging, TRAINER_STATE), "w") as handle:
            json.dump({**state, "optimizer_param_groups": groups, "files": files}, handle, indent=2)
        if keep > 1 and before != step:
            keep_latest(out, sorted(os.listdir(staging)), before)
    prune(out, keep, step)


def has_checkpoint(out: str) -> bool:
    return os.path.isfile(os.path.join(out, TRAINER_STATE)) or bool(earlier_checkpoints(out))


def _file_step(path: str) -> str:
    try:
        with safe_open(path, framework="pt") as handle:
            return (handle.metadata() or {}).get("step", "?")
    except (SafetensorError, OSError):
        raise CheckpointError(f"'{path}' is corrupt or truncated; the checkpoint cannot be resumed.") from None


def _check_digests(out: str, state: dict[str, Any]) -> None:
    """Every file trainer_state.json lists is there with the sha256 it had when saved (older
    checkpoints list none)."""
    for name, digest in state.get("files", {}).items():
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint '{out}' is incomplete: '{path}' is missing.")
        if file_sha256(path) != digest:
            raise CheckpointError(f"'{path}' is corrupt or truncated (its sha256 is not the one saved with it).")


def _read_optimizer(path: str) -> dict[int, dict[str, torch.Tensor]]:
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError):
        raise CheckpointError(f"'{path}' is corrupt or truncated.") from None
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    return per_param


def load_training_checkpoint(out: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place from `out`; return the trainer state. Every file is
    read and checked before the model or the optimizer is touched."""
    try:
        with open(os.path.join(out, TRAINER_STATE)) as handle:
            state = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"'{out}/{TRAINER_STATE}' is missing or corrupt; the run cannot be resumed.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{out}/{TRAINER_STATE}' is corrupt (not a JSON object); the run cannot be resumed.")
    _check_digests(out, state)
    opt_path = os.path.join(out, OPTIMIZER)
    if not os.path.isfile(opt_path):
        raise CheckpointError(f"checkpoint '{out}' is incomplete: {OPTIMIZER} is missing.")
    parts = {os.path.join(out, name): part for name, part in checkpoint_parts(model).items()}
    steps = {_file_step(os.path.join(folder, WEIGHTS)) for folder in parts} | {_file_step(opt_path), str(state.get("step"))}
    if len(steps) != 1:
        raise CheckpointError(f"checkpoint '{out}' mixes files from different steps ({sorted(steps)}); it cannot be resumed.")
    saved_weights = {folder: load_weights(folder) for folder in parts}
    per_param = _read_optimizer(opt_path)

    for folder, part in parts.items():
        weights = saved_weights[folder]
        if getattr(part, FROZEN_FROM_BASE, False) and set(weights) == set(resumable_weights(part)):
            weights = {**model_state(part), **weights}  # the frozen ones are the base's already
        load_state_into(part, weights, folder)
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


def resume_training_checkpoint(out: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], str]:
    """`load_training_checkpoint` of the latest checkpoint in `out`, or, when that one is bad, of the
    newest good one kept before it, which becomes the latest again. Returns the trainer state and,
    after a fallback, a sentence that names the bad file and the checkpoint resumed instead."""
    try:
        return load_training_checkpoint(out, model, optimizer), ""
    except CheckpointError as latest:
        bad = str(latest)
    for step, folder in earlier_checkpoints(out):
        try:
            state = load_training_checkpoint(folder, model, optimizer)
        except CheckpointError:
            continue
        promote(out, folder, step)
        return state, f"{bad} Continuing from the previous checkpoint instead, the one of step {step}."
    kept = "no earlier checkpoint is kept (train.keep_checkpoints)" if not earlier_checkpoints(out) else \
        "no earlier checkpoint kept in checkpoints/ is good either"
    raise CheckpointError(f"{bad.rstrip('.')}, and {kept}; restore the file or start again with --overwrite.")
