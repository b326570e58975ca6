"""The CPU speedrun: wall time to a validation loss on character-level Tiny Shakespeare.

(a) nanoGPT's CPU recipe (examples/shakespeare_char.yaml, 2,000 steps) and (b) stratalm's recipe for
2 CPU cores (examples/speedrun_cpu.yaml) train one after the other in this process's run, on the same
prepared data: ../shared/data/tinyshakespeare, characters, first 90% train, last 10% validation.
Both are measured the same way: the loss over every character of the whole validation split, in
non-overlapping windows of 64 characters (both recipes use a 64-character context), evaluated every
--eval-every steps. Time is the training time the trainer logs (`train_s`: forward, backward and
optimizer steps, including any compile; evaluation and saving excluded), so evaluating often does
not slow a run down.

The target is the loss (a) ends at, measured here (nanoGPT quotes 1.88 from 20 random batches; on
the whole split the same recipe ends near 1.90, see ../shared/notes/speedrun.md); the time to 1.88
is reported too where a run reaches it. A crossing between two evaluations is placed by linear
interpolation of the loss in time. Then (b)'s schedule is stretched to (a)'s training time (its
steps scaled by the ratio of the two times) and the best loss it reaches in that time is reported.

Prints JSON and records a row per figure in bench/RESULTS.md (ratio = (a)'s time / (b)'s time).

Run:    python bench/speedrun.py [--out runs/speedrun] [--no-long] [--no-record]
Smoke:  python bench/speedrun.py --smoke       (a few steps of each; checks the harness)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from common import BENCH_DIR, SHARED_DATA, log, machine_info
import report

EXAMPLES = BENCH_DIR.parent / "examples"
RECIPES = {"a": EXAMPLES / "shakespeare_char.yaml", "b": EXAMPLES / "speedrun_cpu.yaml"}
NANOGPT_QUOTE = 1.88


def stratalm(*args: Any) -> None:
    subprocess.run([sys.executable, "-m", "stratalm", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def train(recipe: Path, data: Path, out: Path, eval_every: int, overrides: list[str]) -> list[dict[str, float]]:
    """Run one recipe; returns its evaluations as (step, train_s, val_loss) records."""
    stratalm("pretrain", "--config", recipe, "--data", data, "--out", out, "--overwrite", f"train.eval_every={eval_every}",
             "train.eval_windows=0", "train.save_every=0", "train.progress=false", *overrides)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return [{"step": r["step"], "train_s": r["train_s"], "val_loss": r["val_loss"]} for r in records if "val_loss" in r]


def time_to(curve: list[dict[str, float]], target: float) -> Optional[float]:
    """Training seconds at which the validation loss first reaches `target` (interpolated), or None."""
    before = {"train_s": 0.0, "val_loss": float("inf")}
    for point in curve:
        if point["val_loss"] <= target:
            if before["val_loss"] == float("inf"):
                return point["train_s"]
            share = (before["val_loss"] - target) / (before["val_loss"] - point["val_loss"])
            return before["train_s"] + share * (point["train_s"] - before["train_s"])
        before = point
    return None


def recipe_steps(recipe: Path) -> int:
    return int(yaml.safe_load(recipe.read_text())["train"]["max_steps"])


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """RESULTS.md rows: each figure of (b) against (a)'s, ratio = (a)'s seconds / (b)'s."""
    out = []
    for label, key in ((f"to (a)'s final loss {result['target']:.4f}", "to_target_s"), (f"to {NANOGPT_QUOTE}", "to_1.88_s")):
        a, b = result["a"].get(key), result["b"].get(key)
        out.append({"case": "speedrun", "config": label, "measure": "s of training", "system": "(b) speedrun_cpu.yaml",
                    "value": b, "competitor": "(a) shakespeare_char.yaml", "competitor_value": a,
                    "ratio": round(a / b, 3) if a and b else None, "note": "ratio = (a)'s time / (b)'s time"})
    if "long" in result:
        out.append({"case": "speedrun", "config": f"best loss in (a)'s {result['a']['train_s']:.1f} s",
                    "measure": "val loss", "system": "(b) stretched", "value": result["long"]["best_val_loss"],
                    "competitor": "(a) shakespeare_char.yaml", "competitor_value": result["a"]["final_val_loss"],
                    "ratio": None, "note": f"(b) with {result['long']['steps']} steps"})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/speedrun")
    p.add_argument("--eval-every", type=int, default=50, help="steps between whole-split evaluations (both recipes)")
    p.add_argument("--no-long", action="store_true", help="skip the run of (b) stretched to (a)'s time")
    p.add_argument("--smoke", action="store_true", help="a few steps of each recipe (checks the harness; not recorded)")
    p.add_argument("--no-record", action="store_true", help="do not rewrite bench/RESULTS.md")
    args = p.parse_args(argv)
    out = Path(args.out)
    text = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not text.exists():
        sys.exit(f"{text} is absent (the speedrun reads ../shared/data/tinyshakespeare)")
    started = time.perf_counter()
    data = out / "data"
    stratalm("prepare", text, "--out", data, "--tokenizer", "char", "--overwrite", "--quiet")
    smoke = ["train.max_steps=6", "train.warmup_steps=2", "train.eval_windows=8"] if args.smoke else []
    eval_every = 3 if args.smoke else args.eval_every

    result: dict[str, Any] = {"case": "speedrun", "machine": machine_info(), "rounds": 1}
    for name, recipe in RECIPES.items():
        log(f"== speedrun ({name}): {recipe.name}")
        curve = train(recipe, data, out / name, eval_every, smoke)
        result[name] = {"recipe": str(recipe.relative_to(BENCH_DIR.parent)), "steps": curve[-1]["step"],
                        "train_s": curve[-1]["train_s"], "final_val_loss": curve[-1]["val_loss"],
                        "best_val_loss": min(c["val_loss"] for c in curve), "curve": curve}
    target = result["a"]["final_val_loss"]
    result["target"] = target
    for name in RECIPES:
        result[name]["to_target_s"] = time_to(result[name]["curve"], target)
        result[name]["to_1.88_s"] = time_to(result[name]["curve"], NANOGPT_QUOTE)
    a_s, b_s = result["a"]["to_target_s"], result["b"]["to_target_s"]
    result["speedup_to_target"] = round(a_s / b_s, 3) if a_s and b_s else None

    if not args.no_long and not args.smoke:
        steps = round(recipe_steps(RECIPES["b"]) * result["a"]["train_s"] / result["b"]["train_s"])
        log(f"== speedrun (b) stretched to (a)'s time: {steps} steps")
        stretch = [f"train.max_steps={steps}", f"train.decay_steps={steps}"]
        curve = train(RECIPES["b"], data, out / "b-long", max(eval_every, steps // 40), stretch)
        within = [c for c in curve if c["train_s"] <= result["a"]["train_s"] * 1.02] or curve[:1]
        result["long"] = {"steps": steps, "train_s": curve[-1]["train_s"],
                          "best_val_loss": min(c["val_loss"] for c in within), "curve": curve}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["rows"] = rows(result)
    result["about"] = ("wall time (training steps only) to a whole-split validation loss on character-level Tiny "
                       "Shakespeare: (a) nanoGPT's CPU recipe vs (b) examples/speedrun_cpu.yaml, run one after the other")
    print(json.dumps(result, indent=2))
    if not (args.smoke or args.no_record):
        report.record(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
