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

import io
import json
import os
import shutil
import tempfile
from array import array
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..config_fields import PREPARED_DATA, at_least, check_output_folder, require
from ..errors import DataError, OutputExistsError
from ..tokenize import Tokenizer, train_bpe, train_char, train_unigram, train_wordpiece
from .encode import encoded_batches
from .sources import document_sizes, iter_documents, iter_texts, list_input_files

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Held-out tokens moved behind the training documents at once, read into one buffer with plain
# file reads (a memory map would keep every page it read resident, the whole held-out file).
COPY_TOKENS = 1 << 20
HELD_OUT_DRAW = 1 << 16  # documents considered per slice of the seeded order
SUBWORD_TRAINERS = {"wordpiece": train_wordpiece, "unigram": train_unigram}  # each family's own kind


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

    def write_pieces(self, starts: np.ndarray, lengths: np.ndarray, ids: np.ndarray, separator: Optional[np.ndarray]) -> None:
        """Pieces of documents in stream order, their ids flat: each piece that starts a document
        is recorded in documents.bin and follows a separator (but the stream's first), all in a
        few array operations however many pieces there are."""
        offsets = np.cumsum(lengths) - lengths  # where each piece begins in `ids`
        first = np.flatnonzero(starts)
        before = np.zeros(len(first), dtype=np.int64)  # separators inserted up to each document start
        if separator is not None and len(first):
            gaps = first if self.n_documents else first[1:]
            ids = np.insert(ids, offsets[gaps], separator[0])
            before = np.arange(len(first)) + (1 if self.n_documents else 0)
        (self.n_tokens + offsets[first] + before).astype(np.uint64).tofile(self._docs)
        self.n_documents += len(first)
        self.write(ids)

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


def _build_tokenizer(kind: str, inputs: list[str], vocab_size: int, text_field: str, progress: bool,
                     lowercase: Optional[bool] = None, family: Optional[str] = None) -> Tokenizer:
    if family is not None and kind not in SUBWORD_TRAINERS:
        raise DataError(f"--tokenizer-family chooses the special tokens of a wordpiece or unigram tokenizer, not of '{kind}'.")
    if lowercase is not None and kind not in SUBWORD_TRAINERS:
        raise DataError(f"--lowercase applies to wordpiece and unigram tokenizers, not to '{kind}'.")
    if kind == "bpe":
        return train_bpe(iter_texts(inputs, text_field), vocab_size, show_progress=progress)
    if kind == "char":
        return train_char(iter_texts(inputs, text_field))
    if kind in SUBWORD_TRAINERS:
        return SUBWORD_TRAINERS[kind](iter_texts(inputs, text_field), vocab_size, lowercase=lowercase, family=family,
                                      show_progress=progress)
    if os.path.exists(kind):
        return Tokenizer.load(kind)
    raise DataError(f"--tokenizer must be bpe, char, wordpiece, unigram, or the path of a tokenizer.json (or of a "
                    f"Hugging Face folder); '{kind}' is none of these.")


