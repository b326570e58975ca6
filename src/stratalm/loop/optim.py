"""AdamW with decay on matrices only, and the warmup + cosine learning-rate schedule (stretched
without a jump when a resumed run changes its length)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .config import TrainConfig


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay pulls matrices (and embeddings) toward zero; biases and norm gains are left
    alone, since shrinking them only fights the normalisation (as in GPT-2 and nanoGPT)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device,
                   groups: Optional[list[dict]] = None) -> torch.optim.AdamW:
    """AdamW over `groups` (default: decay_groups). A group may carry `lr_scale`, a factor on the
    scheduled learning rate (layer-wise decay)."""
    groups = groups if groups is not None else decay_groups(model, config.weight_decay)
    # The fused kernel updates every tensor in one call: the fast path on CPU and CUDA alike.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, fused=fused)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr over warmup_steps, cosine decay to min_lr at decay_steps, then flat."""
    decay_steps = config.decay_steps or config.max_steps
    warmup = config.warmup(config.max_steps)
    if step < warmup:
        return config.lr * (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return config.min_lr
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def _cosine(step: int, start: int, end: int, high: float, low: float) -> float:
    progress = min(1.0, (step - start) / max(1, end - start))
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

    def lr(self, step: int) -> float:
        if self.resumed_at is None or step < self.resumed_at:
            return learning_rate(step, self.config)
        end = self.config.decay_steps or self.config.max_steps
        return self.config.min_lr if step >= end else _cosine(step, self.resumed_at, end, self.resumed_lr,
                                                                self.config.min_lr)

    def stretched(self, step: int, total_steps: int) -> "Schedule":
        """This schedule continued from `step` to a run of `total_steps` steps. Within the warmup,
        the warmup keeps its length in steps and the cosine spans the new run; after it, the decay
        goes from the rate of `step` to min_lr at the new end."""
        warmup = self.config.warmup(self.config.max_steps)
        longer = dataclasses.replace(self.config, max_steps=total_steps, warmup_steps=warmup)
        if self.resumed_at is None and step < warmup:
            return Schedule(longer)
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
        if self.resumed_at is None:
            return f"warmup then cosine decay to min_lr {self.config.min_lr:.2e} at step {end}"
        return (f"from step {self.resumed_at} the learning rate decays (cosine) from the {self.resumed_lr:.2e} it had "
                f"reached to min_lr {self.config.min_lr:.2e} at step {end}")
