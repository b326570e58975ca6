"""Readers of task data files: tables (TSV, CSV, JSONL), plain text (one input per line), pairs of
texts (a table, or Tatoeba's header-less tab-separated lines) and CoNLL-style token files.

Tables come back as a list of rows (dicts keyed by column name) plus the column names. TSV is read
with quoting switched off: GLUE's TSV files hold bare quote characters that are part of the text
(MRPC's `"the witness"`), and a CSV-style reader would swallow tabs and newlines between them. A
byte-order mark at the start of a file (MRPC has one) is dropped.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Optional, Sequence

from ..errors import DataError

TABLE_EXTENSIONS = (".tsv", ".csv", ".jsonl")
CONLL_EXTENSIONS = (".conll", ".txt", ".iob", ".bio")

csv.field_size_limit(1 << 24)  # long passages (QA contexts) are longer than csv's 128 KiB default


def extension_of(path: str, accepted: Sequence[str]) -> str:
    """The file's extension, if it is one of `accepted`; else the one-sentence error."""
    if os.path.isdir(path):
        raise DataError(f"data file '{path}' is a folder; give the path of a file.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in accepted:
        raise DataError(f"cannot tell the format of '{path}' from its extension '{ext or '(none)'}'; "
                        f"use one of {', '.join(accepted)}.")
    return ext


def _open_text(path: str):
    if os.path.isdir(path):
        raise DataError(f"data file '{path}' is a folder; give the path of a file.")
    if not os.path.isfile(path):
        raise DataError(f"data file '{path}' does not exist.")
    return open(path, encoding="utf-8-sig", newline="")  # utf-8-sig drops a byte-order mark


def read_table(path: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of a TSV/CSV file with a header line, or of a JSONL file (one object per line)."""
    ext = extension_of(path, TABLE_EXTENSIONS)
    try:
        with _open_text(path) as handle:
            if ext == ".jsonl":
                return _read_jsonl(handle, path)
            if ext == ".tsv":
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(handle)
            lines = [row for row in reader if row]
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text; convert it to UTF-8.") from None
    if not lines:
        raise DataError(f"'{path}' is empty; give a file with a header line and at least one row.")
    columns = [c.strip() for c in lines[0]]
    rows = []
    for number, values in enumerate(lines[1:], start=2):
        if len(values) != len(columns):
            raise DataError(f"line {number} of '{path}' has {len(values)} fields but the header has {len(columns)} "
                            f"({', '.join(columns)}); fix the line or the delimiter.")
        rows.append(dict(zip(columns, values)))
    if not rows:
        raise DataError(f"'{path}' has a header but no rows; give at least one example.")
    return columns, rows


def _read_jsonl(handle, path: str) -> tuple[list[str], list[dict[str, Any]]]:
    rows, columns = [], {}
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"line {number} of '{path}' is not valid JSON; give one JSON object per line.") from None
        if not isinstance(row, dict):
            raise DataError(f"line {number} of '{path}' is not a JSON object; give one object per line.")
        rows.append(row)
        columns.update(dict.fromkeys(row))
    if not rows:
        raise DataError(f"'{path}' is empty; give one JSON object per line.")
    return list(columns), rows


def read_lines(path: str, expected: str = "one input per line") -> list[str]:
    """The non-blank lines of a plain text file, without their line ends; `expected` says what an
    empty file should have held."""
    try:
        with _open_text(path) as handle:
            lines = [line.rstrip("\r\n") for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text; convert it to UTF-8.") from None
    if not lines:
        raise DataError(f"'{path}' is empty; give {expected}.")
    return lines


def column(columns: list[str], name: Optional[str], candidates: Sequence[str], path: str, flag: str,
           what: str) -> str:
    """The column named `name`, or (when None) the first of `candidates` the file has."""
    if name is not None:
        if name not in columns:
            raise DataError(f"'{path}' has no column '{name}' (its columns are: {', '.join(columns)}); "
                            f"choose one with {flag}.")
        return name
    found = next((c for c in candidates if c in columns), None)
    if found is None:
        raise DataError(f"'{path}' has none of the usual {what} columns ({', '.join(candidates)}); its columns are: "
                        f"{', '.join(columns)}; name one with {flag}.")
    return found


def text_in(row: dict[str, Any], name: str, path: str, number: int, flag: str) -> str:
    """The text of column `name` in row `number` of `path`: a JSONL number, null or list, a missing
    key or an empty cell is refused, never read as "42", "None" or ""."""
    value = row.get(name)
    if isinstance(value, str) and value.strip():
        return value
    held = "no value" if value is None or value == "" else f"{json.dumps(value)[:40]} (not a string)"
    raise DataError(f"example {number} of '{path}' has {held} in column '{name}'; give every example a text there "
                    f"(a JSON string in JSONL), drop the row, or choose another column with {flag}.")


def read_conll(path: str) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL-style file: one token per line with its tag in the last column
    (whitespace-separated), a blank line between sentences, `-DOCSTART-` lines ignored. A line with
    only a token (no tag) gives the tag "" (files to predict on)."""
    extension_of(path, CONLL_EXTENSIONS)
    sentences, words, tags = [], [], []
    try:
        with _open_text(path) as handle:
            for line in handle:
                parts = line.split()
                if not parts or parts[0] == "-DOCSTART-":
                    if words:
                        sentences.append((words, tags))
                        words, tags = [], []
                    continue
                words.append(parts[0])
                tags.append(parts[-1] if len(parts) > 1 else "")
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text; convert it to UTF-8.") from None
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DataError(f"'{path}' holds no sentences; give one token and its tag per line, a blank line between sentences.")
    return sentences


# -- pairs of texts (seq2seq's source/target, retrieval's query/positive) ----------------------------
def _position(name: Optional[str]) -> Optional[int]:
    return int(name) if name is not None and str(name).isdigit() else None


def _read_columns(path: str, wanted: list[tuple[Optional[str], Sequence[str], str, str]],
                  labelled: bool) -> list[tuple[Optional[str], ...]]:
    """Rows of the wanted columns. A header-less tab-separated file (Tatoeba's `eng-fra.txt`, any
    extension outside .tsv/.csv/.jsonl, or columns given as numbers) is read by position: column
    0 is the first. Each wanted entry is (given name, default names, flag, what); a missing
    column is an error, except the last one (the target) when `labelled` is False."""
    extension = os.path.splitext(path)[1].lower()
    given = [name for name, *_ in wanted if name is not None]
    positional = extension not in TABLE_EXTENSIONS or (given and all(_position(name) is not None for name in given))
    if not positional:
        columns, rows = read_table(path)
        names = []
        for index, (name, defaults, flag, what) in enumerate(wanted):
            optional = index == len(wanted) - 1 and not labelled and name is None
            if optional and not any(c in columns for c in defaults):
                names.append(None)
                continue
            names.append(column(columns, name, defaults, path, flag, what))
        flags = [flag for _, _, flag, _ in wanted]

        def cell(row: dict[str, Any], index: int, number: int) -> Optional[str]:
            name = names[index]
            if name is None or (index == len(names) - 1 and not labelled and not row.get(name)):
                return None  # a target to predict may be absent
            return text_in(row, name, path, number, flags[index])

        return [tuple(cell(row, i, number) for i in range(len(names))) for number, row in enumerate(rows, start=1)]
    lines = read_lines(path, "one tab-separated pair per line")
    positions = [_position(name) if name is not None else index for index, (name, *_rest) in enumerate(wanted)]
    if any(p is None for p in positions):
        bad = next(name for (name, *_), p in zip(wanted, positions) if p is None)
        raise DataError(f"'{path}' has no header line, so its columns are numbers (0, 1, ...), not '{bad}'.")
    out = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        row = []
        for index, (p, (_, _, flag, _)) in enumerate(zip(positions, wanted)):
            if p < len(fields):
                row.append(fields[p])
            elif index == len(wanted) - 1 and not labelled:
                row.append(None)
            else:
                raise DataError(f"line {number} of '{path}' has {len(fields)} tab-separated fields, so it has no "
                                f"column {p} (columns count from 0); choose another {flag}.")
        out.append(tuple(row))
    return out


def read_pairs(path: str, source_column: Optional[str], target_column: Optional[str],
               defaults: tuple[Sequence[str], Sequence[str]], flags: tuple[str, str],
               labelled: bool = True) -> list[tuple[str, Optional[str]]]:
    """(source, target) pairs of a TSV/CSV/JSONL table with a header, or of a header-less
    tab-separated file (columns 0 and 1 unless numbered otherwise). A column left None is the first
    of its `defaults` the table has; `flags` name the options that choose each column, for errors.
    With `labelled` False the target may be missing (None)."""
    rows = _read_columns(path, [(source_column, defaults[0], flags[0], "source"),
                                (target_column, defaults[1], flags[1], "target")], labelled)
    return [(source, target) for source, target in rows]
