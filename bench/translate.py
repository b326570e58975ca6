"""English -> French translation with a small T5 trained from scratch by `stratalm finetune --task
seq2seq --model t5 --tokenizer-from-train N` on Tatoeba's 5,000 short pairs (../shared/data/
tatoeba-eng-fra-5k): a seeded shuffle holds 500 pairs out. Prints corpus BLEU and chrF (sacrebleu)
with greedy and beam decoding, the held-out loss, ten sample translations and the timings as JSON.

Model: the `t5` preset (4 + 4 layers, d_model 256, 4 heads, T5 v1.0 shape: relative positions,
RMSNorm, relu feed-forward, tied head) with T5's own initialisation, and a byte-level BPE tokenizer
of --vocab tokens trained on both sides of the training pairs. Recipe: AdamW lr 1e-3, batch 32,
warmup 5% then cosine decay, dropout 0.1.

CPU budget: a 10-step timing run measures seconds per step, then training takes as many steps as
fit in --budget-minutes (default 10), capped at --epochs. 4,500 pairs are far too few for good
translation; expect low double-digit BLEU at best, and phrases the model has seen often.

Run:    python bench/translate.py [--budget-minutes 10] [--out runs/translate]
Smoke:  python bench/translate.py --max-steps 5 --limit 300     (checks that it works)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import yaml

from stratalm.tasks import evaluate, predict
from stratalm.tasks.finetune import FinetuneConfig, finetune, finetune_loop

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba-eng-fra-5k" / "eng-fra.txt"


def split(folder: Path, held_out: int, seed: int, limit: int) -> dict:
    """train.txt and dev.txt (English TAB French, no header): a seeded shuffle, the last
    `held_out` pairs for dev; the attribution column stays in the source file."""
    lines = [line.rstrip("\n") for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = ["\t".join(line.split("\t")[:2]) for line in lines]
    random.Random(seed).shuffle(pairs)
    if limit:
        pairs = pairs[:limit]
    held_out = min(held_out, len(pairs) // 5) if limit else held_out
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(pairs[:-held_out]) + "\n", encoding="utf-8")
    (folder / "dev.txt").write_text("\n".join(pairs[-held_out:]) + "\n", encoding="utf-8")
    return {"train": len(pairs) - held_out, "dev": held_out}


def config(folder: Path, out: Path, max_steps: int, args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(
        task="seq2seq", model=args.model, train=str(folder / "train.txt"), dev=None, out=str(out),
        task_options={"tokenizer_from_train": args.vocab, "max_new_tokens": 48}, epochs=args.epochs, max_length=64,
        loop=finetune_loop(max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=0.05,
                           weight_decay=0.01, seed=args.seed, progress=not args.quiet))


def steps_per_second(out: Path) -> float:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in lines if "examples_per_s" in r]
    return sum(rates) / len(rates) / yaml.safe_load((out / "run.yaml").read_text())["loop"]["batch_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/translate")
    parser.add_argument("--model", default="t5", help="preset to train from scratch")
    parser.add_argument("--vocab", type=int, default=4000, help="BPE tokens, trained on the training pairs")
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--epochs", type=float, default=30.0, help="at most this many passes")
    parser.add_argument("--max-steps", type=int, default=0, help="fixed number of steps (smoke test; no timing run)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many pairs (smoke test)")
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.out)
    started = time.perf_counter()
    sizes = split(root / "data", args.held_out, args.seed, args.limit)
    steps_per_epoch = math.ceil(sizes["train"] / args.batch_size)
    speed = None
    if args.max_steps:
        steps = args.max_steps
    else:
        with contextlib.redirect_stdout(sys.stderr):  # progress lines; stdout carries only the JSON
            finetune(config(root / "data", root / "timing", 10, args), overwrite=True)
        speed = steps_per_second(root / "timing")
        steps = max(1, min(int(args.budget_minutes * 60 * speed), math.ceil(args.epochs * steps_per_epoch)))
    with contextlib.redirect_stdout(sys.stderr):
        trained = finetune(config(root / "data", root / "run", steps, args), overwrite=True)
    dev = str(root / "data" / "dev.txt")
    timings = {}
    scores = {}
    for name, beams in (("greedy", 1), (f"beam{args.beams}", args.beams)):
        tick = time.perf_counter()
        scores[name] = {k: round(v, 3) for k, v in evaluate(str(root / "run"), dev, device="cpu",
                                                             options={"beams": beams}).items()}
        timings[f"decode_{name}_s"] = round(time.perf_counter() - tick, 1)
    samples = predict(str(root / "run"), dev, device="cpu", options={"beams": args.beams})[:10]
    references = [line.split("\t")[1] for line in (root / "data" / "dev.txt").read_text(encoding="utf-8").splitlines()[:10]]
    print(json.dumps({
        "model": args.model, "vocab": args.vocab, "pairs": sizes, "steps": trained["steps"],
        "epochs": round(trained["steps"] / steps_per_epoch, 2), "parameters": trained["total_parameters"],
        "timing_run_steps_per_s": round(speed, 3) if speed else None, "train_s": trained["seconds"], **timings,
        "wall_s": round(time.perf_counter() - started, 1), "dev": scores,
        "samples": [{"source": s["source"], "prediction": s["prediction"], "reference": r}
                    for s, r in zip(samples, references)],
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
