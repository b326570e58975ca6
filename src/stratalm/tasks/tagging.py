"""Token classification (`tagging`): one tag per word — named entities (CoNLL-2003), parts of
speech, chunks.

Data: CoNLL-style files (a token and its tag per line, tag in the last column, blank lines between
sentences, -DOCSTART- ignored) or JSONL with `tokens` and `tags` lists. Words are split into
sub-tokens by the model's tokenizer; the tag of a word is predicted on its FIRST sub-token, the
others are ignored by the loss (-100), as in BERT's NER recipe. Words cut off by --max-length are
predicted as "O".

Metrics: token accuracy (per word) and, when the tags follow BIO/IOB2 (B-X, I-X, O), entity-level
precision, recall and F1: an entity counts only if its type and exact span are right (conlleval's
rule; an I-X that follows O or another type opens a new entity, as conlleval reads IOB1).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..models import build_model
from ..tokenize import Tokenizer
from .base import IGNORE, Task
from .common import (by_length, copy_shared_weights, has_template, model_inputs, model_tokenizer, pad, pad_id_of,
                     start_end_ids, text_batch)
from .data_files import CONLL_EXTENSIONS, extension_of, read_conll, read_table
from .options import TASK_OPTIONS


def entity_spans(tags: Iterable[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of each entity of a BIO/IOB2 tag sequence; end is exclusive."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and start is not None and label == kind
        if start is not None and not continues:
            spans.add((kind, start, i))
            start = None
        if prefix in ("B", "I") and label and not continues:
            start, kind = i, label
    return spans


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    found = correct = actual = 0
    for g, p in zip(gold, pred):
        gs, ps = entity_spans(g), entity_spans(p)
        found, actual, correct = found + len(ps), actual + len(gs), correct + len(gs & ps)
    precision = correct / found if found else 0.0
    recall = correct / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def is_bio(tags: Iterable[str]) -> bool:
    return any(t.startswith(("B-", "I-")) for t in tags)


class TaggingTask(Task):
    name = "tagging"
    OPTIONS = TASK_OPTIONS["tagging"]
    main_metric = "f1"  # entity F1; token accuracy when the tags are not BIO

    @property
    def labels(self) -> list[str]:
        return self.state.get("labels", [])

    def __init__(self, options=None, state=None) -> None:
        super().__init__(options, state)
        if self.labels and not is_bio(self.labels):
            self.main_metric = "accuracy"

    # -- data --------------------------------------------------------------------------------
    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        if extension_of(path, CONLL_EXTENSIONS + (".jsonl",)) == ".jsonl":
            sentences = self._read_jsonl(path, labelled)
        else:
            sentences = read_conll(path)
        known = set(self.labels)
        for number, (words, tags) in enumerate(sentences, start=1):
            if labelled and not all(tags):
                raise DataError(f"sentence {number} of '{path}' has a token without a tag; give each token its tag in "
                                f"the last column.")
            unseen = [t for t in tags if t and known and t not in known]
            if labelled and unseen:
                raise DataError(f"'{path}' has the tag '{unseen[0]}' (sentence {number}) that the training file never "
                                f"had; its tags are: {', '.join(self.labels)}.")
        return [{"words": words, "tags": tags} for words, tags in sentences]

    @staticmethod
    def _read_jsonl(path: str, labelled: bool) -> list[tuple[list[str], list[str]]]:
        columns, rows = read_table(path)
        if "tokens" not in columns or (labelled and "tags" not in columns):
            raise DataError(f"'{path}' needs 'tokens' and 'tags' lists in every line; its keys are: {', '.join(columns)}.")
        out = []
        for number, row in enumerate(rows, start=1):
            words, tags = row.get("tokens") or [], row.get("tags") or [""] * len(row.get("tokens") or [])
            if not isinstance(words, list) or len(words) != len(tags) or not words:
                raise DataError(f"line {number} of '{path}' needs equally long, non-empty 'tokens' and 'tags' lists.")
            out.append(([str(w) for w in words], [str(t) for t in tags]))
        return out

    def learn(self, train: list[dict[str, Any]]) -> None:
        tags = {t for e in train for t in e["tags"]}
        self.state["labels"] = sorted(tags, key=lambda t: (t != "O", t.partition("-")[2], t))
        self.main_metric = "f1" if is_bio(tags) else "accuracy"

    # -- model -------------------------------------------------------------------------------
    def prepare_model(self, base: nn.Module) -> tuple[nn.Module, list[str]]:
        # No pooler: BertForTokenClassification has none, so the export matches it exactly.
        config = base.config.replace(n_token_labels=len(self.labels), label_names=list(self.labels), n_labels=0,
                                     mlm_head=False, nsp_head=False, rtd_head=False, pooler=False)
        model = build_model(config)
        copy_shared_weights(base, model)
        return model, ["token_classifier"]

    # -- training ----------------------------------------------------------------------------
    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Sub-tokens of each sentence, the target of each word's first sub-token, and where that
        first sub-token sits (-1 for a word cut off or with no sub-token)."""
        backend, template = tokenizer.backend, has_template(tokenizer)
        start, end = start_end_ids(tokenizer)
        extra = 0 if template else (start is not None) + (end is not None)
        backend.enable_truncation(max_length - extra)
        try:
            encodings = backend.encode_batch([e["words"] for e in examples], is_pretokenized=True,
                                             add_special_tokens=template)
        finally:
            backend.no_truncation()
        index = {tag: i for i, tag in enumerate(self.labels)}
        features = []
        for example, encoding in zip(examples, encodings):
            ids, words, types = list(encoding.ids), list(encoding.word_ids), list(encoding.type_ids)
            if not template:
                before, after = ([start] if start is not None else []), ([end] if end is not None else [])
                ids, words = before + ids + after, [None] * len(before) + words + [None] * len(after)
                types = [0] * len(ids)
            first, labels, previous = [-1] * len(example["words"]), [IGNORE] * len(ids), None
            for position, word in enumerate(words):
                if word is not None and word != previous:
                    first[word] = position
                    labels[position] = index.get(example["tags"][word], IGNORE)
                previous = word
            features.append({"ids": ids, "types": types, "labels": labels, "first": first})
        return features

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        return {**text_batch(features, pad_id), "labels": pad([f["labels"] for f in features], IGNORE)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**model_inputs(model, batch)).logits  # (B, T, tags)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].to(logits.device).flatten(), ignore_index=IGNORE)

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[list[str]]:
        tokenizer = model_tokenizer(model)
        features, pad_id = self.encode(examples, tokenizer, max_length), pad_id_of(tokenizer)
        fallback = "O" if "O" in self.labels else self.labels[0]
        out: list[list[str]] = [[] for _ in features]
        with torch.no_grad():
            for chosen in by_length(features, batch_size):
                batch = text_batch([features[i] for i in chosen], pad_id)
                best = model(**model_inputs(model, batch)).logits.argmax(-1).cpu()  # (B, T)
                for row, i in enumerate(chosen):
                    out[i] = [self.labels[int(best[row, p])] if p >= 0 else fallback for p in features[i]["first"]]
        return out

    def score(self, examples: list[dict[str, Any]], predictions: list[list[str]]) -> dict[str, float]:
        gold = [e["tags"] for e in examples]
        words = sum(len(g) for g in gold)
        right = sum(a == b for g, p in zip(gold, predictions) for a, b in zip(g, p))
        scores = {"accuracy": right / max(words, 1)}
        if is_bio(self.labels):
            scores.update(entity_scores(gold, predictions))
        return scores

    def format(self, example: dict[str, Any], prediction: list[str]) -> dict[str, Any]:
        return {"tokens": example["words"], "tags": prediction}
