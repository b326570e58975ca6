"""A model's anatomy: the one table of its named parts, and what a parameter's name says about it.

Every model here is the same tree: a stack (`stack` in decoders and encoders; `encoder` and
`decoder` in T5) holds the embeddings, a list of blocks and a final norm; each block holds
attention, an optional cross-attention and a feed-forward layer, each with its norm; heads sit
next to the stacks. ELECTRA pretraining wraps two such models (`discriminator.`, `generator.`).

Weight init (roles), partial fine-tuning (what is an embedding, which block, layer-wise LR depth),
`stratalm info` (labels) and the lens (module paths of hook points) all read names through this
module, so renaming a submodule means changing one table here — and tests/test_anatomy.py fails
until the table and the real module tree agree again.

    part_of("decoder.blocks.1.cross_attn.kv.weight")
    -> Part(kind="block", stack="decoder", module="cross_attn", block=1, sublayer="cross-attention")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from torch import nn

# -- the tables ------------------------------------------------------------------------------------

# Attribute names of a model that hold a TransformerStack, bottom-up: an encoder feeds its decoder.
STACK_NAMES = ("stack", "encoder", "decoder")
# Inner models of a pair (ELECTRA pretraining, models/replaced_token.py); their names prefix the rest.
INNER_MODELS = ("discriminator", "generator")

# Embedding parts of a stack. The tables are what parameter counts call "embeddings" and what the
# ELECTRA pair shares (with the norm); the norm and the projection (ALBERT, ELECTRA: embedding
# width -> d_model) are still embeddings for freezing and layer decay, and so is XLNet's mask_emb
# (the learned vector its query stream starts from).
EMBEDDING_TABLES = ("tok_embed", "positions", "token_types")
EMBEDDINGS = EMBEDDING_TABLES + ("embed_norm", "embed_proj", "mask_emb")

# Every parameter-holding attribute of a TransformerStack -> its kind. (`rotary` holds only
# non-persistent buffers, so no parameter name starts with it.)
STACK_PARTS: dict[str, str] = {
    **{name: "embedding" for name in EMBEDDINGS},
    "rel_bias": "position_bias",  # T5: one relative-position table per stack, shared by its blocks
    "blocks": "block",
    "final_norm": "final_norm",
}


@dataclass(frozen=True)
class Sublayer:
    """A submodule of a Block. `output` is the projection that writes into the residual stream
    (initialised smaller, see init_role); `cross` ones exist only in a decoder that attends to an
    encoder."""

    attr: str
    kind: str  # attention | cross-attention | feed-forward | norm
    output: Optional[str] = None
    cross: bool = False


# The submodules of layers/block.py's Block, in pre-norm order (each norm before its sublayer).
# Hook points of the lens are named from this table (stack.blocks.3.attn...).
BLOCK_SUBLAYERS: tuple[Sublayer, ...] = (
    Sublayer("attn_norm", "norm"),
    Sublayer("attn", "attention", output="out"),
    Sublayer("cross_norm", "norm", cross=True),
    Sublayer("cross_attn", "cross-attention", output="out", cross=True),
    Sublayer("ff_norm", "norm"),
    Sublayer("ff", "feed-forward", output="down"),
)
SUBLAYERS: dict[str, Sublayer] = {s.attr: s for s in BLOCK_SUBLAYERS}

# Heads: attribute of the model -> the label `stratalm info` prints.
HEADS: dict[str, str] = {
    "lm_head": "LM head", "mlm_head": "MLM head", "pooler": "pooler", "nsp_head": "next-sentence head",
    "rtd_head": "replaced-token head", "classifier": "classifier", "token_classifier": "token classifier",
    "qa_head": "span QA head",
}
HEAD_NAMES = tuple(HEADS)

# Every norm submodule anywhere in a model: the block's, the stack's, the MLM head's own `norm`, and
# attention's QK-norm (`q_norm`, `k_norm`).
NORM_MODULES = frozenset({s.attr for s in BLOCK_SUBLAYERS if s.kind == "norm"}
                         | {"embed_norm", "final_norm", "norm", "q_norm", "k_norm"})

_STACK_LABELS = {"stack": "", "encoder": "encoder ", "decoder": "decoder "}
_KIND_LABELS = {"embedding": "embeddings", "position_bias": "position bias", "final_norm": "final norm"}
_SUBLAYER_LABELS = {"attention": "attention", "cross-attention": "cross-attention", "feed-forward": "feed-forward",
                    "norm": "block norms"}

# -- reading a parameter's name ----------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """Where a parameter sits. `module` is the attribute it lives under: a stack part (tok_embed,
    rel_bias, final_norm, ...), a block's submodule (attn, ff_norm, ...) or a head's name."""

    kind: str  # embedding | block | final_norm | position_bias | head | other
    model: str = ""  # "" or the inner model of a pair: discriminator | generator
    stack: Optional[str] = None  # stack | encoder | decoder
    module: Optional[str] = None
    block: Optional[int] = None  # index into the stack's `blocks`
    sublayer: Optional[str] = None  # attention | cross-attention | feed-forward | norm
    head: Optional[str] = None

    @property
    def stack_path(self) -> Optional[str]:
        """The stack's module path from the model's root: `stack`, `encoder`, `generator.stack`."""
        return None if self.stack is None else _join(self.model, self.stack)

    @property
    def label(self) -> str:
        """The component `stratalm info` counts this parameter under ("decoder cross-attention")."""
        prefix = self.model + " " if self.model else ""
        if self.kind == "head":
            return prefix + HEADS[self.head]
        if self.stack is None:
            return prefix + "other"
        prefix += _STACK_LABELS[self.stack]
        if self.kind == "block":
            return prefix + _SUBLAYER_LABELS.get(self.sublayer, "other")
        return prefix + _KIND_LABELS.get(self.kind, "other")


def part_of(name: str) -> Part:
    """The part a parameter (or module) name from the model's root belongs to; kind "other" when
    the tables do not know it (tests/test_anatomy.py checks that no real parameter is "other")."""
    path = name.split(".")
    model = ""
    if len(path) > 1 and path[0] in INNER_MODELS:
        model, path = path[0], path[1:]
    top = path[0]
    if top in HEADS:
        return Part("head", model, module=top, head=top)
    if top not in STACK_NAMES or len(path) < 2:
        return Part("other", model)
    attr = path[1]
    kind = STACK_PARTS.get(attr, "other")
    if kind != "block":
        return Part(kind, model, top, attr if kind != "other" else None)
    if len(path) < 3 or not path[2].isdigit():
        return Part("other", model, top)
    inner = path[3] if len(path) > 3 else None
    sublayer = SUBLAYERS.get(inner)
    return Part("block", model, top, inner, int(path[2]), sublayer.kind if sublayer is not None else None)


def module_path(stack: str, block: Optional[int] = None, module: Optional[str] = None, model: str = "") -> str:
    """The module path of a stack, one of its blocks, or a block's submodule (the inverse of
    part_of): module_path("decoder", 2, "cross_attn") -> "decoder.blocks.2.cross_attn"."""
    if stack not in STACK_NAMES:
        raise ValueError(f"unknown stack {stack!r}; stacks are {', '.join(STACK_NAMES)}")
    if module is not None and module not in SUBLAYERS:
        raise ValueError(f"unknown block submodule {module!r}; they are {', '.join(SUBLAYERS)}")
    parts = [stack] + ([] if block is None else ["blocks", str(block)]) + ([] if module is None else [module])
    return _join(model, ".".join(parts))


def is_embedding(name: str) -> bool:
    return part_of(name).kind == "embedding"


def is_embedding_table(name: str) -> bool:
    """Token, position and segment tables only (what parameter counts call embeddings)."""
    part = part_of(name)
    return part.kind == "embedding" and part.module in EMBEDDING_TABLES


def init_role(name: str) -> str:
    """How weight init treats a parameter: "bias" (zeros), "norm" (a norm's gain: ones),
    "residual" (a projection that writes into the residual stream: a smaller normal, GPT-2) or
    "other" (the normal draw). Read from the end of the name, so it holds for names relative to any
    module (a model, a stack, a block), as weight init has always matched them."""
    path = name.split(".")
    if path[-1] == "bias":
        return "bias"
    if any(p in NORM_MODULES for p in path):
        return "norm"
    if len(path) >= 3 and path[-1] == "weight":
        sublayer = SUBLAYERS.get(path[-3])
        if sublayer is not None and sublayer.output == path[-2]:
            return "residual"
    return "other"


# -- reading a model -------------------------------------------------------------------------------


def _models(model: nn.Module) -> dict[str, nn.Module]:
    """The model itself, or the inner models of a pair, by name prefix."""
    inner = {n: getattr(model, n) for n in INNER_MODELS if isinstance(getattr(model, n, None), nn.Module)}
    return inner or {"": model}


def stacks(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> TransformerStack, bottom-up (an encoder before its decoder)."""
    found = {}
    for prefix, inner in _models(model).items():
        for name in STACK_NAMES:
            stack = getattr(inner, name, None)
            # Duck-typed: importing TransformerStack here would make stack.py and this module circular.
            if isinstance(getattr(stack, "blocks", None), nn.ModuleList):
                found[_join(prefix, name)] = stack
    return found


def block_counts(model: nn.Module) -> dict[str, int]:
    """Module path of each stack -> how many distinct blocks it holds (ALBERT: 1, shared by all layers)."""
    return {name: len(stack.blocks) for name, stack in stacks(model).items()}


def block_count(model: nn.Module) -> int:
    """Distinct blocks in all stacks together: the L of layer-wise LR decay."""
    return sum(block_counts(model).values())


def heads(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> head, for every head present in the model or its inner models."""
    found = {}
    for prefix, inner in _models(model).items():
        for name in HEAD_NAMES:
            head = getattr(inner, name, None)
            if isinstance(head, nn.Module):
                found[_join(prefix, name)] = head
    return found


def depth(name: str, blocks: Mapping[str, int]) -> int:
    """Layer-wise LR decay's depth of a parameter: 0 for embeddings, 1..L for blocks bottom-up (an
    encoder's below its decoder's), L+1 for the rest (final norms, position bias, heads).
    `blocks` is block_counts(model)."""
    part = part_of(name)
    if part.kind == "embedding":
        return 0
    if part.kind != "block":
        return top_depth(blocks)
    below = blocks.get(_join(part.model, "encoder"), 0) if part.stack == "decoder" else 0
    return part.block + 1 + below


def top_depth(blocks: Mapping[str, int]) -> int:
    """The depth of everything above the last block: L+1."""
    return sum(blocks.values()) + 1


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
