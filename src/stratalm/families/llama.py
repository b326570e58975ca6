"""Llama (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases."""
from __future__ import annotations

from typing import Any

from ..model_config import ModelConfig
from .limits import NO_ENCODER_EMBEDDINGS, PLAIN_ATTENTION, PRE_NORM, only
from .spec import ACTIVATION_TO_HF, Family, Rule, activation_from_hf, pick


def _qkv_sizes(c: ModelConfig) -> list[int]:
    return [c.n_heads * c.dim_per_head, c.kv_heads * c.dim_per_head, c.kv_heads * c.dim_per_head]


def rules(config: ModelConfig) -> list[Rule]:
    p = "model.layers.{i}."
    out = [
        Rule("stack.tok_embed.weight", ("model.embed_tokens.weight",)),
        Rule("stack.final_norm.weight", ("model.norm.weight",)),
        Rule("lm_head.weight", ("lm_head.weight",)),
        Rule("stack.blocks.{i}.attn.qkv.weight", tuple(p + f"self_attn.{n}_proj.weight" for n in "qkv"), split=_qkv_sizes),
        Rule("stack.blocks.{i}.attn.out.weight", (p + "self_attn.o_proj.weight",)),
        Rule("stack.blocks.{i}.ff.up.weight", (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
             split=lambda c: [c.d_ff, c.d_ff]),
        Rule("stack.blocks.{i}.ff.down.weight", (p + "mlp.down_proj.weight",)),
        Rule("stack.blocks.{i}.attn_norm.weight", (p + "input_layernorm.weight",)),
        Rule("stack.blocks.{i}.ff_norm.weight", (p + "post_attention_layernorm.weight",)),
    ]
    if config.attention_bias:
        out.append(Rule("stack.blocks.{i}.attn.qkv.bias", tuple(p + f"self_attn.{n}_proj.bias" for n in "qkv"), split=_qkv_sizes))
        out.append(Rule("stack.blocks.{i}.attn.out.bias", (p + "self_attn.o_proj.bias",)))
    if config.mlp_bias:
        out.append(Rule("stack.blocks.{i}.ff.up.bias", (p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias"),
                        split=lambda c: [c.d_ff, c.d_ff]))
        out.append(Rule("stack.blocks.{i}.ff.down.bias", (p + "mlp.down_proj.bias",)))
    return out


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    rope = hf.get("rope_parameters") or {}
    if (hf.get("rope_scaling") or rope.get("rope_type", "default")) not in (None, "default"):
        from ..errors import CheckpointError

        raise CheckpointError("this Llama checkpoint uses rope scaling, which stratalm does not support yet.")
    return dict(
        family="llama", vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        n_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"],
        n_kv_heads=pick(hf, "num_key_value_heads", default=hf["num_attention_heads"]), head_dim=hf.get("head_dim"),
        d_ff=hf["intermediate_size"], activation=activation_from_hf(hf.get("hidden_act", "silu")),
        gated=True, norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), position="rope",
        rope_theta=pick(rope, "rope_theta", default=hf.get("rope_theta", 10000.0)),
        attention_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False), attention_dropout=hf.get("attention_dropout", 0.0),
        norm_position="pre",
    )


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_seq_len, num_hidden_layers=c.n_layers,
        hidden_size=c.d_model, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, head_dim=c.dim_per_head,
        intermediate_size=c.d_ff, hidden_act=ACTIVATION_TO_HF[c.activation], rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        attention_bias=c.attention_bias, mlp_bias=c.mlp_bias, tie_word_embeddings=c.tie_embeddings,
        attention_dropout=c.attention_dropout,
    )


# LlamaForCausalLM: rotary positions, pre-norm RMSNorm, a gated MLP; heads, biases and tying are options.
LIMITS = (only("stack", "decoder"), only("position", "rope"), only("norm", "rmsnorm"), only("gated", True, has="a gated MLP"),
          *PRE_NORM, PLAIN_ATTENTION[-1], *NO_ENCODER_EMBEDDINGS)

LLAMA = Family("llama", "llama", lambda c: "LlamaForCausalLM", rules, config_from_hf, config_to_hf,
               ignore=(".rotary_emb.inv_freq",), limits=LIMITS)
