"""Log-likelihood of an answer given a prompt, for each family.

- Decoders score a (context, continuation) pair exactly as lm-evaluation-harness does: trailing
  whitespace of the context moves onto the continuation, context and whole string are encoded, and
  the continuation's tokens are whole[len(context):] (a BPE merge across the boundary then belongs
  to the continuation). An empty context is replaced by its prefix token (bos, else eos). The input is the
  last max_seq_len tokens of context + continuation minus its final token.
- Encoder-decoders (T5) read the context (+ eos) and score the continuation (+ eos) as the target,
  as lm-evaluation-harness scores seq2seq models.
- Masked-LM encoders score a cloze: the answer's tokens fill a slot of the text and each of them is
  masked in turn, its log-probability summed (pseudo-log-likelihood, Salazar et al. 2020; a
  one-token answer is PET's single [MASK]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import InputTooLongError, StratalmError
from ..tasks.common import has_template, model_tokenizer, pad, pad_id_of, start_end_ids
from ..tokenize import Tokenizer


@dataclass
class Score:
    logprob: float  # sum of the answer tokens' log-probabilities
    greedy: bool  # whether every answer token was the model's most likely one
    tokens: int  # answer tokens scored


def prefix_token(tokenizer: Tokenizer) -> int:
    """The token a decoder reads before an empty context: lm-evaluation-harness's prefix token,
    beginning-of-text when the tokenizer has one, else end-of-text (GPT-2's <|endoftext|>)."""
    token = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if token is None:
        raise StratalmError("the tokenizer has neither a beginning- nor an end-of-text token, so an empty context "
                            "cannot be scored; give every example some context.")
    return token


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) by lm-evaluation-harness's boundary rule (module notes)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [prefix_token(tokenizer)], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def _batches(lengths: Sequence[int], batch_size: int, progress: bool = False) -> Iterator[list[int]]:
    """Indices in batches of similar length, longest first (a memory error shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
        yield order[start:start + batch_size]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _gather(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: sum of log p(target) and whether each target was the argmax; targets -100 count not."""
    logp = F.log_softmax(logits.float(), dim=-1)
    real = targets != -100
    safe = targets.clamp(min=0)
    picked = logp.gather(-1, safe[..., None])[..., 0].masked_fill(~real, 0.0)
    greedy = (logp.argmax(dim=-1) == safe) | ~real
    return picked.sum(dim=-1), greedy.all(dim=-1)


@torch.inference_mode()
def decoder_loglikelihood(model: nn.Module, pairs: Sequence[tuple[str, str]], batch_size: int = 16, progress: bool = False) -> list[Score]:
    """log p(continuation | context) of each pair with a decoder (module notes for the rule)."""
    tokenizer, limit = model_tokenizer(model), model.config.max_seq_len
    encoded = [encode_pair(tokenizer, context, continuation) for context, continuation in pairs]
    if any(not cont for _, cont in encoded):
        raise StratalmError("a continuation encodes to no tokens; give every answer some text.")
    if any(len(cont) > limit for _, cont in encoded):
        raise InputTooLongError(f"an answer is longer than the model's context of {limit} tokens; shorten it.")
    inputs = [(ctx + cont)[-(limit + 1):][:-1] for ctx, cont in encoded]  # lm-evaluation-harness's window
    scores: list[Optional[Score]] = [None] * len(pairs)
    device = _device(model)
    for rows in _batches([len(x) for x in inputs], batch_size, progress):
        width, keep = max(len(inputs[i]) for i in rows), max(len(encoded[i][1]) for i in rows)
        # Left padding puts every row's last token in the last column, so the head runs on the
        # last `keep` positions only; position ids count real tokens.
        ids = torch.full((len(rows), width), pad_id_of(tokenizer), dtype=torch.long)
        mask = torch.zeros_like(ids)
        targets = torch.full((len(rows), keep), -100, dtype=torch.long)
        for r, i in enumerate(rows):
            row, cont = inputs[i], encoded[i][1]
            ids[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
            targets[r, keep - len(cont):] = torch.tensor(cont)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=keep).logits
        total, greedy = _gather(logits, targets.to(device))
        for r, i in enumerate(rows):
            scores[i] = Score(float(total[r]), bool(greedy[r]), len(encoded[i][1]))
    return scores


