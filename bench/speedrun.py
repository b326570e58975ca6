"""The CPU speedrun: wall time to a validation loss on character-level Tiny Shakespeare.

(a) nanoGPT's CPU recipe (examples/shakespeare_char.yaml, 2,000 steps), (b) stratalm's first recipe
for 2 CPU cores (examples/speedrun_cpu.yaml) and (c) the modern recipe (examples/speedrun_cpu_v2.yaml:
Muon for the blocks' matrices, QK-norm, zero-initialised output projections, logit soft-capping, separate embedding and head
learning rates, a warmup-stable-decay schedule) train one after the other in this process's run, on
the same prepared data: ../shared/data/tinyshakespeare, characters, first 90% train, last 10%
validation. All are measured the same way: the loss over every character of the whole validation
split, in non-overlapping windows of 64 characters (every recipe uses a 64-character context),
evaluated 20 times in each run (every --eval-every steps if given). Time is the training time the trainer logs (`train_s`: forward,
backward and optimizer steps, including any compile; evaluation and saving excluded), so evaluating
often does not slow a run down. No recipe here uses torch.compile.

The target is the loss (a) ends at, measured here (nanoGPT quotes 1.88 from 20 random batches; on
the whole split the same recipe ends near 1.90, see ../shared/notes/speedrun.md); the time to 1.88
is reported too where a run reaches it. A crossing between two evaluations is placed by linear
interpolation of the loss in time. Then (b)'s and (c)'s schedules are stretched to (a)'s training
time (steps scaled by the ratio of the two times) and the best loss each reaches in that time is
reported. With --ablation, (c) runs again with each of its options off in turn (AdamW instead of Muon,
torch's bf16 Newton-Schulz steps, ReLU squared instead of SwiGLU among them), and each row gives its
time to the target and its final loss.

The machine is shared and its load changes within a run: compare the ratios of one run, and look
at `load_average` (sampled before each recipe) before trusting a figure.

Prints JSON and records a row per figure in bench/RESULTS.md (ratio = (a)'s time / the recipe's).

Run:    python bench/speedrun.py [--out runs/speedrun] [--no-long] [--ablation] [--no-record]
Smoke:  python bench/speedrun.py --smoke       (a few steps of each; checks the harness)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from common import BENCH_DIR, SHARED_DATA, log, machine_info
import report

EXAMPLES = BENCH_DIR.parent / "examples"
RECIPES = {"a": EXAMPLES / "shakespeare_char.yaml", "b": EXAMPLES / "speedrun_cpu.yaml",
           "c": EXAMPLES / "speedrun_cpu_v2.yaml"}
LABELS = {"a": "(a) shakespeare_char.yaml", "b": "(b) speedrun_cpu.yaml", "c": "(c) speedrun_cpu_v2.yaml"}
NANOGPT_QUOTE = 1.88
# (c) with one of its options off (or changed), each in turn.
ABLATIONS = {
    "no QK-norm": ["model.qk_norm=false"],
    "no zero-init output projections": ["model.zero_init_output=false"],
    "no logit soft-cap": ["model.logit_softcap=0"],
    "embedding and head at lr": ["train.embed_lr=null", "train.head_lr=null"],
    "cosine instead of WSD": ["train.schedule=cosine"],
    "AdamW instead of Muon": ["train.optimizer=adamw"],
    "with ReLU squared": ["model.activation=relu2", "model.gated=false", "model.d_ff=512"],
}


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


def evaluations_every(steps: int) -> int:
    """Steps between evaluations for 20 in a run: a crossing is placed between two of them, so short
    runs need them as finely spaced as long ones (and (a)'s 2,000 steps need no 40)."""
    return max(1, steps // 20)


def recipe_steps(recipe: Path) -> int:
    return int(yaml.safe_load(recipe.read_text())["train"]["max_steps"])


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """RESULTS.md rows: each figure of (b), (c) and the ablations against (a)'s, ratio = (a)'s seconds / theirs."""
    out = []
    a_label = LABELS["a"]
    runs = [(LABELS[n], result[n]) for n in ("b", "c") if n in result]
    runs += [(f"(c) {name}", run) for name, run in result.get("ablation", {}).items()]
    for label, key in ((f"to (a)'s final loss {result['target']:.4f}", "to_target_s"), (f"to {NANOGPT_QUOTE}", "to_1.88_s")):
        a = result.get("a", {}).get(key, result.get("a_seconds") if key == "to_target_s" else None)
        for system, run in runs:
            value = run.get(key)
            out.append({"case": "speedrun", "config": label, "measure": "s of training", "system": system,
                        "value": value, "competitor": a_label, "competitor_value": a,
                        "ratio": round(a / value, 3) if a and value else None,
                        "note": f"ratio = (a)'s time / this one's; final loss {run['final_val_loss']:.4f}"})
    for name in ("b", "c"):
        if f"{name}-long" in result:
            long = result[f"{name}-long"]
            out.append({"case": "speedrun", "config": f"best loss in (a)'s {result['a_seconds']:.1f} s",
                        "measure": "val loss", "system": f"{LABELS[name][:3]} stretched", "value": long["best_val_loss"],
                        "competitor": a_label, "competitor_value": result.get("a", {}).get("final_val_loss"),
                        "ratio": None, "note": f"{LABELS[name][:3]} with {long['steps']} steps"})
    return out


def summary(curve: list[dict[str, float]], recipe: Path) -> dict[str, Any]:
    return {"recipe": str(recipe.relative_to(BENCH_DIR.parent)), "steps": curve[-1]["step"],
            "train_s": curve[-1]["train_s"], "final_val_loss": curve[-1]["val_loss"],
            "best_val_loss": min(c["val_loss"] for c in curve), "curve": curve, "load_average": os.getloadavg()[0]}


def stretched(recipe: Path, data: Path, out: Path, seconds: float, recipe_s: float,
              eval_every: Optional[int]) -> dict[str, Any]:
    """`recipe` with its schedule stretched to `seconds` of training (its steps scaled by
    seconds / recipe_s, the time its own run took); the best loss it reaches within `seconds`."""
    steps = round(recipe_steps(recipe) * seconds / recipe_s)
    log(f"== speedrun {recipe.name} stretched to {seconds:.1f} s: {steps} steps")
    curve = train(recipe, data, out, eval_every or evaluations_every(steps), [f"train.max_steps={steps}", f"train.decay_steps={steps}"])
    within = [c for c in curve if c["train_s"] <= seconds * 1.02] or curve[:1]
    return {"steps": steps, "train_s": curve[-1]["train_s"], "best_val_loss": min(c["val_loss"] for c in within),
            "curve": curve, "load_average": os.getloadavg()[0]}


def step_costs(rounds: int, variants: dict[str, tuple[Path, list[str]]]) -> dict[str, dict[str, float]]:
    """Milliseconds of one training step (forward, backward, clipping, optimizer) of each recipe,
    the recipes taking steps in turn, round after round, so a change of the machine's load falls on
    all of them alike; the best and the median of `rounds` steps each (after 3 untimed ones)."""
    import torch

    from stratalm.config_fields import dotted_to_nested
    from stratalm.families import preset
    from stratalm.loop import build_run_config
    from stratalm.loop.optim import make_optimizer
    from stratalm.models import build_model

    steps = {}
    for name, (recipe, overrides) in variants.items():
        run = build_run_config(str(recipe), dotted_to_nested(dict(o.split("=", 1) for o in overrides)))
        torch.manual_seed(0)
        model = build_model(preset(run.model_source, **{**run.model_overrides(), "vocab_size": 65}))
        optimizer = make_optimizer(model, run.train, torch.device("cpu"))
        ids = torch.randint(0, 65, (run.train.batch_size, model.config.max_seq_len + 1))

        def step(model=model, optimizer=optimizer, ids=ids) -> None:
            logits = model(ids[:, :-1]).logits
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(rounds + 3):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            if index >= 3:
                times[name].append(1000 * (time.perf_counter() - started))
    return {name: {"best_ms": round(min(t), 2), "median_ms": round(sorted(t)[len(t) // 2], 2)} for name, t in times.items()}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/speedrun")
    p.add_argument("--eval-every", type=int, help="steps between whole-split evaluations (default: 20 in each run)")
    p.add_argument("--no-long", action="store_true", help="skip the runs of (b) and (c) stretched to (a)'s time")
    p.add_argument("--smoke", action="store_true", help="a few steps of each recipe (checks the harness; not recorded)")
    p.add_argument("--no-record", action="store_true", help="do not rewrite bench/RESULTS.md")
    p.add_argument("--ablation", action="store_true", help="also run (c) with each option off or changed in turn")
    p.add_argument("--recipes", default="a,b,c", help="which of a, b, c to run (without a, give --target and --a-seconds)")
    p.add_argument("--target", type=float, help="the loss to reach when (a) is not run (its final loss of an earlier run)")
    p.add_argument("--a-seconds", type=float, help="(a)'s training time when (a) is not run (of an earlier run)")
    p.add_argument("--step-costs", type=int, metavar="ROUNDS",
                   help="only time ROUNDS training steps of (b), (c), (c) with AdamW and (c) with bf16 Newton-Schulz, in turn (no training run)")
    args = p.parse_args(argv)
    if args.step_costs:
        variants = {"b": (RECIPES["b"], []), "c": (RECIPES["c"], []), "c with AdamW": (RECIPES["c"], ["train.optimizer=adamw"]),
                    "c, Newton-Schulz in bf16": (RECIPES["c"], ["train.muon_precision=bf16"])}
        print(json.dumps({"case": "speedrun step costs", "machine": machine_info(), "load_average": os.getloadavg(),
                          "steps": step_costs(args.step_costs, variants)}, indent=2))
        return 0
    names = [n for n in RECIPES if n in args.recipes.split(",")]
    if "a" not in names and (args.target is None or args.a_seconds is None):
        sys.exit("without recipe a, give --target and --a-seconds (its final loss and training time of an earlier run)")
    out = Path(args.out)
    text = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not text.exists():
        sys.exit(f"{text} is absent (the speedrun reads ../shared/data/tinyshakespeare)")
    started = time.perf_counter()
    data = out / "data"
    stratalm("prepare", text, "--out", data, "--tokenizer", "char", "--overwrite", "--quiet")
    smoke = ["train.max_steps=6", "train.warmup_steps=2", "train.eval_windows=8"] if args.smoke else []
    eval_every = 3 if args.smoke else args.eval_every  # None: evaluations_every(the recipe's steps)

    result: dict[str, Any] = {"case": "speedrun", "machine": machine_info(), "rounds": 1}
    for name in names:
        log(f"== speedrun ({name}): {RECIPES[name].name}")
        every = eval_every or evaluations_every(recipe_steps(RECIPES[name]))
        result[name] = summary(train(RECIPES[name], data, out / name, every, smoke), RECIPES[name])
    target = result["a"]["final_val_loss"] if "a" in result else args.target
    result["target"] = target
    result["a_seconds"] = result["a"]["train_s"] if "a" in result else args.a_seconds
    if args.ablation and "c" in result:
        result["ablation"] = {}
        for option, overrides in ABLATIONS.items():
            log(f"== speedrun (c) {option}")
            slug = re.sub(r"[^a-z0-9]+", "-", option.lower()).strip("-")
            result["ablation"][option] = summary(train(RECIPES["c"], data, out / f"c-{slug}",
                                                       eval_every or evaluations_every(recipe_steps(RECIPES["c"])),
                                                       overrides + smoke), RECIPES["c"])
    for run in [result[n] for n in names] + list(result.get("ablation", {}).values()):
        run["to_target_s"] = time_to(run["curve"], target)
        run["to_1.88_s"] = time_to(run["curve"], NANOGPT_QUOTE)
    a_s = result["a"]["to_target_s"] if "a" in result else args.a_seconds
    for name in ("b", "c"):
        if name in result:
            run_s = result[name]["to_target_s"]
            result[f"speedup_to_target_{name}"] = round(a_s / run_s, 3) if a_s and run_s else None
    result["speedup_to_target"] = result.get("speedup_to_target_b")

    if not args.no_long and not args.smoke:
        for name in ("b", "c"):
            if name in result:
                result[f"{name}-long"] = stretched(RECIPES[name], data, out / f"{name}-long", result["a_seconds"],
                                                   result[name]["train_s"], eval_every)
        if "b-long" in result:
            result["long"] = result["b-long"]  # the name earlier runs recorded (b)'s under
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["rows"] = rows(result)
    result["about"] = ("wall time (training steps only) to a whole-split validation loss on character-level Tiny "
                       "Shakespeare: (a) nanoGPT's CPU recipe vs (b) examples/speedrun_cpu.yaml and (c) "
                       "examples/speedrun_cpu_v2.yaml, run one after the other")
    print(json.dumps(result, indent=2))
    if not (args.smoke or args.no_record):
        report.record(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
