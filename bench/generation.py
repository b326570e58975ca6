"""Greedy generation, tokens/s: stratalm's KV-cached decoder (generate/sampling.py `stream_tokens`,
what `stratalm.generate` runs) against `transformers`' GPT2LMHeadModel.generate with its KV cache,
same weights, batch 1 and batch 8, 128 new tokens after a 16-token prompt.

The model is a GPT-2 shape (6 layers x 384, 6 heads, context 256, vocabulary 50304), random init
with seed 0, saved with stratalm.save and stratalm.save(format="hf"); each system loads its folder.
Both must produce exactly the same tokens (reported as `tokens_identical`; the script exits with
status 1 if they differ). Targets: batch 1 at least 2x transformers; batch 8 at least 4x the
tokens/s of batch 1.

Run:  python bench/generation.py [--configs batch1,batch8] [--quick] [--no-memory] [--no-record]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

import torch
from transformers import GPT2LMHeadModel

import stratalm
from common import Case, Runner, run_case
from stratalm.families import preset
from stratalm.generate import stream_tokens
from stratalm.generate.shortlist import HEAD_CHOICE
from stratalm.layers.linear import STEP_CHOICE
from stratalm.models import CausalLM

MODEL = dict(n_layers=6, n_heads=6, d_model=384, block=256, vocab=50304, prompt=16, new_tokens=128)
SMOKE = dict(n_layers=1, n_heads=2, d_model=32, vocab=512, new_tokens=8)
CONFIGS = {"batch1": dict(MODEL, batch=1, smoke=SMOKE), "batch8": dict(MODEL, batch=8, smoke=SMOKE)}
TARGET_BATCH1_OVER_TRANSFORMERS = 2.0
TARGET_BATCH8_OVER_BATCH1 = 4.0


def inputs(config: dict[str, Any], workdir: str, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = CausalLM(preset("gpt2-mini", n_layers=config["n_layers"], n_heads=config["n_heads"],
                            d_model=config["d_model"], d_ff=4 * config["d_model"], vocab_size=config["vocab"],
                            max_seq_len=config["block"], dropout=0.0))
    stratalm.save(model, os.path.join(workdir, "stratalm"))
    stratalm.save(model, os.path.join(workdir, "hf"), format="hf")


def prompt(config: dict[str, Any]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, config["vocab"], (config["batch"], config["prompt"]), generator=gen)


def build(system: str, config: dict[str, Any], workdir: str, args: argparse.Namespace) -> Runner:
    ids, n_new = prompt(config), config["new_tokens"]
    last: dict[str, torch.Tensor] = {}
    if system == "stratalm":
        model = stratalm.load(os.path.join(workdir, "stratalm"))

        def run() -> None:
            last["tokens"] = torch.stack(list(stream_tokens(model, ids, n_new, temperature=0)), dim=1)
    else:
        model = GPT2LMHeadModel.from_pretrained(os.path.join(workdir, "hf")).eval()
        model.generation_config.eos_token_id = None  # like stream_tokens without eos_id: never stop early
        model.generation_config.pad_token_id = 0
        mask = torch.ones_like(ids)

        @torch.inference_mode()
        def run() -> None:
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, use_cache=True)
            last["tokens"] = out[:, ids.shape[1]:]

    info = {} if system == "stratalm" else {"attn_implementation": model.config._attn_implementation}
    return Runner(run=run, units=config["batch"] * n_new, warmup=2, info=info, outputs=last)


def check(config: dict[str, Any], runners: dict[str, Runner], args: argparse.Namespace) -> dict[str, Any]:
    ours, theirs = (runners[s].outputs["tokens"] for s in ("stratalm", "transformers"))
    expected = (config["batch"], config["new_tokens"])
    identical = tuple(ours.shape) == expected and tuple(theirs.shape) == expected and torch.equal(ours, theirs)
    agree = float((ours == theirs).float().mean()) if ours.shape == theirs.shape else 0.0
    return {"tokens_identical": identical, "share_of_tokens_equal": round(agree, 4), **step_paths(config["batch"])}


def step_paths(batch: int) -> dict[str, Any]:
    """The paths stratalm's decoding steps took at this batch size (layers/linear.py's for the
    linear layers, generate/shortlist.py's for the head), and the best time of a step on each
    candidate while it was choosing."""
    found: dict[str, Any] = {}
    for name, choice in (("step", STEP_CHOICE), ("head", HEAD_CHOICE)):
        for key, chosen in choice.chosen.items():
            if key[0] == batch:
                times = choice.timings.get(key, {})
                found[f"{name}_path"] = chosen
                found[f"{name}_ms_by_path"] = {c: round(1e3 * min(t), 2) for c, t in times.items() if t}
    return found


def finalize(result: dict[str, Any], args: argparse.Namespace) -> None:
    configs = result["configs"]
    targets: dict[str, Any] = {}
    if "batch1" in configs:
        systems = configs["batch1"]["systems"]
        ratio = systems["stratalm"]["per_s"] / systems["transformers"]["per_s"]
        targets["batch1_over_transformers"] = {"value": round(ratio, 3), "target": TARGET_BATCH1_OVER_TRANSFORMERS,
                                               "met": ratio >= TARGET_BATCH1_OVER_TRANSFORMERS}
    if "batch1" in configs and "batch8" in configs:
        scale = configs["batch8"]["systems"]["stratalm"]["per_s"] / configs["batch1"]["systems"]["stratalm"]["per_s"]
        targets["batch8_over_batch1"] = {"value": round(scale, 3), "target": TARGET_BATCH8_OVER_BATCH1,
                                         "met": scale >= TARGET_BATCH8_OVER_BATCH1}
    result["targets"] = targets
    result["tokens_identical"] = all(entry["tokens_identical"] for entry in configs.values())


def note(system: str, competitor: Optional[str], entry: dict[str, Any]) -> str:
    p = entry["params"]
    path = f"; step path {entry['step_path']}" if entry.get("step_path") else ""
    path += f", head {entry['head_path']}" if entry.get("head_path") else ""
    return (f"greedy, {p['new_tokens']} new tokens after {p['prompt']}; "
            f"tokens identical: {'yes' if entry['tokens_identical'] else 'NO'}{path}")


CASE = Case(
    name="generation", unit="tokens", about=__doc__.split("\n\n")[0].replace("\n", " "),
    configs=CONFIGS, pairs=lambda args: [("stratalm", "transformers")], build=build, inputs=inputs,
    check=check, finalize=finalize, note=note, rounds=5, repeats=1,
)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_case(CASE, __file__, argv)


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:]).get("tokens_identical", True) else 1)
