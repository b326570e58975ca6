"""Greedy and beam-search decoding for decoders (continue a prompt) and encoder-decoders
(translate a source), batched, through the KV cache.

A decoder's prompts are padded on the left, so every row's next token sits in the last column and
one cached step serves the whole batch; position ids count real tokens only. An encoder-decoder
runs its encoder once and starts every row from `decoder_start_token_id`.

Beam search follows the common recipe (as in `transformers` with early_stopping=True): each step
ranks the 2k best continuations of a row's k beams; a continuation that ends with eos and ranks
within the top k becomes a finished hypothesis, the best k others stay in the beam; a row is done
once it has k finished hypotheses. The winner has the best score / length ** length_penalty,
where the score is the sum of the tokens' log-probabilities (eos included) and the length counts
the generated tokens. A repetition penalty (sampling.py's `penalize_repeats`) changes the logits
before the log-probabilities are taken, so scores are those of the penalized distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputTooLongError, StratalmError
from .sampling import penalize_repeats, seen_tokens


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens, without the final eos
    score: float  # sum of log-probabilities of the generated tokens (eos included when it ended)
    length: int  # generated tokens, eos included

    def normalized(self, length_penalty: float) -> float:
        return self.score / max(self.length, 1) ** length_penalty


class _Decoding:
    """The model state of N rows of hypotheses: feed one token per row, get next-token logits;
    `reorder` makes row i continue what row order[i] was (beam search moves beams around)."""

    def __init__(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], copies: int,
                 max_new_tokens: int, use_cache: bool, pad_id: int) -> None:
        self.model, self.use_cache = model, use_cache
        config = model.config
        self.seq2seq = config.stack == "encoder-decoder"
        if config.stack not in ("decoder", "encoder-decoder"):
            raise StratalmError(f"decoding needs a decoder or an encoder-decoder; this is a {config.family} {config.stack} model.")
        device = next(model.parameters()).device
        if any(len(p) == 0 for p in prompts):
            raise StratalmError("every input to decode needs at least one token; drop empty inputs.")
        longest = max(len(p) for p in prompts)
        if not self.seq2seq and longest + max_new_tokens > config.max_seq_len:
            raise InputTooLongError(f"a {longest}-token prompt plus {max_new_tokens} new tokens exceeds the model's "
                                    f"context of {config.max_seq_len}; shorten the input or lower the new tokens.")
        ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            if self.seq2seq:  # the encoder reads right-padded sources
                ids[row, :len(prompt)], mask[row, :len(prompt)] = torch.tensor(prompt), 1
            else:  # the decoder continues left-padded prompts
                ids[row, longest - len(prompt):], mask[row, longest - len(prompt):] = torch.tensor(prompt), 1
        ids = ids.repeat_interleave(copies, dim=0).to(device)
        self.mask = mask.repeat_interleave(copies, dim=0).to(device)
        n = ids.shape[0]
        if self.seq2seq:
            self.memory = model.encode(ids, self.mask)
            self.seq = torch.full((n, 1), config.decoder_start_token_id, dtype=torch.long, device=device)
            self.cache = model.new_cache(n, 1 + max_new_tokens) if use_cache else None
        else:
            self.seq = ids
            self.cache = model.new_cache(n, longest + max_new_tokens) if use_cache else None

    def _positions(self) -> torch.Tensor:
        return (self.mask.cumsum(dim=1) - 1).clamp(min=0)  # real tokens count from 0; padding sits at 0

    def first_logits(self) -> torch.Tensor:
        return self._run(self.seq)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seq = torch.cat([self.seq, tokens[:, None]], dim=1)
        if not self.seq2seq:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self._run(self.seq[:, -1:] if self.use_cache else self.seq)

    def _run(self, fed: torch.Tensor) -> torch.Tensor:
        if self.seq2seq:
            out = self.model(encoder_output=self.memory, attention_mask=self.mask, decoder_input_ids=fed, cache=self.cache)
        else:
            positions = self._positions()[:, -fed.shape[1]:]
            out = self.model(fed, attention_mask=self.mask, position_ids=positions, cache=self.cache, logits_to_keep=1)
        return out.logits[:, -1].float()  # (N, V)

    def penalized(self, logits: torch.Tensor, penalty: float) -> torch.Tensor:
        """`logits` with the repetition penalty on every token each row holds so far (a decoder's
        prompt included, its padding not)."""
        if penalty == 1.0:
            return logits
        real = None if self.seq2seq else self.mask
        return penalize_repeats(logits, seen_tokens(self.seq, logits.shape[-1], real), penalty)

    def reorder(self, order: torch.Tensor) -> None:
        self.seq, self.mask = self.seq[order], self.mask[order]
        if self.seq2seq:
            self.memory = self.memory[order]
        if self.cache is not None:
            self.cache.keys = self.cache.keys[:, order]
            self.cache.values = self.cache.values[:, order]
            self.cache.cross = {layer: (k[order], v[order]) for layer, (k, v) in self.cache.cross.items()}


def _default_pad(model: torch.nn.Module) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and tokenizer.pad_id is not None:
        return tokenizer.pad_id
    return model.config.pad_token_id


@torch.inference_mode()
def greedy_search(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                  eos_id: Optional[int] = None, use_cache: bool = True,
                  repetition_penalty: float = 1.0) -> list[Hypothesis]:
    """The most likely token at every step, for each prompt (a decoder's prompt, or an
    encoder-decoder's source)."""
    if not prompts:
        return []
    model.eval()
    state = _Decoding(model, prompts, 1, max_new_tokens, use_cache, _default_pad(model))
    n = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(n)]
    scores = [0.0] * n
    finished = [False] * n
    logits = state.first_logits()
    for step in range(max_new_tokens):
        logp = F.log_softmax(state.penalized(logits, repetition_penalty), dim=-1)
        best = logp.argmax(dim=-1)
        for row in range(n):
            if finished[row]:
                continue
            token = int(best[row])
            scores[row] += float(logp[row, token])
            if token == eos_id:
                finished[row] = True
            else:
                tokens[row].append(token)
        if all(finished) or step == max_new_tokens - 1:
            break
        logits = state.step(best)
    return [Hypothesis(t, s, len(t) + int(f)) for t, s, f in zip(tokens, scores, finished)]


