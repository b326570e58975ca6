"""Run a model with a lens: capture the points asked for, intervene at any point (ablate heads or
neurons, patch in activations of another input), and sweep a patch over layers x positions or
layers x heads for a heat map of its effect."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError, InputTooLongError, StratalmError
from ..models.output import ModelOutput
from ..tasks.common import encode_texts
from .points import Edit, Hooks, attached, named_stacks, resolve

Inputs = dict[str, torch.Tensor]


@dataclass
class Trace:
    """A forward's output and the captured points by name."""

    outputs: ModelOutput
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.cache:
            raise ConfigError(f"point '{name}' was not captured; captured: {', '.join(self.cache) or 'none'}.")
        return self.cache[name]

    @property
    def logits(self) -> torch.Tensor:
        return self.outputs.logits


@dataclass
class TextInputs:
    """Model inputs for one text, and the tokens of each stack (for labels in figures)."""

    inputs: Inputs
    tokens: dict[str, list[str]]
    ids: dict[str, list[int]]


def text_inputs(model: nn.Module, text: str, text_pair: Optional[str] = None, target: Optional[str] = None) -> TextInputs:
    """Tokenize `text` (and a second segment) as the model's family expects: encoders with their
    [CLS] ... [SEP] template, decoders as plain text; T5's encoder reads the text and its decoder
    the `target` (default: the text itself) after the decoder start token."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise StratalmError("this model has no tokenizer; load it from a folder that holds tokenizer.json.")
    config = model.config
    limit = config.max_seq_len - (config.pad_token_id + 1 if config.padding_positions else 0)
    if config.stack == "decoder":
        if text_pair is not None:
            raise ConfigError("a decoder reads one text; drop --text-pair or join the two texts.")
        ids = tokenizer.encode(text)
        stack = {"stack": ids}
    else:
        ids, types = encode_texts(tokenizer, [text], [text_pair] if text_pair is not None else None, 10 ** 9)[0]
        stack = {"stack": ids} if config.stack == "encoder" else {"encoder": ids}
    if config.stack == "encoder-decoder":
        stack["decoder"] = [config.decoder_start_token_id] + tokenizer.encode(target if target is not None else text)
    for name, row in stack.items():
        if not row:
            raise ConfigError("the text gives no tokens; give some text to inspect.")
        if len(row) > limit:
            raise InputTooLongError(f"the text is {len(row)} tokens ({name}), more than the model's context of {limit}; "
                                    f"shorten it.")
    as_tensor = {name: torch.tensor([row]) for name, row in stack.items()}
    if config.stack == "encoder-decoder":
        inputs = {"input_ids": as_tensor["encoder"], "decoder_input_ids": as_tensor["decoder"]}
    else:
        inputs = {"input_ids": as_tensor["stack"]}
        if config.stack == "encoder" and config.type_vocab_size:
            inputs["token_type_ids"] = torch.tensor([types])
    tokens = {name: [tokenizer.backend.id_to_token(i) or f"<{i}>" for i in row] for name, row in stack.items()}
    return TextInputs(inputs, tokens, stack)


def trace(model: nn.Module, inputs: Union[Inputs, TextInputs], points: Iterable[str] = (),
          edits: Optional[dict[str, Edit]] = None, keep_grad: bool = False) -> Trace:
    """Run `model` on `inputs`, keeping only the points named (or matched by `*` patterns) and
    passing each point in `edits` through its function."""
    if isinstance(inputs, TextInputs):
        inputs = inputs.inputs
    captured = resolve(model, points) if points else []
    edit_names = resolve(model, list(edits or {}))
    if len(edit_names) != len(edits or {}):
        raise ConfigError("edits take exact point names, not patterns; list each point.")
    device = next(model.parameters()).device
    hooks = Hooks(captured, edits, keep_grad)
    with attached(model, hooks), torch.set_grad_enabled(keep_grad and torch.is_grad_enabled()):
        outputs = model(**{k: v.to(device) for k, v in inputs.items()})
    return Trace(outputs, hooks.cache)


# -- interventions (functions for `edits`) ---------------------------------------------------------
def zero_heads(heads: Iterable[int], point: str) -> dict[str, Edit]:
    """Zero the output of `heads` at an attention `z` point (e.g. "blocks.3.attn.z"): the head
    then adds nothing to the residual stream (the same as zeroing its columns of the output
    projection)."""
    chosen = list(heads)

    def edit(z: torch.Tensor) -> torch.Tensor:  # (B, heads, T, head_dim)
        z = z.clone()
        z[:, chosen] = 0
        return z

    return {point: edit}


def mean_heads(heads: Iterable[int], point: str, reference: Trace) -> dict[str, Edit]:
    """Replace `heads` at a `z` point by their mean output over the examples and positions of a
    `reference` trace that captured that point (mean ablation)."""
    chosen, mean = list(heads), reference[point].mean(dim=(0, 2), keepdim=True)  # (1, heads, 1, head_dim)

    def edit(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[:, chosen] = mean[:, chosen].to(z.dtype)
        return z

    return {point: edit}


def zero_neurons(neurons: Iterable[int], point: str) -> dict[str, Edit]:
    """Zero feed-forward neurons at a `ff.hidden` point (B, T, d_ff)."""
    chosen = list(neurons)

    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[..., chosen] = 0
        return h

    return {point: edit}


def mean_neurons(neurons: Iterable[int], point: str, reference: Trace) -> dict[str, Edit]:
    """Replace feed-forward neurons at a `ff.hidden` point by their mean activation over the examples
    and positions of a `reference` trace that captured that point (mean ablation)."""
    chosen, mean = list(neurons), reference[point].mean(dim=(0, 1))  # (d_ff,)

    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[..., chosen] = mean[chosen].to(h.dtype)
        return h

    return {point: edit}


def patch(point: str, source: Trace, positions: Optional[Iterable[int]] = None,
          heads: Optional[Iterable[int]] = None) -> dict[str, Edit]:
    """Activation patching: at `point`, the activation of another input (`source` captured it),
    at every position or only `positions` (and, at a `z` point, only `heads`)."""
    value = source[point]
    where = list(positions) if positions is not None else None
    chosen = list(heads) if heads is not None else None

    def edit(x: torch.Tensor) -> torch.Tensor:
        if x.shape != value.shape:
            raise ConfigError(f"cannot patch '{point}': its shape is {tuple(x.shape)} here and {tuple(value.shape)} "
                              f"in the source; patch inputs of the same length.")
        if where is None and chosen is None:
            return value.to(x.dtype)
        x = x.clone()
        head_axis = x.dim() == 4  # (B, heads, T, .) points: positions are axis 2
        index: list[Any] = [slice(None)] * x.dim()
        if chosen is not None:
            index[1] = chosen
        if where is not None:
            index[2 if head_axis else 1] = where
        x[tuple(index)] = value[tuple(index)].to(x.dtype)
        return x

    return {point: edit}


@dataclass
class Sweep:
    """A patching heat map: `values[row, column]` is the metric with one patch applied;
    `clean` and `source` are the metric of the unpatched base and source runs."""

    values: torch.Tensor
    rows: list[str]
    columns: list[str]
    clean: float
    source: float


def patching_sweep(model: nn.Module, inputs: Union[Inputs, TextInputs], source_inputs: Union[Inputs, TextInputs],
                   metric: Callable[[ModelOutput], float], over: str = "position", point: str = "resid_pre",
                   stack: str = "") -> Sweep:
    """Patch the source run's activation into the base run, one (layer, position) or (layer, head)
    at a time, and measure `metric` on the patched output. `point` is a block point
    ("resid_pre", "resid_post", "attn_out", ... for positions; heads always use "attn.z")."""
    if over not in ("position", "head"):
        raise ConfigError(f"a patching sweep goes over 'position' or 'head'; got '{over}'.")
    stacks = named_stacks(model)
    if stack not in stacks:
        raise ConfigError(f"no stack '{stack}'; this model's stacks are: {', '.join(repr(s) for s in stacks)}.")
    n_layers = len(stacks[stack].layer_plan)
    block_point = "attn.z" if over == "head" else point
    names = [f"{stack}blocks.{layer}.{block_point}" for layer in range(n_layers)]
    source = trace(model, source_inputs, names)
    clean = trace(model, inputs, names)
    if over == "head":
        columns = [f"head {h}" for h in range(clean[names[0]].shape[1])]
    else:
        columns = [str(t) for t in range(clean[names[0]].shape[1])]
    values = torch.zeros(n_layers, len(columns))
    for layer, name in enumerate(names):
        for column in range(len(columns)):
            edit = patch(name, source, heads=[column]) if over == "head" else patch(name, source, positions=[column])
            values[layer, column] = float(metric(trace(model, inputs, edits=edit).outputs))
    return Sweep(values, [f"layer {i}" for i in range(n_layers)], columns, float(metric(clean.outputs)),
                 float(metric(source.outputs)))


def head_outputs(model: nn.Module, z: torch.Tensor, point: str) -> torch.Tensor:
    """Each head's own contribution to the residual stream at a `z` point: (B, T, heads, d_model),
    whose sum over heads (plus the projection's bias) is the attention output."""
    match = re.match(r"^(.*?)blocks\.(\d+)\.(attn|cross_attn)\.z$", point)
    stacks = named_stacks(model)
    if match is None or match.group(1) not in stacks:
        raise ConfigError(f"'{point}' is not an attention z point of this model (e.g. blocks.0.attn.z).")
    stack = stacks[match.group(1)]
    block = stack.blocks[stack.layer_plan[int(match.group(2))]]  # ALBERT: the block shared at that depth
    out = getattr(block, match.group(3)).out  # the output projection (d_model, heads x head_dim)
    B, H, T, D = z.shape
    weight = out.weight.view(out.weight.shape[0], H, D)  # (d_model, heads, head_dim)
    return torch.einsum("bhtd,mhd->bthm", z, weight.to(z.dtype))
