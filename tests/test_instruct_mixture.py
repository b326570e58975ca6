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
