"""`stratalm generate`, `fill-mask`, `info` and `convert`: use and move a trained model."""
from __future__ import annotations

import argparse


def sampling_options(args: argparse.Namespace, num_samples=None) -> dict:
    """The keyword arguments of `generate` that the flags of `add_sampling_flags` give, checked
    before any model loads (`stratalm chat` shares them)."""
    from ..generate import check_generation_options

    stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop or []]
    check_generation_options(args.temperature, args.beams, num_samples, args.repetition_penalty, stops,
                             args.max_new_tokens, args.top_k, args.top_p)
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed, stop=stops, repetition_penalty=args.repetition_penalty,
                beams=args.beams, precision=args.precision)


def _generate(args: argparse.Namespace) -> None:
    from ..checkpoint import load
    from ..generate import choose_device, generate

    options = sampling_options(args, args.num_samples)
    model = load(args.model_dir, choose_device(args.device))
    options["echo"] = not args.no_echo
    if args.num_samples is None:  # one text, printed as it is produced
        generate(model, args.prompt, on_text=lambda t: print(t, end="", flush=True), **options)
        print()
        return
    for number, text in enumerate(generate(model, args.prompt, num_samples=args.num_samples, **options), start=1):
        print(f"--- sample {number} of {args.num_samples} ---")
        print(text)


def _fill_mask(args: argparse.Namespace) -> None:
    import json

    from ..checkpoint import load
    from ..generate import choose_device, fill_mask

    model = load(args.model_dir, choose_device(args.device))
    masks = fill_mask(model, args.text, top_k=args.top_k)
    if args.json:
        print(json.dumps(masks, ensure_ascii=False))
        return
    for number, guesses in enumerate(masks, start=1):
        if len(masks) > 1:
            print(f"mask {number} of {len(masks)}:")
        for guess in guesses:
            print(f"{guess['probability']:8.4f}  {json.dumps(guess['token'], ensure_ascii=False)}")


def _info(args: argparse.Namespace) -> None:
    import json

    from ..info import describe_model, format_info, load_for_info

    info = describe_model(load_for_info(args.path))
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def _convert(args: argparse.Namespace) -> None:
    import os

    from ..checkpoint import is_native, load, save
    from ..errors import OutputExistsError
    from ..config_fields import folder_kind

    target = args.to or ("hf" if is_native(args.src) else "stratalm")
    if os.path.exists(args.dst) and not os.path.isdir(args.dst):
        raise OutputExistsError(f"'{args.dst}' is a file, not a folder; choose another destination.")
    if os.path.isdir(args.dst) and os.path.exists(args.src) and os.path.samefile(args.src, args.dst):
        raise OutputExistsError(f"the destination '{args.dst}' is the source folder, whose files the export would "
                                f"replace; choose another destination.")
    kind = folder_kind(args.dst) if os.path.isdir(args.dst) else None
    if kind not in (None, "model folder"):  # --overwrite replaces a model, never a run or prepared data
        raise OutputExistsError(f"'{args.dst}' holds a {kind}, not a model folder; choose another destination.")
    if os.path.isdir(args.dst) and os.listdir(args.dst) and not args.overwrite:
        raise OutputExistsError(f"'{args.dst}' already exists and is not empty; choose another destination or pass --overwrite.")
    model = load(args.src)  # a LoRA fine-tune comes with its adapter merged: the export is the adapted model
    save(model, args.dst, format=target)
    print(f"wrote {args.dst} ({target} format, {model.config.family})")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """How `generate` decodes: the flags `stratalm generate` and `stratalm chat` share."""
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--beams", type=int, default=1, metavar="N",
                   help="beam search with N beams (deterministic: temperature, top-k, top-p and seed do not apply); "
                        "1 = no beam search")
    p.add_argument("--stop", action="append", metavar="STRING",
                   help="end the text at the first occurrence of STRING, which is not printed; repeatable "
                        "(\\n and \\t are read as newline and tab)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="F",
                   help="CTRL's penalty on tokens already in the text: positive logits divided by F, negative "
                        "ones multiplied (1 = none, 1.2 is common)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="fp32 (default: the tokens transformers gives), bf16 autocast, or auto (bf16 on CUDA and on "
                        "CPUs with AMX, where it is about 3x faster; fp32 elsewhere)")


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a trained model",
                       description="Continue a prompt with a decoder. Prints the prompt followed by the "
                                   "continuation (--no-echo: the continuation only), exactly what "
                                   "stratalm.generate(..., echo=True) returns.")
    p.add_argument("model_dir", help="checkpoint folder")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    add_sampling_flags(p)
    p.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help="draw N samples together, each printed after a '--- sample i of N ---' line")
    p.add_argument("--no-echo", action="store_true", help="print the continuation only, not the prompt before it")
    p.set_defaults(func=_generate)

    p = sub.add_parser("fill-mask", help="a masked-LM encoder's most likely tokens for each mask of a text")
    p.add_argument("model_dir", help="checkpoint folder of an encoder with a masked-LM head")
    p.add_argument("text", help="text with the model's mask token, [MASK] (BERT, ALBERT) or <mask> (RoBERTa, "
                                "stratalm tokenizers); either spelling works, once or several times")
    p.add_argument("--top-k", type=int, default=5, help="tokens to list per mask")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print JSON: per mask, a list of {token, id, probability}")
    p.set_defaults(func=_fill_mask)

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
