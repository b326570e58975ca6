"""Linear CKA (Kornblith et al. 2019) between the layers of one model, or of two models (pretrained vs
fine-tuned, two steps of one run), streamed over the data.

With column-centred features X (n, d1) and Y (n, d2), linear CKA is

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

which equals the HSIC form tr(K_X H K_Y H) / sqrt(tr(K_X H K_X H) tr(K_Y H K_Y H)) with Gram
matrices K = X X^T and the centring matrix H. The feature-space form needs only cross-products of
columns, so `CKAAccumulator` adds each batch into running sums and corrects for the means at the
end: memory does not grow with the number of examples once it passes the features' total width.

Features come from `hidden_states` (the embedding output, then one per layer): pooled over the real
tokens of each text (mean, first or last token) or one row per token. For T5 the encoder's hidden
states are used unless `side="decoder"`, which runs the decoder teacher-forced on the same text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..embed import POOLINGS, pool
from ..errors import ConfigError, DataError
from ..tasks.common import model_tokenizer, pad, pad_id_of
from ..tasks.finetune import usable_length

FEATURES = POOLINGS + ("token",)  # "token": one row per real token instead of one per text
SIDES = ("encoder", "decoder")


# -- the direct formula ---------------------------------------------------------------------------
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices with the same rows (examples): (n, d1) and (n, d2)."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise DataError(f"CKA needs the same number (at least 2) of rows on both sides; got {x.shape[0]} and {y.shape[0]}.")
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x, y = x - x.mean(0), y - y.mean(0)
    cross = (y.T @ x).square().sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


# -- the streamed form ------------------------------------------------------------------------------
class CKAAccumulator:
    """Linear CKA between every pair of feature blocks (layers), fed one batch at a time.

    Each `update` gets the same blocks (one (n, d_b) tensor per layer, same rows). The rows are kept
    (float64) while there are fewer of them than the blocks' total width D; past that they are
    folded into the D x D cross-product matrix and every later batch is added into it. So memory is
    at most D x D float64 whatever the number of examples (keep_rows lowers the switch point)."""

    def __init__(self, keep_rows: Optional[int] = None) -> None:
        self.keep_rows = keep_rows
        self.n = 0
        self.widths: Optional[list[int]] = None
        self.total: Optional[torch.Tensor] = None  # (D,) sum of the rows
        self.rows: list[torch.Tensor] = []  # kept rows (before the switch)
        self.product: Optional[torch.Tensor] = None  # (D, D) sum of z^T z (after the switch)

    def update(self, blocks: Sequence[torch.Tensor]) -> None:
        flat = [b.reshape(b.shape[0], -1) for b in blocks]
        widths = [f.shape[1] for f in flat]
        if self.widths is None:
            self.widths = widths
            self.total = torch.zeros(sum(widths), dtype=torch.float64)
        elif widths != self.widths:
            raise ValueError(f"every batch must have the same blocks; widths {widths} after {self.widths}")
        if len({f.shape[0] for f in flat}) != 1:
            raise DataError("every feature block of a batch must have the same rows; per-token features of two "
                            "models need the same tokenizer (use pooled features otherwise).")
        z = torch.cat(flat, dim=1).detach().to("cpu", torch.float64)  # (n, D)
        self.n += z.shape[0]
        self.total += z.sum(0)
        if self.product is not None:
            self.product.addmm_(z.T, z)
            return
        self.rows.append(z)
        if self.n >= (self.keep_rows if self.keep_rows is not None else sum(self.widths)):
            kept = torch.cat(self.rows)
            self.product, self.rows = kept.T @ kept, []

    def hsic(self) -> torch.Tensor:
        """(B, B) squared Frobenius norms of the centred cross-covariances, ||Z_i^T Z_j||_F^2 (unnormalised HSIC)."""
        if self.n < 2 or self.widths is None:
            raise DataError(f"CKA needs at least 2 examples; got {self.n}.")
        mean = self.total / self.n
        edges = [0]
        for w in self.widths:
            edges.append(edges[-1] + w)
        spans = list(zip(edges[:-1], edges[1:]))
        out = torch.zeros(len(spans), len(spans), dtype=torch.float64)
        centred = torch.cat(self.rows) - mean if self.product is None else None
        # sum z^T z - n mean mean^T is the centred cross-product, read block by block (views, no copy)
        covariance = self.product - self.n * torch.outer(mean, mean) if self.product is not None else None
        for i, (a, b) in enumerate(spans):
            for j, (c, d) in enumerate(spans[i:], start=i):
                block = centred[:, a:b].T @ centred[:, c:d] if centred is not None else covariance[a:b, c:d]
                out[i, j] = out[j, i] = block.square().sum()
        return out

    def matrix(self) -> torch.Tensor:
        """(B, B) linear CKA between every pair of blocks (float64). A block with no variance over
        the examples (e.g. the first token's embedding, the same for every text) gives NaN."""
        hsic = self.hsic()
        norms = hsic.diagonal().sqrt()
        return hsic / torch.outer(norms, norms)


# -- features of a model --------------------------------------------------------------------------
@dataclass
class LayerBatch:
    rows: torch.Tensor  # (n,) which text (index into the input list) each row comes from
    layers: list[torch.Tensor]  # one (n, d_model) float32 CPU tensor per layer: embedding output first


def check_side(model: nn.Module, side: Optional[str]) -> str:
    """The stack whose hidden states are used: the model's own, or for T5 'encoder' (default) or 'decoder'."""
    if model.config.stack != "encoder-decoder":
        if side not in (None, "encoder" if model.config.stack == "encoder" else "decoder"):
            raise ConfigError(f"side='{side}' applies to encoder-decoder models only; this is a {model.config.stack} model.")
        return model.config.stack
    if side is not None and side not in SIDES:
        raise ConfigError(f"side must be one of {', '.join(SIDES)}; got '{side}'.")
    return side or "encoder"


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  side: Optional[str] = None) -> tuple[torch.Tensor, ...]:
    """The embedding output then one (B, T, C) tensor per layer. T5's encoder side runs the encoder
    alone; its decoder side is teacher-forced with the text itself as the target, so position t
    reads tokens < t."""
    if model.config.stack != "encoder-decoder":
        return model(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    if check_side(model, side) == "encoder":
        return model.encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True)[1]
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return model(input_ids, attention_mask=attention_mask, labels=labels, decoder_attention_mask=attention_mask,
                 output_hidden_states=True).hidden_states


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def layer_features(model: nn.Module, texts: Sequence[str], batch_size: int = 32, pooling: str = "mean",
                   side: Optional[str] = None, max_length: Optional[int] = None,
                   progress: bool = False) -> Iterator[LayerBatch]:
    """Per-layer features of `texts`, one batch at a time, tokenized with the model's own tokenizer
    (its special tokens included; long texts truncated to the context). Batches are formed by
    character length, which depends on the texts alone, so two models with different tokenizers see
    the same batches in the same order (what `cka_between` relies on); `rows` says which texts."""
    if pooling not in FEATURES:
        raise ConfigError(f"pooling must be one of {', '.join(FEATURES)}; got '{pooling}'.")
    if not texts:
        raise DataError("no texts given; give at least two texts to compare layers on.")
    check_side(model, side)
    tokenizer = model_tokenizer(model)
    limit = min(max_length or usable_length(model.config), usable_length(model.config))
    pad_id, device, was_training = pad_id_of(tokenizer), model_device(model), model.training
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    model.eval()  # no dropout: the features are the model's, not a noisy sample of them
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="features", unit="batch", disable=not progress):
            chosen = order[start:start + batch_size]
            ids = tokenizer.encode_batch([texts[i] for i in chosen], add_special_tokens=True, max_length=limit)
            input_ids = pad(ids, pad_id).to(device)
            mask = pad([[1] * len(row) for row in ids], 0).to(device)
            states = hidden_states(model, input_ids, mask, side)
            index = torch.tensor(chosen)
            if pooling == "token":
                real = mask.bool()
                layers = [h[real].float().cpu() for h in states]  # (real tokens, C), row-major: text by text
                rows = index.repeat_interleave(mask.sum(1).cpu())
            else:
                layers = [pool(h, mask, pooling).float().cpu() for h in states]
                rows = index
            yield LayerBatch(rows=rows, layers=layers)
    finally:
        model.train(was_training)


