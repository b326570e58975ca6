"""Zero- and few-shot evaluation of any family on a prompted task: `evaluate_task` (what
`stratalm prompt-eval` runs, and what other code calls to compare models on the same task).

How a model answers depends on its stack: a decoder scores each choice as the continuation of the
prompt, a masked-LM encoder scores it in the cloze slot, T5 scores it as its target (scoring.py).
The K demonstrations are drawn once per seed from the few-shot split, so every question of a run
sees the same prompt (as in Zhao et al. 2021, where a prompt is calibrated once).
"""
from __future__ import annotations

import random
from typing import Any, Optional, Union

import numpy as np
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError, StratalmError
from ..generate import greedy_search
from ..tasks.common import model_tokenizer
from . import calibration, metrics
from .prompts import Prompts
from .scoring import cloze_loglikelihood, decoder_loglikelihood, seq2seq_loglikelihood, with_end
from .tasks import GENERATE, TaskSpec, load_task, read_split

SCORING = {"decoder": "continuation", "encoder": "cloze", "encoder-decoder": "target"}


def draw_demonstrations(spec: TaskSpec, shots: int, seed: int) -> list[dict[str, Any]]:
    if shots < 0:
        raise ConfigError(f"--shots must be 0 or more; got {shots}.")
    if shots == 0:
        return []
    if spec.fewshot_split is None:
        raise ConfigError(f"task '{spec.task}' has no fewshot_split, so it runs zero-shot only; drop --shots.")
    pool = read_split(spec, spec.fewshot_split)
    if shots > len(pool):
        raise ConfigError(f"--shots {shots} is more than the {len(pool)} rows of the few-shot split of '{spec.task}'.")
    return random.Random(seed).sample(pool, shots)


def _choice_loglikelihoods(model: nn.Module, prompts: Prompts, docs: list[dict[str, Any]],
                           demos: list[dict[str, Any]], batch_size: int, progress: bool = False) -> list[np.ndarray]:
    """Per doc, the log-likelihood of each of its choices."""
    stack = model.config.stack
    requests, owners = [], []
    for index, doc in enumerate(docs):
        if stack == "encoder":
            left, right = prompts.cloze_parts(doc, demos)
            answers = [(left, word, right) for word in prompts.words(doc)]
        else:
            context = prompts.context(doc, demos)
            answers = [(context, prompts.spec.target_delimiter + choice) for choice in prompts.choices(doc)]
        requests += answers
        owners += [index] * len(answers)
    score = {"decoder": decoder_loglikelihood, "encoder": cloze_loglikelihood,
             "encoder-decoder": seq2seq_loglikelihood}[stack]
    scores = score(model, requests, batch_size=batch_size, progress=progress)
    out: list[list[float]] = [[] for _ in docs]
    for owner, result in zip(owners, scores):
        out[owner].append(result.logprob)
    return [np.asarray(row) for row in out]


def _multiple_choice(model, spec: TaskSpec, prompts: Prompts, docs, demos, calibrate: bool, batch_size: int,
                     progress: bool) -> dict[str, Any]:
    loglikelihoods = _choice_loglikelihoods(model, prompts, docs, demos, batch_size, progress)
    gold = [prompts.gold(doc) for doc in docs]
    lengths = [np.asarray([len(c) for c in (prompts.words(d) if model.config.stack == "encoder" else prompts.choices(d))],
                          dtype=np.float64) for d in docs]
    per_example = {"acc": [float(ll.argmax() == g) for ll, g in zip(loglikelihoods, gold)],
                   # lm-evaluation-harness's acc_norm: log-likelihood per character of the choice
                   "acc_norm": [float((ll / n).argmax() == g) for ll, n, g in zip(loglikelihoods, lengths, gold)]}
    results: dict[str, Any] = {}
    for name in spec.metric_list:
        results[name], results[f"{name}_stderr"] = metrics.mean_and_stderr(per_example[name])
    if calibrate:
        free = calibration.content_free_rows(docs[0], spec.content_free)
        bias = calibration.content_free_bias(np.stack(_choice_loglikelihoods(model, prompts, free, demos, batch_size)))
        predictions = calibration.calibrated_predictions(np.stack(loglikelihoods), bias)
        results["acc_calibrated"], results["acc_calibrated_stderr"] = metrics.mean_and_stderr(
            [float(p == g) for p, g in zip(predictions, gold)])
        results["content_free_probabilities"] = [round(float(p), 6) for p in bias]
    results["majority_baseline"] = float(np.bincount(gold).max() / len(gold))  # what always giving one answer scores
    return results


def _cut_at_stops(text: str, stops: list[str]) -> str:
    ends = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[:min(ends)] if ends else text


