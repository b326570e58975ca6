"""LoRA (Hu et al. 2021): a frozen matrix W plus a trained low-rank update (alpha / r) B A.

Targets name projections of every attention and feed-forward layer: q, k, v, o (attention; also
the decoder's cross-attention), gate, up, down (feed-forward; gate only in gated layers). stratalm
fuses q/k/v into one `qkv` matrix (and gate/up into one `up`), so an adapter covers the rows of its
projection only: adapting q and v of a fused qkv leaves the k rows exactly as they were, as LoRA on
separate q_proj/v_proj matrices would. B starts at zero, so training starts from the base model.

Adapters are saved apart from the base weights (adapter.safetensors + adapter_config.json, which
may name the base instead of a copy of it: checkpoint/base_reference.py) and can be merged into
them (`merge_lora`, or tasks/folder.py's folder-level `merge`), after which the model is a plain
model again, with the same outputs. Loading a folder (checkpoint.load) applies its adapter, so no
loader sees the bare base.
"""
from __future__ import annotations

import copy
import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..layers.attention import Attention
from ..layers.feedforward import FeedForward

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self) -> None:
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"unknown LoRA target '{(unknown or [''])[0]}'; choose from {', '.join(TARGETS)} (comma-separated).")
        if self.rank < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("--lora-rank must be at least 1 and --lora-dropout in [0, 1).")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def parse_targets(cls, text: str) -> tuple[str, ...]:
        return tuple(t.strip() for t in text.split(",") if t.strip())


class LoRALinear(nn.Module):
    """A linear layer whose rows [start, end) of each named part get their own A (r x in) and
    B (rows x r). The base weight and bias keep their names (`weight`, `bias`), so the model's
    state dict still matches its config; the adapters add `lora_A.<part>` and `lora_B.<part>`."""

    def __init__(self, base: nn.Linear, parts: dict[str, tuple[int, int]], config: LoraConfig) -> None:
        super().__init__()
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: nothing is copied
        self.parts, self.scale, self.dropout = parts, config.scale, config.dropout
        device = base.weight.device
        self.lora_A = nn.ParameterDict({p: nn.Parameter(torch.empty(config.rank, base.in_features, device=device))
                                        for p in parts})
        self.lora_B = nn.ParameterDict({p: nn.Parameter(torch.zeros(end - start, config.rank, device=device))
                                        for p, (start, end) in parts.items()})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialise A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        h = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        for part, (start, end) in self.parts.items():
            y[..., start:end] += self.scale * F.linear(F.linear(h, self.lora_A[part]), self.lora_B[part])
        return y

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with W + scale * B A in each adapted slice."""
        out = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None, device="meta")
        weight = self.weight.detach().clone()
        for part, (start, end) in self.parts.items():
            weight[start:end] += self.scale * (self.lora_B[part] @ self.lora_A[part]).detach()
        out.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        out.bias = self.bias
        return out

    def plain(self) -> nn.Linear:
        """The base layer alone, sharing this layer's weight and bias."""
        out = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None, device="meta")
        out.weight, out.bias = self.weight, self.bias
        return out


def _sites(module: nn.Module, targets: tuple[str, ...]) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """(attribute name, parts) of each linear layer of `module` that the targets adapt."""
    if isinstance(module, Attention):
        q, kv = module.n_heads * module.head_dim, module.n_kv_heads * module.head_dim
        if module.cross:
            if "q" in targets:
                yield "q", {"q": (0, q)}
            parts = {p: span for p, span in (("k", (0, kv)), ("v", (kv, 2 * kv))) if p in targets}
            if parts:
                yield "kv", parts
        else:
            parts = {p: span for p, span in (("q", (0, q)), ("k", (q, q + kv)), ("v", (q + kv, q + 2 * kv))) if p in targets}
            if parts:
                yield "qkv", parts
        if "o" in targets:
            yield "out", {"o": (0, module.out.out_features)}
    elif isinstance(module, FeedForward):
        d_ff = module.down.in_features
        spans = (("gate", (0, d_ff)), ("up", (d_ff, 2 * d_ff))) if module.gated else (("up", (0, d_ff)),)
        parts = {p: span for p, span in spans if p in targets}
        if parts:
            yield "up", parts
        if "down" in targets:
            yield "down", {"down": (0, module.down.out_features)}


