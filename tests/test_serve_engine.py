"""The decoding engine in-process: the n choices of one request run their prompt once (decoders
copy its keys and values into each slot, T5 reads one encoding of the source), and the choices
still decode as they do when submitted one by one."""
from __future__ import annotations

import asyncio

import pytest
import torch

pytest.importorskip("fastapi")
from stratalm.families import preset  # noqa: E402
from stratalm.models import CausalLM, EncoderDecoderModel  # noqa: E402
from stratalm.serve.engine import engine_for  # noqa: E402
from stratalm.serve.sequence import Finished, Sampling, Sequence, TokenEvent  # noqa: E402
from stratalm.tokenize import train_char  # noqa: E402


def model_of(kind: str):
    torch.manual_seed(0)
    tok = train_char(["abcdefghijklmnopqrstuvwxyz "])
    if kind == "decoder":
        model = CausalLM(preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64, n_layers=1, d_model=32))
    else:
        model = EncoderDecoderModel(preset("t5", vocab_size=tok.vocab_size, n_layers=1, d_model=32, n_heads=2, d_ff=64))
    model.eval().tokenizer = tok
    return model


def serve(engine, prompt_ids: list[int], n: int, seed: int) -> list[list[int]]:
    """Submit n choices of one request together; their tokens, by choice."""
    async def run():
        events: asyncio.Queue = asyncio.Queue()
        seqs = [Sequence(prompt_ids, Sampling(max_tokens=6, temperature=1.0, seed=seed), engine.tokenizer, events, i)
                for i in range(n)]
        engine.submit(seqs)
        tokens, done = {i: [] for i in range(n)}, 0
        while done < n:
            seq, event = await events.get()
            if isinstance(event, TokenEvent):
                tokens[seq.index].append(event.token)
            elif isinstance(event, Finished):
                done += 1
            else:
                raise AssertionError(event)
        return [tokens[i] for i in range(n)]
    return asyncio.run(run())


@pytest.mark.parametrize("kind, part", [("decoder", None), ("encoder-decoder", "encoder")])
def test_n_choices_run_their_prompt_once(kind, part):
    model = model_of(kind)
    prompt = model.tokenizer.encode("hello there")
    runs = []
    counted = getattr(model, part) if part else model
    handle = counted.register_forward_pre_hook(lambda m, args, kwargs: runs.append(1) if (
        kwargs.get("input_ids", args[0] if args else None) is not None
        and (kwargs.get("input_ids", args[0] if args else None)).shape[-1] > 1) else None, with_kwargs=True)
    engine = engine_for(model, max_concurrency=8, max_queue=8)
    try:
        together = serve(engine, prompt, 3, seed=7)
        assert len(runs) == 1  # one prompt pass for the three choices
        alone = [serve(engine, prompt, 1, seed=7 + i)[0] for i in range(3)]  # choice i is seeded seed + i
        assert len(runs) == 4
        assert together == alone and len({tuple(t) for t in together}) > 1
    finally:
        handle.remove()
        engine.stop()
