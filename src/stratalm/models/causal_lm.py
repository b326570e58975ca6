"""A decoder stack with a language-model head: the GPT-2 / Llama shape."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..layers import KVCache, Linear
from ..model_config import ModelConfig
from .output import ModelOutput, parameter_counts
from .stack import TransformerStack, init_weights


class CausalLM(nn.Module):
    """Predicts the next token at every position. The head is tied to the embeddings when the
    config says so (one matrix, counted once)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.stack = TransformerStack(config, causal=True)
        # A tied head is the embedding: built on the meta device, it never allocates a matrix of its own.
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, device="meta" if config.tie_embeddings else None)
        init_weights(self, config)
        if config.tie_embeddings:
            self.lm_head.weight = self.stack.tok_embed.weight
        self.tokenizer = None  # set by stratalm.load / the trainer; the model does not need it

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """`logits_to_keep` > 0 applies the head to the last that many positions only (as in
        `transformers`): decoding needs the last one, and the head is the largest matrix."""
        x, hidden, attentions = self.stack(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        logits = soft_cap(self.lm_head(x[:, -logits_to_keep:] if logits_to_keep > 0 else x), self.config.logit_softcap)
        return ModelOutput(logits=logits, hidden_states=hidden, attentions=attentions, last_hidden_state=x)

    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCache:
        param = self.lm_head.weight
        return KVCache(self.config, batch_size, max_len or self.config.max_seq_len, param.dtype, param.device)

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): about the logits themselves while small, never beyond +-cap, so no
    logit can run away early in training (Gemma 2, modded-nanogpt). cap 0 leaves them as they are."""
    return logits if cap <= 0 else cap * torch.tanh(logits / cap)