@torch.inference_mode()
def beam_search(model: torch.nn.Module, prompts: Sequence[Sequence[int]], beams: int = 4, max_new_tokens: int = 64,
                eos_id: Optional[int] = None, length_penalty: float = 1.0, use_cache: bool = True,
                repetition_penalty: float = 1.0) -> list[Hypothesis]:
    """The best hypothesis of a `beams`-wide beam search for each prompt (see the module notes)."""
    if not prompts:
        return []
    if beams < 1:
        raise StratalmError(f"--beams must be at least 1; got {beams}.")
    model.eval()
    vocab = model.config.vocab_size
    if 2 * beams > vocab:
        raise StratalmError(f"--beams {beams} needs a vocabulary of at least {2 * beams} tokens; this one has {vocab}.")
    state = _Decoding(model, prompts, beams, max_new_tokens, use_cache, _default_pad(model))
    n, device = len(prompts), state.seq.device
    # Only the first beam of a row is live at the start, so the k beams do not all pick the same tokens.
    beam_scores = torch.full((n, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    generated = [[[] for _ in range(beams)] for _ in range(n)]
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    done = [False] * n
    logits = state.first_logits()
    for step in range(max_new_tokens):
        logp = F.log_softmax(state.penalized(logits, repetition_penalty), dim=-1)
        candidates = (beam_scores.view(-1, 1) + logp).view(n, beams * vocab)
        top_scores, top_index = candidates.topk(2 * beams, dim=1)
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        order, next_tokens, next_scores = [], [], []
        new_generated = []
        for row in range(n):
            kept: list[tuple[int, int, float]] = []
            if not done[row]:
                for rank, (score, index) in enumerate(zip(top_scores[row], top_index[row])):
                    beam, token = divmod(index, vocab)
                    if eos_id is not None and token == eos_id:
                        if rank < beams:
                            finished[row].append(Hypothesis(generated[row][beam], score, step + 1))
                        continue
                    kept.append((beam, token, score))
                    if len(kept) == beams:
                        break
                done[row] = len(finished[row]) >= beams
            if done[row] or len(kept) < beams:  # a finished row keeps dummy beams that nothing reads
                kept = [(0, 0, float("-inf"))] * beams
            order += [row * beams + beam for beam, _, _ in kept]
            next_tokens += [token for _, token, _ in kept]
            next_scores.append([score for _, _, score in kept])
            new_generated.append([generated[row][beam] + [token] for beam, token, _ in kept])
        generated = new_generated
        beam_scores = torch.tensor(next_scores, device=device)
        if all(done) or step == max_new_tokens - 1:
            break
        state.reorder(torch.tensor(order, device=device))
        logits = state.step(torch.tensor(next_tokens, device=device))
    results = []
    for row in range(n):
        pool = list(finished[row])
        if not done[row]:  # out of new tokens: the live beams compete too
            pool += [Hypothesis(generated[row][b], float(beam_scores[row, b]), len(generated[row][b]))
                     for b in range(beams) if beam_scores[row, b] > float("-inf")]
        results.append(max(pool, key=lambda h: h.normalized(length_penalty)))
    return results
