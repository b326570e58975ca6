"""Per-layer linear probes with control tasks (Hewitt & Liang 2019).

A probe is multinomial logistic regression on one layer's features (standardised on the training
split, L2-penalised, fitted by full-batch L-BFGS from zero weights, so a seed fixes the result). Its
test accuracy alone says little: a probe may reach it by memorising which word is which. So every
probe is paired with a control task whose labels carry no linguistic property: each word TYPE gets a
fixed random label, drawn from the task's own label distribution. A probe can fit the control only
by reading word identity; selectivity = accuracy - control accuracy is high only where the layer
exposes the property itself.

Sentence level: features are pooled over each text (see similarity.layer_features); the control label
of a text is the random label of its first word type (`control="first_word"`, which repeats across
texts, so the control is learnable from lexical identity) or of the whole text (`control="text"`).
Token level: words are split as the tagging task splits them, each word read at its first
sub-token; the control label is that of the word's type (lower-cased). Train/test splits are drawn
per seed (by sentence for token probes, so no sentence is on both sides); results are the mean and
standard deviation over seeds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..tasks.classification import ClassificationTask, label_sort_key
from ..tasks.common import by_length, model_tokenizer, pad_id_of, text_batch
from ..tasks.finetune import usable_length
from ..tasks.tagging import TaggingTask
from .similarity import check_side, hidden_states, layer_features, model_device

CONTROLS = ("first_word", "text")
# Summed cross-entropy + L2 * ||W||^2 (scikit-learn's C = 1 / (2 L2)): with more examples the penalty
# weighs less. 30 keeps a probe of 384 features on 300 sentences from memorising them (all-MiniLM-L6-v2
# on 400 SST-2 sentences: per-layer accuracy within 0.03 for L2 from 30 to 300, up to 0.04 lower at 3).
L2 = 30.0
SMALL_FIT = 4_000_000  # multiply-adds of one evaluation below which a fit runs on one thread


@dataclass
class ProbeResult:
    layer: int  # 0 = embedding output
    accuracy: float  # held-out accuracy, mean over seeds
    control_accuracy: float  # the same probe on the control task
    selectivity: float  # accuracy - control_accuracy (mean over seeds)
    accuracy_std: float
    control_std: float
    selectivity_std: float
    majority: float  # held-out accuracy of always answering the most frequent training label
    seeds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the probe ------------------------------------------------------------------------------------
@dataclass
class LinearProbes:
    """P x K logistic-regression probes: one per feature set (layer) and label set (task, control)."""
    weight: torch.Tensor  # (P, d, K * C), on raw (unstandardised) features
    bias: torch.Tensor  # (P, 1, K * C)
    n_classes: int

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(P, m, d) features -> (P, K, m) predicted class ids."""
        logits = torch.baddbmm(self.bias, x.float(), self.weight)  # (P, m, K*C)
        return logits.unflatten(-1, (-1, self.n_classes)).argmax(-1).transpose(1, 2)


def fit_probes(x: torch.Tensor, targets: torch.Tensor, n_classes: int, l2: float = L2,
               max_iter: int = 200) -> LinearProbes:
    """Fit logistic regression from each of the P feature sets x (P, n, d) to each of the K label sets
    `targets` (K, n), minimising summed cross-entropy + l2 * ||W||^2 from zero weights. The problems are
    independent and each strictly convex, so one L-BFGS run over their sum reaches every probe's own
    optimum while paying Python's per-step cost once instead of P x K times.
    Features are standardised first, so one L2 strength suits every layer (hidden-state scales grow
    with depth); the standardisation is folded into the returned weights."""
    x = x.float()
    P, n, d = x.shape
    K = targets.shape[0]
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True, correction=0).clamp(min=1e-6)  # (P, 1, d)
    z = (x - mean) / std
    weight = torch.zeros(P, d, K * n_classes, requires_grad=True)
    bias = torch.zeros(P, 1, K * n_classes, requires_grad=True)
    wanted = targets.long().T.unsqueeze(0).expand(P, n, K).reshape(-1)  # (P * n * K,)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.baddbmm(bias, z, weight).reshape(-1, n_classes)  # (P * n * K, C)
        loss = (F.cross_entropy(logits, wanted, reduction="sum") + l2 * weight.square().sum()) / n
        loss.backward()
        return loss

    # A small fit is all per-operation overhead: threads hand-offs cost more than they bring (on a busy
    # 2-core machine 0.2 s with one thread against 2-5 s with two), so small fits run on one thread.
    threads = torch.get_num_threads()
    if P * n * d * K * n_classes < SMALL_FIT:
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():  # (x - mean) / std @ W + b  =  x @ (W / std^T) + (b - mean / std @ W)
        scaled = weight / std.transpose(1, 2)
        return LinearProbes(scaled, bias - mean @ scaled, n_classes)


