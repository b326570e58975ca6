"""`stratalm info`: what a checkpoint or preset is, and where its parameters sit."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch

# Parts of a stack (after "stack.", "encoder." or "decoder.") and heads; the first match wins.
STACK_PARTS = [
    ("tok_embed", "embeddings"), ("positions", "embeddings"), ("token_types", "embeddings"),
    ("embed_norm", "embeddings"), ("embed_proj", "embeddings"), ("rel_bias", "position bias"),
    ("final_norm", "final norm"),
]
BLOCK_PARTS = [("attn.", "attention"), ("cross_attn.", "cross-attention"), ("ff.", "feed-forward"), ("", "block norms")]
HEADS = [("lm_head", "LM head"), ("mlm_head", "MLM head"), ("pooler", "pooler"), ("nsp_head", "next-sentence head"),
         ("rtd_head", "replaced-token head"), ("classifier", "classifier"),
         ("token_classifier", "token classifier"), ("qa_head", "span QA head")]
STACKS = {"stack": "", "encoder": "encoder ", "decoder": "decoder "}


def component_of(name: str) -> str:
    stack, _, rest = name.partition(".")
    if stack not in STACKS:
        return next((label for prefix, label in HEADS if name.startswith(prefix)), "other")
    if rest.startswith("blocks."):
        inner = rest.split(".", 2)[2]  # blocks.<i>.<inner>
        part = next(label for key, label in BLOCK_PARTS if inner.startswith(key))
    else:
        part = next((label for key, label in STACK_PARTS if rest.startswith(key)), "other")
    return STACKS[stack] + part


def describe_model(model: torch.nn.Module) -> dict[str, Any]:
    c = model.config
    counts: "OrderedDict[str, int]" = OrderedDict()
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue  # a tied head is the embedding: counted once
        seen.add(id(param))
        counts[component_of(name)] = counts.get(component_of(name), 0) + param.numel()
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
    from .io import load
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
