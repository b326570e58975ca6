"""models/anatomy.py is the one table of a model's named parts: it must match every family's real
module tree, so renaming or adding a submodule fails here until the table follows."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stratalm.families import preset
from stratalm.layers import Block
from stratalm.layers.norms import RMSNorm
from stratalm.models import build_model
from stratalm.models import anatomy
from stratalm.models.encoder import EncoderModel
from stratalm.models.replaced_token import GeneratorDiscriminator, generator_config
from stratalm.models.stack import init_weights

SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_ff=64, vocab_size=64, max_seq_len=16)
# Every family, with every head switched on somewhere (a model has a classifier or a token classifier).
FAMILIES = {
    "tiny": {},
    "gpt2-untied": dict(tie_embeddings=False),
    "llama-tiny": dict(n_kv_heads=1),
    "bert": dict(n_labels=3, qa_head=True, rtd_head=True),
    "roberta": dict(n_token_labels=5),
    "albert": dict(embedding_dim=16, n_labels=2),
    "electra": dict(embedding_dim=16, n_labels=2),
    "electra-generator": dict(embedding_dim=16, d_model=16, n_heads=1),
    "t5": dict(head_dim=16, n_decoder_layers=3),
    "t5-v1_1-small": dict(head_dim=16),
    "xlnet": dict(n_labels=2),
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    base = "tiny" if name == "gpt2-untied" else name
    return build_model(preset(base, **{**SMALL, **FAMILIES[name]}))


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request) -> nn.Module:
    return build(request.param)


def electra_pair() -> GeneratorDiscriminator:
    discriminator = build("electra")
    return GeneratorDiscriminator(discriminator, EncoderModel(generator_config(discriminator.config, 0.5)))


def owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def test_every_parameter_is_a_known_part(model):
    for name, _ in model.named_parameters():
        part = anatomy.part_of(name)
        assert part.kind != "other", name
        if part.kind == "block":
            assert part.sublayer is not None, name
            assert name.startswith(anatomy.module_path(part.stack, part.block, part.module) + "."), name
        if part.kind == "head":
            assert part.head in anatomy.HEAD_NAMES and part.label != "other"


def test_the_pair_prefixes_its_inner_models():
    pair = electra_pair()
    parts = {n: anatomy.part_of(n) for n, _ in pair.named_parameters()}
    assert all(p.kind != "other" and p.model in anatomy.INNER_MODELS for p in parts.values())
    assert parts["discriminator.stack.tok_embed.weight"].kind == "embedding"
    assert parts["generator.stack.blocks.1.ff.up.weight"].stack_path == "generator.stack"
    assert list(anatomy.stacks(pair)) == ["discriminator.stack", "generator.stack"]
    assert set(anatomy.heads(pair)) == {"discriminator.rtd_head", "discriminator.classifier", "generator.mlm_head"}
    # The shared tables count once, under the discriminator.
    tables = [n for n in parts if anatomy.is_embedding_table(n)]
    assert tables and all(n.startswith("discriminator.") for n in tables)


def test_the_tables_are_the_real_attributes():
    """Block's submodules are exactly BLOCK_SUBLAYERS, a stack's parameter-holding children are
    STACK_PARTS, and a model's children are stacks and heads: a rename fails here."""
    cfg = preset("tiny", **SMALL)
    assert {n for n, _ in Block(cfg, cross=True).named_children()} == set(anatomy.SUBLAYERS)
    assert {n for n, _ in Block(cfg).named_children()} == {s.attr for s in anatomy.BLOCK_SUBLAYERS if not s.cross}
    for s in anatomy.BLOCK_SUBLAYERS:
        if s.output is not None:  # the residual-output projection is a real linear layer
            assert isinstance(getattr(getattr(Block(cfg, cross=True), s.attr), s.output), nn.Linear)
    seen_stack_parts, seen_heads = set(), set()
    for name in FAMILIES:
        model = build(name)
        for stack_name, stack in anatomy.stacks(model).items():
            assert stack_name in anatomy.STACK_NAMES and stack is getattr(model, stack_name)
            holding = {n for n, m in stack.named_children() if any(True for _ in m.parameters())}
            assert holding <= set(anatomy.STACK_PARTS), holding - set(anatomy.STACK_PARTS)
            seen_stack_parts |= holding
        assert {n for n, _ in model.named_children()} == set(anatomy.stacks(model)) | set(anatomy.heads(model))
        seen_heads |= set(anatomy.heads(model))
    assert seen_stack_parts == set(anatomy.STACK_PARTS)  # every entry of the table is real somewhere
    assert seen_heads == set(anatomy.HEAD_NAMES)


