"""The fine-tuned folder: a normal checkpoint folder (config.json, model.safetensors,
tokenizer.json) plus task.json — the task's name, options and learned state (label names, ...),
the maximum length, the learning rate, the dev metric that chose the weights, parameter counts.
A LoRA run that was not merged writes adapter.safetensors + adapter_config.json instead of
model.safetensors and refers to its base folder (checkpoint/base_reference.py), unless asked for a
copy of the base (lora_copy_base). `evaluate` and `predict` need nothing else.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from torch import nn

from ..checkpoint import WEIGHTS, load
from ..checkpoint.base_reference import BaseReference
from ..checkpoint.native import write_model_description, write_model_files
from ..checkpoint.transaction import atomic_update
from ..checkpoint.weights import model_state
from ..generate.text import choose_device
from ..config_fields import at_least, require
from ..errors import CheckpointError
from ..models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, merge_lora, save_adapter, without_lora
from ..version import __version__
from . import task_class
from .base import Task

TASK_FILE = "task.json"


def save_finetuned(out: str, model: nn.Module, task: Task, info: dict[str, Any],
                   lora: Optional[LoraConfig] = None, base: Optional[BaseReference] = None,
                   from_base: frozenset[str] = frozenset()) -> None:
    """Write the model, its task and `info` into `out` as one atomic update. With `lora`, the
    adapters go to adapter.safetensors and the base weights either to model.safetensors (a folder
    that stands alone) or, given the `base` folder they came from and the names `from_base` of the
    weights it still provides, nowhere: adapter.safetensors also keeps the weights training changed
    (the task head) and adapter_config.json names the base."""
    with atomic_update(out, "the fine-tuned model") as staging:  # a full disk is one sentence, the folder intact
        if lora is None:
            write_model_files(model, staging)
            stale = [ADAPTER_WEIGHTS, ADAPTER_CONFIG]  # adapters of an earlier save no longer apply
        elif base is None:
            with without_lora(model):
                write_model_files(model, staging)
            save_adapter(model, staging, lora)
            stale = []
        else:
            write_model_description(model, staging)
            with without_lora(model):
                trained = {name: t for name, t in model_state(model).items() if name not in from_base}
            save_adapter(model, staging, lora, trained, base.fields())
            stale = [WEIGHTS]  # a copy of the base from an earlier save
        task.write_files(staging, model)
        record = {"task": task.name, "options": task.options, "state": task.state, **info,
                  "adapter": lora is not None, "stratalm_version": __version__}
        with open(os.path.join(staging, TASK_FILE), "w") as handle:
            json.dump(record, handle, indent=2)
    for name in stale:
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


def read_task_file(path: str) -> dict[str, Any]:
    file = os.path.join(path, TASK_FILE)
    if not os.path.isfile(file):
        raise CheckpointError(f"'{path}' is not a fine-tuned folder ({TASK_FILE} is missing); "
                              f"give the --out folder of `stratalm finetune`.")
    try:
        with open(file) as handle:
            record = json.load(handle)
        if not isinstance(record, dict) or not {"task", "options", "state"} <= set(record):
            raise ValueError
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise CheckpointError(f"'{file}' is corrupt; fine-tune again or restore it.") from None
    return record


def load_finetuned(path: str, device: str = "cpu", options: Optional[dict[str, Any]] = None
                   ) -> tuple[nn.Module, Task, dict[str, Any]]:
    """(model, task, task.json) of a fine-tuned folder; `options` override the stored task options
    (e.g. other column names in the file to evaluate)."""
    record = read_task_file(path)
    task = task_class(record["task"])({**record["options"], **(options or {})}, record["state"])
    model = load(path, device, adapter="keep")  # the adapter as trained; `stratalm.load` merges it
    return model.eval(), task, record


def _run(path: str, data: str, labelled: bool, batch_size: int, device: str, options: Optional[dict[str, Any]]):
    require("--batch-size", batch_size, at_least(1))  # below 1, no batch would run and every prediction be a stand-in
    model, task, record = load_finetuned(path, choose_device(device), options)
    examples = task.read(data, labelled=labelled)
    with torch.inference_mode():
        predictions = task.predict(model, examples, record.get("max_length", model.config.max_seq_len), batch_size)
    return task, examples, predictions


def evaluate(path: str, data: str, batch_size: int = 64, device: str = "auto",
             options: Optional[dict[str, Any]] = None) -> dict[str, float]:
    """The task's metrics of the fine-tuned folder `path` on a labelled data file."""
    task, examples, predictions = _run(path, data, True, batch_size, device, options)
    return task.score(examples, predictions)


def predict(path: str, data: str, batch_size: int = 64, device: str = "auto",
            options: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """One JSON-ready prediction per example of `data` (labels may be absent)."""
    task, examples, predictions = _run(path, data, False, batch_size, device, options)
    return [task.format(example, prediction) for example, prediction in zip(examples, predictions)]


def merge(src: str, dst: str) -> None:
    """Write the fine-tuned folder `src` (base weights + adapter) to `dst` with the adapter merged
    into the weights: a plain checkpoint folder that any stratalm (or, exported, HF) loader reads."""
    model, task, info = load_finetuned(src)
    save_finetuned(dst, merge_lora(model), task, {**info, "lora": info.get("lora"), "lora_merged": True})
