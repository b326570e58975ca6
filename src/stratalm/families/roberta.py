"""RoBERTa (Liu et al. 2019): BERT's encoder with byte-level BPE, positions counted from the padding
index + 1, one segment, and an MLM head without the next-sentence task."""
from __future__ import annotations

from typing import Any

from ..model_config import ModelConfig
from .bert import (
    FULL_SPECIAL_TOKENS, HEADED_CLASSES, NO_SHARING, SAME_WIDTH_EMBEDDINGS, _dense, classifier_rules, encoder_architecture,
    encoder_config_from_hf, encoder_config_to_hf, encoder_limits, encoder_rules, fixed_head_activations,
)
from .limits import only
from .spec import Family, Rule


def rules(config: ModelConfig) -> list[Rule]:
    out = encoder_rules(config, "roberta")
    if config.mlm_head:
        out += [*_dense("mlm_head.dense", "lm_head.dense"), *_dense("mlm_head.norm", "lm_head.layer_norm"),
                Rule("mlm_head.decoder.weight", ("lm_head.decoder.weight",)), Rule("mlm_head.bias", ("lm_head.bias",))]
    return out + classifier_rules(config)


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    values = encoder_config_from_hf(hf, weight_names, "roberta")
    values.update(classifier="dense", classifier_activation="tanh",
                  padding_positions=True, pad_token_id=hf.get("pad_token_id", 1), nsp_head=False,
                  mlm_head=any(n.startswith("lm_head.") for n in weight_names))
    return values


CLASSES = {**HEADED_CLASSES, "Model": {"pooler"}}  # no pretraining class: RoBERTa has no pair task

ROBERTA = Family("roberta", "roberta", encoder_architecture("Roberta", CLASSES), rules, config_from_hf,
                 encoder_config_to_hf, ignore=("lm_head.decoder.bias", ".position_ids"), hf_prefixes=("roberta.",),
                 base_architecture="RobertaModel", special_tokens=FULL_SPECIAL_TOKENS,
                 limits=(*encoder_limits("Roberta", CLASSES, "dense"), *fixed_head_activations("tanh", "gelu"),
                         only("padding_positions", True, has="positions counted from pad_token_id + 1"), NO_SHARING,
                         SAME_WIDTH_EMBEDDINGS))
