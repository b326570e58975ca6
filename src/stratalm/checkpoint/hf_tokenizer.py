"""The tokenizer and generation files of a Hugging Face export, so that `AutoTokenizer` and
`generate` work on it as they are:

- tokenizer.json: the model's tokenizer. One without a template of its own (every tokenizer
  stratalm trains) gets the template with which stratalm wraps the model's inputs, so
  `tokenizer(texts)` in transformers gives the ids stratalm feeds the model: [CLS] A [SEP] (B [SEP])
  for an encoder (tasks/common.py's encode_texts), A </s> for T5's encoder (tasks/seq2seq.py), the
  bare text for a decoder.
- tokenizer_config.json and special_tokens_map.json: the generic fast class, the context length
  and the special tokens, by the roles the family's own tokenizer has; and the chat template of a
  chat fine-tune (checkpoint/chat_template.py), so `apply_chat_template` renders as stratalm does. A family's class
  (BertTokenizer, ...) is not named: in transformers 5 it rebuilds its model from the vocabulary
  (a WordPiece for BERT) instead of reading tokenizer.json, and fails on any other tokenizer.
- generation_config.json (decoders and T5): the eos `generate` stops at, the pad token of a batch,
  T5's decoder start.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from ..model_config import ModelConfig
from ..tokenize import Tokenizer

TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GENERATION_CONFIG = "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"
GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def token_ids(tokenizer: Optional[Tokenizer], config: ModelConfig) -> dict[str, int]:
    """config.json's bos/eos/pad ids: the tokenizer's, except the pad id where the model computes
    with it (RoBERTa's positions, T5's shifted targets), which stays the model's own."""
    ids = {role: getattr(tokenizer, f"{role}_id") for role in ("bos", "eos", "pad")} if tokenizer is not None else {}
    if config.padding_positions or config.stack == "encoder-decoder":
        ids["pad"] = config.pad_token_id
    return {f"{role}_token_id": value for role, value in ids.items() if value is not None}


def generation_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """What `generate` reads: the ids of config.json; a model without a pad token pads with eos."""
    values = {key: hf_config[key] for key in GENERATION_KEYS if hf_config.get(key) is not None}
    if "pad_token_id" not in values and "eos_token_id" in values:
        values["pad_token_id"] = values["eos_token_id"]
    return values


def _template(tokenizer: Tokenizer, config: ModelConfig) -> Optional[processors.TemplateProcessing]:
    """stratalm's way of wrapping inputs, as a tokenizers template (None: the text as it is)."""
    if config.stack == "encoder":
        # As tasks/common.start_end_ids: [CLS]/[SEP], else <bos>/<eos>.
        start = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
        end = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    elif config.stack == "encoder-decoder":
        start, end = None, tokenizer.eos_id
    else:
        return None
    if start is None and end is None:
        return None
    token = tokenizer.backend.id_to_token
    first = ([token(start)] if start is not None else []) + ["$A:0"] + ([f"{token(end)}:0"] if end is not None else [])
    second = ["$B:1"] + ([f"{token(end)}:1"] if end is not None else [])
    specials = [(token(i), i) for i in dict.fromkeys(t for t in (start, end) if t is not None)]
    return processors.TemplateProcessing(single=first, pair=first + second, special_tokens=specials)


def exported_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> HFTokenizer:
    """A copy of the tokenizer for the export, with stratalm's template where it has none."""
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    template = _template(tokenizer, config) if backend.post_processor is None else None
    if template is not None:
        backend.post_processor = template
    return backend


def model_max_length(config: ModelConfig) -> int:
    # RoBERTa's positions start after pad_token_id, so pad_token_id + 1 rows never hold a token.
    return config.max_seq_len - (config.pad_token_id + 1 if config.padding_positions else 0)


def special_tokens(tokenizer: Tokenizer, roles: tuple[str, ...]) -> dict[str, str]:
    """`<role>_token` -> the token, for the roles the family's tokenizer has and this one too."""
    ids = {role: getattr(tokenizer, f"{role}_id") for role in roles}
    return {f"{role}_token": tokenizer.backend.id_to_token(i) for role, i in ids.items() if i is not None}


def tokenizer_config(tokenizer: Tokenizer, config: ModelConfig, roles: tuple[str, ...]) -> dict[str, Any]:
    # Only BERT-style encoders read token types: a decoder given them would add them in (GPT-2
    # embeds them with its token table) or refuse the argument (Llama).
    types = config.stack == "encoder" and config.type_vocab_size > 0
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length(config),
        "model_input_names": ["input_ids", *(["token_type_ids"] if types else []), "attention_mask"],
        "clean_up_tokenization_spaces": False,  # decode as stratalm does, spaces untouched
        **special_tokens(tokenizer, roles),
    }


def write_tokenizer_files(tokenizer: Tokenizer, config: ModelConfig, roles: tuple[str, ...], folder: str,
                          chat_template: Optional[str] = None) -> None:
    """tokenizer.json, tokenizer_config.json (with `chat_template` when the model has one) and
    special_tokens_map.json into `folder`."""
    exported_tokenizer(tokenizer, config).save(os.path.join(folder, "tokenizer.json"))
    values = tokenizer_config(tokenizer, config, roles)
    if chat_template is not None:
        values["chat_template"] = chat_template
    write_json(os.path.join(folder, TOKENIZER_CONFIG), values)
    write_json(os.path.join(folder, SPECIAL_TOKENS_MAP), special_tokens(tokenizer, roles))


def write_json(path: str, values: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(values, handle, indent=2)
