"""Autoregressive decoding with a KV cache: the prompt runs once, then one token per step.

A step multiplies a few token vectors by every weight matrix, so it is bound by reading the weights;
layers/linear.py gives those few-row products the fast CPU path."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from ..errors import InputTooLongError, StratalmError


def pick_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Choose one token per row of `logits` (B, V): argmax at temperature 0, else sample."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def stream_tokens(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    eos_id: Optional[int] = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until `max_new_tokens` or every row has produced
    `eos_id` (rows that finished keep yielding eos).

    When the text outgrows the context, the oldest half is dropped and the rest runs through the
    model again (positions restart from 0), as nanoGPT's sampler crops to the last block.
    """
    B, T = input_ids.shape
    context = model.config.max_seq_len
    if T > context:
        raise InputTooLongError(f"the prompt is {T} tokens but the model's context is {context}; shorten the prompt.")
    device = next(model.parameters()).device
    window = input_ids.to(device)  # the tokens the cache holds
    cache_len = min(context, T + max_new_tokens)
    cache = model.new_cache(B, cache_len)
    logits = model(window, cache=cache, logits_to_keep=1).logits[:, -1]  # prefill: (B, V)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = pick_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        yield token
        if bool(finished.all()) or step == max_new_tokens - 1:
            return
        window = torch.cat([window, token[:, None]], dim=1)
        if cache.length < cache_len:
            logits = model(token[:, None], cache=cache, logits_to_keep=1).logits[:, -1]
        else:  # the cache is full: keep the newest half of the context and run it again
            window = window[:, -max(1, context // 2):]
            cache = model.new_cache(B, cache_len)
            logits = model(window, cache=cache, logits_to_keep=1).logits[:, -1]


def generate(
    model: torch.nn.Module,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    on_text: Optional[Callable[[str], None]] = None,
) -> str:
    """Continue `prompt` and return the new text (not the prompt). `on_text` receives the text as
    it is produced, piece by piece; greedy when temperature is 0; stops at the end-of-text token."""
    if model.config.stack != "decoder":
        raise StratalmError(
            f"generate continues text with a decoder model; this is a {model.config.family} {model.config.stack} model."
        )
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise StratalmError("this model has no tokenizer; load it from a checkpoint folder that holds tokenizer.json.")
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:  # an empty prompt starts a new document, which the corpus separates with eos
        ids = [tokenizer.eos_id if tokenizer.eos_id is not None else 0]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    new_ids: list[int] = []
    shown = ""
    for token in stream_tokens(model, torch.tensor([ids]), max_new_tokens, temperature, top_k, top_p, generator, tokenizer.eos_id):
        if tokenizer.eos_id is not None and int(token[0]) == tokenizer.eos_id:
            break
        new_ids.append(int(token[0]))
        text = tokenizer.decode(new_ids)
        # Hold back a piece that ends inside a multi-byte character until the character completes.
        if on_text is not None and not text.endswith("\ufffd"):
            on_text(text[len(shown):])
            shown = text
    text = tokenizer.decode(new_ids)
    if on_text is not None and len(text) > len(shown):
        on_text(text[len(shown):])
    return text
