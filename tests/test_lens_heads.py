"""Head importance (Michel et al. 2019) and pruning: a head that writes nothing has importance 0,
the gate's gradient is the loss's derivative (finite differences agree), the model is left as it
was, every family runs, and pruning masks exactly the heads it says."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stratalm.cli import main
from stratalm.errors import ConfigError, DataError
from stratalm.lens.heads import finetuned_objective, head_groups, head_importance, pruning_curve, text_objective
from stratalm.lens.points import Hooks, attached
from stratalm.tasks import evaluate, load_finetuned
from stratalm.tokenize import train_char
from test_lens import tiny
from test_tasks_framework import finetune_args, toy  # noqa: F401  (the toy fixture)

TEXTS = ["the cat sat on the mat", "a dog ran in the fog", "hello world, the cat said", "the fog sat on a dog"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: two threads only add synchronisation, which a busy shared machine makes 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return train_char(TEXTS)


def silence(model, layer: int, head: int, kind: str = "attn") -> None:
    """Zero the head's columns of the output projection: it then adds nothing to the stream."""
    width = model.config.dim_per_head
    with torch.no_grad():
        getattr(model.stack.blocks[layer], kind).out.weight[:, head * width:(head + 1) * width] = 0


def test_a_head_whose_output_projection_is_zero_has_importance_zero(tokenizer):
    model = tiny("tiny", tokenizer)
    silence(model, 1, 2)
    objective = text_objective(model, TEXTS, batch_size=2)
    for normalize in (False, True):
        scores = head_importance(model, objective.batches, objective.loss, normalize=normalize)["attn"]
        assert scores.shape == (2, 4)
        assert scores[1, 2] == 0.0
        others = torch.ones(2, 4, dtype=torch.bool)
        others[1, 2] = False
        assert (scores[others] > 1e-6).all()
    assert torch.allclose(scores.norm(dim=-1), torch.ones(2))  # normalised per layer


def test_importance_is_the_gate_derivative_by_finite_differences(tokenizer):
    model = tiny("llama-tiny", tokenizer).double()
    objective = text_objective(model, TEXTS[:1])
    assert len(objective.batches) == 1 and objective.batches[0]["input_ids"].shape[0] == 1  # one example
    scores = head_importance(model, objective.batches, objective.loss, normalize=False)["attn"]
    eps = 1e-4
    for layer, head in ((0, 1), (1, 3)):
        def loss_at(gate: float) -> float:
            def edit(z):
                z = z.clone()
                z[:, head] = z[:, head] * gate
                return z
            with attached(model, Hooks(edits={f"blocks.{layer}.attn.z": edit})), torch.no_grad():
                return float(objective.loss(model, objective.batches[0]))
        estimate = abs(loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
        assert estimate > 1e-4
        assert float(scores[layer, head]) == pytest.approx(estimate, rel=1e-5)


def test_importance_is_the_mean_over_examples_of_the_absolute_derivative(tokenizer):
    """|dL/dxi| is taken per example (Michel's E_x), not of the batch's summed gradient."""
    model = tiny("tiny", tokenizer)
    objective = text_objective(model, TEXTS[:2], batch_size=2)

    def per_example_mean(model, batch):  # a loss that averages over examples, not tokens
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token = F.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=-100, reduction="none")
        return (token.sum(1) / (batch["labels"] != -100).sum(1)).mean()

    both = head_importance(model, objective.batches, per_example_mean, normalize=False)["attn"]
    alone = [head_importance(model, text_objective(model, [t]).batches, per_example_mean, normalize=False)["attn"]
             for t in TEXTS[:2]]
    assert torch.allclose(both, (alone[0] + alone[1]) / 2, rtol=1e-4, atol=1e-7)
    # one gate per head shared by the batch (the paper's code) gives |mean| <= mean |.|, and differs here
    shared = [torch.ones(4, requires_grad=True) for _ in range(2)]
    edits = {f"blocks.{i}.attn.z": (lambda g: lambda z: z * g[:, None, None])(shared[i]) for i in range(2)}
    with attached(model, Hooks(edits=edits)):
        grads = torch.autograd.grad(per_example_mean(model, objective.batches[0]), shared)
    batch_level = torch.stack(grads).abs()
    assert (batch_level <= both + 1e-7).all() and (both - batch_level).max() > 1e-4


