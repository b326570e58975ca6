"""Named points of every family's forward, and the hooks that watch or change them.

A stack calls its lens at each point (models/stack.py, layers/block.py, layers/attention.py,
layers/feedforward.py); with no lens attached the forward is the plain one. Names follow the
model's anatomy, the same for every family:

    embed                               the embedding output (after ALBERT/ELECTRA's projection)
    blocks.<i>.resid_pre                the residual stream entering block i (i = depth: ALBERT's
                                        shared block is reported once per depth)
    blocks.<i>.attn.{q,k,v}             per head, after rotary and the KV cache: (B, n, S, head_dim)
    blocks.<i>.attn.pattern             attention weights (B, heads, T, S)
    blocks.<i>.attn.z                   each head's output before the output projection (B, heads, T, head_dim)
    blocks.<i>.attn_out                 the attention sublayer's output (B, T, d_model)
    blocks.<i>.resid_mid                the stream after attention
    blocks.<i>.cross_attn.*, cross_attn_out, resid_mid_cross   the same for a decoder's cross-attention
    blocks.<i>.ff.hidden                the feed-forward activations (B, T, d_ff)
    blocks.<i>.ff_out, blocks.<i>.resid_post
    final_norm                          the stream after the final norm (stacks that have one)

T5 prefixes them with `encoder.` and `decoder.`; ELECTRA's training pair with `generator.` and
`discriminator.`. Patterns with `*` select several points (`blocks.*.attn.pattern`).
"""
from __future__ import annotations

import fnmatch
import re
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from ..errors import ConfigError, StratalmError
from ..models.anatomy import stacks as model_stacks

ATTENTION_POINTS = ("q", "k", "v", "pattern", "z")
Edit = Callable[[torch.Tensor], torch.Tensor]


def named_stacks(model: nn.Module) -> dict[str, nn.Module]:
    """Point-name prefix -> stack: "" for a model with one stack, "encoder." / "decoder." for T5."""
    out = {}
    for path, stack in model_stacks(model).items():
        prefix = path[:-len("stack")] if path.endswith("stack") else path + "."
        out[prefix] = stack
    return out


def point_names(model: nn.Module) -> list[str]:
    """Every point of `model`, in the order a forward reaches them."""
    names = []
    for prefix, stack in named_stacks(model).items():
        names.append(prefix + "embed")
        cross = bool(getattr(stack.blocks[0], "cross", False))
        for layer in range(len(stack.layer_plan)):
            block = f"{prefix}blocks.{layer}."
            names += [block + "resid_pre"] + [f"{block}attn.{p}" for p in ATTENTION_POINTS]
            names += [block + "attn_out", block + "resid_mid"]
            if cross:
                names += [f"{block}cross_attn.{p}" for p in ATTENTION_POINTS]
                names += [block + "cross_attn_out", block + "resid_mid_cross"]
            names += [block + "ff.hidden", block + "ff_out", block + "resid_post"]
        if stack.final_norm is not None:
            names.append(prefix + "final_norm")
    return names


def summarize_names(names: Iterable[str]) -> str:
    """The names with layer numbers folded into ranges: `blocks.{0-5}.attn.q, ...`."""
    layers: dict[str, list[int]] = {}
    for name in names:
        match = re.match(r"^(.*blocks\.)(\d+)(\..*)$", name)
        key = f"{match.group(1)}{{}}{match.group(3)}" if match else name
        layers.setdefault(key, []).append(int(match.group(2)) if match else -1)
    shown = [key.format(f"{{{min(v)}-{max(v)}}}") if "{}" in key else key for key, v in layers.items()]
    return ", ".join(shown)


def resolve(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """The points that `patterns` (names or `*` patterns) select, in forward order; an unknown one
    is an error that lists the valid names."""
    valid = point_names(model)
    chosen: set[str] = set()
    for pattern in patterns:
        found = [n for n in valid if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise ConfigError(f"this {model.config.family} model has no point '{pattern}'; its points are: "
                              f"{summarize_names(valid)}.")
        chosen.update(found)
    return [n for n in valid if n in chosen]


class Hooks:
    """What a lens does while attached: keep the `capture`d points (detached unless `keep_grad`)
    in `cache`, and pass each point named in `edits` through its function."""

    def __init__(self, capture: Iterable[str] = (), edits: Optional[dict[str, Edit]] = None,
                 keep_grad: bool = False) -> None:
        self.capture, self.edits, self.keep_grad = set(capture), dict(edits or {}), keep_grad
        self.cache: dict[str, torch.Tensor] = {}


class Tap:
    """The object a stack calls at its points (the protocol of layers/block.py)."""

    __slots__ = ("hooks", "prefix")

    def __init__(self, hooks: Hooks, prefix: str) -> None:
        self.hooks, self.prefix = hooks, prefix

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        full = self.prefix + name
        edit = self.hooks.edits.get(full)
        if edit is not None:
            x = edit(x)
        if full in self.hooks.capture:
            self.hooks.cache[full] = x if self.hooks.keep_grad else x.detach()
        return x

    def wants(self, name: str) -> bool:
        full = self.prefix + name
        return full in self.hooks.capture or full in self.hooks.edits

    def changes(self, name: str) -> bool:
        return self.prefix + name in self.hooks.edits

    def child(self, name: str) -> "Tap":
        return Tap(self.hooks, f"{self.prefix}{name}.")


@contextmanager
def attached(model: nn.Module, hooks: Hooks) -> Iterator[Hooks]:
    """`hooks` watch every stack of `model` while the block runs; the model is plain again after."""
    stacks = named_stacks(model)
    if any(stack.tap is not None for stack in stacks.values()):
        raise StratalmError("a lens is already attached to this model; run one trace at a time.")
    for prefix, stack in stacks.items():
        stack.tap = Tap(hooks, prefix)
    try:
        yield hooks
    finally:
        for stack in stacks.values():
            stack.tap = None
