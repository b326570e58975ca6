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

import re
from typing import Optional

from torch import nn

from ..errors import ConfigError

STACK_NAMES = ("stack", "encoder", "decoder")
EMBEDDING_PARTS = ("tok_embed", "positions", "token_types", "embed_norm", "embed_proj")
_BLOCK = re.compile(r"^(stack|encoder|decoder)\.blocks\.(\d+)\.")


def is_embedding(name: str) -> bool:
    stack, _, rest = name.partition(".")
    return stack in STACK_NAMES and rest.split(".")[0] in EMBEDDING_PARTS


def block_of(name: str) -> Optional[tuple[str, int]]:
    """(stack, block index) of a parameter inside a block, else None."""
    match = _BLOCK.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def freeze(model: nn.Module, head: list[str], train_only: Optional[str] = None, freeze_embeddings: bool = False,
           freeze_layers: int = 0) -> None:
    """Switch off gradients as the options say (see the module's docstring)."""
    if train_only not in (None, "head"):
        raise ConfigError(f"--train-only takes 'head' (the task's own layers); got '{train_only}'.")
    if train_only == "head" and not head:
        raise ConfigError("--train-only head: this task adds no head of its own; use --freeze-layers or LoRA instead.")
    blocks = {s: len(getattr(model, s).blocks) for s in STACK_NAMES if hasattr(getattr(model, s, None), "blocks")}
    if freeze_layers < 0 or (blocks and freeze_layers > max(blocks.values())):
        raise ConfigError(f"--freeze-layers must be between 0 and the number of blocks ({max(blocks.values())}); got {freeze_layers}.")
    for name, param in model.named_parameters():
        where = block_of(name)
        frozen = (train_only == "head" and name.split(".")[0] not in head) \
            or (freeze_embeddings and is_embedding(name)) \
            or (where is not None and where[1] < freeze_layers)
        if frozen:
            param.requires_grad_(False)


def depth(name: str, blocks: dict[str, int]) -> int:
    """0 for embeddings, 1..L for blocks bottom-up (an encoder below its decoder), L+1 for the rest."""
    if is_embedding(name):
        return 0
    where = block_of(name)
    total = sum(blocks.values())
    if where is None:
        return total + 1
    stack, index = where
    return index + 1 + (blocks.get("encoder", 0) if stack == "decoder" else 0)


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float) -> list[dict]:
    """AdamW parameter groups with an `lr_scale` per depth; matrices decay, biases and norms do not
    (the rule of train/optim.py)."""
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"--layer-decay must be in (0, 1]; got {decay}.")
    blocks = {s: len(getattr(model, s).blocks) for s in STACK_NAMES if hasattr(getattr(model, s, None), "blocks")}
    top = sum(blocks.values()) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        level, decays = depth(name, blocks), param.dim() >= 2
        group = groups.setdefault((level, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                    "lr_scale": decay ** (top - level)})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (a shared tensor counts once)."""
    params = dict(model.named_parameters())  # named_parameters skips repeated tensors
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in params.values())}

