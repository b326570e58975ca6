"""ELECTRA pretraining (Clark et al. 2020): a small generator fills masked positions with samples
from its MLM distribution, and the discriminator tells, for every token, whether it was replaced.

The two are separate encoders that share their embedding tables (tokens, positions, token types and
the embedding norm), as in the paper; the generator is narrower, so it reads the shared tables
through its own projection when their width differs from its hidden size. One forward runs both,
so DistributedDataParallel sees a single module.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from ..model_config import ModelConfig
from .anatomy import EMBEDDING_TABLES
from .encoder import EncoderModel
from .output import ModelOutput, parameter_counts

# The generator keeps its own embed_proj: its hidden size differs from the shared tables' width.
SHARED_EMBEDDINGS = EMBEDDING_TABLES + ("embed_norm",)


def generator_config(discriminator: ModelConfig, ratio: float) -> ModelConfig:
    """The generator's shape: the discriminator's depth, `ratio` of its width, heads and MLP, with an
    MLM head instead of the replaced-token head. Its embeddings keep the discriminator's width."""
    heads = max(1, round(discriminator.n_heads * ratio))
    width = max(heads, round(discriminator.d_model * ratio / heads) * heads)
    return dataclasses.replace(
        discriminator, d_model=width, n_heads=heads, n_kv_heads=None, head_dim=None,
        d_ff=max(1, round(discriminator.d_ff * ratio)), embedding_dim=discriminator.embed_width,
        mlm_head=True, rtd_head=False, pooler=False, nsp_head=False, n_labels=0, tie_embeddings=True,
    )


class GeneratorDiscriminator(nn.Module):
    """`forward(input_ids, original_ids, selected, ...)`: the generator's MLM logits over the masked
    input (`logits`), the discriminator's logits over the input whose `selected` positions hold the
    generator's samples (`rtd_logits`), and which tokens really changed (`rtd_labels`)."""

    def __init__(self, discriminator: EncoderModel, generator: EncoderModel) -> None:
        super().__init__()
        self.discriminator, self.generator = discriminator, generator
        for name in SHARED_EMBEDDINGS:
            if getattr(discriminator.stack, name, None) is not None:
                setattr(generator.stack, name, getattr(discriminator.stack, name))
        generator.mlm_head.decoder.weight = discriminator.stack.tok_embed.weight
        self.config = discriminator.config

    @property
    def tokenizer(self):
        return self.discriminator.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self.discriminator.tokenizer = value
        self.generator.tokenizer = value

    def checkpoint_parts(self) -> dict[str, nn.Module]:
        """What a checkpoint folder holds: the discriminator at its root, the generator in generator/."""
        return {"": self.discriminator, "generator": self.generator}

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)

    def forward(self, input_ids: torch.Tensor, original_ids: torch.Tensor, selected: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, token_type_ids: Optional[torch.Tensor] = None) -> ModelOutput:
        generated = self.generator(input_ids, attention_mask, token_type_ids).logits  # (B, T, V)
        with torch.no_grad():  # no gradient flows through the sample (the paper's choice)
            probs = generated.detach()[selected].float().softmax(dim=-1)  # (N, V)
            sample = torch.multinomial(probs, 1).squeeze(-1)
        corrupted = original_ids.masked_scatter(selected, sample)
        replaced = (corrupted != original_ids).long()
        rtd_logits = self.discriminator(corrupted, attention_mask, token_type_ids).logits  # (B, T)
        return ModelOutput(logits=generated, rtd_logits=rtd_logits, rtd_labels=replaced)
