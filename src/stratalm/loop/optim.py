"""AdamW with decay on matrices only, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import Optional

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
