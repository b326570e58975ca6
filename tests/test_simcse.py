"""SimCSE: views, augmentations, the in-batch loss, supervised pairs, DDP gathering, mixtures, and
validation measures that can fail (alignment, uniformity, Spearman on scored pairs)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, run_two_processes, small_char_corpus
from stratalm.data import TokenData
from stratalm.errors import ConfigError, DataError
from stratalm.objectives import ContrastiveConfig, Mixture, get_objective
from stratalm.objectives.simcse import alignment, average_ranks, spearman, uniformity


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


@pytest.mark.slow  # about 70 s on 2 cores
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


class Constant(torch.nn.Module):
    """An encoder collapsed to one point: the same hidden state for every token of every text."""

    def __init__(self, d_model: int = 16, max_seq_len: int = 64) -> None:
        super().__init__()
        self.vector = torch.nn.Parameter(torch.randn(d_model))
        self.config = type("C", (), {"max_seq_len": max_seq_len})()
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask):
        self.seen.append(input_ids)
        hidden = self.vector.expand(*input_ids.shape, -1)
        return type("O", (), {"last_hidden_state": hidden, "pooled": None})()


class BagOfTokens(torch.nn.Module):
    """A fixed random vector per token, mean-pooled: cosines a test can compute on its own."""

    def __init__(self, vocab_size: int, d_model: int = 16, max_seq_len: int = 64) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(vocab_size, d_model)
        self.config = type("C", (), {"max_seq_len": max_seq_len})()

    def forward(self, input_ids, attention_mask):
        return type("O", (), {"last_hidden_state": self.table(input_ids), "pooled": None})()


def tiny_bert(tokenizer):
    from stratalm.families import preset
    from stratalm.models import build_model

    return build_model(preset("bert", n_layers=1, d_model=32, n_heads=2, d_ff=64, max_seq_len=32,
                              vocab_size=tokenizer.vocab_size, dropout=0.1))


def evaluate(objective, model, windows_):
    """What the loop does: prepare with the evaluation's fixed seed, compute with the model in eval mode."""
    inputs, targets = objective.prepare(windows_, torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        _, metrics = objective.compute(model, inputs, targets)
    return {k: float(v) for k, v in metrics.items()}


def test_evaluation_scores_each_held_out_text_against_a_damaged_copy(pydoc_bpe, tokenizer):
    """With dropout off the prepared views are the same text twice; evaluation replaces the second by
    the text with some words deleted, the same copy whatever the batch around it."""
    objective = get_objective("simcse", tokenizer)
    rows = windows(pydoc_bpe, 32, 30)
    model = Constant()
    evaluate(objective, model, rows)
    evaluate(objective, model, rows.flip(0))
    first, flipped = (seen.view(32, 2, -1) for seen in model.seen)
    anchors, positives = first[:, 0], first[:, 1]
    inputs, _ = objective.prepare(rows, torch.Generator().manual_seed(0))
    assert torch.equal(anchors, inputs["input_ids"][:, 0])  # the held-out text itself
    changed = (anchors != positives).any(-1).float().mean()
    assert changed > 0.5, changed  # 10% of the words go: most texts of ~10 words lose one
    assert torch.equal(flipped.flip(0), first)  # a text's positive depends on the text only
    lengths = (positives != tokenizer.pad_id).sum(-1)
    assert (lengths <= (anchors != tokenizer.pad_id).sum(-1)).all() and positives[:, 0].eq(tokenizer.cls_id).all()
    with pytest.raises(ConfigError, match="eval_augment must name at least one"):
        get_objective("simcse", tokenizer, ContrastiveConfig(eval_augment=""))


def test_a_collapsed_encoder_cannot_pass_validation(pydoc_bpe, tokenizer):
    """The old figures of evaluation were 1.0 for any model; a constant encoder now scores uniformity
    0 (the worst) and the loss of chance, log B, while training keeps its own figures."""
    objective = get_objective("simcse", tokenizer)
    model = Constant()
    scores = evaluate(objective, model, windows(pydoc_bpe, 32, 30))
    assert set(scores) == {"loss", "alignment", "uniformity"}
    assert abs(scores["uniformity"]) < 1e-5 and scores["alignment"] < 1e-6
    assert abs(scores["loss"] - math.log(32)) < 1e-4
    model.train()
    inputs, targets = objective.prepare(windows(pydoc_bpe, 32, 30), torch.Generator().manual_seed(0))
    _, train_metrics = objective.compute(model, inputs, targets)
    assert {"contrastive_accuracy", "positive_cosine", "negative_cosine"} <= set(train_metrics)


def test_uniformity_tells_a_trained_encoder_from_a_random_and_a_collapsed_one(pydoc_bpe, tokenizer):
    objective = get_objective("simcse", tokenizer)
    held_out = windows(pydoc_bpe, 32, 30)
    data = TokenData(str(pydoc_bpe))
    model = tiny_bert(tokenizer)
    random_scores = evaluate(objective, model, held_out)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = torch.Generator().manual_seed(1)
    for step in range(8):  # training windows from further into the corpus than the held-out ones
        batch = torch.from_numpy(data.read(20_000 + step * 32 * 30, 32 * 30).astype("int64")).view(32, 30)
        loss, _ = objective.compute(model, *objective.prepare(batch, rng))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained_scores = evaluate(objective, model, held_out)
    collapsed = evaluate(objective, Constant(32), held_out)
    # measured: collapsed 0, random -0.13, trained -2.0; val_loss 2.9 -> 0.03
    assert collapsed["uniformity"] > -1e-5 > random_scores["uniformity"] > trained_scores["uniformity"] + 0.5, \
        (collapsed, random_scores, trained_scores)
    assert trained_scores["loss"] < random_scores["loss"] - 1
    assert 0 < random_scores["alignment"] < trained_scores["alignment"]  # spreading texts apart costs some alignment


def test_alignment_and_uniformity_follow_their_definitions():
    z = F.normalize(torch.randn(300, 8), dim=-1)
    positives = F.normalize(z + 0.3 * torch.randn(300, 8), dim=-1)
    assert torch.allclose(alignment(z, positives), (z - positives).norm(dim=-1).pow(2).mean(), atol=1e-6)
    reference = torch.pdist(z.double()).pow(2).mul(-2).exp().mean().log()  # Wang & Isola's code
    assert abs(float(uniformity(z)) - float(reference)) < 1e-5
    assert abs(float(uniformity(z, block=7)) - float(reference)) < 1e-5  # the blocks see every pair once
    assert float(uniformity(z[:1])) == 0.0 and float(uniformity(z[:1].expand(5, -1))) > -1e-6


def reference_spearman(x, y):
    """Ranks by counting (ties get the mean of the ranks they span), then Pearson's correlation."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        return np.array([(v < a).sum() + ((v == a).sum() + 1) / 2 for a in v])
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def test_spearman_averages_ties():
    x = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.9, 0.5, 0.3])
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    assert torch.equal(average_ranks(x), torch.tensor([1.0, 5.0, 5.0, 2.0, 7.0, 5.0, 3.0], dtype=torch.float64))
    assert abs(spearman(x, y) - reference_spearman(x, y)) < 1e-12
    assert abs(spearman(x, -x) + 1) < 1e-12 and spearman(torch.ones(5), torch.arange(5.0)) == 0.0
    values = torch.randint(0, 4, (50,)).float(), torch.randn(50)
    assert abs(spearman(*values) - reference_spearman(*values)) < 1e-12


def test_validation_scores_a_scored_pairs_file(tmp_path, tokenizer):
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "from", "home"]
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(12):  # ties in the scores, and texts of different lengths (batched by length)
        pick = lambda n: " ".join(words[int(j)] for j in torch.randint(len(words), (n,), generator=g))
        rows.append((pick(2 + i % 5), pick(3 + i % 4), str([0, 1, 2.5, 5, 5, 4][i % 6])))
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\n" + "".join("\t".join(r) + "\n" for r in rows))
    objective = get_objective("simcse", tokenizer, ContrastiveConfig(eval_pairs=str(path)))
    model = BagOfTokens(tokenizer.vocab_size)
    scores = objective.validation_scores(model, batch_size=5)
    assert set(scores) == {"spearman", "pairs_alignment", "pairs_uniformity"}

    def one(text):  # each text alone: [CLS] text [SEP], mean of its token vectors
        ids = torch.tensor([tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id])
        return F.normalize(model.table(ids).mean(0), dim=-1)

    with torch.no_grad():
        a, b = torch.stack([one(r[0]) for r in rows]), torch.stack([one(r[1]) for r in rows])
    cosines, gold = (a * b).sum(-1), [float(r[2]) for r in rows]
    assert abs(scores["spearman"] - reference_spearman(cosines, gold)) < 1e-6
    top = torch.tensor(gold) >= 4  # the top fifth of 0..5
    assert abs(scores["pairs_alignment"] - float((a[top] - b[top]).pow(2).sum(-1).mean())) < 1e-5
    assert abs(scores["pairs_uniformity"] - float(uniformity(torch.cat([a, b])))) < 1e-5
    collapsed = objective.validation_scores(Constant(max_seq_len=64))
    assert collapsed["spearman"] == 0.0 and abs(collapsed["pairs_uniformity"]) < 1e-5

    from types import SimpleNamespace

    from stratalm.objectives import MaskingConfig

    run_options = SimpleNamespace(mlm=MaskingConfig(), simcse=ContrastiveConfig(eval_pairs=str(path)))
    mixture = get_objective("mlm+simcse", tokenizer, run_options)
    assert set(mixture.validation_scores(model)) == {"simcse_spearman", "simcse_pairs_alignment", "simcse_pairs_uniformity"}
    assert get_objective("simcse", tokenizer).validation_scores(model) == {}
    path.write_text("sentence1\tsentence2\tscore\na\tb\thigh\n")
    with pytest.raises(DataError, match="column 'score' must hold numbers"):
        get_objective("simcse", tokenizer, ContrastiveConfig(eval_pairs=str(path)))
    path.write_text("sentence1\tsentence2\na\tb\n")
    with pytest.raises(DataError, match="has no column 'score'"):
        get_objective("simcse", tokenizer, ContrastiveConfig(eval_pairs=str(path)))


def test_mrpc_dev_reads_as_scored_pairs(tokenizer):
    """MRPC's TSV has no quoting (a sentence may open a quote it never closes) and a 0/1 Quality."""
    from conftest import shared_file

    options = ContrastiveConfig(eval_pairs=str(shared_file("mrpc", "dev.tsv")), eval_first_column="#1 String",
                                eval_second_column="#2 String", eval_score_column="Quality")
    objective = get_objective("simcse", tokenizer, options)
    pairs, scores = objective.eval_pairs
    assert len(pairs) == 408 and set(scores.tolist()) == {0.0, 1.0} and int(scores.sum()) == 279
    assert pairs[0][1].startswith('"The foodservice pie business')
    result = objective.validation_scores(tiny_bert(tokenizer))
    # measured 0.27 for a random encoder: paraphrases share words, and a bag of random vectors sees that
    assert all(math.isfinite(v) for v in result.values()) and 0 < result["spearman"] < 0.6, result


def test_simcse_refuses_models_that_are_not_encoders(tokenizer):
    from stratalm.families import preset

    with pytest.raises(ConfigError, match="trains sentence encoders; 'gpt2' is a decoder model"):
        get_objective("simcse", tokenizer).check(preset("tiny"), None)
    with pytest.raises(ConfigError, match="needs an encoder with an MLM head"):
        get_objective("mlm+simcse:0.1", tokenizer).check(preset("t5"), None)
