"""Metrics of prompted tasks with their standard errors: the standard error of the mean for
per-example scores (as lm-evaluation-harness: sample standard deviation / sqrt(n)), and a seeded
bootstrap for corpus-level BLEU and chrF (100 resamples, lm-evaluation-harness's number for them)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 100


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return float(array.mean()), float("nan")
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(len(array)))


def exact_match(prediction: str, target: str) -> float:
    """1 when the texts are equal after stripping surrounding whitespace."""
    return float(prediction.strip() == target.strip())


def corpus_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    from ..tasks.seq2seq import bleu_and_chrf  # sacrebleu, or the error that says how to install it

    return bleu_and_chrf(hypotheses, references)


def bootstrap_stderr(metric: Callable[[list[str], list[str]], float], hypotheses: list[str], references: list[str],
                     seed: int = 0) -> float:
    """Standard deviation of a corpus metric over resamples of the examples (with replacement)."""
    if len(hypotheses) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        picks = rng.integers(0, len(hypotheses), len(hypotheses))
        values.append(metric([hypotheses[i] for i in picks], [references[i] for i in picks]))
    return float(np.std(values, ddof=1))
