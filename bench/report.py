"""bench/results.json (the latest JSON of every case, per machine) -> bench/RESULTS.md (one table
of figures per machine).

Machines of one kind differ (an AMD EPYC without AVX-512 and an Intel Xeon with AMX rank the same
kernels in opposite orders), so figures are filed under the machine that measured them: its CPU
model, its vector and matrix extensions and the BLAS. A run on one machine never overwrites
another's figures. `record(result)` files one case's result (what a case script does when run
alone); run_all files all of its cases at once with `record_all`. Both rewrite RESULTS.md from the
whole JSON file, so a case run alone updates its rows and keeps the others.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
CASE_ORDER = ["matmul", "train_throughput", "generation", "encoding", "data_prepare", "speedrun"]


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)  # readers see the old file or the new one, never half of one


def machine_key(machine: dict[str, Any]) -> str:
    """The name figures are filed under, e.g. "AMD EPYC (avx2, mkl)"."""
    extensions = "+".join(machine.get("extensions") or []) or "extensions not recorded"
    return f"{machine['cpu']} ({extensions}, {machine.get('blas') or 'BLAS not recorded'})"


def load(path: Path = RESULTS_JSON) -> dict[str, dict[str, Any]]:
    """{machine key: {case: result}}; a file of the older layout ({case: result}) is read by the
    machine each result names."""
    if not path.exists():
        return {}
    stored = json.loads(path.read_text(encoding="utf-8"))
    if "machines" in stored:
        return stored["machines"]
    by_machine: dict[str, dict[str, Any]] = {}
    for case, result in stored.items():
        by_machine.setdefault(machine_key(result["machine"]), {})[case] = result
    return by_machine


def record(result: dict[str, Any], json_path: Path = RESULTS_JSON, md_path: Path = RESULTS_MD) -> None:
    record_all({result["case"]: result}, json_path, md_path)


def record_all(results: dict[str, Any], json_path: Path = RESULTS_JSON, md_path: Path = RESULTS_MD) -> None:
    """File each case's result under its machine, keeping every other case and machine."""
    by_machine = load(json_path)
    for case, result in results.items():
        by_machine.setdefault(machine_key(result["machine"]), {})[case] = result
    write(by_machine, json_path, md_path)


def write(by_machine: dict[str, dict[str, Any]], json_path: Path = RESULTS_JSON, md_path: Path = RESULTS_MD) -> None:
    _write_atomic(json_path, json.dumps({"machines": by_machine}, indent=2) + "\n")
    _write_atomic(md_path, render(by_machine))


def _number(value: Optional[float]) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def _rate(value: Optional[float], measure: str) -> str:
    """A row's figure with its unit, or "not reached" (a speedrun run that never got to the loss)."""
    return "not reached" if value is None else f"{_number(value)} {measure}"


def _machine_line(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {machine[k]}" for k in ("transformers", "sentence_transformers", "tokenizers") if machine.get(k))
    load = f", load average {machine['load_average_1m']} at the start" if machine.get("load_average_1m") is not None else ""
    kernel = machine.get("few_rows_kernel")
    kernel = "" if kernel is None else "; few-row kernel built" if kernel == "built" else f"; no few-row kernel ({kernel})"
    return (f"{machine['date']} on {machine_key(machine)} ({machine['cores']} cores, torch using {machine['torch_threads']} "
            f"threads{load}); torch {machine['torch']}, Python {machine['python']}; {versions}{kernel}")


def render(by_machine: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`bench/run_all.py`) or by a case script run alone, from `bench/results.json`;",
        "do not edit by hand. Every rate is the median over alternating rounds, each system warmed up first;",
        "**ratio** = the system's rate / its competitor's rate, both measured in the same run on the same",
        "machine (> 1: the system is faster). Peak RSS is each system's own process (VmHWM), measured in a",
        "separate child process that builds only that system; the import baseline (torch, transformers)",
        "is the same for both and is in results.json. Each machine (CPU model, extensions, BLAS) keeps its",
        "own latest figures; the machine measured most recently comes first.",
    ]
    latest = {key: max(r["machine"]["date"] for r in cases.values()) for key, cases in by_machine.items()}
    for key in sorted(by_machine, key=latest.get, reverse=True):
        lines += ["", f"## {key}", "", *_machine_section(by_machine[key])]
    return "\n".join(lines) + "\n"


def _machine_section(results: dict[str, Any]) -> list[str]:
    cases = sorted(results.values(), key=lambda r: CASE_ORDER.index(r["case"]) if r["case"] in CASE_ORDER else 99)
    lines = ["### Runs", ""]
    for result in cases:
        flags = " (quick: fewer repeats)" if result.get("quick") else ""
        lines.append(f"- **{result['case']}**: {_machine_line(result['machine'])}; "
                     f"{result['rounds']} alternating rounds{flags}, {result['wall_s']} s")
    caveats = []
    if any(r["machine"]["torch_threads"] < (r["machine"]["cores"] or 1) for r in cases):
        caveats.append("some cases ran with fewer torch threads than the machine has cores, so their absolute "
                       "figures are below the machine's full speed (the ratios still compare like with like)")
    if any(r.get("quick") for r in cases):
        caveats.append("quick runs use fewer rounds and repeats, so their medians are noisier")
    lines += [f"\nNote: {'; '.join(caveats)}."] if caveats else []
    lines += [
        "",
        "### Figures",
        "",
        "| case | config | system | rate | competitor | competitor's rate | ratio | peak RSS MiB (system / competitor) | notes |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for result in cases:
        for row in result["rows"]:
            memory = " / ".join(_number(row.get(k)) or "-" for k in ("peak_rss_mb", "competitor_peak_rss_mb")
                                if k == "peak_rss_mb" or row.get("competitor"))
            lines.append(
                f"| {row['case']} | {row['config']} | {row['system']} | {_rate(row['value'], row['measure'])} "
                f"| {row.get('competitor') or '-'} | {_number(row.get('competitor_value'))} "
                f"| {_number(row.get('ratio')) if row.get('ratio') is not None else '-'} | {memory} | {row.get('note', '')} |"
            )
    notes = [f"- **{r['case']}**: {r['about']}" for r in cases if r.get("about")]
    if notes:
        lines += ["", "### What each case measures", "", *notes]
    return lines
