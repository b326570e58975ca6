"""Text in, text out: `generate` continues a prompt with a decoder — sampled (temperature, top-k,
top-p), greedy, or by beam search — with stop strings, CTRL's repetition penalty, several samples at
once, and the prompt echoed or not.

The prompt is echoed when `echo=True`: the `stratalm generate` command passes it (unless
--no-echo), so what it prints is exactly what the function returns for the same arguments.

Stop strings are looked for in the generated text only (not in the prompt). While text streams out,
a tail that could be the start of a stop string is held back until the next tokens tell, so a stop
string is never shown, not even in part.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..config_fields import above_up_to, at_least, device_name, require
from ..errors import ConfigError, StratalmError
from ..precision import autocast, choose_precision
from .beam import beam_search
from .sampling import stream_tokens


def choose_device(name: str) -> str:
    """"auto" is CUDA when present, else the CPU; an unavailable CUDA device is refused."""
    require("--device", name, device_name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asks for CUDA but no CUDA device is available; use --device cpu.")
    return name


def check_generation_options(temperature: float = 1.0, beams: int = 1, num_samples: Optional[int] = None,
                             repetition_penalty: float = 1.0, stop: Sequence[str] = (), max_new_tokens: int = 1,
                             top_k: Optional[int] = None, top_p: Optional[float] = None) -> None:
    """Refuse, in one sentence, values that `generate` cannot use (the command checks them before
    it loads a model). A top-k or top-p that would change nothing is refused rather than ignored."""
    require("--max-new-tokens", max_new_tokens, at_least(0))
    if top_k is not None:
        require("--top-k", top_k, at_least(1))
    if top_p is not None:
        require("--top-p", top_p, above_up_to(0, 1))
    if beams < 1:
        raise ConfigError(f"--beams must be at least 1 (1 = no beam search); got {beams}.")
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1; got {num_samples}.")
    if beams > 1 and num_samples not in (None, 1):
        raise ConfigError("beam search returns its one best continuation, so --num-samples needs --beams 1 (sampling).")
    if not repetition_penalty > 0:
        raise ConfigError(f"--repetition-penalty must be above 0 (1 = no penalty, above 1 discourages repeats); "
                          f"got {repetition_penalty}.")
    if temperature < 0:
        raise ConfigError(f"--temperature must be 0 (greedy) or more; got {temperature}.")
    if any(not s for s in stop):
        raise ConfigError("a --stop string cannot be empty.")


class Continuation:
    """One sample's generated text as its tokens arrive: ends at eos or at the first stop string
    (cut off), and hands out the pieces that are safe to show."""

    def __init__(self, tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.ids: list[int] = []
        self.text, self.shown, self.done = "", 0, False

    def add(self, token: int) -> str:
        """Take the next token; return the new text that can be shown."""
        if self.done:
            return ""
        if token == self.tokenizer.eos_id:
            self.done = True
            return self.flush()
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        ends = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if ends:
            self.text, self.done = self.text[:min(ends)], True
            return self.flush()
        safe = len(self.text) - self._held_back()
        piece, self.shown = self.text[self.shown:safe], max(self.shown, safe)
        return piece

    def _held_back(self) -> int:
        """Characters at the end that may still change: a multi-byte character still incomplete, or
        the start of a stop string."""
        if self.text.endswith("\ufffd"):
            return len(self.text) - self.shown
        return max((n for s in self.stop for n in range(len(s) - 1, 0, -1) if self.text.endswith(s[:n])), default=0)

    def flush(self) -> str:
        piece, self.shown = self.text[self.shown:], len(self.text)
        return piece


def generate(
    model: torch.nn.Module,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    on_text: Optional[Callable[[str], None]] = None,
    stop: Union[str, Sequence[str]] = (),
    repetition_penalty: float = 1.0,
    num_samples: Optional[int] = None,
    beams: int = 1,
    echo: bool = False,
    precision: str = "fp32",
) -> Union[str, list[str]]:
    """Continue `prompt` with a decoder model and return the new text; with `echo=True` the
    returned text starts with the prompt (what `stratalm generate` prints, unless --no-echo).

    Greedy when temperature is 0, else sampled (`top_k`, `top_p`; `seed` makes it reproducible).
    `beams` > 1 runs beam search instead, which is deterministic (temperature, top-k, top-p and seed
    do not apply). Generation ends at the end-of-text token, after `max_new_tokens`, or at the first
    of the `stop` strings, which is cut off (with beam search, the best beam is cut there).
    `repetition_penalty` > 1 discourages every token already in the prompt or the continuation
    (CTRL's penalty; 1 = none). `num_samples=N` returns a list of N samples drawn together instead
    of one string. `on_text` receives the text as it is produced, piece by piece (the prompt first
    when echoed); with several samples, or beam search, it receives each whole text once done.
    `precision` "bf16" (or "auto": bf16 on CUDA and on CPUs with AMX) decodes under bf16 autocast;
    fp32, the default, gives the tokens transformers gives.
    """
    if not isinstance(prompt, str):
        raise ConfigError(f"the prompt must be a string, not a {type(prompt).__name__}; call generate once per prompt "
                          f"(num_samples=N draws several continuations of one).")
    stops = [stop] if isinstance(stop, str) else list(stop)
    check_generation_options(temperature, beams, num_samples, repetition_penalty, stops, max_new_tokens, top_k, top_p)
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
    n = num_samples or 1
    rows = [Continuation(tokenizer, stops) for _ in range(n)]
    streaming = on_text is not None and n == 1 and beams == 1
    if streaming and echo and prompt:
        on_text(prompt)
    device = next(model.parameters()).device
    with autocast(choose_precision(precision, device.type)[0], device.type):
        _decode(model, ids, rows, n, max_new_tokens, temperature, top_k, top_p, seed, beams, repetition_penalty,
                on_text if streaming else None)
    texts = []
    for row in rows:
        tail = row.flush()
        if streaming and tail:
            on_text(tail)
        texts.append((prompt if echo else "") + row.text)
        if on_text is not None and not streaming:
            on_text(texts[-1])
    return texts if num_samples is not None else texts[0]


def _decode(model, ids, rows, n, max_new_tokens, temperature, top_k, top_p, seed, beams, repetition_penalty,
            on_piece) -> None:
    """Feed each row's tokens to its Continuation; `on_piece` gets the text of a lone streamed row."""
    tokenizer = model.tokenizer
    if beams > 1:
        best = beam_search(model, [ids], beams, max_new_tokens, tokenizer.eos_id,
                           repetition_penalty=repetition_penalty)[0]
        for token in best.tokens:
            rows[0].add(token)
        return
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    batch = torch.tensor([ids] * n)
    for tokens in stream_tokens(model, batch, max_new_tokens, temperature, top_k, top_p, generator,
                                tokenizer.eos_id, repetition_penalty):
        for row, token in zip(rows, tokens.tolist()):
            piece = row.add(token)
            if on_piece is not None and piece:
                on_piece(piece)
        if all(row.done for row in rows):
            break
