"""Fine-tuning runs through the one loop: what pretraining had now holds for every task — torchrun,
gradient accumulation, bf16 autocast, YAML configs with dotted overrides, TensorBoard, and exact
resume after a real SIGKILL mid-epoch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import run_cli, run_two_processes
from stratalm.cli import main
from stratalm.errors import OutputExistsError
from stratalm.tasks.finetune import FinetuneConfig, build_finetune_config, finetune, finetune_loop
from test_tasks_framework import make_base, write_sentiment


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The sentiment toy with a dropout-free base, so runs that split batches differently can agree."""
    root = tmp_path_factory.mktemp("toy_loop")
    train, dev = write_sentiment(root / "train.tsv", 96, 1), write_sentiment(root / "dev.tsv", 32, 2)
    base = make_base(root / "base", [train.read_text(), dev.read_text()], dropout=0.0, attention_dropout=0.0,
                     n_layers=1, d_model=32, n_heads=2, d_ff=64, max_seq_len=48)
    return {"train": train, "dev": dev, "base": base}


def args(toy, out, *extra) -> list[str]:
    return [str(a) for a in ["finetune", "--task", "classification", "--model", toy["base"], "--train", toy["train"],
                             "--out", out, "--batch-size", "16", "--lr", "1e-3", "--quiet", *extra]]


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def config(toy, out, **loop) -> FinetuneConfig:
    return FinetuneConfig(task="classification", model=str(toy["base"]), train=str(toy["train"]), out=str(out),
                          loop=finetune_loop(**{"lr": 1e-3, "batch_size": 16, "max_steps": 6, "log_every": 1,
                                                "progress": False, **loop}))


