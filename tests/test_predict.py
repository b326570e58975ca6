"""`stratalm predict` for classification: a plain text file (one input per line, or tab-separated
pairs for a model fine-tuned on pairs) predicts as the same inputs in a table do, and every
prediction carries its input text and each label's probability beside the label and score it had."""
from __future__ import annotations

import json

import pytest

from stratalm.cli import main
from test_classification import write_pairs
from test_tasks_framework import make_base, write_sentiment

SENTENCES = ["the good film", "a bad movie", "the plot was really good", "quite a bad actor"]


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """A tiny BERT fine-tuned for a few steps on "good" vs "bad" sentences (what it learned does not matter here)."""
    root = tmp_path_factory.mktemp("predict")
    train = write_sentiment(root / "train.tsv", 240, 1)
    base = make_base(root / "base", [train.read_text()])
    out = root / "run"
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train", str(train),
                 "--out", str(out), "--max-steps", "5", "--batch-size", "16", "--lr", "1e-3", "--quiet"]) == 0
    return root, out


def predictions(capsys, model, data) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--data", str(data)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def error_of(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_text_file_predicts_one_line_each_with_text_and_probabilities(sentiment, capsys):
    root, model = sentiment
    lines = root / "inputs.txt"
    lines.write_text("\n".join(SENTENCES[:2]) + "\n\n" + "\n".join(SENTENCES[2:]) + "\n")  # a blank line is skipped
    got = predictions(capsys, model, lines)
    assert [p["text"] for p in got] == SENTENCES
    for p in got:
        assert list(p) == ["label", "score", "text", "probabilities"]  # the earlier keys stay first
        probs = p["probabilities"]
        assert list(probs) == ["0", "1"] and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert p["score"] == max(probs.values()) and str(p["label"]) == max(probs, key=probs.get)
    assert len({p["probabilities"]["1"] for p in got}) == len(SENTENCES)  # each line is its own input

    table = root / "inputs.tsv"
    table.write_text("sentence\n" + "\n".join(SENTENCES) + "\n")
    assert predictions(capsys, model, table) == got  # a table of the same inputs predicts the same


def test_text_files_hold_no_labels_to_evaluate_on(sentiment, tmp_path, capsys):
    _, model = sentiment
    (tmp_path / "a.txt").write_text("the good film\n")
    assert "plain text, which holds no labels" in error_of(capsys, ["evaluate", "--model", str(model), "--data",
                                                                    str(tmp_path / "a.txt")])
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "is empty; give one input per line" in error_of(capsys, ["predict", "--model", str(model), "--data",
                                                                    str(tmp_path / "empty.txt")])


def test_pairs_read_as_two_tab_separated_texts(tmp_path, capsys):
    train = write_pairs(tmp_path / "train.jsonl", 64, 1)
    base = make_base(tmp_path / "base", [train.read_text()])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train", str(train), "--out", str(out),
                 "--text-column", "premise", "--text-pair-column", "hypothesis", "--max-steps", "3", "--quiet"]) == 0
    rows = [json.loads(line) for line in train.read_text().splitlines()[:5]]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{r['premise']}\t{r['hypothesis']}\n" for r in rows))
    got = predictions(capsys, out, pairs)
    assert [(p["text"], p["pair"]) for p in got] == [(r["premise"], r["hypothesis"]) for r in rows]
    assert list(got[0]) == ["label", "score", "text", "pair", "probabilities"]
    assert list(got[0]["probabilities"]) == ["first", "second"]
    unlabelled = tmp_path / "pairs.jsonl"
    unlabelled.write_text("".join(json.dumps({"premise": r["premise"], "hypothesis": r["hypothesis"]}) + "\n"
                                  for r in rows))
    assert predictions(capsys, out, unlabelled) == got  # the same pairs from a table predict the same

    pairs.write_text("one text without its pair\n")
    assert "line 1 of" in error_of(capsys, ["predict", "--model", str(out), "--data", str(pairs)])

    # A folder saved before task.json recorded `pairs` splits the lines that hold a tab.
    record = json.loads((out / "task.json").read_text())
    assert record["state"].pop("pairs") is True
    (out / "task.json").write_text(json.dumps(record))
    pairs.write_text(f"{rows[0]['premise']}\t{rows[0]['hypothesis']}\n")
    assert predictions(capsys, out, pairs) == got[:1]
