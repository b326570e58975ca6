"""Sentence embeddings from any model: pooled hidden states, batched."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .config_fields import at_least, require
from .errors import ConfigError, StratalmError
from .precision import autocast, choose_precision

POOLINGS = ("mean", "cls", "last")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): the mean over real tokens, the first token, or the last real token."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    last = mask.sum(dim=1) - 1  # right padding: the last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _checked_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list of strings; one string is refused, since iterating it would embed each of its
    characters as a sentence."""
    if isinstance(texts, str):
        raise ConfigError("encode takes a list of texts, not one string (which it would read as one text per "
                          "character); pass [text].")
    try:
        texts = list(texts)
    except TypeError:
        raise ConfigError(f"encode takes a list of texts; got a {type(texts).__name__}.") from None
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"text {index} given to encode is {text!r}, not a string; give every text as a string.")
    return texts


@torch.inference_mode()
def encode(
    model: torch.nn.Module,
    texts: Sequence[str],
    pooling: str = "mean",
    batch_size: int = 32,
    normalize: bool = False,
    max_length: Optional[int] = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Embed `texts` as (N, d_model) vectors. Texts are sorted by length so each batch pads little;
    the result comes back in the input order. Long texts are truncated to the model's context.
    `precision` "bf16" (or "auto": bf16 on CUDA and AMX CPUs) runs the products under bf16
    autocast: all-MiniLM-L6-v2's embeddings of the 872 SST-2 dev sentences kept a cosine of at
    least 0.99995 with fp32's (mean 0.999985), but on a CPU without AMX bf16 took 3.6x as long.
    fp32, the default, matches transformers to 1e-6."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got '{pooling}'.")
    texts = _checked_texts(texts)
    require("batch_size", batch_size, at_least(1))
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise StratalmError("this model has no tokenizer; load it from a folder that holds tokenizer.json.")
    model.eval()
    device = next(model.parameters()).device
    precision, _ = choose_precision(precision, device.type)
    limit = min(max_length or model.config.max_seq_len, model.config.max_seq_len)
    ids = tokenizer.encode_batch(list(texts), add_special_tokens=True, max_length=limit)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    out = torch.empty(len(ids), model.config.d_model)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        width = max(len(ids[i]) for i in chosen)
        batch = torch.full((len(chosen), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, i in enumerate(chosen):
            batch[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        batch, mask = batch.to(device), mask.to(device)
        with autocast(precision, device.type):
            hidden = model(batch, attention_mask=mask).last_hidden_state
        out[chosen] = pool(hidden, mask, pooling).float().cpu()
    return F.normalize(out, dim=-1) if normalize else out
