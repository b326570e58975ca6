"""The layer lens's named points and interventions, on tiny random models of every family:
watching changes nothing, interventions do exactly what they say, the logit lens ends where the
model does."""
from __future__ import annotations

import pytest
import torch

from stratalm.errors import ConfigError, InputTooLongError
from stratalm.families import preset
from stratalm.lens.attention import attention_maps, attention_statistics, head_statistics
from stratalm.lens.logit_lens import logit_lens
from stratalm.lens.points import point_names
from stratalm.lens.trace import (head_outputs, mean_heads, mean_neurons, patch, patching_sweep, text_inputs, trace,
                                 zero_heads, zero_neurons)
from stratalm.models import build_model
from stratalm.tokenize import train_char

FAMILIES = ["tiny", "llama-tiny", "bert", "roberta", "albert", "electra", "electra-generator", "t5"]
TEXT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def tokenizer():
    return train_char([TEXT, "a dog ran in the fog", "hello world"])


def tiny(family: str, tokenizer, **overrides):
    torch.manual_seed(0)
    values = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=48, vocab_size=tokenizer.vocab_size,
                  dropout=0.0, attention_dropout=0.0)
    if family.startswith("llama"):
        values["n_kv_heads"] = 2  # grouped queries
    model = build_model(preset(family, **{**values, **overrides})).eval()
    model.tokenizer = tokenizer
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_watching_every_point_changes_nothing(family, tokenizer):
    model = tiny(family, tokenizer)
    inputs = text_inputs(model, TEXT)
    with torch.no_grad():
        plain = model(**inputs.inputs).logits
    traced = trace(model, inputs, ["*"])
    assert torch.equal(traced.logits, plain)  # bitwise: the fused attention still makes the output
    assert set(traced.cache) == set(point_names(model))
    assert all(stack.tap is None for stack in (getattr(model, n, None) for n in ("stack", "encoder", "decoder")) if stack)
    pattern = next(v for k, v in traced.cache.items() if k.endswith("attn.pattern"))
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_at_the_last_layer_is_the_model_output(family, tokenizer):
    model = tiny(family, tokenizer)
    lens = logit_lens(model, text_inputs(model, TEXT), k=3)
    assert torch.equal(lens["logits"][-1], lens["model_logits"])
    assert lens["kl"][-1].abs().max() < 1e-6 and (lens["final_rank"][-1] == 0).all()
    assert lens["logits"].shape[0] == model.config.n_layers + 1
    assert lens["top_ids"].shape[-1] == min(3, lens["logits"].shape[-1])  # two classes for the rtd head
    assert not torch.allclose(lens["logits"][0], lens["logits"][-1])  # the embedding alone reads differently


def test_logit_lens_caps_the_logits_as_a_soft_capped_model_does(tokenizer):
    model = tiny("llama-tiny", tokenizer, logit_softcap=0.5)  # a cap small enough to bind on random weights
    lens = logit_lens(model, text_inputs(model, TEXT), k=3)
    assert torch.equal(lens["logits"][-1], lens["model_logits"])
    assert lens["logits"].abs().max() <= 0.5


def test_zero_ablating_a_head_equals_zeroing_its_slice_of_the_output_projection(tokenizer):
    for family, point, attention in (("tiny", "blocks.1.attn.z", lambda m: m.stack.blocks[1].attn),
                                     ("bert", "blocks.0.attn.z", lambda m: m.stack.blocks[0].attn),
                                     ("t5", "decoder.blocks.1.cross_attn.z", lambda m: m.decoder.blocks[1].cross_attn)):
        model = tiny(family, tokenizer)
        inputs = text_inputs(model, TEXT)
        ablated = trace(model, inputs, edits=zero_heads([2], point)).logits
        weight, width = attention(model).out.weight, model.config.dim_per_head
        with torch.no_grad():
            saved = weight[:, 2 * width:3 * width].clone()
            weight[:, 2 * width:3 * width] = 0
            reference = model(**inputs.inputs).logits
            weight[:, 2 * width:3 * width] = saved
            plain = model(**inputs.inputs).logits
        assert (ablated - reference).abs().max() < 1e-6, family
        assert (ablated - plain).abs().max() > 1e-4, family  # the head mattered


def test_zeroing_neurons_equals_zeroing_their_columns_of_the_down_projection(tokenizer):
    model = tiny("llama-tiny", tokenizer)
    inputs = text_inputs(model, TEXT)
    ablated = trace(model, inputs, edits=zero_neurons([0, 5, 7], "blocks.0.ff.hidden")).logits
    down = model.stack.blocks[0].ff.down.weight
    with torch.no_grad():
        saved = down[:, [0, 5, 7]].clone()
        down[:, [0, 5, 7]] = 0
        reference = model(**inputs.inputs).logits
        down[:, [0, 5, 7]] = saved
    assert (ablated - reference).abs().max() < 1e-6
    seen = trace(model, inputs, ["blocks.0.ff.hidden"])
    averaged = trace(model, inputs, ["blocks.0.ff.hidden"], edits=mean_neurons([3], "blocks.0.ff.hidden", seen))
    column = averaged["blocks.0.ff.hidden"][0, :, 3]
    assert torch.allclose(column, seen["blocks.0.ff.hidden"][0, :, 3].mean().expand_as(column))


