"""Autoregressive decoding with a KV cache: the prompt runs once, then one token per step.

A step multiplies a few token vectors by every weight matrix, so it is bound by reading the weights;
layers/linear.py gives those few-row products the fast CPU path, and greedy decoding can find the
largest logit reading a quarter of the head (shortlist.py). Text in, text out (prompts, stop
strings, echo, several samples) is text.py's `generate`."""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from ..errors import InputTooLongError
from ..layers.linear import run_step
from .shortlist import can_shortlist, greedy_step


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


def seen_tokens(ids: torch.Tensor, vocab_size: int, real: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, V) bools: which tokens each row of `ids` (B, T) holds, counting only where `real` is true
    (padding is not a token the text repeats)."""
    if real is not None:
        ids = ids.masked_fill(~real.bool(), vocab_size)  # padding goes to a spare column, dropped below
    seen = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    return seen.scatter_(1, ids, True)[:, :vocab_size]


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), in the form `transformers` uses: the logit of a
    token already in the text is divided by `penalty` when positive and multiplied by it when
    negative, so a penalty above 1 makes it less likely either way (1 changes nothing)."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


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
    repetition_penalty: float = 1.0,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until `max_new_tokens` or every row has produced
    `eos_id` (rows that finished keep yielding eos). `repetition_penalty` (see `penalize_repeats`)
    counts every token of the prompt and of what was generated since.

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
    step_key = (B, device.type, next(model.parameters()).dtype, model.config.d_model, model.config.n_layers,
                model.config.vocab_size)
    seen = seen_tokens(window, logits.shape[-1]) if repetition_penalty != 1.0 else None
    # Greedy decoding needs only the largest logit, which a shortlist finds reading less (shortlist.py).
    by_shortlist = temperature <= 0 and seen is None and can_shortlist(model)
    for step in range(max_new_tokens):
        if seen is not None:
            logits = penalize_repeats(logits, seen, repetition_penalty)
        token = pick_next(logits, temperature, top_k, top_p, generator)
        if seen is not None:
            seen[torch.arange(B, device=device), token] = True
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        yield token
        if bool(finished.all()) or step == max_new_tokens - 1:
            return
        window = torch.cat([window, token[:, None]], dim=1)
        if cache.length < cache_len:
            def decode_step(token=token):
                return model(token[:, None], cache=cache, logits_to_keep=1).logits[:, -1]

            if not by_shortlist:
                logits = run_step(step_key, decode_step, model)  # the few-row products on this machine's faster path
            else:
                def last_hidden(token=token):
                    return model.stack(token[:, None], cache=cache)[0][:, -1]

                logits = greedy_step(step_key, model, decode_step, last_hidden)
        else:  # the cache is full: keep the newest half of the context and run it again
            window = window[:, -max(1, context // 2):]
            cache = model.new_cache(B, cache_len)
            logits = model(window, cache=cache, logits_to_keep=1).logits[:, -1]
