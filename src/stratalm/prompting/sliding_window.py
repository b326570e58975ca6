"""Perplexity of a decoder over a text, with the sliding window of the `transformers` perplexity
guide: windows of `max_length` tokens start every `stride` tokens, and each scores only the tokens
no earlier window scored, so every token but the first is predicted from up to
max_length - stride tokens of context (stride = max_length: disjoint windows, the fastest and
least context).

The text is read after the end-of-text token (as a document follows one in pretraining), so every
token of the text is scored and bits per byte cover the whole text; `prefix=False` feeds the text
alone, as the guide does, and its first token goes unscored.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError, DataError, StratalmError
from ..tasks.common import model_tokenizer


def document_start(tokenizer) -> int:
    """The token a document follows: end-of-text, which separates documents in pretraining
    (data/prepare.py) as GPT-2's <|endoftext|> does, else beginning-of-text."""
    token = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
    if token is None:
        raise StratalmError("the tokenizer has neither an end- nor a beginning-of-text token to read the text after; "
                            "pass --no-prefix.")
    return token


def read_text(path: str) -> str:
    if not os.path.isfile(path):
        raise DataError(f"text file '{path}' does not exist.")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text; convert it to UTF-8.") from None
    if not text.strip():
        raise DataError(f"'{path}' is empty; give a file with some text.")
    return text


def windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `n_tokens`, as in the guide: a
    window scores tokens from where the previous one ended (position 0 is never scored)."""
    out, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        out.append((begin, end, max(previous_end, begin + 1)))
        previous_end = end
        if end == n_tokens:
            break
    return out


def check_window(stride: Optional[int], max_length: Optional[int], context: int) -> tuple[int, int]:
    """(max_length, stride), defaults filled in: the model's context, and half of it."""
    max_length = context if max_length is None else max_length
    if not 2 <= max_length <= context:
        raise ConfigError(f"--max-length must be between 2 and the model's context of {context}; got {max_length}.")
    stride = max(1, max_length // 2) if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ConfigError(f"--stride must be between 1 and the window of {max_length} tokens; got {stride}.")
    return max_length, stride


@torch.inference_mode()
def perplexity(model: nn.Module, text: str, stride: Optional[int] = None, max_length: Optional[int] = None,
               batch_size: int = 8, prefix: bool = True, progress: bool = False) -> dict[str, Any]:
    """Mean token loss (nats), perplexity and bits per byte of `text` under a decoder (module notes)."""
    if model.config.stack != "decoder":
        raise StratalmError(f"perplexity needs a decoder (gpt2, llama); this is a {model.config.family} "
                            f"{model.config.stack} model.")
    tokenizer = model_tokenizer(model)
    ids = ([document_start(tokenizer)] if prefix else []) + tokenizer.encode(text)
    if len(ids) < 2:
        raise DataError("the text encodes to fewer than two tokens, so there is nothing to predict; give a longer text.")
    max_length, stride = check_window(stride, max_length, model.config.max_seq_len)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1; got {batch_size}.")
    spans = windows(len(ids), max_length, stride)
    device = next(model.parameters()).device
    tokens = torch.tensor(ids)
    nll, scored = 0.0, 0
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:  # windows of one length run together
        groups.setdefault(span[1] - span[0], []).append(span)
    bar = tqdm(total=len(spans), desc="perplexity", unit="window", disable=not progress)
    for length, group in groups.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            batch = torch.stack([tokens[b:e] for b, e, _ in chunk]).to(device)  # (B, length)
            targets = batch[:, 1:].clone()
            for row, (begin, _, first) in enumerate(chunk):
                targets[row, :first - begin - 1] = -100  # scored by an earlier window (or never)
            logits = model(batch).logits[:, :-1]
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum")
            nll += float(loss)
            scored += int((targets != -100).sum())
            bar.update(len(chunk))
    bar.close()
    mean = nll / scored
    n_bytes = len(text.encode("utf-8"))
    return {"tokens": scored, "bytes": n_bytes, "loss": mean, "perplexity": math.exp(mean),
            "bits_per_byte": nll / math.log(2) / n_bytes, "max_length": max_length, "stride": stride,
            "windows": len(spans), "prefix": prefix}
