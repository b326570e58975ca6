"""An encoder and a decoder that share one token embedding (T5's layout): the decoder attends to
its own past causally and to the whole encoder output through cross-attention."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from ..layers import KVCache, Linear
from ..model_config import ModelConfig
from .output import ModelOutput, parameter_counts
from .stack import TransformerStack, init_weights


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the start token, then the targets moved one step right
    (ignored positions, -100, become padding)."""
    shifted = labels.new_full(labels.shape, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_id)


class EncoderDecoderModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder_config = dataclasses.replace(config, n_layers=config.n_decoder_layers or config.n_layers, share_layers=0)
        self.encoder = TransformerStack(config, causal=False)
        self.decoder = TransformerStack(self.decoder_config, causal=True, cross=True)
        self.decoder.tok_embed = self.encoder.tok_embed  # one table for both sides
        # A tied head is the embedding: built on the meta device, it never allocates a matrix of its own.
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, device="meta" if config.tie_embeddings else None)
        init_weights(self, config)
        if config.init_scheme == "t5":
            t5_init(self)
        if config.tie_embeddings:
            self.lm_head.weight = self.encoder.tok_embed.weight
        self.tokenizer = None

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask=attention_mask)[0]  # (B, S, C)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        encoder_output: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """Give `decoder_input_ids`, or `labels` to build them by shifting right. `encoder_output`
        skips the encoder (decoding reuses it at every step)."""
        encoder_hidden = None
        if encoder_output is None:
            encoder_output, encoder_hidden, _ = self.encoder(input_ids, attention_mask=attention_mask,
                                                             output_hidden_states=output_hidden_states)
        if decoder_input_ids is None:
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        x, hidden, attentions = self.decoder(
            decoder_input_ids, attention_mask=decoder_attention_mask, cache=cache,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            memory=encoder_output, memory_mask=attention_mask,
        )
        if self.config.lm_head_scale:
            x = x * self.config.d_model ** -0.5  # T5 v1.0: keeps tied-embedding logits small
        return ModelOutput(logits=self.lm_head(x), hidden_states=hidden, attentions=attentions, last_hidden_state=x,
                           encoder_last_hidden_state=encoder_output, encoder_hidden_states=encoder_hidden)

    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCache:
        param = self.lm_head.weight
        return KVCache(self.decoder_config, batch_size, max_len or self.config.max_seq_len, param.dtype, param.device)

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)


def t5_init(model: nn.Module) -> None:
    """Re-draw a from-scratch T5 with T5's own initialisation, as `transformers` does: unit-variance
    embeddings (the tied head scales its input by d_model^-0.5) and each projection scaled by its
    fan-in. T5's attention has no 1/sqrt(d) factor, so the generic N(0, 0.02) start leaves every
    attention nearly uniform and a small model barely learns to read its source."""
    c = model.config
    inner = c.n_heads * c.dim_per_head
    q_std, kv_std = (c.d_model * c.dim_per_head) ** -0.5, c.d_model ** -0.5
    # Each projection's std is fan_in^-0.5, found through the modules (no name matching); a block's
    # norms and all biases keep init_weights' values. The fused self-attention qkv gets two stds.
    std: dict[int, float] = {}
    qkv: set[int] = set()
    for stack in (model.encoder, model.decoder):
        if stack.rel_bias is not None:
            std[id(stack.rel_bias.weight)] = c.d_model ** -0.5
        for block in stack.blocks:
            qkv.add(id(block.attn.qkv.weight))
            std[id(block.attn.out.weight)] = inner ** -0.5
            if block.cross:
                std[id(block.cross_attn.q.weight)], std[id(block.cross_attn.kv.weight)] = q_std, kv_std
                std[id(block.cross_attn.out.weight)] = inner ** -0.5
            std[id(block.ff.up.weight)], std[id(block.ff.down.weight)] = c.d_model ** -0.5, c.d_ff ** -0.5
    with torch.no_grad():
        model.encoder.tok_embed.weight.normal_(0.0, 1.0)
        if not c.tie_embeddings:
            model.lm_head.weight.normal_(0.0, 1.0)
        for param in model.parameters():  # in this order, so a seed gives the same weights
            if id(param) in qkv:  # rows: queries, then keys and values
                param[:inner].normal_(0.0, q_std)
                param[inner:].normal_(0.0, kv_std)
            elif id(param) in std:
                param.normal_(0.0, std[id(param)])
