"""Token classification: CoNLL reading, entity spans (conlleval's rules), a toy tagger learned
through the CLI (tags on first sub-tokens, one predicted tag per word), and the export to
`transformers` as BertForTokenClassification."""
from __future__ import annotations

import json
import random

import pytest
import torch

from stratalm.cli import main
from stratalm.tasks.tagging import TaggingTask, entity_scores, entity_spans
from test_tasks_framework import WORDS, make_base


def write_numbers(path, n, seed, tagged=True):
    """CoNLL sentences of words and numbers; each number is a NUM entity (B-NUM), words are O."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- O O", ""]
    for _ in range(n):
        for _ in range(rng.randint(4, 9)):
            number = rng.random() < 0.35
            token = str(rng.randint(0, 999)) if number else rng.choice(WORDS)
            lines.append(f"{token} {'B-NUM' if number else 'O'}" if tagged else token)
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_entity_spans_follow_conlleval():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-MISC", "I-MISC", "O", "I-ORG"]
    assert entity_spans(tags) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("MISC", 5, 7), ("ORG", 8, 9)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # the person's span is cut short: wrong; the location is right
    assert entity_scores(gold, pred) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert entity_scores([["O"]], [["B-X"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_conll_reader_skips_docstart_and_takes_the_last_column(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n")
    task = TaggingTask()
    examples = task.read(str(path))
    assert examples == [{"words": ["EU", "rejects"], "tags": ["B-ORG", "O"]}, {"words": ["Peter"], "tags": ["B-PER"]}]
    task.learn(examples)
    assert task.labels == ["O", "B-ORG", "B-PER"] and task.main_metric == "f1"


def test_toy_tagger_learns_and_predicts_one_tag_per_word(tmp_path, capsys):
    train, dev = write_numbers(tmp_path / "train.conll", 300, 1), write_numbers(tmp_path / "dev.conll", 60, 2)
    base = make_base(tmp_path / "base", [train.read_text()])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "tagging", "--model", str(base), "--train", str(train), "--dev", str(dev),
                 "--out", str(out), "--epochs", "3", "--batch-size", "16", "--lr", "1e-3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(dev)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] >= 0.95 and metrics["f1"] >= 0.9
    assert set(metrics) == {"accuracy", "precision", "recall", "f1"}

    unlabelled = write_numbers(tmp_path / "test.conll", 20, 3, tagged=False)
    assert main(["predict", "--model", str(out), "--data", str(unlabelled)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    words = TaggingTask().read(str(unlabelled), labelled=False)
    assert len(lines) == 20 and [x["tokens"] for x in lines] == [e["words"] for e in words]
    assert all(len(x["tags"]) == len(x["tokens"]) for x in lines)
    expected = [["B-NUM" if w.isdigit() else "O" for w in x["tokens"]] for x in lines]
    right = sum(a == b for x, tags in zip(lines, expected) for a, b in zip(x["tags"], tags))
    assert right >= 0.95 * sum(len(tags) for tags in expected)


def test_words_cut_by_max_length_still_get_a_tag(tmp_path):
    from stratalm.tasks import load_finetuned

    train = write_numbers(tmp_path / "train.conll", 20, 1)
    base = make_base(tmp_path / "base", [train.read_text()])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "tagging", "--model", str(base), "--train", str(train), "--out", str(out),
                 "--max-steps", "1", "--max-length", "12", "--quiet"]) == 0
    model, task, record = load_finetuned(str(out))
    assert record["max_length"] == 12
    long = {"words": ["film"] * 30, "tags": ["O"] * 30}
    features = task.encode([long], model.tokenizer, 12)
    assert len(features[0]["ids"]) == 12 and features[0]["first"][-1] == -1
    assert sum(label != -100 for label in features[0]["labels"]) == sum(p >= 0 for p in features[0]["first"])
    assert len(task.predict(model, [long], 12)[0]) == 30


def test_export_to_transformers_gives_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    train = write_numbers(tmp_path / "train.conll", 40, 1)
    base = make_base(tmp_path / "base", [train.read_text()], dropout=0.0, attention_dropout=0.0)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "tagging", "--model", str(base), "--train", str(train), "--out", str(out),
                 "--max-steps", "3", "--lr", "1e-3", "--quiet"]) == 0
    assert main(["convert", str(out), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {"0": "O", "1": "B-NUM"}
    theirs = transformers.BertForTokenClassification.from_pretrained(tmp_path / "hf").eval()

    from stratalm.tasks import load_finetuned
    from stratalm.tasks.common import text_batch

    ours, task, _ = load_finetuned(str(out))
    batch = text_batch(task.encode(task.read(str(train))[:8], ours.tokenizer, 64), ours.tokenizer.pad_id)
    with torch.no_grad():
        a, b = ours(**batch).logits, theirs(**batch).logits
    real = batch["attention_mask"].bool()
    assert a.shape == b.shape and float((a - b)[real].abs().max()) < 1e-4
    import stratalm

    again = stratalm.load(str(tmp_path / "hf"))
    assert again.config.n_token_labels == 2 and again.config.n_labels == 0 and again.config.label_names == ["O", "B-NUM"]