def test_block_counts_and_module_paths(model):
    counts = anatomy.block_counts(model)
    assert anatomy.block_count(model) == sum(counts.values()) == sum(len(s.blocks) for s in anatomy.stacks(model).values())
    for stack, n in counts.items():
        for sub in anatomy.SUBLAYERS:
            path = anatomy.module_path(stack, n - 1, sub)
            part = anatomy.part_of(path)
            assert (part.stack, part.block, part.module) == (stack, n - 1, sub)
            if hasattr(model.get_submodule(anatomy.module_path(stack, n - 1)), sub):
                model.get_submodule(path)  # resolves
    with pytest.raises(ValueError):
        anatomy.module_path("stack", 0, "mlp")


def expected_role(model: nn.Module, name: str, residual: set[int]) -> str:
    """What a parameter is, from module types alone (no names)."""
    module, leaf = owner(model, name), name.rpartition(".")[2]
    if leaf == "bias":
        return "bias"
    if isinstance(module, (nn.LayerNorm, RMSNorm)):
        return "norm"
    return "residual" if id(module) in residual else "other"


def test_init_roles_agree_with_the_module_tree(model):
    residual = set()
    for stack in anatomy.stacks(model).values():
        for block in stack.blocks:
            for s in anatomy.BLOCK_SUBLAYERS:
                if s.output is not None and hasattr(block, s.attr):
                    residual.add(id(getattr(getattr(block, s.attr), s.output)))
    assert residual
    for name, _ in model.named_parameters():
        assert anatomy.init_role(name) == expected_role(model, name, residual), name
        # Names relative to a stack or a block read the same (init_weights' old suffix rules did too).
        assert anatomy.init_role(name.split(".", 1)[1]) == anatomy.init_role(name)


def test_init_weights_follows_the_roles():
    cfg = preset("tiny", **{**SMALL, "n_layers": 4, "d_model": 64, "d_ff": 256})
    model = build_model(cfg)
    with torch.no_grad():
        init_weights(model, cfg)
    model.requires_grad_(False)
    residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for name, param in model.named_parameters():
        role = anatomy.init_role(name)
        if role == "bias":
            assert not param.any(), name
        elif role == "norm":
            assert bool((param == 1).all()), name
        elif role == "residual":
            assert abs(float(param.std()) / residual_std - 1) < 0.1, name
        else:
            assert abs(float(param.std()) / cfg.init_std - 1) < 0.1, name


def test_depth_runs_bottom_up():
    bert = build("bert")
    counts = anatomy.block_counts(bert)
    assert counts == {"stack": 2}
    d = {n: anatomy.depth(n, counts) for n, _ in bert.named_parameters()}
    assert d["stack.tok_embed.weight"] == d["stack.embed_norm.weight"] == d["stack.positions.weight"] == 0
    assert d["stack.blocks.0.attn.qkv.weight"] == 1 and d["stack.blocks.1.ff_norm.weight"] == 2
    assert d["classifier.out.weight"] == d["pooler.dense.weight"] == anatomy.top_depth(counts) == 3

    t5 = build("t5")
    counts = anatomy.block_counts(t5)
    assert list(counts.items()) == [("encoder", 2), ("decoder", 3)]  # bottom-up
    d = {n: anatomy.depth(n, counts) for n, _ in t5.named_parameters()}
    assert d["encoder.tok_embed.weight"] == 0
    assert [d[f"encoder.blocks.{i}.attn.qkv.weight"] for i in range(2)] == [1, 2]
    assert [d[f"decoder.blocks.{i}.cross_attn.kv.weight"] for i in range(3)] == [3, 4, 5]
    assert d["encoder.final_norm.weight"] == d["decoder.rel_bias.weight"] == anatomy.top_depth(counts) == 6
    untied = build("t5-v1_1-small")
    assert anatomy.depth("lm_head.weight", anatomy.block_counts(untied)) == anatomy.top_depth(anatomy.block_counts(untied))


@pytest.mark.parametrize("name, label", [
    ("stack.tok_embed.weight", "embeddings"), ("stack.embed_proj.bias", "embeddings"),
    ("stack.blocks.3.attn_norm.weight", "block norms"), ("stack.blocks.0.ff.down.weight", "feed-forward"),
    ("encoder.rel_bias.weight", "encoder position bias"), ("decoder.blocks.1.cross_attn.q.weight", "decoder cross-attention"),
    ("decoder.final_norm.weight", "decoder final norm"), ("mlm_head.decoder.weight", "MLM head"),
    ("token_classifier.out.bias", "token classifier"), ("lm_head.weight", "LM head"),
    ("generator.stack.blocks.0.attn.out.weight", "generator attention"), ("something.else", "other"),
])
def test_labels_are_what_info_prints(name, label):
    assert anatomy.part_of(name).label == label
