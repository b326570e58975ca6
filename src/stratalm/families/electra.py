"""ELECTRA (Clark et al. 2020): a BERT-style encoder whose embeddings may be narrower than the
hidden size (then projected), with a replaced-token-detection head (the discriminator) or an MLM
head (the generator)."""
from __future__ import annotations

from typing import Any

from ..model_config import ModelConfig
from .bert import (
    BERT_SPECIAL_TOKENS, HEADED_CLASSES, NO_SHARING, _dense, classifier_rules, encoder_architecture, encoder_config_from_hf,
    encoder_config_to_hf, encoder_limits, encoder_rules, fixed_head_activations,
)
from .limits import only
from .spec import Family, Rule


def rules(config: ModelConfig) -> list[Rule]:
    out = encoder_rules(config, "electra")
    if config.embedding_dim:
        out += _dense("stack.embed_proj", "electra.embeddings_project")
    if config.rtd_head:
        out += [*_dense("rtd_head.dense", "discriminator_predictions.dense"),
                *_dense("rtd_head.out", "discriminator_predictions.dense_prediction")]
    if config.mlm_head:
        out += [*_dense("mlm_head.dense", "generator_predictions.dense"),
                *_dense("mlm_head.norm", "generator_predictions.LayerNorm"),
                Rule("mlm_head.decoder.weight", ("generator_lm_head.weight",)), Rule("mlm_head.bias", ("generator_lm_head.bias",))]
    return out + classifier_rules(config)


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    values = encoder_config_from_hf(hf, weight_names, "electra")
    embedding = hf.get("embedding_size", hf["hidden_size"])
    values.update(classifier="dense", classifier_activation="gelu",
                  
        embedding_dim=embedding if embedding != hf["hidden_size"] else None, nsp_head=False, pooler=False,
        rtd_head=any(n.startswith("discriminator_predictions.") for n in weight_names),
        mlm_head=any(n.startswith("generator_") for n in weight_names),
    )
    return values


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return {**encoder_config_to_hf(c), "embedding_size": c.embed_width}


# The discriminator is ElectraForPreTraining, a generator ElectraForMaskedLM; ELECTRA has no pooler.
CLASSES = {**HEADED_CLASSES, "ForPreTraining": {"rtd_head"}, "Model": set()}

ELECTRA = Family("electra", "electra", encoder_architecture("Electra", CLASSES), rules, config_from_hf, config_to_hf,
                 ignore=(".position_ids",), hf_prefixes=("electra.",), base_architecture="ElectraModel",
                 special_tokens=BERT_SPECIAL_TOKENS,
                 limits=(*encoder_limits("Electra", CLASSES, "dense"), *fixed_head_activations("gelu", "gelu"),
                         only("padding_positions", False), NO_SHARING))
