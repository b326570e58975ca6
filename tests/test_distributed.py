"""Scaling out on torch's own engine: FSDP2 beside DDP (train.parallel), checkpoints that resume on
another number of processes, two "nodes" meeting through a c10d rendezvous on loopback, and
activation checkpointing per block. Processes are gloo on the CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import run_cli, run_two_processes, small_char_corpus

# Small enough for seconds per run, two blocks so FSDP has units besides the root. A flat learning
# rate (lr = min_lr, no warmup) lets a run be cut into pieces by its max_steps without the
# schedule being stretched, so the pieces must replay the uninterrupted run.
COMMON = ["--model", "tiny", "model.n_layers=2", "model.d_model=64", "model.max_seq_len=32", "model.dropout=0.0",
          "train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.eval_windows=6",
          "train.progress=false", "train.warmup_steps=0", "train.lr=0.003", "train.min_lr=0.003"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_char_corpus(tmp_path_factory.mktemp("dist"))


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as handle:
        return [r["loss"] for r in map(json.loads, handle) if "loss" in r]


def validation(out):
    with open(os.path.join(out, "metrics.jsonl")) as handle:
        return [r["val_loss"] for r in map(json.loads, handle) if "val_loss" in r]


def pretrain_two(data, out, steps, *extra):
    done = run_two_processes("pretrain", "--data", data, "--out", out, "--max-steps", steps, *COMMON, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    pretrain_two(data, out, 20, "train.parallel=ddp")
    return out


def test_fsdp_matches_ddp_over_twenty_steps(data, ddp_run, tmp_path):
    out = tmp_path / "fsdp"
    done = pretrain_two(data, out, 20, "train.parallel=fsdp", "train.save_every=10")
    assert "2 processes" in done.stdout
    ddp, fsdp = losses(ddp_run), losses(out)
    assert len(ddp) == len(fsdp) == 20
    assert max(abs(a - b) for a, b in zip(ddp, fsdp)) < 1e-5, (ddp, fsdp)
    assert abs(validation(ddp_run)[-1] - validation(out)[-1]) < 1e-5  # evaluation ran on the gathered weights
    # The sharded run saved full tensors in the native format: the same weights as DDP's.
    from safetensors.torch import load_file

    a, b = load_file(ddp_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


@pytest.mark.slow
def test_fsdp_matches_ddp_with_masked_lm_on_an_encoder(data, tmp_path):
    """FSDP2 on BERT under mlm, whose pooler and next-sentence head stay frozen (no gradient): the
    same losses as DDP over ten steps, each process masking its rows of the same global batch."""
    encoder = ["--model", "bert", "--objective", "mlm", "model.attention_dropout=0.0"]  # after COMMON's: this --model wins
    found = {}
    for parallel in ("ddp", "fsdp"):
        pretrain_two(data, tmp_path / parallel, 10, f"train.parallel={parallel}", *encoder)
        found[parallel] = losses(tmp_path / parallel)
    assert len(found["ddp"]) == len(found["fsdp"]) == 10
    assert max(abs(a - b) for a, b in zip(found["ddp"], found["fsdp"])) < 1e-5, found


def test_fsdp_is_refused_with_muon(data, tmp_path):
    done = run_cli("pretrain", "--data", data, "--out", tmp_path / "r", "--max-steps", "1", *COMMON,
                   "train.parallel=fsdp", "train.optimizer=muon")
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        "error: train.parallel=fsdp needs train.optimizer=adamw (not muon); use parallel=ddp for it."]
    done = run_cli("pretrain", "--data", data, "--out", tmp_path / "r", "--max-steps", "1", *COMMON, "train.parallel=zero")
    assert done.returncode != 0 and done.stderr.strip().startswith("error: train.parallel must be one of ddp, fsdp")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pretrain_on_two_nodes(data, out, steps, *extra):
    """Two launchers, one process each, that find each other through a c10d rendezvous on
    loopback, as two machines would through the first one's address."""
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes",
               "-m", "stratalm", "pretrain", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
               *COMMON, *extra]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    return "".join(out for out, _ in outputs)


