"""A FLAN-style instruction mixture from ../shared/data, and a small GPT pretrained here and then
instruction-tuned on it (`stratalm finetune --task chat`), meant to answer held-out SST-2 dev reviews
by generation, under an instruction it never saw in training.

The mixture (`build`) is chat JSONL, one conversation a line, from three tasks, each phrased by
several instruction templates (FLAN's recipe: one task, many wordings):
  - SST-2 train (40,000 of its 67,349 phrases, 87% of the mixture): "Is this review positive or
    negative?" -> positive / negative
  - Tatoeba en-fr (1,500 of the 90% of pairs kept for training): "Translate to French:" -> French
  - MRPC train (all 3,668 pairs): "Do these two sentences mean the same?" -> yes / no
One more template per task is held out of training: the dev files ask with it (held-out
instructions) about examples training never saw (SST-2 dev, MRPC dev, the other 10% of Tatoeba).
Files: train.jsonl, and for each task <task>_seen.jsonl / <task>_heldout.jsonl (a training
template / the held-out one).

`run` builds the mixture, pretrains a 4-layer, 128-wide GPT with causal LM on the mixture's raw
text (the SST-2, MRPC and Tatoeba training sentences, no labels), instruction-tunes it, and reports
generation accuracy on every dev example (872 SST-2 reviews, 408 MRPC pairs; the reply's first word
is its answer) with its standard error and the answers given, next to the majority class and the
base model's (same prompts, same template), then `stratalm prompt-eval` (the shipped SST-2 and MRPC
tasks, all dev rows) of both. A finished stage (out/base, out/tuned) is reused: results.json's
timings then give the seconds it took when it was made (kept in out/stage_times.json, else its
metrics.jsonl's training seconds) and its
"reused" entry says so and where the figure comes from. The figures go to stdout and out/results.json.

Measured (runs/instruct_v3/results.json), niced at 1 thread on a loaded 2-core AMD EPYC (load
average 6-8): pretraining 250 steps of 16 x 128 tokens, val loss 5.69 (426 s with the tokenizer);
tuning 700 steps of 16 conversations at lr 2e-3 (1,073 s); evaluation 87 s: 27 min in all. SST-2
dev by generation, held-out instruction: 0.601 +- 0.017 (482 positive, 340 negative, 50 other
replies; majority class 0.509); training instruction: 0.670 +- 0.016. MRPC dev, held-out
instruction: 0.674 +- 0.023 ("yes" to 404 of 408; majority 0.684): not learned. The base model
scores 0.0 by generation (it never saw the chat format). prompt-eval, every dev row: SST-2 acc
0.509 -> 0.632 +- 0.016 (base -> tuned); MRPC acc 0.316 -> 0.676 +- 0.023, acc_norm 0.684 for
both (the majority class). The same recipe packed and with 4,500 Tatoeba pairs (1,000 steps)
answered "positive" to 864 of 872 reviews (0.502).

    python bench/instruct.py build --out runs/instruct/mixture
    python bench/instruct.py run --out runs/instruct [--pretrain-steps 250] [--tune-steps 700]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

SST2 = {
    "train": ["Is this review positive or negative?\n{text}",
              "{text}\nWhat is the sentiment of this review, positive or negative?",
              "Review: {text}\nIs the reviewer positive or negative about the film?",
              "Classify the sentiment of this movie review as positive or negative.\n{text}"],
    "heldout": "Did the critic like this movie? Say positive or negative.\n{text}",
}
MRPC = {
    "train": ["Do these two sentences mean the same? Answer yes or no.\n1: {a}\n2: {b}",
              "Sentence one: {a}\nSentence two: {b}\nAre they paraphrases of each other, yes or no?",
              "Is the second sentence a rewording of the first? yes or no.\n{a}\n{b}"],
    "heldout": "Do these two sentences say the same thing? Reply yes or no.\n{a}\n{b}",
}
TRANSLATE = {
    "train": ["Translate to French:\n{text}", "{text}\nHow do you say this in French?",
              "English: {text}\nFrench translation?"],
    "heldout": "Give the French for this English sentence: {text}",
}


def read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def sst2(split: str) -> list[tuple[str, str]]:
    return [(row[0].strip(), "positive" if row[1] == "1" else "negative") for row in read_tsv(SHARED / "sst2" / f"{split}.tsv")[1:]]


def mrpc(split: str) -> list[tuple[str, str, str]]:
    return [(row[3], row[4], "yes" if row[0] == "1" else "no") for row in read_tsv(SHARED / "mrpc" / f"{split}.tsv")[1:]]


def tatoeba(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) English-French pairs: 90% / 10%, split after a seeded shuffle (the file is
    sorted by length)."""
    pairs = [(row[0], row[1]) for row in read_tsv(SHARED / "tatoeba-eng-fra-5k" / "eng-fra.txt")]
    random.Random(seed).shuffle(pairs)
    cut = len(pairs) * 9 // 10
    return pairs[:cut], pairs[cut:]


