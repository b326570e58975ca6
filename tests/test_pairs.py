"""Sentence-order prediction: balanced labels, both segments from one document, BERT's pair layout."""
from __future__ import annotations

import pytest
import torch

from conftest import pydoc_texts
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
    for r in range(0, len(windows), 37):
        ids, types, mask = inputs["input_ids"][r], inputs["token_type_ids"][r], inputs["attention_mask"][r]
        n = int(mask.sum())
        tokens = ids[:n].tolist()
        assert tokens[0] == cls and tokens[-1] == sep and tokens.count(sep) == 2
        split = tokens.index(sep)
        first, second = tokens[1:split], tokens[split + 1:-1]
        assert first and second and eos not in first + second  # never across a document boundary
        in_order = second + first if swapped[r] else first + second
        assert in_order == longest_piece(windows[r].tolist(), eos)  # consecutive text of one document
        assert types[:split + 1].eq(0).all() and types[split + 1:n].eq(1).all() and ids[n:].eq(pad).all()


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
        assert piece[:len(a)] == a and tok.eos_id not in a + b
        if labels[r] == 0:
            assert piece[len(a):len(a) + len(b)] == b  # the true continuation
        else:
            assert int(documents[r]) + later not in document_of_text(b)  # from some other document


def test_nsp_needs_document_boundaries(tmp_path):
    from stratalm.data import TokenData, prepare

    (tmp_path / "one.txt").write_text("\n".join(pydoc_texts(3)))
    prepare([str(tmp_path / "one.txt")], str(tmp_path / "data"), tokenizer="char", progress=False)
    data = TokenData(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="only one"):
        get_objective("nsp", data.tokenizer()).check(preset("bert"), data)
