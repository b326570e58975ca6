"""Tokenizers and `prepare`: round trips, shards, document boundaries, splits, streaming, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_DATA, pydoc_texts
from stratalm.data import TokenData, prepare
from stratalm.data import sources
from stratalm.errors import DataError, OutputExistsError
from stratalm.tokenize import SPECIAL_TOKENS, Tokenizer, train_bpe, train_char


def test_bpe_round_trip_and_special_ids(tmp_path):
    tok = train_bpe(iter(pydoc_texts(10)), vocab_size=600, show_progress=False)
    text = "The for statement iterates — naïve 数字 ✓\n\tdone"
    assert tok.decode(tok.encode(text)) == text  # byte-level: nothing is unknown
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id, tok.cls_id, tok.sep_id] == list(range(7))
    assert tok.vocab_size == 600
    tok.save(str(tmp_path))
    again = Tokenizer.load(str(tmp_path / "tokenizer.json"))
    assert again.encode(text) == tok.encode(text) and again.eos_id == 2


def test_char_tokenizer_is_one_token_per_character():
    tok = train_char(iter(["hello world\n"]))
    ids = tok.encode("hello\nworld")
    assert len(ids) == len("hello\nworld") and tok.decode(ids) == "hello\nworld"
    assert tok.vocab_size == len(SPECIAL_TOKENS) + len(set("hello world\n"))
    assert tok.encode("z") == [tok.unk_id]


def test_prepare_writes_shards_manifest_and_document_boundaries(tmp_path):
    docs = pydoc_texts(6)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    manifest = prepare([str(corpus)], str(tmp_path / "out"), tokenizer="char", text_field="body",
                       shard_tokens=5000, val_fraction=0.2, progress=False)
    data = TokenData(str(tmp_path / "out"))
    tok = data.tokenizer()
    assert manifest["dtype"] == "uint16" and len(manifest["shards"]) > 1
    stream = data.read(0, manifest["n_tokens"])  # across every shard border
    starts = data.document_starts()
    assert len(starts) == len(docs) == manifest["n_documents"]
    written = []
    for i in range(len(docs)):
        end = starts[i + 1] - 1 if i + 1 < len(docs) else manifest["n_tokens"]  # one eos separates documents
        written.append(tok.decode(stream[starts[i]:end].tolist()))
        if i + 1 < len(docs):
            assert stream[end] == tok.eos_id
    # Every document is written whole, the held-out ones after the others (the validation split).
    assert sorted(written) == sorted(docs)
    held = manifest["validation"]["documents"]
    assert manifest["validation"]["by"] == "documents" and 1 <= held < len(docs)
    assert manifest["splits"] == {"train": [0, int(starts[-held])], "validation": [int(starts[-held]), manifest["n_tokens"]]}
    assert written[:-held] == [d for d in docs if d not in written[-held:]]  # corpus order kept within each split


def test_validation_holds_out_whole_documents_drawn_with_the_seed(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    texts = [f"file {i:02d}: " + " ".join(f"w{i}x{j}" for j in range(30 + 7 * i)) + "\n" for i in range(20)]
    for i, text in enumerate(texts):
        (folder / f"{i:02d}.txt").write_text(text)

    def held_out(seed, name):
        manifest = prepare([str(folder)], str(tmp_path / name), tokenizer="char", seed=seed, progress=False)
        data = TokenData(str(tmp_path / name))
        start, end = data.split("validation")
        pieces = data.tokenizer().decode(data.read(start, end - start).tolist()).split("\n")
        chosen = [p + "\n" for p in pieces if p]
        share = (end - start) / manifest["n_tokens"]
        return chosen, share

    first, share = held_out(0, "a")
    assert set(first) <= set(texts) and 1 < len(first) < 5  # whole files, not the tail of the last one
    assert 0.05 < share < 0.15  # about the asked-for share of the text
    assert held_out(0, "b")[0] == first  # the seed decides
    assert held_out(1, "c")[0] != first


def test_prepare_streams_in_pieces_without_changing_the_tokens(tmp_path, monkeypatch):
    text = "".join(pydoc_texts(4))
    (tmp_path / "a.txt").write_text(text)
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "whole"), tokenizer="char", progress=False)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 1000)  # many small pieces
    prepare([str(tmp_path / "a.txt")], str(tmp_path / "pieces"), tokenizer="char", progress=False)
    whole, pieces = TokenData(str(tmp_path / "whole")), TokenData(str(tmp_path / "pieces"))
    assert np.array_equal(whole.read(0, whole.manifest["n_tokens"]), pieces.read(0, pieces.manifest["n_tokens"]))
    assert pieces.manifest["n_documents"] == 1


def mixed_corpus(tmp_path) -> tuple[list[str], int]:
    """Many short JSONL documents between two text files (the inputs, and how many documents)."""
    texts = pydoc_texts(8)
    (tmp_path / "a.txt").write_text(texts[0])
    (tmp_path / "b.txt").write_text(texts[1])
    sentences = [line for text in texts[2:] for line in text.splitlines() if line.strip()]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    return [str(tmp_path / name) for name in ("a.txt", "c.jsonl", "b.txt")], len(sentences) + 2


def assert_same_folder(one: dict, two: dict, folder_one, folder_two) -> None:
    assert {k: v for k, v in one.items() if k != "sources"} == {k: v for k, v in two.items() if k != "sources"}
    for name in ["documents.bin"] + [shard["file"] for shard in one["shards"]]:
        assert (folder_one / name).read_bytes() == (folder_two / name).read_bytes(), name


def test_parallel_workers_write_the_same_folder_as_one_process(tmp_path, monkeypatch):
    """Many short JSONL documents and two text files read in pieces, in batches small enough that
    documents and held-out runs straddle them: 2 worker processes write byte for byte what one
    process writes with its usual batches."""
    from stratalm.cli import main
    from stratalm.data import encode

    inputs, n_documents = mixed_corpus(tmp_path)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 700)  # the text files come in many pieces
    one = prepare(inputs, str(tmp_path / "one"), tokenizer="bpe", vocab_size=400, progress=False)
    monkeypatch.setattr(encode, "ENCODE_BATCH_CHARS", 2000)  # a few dozen pieces per batch
    tokenizer = str(tmp_path / "one" / "tokenizer.json")
    two = prepare(inputs, str(tmp_path / "two"), tokenizer=tokenizer, progress=False, workers=2)
    assert one["validation"]["by"] == "documents" and one["n_documents"] == n_documents > 400
    assert_same_folder(one, two, tmp_path / "one", tmp_path / "two")
    assert main(["prepare", inputs[0], "--out", str(tmp_path / "three"), "--workers", "0", "--quiet"]) != 0
    assert not (tmp_path / "three").exists()


def test_small_batches_through_the_reading_and_encoding_threads_change_nothing(tmp_path, monkeypatch):
    """One process reads, encodes and writes different batches at once: with batches of 7 pieces
    (hundreds of them, ids read back while the next ones encode) the folder is the one a single
    batch gives, and a bad line far into the corpus still stops it with its line number."""
    from stratalm.data import encode

    inputs, _ = mixed_corpus(tmp_path)
    monkeypatch.setattr(encode, "ENCODE_BATCH_CHARS", 1 << 30)
    monkeypatch.setattr(encode, "BATCH_PIECES", 1 << 30)
    whole = prepare(inputs, str(tmp_path / "whole"), tokenizer="bpe", vocab_size=400, progress=False)
    monkeypatch.setattr(encode, "BATCH_PIECES", 7)
    tokenizer = str(tmp_path / "whole" / "tokenizer.json")
    small = prepare(inputs, str(tmp_path / "small"), tokenizer=tokenizer, progress=False)
    assert_same_folder(whole, small, tmp_path / "whole", tmp_path / "small")
    lines = (tmp_path / "c.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "c.jsonl").write_text("".join(lines[:300]) + '{"text": "cut\n' + "".join(lines[300:]))
    with pytest.raises(DataError, match="c.jsonl' line 301 is not valid JSON"):
        prepare(inputs, str(tmp_path / "bad"), tokenizer=tokenizer, progress=False)
    assert not (tmp_path / "bad").exists()


def test_held_out_copy_reads_the_file_in_bounded_chunks(tmp_path, monkeypatch):
    """The held-out documents go behind the training ones through plain reads of at most
    COPY_TOKENS tokens (no memory map, whose pages would all stay resident: peak memory would grow
    with the corpus); chunks far smaller than a document (pieces of one) write the same folder."""
    import importlib

    prep = importlib.import_module("stratalm.data.prepare")
    inputs, _ = mixed_corpus(tmp_path)
    whole = prepare(inputs, str(tmp_path / "whole"), tokenizer="bpe", vocab_size=400, progress=False)
    reads, read = [], prep.HeldOut.read

    def counted(self, handle, count):
        reads.append(count)
        return read(self, handle, count)

    monkeypatch.setattr(prep.HeldOut, "read", counted)
    monkeypatch.setattr(prep, "COPY_TOKENS", 20)  # less than many a document
    monkeypatch.setattr(np, "memmap", None)  # nothing in prepare maps a file
    tokenizer = str(tmp_path / "whole" / "tokenizer.json")
    small = prepare(inputs, str(tmp_path / "small"), tokenizer=tokenizer, progress=False)
    monkeypatch.undo()
    assert_same_folder(whole, small, tmp_path / "whole", tmp_path / "small")
    start, end = small["splits"]["validation"]
    separators = small["validation"]["documents"] - 1  # written between the held-out documents, not read
    assert len(reads) > 65 and max(reads) <= 20 and sum(reads) == end - start - separators


def test_held_out_documents_drawn_in_slices_are_the_one_pass_draw(monkeypatch):
    """The seeded draw walks the permutation a slice at a time over arrays (a few bytes a document);
    the documents it picks are those of the plain loop over every document."""
    import importlib

    prep = importlib.import_module("stratalm.data.prepare")
    sizes = np.random.default_rng(5).integers(1, 5000, 1000).tolist() + [200_000]  # and one huge document
    for share, seed in ((0.1, 0), (0.3, 7), (0.01, 2)):
        target, held, expected = share * sum(sizes), 0, set()
        for index in np.random.default_rng(seed).permutation(len(sizes)).tolist():
            if held + sizes[index] / 2 < target:
                expected.add(index)
                held += sizes[index]
        monkeypatch.setattr(prep, "HELD_OUT_DRAW", 7)
        picked = prep.held_out_documents(np.array(sizes), share, seed)
        assert picked.tolist() == sorted(expected)
    assert len(prep.held_out_documents(np.array([10, 10]), 0.9, 0)) == 0  # nothing left to train on


JSONL_LINES = [
    '{"text": "plain"}\n', '{"text":"no space","id":3}\n', '  {"text": "spaces around"}  \n', "\n", "   \t\n",
    '{"text": "crlf"}\r\n', '{"text": "escapes \\u00e9\\n\\t\\"\\ud83d\\ude00", "x": NaN}\n',
    '{"text": "naïve 数字 ✓"}\n', '{"id": 1, "text": "field last"}\n', '{"text": "no final break"}',
]


def test_jsonl_reading_gives_what_json_loads_gives_line_by_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes("".join(JSONL_LINES).encode("utf-8"))
    with open(path, encoding="utf-8") as handle:  # the reference: universal newlines, json.loads per line
        expected = [json.loads(line)["text"] for line in handle if line.strip()]
    assert list(sources._jsonl_documents(str(path), "text")) == expected and len(expected) == 8


@pytest.mark.parametrize("bad_line,message", [
    ('{"text": "a"}, {"text": "b"}\n', "line 3 is not valid JSON"),  # two values: fine inside an array, not alone
    ('{"text": "a"} x\n', "line 3 is not valid JSON"),
    ('["text"]\n', "line 3 has no 'text' field"),
    ('{"txt": "a"}\n', "line 3 has no 'text' field"),
    ('{"text": null}\n', "line 3: field 'text' holds null, not a string"),
    ('{"text": ["a", "b"]}\n', 'line 3: field \'text\' holds \\["a", "b"\\], not a string'),
])
def test_jsonl_reading_names_the_bad_line(tmp_path, bad_line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n\n' + bad_line + '{"text": "after"}\n')
    with pytest.raises(DataError, match=message):
        list(sources._jsonl_documents(str(path), "text"))


def test_prepare_takes_folders_and_uses_uint32_for_large_vocabularies(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"<unk>": 70_000, "<eos>": 70_001}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "big.json"))
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.txt").write_text("w1 w2 w69999\n")
    (folder / "sub" / "two.txt").write_text("w3 nothing\n")
    manifest = prepare([str(folder)], str(tmp_path / "out"), tokenizer=str(tmp_path / "big.json"), progress=False)
    assert manifest["dtype"] == "uint32" and manifest["n_documents"] == 2
    data = TokenData(str(tmp_path / "out"))
    assert data.read(0, manifest["n_tokens"]).tolist() == [1, 2, 69999, 70_001, 3, 70_000]


def test_tiny_shakespeare_split_matches_the_reference(tmp_path):
    source = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not source.exists():
        pytest.skip(f"{source} is absent (real data lives in ../shared/data)")
    manifest = prepare([str(source)], str(tmp_path / "sh"), tokenizer="char", progress=False)
    assert manifest["splits"] == {"train": [0, 1_003_854], "validation": [1_003_854, 1_115_394]}
    assert manifest["validation"]["by"] == "tokens" and "1 document" in manifest["validation"]["reason"]
    assert manifest["vocab_size"] == 65 + len(SPECIAL_TOKENS)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"text\x00\x01\x02binary", "binary"),
    (b"caf\xe9 au lait\n", "UTF-8"),
])
def test_prepare_rejects_bad_files_and_names_them(tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        prepare([str(bad)], str(tmp_path / "out"), tokenizer="char", progress=False)
    assert "bad.txt" in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_prepare_refuses_to_overwrite(tmp_path):
    (tmp_path / "a.txt").write_text("some text here\n" * 10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError):
        prepare([str(tmp_path / "a.txt")], str(out), tokenizer="char", progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(DataError, match="does not exist"):
        prepare([str(tmp_path / "missing.txt")], str(tmp_path / "o2"), progress=False)
