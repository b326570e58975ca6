"""Retrieval with sentence embeddings: find each query's positive target among all the targets.

Texts are embedded with `stratalm.embed` (mean pooling by default, unit length), so a dot product
is the cosine similarity; search is a top-k over the query-by-corpus score matrix. Metrics are
recall@1/5/10 (the positive is among the first k) and MRR (mean of 1 / the positive's rank).
The corpus is every distinct target of the file. Fine-tuning is contrastive with in-batch
negatives (the other pairs' targets in the batch), as in SimCSE and sentence-transformers'
MultipleNegativesRankingLoss, with an optional symmetric (target -> query) term.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..embed import POOLINGS, encode, pool
from ..errors import ConfigError, DataError
from ..tokenize import Tokenizer
from .base import Task
from .common import model_tokenizer, pad
from .data_files import read_pairs
from .options import QUERY_COLUMNS, RETRIEVAL_TARGET_COLUMNS as TARGET_COLUMNS, TASK_OPTIONS

KS = (1, 5, 10)


# -- search and metrics --------------------------------------------------------------------------
def search(queries: torch.Tensor, corpus: torch.Tensor, k: int, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and corpus indices of the k best matches of each query by dot product: (Q, k) each."""
    k = min(k, corpus.shape[0])
    scores, indices = [], []
    for start in range(0, queries.shape[0], batch_size):
        top = (queries[start:start + batch_size] @ corpus.T).topk(k, dim=1)
        scores.append(top.values)
        indices.append(top.indices)
    return torch.cat(scores), torch.cat(indices)


def gold_ranks(queries: torch.Tensor, corpus: torch.Tensor, gold: Sequence[int]) -> list[int]:
    """The 1-based rank of each query's positive in the whole corpus (ties count against it)."""
    ranks = []
    for start in range(0, queries.shape[0], 1024):
        scores = queries[start:start + 1024] @ corpus.T  # (q, C)
        rows = torch.arange(scores.shape[0])
        positive = scores[rows, torch.tensor(gold[start:start + scores.shape[0]])]
        ranks += (scores >= positive[:, None]).sum(dim=1).tolist()  # the positive itself counts: rank 1 at best
    return ranks


def rank_metrics(ranks: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """recall@k (share of queries whose positive is in the top k) and MRR (mean reciprocal rank)."""
    if not ranks:
        raise DataError("no query to score; give at least one (query, target) pair.")
    out = {f"recall@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["mrr"] = sum(1.0 / r for r in ranks) / len(ranks)
    return out


def corpus_of(examples: Sequence[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """The distinct targets (first-seen order) and each example's index among them."""
    index: dict[str, int] = {}
    for example in examples:
        index.setdefault(example["target"], len(index))
    return list(index), [index[e["target"]] for e in examples]


# -- the task ------------------------------------------------------------------------------------
class RetrievalTask(Task):
    name = "retrieval"
    main_metric = "mrr"
    stacks = ("encoder", "decoder")
    OPTIONS = TASK_OPTIONS["retrieval"]

    def __init__(self, options=None, state=None) -> None:
        super().__init__(options, state)
        if self.options["pooling"] not in POOLINGS:
            raise ConfigError(f"--pooling must be one of {', '.join(POOLINGS)}; got '{self.options['pooling']}'.")
        if self.options["temperature"] <= 0:
            raise ConfigError(f"--temperature must be positive; got {self.options['temperature']}.")

    def read(self, path: str, labelled: bool = True) -> list[dict[str, Any]]:
        pairs = read_pairs(path, self.options["query_column"], self.options["positive_column"],
                           (QUERY_COLUMNS, TARGET_COLUMNS), ("--query-column", "--positive-column"))
        for number, (query, target) in enumerate(pairs, start=1):
            if not query.strip() or not (target or "").strip():
                raise DataError(f"example {number} of '{path}' has an empty {'query' if not query.strip() else 'target'}; "
                                "give both texts of every pair.")
        return [{"query": q, "target": t} for q, t in pairs]

    def prepare_model(self, base: nn.Module) -> tuple[nn.Module, list[str]]:
        return base, []  # embeddings come from the last hidden states: no head to add

    # -- training ----------------------------------------------------------------------------
    def encode(self, examples: list[dict[str, Any]], tokenizer: Tokenizer, max_length: int) -> list[dict[str, Any]]:
        _, target_ids = corpus_of(examples)
        queries = tokenizer.encode_batch([e["query"] for e in examples], add_special_tokens=True, max_length=max_length)
        targets = tokenizer.encode_batch([e["target"] for e in examples], add_special_tokens=True, max_length=max_length)
        return [{"query": q, "target": t, "target_id": i} for q, t, i in zip(queries, targets, target_ids)]

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        out = {"target_id": torch.tensor([f["target_id"] for f in features])}
        for side in ("query", "target"):
            out[f"{side}_ids"] = pad([f[side] for f in features], pad_id)
            out[f"{side}_mask"] = pad([[1] * len(f[side]) for f in features], 0)
        return out

    def _embed(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = model(ids, attention_mask=mask).last_hidden_state
        return F.normalize(pool(hidden, mask, self.options["pooling"]).float(), dim=-1)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(model.parameters()).device
        queries = self._embed(model, batch["query_ids"].to(device), batch["query_mask"].to(device))
        targets = self._embed(model, batch["target_ids"].to(device), batch["target_mask"].to(device))
        logits = queries @ targets.T / self.options["temperature"]  # (B, B): the diagonal holds the positives
        # Two pairs with the same target must not push each other's positive away.
        ids = batch["target_id"].to(device)
        duplicate = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device=device)
        logits = logits.masked_fill(duplicate, float("-inf"))
        labels = torch.arange(len(ids), device=device)
        loss = F.cross_entropy(logits, labels)
        if self.options["symmetric"]:
            loss = (loss + F.cross_entropy(logits.T, labels)) / 2
        return loss

    # -- evaluation --------------------------------------------------------------------------
    def embed(self, model: nn.Module, texts: list[str], max_length: int, batch_size: int) -> torch.Tensor:
        return encode(model, texts, pooling=self.options["pooling"], batch_size=batch_size, normalize=True,
                      max_length=max_length)

    def predict(self, model: nn.Module, examples: list[dict[str, Any]], max_length: int,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """Each query's positive rank and its top_k targets (corpus indices and scores)."""
        model_tokenizer(model)
        targets, gold = corpus_of(examples)
        corpus = self.embed(model, targets, max_length, batch_size)
        queries = self.embed(model, [e["query"] for e in examples], max_length, batch_size)
        scores, indices = search(queries, corpus, self.options["top_k"])
        ranks = gold_ranks(queries, corpus, gold)
        return [{"rank": rank, "top": [(targets[i], float(s)) for i, s in zip(row_i.tolist(), row_s.tolist())]}
                for rank, row_i, row_s in zip(ranks, indices, scores)]

    def score(self, examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
        return rank_metrics([p["rank"] for p in predictions])

    def format(self, example: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        return {"query": example["query"], "rank_of_positive": prediction["rank"],
                "results": [{"target": t, "score": round(s, 6)} for t, s in prediction["top"]]}
