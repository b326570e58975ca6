"""`stratalm inspect ...`: the layer lens's verbs."""
from __future__ import annotations

import argparse


def _inspect_report(args: argparse.Namespace) -> None:
    from ..checkpoint import load
    from ..lens.build import report_data
    from ..lens.report import write_report

    model = load(args.model)
    tuned = None
    if args.tuned_lens:
        from ..lens.tuned import TunedLens

        tuned = TunedLens.load(args.tuned_lens, model)
    path = write_report(report_data(model, args.text, args.text_pair, args.target, source=args.model, top_k=args.top_k,
                                    tuned=tuned, patch_from=args.patch_from), args.out)
    print(f"wrote {path} (open it in a browser; figures and arrays are next to it)")


def _inspect_similarity(args: argparse.Namespace) -> None:
    from ..lens.verbs import similarity

    print(similarity(args.model, args.data, args.out, args.other, args.text_column, args.limit, args.pooling))


def _inspect_probe(args: argparse.Namespace) -> None:
    from ..lens.verbs import probe

    print(probe(args.model, args.data, args.out, args.token_level, args.text_column, args.label_column, args.limit,
                args.seeds))


def _inspect_heads(args: argparse.Namespace) -> None:
    from ..lens.verbs import heads

    print(heads(args.model, args.out, args.data, args.text_column, args.limit, args.seed))


def _inspect_tuned_lens(args: argparse.Namespace) -> None:
    from ..lens.verbs import tuned_lens

    print(tuned_lens(args.model, args.data, args.out, args.steps, args.batch_size, args.seed, args.windows))


def add_parsers(sub) -> None:
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
