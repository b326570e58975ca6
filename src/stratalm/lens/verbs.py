"""The dataset-level lens verbs of `stratalm inspect`: similarity (linear CKA between the layers of
one model, or layer by layer between two), probe (per-layer linear probes with a control task) and
heads (head importance, then the metric as heads are pruned by importance or at random).
Each writes a JSON file of the numbers and a PNG figure into an output folder and returns a short
summary for the console."""
from __future__ import annotations

import json
import os
from typing import Optional

from ..checkpoint import load
from ..errors import ConfigError
from ..tasks.classification import ClassificationTask
from .heads import finetuned_objective, head_importance, pruning_curve, text_objective
from .probes import read_sentence_file, read_token_file, sentence_probe, token_probe
from .report import pyplot
from .similarity import cka_between, cka_matrix


def similarity(model_path: str, data: str, out: str, other_path: Optional[str] = None,
               text_column: Optional[str] = None, limit: Optional[int] = 512, pooling: str = "mean") -> str:
    """CKA of every layer with every layer (of `other_path` too, when given) on the texts of `data`."""
    texts = _texts(data, text_column, limit)
    model = load(model_path)
    if other_path:
        matrix = cka_between(model, load(other_path), texts, pooling=pooling)
        title, ylabel, xlabel = "CKA between the two models", model_path, other_path
    else:
        matrix = cka_matrix(model, texts, pooling=pooling)
        title, ylabel, xlabel = "CKA between layers", model_path, model_path
    os.makedirs(out, exist_ok=True)
    values = [[round(float(v), 4) for v in row] for row in matrix]
    with open(os.path.join(out, "cka.json"), "w") as handle:
        json.dump({"model": model_path, "other": other_path, "texts": len(texts), "pooling": pooling, "cka": values},
                  handle, indent=1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.set_title(f"{title} ({len(texts)} texts)")
    ax.set_ylabel(f"layer of {os.path.basename(ylabel.rstrip('/'))} (0 = embeddings)")
    ax.set_xlabel(f"layer of {os.path.basename(xlabel.rstrip('/'))}")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cka.png"), dpi=100)
    plt.close(fig)
    diagonal = ", ".join(f"{float(matrix[i, i]):.2f}" for i in range(min(matrix.shape)))
    return f"wrote {out}/cka.json and cka.png; diagonal (layer i with layer i): {diagonal}"


def probe(model_path: str, data: str, out: str, token_level: bool = False, text_column: Optional[str] = None,
          label_column: Optional[str] = None, limit: Optional[int] = 1000, seeds: int = 3) -> str:
    """Per-layer probes of the labels in `data` (texts with labels, or CoNLL words with tags)."""
    model = load(model_path)
    if token_level:
        sentences, tags = read_token_file(data, limit=limit)
        results = token_probe(model, sentences, tags, seeds=tuple(range(seeds)))
    else:
        texts, labels = read_sentence_file(data, text_column, label_column, limit=limit)
        results = sentence_probe(model, texts, labels, seeds=tuple(range(seeds)))
    os.makedirs(out, exist_ok=True)
    rows = [r.as_dict() for r in results]
    with open(os.path.join(out, "probes.json"), "w") as handle:
        json.dump({"model": model_path, "data": data, "token_level": token_level, "layers": rows}, handle, indent=1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = [r.layer for r in results]
    ax.errorbar(layers, [r.accuracy for r in results], [r.accuracy_std for r in results], marker="o", label="probe")
    ax.errorbar(layers, [r.control_accuracy for r in results], [r.control_std for r in results], marker="s",
                label="control task")
    ax.plot(layers, [r.majority for r in results], "k--", lw=1, label="majority label")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "probes.png"), dpi=100)
    plt.close(fig)
    table = "\n".join(f"  layer {r.layer}: accuracy {r.accuracy:.3f} ± {r.accuracy_std:.3f}, control "
                      f"{r.control_accuracy:.3f}, selectivity {r.selectivity:.3f}" for r in results)
    return f"wrote {out}/probes.json and probes.png\n{table}"


def _texts(path: str, text_column: Optional[str], limit: Optional[int]) -> list[str]:
    """The texts of a data file: non-empty lines of a .txt, else the text column of a table (labels
    may be absent), read as the classification task reads it."""
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as handle:
            texts = [line.strip() for line in handle if line.strip()]
    else:
        texts = [e["text"] for e in ClassificationTask({"text_column": text_column}).read(path, labelled=False)]
    return texts[:limit] if limit else texts


def heads(model_path: str, out: str, data: Optional[str] = None, text_column: Optional[str] = None,
          limit: Optional[int] = 256, seed: int = 0) -> str:
    """Head importance (Michel et al. 2019) and the pruning curve: a fine-tuned folder on its task's
    labelled `data` (e.g. its dev file), a decoder or T5 on the texts of `data`."""
    from ..tasks.folder import TASK_FILE, load_finetuned

    if not data:
        raise ConfigError("give --data: a labelled file for a fine-tuned folder, texts for a decoder or T5.")
    if os.path.isfile(os.path.join(model_path, TASK_FILE)):
        model, task, record = load_finetuned(model_path)
        objective = finetuned_objective(model, task, record, data)
    else:
        model = load(model_path)
        objective = text_objective(model, _texts(data, text_column, limit))
    importance = head_importance(model, objective.batches, objective.loss)
    curve = pruning_curve(model, objective.data, objective.metric, importance, seed=seed)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "heads.json"), "w") as handle:
        json.dump({"model": model_path, "metric": objective.metric_name, "importance":
                   {group: [[round(float(v), 5) for v in row] for row in scores] for group, scores in importance.items()},
                   "pruning": curve.as_dict()}, handle, indent=1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    shares = [0.0] + list(curve.fractions)
    ax.plot(shares, [curve.unpruned] + list(curve.by_importance), "o-", label="least important first")
    ax.errorbar(shares, [curve.unpruned] + list(curve.random_mean), [0.0] + list(curve.random_std), marker="s",
                label="random order")
    ax.set_xlabel("share of heads pruned")
    ax.set_ylabel(objective.metric_name)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "pruning.png"), dpi=100)
    plt.close(fig)
    line = ", ".join(f"{f:.0%}: {a:.3f} vs {r:.3f}" for f, a, r in zip(curve.fractions, curve.by_importance, curve.random_mean))
    return (f"wrote {out}/heads.json and pruning.png; {objective.metric_name} unpruned {curve.unpruned:.3f}; "
            f"pruned by importance vs at random: {line}")


def tuned_lens(model_path: str, data: str, out: str, steps: int = 250, batch_size: int = 8, seed: int = 0,
               windows: int = 64) -> str:
    """Train a tuned lens (Belrose et al. 2023) on a prepared folder, save it in `out`, and compare
    its held-out KL per layer with the plain logit lens's."""
    from .tuned import compare, train_tuned_lens

    model = load(model_path)
    lens = train_tuned_lens(model, data, steps=steps, batch_size=batch_size, seed=seed)
    figures = compare(model, lens, data, windows=windows, batch_size=batch_size)
    lens.record["validation"] = {"plain_kl": [round(float(v), 6) for v in figures["plain"]],
                                 "tuned_kl": [round(float(v), 6) for v in figures["tuned"]], "windows": figures["windows"]}
    lens.save(out)
    rows = "\n".join(f"  depth {i}: logit lens {float(p):.4f}, tuned lens {float(t):.4f}"
                     for i, (p, t) in enumerate(zip(figures["plain"], figures["tuned"])))
    return f"wrote {out} (tuned_lens.safetensors, tuned_lens.json); held-out KL to the final distribution, nats:\n{rows}"
