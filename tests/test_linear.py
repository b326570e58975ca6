"""layers.Linear: nn.Linear with a second CPU path for inference on few rows, chosen by timing.
Both paths give F.linear's values, the chooser keeps the measured winner (and plain F.linear unless
the other wins clearly), same parameters and state dict, plain nn.Linear whenever autograd is on;
decoding gives the same tokens on both paths; `logits_to_keep` keeps the last positions only."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stratalm.families import preset
from stratalm.generate import stream_tokens
from stratalm.layers import Linear, linear, native
from stratalm.layers.path_choice import PathChoice


@pytest.fixture(params=["plain", "transposed"])
def path(request, monkeypatch):
    """Every few-row product through one path, fixed instead of measured."""
    monkeypatch.setenv("STRATALM_PATHS", f"linear:{request.param}")
    linear.CHOICE.reset()
    yield request.param
    linear.CHOICE.reset()
from stratalm.models import CausalLM


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (3, 1, 48), (4, 25, 48), (linear.FEW_ROWS + 1, 48), (0, 48)])
def test_same_values_as_f_linear_and_row_major(bias, shape, path):
    torch.manual_seed(0)
    layer = Linear(48, 40, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        ours = layer(x)
    expected = F.linear(x, layer.weight, layer.bias)
    assert ours.shape == expected.shape and ours.is_contiguous()
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)
    assert all(choice == path for choice in linear.CHOICE.chosen.values())


class FakeClock:
    """perf_counter for PathChoice: each candidate's run takes the time the test says."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.now = seconds, 0.0

    def __call__(self) -> float:
        return self.now

    def paths(self, calls: list) -> dict:
        def path(candidate):
            def run():
                calls.append(candidate)
                self.now += self.seconds[candidate]
                return candidate
            return run
        return {candidate: path(candidate) for candidate in self.seconds}


@pytest.mark.parametrize("seconds, expected", [
    ({"plain": 3.0, "transposed": 1.0}, "transposed"),  # the other path wins clearly
    ({"plain": 1.0, "transposed": 3.0}, "plain"),
    ({"plain": 1.0, "transposed": 0.95}, "plain"),  # a 5% win is within noise: keep the reference
])
def test_the_chooser_times_every_path_before_it_answers_then_keeps_the_winner(seconds, expected, monkeypatch):
    monkeypatch.delenv("STRATALM_PATHS", raising=False)
    clock = FakeClock(seconds)
    choice = PathChoice("test", ("plain", "transposed"), trials=3, timer=clock)
    calls: list = []
    results = [choice.call("shape", clock.paths(calls)) for _ in range(4)]
    assert calls[:6] == ["plain", "transposed"] * 3  # timed in turn on the first call's inputs
    assert calls[6:] == [expected] * 4 and results == [expected] * 4  # every answer, the first too, by the winner
    assert choice.chosen == {"shape": expected}
    assert choice.timings["shape"] == {k: pytest.approx([v] * 3) for k, v in seconds.items()}


@pytest.mark.parametrize("seconds, expected", [({"plain": 3.0, "transposed": 1.0}, "transposed"),
                                               ({"plain": 1.0, "transposed": 0.95}, "plain")])
def test_work_that_cannot_run_twice_takes_the_paths_in_turn(seconds, expected, monkeypatch):
    monkeypatch.delenv("STRATALM_PATHS", raising=False)
    clock = FakeClock(seconds)
    choice = PathChoice("test", ("plain", "transposed"), trials=3, timer=clock)
    calls: list = []
    results = [choice.call_in_turn("step", clock.paths(calls)) for _ in range(10)]
    assert calls == ["plain"] * 3 + ["transposed"] * 3 + [expected] * 4 and results == calls  # each ran once


def test_the_environment_fixes_a_choice_without_measuring(monkeypatch):
    monkeypatch.setenv("STRATALM_PATHS", "other:x,test:transposed")
    choice = PathChoice("test", ("plain", "transposed"))
    calls: list = []
    for _ in range(3):
        choice.call("shape", FakeClock({"plain": 1.0, "transposed": 1.0}).paths(calls))
    assert calls == ["transposed"] * 3 and not choice.timings


def test_linear_chooses_once_per_shape_bucket(monkeypatch):
    monkeypatch.delenv("STRATALM_PATHS", raising=False)
    linear.CHOICE.reset()
    layer = Linear(48, 40)
    with torch.no_grad():
        for rows in (1, 3, 4, 5, 16, 17, 64):
            x = torch.randn(rows, 48)
            assert torch.equal(layer(x), layer(x))  # equal inputs, equal outputs, from the first call
    assert sorted(key[0] for key in linear.CHOICE.chosen) == [1, 4, 16, 64]
    assert all(len(t["plain"]) == len(t["transposed"]) == linear.CHOICE.trials for t in linear.CHOICE.timings.values())
    linear.CHOICE.reset()


