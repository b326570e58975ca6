"""Causal language modelling: predict token t+1 from tokens up to t (GPT, Radford et al. 2018/2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model_config import ModelConfig
from ..models import ModelOutput
from .base import Objective


class CausalLMObjective(Objective):
    name = "clm"
    reports_perplexity = True
    extra_tokens = 1
    overlap = 1

    def __init__(self, tokenizer=None, options=None) -> None:
        pass

    def check(self, config: ModelConfig, data) -> None:
        if config.stack != "decoder":
            raise ConfigError(
                f"the clm objective trains decoder-only models; '{config.family}' is an {config.stack} model "
                f"(its objectives, such as mlm or span, come with the objectives release)."
            )

    def prepare(self, windows: torch.Tensor, rng: torch.Generator, documents=None):
        return {"input_ids": windows[:, :-1]}, {"labels": windows[:, 1:]}

    def loss(self, output: ModelOutput, targets: dict[str, torch.Tensor]):
        logits = output.logits  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets["labels"].reshape(-1), ignore_index=-100)
        return loss, {"loss": loss.detach()}
