"""Every task's settings, declared without torch so `stratalm finetune --help` (which lists them
all as flags) loads instantly. Each `Option` becomes a --flag of finetune/evaluate/predict
(`text_column` -> `--text-column`) and a key of the fine-tuned folder's task.json; a task class
takes its table from TASK_OPTIONS. The column names each reader looks for by default live here too,
since the help texts name them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """A task setting: a --flag of finetune/evaluate/predict and a key of task.json."""

    default: Any
    help: str
    type: type = str

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")


# Default columns of each reader, tried in order.
TEXT_COLUMNS = ("sentence", "text", "sentence1", "#1 String", "question")
PAIR_COLUMNS = {"sentence1": "sentence2", "#1 String": "#2 String", "question": "sentence"}  # GLUE's pairs
LABEL_COLUMNS = ("label", "Quality", "labels")
QUERY_COLUMNS = ("query", "question", "anchor", "sentence1", "#1 String", "source", "text")
RETRIEVAL_TARGET_COLUMNS = ("positive", "target", "document", "passage", "sentence2", "#2 String")
SOURCE_COLUMNS = ("source", "src", "input", "text", "question")
SEQ2SEQ_TARGET_COLUMNS = ("target", "tgt", "output", "translation", "answer", "summary")
POOLING_NAMES = ("mean", "cls", "last")  # embed.POOLINGS (a test keeps the two equal)

TASK_OPTIONS: dict[str, dict[str, Option]] = {
    "classification": {
        "text_column": Option(None, f"column of the text (default: the first of {', '.join(TEXT_COLUMNS)} in the file)"),
        "text_pair_column": Option(None, "column of the second text of a pair (default: none, or GLUE's partner of "
                                         "the text column: sentence1 -> sentence2, '#1 String' -> '#2 String')"),
        "label_column": Option(None, f"column of the label (default: the first of {', '.join(LABEL_COLUMNS)})"),
    },
    "tagging": {},
    "qa": {
        "doc_stride": Option(128, "tokens shared by consecutive windows of a long context", int),
        "max_query_length": Option(64, "questions are cut to this many tokens", int),
        "max_answer_length": Option(30, "longest answer, in tokens", int),
        "language": Option("auto", "en (SQuAD's word F1), zh (character F1, as for CMRC 2018) or auto (zh when "
                                   "most context characters are Chinese)"),
    },
    "seq2seq": {
        "source_column": Option(None, f"column of the source text (a number for a file without a header; default: "
                                      f"the first of {', '.join(SOURCE_COLUMNS)}, or column 0)"),
        "target_column": Option(None, f"column of the target text (default: the first of "
                                      f"{', '.join(SEQ2SEQ_TARGET_COLUMNS)}, or column 1)"),
        "beams": Option(1, "beam width when decoding (1 = greedy)", int),
        "length_penalty": Option(1.0, "beam search ranks hypotheses by log-probability / length ** this", float),
        "max_new_tokens": Option(64, "longest output, in tokens", int),
        "tokenizer_from_train": Option(0, "with a preset name as --model: train a byte-level BPE tokenizer of this "
                                          "many tokens on the training pairs and start the model from scratch", int),
    },
    "chat": {
        "chat_template": Option(None, "chat task: jinja2 chat template file to train with and store in the model (default: "
                                      "the base folder's tokenizer_config.json chat_template, else 'role: content<eos>' lines)"),
        "pack": Option(False, "chat task: pack short conversations together into rows of up to --max-length tokens", bool),
        "max_new_tokens": Option(64, "longest output, in tokens", int),
    },
    "retrieval": {
        "query_column": Option(None, f"column of the query (default: the first of {', '.join(QUERY_COLUMNS)}, "
                                     f"or column 0 of a file without a header)"),
        "positive_column": Option(None, f"column of the positive target (default: the first of "
                                        f"{', '.join(RETRIEVAL_TARGET_COLUMNS)}, or column 1)"),
        "pooling": Option("mean", f"how token vectors become one vector: {', '.join(POOLING_NAMES)}"),
        "temperature": Option(0.05, "contrastive loss: cosine similarities are divided by this", float),
        "symmetric": Option(False, "contrastive loss: also find each target's query (the mean of both directions)", bool),
        "top_k": Option(10, "predictions list this many targets per query", int),
    },
}