def with_end(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of `text` closed as T5 reads and writes it: the tokenizer's template (T5's adds </s>),
    else the end token appended."""
    if has_template(tokenizer):
        return tokenizer.encode(text, add_special_tokens=True)
    end = tokenizer.eos_id
    return tokenizer.encode(text) + ([end] if end is not None else [])


@torch.inference_mode()
def seq2seq_loglikelihood(model: nn.Module, pairs: Sequence[tuple[str, str]], batch_size: int = 16, progress: bool = False) -> list[Score]:
    """log p(continuation + eos | context) of each pair with an encoder-decoder; the context's
    trailing whitespace moves onto the continuation as for decoders, and a too-long context loses
    its first tokens."""
    tokenizer, limit = model_tokenizer(model), model.config.max_seq_len
    sources, targets = [], []
    for context, continuation in pairs:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        sources.append(with_end(tokenizer, context)[-limit:])
        targets.append(with_end(tokenizer, continuation))
    scores: list[Optional[Score]] = [None] * len(pairs)
    device, pad_id = _device(model), pad_id_of(tokenizer)
    for rows in _batches([len(s) + len(t) for s, t in zip(sources, targets)], batch_size, progress):
        ids = pad([sources[i] for i in rows], pad_id)
        mask = pad([[1] * len(sources[i]) for i in rows], 0)
        labels = pad([targets[i] for i in rows], -100)
        logits = model(ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).logits
        total, greedy = _gather(logits, labels.to(device))
        for r, i in enumerate(rows):
            scores[i] = Score(float(total[r]), bool(greedy[r]), len(targets[i]))
    return scores


def _cloze_ids(tokenizer: Tokenizer, left: str, answer: str, right: str, limit: int) -> tuple[list[int], list[int], list[int]]:
    """(ids, token types, positions of the answer's tokens) of `left + answer + right` wrapped as
    the encoder reads a text; the answer's tokens are those whose characters overlap it."""
    text = left + answer + right
    start, end = len(left), len(left) + len(answer)
    encoding = tokenizer.backend.encode(text, add_special_tokens=True)
    ids, types, offsets = list(encoding.ids), list(encoding.type_ids), list(encoding.offsets)
    special = list(encoding.special_tokens_mask)
    if not has_template(tokenizer):  # stratalm tokenizers: [CLS]/<bos> ... [SEP]/<eos> as encode_texts adds
        first, last = start_end_ids(tokenizer)
        head, tail = [first] if first is not None else [], [last] if last is not None else []
        ids, types = head + ids + tail, [0] * (len(head) + len(ids) + len(tail))
        offsets, special = [(0, 0)] * len(head) + offsets + [(0, 0)] * len(tail), [1] * len(head) + special + [1] * len(tail)
    slot = [i for i, ((a, b), s) in enumerate(zip(offsets, special)) if not s and a < end and b > start]
    if not slot:
        raise StratalmError(f"the answer '{answer}' encodes to no tokens in its slot; give every answer some text.")
    if len(ids) > limit:  # drop the oldest context (after the opening token), as decoders do
        cut = len(ids) - limit
        if slot[0] - 1 < cut:
            raise InputTooLongError(f"the text after the answer's slot leaves no room in the model's context of {limit} "
                                    f"tokens; shorten the template after [MASK].")
        ids, types = ids[:1] + ids[1 + cut:], types[:1] + types[1 + cut:]
        slot = [i - cut for i in slot]
    return ids, types, slot


@torch.inference_mode()
def cloze_loglikelihood(model: nn.Module, items: Sequence[tuple[str, str, str]], batch_size: int = 32,
                        progress: bool = False) -> list[Score]:
    """Pseudo-log-likelihood of each answer in its slot: items are (text before the slot, answer,
    text after it). A masked-LM encoder is needed."""
    config = model.config
    if config.stack != "encoder" or getattr(model, "mlm_head", None) is None:
        raise StratalmError(f"cloze scoring needs an encoder with a masked-LM head; this {config.family} "
                            f"{config.stack} model has none.")
    tokenizer = model_tokenizer(model)
    if tokenizer.mask_id is None:
        raise StratalmError("this model's tokenizer has no mask token, so it cannot score a cloze.")
    # One row per (item, answer token): that token masked, the others in place.
    rows: list[tuple[int, list[int], list[int], int, int]] = []  # (item, ids, types, position, true token)
    for index, (left, answer, right) in enumerate(items):
        ids, types, slot = _cloze_ids(tokenizer, left, answer, right, config.max_seq_len)
        for position in slot:
            masked = list(ids)
            masked[position] = tokenizer.mask_id
            rows.append((index, masked, types, position, ids[position]))
    totals, greedy, counts = [0.0] * len(items), [True] * len(items), [0] * len(items)
    device, pad_id = _device(model), pad_id_of(tokenizer)
    for batch in _batches([len(r[1]) for r in rows], batch_size, progress):
        chosen = [rows[i] for i in batch]
        inputs = {"input_ids": pad([r[1] for r in chosen], pad_id).to(device),
                  "attention_mask": pad([[1] * len(r[1]) for r in chosen], 0).to(device)}
        if config.type_vocab_size:
            inputs["token_type_ids"] = pad([r[2] for r in chosen], 0).to(device)
        hidden = model(**inputs).last_hidden_state
        at = hidden[torch.arange(len(chosen), device=device), torch.tensor([r[3] for r in chosen], device=device)]
        # The head is called directly: a model with other heads too returns their logits first.
        total, best = _gather(model.mlm_head(at)[:, None], torch.tensor([r[4] for r in chosen], device=device)[:, None])
        for r, row in enumerate(chosen):
            totals[row[0]] += float(total[r])
            greedy[row[0]] &= bool(best[r])
            counts[row[0]] += 1
    return [Score(t, g, c) for t, g, c in zip(totals, greedy, counts)]
