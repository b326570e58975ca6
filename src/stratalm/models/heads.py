"""Heads that sit on an encoder's hidden states."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Linear, make_norm
from ..layers.feedforward import activation_fn
from ..layers.linear import linear
from ..model_config import ModelConfig


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense -> activation -> norm -> decoder (tied to the embeddings) + bias.
    With factorised embeddings (ALBERT, ELECTRA's generator) the dense layer narrows to their width.
    Without `mlm_transform` (XLNet's lm_loss) only the decoder and its bias remain."""

    def __init__(self, config: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        width = config.embed_width
        self.transform = config.mlm_transform
        if self.transform:
            self.dense = Linear(config.d_model, width)
            self.act = activation_fn(config.activation)
            self.norm = make_norm(config.norm, width, config.norm_eps, config.norm_bias)
        self.decoder = Linear(width, config.vocab_size, bias=False, device="meta" if config.tie_embeddings else None)
        if config.tie_embeddings:
            self.decoder.weight = embedding.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # The bias goes into the product (one addmm), not a second pass over the (B, T, V) logits.
        if self.transform:
            hidden = self.norm(self.act(self.dense(hidden)))
        return linear(hidden, self.decoder.weight, self.bias)  # (B, T, V)


class Pooler(nn.Module):
    """The first token's hidden state through dense + tanh (BERT's sentence vector)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = Linear(config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, C)


class ReplacedTokenHead(nn.Module):
    """ELECTRA's discriminator: dense -> activation -> one logit per token (is it replaced?)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = Linear(config.d_model, config.d_model)
        self.act = activation_fn(config.activation)
        self.out = Linear(config.d_model, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)  # (B, T)


class TokenClassificationHead(nn.Module):
    """One logit per tag for every token (NER, POS tagging): dropout then a linear layer, as in
    BertForTokenClassification."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.out = Linear(config.d_model, config.n_token_labels)
        self.dropout = config.dropout

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(F.dropout(hidden, self.dropout, self.training))  # (B, T, n_token_labels)


class SpanQAHead(nn.Module):
    """Extractive question answering (BertForQuestionAnswering's `qa_outputs`): a linear layer
    that gives every token a start logit and an end logit."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.out = Linear(config.d_model, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(hidden)  # (B, T, 2): start, end


class ClassificationHead(nn.Module):
    """Sequence classification from the first token: `dense -> activation -> out` (RoBERTa,
    ELECTRA), or just `out` on the pooler's vector (BERT, ALBERT; the pooler already has its dense).
    `last` is the dense form on the last real token (XLNet's sequence summary: its <cls> ends the
    input). transformers reads the last position, which is the same under the left padding of
    XLNet's tokenizer; reading the last real one keeps right-padded batches (the tasks') right too."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = Linear(config.d_model, config.d_model) if config.classifier in ("dense", "last") else None
        self.token = -1 if config.classifier == "last" else 0
        self.act = activation_fn(config.classifier_activation or config.activation)
        self.out = Linear(config.d_model, config.n_labels)
        self.dropout = config.dropout

    def forward(self, hidden: torch.Tensor, pooled: Optional[torch.Tensor],
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        drop = lambda t: F.dropout(t, self.dropout, self.training)  # noqa: E731
        if self.dense is None:
            return self.out(drop(pooled))  # (B, n_labels)
        if self.token == -1 and attention_mask is not None:  # the running count of real tokens peaks first there
            summary_token = hidden[torch.arange(len(hidden)), attention_mask.long().cumsum(1).argmax(1)]
        else:
            summary_token = hidden[:, self.token]
        return self.out(drop(self.act(self.dense(drop(summary_token)))))
