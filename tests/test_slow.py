"""Longer checks, run with `make test-slow` (pytest -m slow)."""
from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, run_cli

pytestmark = pytest.mark.slow


def test_compile_trains_like_eager(char_data, tmp_path):
    common = ["--data", char_data, "--max-steps", "20", "--model", "tiny", "model.n_layers=2", "model.d_model=64",
              "model.max_seq_len=32", "train.log_every=1", "train.eval_every=0", "train.progress=false"]
    eager = run_cli("pretrain", "--out", tmp_path / "eager", *common)
    compiled = run_cli("pretrain", "--out", tmp_path / "compiled", "--compile", *common, timeout=600)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-2000:]

    def curve(folder):
        return [json.loads(line)["loss"] for line in open(folder / "metrics.jsonl") if '"loss"' in line]

    assert max(abs(a - b) for a, b in zip(curve(tmp_path / "eager"), curve(tmp_path / "compiled"))) < 1e-3


def test_shakespeare_char_recipe_reaches_nanogpt_loss(tmp_path):
    """nanoGPT's CPU recipe (examples/shakespeare_char.yaml): about 1.9 on the whole validation split."""
    source = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not source.exists():
        pytest.skip(f"{source} is absent (real data lives in ../shared/data)")
    from conftest import ROOT

    assert run_cli("prepare", source, "--out", tmp_path / "data", "--tokenizer", "char", "--quiet").returncode == 0
    result = run_cli("pretrain", "--config", ROOT / "examples" / "shakespeare_char.yaml", "--data", tmp_path / "data",
                     "--out", tmp_path / "run", "train.progress=false", "train.eval_every=0", timeout=900)
    assert result.returncode == 0, result.stderr
    final = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if "val_loss" in line][-1]
    assert final["val_loss"] < 1.95
