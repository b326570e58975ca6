"""Extractive question answering (SQuAD): find the answer as a span of the context.

Each question and its context become one or more windows `[CLS] question [SEP] context piece
[SEP]`: a context longer than the model's input is cut into pieces of the room left after the
question, overlapping by `doc_stride` tokens so every answer lies whole inside some window. A
head gives every token a start and an end score; the answer is the best-scoring span (start +
end) over all windows, mapped back to characters of the original context through the fast
tokenizer's offsets.

The fine-tuned model is the family's ...ForQuestionAnswering (the encoder without its pooler, and
a `qa_outputs` layer) and exports to Hugging Face as such. Training windows that do not hold the
answer point at [CLS]. Scores are SQuAD's exact match and F1 (squad.py), by characters for
Chinese (`--language zh`, or auto-detected).

XLNet (XLNetForQuestionAnsweringSimple) takes its tokenizer's layout, `question <sep> context
<sep> <cls>` with token types 0, 1 and 2 (its relative segments), and windows without the answer
point at that last <cls>. Batches stay right-padded, unlike the reference's left padding: XLNet's
positions are relative, so a real token sees the same distances either way, and the masked
padding changes no logit of a real token (tests/test_qa.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..models import build_model
from ..tokenize import Tokenizer
from .base import Task
from .common import (by_length, copy_shared_weights, has_template, model_inputs, model_tokenizer, pad_id_of,
                     start_end_ids, text_batch)
from .options import TASK_OPTIONS
from .squad import Answer, QAExample, read_squad, resolve_language, squad_metrics


@dataclass
class QAWindow:
    example: int  # index of the question in its list
    input_ids: list[int]
    token_type_ids: list[int]  # 0 for [CLS] question [SEP], 1 for the context piece and its [SEP] (XLNet's <cls>: 2)
    offsets: list[Optional[tuple[int, int]]]  # character span in the context of each context token, else None
    start_position: int = 0  # training target: the answer's first token, or [CLS] when it is not here
    end_position: int = 0


def token_spans(context: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token character spans without surrounding whitespace (byte-level BPE tokens carry the space
    before a word), so a span maps back to exactly the word's characters."""
    spans = []
    for start, end in offsets:
        while start < end and context[start].isspace():
            start += 1
        while end > start and context[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return spans


def special_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    cls, sep = start_end_ids(tokenizer)
    if cls is None or sep is None:
        raise ConfigError("question answering needs a tokenizer with a [CLS] (or <bos>) and a [SEP] (or <eos>) token.")
    return cls, sep


def cls_last(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's own template ends an input with [CLS] (XLNet's A <sep> B <sep> <cls>)."""
    if not has_template(tokenizer) or tokenizer.cls_id is None:
        return False
    return tokenizer.backend.encode("a", "b", add_special_tokens=True).ids[-1] == tokenizer.cls_id


def answer_tokens(spans: Sequence[tuple[int, int]], answer: Answer) -> Optional[tuple[int, int]]:
    """Indices of the first and last context token that overlap the answer's characters."""
    inside = [i for i, (s, e) in enumerate(spans) if e > answer.start and s < answer.end and e > s]
    return (inside[0], inside[-1]) if inside else None


def make_windows(
    tokenizer: Tokenizer,
    example: QAExample,
    index: int,
    max_length: int,
    doc_stride: int,
    max_query_length: int = 64,
    with_labels: bool = True,
) -> list[QAWindow]:
    """The windows of one question; with labels, each points at the first answer span when it lies
    whole inside the window's context piece, else at [CLS] (index 0; the last index for XLNet)."""
    cls, sep = special_ids(tokenizer)
    question = tokenizer.encode_with_offsets(example.question)[0][:max_query_length]
    context_ids, raw_offsets = tokenizer.encode_with_offsets(example.context)
    spans = token_spans(example.context, raw_offsets)
    room = max_length - len(question) - 3
    if room <= doc_stride:
        raise ConfigError(f"--max-length {max_length} leaves {room} context tokens after a {len(question)}-token "
                          f"question, which must exceed --doc-stride {doc_stride}; raise --max-length or lower --doc-stride.")
    gold = example.span_answer if with_labels else None
    target = answer_tokens(spans, gold) if gold is not None else None
    at_end = cls_last(tokenizer)
    head, tail = ([*question, sep], [sep, cls]) if at_end else ([cls, *question, sep], [sep])
    windows, begin = [], 0
    while True:
        end = min(begin + room, len(context_ids))
        piece = context_ids[begin:end]
        window = QAWindow(index, head + piece + tail, [0] * len(head) + [1] * (len(piece) + 1) + [2] * (len(tail) - 1),
                          [None] * len(head) + list(spans[begin:end]) + [None] * len(tail))
        if at_end:  # no answer here: point at the <cls> that ends the window
            window.start_position = window.end_position = len(window.input_ids) - 1
        if target is not None and begin <= target[0] and target[1] < end:
            window.start_position = len(head) + target[0] - begin
            window.end_position = len(head) + target[1] - begin
        windows.append(window)
        if end >= len(context_ids):
            return windows
        begin = end - doc_stride


def best_span(
    windows: Sequence[QAWindow],
    start_logits: Sequence[torch.Tensor],
    end_logits: Sequence[torch.Tensor],
    max_answer_length: int,
) -> tuple[float, int, int]:
    """(score, first character, end character) of the span with the highest start + end score over
    all windows of one question: end at or after start, at most `max_answer_length` tokens, both
    ends on context tokens. (-inf, 0, 0) when no window has a context token."""
    best = (float("-inf"), 0, 0)
    for window, starts, ends in zip(windows, start_logits, end_logits):
        context = [i for i, span in enumerate(window.offsets) if span is not None]
        if not context:
            continue
        first, last = context[0], context[-1] + 1  # context tokens are contiguous
        s, e = starts[first:last].float(), ends[first:last].float()
        n = last - first
        scores = s[:, None] + e[None, :]  # (start, end)
        allowed = torch.ones(n, n, dtype=torch.bool).triu().tril(max_answer_length - 1)
        scores = scores.masked_fill(~allowed, float("-inf"))
        flat = int(scores.argmax())
        score = float(scores.view(-1)[flat])
        if score > best[0]:
            i, j = divmod(flat, n)
            best = (score, window.offsets[first + i][0], window.offsets[first + j][1])
    return best


def answer_text(context: str, start: int, end: int) -> tuple[str, int]:
    """The predicted text and its first character, without surrounding whitespace."""
    text = context[start:end]
    return text.strip(), start + len(text) - len(text.lstrip())



# -- the task ------------------------------------------------------------------------------------
class QATask(Task):
    name = "qa"
    main_metric = "f1"
    OPTIONS = TASK_OPTIONS["qa"]

    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        examples = read_squad(path)
        if labelled:
            missing = next((e.id for e in examples if not e.answers), None)
            if missing is not None:
                raise DataError(f"question '{missing}' in '{path}' has no answer; training and evaluation need "
                                "an answer for every question.")
        resolve_language(self.options["language"], examples)  # a bad --language fails before any work
        return [{"id": e.id, "example": e} for e in examples]

    def prepare_model(self, base: nn.Module) -> tuple[nn.Module, list[str]]:
        # The family's ...ForQuestionAnswering: the encoder (no pooler) plus a start/end head.
        config = base.config.replace(qa_head=True, n_labels=0, n_token_labels=0, label_names=None, mlm_head=False,
                                     nsp_head=False, rtd_head=False, pooler=False)
        model = build_model(config)
        copy_shared_weights(base, model)
        return model, ["qa_head"]

    # -- training ----------------------------------------------------------------------------
    def _windows(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int,
                 with_labels: bool) -> list[QAWindow]:
        windows = []
        for index, example in enumerate(examples):
            windows += make_windows(tokenizer, example["example"], index, max_length, self.options["doc_stride"],
                                    self.options["max_query_length"], with_labels)
        return windows

    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        return [{"ids": w.input_ids, "types": w.token_type_ids, "start": w.start_position, "end": w.end_position}
                for w in self._windows(examples, tokenizer, max_length, True)]

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        return {**text_batch(features, pad_id), "start_positions": torch.tensor([f["start"] for f in features]),
                "end_positions": torch.tensor([f["end"] for f in features])}

    @staticmethod
    def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits (B, T), padding masked out."""
        inputs = model_inputs(model, batch)
        if "token_type_ids" in inputs and model.config.type_vocab_size < 2 and not model.config.relative_segments:
            inputs["token_type_ids"] = torch.zeros_like(inputs["token_type_ids"])  # one segment (RoBERTa)
        logits = model(**inputs).logits.float()  # (B, T, 2)
        logits = logits.masked_fill(~inputs["attention_mask"].bool()[..., None], -1e4)
        return logits[..., 0], logits[..., 1]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        starts, ends = self._logits(model, batch)
        return (F.cross_entropy(starts, batch["start_positions"].to(starts.device))
                + F.cross_entropy(ends, batch["end_positions"].to(ends.device))) / 2

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """The best span of each question over all its windows: its text and first character."""
        tokenizer = model_tokenizer(model)
        pad_id = pad_id_of(tokenizer)
        windows = self._windows(examples, tokenizer, max_length, False)
        features = [{"ids": w.input_ids, "types": w.token_type_ids} for w in windows]
        logits: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(windows)  # type: ignore[list-item]
        with torch.no_grad():
            for chosen in by_length(features, batch_size):
                starts, ends = self._logits(model, text_batch([features[i] for i in chosen], pad_id))
                for row, i in enumerate(chosen):
                    logits[i] = (starts[row].cpu(), ends[row].cpu())
        per_example: list[list[int]] = [[] for _ in examples]
        for i, window in enumerate(windows):
            per_example[window.example].append(i)
        out = []
        for example, chosen in zip(examples, per_example):
            _, start, end = best_span([windows[i] for i in chosen], [logits[i][0] for i in chosen],
                                      [logits[i][1] for i in chosen], self.options["max_answer_length"])
            text, first = answer_text(example["example"].context, start, end)
            out.append({"answer": text, "start": first})
        return out

    def score(self, examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
        qa = [e["example"] for e in examples]
        language = resolve_language(self.options["language"], qa)
        return squad_metrics({e.id: p["answer"] for e, p in zip(qa, predictions)}, qa, language)

    def format(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        return {"id": example["id"], "answer": prediction["answer"], "start": prediction["start"]}
