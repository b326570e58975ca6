"""What a family's transformers class can represent, as data: each family lists checks of its
ModelConfig, and an export to Hugging Face is refused when one fails (a class that silently
lacks a setting would load with random or missing weights, or compute something else).

A check is `config -> None` (the class represents this) or a phrase naming the setting and what
the class has instead. Fields the model does not read for its stack (rope_theta without rotary
positions, the encoder heads of a decoder) are not checked; training-only fields (dropout, init)
do not change what an export computes.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from ..model_config import ModelConfig

Check = Callable[[ModelConfig], Optional[str]]


def need(field: str, ok: Callable[[Any, ModelConfig], bool], has: str,
         when: Callable[[ModelConfig], bool] = lambda c: True) -> Check:
    """`ok(value, config)` must hold for `model.<field>` (where `when` says the field matters)."""

    def check(config: ModelConfig) -> Optional[str]:
        value = getattr(config, field)
        if not when(config) or ok(value, config):
            return None
        return f"model.{field}={value!r} (it has {has})"

    return check


def only(field: str, *allowed: Any, has: Optional[str] = None, when: Callable[[ModelConfig], bool] = lambda c: True) -> Check:
    return need(field, lambda value, c: value in allowed, has or "only " + " or ".join(map(repr, allowed)), when)


def _default_scale(value: Optional[float], c: ModelConfig) -> bool:
    return value is None or math.isclose(value, c.dim_per_head ** -0.5, rel_tol=1e-6)


PLAIN_ATTENTION = (
    need("n_kv_heads", lambda v, c: v is None or v == c.n_heads, "as many key/value heads as query heads"),
    need("head_dim", lambda v, c: v is None or v * c.n_heads == c.d_model, "heads of width d_model / n_heads"),
    need("attention_scale", _default_scale, "the 1/sqrt(head_dim) scale"),
)
LAYERNORM = (only("norm", "layernorm"), only("norm_bias", True, has="LayerNorm with a bias"))
BIASES = (only("attention_bias", True), only("mlp_bias", True))
PRE_NORM = (only("norm_position", "pre"), only("final_norm", True, has="a final norm"))
# What only the BERT-style embeddings (or ALBERT's sharing) have: a decoder or T5 has none of it.
NO_ENCODER_EMBEDDINGS = (
    only("type_vocab_size", 0, has="no token-type embedding"), only("embedding_norm", False, has="no embedding norm"),
    need("embedding_dim", lambda v, c: c.embed_width == c.d_model, "embeddings as wide as d_model"),
    only("padding_positions", False), only("share_layers", 0, has="no layer sharing"),
)


# Options of the modern recipe (speedrun v2) that none of the families' transformers classes
# has: every family is checked for them. (ReLU squared is transformers' "relu2" and exports;
# zero-initialised projections change only the start of training.)
NO_FAMILY_HAS = (
    only("qk_norm", False, has="no norm on queries and keys"),
    need("logit_softcap", lambda v, c: v == 0, "no soft-capping of the LM head's logits"),
)


def unrepresentable(checks: tuple[Check, ...], config: ModelConfig) -> list[str]:
    """The phrases of the checks `config` fails, the family's own and NO_FAMILY_HAS (empty: the
    class represents it)."""
    return [problem for problem in (check(config) for check in (*checks, *NO_FAMILY_HAS)) if problem is not None]
