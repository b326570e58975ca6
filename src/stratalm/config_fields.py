"""Typed dataclass configs: a field with a one-line help, YAML loading, dotted-key overrides.

Every config in stratalm is a dataclass whose fields are declared with `setting(default, help)`.
`apply_overrides` turns strings from the command line (`train.lr=3e-4`) into typed values and
rejects unknown keys with the list of valid ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from typing import Any, Callable, Optional

import yaml

from .errors import ConfigError, OutputExistsError


def did_you_mean(word: str, choices: Any) -> str:
    """" (did you mean X?)" for the closest of `choices` to a mistyped `word`, or "" when none is close."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# A check of a setting's value: None when the value is fine, else what it must be ("at least 1").
Check = Callable[[Any], Optional[str]]


def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"at least {low}"


def above(low: float) -> Check:
    return lambda value: None if value > low else f"above {low}"


def within(low: float, high: float) -> Check:
    """low <= value < high (AdamW's betas, dropout rates, shares)."""
    return lambda value: None if low <= value < high else f"in [{low}, {high})"


def from_to(low: float, high: float) -> Check:
    """low <= value <= high (a share of tokens)."""
    return lambda value: None if low <= value <= high else f"in [{low}, {high}]"


def above_up_to(low: float, high: float) -> Check:
    """low < value <= high (a decay factor, top-p)."""
    return lambda value: None if low < value <= high else f"in ({low}, {high}]"


def one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"one of {', '.join(choices)}"


DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(value: Any) -> Optional[str]:
    return None if DEVICE_NAME.match(str(value)) else "cpu, cuda, cuda:N or auto"


def require(name: str, value: Any, check: Check) -> None:
    """Refuse `value` of the setting or flag `name` in one sentence unless it passes `check`; the one
    wording of every such error, whether the value came from a config file, a flag or a call."""
    wanted = check(value)
    if wanted:
        raise ConfigError(f"{name} must be {wanted}; got {value!r}.")


