"""Fill-mask: a masked-LM encoder's most likely tokens, with their probabilities, for each mask of a
text — BERT's pretraining task used as a tool (`stratalm fill-mask`, `stratalm.fill_mask`).

The text writes the model's own mask token: [MASK] for BERT and ALBERT, <mask> for RoBERTa and
tokenizers trained by stratalm. The other of those two spellings is read as the model's mask too,
so an example written for one family works with another. The text is wrapped as in pretraining and
fine-tuning ([CLS] text [SEP], or the tokenizer's own template), and every mask is predicted from
the same forward pass, each on its own (as `transformers`' fill-mask pipeline does).
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, InputTooLongError, StratalmError
from ..tasks.common import encode_texts

MASK_SPELLINGS = ("[MASK]", "<mask>")


def _check_model(model: torch.nn.Module) -> None:
    config = model.config
    if config.stack != "encoder":
        raise StratalmError(f"fill-mask needs an encoder with a masked-LM head (bert, roberta, albert, an electra "
                            f"generator); this is a {config.family} {config.stack} model.")
    if getattr(model, "mlm_head", None) is None:
        raise StratalmError(f"this {config.family} encoder has no masked-LM head (a sentence encoder or a fine-tuned "
                            f"task model), so it cannot fill in masks; use a model pretrained with --objective mlm.")


def mask_token_of(model: torch.nn.Module) -> str:
    """The mask token the model's tokenizer uses ([MASK], <mask>, ...)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise StratalmError("this model has no tokenizer; load it from a checkpoint folder that holds tokenizer.json.")
    if tokenizer.mask_id is None:
        raise StratalmError("this model's tokenizer has no mask token, so there is nothing to fill in.")
    return tokenizer.backend.id_to_token(tokenizer.mask_id)


@torch.inference_mode()
def fill_mask(model: torch.nn.Module, text: str, top_k: int = 5) -> list[list[dict[str, Any]]]:
    """For each mask in `text`, in order, the `top_k` most likely tokens as dicts
    {"token": text of the token, "id": token id, "probability": p}, most likely first.
    The text must hold at least one mask token (see the module notes for which)."""
    _check_model(model)
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1; got {top_k}.")
    mask = mask_token_of(model)
    for spelling in MASK_SPELLINGS:
        text = text.replace(spelling, mask)
    if mask not in text:
        raise StratalmError(f"the text has no mask token; write {mask} where a token should be filled in.")
    tokenizer, config = model.tokenizer, model.config
    (ids, types), = encode_texts(tokenizer, [text], None, max_length=1 << 30)
    positions = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    if not positions:
        raise StratalmError(f"the tokenizer splits {mask} into pieces instead of reading it as its mask token "
                            f"(its tokenizer.json does not mark it as a special token).")
    if len(ids) > config.max_seq_len:
        raise InputTooLongError(f"the text is {len(ids)} tokens but the model's context is {config.max_seq_len}; "
                                f"shorten the text.")
    model.eval()
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    hidden = model(input_ids, attention_mask=torch.ones_like(input_ids),
                   token_type_ids=torch.tensor([types], device=device)).last_hidden_state
    # The head is called directly: a model with other heads too returns their logits first.
    probs = model.mlm_head(hidden[0, positions]).float().softmax(dim=-1)  # (masks, V)
    best = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [[{"token": tokenizer.decode([token], skip_special_tokens=False), "id": token, "probability": p}
             for token, p in zip(tokens, values)]
            for tokens, values in zip(best.indices.tolist(), best.values.tolist())]
