"""The output folder of a run, one policy for pretraining and fine-tuning: refuse to clobber
another run, resume one only when what must stay the same did, clear only the files a run writes,
save the resolved config, and append metrics as JSON lines (cut back to the checkpoint on resume;
optionally mirrored to TensorBoard)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import yaml

from ..checkpoint import COMMITTED, CONFIG, PENDING, TOKENIZER, WEIGHTS, recover
from ..checkpoint.history import HISTORY
from ..checkpoint.training import OPTIMIZER, TRAINER_STATE, has_checkpoint
from ..errors import ConfigError, OutputExistsError
from ..config_fields import check_output_folder

RUN_CONFIG, METRICS, TENSORBOARD = "run.yaml", "metrics.jsonl", "tensorboard"
# Everything any run writes into its folder (fine-tuning adds task.json, adapters and last/;
# ELECTRA adds generator/; checkpoints/ keeps the earlier checkpoints); --overwrite removes these and nothing else.
RUN_FILES = (RUN_CONFIG, METRICS, CONFIG, WEIGHTS, TOKENIZER, OPTIMIZER, TRAINER_STATE, PENDING, TENSORBOARD,
             "generator", "task.json", "adapter.safetensors", "adapter_config.json", "last", HISTORY)


def folder_to_continue(out: str, resume: bool, overwrite: bool, kind: str = "stratalm run") -> bool:
    """False when `out` is free (absent, empty, or to be overwritten); True when it holds a run to
    resume (its run.yaml is there); otherwise an error that says what to pass."""
    check_output_folder(out, kind)  # a file, or a folder of another kind (prepared data, a model): refused
    if not os.path.exists(out) or not os.listdir(out):
        return False
    if overwrite:
        return False
    if not resume:
        raise OutputExistsError(
            f"'{out}' already holds files of another run; pass --resume to continue it, --overwrite to replace it, or choose another --out."
        )
    if not os.path.isfile(os.path.join(out, RUN_CONFIG)):
        raise OutputExistsError(f"'{out}' is not a {kind} folder (no {RUN_CONFIG}); choose another --out.")
    return True


def read_run_config(out: str) -> dict[str, Any]:
    try:
        with open(os.path.join(out, RUN_CONFIG)) as handle:
            saved = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError):
        raise OutputExistsError(f"'{out}/{RUN_CONFIG}' is unreadable; pass --overwrite to start the run again.") from None
    if not isinstance(saved, dict):
        raise OutputExistsError(f"'{out}/{RUN_CONFIG}' is corrupt; pass --overwrite to start the run again.")
    return saved


def differences(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Every key (dotted, sorted) whose value differs between two nested settings: (key, saved, now)."""
    found = []
    for key in sorted(now):
        old, new = saved.get(key), now[key]
        if isinstance(new, dict) and isinstance(old, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append((prefix + key, old, new))
    return found


def refuse_changed_settings(out: str, checkpoint_dir: str, resume: bool, overwrite: bool,
                            changed: Callable[[dict[str, Any]], list[tuple[str, Any, Any]]], kind: str) -> None:
    """Before anything is built: a run resumed with settings other than its run.yaml's, where they
    may not change, is an error naming each. `changed(saved run.yaml)` lists (key, saved, now). A
    run killed before its first checkpoint starts again (claim_folder), so any settings may."""
    if folder_to_continue(out, resume, overwrite, kind) and will_hold_checkpoint(checkpoint_dir):
        refuse_differences(out, changed(read_run_config(out)))


def will_hold_checkpoint(checkpoint_dir: str) -> bool:
    """Whether `checkpoint_dir` holds a checkpoint, or will once recover() finishes a committed save
    (nothing is changed here: the folder is only looked at)."""
    return has_checkpoint(checkpoint_dir) or os.path.isfile(os.path.join(checkpoint_dir, PENDING, COMMITTED))


def refuse_differences(out: str, found: list[tuple[str, Any, Any]]) -> None:
    if found:
        listed = ", ".join(f"{key} = {new!r} (saved: {old!r})" for key, old, new in found)
        raise OutputExistsError(f"'{out}' holds a run with other settings than given here: {listed}; leave them out or "
                                f"give the saved values ({RUN_CONFIG}) to continue it, or pass --overwrite to start again.")


def claim_folder(out: str, checkpoint_dir: str, resume: bool, overwrite: bool, identity: dict[str, Any],
                 kind: str) -> bool:
    """Decide what to do with `out` before anything is written; True = resume from `checkpoint_dir`.
    `identity` holds what a resumed run must share with the saved one (its run.yaml): a different
    value is an error that names every such key."""
    if not folder_to_continue(out, resume, overwrite, kind):
        return False
    recover(out)
    if os.path.isdir(checkpoint_dir):
        recover(checkpoint_dir)
    if not has_checkpoint(checkpoint_dir):
        return False  # killed before its first checkpoint: start again from the beginning
    saved = read_run_config(out)
    found = differences(saved, identity)
    missing = [key for key, old, _ in found if old is None and key.split(".")[0] not in saved]
    if missing:
        raise OutputExistsError(f"'{out}' was written by an earlier stratalm whose {RUN_CONFIG} has no '{missing[0]}'; "
                                f"this run cannot be resumed, so restart it with --overwrite.")
    refuse_differences(out, found)
    return True


def clear_run_files(out: str) -> None:
    """Remove the files a previous run wrote (for --overwrite), and nothing else."""
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def write_run_config(out: str, settings: dict[str, Any]) -> None:
    with open(os.path.join(out, RUN_CONFIG), "w") as handle:
        yaml.safe_dump(settings, handle, sort_keys=False)


def _step_of(line: str):
    """The step of a metrics line, or None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _is_resume(line: str) -> bool:
    return json.loads(line).get("event") == "resume"


class MetricsLog:
    """metrics.jsonl: one JSON object per line, each with the step it belongs to; with
    `tensorboard`, every number also goes to a SummaryWriter in OUT/tensorboard."""

    def __init__(self, out: str, enabled: bool, tensorboard: bool = False) -> None:
        self.path = os.path.join(out, METRICS)
        self.enabled = enabled
        self.board_folder = os.path.join(out, TENSORBOARD) if enabled and tensorboard else None
        self.board, self.purge_step = None, None
        if self.board_folder:
            _summary_writer_class()  # a missing package is an error at start, not at the first metric

    def truncate_after(self, step: int) -> None:
        """Drop lines written after the checkpoint we resume from; the resumed run writes them again
        (a resume from this same checkpoint that was killed before its next one left a resume mark
        here: the new one replaces it)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        self.purge_step = step + 1  # TensorBoard drops its own events after the checkpoint too
        with open(self.path) as handle:
            kept = [line for line in handle if _step_of(line) is not None and
                    (_step_of(line) < step or (_step_of(line) == step and not _is_resume(line)))]
        with open(self.path, "w") as handle:
            handle.writelines(kept)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.board_folder and self.board is None:
            self.board = _summary_writer_class()(self.board_folder, purge_step=self.purge_step)
        if self.board is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.board.add_scalar(key, value, record["step"])
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("the tensorboard option needs the tensorboard package: pip install 'stratalm[tensorboard]'.") from None
    return SummaryWriter
