"""The logit lens (nostalgebraist 2020) through each family's own head: read the residual stream
after every layer with the model's final norm and output head, as if the model stopped there.
Decoders and T5's decoder use the LM head, BERT / RoBERTa / ALBERT / ELECTRA's generator the MLM
head, ELECTRA's discriminator its replaced-token head (two classes: original, replaced). At the
last layer the lens equals the model's own output exactly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.anatomy import heads as model_heads
from ..models.causal_lm import soft_cap
from .points import named_stacks
from .trace import TextInputs, trace

LENS_HEADS = ("lm_head", "mlm_head", "rtd_head")


@dataclass
class LensHead:
    """The stack the lens reads (its point prefix), and hidden (B, T, d) -> logits (B, T, V)."""

    prefix: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    classes: Optional[list[str]] = None  # names of the outputs when they are not the vocabulary


def lens_head(model: nn.Module) -> LensHead:
    """The head the logit lens reads through; a model without one is an error naming its heads."""
    stacks, config = named_stacks(model), model.config
    prefix = "decoder." if "decoder." in stacks else ""
    stack = stacks[prefix]
    norm = stack.final_norm if stack.final_norm is not None else (lambda h: h)
    present = model_heads(model)
    if config.stack != "encoder" and "lm_head" in present:
        scale = config.d_model ** -0.5 if getattr(config, "lm_head_scale", False) else None
        cap = getattr(config, "logit_softcap", 0.0)  # the model caps its logits: so does the lens, or the last layer differs
        return LensHead(prefix, lambda h: soft_cap(model.lm_head(norm(h) * scale if scale else norm(h)), cap))
    if "mlm_head" in present:
        return LensHead(prefix, lambda h: model.mlm_head(norm(h)))
    if "rtd_head" in present:
        def replaced(h: torch.Tensor) -> torch.Tensor:  # one logit of "replaced" -> two classes
            logit = model.rtd_head(norm(h))
            return torch.stack([torch.zeros_like(logit), logit], dim=-1)

        return LensHead(prefix, replaced, ["original", "replaced"])
    raise ConfigError(f"the logit lens reads through an LM, MLM or replaced-token head; this model has "
                      f"{', '.join(present) or 'no head'}.")


def lens_points(model: nn.Module, head: LensHead) -> list[str]:
    """The stream read at each depth: the embedding output, then each block's output."""
    stack = named_stacks(model)[head.prefix]
    return [f"{head.prefix}embed"] + [f"{head.prefix}blocks.{i}.resid_post" for i in range(len(stack.layer_plan))]


@torch.no_grad()
def logit_lens(model: nn.Module, inputs: TextInputs, k: int = 5,
               translators: Optional[list[nn.Module]] = None) -> dict[str, torch.Tensor]:
    """Per depth (L+1) and position of the first example: `logits` (L+1, T, V), `top_ids` and
    `top_probs` (L+1, T, k), the final prediction's `final_rank` (0 = top) and `final_prob`, and
    `kl` (L+1, T), KL(final || depth) in nats. `translators` (a tuned lens) map each depth's stream
    before the head."""
    head = lens_head(model)
    points = lens_points(model, head)
    captured = trace(model, inputs, points)
    streams = [captured[p] for p in points]
    if translators is not None:
        streams = [translate(s) for translate, s in zip(translators, streams)]
    logits = torch.stack([head.apply(s)[0].float() for s in streams])  # (L+1, T, V)
    log_probs = F.log_softmax(logits, dim=-1)
    final = log_probs[-1]
    predicted = final.argmax(-1)  # (T,)
    chosen = log_probs.gather(-1, predicted.expand(len(streams), -1)[..., None])[..., 0]  # (L+1, T)
    top_probs, top_ids = log_probs.exp().topk(min(k, logits.shape[-1]), dim=-1)
    return {
        "logits": logits, "top_ids": top_ids, "top_probs": top_probs,
        "final_rank": (log_probs > chosen[..., None]).sum(-1), "final_prob": chosen.exp(),
        "kl": (final.exp() * (final - log_probs)).sum(-1).clamp_min(0),
        "model_logits": _model_logits(captured.outputs, head),
    }


def _model_logits(outputs, head: LensHead) -> torch.Tensor:
    """The model's own output in the lens's form (for the exactness check)."""
    logits = outputs.logits[0]
    if head.classes is not None and logits.dim() == 1:
        logits = torch.stack([torch.zeros_like(logits), logits], dim=-1)
    return logits.float()


def token_names(model: nn.Module, head: LensHead, ids: torch.Tensor) -> list:
    """Nested lists of the names of `ids` (tokens of the vocabulary, or the head's classes)."""
    if ids.dim() == 0:
        i = int(ids)
        if head.classes is not None:
            return head.classes[i]
        return model.tokenizer.backend.id_to_token(i) or f"<{i}>"
    return [token_names(model, head, row) for row in ids]
