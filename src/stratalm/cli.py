"""The `stratalm` command: parses arguments and calls the library. Errors a user can cause print
one line, `error: <sentence>`, and exit with status 2."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from .errors import StratalmError


def _prepare(args: argparse.Namespace) -> None:
    from .data import prepare

    manifest = prepare(args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, text_field=args.text_field, overwrite=args.overwrite,
                       progress=not args.quiet, sentinels=args.sentinels)
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    print(f"wrote {args.out}: {manifest['n_tokens']:,} tokens ({manifest['dtype']}) in {manifest['n_documents']:,} "
          f"documents, vocabulary {manifest['vocab_size']:,}; train {train[1] - train[0]:,}, validation {val[1] - val[0]:,} tokens")


def _pretrain(args: argparse.Namespace) -> None:
    from .config_fields import merge_nested, parse_overrides
    from .loop.pretraining import build_run_config, pretrain

    flags: dict = {}
    if args.data:
        flags["data"] = args.data
    if args.out:
        flags["out"] = args.out
    if args.objective:
        flags["objective"] = args.objective
    if args.model:
        flags["model"] = {"preset": args.model}
    train_flags = {k: v for k, v in {"max_steps": args.max_steps, "save_every": args.save_every,
                                     "compile": True if args.compile else None}.items() if v is not None}
    if train_flags:
        flags["train"] = train_flags
    run = build_run_config(args.config, merge_nested(parse_overrides(args.overrides), flags))
    observers = []
    if run.lens.every:
        from .lens.dynamics import LayerDynamics

        observers.append(LayerDynamics(run.lens.every, run.lens.windows))
    result = pretrain(run, resume=args.resume, overwrite=args.overwrite, observers=observers)
    if "val_loss" in result:
        from .loop.pretraining import describe_scores

        print(f"final {describe_scores(result)}; checkpoint in {run.out}")


def _generate(args: argparse.Namespace) -> None:
    from .checkpoint import load
    from .generate import generate

    model = load(args.model_dir)
    print(args.prompt, end="", flush=True)
    generate(model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_text=lambda t: print(t, end="", flush=True))
    print()


def _info(args: argparse.Namespace) -> None:
    import json

    from .info import describe_model, format_info, load_for_info

    info = describe_model(load_for_info(args.path))
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def _convert(args: argparse.Namespace) -> None:
    import os

    from .checkpoint import is_native, load, save
    from .errors import OutputExistsError

    target = args.to or ("hf" if is_native(args.src) else "stratalm")
    if os.path.exists(args.dst) and os.listdir(args.dst) and not args.overwrite:
        raise OutputExistsError(f"'{args.dst}' already exists and is not empty; choose another destination or pass --overwrite.")
    model = load(args.src)  # a LoRA fine-tune comes with its adapter merged: the export is the adapted model
    save(model, args.dst, format=target)
    print(f"wrote {args.dst} ({target} format, {model.config.family})")


def _plot(args: argparse.Namespace) -> None:
    from .plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps)


def _inspect_report(args: argparse.Namespace) -> None:
    from .checkpoint import load
    from .lens.build import report_data
    from .lens.report import write_report

    model = load(args.model)
    tuned = None
    if args.tuned_lens:
        from .lens.tuned import TunedLens

        tuned = TunedLens.load(args.tuned_lens, model)
    path = write_report(report_data(model, args.text, args.text_pair, args.target, source=args.model, top_k=args.top_k,
                                    tuned=tuned, patch_from=args.patch_from), args.out)
    print(f"wrote {path} (open it in a browser; figures and arrays are next to it)")


def _inspect_similarity(args: argparse.Namespace) -> None:
    from .lens.verbs import similarity

    print(similarity(args.model, args.data, args.out, args.other, args.text_column, args.limit, args.pooling))


def _inspect_probe(args: argparse.Namespace) -> None:
    from .lens.verbs import probe

    print(probe(args.model, args.data, args.out, args.token_level, args.text_column, args.label_column, args.limit,
                args.seeds))


def _inspect_heads(args: argparse.Namespace) -> None:
    from .lens.verbs import heads

    print(heads(args.model, args.out, args.data, args.text_column, args.limit, args.seed))


def _inspect_tuned_lens(args: argparse.Namespace) -> None:
    from .lens.verbs import tuned_lens

    print(tuned_lens(args.model, args.data, args.out, args.steps, args.batch_size, args.seed, args.windows))


def _add_inspect_parsers(sub) -> None:
    p = sub.add_parser("inspect", help="look inside a model, layer by layer (the layer lens)")
    verbs = p.add_subparsers(dest="verb", required=True)
    r = verbs.add_parser("report", help="one offline HTML page: attention of every layer and head, head statistics, "
                                        "the logit lens; PNG figures and JSON/safetensors arrays beside it")
    r.add_argument("model", help="a model folder (stratalm or Hugging Face)")
    r.add_argument("--text", required=True, help="the text the model reads")
    r.add_argument("--text-pair", help="a second segment (encoders: [CLS] text [SEP] pair [SEP])")
    r.add_argument("--target", help="T5: what the decoder reads (default: the text itself)")
    r.add_argument("--out", required=True, help="folder for report.html and its figures")
    r.add_argument("--top-k", type=int, default=5, help="tokens per cell of the logit lens (default 5)")
    r.add_argument("--tuned-lens", help="a tuned lens folder (stratalm inspect tuned-lens) to show beside the logit lens")
    r.add_argument("--patch-from", help="another text of the same length in tokens: adds a (layer x position) "
                                        "activation-patching heat map")
    r.set_defaults(func=_inspect_report)

    r = verbs.add_parser("similarity", help="linear CKA between every pair of layers of MODEL, or layer by layer "
                                            "between MODEL and OTHER (e.g. pretrained vs fine-tuned)")
    r.add_argument("model", help="a model folder")
    r.add_argument("other", nargs="?", help="a second model folder to compare with")
    r.add_argument("--data", required=True, help="texts: a .txt file (one per line) or a TSV/CSV/JSONL table")
    r.add_argument("--text-column", help="the table's text column (default: as the classification task finds it)")
    r.add_argument("--limit", type=int, default=512, help="texts to read (default 512)")
    r.add_argument("--pooling", default="mean", help="mean, cls, last or token (default mean)")
    r.add_argument("--out", required=True, help="folder for cka.json and cka.png")
    r.set_defaults(func=_inspect_similarity)

    r = verbs.add_parser("probe", help="per-layer linear probes of labels (with a control task: selectivity)")
    r.add_argument("model", help="a model folder")
    r.add_argument("--data", required=True, help="texts with labels (TSV/CSV/JSONL), or CoNLL with --token-level")
    r.add_argument("--token-level", action="store_true", help="one tag per word (CoNLL) instead of one label per text")
    r.add_argument("--text-column", help="the table's text column")
    r.add_argument("--label-column", help="the table's label column")
    r.add_argument("--limit", type=int, default=1000, help="examples to read (default 1000)")
    r.add_argument("--seeds", type=int, default=3, help="train/test splits to average over (default 3)")
    r.add_argument("--out", required=True, help="folder for probes.json and probes.png")
    r.set_defaults(func=_inspect_probe)

    r = verbs.add_parser("heads", help="importance of every head (Michel et al. 2019), then the metric as the least "
                                       "important (or random) heads are pruned")
    r.add_argument("model", help="a fine-tuned folder (its task's loss and metric) or a decoder / T5 folder (LM loss)")
    r.add_argument("--data", required=True, help="a labelled file in the task's format, or texts (.txt or a table)")
    r.add_argument("--text-column", help="the table's text column (texts for a decoder)")
    r.add_argument("--limit", type=int, default=256, help="texts to read for a decoder (default 256)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random pruning orders")
    r.add_argument("--out", required=True, help="folder for heads.json and pruning.png")
    r.set_defaults(func=_inspect_heads)

    r = verbs.add_parser("tuned-lens", help="train per-layer translators (Belrose et al. 2023) on a prepared folder; "
                                            "print tuned vs plain logit-lens KL per layer")
    r.add_argument("model", help="a model folder with an LM or MLM head")
    r.add_argument("--data", required=True, help="a prepared folder (stratalm prepare) with the model's tokenizer")
    r.add_argument("--out", required=True, help="folder for the tuned lens (tuned_lens.safetensors + .json)")
    r.add_argument("--steps", type=int, default=250, help="training steps (default 250)")
    r.add_argument("--batch-size", type=int, default=8, help="windows per step (default 8)")
    r.add_argument("--windows", type=int, default=64, help="held-out windows for the comparison (default 64)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_inspect_tuned_lens)


def _task_flags(args: argparse.Namespace) -> dict:
    """The task options given on the command line (flags left out keep the task's defaults)."""
    from .tasks import all_options

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
FINETUNE_SWITCHES = {"freeze_embeddings": "freeze_embeddings", "merge_lora": "merge_lora", "compile": "loop.compile",
                     "tensorboard": "loop.tensorboard"}


def _finetune(args: argparse.Namespace) -> None:
    from .config_fields import dotted_to_nested, merge_nested, parse_overrides
    from .errors import ConfigError
    from .tasks.finetune import build_finetune_config, finetune

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

    from .tasks import evaluate

    print(json.dumps(evaluate(args.model, args.data, args.batch_size, args.device, _task_flags(args))))


def _predict(args: argparse.Namespace) -> None:
    import json

    from .tasks import predict

    lines = [json.dumps(p, ensure_ascii=False) for p in predict(args.model, args.data, args.batch_size, args.device,
                                                                _task_flags(args))]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
        print(f"wrote {len(lines):,} predictions to {args.out}", file=sys.stderr)
    else:
        print("\n".join(lines))


def _add_task_parsers(sub) -> None:
    from .config_fields import field_help
    from .tasks import all_options, task_names
    from .tasks.finetune_config import FinetuneConfig, finetune_config_help
    from .tasks.options import Option

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
            p.add_argument(Option.flag(name), type=kind, help=f"same as {key}: {field_help(FinetuneConfig(), key)}")
    for name, key in FINETUNE_SWITCHES.items():
        p.add_argument(Option.flag(name), action="store_true", help=f"same as {key}=true: {field_help(FinetuneConfig(), key)}")
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
        p.add_argument("--data", required=True, help="data file in the task's format")
        if name == "predict":
            p.add_argument("--out", help="JSONL file to write (default: standard output)")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        task_flags(p)
        p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from .loop.run_config import config_help

    parser = argparse.ArgumentParser(prog="stratalm", description="Build, pretrain and sample Transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="text files, folders or JSONL -> tokenizer + token shards")
    p.add_argument("inputs", nargs="+", help="text files, folders of them, or JSONL files (one document per line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="bpe", help="bpe (byte-level BPE), char, or the path of a tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default 8192)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the tokens kept for validation")
    p.add_argument("--text-field", default="text", help="JSONL field that holds the text")
    p.add_argument("--sentinels", type=int, default=0, help="add N sentinel tokens <extra_id_0..N-1> (T5 span corruption)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("pretrain", help="train a model on a prepared folder",
                       epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="prepared data folder (from `stratalm prepare`)")
    p.add_argument("--out", help="run folder: checkpoint, metrics.jsonl, run.yaml")
    p.add_argument("--model", help="preset name (tiny, gpt2, llama, ...) or a checkpoint folder to start from")
    p.add_argument("--config", help="YAML file with config keys (see below)")
    p.add_argument("--objective", help="pretraining objective (default clm)")
    p.add_argument("--max-steps", type=int, help="same as train.max_steps")
    p.add_argument("--save-every", type=int, help="same as train.save_every")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out (starts fresh if there is none)")
    p.add_argument("--overwrite", action="store_true", help="replace the run saved in --out")
    p.add_argument("--compile", action="store_true", help="same as train.compile=true")
    p.add_argument("overrides", nargs="*", help="config overrides as dotted keys, e.g. train.lr=3e-4 model.n_layers=4")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("generate", help="continue a prompt with a trained model")
    p.add_argument("model_dir", help="checkpoint folder")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_generate)

    p = sub.add_parser("info", help="family, sizes and parameter count per component of a checkpoint or preset")
    p.add_argument("path", help="checkpoint folder (stratalm or Hugging Face) or preset name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("convert", help="convert a checkpoint between stratalm and Hugging Face formats")
    p.add_argument("src", help="checkpoint folder (stratalm or Hugging Face)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--to", choices=["hf", "stratalm"], help="target format (default: the other one)")
    p.add_argument("--overwrite", action="store_true", help="replace files in an existing output folder")
    p.set_defaults(func=_convert)

    p = sub.add_parser("plot", help="draw a run's loss and metric curves to a PNG")
    p.add_argument("run_dir", help="a training run's --out folder")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("demo", help="prepare the built-in corpus, train a small GPT for about two minutes, sample")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's data and model")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: about two minutes)")
    p.set_defaults(func=_demo)

    _add_task_parsers(sub)
    _add_inspect_parsers(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except StratalmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