def generate_answers(model: nn.Module, contexts: list[str], until: list[str], max_new_tokens: int,
                     batch_size: int, progress: bool = False) -> list[str]:
    """Greedy continuations of each context (a decoder) or translations of it (T5), cut at the
    first stop string."""
    config = model.config
    if config.stack == "encoder":
        raise StratalmError(f"a generation task needs a decoder or an encoder-decoder; this {config.family} encoder "
                            f"can only score choices.")
    tokenizer = model_tokenizer(model)
    if config.stack == "decoder":
        room = config.max_seq_len - max_new_tokens
        if room < 1:
            raise ConfigError(f"max_gen_toks {max_new_tokens} leaves no room for a prompt in the context of {config.max_seq_len}.")
        inputs = [tokenizer.encode(c)[-room:] for c in contexts]
    else:
        inputs = [with_end(tokenizer, c)[-config.max_seq_len:] for c in contexts]
    outputs: list[str] = [""] * len(contexts)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))  # little padding per batch
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch", disable=not progress):
        rows = order[start:start + batch_size]
        found = greedy_search(model, [inputs[i] for i in rows], max_new_tokens, tokenizer.eos_id)
        for i, hypothesis in zip(rows, found):
            outputs[i] = _cut_at_stops(tokenizer.decode(hypothesis.tokens), until)
    return outputs


def _generation(model, spec: TaskSpec, prompts: Prompts, docs, demos, seed: int, batch_size: int,
                progress: bool) -> dict[str, Any]:
    options = spec.generation_kwargs
    until = list(options.get("until", ["\n\n"]))
    answers = generate_answers(model, [prompts.context(doc, demos) for doc in docs], until,
                               int(options.get("max_gen_toks", 64)), batch_size, progress)
    predictions = [a.strip() for a in answers]
    references = [prompts.target(doc).strip() for doc in docs]
    results: dict[str, Any] = {}
    for name in spec.metric_list:
        if name == "exact_match":
            results[name], results[f"{name}_stderr"] = metrics.mean_and_stderr(
                [metrics.exact_match(p, r) for p, r in zip(predictions, references)])
        else:
            corpus = lambda hyp, ref, name=name: metrics.corpus_metrics(hyp, ref)[name]  # noqa: E731
            results[name] = corpus(predictions, references)
            results[f"{name}_stderr"] = metrics.bootstrap_stderr(corpus, predictions, references, seed)
    results["examples"] = [{"prediction": p, "target": r} for p, r in zip(predictions[:3], references[:3])]
    return results


def evaluate_task(model: Union[nn.Module, str], task: Union[TaskSpec, str], shots: int = 0, seed: int = 1234,
                  data: Optional[str] = None, limit: Optional[int] = None, calibrate: Optional[bool] = None,
                  batch_size: int = 16, device: str = "auto", progress: bool = False) -> dict[str, Any]:
    """Score `model` (a loaded model or a checkpoint folder) on `task` (a TaskSpec, a YAML file or
    a shipped task's name) with `shots` demonstrations drawn with `seed`; `data` is the folder of
    the task's files, `limit` keeps the first N test rows, `calibrate` overrides the task's
    calibration switch, `progress` shows a bar. Returns one JSON-ready dict: the task, the
    scoring, n, each metric and its standard error (a generation task adds its first three
    predictions, to see what the model writes)."""
    spec = task if isinstance(task, TaskSpec) else load_task(task, data)
    if data is not None:
        spec.data_dir = data
    for flag, value in (("--limit", limit), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1; got {value}.")
    calibrate = spec.calibration if calibrate is None else calibrate
    if calibrate and (spec.output_type == GENERATE or spec.fixed_choices is None):
        raise ConfigError(f"calibration applies to multiple-choice tasks with one list of choices; '{spec.task}' has none.")
    docs = read_split(spec, spec.test_split)[:limit]
    demos = draw_demonstrations(spec, shots, seed)
    name = model if isinstance(model, str) else None
    if isinstance(model, str):
        from ..checkpoint import load
        from ..generate import choose_device

        model = load(model, choose_device(device))
    model.eval()
    prompts = Prompts(spec)
    if spec.output_type == GENERATE:
        results = _generation(model, spec, prompts, docs, demos, seed, batch_size, progress)
    else:
        results = _multiple_choice(model, spec, prompts, docs, demos, calibrate, batch_size, progress)
    head = {"task": spec.task, "model": name, "family": model.config.family, "scoring": SCORING[model.config.stack],
            "output_type": spec.output_type, "shots": shots, "seed": seed, "n": len(docs)}
    return {**head, **results}
