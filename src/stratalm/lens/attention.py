"""What each head attends to: the maps of every layer and head, and per-head statistics —
entropy, mean attended distance, the share of attention on special tokens ([CLS], [SEP], BOS, EOS:
Clark et al. 2019 found many BERT heads parked there) and on the token itself."""
from __future__ import annotations

import torch
from torch import nn

from .points import named_stacks
from .trace import TextInputs, trace

STATISTICS = ("entropy", "distance", "special", "self")


def special_ids(model: nn.Module) -> set[int]:
    tokenizer = model.tokenizer
    return {i for i in (tokenizer.cls_id, tokenizer.sep_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
            if i is not None}


def head_statistics(pattern: torch.Tensor, key_ids: list[int], specials: set[int], self_attention: bool = True
                    ) -> dict[str, torch.Tensor]:
    """Statistics of one example's attention (heads, T, S), each (heads,), averaged over queries:
    entropy in nats, mean |query - key| distance, weight on special keys, weight on the query's own
    position. Cross-attention has no distance or self (NaN)."""
    p = pattern.float().clamp_min(0)
    heads, T, S = p.shape
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean(-1)
    special_keys = torch.tensor([i in specials for i in key_ids], dtype=torch.bool)
    special = p[..., special_keys].sum(-1).mean(-1) if special_keys.any() else torch.zeros(heads)
    if self_attention and T == S:
        offsets = (torch.arange(T)[:, None] - torch.arange(S)[None, :]).abs().float()  # (T, S)
        distance = (p * offsets).sum(-1).mean(-1)
        own = p.diagonal(dim1=-2, dim2=-1).mean(-1)
    else:
        distance = own = torch.full((heads,), float("nan"))
    return {"entropy": entropy, "distance": distance, "special": special, "self": own}


def attention_maps(model: nn.Module, inputs: TextInputs) -> dict[str, dict[str, torch.Tensor]]:
    """Stack name ("stack", "encoder", "decoder") -> {"self": (L, H, T, T), "cross": (L, H, T, S)
    for a decoder with cross-attention} of the first example."""
    stacks = named_stacks(model)
    points = [f"{prefix}blocks.*.{kind}.pattern" for prefix, stack in stacks.items()
              for kind in (("attn", "cross_attn") if getattr(stack.blocks[0], "cross", False) else ("attn",))]
    captured = trace(model, inputs, points).cache
    maps: dict[str, dict[str, torch.Tensor]] = {}
    for prefix, stack in stacks.items():
        name = prefix.rstrip(".") or "stack"
        layers = range(len(stack.layer_plan))
        maps[name] = {"self": torch.stack([captured[f"{prefix}blocks.{i}.attn.pattern"][0] for i in layers])}
        if getattr(stack.blocks[0], "cross", False):
            maps[name]["cross"] = torch.stack([captured[f"{prefix}blocks.{i}.cross_attn.pattern"][0] for i in layers])
    return maps


def attention_statistics(model: nn.Module, inputs: TextInputs, maps: dict[str, dict[str, torch.Tensor]]
                         ) -> dict[str, dict[str, torch.Tensor]]:
    """Stack name -> statistic -> (L, H), from the self-attention maps of `attention_maps`."""
    specials, out = special_ids(model), {}
    for name, kinds in maps.items():
        per_layer = [head_statistics(layer, inputs.ids[name], specials) for layer in kinds["self"]]
        out[name] = {stat: torch.stack([row[stat] for row in per_layer]) for stat in STATISTICS}
    return out