def control_labels(types: Sequence[str], labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Hewitt & Liang's control task: every distinct type gets a random label drawn from the empirical
    distribution of `labels`; each item then carries its type's label."""
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(t, len(index)) for t in types])
    frequencies = torch.bincount(labels).double()
    generator = torch.Generator().manual_seed(10_007 + seed)  # apart from the split's stream
    per_type = torch.multinomial(frequencies, len(index), replacement=True, generator=generator)
    return per_type[ids]


def split(groups: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean train/test masks over items; whole groups (sentences) go to one side."""
    unique = torch.unique(groups)
    order = unique[torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))]
    n_test = max(1, round(test_fraction * len(unique)))
    test = torch.isin(groups, order[:n_test])
    return ~test, test


def _spread(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def probe_layers(layers: Sequence[torch.Tensor], labels: torch.Tensor, types: Sequence[str],
                 groups: Optional[torch.Tensor] = None, seeds: Sequence[int] = (0, 1, 2),
                 test_fraction: float = 0.25, l2: float = L2, max_iter: int = 200) -> list[ProbeResult]:
    """Probe each (n, d) feature tensor of `layers` for `labels` (n,) class ids, and for the control
    task built from `types` (n strings: the unit that gets a random label). `groups` (n,) keeps items
    of one sentence on one side of the split (default: every item its own group)."""
    n = labels.shape[0]
    if len(types) != n or any(layer.shape[0] != n for layer in layers):
        raise DataError(f"every layer, the labels and the types need one row per example; got {n} labels.")
    if not seeds:
        raise ConfigError("give at least one seed.")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1; got {test_fraction}.")
    labels = labels.long()
    n_classes = int(labels.max()) + 1
    groups = torch.arange(n) if groups is None else groups
    if len(torch.unique(groups)) < 2:
        raise DataError("a probe needs at least two examples (sentences) to split into training and test sets.")
    stacked = torch.stack([layer.float() for layer in layers])  # (L+1, n, d)
    runs: list[list[tuple[float, float]]] = [[] for _ in layers]
    majority = []
    for seed in seeds:
        train, test = split(groups, test_fraction, seed)
        control = control_labels(types, labels, seed)
        majority.append(float((labels[test] == torch.bincount(labels[train]).argmax()).float().mean()))
        both = torch.stack([labels, control])  # (2, n): the task, then its control
        probes = fit_probes(stacked[:, train], both[:, train], n_classes, l2, max_iter)
        right = (probes.predict(stacked[:, test]) == both[:, test]).float().mean(-1)  # (L+1, 2)
        for layer in range(len(layers)):
            runs[layer].append((float(right[layer, 0]), float(right[layer, 1])))
    out = []
    for layer, pairs in enumerate(runs):
        accuracy, accuracy_std = _spread([a for a, _ in pairs])
        control_accuracy, control_std = _spread([c for _, c in pairs])
        selectivity, selectivity_std = _spread([a - c for a, c in pairs])
        out.append(ProbeResult(layer, accuracy, control_accuracy, selectivity, accuracy_std, control_std,
                               selectivity_std, sum(majority) / len(majority), len(seeds)))
    return out


def label_ids(labels: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Class ids of string labels (numbers in numeric order, then names) and the sorted names."""
    names = sorted({str(label) for label in labels}, key=label_sort_key)
    if len(names) < 2:
        raise DataError(f"a probe needs at least two distinct labels; got {names[0] if names else 'none'}.")
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[str(label)] for label in labels]), names


# -- probes on a model ----------------------------------------------------------------------------
def sentence_probe(model: nn.Module, texts: Sequence[str], labels: Sequence[str], seeds: Sequence[int] = (0, 1, 2),
                   pooling: str = "mean", control: str = "first_word", batch_size: int = 32,
                   side: Optional[str] = None, max_length: Optional[int] = None, test_fraction: float = 0.25,
                   l2: float = L2, max_iter: int = 200, progress: bool = False) -> list[ProbeResult]:
    """Probe every layer's pooled features of `texts` for their `labels` (one per text)."""
    if control not in CONTROLS:
        raise ConfigError(f"control must be one of {', '.join(CONTROLS)}; got '{control}'.")
    if len(texts) != len(labels):
        raise DataError(f"give one label per text; got {len(texts)} texts and {len(labels)} labels.")
    y, _ = label_ids(labels)
    rows, batches = [], []
    for batch in layer_features(model, texts, batch_size, pooling, side, max_length, progress):
        rows.append(batch.rows)
        batches.append(batch.layers)
    order = torch.argsort(torch.cat(rows))  # back to the input order
    layers = [torch.cat([b[i] for b in batches])[order] for i in range(len(batches[0]))]
    words = [text.lower().split() for text in texts]
    types = [w[0] if w else "" for w in words] if control == "first_word" else [" ".join(w) for w in words]
    return probe_layers(layers, y, types, None, seeds, test_fraction, l2, max_iter)


