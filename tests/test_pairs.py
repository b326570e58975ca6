"""Sentence-order prediction: balanced labels, both segments from one document, BERT's pair layout."""
from __future__ import annotations

import pytest
import torch

from conftest import pydoc_texts
from stratalm.errors import ConfigError
from stratalm.families import preset
from stratalm.objectives import get_objective
from stratalm.objectives.pairs import longest_piece
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
