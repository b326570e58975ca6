"""/v1/completions and /v1/chat/completions: a request's fields become prompts and a `Sampling`,
the run's choices become the OpenAI response, or its events become server-sent chunks."""
from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator, Callable, Optional, Union

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .errors import APIError, bad_request
from .run import Choice, Run
from .schemas import ChatRequest, CompletionRequest
from .sequence import Finished, Sampling, TokenEvent
from .served import ServedModel

MAX_STOPS = 4


def stops_of(stop: Union[str, list[str], None]) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise bad_request(f"'stop' takes at most {MAX_STOPS} strings; got {len(stops)}.", "stop")
    if any(not s for s in stops):
        raise bad_request("a 'stop' string cannot be empty.", "stop")
    return tuple(stops)


def sampling_of(req: Union[CompletionRequest, ChatRequest], max_tokens: int, logprobs: Optional[int],
                prompt_logprobs: bool = False) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                    top_p=req.top_p, top_k=req.top_k or None, presence_penalty=req.presence_penalty,
                    frequency_penalty=req.frequency_penalty, repetition_penalty=req.repetition_penalty,
                    seed=req.seed, logprobs=logprobs, prompt_logprobs=prompt_logprobs, stop=stops_of(req.stop))


def check_length(served: ServedModel, ids: list[int], max_tokens: Optional[int], param: str) -> int:
    """The new tokens to generate; a prompt that leaves no room for them is a 400 with both counts."""
    vocab = served.model.config.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise bad_request(f"a token id in '{param}' is outside the vocabulary (0 to {vocab - 1}).", param)
    context = served.context
    if served.kind == "encoder-decoder":  # the source fills the encoder; the answer has a context of its own
        if len(ids) > context:
            raise bad_request(f"this model's maximum context length is {context} tokens, but the input has "
                              f"{len(ids)} tokens; shorten it.", param, "context_length_exceeded")
        return max_tokens or context
    room = context - len(ids)
    if max_tokens is None:
        max_tokens = room
    if max_tokens > room or room <= 0:
        raise bad_request(f"this model's maximum context length is {context} tokens, but the prompt has {len(ids)} "
                          f"tokens and max_tokens asks for {max_tokens} more ({len(ids) + max_tokens} in all); shorten "
                          "the prompt or lower max_tokens.", param, "context_length_exceeded")
    return max_tokens


def prompt_ids_of(served: ServedModel, prompt: Union[str, list[int]]) -> list[int]:
    """Token ids of a text prompt (a decoder's empty prompt starts a new document with eos, as `generate` does)."""
    tokenizer = served.tokenizer
    if not isinstance(prompt, str):
        return list(prompt)
    if served.kind == "encoder-decoder":
        ids = tokenizer.encode(prompt, add_special_tokens=True) or tokenizer.encode(prompt)
        if tokenizer.eos_id is not None and (not ids or ids[-1] != tokenizer.eos_id):
            ids.append(tokenizer.eos_id)  # T5 reads sources that end with </s>
        return ids
    return tokenizer.encode(prompt) if prompt else [tokenizer.eos_id if tokenizer.eos_id is not None else 0]


def _prompts(req: CompletionRequest) -> list[Union[str, list[int]]]:
    p = req.prompt
    if isinstance(p, str) or (p and isinstance(p[0], int)):
        return [p]
    if not p:
        raise bad_request("'prompt' cannot be an empty list.", "prompt")
    return list(p)


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