def test_the_model_is_left_exactly_as_it_was(tokenizer):
    model = tiny("tiny", tokenizer).train()  # dropout is 0: outputs are deterministic in train mode too
    model.stack.blocks[0].ff.down.weight.requires_grad_(False)  # a frozen part stays frozen
    objective = text_objective(model, TEXTS, batch_size=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():
        logits = model(**{k: v for k, v in objective.batches[0].items() if k != "labels"}).logits
    head_importance(model, objective.batches, objective.loss)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert all(stack.tap is None for stack in (model.stack,))
    with torch.no_grad():
        assert torch.equal(model(**{k: v for k, v in objective.batches[0].items() if k != "labels"}).logits, logits)


def masked_reconstruction(model, batch):
    """An MLM-style loss for encoders: every third token hidden behind [MASK], predicted back."""
    ids = batch["input_ids"]
    hidden = torch.zeros_like(ids, dtype=torch.bool)
    hidden[:, ::3] = True
    logits = model(input_ids=ids.masked_fill(hidden, model.tokenizer.mask_id)).logits
    if logits.dim() == 2:  # ELECTRA's discriminator: was each token replaced? (the masked ones were)
        return F.binary_cross_entropy_with_logits(logits, hidden.float())
    return F.cross_entropy(logits[hidden], ids[hidden])


@pytest.mark.parametrize("family, groups", [
    ("tiny", ["attn"]), ("llama-tiny", ["attn"]), ("bert", ["attn"]), ("roberta", ["attn"]), ("albert", ["attn"]),
    ("electra", ["attn"]), ("electra-generator", ["attn"]),
    ("t5", ["encoder.attn", "decoder.attn", "decoder.cross_attn"]),
])
def test_every_family_gets_a_score_for_every_head(family, groups, tokenizer):
    model = tiny(family, tokenizer)
    if model.config.stack == "encoder":
        batches = [{"input_ids": torch.tensor([tokenizer.encode(t)[:18] for t in TEXTS[:2]])}]
        loss = masked_reconstruction
    else:
        objective = text_objective(model, TEXTS, batch_size=3)
        batches, loss = objective.batches, objective.loss
    scores = head_importance(model, batches, loss)
    assert list(scores) == groups == list(head_groups(model))
    for group in groups:
        assert scores[group].shape == (2, 4), group
        assert (scores[group] > 0).all() and torch.isfinite(scores[group]).all(), group
    if family == "t5":  # the cross-attention gates sit on their own points
        curve = pruning_curve(model, objective.data, objective.metric, scores, fractions=(0.0, 0.5), random_orders=1)
        assert curve.total_heads == 24 and curve.pruned == [0, 12]
        assert curve.by_importance[0] == curve.unpruned and curve.by_importance[1] != curve.unpruned


def test_pruning_by_importance_removes_the_silent_heads_first(tokenizer):
    model = tiny("tiny", tokenizer)
    silence(model, 0, 1)
    silence(model, 1, 3)
    objective = text_objective(model, TEXTS, batch_size=2)
    scores = head_importance(model, objective.batches, objective.loss)
    curve = pruning_curve(model, objective.data, objective.metric, scores, fractions=(0.0, 0.25, 0.5), seed=1,
                          random_orders=4)
    assert curve.pruned == [0, 2, 4] and curve.total_heads == 8
    assert set(curve.order[:2]) == {("blocks.0.attn.z", 1), ("blocks.1.attn.z", 3)}
    assert curve.by_importance[0] == curve.unpruned and curve.random[0][0] == curve.unpruned
    assert curve.by_importance[1] == pytest.approx(curve.unpruned, abs=1e-6)  # masking silent heads changes nothing
    random_change = [abs(r[1] - curve.unpruned) for r in curve.random]
    assert max(random_change) > 1e-4  # random orders do hit heads that matter
    assert abs(curve.by_importance[1] - curve.unpruned) <= sum(random_change) / len(random_change)
    assert curve.random_mean[1] == pytest.approx(sum(r[1] for r in curve.random) / 4)
    assert curve.random_std[1] > 0
    assert curve.as_dict()["pruned"] == [0, 2, 4]


def test_a_fully_pruned_layer_adds_only_its_bias_unless_one_head_is_kept(tokenizer):
    model = tiny("tiny", tokenizer)
    objective = text_objective(model, TEXTS, batch_size=4)
    scores = head_importance(model, objective.batches, objective.loss)
    everything = pruning_curve(model, objective.data, objective.metric, scores, fractions=(1.0,), random_orders=0)
    with torch.no_grad():
        for block in model.stack.blocks:
            block.attn.out.weight.zero_()
    assert everything.pruned == [8]
    assert everything.by_importance[0] == pytest.approx(objective.metric(model, objective.data), abs=1e-6)
    model = tiny("tiny", tokenizer)
    kept = pruning_curve(model, objective.data, objective.metric, scores, fractions=(1.0,), random_orders=2,
                         keep_one_per_layer=True)
    assert kept.pruned == [6] and kept.by_importance[0] != everything.by_importance[0]


def test_text_windows_predict_every_token_once(tokenizer):
    text = " ".join(TEXTS)
    ids = tokenizer.encode(text)
    for family, predicted in (("tiny", len(ids) - 1), ("t5", len(ids))):
        objective = text_objective(tiny(family, tokenizer), [text], batch_size=2, max_length=10)
        labels = torch.cat([b["labels"][b["labels"] != -100] for b in objective.batches])
        assert len(labels) == predicted and all(b["labels"].shape[1] <= 10 for b in objective.batches), family
        assert labels.tolist() == (ids[1:] if family == "tiny" else ids)


def test_user_errors(tokenizer):
    model = tiny("tiny", tokenizer)
    with pytest.raises(DataError):
        head_importance(model, [], lambda m, b: torch.zeros(()))
    with pytest.raises(ConfigError):
        text_objective(tiny("bert", tokenizer), TEXTS)
    t5_scores = {"encoder.attn": torch.ones(2, 4)}
    with pytest.raises(ConfigError, match="do not fit"):
        pruning_curve(model, [], lambda m, d: 0.0, t5_scores)
    with pytest.raises(ConfigError):
        pruning_curve(model, [], lambda m, d: 0.0, {"attn": torch.ones(2, 4)}, fractions=(1.5,))


def test_a_finetuned_classification_folder(toy, tmp_path):  # noqa: F811
    folder = tmp_path / "sst"
    assert main(finetune_args(toy, folder, "--max-steps", "20")) == 0
    model, task, record = load_finetuned(str(folder))
    objective = finetuned_objective(model, task, record, str(toy["dev"]), batch_size=16)
    assert objective.metric_name == "accuracy" and len(objective.data) == 60
    scores = head_importance(model, objective.batches, objective.loss)
    assert scores["attn"].shape == (2, 4) and (scores["attn"] > 0).all()
    curve = pruning_curve(model, objective.data, objective.metric, scores, fractions=(0.0, 0.5), random_orders=2)
    assert curve.unpruned == pytest.approx(evaluate(str(folder), str(toy["dev"]), device="cpu")["accuracy"])
    assert curve.by_importance[0] == curve.unpruned
    assert all(0.0 <= v <= 1.0 for v in curve.by_importance + curve.random_mean)
