"""What every benchmark case shares: side-by-side timing, peak memory, machine facts, JSON output.

A case module describes itself as a `Case` (its configurations, the systems it times, how to build
one system for one configuration) and calls `run_case`. The driver then, for every configuration:
builds each system, warms each up, times them in alternating rounds (the first system of a round
rotates, so a busy moment on a shared machine hits all of them), reports medians and the ratio of
each system to its competitor, and measures each system's peak RSS in a separate child process
(`--memory-of SYSTEM`), so one system's memory never counts against another.

Flags every case takes: --quick (real sizes, fewer repeats), --smoke (tiny sizes, one repeat: what
the tests run), --configs, --rounds, --repeats, --no-memory, --no-record (do not rewrite
bench/RESULTS.md), and the child's --memory-of / --workdir.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from stratalm.layers import native
from stratalm.machine import describe

BENCH_DIR = Path(__file__).resolve().parent
SHARED_DATA = BENCH_DIR.parent.parent / "shared" / "data"


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


# -- machine and memory -----------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to compare two runs: when, on what, with which versions."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        # Which kernels are fast depends on these (MKL on AMD vs Intel, AMX for bf16): see stratalm/machine.py.
        **{k: v for k, v in describe().items() if k != "model"},
        # Whether decoding's compiled few-row kernel runs here, or why not (asking builds it).
        "few_rows_kernel": "built" if native.available() else native.unavailable_reason(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other work on the machine slows everything down; above ~0.5 per core, figures are noisy.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for name in ("transformers", "sentence-transformers", "tokenizers"):
        try:  # from the installed metadata: importing transformers just to read its version is slow
            info[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name.replace("-", "_")] = None
    return info


def _status_mb(field_name: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    current = _status_mb("VmRSS")
    return current if current is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Highest resident memory of this process so far, MiB (VmHWM; getrusage where /proc is absent)."""
    peak = _status_mb("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return peak


# -- timing -----------------------------------------------------------------------------------
def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, reps: int = 10) -> float:
    """GFLOP/s of an n x n by n x n matrix multiply on all of torch's threads, median of `reps`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def alternate(runners: dict[str, Callable[[], Any]], rounds: int, repeats: int,
              warmup: dict[str, int], label: str = "") -> dict[str, list[float]]:
    """Warm each runner up, then time `repeats` calls of each per round, rotating which goes
    first; returns the seconds of every timed call, per runner."""
    for name, run in runners.items():
        t0 = time.perf_counter()
        for _ in range(warmup.get(name, 1)):
            run()
        log(f"{label}: {name} warmup ({warmup.get(name, 1)}x) {time.perf_counter() - t0:.1f}s")
    names, times = list(runners), {name: [] for name in runners}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(repeats):
                t0 = time.perf_counter()
                runners[name]()
                times[name].append(time.perf_counter() - t0)
        log(f"{label}: round {r + 1}/{rounds} " + ", ".join(
            f"{k} {1e3 * statistics.median(v[-repeats:]):.1f}ms" for k, v in times.items()))
    return times


def summarize(times: list[float], units: float) -> dict[str, Any]:
    """Median seconds per call, its spread, and the rate in units per second."""
    median = statistics.median(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [median, median, median]
    return {
        "median_s": round(median, 6), "min_s": round(min(times), 6),
        "p25_p75_s": [round(quartiles[0], 6), round(quartiles[2], 6)],
        "calls": len(times), "units_per_call": units, "per_s": round(units / median, 3),
    }


# -- the case description and its driver ------------------------------------------------------
@dataclass
class Runner:
    """One system, built for one configuration: `run` does one timed repetition of `units` work."""

    run: Callable[[], Any]
    units: float
    warmup: int = 2
    info: dict[str, Any] = field(default_factory=dict)  # reported with the timings
    outputs: dict[str, Any] = field(default_factory=dict)  # what `run` produced, for the case's check; not reported


@dataclass
class Case:
    name: str
    unit: str  # what `units` counts, e.g. "tokens"
    configs: dict[str, dict[str, Any]]  # name -> parameters; a "smoke" key holds the --smoke overrides
    pairs: Callable[[argparse.Namespace], list[tuple[str, Optional[str]]]]  # (system, its competitor)
    build: Callable[[str, dict[str, Any], str, argparse.Namespace], Runner]  # (system, config, workdir, args)
    inputs: Callable[[dict[str, Any], str, argparse.Namespace], None] = lambda config, workdir, args: None
    check: Callable[[dict[str, Any], dict[str, Runner], argparse.Namespace], dict[str, Any]] = (
        lambda config, runners, args: {})  # after timing: figures beyond speed (equality of outputs, ...)
    note: Callable[[str, Optional[str], dict[str, Any]], str] = lambda system, competitor, entry: ""
    finalize: Callable[[dict[str, Any], argparse.Namespace], None] = lambda result, args: None
    rounds: int = 5
    repeats: int = 1
    memory: bool = True  # measure each system's peak RSS in a child process
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    about: str = ""


def parser_for(case: Case) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=case.about or f"benchmark: {case.name}")
    p.add_argument("--configs", default="", help="comma-separated subset of: " + ", ".join(case.configs))
    p.add_argument("--quick", action="store_true", help="real sizes, fewer rounds and repeats")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and one repeat: checks that the case runs")
    p.add_argument("--rounds", type=int, default=0, help=f"alternating rounds (default {case.rounds})")
    p.add_argument("--repeats", type=int, default=0, help=f"timed calls per system per round (default {case.repeats})")
    p.add_argument("--no-memory", action="store_true", help="skip the per-system peak-RSS child processes")
    p.add_argument("--no-record", action="store_true", help="print JSON only; leave bench/RESULTS.md alone")
    p.add_argument("--memory-of", default="", help=argparse.SUPPRESS)  # child mode: one system's peak RSS
    p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    case.add_arguments(p)
    return p


def chosen_configs(case: Case, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    names = [n.strip() for n in args.configs.split(",") if n.strip()] or list(case.configs)
    unknown = [n for n in names if n not in case.configs]
    if unknown:
        raise SystemExit(f"error: unknown configs {unknown}; choose from {list(case.configs)}")
    configs = {}
    for name in names:
        config = {k: v for k, v in case.configs[name].items() if k != "smoke"}
        if args.smoke:
            config.update(case.configs[name].get("smoke", {}))
        configs[name] = {"name": name, **config}
    return configs


def forwarded_flags(args: argparse.Namespace) -> list[str]:
    return [flag for flag, on in (("--quick", args.quick), ("--smoke", args.smoke)) if on]


def memory_child(script: str, system: str, config: str, workdir: str, flags: list[str]) -> dict[str, Any]:
    """Run this case's script for one system in a fresh process and read back its peak RSS."""
    cmd = [sys.executable, script, "--memory-of", system, "--configs", config, "--workdir", workdir, *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        log(done.stderr[-2000:])
        return {"error": f"exit status {done.returncode}"}
    return json.loads(done.stdout)


def _measure_memory(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Child mode: build one system, run it twice as the timing does, report its peak RSS."""
    (config,) = chosen_configs(case, args).values()
    baseline = rss_mb()
    runner = case.build(args.memory_of, config, args.workdir, args)
    for _ in range(2):  # the first call allocates caches and optimizer state; the second is steady
        runner.run()
    peak = peak_rss_mb()
    return {"system": args.memory_of, "config": config["name"], "baseline_rss_mb": round(baseline, 1),
            "peak_rss_mb": round(peak, 1), "added_mb": round(peak - baseline, 1)}


def run_case(case: Case, script: str, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Parse flags, time every configuration side by side, print the JSON, record it; returns it."""
    args = parser_for(case).parse_args(argv)
    if args.memory_of:
        result = _measure_memory(case, args)
        print(json.dumps(result))
        return result
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else case.rounds)
    start = time.perf_counter()
    result: dict[str, Any] = {"case": case.name, "about": case.about, "unit": case.unit, "machine": machine_info(),
                              "rounds": rounds, "smoke": args.smoke, "quick": args.quick,
                              "configs": {}, "rows": []}
    pairs = case.pairs(args)
    systems = list(dict.fromkeys(s for pair in pairs for s in pair if s is not None))
    for name, config in chosen_configs(case, args).items():
        repeats = args.repeats or (1 if args.smoke else config.get("repeats", case.repeats))
        if args.quick and not args.repeats:
            repeats = max(1, repeats // 2)
        with tempfile.TemporaryDirectory(prefix=f"bench-{case.name}-") as workdir:
            case.inputs(config, workdir, args)
            runners = {s: case.build(s, config, workdir, args) for s in systems}
            warmup = {s: 1 if args.smoke else max(1, r.warmup // 2) if args.quick else r.warmup for s, r in runners.items()}
            times = alternate({s: r.run for s, r in runners.items()}, rounds, repeats, warmup, f"{case.name}/{name}")
            entry: dict[str, Any] = {
                "params": {k: v for k, v in config.items() if k != "name"}, "repeats": repeats,
                "systems": {s: {**summarize(times[s], r.units), **r.info} for s, r in runners.items()},
            }
            entry.update(case.check(config, runners, args))
            del runners  # free the models before the children measure theirs
            if case.memory and not args.no_memory:
                # Compiled variants are left out: their peak is the compiler's, not the model's.
                entry["memory"] = {s: memory_child(script, s, name, workdir, forwarded_flags(args))
                                   for s in systems if not s.endswith("_compiled")}
        result["configs"][name] = entry
    case.finalize(result, args)
    result["rows"] = make_rows(case, result, pairs)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    if not args.no_record and not args.smoke:
        from report import record

        record(result)
    return result


def make_rows(case: Case, result: dict[str, Any], pairs: list[tuple[str, Optional[str]]]) -> list[dict[str, Any]]:
    """One row per (configuration, system): its rate, its competitor's, the ratio, peak memory."""
    rows = []
    for name, entry in result["configs"].items():
        memory = entry.get("memory", {})
        for system, competitor in pairs:
            ours = entry["systems"][system]["per_s"]
            row: dict[str, Any] = {"case": case.name, "config": name, "measure": f"{case.unit}/s",
                                   "system": system, "value": ours, "competitor": competitor}
            if competitor is not None:
                theirs = entry["systems"][competitor]["per_s"]
                row.update(competitor_value=theirs, ratio=round(ours / theirs, 3))
            for key, who in (("peak_rss_mb", system), ("competitor_peak_rss_mb", competitor)):
                if who in memory and "peak_rss_mb" in memory[who]:
                    row[key] = memory[who]["peak_rss_mb"]
            row["note"] = case.note(system, competitor, entry)
            rows.append(row)
    return rows
