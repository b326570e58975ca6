"""The output folder of a run: refuse to clobber another run, save the resolved config, append
metrics as JSON lines (and cut them back to the checkpoint on resume)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import yaml

from ..errors import OutputExistsError
from ..io import CONFIG, PENDING, TOKENIZER, WEIGHTS, read_config, recover
from .state import OPTIMIZER, TRAINER_STATE, has_checkpoint

RUN_CONFIG, METRICS = "run.yaml", "metrics.jsonl"
RUN_FILES = (RUN_CONFIG, METRICS, CONFIG, WEIGHTS, TOKENIZER, OPTIMIZER, TRAINER_STATE, PENDING)


def folder_to_continue(out: str, resume: bool, overwrite: bool, kind: str = "stratalm run") -> bool:
    """False when `out` is free (absent, empty, or to be overwritten); True when it holds a run to
    resume (its run.yaml is there); otherwise an error that says what to pass."""
    if not os.path.exists(out) or not os.listdir(out):
        return False
    if not os.path.isdir(out):
        raise OutputExistsError(f"'{out}' is a file, not a folder; choose another --out.")
    if overwrite:
        return False
    if not resume:
        raise OutputExistsError(
            f"'{out}' already holds files of another run; pass --resume to continue it, --overwrite to replace it, or choose another --out."
        )
    if not os.path.isfile(os.path.join(out, RUN_CONFIG)):
        raise OutputExistsError(f"'{out}' is not a {kind} folder (no {RUN_CONFIG}); choose another --out.")
    return True


def check_out_folder(out: str, resume: bool, overwrite: bool, model_config: dict[str, Any]) -> bool:
    """Decide what to do with `out` before anything is written; return True to resume from it."""
    if not folder_to_continue(out, resume, overwrite):
        return False
    recover(out)
    if not has_checkpoint(out):
        return False  # killed before its first checkpoint: start again from the beginning
    saved = {k: v for k, v in read_config(out).items() if k not in ("stratalm_version", "architecture")}
    changed = sorted(k for k in model_config if saved.get(k) != model_config[k])
    if changed:
        key = changed[0]
        raise OutputExistsError(
            f"'{out}' holds a run of a different model ({key} is {saved.get(key)!r} there, {model_config[key]!r} now); "
            f"use the same model settings to resume, or --overwrite."
        )
    return True


def clear_run_files(out: str) -> None:
    """Remove the files a previous run wrote (for --overwrite), and nothing else."""
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def write_run_config(out: str, run_dict: dict[str, Any], model_config: dict[str, Any]) -> None:
    with open(os.path.join(out, RUN_CONFIG), "w") as handle:
        yaml.safe_dump({**run_dict, "resolved_model": model_config}, handle, sort_keys=False)


def _step_of(line: str):
    """The step of a metrics line, or None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each with the step it belongs to."""

    def __init__(self, out: str, enabled: bool) -> None:
        self.path = os.path.join(out, METRICS)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines written after the checkpoint we resume from; the resumed run writes them again."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as handle:
            kept = [line for line in handle if _step_of(line) is not None and _step_of(line) <= step]
        with open(self.path, "w") as handle:
            handle.writelines(kept)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
