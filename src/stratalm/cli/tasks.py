"""`stratalm finetune`, `evaluate` and `predict`: downstream tasks."""
from __future__ import annotations

import argparse
import sys


def _task_flags(args: argparse.Namespace) -> dict:
    """The task options given on the command line (flags left out keep the task's defaults)."""
    from ..tasks import all_options

    return {key: getattr(args, key) for key in all_options() if hasattr(args, key)}


# `stratalm finetune` flags -> keys of FinetuneConfig ("loop." for the loop's own knobs).
FINETUNE_FLAGS: dict[str, tuple[str, type]] = {
    "task": ("task", str), "model": ("model", str), "train": ("train", str), "dev": ("dev", str), "out": ("out", str),
    "epochs": ("epochs", float), "max_steps": ("loop.max_steps", int), "batch_size": ("loop.batch_size", int),
    "grad_accum": ("loop.grad_accum", int), "lr": ("loop.lr", float), "warmup": ("loop.warmup_steps", float),
    "weight_decay": ("loop.weight_decay", float), "grad_clip": ("loop.grad_clip", float),
    "max_length": ("max_length", int), "max_train_examples": ("max_train_examples", int), "seed": ("loop.seed", int),
    "eval_every": ("loop.eval_every", int), "save_every": ("loop.save_every", int), "log_every": ("loop.log_every", int),
    "eval_batch_size": ("loop.eval_batch_size", int), "best_metric": ("best_metric", str), "device": ("loop.device", str),
    "precision": ("loop.precision", str), "train_only": ("train_only", str), "freeze_layers": ("freeze_layers", int),
    "layer_decay": ("layer_decay", float), "lora_rank": ("lora_rank", int), "lora_alpha": ("lora_alpha", float),
    "lora_dropout": ("lora_dropout", float), "lora_targets": ("lora_targets", str),
}
FINETUNE_SWITCHES = {"freeze_embeddings": "freeze_embeddings", "merge_lora": "merge_lora", "lora_copy_base": "lora_copy_base",
                     "compile": "loop.compile", "tensorboard": "loop.tensorboard"}


def _finetune(args: argparse.Namespace) -> None:
    from ..config_fields import dotted_to_nested, merge_nested, parse_overrides
    from ..errors import ConfigError
    from ..tasks.finetune import build_finetune_config, finetune

    flags = {key: getattr(args, name) for name, (key, _) in FINETUNE_FLAGS.items() if getattr(args, name) is not None}
    flags.update({key: True for name, key in FINETUNE_SWITCHES.items() if getattr(args, name)})
    if args.quiet:
        flags["loop.progress"] = False
    nested = dotted_to_nested(flags)
    task_flags = _task_flags(args)
    if task_flags:
        nested["task_options"] = task_flags
    cfg = build_finetune_config(args.config, merge_nested(parse_overrides(args.overrides), nested))
    if not args.config and args.task is None and "task" not in parse_overrides(args.overrides):
        raise ConfigError("--task is required (or a --config file that sets task).")
    result = finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    best = result["best"]
    if best:
        print(f"best dev {result['metric']} {best[result['metric']]:.4f} at step {result['best_step']}; "
              f"fine-tuned model in {cfg.out}")


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from ..tasks import evaluate

    print(json.dumps(evaluate(args.model, args.data, args.batch_size, args.device, _task_flags(args))))


def _check_predictions_file(out: str, data: str) -> None:
    """--out is a file to (over)write, never the input itself and never a folder."""
    import os

    from ..errors import OutputExistsError

    if os.path.isdir(out):
        raise OutputExistsError(f"--out '{out}' is a folder; give the path of the JSONL file to write.")
    if os.path.exists(out) and os.path.exists(data) and os.path.samefile(out, data):
        raise OutputExistsError(f"--out '{out}' is the --data file, which the predictions would overwrite; "
                                f"choose another --out.")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise OutputExistsError(f"--out '{out}' is in a folder that does not exist ({parent}); create it first.")


def _predict(args: argparse.Namespace) -> None:
    import json

    from ..tasks import predict

    if args.out:
        _check_predictions_file(args.out, args.data)
    lines = [json.dumps(p, ensure_ascii=False) for p in predict(args.model, args.data, args.batch_size, args.device,
                                                                _task_flags(args))]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines):,} predictions to {args.out}", file=sys.stderr)
    else:
        print("\n".join(lines))


def add_parsers(sub) -> None:
    from ..tasks import all_options, task_names
    from ..tasks.finetune_config import finetune_config_help, finetune_field_help
    from ..tasks.options import Option

    def task_flags(p: argparse.ArgumentParser) -> None:
        group = p.add_argument_group("task options (each applies to the tasks that declare it)")
        for key, spec in all_options().items():
            kind = {"action": "store_true"} if spec.type is bool else {"type": spec.type}
            group.add_argument(Option.flag(key), dest=key, default=argparse.SUPPRESS, help=spec.help, **kind)

    p = sub.add_parser("finetune", help="fine-tune a pretrained model on a task (classification, tagging, ...)",
                       epilog=finetune_config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help=f"one of: {', '.join(task_names())}")
    p.add_argument("--model", help="pretrained model folder (stratalm or Hugging Face), or for seq2seq a preset name with --tokenizer-from-train")
    p.add_argument("--train", help="training data file")
    p.add_argument("--dev", help="dev data file: evaluated during training; the best weights by its metric are kept")
    p.add_argument("--out", help="output folder: the fine-tuned model, task.json, metrics.jsonl")
    p.add_argument("--config", help="YAML file with config keys (see below); flags and key=value overrides win")
    for name, (key, kind) in FINETUNE_FLAGS.items():
        if name not in ("task", "model", "train", "dev", "out"):
            p.add_argument(Option.flag(name), type=kind, help=f"same as {key}: {finetune_field_help(key)}")
    for name, key in FINETUNE_SWITCHES.items():
        p.add_argument(Option.flag(name), action="store_true", help=f"same as {key}=true: {finetune_field_help(key)}")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar (loop.progress=false)")
    p.add_argument("overrides", nargs="*", help="config overrides as dotted keys, e.g. loop.lr=3e-5 loop.grad_accum=2")
    task_flags(p)
    p.set_defaults(func=_finetune)

    for name, func, text in [("evaluate", _evaluate, "print a fine-tuned model's metrics on a labelled file as JSON"),
                             ("predict", _predict, "write a fine-tuned model's predictions as JSON lines")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("--model", required=True, help="a fine-tuned folder (the --out of stratalm finetune)")
        if name == "predict":
            p.add_argument("--data", required=True, help="data file in the task's format, labels optional; "
                           "classification also reads a .txt file: one input per line (a pair: two texts and a tab)")
            p.add_argument("--out", help="JSONL file to write (default: standard output); classification writes "
                                         "label, score, text (and pair) and probabilities (label -> probability)")
        else:
            p.add_argument("--data", required=True, help="labelled data file in the task's format")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        task_flags(p)
        p.set_defaults(func=func)
