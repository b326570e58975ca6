"""ALBERT (Lan et al. 2020): factorised embeddings projected up to the hidden size, one set of
layer weights shared across depth (in `num_hidden_groups` groups), and a sentence-order head."""
from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from ..model_config import ModelConfig
from .bert import (
    BERT_CLASSES, FULL_SPECIAL_TOKENS, _dense, classifier_rules, encoder_architecture, encoder_config_from_hf, encoder_config_to_hf,
    encoder_limits,
)
from .limits import need, only
from .spec import Family, Rule


def rules(config: ModelConfig) -> list[Rule]:
    layer = "albert.encoder.albert_layer_groups.{i}.albert_layers.0."  # {i}: the shared block (group)
    three = lambda c: [c.d_model] * 3  # noqa: E731
    out = [
        Rule("stack.tok_embed.weight", ("albert.embeddings.word_embeddings.weight",)),
        Rule("stack.positions.weight", ("albert.embeddings.position_embeddings.weight",)),
        Rule("stack.token_types.weight", ("albert.embeddings.token_type_embeddings.weight",)),
        *_dense("stack.embed_norm", "albert.embeddings.LayerNorm"),
        *_dense("stack.embed_proj", "albert.encoder.embedding_hidden_mapping_in"),
        Rule("stack.blocks.{i}.attn.qkv.weight", tuple(layer + f"attention.{n}.weight" for n in ("query", "key", "value")), split=three),
        Rule("stack.blocks.{i}.attn.qkv.bias", tuple(layer + f"attention.{n}.bias" for n in ("query", "key", "value")), split=three),
        *_dense("stack.blocks.{i}.attn.out", layer + "attention.dense"),
        *_dense("stack.blocks.{i}.attn_norm", layer + "attention.LayerNorm"),
        *_dense("stack.blocks.{i}.ff.up", layer + "ffn"),
        *_dense("stack.blocks.{i}.ff.down", layer + "ffn_output"),
        *_dense("stack.blocks.{i}.ff_norm", layer + "full_layer_layer_norm"),
    ]
    if config.pooler:
        out += _dense("pooler.dense", "albert.pooler")
    if config.mlm_head:
        out += [*_dense("mlm_head.dense", "predictions.dense"), *_dense("mlm_head.norm", "predictions.LayerNorm"),
                Rule("mlm_head.decoder.weight", ("predictions.decoder.weight",)), Rule("mlm_head.bias", ("predictions.bias",))]
    if config.nsp_head:
        out += _dense("nsp_head", "sop_classifier.classifier")
    return out + classifier_rules(config)


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    if hf.get("inner_group_num", 1) != 1:
        raise CheckpointError("ALBERT checkpoints with inner_group_num > 1 are not supported yet.")
    values = encoder_config_from_hf({"hidden_act": "gelu_new", **hf}, weight_names, "albert")
    values.update(
        embedding_dim=hf.get("embedding_size", 128), share_layers=hf.get("num_hidden_groups", 1),
        pooler=any(n.endswith("albert.pooler.weight") or n == "pooler.weight" for n in weight_names),
        mlm_head=any(n.startswith("predictions.") for n in weight_names),
        nsp_head=any(n.startswith("sop_classifier.") for n in weight_names),
    )
    return values


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return {**encoder_config_to_hf(c), "embedding_size": c.embed_width, "num_hidden_groups": c.n_blocks,
            "inner_group_num": 1}


# BERT's classes, with the sentence-order head in ForPreTraining and no next-sentence class.
CLASSES = {k: v for k, v in BERT_CLASSES.items() if k != "ForNextSentencePrediction"}

ALBERT = Family("albert", "albert", encoder_architecture("Albert", CLASSES), rules, config_from_hf, config_to_hf,
                ignore=(".position_ids", "predictions.decoder.bias"), hf_prefixes=("albert.",),
                base_architecture="AlbertModel", special_tokens=FULL_SPECIAL_TOKENS,
                limits=(*encoder_limits("Albert", CLASSES, "pooled"), only("padding_positions", False),
                        need("embedding_dim", lambda v, c: c.embed_width != c.d_model,
                             "a projection from embedding_size to hidden_size, so embeddings narrower than d_model")))
