"""Checkpoint folders on disk: the atomic folder transaction (transaction.py), weight helpers
(weights.py), the native format (native.py), the Hugging Face format (hf.py) and training state
(training.py). `load` and `save` (also `stratalm.load` / `stratalm.save`) dispatch between formats.

A folder written by a LoRA fine-tuning run holds adapter.safetensors and either refers to its base
(base_reference.py: read from there, checked by its sha256) or holds a copy of the base's weights;
`load` applies the adapter, so every loader sees the fine-tuned model, never the bare base.
"""
from __future__ import annotations

import os

import torch

from ..errors import CheckpointError
from ..models.lora import has_adapter, load_adapter, merge_lora
from .base_reference import base_reference, load_on_base, verified_base
from .chat_template import read_chat_template
from .native import CONFIG, TOKENIZER, WEIGHTS, load_native, read_config, save_native
from .transaction import COMMITTED, PENDING, commit_files, pending_folder, recover

ADAPTER_CHOICES = ("merge", "keep")


def is_native(path: str) -> bool:
    """Whether `path` holds a stratalm folder (its config.json carries stratalm_version), not a
    Hugging Face one."""
    return "stratalm_version" in read_config(path)


def load(path: str, device: str = "cpu", adapter: str = "merge") -> torch.nn.Module:
    """Load a stratalm checkpoint folder, or a folder written by `transformers`' save_pretrained;
    the model carries its tokenizer as `model.tokenizer` (or None) and the folder's chat template
    as `model.chat_template` (or None), which a Hugging Face export writes out again. A LoRA adapter saved in the
    folder is applied: merged into the weights (`adapter="merge"`, a plain model) or kept as
    separate low-rank layers (`adapter="keep"`)."""
    if adapter not in ADAPTER_CHOICES:
        raise CheckpointError(f"adapter must be one of {', '.join(ADAPTER_CHOICES)}; got '{adapter}'.")
    if os.path.isdir(path):
        recover(path)
    raw = read_config(path)
    reference = base_reference(path) if has_adapter(path) else None
    if reference is not None:  # a LoRA folder without the base's weights: read them from the base itself
        model = load_on_base(path, load(verified_base(path, reference)))
    elif "stratalm_version" in raw:
        model = load_native(path)
    else:
        from .hf import load_hf  # transformers folders are the rarer case; keep its imports off the common path

        model = load_hf(path, raw)
    if has_adapter(path):
        load_adapter(model, path)
        if adapter == "merge":
            merge_lora(model)
    model.chat_template = read_chat_template(path) if os.path.isdir(path) else None
    return model.to(device).eval()


def save(model: torch.nn.Module, path: str, format: str = "stratalm") -> None:
    """Write `model` (and its tokenizer) as a checkpoint folder at `path`: format "stratalm", or
    "hf" for a folder that Hugging Face `transformers` loads into the family's class. A model with
    LoRA layers is saved with the adapters merged into the weights."""
    from ..models.lora import has_lora_layers, merged_copy

    if format not in ("stratalm", "hf"):
        raise CheckpointError(f"unknown checkpoint format '{format}'; use 'stratalm' or 'hf'.")
    if has_lora_layers(model):
        model = merged_copy(model)
    if format == "hf":
        from .hf import save_hf

        return save_hf(model, path)
    save_native(model, path)


__all__ = ["load", "save", "is_native", "read_config", "recover", "pending_folder", "commit_files", "PENDING",
           "COMMITTED", "CONFIG", "WEIGHTS", "TOKENIZER"]
