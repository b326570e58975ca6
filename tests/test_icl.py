"""bench/icl.py's pieces: the key -> value sequences, the ideal curve, the accuracy by shots and the
induction score (checked on hand-built models whose answers are known), and a short training run
whose accuracy already rises with the number of shots."""
from __future__ import annotations

import sys

import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import icl  # noqa: E402


def test_sequences_follow_one_random_mapping_per_row():
    ids = icl.make_sequences(200, torch.Generator().manual_seed(0))
    assert ids.shape == (200, 2 * icl.PAIRS)
    keys, values = ids[:, 0::2], ids[:, 1::2]
    assert keys.min() >= 0 and keys.max() < icl.KEYS
    assert values.min() >= icl.KEYS and values.max() < icl.KEYS + icl.VALUES
    mappings = set()
    for row_keys, row_values in zip(keys.tolist(), values.tolist()):
        seen: dict[int, int] = {}
        for key, value in zip(row_keys, row_values):
            assert seen.setdefault(key, value) == value  # a key keeps its value within a sequence
        mappings.add(tuple(sorted(seen.items())))
    assert len(mappings) == 200  # every row its own mapping
    held_out = icl.make_sequences(200, torch.Generator().manual_seed(icl.EVAL_SEED))
    assert not torch.equal(held_out, ids)


class LookBack(torch.nn.Module):
    """A perfect in-context learner (copies the value the key had before, else guesses a fixed
    value): its accuracy by shots must match the ideal curve."""

    def forward(self, ids):
        B, T = ids.shape
        logits = torch.zeros(B, T, icl.KEYS + icl.VALUES)
        for b in range(B):
            seen: dict[int, int] = {}
            for t in range(0, T, 2):
                key = int(ids[b, t])
                logits[b, t, seen.get(key, icl.KEYS)] = 1.0
                seen[key] = int(ids[b, t + 1])
        return type("Out", (), {"logits": logits})()


def test_accuracy_by_shots_of_a_perfect_learner_follows_the_ideal_curve():
    ids = icl.make_sequences(2000, torch.Generator().manual_seed(1))
    measured = icl.accuracy_by_shots(LookBack(), ids)
    ideal = [icl.ideal_accuracy(s) for s in range(icl.PAIRS)]
    assert abs(measured[0] - 1 / icl.VALUES) < 0.02 and measured[-1] > 0.9
    assert max(abs(m - i) for m, i in zip(measured, ideal)) < 0.04


def test_induction_score_finds_a_head_forced_to_copy():
    """A model whose layer-1 head 0 is made, through the lens, to attend exactly to the token after
    the previous occurrence scores 1 there; the other heads score far less."""
    from stratalm.lens.trace import trace

    torch.manual_seed(0)
    model = icl.build_icl_model().eval()
    ids = icl.make_sequences(8, torch.Generator().manual_seed(2))
    target = torch.zeros(8, ids.shape[1], ids.shape[1])
    for b, row in enumerate(ids[:, 0::2].tolist()):
        last: dict[int, int] = {}
        for i, key in enumerate(row):
            target[b, 2 * i, 2 * last[key] + 1 if key in last else 0] = 1.0
            last[key] = i
        for t in range(1, ids.shape[1], 2):
            target[b, t, 0] = 1.0

    def copy_head(pattern):  # (B, H, T, T)
        pattern = pattern.clone()
        pattern[:, 0] = target
        return pattern

    original = icl.trace

    def forced(model_, inputs, points, edits=None, keep_grad=False):
        return trace(model_, inputs, points, edits={"blocks.1.attn.pattern": copy_head})

    icl.trace = forced
    try:
        scores, uniform = icl.induction_scores(model, ids)
    finally:
        icl.trace = original
    assert scores.shape == (2, 4)
    assert abs(float(scores[1, 0]) - 1.0) < 1e-5
    others = torch.ones_like(scores, dtype=torch.bool)
    others[1, 0] = False
    assert float(scores[others].max()) < 0.5 and 0 < uniform < 0.05


def test_a_short_run_already_learns_more_with_more_shots():
    records = icl.train(steps=150, eval_at=[0, 150], batch_size=32, lr=3e-3, eval_size=256)
    accuracy = records[-1]["accuracy_by_shots"]
    assert sum(accuracy[16:]) / len(accuracy[16:]) > sum(accuracy[:2]) / 2 + 0.05, accuracy