@pytest.mark.slow
def test_a_run_resumes_on_another_number_of_processes(data, ddp_run, tmp_path):
    """2 processes (FSDP, two nodes) -> 1 process -> 2 processes (FSDP): the same 20 losses as the
    uninterrupted 2-process run, since every count draws the same global batches."""
    out = tmp_path / "resharded"
    stdout = pretrain_on_two_nodes(data, out, 7, "train.parallel=fsdp")
    assert "2 processes" in stdout
    single = run_cli("pretrain", "--data", data, "--out", out, "--max-steps", "14", *COMMON, "--resume")
    assert single.returncode == 0 and "resuming from step 7" in single.stdout, single.stderr[-3000:]
    again = pretrain_two(data, out, 20, "train.parallel=fsdp", "--resume")
    assert "resuming from step 14" in again.stdout
    reference, resumed = losses(ddp_run), losses(out)
    assert len(resumed) == 20
    assert max(abs(a - b) for a, b in zip(reference, resumed)) < 1e-4, (reference, resumed)


ACTIVATIONS = """
import sys, torch
from stratalm.families import preset
from stratalm.models import build_model
from stratalm.models.stack import use_activation_checkpointing
torch.manual_seed(0)
model = build_model(preset("tiny", n_layers=8, d_model=128, max_seq_len=256, vocab_size=512, dropout=0.1))
use_activation_checkpointing(model, sys.argv[1] == "on")
ids = torch.randint(0, 512, (16, 256))

def status_kb(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as handle:  # "5" resets the peak (VmHWM) to the current resident set
    handle.write("5")
before = status_kb("VmRSS")
logits = model(input_ids=ids).logits
loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
loss.backward()
grown = status_kb("VmHWM") - before
grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
print(repr(loss.item()), repr(float(grads.double().abs().sum())), grown)
"""


def test_activation_checkpointing_keeps_the_loss_and_lowers_peak_memory():
    """A training step with dropout, in a fresh process each way: the same loss and gradients (the
    recomputed blocks replay the dropout masks) and a lower peak resident memory. Large
    allocations are mmap-ed (MALLOC_MMAP_THRESHOLD_), so freed activations leave the resident set
    instead of staying in malloc's heap and hiding the peak."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    measured = {}
    for mode in ("off", "on"):
        done = subprocess.run([sys.executable, "-c", ACTIVATIONS, mode], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        loss, grads, grown_kb = done.stdout.split()
        measured[mode] = (float(loss), float(grads), int(grown_kb))
    assert measured["on"][:2] == measured["off"][:2]
    assert measured["on"][2] < 0.75 * measured["off"][2], measured


@pytest.mark.slow
def test_a_failed_save_on_the_first_process_stops_every_process_with_one_sentence(data, tmp_path):
    """Rank 0 alone writes checkpoints; when its write fails (here a file-size limit, EFBIG), the
    other process learns it through an all_reduce after the save instead of waiting at a barrier
    for a process that has left, and both end with one sentence each."""
    from test_faults import limit_file_size

    out = tmp_path / "run"
    pretrain_two(data, out, 4, "train.save_every=2")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stratalm",
               "pretrain", "--out", str(out), "--resume", "--max-steps", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size(64 * 1024))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, done.stderr[-3000:]
    assert not [line for line in done.stderr.splitlines() if line.startswith("[rank") and "Traceback" in line], done.stderr
    assert any(line.startswith(f"error: could not write the checkpoint of step 6 into '{out}' (File too large")
               for line in errors), errors
    assert f"error: the first process could not write the checkpoint of step 6 into '{out}' (its message says why), so " \
           f"this one stopped too; the last good checkpoint, of step 4, is in '{out}'" in " ".join(errors), errors
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 4
    # torchrun's own summary of the failed processes (its ChildFailedError, printed after them) gives
    # each one's sentence, from the error file torchrun names to it, not a link on enabling tracebacks.
    summary = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("traceback : ")]
    assert sorted(summary) == sorted(f"traceback : {line}" for line in errors), done.stderr[-3000:]
    assert "To enable traceback see" not in done.stderr and "new message format" not in done.stderr


def test_a_failed_process_leaves_its_sentence_where_torchrun_looks_for_it(tmp_path, monkeypatch):
    """The error file of TORCHELASTIC_ERROR_FILE, as torchrun's summary reads it (its own code)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from stratalm.cli import main

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    assert main(["pretrain", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")]) == 2
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(error_file))
    shown = [line.strip() for line in ChildFailedError("stratalm", {0: failure}).format_msg().splitlines()]
    assert f"traceback : error: '{tmp_path / 'none'}' is not a prepared data folder (no manifest.json); run " \
           f"`stratalm prepare` first." in shown, shown
