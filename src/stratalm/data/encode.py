"""Encoding a corpus for `prepare`: text pieces in, flat token arrays out, batch by batch, in
corpus order, in this process or in `workers` processes.

A batch is many pieces (about ENCODE_BATCH_CHARS of text) handed to the Rust encoder at once and
returned as numpy arrays: one token count per piece and all the ids flat. Nothing is done per
piece in Python beyond collecting the text, so a corpus of many short documents (SST-2's 67,349
sentences) costs what the encoder costs. With workers, at most 2 x workers batches are in flight,
so memory stays bounded however large the corpus.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Optional

import numpy as np
from tokenizers import Tokenizer as Backend

ENCODE_BATCH_CHARS = 4 << 20  # text handed to the encoder at once
Batch = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # starts (bool per piece), token counts, ids, bytes of text


def batches_of_pieces(documents: Iterable[Iterator[str]]) -> Iterator[tuple[list[bool], list[str]]]:
    """(whether each piece starts a document, the pieces), about ENCODE_BATCH_CHARS per batch."""
    starts: list[bool] = []
    texts: list[str] = []
    size = 0
    for document in documents:
        for index, piece in enumerate(document):
            starts.append(index == 0)
            texts.append(piece)
            size += len(piece)
            if size >= ENCODE_BATCH_CHARS:
                yield starts, texts
                starts, texts, size = [], [], 0
    if texts:
        yield starts, texts


def encode_pieces(backend: Backend, starts: list[bool], texts: list[str]) -> Batch:
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)  # no offsets: prepare needs ids only
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=int(lengths.sum()))
    return np.asarray(starts, dtype=bool), lengths, ids, sum(len(t.encode("utf-8")) for t in texts)


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
        # A reader thread reads and parses the next batch while the encoder, which releases the
        # GIL, works on this one.
        with ThreadPoolExecutor(1) as reader:
            ahead = reader.submit(next, pieces, None)
            while (batch := ahead.result()) is not None:
                ahead = reader.submit(next, pieces, None)
                yield encode_pieces(backend, *batch)
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
        for starts, texts in pieces:
            pending.append(pool.apply_async(_encode_in_worker, (starts, texts)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
