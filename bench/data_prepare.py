"""`stratalm prepare` throughput, MB of text per second, against Hugging Face `tokenizers`'
encode_batch alone (the same tokenizer on the same text pieces, nothing read from or written to
disk): Tiny Shakespeare with a character tokenizer and with byte-level BPE (8192), and the 67,349
SST-2 training sentences (one JSONL document each) with BPE. `stratalm_prepare` is the whole command
given the tokenizer.json (read, encode, write shards and manifest); `stratalm_prepare_trains` is the
whole command training its tokenizer first, as a user runs it on a new corpus.

Run:  python bench/data_prepare.py [--configs shakespeare_char,shakespeare_bpe,sst2_train_bpe] [--quick]
          [--no-memory] [--no-record]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from typing import Any, Optional

from tokenizers import Tokenizer as HFTokenizer

from common import SHARED_DATA, Case, Runner, run_case
from stratalm.cli import main as stratalm_cli
from stratalm.data.sources import iter_texts

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
SST2_TRAIN = SHARED_DATA / "sst2" / "train.tsv"
CONFIGS = {
    "shakespeare_char": dict(source="shakespeare", tokenizer="char", smoke=dict(limit_bytes=50_000)),
    "shakespeare_bpe": dict(source="shakespeare", tokenizer="bpe", vocab_size=8192,
                            smoke=dict(limit_bytes=50_000, vocab_size=512)),
    "sst2_train_bpe": dict(source="sst2_train", tokenizer="bpe", vocab_size=8192,
                           smoke=dict(limit_sentences=2000, vocab_size=512)),
}


def corpus_file(config: dict[str, Any], workdir: str) -> str:
    """The input `prepare` reads: the shared file itself, or a file made in the temporary workdir."""
    if config["source"] == "shakespeare":
        if "limit_bytes" not in config:
            return str(SHAKESPEARE)
        path = os.path.join(workdir, "shakespeare.txt")
        text = SHAKESPEARE.read_bytes()[:config["limit_bytes"]]
        with open(path, "wb") as handle:
            handle.write(text[:text.rfind(b"\n") + 1])
        return path
    path = os.path.join(workdir, "sst2_train.jsonl")
    lines = SST2_TRAIN.read_text(encoding="utf-8").splitlines()[1:]  # header: sentence<TAB>label
    with open(path, "w", encoding="utf-8") as handle:
        for line in lines[:config.get("limit_sentences", len(lines))]:
            handle.write(json.dumps({"text": line.split("\t")[0]}) + "\n")
    return path


def prepare_args(config: dict[str, Any], source: str, out: str, tokenizer: str) -> list[str]:
    args = ["prepare", source, "--out", out, "--tokenizer", tokenizer, "--quiet", "--overwrite"]
    return args + (["--vocab-size", str(config["vocab_size"])] if tokenizer == "bpe" else [])


def run_cli(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the command's summary line is not benchmark JSON
        status = stratalm_cli(argv)
    if status != 0:
        raise RuntimeError(f"stratalm {' '.join(argv)} exited with status {status}")


def inputs(config: dict[str, Any], workdir: str, args: argparse.Namespace) -> None:
    if not SHAKESPEARE.exists() or not SST2_TRAIN.exists():
        raise SystemExit(f"error: {SHARED_DATA} lacks tinyshakespeare or sst2; the benchmark reads them from ../shared/data.")
    source = corpus_file(config, workdir)
    with open(os.path.join(workdir, "source.txt"), "w") as handle:
        handle.write(source)
    run_cli(prepare_args(config, source, os.path.join(workdir, "first"), config["tokenizer"]))  # makes the tokenizer


def build(system: str, config: dict[str, Any], workdir: str, args: argparse.Namespace) -> Runner:
    with open(os.path.join(workdir, "source.txt")) as handle:
        source = handle.read()
    tokenizer_file = os.path.join(workdir, "first", "tokenizer.json")
    texts = list(iter_texts([source]))  # the pieces prepare hands to the encoder
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    if system == "tokenizers_encode_batch":
        backend = HFTokenizer.from_file(tokenizer_file)
        run = lambda: backend.encode_batch(texts, add_special_tokens=False)  # noqa: E731
    else:
        out = os.path.join(workdir, system)
        tokenizer = tokenizer_file if system == "stratalm_prepare" else config["tokenizer"]
        run = lambda: run_cli(prepare_args(config, source, out, tokenizer))  # noqa: E731
    return Runner(run=run, units=round(megabytes, 6), warmup=1, info={"documents_or_pieces": len(texts)})


def note(system: str, competitor: Optional[str], entry: dict[str, Any]) -> str:
    p = entry["params"]
    tokenizer = p["tokenizer"] + (f" {p['vocab_size']}" if "vocab_size" in p else "")
    what = "trains the tokenizer, then encodes and writes" if system.endswith("trains") else "encodes and writes"
    return f"{tokenizer}; {what}; competitor encodes only"


CASE = Case(
    name="data_prepare", unit="MB", about=__doc__.split("\n\n")[0].replace("\n", " "),
    configs=CONFIGS, pairs=lambda args: [("stratalm_prepare", "tokenizers_encode_batch"),
                                         ("stratalm_prepare_trains", "tokenizers_encode_batch")],
    build=build, inputs=inputs, note=note, rounds=3, repeats=1,
)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_case(CASE, __file__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
