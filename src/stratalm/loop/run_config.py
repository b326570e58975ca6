"""What a pretraining run is configured by. YAML files and `key=value` overrides fill these in.

The `model` section names a preset (or a checkpoint folder to start from) plus any ModelConfig
field to change, e.g. `model.n_layers=4`; the resolved ModelConfig is saved with the run. No torch
here: `stratalm pretrain --help` prints every key from this module alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from ..config_fields import describe, load_yaml, merge_nested, setting, update_dataclass
from ..errors import ConfigError
from ..model_config import ModelConfig
from ..objectives.settings import ContrastiveConfig, MaskingConfig, ReplacedTokenConfig
from .config import TrainConfig


@dataclass(frozen=True)
class LensDynamicsConfig:
    every: int = setting(0, "steps between layer-lens measures in metrics.jsonl: per-layer logit-lens KL, mean head "
                            "entropy, CKA to the previous measure (0 = off); `stratalm plot` draws them")
    windows: int = setting(8, "validation windows the measures read (the same ones every time)")


@dataclass(frozen=True)
class RunConfig:
    data: str = setting("", "prepared data folder (from `stratalm prepare`)")
    out: str = setting("", "output folder: checkpoint, metrics.jsonl, run.yaml")
    objective: str = setting("clm", "pretraining objective: clm, mlm, nsp, sop, mlm+nsp, mlm+sop, rtd, span, simcse, "
                                    "or a weighted mixture such as mlm+simcse:0.1")
    model: dict = setting({}, "model.preset (a preset name or checkpoint folder) and ModelConfig fields to override")
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop"})
    mlm: MaskingConfig = field(default_factory=MaskingConfig, metadata={"help": "masking recipe of the mlm objective"})
    rtd: ReplacedTokenConfig = field(default_factory=ReplacedTokenConfig, metadata={"help": "ELECTRA's generator and loss weights"})
    simcse: ContrastiveConfig = field(default_factory=ContrastiveConfig, metadata={"help": "contrastive sentence embeddings"})
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


def build_run_config(yaml_path: Optional[str], overrides: dict[str, Any]) -> RunConfig:
    """Defaults <- YAML file <- command-line overrides (nested dicts)."""
    values: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    if isinstance(values.get("model"), str):  # `model: tiny` is short for `model: {preset: tiny}`
        values["model"] = {"preset": values["model"]}
    values = merge_nested(values, overrides)
    model = values.pop("model", {}) or {}
    if not isinstance(model, dict):
        raise ConfigError("config key 'model' must be a preset name or a mapping of model fields.")
    valid = {f.name for f in dataclasses.fields(ModelConfig)} | {"preset"}
    unknown = sorted(set(model) - valid)
    if unknown:
        raise ConfigError(f"unknown config key 'model.{unknown[0]}'; valid keys are: {', '.join('model.' + v for v in sorted(valid))}.")
    run = update_dataclass(RunConfig(), values)
    return dataclasses.replace(run, model=model)


def config_help() -> str:
    lines = ["config keys (set in --config FILE.yaml or as key=value; defaults shown):"]
    lines += [line for line in describe(RunConfig()) if not line.lstrip().startswith("model =")]
    lines.append("  model.preset = 'tiny'  # a preset name or a checkpoint folder to start from")
    lines += describe(ModelConfig(), "model.")
    return "\n".join(lines)
