"""Contrastive sentence embeddings (SimCSE, Gao et al. 2021).

Unsupervised: every text of the batch is encoded twice; dropout alone makes the two views differ,
and each first view must pick its own second view among all second views of the batch (in-batch
negatives, cross-entropy over cosine similarities / temperature 0.05). Supervised: the views are
the two sides of a pair from a file (e.g. an NLI premise and its entailment), with an optional hard
negative per pair whose embedding joins the candidates. Under DDP the candidates are gathered from
every process; as in the paper's code, gradients flow through this process's own embeddings only.

Optional cross-view augmentations from the classic literature (CLEAR, Wu et al. 2020; ConSERT, Yan
et al. 2021): `reorder` swaps two sentences of the text, `delete` drops each word with probability
`augment_rate`, `replace` swaps each token for a random one with that probability.

Validation (issue 12). In evaluation dropout is off, so the two dropout views of a text are the
same vector and in-batch accuracy and positive cosine are 1.0 for any model. Evaluation therefore
scores measures that can fail (Wang & Isola 2020, as the SimCSE paper reports them), on held-out
text: `alignment` = E ||f(x) - f(x+)||^2 over positive pairs of normalised embeddings (0 = a positive
lands on its anchor; a collapsed encoder also scores 0), `uniformity` = log E exp(-2 ||f(x) - f(y)||^2)
over pairs of distinct texts (0 = every text on one point, about -4 for a uniform spread), and `loss`,
the in-batch InfoNCE of those pairs. The figures of training (contrastive_accuracy, cosines) stay in
training. With `simcse.eval_pairs`, a scored pairs file (STS-style), `validation_scores` adds the
Spearman correlation of cosine with the score, and alignment / uniformity over that file's pairs.
"""
from __future__ import annotations

import csv
import json
import os
import zlib
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..model_config import ModelConfig
from ..models import ModelOutput
from ..tokenize import Tokenizer
from .base import Objective
from .settings import ContrastiveConfig
from .mlm import continuation_table
from .pairs import longest_piece

AUGMENTATIONS = ("reorder", "delete", "replace")


def read_pairs(path: str, columns: tuple[str, ...], last_optional: bool = True) -> list[tuple[str, ...]]:
    """Rows of a TSV/CSV (with a header) or JSONL file as tuples of the named columns; the last
    column is dropped everywhere when the file does not have it (an optional hard negative) and
    `last_optional`. A TSV has no quoting (as GLUE's files: a text may start with a quote mark)."""
    if not os.path.isfile(path):
        raise DataError(f"pairs file '{path}' does not exist.")
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    elif path.endswith((".tsv", ".csv")):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            tsv = path.endswith(".tsv")
            rows = list(csv.DictReader(handle, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL))
    else:
        raise DataError(f"pairs file '{path}' must end in .tsv, .csv or .jsonl.")
    if not rows:
        raise DataError(f"pairs file '{path}' has no rows.")
    found = list(rows[0])
    wanted = list(columns) if columns[-1] in found or not last_optional else list(columns[:-1])
    for column in wanted:
        if column not in found:
            raise DataError(f"pairs file '{path}' has no column '{column}'; its columns are: {', '.join(found)}.")
    return [tuple(str(row[c] if row[c] is not None else "") for c in wanted) for row in rows]


