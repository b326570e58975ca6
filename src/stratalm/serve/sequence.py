"""One sequence the engine decodes (a request with n > 1 choices is n sequences): what to sample,
the state the engine keeps between steps, and the events it sends back to the request's handler."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..generate.text import Continuation  # eos, stop strings and held-back text, exactly as `generate` does


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per earlier occurrence
    repetition_penalty: float = 1.0  # CTRL's (generate's), over the prompt and the continuation
    seed: Optional[int] = None
    logprobs: Optional[int] = None  # alternatives listed per token (0: the chosen one only); None: no logprobs
    prompt_logprobs: bool = False  # echo with logprobs: the prompt's tokens scored too
    stop: tuple[str, ...] = ()


@dataclass
class TokenEvent:
    token: int
    text: str  # text that became safe to show with this token (may be empty)
    logprob: Optional[float] = None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Finished:
    reason: str  # "stop" (eos or a stop string), "length", or "cancelled"
    text: str  # the rest of the text held back until now


@dataclass
class Failed:
    message: str


class Sequence:
    def __init__(self, prompt_ids: list[int], sampling: Sampling, tokenizer, events: asyncio.Queue,
                 index: int = 0) -> None:
        """`events` receives (sequence, event) pairs: the sequences of one request share it."""
        self.prompt_ids, self.sampling, self.index = prompt_ids, sampling, index
        self.loop = asyncio.get_running_loop()
        self.events = events
        self.cancelled = False  # set by the handler (client gone, timeout); the engine drops the row at its next step
        self.continuation = Continuation(tokenizer, sampling.stop)
        self.generated = 0
        self.prompt_scores: list[tuple[Optional[float], list[tuple[int, float]]]] = []
        # engine state
        self.slot: Optional[int] = None
        self.length = 0  # tokens in this sequence's cache
        self.last_token: Optional[int] = None
        self.logits: Optional[torch.Tensor] = None  # (V,): the model's scores for the next token
        self.counts: Optional[torch.Tensor] = None  # (V,): generated tokens, for the OpenAI penalties
        self.seen: Optional[torch.Tensor] = None  # (V,) bools: prompt + continuation, for CTRL's penalty
        self.cache = None  # encoder-decoders: a batch-1 cache of its own
        self.memory = None
        seed = sampling.seed + index if sampling.seed is not None else None  # n choices with one seed still differ
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def send(self, event) -> None:
        """Hand an event to the request's handler, from the engine's thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self, event))
        except RuntimeError:  # the event loop has closed: the server is gone, nobody is listening
            self.cancelled = True
