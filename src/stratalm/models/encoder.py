"""A bidirectional stack with the BERT family's optional heads: MLM, pooler, next-sentence."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..layers import Linear
from ..model_config import ModelConfig
from .heads import ClassificationHead, MaskedLMHead, Pooler, ReplacedTokenHead, SpanQAHead, TokenClassificationHead
from .output import ModelOutput, parameter_counts
from .stack import TransformerStack, init_weights


class EncoderModel(nn.Module):
    """`logits` are the classifier's (B, n_labels), else the token classifier's (B, T, tags), else
    the QA head's (B, T, 2), else the MLM head's (B, T, V), else the replaced-token head's (B, T), else the last hidden states;
    `pooled` and `nsp_logits` are filled when the config has those heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.stack = TransformerStack(config, causal=False)
        self.mlm_head = MaskedLMHead(config, self.stack.tok_embed) if config.mlm_head else None
        self.pooler = Pooler(config) if config.pooler else None
        self.nsp_head = Linear(config.d_model, 2) if config.nsp_head else None
        self.rtd_head = ReplacedTokenHead(config) if config.rtd_head else None
        self.classifier = ClassificationHead(config) if config.n_labels else None
        self.token_classifier = TokenClassificationHead(config) if config.n_token_labels else None
        self.qa_head = SpanQAHead(config) if config.qa_head else None
        init_weights(self, config)
        if self.mlm_head is not None and config.tie_embeddings:
            self.mlm_head.decoder.weight = self.stack.tok_embed.weight
        self.tokenizer = None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        perm_mask: Optional[torch.Tensor] = None,
        target_mapping: Optional[torch.Tensor] = None,
        mems: Optional[Sequence[torch.Tensor]] = None,
        use_mems: bool = False,
    ) -> ModelOutput:
        """XLNet's `perm_mask`, `target_mapping`, `mems` and `use_mems`: see TransformerStack.run;
        with a target_mapping the heads read the query stream, one row per prediction."""
        out = self.stack(
            input_ids, full_output=True, attention_mask=attention_mask, position_ids=position_ids, token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            perm_mask=perm_mask, target_mapping=target_mapping, mems=mems, use_mems=use_mems,
        )
        x, hidden, attentions = out.last, out.hidden, out.attentions
        pooled = self.pooler(x) if self.pooler is not None else None
        if self.classifier is not None:
            logits = self.classifier(x, pooled, attention_mask)
        elif self.token_classifier is not None:
            logits = self.token_classifier(x)  # (B, T, n_token_labels)
        elif self.qa_head is not None:
            logits = self.qa_head(x)  # (B, T, 2): start and end of the answer span
        elif self.mlm_head is not None:
            logits = self.mlm_head(x)
        elif self.rtd_head is not None:
            logits = self.rtd_head(x)
        else:
            logits = x
        return ModelOutput(
            logits=logits,
            hidden_states=hidden, attentions=attentions, last_hidden_state=x, pooled=pooled,
            nsp_logits=self.nsp_head(pooled) if self.nsp_head is not None else None,
            query_hidden_states=out.query_hidden, mems=out.mems,
        )

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)
