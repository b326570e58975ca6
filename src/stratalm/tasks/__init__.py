"""Level 4: fine-tuning a pretrained model on downstream tasks.

`finetune` trains a task head (and the model under it, or only parts of it: see partial.py and
models/lora.py) and writes a folder that `evaluate` and `predict` use on their own. A task is a
`Task` subclass (base.py); the registry below names each one by "module:Class", imported when used.
"""
from __future__ import annotations

import importlib

from ..config_fields import did_you_mean
from ..errors import ConfigError
from ..lazy import lazy_attributes

# A new task: one line here. Modules are imported on first use.
TASKS: dict[str, str] = {
    "classification": "stratalm.tasks.classification:ClassificationTask",
    "tagging": "stratalm.tasks.tagging:TaggingTask",
    "qa": "stratalm.tasks.qa:QATask",
    "seq2seq": "stratalm.tasks.seq2seq:Seq2SeqTask",
    "retrieval": "stratalm.tasks.retrieval:RetrievalTask",
    "chat": "stratalm.tasks.chat:ChatTask",
}


def task_names() -> list[str]:
    return list(TASKS)


def task_class(name: str):
    """The Task subclass registered as `name`; the error lists the available tasks."""
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'{did_you_mean(name, TASKS)}; available tasks: {', '.join(TASKS)}.")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def all_options():
    """Every task's options (the first task to declare a name defines its flag)."""
    from .options import TASK_OPTIONS

    out = {}
    for name in TASKS:
        for key, spec in TASK_OPTIONS[name].items():
            out.setdefault(key, spec)
    return out


# evaluate/predict live in modules that import torch-heavy pieces; load them on use. (`finetune` is
# a submodule: take the function from `stratalm.tasks.finetune`.)
__getattr__ = lazy_attributes(__name__, {
    "Task": ".base", "Option": ".options", "FinetuneConfig": ".finetune_config",
    "load_finetuned": ".folder", "evaluate": ".folder", "predict": ".folder",
})

__all__ = ["Task", "Option", "TASKS", "task_names", "task_class", "all_options", "FinetuneConfig",
           "load_finetuned", "evaluate", "predict"]
