"""Read documents from text files, folders of them, and JSONL, streaming.

A plain text file is one document; a JSONL line is one document (its `text` field). Large files are
read in pieces that end at a line break, so memory does not grow with the corpus.
"""
from __future__ import annotations

import json
import os
from array import array
from typing import Iterator

import numpy as np

from ..errors import DataError

CHUNK_BYTES = 1 << 20
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".jsonl")


def list_input_files(inputs: list[str]) -> list[str]:
    """Expand folders (recursively, sorted) into the text and JSONL files they hold."""
    if not inputs:
        raise DataError("no input given; pass one or more text files, folders of them, or JSONL files.")
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.endswith(TEXT_SUFFIXES) and not name.startswith(".")
            )
            if not found:
                raise DataError(f"folder '{path}' holds no text files (looked for {', '.join(TEXT_SUFFIXES)}).")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise DataError(f"input '{path}' does not exist.")
    return files


def _check_text(path: str, head: bytes) -> None:
    if b"\x00" in head:
        raise DataError(f"'{path}' looks like a binary file (it contains NUL bytes); give UTF-8 text.")


def _text_pieces(path: str) -> Iterator[str]:
    """Yield the file's text in pieces of about CHUNK_BYTES, each ending at a line break."""
    with open(path, "rb") as handle:
        carry = b""
        first = True
        while True:
            block = handle.read(CHUNK_BYTES)
            if first:
                _check_text(path, block[:8192])
                if block.startswith(b"\xef\xbb\xbf"):
                    block = block[3:]  # a UTF-8 byte-order mark is not text
                first = False
            if not block:
                break
            data = carry + block
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            carry = data[cut:]
            yield _decode(path, data[:cut])
        if carry:
            yield _decode(path, carry)


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"'{path}' is not valid UTF-8 (bad byte at offset {exc.start} of a piece); convert it to UTF-8.") from None


_scan_json = json.JSONDecoder().scan_once  # what json.loads runs, without its per-call wrapping


def _parse_json_line(line: str) -> object:
    """json.loads(line), faster for the usual line: one value from its first character to its line
    break. Anything else (blank, spaces around, invalid) goes through json.loads itself, so every
    line gets exactly json.loads' answer or its error."""
    try:
        record, end = _scan_json(line, 0)
    except (StopIteration, ValueError):
        return json.loads(line)  # json.loads' own error, or what only it accepts (leading spaces)
    return record if end == len(line) or line[end:] == "\n" else json.loads(line)


def _record_error(path: str, number: int, record: object, text_field: str) -> DataError:
    if not isinstance(record, dict) or text_field not in record:
        return DataError(f"'{path}' line {number} has no '{text_field}' field (set --text-field).")
    # str() would make the documents "None", "12345", "['a', 'b']"
    return DataError(f"'{path}' line {number}: field '{text_field}' holds {json.dumps(record[text_field])[:40]}, not a "
                     f"string; give each line's text as a JSON string (or drop the line).")


def _jsonl_documents(path: str, text_field: str) -> Iterator[str]:
    with open(path, "rb") as handle:
        _check_text(path, handle.read(8192))
    with open(path, encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, 1):
                if line.isspace():
                    continue
                try:
                    record = _parse_json_line(line)
                except json.JSONDecodeError:
                    raise DataError(f"'{path}' line {number} is not valid JSON.") from None
                text = record.get(text_field) if type(record) is dict else None
                if type(text) is not str:
                    raise _record_error(path, number, record, text_field)
                yield text
        except UnicodeDecodeError:
            raise DataError(f"'{path}' is not valid UTF-8; convert it to UTF-8.") from None


def document_sizes(inputs: list[str], text_field: str = "text") -> np.ndarray:
    """The size of every document `iter_documents` yields, in its order, without tokenizing: bytes
    of a text file, characters of a JSONL line (what picks a held-out share of them in `prepare`).
    An int64 array: 8 bytes a document, however many millions there are."""
    sizes = array("q")
    for path in list_input_files(inputs):
        if path.endswith(".jsonl"):
            try:
                with open(path, encoding="utf-8") as handle:
                    sizes.extend(len(line) for line in handle if not line.isspace())
            except UnicodeDecodeError:
                raise DataError(f"'{path}' is not valid UTF-8; convert it to UTF-8.") from None
        else:
            with open(path, "rb") as handle:
                size = os.path.getsize(path) - (3 if handle.read(3) == b"\xef\xbb\xbf" else 0)
            if size > 0:  # an empty file yields no piece, so no document
                sizes.append(size)
    return np.frombuffer(sizes, dtype=np.int64) if sizes else np.zeros(0, dtype=np.int64)


def iter_documents(inputs: list[str], text_field: str = "text") -> Iterator[Iterator[str]]:
    """Yield each document as an iterator of text pieces (so one huge file never sits in memory)."""
    for path in list_input_files(inputs):
        if path.endswith(".jsonl"):
            for text in _jsonl_documents(path, text_field):
                yield iter([text])
        else:
            yield _text_pieces(path)


def iter_texts(inputs: list[str], text_field: str = "text") -> Iterator[str]:
    """Every text piece of every document, flat: what a tokenizer trainer reads."""
    for document in iter_documents(inputs, text_field):
        yield from document
