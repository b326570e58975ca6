"""What a pretraining run is configured by. YAML files and `key=value` overrides fill these in.

The `model` section names a preset (or a checkpoint folder to start from) plus any ModelConfig
field to change, e.g. `model.n_layers=4`; the resolved ModelConfig is saved with the run. No torch
here: `stratalm pretrain --help` prints every key from this module alone.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from ..config_fields import (FINETUNING_RUN, PRETRAINING_RUN, at_least, check_output_folder, coerce,  # noqa: F401
                             describe, field_type, folder_kind, load_yaml, merge_nested, require, setting, unknown_key,
                             update_dataclass)
from ..errors import ConfigError
from ..model_config import ModelConfig
from ..objectives.settings import ContrastiveConfig, MaskingConfig, PermutationConfig, ReplacedTokenConfig
from .config import MAY_CHANGE_ON_RESUME as LOOP_MAY_CHANGE, TrainConfig


@dataclass(frozen=True)
class LensDynamicsConfig:
    every: int = setting(0, "steps between layer-lens measures in metrics.jsonl: per-layer logit-lens KL, mean head "
                            "entropy, CKA to the previous measure (0 = off); `stratalm plot` draws them", at_least(0))
    windows: int = setting(8, "validation windows the measures read (the same ones every time)", at_least(1))


@dataclass(frozen=True)
class RunConfig:
    data: str = setting("", "prepared data folder (from `stratalm prepare`)")
    out: str = setting("", "output folder: checkpoint, metrics.jsonl, run.yaml")
    objective: str = setting("clm", "pretraining objective: clm, mlm, nsp, sop, mlm+nsp, mlm+sop, rtd, span, simcse, plm (XLNet), "
                                    "or a weighted mixture such as mlm+simcse:0.1")
    model: dict = setting({}, "model.preset (a preset name or checkpoint folder) and ModelConfig fields to override")
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop"})
    mlm: MaskingConfig = field(default_factory=MaskingConfig, metadata={"help": "masking recipe of the mlm objective"})
    rtd: ReplacedTokenConfig = field(default_factory=ReplacedTokenConfig, metadata={"help": "ELECTRA's generator and loss weights"})
    simcse: ContrastiveConfig = field(default_factory=ContrastiveConfig, metadata={"help": "contrastive sentence embeddings"})
    plm: PermutationConfig = field(default_factory=PermutationConfig, metadata={"help": "XLNet's permutation LM: partial prediction and spans"})
    lens: LensDynamicsConfig = field(default_factory=LensDynamicsConfig, metadata={"help": "training dynamics seen by the layer lens"})

    @property
    def model_source(self) -> str:
        return str(self.model.get("preset", "tiny"))

    def model_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "preset"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


DEFAULT_PRESET = "tiny"
RUN_CONFIG = "run.yaml"  # written into the run folder by loop/run_folder.py
# Settings a resumed run may change: where it is written, the loop's length, cadence and way of
# running (config.py), and the lens's measures. Any other setting must equal the saved one.
MAY_CHANGE_ON_RESUME = ("out", *(f"train.{name}" for name in LOOP_MAY_CHANGE), "lens.every", "lens.windows")


def _given_values(yaml_path: Optional[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """The YAML file's values with the command line's on top, `model: NAME` spelled out."""
    values: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    if isinstance(values.get("model"), str):  # `model: tiny` is short for `model: {preset: tiny}`
        values["model"] = {"preset": values["model"]}
    return merge_nested(values, overrides)


def _typed_model(model: Any) -> dict[str, Any]:
    """The model section with each ModelConfig field converted to its type (`n_layers=2` from the
    command line is the int 2, in the run and in run.yaml)."""
    if not isinstance(model, dict):
        raise ConfigError("config key 'model' must be a preset name or a mapping of model fields.")
    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    typed = {}
    for key, value in model.items():
        if key == "preset":
            typed[key] = str(value)
        elif key in valid:
            typed[key] = coerce(value, field_type(ModelConfig, key), f"model.{key}")
        else:
            raise unknown_key(f"model.{key}", [f"model.{v}" for v in sorted(valid | {"preset"})])
    return typed


def _run_from(values: dict[str, Any]) -> RunConfig:
    values = dict(values)
    model = _typed_model(values.pop("model", {}) or {})
    run = dataclasses.replace(update_dataclass(RunConfig(), values), model=model)
    require("config key 'train.max_steps'", run.train.max_steps, at_least(1))  # fine-tuning's 0 means "by epochs"
    return run


def run_values(settings: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig keys of a run.yaml's `settings` (it also holds the resolved model, the schedule, ...)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return {k: v for k, v in settings.items() if k in names}


def saved_run_values(out: str) -> Optional[dict[str, Any]]:
    """The settings a run folder's run.yaml holds (RunConfig keys only), or None if it has none."""
    path = os.path.join(out, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    return run_values(load_yaml(path))


def _leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        if isinstance(value, dict):
            keys += _leaves(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def _setting(run: RunConfig, key: str, resolved: dict[str, Any]) -> Any:
    """The value of dotted `key` in `run`; a model field left to the preset is the resolved one."""
    section, _, name = key.partition(".")
    if section == "model":
        return run.model_source if name == "preset" else run.model.get(name, resolved.get(name))
    value = getattr(run, section)
    for part in name.split(".") if name else []:
        value = getattr(value, part)
    return os.path.abspath(value) if key == "data" and value else value


def resume_conflicts(saved: dict[str, Any], given: dict[str, Any], resolved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, given value) for every setting given again with another value than the
    saved run's, except those that may change on resume. The one check of a resumed pretraining
    run: the loop makes it (PretrainRecipe.resume_conflicts) with the run's every setting, however
    the run was configured (the command line's --resume, or the Python API)."""
    before, after = _run_from(saved), _run_from(merge_nested(saved, given))
    conflicts = []
    for key in sorted(set(_leaves(given))):
        if key in MAY_CHANGE_ON_RESUME:
            continue
        old, new = _setting(before, key, resolved), _setting(after, key, resolved)
        if old != new:
            conflicts.append((key, old, new))
    return conflicts


def build_run_config(yaml_path: Optional[str], overrides: dict[str, Any], resume: bool = False) -> RunConfig:
    """Defaults <- YAML file <- command-line overrides (nested dicts). With `resume`, the run.yaml
    saved in the run folder (`out`) comes between the defaults and what is given, so a run continues
    with its own settings; a setting given again with another value is refused by the loop, before
    anything is written (resume_conflicts)."""
    given = _given_values(yaml_path, overrides)
    out = given.get("out")
    if out:
        check_output_folder(str(out), PRETRAINING_RUN)
    saved = saved_run_values(str(out)) if resume and out else None
    return _run_from(given if saved is None else merge_nested(saved, given))


def preset_values(name: str) -> ModelConfig:
    """The ModelConfig a preset name stands for (families.presets; no torch)."""
    from ..families.presets import PRESETS

    return ModelConfig.from_dict(PRESETS[name])


def config_help(preset_name: Optional[str] = None) -> str:
    """Every key with its value: the loop's defaults, and the model fields of `preset_name` (the
    --model on the line, default tiny) as that preset sets them."""
    from ..families.presets import PRESETS

    name = preset_name if preset_name in PRESETS else DEFAULT_PRESET
    lines = ["config keys (set in --config FILE.yaml or as key=value; defaults shown):"]
    lines += [line for line in describe(RunConfig()) if not line.lstrip().startswith("model =")]
    if preset_name and preset_name not in PRESETS and os.path.isdir(preset_name):
        lines.append(f"  model.preset = {preset_name!r}  # a checkpoint folder: its model fields are its own "
                     f"(`stratalm info {preset_name}` shows them) and cannot be overridden")
        return "\n".join(lines)
    lines.append(f"  model.preset = {name!r}  # a preset name or a checkpoint folder to start from; "
                 f"the model.* values below are this preset's")
    for line in describe(preset_values(name), "model."):
        if line.startswith("  model.vocab_size ="):
            line += " (pretraining takes the data's vocabulary size unless this is set)"
        lines.append(line)
    return "\n".join(lines)
