"""A LoRA folder that refers to its base instead of copying it.

A LoRA fine-tune changes a few hundred kilobytes (the adapters and the new task head) of a model of
tens or hundreds of megabytes, so its folder keeps only those, in adapter.safetensors, and names the
base in adapter_config.json: its absolute path and the sha256 of its weight files (PEFT's
adapter_config.json names its base the same way, `base_model_name_or_path`). Loading reads the
base through the reference and refuses a base that moved or changed, since the adapters only mean
something on top of the exact weights they were trained on.
"""
from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import CheckpointError
from ..models import build_model
from ..models.lora import ADAPTER_WEIGHTS, read_adapter_config, read_adapter_tensors
from .native import WEIGHTS, attach_tokenizer, load_config
from .weights import load_state_into, model_state, release_weights

BASE_PATH, BASE_SHA256 = "base_model_name_or_path", "base_model_sha256"
# The files that hold a folder's weights, whatever wrote it: stratalm or transformers (one file,
# shards, or a pickle) and, for a LoRA folder, its adapter (whose own base is checked when it loads).
WEIGHT_PATTERNS = (WEIGHTS, "model-*-of-*.safetensors", "pytorch_model.bin", ADAPTER_WEIGHTS)


@dataclass(frozen=True)
class BaseReference:
    path: str    # absolute, so the folder loads from any working directory
    sha256: str  # of the base's weight files, in WEIGHT_PATTERNS order

    def fields(self) -> dict[str, str]:
        """The reference as adapter_config.json keys."""
        return {BASE_PATH: self.path, BASE_SHA256: self.sha256}


def weights_digest(folder: str) -> str:
    """sha256 over the weight files of `folder` (about a second per 500 MB)."""
    digest = hashlib.sha256()
    for pattern in WEIGHT_PATTERNS:
        for file in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
            digest.update(os.path.basename(file).encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def reference_to(base: str) -> Optional[BaseReference]:
    """A reference to the base folder `base`, or None when `base` is no folder (a preset name:
    the run built its base from scratch, so only a copy can keep it)."""
    if not os.path.isdir(base):
        return None
    path = os.path.abspath(base)
    return BaseReference(path, weights_digest(path))


def base_reference(folder: str) -> Optional[BaseReference]:
    """The base that the LoRA folder `folder` refers to, or None (a folder with its own weights)."""
    values = read_adapter_config(folder)
    if BASE_PATH not in values:
        return None
    return BaseReference(str(values[BASE_PATH]), str(values.get(BASE_SHA256, "")))


def verified_base(folder: str, reference: BaseReference) -> str:
    """The base's path, once its weights are the ones the adapters were trained on."""
    fix = ("restore it there, or fine-tune again with --lora-copy-base (a self-contained folder) or --merge-lora")
    if not os.path.isdir(reference.path):
        raise CheckpointError(f"the LoRA folder '{folder}' needs its base model '{reference.path}', which is missing; {fix}.")
    if weights_digest(reference.path) != reference.sha256:
        raise CheckpointError(f"the base model '{reference.path}' of the LoRA folder '{folder}' changed since the "
                              f"adapters were trained (its weights' sha256 differs); {fix}.")
    return reference.path


def weights_from_base(base: torch.nn.Module, model: torch.nn.Module) -> set[str]:
    """Names of the frozen weights of `model` that equal the weights of `base` under the same name:
    what a reference to the base restores, so a folder need not store them."""
    source = model_state(base)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    return {name for name, tensor in model_state(model).items()
            if name in frozen and name in source and source[name].shape == tensor.shape and torch.equal(source[name], tensor)}


def load_on_base(folder: str, base: torch.nn.Module) -> torch.nn.Module:
    """The model of the LoRA folder `folder` (adapters not yet applied): its config, the base's
    weights, and the weights the folder stores itself (the task head) in place of the base's."""
    model = build_model(load_config(folder))
    release_weights(model)
    stored = {name: tensor for name, tensor in read_adapter_tensors(folder).items() if ".lora_" not in name}
    source = model_state(base)
    names = set(model_state(model))
    state = {name: source[name] for name in names if name in source and name not in stored}
    load_state_into(model, {**state, **stored}, folder, adopt=True)
    attach_tokenizer(model, folder)
    return model