def test_a_decoding_step_is_chosen_whole(monkeypatch):
    """run_step times whole steps, every product inside on one path, each path's trials in a row
    with the weights in that path's layout, and never chooses products one by one."""
    monkeypatch.delenv("STRATALM_PATHS", raising=False)
    linear.CHOICE.reset()
    linear.STEP_CHOICE.reset()
    layer, x = Linear(48, 40), torch.randn(1, 48)
    layouts = []

    def step():
        layouts.append(layer.weight.is_contiguous())
        return layer(x)

    with torch.no_grad():
        outs = [linear.run_step("step", step, layer) for _ in range(40)]
    trials, candidates = linear.STEP_CHOICE.trials, linear.STEP_CHOICE.candidates
    assert linear.STEP_CHOICE.chosen.keys() == {"step"} and not linear.CHOICE.timings
    assert all(len(t) == trials for t in linear.STEP_CHOICE.timings["step"].values())
    # plain, transposed, transposed_split and native by rows, columns and columns_split by columns,
    # native_split by rows again (it lays out only matrices far larger than this one by columns)
    by_rows = [not candidate.startswith("columns") for candidate in candidates]
    assert by_rows[:by_rows.index(False) + 2] == sorted(by_rows[:by_rows.index(False) + 2], reverse=True)
    assert by_rows.count(False) == 2
    timed = len(candidates) * trials
    assert layouts[:timed] == [rows for rows in by_rows for _ in range(trials)]
    assert layouts[timed:] == [not linear.STEP_CHOICE.chosen["step"].startswith("columns")] * (40 - timed)
    assert all(torch.allclose(o, F.linear(x, layer.weight, layer.bias), atol=1e-5) for o in outs)
    linear.STEP_CHOICE.reset()


def test_with_autograd_it_is_nn_linear_exactly():
    torch.manual_seed(0)
    layer = Linear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_parameters_and_state_dict_are_nn_linears():
    layer = Linear(16, 8)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == list(nn.Linear(16, 8).state_dict()) == ["weight", "bias"]


def test_decoding_gives_the_same_tokens_on_every_path(monkeypatch):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=300, max_seq_len=64, n_layers=2, d_model=64)).eval()
    ids = torch.randint(0, 300, (3, 5))

    def greedy(path):
        monkeypatch.setenv("STRATALM_PATHS", f"linear:{path}")
        linear.CHOICE.reset()
        linear.STEP_CHOICE.reset()
        tokens = torch.stack(list(stream_tokens(model, ids, 30, temperature=0)), dim=1)
        layouts = {p.is_contiguous() for p in model.parameters() if p.dim() == 2}
        return tokens, layouts

    monkeypatch.setattr(linear, "SPLIT_MIN_BYTES", 0)  # every product of this tiny model is split
    plain, plain_layouts = greedy("plain")
    columns, columns_layouts = greedy("columns")
    transposed, transposed_layouts = greedy("transposed")
    columns_split, columns_split_layouts = greedy("columns_split")
    transposed_split, transposed_split_layouts = greedy("transposed_split")
    assert plain_layouts == transposed_layouts == transposed_split_layouts == {True}
    assert False in columns_layouts and False in columns_split_layouts  # those really relaid the weights out
    for tokens in (columns, transposed, columns_split, transposed_split):
        assert torch.equal(plain, tokens)
    if native.available():
        native_tokens, native_layouts = greedy("native")
        native_split, native_split_layouts = greedy("native_split")  # every matrix split by columns here
        assert native_layouts == {True} and False in native_split_layouts
        assert torch.equal(plain, native_tokens) and torch.equal(plain, native_split)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("out_features", [1152, 1155, 43, 3])  # multiples of the parts or not, fewer than the parts
@pytest.mark.parametrize("by_columns, parts", [(True, 4), (False, 2)])
def test_a_split_product_is_the_unsplit_product(bias, rows, out_features, by_columns, parts):
    """Wide slices give the unsplit path's numbers bit for bit (the kernels' narrow tails round
    differently); the outputs past a multiple of the parts are a product of their own."""
    torch.manual_seed(0)
    layer = Linear(48, out_features, bias=bias)
    linear.store_by_columns(layer, by_columns)
    x = torch.randn(rows, 48)
    with torch.no_grad():
        whole = F.linear(x, layer.weight, layer.bias) if by_columns else linear.transposed(x, layer.weight, layer.bias)
        split = linear.split_outputs(x, layer.weight, layer.bias, parts)
    assert split.shape == whole.shape and split.is_contiguous()
    if out_features == 1152:
        assert torch.equal(split, whole)
    assert torch.allclose(split, whole, atol=1e-6)
    assert torch.allclose(split, F.linear(x, layer.weight.contiguous(), layer.bias), atol=1e-5)
    linear.CHOICE.reset()
    linear.STEP_CHOICE.reset()


def test_weights_laid_out_by_columns_keep_values_and_save_the_same(tmp_path):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=300, max_seq_len=64, n_layers=2, d_model=64)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linear.store_by_columns(model, True)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    assert weights and not any(w.is_contiguous() for w in weights)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    import stratalm
    stratalm.save(model, str(tmp_path / "m"))
    loaded = stratalm.load(str(tmp_path / "m"))
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items())
    x = torch.randint(0, 300, (2, 7))
    model(x).logits.logsumexp(-1).mean().backward()  # training on the new layout still works
    assert all(w.grad is not None for w in weights)
    linear.store_by_columns(model, False)
    assert all(w.is_contiguous() for w in weights)


def test_logits_to_keep_applies_the_head_to_the_last_positions():
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=300, max_seq_len=64, n_layers=2, d_model=64)).eval()
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
        last3 = model(ids, logits_to_keep=3).logits
    assert last.shape == (2, 1, 300) and last3.shape == (2, 3, 300)
    assert torch.allclose(last, full[:, -1:], atol=1e-5) and torch.allclose(last3, full[:, -3:], atol=1e-5)
