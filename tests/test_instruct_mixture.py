"""bench/instruct.py's FLAN-style mixture keeps its promises: the held-out instructions and the dev
examples never reach training, every file is valid chat JSONL, and a reply is read as the label
it starts with."""
from __future__ import annotations

import importlib
import json
import sys

from conftest import ROOT, shared_file

from stratalm.tasks.chat import ChatTask


def instruct_bench():
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module("instruct")


def prompts(path) -> list[str]:
    return [json.loads(line)["messages"][0]["content"] for line in open(path, encoding="utf-8")]


def test_held_out_instructions_and_examples_stay_out_of_training(tmp_path):
    shared_file("sst2", "dev.tsv")
    bench = instruct_bench()
    sizes = bench.build(tmp_path, sst2_train=2000)
    assert sizes["sst2_heldout"] == sizes["sst2_seen"] == 872 and sizes["mrpc_heldout"] == 408
    train = prompts(tmp_path / "train.jsonl")
    assert len(train) == sizes["train"] and all(ChatTask().read(str(tmp_path / f"{name}.jsonl")) for name in sizes)
    for spec in (bench.SST2, bench.MRPC, bench.TRANSLATE):  # each held-out wording's fixed opening
        opening = spec["heldout"].split("{")[0]
        assert not any(text.startswith(opening) for text in train)
    dev_reviews = {text for text, _ in bench.sst2("dev")}
    assert not any(line in dev_reviews for text in train for line in text.split("\n"))
    assert all(p.startswith(bench.SST2["heldout"].split("{")[0]) for p in prompts(tmp_path / "sst2_heldout.jsonl"))


def test_a_reply_answers_with_its_first_word():
    answer = instruct_bench().answer
    assert [answer(r) for r in (" Positive.", "negative, I think", "yes", "", "  no!  no")] == [
        "positive", "negative", "yes", "", "no"]


def test_a_reused_stage_reports_the_time_it_took_when_it_was_made(tmp_path):
    """results.json gives a reused stage the seconds it took when it ran, not the 0 s of skipping it."""
    bench = instruct_bench()
    ran = []
    timings = {}
    assert bench.stage(tmp_path, "pretrain", False, timings, lambda: ran.append("pretrain")) is False
    assert ran == ["pretrain"] and json.loads((tmp_path / bench.STAGE_TIMES).read_text()) == timings
    (tmp_path / bench.STAGE_TIMES).write_text(json.dumps({"pretrain_s": 426.3}))
    again = {}
    reused = bench.stage(tmp_path, "pretrain", True, again, lambda: ran.append("again"))
    assert ran == ["pretrain"] and again == {"pretrain_s": 426.3}
    assert reused == {"made_s": 426.3, "from": bench.STAGE_TIMES}
    # A stage stage_times.json does not know: the training seconds its folder records, else unknown.
    assert bench.made_in(tmp_path, "tune") == (None, "unknown")
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "metrics.jsonl").write_text('{"step": 10, "train_s": 9.5}\n{"step": 20, "train_s": 19.25}\n')
    assert bench.made_in(tmp_path, "tune") == (19.25, "tuned/metrics.jsonl train_s")
    assert bench.made_in(tmp_path, "pretrain") == (426.3, bench.STAGE_TIMES)
