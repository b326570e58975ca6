"""BERT (Devlin et al. 2019): post-norm encoder, learned positions + segment embeddings with a
norm, gelu, and the pretraining heads (MLM, pooler, next-sentence)."""
from __future__ import annotations

from typing import Any, Optional

from ..model_config import ModelConfig
from .limits import BIASES, LAYERNORM, PLAIN_ATTENTION, Check, need, only
from .spec import ACTIVATION_TO_HF, Family, Rule, activation_from_hf, pick


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
        d_ff=hf["intermediate_size"], activation=activation_from_hf(hf.get("hidden_act", "gelu")),
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
    return dict(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        intermediate_size=c.d_ff, hidden_act=ACTIVATION_TO_HF[c.activation], max_position_embeddings=c.max_seq_len,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.norm_eps, pad_token_id=c.pad_token_id,
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attention_dropout,
        tie_word_embeddings=c.tie_embeddings,
        **label_config_to_hf(c),
    )


def model_heads(c: ModelConfig) -> frozenset[str]:
    """The heads an encoder config has, by the field that asks for each."""
    present = {"mlm_head": c.mlm_head, "pooler": c.pooler, "nsp_head": c.nsp_head, "rtd_head": c.rtd_head,
               "n_labels": c.n_labels, "n_token_labels": c.n_token_labels, "qa_head": c.qa_head}
    return frozenset(name for name, on in present.items() if on)


# The heads each transformers class of a BERT-style family holds (class name after the family's
# prefix), most specific first. An export goes to the class that holds exactly the model's heads.
HEADED_CLASSES = {"ForSequenceClassification": {"n_labels"}, "ForTokenClassification": {"n_token_labels"},
                  "ForQuestionAnswering": {"qa_head"}, "ForMaskedLM": {"mlm_head"}}
BERT_CLASSES = {**HEADED_CLASSES, "ForSequenceClassification": {"n_labels", "pooler"},
                "ForPreTraining": {"mlm_head", "nsp_head", "pooler"}, "ForNextSentencePrediction": {"nsp_head", "pooler"},
                "Model": {"pooler"}}


def _holds(suffix: str, held: set[str], heads: frozenset[str]) -> bool:
    # The headless class always builds a pooler: a model without one still exports its hidden
    # states exactly (transformers draws that pooler at random and says so).
    return held == heads or (suffix == "Model" and held - {"pooler"} == heads)


def encoder_architecture(prefix: str, classes: dict[str, set[str]]):
    """The transformers class of a BERT-style encoder: the one that holds exactly its heads
    (else the first that holds them all, which the export then refuses, see `heads_held`)."""

    def architecture(c: ModelConfig) -> str:
        heads = model_heads(c)
        exact = next((s for s, held in classes.items() if _holds(s, held, heads)), None)
        covering = next((s for s, held in classes.items() if heads <= held), "Model")
        return prefix + (exact or covering)

    return architecture


def heads_held(prefix: str, classes: dict[str, set[str]]) -> Check:
    """A model whose heads no class holds exactly would lose some (unexpected weights) or load
    others at random (missing weights)."""

    def check(c: ModelConfig) -> Optional[str]:
        heads = model_heads(c)
        if any(_holds(s, held, heads) for s, held in classes.items()):
            return None
        offered = "; ".join(f"{prefix}{s}: {' + '.join(sorted(held)) or 'none'}" for s, held in classes.items())
        return f"the heads {' + '.join(sorted(heads))} together (the {prefix} classes hold {offered})"

    return check


def encoder_limits(prefix: str, classes: dict[str, set[str]], classifier: str) -> tuple[Check, ...]:
    """What every BERT-style class requires: post-norm LayerNorm with biases, learned positions,
    segment embeddings and an embedding norm, a plain MLP; the heads of one class; and the
    family's kind of sequence classifier."""
    return (
        only("stack", "encoder"), only("position", "learned"), only("norm_position", "post"),
        only("final_norm", False, has="no final norm"), only("embedding_norm", True, has="an embedding norm"),
        only("gated", False, has="a plain MLP"), *LAYERNORM, *BIASES, *PLAIN_ATTENTION,
        need("type_vocab_size", lambda v, c: v >= 1, "a token-type embedding"),
        only("classifier", classifier, when=lambda c: bool(c.n_labels)), heads_held(prefix, classes),
        only("mlm_transform", True, has="an MLM head with dense + activation + norm", when=lambda c: c.mlm_head),
    )


def fixed_head_activations(classifier: str, mlm: str) -> tuple[Check, ...]:
    """RoBERTa and ELECTRA fix the activations of their classifier and MLM heads in code."""
    return (
        need("classifier_activation", lambda v, c: (v or c.activation) == classifier, f"a {classifier} classifier",
             when=lambda c: bool(c.n_labels)),
        need("activation", lambda v, c: v == mlm, f"an MLM head with {mlm}, whatever the layers use", when=lambda c: c.mlm_head),
    )


BERT_SPECIAL_TOKENS = ("unk", "sep", "pad", "cls", "mask")
# RoBERTa and ALBERT also name a bos and an eos (<s> and </s>, [CLS] and [SEP] in their own vocabularies).
FULL_SPECIAL_TOKENS = ("bos", "eos", *BERT_SPECIAL_TOKENS)
SAME_WIDTH_EMBEDDINGS = need("embedding_dim", lambda v, c: c.embed_width == c.d_model, "embeddings as wide as hidden_size")
NO_SHARING = only("share_layers", 0, has="no layer sharing")


BERT = Family("bert", "bert", encoder_architecture("Bert", BERT_CLASSES), rules, config_from_hf, encoder_config_to_hf,
              ignore=("cls.predictions.decoder.bias", ".position_ids"), hf_prefixes=("bert.",),
              base_architecture="BertModel", special_tokens=BERT_SPECIAL_TOKENS,
              limits=(*encoder_limits("Bert", BERT_CLASSES, "pooled"), only("padding_positions", False), NO_SHARING,
                      SAME_WIDTH_EMBEDDINGS))
