"""Load on `stratalm serve`: concurrent streaming completions at concurrency 1, 8 and 32 — failures,
p50/p99 time to first token, per-token latency (time between a stream's chunks) and total tokens/s —
side by side with a one-request-at-a-time loop over `transformers`' generate behind a FastAPI app
of the same shape, on the same weights (exported with stratalm.save(format="hf")), in the same run.

Both servers run as subprocesses on loopback ports and are driven by the official `openai` async
client, so HTTP, JSON and SSE costs are in both. Prints JSON (machine facts, per-system figures,
the ratio at each concurrency, and how often a greedy request served among the most concurrent
ones differs from the same request served alone).

  python bench/serve_load.py                      # 200 requests per level, 64 tokens each
  python bench/serve_load.py --requests 32 --max-tokens 32   # a small run
  python bench/serve_load.py --baseline-server FOLDER --port P  # (internal) the transformers server
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from fastapi import FastAPI, Request  # at module level: FastAPI reads the handlers' (string) annotations here
from fastapi.responses import StreamingResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import log, machine_info  # noqa: E402

PROMPTS = ["the cat sat on the mat", "once upon a time", "in the beginning", "a quick brown fox"]


# -- the baseline: transformers' generate, one request at a time, behind FastAPI --------------------
def baseline_app(folder: str):
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    app, lock = FastAPI(), asyncio.Lock()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        ids = torch.tensor([tokenizer.encode(body["prompt"])])
        streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True)

        async def events():
            async with lock:  # one request at a time: the loop a server without batching runs
                worker = threading.Thread(target=model.generate, kwargs=dict(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=body["max_tokens"],
                    do_sample=False, streamer=streamer, pad_token_id=0))
                worker.start()
                n, iterator = 0, iter(streamer)
                while True:
                    piece = await asyncio.to_thread(next, iterator, None)
                    if piece is None:
                        break
                    if piece:
                        n += len(tokenizer.encode(piece))
                        chunk = {"id": "b", "object": "text_completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
                        yield f"data: {json.dumps(chunk)}\n\n"
                worker.join()
            usage = {"prompt_tokens": ids.shape[1], "completion_tokens": n, "total_tokens": ids.shape[1] + n}
            yield f"data: {json.dumps({'id': 'b', 'object': 'text_completion', 'created': 0, 'model': body['model'], 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# -- load ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start")


async def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    stamps, tokens = [], 0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ttft": stamps[0] - started if stamps else None, "gaps": gaps, "tokens": tokens}


def percentile(values: list[float], q: float):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)  # ms


async def load(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def guarded(i: int):
        async with gate:
            try:
                return await one_request(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)
            except Exception as exc:  # a failure is a figure here, not a crash
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                return None

    started = time.perf_counter()
    results = [r for r in await asyncio.gather(*(guarded(i) for i in range(requests))) if r is not None]
    wall = time.perf_counter() - started
    await client.close()
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return {"requests": requests, "failures": len(failures), "first_failure": failures[0] if failures else None,
            "ttft_p50_ms": percentile(ttfts, 0.5), "ttft_p99_ms": percentile(ttfts, 0.99),
            "token_latency_p50_ms": percentile(gaps, 0.5), "token_latency_p99_ms": percentile(gaps, 0.99),
            "tokens": tokens, "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}


async def greedy_agreement(base_url: str, model: str, requests: int, max_tokens: int) -> dict:
    """How often a greedy completion served among `requests` concurrent ones differs from the same
    request served alone. Batched products can round differently from one-row ones, which flips an
    argmax only where two tokens tie to rounding; this counts how often that happens here."""
    import random

    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(PROMPTS).split()[:rng.randint(1, 4)]) + " " + "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12))) for _ in range(requests)]

    async def complete(prompt: str) -> str:
        answer = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
        return answer.choices[0].text

    alone = [await complete(p) for p in prompts]
    together = await asyncio.gather(*(complete(p) for p in prompts))
    await client.close()
    differing = sum(a != b for a, b in zip(alone, together))
    return {"requests": requests, "max_tokens": max_tokens, "differing": differing,
            "share_differing": round(differing / requests, 4)}


def make_model(folder: str, args: argparse.Namespace) -> None:
    import torch

    import stratalm
    from stratalm.families import preset
    from stratalm.models import CausalLM
    from stratalm.tokenize import train_char

    torch.manual_seed(0)
    tokenizer = train_char(["abcdefghijklmnopqrstuvwxyz .,\n"])
    model = CausalLM(preset("gpt2-mini" if not args.tiny else "tiny", vocab_size=tokenizer.vocab_size,
                            max_seq_len=256)).eval()
    model.tokenizer = tokenizer
    stratalm.save(model, os.path.join(folder, "stratalm"))
    stratalm.save(model, os.path.join(folder, "hf"), format="hf")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tiny", action="store_true", help="the 4-layer, d=128 preset instead of gpt2-mini (6 x 384)")
    parser.add_argument("--baseline-server", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        import uvicorn

        uvicorn.run(baseline_app(args.baseline_server), host="127.0.0.1", port=args.port, log_level="warning")
        return {}
    result = {"machine": machine_info(), "requests": args.requests, "max_tokens": args.max_tokens, "systems": {}}
    with tempfile.TemporaryDirectory() as tmp:
        make_model(tmp, args)
        ours, theirs = free_port(), free_port()
        systems = {
            "stratalm serve": ([sys.executable, "-m", "stratalm", "serve", os.path.join(tmp, "stratalm"), "--name", "m",
                                "--port", str(ours), "--device", "cpu", "--max-concurrency", str(max(args.concurrency)),
                                "--max-queue", str(args.requests)], ours),
            "transformers generate, one at a time": ([sys.executable, os.path.abspath(__file__), "--baseline-server",
                                                      os.path.join(tmp, "hf"), "--port", str(theirs)], theirs),
        }
        for name, (cmd, port) in systems.items():
            proc = start(cmd, port)
            try:
                asyncio.run(load(f"http://127.0.0.1:{port}/v1", "m", 1, 2, 4))  # warm-up
                for c in args.concurrency:
                    log(f"{name}: concurrency {c}")
                    result["systems"].setdefault(name, {})[str(c)] = asyncio.run(
                        load(f"http://127.0.0.1:{port}/v1", "m", c, args.requests, args.max_tokens))
                if name == "stratalm serve":
                    log(f"{name}: greedy requests together against alone")
                    result["greedy_concurrent_vs_alone"] = asyncio.run(greedy_agreement(
                        f"http://127.0.0.1:{port}/v1", "m", max(args.concurrency), args.max_tokens))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    ours_, theirs_ = result["systems"].values()
    result["tokens_per_s_ratio"] = {c: round(ours_[c]["tokens_per_s"] / max(theirs_[c]["tokens_per_s"], 1e-9), 2)
                                    for c in ours_}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
