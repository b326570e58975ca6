"""`stratalm generate`, `info` and `convert`: use and move a trained model."""
from __future__ import annotations

import argparse


def _generate(args: argparse.Namespace) -> None:
    from ..checkpoint import load
    from ..generate import generate

    model = load(args.model_dir)
    print(args.prompt, end="", flush=True)
    generate(model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_text=lambda t: print(t, end="", flush=True))
    print()


def _info(args: argparse.Namespace) -> None:
    import json

    from ..info import describe_model, format_info, load_for_info

    info = describe_model(load_for_info(args.path))
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def _convert(args: argparse.Namespace) -> None:
    import os

    from ..checkpoint import is_native, load, save
    from ..errors import OutputExistsError

    target = args.to or ("hf" if is_native(args.src) else "stratalm")
    if os.path.exists(args.dst) and os.listdir(args.dst) and not args.overwrite:
        raise OutputExistsError(f"'{args.dst}' already exists and is not empty; choose another destination or pass --overwrite.")
    model = load(args.src)  # a LoRA fine-tune comes with its adapter merged: the export is the adapted model
    save(model, args.dst, format=target)
    print(f"wrote {args.dst} ({target} format, {model.config.family})")


def add_parsers(sub) -> None:
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