def setting(default: Any, help: str, check: Optional[Check] = None) -> Any:
    """A dataclass field with a default and a one-line help shown by `--help`; `check` refuses a
    bad value when the config is read (update_dataclass), before anything is built or written."""
    metadata = {"help": help, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert `value` (often a string from the command line) to `annotation`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, args[0], key)
    if annotation in (bool, int, float, str) and (isinstance(value, (list, dict)) or
                                                  (isinstance(value, bool) and annotation in (int, float))):
        raise ConfigError(f"config key '{key}' expects {annotation.__name__}, got {value!r}.")
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' expects {annotation.__name__}, got {value!r}.") from None
    return value


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def update_dataclass(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass `obj` with `values` applied; nested dataclasses take nested dicts."""
    changes = {}
    valid = field_names(type(obj))
    for key, value in values.items():
        if key not in valid:
            raise unknown_key(prefix + key, [prefix + v for v in valid])
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{prefix}{key}' is a section; give it keys, e.g. {prefix}{key}.<name>=value.")
            changes[key] = update_dataclass(current, value, f"{prefix}{key}.")
        else:
            if isinstance(value, dict) and field_type(type(obj), key) is not dict:  # a dict field (task_options) takes one
                raise ConfigError(f"config key '{prefix}{key}' takes a value, not a section of keys; give it as "
                                  f"{prefix}{key}=VALUE.")
            changes[key] = coerce(value, field_type(type(obj), key), prefix + key)
            check = _field(obj, key).metadata.get("check")
            if check is not None and changes[key] is not None:
                require(f"config key '{prefix}{key}'", changes[key], check)
    return dataclasses.replace(obj, **changes)


def _field(obj: Any, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(obj) if f.name == name)


def unknown_key(key: str, valid: list[str]) -> ConfigError:
    """The error for a config key that does not exist: the closest valid key, then all of them."""
    # Keys of one section share their prefix: compare the names after it, or `train.` alone looks alike.
    by_name = {v.rsplit(".", 1)[-1]: v for v in valid}
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_name), n=1, cutoff=0.6)
    hint = f" (did you mean {by_name[close[0]]}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; valid keys are: {', '.join(valid)}.")


def dotted_to_nested(pairs: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": "1e-3"} -> {"train": {"lr": "1e-3"}}."""
    nested: dict[str, Any] = {}
    for key, value in pairs.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with another override.")
        node[parts[-1]] = value
    return nested


def merge_nested(base: dict[str, Any], extra: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`extra` on top of `base`, section by section. A section on one side and a plain value on the
    other (a YAML `train: 5` under a `train.lr=...` override) is an error: neither may hide the other."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_nested(out[key], value, f"{prefix}{key}.")
        elif key in out and out[key] is not None and isinstance(value, dict) != isinstance(out[key], dict):
            plain = value if not isinstance(value, dict) else out[key]
            raise ConfigError(f"config key '{prefix}{key}' is a section of keys, but is also given the value {plain!r}; "
                              f"give its keys instead, e.g. {prefix}{key}.<name>=value.")
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings (also `--key=value`) into a nested dict of strings."""
    pairs = {}
    for item in items:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"cannot read '{item}': give overrides as dotted keys, e.g. train.lr=3e-4.")
        key, value = text.split("=", 1)
        pairs[key.strip()] = value.strip()
    return dotted_to_nested(pairs)


def load_yaml(path: str) -> dict[str, Any]:
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}' is a folder; give the path of a YAML file.")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; give a YAML file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values.")
    return data


def describe(cls_or_obj: Any, prefix: str = "") -> list[str]:
    """One line per field: `prefix.name = default  # help`, recursing into nested sections."""
    lines = []
    obj = cls_or_obj() if isinstance(cls_or_obj, type) else cls_or_obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.extend(describe(value, f"{prefix}{f.name}."))
        else:
            lines.append(f"  {prefix}{f.name} = {value!r}  # {f.metadata.get('help', '')}")
    return lines


def field_help(obj: Any, dotted: str) -> str:
    """`help (default value)` of the field `dotted` (e.g. "loop.lr") of dataclass `obj`."""
    *sections, name = dotted.split(".")
    for section in sections:
        obj = getattr(obj, section)
    spec = next(f for f in dataclasses.fields(obj) if f.name == name)
    return f"{spec.metadata.get('help', '')} (default {getattr(obj, name)!r})"


# -- the --out setting: what the folder already holds ------------------------------------------------
PRETRAINING_RUN, FINETUNING_RUN = "pretraining run", "fine-tuning run"  # a recipe's `kind`
PREPARED_DATA = "prepared data folder"


def folder_kind(path: str) -> Optional[str]:
    """What stratalm wrote in the folder `path`: a pretraining run, a fine-tuning run, a fine-tuned
    model folder (task.json without run.yaml), a prepared data folder, a model folder; None when it
    holds nothing of these (absent, empty, or other files)."""
    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(path, name))

    if has("manifest.json"):
        return PREPARED_DATA
    if has("run.yaml"):
        try:
            saved = load_yaml(os.path.join(path, "run.yaml"))
        except ConfigError:  # unreadable: the run folder's own checks say so
            saved = {}
        return FINETUNING_RUN if "task" in saved or has("task.json") else PRETRAINING_RUN
    if has("task.json"):
        return "fine-tuned model folder"
    return "model folder" if has("config.json") else None


def check_output_folder(out: str, kind: str) -> None:
    """Refuse an --out that is a file, or a folder that holds something else than a run of `kind`:
    --resume and --overwrite apply to a run of the same kind only, so neither a prepared data folder
    nor a model is ever written over."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputExistsError(f"--out '{out}' is a file, not a folder; choose another --out.")
    found = folder_kind(out) if os.path.isdir(out) else None
    # A run of a recipe outside stratalm (its own `kind`) may write where a run folder is.
    foreign_run = kind not in (PRETRAINING_RUN, FINETUNING_RUN, PREPARED_DATA) and found in (PRETRAINING_RUN, FINETUNING_RUN)
    if found is not None and found != kind and not foreign_run:
        raise OutputExistsError(f"--out '{out}' holds a {found}, not a {kind}; choose another --out (--resume and "
                                f"--overwrite apply to a {kind} only).")
