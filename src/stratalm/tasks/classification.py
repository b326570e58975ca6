"""Sequence classification: one text, or a pair of texts, to one of a set of labels (SST-2, MRPC,
MNLI, ...). Pairs are encoded as [CLS] A [SEP] B [SEP] with token types 0 then 1 (the tokenizer's
own template when it has one: RoBERTa's <s> A </s></s> B </s>).

The head is the family's: BERT and ALBERT classify the pooler's vector (a pretrained pooler is
kept; a model without one — a headless encoder — gets a fresh pooler, as `transformers` does),
RoBERTa and ELECTRA a dense layer on the first token. Either way the fine-tuned model is the
family's ...ForSequenceClassification and exports to Hugging Face as such. Decoders (GPT-2,
Llama) and T5 are refused: their checkpoints have no classification head to save.

Labels are names (or numbers) as they appear in the file; the sorted set of the training file's
labels fixes their ids and is stored in task.json and in the model config (HF id2label).
Metrics: accuracy, and F1 of the positive class with two labels (macro-F1 with more).

Prediction also reads a plain text file (.txt): one input per line, or for a model fine-tuned on
pairs one pair per line, its two texts separated by a tab. Each prediction carries the input text
and every label's probability beside the best label and its score.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..models import build_model
from ..tokenize import Tokenizer
from .base import Task
from .common import by_length, copy_shared_weights, encode_texts, model_inputs, model_tokenizer, pad_id_of, text_batch
from .data_files import column, read_lines, read_table, text_in
from .options import LABEL_COLUMNS, PAIR_COLUMNS, TASK_OPTIONS, TEXT_COLUMNS

POSITIVE_NAMES = ("1", "positive", "pos", "true", "yes", "entailment")
Prediction = tuple[int, float, list[float]]  # best label id, its probability, every label's probability


def label_sort_key(name: str) -> tuple:
    """Numbers in numeric order (2 before 10), then names alphabetically."""
    text = name.lstrip("-")
    return (0, int(name), "") if text.isdigit() else (1, 0, name)


def label_value(name: str) -> Any:
    """A label as written to predictions: a number when it is one."""
    return int(name) if name.lstrip("-").isdigit() else name


def binary_and_macro_f1(gold: list[int], pred: list[int], n_labels: int, positive: int) -> dict[str, float]:
    def f1(label: int) -> float:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        predicted, actual = sum(p == label for p in pred), sum(g == label for g in gold)
        return 2 * tp / (predicted + actual) if predicted + actual else 0.0

    accuracy = sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)
    if n_labels == 2:
        return {"accuracy": accuracy, "f1": f1(positive)}
    return {"accuracy": accuracy, "macro_f1": sum(f1(label) for label in range(n_labels)) / n_labels}


class ClassificationTask(Task):
    name = "classification"
    main_metric = "accuracy"
    OPTIONS = TASK_OPTIONS["classification"]

    @property
    def labels(self) -> list[str]:
        return self.state.get("labels", [])

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        if path.lower().endswith(".txt"):
            return self._read_text_lines(path, labelled)
        columns, rows = read_table(path)
        text = column(columns, self.options["text_column"], TEXT_COLUMNS, path, "--text-column", "text")
        pair: Optional[str] = self.options["text_pair_column"]
        if pair is not None:
            pair = column(columns, pair, (), path, "--text-pair-column", "pair")
        elif PAIR_COLUMNS.get(text) in columns and self.options["text_column"] is None:
            pair = PAIR_COLUMNS[text]
        label: Optional[str] = self.options["label_column"]
        if labelled or label is not None:
            label = column(columns, label, LABEL_COLUMNS, path, "--label-column", "label")
        elif any(c in columns for c in LABEL_COLUMNS):
            label = next(c for c in LABEL_COLUMNS if c in columns)
        known = set(self.labels)
        examples = []
        for number, row in enumerate(rows, start=1):
            value = row.get(label) if label is not None else None
            name = None if value is None else str(value).strip()
            if labelled and not name:
                raise DataError(f"example {number} of '{path}' has no label in column '{label}'; label every example.")
            if labelled and known and name not in known:
                raise DataError(f"'{path}' has the label '{name}' (example {number}) that the training file never had; "
                                f"its labels are: {', '.join(self.labels)}.")
            examples.append({"text": text_in(row, text, path, number, "--text-column"),
                             "pair": text_in(row, pair, path, number, "--text-pair-column") if pair else None,
                             "label": name or None})
        return examples

    def _read_text_lines(self, path: str, labelled: bool) -> list[dict[str, Any]]:
        """Unlabelled inputs of a plain text file. A model fine-tuned on pairs reads TEXT<tab>PAIR;
        a folder from before `pairs` was recorded splits the lines that hold a tab."""
        if labelled:
            raise DataError(f"'{path}' is plain text, which holds no labels; give a TSV, CSV or JSONL file with a "
                            f"label column.")
        pairs = self.state.get("pairs")
        examples = []
        for number, line in enumerate(read_lines(path), start=1):
            if pairs is False or (pairs is None and "\t" not in line):
                examples.append({"text": line, "pair": None, "label": None})
                continue
            if "\t" not in line:
                raise DataError(f"line {number} of '{path}' has no tab, but this model classifies pairs of texts; "
                                f"write each pair as its two texts separated by a tab.")
            text, pair = line.split("\t", 1)
            examples.append({"text": text, "pair": pair, "label": None})
        return examples

    def learn(self, train: list[dict[str, Any]]) -> None:
        labels = sorted({e["label"] for e in train}, key=label_sort_key)
        if len(labels) < 2:
            raise DataError(f"the training file has only one label ({labels[0] if labels else 'none'}); "
                            f"classification needs at least two.")
        if len({label_sort_key(name)[0] for name in labels}) > 1:  # "1" and "positive" would be two classes
            raise DataError(f"the training file mixes label numbers and label names ({', '.join(labels[:6])}); "
                            f"write every label the same way.")
        self.state["labels"] = labels
        self.state["pairs"] = train[0]["pair"] is not None  # how a plain text file's lines are read

    # -- model -------------------------------------------------------------------------------
    def prepare_model(self, base: nn.Module) -> tuple[nn.Module, list[str]]:
        c = base.config
        pooled = c.classifier == "pooled"
        config = c.replace(n_labels=len(self.labels), label_names=list(self.labels), n_token_labels=0,
                           mlm_head=False, nsp_head=False, rtd_head=False, pooler=pooled)
        model = build_model(config)
        copy_shared_weights(base, model)
        head = ["classifier"] + (["pooler"] if pooled and not c.pooler else [])
        return model, head

    # -- training ----------------------------------------------------------------------------
    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        pairs = [e["pair"] for e in examples] if examples and examples[0]["pair"] is not None else None
        encoded = encode_texts(tokenizer, [e["text"] for e in examples], pairs, max_length)
        index = {name: i for i, name in enumerate(self.labels)}
        return [{"ids": ids, "types": types, "label": index.get(e["label"], -1)}
                for (ids, types), e in zip(encoded, examples)]

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        return {**text_batch(features, pad_id), "labels": torch.tensor([f["label"] for f in features])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**model_inputs(model, batch)).logits  # (B, n_labels)
        return F.cross_entropy(logits.float(), batch["labels"].to(logits.device))

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[Prediction]:
        tokenizer = model_tokenizer(model)
        features, pad_id = self.encode(examples, tokenizer, max_length), pad_id_of(tokenizer)
        out: list[Prediction] = [(0, 0.0, [])] * len(features)
        with torch.no_grad():
            for chosen in by_length(features, batch_size):
                batch = text_batch([features[i] for i in chosen], pad_id)
                probs = model(**model_inputs(model, batch)).logits.float().softmax(-1)
                best, index = probs.max(-1)
                for row, i in enumerate(chosen):
                    out[i] = (int(index[row]), float(best[row]), probs[row].tolist())
        return out

    def score(self, examples: list[dict[str, Any]], predictions: list[Prediction]) -> dict[str, float]:
        index = {name: i for i, name in enumerate(self.labels)}
        gold = [index[e["label"]] for e in examples]
        positive = next((index[n] for n in POSITIVE_NAMES if n in index), 1)
        return binary_and_macro_f1(gold, [p[0] for p in predictions], len(self.labels), positive)

    def format(self, example: dict[str, Any], prediction: Prediction) -> dict[str, Any]:
        index, score, probs = prediction
        inputs = {"text": example["text"], **({"pair": example["pair"]} if example["pair"] is not None else {})}
        return {"label": label_value(self.labels[index]), "score": round(score, 6), **inputs,
                "probabilities": {name: round(p, 6) for name, p in zip(self.labels, probs)}}