class ContrastiveObjective(Objective):
    name = "simcse"
    extra_tokens = -2  # [CLS] text [SEP]

    def __init__(self, tokenizer: Tokenizer, options: Optional[ContrastiveConfig] = None) -> None:
        self.options = options = options or ContrastiveConfig()
        self.tokenizer = tokenizer
        self.heads = ("pooler",) if options.pooling == "cls" else ()
        self.augment = [a for a in options.augment.replace(" ", "").split(",") if a]
        self.eval_augment = [a for a in options.eval_augment.replace(" ", "").split(",") if a]
        unknown = [a for a in self.augment + self.eval_augment if a not in AUGMENTATIONS]
        if unknown or options.pooling not in ("cls", "mean") or options.temperature <= 0:
            raise ConfigError(f"simcse options: augment must be among {', '.join(AUGMENTATIONS)}, pooling cls or mean, "
                              f"temperature above 0 (got augment '{options.augment}', pooling '{options.pooling}').")
        if not self.eval_augment or not 0 < options.eval_augment_rate < 1:
            raise ConfigError(f"simcse.eval_augment must name at least one of {', '.join(AUGMENTATIONS)} and "
                              f"simcse.eval_augment_rate lie strictly between 0 and 1 (got '{options.eval_augment}', "
                              f"{options.eval_augment_rate}): without them a held-out text's positive is the text itself.")
        for role in ("cls", "sep", "pad"):
            if getattr(tokenizer, f"{role}_id") is None:
                raise ConfigError(f"the simcse objective needs a {role} token, and this tokenizer has none.")
        self.pairs = read_pairs(options.pairs, (options.first_column, options.second_column, options.negative_column)) \
            if options.pairs else None
        self.eval_pairs = self._read_scored_pairs(options.eval_pairs) if options.eval_pairs else None
        used = self.augment + self.eval_augment
        self.starts_word = ~continuation_table(tokenizer) if "delete" in used else None
        self.sentence_ends = self._sentence_end_ids() if "reorder" in used else None

    def _read_scored_pairs(self, path: str) -> tuple[list[tuple[str, str]], torch.Tensor]:
        o = self.options
        rows = read_pairs(path, (o.eval_first_column, o.eval_second_column, o.eval_score_column), last_optional=False)
        try:
            scores = torch.tensor([float(row[2]) for row in rows], dtype=torch.float64)
        except ValueError:
            raise DataError(f"eval pairs file '{path}': column '{o.eval_score_column}' must hold numbers "
                            f"(set simcse.eval_score_column to the score's column).") from None
        return [(row[0], row[1]) for row in rows], scores

    def check(self, config: ModelConfig, data) -> None:
        if config.stack != "encoder":
            raise ConfigError(f"the simcse objective trains sentence encoders; '{config.family}' is a {config.stack} model.")

    def _sentence_end_ids(self) -> set[int]:
        vocab = self.tokenizer.backend.get_vocab(with_added_tokens=False)
        return {i for token, i in vocab.items() if token.rstrip().endswith((".", "!", "?"))}

    # -- views ------------------------------------------------------------------------------
    def _augmented(self, tokens: list[int], rng: torch.Generator, augment: Optional[list[str]] = None,
                   rate: Optional[float] = None) -> list[int]:
        """`tokens` under the training augmentations (or `augment` at `rate`)."""
        augment = self.augment if augment is None else augment
        rate = self.options.augment_rate if rate is None else rate
        if "reorder" in augment:
            cuts = [i + 1 for i, t in enumerate(tokens[:-1]) if t in self.sentence_ends]
            if cuts:  # swap the text before and after one sentence end
                cut = cuts[int(torch.randint(len(cuts), (1,), generator=rng))]
                tokens = tokens[cut:] + tokens[:cut]
        if "delete" in augment and len(tokens) > 1:
            words = torch.tensor(tokens)
            word_of = self.starts_word[words].long().cumsum(0)
            dropped = torch.rand(int(word_of.max()) + 1, generator=rng) < rate
            kept = [t for t, w in zip(tokens, word_of.tolist()) if not dropped[w]]
            tokens = kept or tokens[:1]
        if "replace" in augment:
            swap = (torch.rand(len(tokens), generator=rng) < rate).tolist()
            random_ids = torch.randint(7, self.tokenizer.vocab_size, (len(tokens),), generator=rng).tolist()
            tokens = [r if s else t for t, s, r in zip(tokens, swap, random_ids)]
        return tokens

    def _batch(self, views: list[list[list[int]]], width: int) -> dict[str, torch.Tensor]:
        """(B, V, width) ids and attention masks of [CLS] text [SEP], right-padded."""
        tok = self.tokenizer
        B, V = len(views), len(views[0])
        ids = torch.full((B, V, width), tok.pad_id)
        mask = torch.zeros((B, V, width), dtype=torch.long)
        for b, row in enumerate(views):
            for v, text in enumerate(row):
                tokens = [tok.cls_id, *text[:width - 2], tok.sep_id]
                ids[b, v, :len(tokens)] = torch.tensor(tokens)
                mask[b, v, :len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        B, W = windows.shape
        if self.pairs is not None:
            chosen = torch.randint(len(self.pairs), (B,), generator=rng).tolist()
            texts = [self.pairs[i] for i in chosen]
            views = [[self._augmented(t, rng) if self.augment else t for t in self.tokenizer.encode_batch(list(row))]
                     for row in texts]
        else:
            eos = self.tokenizer.eos_id
            pieces = [longest_piece(row, eos) or row[:1] for row in windows.tolist()]
            views = [[self._augmented(p, rng), self._augmented(p, rng)] if self.augment else [p, p] for p in pieces]
        inputs = self._batch(views, W + 2)
        return inputs, {"labels": torch.arange(B)}  # row i's positive is candidate i (over all processes)

    # -- loss -------------------------------------------------------------------------------
    def compute(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        """Training: the contrastive loss and its figures. Evaluation (`model.training` False):
        alignment, uniformity and the InfoNCE loss of held-out positive pairs (see `validation`)."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if not model.training and self.pairs is None:
            ids, mask = self._held_out_views(ids, mask)
        B, V, T = ids.shape
        output = model(input_ids=ids.reshape(B * V, T), attention_mask=mask.reshape(B * V, T))
        if not model.training:
            return self.validation(output, mask.reshape(B * V, T), V)
        return self.loss(output, {**targets, "attention_mask": mask.view(B * V, T), "views": torch.tensor(V)})

    def _held_out_views(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, T) views of unsupervised evaluation: each text (the first prepared view), and its
        positive, the text under `eval_augment` (word deletion by default).
        Why not dropout: it is off in evaluation, and forcing it on would make the figures depend on
        the model's dropout rate (0 in many configs: the views would be identical again, alignment 0
        for any model) and on the global random state. A seeded perturbation of the words is the same
        for every model and every evaluation, so figures compare across evaluations and runs, and no
        encoder can map a text and its damaged copy to one point without collapsing (uniformity 0).
        The seed is a checksum of the text, so a positive does not depend on batching or processes."""
        rows = []
        for row, length in zip(ids[:, 0].tolist(), mask[:, 0].sum(-1).tolist()):
            text = row[1:length - 1]  # between [CLS] and [SEP]
            rng = torch.Generator().manual_seed(zlib.crc32(torch.tensor(text, dtype=torch.int64).numpy().tobytes()))
            rows.append([text, self._augmented(text, rng, self.eval_augment, self.options.eval_augment_rate)])
        views = self._batch(rows, ids.shape[-1])
        return views["input_ids"].to(ids.device), views["attention_mask"].to(mask.device)

    def embed(self, output: ModelOutput, mask: torch.Tensor) -> torch.Tensor:
        if self.options.pooling == "cls":
            return output.pooled if output.pooled is not None else output.last_hidden_state[:, 0]
        weights = mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
        return (output.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        V = int(targets["views"])
        z = F.normalize(self.embed(output, targets["attention_mask"]).float(), dim=-1)
        z = z.view(-1, V, z.shape[-1])  # (B, V, C): anchor, positive[, hard negative]
        anchors = z[:, 0]
        candidates = gather_rows(torch.cat([z[:, 1], z[:, 2]]) if V == 3 else z[:, 1], V - 1)
        logits = anchors @ candidates.T / self.options.temperature  # (B, B_all x (V - 1))
        labels = targets["labels"]
        loss = F.cross_entropy(logits, labels)
        positive = (anchors * candidates[labels]).sum(-1).mean()
        others = (logits * self.options.temperature).sum(-1) - (anchors * candidates[labels]).sum(-1)
        metrics = {"loss": loss.detach(), "contrastive_accuracy": (logits.argmax(-1) == labels).float().mean().detach(),
                   "positive_cosine": positive.detach(), "negative_cosine": (others.mean() / max(logits.shape[1] - 1, 1)).detach()}
        return loss, metrics

    def validation(self, output: ModelOutput, mask: torch.Tensor, views: int):
        """Scores of held-out (anchor, positive[, hard negative]) rows, each process on its own rows
        (no gathering: processes evaluate different numbers of batches). The loop averages them over
        batches weighted by the batch's number of texts: exact for `alignment` and `loss` (means over
        texts; the loss is the InfoNCE against the batch's other positives, so it depends on the
        evaluation batch size, like any in-batch loss). `uniformity` is a log of a mean over the
        batch's pairs, so its batch average is an approximation of the whole split's, as in Wang &
        Isola's reference code (per batch, and slightly below the whole split's value, by Jensen);
        a batch of one text has no pair and counts 0, the collapsed value. `validation_scores`
        gives exact whole-file figures."""
        z = F.normalize(self.embed(output, mask).float(), dim=-1)
        z = z.view(-1, views, z.shape[-1])  # (B, V, C)
        anchors, positives = z[:, 0], z[:, 1]
        candidates = torch.cat([positives, z[:, 2]]) if views == 3 else positives
        logits = anchors @ candidates.T / self.options.temperature
        loss = F.cross_entropy(logits, torch.arange(len(anchors), device=logits.device))
        metrics = {"loss": loss.detach(), "alignment": alignment(anchors, positives).detach(),
                   "uniformity": uniformity(anchors).detach()}
        return loss, metrics

    # -- whole-file validation -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, model: torch.nn.Module, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, C) normalised embeddings of `texts` as this objective pools them, [CLS] text [SEP]
        truncated to the model's context, in batches of similar lengths."""
        limit = getattr(model, "module", model).config.max_seq_len  # through a DDP wrapper
        ids = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        device = next(iter(model.parameters())).device
        out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            width = min(max(len(ids[i]) for i in chosen) + 2, limit)
            views = self._batch([[ids[i]] for i in chosen], width)
            input_ids, mask = views["input_ids"][:, 0].to(device), views["attention_mask"][:, 0].to(device)
            z = F.normalize(self.embed(model(input_ids=input_ids, attention_mask=mask), mask).float(), dim=-1)
            for row, i in enumerate(chosen):
                out[i] = z[row]
        return torch.stack(out) if out else torch.empty(0, 0)

    def validation_scores(self, model: torch.nn.Module, batch_size: int = 64) -> dict[str, float]:
        """With `simcse.eval_pairs`, once per evaluation: `spearman`, the rank correlation (ties
        averaged) of the pairs' cosines with their scores, as STS benchmarks report it (0 when all
        cosines are equal, as a collapsed encoder's); `pairs_alignment` over the pairs scored in the
        top fifth of the file's range (STS-B: 4 to 5, as in the SimCSE paper; a 0/1 file: the 1s);
        `pairs_uniformity` over every text of the file. Exact over the whole file, and the same on
        every process. Runs the model in eval mode and puts it back as it was."""
        if self.eval_pairs is None:
            return {}
        pairs, scores = self.eval_pairs
        was_training = model.training
        model.eval()
        try:
            z = self.encode(model, [p[0] for p in pairs] + [p[1] for p in pairs], batch_size)
        finally:
            model.train(was_training)
        first, second = z[:len(pairs)].cpu(), z[len(pairs):].cpu()
        # cosines equal to 6 decimals tie: rounding noise must not rank a collapsed encoder's pairs
        cosines = ((first * second).sum(-1).double() * 1e6).round()
        low, high = float(scores.min()), float(scores.max())
        positive = scores >= low + 0.8 * (high - low)
        return {"spearman": spearman(cosines, scores), "pairs_alignment": float(alignment(first[positive], second[positive])),
                "pairs_uniformity": float(uniformity(z.cpu()))}


def alignment(anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """E ||a - p||^2 over rows of normalised embeddings (Wang & Isola 2020, alpha = 2)."""
    if len(anchors) == 0:
        return torch.zeros((), device=anchors.device)
    return (anchors - positives).pow(2).sum(-1).mean()


def uniformity(z: torch.Tensor, t: float = 2.0, block: int = 1024) -> torch.Tensor:
    """log E exp(-t ||z_i - z_j||^2) over pairs i != j of normalised rows (Wang & Isola 2020),
    in blocks of rows so a large file never holds N x N distances; 0 with fewer than two rows."""
    n = len(z)
    if n < 2:
        return torch.zeros((), device=z.device)
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for start in range(0, n, block):
        part = z[start:start + block]
        squared = (2 - 2 * part @ z.T).clamp(min=0)  # (block, N): ||a - b||^2 of unit vectors
        kernel = torch.exp(-t * squared.double())
        rows = torch.arange(len(part), device=z.device)
        kernel[rows, rows + start] = 0  # a text and itself is not a pair
        total += kernel.sum()
    return torch.log(total / (n * (n - 1))).to(z.dtype)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor; tied values share the mean of the ranks they span."""
    ordered, order = torch.sort(values)
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # the rank of each run's last member
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = (last - (counts.double() - 1) / 2)[group]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's on the average ranks; 0 when either side is constant."""
    rx, ry = average_ranks(x.cpu()), average_ranks(y.cpu())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / norm if norm > 0 else 0.0


def gather_rows(local: torch.Tensor, groups: int) -> torch.Tensor:
    """Every process's candidates, in process order (positives first, then hard negatives); this
    process's own rows keep their gradient. `local` is `groups` blocks of this process's rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world, rank = dist.get_world_size(), dist.get_rank()
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local.detach().contiguous())
    gathered[rank] = local
    blocks = [part.chunk(groups) for part in gathered]  # per process: (positives, negatives)
    return torch.cat([blocks[r][g] for g in range(groups) for r in range(world)])
