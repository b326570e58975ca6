"""SimCSE: views, augmentations, the in-batch loss, supervised pairs, DDP gathering, mixtures."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, run_two_processes, small_char_corpus
from stratalm.data import TokenData
from stratalm.errors import ConfigError, DataError
from stratalm.objectives import ContrastiveConfig, Mixture, get_objective


@pytest.fixture(scope="module")
def tokenizer(pydoc_bpe):
    return TokenData(str(pydoc_bpe)).tokenizer()


def windows(pydoc_bpe, n=64, width=62):
    data = TokenData(str(pydoc_bpe))
    return torch.from_numpy(data.read(0, n * width).astype("int64")).view(n, width)


def test_unsupervised_views_are_the_same_text_twice(pydoc_bpe, tokenizer):
    objective = get_objective("simcse", tokenizer)
    inputs, targets = objective.prepare(windows(pydoc_bpe), torch.Generator().manual_seed(0))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == (64, 2, 64) and torch.equal(ids[:, 0], ids[:, 1]) and torch.equal(targets["labels"], torch.arange(64))
    assert ids[:, :, 0].eq(tokenizer.cls_id).all()
    lengths = mask.sum(-1)
    assert ids.gather(2, (lengths - 1).unsqueeze(-1)).eq(tokenizer.sep_id).all()
    assert not (ids == tokenizer.eos_id).any()  # a view never crosses a document boundary


def test_augmentations_delete_words_replace_tokens_and_reorder_sentences(pydoc_bpe, tokenizer):
    rng = torch.Generator().manual_seed(0)
    rows = windows(pydoc_bpe, 400).tolist()
    replace = get_objective("simcse", tokenizer, ContrastiveConfig(augment="replace", augment_rate=0.1))
    changed = [sum(a != b for a, b in zip(row, replace._augmented(row, rng))) / len(row) for row in rows]
    assert abs(sum(changed) / len(changed) - 0.1) < 0.01  # a few collide with the original token by chance

    delete = get_objective("simcse", tokenizer, ContrastiveConfig(augment="delete", augment_rate=0.2))
    starts = delete.starts_word
    kept_share = []
    def split_words(tokens):
        words = [[]]
        for token in tokens:
            if starts[token] and words[-1]:
                words.append([])
            words[-1].append(token)
        return [tuple(w) for w in words]

    for row in rows:
        kept = delete._augmented(row, rng)
        remaining = iter(split_words(row))
        assert all(word in remaining for word in split_words(kept))  # whole words of the row, in order
        kept_share.append(len(kept) / len(row))
    assert 0.72 < sum(kept_share) / len(kept_share) < 0.88  # about 80% of the words survive

    reorder = get_objective("simcse", tokenizer, ContrastiveConfig(augment="reorder"))
    moved = 0
    for row in rows:
        out = reorder._augmented(row, rng)
        assert sorted(out) == sorted(row)
        if out != row:
            moved += 1
            cuts = [c for c in range(1, len(row)) if row[c - 1] in reorder.sentence_ends]
            assert any(out == row[c:] + row[:c] for c in cuts)  # the text swapped around a sentence end
    assert moved > 100
    with pytest.raises(ConfigError, match="augment must be among"):
        get_objective("simcse", tokenizer, ContrastiveConfig(augment="shuffle"))


def test_loss_is_cross_entropy_over_cosines_with_in_batch_negatives(tokenizer):
    objective = get_objective("simcse", tokenizer)
    hidden = torch.randn(8, 5, 16)  # 4 texts x 2 views
    mask = torch.ones(8, 5, dtype=torch.long)
    output = type("O", (), {"last_hidden_state": hidden, "pooled": None})()
    loss, metrics = objective.loss(output, {"labels": torch.arange(4), "attention_mask": mask, "views": torch.tensor(2)})
    z = F.normalize(hidden.mean(1), dim=-1).view(4, 2, 16)
    expected = F.cross_entropy(z[:, 0] @ z[:, 1].T / 0.05, torch.arange(4))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_supervised_pairs_with_hard_negatives(tmp_path, tokenizer):
    rows = [{"sent0": f"the cat number {i} sat", "sent1": f"a cat {i} was sitting", "hard_neg": f"no dog {i} stood"}
            for i in range(20)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    objective = get_objective("simcse", tokenizer, ContrastiveConfig(pairs=str(path)))
    inputs, targets = objective.prepare(torch.zeros(6, 30, dtype=torch.long), torch.Generator().manual_seed(0))
    assert inputs["input_ids"].shape == (6, 3, 32)
    texts = [[tokenizer.decode(v.tolist()) for v in row] for row in inputs["input_ids"]]
    for anchor, positive, negative in texts:
        number = anchor.split()[3]
        assert positive.split()[2] == number and negative.split()[2] == number
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("first\tsecond\na\tb\n")
    with pytest.raises(DataError, match="has no column 'sent0'; its columns are: first, second"):
        get_objective("simcse", tokenizer, ContrastiveConfig(pairs=str(tsv)))


def test_mixtures_parse_weights_and_refuse_bad_ones(tokenizer):
    mixture = get_objective("mlm+simcse:0.1", tokenizer)
    assert isinstance(mixture, Mixture) and [w for _, w in mixture.components] == [1.0, 0.1]
    assert mixture.extra_tokens == -2 and set(mixture.heads) == {"mlm_head"}
    with pytest.raises(ConfigError, match="is not a number"):
        get_objective("mlm+simcse:lots", tokenizer)
    with pytest.raises(ConfigError, match="unknown objective 'dance'"):
        get_objective("mlm+dance", tokenizer)


def test_two_processes_gather_the_candidates_of_both(tmp_path):
    """Under DDP each process scores its rows against the positives of every process, so the loss is
    the one-process loss on the whole batch (compared at the first step, before the updates)."""
    common = ["--data", str(small_char_corpus(tmp_path)), "--max-steps", "2", "--model", "bert", "--objective", "mlm+simcse:0.5",
              "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
              "model.dropout=0", "model.attention_dropout=0", "train.batch_size=8", "train.log_every=1",
              "train.eval_every=0", "train.progress=false"]
    assert run_cli("pretrain", "--out", tmp_path / "one", *common).returncode == 0
    double = run_two_processes("pretrain", "--out", tmp_path / "two", *common)
    assert double.returncode == 0, double.stderr[-2000:]
    first = [[json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")][0]["loss"] for name in ("one", "two")]
    assert abs(first[0] - first[1]) < 1e-5, first


def test_unsupervised_simcse_pulls_paraphrases_together(tmp_path):
    """Trained on MRPC's training sentences (no labels), the encoder puts MRPC dev paraphrases much
    closer than random pairs; a fresh encoder cannot tell them apart by cosine."""
    import csv

    from conftest import shared_file
    from stratalm import encode, load
    from stratalm.data import prepare
    from stratalm.models import build_model

    def rows(name):
        with open(shared_file("mrpc", name), encoding="utf-8-sig") as handle:
            return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]

    with open(tmp_path / "sentences.jsonl", "w") as handle:
        for row in rows("train.tsv"):
            handle.writelines(json.dumps({"text": text}) + "\n" for text in (row[3], row[4]))
    prepare([str(tmp_path / "sentences.jsonl")], str(tmp_path / "data"), tokenizer="bpe", vocab_size=4096, progress=False)
    result = run_cli("pretrain", "--data", tmp_path / "data", "--out", tmp_path / "run", "--model", "bert", "--objective",
                     "simcse", "--max-steps", "100", "model.n_layers=2", "model.d_model=128", "model.n_heads=4",
                     "model.d_ff=512", "model.max_seq_len=64", "train.batch_size=64", "train.lr=1e-3",
                     "train.warmup_steps=20", "train.eval_every=0", "train.eval_windows=128", "train.progress=false")
    assert result.returncode == 0, result.stderr

    pairs = [(row[3], row[4]) for row in rows("dev.tsv") if row[0] == "1"]

    def gap(model):
        a = encode(model, [p[0] for p in pairs], normalize=True)
        b = encode(model, [p[1] for p in pairs], normalize=True)
        same, other = (a * b).sum(-1), (a * b.roll(1, 0)).sum(-1)  # each paraphrase vs another pair's sentence
        return float(same.mean() - other.mean()), float((same > other).float().mean())

    trained = load(str(tmp_path / "run"))
    torch.manual_seed(0)
    fresh = build_model(trained.config)
    fresh.tokenizer = trained.tokenizer
    fresh_gap, _ = gap(fresh)
    trained_gap, closer = gap(trained)
    assert fresh_gap < 0.1 and trained_gap > 0.3 and closer > 0.95, (fresh_gap, trained_gap, closer)  # measured 0.03, 0.59


def test_simcse_refuses_models_that_are_not_encoders(tokenizer):
    from stratalm.families import preset

    with pytest.raises(ConfigError, match="trains sentence encoders; 'gpt2' is a decoder model"):
        get_objective("simcse", tokenizer).check(preset("tiny"), None)
    with pytest.raises(ConfigError, match="needs an encoder with an MLM head"):
        get_objective("mlm+simcse:0.1", tokenizer).check(preset("t5"), None)
