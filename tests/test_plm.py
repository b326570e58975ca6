"""Permutation language modelling: the reference's target selection and masks, no path from a
target to itself, learning, and exact resume of `stratalm pretrain --model xlnet --objective plm`."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, run_two_processes, small_char_corpus
from stratalm.errors import ConfigError
from stratalm.families import preset
from stratalm.models import build_model
from stratalm.objectives import get_objective
from stratalm.objectives.plm import MAX_SPAN, PARTIAL_PREDICTION, permutation_mask, sample_spans, target_count
from stratalm.tokenize import train_char

TEXT = ["the cat sat on the mat while a dog ran in the fog", "hello world, said the permutation"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_char(TEXT)


@pytest.fixture(scope="module")
def objective(tokenizer):
    return get_objective("plm", tokenizer)


def tiny_xlnet(vocab_size: int, **overrides):
    torch.manual_seed(0)
    values = dict(n_layers=2, d_model=32, n_heads=4, d_ff=48, vocab_size=vocab_size, dropout=0.0, attention_dropout=0.0)
    return build_model(preset("xlnet", **{**values, **overrides})).eval()


def windows(tokenizer, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    ordinary = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids.values()]
    pick = torch.randint(len(ordinary), (rows, length), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(ordinary)[pick]


def test_one_token_in_six_is_predicted_in_spans_of_up_to_five(tokenizer, objective):
    rng = torch.Generator().manual_seed(0)
    length, lengths, from_spans = 120, Counter(), 0
    for _ in range(300):
        selected, spans = sample_spans(length, target_count(length), rng)
        assert int(selected.sum()) == target_count(length) == 20  # round(120 / 6), exactly, every row
        ends = [start + n for start, n in spans]
        assert all(start >= end for start, end in zip([s for s, _ in spans[1:]], ends))  # ordered, apart
        assert all(bool(selected[start:start + n].all()) for start, n in spans)
        lengths.update(n for _, n in spans)
        from_spans += sum(n for _, n in spans)
    assert set(lengths) <= set(range(1, MAX_SPAN + 1)) and MAX_SPAN in lengths
    # p(n) ∝ 1/n: twice as many 1-spans as 2-spans, three times as many as 3-spans (the last span
    # of a row is sometimes cut to the count, which adds a little to the short ones).
    assert 1.7 < lengths[1] / lengths[2] < 2.6 and 2.5 < lengths[1] / lengths[3] < 4.0
    assert from_spans / (300 * 20) > 0.7  # most targets come from spans; the top-up adds the rest
    inputs, targets = objective.prepare(windows(tokenizer, 8, 60), rng)
    assert inputs["target_mapping"].shape == (8, 10, 62) and targets["labels"].shape == (8, 10)
    assert inputs["target_mapping"].sum() == 80 and 10 / 60 == pytest.approx(1 / PARTIAL_PREDICTION)
    assert (inputs["input_ids"][:, -2:] == torch.tensor([tokenizer.sep_id, tokenizer.cls_id])).all()
    assert (inputs["token_type_ids"][:, -1] == 2).all() and (inputs["token_type_ids"][:, :-1] == 0).all()


def brute_force_mask(rank: list[int], targets: list[bool], functional: list[bool]) -> torch.Tensor:
    """The rule in words: everyone sees the context (neither target nor functional); a target sees
    the targets and functional tokens strictly before it in the order; a functional token sees
    those up to and including itself; context sees nothing else."""
    T = len(rank)
    hidden = torch.zeros(T, T)
    for i in range(T):
        for j in range(T):
            if not targets[j] and not functional[j]:
                continue
            if targets[i]:
                visible = rank[j] < rank[i]
            elif functional[i]:
                visible = rank[j] <= rank[i]
            else:
                visible = False
            hidden[i, j] = 0.0 if visible else 1.0
    return hidden


def test_the_masks_equal_a_brute_force_construction_from_the_order(tokenizer, objective):
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        T = 14
        rank = torch.randperm(T, generator=gen)[None]
        targets = torch.rand(1, T, generator=gen) < 0.3
        functional = torch.zeros(1, T, dtype=torch.bool)
        functional[0, -2:] = True
        targets &= ~functional
        expected = brute_force_mask(rank[0].tolist(), targets[0].tolist(), functional[0].tolist())
        assert torch.equal(permutation_mask(rank, targets, functional)[0], expected)
    # And the prepared batches: the order is whatever ranks the visible-target counts give.
    inputs, targets = objective.prepare(windows(tokenizer, 4, 40), torch.Generator().manual_seed(5))
    for row in range(4):
        hidden = inputs["perm_mask"][row]
        is_target = inputs["target_mapping"][row].sum(0).bool()
        functional = torch.zeros_like(is_target)
        functional[-2:] = True
        ordered = is_target | functional
        seen = (1 - hidden)[:, ordered].sum(1)  # how many targets / functional tokens each one sees
        rank = torch.full((len(hidden),), -1)
        rank[ordered] = (seen[ordered] - functional[ordered].long()).argsort().argsort()
        assert sorted(rank[ordered].tolist()) == list(range(int(ordered.sum())))  # a total order
        assert torch.equal(hidden, brute_force_mask(rank.tolist(), is_target.tolist(), functional.tolist()))
        assert torch.equal(targets["labels"][row], inputs["input_ids"][row][is_target])


def test_a_target_cannot_reach_its_own_token_through_any_path(tokenizer, objective):
    """Replace a target's token: its own prediction stays bitwise the same through both layers and
    both streams, while a prediction later in the order sees the change (the test can fail)."""
    model = tiny_xlnet(tokenizer.vocab_size)
    inputs, targets = objective.prepare(windows(tokenizer, 2, 30, seed=1), torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(**inputs).logits
        changed_elsewhere = 0
        for row in range(2):
            for m, position in enumerate(inputs["target_mapping"][row].argmax(-1).tolist()):
                edited = {**inputs, "input_ids": inputs["input_ids"].clone()}
                edited["input_ids"][row, position] = (edited["input_ids"][row, position] + 1) % tokenizer.vocab_size
                out = model(**edited).logits
                assert torch.equal(out[row, m], plain[row, m]), (row, m)
                changed_elsewhere += int(not torch.equal(out[row], plain[row]))
        assert changed_elsewhere > 0
        # The control: a query allowed to see its own token (its diagonal opened) is changed by it.
        position = int(inputs["target_mapping"][0, 0].argmax())
        leaky = {**inputs, "perm_mask": inputs["perm_mask"].clone()}
        leaky["perm_mask"][0, position, position] = 0
        edited = {**leaky, "input_ids": inputs["input_ids"].clone()}
        edited["input_ids"][0, position] = (edited["input_ids"][0, position] + 1) % tokenizer.vocab_size
        assert not torch.equal(model(**leaky).logits[0, 0], model(**edited).logits[0, 0])


def test_plm_refuses_a_model_without_a_query_stream(tokenizer, objective):
    with pytest.raises(ConfigError, match="xlnet"):
        objective.check(preset("bert"), None)


def plm_command(data, out, steps: int) -> list[str]:
    return [sys.executable, "-m", "stratalm", "pretrain", "--data", str(data), "--out", str(out), "--model", "xlnet",
            "--objective", "plm", "--max-steps", str(steps), "--save-every", "10", "--resume", "model.n_layers=2",
            "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.max_seq_len=32", "train.batch_size=8",
            "train.eval_every=20", "train.log_every=5", "train.progress=false"]


@pytest.mark.slow
def test_pretrain_xlnet_with_plm_resumes_bitwise_after_a_kill(char_data, tmp_path):
    steps = 80
    reference = tmp_path / "reference"
    done = subprocess.run(plm_command(char_data, reference, steps), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "target_accuracy" in done.stdout

    killed = tmp_path / "killed"
    process = subprocess.Popen(plm_command(char_data, killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert json.loads((killed / "trainer_state.json").read_text())["step"] < steps
    finished = subprocess.run(plm_command(char_data, killed, steps), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "resuming from step" in finished.stdout
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(reference / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_the_same_generator_state_gives_the_same_batch(tokenizer, objective):
    """What exact resume needs of an objective: its randomness is all in the generator it is given."""
    batch = windows(tokenizer, 4, 40)
    first, again = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a, b = objective.prepare(batch, first)[0], objective.prepare(batch, again)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = objective.prepare(batch, first)[0]  # the generator moved on: another order, other targets
    assert not torch.equal(a["perm_mask"], c["perm_mask"]) and not torch.equal(a["target_mapping"], c["target_mapping"])


@pytest.mark.slow
def test_plm_learns_well_below_the_unigram_baseline(char_data, tmp_path):
    """The loss on predicted characters of real text leaves the unigram plateau: 160 steps, 90 s on
    2 cores shared with other work (load 8), less on quiet ones."""
    from test_train import unigram_entropy

    from stratalm.loop import build_run_config, pretrain

    model = dict(preset="xlnet", n_layers=2, d_model=128, n_heads=4, d_ff=256, max_seq_len=64, dropout=0.0,
                 attention_dropout=0.0)
    run = build_run_config(None, {"data": str(char_data), "out": str(tmp_path / "run"), "model": model, "objective": "plm",
                                  "train": {"progress": False, "log_every": 20, "eval_every": 0, "max_steps": 160,
                                            "batch_size": 32, "lr": 3e-3, "warmup_steps": 30, "decay_steps": 400}})
    pretrain(run)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    final = [r for r in records if "val_loss" in r][-1]
    baseline = unigram_entropy(char_data)
    assert final["val_loss"] < baseline - 0.5, (final["val_loss"], baseline)


def test_plm_quickly_learns_text_that_its_context_determines(tokenizer, objective):
    """Ten seconds: on a cyclic alphabet every target follows from its visible neighbours, so the
    loss falls far below the unigram entropy (log of the alphabet) once the model reads context."""
    import math

    letters = [tokenizer.encode(c)[0] for c in "abcdefghilmnoprstuw"]
    model = tiny_xlnet(tokenizer.vocab_size, d_model=64, d_ff=128).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(0)

    def batch():
        starts = torch.randint(len(letters), (16, 1), generator=rng)
        return torch.tensor(letters)[(starts + torch.arange(40)) % len(letters)]

    for _ in range(80):
        loss, _ = objective.compute(model, *objective.prepare(batch(), rng))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        held_out, _ = objective.compute(model.eval(), *objective.prepare(batch(), rng))
    assert float(held_out) < math.log(len(letters)) - 1.5, float(held_out)  # log 19 = 2.94


def test_plm_settings_are_config_keys(tokenizer):
    """plm.partial_prediction (K) and plm.max_span reach the objective through the run config."""
    from stratalm.loop import build_run_config

    run = build_run_config(None, {"objective": "plm", "plm": {"partial_prediction": "4", "max_span": "2"}})
    assert (run.plm.partial_prediction, run.plm.max_span) == (4, 2)
    objective = get_objective("plm", tokenizer, run)
    inputs, targets = objective.prepare(windows(tokenizer, 16, 60), torch.Generator().manual_seed(0))
    assert targets["labels"].shape == (16, 15)  # 60 / 4 targets per row, not 60 / 6
    lengths = Counter()
    rng = torch.Generator().manual_seed(1)
    for _ in range(50):
        lengths.update(n for _, n in sample_spans(120, target_count(120, 4), rng, 4, 2)[1])
    assert set(lengths) == {1, 2}
    with pytest.raises(ConfigError, match="plm.partial_prediction"):
        build_run_config(None, {"plm": {"partial_prediction": 1}})


@pytest.mark.slow
def test_plm_under_torchrun_matches_one_process(tmp_path):
    """Two processes (gloo on CPU) draw the same orders and targets of the global batch as one does:
    three interpreters and two runs, 80 s on 2 loaded cores (about 25 s of CPU)."""
    common = ["--data", str(small_char_corpus(tmp_path)), "--max-steps", "4", "--model", "xlnet", "--objective", "plm",
              "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
              "model.dropout=0", "model.attention_dropout=0", "train.batch_size=8", "train.log_every=1",
              "train.eval_every=0", "train.progress=false"]
    single = run_cli("pretrain", "--out", tmp_path / "one", *common)
    assert single.returncode == 0, single.stderr[-2000:]
    double = run_two_processes("pretrain", "--out", tmp_path / "two", *common)
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = plm_losses(tmp_path / "one"), plm_losses(tmp_path / "two")
    assert len(one) == 4 and max(abs(a - b) for a, b in zip(one, two)) < 1e-5, (one, two)


def plm_losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]
