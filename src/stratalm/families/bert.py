"""BERT (Devlin et al. 2019): post-norm encoder, learned positions + segment embeddings with a
norm, gelu, and the pretraining heads (MLM, pooler, next-sentence)."""
from __future__ import annotations

from typing import Any, Optional

from ..model_config import ModelConfig
from .spec import Family, Rule, pick

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu"}


def _dense(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}.weight", (f"{theirs}.weight",)), Rule(f"{ours}.bias", (f"{theirs}.bias",))]


def encoder_rules(config: ModelConfig, base: str) -> list[Rule]:
    """The embeddings and layers every BERT-style encoder shares; `base` is the model's prefix."""
    layer = f"{base}.encoder.layer.{{i}}."
    three = lambda c: [c.d_model] * 3  # noqa: E731  query, key, value
    rules = [
        Rule("stack.tok_embed.weight", (f"{base}.embeddings.word_embeddings.weight",)),
        Rule("stack.positions.weight", (f"{base}.embeddings.position_embeddings.weight",)),
        *_dense("stack.embed_norm", f"{base}.embeddings.LayerNorm"),
        Rule("stack.blocks.{i}.attn.qkv.weight", tuple(layer + f"attention.self.{n}.weight" for n in ("query", "key", "value")), split=three),
        Rule("stack.blocks.{i}.attn.qkv.bias", tuple(layer + f"attention.self.{n}.bias" for n in ("query", "key", "value")), split=three),
        *_dense("stack.blocks.{i}.attn.out", layer + "attention.output.dense"),
        *_dense("stack.blocks.{i}.attn_norm", layer + "attention.output.LayerNorm"),
        *_dense("stack.blocks.{i}.ff.up", layer + "intermediate.dense"),
        *_dense("stack.blocks.{i}.ff.down", layer + "output.dense"),
        *_dense("stack.blocks.{i}.ff_norm", layer + "output.LayerNorm"),
    ]
    if config.type_vocab_size:
        rules.append(Rule("stack.token_types.weight", (f"{base}.embeddings.token_type_embeddings.weight",)))
    if config.pooler:
        rules += _dense("pooler.dense", f"{base}.pooler.dense")
    return rules


def rules(config: ModelConfig) -> list[Rule]:
    out = encoder_rules(config, "bert")
    if config.mlm_head:
        out += [*_dense("mlm_head.dense", "cls.predictions.transform.dense"),
                *_dense("mlm_head.norm", "cls.predictions.transform.LayerNorm"),
                Rule("mlm_head.decoder.weight", ("cls.predictions.decoder.weight",)),
                Rule("mlm_head.bias", ("cls.predictions.bias",))]
    if config.nsp_head:
        out += _dense("nsp_head", "cls.seq_relationship")
    return out + classifier_rules(config)


def classifier_rules(config: ModelConfig) -> list[Rule]:
    """HF names of a sequence-classification head: `classifier` on the pooler, or (dense
    classifiers) `classifier.dense` + `classifier.out_proj`; a token-classification head is
    `classifier` in every BERT-style family."""
    if config.n_token_labels:
        return _dense("token_classifier.out", "classifier")
    if config.qa_head:  # ...ForQuestionAnswering: `qa_outputs` in every BERT-style family
        return _dense("qa_head.out", "qa_outputs")
    if not config.n_labels:
        return []
    if config.classifier == "pooled":
        return _dense("classifier.out", "classifier")
    return [*_dense("classifier.dense", "classifier.dense"), *_dense("classifier.out", "classifier.out_proj")]


def n_labels_from_hf(hf: dict[str, Any], weight_names: set[str]) -> int:
    if not any(n.startswith("classifier.") for n in weight_names):
        return 0
    return len(hf.get("id2label") or {}) or hf.get("num_labels", 2)


def label_names_from_hf(hf: dict[str, Any], n_labels: int) -> Optional[list[str]]:
    """The label names of id2label, unless they are transformers' placeholders LABEL_0, LABEL_1, ..."""
    names = [str((hf.get("id2label") or {}).get(str(i), f"LABEL_{i}")) for i in range(n_labels)]
    return None if names == [f"LABEL_{i}" for i in range(n_labels)] else names


def label_config_to_hf(c: ModelConfig) -> dict[str, Any]:
    count = c.n_labels or c.n_token_labels
    if not count:
        return {}
    names = list(c.label_names or [f"LABEL_{i}" for i in range(count)])
    return {"id2label": {str(i): name for i, name in enumerate(names)}, "label2id": {name: i for i, name in enumerate(names)}}


def encoder_config_from_hf(hf: dict[str, Any], weight_names: set[str], family: str) -> dict[str, Any]:
    labels = n_labels_from_hf(hf, weight_names)
    per_token = any(str(a).endswith("ForTokenClassification") for a in hf.get("architectures") or [])
    return dict(
        family=family, stack="encoder", vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 512),
        n_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], activation=HF_ACTIVATIONS[hf.get("hidden_act", "gelu")],
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12), norm_position="post", final_norm=False,
        position="learned", type_vocab_size=hf.get("type_vocab_size", 2), embedding_norm=True,
        pad_token_id=pick(hf, "pad_token_id", default=0), dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), tie_embeddings=hf.get("tie_word_embeddings", True),
        pooler=any(".pooler.dense." in n or n.startswith("pooler.dense.") for n in weight_names),
        mlm_head=any("predictions." in n for n in weight_names),
        nsp_head=any("seq_relationship" in n for n in weight_names),
        qa_head="qa_outputs.weight" in weight_names,
        n_labels=0 if per_token else labels, n_token_labels=labels if per_token else 0,
        label_names=label_names_from_hf(hf, labels) if labels else None, classifier="pooled", scale_residual_init=False,
    )


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    return encoder_config_from_hf(hf, weight_names, "bert")


def encoder_config_to_hf(c: ModelConfig) -> dict[str, Any]:
    activation = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}[c.activation]
    return dict(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        intermediate_size=c.d_ff, hidden_act=activation, max_position_embeddings=c.max_seq_len,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.norm_eps, pad_token_id=c.pad_token_id,
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attention_dropout,
        tie_word_embeddings=c.tie_embeddings,
        **label_config_to_hf(c),
    )


def encoder_architecture(prefix: str):
    """The transformers class of a BERT-style encoder, named by its heads: a classifier, the
    pretraining heads (MLM + pair head, or ELECTRA's replaced-token head), an MLM head, or none."""

    def architecture(c: ModelConfig) -> str:
        if c.n_labels:
            return f"{prefix}ForSequenceClassification"
        if c.n_token_labels:
            return f"{prefix}ForTokenClassification"
        if c.qa_head:
            return f"{prefix}ForQuestionAnswering"
        if (c.mlm_head and c.nsp_head) or c.rtd_head:
            return f"{prefix}ForPreTraining"
        return f"{prefix}ForMaskedLM" if c.mlm_head else f"{prefix}Model"

    return architecture


BERT = Family("bert", "bert", encoder_architecture("Bert"), rules, config_from_hf, encoder_config_to_hf,
              ignore=("cls.predictions.decoder.bias", ".position_ids"), hf_prefixes=("bert.",),
              base_architecture="BertModel")
