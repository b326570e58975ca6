"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): a prompt biases a model
towards some answers whatever the input (the majority label of the demonstrations, the most recent
one, common tokens). The bias is measured on content-free inputs ("N/A", "", "[MASK]") that take
the place of every column of a row in the same prompt, and divided out: with p_cf the mean
probability of each choice over those inputs (choices normalised to sum to 1), the calibrated
scores are p / p_cf, i.e. W = diag(p_cf)^-1 and b = 0 as in the paper."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def content_free_rows(doc: dict[str, Any], inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Copies of `doc` with every column replaced by each content-free input."""
    return [{key: text for key in doc} for text in inputs]


def choice_probabilities(loglikelihoods: np.ndarray) -> np.ndarray:
    """(N, C) log-likelihoods of each choice -> probabilities over the choices (rows sum to 1)."""
    shifted = loglikelihoods - loglikelihoods.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def content_free_bias(loglikelihoods: np.ndarray) -> np.ndarray:
    """p_cf: the mean choice probabilities over the content-free inputs, renormalised."""
    mean = choice_probabilities(loglikelihoods).mean(axis=0)
    return mean / mean.sum()


def calibrated_predictions(loglikelihoods: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The argmax of p / p_cf for each row of (N, C) log-likelihoods."""
    return (choice_probabilities(loglikelihoods) / bias).argmax(axis=-1)
