"""Prompted tasks as YAML files, in the shape of lm-evaluation-harness's task files.

A task names its data (a folder, `data_dir`, that `--data` replaces, and the files of its test and
few-shot splits, optionally a slice of rows), how a row becomes a prompt (`doc_to_text`, a jinja2
template over the row's columns, also reachable as `doc[...]` for names that are not identifiers),
the answer (`doc_to_target`: a column or a template; for multiple choice the index or the text of a
choice), the choices (`doc_to_choice`), and the metrics. `cloze` gives an encoder its own template
with a [MASK] slot and its verbaliser words. The shipped tasks are in task_files/ beside this file.

Keys not documented here are refused with the closest valid one, so a typo never passes silently.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

import yaml

from ..config_fields import did_you_mean
from ..errors import ConfigError, DataError
from ..tasks.data_files import read_lines, read_table

TASK_FOLDER = os.path.join(os.path.dirname(__file__), "task_files")
MULTIPLE_CHOICE, GENERATE = "multiple_choice", "generate_until"
METRICS = {MULTIPLE_CHOICE: ("acc", "acc_norm"), GENERATE: ("exact_match", "bleu", "chrf")}
SLOT = "[MASK]"  # where a cloze template puts the answer


@dataclass
class Split:
    file: str
    rows: Optional[str] = None  # a Python slice of the rows, "4000:" or ":500"


@dataclass
class TaskSpec:
    task: str  # the name reported with the results
    output_type: str  # multiple_choice (score each choice) or generate_until (greedy decoding)
    test_split: Split
    doc_to_text: str
    doc_to_target: str
    fewshot_split: Optional[Split] = None  # where demonstrations come from (never the test rows)
    data_dir: Optional[str] = None  # folder of the split files (relative: to the working directory)
    columns: Optional[list[str]] = None  # names of a header-less tab-separated file's fields
    description: str = ""  # text before the demonstrations
    doc_to_choice: Union[list[str], str, None] = None  # the choices, or the column that holds a row's list
    target_delimiter: str = " "  # between a prompt and its answer
    fewshot_delimiter: str = "\n\n"  # between demonstrations, and before the question
    metric_list: list[str] = field(default_factory=list)  # default: every metric of the output type
    generation_kwargs: dict[str, Any] = field(default_factory=dict)  # until (stop strings), max_gen_toks
    cloze: Optional[dict[str, Any]] = None  # encoders: template (with [MASK]) and choices (verbaliser words)
    calibration: bool = False  # contextual calibration (Zhao et al. 2021) of multiple-choice scores
    content_free: list[str] = field(default_factory=lambda: ["N/A", "", "[MASK]"])  # its content-free inputs
    source: str = ""  # the file the task was read from

    @property
    def fixed_choices(self) -> Optional[list[str]]:
        return self.doc_to_choice if isinstance(self.doc_to_choice, list) else None


def task_names() -> list[str]:
    return sorted(name[:-5] for name in os.listdir(TASK_FOLDER) if name.endswith(".yaml"))


def task_file(name_or_path: str) -> str:
    """A YAML path, or the name of a shipped task."""
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = os.path.join(TASK_FOLDER, f"{name_or_path}.yaml")
    if os.path.isfile(shipped):
        return shipped
    raise ConfigError(f"no task file '{name_or_path}' and no shipped task of that name{did_you_mean(name_or_path, task_names())}; "
                      f"give a YAML file or one of: {', '.join(task_names())}.")


def _split(value: Any, key: str, source: str) -> Split:
    if isinstance(value, str):
        return Split(value)
    if isinstance(value, dict) and set(value) <= {"file", "rows"} and isinstance(value.get("file"), str):
        return Split(value["file"], None if value.get("rows") is None else str(value["rows"]))
    raise ConfigError(f"'{key}' in '{source}' must be a file name or {{file: NAME, rows: 'A:B'}}; got {value!r}.")


def load_task(name_or_path: str, data_dir: Optional[str] = None) -> TaskSpec:
    """Read and check a task file; `data_dir` replaces the file's own."""
    path = task_file(name_or_path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ConfigError(f"'{path}' is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"'{path}' must hold a mapping of task keys (task, output_type, doc_to_text, ...).")
    known = {f.name for f in fields(TaskSpec)} - {"source"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{key}' in '{path}'{did_you_mean(str(key), known)}; "
                              f"the keys are: {', '.join(sorted(known))}.")
    for key in ("task", "output_type", "test_split", "doc_to_text", "doc_to_target"):
        if key not in raw:
            raise ConfigError(f"'{path}' lacks the key '{key}' that every task needs.")
    raw["test_split"] = _split(raw["test_split"], "test_split", path)
    if raw.get("fewshot_split") is not None:
        raw["fewshot_split"] = _split(raw["fewshot_split"], "fewshot_split", path)
    spec = TaskSpec(**raw, source=path)
    if data_dir is not None:
        spec.data_dir = data_dir
    _check(spec)
    return spec


def _check(spec: TaskSpec) -> None:
    where = f"task '{spec.task}' ({spec.source})"
    kinds = {"task": str, "doc_to_text": str, "doc_to_target": str, "description": str, "target_delimiter": str,
             "fewshot_delimiter": str, "metric_list": list, "generation_kwargs": dict, "cloze": (dict, type(None)),
             "calibration": bool, "content_free": list, "columns": (list, type(None)), "data_dir": (str, type(None))}
    for key, kind in kinds.items():
        if not isinstance(getattr(spec, key), kind):
            raise ConfigError(f"'{key}' of {where} has the wrong type ({type(getattr(spec, key)).__name__}); see the "
                              f"shipped task files for the shape of each key.")
    if spec.output_type not in METRICS:
        raise ConfigError(f"output_type of {where} must be {MULTIPLE_CHOICE} or {GENERATE}; got '{spec.output_type}'.")
    allowed = METRICS[spec.output_type]
    spec.metric_list = list(spec.metric_list or allowed)
    for metric in spec.metric_list:
        if metric not in allowed:
            raise ConfigError(f"metric '{metric}' of {where} does not apply to {spec.output_type}; use {', '.join(allowed)}.")
    if spec.output_type == MULTIPLE_CHOICE:
        if not (isinstance(spec.doc_to_choice, str) or (isinstance(spec.doc_to_choice, list) and len(spec.doc_to_choice) >= 2)):
            raise ConfigError(f"{where} is multiple choice, so doc_to_choice must list two or more choices (or name the column that does).")
        if spec.calibration and spec.fixed_choices is None:
            raise ConfigError(f"calibration of {where} needs one list of choices for every example (doc_to_choice as a list).")
    if spec.cloze is not None:
        template = spec.cloze.get("template", "")
        if set(spec.cloze) - {"template", "choices"} or template.count(SLOT) != 1:
            raise ConfigError(f"cloze of {where} takes a template with one {SLOT} slot and optional choices (verbaliser words).")
        if "choices" in spec.cloze and spec.fixed_choices and len(spec.cloze["choices"]) != len(spec.fixed_choices):
            raise ConfigError(f"cloze choices of {where} must have one word per choice ({len(spec.fixed_choices)}).")
    if spec.fewshot_split == spec.test_split:
        raise ConfigError(f"the few-shot split of {where} is its test split; draw demonstrations from other rows.")


# -- data ---------------------------------------------------------------------------------------
def _rows_slice(text: str, source: str) -> slice:
    if not re.fullmatch(r"-?\d*:-?\d*(:-?\d*)?", text):
        raise ConfigError(f"rows '{text}' in '{source}' is not a slice such as '4000:' or ':500'.")
    return slice(*(int(p) if p else None for p in text.split(":")))


def read_split(spec: TaskSpec, split: Split) -> list[dict[str, Any]]:
    """The rows of one split, as dicts by column name."""
    path = os.path.join(spec.data_dir or ".", split.file)
    if not os.path.isfile(path):
        raise DataError(f"data file '{path}' of task '{spec.task}' does not exist; point --data at the folder that "
                        f"holds {split.file}.")
    if spec.columns:
        rows = []
        for number, line in enumerate(read_lines(path, "one tab-separated row per line"), start=1):
            values = line.split("\t")
            if len(values) < len(spec.columns):
                raise DataError(f"line {number} of '{path}' has {len(values)} tab-separated fields; task '{spec.task}' "
                                f"names {len(spec.columns)} ({', '.join(spec.columns)}).")
            rows.append(dict(zip(spec.columns, values)))
    else:
        rows = read_table(path)[1]
    if split.rows is not None:
        rows = rows[_rows_slice(split.rows, spec.source)]
    if not rows:
        raise DataError(f"the rows {split.rows} of '{path}' are empty; choose a slice that holds examples.")
    return rows
