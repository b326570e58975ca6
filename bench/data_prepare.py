"""`stratalm prepare` throughput, MB of text per second, against Hugging Face `tokenizers`'
encode_batch alone (the same tokenizer on the same text pieces, nothing read from or written to
disk): Tiny Shakespeare with a character tokenizer and with byte-level BPE (8192), and the 67,349
SST-2 training sentences (one JSONL document each) with BPE. `stratalm_prepare` is the whole command
given the tokenizer.json (read, encode, write shards and manifest); `stratalm_prepare_trains` is the
whole command training its tokenizer first, as a user runs it on a new corpus;
`stratalm_prepare_2_workers` is the command with `--workers 2` (two encoding processes).

`generated` is a corpus written for the run, `--corpus-mb` of documentation prose in JSONL files
(default 1024: larger than the batches `prepare` holds, to show its peak RSS stays bounded), with
a BPE tokenizer trained on its first file; it compares 1 and 2 workers only (the competitor would
hold the whole corpus in memory). Each system's peak RSS is measured in a process of its own
(the rows' `peak_rss_mb`; for this corpus from one run, without a warm-up); with workers that is
the parent's, and `worker_peak_rss_mb` is the largest worker's (forked, so it counts the pages it
shares with the parent).

Run:  python bench/data_prepare.py [--configs shakespeare_char,shakespeare_bpe,sst2_train_bpe] [--quick]
          [--no-memory] [--no-record]
      python bench/data_prepare.py --configs generated --corpus-mb 1024 --rounds 1 --no-record
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import sys
from typing import Any, Callable, Optional

from tokenizers import Tokenizer as HFTokenizer

from common import SHARED_DATA, Case, Runner, run_case
from stratalm.cli import main as stratalm_cli
from stratalm.data.sources import CHUNK_BYTES, iter_texts

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
SST2_TRAIN = SHARED_DATA / "sst2" / "train.tsv"
CONFIGS = {
    "shakespeare_char": dict(source="shakespeare", tokenizer="char", smoke=dict(limit_bytes=50_000)),
    "shakespeare_bpe": dict(source="shakespeare", tokenizer="bpe", vocab_size=8192,
                            smoke=dict(limit_bytes=50_000, vocab_size=512)),
    "sst2_train_bpe": dict(source="sst2_train", tokenizer="bpe", vocab_size=8192,
                           smoke=dict(limit_sentences=2000, vocab_size=512)),
    "generated": dict(source="generated", tokenizer="bpe", vocab_size=8192, smoke=dict(corpus_mb=2, vocab_size=512)),
}
GENERATED_FILE_MB = 64  # the generated corpus comes in files of this size


def write_generated_corpus(folder: str, megabytes: float) -> list[str]:
    """JSONL files of documentation topics, numbered so no two documents are alike, to `megabytes`."""
    from pydoc_data.topics import topics

    texts = [t for t in topics.values() if t.strip()]
    os.makedirs(folder, exist_ok=True)
    paths, written, copy = [], 0, 0
    target = int(megabytes * 1e6)
    while written < target:
        path = os.path.join(folder, f"part_{len(paths):04d}.jsonl")
        with open(path, "w", encoding="utf-8") as handle:
            size = 0
            while size < GENERATED_FILE_MB * 1e6 and written + size < target:
                for text in texts:
                    line = json.dumps({"text": f"copy {copy}: {text}"}) + "\n"
                    handle.write(line)
                    size += len(line)
                copy += 1
        paths.append(path)
        written += size
    return paths


def corpus_file(config: dict[str, Any], workdir: str, corpus_mb: float) -> str:
    """The input `prepare` reads: the shared file itself, or a file (folder) made in the temporary workdir."""
    if config["source"] == "generated":
        folder = os.path.join(workdir, "generated")
        write_generated_corpus(folder, config.get("corpus_mb", corpus_mb))
        return folder
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
    source = corpus_file(config, workdir, args.corpus_mb)
    with open(os.path.join(workdir, "source.txt"), "w") as handle:
        handle.write(source)
    # Makes the tokenizer (for the generated corpus, from its first file: training on all would dominate).
    sample = os.path.join(source, "part_0000.jsonl") if config["source"] == "generated" else source
    run_cli(prepare_args(config, sample, os.path.join(workdir, "first"), config["tokenizer"]))


def build(system: str, config: dict[str, Any], workdir: str, args: argparse.Namespace) -> Runner:
    with open(os.path.join(workdir, "source.txt")) as handle:
        source = handle.read()
    tokenizer_file = os.path.join(workdir, "first", "tokenizer.json")
    # The pieces prepare hands to the encoder, counted as they stream (the generated corpus is larger than memory).
    sizes = [len(t.encode("utf-8")) for t in iter_texts([source])]
    megabytes = sum(sizes) / 1e6
    info = {"documents_or_pieces": len(sizes), "piece_bytes": CHUNK_BYTES}
    if system == "tokenizers_encode_batch":
        texts = list(iter_texts([source]))
        backend = HFTokenizer.from_file(tokenizer_file)
        run = lambda: backend.encode_batch(texts, add_special_tokens=False)  # noqa: E731
    else:
        out = os.path.join(workdir, system)
        tokenizer = config["tokenizer"] if system == "stratalm_prepare_trains" else tokenizer_file
        workers = ["--workers", "2"] if system == "stratalm_prepare_2_workers" else []
        run = lambda: run_cli(prepare_args(config, source, out, tokenizer) + workers)  # noqa: E731
    if config["source"] == "generated":
        # prepare keeps nothing between runs, so one run is its steady state: no warm-up, and the
        # peak-RSS child (which calls run twice) runs it once, so a 1 GB corpus fits its time limit.
        if args.memory_of:
            run = once(run)
        return Runner(run=run, units=round(megabytes, 6), warmup=0, info=info)
    return Runner(run=run, units=round(megabytes, 6), warmup=1, info=info)


def once(run: Callable[[], Any]) -> Callable[[], None]:
    """`run` on the first call; the later calls do nothing."""
    calls: list[Any] = []

    def first_only() -> None:
        if not calls:
            calls.append(run())
    return first_only


def note(system: str, competitor: Optional[str], entry: dict[str, Any]) -> str:
    p = entry["params"]
    tokenizer = p["tokenizer"] + (f" {p['vocab_size']}" if "vocab_size" in p else "")
    what = "trains the tokenizer, then encodes and writes" if system.endswith("trains") else "encodes and writes"
    if competitor == "stratalm_prepare":
        return f"{tokenizer}; {what}; 2 encoding processes against 1"
    return f"{tokenizer}; {what}; competitor encodes only"


def pairs(args: argparse.Namespace) -> list[tuple[str, Optional[str]]]:
    """Against the encoder alone on the shared corpora; 2 workers against 1 everywhere. The
    generated corpus is run on its own (--configs generated): no competitor, no tokenizer training."""
    workers = [("stratalm_prepare_2_workers", "stratalm_prepare")]
    if args.configs.strip() == "generated":
        return workers
    if "generated" in args.configs:
        raise SystemExit("error: run the generated corpus on its own: --configs generated")
    if not args.configs.strip():  # by default every shared corpus, not the generated one
        args.configs = ",".join(name for name in CONFIGS if name != "generated")
    return [("stratalm_prepare", "tokenizers_encode_batch"), ("stratalm_prepare_trains", "tokenizers_encode_batch"),
            *workers]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-mb", type=float, default=1024, help="size of the generated corpus (default 1024 MB)")


def check(config: dict[str, Any], runners: dict[str, Runner], args: argparse.Namespace) -> dict[str, Any]:
    """The largest peak RSS of any worker process the timed runs started (forked from this process,
    so it counts the pages they share with it)."""
    return {"worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


CASE = Case(
    name="data_prepare", unit="MB", about=__doc__.split("\n\n")[0].replace("\n", " "),
    configs=CONFIGS, pairs=pairs, build=build, inputs=inputs, check=check, note=note, rounds=3, repeats=1,
    add_arguments=add_arguments,
)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_case(CASE, __file__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
