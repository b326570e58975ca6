"""One request on its way through an engine: its sequences (prompts x n), their events as they
arrive, each choice's text, tokens and logprobs so far, its deadline (408) and its cancellation."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Optional

from fastapi import Request

from .errors import APIError
from .sequence import Failed, Finished, Sampling, Sequence, TokenEvent

DISCONNECT_POLL_S = 0.1  # how often a non-streaming handler asks whether its client is still there


@dataclass
class Choice:
    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    scores: list[tuple[Optional[float], list]] = field(default_factory=list)  # per token: (logprob, top)
    finish_reason: Optional[str] = None


class Run:
    def __init__(self, engine, prompts: list[list[int]], sampling: Sampling, n: int, timeout: float) -> None:
        self.engine, self.timeout = engine, timeout
        self.events: asyncio.Queue = asyncio.Queue()
        self.sequences = [Sequence(ids, sampling, engine.tokenizer, self.events, index=p * n + j)
                          for p, ids in enumerate(prompts) for j in range(n)]
        self.choices = [Choice(seq.index) for seq in self.sequences]
        self.started = time.monotonic()
        self.first_token_at: Optional[float] = None
        self.polled = self.started
        self.open = len(self.sequences)
        self.prompt_tokens = sum(len(ids) for ids in prompts)  # once per prompt, however many choices (as OpenAI)
        engine.submit(self.sequences)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancelled = True

    async def next(self, request: Optional[Request] = None):
        """The next (choice, event), or None once every sequence has finished (or the client left,
        when `request` is given to watch it). Past the deadline: cancels, then raises a 408."""
        while self.open:
            remaining = self.started + self.timeout - time.monotonic()
            if remaining <= 0:
                self.cancel()
                raise APIError(408, f"the request ran past the server's limit of {self.timeout:g} s; ask for fewer "
                                    "tokens or retry when the server is less busy.", code="timeout")
            if request is not None and time.monotonic() - self.polled > DISCONNECT_POLL_S:
                self.polled = time.monotonic()  # asked between events too: tokens may flow faster than the poll
                if await request.is_disconnected():
                    self.cancel()
                    return None
            try:
                wait = min(remaining, DISCONNECT_POLL_S) if request is not None else remaining
                seq, event = await asyncio.wait_for(self.events.get(), wait)
            except asyncio.TimeoutError:
                continue
            if isinstance(event, Failed):
                self.cancel()
                raise APIError(500, f"decoding failed: {event.message}", code="engine_error")
            choice = self.choices[seq.index]
            if isinstance(event, TokenEvent):
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                choice.tokens.append(event.token)
                choice.text += event.text
                if event.logprob is not None:
                    choice.scores.append((event.logprob, event.top))
            elif isinstance(event, Finished):
                choice.text += event.text
                choice.finish_reason = event.reason
                self.open -= 1
            return choice, event
        return None

    async def finish(self, request: Request) -> list[Choice]:
        """Wait for every choice to end (non-streaming answers)."""
        try:
            while await self.next(request) is not None:
                pass
        finally:
            self.cancel()  # a no-op once all have finished; stops the rest when the client left
        return self.choices
