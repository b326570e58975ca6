"""bench/icl.py's pieces: the key -> value sequences, the ideal curve, the accuracy by shots and the
induction score (checked on hand-built models whose answers are known), and a short training run
whose accuracy already rises with the number of shots."""
from __future__ import annotations

import sys

import pytest
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
    assert abs(measured[0] - 1 / icl.VALUES) < 0.02 and measured[-1] > 0.85
    assert max(abs(m - i) for m, i in zip(measured, ideal)) < 0.04


def _induction_pattern(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T): each query splits its attention over the positions after its token's earlier
    occurrences, or attends to position 0 when there are none: a perfect induction head."""
    from stratalm.lens.induction import induction_targets

    targets = induction_targets(ids).float()
    targets[:, :, 0] += targets.sum(-1) == 0
    return targets / targets.sum(-1, keepdim=True)


def _uniform_pattern(B: int, T: int) -> torch.Tensor:
    causal = torch.ones(T, T).tril()
    return (causal / causal.sum(-1, keepdim=True)).expand(B, T, T)


def test_lens_induction_score_is_one_for_a_perfect_head_and_low_for_even_attention():
    from stratalm.lens.induction import induction_scores, previous_token_scores

    ids = icl.make_sequences(16, torch.Generator().manual_seed(3))
    B, T = ids.shape
    previous = torch.zeros(B, T, T)
    previous[:, 0, 0] = 1.0
    previous[:, torch.arange(1, T), torch.arange(T - 1)] = 1.0
    patterns = torch.stack([_induction_pattern(ids), _uniform_pattern(B, T), previous])[:, :, None]  # (3 layers, B, 1, T, T)
    scores, uniform = induction_scores(patterns, ids)
    assert abs(float(scores[0, 0]) - 1.0) < 1e-5
    assert abs(float(scores[1, 0]) - uniform) < 1e-5 and uniform < 0.2
    assert float(scores[2, 0]) < 0.5  # the previous token is the right one only by coincidence here
    by_previous = previous_token_scores(patterns)
    assert abs(float(by_previous[2, 0]) - 1.0) < 1e-5 and float(by_previous[1, 0]) < 0.2


def test_induction_score_counts_the_value_after_the_earlier_key_not_the_key_itself():
    """Built by hand in the task's own layout (`k1 v1 k2 v2 ...`), without induction_targets: a
    head whose key positions attend to the VALUES that followed the same key before scores 1; one
    that attends to the earlier occurrences of the key itself (a duplicate-token head, one position
    too early) scores 0. Only key positions whose key was seen before are scored."""
    from stratalm.lens.induction import induction_scores

    ids = icl.make_sequences(16, torch.Generator().manual_seed(4))
    B, T = ids.shape
    copy, duplicate = torch.zeros(B, T, T), torch.zeros(B, T, T)
    for b in range(B):
        for t in range(T):
            earlier_keys = [s for s in range(0, t, 2) if t % 2 == 0 and ids[b, s] == ids[b, t]]
            if earlier_keys:
                for s in earlier_keys:
                    copy[b, t, s + 1] = 1.0 / len(earlier_keys)  # the value that followed
                    duplicate[b, t, s] = 1.0 / len(earlier_keys)  # the key itself
            else:  # not scored: anywhere will do
                copy[b, t, t] = duplicate[b, t, t] = 1.0
    at_keys = torch.zeros(B, T, dtype=torch.bool)
    at_keys[:, 0::2] = True
    scores, uniform = induction_scores(torch.stack([copy, duplicate])[:, :, None], ids, at_keys)
    assert abs(float(scores[0, 0]) - 1.0) < 1e-5 and float(scores[1, 0]) < 1e-6 and 0 < uniform < 0.2


def test_lens_induction_score_refuses_a_sequence_without_repeats():
    from stratalm.lens.induction import induction_scores

    ids = torch.arange(6)[None]
    with pytest.raises(ValueError, match="no position repeats"):
        induction_scores(_uniform_pattern(1, 6)[None, :, None], ids)


def test_induction_score_finds_a_head_forced_to_copy():
    """A model whose layer-1 head 0 is made, through the lens, to attend exactly to the values after
    the key's earlier occurrences scores 1 there; the other heads score far less."""
    from stratalm.lens.trace import trace

    torch.manual_seed(0)
    model = icl.build_icl_model().eval()
    ids = icl.make_sequences(8, torch.Generator().manual_seed(2))
    target = _induction_pattern(ids)

    def copy_head(pattern):  # (B, H, T, T)
        pattern = pattern.clone()
        pattern[:, 0] = target
        return pattern

    original = icl.trace

    def forced(model_, inputs, points, edits=None, keep_grad=False):
        return trace(model_, inputs, points, edits={"blocks.1.attn.pattern": copy_head})

    icl.trace = forced
    try:
        heads = icl.head_scores(model, ids)
    finally:
        icl.trace = original
    scores, uniform = heads["induction"], heads["uniform"]
    assert scores.shape == (2, 4) and heads["previous_token"].shape == (2, 4)
    assert abs(float(scores[1, 0]) - 1.0) < 1e-5
    others = torch.ones_like(scores, dtype=torch.bool)
    others[1, 0] = False
    assert float(scores[others].max()) < 0.5 and 0 < uniform < 0.2
    assert icl.best_head(scores)["head"] == "blocks.1.attn head 0"


def test_a_few_steps_of_the_harness_record_every_curve(tmp_path):
    setup = icl.Setup(d_model=32, n_heads=2, d_ff=32, pairs=8, batch_size=8)
    records = icl.train(setup, steps=3, eval_at=[0, 3], eval_size=32)
    assert [r["step"] for r in records] == [0, 3]
    assert len(records[-1]["accuracy_by_shots"]) == 8 and records[-1]["train_loss"] > 0
    assert set(records[-1]) >= {"induction", "previous_token"} and records[-1]["induction"]["head"].startswith("blocks.")
    icl.plot(records, setup, tmp_path / "icl.png")
    assert (tmp_path / "icl.png").stat().st_size > 10_000


def test_bad_settings_get_one_sentence():
    assert "multiple of --n-heads" in icl.setup_problem(icl.Setup(d_model=30, n_heads=4), 10)
    assert "--pairs" in icl.setup_problem(icl.Setup(pairs=1), 10)
    assert icl.setup_problem(icl.Setup(), 10) is None


@pytest.mark.slow
def test_a_short_run_already_learns_more_with_more_shots():
    records = icl.train(icl.Setup(pairs=24, d_model=64, d_ff=256, lr=3e-3), steps=150, eval_at=[0, 150], eval_size=256)
    accuracy = records[-1]["accuracy_by_shots"]
    late = accuracy[len(accuracy) // 2:]
    assert sum(late) / len(late) > sum(accuracy[:2]) / 2 + 0.05, accuracy
