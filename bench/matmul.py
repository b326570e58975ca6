"""The machine's ceiling, measured in the same run as everything else: GFLOP/s of a square matrix
multiply (2048 x 2048 by default) in fp32 and bf16 on all of torch's threads. bf16 is reported
against fp32 (on CPUs without AMX it is usually slower, which is why fp32 is the CPU default); a
dtype too slow to time at that size runs on a smaller matrix (`side`).

Run:  python bench/matmul.py [--quick] [--size N] [--no-record]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Optional

import torch

from common import Case, Runner, run_case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


SECONDS_PER_PRODUCT = 5.0  # past this, a dtype is timed on a smaller matrix (see side)


def side(n: int, dtype: torch.dtype) -> int:
    """n, or a smaller power of two where one n x n product would take more than SECONDS_PER_PRODUCT:
    on CPUs without bf16 instructions (AVX2 only) torch's bf16 matmul ran at 0.27 GFLOP/s against
    110 in fp32, so the full size took 63 s a product and 8.5 minutes of every `make bench`. The
    rate is still GFLOP/s, and the side each dtype ran at is recorded."""
    probe = 512  # smaller products are timed by thread wake-ups on a busy machine, not by arithmetic
    a = torch.randn(probe, probe, dtype=dtype)
    a @ a
    seconds = float("inf")
    for _ in range(3):  # the best of three: a busy machine only adds time
        start = time.perf_counter()
        a @ a
        seconds = min(seconds, time.perf_counter() - start)
    while n > probe and seconds * (n / probe) ** 3 > SECONDS_PER_PRODUCT:
        n //= 2
    return n


def build(system: str, config: dict[str, Any], workdir: str, args: argparse.Namespace) -> Runner:
    n = args.size or side(config["n"], DTYPES[system])
    a = torch.randn(n, n, dtype=DTYPES[system])
    b = torch.randn(n, n, dtype=DTYPES[system])
    return Runner(run=lambda: a @ b, units=2 * n**3 / 1e9, warmup=3, info={"n": n})


def pairs(args: argparse.Namespace) -> list[tuple[str, Optional[str]]]:
    return [("fp32", None), ("bf16", "fp32")]


def note(system: str, competitor: Optional[str], entry: dict[str, Any]) -> str:
    return f"{entry['systems'][system]['n']}x{entry['systems'][system]['n']} matmul"


CASE = Case(
    name="matmul", unit="GFLOP", about=__doc__.split("\n\n")[0].replace("\n", " "),
    configs={"square": {"n": 2048, "smoke": {"n": 256}}},
    pairs=pairs, build=build, note=note, rounds=5, repeats=4, memory=False,
    add_arguments=lambda p: p.add_argument("--size", type=int, default=0, help="matrix side (default 2048)"),
)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    return run_case(CASE, __file__, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
