"""`stratalm prepare`, `pretrain`, `plot` and `demo`: from text files to a trained run."""
from __future__ import annotations

import argparse

from .parsing import value_on_line


def _prepare(args: argparse.Namespace) -> None:
    from ..data import prepare
    from ..data.prepare import describe_split

    manifest = prepare(args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       val_share=args.val_share, seed=args.seed, text_field=args.text_field, overwrite=args.overwrite,
                       progress=not args.quiet, sentinels=args.sentinels, lowercase=args.lowercase,
                       tokenizer_family=args.tokenizer_family, workers=args.workers)
    print(f"wrote {args.out}: {manifest['n_tokens']:,} tokens ({manifest['dtype']}) in {manifest['n_documents']:,} "
          f"documents, vocabulary {manifest['vocab_size']:,}; {describe_split(manifest)}")


def _pretrain(args: argparse.Namespace) -> None:
    from ..config_fields import merge_nested, parse_overrides
    from ..loop.pretraining import build_run_config, pretrain

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
    # --resume continues with the run.yaml saved in --out: only what changes need be given again.
    run = build_run_config(args.config, merge_nested(parse_overrides(args.overrides), flags),
                           resume=args.resume and not args.overwrite)
    observers = []
    if run.lens.every:
        from ..lens.dynamics import LayerDynamics

        observers.append(LayerDynamics(run.lens.every, run.lens.windows))
    result = pretrain(run, resume=args.resume, overwrite=args.overwrite, observers=observers)
    if "val_loss" in result:
        from ..loop.pretraining import describe_scores

        print(f"final {describe_scores(result)}; checkpoint in {run.out}")


def _plot(args: argparse.Namespace) -> None:
    from ..plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")


def _demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    run_demo(args.out, steps=args.steps)


def _pretrain_help(line: list[str]) -> str:
    """The config keys with the values of the preset named on the line (--model or model.preset)."""
    from ..loop.run_config import config_help

    return config_help(value_on_line(line, "--model", "model.preset"))


def add_parsers(sub) -> None:
    p = sub.add_parser("prepare", help="text files, folders or JSONL -> tokenizer + token shards")
    p.add_argument("inputs", nargs="+", help="text files, folders of them, or JSONL files (one document per line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="bpe",
                   help="bpe (byte-level BPE, GPT-2), char, wordpiece (BERT, ELECTRA), unigram (SentencePiece-style: T5, "
                        "ALBERT, XLNet), or the path of a tokenizer.json or of a Hugging Face folder (vocab.txt and "
                        "spiece.model are converted)")
    p.add_argument("--vocab-size", type=int, default=8192, help="bpe, wordpiece or unigram vocabulary size (default 8192)")
    p.add_argument("--tokenizer-family", choices=["bert", "electra", "t5", "albert", "xlnet"],
                   help="whose special tokens and input template a wordpiece (bert, electra; default bert) or unigram "
                        "(t5, albert, xlnet; default t5) tokenizer gets")
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="lowercase (and strip accents) before tokenizing, for wordpiece and unigram (default: the "
                        "family's: bert and albert lowercase, t5 and xlnet do not)")
    p.add_argument("--val-share", "--val-fraction", dest="val_share", type=float, default=0.1,
                   help="share of the documents held out for validation, drawn with --seed (default 0.1); with too "
                        "few documents to hold out whole ones (one text file), the last share of the tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of validation documents (default 0)")
    p.add_argument("--text-field", default="text", help="JSONL field that holds the text")
    p.add_argument("--sentinels", type=int, default=0, help="add N sentinel tokens <extra_id_0..N-1> (T5 span corruption)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that encode in parallel, a few batches each in flight so memory stays bounded "
                        "(default 1: this process, with the encoder's own threads)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("pretrain", help="train a model on a prepared folder",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog_for = _pretrain_help  # the key list, with the values of the --model on the line
    p.add_argument("--data", help="prepared data folder (from `stratalm prepare`)")
    p.add_argument("--out", help="run folder: checkpoint, metrics.jsonl, run.yaml")
    p.add_argument("--model", help="preset name (tiny, gpt2, llama, ...) or a checkpoint folder to start from")
    p.add_argument("--config", help="YAML file with config keys (see below)")
    p.add_argument("--objective", help="pretraining objective (default clm)")
    p.add_argument("--max-steps", type=int, help="same as train.max_steps")
    p.add_argument("--save-every", type=int, help="same as train.save_every")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out with the settings of its run.yaml (flags and keys given again "
                        "must match, except --max-steps and the cadence); starts fresh if there is none")
    p.add_argument("--overwrite", action="store_true", help="replace the run saved in --out")
    p.add_argument("--compile", action="store_true", help="same as train.compile=true")
    p.add_argument("overrides", nargs="*", help="config overrides as dotted keys, e.g. train.lr=3e-4 model.n_layers=4 (anywhere on the line)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("plot", help="draw a run's loss and metric curves to a PNG")
    p.add_argument("run_dir", help="a training run's --out folder")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("demo", help="prepare the built-in corpus, train a small GPT for about two minutes, sample")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's data and model")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: about two minutes)")
    p.set_defaults(func=_demo)