class Answer:
    """What completions and chat share: ids, timestamps, usage and the streaming loop."""

    def __init__(self, served: ServedModel, run: Run, kind: str, include_usage: bool) -> None:
        self.served, self.run, self.include_usage = served, run, include_usage
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.object = "chat.completion" if kind == "chat" else "text_completion"
        self.created = int(time.time())

    def head(self, chunk: bool = False) -> dict:
        obj = self.object + (".chunk" if chunk and self.object == "chat.completion" else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.name,
                "system_fingerprint": self.served.system_fingerprint}

    def usage(self) -> dict:
        done = self.run.completion_tokens
        return {"prompt_tokens": self.run.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.run.prompt_tokens + done}

    def stream(self, first, chunk_of: Callable, request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            item = first
            try:
                while item is not None:
                    chunk = chunk_of(*item)
                    if chunk is not None:
                        if self.include_usage:
                            chunk["usage"] = None
                        yield f"data: {json.dumps(chunk)}\n\n"
                    item = await self.run.next(request)  # None once the client has gone
                if self.include_usage:
                    yield f"data: {json.dumps({**self.head(True), 'choices': [], 'usage': self.usage()})}\n\n"
            except APIError as exc:  # past the deadline mid-stream: the status is sent, so the error is an event
                yield f"data: {json.dumps(exc.body())}\n\n"
            finally:
                self.run.cancel()  # a client that left closes this generator: its sequences stop at the next step
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- completions ----------------------------------------------------------------------------------
def legacy_logprobs(tokenizer, tokens: list[int], scores: list, offset: int = 0) -> dict:
    """The completions API's logprobs object: parallel lists over tokens."""
    texts = [token_text(tokenizer, t) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {"tokens": texts, "token_logprobs": [s[0] for s in scores],
            "top_logprobs": [None if s[0] is None else {token_text(tokenizer, i): lp for i, lp in s[1]} for s in scores],
            "text_offset": offsets}


async def complete(served: ServedModel, engine, req: CompletionRequest, request: Request, timeout: float):
    if req.echo and req.stream and req.logprobs is not None:
        raise bad_request("echo with logprobs is answered whole; drop 'stream' or 'logprobs'.", "echo")
    prompts = [prompt_ids_of(served, p) for p in _prompts(req)]
    max_tokens = min(check_length(served, ids, req.max_tokens, "prompt") for ids in prompts)
    sampling = sampling_of(req, max_tokens, req.logprobs, prompt_logprobs=req.echo and req.logprobs is not None)
    run = Run(engine, prompts, sampling, req.n, timeout)
    answer = Answer(served, run, "completion", bool(req.stream_options and req.stream_options.include_usage))
    tokenizer = served.tokenizer
    echoed = [tokenizer.decode(ids) if req.echo else "" for ids in prompts]

    def prompt_of(choice: Choice) -> int:
        return choice.index // req.n

    if req.stream:
        started: set[int] = set()

        def chunk_of(choice: Choice, event) -> Optional[dict]:
            text = event.text
            if choice.index not in started:  # the echo comes with the first chunk of each choice
                started.add(choice.index)
                text = echoed[prompt_of(choice)] + text
            logprobs = None
            if isinstance(event, TokenEvent) and event.logprob is not None:
                logprobs = legacy_logprobs(tokenizer, [event.token], [(event.logprob, event.top)])
            reason = event.reason if isinstance(event, Finished) else None
            if not text and logprobs is None and reason is None:
                return None
            return {**answer.head(), "choices": [{"index": choice.index, "text": text, "logprobs": logprobs,
                                                  "finish_reason": reason}]}

        return answer.stream(await _first(run, request), chunk_of, request)

    choices = await run.finish(request)
    body = []
    for choice in choices:
        seq = run.sequences[choice.index]
        logprobs = None
        if req.logprobs is not None:
            tokens, scores = choice.tokens, choice.scores
            if req.echo:
                tokens, scores = seq.prompt_ids + tokens, seq.prompt_scores + scores
            logprobs = legacy_logprobs(tokenizer, tokens, scores)
        body.append({"index": choice.index, "text": echoed[prompt_of(choice)] + choice.text, "logprobs": logprobs,
                     "finish_reason": choice.finish_reason})
    return JSONResponse({**answer.head(), "choices": body, "usage": answer.usage()})


async def _first(run: Run, request: Request):
    """Wait for the first event before answering, so a request that times out or fails before
    its first token still gets a real status, not a 200 stream holding an error."""
    try:
        first = await run.next(request)
    except BaseException:
        run.cancel()
        raise
    return first


# -- chat -----------------------------------------------------------------------------------------
def chat_entry(tokenizer, token: int, logprob: float, top: list) -> dict:
    def one(t: int, lp: float) -> dict:
        text = token_text(tokenizer, t)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in top]}


def chat_prompt(served: ServedModel, req: ChatRequest) -> list[int]:
    if served.chat is None:
        raise bad_request(f"model '{served.name}' has no chat template (none in its tokenizer_config.json and no "
                          "--chat-template given); use /v1/completions or start the server with --chat-template FILE.",
                          "model", "no_chat_template")
    text = served.chat.render([m.plain() for m in req.messages])
    return served.tokenizer.encode(text) or [served.tokenizer.eos_id or 0]


async def chat(served: ServedModel, engine, req: ChatRequest, request: Request, timeout: float):
    if served.kind != "decoder":
        raise bad_request(f"model '{served.name}' is a {served.kind}; chat needs a decoder.", "model")
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    ids = chat_prompt(served, req)
    max_tokens = check_length(served, ids, req.max_completion_tokens or req.max_tokens, "messages")
    sampling = sampling_of(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
    run = Run(engine, [ids], sampling, req.n, timeout)
    answer = Answer(served, run, "chat", bool(req.stream_options and req.stream_options.include_usage))
    tokenizer = served.tokenizer

    if req.stream:
        started: set[int] = set()

        def chunk_of(choice: Choice, event) -> Optional[dict]:
            delta = {} if event.text == "" else {"content": event.text}
            if choice.index not in started:
                started.add(choice.index)
                delta = {"role": "assistant", "content": event.text}
            logprobs = None
            if isinstance(event, TokenEvent) and event.logprob is not None:
                logprobs = {"content": [chat_entry(tokenizer, event.token, event.logprob, event.top)], "refusal": None}
            reason = event.reason if isinstance(event, Finished) else None
            if not delta and logprobs is None and reason is None:
                return None
            return {**answer.head(True), "choices": [{"index": choice.index, "delta": delta, "logprobs": logprobs,
                                                      "finish_reason": reason}]}

        return answer.stream(await _first(run, request), chunk_of, request)

    choices = await run.finish(request)
    body = []
    for choice in choices:
        logprobs = None
        if req.logprobs:
            logprobs = {"content": [chat_entry(tokenizer, t, s[0], s[1]) for t, s in zip(choice.tokens, choice.scores)],
                        "refusal": None}
        body.append({"index": choice.index, "message": {"role": "assistant", "content": choice.text},
                     "logprobs": logprobs, "finish_reason": choice.finish_reason})
    return JSONResponse({**answer.head(), "choices": body, "usage": answer.usage()})
