"""XLNet (Yang et al. 2019): a bidirectional stack with Transformer-XL's relative sinusoidal
positions (content and position biases per head, the relative shift), segments as a learned
same/different term inside attention, post-norm blocks without attention biases, and two-stream
attention: the query stream starts from `mask_emb` and predicts the targets of `target_mapping`
under `perm_mask`. Heads: the tied LM head with a bias (`lm_loss`), and the sequence summary
(dense + tanh on the last token, then `logits_proj`).

transformers stores each attention projection as one (d_model, n_head, d_head) tensor and mask_emb
as (1, 1, d_model); ours are the usual (out, in) matrices and a one-row table, so the weight map
reshapes on the way in and out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError
from ..model_config import ModelConfig
from .bert import _dense, encoder_architecture, heads_held, label_config_to_hf, label_names_from_hf
from .limits import LAYERNORM, NO_ENCODER_EMBEDDINGS, PLAIN_ATTENTION, need, only
from .spec import ACTIVATION_TO_HF, Family, Rule, activation_from_hf, pick

# The attention tensors stored as (d_model, n_head, d_head); `o` maps back, the rest map in.
HEAD_TENSORS = ("q", "k", "v", "o", "r")


def rules(config: ModelConfig) -> list[Rule]:
    layer, ours = "transformer.layer.{i}.", "stack.blocks.{i}."
    three = lambda c: [c.n_heads * c.dim_per_head] * 3  # noqa: E731  query, key, value
    relative = {"content_bias": "r_w_bias", "position_bias": "r_r_bias", "segment_bias": "r_s_bias",
                "segment_embed": "seg_embed"}
    out = [
        Rule("stack.tok_embed.weight", ("transformer.word_embedding.weight",)),
        Rule("stack.mask_emb.weight", ("transformer.mask_emb",)),
        Rule(ours + "attn.qkv.weight", tuple(f"{layer}rel_attn.{n}" for n in "qkv"), transpose=True, split=three),
        Rule(ours + "attn.out.weight", (layer + "rel_attn.o",)),
        Rule(ours + "attn.relative.pos.weight", (layer + "rel_attn.r",), transpose=True),
        *(Rule(f"{ours}attn.relative.{name}", (f"{layer}rel_attn.{theirs}",)) for name, theirs in relative.items()),
        *_dense(ours + "attn_norm", layer + "rel_attn.layer_norm"),
        *_dense(ours + "ff.up", layer + "ff.layer_1"),
        *_dense(ours + "ff.down", layer + "ff.layer_2"),
        *_dense(ours + "ff_norm", layer + "ff.layer_norm"),
    ]
    if config.mlm_head:
        out += [Rule("mlm_head.decoder.weight", ("lm_loss.weight",)), Rule("mlm_head.bias", ("lm_loss.bias",))]
    if config.n_labels:
        out += [*_dense("classifier.dense", "sequence_summary.summary"), *_dense("classifier.out", "logits_proj")]
    if config.n_token_labels:
        out += _dense("token_classifier.out", "classifier")
    if config.qa_head:  # XLNetForQuestionAnsweringSimple
        out += _dense("qa_head.out", "qa_outputs")
    return out


def hf_shape(name: str, config: ModelConfig):
    """The shape transformers stores an HF tensor in, where it is not the matrix the rules see."""
    if name.endswith("mask_emb"):
        return (1, 1, config.d_model)
    if ".rel_attn." in name and name.rsplit(".", 1)[-1] in HEAD_TENSORS:
        return (config.d_model, config.n_heads, config.dim_per_head)
    return None


@dataclass(frozen=True)
class ReshapedFamily(Family):
    """A family whose HF tensors have more dimensions than ours: each is flattened to a matrix
    (first dimension kept) before the rules apply, and shaped back after an export."""

    def from_hf_state(self, state, config, source, expected):
        flat = {k: v.reshape(v.shape[0], -1) if hf_shape(k, config) else v for k, v in state.items()}
        return super().from_hf_state(flat, config, source, expected)

    def to_hf_state(self, state, config):
        out = super().to_hf_state(state, config)
        return {k: v.reshape(hf_shape(k, config)) if hf_shape(k, config) else v for k, v in out.items()}


UNSUPPORTED = {"bi_data": False, "same_length": False, "summary_type": "last", "summary_use_proj": True,
               "summary_activation": "tanh"}


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    for key, value in UNSUPPORTED.items():
        if hf.get(key, value) != value:
            raise CheckpointError(f"XLNet with {key}={hf[key]!r} is not supported (stratalm reads {key}={value!r}).")
    if hf.get("reuse_len"):
        raise CheckpointError("XLNet with reuse_len set is not supported; its memory keeps whole segments.")
    count = len(hf.get("id2label") or {}) or hf.get("num_labels", 2)
    labels = count if any(n.startswith("logits_proj.") for n in weight_names) else 0
    tokens = count if any(n.startswith("classifier.") for n in weight_names) else 0
    dropout = hf.get("dropout", 0.1)
    return dict(
        family="xlnet", stack="encoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layers=hf["n_layer"],
        n_heads=hf["n_head"], d_ff=hf["d_inner"], activation=activation_from_hf(hf.get("ff_activation", "gelu")),
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12), norm_position="post", final_norm=False,
        position="relative_sinusoidal", attention_type=hf.get("attn_type", "bi"),
        relative_clamp=max(hf.get("clamp_len", -1), 0), relative_segments=True, query_stream=True,
        mem_len=hf.get("mem_len") or 0, max_seq_len=512, type_vocab_size=0, attention_bias=False,
        dropout=dropout, attention_dropout=dropout, tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=pick(hf, "pad_token_id", default=5),
        mlm_head=any(n.startswith("lm_loss.") for n in weight_names), mlm_transform=False,
        qa_head="qa_outputs.weight" in weight_names, n_labels=labels, n_token_labels=tokens,
        label_names=label_names_from_hf(hf, labels or tokens) if (labels or tokens) else None,
        classifier="last", classifier_activation="tanh", scale_residual_init=False,
    )


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size, d_model=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, d_head=c.dim_per_head,
        d_inner=c.d_ff, ff_activation=ACTIVATION_TO_HF[c.activation], attn_type=c.attention_type,
        layer_norm_eps=c.norm_eps, dropout=c.dropout, mem_len=c.mem_len or None, reuse_len=None, bi_data=False,
        clamp_len=c.relative_clamp or -1, same_length=False, summary_type="last", summary_use_proj=True,
        summary_activation="tanh", summary_last_dropout=c.dropout, tie_word_embeddings=c.tie_embeddings,
        pad_token_id=c.pad_token_id, **label_config_to_hf(c),
    )


XLNET_CLASSES = {"ForSequenceClassification": {"n_labels"}, "ForTokenClassification": {"n_token_labels"},
                 "ForQuestionAnsweringSimple": {"qa_head"}, "LMHeadModel": {"mlm_head"}, "Model": set()}

LIMITS = (
    only("stack", "encoder"), only("position", "relative_sinusoidal"), only("relative_segments", True),
    only("query_stream", True, has="a mask_emb"), only("norm_position", "post"),
    only("final_norm", False, has="no final norm"), *LAYERNORM, only("attention_bias", False),
    only("mlp_bias", True), only("gated", False, has="a plain MLP"), *PLAIN_ATTENTION, *NO_ENCODER_EMBEDDINGS,
    only("mlm_transform", False, has="an LM head without a transform", when=lambda c: c.mlm_head),
    only("classifier", "last", has="the sequence summary on the last token", when=lambda c: bool(c.n_labels)),
    need("classifier_activation", lambda v, c: (v or c.activation) == "tanh", "a tanh sequence summary",
         when=lambda c: bool(c.n_labels)),
    heads_held("XLNet", XLNET_CLASSES),
)

XLNET = ReshapedFamily(
    "xlnet", "xlnet", encoder_architecture("XLNet", XLNET_CLASSES), rules, config_from_hf, config_to_hf,
    hf_prefixes=("transformer.",), base_architecture="XLNetModel", limits=LIMITS,
    special_tokens=("bos", "eos", "unk", "sep", "pad", "cls", "mask"),
)