def test_two_processes_give_the_losses_of_one(toy, tmp_path):
    common = args(toy, "OUT", "--max-steps", "6", "--log-every", "1", "--dev", toy["dev"])
    at = common.index("OUT")
    single = run_cli(*common[:at], tmp_path / "one", *common[at + 1:])
    assert single.returncode == 0, single.stderr[-2000:]
    double = run_two_processes(*common[:at], tmp_path / "two", *common[at + 1:])
    assert double.returncode == 0, double.stderr[-2000:]
    assert "x 2 processes" in double.stdout
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_gradient_accumulation_equals_the_big_batch(toy, tmp_path):
    big = finetune(config(toy, tmp_path / "big"))
    accumulated = finetune(config(toy, tmp_path / "acc", grad_accum=4))
    assert big["steps"] == accumulated["steps"] == 6
    assert max(abs(a - b) for a, b in zip(losses(tmp_path / "big"), losses(tmp_path / "acc"))) < 1e-5
    a, b = load_file(tmp_path / "big" / "model.safetensors"), load_file(tmp_path / "acc" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # ... and accumulation is not a no-op: half the batch gives other weights.
    finetune(config(toy, tmp_path / "half", batch_size=8))
    c = load_file(tmp_path / "half" / "model.safetensors")
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-4


def test_bf16_autocast_trains_close_to_fp32(toy, tmp_path):
    finetune(config(toy, tmp_path / "fp32"))
    finetune(config(toy, tmp_path / "bf16", precision="bf16"))
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert fp32 != bf16 and max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05
    assert yaml.safe_load((tmp_path / "bf16" / "run.yaml").read_text())["loop"]["precision"] == "bf16"


def test_yaml_config_with_dotted_overrides(toy, tmp_path):
    file = tmp_path / "ft.yaml"
    file.write_text(yaml.safe_dump({"task": "classification", "model": str(toy["base"]), "train": str(toy["train"]),
                                    "epochs": 1, "task_options": {"label_column": "label"},
                                    "loop": {"lr": 0.01, "batch_size": 32, "progress": False}}))
    out = tmp_path / "run"
    assert main(["finetune", "--config", str(file), "--out", str(out), "loop.lr=2e-3", "loop.log_every=1",
                 "--batch-size", "16"]) == 0
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert saved["loop"]["lr"] == 2e-3 and saved["loop"]["batch_size"] == 16  # overrides and flags beat the file
    assert saved["task_options"] == {"label_column": "label"} and saved["epochs"] == 1
    assert len(losses(out)) == 6  # one epoch of 96 examples in batches of 16
    assert build_finetune_config(str(file), {}).loop.lr == 0.01


def test_an_unknown_key_lists_the_valid_ones(toy, tmp_path, capsys):
    assert main(args(toy, tmp_path / "r", "loop.learning_rate=1")) == 2
    assert "loop.lr" in capsys.readouterr().err


def test_a_fine_tuning_folder_of_an_earlier_version_asks_for_a_restart(toy, tmp_path):
    out = tmp_path / "old"
    (out / "last").mkdir(parents=True)
    (out / "run.yaml").write_text(yaml.safe_dump({"task": "classification", "lr": 0.001, "batch_size": 16}))
    (out / "last" / "trainer_state.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        finetune(config(toy, out), resume=True)


def test_tensorboard_gets_the_metrics(toy, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    finetune(config(toy, tmp_path / "tb", tensorboard=True))
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(losses(tmp_path / "tb"))


def test_resume_after_a_real_kill_mid_epoch_is_bitwise_identical(toy, tmp_path):
    # Batches of 8: 12 steps an epoch; checkpoints every 10 steps, so most of them fall inside an epoch.
    flags = ["--max-steps", "100", "--save-every", "10", "--log-every", "5", "--eval-every", "50", "--dev", str(toy["dev"]),
             "--resume", "--batch-size", "8"]
    command = [sys.executable, "-m", "stratalm", *args(toy, "OUT", *flags)]
    at = command.index("OUT")
    run = lambda out: command[:at] + [str(out)] + command[at + 1:]  # noqa: E731
    reference = tmp_path / "reference"
    subprocess.run(run(reference), check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    # Held inside step 16 (after the checkpoint of step 10, mid-epoch) and killed there; random
    # moments are test_faults.py's slow test.
    process = subprocess.Popen(run(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "STRATALM_PAUSE_AT": "step@15"})
    for line in process.stderr:
        if "paused at step@15" in line:
            break
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    state = killed / "last" / "trainer_state.json"
    step = json.loads(state.read_text())["step"]
    assert step == 10, step  # the run resumes inside an epoch (12 steps)

    finished = subprocess.run(run(killed), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resuming from step" in finished.stdout
    for name in ("model.safetensors", "last/model.safetensors", "last/optimizer.safetensors"):
        a, b = load_file(reference / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert losses(reference) == losses(killed)
    assert json.loads((reference / "task.json").read_text())["best_step"] == \
        json.loads((killed / "task.json").read_text())["best_step"]


def test_a_stop_signal_during_the_first_evaluation_waits_for_it_then_exits_ready_to_resume(toy, tmp_path):
    """A run with a dev set evaluates before its first step; SIGTERM there is the loop's, not Python's
    default (a silent death): one line, status 143, and --resume then trains the run to its end."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "stratalm", *args(toy, out, "--max-steps", "4", "--dev", str(toy["dev"]), "--resume")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "STRATALM_PAUSE_AT": "evaluating@0"})
    for line in process.stderr:
        if "paused at evaluating@0" in line:
            break
    process.send_signal(signal.SIGTERM)
    stderr = process.stderr.read()
    assert process.wait() == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines() == [
        f"error: stopped by SIGTERM before the first step; '{out}' is ready, and --resume continues the run."]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 4


@pytest.mark.slow
def test_compiled_fine_tuning_matches_eager(toy, tmp_path):
    finetune(config(toy, tmp_path / "eager"))
    finetune(config(toy, tmp_path / "compiled", compile=True))
    assert max(abs(a - b) for a, b in zip(losses(tmp_path / "eager"), losses(tmp_path / "compiled"))) < 1e-4


def test_the_example_config_loads():
    from conftest import ROOT

    cfg = build_finetune_config(str(ROOT / "examples" / "finetune_sst2.yaml"), {"loop": {"lr": "3e-5"}})
    assert cfg.task == "classification" and cfg.loop.lr == 3e-5 and cfg.loop.warmup(1000) == 100
