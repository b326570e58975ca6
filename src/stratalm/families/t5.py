"""T5 (Raffel et al. 2020): encoder-decoder, RMSNorm before each sublayer, no biases, no 1/sqrt(d)
in attention, a learned relative-position bias per stack, and a shared token embedding.
v1.0: relu feed-forward, head tied to the embedding with the output scaled by d_model^-0.5;
v1.1: gated-gelu feed-forward, untied head, no scaling."""
from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from ..model_config import ModelConfig
from .limits import NO_ENCODER_EMBEDDINGS, PLAIN_ATTENTION, PRE_NORM, only
from .spec import ACTIVATION_TO_HF, HF_ACTIVATIONS, Family, Rule


def _ff(ours: str, theirs: str, gated: bool) -> list[Rule]:
    up = (theirs + ".wi_0.weight", theirs + ".wi_1.weight") if gated else (theirs + ".wi.weight",)
    return [Rule(ours + ".up.weight", up, split=(lambda c: [c.d_ff, c.d_ff]) if gated else None),
            Rule(ours + ".down.weight", (theirs + ".wo.weight",))]


def _attention(ours: str, theirs: str) -> list[Rule]:
    inner = lambda c: [c.n_heads * c.dim_per_head] * 3  # noqa: E731
    return [Rule(ours + ".qkv.weight", tuple(f"{theirs}.{n}.weight" for n in "qkv"), split=inner),
            Rule(ours + ".out.weight", (theirs + ".o.weight",))]


def rules(config: ModelConfig) -> list[Rule]:
    enc, dec = "encoder.block.{i}.layer.", "decoder.block.{d}.layer."
    inner = lambda c: [c.n_heads * c.dim_per_head] * 2  # noqa: E731
    return [
        Rule("encoder.tok_embed.weight", ("shared.weight",)),
        Rule("lm_head.weight", ("lm_head.weight",)),
        Rule("encoder.rel_bias.weight", ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)),
        Rule("decoder.rel_bias.weight", ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)),
        Rule("encoder.final_norm.weight", ("encoder.final_layer_norm.weight",)),
        Rule("decoder.final_norm.weight", ("decoder.final_layer_norm.weight",)),
        *_attention("encoder.blocks.{i}.attn", enc + "0.SelfAttention"),
        Rule("encoder.blocks.{i}.attn_norm.weight", (enc + "0.layer_norm.weight",)),
        *_ff("encoder.blocks.{i}.ff", enc + "1.DenseReluDense", config.gated),
        Rule("encoder.blocks.{i}.ff_norm.weight", (enc + "1.layer_norm.weight",)),
        *_attention("decoder.blocks.{d}.attn", dec + "0.SelfAttention"),
        Rule("decoder.blocks.{d}.attn_norm.weight", (dec + "0.layer_norm.weight",)),
        Rule("decoder.blocks.{d}.cross_attn.q.weight", (dec + "1.EncDecAttention.q.weight",)),
        Rule("decoder.blocks.{d}.cross_attn.kv.weight", (dec + "1.EncDecAttention.k.weight", dec + "1.EncDecAttention.v.weight"), split=inner),
        Rule("decoder.blocks.{d}.cross_attn.out.weight", (dec + "1.EncDecAttention.o.weight",)),
        Rule("decoder.blocks.{d}.cross_norm.weight", (dec + "1.layer_norm.weight",)),
        *_ff("decoder.blocks.{d}.ff", dec + "2.DenseReluDense", config.gated),
        Rule("decoder.blocks.{d}.ff_norm.weight", (dec + "2.layer_norm.weight",)),
    ]


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    proj = hf.get("feed_forward_proj", "relu")
    gated, act = proj.startswith("gated-"), proj.split("-")[-1]
    if proj == "gated-gelu":
        act = "gelu_new"  # transformers reads T5 v1.1's "gated-gelu" as the tanh approximation
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(f"T5 feed_forward_proj '{proj}' is not supported (relu, gated-gelu, gated-silu are).")
    tied = "lm_head.weight" not in weight_names if weight_names else hf.get("tie_word_embeddings", True)
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    return dict(
        family="t5", stack="encoder-decoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"],
        head_dim=hf.get("d_kv", 64), d_ff=hf["d_ff"], n_layers=hf["num_layers"], n_heads=hf["num_heads"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], max_seq_len=hf.get("n_positions", 512),
        position="relative_buckets", relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), attention_scale=1.0,
        norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), norm_position="pre", final_norm=True,
        activation=HF_ACTIVATIONS[act], gated=gated, attention_bias=False, mlp_bias=False,
        dropout=hf.get("dropout_rate", 0.1), tie_embeddings=tied, lm_head_scale=bool(scaled),
        pad_token_id=hf.get("pad_token_id", 0), decoder_start_token_id=hf.get("decoder_start_token_id", 0),
        scale_residual_init=False,
    )


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.dim_per_head, d_ff=c.d_ff, num_layers=c.n_layers,
        num_decoder_layers=c.n_decoder_layers or c.n_layers, num_heads=c.n_heads, n_positions=c.max_seq_len,
        relative_attention_num_buckets=c.relative_buckets, relative_attention_max_distance=c.relative_max_distance,
        dropout_rate=c.dropout, layer_norm_epsilon=c.norm_eps, feed_forward_proj=_feed_forward_proj(c),
        tie_word_embeddings=c.lm_head_scale, scale_decoder_outputs=c.lm_head_scale, is_encoder_decoder=True,
        pad_token_id=c.pad_token_id, decoder_start_token_id=c.decoder_start_token_id, eos_token_id=1,
    )


def _feed_forward_proj(c: ModelConfig) -> str:
    """T5's name of the feed-forward layer. "gated-gelu" means gelu_new (T5 v1.1), so exact gelu
    in a gated layer is spelled gelu_python."""
    if c.gated:
        return "gated-" + {"gelu_tanh": "gelu", "gelu": "gelu_python"}.get(c.activation, c.activation)
    return ACTIVATION_TO_HF[c.activation]


# T5ForConditionalGeneration: relative position buckets, pre-norm RMSNorm, no biases, no 1/sqrt(d).
# Tying and the d_model^-0.5 scale are free in transformers 5 (the head is untied when the
# checkpoint holds it, tie_word_embeddings sets the scale); transformers 4 ties exactly when it scales.
LIMITS = (
    only("stack", "encoder-decoder"), only("position", "relative_buckets"), only("norm", "rmsnorm"), *PRE_NORM,
    only("attention_scale", 1.0, has="unscaled attention, 1.0"), only("attention_bias", False), only("mlp_bias", False),
    PLAIN_ATTENTION[0], *NO_ENCODER_EMBEDDINGS,
)

T5 = Family("t5", "t5", lambda c: "T5ForConditionalGeneration", rules, config_from_hf, config_to_hf,
            ignore=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"), limits=LIMITS,
            special_tokens=("eos", "unk", "pad"))
