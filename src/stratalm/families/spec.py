"""What a family is: data. A preset table, a weight-name map to and from Hugging Face, and the HF
config keys it reads and writes. No family has a model class of its own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import CheckpointError
from ..model_config import ModelConfig
from .limits import Check, unrepresentable

if TYPE_CHECKING:  # torch loads with the weights, not with the preset table (`pretrain --help` shows presets)
    import torch


@dataclass(frozen=True)
class Rule:
    """One stratalm tensor and the HF tensor(s) it comes from. `{i}` stands for the index of a
    block (of the encoder, in an encoder-decoder) and `{d}` for a decoder block.

    Several HF tensors are concatenated along dim 0 (Llama's q/k/v into one qkv matrix); `split`
    gives their sizes from the config so an export can cut them apart again. `transpose` is for
    GPT-2's Conv1D, which stores matrices as (in, out).
    """

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False
    split: Optional[Callable[[ModelConfig], list[int]]] = None


@dataclass(frozen=True)
class Family:
    name: str
    hf_model_type: str
    architecture: Callable[[ModelConfig], str]  # the transformers class an export loads into
    rules: Callable[[ModelConfig], list[Rule]]
    # (HF config.json, names of the HF weights) -> ModelConfig values; weights tell which heads exist
    config_from_hf: Callable[[dict[str, Any], set[str]], dict[str, Any]]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    ignore: tuple[str, ...] = ()  # HF keys that carry no weights of their own (buffers, tied aliases)
    hf_prefixes: tuple[str, ...] = field(default_factory=tuple)  # what a headless HF save drops ("bert.")
    base_architecture: Optional[str] = None  # the headless class, saved without hf_prefixes
    limits: tuple[Check, ...] = ()  # what the transformers class requires of a config (limits.py)
    # The special tokens the family's own tokenizer names (tokenizer_config.json of an export);
    # GPT-2's has no pad token, but a batch needs one.
    special_tokens: tuple[str, ...] = ("bos", "eos", "unk", "pad")

    def unrepresentable(self, config: ModelConfig) -> list[str]:
        """The settings of `config` that the family's transformers class cannot represent."""
        return unrepresentable(self.limits, config)

    def expand(self, config: ModelConfig) -> list[Rule]:
        """The rules with `{i}` filled in for every block (every layer, unless layers are shared)
        and `{d}` for every decoder block."""
        counts = {"i": config.n_blocks, "d": config.n_decoder_layers or config.n_layers}
        out = []
        for rule in self.rules(config):
            key = next((k for k in counts if "{" + k + "}" in rule.ours), None)
            if key is None:
                out.append(rule)
                continue
            for n in range(counts[key]):
                out.append(Rule(rule.ours.format(**{key: n}), tuple(t.format(**{key: n}) for t in rule.theirs),
                                rule.transpose, rule.split))
        return out

    def from_hf_state(self, state: dict[str, torch.Tensor], config: ModelConfig, source: str,
                      expected: set[str]) -> dict[str, torch.Tensor]:
        """HF tensors -> the stratalm names in `expected` (the model's own, each tensor once)."""
        import torch

        state = {k: v for k, v in state.items() if not any(k.endswith(s) for s in self.ignore)}
        out: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        for rule in self.expand(config):
            names = [self._find(state, name) for name in rule.theirs]
            if rule.ours not in expected:
                used.update(n for n in names if n is not None)  # a tied head: it is the embedding
                continue
            if any(n is None for n in names):
                missing = rule.theirs[[n is None for n in names].index(True)]
                raise CheckpointError(f"'{source}' has no weight '{missing}', which a {self.name} model needs.")
            parts = [state[n].T if rule.transpose else state[n] for n in names]
            out[rule.ours] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            used.update(names)
        extra = sorted(set(state) - used)
        if extra:
            raise CheckpointError(f"'{source}' has weights a {self.name} model does not use, e.g. '{extra[0]}'.")
        return out

    def to_hf_state(self, state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
        headless = self.architecture(config) == self.base_architecture
        out: dict[str, torch.Tensor] = {}
        for rule in self.expand(config):
            if rule.ours not in state:
                continue  # a tied head is stored once, as the embedding
            tensor = state[rule.ours]
            parts = tensor.split(rule.split(config), dim=0) if rule.split else [tensor]
            for name, part in zip(rule.theirs, parts):
                if headless:
                    name = next((name[len(p):] for p in self.hf_prefixes if name.startswith(p)), name)
                out[name] = (part.T if rule.transpose else part).contiguous()
        return out

    def _find(self, state: dict[str, torch.Tensor], name: str) -> Optional[str]:
        if name in state:
            return name
        for prefix in self.hf_prefixes:  # e.g. a BertModel saved without the "bert." of BertForPreTraining
            if name.startswith(prefix) and name[len(prefix):] in state:
                return name[len(prefix):]
        return None


# transformers' activation names (ACT2FN) and ours; gelu_python is exact gelu under another name.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "relu2": "relu2", "silu": "silu", "swish": "silu"}
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "relu2": "relu2", "silu": "silu"}


def activation_from_hf(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"the activation '{name}' is not supported; stratalm reads {', '.join(HF_ACTIVATIONS)}.")
    return HF_ACTIVATIONS[name]


def pick(values: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of `keys` present in an HF config (names changed across transformers versions)."""
    for key in keys:
        if values.get(key) is not None:
            return values[key]
    return default
