"""`stratalm demo`: the whole pipeline on text every Python install carries.

The corpus is the English prose of Python's own documentation topics (`pydoc_data.topics`, about
465 KB): one document per topic. A small GPT trains on it for about two minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import shutil

from .config_fields import at_least, require
from .errors import OutputExistsError

MARKER = "stratalm-demo.json"
DEMO_STEPS = 400  # about two minutes on 2 quiet CPU cores (4,096 tokens a step)
LENS_TOKENS = 48  # the lens report reads the sample's first tokens: a page that stays quick to open


def write_corpus(path: str) -> int:
    from pydoc_data.topics import topics

    with open(path, "w", encoding="utf-8") as handle:
        for name in sorted(topics):
            handle.write(json.dumps({"text": topics[name]}) + "\n")
    return len(topics)


def run_demo(out: str = "runs/demo", steps: int | None = None) -> None:
    from .checkpoint import load
    from .generate import generate
    from .data import prepare
    from .loop.pretraining import build_run_config, pretrain

    if steps is not None:  # checked before anything is written: a refused value leaves no half-built folder
        require("--steps", steps, at_least(1))
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputExistsError(f"--out '{out}' is a file, not a folder; choose another --out.")
    if os.path.exists(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
        raise OutputExistsError(f"'{out}' exists and is not a demo folder; choose another --out.")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    with open(os.path.join(out, MARKER), "w") as handle:
        json.dump({"what": "stratalm demo run; `stratalm demo` replaces this folder"}, handle)

    corpus = os.path.join(out, "pydoc_topics.jsonl")
    print(f"corpus: {write_corpus(corpus)} documents of Python's documentation (pydoc_data.topics)")
    prepare([corpus], os.path.join(out, "data"), tokenizer="bpe", vocab_size=2048, val_fraction=0.05)

    model_dir = os.path.join(out, "model")
    run = build_run_config(None, {
        "data": os.path.join(out, "data"), "out": model_dir,
        # The speedrun's choices (examples/speedrun_cpu.yaml), which learn fastest here: the Llama block
        # (rotary positions, RMSNorm, SwiGLU), no dropout, a separate output head, a large batch and lr.
        "model": {"preset": "llama-tiny", "n_layers": 4, "n_heads": 4, "n_kv_heads": 4, "d_model": 128, "d_ff": 344,
                  "max_seq_len": 128, "dropout": 0.0, "tie_embeddings": False},
        "train": {"max_steps": DEMO_STEPS if steps is None else steps, "batch_size": 32, "lr": 3e-3, "min_lr": 1e-4,
                  "warmup_steps": 30, "eval_every": 100, "eval_windows": 200, "log_every": 10},
    })
    result = pretrain(run)
    print(f"validation loss {result['val_loss']:.3f} (perplexity {result['val_perplexity']:.1f}); checkpoint: {model_dir}")

    model = load(model_dir)
    prompt = "The "
    print(f"\nsample (prompt {prompt!r}, temperature 0.8, top-k 40):\n")
    print(prompt, end="", flush=True)
    sample = prompt + generate(model, prompt, max_new_tokens=120, temperature=0.8, top_k=40, seed=0,
                               on_text=lambda text: print(text, end="", flush=True))
    print(f"\n\nagain: stratalm generate {model_dir} --prompt \"The for statement\" --temperature 0.8 --top-k 40")
    _lens_report(model, sample, model_dir, os.path.join(out, "lens"))


def _lens_report(model, sample: str, model_dir: str, folder: str) -> None:
    """The layer lens on the model's own sample: what each layer predicts and each head attends to."""
    from .lens.build import report_data
    from .lens.report import write_report

    ids = model.tokenizer.encode(sample)[:LENS_TOKENS]
    text = model.tokenizer.decode(ids)
    path = write_report(report_data(model, text, source=model_dir), folder)
    print(f"\nthe layer lens on the first {len(ids)} tokens of the sample (attention of every layer and head, "
          f"the logit lens):\n  open {path}\n  again: stratalm inspect report {model_dir} --text \"...\" --out DIR")
