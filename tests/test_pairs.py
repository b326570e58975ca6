"""Sentence pairs (NSP, SOP): balanced labels, whole-sentence segments of one document or of two,
BERT's pair layout, and learning."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import pydoc_texts, run_cli
from stratalm.errors import ConfigError
from stratalm.families import preset
from stratalm.objectives import get_objective
from stratalm.objectives.pairs import first_piece, longest_piece
from stratalm.tokenize import train_bpe


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(iter(pydoc_texts(10)), vocab_size=600, show_progress=False)


def stream(tokenizer, length=61, rows=8000):
    """Windows of a stream of documents separated by eos, as `prepare` writes them."""
    ids = []
    for text in pydoc_texts(30):
        ids += tokenizer.encode(text) + [tokenizer.eos_id]
    ids = torch.tensor(ids)
    starts = torch.randint(0, len(ids) - length, (rows,), generator=torch.Generator().manual_seed(0))
    return torch.stack([ids[s:s + length] for s in starts])


def test_sop_pairs(tokenizer):
    windows = stream(tokenizer)
    objective = get_objective("sop", tokenizer)
    inputs, targets = objective.prepare(windows, torch.Generator().manual_seed(1))
    swapped = targets["labels"]
    assert abs(swapped.float().mean().item() - 0.5) < 0.02  # label balance over 8,000 pairs
    cls, sep, pad, eos = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.eos_id
    ends = objective.sentence_ends
    aligned = 0
    for r in range(0, len(windows), 37):
        ids, types, mask = inputs["input_ids"][r], inputs["token_type_ids"][r], inputs["attention_mask"][r]
        n = int(mask.sum())
        tokens = ids[:n].tolist()
        assert tokens[0] == cls and tokens[-1] == sep and tokens.count(sep) == 2
        split = tokens.index(sep)
        first, second = tokens[1:split], tokens[split + 1:-1]
        assert first and second and eos not in first + second  # never across a document boundary
        in_order = second + first if swapped[r] else first + second
        piece = longest_piece(windows[r].tolist(), eos)
        starts = [i for i in range(len(piece)) if piece[i:i + len(in_order)] == in_order]
        assert starts, "not consecutive text of one document"
        if in_order[0] != piece[0] or in_order[-1] != piece[-1]:  # trimmed: whole sentences only
            first_half = second if swapped[r] else first
            assert piece[starts[0] - 1] in ends and in_order[-1] in ends and first_half[-1] in ends
            aligned += 1
        assert types[:split + 1].eq(0).all() and types[split + 1:n].eq(1).all() and ids[n:].eq(pad).all()
    assert aligned > 100  # most windows hold enough sentences to cut at sentence ends


def test_mlm_plus_sop_never_masks_the_layout(tokenizer):
    objective = get_objective("mlm+sop", tokenizer)
    inputs, targets = objective.prepare(stream(tokenizer, rows=500), torch.Generator().manual_seed(2))
    layout = torch.isin(inputs["input_ids"], torch.tensor([tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]))
    chosen = targets["mlm_labels"] != -100
    assert chosen.any() and not (chosen & layout).any()
    assert not torch.isin(targets["mlm_labels"][chosen], torch.tensor([tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])).any()


def test_sop_refuses_models_without_a_pair_head(tokenizer):
    with pytest.raises(ConfigError, match="sentence-pair head"):
        get_objective("sop", tokenizer).check(preset("roberta"), None)
    with pytest.raises(ConfigError, match="MLM head"):
        get_objective("mlm+sop", tokenizer).check(preset("bert", mlm_head=False), None)
    get_objective("mlm+sop", tokenizer).check(preset("albert"), None)


def test_nsp_pairs_true_next_or_another_document(tmp_path):
    import json

    from stratalm.data import TokenData, prepare
    from stratalm.data.tokens import RandomWindows

    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in pydoc_texts(30)))
    prepare([str(tmp_path / "docs.jsonl")], str(tmp_path / "data"), tokenizer="bpe", vocab_size=600, progress=False)
    data = TokenData(str(tmp_path / "data"))
    tok = data.tokenizer()
    objective = get_objective("nsp", tok)
    objective.check(preset("bert"), data)
    windows, offsets = RandomWindows(data, "train", 61, seed=0).next_batch(4000)
    documents = data.document_of(offsets)
    inputs, targets = objective.prepare(windows, torch.Generator().manual_seed(3), documents)
    labels = targets["labels"]
    assert abs(labels.float().mean().item() - 0.5) < 0.03  # about half are random next segments
    starts = data.document_starts().astype("int64")
    stream = data.read(0, data.manifest["n_tokens"]).tolist()

    def document_of_text(segment):  # where in the corpus a segment occurs, as a document index
        text = ",".join(map(str, segment)) + ","
        hits = {int((starts <= i).sum()) - 1 for i in range(len(stream)) if stream[i] == segment[0]
                and ",".join(map(str, stream[i:i + len(segment)])) + "," == text}
        return hits

    for r in range(0, 4000, 250):
        n = int(inputs["attention_mask"][r].sum())
        tokens = inputs["input_ids"][r, :n].tolist()
        split = tokens.index(tok.sep_id)
        a, b = tokens[1:split], tokens[split + 1:-1]
        piece, later = first_piece(windows[r].tolist(), tok.eos_id)
        text = ",".join(map(str, piece)) + ","
        assert ",".join(map(str, a)) + "," in text and tok.eos_id not in a + b
        if labels[r] == 0:
            assert ",".join(map(str, a + b)) + "," in text  # the true continuation
        elif len(b) >= 4:  # long enough to tell which document it comes from
            assert int(documents[r]) + later not in document_of_text(b)  # from some other document


def test_nsp_needs_document_boundaries(tmp_path):
    from stratalm.data import TokenData, prepare

    (tmp_path / "one.txt").write_text("\n".join(pydoc_texts(3)))
    prepare([str(tmp_path / "one.txt")], str(tmp_path / "data"), tokenizer="char", progress=False)
    data = TokenData(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="only one"):
        get_objective("nsp", data.tokenizer()).check(preset("bert"), data)


# Learning, on 2 CPU cores in under a minute each. A 2-layer post-norm BERT sits at chance for a
# few hundred steps before its [CLS] path starts to work; the pre-norm variant of the same model
# learns the pair task from the start, so the learning tests use it (the recipe is the same).
LEARN = ["model.n_layers=2", "model.d_model=128", "model.n_heads=4", "model.d_ff=512", "model.dropout=0",
         "model.attention_dropout=0", "model.norm_position=pre", "model.final_norm=true", "train.batch_size=32",
         "train.lr=1e-3", "train.warmup_steps=30", "train.eval_every=0", "train.progress=false"]


def final_scores(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl") if "val_loss" in line][-1]


@pytest.mark.slow  # a longer check (make test-slow): the default suite stays near 10 minutes
def test_nsp_learns_to_tell_the_next_segment_from_another_document(pydoc_bpe, tmp_path):
    result = run_cli("pretrain", "--data", pydoc_bpe, "--out", tmp_path / "nsp", "--model", "bert", "--objective", "nsp",
                     "--max-steps", "500", "model.max_seq_len=64", *LEARN)
    assert result.returncode == 0, result.stderr
    scores = final_scores(tmp_path / "nsp")
    assert scores["val_pair_accuracy"] > 0.70, scores  # chance is 0.5 (measured 0.754)


@pytest.mark.slow  # about 90 s on 2 cores
def test_sop_learns_sentence_order_above_chance(shakespeare_char, tmp_path):
    """Sentence order is the harder task: on Shakespeare this tiny model reaches about 66% in a
    minute, with rotary positions (learned ones at N(0, 0.02) start on a bag-of-characters plateau:
    62%); about 70% takes 1,000-2,000 steps (see the closing note)."""
    result = run_cli("pretrain", "--data", shakespeare_char, "--out", tmp_path / "sop", "--model", "albert",
                     "--objective", "sop", "--max-steps", "500", "model.max_seq_len=128", "model.share_layers=0",
                     "model.position=rope", "train.eval_windows=512", *LEARN)
    assert result.returncode == 0, result.stderr
    scores = final_scores(tmp_path / "sop")
    assert scores["val_pair_accuracy"] > 0.60, scores  # 512 balanced pairs: chance +- 0.044 at two sigma
