"""Replaced-token detection (ELECTRA, Clark et al. 2020).

15% of the tokens are selected as for MLM (ELECTRA's code puts [MASK] on 85% of them and keeps the
rest; no random tokens, since the generator supplies the replacements). A small generator predicts
the selected tokens (its MLM loss), each selected position is filled with a sample of the
generator's distribution, and the discriminator classifies every non-padding token as original or
replaced; a sample that happens to equal the original counts as original. Loss = generator MLM
loss + 50 x discriminator loss. The generator is `ratio` of the discriminator's width and shares
its embeddings (models/replaced_token.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model_config import ModelConfig
from ..models import EncoderModel, ModelOutput
from ..models.replaced_token import GeneratorDiscriminator, generator_config
from ..tokenize import Tokenizer
from .base import Objective
from .mlm import Masker, MaskingConfig
from .settings import ReplacedTokenConfig


class ReplacedTokenObjective(Objective):
    name = "rtd"
    extra_tokens = -2  # [CLS] window [SEP]
    heads = ("mlm_head", "rtd_head")
    mixable = False

    def __init__(self, tokenizer: Tokenizer, options: Optional[ReplacedTokenConfig] = None) -> None:
        self.options = options or ReplacedTokenConfig()
        if not 0 < self.options.generator_ratio <= 1:
            raise ConfigError("rtd.generator_ratio must be in (0, 1].")
        masking = MaskingConfig(rate=self.options.rate, mask_fraction=self.options.mask_fraction, random_fraction=0.0)
        self.masker = Masker(tokenizer, masking)
        self.cls_id, self.sep_id = tokenizer.cls_id, tokenizer.sep_id

    def check(self, config: ModelConfig, data) -> None:
        if config.stack != "encoder" or not config.rtd_head:
            raise ConfigError(f"the rtd objective trains an ELECTRA discriminator: an encoder with a replaced-token head "
                              f"(the electra presets); '{config.family}' ({config.stack}) has none.")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if isinstance(model, GeneratorDiscriminator):
            return model
        config = generator_config(model.config, self.options.generator_ratio)
        generator = EncoderModel(config)
        generator.tokenizer = model.tokenizer
        return GeneratorDiscriminator(model, generator)

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        B = windows.shape[0]
        ids = torch.cat([torch.full((B, 1), self.cls_id), windows, torch.full((B, 1), self.sep_id)], dim=1)
        masked, labels = self.masker(ids, rng)
        selected = labels != -100
        return {"input_ids": masked, "original_ids": ids, "selected": selected}, {"labels": labels}

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        labels = targets["labels"]
        chosen = labels != -100
        generated = output.logits[chosen].float()  # (N, V)
        mlm_loss = F.cross_entropy(generated, labels[chosen])
        replaced = output.rtd_labels.float()  # (B, T); every token is real text here (no padding)
        disc_logits = output.rtd_logits.float()
        disc_loss = F.binary_cross_entropy_with_logits(disc_logits, replaced)
        loss = mlm_loss + self.options.discriminator_weight * disc_loss
        guessed = disc_logits > 0
        truly = replaced.bool()
        metrics = {
            "loss": loss.detach(), "mlm_loss": mlm_loss.detach(), "rtd_loss": disc_loss.detach(),
            "masked_accuracy": (generated.argmax(-1) == labels[chosen]).float().mean(),
            "rtd_accuracy": (guessed == truly).float().mean(),
            "rtd_original_share": (~truly).float().mean(),  # the all-original baseline's accuracy
            "rtd_recall": (guessed & truly).sum() / truly.sum().clamp(min=1),
        }
        return loss, {k: v.detach() for k, v in metrics.items()}
