"""Named model shapes. A preset is a dict of ModelConfig values on top of the family's defaults.

`tiny` is for tests and the demo (about 1M parameters with a small vocabulary); `gpt2*` follow
OpenAI's GPT-2 shapes; `llama*` follow the Llama recipe (RoPE, RMSNorm, SwiGLU, grouped-query
attention, no biases, untied head).
"""
from __future__ import annotations

from typing import Any

from ..config_fields import did_you_mean
from ..errors import ConfigError
from ..model_config import ModelConfig

GPT2_STYLE: dict[str, Any] = dict(
    family="gpt2", position="learned", norm="layernorm", norm_eps=1e-5, activation="gelu_tanh",
    gated=False, attention_bias=True, mlp_bias=True, tie_embeddings=True, norm_position="pre",
    vocab_size=50257, max_seq_len=1024,
)
LLAMA_STYLE: dict[str, Any] = dict(
    family="llama", position="rope", norm="rmsnorm", norm_eps=1e-5, activation="silu", gated=True,
    attention_bias=False, mlp_bias=False, tie_embeddings=False, norm_position="pre",
    scale_residual_init=False, vocab_size=32000,
)


BERT_STYLE: dict[str, Any] = dict(
    family="bert", stack="encoder", position="learned", norm="layernorm", norm_eps=1e-12, norm_position="post",
    final_norm=False, activation="gelu", gated=False, type_vocab_size=2, embedding_norm=True, tie_embeddings=True,
    mlm_head=True, pooler=True, nsp_head=True, dropout=0.1, attention_dropout=0.1, scale_residual_init=False,
    vocab_size=30522, max_seq_len=512,
)
ROBERTA_STYLE: dict[str, Any] = {**BERT_STYLE, "family": "roberta", "norm_eps": 1e-5, "type_vocab_size": 1,
                                  "padding_positions": True, "pad_token_id": 1, "pooler": False, "nsp_head": False,
                                  "classifier": "dense", "classifier_activation": "tanh",
                                  "vocab_size": 50265, "max_seq_len": 514}
ALBERT_STYLE: dict[str, Any] = {**BERT_STYLE, "family": "albert", "activation": "gelu_tanh", "embedding_dim": 128,
                                 "share_layers": 1, "dropout": 0.0, "attention_dropout": 0.0, "vocab_size": 30000}
ELECTRA_STYLE: dict[str, Any] = {**BERT_STYLE, "family": "electra", "pooler": False, "nsp_head": False,
                                  "mlm_head": False, "rtd_head": True, "classifier": "dense"}
T5_STYLE: dict[str, Any] = dict(
    family="t5", stack="encoder-decoder", position="relative_buckets", attention_scale=1.0, norm="rmsnorm",
    norm_eps=1e-6, norm_position="pre", attention_bias=False, mlp_bias=False, activation="relu", gated=False,
    tie_embeddings=True, lm_head_scale=True, dropout=0.1, scale_residual_init=False, vocab_size=32128, max_seq_len=512,
    init_scheme="t5",
)
# XLNet: relative sinusoidal positions, segments inside attention, two-stream attention (mask_emb),
# post-norm without attention biases, the tied LM head with a bias, the sequence summary on the last token.
XLNET_STYLE: dict[str, Any] = dict(
    family="xlnet", stack="encoder", position="relative_sinusoidal", relative_segments=True, query_stream=True,
    norm="layernorm", norm_eps=1e-12, norm_position="post", final_norm=False, activation="gelu", gated=False,
    attention_bias=False, type_vocab_size=0, mlm_head=True, mlm_transform=False, tie_embeddings=True,
    classifier="last", classifier_activation="tanh", dropout=0.1, attention_dropout=0.1, scale_residual_init=False,
    vocab_size=32000, max_seq_len=512, pad_token_id=5,
)


def _encoder(style: dict[str, Any], n_layers: int, d_model: int, n_heads: int, **extra: Any) -> dict[str, Any]:
    return {**style, "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": 4 * d_model, **extra}