@pytest.mark.parametrize("family", ["tiny", "bert", "t5"])
def test_patching_every_block_output_from_b_reproduces_b(family, tokenizer):
    model = tiny(family, tokenizer)
    a, b = text_inputs(model, "the cat sat on the mat"), text_inputs(model, "a dog ran in the fog!!")
    points = [p for p in point_names(model) if p.endswith("resid_post")]
    source = trace(model, b, points)
    edits = {}
    for point in points:
        edits.update(patch(point, source))
    patched = trace(model, a, edits=edits).logits
    assert torch.equal(patched, source.logits)
    assert not torch.equal(trace(model, a).logits, source.logits)


def test_patching_sweep_over_positions_and_heads(tokenizer):
    model = tiny("tiny", tokenizer)
    a, b = text_inputs(model, "the cat sat on the mat"), text_inputs(model, "the dog sat on the mat")
    target = tokenizer.encode("t")[0]
    metric = lambda out: float(out.logits[0, -1].log_softmax(-1)[target])  # noqa: E731
    sweep = patching_sweep(model, a, b, metric, over="position", point="resid_pre")
    assert sweep.values.shape == (2, len(a.ids["stack"]))
    assert sweep.values[0, 0] == pytest.approx(sweep.clean)  # position 0 is the same character in both texts
    changed = [i for i, (x, y) in enumerate(zip(a.ids["stack"], b.ids["stack"])) if x != y]
    assert all(abs(float(sweep.values[0, i]) - sweep.clean) > 1e-6 for i in changed)
    heads = patching_sweep(model, a, b, metric, over="head")
    assert heads.values.shape == (2, 4) and heads.columns[0] == "head 0"


def test_mean_ablation_and_per_head_outputs(tokenizer):
    model = tiny("bert", tokenizer)
    inputs = text_inputs(model, TEXT)
    reference = trace(model, inputs, ["blocks.0.attn.z", "blocks.0.attn_out"])
    per_head = head_outputs(model, reference["blocks.0.attn.z"], "blocks.0.attn.z")  # (B, T, heads, d)
    bias = model.stack.blocks[0].attn.out.bias
    assert torch.allclose(per_head.sum(2) + bias, reference["blocks.0.attn_out"], atol=1e-5)
    ablated = trace(model, inputs, ["blocks.0.attn.z"], edits=mean_heads([1], "blocks.0.attn.z", reference))
    z = ablated["blocks.0.attn.z"][0, 1]
    assert torch.allclose(z, z[0].expand_as(z)) and not torch.allclose(z, reference["blocks.0.attn.z"][0, 1])


def test_albert_reports_its_shared_block_per_depth(tokenizer):
    model = tiny("albert", tokenizer, n_layers=4)
    assert len(model.stack.blocks) == 1
    traced = trace(model, text_inputs(model, TEXT), ["blocks.*.resid_post"])
    assert list(traced.cache) == [f"blocks.{i}.resid_post" for i in range(4)]
    assert not torch.equal(traced["blocks.0.resid_post"], traced["blocks.3.resid_post"])


def test_attention_statistics_of_known_patterns(tokenizer):
    uniform = torch.full((1, 4, 4), 0.25)
    own = torch.eye(4)[None]
    stats = head_statistics(torch.cat([uniform, own]), [9, 1, 2, 9], {9})
    assert stats["entropy"][0] == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-5)
    assert stats["entropy"][1] == pytest.approx(0.0, abs=1e-5) and stats["self"][1] == pytest.approx(1.0)
    assert stats["distance"][0] == pytest.approx(1.25) and stats["distance"][1] == pytest.approx(0.0)
    assert stats["special"][0] == pytest.approx(0.5) and stats["special"][1] == pytest.approx(0.5)
    model = tiny("t5", tokenizer)
    inputs = text_inputs(model, TEXT, target="le chat")
    maps = attention_maps(model, inputs)
    assert maps["decoder"]["cross"].shape == (2, 4, len(inputs.ids["decoder"]), len(inputs.ids["encoder"]))
    assert attention_statistics(model, inputs, maps)["encoder"]["entropy"].shape == (2, 4)


def test_bad_input_says_what_is_valid(tokenizer):
    model = tiny("tiny", tokenizer)
    inputs = text_inputs(model, TEXT)
    with pytest.raises(ConfigError, match=r"blocks\.\{0-1\}\.attn\.pattern"):
        trace(model, inputs, ["blocks.7.attn.pattern"])
    with pytest.raises(InputTooLongError, match="48"):
        text_inputs(model, "the cat " * 20)
    bare = tiny("bert", tokenizer, mlm_head=False, nsp_head=False)
    with pytest.raises(ConfigError, match="pooler"):
        logit_lens(bare, text_inputs(bare, TEXT))


def test_pretraining_writes_the_lens_dynamics_and_plot_draws_them(char_data, tmp_path):
    import json

    from conftest import run_cli

    out = tmp_path / "run"
    done = run_cli("pretrain", "--data", char_data, "--out", out, "--max-steps", "20", "--model", "tiny",
                   "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=32",
                   "train.batch_size=8", "train.eval_every=0", "train.progress=false", "lens.every=10", "lens.windows=4")
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lens = [r for r in records if "lens.kl.0" in r]
    assert [r["step"] for r in lens] == [10, 20]
    assert lens[0]["lens.kl.2"] == 0 and lens[0]["lens.kl.0"] > 0  # the last depth is the model's own output
    assert "lens.cka_prev.0" not in lens[0] and 0 < lens[1]["lens.cka_prev.1"] <= 1 + 1e-6
    assert all(0 < r["lens.entropy.0"] < 4 for r in lens)
    plotted = run_cli("plot", out)
    assert plotted.returncode == 0 and (out / "curves.png").stat().st_size > 10_000
