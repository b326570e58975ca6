"""Named model shapes. A preset is a dict of ModelConfig values on top of the family's defaults.

`tiny` is for tests and the demo (about 1M parameters with a small vocabulary); `gpt2*` follow
OpenAI's GPT-2 shapes; `llama*` follow the Llama recipe (RoPE, RMSNorm, SwiGLU, grouped-query
attention, no biases, untied head).
"""
from __future__ import annotations

from typing import Any

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
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset, with any field overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}'; choose one of: {', '.join(PRESETS)} (or a checkpoint folder).")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
