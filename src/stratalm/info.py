"""`stratalm info`: what a checkpoint or preset is, and where its parameters sit."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch

from .models.anatomy import part_of


def component_of(name: str) -> str:
    """The component a parameter counts under ("encoder attention", "MLM head"): models/anatomy.py's label."""
    return part_of(name).label


def describe_model(model: torch.nn.Module) -> dict[str, Any]:
    c = model.config
    counts: "OrderedDict[str, int]" = OrderedDict()
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue  # a tied head is the embedding: counted once
        seen.add(id(param))
        component = component_of(name)
        counts[component] = counts.get(component, 0) + param.numel()
    return {
        "family": c.family, "stack": c.stack, "layers": c.n_layers, "d_model": c.d_model, "heads": c.n_heads,
        "kv_heads": c.kv_heads, "head_dim": c.dim_per_head, "d_ff": c.d_ff, "vocab_size": c.vocab_size,
        "context": c.max_seq_len, "position": c.position, "norm": f"{c.norm} ({c.norm_position})",
        "activation": c.activation + (" (gated)" if c.gated else ""), "tied_embeddings": c.tie_embeddings,
        "parameters": sum(counts.values()), "parameters_by_component": dict(counts),
        "tokenizer": getattr(getattr(model, "tokenizer", None), "vocab_size", None),
    }


def load_for_info(path_or_preset: str) -> torch.nn.Module:
    from .families import preset
    from .checkpoint import load
    from .models import build_model

    if os.path.exists(path_or_preset):
        return load(path_or_preset)
    with torch.device("meta"):  # shapes only: a 7B preset costs no memory
        return build_model(preset(path_or_preset))


def format_info(info: dict[str, Any]) -> str:
    lines = [f"{key:>16}: {value}" for key, value in info.items() if key != "parameters_by_component"]
    lines.append("      components:")
    for component, count in info["parameters_by_component"].items():
        lines.append(f"{component:>24}: {count:>14,}  ({100 * count / info['parameters']:.1f}%)")
    return "\n".join(lines)