def _t5(n_layers: int, d_model: int, n_heads: int, d_ff: int, **extra: Any) -> dict[str, Any]:
    return {**T5_STYLE, "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "head_dim": 64, "d_ff": d_ff, **extra}


def _gpt2(n_layers: int, d_model: int, n_heads: int, **extra: Any) -> dict[str, Any]:
    return {**GPT2_STYLE, "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": 4 * d_model, **extra}


def _llama(n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, **extra: Any) -> dict[str, Any]:
    return {**LLAMA_STYLE, "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads,
            "n_kv_heads": n_kv_heads, "d_ff": d_ff, **extra}


PRESETS: dict[str, dict[str, Any]] = {
    # ~0.8M parameters in the blocks; the embedding adds vocab x 128.
    "tiny": _gpt2(4, 128, 4, vocab_size=4096, max_seq_len=256),
    "gpt2-mini": _gpt2(6, 384, 6, max_seq_len=256),  # nanoGPT's Shakespeare shape
    "gpt2": _gpt2(12, 768, 12),  # 124M
    "gpt2-medium": _gpt2(24, 1024, 16),  # 355M
    "gpt2-large": _gpt2(36, 1280, 20),  # 774M
    "gpt2-xl": _gpt2(48, 1600, 25),  # 1.5B
    "llama-tiny": _llama(4, 128, 4, 2, 344, vocab_size=4096, max_seq_len=256),
    "llama": _llama(6, 384, 6, 2, 1024, max_seq_len=512),  # a Llama-style model that trains on a CPU
    "tinyllama-1.1b": _llama(22, 2048, 32, 4, 5632, max_seq_len=2048),
    "llama2-7b": _llama(32, 4096, 32, 32, 11008, max_seq_len=4096, norm_eps=1e-6),
    "llama3-8b": _llama(32, 4096, 32, 8, 14336, vocab_size=128256, max_seq_len=8192, rope_theta=500000.0),
    # Encoders: the family name is a size that trains on a CPU; named sizes follow the papers.
    "bert": _encoder(BERT_STYLE, 4, 256, 4, max_seq_len=256),
    "bert-base": _encoder(BERT_STYLE, 12, 768, 12),
    "bert-large": _encoder(BERT_STYLE, 24, 1024, 16),
    "roberta": _encoder(ROBERTA_STYLE, 4, 256, 4, max_seq_len=258),
    "roberta-base": _encoder(ROBERTA_STYLE, 12, 768, 12),
    "roberta-large": _encoder(ROBERTA_STYLE, 24, 1024, 16),
    "albert": _encoder(ALBERT_STYLE, 4, 256, 4, max_seq_len=256),
    "albert-base": _encoder(ALBERT_STYLE, 12, 768, 12),
    "albert-large": _encoder(ALBERT_STYLE, 24, 1024, 16),
    "electra": _encoder(ELECTRA_STYLE, 4, 256, 4, embedding_dim=128, max_seq_len=256),
    "electra-small": _encoder(ELECTRA_STYLE, 12, 256, 4, embedding_dim=128),
    "electra-base": _encoder(ELECTRA_STYLE, 12, 768, 12),
    # ELECTRA's generators: a quarter of the discriminator's width, an MLM head instead of RTD.
    "electra-generator": _encoder(ELECTRA_STYLE, 4, 64, 1, embedding_dim=128, max_seq_len=256, rtd_head=False, mlm_head=True),
    "electra-small-generator": _encoder(ELECTRA_STYLE, 12, 64, 1, embedding_dim=128, rtd_head=False, mlm_head=True),
    # T5: the family name is a CPU size; t5-small/base follow v1.0, t5-v1_1-* the gated, untied v1.1.
    "t5": _t5(4, 256, 4, 1024),
    "t5-small": _t5(6, 512, 8, 2048),
    "t5-base": _t5(12, 768, 12, 3072),
    # XLNet: the family name is a CPU size; the cased sizes follow the paper.
    "xlnet": _encoder(XLNET_STYLE, 4, 256, 4, max_seq_len=256),
    "xlnet-base-cased": _encoder(XLNET_STYLE, 12, 768, 12),
    "xlnet-large-cased": _encoder(XLNET_STYLE, 24, 1024, 16),
    "t5-v1_1-small": _t5(8, 512, 6, 1024, n_decoder_layers=8, activation="gelu_tanh", gated=True,
                         tie_embeddings=False, lm_head_scale=False),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset, with any field overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}'{did_you_mean(name, PRESETS)}; choose one of: {', '.join(PRESETS)} (or a checkpoint folder).")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
