"""The optimizer (AdamW, or Muon for the blocks' matrices beside AdamW) with decay on matrices
only and per-part learning rates, and the learning-rate schedule: warmup then cosine, or
warmup-stable-decay (stretched without a jump when a resumed run changes its length)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from ..errors import ConfigError
from ..models.anatomy import part_of
from .config import TrainConfig
from .muon import Muon, MuonWithAdamW, newton_schulz_dtype

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


def decay_groups(model: torch.nn.Module, weight_decay: float, config: Optional[TrainConfig] = None) -> list[dict]:
    """Weight decay pulls matrices (and embeddings) toward zero; biases and norm gains are left
    alone, since shrinking them only fights the normalisation (as in GPT-2 and nanoGPT). With
    `config`, embeddings and heads get their own group where embed_lr / head_lr set their rate."""
    scales = {"embedding": _scale(config, "embed_lr"), "head": _scale(config, "head_lr")}
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        key = (param.dim() >= 2, scales.get(part_of(name).kind, 1.0))
        groups.setdefault(key, []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, **({"lr_scale": scale} if scale != 1.0 else {})}
            for (decays, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))]


def _scale(config: Optional[TrainConfig], field: str) -> float:
    rate = getattr(config, field) if config is not None else None
    return 1.0 if rate is None or config.lr == 0 else rate / config.lr


def check_optimizer_settings(config: TrainConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, not '{config.optimizer}'.")
    if config.optimizer == "muon" and (config.lr <= 0 or config.muon_lr <= 0 or config.muon_momentum < 0):
        raise ConfigError("train.optimizer=muon needs a positive lr and muon_lr and a muon_momentum of at least 0.")
    if any(rate is not None and rate < 0 for rate in (config.embed_lr, config.head_lr)):
        raise ConfigError("train.embed_lr and train.head_lr must not be negative.")


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device,
                   groups: Optional[list[dict]] = None) -> Union[torch.optim.AdamW, MuonWithAdamW]:
    """AdamW over `groups` (default: decay_groups), or with optimizer=muon, Muon over the blocks'
    2-D matrices of every group and AdamW over the rest. A group may carry `lr_scale`, a factor
    on the scheduled learning rate (layer-wise decay; Muon's groups: muon_lr / lr on top)."""
    check_optimizer_settings(config)
    groups = groups if groups is not None else decay_groups(model, config.weight_decay, config)
    # The fused kernel updates every tensor in one call: the fast path on CPU and CUDA alike.
    fused = device.type in ("cpu", "cuda")
    adamw = lambda gs: torch.optim.AdamW(gs, lr=config.lr, betas=(config.beta1, config.beta2),  # noqa: E731
                                         eps=config.eps, fused=fused)
    if config.optimizer == "adamw":
        return adamw(groups)
    hidden = {id(p) for name, p in model.named_parameters() if p.dim() == 2 and part_of(name).kind == "block"}
    muon_groups, adamw_groups = [], []
    for group in groups:
        matrices = [p for p in group["params"] if id(p) in hidden]
        rest = [p for p in group["params"] if id(p) not in hidden]
        scale = group.get("lr_scale", 1.0)
        if matrices:
            muon_groups.append({**group, "params": matrices, "lr_scale": scale * config.muon_lr / config.lr})
        if rest:
            adamw_groups.append({**group, "params": rest})
    if not muon_groups:
        raise ConfigError("train.optimizer=muon found no 2-D matrix in the model's blocks to train; use adamw.")
    muon = Muon(muon_groups, ns_dtype=newton_schulz_dtype(config.muon_precision, device.type), lr=config.muon_lr,
                weight_decay=config.weight_decay, momentum=config.muon_momentum)
    return MuonWithAdamW(muon, adamw(adamw_groups))


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr over warmup_steps, then to min_lr at decay_steps, then flat: a cosine
    decay, or (wsd) flat at lr until decay_start, then a linear decay."""
    decay_steps = config.decay_steps or config.max_steps
    warmup = config.warmup(config.max_steps)
    if step < warmup:
        return config.lr * (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return config.min_lr
    if config.schedule == "wsd":
        start = decay_start(config)
        return config.lr if step < start else _decay(step, start, decay_steps, config.lr, config.min_lr, "wsd")
    return _decay(step, warmup, decay_steps, config.lr, config.min_lr, "cosine")


def decay_start(config: TrainConfig) -> int:
    """wsd: the step where the learning rate leaves its plateau, decay_fraction of the steps
    between warmup and decay_steps before the end."""
    end, warmup = config.decay_steps or config.max_steps, config.warmup(config.max_steps)
    return end - round(config.decay_fraction * max(0, end - warmup))


def _decay(step: int, start: int, end: int, high: float, low: float, shape: str) -> float:
    """From `high` at `start` to `low` at `end`: half a cosine, or (wsd) a straight line."""
    progress = min(1.0, (step - start) / max(1, end - start))
    if shape == "wsd":
        return high + progress * (low - high)
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (high - low)


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every step of a run: `learning_rate` under `config` (whose max_steps
    is the run's length), until a resumed run changed that length at step `resumed_at`; from there
    the decay restarts from the rate reached, `resumed_lr`, and ends at min_lr at the new end, so
    the rate never jumps (steps before `resumed_at`, never taken again, are not its concern).
    Saved with each checkpoint, so a resume that keeps the length replays the same rates bit for bit."""

    config: TrainConfig
    resumed_at: Optional[int] = None
    resumed_lr: Optional[float] = None

    def __post_init__(self) -> None:
        if self.config.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, not '{self.config.schedule}'.")
        if not 0.0 <= self.config.decay_fraction <= 1.0:
            raise ConfigError("train.decay_fraction must be between 0 and 1.")

    def lr(self, step: int) -> float:
        if self.resumed_at is None or step < self.resumed_at:
            return learning_rate(step, self.config)
        end = self.config.decay_steps or self.config.max_steps
        return self.config.min_lr if step >= end else _decay(step, self.resumed_at, end, self.resumed_lr,
                                                               self.config.min_lr, self.config.schedule)

    def stretched(self, step: int, total_steps: int) -> "Schedule":
        """This schedule continued from `step` to a run of `total_steps` steps. Within the warmup,
        the warmup keeps its length in steps and the cosine spans the new run; after it, the decay
        goes from the rate of `step` to min_lr at the new end."""
        warmup = self.config.warmup(self.config.max_steps)
        longer = dataclasses.replace(self.config, max_steps=total_steps, warmup_steps=warmup)
        if self.resumed_at is None and step < warmup:
            return Schedule(longer)
        if self.resumed_at is None and self.config.schedule == "wsd" and step < min(decay_start(self.config),
                                                                                     decay_start(longer)):
            return Schedule(longer)  # still on the plateau of both: the longer run's plateau goes on
        return Schedule(longer, step, self.lr(step))

    def to_dict(self) -> dict[str, Any]:
        return {"max_steps": self.config.max_steps, "warmup_steps": self.config.warmup_steps,
                "resumed_at": self.resumed_at, "resumed_lr": self.resumed_lr}

    @classmethod
    def from_dict(cls, saved: dict[str, Any], config: TrainConfig) -> "Schedule":
        """The schedule a checkpoint saved, under the run's other settings `config`."""
        return cls(dataclasses.replace(config, max_steps=int(saved["max_steps"]), warmup_steps=saved["warmup_steps"]),
                   saved.get("resumed_at"), saved.get("resumed_lr"))

    def describe(self) -> str:
        end = self.config.decay_steps or self.config.max_steps
        shape = "cosine" if self.config.schedule == "cosine" else "linear"
        if self.resumed_at is None and self.config.schedule == "wsd":
            return (f"warmup, flat at lr {self.config.lr:.2e} until step {decay_start(self.config)}, then linear decay "
                    f"to min_lr {self.config.min_lr:.2e} at step {end}")
        if self.resumed_at is None:
            return f"warmup then cosine decay to min_lr {self.config.min_lr:.2e} at step {end}"
        return (f"from step {self.resumed_at} the learning rate decays ({shape}) from the {self.resumed_lr:.2e} it had "
                f"reached to min_lr {self.config.min_lr:.2e} at step {end}")
