"""`ModelConfig`: one dataclass that describes every supported architecture with plain fields.

A family preset (see `families/`) is just a set of values for these fields. Each field's help says
what it changes in the network.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

from .config_fields import setting, update_dataclass
from .errors import ConfigError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "relu2", "silu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "sinusoidal", "rope", "relative_buckets", "relative_sinusoidal", "none")
CLASSIFIERS = ("pooled", "dense", "last")
STACKS = ("decoder", "encoder", "encoder-decoder")


@dataclass(frozen=True)
class ModelConfig:
    family: str = setting("gpt2", "family the weights follow (names the weight map for Hugging Face interop)")
    stack: str = setting("decoder", "decoder (causal, LM head), encoder (bidirectional, BERT-style heads) or encoder-decoder (T5)")
    vocab_size: int = setting(50257, "rows of the token embedding (and columns of the LM head)")
    max_seq_len: int = setting(1024, "longest sequence the model accepts (the context, or block size)")
    n_layers: int = setting(12, "number of Transformer blocks")
    n_decoder_layers: Optional[int] = setting(None, "encoder-decoder: blocks in the decoder (None = n_layers)")
    share_layers: int = setting(0, "ALBERT: this many distinct blocks shared across the n_layers positions (0 = no sharing)")
    d_model: int = setting(768, "width of the residual stream")
    n_heads: int = setting(12, "attention heads for queries")
    n_kv_heads: Optional[int] = setting(None, "heads for keys/values; fewer than n_heads = grouped-query attention (None = n_heads)")
    head_dim: Optional[int] = setting(None, "width of one head (None = d_model / n_heads)")
    d_ff: int = setting(3072, "hidden width of the feed-forward layer")
    activation: str = setting("gelu_tanh", "feed-forward nonlinearity: gelu, gelu_tanh, relu, relu2 (relu squared, modded-nanogpt) or silu")
    gated: bool = setting(False, "gated feed-forward (silu -> SwiGLU, gelu -> GeGLU) instead of a plain MLP")
    norm: str = setting("layernorm", "normalisation: layernorm or rmsnorm")
    norm_eps: float = setting(1e-5, "epsilon inside every norm")
    norm_bias: bool = setting(True, "LayerNorm carries a bias (ignored by rmsnorm)")
    norm_position: str = setting("pre", "pre: norm before each sublayer (GPT-2, Llama); post: after the residual add (BERT)")
    final_norm: bool = setting(True, "a norm after the last block (pre-norm stacks need it)")
    position: str = setting("learned", "positions: learned, sinusoidal, rope (rotary), relative_buckets (T5), relative_sinusoidal (XLNet) or none")
    relative_buckets: int = setting(32, "relative_buckets: number of buckets of the learned per-head bias")
    relative_max_distance: int = setting(128, "relative_buckets: distance beyond which all offsets share a bucket")
    attention_type: str = setting("bi", "relative_sinusoidal: bi (every token sees every other) or uni (causal), XLNet's attn_type")
    relative_clamp: int = setting(0, "relative_sinusoidal: offsets beyond this share the sinusoid of the limit (0 = none; transformers' clamp_len)")
    relative_segments: bool = setting(False, "XLNet: segments enter attention as a learned same/different-segment term per head (r_s bias, seg_embed), not as an embedding")
    query_stream: bool = setting(False, "XLNet: a learned mask_emb starts the query stream of two-stream attention, run when a target_mapping is given")
    mem_len: int = setting(0, "XLNet memory: how many of the latest hidden states per layer a forward returns for the next segment (0 = all)")
    qk_norm: bool = setting(False, "RMSNorm (a learned gain per channel) on each head's queries and keys before their product: bounded scores, a higher stable lr")
    attention_scale: Optional[float] = setting(None, "multiplier of q.k before the softmax (None = 1/sqrt(head_dim); T5 uses 1)")
    padding_positions: bool = setting(False, "RoBERTa: positions count from pad_token_id + 1; padding sits at pad_token_id")
    type_vocab_size: int = setting(0, "rows of the token-type (segment) embedding; 0 = no segments (BERT uses 2)")
    embedding_norm: bool = setting(False, "a norm right after the embeddings are summed (BERT-style encoders)")
    embedding_dim: Optional[int] = setting(None, "width of the embeddings when smaller than d_model (ALBERT, ELECTRA): a projection follows (None = d_model)")
    pad_token_id: int = setting(0, "id of the padding token (RoBERTa position ids depend on it)")
    rope_theta: float = setting(10000.0, "rotary base frequency (position=rope)")
    attention_bias: bool = setting(True, "query/key/value/output projections carry biases")
    mlp_bias: bool = setting(True, "feed-forward projections carry biases")
    dropout: float = setting(0.0, "dropout on embeddings, sublayer outputs (0 = off, the fast path)")
    attention_dropout: float = setting(0.0, "dropout on attention probabilities")
    tie_embeddings: bool = setting(True, "the LM head reuses the token embedding matrix")
    logit_softcap: float = setting(0.0, "the LM head's logits become cap * tanh(logits / cap), bounded by this cap (0 = off; Gemma 2, modded-nanogpt)")
    lm_head_scale: bool = setting(False, "scale the last hidden state by d_model^-0.5 before the LM head (T5 v1.0)")
    decoder_start_token_id: int = setting(0, "encoder-decoder: the token the decoder starts from (T5: pad = 0)")
    mlm_head: bool = setting(False, "encoder: masked-LM head (dense, activation, norm, tied decoder with bias)")
    mlm_transform: bool = setting(True, "MLM head: dense + activation + norm before the tied decoder (BERT); False = the decoder and its bias alone (XLNet)")
    pooler: bool = setting(False, "encoder: pooler (dense + tanh on the first token)")
    nsp_head: bool = setting(False, "encoder: next-sentence / sentence-order head (2 logits from the pooled vector)")
    rtd_head: bool = setting(False, "encoder: ELECTRA's replaced-token-detection head (one logit per token)")
    n_labels: int = setting(0, "encoder: classes of a sequence-classification head (0 = none)")
    classifier_activation: Optional[str] = setting(None, "activation inside a dense classifier (None = activation; RoBERTa uses tanh)")
    n_token_labels: int = setting(0, "encoder: tags of a token-classification head, one prediction per token (0 = none)")
    qa_head: bool = setting(False, "encoder: extractive question-answering head (a start and an end logit per token)")
    label_names: Optional[list] = setting(None, "names of the classifier's labels or tags in id order (Hugging Face id2label)")
    classifier: str = setting("pooled", "classification head: pooled (a linear layer on the pooler, BERT/ALBERT), dense (dense + activation + linear on the first token, RoBERTa/ELECTRA) or last (the same on the last token, XLNet's sequence summary)")
    init_std: float = setting(0.02, "standard deviation of the initial weights")
    scale_residual_init: bool = setting(True, "shrink output projections' init by 1/sqrt(2 n_layers) (GPT-2)")
    zero_init_output: bool = setting(False, "the projections that write into the residual stream (attention out, feed-forward down) start at zero, so each block starts as the identity")
    init_scheme: str = setting("normal", "initial weights: normal (N(0, init_std), GPT-2/BERT) or t5 (unit embeddings, fan-in scaled projections, as T5)")

    def __post_init__(self) -> None:
        checks = [
            (self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}"),
            (self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}"),
            (self.position in POSITIONS, f"position must be one of {', '.join(POSITIONS)}"),
            (self.norm_position in ("pre", "post"), "norm_position must be pre or post"),
            (self.stack in STACKS, f"stack must be one of {', '.join(STACKS)}"),
            (0 <= self.share_layers <= self.n_layers, "share_layers must be between 0 and n_layers"),
            (not self.nsp_head or self.pooler, "nsp_head needs the pooler"),
            (self.classifier in CLASSIFIERS, f"classifier must be one of {', '.join(CLASSIFIERS)}"),
            (self.attention_type in ("bi", "uni"), "attention_type must be bi or uni"),
            (self.position == "relative_sinusoidal" or not (self.query_stream or self.relative_segments),
             "query_stream and relative_segments need position=relative_sinusoidal"),
            (self.init_scheme in ("normal", "t5"), "init_scheme must be normal or t5"),
            (not (self.n_labels and self.classifier == "pooled") or self.pooler, "a pooled classifier needs the pooler"),
            (not (self.n_labels and self.n_token_labels), "a model has a sequence classifier or a token classifier, not both"),
            (min(self.vocab_size, self.max_seq_len, self.n_layers, self.d_model, self.n_heads, self.d_ff) > 0,
             "vocab_size, max_seq_len, n_layers, d_model, n_heads and d_ff must be positive"),
            (self.head_dim is not None or self.d_model % self.n_heads == 0,
             f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), or set head_dim"),
            (self.n_heads % self.kv_heads == 0, f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})"),
            (self.position != "rope" or self.dim_per_head % 2 == 0, "rotary positions need an even head_dim"),
            (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0, "dropout must be in [0, 1)"),
            (self.logit_softcap >= 0, "logit_softcap must be 0 (off) or positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid model config: {message}.")

    @property
    def n_blocks(self) -> int:
        """Distinct blocks with their own weights (fewer than n_layers when layers are shared)."""
        return self.share_layers or self.n_layers

    @property
    def embed_width(self) -> int:
        return self.embedding_dim or self.d_model

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def replace(self, **changes: Any) -> "ModelConfig":
        return update_dataclass(self, changes, "model.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        return update_dataclass(cls(), values, "model.")
