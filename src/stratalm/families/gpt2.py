"""GPT-2 (Radford et al. 2019): learned positions, pre-norm LayerNorm, gelu-tanh, tied head."""
from __future__ import annotations

from typing import Any

from ..model_config import ModelConfig
from .limits import BIASES, LAYERNORM, NO_ENCODER_EMBEDDINGS, PLAIN_ATTENTION, PRE_NORM, only
from .spec import ACTIVATION_TO_HF, Family, Rule, activation_from_hf, pick


def rules(config: ModelConfig) -> list[Rule]:
    block = "transformer.h.{i}."
    layer = [
        ("attn_norm", "ln_1", False), ("ff_norm", "ln_2", False), ("attn.qkv", "attn.c_attn", True),
        ("attn.out", "attn.c_proj", True), ("ff.up", "mlp.c_fc", True), ("ff.down", "mlp.c_proj", True),
    ]
    out = [Rule("stack.tok_embed.weight", ("transformer.wte.weight",)),
           Rule("stack.positions.weight", ("transformer.wpe.weight",)),
           Rule("stack.final_norm.weight", ("transformer.ln_f.weight",)),
           Rule("stack.final_norm.bias", ("transformer.ln_f.bias",)),
           Rule("lm_head.weight", ("lm_head.weight",))]
    for ours, theirs, conv1d in layer:
        out.append(Rule(f"stack.blocks.{{i}}.{ours}.weight", (block + theirs + ".weight",), transpose=conv1d))
        out.append(Rule(f"stack.blocks.{{i}}.{ours}.bias", (block + theirs + ".bias",)))
    return out


def config_from_hf(hf: dict[str, Any], weight_names: set[str]) -> dict[str, Any]:
    d_model = pick(hf, "n_embd", "hidden_size")
    return dict(
        family="gpt2", vocab_size=hf["vocab_size"], max_seq_len=pick(hf, "n_positions", "n_ctx", default=1024),
        n_layers=pick(hf, "n_layer", "num_hidden_layers"), d_model=d_model, n_heads=pick(hf, "n_head", "num_attention_heads"),
        d_ff=pick(hf, "n_inner", default=4 * d_model), activation=activation_from_hf(hf.get("activation_function", "gelu_new")),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("resid_pdrop", 0.0), attention_dropout=hf.get("attn_pdrop", 0.0),
        position="learned", norm="layernorm", norm_position="pre", gated=False,
    )


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    activation = ACTIVATION_TO_HF[c.activation]
    return dict(
        vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
        n_inner=c.d_ff, activation_function=activation, layer_norm_epsilon=c.norm_eps, tie_word_embeddings=c.tie_embeddings,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.attention_dropout,
    )


# GPT2LMHeadModel: learned positions, pre-norm LayerNorm with biases everywhere, a plain MLP.
LIMITS = (only("stack", "decoder"), only("position", "learned"), only("gated", False, has="a plain MLP"),
          *PRE_NORM, *LAYERNORM, *BIASES, *PLAIN_ATTENTION, *NO_ENCODER_EMBEDDINGS)

GPT2 = Family("gpt2", "gpt2", lambda c: "GPT2LMHeadModel", rules, config_from_hf, config_to_hf,
              ignore=(".attn.bias", ".attn.masked_bias"), hf_prefixes=("transformer.",), limits=LIMITS)
