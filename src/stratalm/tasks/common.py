"""Helpers the tasks share: the model's tokenizer and its special tokens, text -> ids, padding and
batching, moving a batch to the model, and carrying pretrained weights into a task's model.

They live here, below every task module, so that no task imports another: a task module imports
`base` (the Task API), this module, `data_files` (the readers) and lower levels only.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..checkpoint.weights import model_state
from ..errors import StratalmError
from ..tokenize import Tokenizer


# -- the tokenizer ------------------------------------------------------------------------------
def model_tokenizer(model: nn.Module) -> Tokenizer:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise StratalmError("this model has no tokenizer; fine-tune a folder that holds tokenizer.json.")
    return tokenizer


def has_template(tokenizer: Tokenizer) -> bool:
    """Whether tokenizer.json says how to add special tokens ([CLS] A [SEP] B [SEP] for BERT,
    <s> A </s></s> B </s> for RoBERTa). Tokenizers trained by stratalm have no template."""
    return tokenizer.backend.post_processor is not None


def start_end_ids(tokenizer: Tokenizer) -> tuple[Optional[int], Optional[int]]:
    """The tokens that open and close a sequence: [CLS]/[SEP] for encoders; a tokenizer without
    them (GPT-2's, a stratalm-trained one) falls back to <bos>/<eos>. None where neither exists."""
    start = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
    end = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    return start, end


def pad_id_of(tokenizer: Tokenizer) -> int:
    """The padding id: the tokenizer's (RoBERTa's position ids depend on it), else 0 (masked anyway).
    Whoever collates a batch passes it to `Task.collate`, so a task keeps no tokenizer state."""
    return tokenizer.pad_id if tokenizer.pad_id is not None else 0


# -- text -> ids ----------------------------------------------------------------------------------
def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]],
                 max_length: int) -> list[tuple[list[int], list[int]]]:
    """(ids, token types) of each text, or of each (text, pair) as [CLS] A [SEP] B [SEP] with types
    0 then 1, truncated to `max_length` by cutting the longer side first. The tokenizer's own
    template is used when it has one, else [CLS]/[SEP] (or <bos>/<eos>) are added here."""
    backend = tokenizer.backend
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    if has_template(tokenizer):
        backend.enable_truncation(max_length, strategy="longest_first")
        try:
            return [(e.ids, e.type_ids) for e in backend.encode_batch(inputs, add_special_tokens=True)]
        finally:
            backend.no_truncation()  # the tokenizer is shared: leave it as it was
    start, end = start_end_ids(tokenizer)
    wrap = [t for t in (start, end) if t is not None]
    a_ids = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    b_ids = [e.ids for e in backend.encode_batch(list(pairs), add_special_tokens=False)] if pairs is not None else None
    out = []
    for i, a in enumerate(a_ids):
        b = b_ids[i] if b_ids is not None else None
        budget = max_length - len(wrap) - (1 if b is not None and end is not None else 0)
        while len(a) + (len(b) if b is not None else 0) > max(budget, 0):
            if b is not None and len(b) >= len(a) and b:
                b = b[:-1]
            else:
                a = a[:-1]
        ids = ([start] if start is not None else []) + a + ([end] if end is not None else [])
        types = [0] * len(ids)
        if b is not None:
            tail = b + ([end] if end is not None else [])
            ids, types = ids + tail, types + [1] * len(tail)
        out.append((ids, types))
    return out


def is_chinese(texts: Iterable[str]) -> bool:
    """True when most non-space characters are CJK ideographs: QA switches to character F1 and
    seq2seq to sacrebleu's Chinese tokenisation, since Chinese words are not separated by spaces."""
    cjk = other = 0
    for text in texts:
        for ch in text:
            if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf":
                cjk += 1
            elif not ch.isspace():
                other += 1
    return cjk > 0.3 * (cjk + other)


# -- batches --------------------------------------------------------------------------------------
def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ints into a (B, T) tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def text_batch(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and token_type_ids of features that carry `ids` and `types`."""
    return {"input_ids": pad([f["ids"] for f in features], pad_id),
            "attention_mask": pad([[1] * len(f["ids"]) for f in features], 0),
            "token_type_ids": pad([f["types"] for f in features], 0)}


def by_length(features: list[dict[str, Any]], batch_size: int) -> Iterator[list[int]]:
    """Indices of `features` in batches of similar length (little padding), for inference."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs of `batch` on the model's device; token types only for models with segments
    (an embedding of them, or XLNet's relative segments)."""
    device = next(model.parameters()).device
    segments = model.config.type_vocab_size or model.config.relative_segments
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if segments else [])
    return {k: batch[k].to(device) for k in keys if k in batch}


# -- models ---------------------------------------------------------------------------------------
def copy_shared_weights(base: nn.Module, model: nn.Module) -> list[str]:
    """Copy every tensor of `base` that `model` also has (same name and shape); return the names of
    `model`'s tensors that got nothing (the new head). A task builds its model fresh from a changed
    config (heads added or dropped) and takes the pretrained body over this way."""
    source, target = model_state(base), model_state(model)
    fresh = []
    with torch.no_grad():
        for name, tensor in target.items():
            if name in source and source[name].shape == tensor.shape:
                tensor.copy_(source[name])
            else:
                fresh.append(name)
    return fresh
