"""`stratalm prepare`: text -> tokenizer + token shards + manifest.json, streaming.

Layout of the output folder:
    tokenizer.json
    shard_00000.bin ...   token ids, raw little-endian uint16 (vocabulary <= 65536) or uint32
    documents.bin         uint64 start offset of every document in the token stream
    manifest.json         dtype, shards and their sizes, document count, train/validation ranges

Documents are separated by one eos token, so a causal model learns where a document ends. The
validation split holds out whole documents: a seeded random set of them holding about `val_share`
of the text, written after the training documents, so both splits are ranges of the stream and no
document is cut between them. With too few documents for that (one text file, such as Tiny
Shakespeare) it is the last `val_share` of the tokens (nanoGPT's convention); the manifest's
`validation` entry says which.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterator, Optional

import numpy as np
from tqdm import tqdm

from ..errors import DataError, OutputExistsError
from ..tokenize import Tokenizer, train_bpe, train_char
from .sources import document_sizes, iter_documents, iter_texts, list_input_files

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ENCODE_BATCH_CHARS = 4 << 20  # text handed to the (parallel) Rust encoder at once
COPY_TOKENS = 16 << 20  # held-out tokens moved behind the training documents at once


class ShardWriter:
    """Appends token ids to fixed-size shard files and document offsets to documents.bin."""

    def __init__(self, folder: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict] = []
        self.n_tokens = 0
        self.n_documents = 0
        self._file = None
        self._in_shard = 0
        self._docs = open(os.path.join(folder, "documents.bin"), "wb")

    def start_document(self) -> None:
        np.array([self.n_tokens], dtype=np.uint64).tofile(self._docs)
        self.n_documents += 1

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None or self._in_shard == self.shard_tokens:
                self._next_shard()
            take = min(len(ids), self.shard_tokens - self._in_shard)
            ids[:take].astype(self.dtype).tofile(self._file)
            self._in_shard += take
            self.shards[-1]["tokens"] += take
            self.n_tokens += take
            ids = ids[take:]

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"shard_{len(self.shards):05d}.bin"
        self._file = open(os.path.join(self.folder, name), "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._in_shard = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._docs.close()


def _build_tokenizer(kind: str, inputs: list[str], vocab_size: int, text_field: str, progress: bool) -> Tokenizer:
    if kind == "bpe":
        return train_bpe(iter_texts(inputs, text_field), vocab_size, show_progress=progress)
    if kind == "char":
        return train_char(iter_texts(inputs, text_field))
    if os.path.exists(kind):
        return Tokenizer.load(kind)
    raise DataError(f"--tokenizer must be bpe, char, or the path of a tokenizer.json; '{kind}' is none of these.")


def _encoded_documents(tokenizer: Tokenizer, inputs: list[str], text_field: str, bar) -> Iterator[tuple[bool, np.ndarray]]:
    """Yield (starts_a_document, ids) in corpus order, encoding many pieces per call to the encoder."""
    batch: list[tuple[bool, str]] = []
    size = 0

    def flush():
        encoded = tokenizer.encode_batch([text for _, text in batch])
        for (starts, text), ids in zip(batch, encoded):
            bar.update(len(text.encode("utf-8")))
            yield starts, np.asarray(ids, dtype=np.int64)

    for document in iter_documents(inputs, text_field):
        for index, piece in enumerate(document):
            batch.append((index == 0, piece))
            size += len(piece)
            if size >= ENCODE_BATCH_CHARS:
                yield from flush()
                batch, size = [], 0
    yield from flush()


def held_out_documents(sizes: list[int], share: float, seed: int) -> set[int]:
    """Indices of the documents kept for validation: drawn in a seeded random order, each taken when
    it brings the held-out text closer to `share` of the whole (so one huge file never becomes the
    whole validation split). Empty when no whole document fits, or none would be left to train on."""
    target, held, chosen = share * sum(sizes), 0, set()
    for index in np.random.default_rng(seed).permutation(len(sizes)).tolist():
        if held + sizes[index] / 2 < target:
            chosen.add(index)
            held += sizes[index]
    return chosen if len(chosen) < len(sizes) else set()


def describe_split(manifest: dict) -> str:
    """The split as one phrase for the console: sizes, and how validation was chosen."""
    (t0, t1), (v0, v1) = manifest["splits"]["train"], manifest["splits"]["validation"]
    how = manifest.get("validation", {})
    if how.get("by") == "documents":
        detail = f"{how['documents']:,} of {manifest['n_documents']:,} documents, drawn with seed {how['seed']}"
    else:
        detail = f"the last {how.get('share', 0.1):.0%} of the tokens" + (f": {how['reason']}" if how.get("reason") else "")
    return f"train {t1 - t0:,}, validation {v1 - v0:,} tokens ({detail})"


class HeldOut:
    """Held-out documents, written aside (a raw token file in the staging folder) while the corpus
    streams, then appended behind the training documents."""

    def __init__(self, folder: str, dtype: np.dtype) -> None:
        self.path, self.dtype = os.path.join(folder, "held_out.tmp"), dtype
        self.lengths: list[int] = []
        self._file = open(self.path, "wb")

    def start_document(self) -> None:
        self.lengths.append(0)

    def write(self, ids: np.ndarray) -> None:
        ids.astype(self.dtype).tofile(self._file)
        self.lengths[-1] += len(ids)

    def append_to(self, writer: ShardWriter, separator: Optional[np.ndarray]) -> int:
        """Write the held-out documents into `writer`; returns where the first one starts."""
        self._file.close()
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r") if sum(self.lengths) else np.zeros(0, self.dtype)
        start, offset = None, 0
        for length in self.lengths:
            if writer.n_documents and separator is not None:
                writer.write(separator)
            writer.start_document()
            start = writer.n_tokens if start is None else start
            for piece in range(offset, offset + length, COPY_TOKENS):
                writer.write(np.asarray(tokens[piece:min(piece + COPY_TOKENS, offset + length)]))
            offset += length
        del tokens
        os.remove(self.path)
        return writer.n_tokens if start is None else start


def prepare(
    inputs: list[str],
    out: str,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    val_share: float = 0.1,
    text_field: str = "text",
    shard_tokens: int = 100_000_000,
    overwrite: bool = False,
    progress: bool = True,
    sentinels: int = 0,
    seed: int = 0,
    val_fraction: Optional[float] = None,
) -> dict:
    """Tokenize `inputs` into `out`; returns the manifest. The folder appears only when complete.
    `val_share` of the documents (seeded by `seed`) is held out for validation; `val_fraction` is
    its older name."""
    files = list_input_files(inputs)
    val_share = val_fraction if val_fraction is not None else val_share
    if not 0.0 <= val_share < 1.0:
        raise DataError(f"the validation share must be in [0, 1); got {val_share}.")
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise OutputExistsError(f"'{out}' already exists and is not empty; choose another --out or pass --overwrite.")
    if sum(os.path.getsize(f) for f in files) == 0:
        raise DataError(f"the input is empty ({', '.join(files[:3])}); give files that hold text.")

    tok = _build_tokenizer(tokenizer, files, vocab_size, text_field, progress)
    if sentinels:  # T5's span-corruption markers, after every other token so no id moves
        tok.backend.add_special_tokens([f"<extra_id_{i}>" for i in range(sentinels)])
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    sizes = document_sizes(files, text_field)
    held_out = held_out_documents(sizes, val_share, seed) if val_share > 0 else set()
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".prepare-", dir=parent)
    try:
        writer = ShardWriter(staging, dtype, shard_tokens)
        aside = HeldOut(staging, dtype)
        separator = np.array([tok.eos_id], dtype=np.int64) if tok.eos_id is not None else None
        total_bytes = sum(os.path.getsize(f) for f in files)
        document, target = -1, writer
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
            for starts, ids in _encoded_documents(tok, files, text_field, bar):
                if starts:
                    document += 1
                    target = aside if document in held_out else writer
                    if target is writer and writer.n_documents and separator is not None:
                        writer.write(separator)
                    target.start_document()
                target.write(ids)
        n_train = aside.append_to(writer, separator)
        writer.close()
        if writer.n_tokens < 2:
            raise DataError("the input holds no text to train on (fewer than 2 tokens after tokenizing).")
        if held_out:
            validation = {"by": "documents", "share": val_share, "seed": seed, "documents": len(aside.lengths)}
        else:
            n_train = int(writer.n_tokens * (1.0 - val_share))
            validation = {"by": "tokens", "share": val_share}
            if val_share > 0:
                validation["reason"] = (f"{len(sizes)} document{'s are' if len(sizes) > 1 else ' is'} too few "
                                        f"to hold out whole ones")
        manifest = {
            "format": "stratalm-tokens",
            "version": FORMAT_VERSION,
            "dtype": np.dtype(dtype).name,
            "vocab_size": tok.vocab_size,
            "tokenizer": "tokenizer.json",
            "n_tokens": writer.n_tokens,
            "n_documents": writer.n_documents,
            "documents": "documents.bin",
            "shards": writer.shards,
            "splits": {"train": [0, n_train], "validation": [n_train, writer.n_tokens]},
            "validation": validation,
            "sources": [os.path.abspath(f) for f in files],
        }
        tok.save(os.path.join(staging, "tokenizer.json"))
        with open(os.path.join(staging, MANIFEST), "w") as handle:
            json.dump(manifest, handle, indent=2)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return manifest
