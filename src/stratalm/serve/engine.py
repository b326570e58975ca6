"""The decoding engine of one model: a thread that runs continuous batching.

Every step, each running sequence picks its next token from its own logits (its own temperature,
top-k/top-p, penalties and seeded generator), finished ones leave the batch and give their cache
slot back, waiting ones join (their prompt runs alone once, then its keys and values are copied
into a free slot), and one forward pass feeds the last token of every running sequence. A
sequence whose handler set `cancelled` (client gone, timeout, shutdown) is dropped at the next
step. The queue of waiting sequences is bounded: a request that does not fit is a 429.

Encoder-decoders (T5) share the queue and the events, but each sequence decodes through a cache of
its own (`Seq2SeqEngine`), one forward per sequence per step."""
from __future__ import annotations

import collections
import threading
from typing import Optional

import torch
import torch.nn.functional as F

from ..generate import penalize_repeats, pick_next
from .errors import APIError
from .sequence import Failed, Finished, Sequence, TokenEvent
from .slots import SlotCache


class Engine:
    def __init__(self, model: torch.nn.Module, max_concurrency: int = 16, max_queue: int = 64, metrics=None,
                 name: str = "", lock: Optional[threading.Lock] = None) -> None:
        self.model, self.name, self.metrics = model, name, metrics
        self.lock = lock or threading.Lock()  # held by every forward pass (ServedModel.lock says why)
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.tokenizer = model.tokenizer
        self.eos_id = self.tokenizer.eos_id
        self.device = next(model.parameters()).device
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.wakeup = threading.Condition()
        self.stopping = False
        self.slots = self._new_slots()
        self.thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self.thread.start()

    def _new_slots(self):
        return SlotCache(self.model, self.max_concurrency, self.model.config.max_seq_len)

    # -- the handlers' side ----------------------------------------------------------------------
    def submit(self, sequences: list[Sequence]) -> None:
        with self.wakeup:
            if self.stopping:
                raise APIError(503, "the server is shutting down; retry on another instance.", code="shutting_down")
            if len(self.waiting) + len(sequences) > self.max_queue:
                raise APIError(429, f"the queue of model '{self.name}' is full ({self.max_queue} sequences "
                                    "waiting); retry later.", code="queue_full")
            self.waiting.extend(sequences)
            self._gauge()
            self.wakeup.notify()

    def stop(self) -> None:
        """Cancel whatever still runs or waits, and end the thread."""
        with self.wakeup:
            self.stopping = True
            for seq in list(self.waiting) + self.running:
                seq.cancelled = True
            self.wakeup.notify()
        self.thread.join(timeout=10)

    # -- the engine's thread ---------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wakeup:
                    while not self.waiting and not self.running and not self.stopping:
                        self.wakeup.wait()
                    joining = []
                    while self.waiting and len(self.running) + len(joining) < self.max_concurrency:
                        joining.append(self.waiting.popleft())
                    if self.stopping and not self.waiting:
                        for seq in joining + self.running:
                            seq.send(Finished("cancelled", ""))
                        return
                try:
                    self._step(joining)
                except Exception as exc:  # a bug, not the client's: fail these requests, keep serving
                    for seq in joining + self.running:
                        seq.send(Failed(f"{type(exc).__name__}: {exc}"))
                        self._leave(seq)
                    self.running = []
                self._gauge()

    def _step(self, joining: list[Sequence]) -> None:
        """The joining sequences' prompts, then one token for every running sequence."""
        with self.lock:
            prefilled: dict = {}  # the n choices of one request share their prompt: it runs once
            for seq in joining:
                if seq.cancelled:
                    seq.send(Finished("cancelled", ""))
                    continue
                self._prefill(seq, prefilled)
                self.running.append(seq)
            self._pick_all()
            if self.running:
                self._decode()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue(self.name, len(self.waiting), len(self.running))

    def _prefill(self, seq: Sequence, prefilled: dict) -> None:
        """Run the prompt alone, or take what a sequence joining in the same step with the same
        prompt got from it (`prefilled`); its keys and values go into a free slot."""
        keep = 0 if seq.sampling.prompt_logprobs else 1
        key = (tuple(seq.prompt_ids), keep)
        if key not in prefilled:
            ids = torch.tensor([seq.prompt_ids], device=self.device)
            cache = self.model.new_cache(1, len(seq.prompt_ids))
            logits = self.model(ids, cache=cache, logits_to_keep=keep).logits[0]  # (T or 1, V)
            prefilled[key] = cache, logits
        cache, logits = prefilled[key]
        if seq.sampling.prompt_logprobs:
            seq.prompt_scores = self._prompt_scores(logits, seq.prompt_ids, seq.sampling.logprobs or 0)
        seq.slot = self.slots.take()
        self.slots.fill(seq.slot, cache)
        seq.length, seq.logits = len(seq.prompt_ids), logits[-1]
        self._start_penalties(seq)

    def _prompt_scores(self, logits: torch.Tensor, ids: list[int], top: int):
        logp = F.log_softmax(logits.float(), dim=-1)
        scores = [(None, [])]  # the first token has nothing before it to be predicted from
        for t in range(1, len(ids)):
            scores.append((float(logp[t - 1, ids[t]]), _top(logp[t - 1], top)))
        return scores

    def _start_penalties(self, seq: Sequence) -> None:
        s, vocab = seq.sampling, seq.logits.shape[-1]
        if s.presence_penalty or s.frequency_penalty:
            seq.counts = torch.zeros(vocab, device=self.device)
        if s.repetition_penalty != 1.0:
            seq.seen = torch.zeros(vocab, dtype=torch.bool, device=self.device)
            seq.seen[torch.tensor(seq.prompt_ids, device=self.device)] = True

    def _pick_all(self) -> None:
        still = []
        for seq in self.running:
            if seq.cancelled:
                seq.send(Finished("cancelled", seq.continuation.flush()))
                self._leave(seq)
                if self.metrics is not None:
                    self.metrics.cancelled(self.name)
                continue
            if self._pick(seq):
                still.append(seq)
            else:
                self._leave(seq)
        self.running = still

    def _pick(self, seq: Sequence) -> bool:
        """Choose and send seq's next token; False once the sequence is finished."""
        s = seq.sampling
        raw = seq.logits.float()
        logits = raw
        if seq.counts is not None:
            logits = logits - s.frequency_penalty * seq.counts - s.presence_penalty * (seq.counts > 0).float()
        if seq.seen is not None:
            logits = penalize_repeats(logits, seq.seen, s.repetition_penalty)
        token = int(pick_next(logits[None], s.temperature, s.top_k, s.top_p, seq.generator)[0])
        if token == self.eos_id:
            seq.send(Finished("stop", seq.continuation.flush()))
            return False
        seq.generated += 1
        if seq.counts is not None:
            seq.counts[token] += 1
        if seq.seen is not None:
            seq.seen[token] = True
        logprob, top = None, []
        if s.logprobs is not None:
            logp = F.log_softmax(raw, dim=-1)  # the model's own distribution, before sampling settings
            logprob, top = float(logp[token]), _top(logp, s.logprobs)
        piece = seq.continuation.add(token)
        seq.send(TokenEvent(token, piece, logprob, top))
        if self.metrics is not None:
            self.metrics.token(self.name)
        if seq.continuation.done:
            seq.send(Finished("stop", seq.continuation.flush()))
            return False
        if seq.generated >= s.max_tokens:
            seq.send(Finished("length", seq.continuation.flush()))
            return False
        seq.last_token = token
        return True

    def _leave(self, seq: Sequence) -> None:
        if seq.slot is not None:
            self.slots.give_back(seq.slot)
            seq.slot = None

    def _decode(self) -> None:
        """One forward pass for every running sequence's last token."""
        rows = self.running
        slots = torch.tensor([seq.slot for seq in rows], device=self.device)
        lengths = torch.tensor([seq.length for seq in rows], device=self.device)
        tokens = torch.tensor([[seq.last_token] for seq in rows], device=self.device)
        step = self.slots.step(slots, lengths)
        logits = self.model(tokens, attention_mask=step.attention_mask(), position_ids=lengths[:, None],
                            cache=step, logits_to_keep=1).logits[:, -1]  # (B, V)
        for seq, row in zip(rows, logits):
            seq.logits, seq.length = row, seq.length + 1
        if self.metrics is not None:
            self.metrics.batch(self.name, len(rows))


