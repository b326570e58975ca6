"""Hugging Face folders that carry a family's original vocabulary instead of tokenizer.json,
converted on load into the same `tokenizers` pipeline `transformers` builds from them:

- vocab.txt (BERT, ELECTRA): WordPiece, cased or not as tokenizer_config.json's do_lower_case says;
- spiece.model (T5, ALBERT, XLNet): the SentencePiece Unigram model's pieces and scores, its
  precompiled normaliser, and the family's template, special tokens and clean-ups. Reading the
  model file needs the `sentencepiece` extra (the sentencepiece package's protobuf schema).

The family comes from config.json's model_type, else tokenizer_config.json's tokenizer_class.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers

from ..errors import CheckpointError, ConfigError
from .layouts import FAMILIES_OF, LAYOUTS, Layout
from .subword import finish, unigram_pipeline, wordpiece_pipeline

VOCAB_TXT, SPIECE = "vocab.txt", "spiece.model"
VOCABULARY_FILES = (VOCAB_TXT, SPIECE)  # read when a folder has no tokenizer.json
SENTENCEPIECE_EXTRA = "pip install 'stratalm[sentencepiece]'"
UNIGRAM_MODEL = 1  # SentencePiece's TrainerSpec.model_type of a Unigram model (2 is BPE)


def _json(folder: str, name: str) -> dict[str, Any]:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not valid JSON ({exc}); fix or remove it.") from None


def tokenizer_settings(folder: str) -> dict[str, Any]:
    """special_tokens_map.json with tokenizer_config.json over it."""
    return {**_json(folder, "special_tokens_map.json"), **_json(folder, "tokenizer_config.json")}


def family_of(folder: str, kind: str) -> Optional[str]:
    """The family named by config.json's model_type or tokenizer_config.json's tokenizer_class."""
    model_type = str(_json(folder, "config.json").get("model_type", "")).lower()
    tokenizer_class = str(tokenizer_settings(folder).get("tokenizer_class", "")).lower()
    for family in FAMILIES_OF[kind]:
        if model_type == family or tokenizer_class.startswith(family):
            return family
    return None


def role_tokens(settings: dict[str, Any], layout: Layout) -> dict[str, str]:
    """role -> token: the folder's own names (`cls_token`: "[CLS]" or {"content": ...}), else the family's."""
    roles = {}
    for role, default in layout.roles.items():
        value = settings.get(f"{role}_token", default)
        roles[role] = str(value.get("content", default) if isinstance(value, dict) else value)
    return roles


def from_vocab_txt(folder: str) -> HFTokenizer:
    settings = tokenizer_settings(folder)
    layout = LAYOUTS["bert"]
    roles = role_tokens(settings, layout)
    model = models.WordPiece.from_file(os.path.join(folder, VOCAB_TXT), unk_token=roles["unk"])
    backend = wordpiece_pipeline(model, lowercase=bool(settings.get("do_lower_case", True)),
                                 strip_accents=settings.get("strip_accents"),
                                 chinese_chars=bool(settings.get("tokenize_chinese_chars", True)))
    return finish(backend, layout, roles)


def read_sentencepiece(path: str):
    """The ModelProto of a SentencePiece model file."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise ConfigError(f"reading {os.path.basename(path)} needs the sentencepiece extra ({exc.name} is missing): "
                          f"{SENTENCEPIECE_EXTRA}.") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        with open(path, "rb") as handle:
            proto.ParseFromString(handle.read())
    except Exception as exc:  # protobuf's DecodeError
        raise CheckpointError(f"'{path}' is not a SentencePiece model ({str(exc)[:100]}).") from None
    if not proto.pieces:
        raise CheckpointError(f"'{path}' is not a SentencePiece model (it holds no pieces).")
    return proto


def from_spiece(folder: str) -> HFTokenizer:
    path = os.path.join(folder, SPIECE)
    family = family_of(folder, "unigram")
    if family is None:
        raise CheckpointError(f"'{folder}' does not say whose spiece.model it holds; give it a config.json with "
                              f"model_type {', '.join(FAMILIES_OF['unigram'])} (or tokenizer_config.json's tokenizer_class).")
    proto = read_sentencepiece(path)
    if proto.trainer_spec.model_type != UNIGRAM_MODEL:
        raise CheckpointError(f"'{path}' is a SentencePiece BPE model; {family} uses a Unigram one, which is what "
                              "can be converted.")
    settings, layout = tokenizer_settings(folder), LAYOUTS[family]
    model = models.Unigram([(p.piece, p.score) for p in proto.pieces], proto.trainer_spec.unk_id,
                           proto.trainer_spec.byte_fallback)
    charsmap = proto.normalizer_spec.precompiled_charsmap
    base = normalizers.Precompiled(charsmap) if charsmap else normalizers.Sequence([])
    strip_accents = not settings.get("keep_accents", False) if layout.keep_accents_option else True
    backend = unigram_pipeline(model, layout, bool(settings.get("do_lower_case", layout.lowercase)), base, strip_accents)
    if family == "t5":  # the sentinels transformers adds after the pieces, the last first (<extra_id_0> last)
        sentinels = [f"<extra_id_{i}>" for i in reversed(range(int(settings.get("extra_ids", 100))))]
        backend.add_special_tokens([t for t in sentinels if backend.token_to_id(t) is None])
    return finish(backend, layout, role_tokens(settings, layout))


def convert_folder(folder: str) -> Optional[HFTokenizer]:
    """The folder's vocab.txt or spiece.model as a tokenizer; None when it has neither."""
    if os.path.isfile(os.path.join(folder, VOCAB_TXT)):
        return from_vocab_txt(folder)
    if os.path.isfile(os.path.join(folder, SPIECE)):
        return from_spiece(folder)
    return None
