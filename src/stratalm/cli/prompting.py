"""`stratalm perplexity` and `prompt-eval`: use a model by prompting alone."""
from __future__ import annotations

import argparse
import json


def _perplexity(args: argparse.Namespace) -> None:
    from ..checkpoint import load
    from ..generate import choose_device
    from ..prompting.sliding_window import perplexity, read_text

    text = read_text(args.file)
    model = load(args.model, choose_device(args.device))
    result = perplexity(model, text, stride=args.stride, max_length=args.max_length, batch_size=args.batch_size,
                        prefix=not args.no_prefix, progress=True)
    print(json.dumps({"model": args.model, "file": args.file, **result}))


def _prompt_eval(args: argparse.Namespace) -> None:
    from ..checkpoint import load
    from ..generate import choose_device
    from ..prompting import evaluate_task, load_task

    specs = [load_task(task, args.data) for task in args.task]  # a bad task file fails before the model loads
    model = load(args.model, choose_device(args.device))
    for spec in specs:
        result = evaluate_task(model, spec, shots=args.shots, seed=args.seed, limit=args.limit,
                               calibrate=True if args.calibrate else None, batch_size=args.batch_size,
                               progress=True)
        print(json.dumps({**result, "model": args.model}, ensure_ascii=False), flush=True)


def add_parsers(sub) -> None:
    p = sub.add_parser("perplexity", help="token loss, perplexity and bits per byte of a text under a decoder",
                       description="Sliding-window perplexity (the method of the transformers perplexity guide): "
                                   "windows of --max-length tokens every --stride tokens, each scoring the tokens no "
                                   "earlier window scored. Prints one JSON line.")
    p.add_argument("model", help="checkpoint folder of a decoder (stratalm or Hugging Face)")
    p.add_argument("file", help="UTF-8 text file")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="tokens between window starts (default: half the window; = window: disjoint windows)")
    p.add_argument("--max-length", type=int, default=None, metavar="N", help="window length (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--no-prefix", action="store_true",
                   help="feed the text alone, as the guide does (its first token goes unscored); by default it "
                        "follows the end-of-text token, so every token of the text is scored")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=_perplexity)

    from ..prompting.tasks import task_names  # torch-free: lists the shipped YAML files

    p = sub.add_parser("prompt-eval", help="zero/few-shot accuracy of any family on a YAML task",
                       description="Score a model on prompted tasks: decoders score each choice as a continuation, "
                                   "masked-LM encoders in a cloze slot, T5 as its target; generation tasks decode "
                                   "greedily. Prints one JSON line of results per task.")
    p.add_argument("model", help="checkpoint folder (stratalm or Hugging Face)")
    p.add_argument("--task", action="append", required=True, metavar="TASK",
                   help=f"a task YAML file, or a shipped task: {', '.join(task_names())}; repeatable")
    p.add_argument("--shots", type=int, default=0, metavar="K", help="demonstrations drawn from the few-shot split")
    p.add_argument("--seed", type=int, default=1234, metavar="S", help="chooses the demonstrations")
    p.add_argument("--data", default=None, metavar="DIR", help="folder of the task's data files (default: the task's data_dir)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N test rows only")
    p.add_argument("--calibrate", action="store_true",
                   help="also report contextual calibration (Zhao et al. 2021) of multiple-choice scores")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=_prompt_eval)