def held_out_documents(sizes: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Indices (sorted) of the documents kept for validation: drawn in a seeded random order, each
    taken when it brings the held-out text closer to `share` of the whole (so one huge file never
    becomes the whole validation split). Empty when no whole document fits, or none would be left
    to train on. Memory: a few bytes per document (arrays, read in slices), not Python objects."""
    sizes = np.asarray(sizes, dtype=np.int64)
    target, held = share * int(sizes.sum()), 0
    chosen = np.zeros(len(sizes), dtype=bool)
    order = np.random.default_rng(seed).permutation(len(sizes))
    for lo in range(0, len(order), HELD_OUT_DRAW):
        indices = order[lo:lo + HELD_OUT_DRAW]
        for index, size in zip(indices.tolist(), sizes[indices].tolist()):
            if held + size / 2 < target:
                chosen[index] = True
                held += size
    picked = np.flatnonzero(chosen)
    return picked if len(picked) < len(sizes) else np.zeros(0, dtype=np.int64)


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
    streams, then appended behind the training documents, COPY_TOKENS at most at a time."""

    def __init__(self, folder: str, dtype: np.dtype) -> None:
        self.path, self.dtype = os.path.join(folder, "held_out.tmp"), dtype
        self.lengths = array("q")  # tokens of each held-out document, 8 bytes each
        self._file = open(self.path, "wb")

    def write_pieces(self, starts: np.ndarray, lengths: np.ndarray, ids: np.ndarray, separator: Optional[np.ndarray]) -> None:
        """As ShardWriter.write_pieces; the separators come when the documents are appended."""
        ids.astype(self.dtype).tofile(self._file)
        first = np.flatnonzero(starts)
        carried = lengths[:first[0]] if len(first) else lengths  # the end of a document begun before
        if len(carried):
            self.lengths[-1] += int(carried.sum())
        if len(first):
            self.lengths.extend(np.add.reduceat(lengths, first).tolist())

    def read(self, handle: io.BufferedReader, count: int) -> np.ndarray:
        """The next `count` tokens of the held-out file, read into a fresh array (no memory map)."""
        tokens = np.empty(count, dtype=self.dtype)
        if handle.readinto(tokens) != tokens.nbytes:
            raise DataError(f"'{self.path}' ended early while its held-out documents were being copied.")
        return tokens

    def append_to(self, writer: ShardWriter, separator: Optional[np.ndarray]) -> int:
        """Write the held-out documents into `writer`, as many whole ones per call as fit in
        COPY_TOKENS (a larger one in pieces), reading the file in order; returns where the
        first one starts."""
        self._file.close()
        lengths = np.array(self.lengths, dtype=np.int64)
        ends = np.cumsum(lengths)
        begins = ends - lengths
        first = writer.n_tokens + int(separator is not None and writer.n_documents > 0 and len(lengths) > 0)
        with open(self.path, "rb") as handle:
            i = 0
            while i < len(lengths):
                j = max(i + 1, int(np.searchsorted(ends, begins[i] + COPY_TOKENS, side="right")))
                lo, hi = int(begins[i]), int(ends[j - 1])
                if hi - lo <= COPY_TOKENS:
                    writer.write_pieces(np.ones(j - i, dtype=bool), lengths[i:j], self.read(handle, hi - lo), separator)
                else:  # one document larger than a copy
                    for piece in range(lo, hi, COPY_TOKENS):
                        size = min(COPY_TOKENS, hi - piece)
                        writer.write_pieces(np.array([piece == lo]), np.array([size]), self.read(handle, size),
                                            separator)
                i = j
        os.remove(self.path)
        return first


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
    lowercase: Optional[bool] = None,
    tokenizer_family: Optional[str] = None,
    workers: int = 1,
) -> dict:
    """Tokenize `inputs` into `out`; returns the manifest. The folder appears only when complete.
    `val_share` of the documents (seeded by `seed`) is held out for validation; `val_fraction` is
    its older name. `lowercase` and `tokenizer_family` shape a wordpiece or unigram tokenizer
    (None: the family's default; the family t5 for unigram, bert for wordpiece). `workers`
    processes encode in parallel (data/encode.py); the result is the same for any number."""
    files = list_input_files(inputs)
    val_share = val_fraction if val_fraction is not None else val_share
    if not 0.0 <= val_share < 1.0:
        raise DataError(f"the validation share must be in [0, 1); got {val_share}.")
    require("--sentinels", sentinels, at_least(0))
    require("--workers", workers, at_least(1))
    check_output_folder(out, PREPARED_DATA)  # a file, a run or a model is never replaced
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise OutputExistsError(f"'{out}' already exists and is not empty; choose another --out or pass --overwrite.")
    if sum(os.path.getsize(f) for f in files) == 0:
        raise DataError(f"the input is empty ({', '.join(files[:3])}); give files that hold text.")

    tok = _build_tokenizer(tokenizer, files, vocab_size, text_field, progress, lowercase, tokenizer_family)
    if sentinels:  # T5's span-corruption markers, after every other token so no id moves
        tok.backend.add_special_tokens([f"<extra_id_{i}>" for i in range(sentinels)])
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    sizes = document_sizes(files, text_field)
    held_out = held_out_documents(sizes, val_share, seed) if val_share > 0 else np.zeros(0, dtype=np.int64)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".prepare-", dir=parent)
    try:
        writer = ShardWriter(staging, dtype, shard_tokens)
        aside = HeldOut(staging, dtype)
        separator = np.array([tok.eos_id], dtype=np.int64) if tok.eos_id is not None else None
        total_bytes = sum(os.path.getsize(f) for f in files)
        document = -1
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
            for starts, lengths, ids, size in encoded_batches(tok.backend, iter_documents(files, text_field), workers):
                documents = document + np.cumsum(starts)  # the document of each piece
                document = int(documents[-1])
                # Each side (training stream, held out) takes its pieces of the batch in one call.
                held = np.isin(documents, held_out)
                for target, chosen in ((writer, ~held), (aside, held)):
                    if chosen.any():
                        target.write_pieces(starts[chosen], lengths[chosen], ids[np.repeat(chosen, lengths)], separator)
                bar.update(size)
        n_train = aside.append_to(writer, separator)
        writer.close()
        if writer.n_tokens < 2:
            raise DataError("the input holds no text to train on (fewer than 2 tokens after tokenizing).")
        if len(held_out):
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
