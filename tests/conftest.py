"""Shared fixtures: small real text (Python's own documentation topics), prepared folders, tiny models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# precision="auto" means bf16 on a CPU with AMX: the default suite takes every CPU to have none, so
# its numbers (and tolerances) are the same on every machine; tests/test_precision.py tries both.
os.environ.setdefault("STRATALM_CPU_EXTENSIONS", "avx2")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pydoc_texts(n: int = 12) -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)[:n]]


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for text in pydoc_texts(20):
            handle.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def char_data(tmp_path_factory, corpus_jsonl) -> Path:
    """A character-level prepared folder of about 100k tokens."""
    from stratalm.data import prepare

    out = tmp_path_factory.mktemp("prepared") / "char"
    prepare([str(corpus_jsonl)], str(out), tokenizer="char", progress=False)
    return out


@pytest.fixture(scope="session")
def bpe_data(tmp_path_factory, corpus_jsonl) -> Path:
    from stratalm.data import prepare

    out = tmp_path_factory.mktemp("prepared") / "bpe"
    prepare([str(corpus_jsonl)], str(out), tokenizer="bpe", vocab_size=512, progress=False)
    return out


@pytest.fixture(scope="session")
def pydoc_bpe(tmp_path_factory):
    """All of Python's documentation topics (about 465 KB), byte-level BPE with 2048 tokens."""
    from stratalm.data import prepare
    from stratalm.demo import write_corpus

    folder = tmp_path_factory.mktemp("pydoc")
    write_corpus(str(folder / "topics.jsonl"))
    prepare([str(folder / "topics.jsonl")], str(folder / "data"), tokenizer="bpe", vocab_size=2048, progress=False)
    return folder / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or a skip that says it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data sets live in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def shakespeare_char(tmp_path_factory) -> Path:
    """Tiny Shakespeare, character level, with 100 sentinel tokens (for span corruption too)."""
    from stratalm.data import prepare

    out = tmp_path_factory.mktemp("shakespeare") / "char"
    prepare([str(shared_file("tinyshakespeare", "input.txt"))], str(out), tokenizer="char", sentinels=100, progress=False)
    return out


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m stratalm ARGS` as a user would; returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "stratalm", *map(str, args)], capture_output=True, text=True,
        cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})},
    )


def run_two_processes(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m stratalm ARGS` (gloo on CPU); returns the finished launcher."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stratalm",
         *map(str, args)], capture_output=True, text=True, timeout=timeout)


def small_char_corpus(folder: Path) -> Path:
    """A prepared character-level folder of six documentation topics (about 30k characters)."""
    from stratalm.data import prepare

    (folder / "t.txt").write_text("\n".join(pydoc_texts(6)))
    prepare([str(folder / "t.txt")], str(folder / "data"), tokenizer="char", progress=False)
    return folder / "data"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