def add_lora(model: nn.Module, config: LoraConfig) -> int:
    """Wrap the targeted projections of every attention and feed-forward layer; returns how many
    linear layers got adapters. Only the adapters are trainable afterwards (the caller unfreezes
    the task head)."""
    for param in model.parameters():
        param.requires_grad_(False)
    wrapped, found = 0, set()
    for module in list(model.modules()):
        for attribute, parts in _sites(module, config.targets):
            setattr(module, attribute, LoRALinear(getattr(module, attribute), parts, config))
            found.update(parts)
            wrapped += 1
    missing = [t for t in config.targets if t not in found]
    if missing:
        raise ConfigError(f"this model has no '{missing[0]}' projection to adapt (gate exists only in gated "
                          f"feed-forward layers); choose LoRA targets from {', '.join(sorted(found) or TARGETS)}.")
    return wrapped


def _lora_layers(model: nn.Module) -> Iterator[tuple[nn.Module, str, LoRALinear]]:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                yield module, name, child


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base matrix, in place; the model becomes a plain model."""
    for parent, name, layer in _lora_layers(model):
        setattr(parent, name, layer.merged())
    return model


@contextmanager
def without_lora(model: nn.Module):
    """The base model (adapters detached) for as long as the block runs: its state dict is the
    base weights under their usual names, as a checkpoint folder needs."""
    layers = list(_lora_layers(model))
    for parent, name, layer in layers:
        setattr(parent, name, layer.plain())
    try:
        yield model
    finally:
        for parent, name, layer in layers:
            setattr(parent, name, layer)


def has_lora_layers(model: nn.Module) -> bool:
    return any(True for _ in _lora_layers(model))


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with the adapters merged (the training model keeps them)."""
    tokenizer, model.tokenizer = getattr(model, "tokenizer", None), None
    try:
        copied = copy.deepcopy(model)
    finally:
        model.tokenizer = tokenizer
    copied.tokenizer = tokenizer
    return merge_lora(copied)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if ".lora_" in n}


def save_adapter(model: nn.Module, folder: str, config: LoraConfig, weights: Optional[dict[str, torch.Tensor]] = None,
                 extra: Optional[dict[str, Any]] = None) -> None:
    """adapter.safetensors (the adapters, plus `weights`: those the folder keeps besides them, as
    PEFT keeps `modules_to_save`) and adapter_config.json (the LoRA settings, plus `extra` keys)."""
    tensors = {**adapter_state(model), **{k: v.detach().cpu().contiguous() for k, v in (weights or {}).items()}}
    save_file(tensors, os.path.join(folder, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(folder, ADAPTER_CONFIG), "w") as handle:
        json.dump({**asdict(config), "targets": list(config.targets), **(extra or {})}, handle, indent=2)


def has_adapter(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ADAPTER_CONFIG))


def _corrupt(folder: str, exc: Exception) -> CheckpointError:
    return CheckpointError(f"the LoRA adapter in '{folder}' is missing or corrupt ({str(exc)[:80]}).")


def read_adapter_config(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, ADAPTER_CONFIG)) as handle:
            values = json.load(handle)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise _corrupt(folder, exc) from None
    return values


def read_adapter_tensors(folder: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(os.path.join(folder, ADAPTER_WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise _corrupt(folder, exc) from None


def load_adapter(model: nn.Module, folder: str) -> LoraConfig:
    """Wrap `model` as the saved adapter config says and load the adapter weights into it (the
    other weights adapter.safetensors may hold are the model's own, loaded with it)."""
    values = read_adapter_config(folder)
    try:
        config = LoraConfig(rank=int(values["rank"]), alpha=float(values["alpha"]), dropout=float(values["dropout"]),
                            targets=tuple(values["targets"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(folder, exc) from None
    tensors = {k: v for k, v in read_adapter_tensors(folder).items() if ".lora_" in k}
    add_lora(model, config)
    expected = adapter_state(model)
    if set(expected) != set(tensors) or any(tensors[k].shape != expected[k].shape for k in tensors):
        raise CheckpointError(f"the LoRA adapter in '{folder}' does not match its model; fine-tune it again.")
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(device))
    return config
