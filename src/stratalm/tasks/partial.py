"""Partial fine-tuning: which parameters train, and at what learning rate.

- `--train-only head`: only the task head (the modules the task added) trains;
- `--freeze-embeddings`: token, position and segment tables (and their norm/projection) stay fixed;
- `--freeze-layers N`: the lowest N blocks of every stack stay fixed;
- `--layer-decay F` (Clark et al. 2020, ELECTRA): the head trains at lr, the top block at lr*F,
  the next one down at lr*F^2, ..., the embeddings at lr*F^(L+1) — lower layers hold more general
  features and move less.

Frozen parameters get `requires_grad=False`, so the optimizer never sees them and they stay
bitwise unchanged (no weight decay either).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..errors import ConfigError
from ..models.anatomy import block_counts, depth, part_of, top_depth


def freeze(model: nn.Module, head: list[str], train_only: Optional[str] = None, freeze_embeddings: bool = False,
           freeze_layers: int = 0) -> None:
    """Switch off gradients as the options say (see the module's docstring)."""
    if train_only not in (None, "head"):
        raise ConfigError(f"--train-only takes 'head' (the task's own layers); got '{train_only}'.")
    if train_only == "head" and not head:
        raise ConfigError("--train-only head: this task adds no head of its own; use --freeze-layers or LoRA instead.")
    counts = block_counts(model)
    if freeze_layers < 0 or (counts and freeze_layers > max(counts.values())):
        raise ConfigError(f"--freeze-layers must be between 0 and the number of blocks ({max(counts.values())}); got {freeze_layers}.")
    for name, param in model.named_parameters():
        part = part_of(name)
        frozen = (train_only == "head" and name.split(".")[0] not in head) \
            or (freeze_embeddings and part.kind == "embedding") \
            or (part.kind == "block" and part.block < freeze_layers)
        if frozen:
            param.requires_grad_(False)


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float) -> list[dict]:
    """AdamW parameter groups with an `lr_scale` per depth; matrices decay, biases and norms do not
    (the rule of loop/optim.py)."""
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"--layer-decay must be in (0, 1]; got {decay}.")
    counts = block_counts(model)  # depth: 0 embeddings, 1..L blocks bottom-up, L+1 the rest (anatomy.depth)
    top = top_depth(counts)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        level, decays = depth(name, counts), param.dim() >= 2
        group = groups.setdefault((level, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                    "lr_scale": decay ** (top - level)})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (a shared tensor counts once)."""
    params = dict(model.named_parameters())  # named_parameters skips repeated tensors
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in params.values())}