def cka_matrix(model: nn.Module, texts: Sequence[str], batch_size: int = 32, pooling: str = "mean",
               side: Optional[str] = None, max_length: Optional[int] = None, progress: bool = False) -> torch.Tensor:
    """(L+1, L+1) linear CKA between every pair of the model's layers (0 = embedding output)."""
    accumulator = CKAAccumulator()
    for batch in layer_features(model, texts, batch_size, pooling, side, max_length, progress):
        accumulator.update(batch.layers)
    return accumulator.matrix().float()


def cka_between(model_a: nn.Module, model_b: nn.Module, texts: Sequence[str], batch_size: int = 32,
                pooling: str = "mean", side: Optional[str] = None, max_length: Optional[int] = None,
                progress: bool = False) -> torch.Tensor:
    """(La+1, Lb+1) linear CKA between each layer of `model_a` and each layer of `model_b` on the
    same texts; `.diagonal()` is the layer-by-layer comparison of two models of the same depth
    (e.g. how much fine-tuning changed each layer: 1 = unchanged up to rotation and scale)."""
    accumulator = CKAAccumulator()
    both = zip(layer_features(model_a, texts, batch_size, pooling, side, max_length, progress),
               layer_features(model_b, texts, batch_size, pooling, side, max_length))
    depth_a = None
    for a, b in both:
        if a.rows.shape != b.rows.shape or not torch.equal(a.rows, b.rows):
            raise DataError("per-token features of two models need the same tokenization; use pooled features "
                            "(pooling='mean') for models with different tokenizers.")
        depth_a = len(a.layers)
        accumulator.update(a.layers + b.layers)
    full = accumulator.matrix().float()
    return full[:depth_a, depth_a:]