@torch.inference_mode()
def word_features(model: nn.Module, sentences: Sequence[Sequence[str]], batch_size: int = 32,
                  side: Optional[str] = None, max_length: Optional[int] = None
                  ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per-layer features of every word at its first sub-token (split as the tagging task splits
    words): (one (words, C) tensor per layer, the sentence of each word, the index of each word in
    its sentence). Words cut off by the context are left out."""
    check_side(model, side)
    tokenizer = model_tokenizer(model)
    limit = min(max_length or usable_length(model.config), usable_length(model.config))
    features = TaggingTask(state={"labels": ["O"]}).encode(
        [{"words": list(words), "tags": ["O"] * len(words)} for words in sentences], tokenizer, limit)
    device, pad_id, was_training = model_device(model), pad_id_of(tokenizer), model.training
    parts: list[list[torch.Tensor]] = []
    sentence_of, word_of = [], []
    model.eval()
    try:
        for chosen in by_length(features, batch_size):
            batch = text_batch([features[i] for i in chosen], pad_id)
            states = hidden_states(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), side)
            row, position = [], []
            for r, i in enumerate(chosen):
                for w, p in enumerate(features[i]["first"]):
                    if p >= 0:
                        row.append(r)
                        position.append(p)
                        sentence_of.append(i)
                        word_of.append(w)
            r, p = torch.tensor(row, device=device), torch.tensor(position, device=device)
            parts.append([h[r, p].float().cpu() for h in states])
    finally:
        model.train(was_training)
    layers = [torch.cat([part[i] for part in parts]) for i in range(len(parts[0]))]
    return layers, torch.tensor(sentence_of), torch.tensor(word_of)


def token_probe(model: nn.Module, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]],
                seeds: Sequence[int] = (0, 1, 2), batch_size: int = 32, side: Optional[str] = None,
                max_length: Optional[int] = None, test_fraction: float = 0.25, l2: float = L2,
                max_iter: int = 200) -> list[ProbeResult]:
    """Probe every layer for a tag per word (parts of speech, entities, ...), with the per-word-type control."""
    if len(sentences) != len(tags) or any(len(w) != len(t) for w, t in zip(sentences, tags)):
        raise DataError("give one tag per word of every sentence.")
    if not sentences:
        raise DataError("no sentences given; give at least two tagged sentences.")
    layers, sentence_of, word_of = word_features(model, sentences, batch_size, side, max_length)
    chosen_tags = [tags[s][w] for s, w in zip(sentence_of.tolist(), word_of.tolist())]
    types = [sentences[s][w].lower() for s, w in zip(sentence_of.tolist(), word_of.tolist())]
    y, _ = label_ids(chosen_tags)
    return probe_layers(layers, y, types, sentence_of, seeds, test_fraction, l2, max_iter)


# -- labelled files -------------------------------------------------------------------------------
def read_sentence_file(path: str, text_column: Optional[str] = None, label_column: Optional[str] = None,
                       limit: Optional[int] = None) -> tuple[list[str], list[str]]:
    """(texts, labels) of a TSV/CSV/JSONL table, read as the classification task reads it."""
    task = ClassificationTask({"text_column": text_column, "label_column": label_column})
    examples = task.read(path)[:limit]
    if any(e["pair"] is not None for e in examples[:1]):
        raise ConfigError(f"'{path}' holds pairs of texts; a sentence probe reads one text per example, so name "
                          f"the text with text_column.")
    return [e["text"] for e in examples], [e["label"] for e in examples]


def read_token_file(path: str, limit: Optional[int] = None) -> tuple[list[list[str]], list[list[str]]]:
    """(sentences as word lists, tags) of a CoNLL-style or JSONL file, read as the tagging task reads it."""
    examples = TaggingTask().read(path)[:limit]
    return [e["words"] for e in examples], [e["tags"] for e in examples]