class Seq2SeqEngine(Engine):
    """T5: the source runs through the encoder once; each sequence then decodes with a cache of its own."""

    def _new_slots(self):
        return None

    def _prefill(self, seq: Sequence, prefilled: dict) -> None:
        key = tuple(seq.prompt_ids)
        if key not in prefilled:  # the n choices of one request read one encoding of the source
            ids = torch.tensor([seq.prompt_ids], device=self.device)
            prefilled[key] = self.model.encode(ids, torch.ones_like(ids))
        seq.memory = prefilled[key]
        seq.cache = self.model.new_cache(1, seq.sampling.max_tokens + 1)
        seq.length = 0
        seq.logits = self._forward(seq, self.model.config.decoder_start_token_id)
        self._start_penalties(seq)

    def _forward(self, seq: Sequence, token: int) -> torch.Tensor:
        fed = torch.tensor([[token]], device=self.device)
        out = self.model(encoder_output=seq.memory, attention_mask=torch.ones(seq.memory.shape[:2], device=self.device,
                         dtype=torch.long), decoder_input_ids=fed, cache=seq.cache)
        return out.logits[0, -1]

    def _leave(self, seq: Sequence) -> None:
        seq.cache = seq.memory = None

    def _decode(self) -> None:
        for seq in self.running:
            seq.logits = self._forward(seq, seq.last_token)


def _top(logp: torch.Tensor, k: int) -> list[tuple[int, float]]:
    if k <= 0:
        return []
    values, ids = logp.topk(k)
    return list(zip(ids.tolist(), values.tolist()))


def engine_for(model: torch.nn.Module, **options) -> Optional[Engine]:
    stack = model.config.stack
    if stack == "decoder":
        return Engine(model, **options)
    if stack == "encoder-decoder":
        return Seq2SeqEngine(model, **options)
    return None  # encoders embed; they need no engine