def conversation(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def build(out: Path, sst2_train: int = 40000, seed: int = 0, tatoeba_train: int = 1500) -> dict[str, int]:
    """Write the mixture's files into `out`; returns the examples per file. Translation is kept small:
    the loss is a mean over reply tokens, and a French sentence has a dozen hard ones where a review's
    answer has one that decides it, so a full Tatoeba drowns the sentiment signal."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    reviews = sst2("train")
    rng.shuffle(reviews)
    pairs = mrpc("train")
    french, french_heldout = tatoeba(seed)
    train = ([conversation(rng.choice(SST2["train"]).format(text=t), y) for t, y in reviews[:sst2_train]]
             + [conversation(rng.choice(MRPC["train"]).format(a=a, b=b), y) for a, b, y in pairs]
             + [conversation(rng.choice(TRANSLATE["train"]).format(text=e), f) for e, f in french[:tatoeba_train]])
    rng.shuffle(train)
    files = {"train": train}
    for name, template in (("seen", SST2["train"][0]), ("heldout", SST2["heldout"])):
        files[f"sst2_{name}"] = [conversation(template.format(text=t), y) for t, y in sst2("dev")]
    for name, template in (("seen", MRPC["train"][0]), ("heldout", MRPC["heldout"])):
        files[f"mrpc_{name}"] = [conversation(template.format(a=a, b=b), y) for a, b, y in mrpc("dev")]
    for name, template in (("seen", TRANSLATE["train"][0]), ("heldout", TRANSLATE["heldout"])):
        files[f"translate_{name}"] = [conversation(template.format(text=e), f) for e, f in french_heldout]
    for name, rows in files.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return {name: len(rows) for name, rows in files.items()}


def raw_text(seed: int) -> Iterator[str]:
    """Unlabelled documents for pretraining: the training sentences of the three data sets (never
    a dev sentence, nor a held-out Tatoeba pair). In-domain text only: at this budget, Python's
    documentation or Shakespeare would spend steps on words the tasks never use."""
    reviews = [t for t, _ in sst2("train")]
    random.Random(seed).shuffle(reviews)  # the file lists a review's phrases together; mix the films
    for start in range(0, len(reviews), 20):  # 20 reviews a document: windows span several
        yield "\n".join(reviews[start:start + 20])
    for a, b, _ in mrpc("train"):
        yield a + "\n" + b
    french, _ = tatoeba(seed)
    for start in range(0, len(french), 20):
        yield "\n".join(f"{e}\n{f}" for e, f in french[start:start + 20])


def majority(path: Path) -> float:
    answers = [json.loads(line)["messages"][-1]["content"] for line in open(path, encoding="utf-8")]
    return Counter(answers).most_common(1)[0][1] / len(answers)


def stratalm(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "stratalm", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"stratalm {' '.join(map(str, args[:2]))} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def answer(reply: str) -> str:
    """The label a reply gives: its first word, lower-cased, punctuation aside ("Positive." and
    "positive, I think" both answer positive); the reply is cut at 4 new tokens and may run on."""
    words = reply.strip().lower().split()
    return words[0].strip(".,!?:;\"'") if words else ""


def accuracy(model, task, path: Path) -> dict:
    """Greedy replies on a chat JSONL file, scored by `answer` against the reference: accuracy with
    its standard error, and how often each answer came (a model stuck on one label shows here)."""
    import torch

    from stratalm.prompting.metrics import mean_and_stderr

    examples = task.read(str(path))
    with torch.inference_mode():
        replies = task.predict(model, examples, 128, batch_size=64)
    given = [answer(r["text"]) for r in replies]
    right = [float(g == e["messages"][-1]["content"]) for g, e in zip(given, examples)]
    mean, stderr = mean_and_stderr(right)
    return {"accuracy": round(mean, 4), "stderr": round(stderr, 4), "answers": dict(Counter(given).most_common(4))}


def pretrain(out: Path, corpus: Path, steps: int, seed: int) -> None:
    """Causal LM on the raw text: the tiny preset (4 layers, 128 wide), 2,048 BPE tokens (words of
    the reviews are mostly one token each), batches of 16 windows of 128 tokens."""
    stratalm("prepare", corpus, "--out", out / "data", "--vocab-size", "2048", "--quiet", "--overwrite")
    stratalm("pretrain", "--data", out / "data", "--out", out / "base", "--model", "tiny", "--max-steps", steps,
             "--overwrite", "model.max_seq_len=128", "model.dropout=0", "train.batch_size=16", "train.lr=3e-3",
             "train.warmup_steps=0.05", f"train.eval_every={steps}", "train.progress=false", f"train.seed={seed}")


def tune(out: Path, mixture: Path, steps: int, seed: int) -> None:
    """Instruction tuning: the chat task on the mixture, one conversation a row, up to the model's 128
    tokens (a shorter row would cut the reply off an MRPC pair, leaving nothing to learn). Not packed:
    in a packed row the answer can attend to the reviews and answers before it, which drowns its own
    review's words (measured: packed, 1,000 steps answered "positive" to 864 of 872 dev reviews)."""
    stratalm("finetune", "--task", "chat", "--model", out / "base", "--train", mixture / "train.jsonl",
             "--out", out / "tuned", "--max-steps", steps, "--batch-size", "16", "--lr", "2e-3", "--warmup", "0.05",
             "--max-length", "128", "--max-new-tokens", "4", "--quiet", "--overwrite", f"loop.seed={seed}")


STAGE_TIMES = "stage_times.json"  # in --out: how long each stage took when it ran
STAGE_FOLDERS = {"pretrain": "base", "tune": "tuned"}


def recorded_times(out: Path) -> dict:
    """out/stage_times.json: the seconds of each stage that ran ({} when there is none yet)."""
    try:
        values = json.loads((out / STAGE_TIMES).read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def made_in(out: Path, name: str) -> tuple[float | None, str]:
    """How long stage `name` took when its folder was made, and where that figure comes from:
    out/stage_times.json (written as the stage ran), else the training seconds the stage's folder
    records (the last train_s of its metrics.jsonl, without tokenizer training and data
    preparation); None where neither has it."""
    seconds = recorded_times(out).get(f"{name}_s")
    if isinstance(seconds, (int, float)):
        return float(seconds), STAGE_TIMES
    try:
        lines = (out / STAGE_FOLDERS[name] / "metrics.jsonl").read_text().splitlines()
        seconds = [json.loads(line)["train_s"] for line in lines if '"train_s"' in line][-1]
        return float(seconds), f"{STAGE_FOLDERS[name]}/metrics.jsonl train_s"
    except (OSError, ValueError, KeyError, IndexError):
        return None, "unknown"


def stage(out: Path, name: str, done: bool, timings: dict, work) -> dict | bool:
    """Run a stage (`work`) unless `done`, and set timings[<name>_s] to the seconds it took, also
    kept in out/stage_times.json; a stage that is `done` is reused, and its timing is the one from
    when it was made (`made_in`). Returns False for a stage run now, else {"made_s", "from"}."""
    key = f"{name}_s"
    if done:
        seconds, source = made_in(out, name)
        timings[key] = None if seconds is None else round(seconds, 1)
        return {"made_s": timings[key], "from": source}
    clock = time.perf_counter()
    work()
    timings[key] = round(time.perf_counter() - clock, 1)
    (out / STAGE_TIMES).write_text(json.dumps({**recorded_times(out), key: timings[key]}, indent=2) + "\n")
    return False


def run(out: Path, pretrain_steps: int, tune_steps: int, seed: int, sst2_train: int) -> dict:
    """Build, pretrain (unless out/base holds a finished model), instruction-tune and evaluate: generation
    accuracy of the tuned and the base model on the dev files, and `stratalm prompt-eval` (the shipped
    lm-evaluation-harness-style SST-2 and MRPC prompts, log-likelihood of each answer) of both."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    mixture = out / "mixture"
    sizes = build(mixture, sst2_train, seed)
    timings["build_s"] = round(time.perf_counter() - started, 1)

    corpus = out / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in raw_text(seed))
    reused = {}
    # A finished pretraining is reused (delete out/base to redo), and so is a finished tuning.
    reused["pretrain"] = stage(out, "pretrain", (out / "base" / "model.safetensors").is_file(), timings,
                               lambda: pretrain(out, corpus, pretrain_steps, seed))
    pretrain_val = [json.loads(line) for line in open(out / "base" / "metrics.jsonl") if "val_loss" in line][-1]
    reused["tune"] = stage(out, "tune", (out / "tuned" / "task.json").is_file(), timings,
                           lambda: tune(out, mixture, tune_steps, seed))

    from stratalm.checkpoint import load
    from stratalm.checkpoint.chat_template import DEFAULT_CHAT_TEMPLATE
    from stratalm.tasks import load_finetuned
    from stratalm.tasks.chat import ChatTask

    clock = time.perf_counter()
    tuned, tuned_task, _ = load_finetuned(str(out / "tuned"))
    # The base model under the very prompts the tuned one gets (the same template, the same decoding).
    # Every dev example counts (872 SST-2 reviews, 408 MRPC pairs), here and in prompt-eval.
    base, base_task = load(str(out / "base")).eval(), ChatTask({"max_new_tokens": 4}, {"chat_template": DEFAULT_CHAT_TEMPLATE})
    results = {}
    for name in ("sst2_heldout", "sst2_seen", "mrpc_heldout"):
        data = mixture / f"{name}.jsonl"
        results[name] = {"tuned": accuracy(tuned, tuned_task, data), "base": accuracy(base, base_task, data),
                         "majority_class": round(majority(data), 4), "examples": sum(1 for _ in open(data))}
    timings["evaluate_s"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    prompted = {name: {model: json.loads(stratalm("prompt-eval", out / model, "--task", name))
                       for model in ("base", "tuned")} for name in ("sst2", "mrpc")}
    timings["prompt_eval_s"] = round(time.perf_counter() - clock, 1)
    return {"case": "instruct", "mixture": sizes, "pretrain": {"steps": pretrain_steps, "val_loss": pretrain_val.get("val_loss")},
            "tune_steps": tune_steps, "results": results, "prompt_eval": prompted, "timings": timings,
            "reused": reused, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["build", "run"])
    parser.add_argument("--out", default="runs/instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sst2-train", type=int, default=40000, help="SST-2 training reviews in the mixture")
    parser.add_argument("--pretrain-steps", type=int, default=250)
    parser.add_argument("--tune-steps", type=int, default=700)
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: the mixture is built from the real data sets there.")
    out = Path(args.out)
    if args.action == "build":
        print(json.dumps(build(out, args.sst2_train, args.seed)))
    else:
        os.makedirs(out, exist_ok=True)
        figures = run(out, args.pretrain_steps, args.tune_steps, args.seed, args.sst2_train)
        (out / "results.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
