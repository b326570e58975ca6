"""Encoding a corpus for `prepare`: text pieces in, flat token arrays out, batch by batch, in
corpus order, in this process or in `workers` processes.

A batch is many pieces (about ENCODE_BATCH_CHARS of text, or BATCH_PIECES pieces) handed to the
Rust encoder at once and returned as numpy arrays: one token count per piece and all the ids flat.
Nothing is done per piece in Python beyond collecting the text and reading its ids back, so a
corpus of many short documents (SST-2's 67,349 sentences) costs little more than the encoder. In
this process, the next batch is read and the one after it encoded while the caller writes this
one; with workers, at most 2 x workers batches are in flight. Either way memory stays bounded
however large the corpus.
"""
from __future__ import annotations

import itertools
import multiprocessing
import operator
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Optional, TypeVar

import numpy as np
from tokenizers import Encoding
from tokenizers import Tokenizer as Backend

ENCODE_BATCH_CHARS = 2 << 20  # text handed to the encoder at once (two 1 MiB pieces of a text file: one per core)
# Many short documents come in several batches too, so that reading one overlaps encoding another.
BATCH_PIECES = 16384
Pieces = tuple[list[bool], list[str]]  # whether each piece starts a document, the pieces
Batch = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # starts (bool per piece), token counts, ids, bytes of text
T = TypeVar("T")
_ids_of = operator.attrgetter("ids")


def batches_of_pieces(documents: Iterable[Iterator[str]]) -> Iterator[Pieces]:
    """(whether each piece starts a document, the pieces), about ENCODE_BATCH_CHARS per batch."""
    starts: list[bool] = []
    texts: list[str] = []
    size = 0
    for document in documents:
        for index, piece in enumerate(document):
            starts.append(index == 0)
            texts.append(piece)
            size += len(piece)
            if size >= ENCODE_BATCH_CHARS or len(texts) >= BATCH_PIECES:
                yield starts, texts
                starts, texts, size = [], [], 0
    if texts:
        yield starts, texts


def as_arrays(starts: list[bool], texts: list[str], encodings: list[Encoding]) -> Batch:
    """The encoded batch as arrays. len(encoding) counts its tokens without building its id list,
    so each list is built once, read straight into the flat array and dropped."""
    lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter(itertools.chain.from_iterable(map(_ids_of, encodings)), dtype=np.int64, count=int(lengths.sum()))
    return np.asarray(starts, dtype=bool), lengths, ids, len("".join(texts).encode("utf-8"))


def encode_texts(backend: Backend, texts: list[str]) -> list[Encoding]:
    return backend.encode_batch_fast(texts, add_special_tokens=False)  # no offsets: prepare needs ids only


def encode_pieces(backend: Backend, starts: list[bool], texts: list[str]) -> Batch:
    return as_arrays(starts, texts, encode_texts(backend, texts))


_END = object()


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """`items`, each computed in a background thread while the caller works on the one before."""
    with ThreadPoolExecutor(1) as thread:
        ahead = thread.submit(next, items, _END)
        while (item := ahead.result()) is not _END:
            ahead = thread.submit(next, items, _END)
            yield item


_worker_backend: Optional[Backend] = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_backend
    _worker_backend = Backend.from_str(tokenizer_json)


def _encode_in_worker(starts: list[bool], texts: list[str]) -> Batch:
    assert _worker_backend is not None
    return encode_pieces(_worker_backend, starts, texts)


def encoded_batches(backend: Backend, documents: Iterable[Iterator[str]], workers: int = 1) -> Iterator[Batch]:
    """Every batch of the corpus encoded, in order. workers=1 encodes here (the Rust encoder uses
    its own threads); more start that many processes (forked, so nothing is imported again),
    each encoding whole batches on one thread."""
    pieces = batches_of_pieces(documents)
    if workers == 1:
        # Three stages at once: a thread reads and parses batch k+2, the encoder (which releases
        # the GIL) works on batch k+1 in another, and this thread reads back the ids of batch k.
        read = prefetched(pieces)
        encoded = prefetched((starts, texts, encode_texts(backend, texts)) for starts, texts in read)
        for batch in encoded:
            yield as_arrays(*batch)
        return
    # Set while the workers fork: each then encodes on one thread, and tokenizers does not warn
    # that it was forked after using its thread pool.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, _start_worker, (backend.to_str(),))
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    with pool:
        pending: deque = deque()
        for starts, texts in prefetched(pieces):  # read while waiting for the workers
            pending.append(pool.apply_async(_encode_in_worker, (starts, texts)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
