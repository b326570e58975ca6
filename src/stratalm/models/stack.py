"""A stack of blocks with its embeddings: token ids in, one hidden vector per position out."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import AbsolutePositions, Block, KVCache, Linear, RelativePositionBias, RotaryEmbedding, make_norm
from ..layers.positions import RelativeContext, relative_sinusoids
from ..model_config import ModelConfig
from .anatomy import init_role
from .masks import add_position_bias, attention_mask_for, two_stream_masks


@dataclass
class StackOutput:
    last: torch.Tensor  # (B, T, C) what the heads read; XLNet with a target_mapping: the query stream's (B, M, C)
    hidden: Optional[tuple] = None  # embedding output, then one per layer (the content stream)
    attentions: Optional[tuple] = None  # (B, nh, T, S) per layer (the content stream)
    query_hidden: Optional[tuple] = None  # XLNet: the query stream's start, then one per layer (B, M, C)
    mems: Optional[tuple] = None  # XLNet with use_mems: per layer, the states the next segment attends to


class TransformerStack(nn.Module):
    """embed tokens (+ positions) -> blocks -> final norm. `causal` makes it a decoder; `cross`
    gives its blocks cross-attention over an encoder's output (passed to forward as `memory`)."""

    def __init__(self, config: ModelConfig, causal: bool = True, cross: bool = False) -> None:
        super().__init__()
        self.config, self.causal = config, causal
        width = config.embed_width  # narrower than d_model in ALBERT and ELECTRA's small models
        self.tok_embed = nn.Embedding(config.vocab_size, width)
        self.positions = (
            AbsolutePositions(config.position, config.max_seq_len, width)
            if config.position in ("learned", "sinusoidal") else None
        )
        self.rotary = (
            RotaryEmbedding(config.dim_per_head, config.max_seq_len, config.rope_theta)
            if config.position == "rope" else None
        )
        self.token_types = nn.Embedding(config.type_vocab_size, width) if config.type_vocab_size else None
        self.embed_norm = make_norm(config.norm, width, config.norm_eps, config.norm_bias) if config.embedding_norm else None
        self.embed_proj = Linear(width, config.d_model) if width != config.d_model else None
        # T5: one learned bias table per stack, computed once per forward and shared by all layers.
        self.rel_bias = (
            RelativePositionBias(config.relative_buckets, config.relative_max_distance, config.n_heads, not causal)
            if config.position == "relative_buckets" else None
        )
        # XLNet: relative sinusoids computed per forward (no table); the query stream's learned start.
        self.relative_positions = config.position == "relative_sinusoidal"
        self.mask_emb = nn.Embedding(1, config.d_model) if config.query_stream else None
        self.blocks = nn.ModuleList(Block(config, cross) for _ in range(config.n_blocks))
        # Which block runs at each depth: itself, or (ALBERT) its group's shared block.
        self.layer_plan = [i * config.n_blocks // config.n_layers for i in range(config.n_layers)]
        self.final_norm = (
            make_norm(config.norm, config.d_model, config.norm_eps, config.norm_bias) if config.final_norm else None
        )
        # A lens (lens/points.py) attached to this stack: it sees `embed`, every block's points as
        # `blocks.<depth>.<point>` (ALBERT's shared block once per depth) and `final_norm`. None
        # costs one attribute read per forward.
        self.tap = None
        # Recompute each block's activations in the backward pass instead of keeping them
        # (train.activation_checkpointing; see use_activation_checkpointing).
        self.activation_checkpointing = False

    def forward(self, input_ids: torch.Tensor, full_output: bool = False, **inputs):
        """(last hidden states, hidden states when asked, attentions when asked), or with
        `full_output` the whole StackOutput (XLNet's query stream and mems too); see `run`. Models
        call the stack through here, so hooks registered on it see every call."""
        out = self.run(input_ids, **inputs)
        return out if full_output else (out.last, out.hidden, out.attentions)

    def run(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        token_type_ids: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_mask: Optional[torch.Tensor] = None,
        perm_mask: Optional[torch.Tensor] = None,
        target_mapping: Optional[torch.Tensor] = None,
        mems: Optional[Sequence[torch.Tensor]] = None,
        use_mems: bool = False,
    ) -> StackOutput:
        """XLNet (position=relative_sinusoidal) also takes `perm_mask` (B, T, T; 1 = query i may
        not see token j), `target_mapping` (B, M, T; one-hot rows: which token each of M
        predictions is for), which runs the query stream and makes it the output, and `mems`, one
        (B, P, C) tensor per layer: the hidden states of earlier segments, prepended to the keys
        and values. `use_mems` returns this segment's for the next one."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = self.default_positions(input_ids, past)
        x = self.tok_embed(input_ids)  # (B, T, C)
        if self.positions is not None:
            x = x + self.positions(position_ids)
        if self.token_types is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_types(types)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self._drop(x)
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (B, T, embedding_dim) -> (B, T, C)
        tap = self.tap
        if tap is not None:
            x = tap("embed", x)
        rotary = self.rotary.tables(position_ids) if self.rotary is not None else None
        relative = query = query_mask = None
        if self.relative_positions:
            n_past = mems[0].shape[1] if mems else 0
            mask, query_mask = two_stream_masks(attention_mask, perm_mask, T, n_past,
                                                self.config.attention_type == "uni", input_ids.device)
            is_causal = False
            relative = self.relative_context(T, n_past, token_type_ids, x.dtype)
            if target_mapping is not None:  # the query stream starts from mask_emb at every prediction
                query = self._drop(self.mask_emb.weight.expand(B, target_mapping.shape[1], -1))
        else:
            mask, is_causal = attention_mask_for(attention_mask, T, past + T, self.causal, input_ids.device)
        if self.rel_bias is not None:
            mask, is_causal = add_position_bias(mask, is_causal, self.rel_bias(T, past + T, past)), False
        if memory is not None:
            memory_mask, _ = attention_mask_for(memory_mask, T, memory.shape[1], False, input_ids.device)

        hidden, attentions = ([x] if output_hidden_states else None), ([] if output_attentions else None)
        query_hidden = [query] if output_hidden_states and query is not None else None
        new_mems = [] if use_mems else None
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for layer, index in enumerate(self.layer_plan):
            block = self.blocks[index]
            if recompute:  # the random state is replayed, so dropout draws the same masks again
                block = partial(checkpoint, self.blocks[index], use_reentrant=False)
            past_states = mems[layer] if mems else None
            keys_from = None if past_states is None else torch.cat([past_states, x], dim=1)  # (B, P + T, C)
            if new_mems is not None:
                new_mems.append(self.keep_memory(x, past_states))
            if query is not None:  # before the content stream moves on: its keys are this layer's input
                query, _ = block(query, mask=query_mask, layer=layer, relative=relative,
                                 keys_from=x if keys_from is None else keys_from, target_mapping=target_mapping)
                if query_hidden is not None:
                    query_hidden.append(query)
            x, weights = block(
                x, mask=mask, is_causal=is_causal, rotary=rotary, cache=cache, need_weights=output_attentions,
                layer=layer, memory=memory, memory_mask=memory_mask, tap=tap.child(f"blocks.{layer}") if tap else None,
                relative=relative, keys_from=keys_from,
            )
            if hidden is not None:
                hidden.append(x)
            if attentions is not None:
                attentions.append(weights)
        if cache is not None:
            cache.advance(T)
        if self.final_norm is not None:
            x = self.final_norm(x)
            if tap is not None:
                x = tap("final_norm", x)
            if hidden is not None:
                hidden[-1] = x  # the last hidden state is the normed one, as in transformers
        as_tuple = lambda items: tuple(items) if items is not None else None  # noqa: E731
        return StackOutput(x if query is None else query, as_tuple(hidden), as_tuple(attentions),
                           as_tuple(query_hidden), as_tuple(new_mems))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.config.dropout, self.training) if self.config.dropout > 0 else x

    def relative_context(self, n_queries: int, n_past: int, token_type_ids: Optional[torch.Tensor], dtype) -> RelativeContext:
        """XLNet: the relative sinusoids of this forward's lengths and, when token types are given,
        which keys lie in another segment than each query (memory counts as segment 0)."""
        c = self.config
        sinusoids = relative_sinusoids(n_queries, n_past + n_queries, c.d_model, c.attention_type == "bi",
                                       c.relative_clamp, self.tok_embed.weight.device)
        different = None
        if token_type_ids is not None and c.relative_segments:
            keys = F.pad(token_type_ids, (n_past, 0))  # (B, S)
            different = token_type_ids[:, :, None] != keys[:, None, :]  # (B, T, S)
        return RelativeContext(self._drop(sinusoids.to(dtype)), different)

    def keep_memory(self, states: torch.Tensor, past: Optional[torch.Tensor]) -> torch.Tensor:
        """XLNet: the states a layer reads, after any older ones, cut to the last mem_len (0 = all);
        no gradient flows into a later segment through them."""
        kept = states if past is None else torch.cat([past, states], dim=1)
        return (kept[:, -self.config.mem_len:] if self.config.mem_len else kept).detach()

    def default_positions(self, input_ids: torch.Tensor, past: int) -> torch.Tensor:
        """0, 1, 2, ... after any cached tokens; with padding_positions (RoBERTa), real tokens count
        from pad_token_id + 1 and padding tokens sit at pad_token_id."""
        if not self.config.padding_positions:
            return torch.arange(past, past + input_ids.shape[1], device=input_ids.device)  # (T,)
        real = (input_ids != self.config.pad_token_id).long()
        return (real.cumsum(dim=1) + past) * real + self.config.pad_token_id  # (B, T)


def use_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn per-block activation checkpointing on or off in every stack of `model`."""
    for module in model.modules():
        if isinstance(module, TransformerStack):
            module.activation_checkpointing = enabled


def init_weights(module: nn.Module, config: ModelConfig) -> None:
    """GPT-2 initialisation: N(0, init_std) for matrices and embeddings, zero biases, unit norms;
    the projections that write into the residual stream are scaled down by 1/sqrt(2 n_layers) so
    the stream's variance does not grow with depth."""
    residual_std = config.init_std / math.sqrt(2 * config.n_layers) if config.scale_residual_init else config.init_std
    for name, param in module.named_parameters():
        if param.device.type == "meta":
            continue  # a tied head before it is tied (and normal_ on meta allocates a real matrix)
        role = init_role(name)
        if role == "bias":
            nn.init.zeros_(param)
        elif role == "norm":
            nn.init.ones_(param)
        elif role == "residual" and config.zero_init_output:
            nn.init.zeros_(param)  # each block starts as the identity; the gradient still reaches them
        elif role == "residual":
            nn.init.normal_(param, 0.0, residual_std)
        else:
            nn.init.normal_(param, 0.0, config.init_std)
