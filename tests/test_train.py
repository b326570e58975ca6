"""The training loop: it learns, it resumes bit for bit after a real kill, it scales out with
torchrun, and its configuration behaves as documented."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, run_two_processes, small_char_corpus
from stratalm.errors import ConfigError, OutputExistsError
from stratalm.loop import pretrain
from stratalm.loop import build_run_config
from stratalm.loop.optim import learning_rate

TINY = {"preset": "tiny", "n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 32}


def run_config(data, out, **train):
    return build_run_config(None, {"data": str(data), "out": str(out), "model": dict(TINY),
                                   "train": {"progress": False, "log_every": 1, "eval_every": 0, **train}})


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as handle:
        return [r["loss"] for r in map(json.loads, handle) if "loss" in r]


def unigram_entropy(data_folder) -> float:
    """The loss of the best model that ignores context: the entropy of token frequencies."""
    import numpy as np

    from stratalm.data import TokenData

    data = TokenData(str(data_folder))
    start, end = data.split("train")
    counts = np.bincount(data.read(start, end - start))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_loss_goes_down_and_the_run_folder_is_complete(char_data, tmp_path):
    out = tmp_path / "run"
    model = {**TINY, "d_ff": 256, "max_seq_len": 64}
    run = build_run_config(None, {"data": str(char_data), "out": str(out), "model": model, "train": {
        "progress": False, "log_every": 1, "eval_every": 0, "max_steps": 300, "batch_size": 16, "lr": 1e-2,
        "warmup_steps": 20}})
    result = pretrain(run)
    curve = losses(out)
    # From uniform guessing (ln V) to clearly below the best context-free model.
    baseline = unigram_entropy(char_data)
    assert curve[0] > baseline + 0.8
    assert result["val_loss"] < baseline - 0.3 and sum(curve[-10:]) / 10 < baseline - 0.3
    names = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "optimizer.safetensors",
            "run.yaml", "metrics.jsonl"} <= names
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 300 and set(state["rng"]) >= {"sampler", "torch", "objective"}


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = run_config("d", "o", max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10).train
    rates = [learning_rate(s, cfg) for s in range(120)]
    assert rates[0] < rates[5] < rates[9] <= 1e-3
    assert max(rates) == pytest.approx(1e-3, rel=1e-2)
    assert all(a >= b for a, b in zip(rates[10:100], rates[11:100]))
    assert rates[100] == rates[119] == pytest.approx(1e-4)


def test_weight_decay_only_on_matrices(char_data, tmp_path):
    from stratalm.loop import pretraining_loop

    trainer = pretraining_loop(run_config(char_data, tmp_path / "r", max_steps=1))
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] > 0 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0 and all(p.dim() == 1 for p in no_decay["params"])


def pretrain_command(data, out, steps):
    return [sys.executable, "-m", "stratalm", "pretrain", "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), "--save-every", "25", "--resume", "--model", "tiny",
            "model.n_layers=2", "model.d_model=64", "model.max_seq_len=32", "model.dropout=0.1",
            "train.batch_size=8", "train.eval_every=50", "train.log_every=5", "train.progress=false"]


@pytest.mark.slow  # a longer check (make test-slow): the default suite stays near 10 minutes
def test_resume_after_a_real_kill_is_bitwise_identical(char_data, tmp_path):
    steps = 300
    reference = tmp_path / "reference"
    subprocess.run(pretrain_command(char_data, reference, steps), check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen(pretrain_command(char_data, killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))  # anywhere after the first checkpoint, mid-step or mid-save
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    interrupted_at = json.loads((killed / "trainer_state.json").read_text())["step"]
    assert interrupted_at < steps

    finished = subprocess.run(pretrain_command(char_data, killed, steps), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "resuming from step" in finished.stdout
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(reference / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert losses(reference) == losses(killed)  # the metrics were cut back to the checkpoint and rewritten
    seconds = [json.loads(line)["train_s"] for line in open(killed / "metrics.jsonl") if '"loss"' in line]
    assert seconds == sorted(seconds), seconds  # training time carries on from the checkpoint


def test_two_processes_match_one_with_the_same_global_batch(char_data, tmp_path):
    common = ["--data", str(char_data), "--max-steps", "15", "--model", "tiny", "model.n_layers=2",
              "model.d_model=64", "model.max_seq_len=32", "train.batch_size=8", "train.log_every=1",
              "train.eval_every=0", "train.progress=false"]
    single = run_cli("pretrain", "--out", tmp_path / "one", *common)
    assert single.returncode == 0, single.stderr
    double = run_two_processes("pretrain", "--out", tmp_path / "two", *common)
    assert double.returncode == 0, double.stderr[-2000:]
    assert "2 processes" in double.stdout
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 15
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5


def test_yaml_and_overrides_resolve_and_are_saved(char_data, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  preset: tiny\n  n_layers: 3\ntrain:\n  lr: 0.01\n  max_steps: 2\n")
    out = tmp_path / "run"
    result = run_cli("pretrain", "--config", config, "--data", char_data, "--out", out,
                     "train.lr=2e-3", "model.d_model=64", "train.progress=false")
    assert result.returncode == 0, result.stderr
    import yaml

    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert saved["train"]["lr"] == 2e-3 and saved["train"]["max_steps"] == 2  # command line beats the file
    assert saved["resolved_model"]["n_layers"] == 3 and saved["resolved_model"]["d_model"] == 64
    assert saved["resolved_model"]["vocab_size"] == json.loads((char_data / "manifest.json").read_text())["vocab_size"]


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match="train.lr"):
        build_run_config(None, {"train": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="model.n_layers"):
        build_run_config(None, {"model": {"layers": 2}})
    with pytest.raises(ConfigError, match="expects int"):
        build_run_config(None, {"train": {"max_steps": "many"}})


def test_help_lists_every_config_key_with_its_default():
    result = run_cli("pretrain", "--help")
    assert result.returncode == 0
    for key in ("train.lr = 0.001", "train.batch_size = 16", "model.n_kv_heads = None", "model.position = 'learned'"):
        assert key in result.stdout


def test_an_output_folder_of_another_run_is_refused(char_data, tmp_path):
    out = tmp_path / "run"
    pretrain(run_config(char_data, out, max_steps=2))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="--resume"):
        pretrain(run_config(char_data, out, max_steps=2))
    other = build_run_config(None, {"data": str(char_data), "out": str(out), "model": {**TINY, "n_layers": 3},
                                    "train": {"max_steps": 4, "progress": False}})
    with pytest.raises(OutputExistsError, match="n_layers"):
        pretrain(other, resume=True)
    assert (out / "model.safetensors").read_bytes() == before
    (out / "notes.txt").write_text("mine")
    pretrain(other, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the run, not the user's files


def test_gradient_accumulation_matches_one_big_batch(char_data, tmp_path):
    pretrain(run_config(char_data, tmp_path / "one", max_steps=8, batch_size=8, grad_accum=1))
    pretrain(run_config(char_data, tmp_path / "four", max_steps=8, batch_size=8, grad_accum=4))
    one, four = losses(tmp_path / "one"), losses(tmp_path / "four")
    assert len(one) == 8 and max(abs(a - b) for a, b in zip(one, four)) < 1e-5


def test_two_processes_match_one_with_masking(tmp_path):
    """With a random objective (mlm), every process masks the same global batch as one process would."""
    common = ["--data", str(small_char_corpus(tmp_path)), "--max-steps", "6", "--model", "bert", "--objective", "mlm",
              "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
              "model.dropout=0", "model.attention_dropout=0", "train.batch_size=8", "train.log_every=1",
              "train.eval_every=0", "train.progress=false"]
    assert run_cli("pretrain", "--out", tmp_path / "one", *common).returncode == 0
    double = run_two_processes("pretrain", "--out", tmp_path / "two", *common)
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == 6 and max(abs(a - b) for a, b in zip(one, two)) < 1e-5


def test_a_stretched_schedule_continues_from_the_rate_reached():
    from stratalm.loop.optim import Schedule

    old = Schedule(run_config("d", "o", max_steps=150, lr=1e-3, min_lr=1e-4, warmup_steps=10).train)
    for step, total in ((100, 300), (100, 120), (150, 300)):  # longer, shorter, after the end
        new = old.stretched(step, total)
        rates = [new.lr(s) for s in range(step, total + 1)]
        assert new.lr(step) == pytest.approx(old.lr(step), rel=1e-12)  # no jump at the resume step
        assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(1e-4)
    longer = old.stretched(100, 300)
    assert max(abs(longer.lr(s + 1) / longer.lr(s) - 1) for s in range(100, 300)) < 0.02  # stretched: gentler than before
    in_warmup = old.stretched(5, 300)
    assert [in_warmup.lr(s) for s in range(11)] == [old.lr(s) for s in range(11)]  # the warmup keeps its length
    assert in_warmup.lr(300) == pytest.approx(1e-4) and in_warmup.lr(150) > old.lr(150)
    again = Schedule.from_dict(old.stretched(100, 300).to_dict(), old.config)
    assert [again.lr(s) for s in range(100, 300)] == [old.stretched(100, 300).lr(s) for s in range(100, 300)]


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_changing_max_steps_on_resume_keeps_the_learning_rate_continuous(char_data, tmp_path):
    from stratalm.loop import pretraining_loop
    from stratalm.loop.optim import Schedule

    out = tmp_path / "run"
    first = run_config(char_data, out, max_steps=2000, warmup_steps=5, batch_size=4)
    loop = pretraining_loop(first)  # stopped by hand at step 20 of 2000: a checkpoint mid-schedule
    for _ in range(20):
        loop.train_step()
    loop.save()
    loop.close()
    before = Schedule(first.train).lr(19)  # the rate of the last step taken
    shorter = run_config(char_data, out, max_steps=40, warmup_steps=5, batch_size=4)
    pretrain(shorter, resume=True)
    rates = {r["step"]: r["lr"] for r in records(out) if "lr" in r}  # the record of step s holds the rate of step s - 1
    assert rates[21] == pytest.approx(before, rel=0.01)  # today: 7.9e-4 after 1.0e-3
    assert rates[40] < rates[30] < rates[21] and rates[40] == pytest.approx(1e-4, rel=0.2)
    resume = [r for r in records(out) if r.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 20 and "from 2000 to 40 steps" in resume[0]["schedule"]
    import yaml

    saved = yaml.safe_load((out / "run.yaml").read_text())["schedule"]
    assert saved["resumed_at"] == 20 and saved["max_steps"] == 40 and saved["resumed_lr"] == pytest.approx(before, rel=0.01)


def test_resume_reads_run_yaml_and_names_every_setting_given_otherwise(char_data, tmp_path):
    out = tmp_path / "run"
    common = ["model.n_layers=1", "model.d_model=32", "model.max_seq_len=32", "train.batch_size=4",
              "train.progress=false", "train.lr=2e-3"]
    assert run_cli("pretrain", "--data", char_data, "--out", out, "--max-steps", "3", *common).returncode == 0
    again = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "5")  # data, model, lr: from run.yaml
    assert again.returncode == 0, again.stderr
    assert "resuming from step 3" in again.stdout
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 5
    before = (out / "model.safetensors").read_bytes()
    refused = run_cli("pretrain", "--out", out, "--resume", "--max-steps", "7", "train.lr=1e-3", "model.n_layers=2",
                      "--objective", "mlm", "model.d_model=32")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    message = refused.stderr.strip().splitlines()[-1]
    for named in ("train.lr = 0.001 (saved: 0.002)", "model.n_layers = 2 (saved: 1)", "objective = 'mlm' (saved: 'clm')"):
        assert named in message, message
    assert "d_model" not in message and "max_steps" not in message  # same value / may change
    assert (out / "model.safetensors").read_bytes() == before


def test_a_restart_without_a_checkpoint_starts_its_metrics_again(char_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.yaml").write_text("{}\n")  # a run killed before its first checkpoint
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3)))
    pretrain(run_config(char_data, out, max_steps=3), resume=True)
    steps = [r["step"] for r in records(out) if "loss" in r]
    assert steps == [1, 2, 3] and all(r.get("loss") != 9.0 for r in records(out))
