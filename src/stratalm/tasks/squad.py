"""SQuAD-style extractive QA data and its official metrics.

Reads SQuAD v1.1 JSON (`data[].paragraphs[].context/qas[]`) or JSONL (one question per line with
`id`, `question`, `context`, `answers`). Scores predictions exactly as the official SQuAD v1.1
evaluate script does (English), or by characters for Chinese (CMRC 2018), where words are not
separated by spaces.
"""
from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from ..errors import DataError
from .common import is_chinese

LANGUAGES = ("en", "zh", "auto")
PUNCTUATION = set(string.punctuation)


@dataclass
class Answer:
    text: str  # as annotated, without surrounding whitespace (the metric compares against it)
    start: Optional[int]  # character offset in the context; None: a gold answer that is not a span of it

    @property
    def end(self) -> int:
        return (self.start or 0) + len(self.text)


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[Answer] = field(default_factory=list)

    @property
    def span_answer(self) -> Optional[Answer]:
        """The first answer that is a span of the context: the training target."""
        return next((a for a in self.answers if a.start is not None), None)


def locate_answer(context: str, text: str, start: Optional[int]) -> Answer:
    """The answer's span with surrounding whitespace dropped. A wrong `answer_start` is repaired by
    finding the text in the context (the occurrence nearest the given offset); an answer found
    nowhere gets start None."""
    stripped = text.strip()
    if isinstance(start, int) and start >= 0 and context[start:start + len(text)] == text:
        return Answer(stripped, start + (len(text) - len(text.lstrip())))
    found = [m.start() for m in re.finditer(re.escape(stripped), context)] if stripped else []
    if not found:
        return Answer(stripped, None)
    nearest = min(found, key=lambda at: abs(at - (start if isinstance(start, int) else 0)))
    return Answer(stripped, nearest)


def _example(record: dict, context: str, where: str) -> QAExample:
    for key in ("id", "question"):
        if key not in record:
            raise DataError(f"{where} has a question without '{key}'; found keys: {', '.join(sorted(record))}.")
    question_id = str(record["id"])
    answers = record.get("answers") or []
    if isinstance(answers, dict):  # the Hugging Face datasets layout: {"text": [...], "answer_start": [...]}
        answers = [{"text": t, "answer_start": s} for t, s in zip(answers.get("text", []), answers.get("answer_start", []))]
    parsed = [locate_answer(context, str(a.get("text", "")), a.get("answer_start")) for a in answers]
    # Extra gold answers may paraphrase (CMRC 2018 has a few); they still count for the metric,
    # but a question whose answers are all missing from its context is a broken record.
    if parsed and all(a.start is None for a in parsed):
        raise DataError(f"the answer {parsed[0].text[:60]!r} of question '{question_id}' is not in its context; "
                        "fix the answer text (answers must be copied from the context).")
    return QAExample(question_id, str(record["question"]), context, parsed)


def read_squad(path: str) -> list[QAExample]:
    """Every question of a SQuAD JSON file (or JSONL: one question per line, with its context)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise DataError(f"'{path}' does not exist; give a SQuAD JSON or JSONL file.") from None
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text; give a SQuAD JSON or JSONL file.") from None
    if not text.strip():
        raise DataError(f"'{path}' is empty; give a SQuAD JSON or JSONL file with at least one question.")
    examples: list[QAExample] = []
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict) and "context" not in document:  # (a one-line JSONL file parses as JSON too)
        if not isinstance(document.get("data"), list):
            raise DataError(f"'{path}' is JSON without a 'data' list; give SQuAD v1.1 JSON (data[].paragraphs[].qas[]).")
        for article in document["data"]:
            for paragraph in article.get("paragraphs", []):
                context = paragraph.get("context")
                if not isinstance(context, str):
                    raise DataError(f"'{path}' has a paragraph without a 'context' string.")
                examples += [_example(qa, context, f"'{path}'") for qa in paragraph.get("qas", [])]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"line {number} of '{path}' is not JSON; give SQuAD v1.1 JSON or JSONL.") from None
            if not isinstance(record, dict) or "context" not in record:
                found = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"line {number} of '{path}' has no 'context' field; found: {found}.")
            examples.append(_example(record, str(record["context"]), f"line {number} of '{path}'"))
    if not examples:
        raise DataError(f"'{path}' holds no questions; give a SQuAD JSON or JSONL file with at least one question.")
    return examples


# -- metrics -------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles (a, an, the),
    single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_chinese(text: str) -> list[str]:
    """Characters of a Chinese answer: lower case, no punctuation (ASCII or CJK) and no spaces."""
    return [ch for ch in text.lower() if not ch.isspace() and not unicodedata.category(ch).startswith("P")
            and ch not in PUNCTUATION]


def _tokens(text: str, language: str) -> list[str]:
    return normalize_chinese(text) if language == "zh" else normalize_answer(text).split()


def exact_match(prediction: str, gold: str, language: str = "en") -> float:
    if language == "zh":
        return float(normalize_chinese(prediction) == normalize_chinese(gold))
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, language: str = "en") -> float:
    """Harmonic mean of precision and recall of the shared tokens (words; characters for zh)."""
    predicted, expected = _tokens(prediction, language), _tokens(gold, language)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def resolve_language(language: str, examples: list[QAExample]) -> str:
    if language not in LANGUAGES:
        raise DataError(f"--language must be one of {', '.join(LANGUAGES)}; got '{language}'.")
    if language != "auto":
        return language
    return "zh" if is_chinese(e.context for e in examples[:50]) else "en"


def squad_metrics(predictions: dict[str, str], examples: list[QAExample], language: str = "en") -> dict[str, float]:
    """Exact match and F1 in percent, each the best over an example's gold answers, averaged over
    the examples; a question without a prediction scores 0 (as in the official script). Questions
    with no gold answer are not scored."""
    scored = [e for e in examples if e.answers]
    if not scored:
        raise DataError("no question has a gold answer, so exact match and F1 cannot be computed; give answers.")
    em = sum(max(exact_match(predictions.get(e.id, ""), a.text, language) for a in e.answers)
             if e.id in predictions else 0.0 for e in scored)
    overlap = sum(max(f1(predictions.get(e.id, ""), a.text, language) for a in e.answers)
                  if e.id in predictions else 0.0 for e in scored)
    return {"exact_match": 100.0 * em / len(scored), "f1": 100.0 * overlap / len(scored)}
