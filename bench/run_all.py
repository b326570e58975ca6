"""Run every benchmark case, each in its own process, print their JSON as one object, and rewrite
bench/results.json and bench/RESULTS.md. This is what `make bench` runs.

Each case runs as `python bench/<case>.py --no-record ...` (so nothing of one case stays in the
memory of the next) and measures each of its systems' peak RSS in further child processes. A case
that fails is reported with its exit status and the others still run; the exit status is 1 if any
case failed or any equality check (generation tokens, embeddings) did not hold.

Run:  python bench/run_all.py [--quick] [--compile] [--cases matmul,generation,...] [--no-memory]
          [--out-dir DIR] [--smoke]
The default run takes about 10 minutes on 2 CPU cores; --compile adds a few minutes of compiling.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import BENCH_DIR, log, machine_info
import report

CASES = ["matmul", "train_throughput", "generation", "encoding", "data_prepare"]
CHECKS = {"generation": "tokens_identical", "encoding": "embeddings_equal"}  # must be true


def run_one(case: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH_DIR / f"{case}.py"), "--no-record"]
    cmd += [flag for flag, on in (("--quick", args.quick), ("--smoke", args.smoke), ("--no-memory", args.no_memory)) if on]
    if args.compile and case == "train_throughput":
        cmd.append("--compile")
    log(f"== {case}: {' '.join(cmd[1:])}")
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # progress goes straight to our stderr
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"case": case, "error": f"exit status {done.returncode}, no JSON on stdout"}
    if done.returncode != 0:
        result["error"] = f"exit status {done.returncode}"
    log(f"== {case}: {time.perf_counter() - start:.0f}s")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--quick", action="store_true", help="real sizes, fewer rounds and repeats")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every case runs (not recorded)")
    p.add_argument("--compile", action="store_true", help="also time training under torch.compile")
    p.add_argument("--no-memory", action="store_true", help="skip the per-system peak-RSS child processes")
    p.add_argument("--out-dir", default="", help="write results.json and RESULTS.md here instead of bench/")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {CASES}")

    start = time.perf_counter()
    results = {case: run_one(case, args) for case in cases}
    failed = [c for c, r in results.items() if "error" in r or (c in CHECKS and not r.get(CHECKS[c], False))]
    print(json.dumps({"suite": "stratalm bench", "machine": machine_info(), "cases": results,
                      "failed": failed, "wall_s": round(time.perf_counter() - start, 1)}, indent=2))

    if not args.smoke or args.out_dir:
        folder = Path(args.out_dir) if args.out_dir else BENCH_DIR
        folder.mkdir(parents=True, exist_ok=True)
        json_path, md_path = folder / "results.json", folder / "RESULTS.md"
        # Cases not run now (a partial run, or bench/speedrun.py, which records itself) and other
        # machines keep their last figures.
        report.record_all({c: r for c, r in results.items() if "rows" in r}, json_path, md_path)
        log(f"wrote {md_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
