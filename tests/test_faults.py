"""Faults of a real run, for pretraining and fine-tuning alike (one loop): kill -9 inside steps and
during saves, SIGTERM / SIGINT, the last K checkpoints with a corrupt latest, a full disk and a
permission error while saving, non-finite losses, gradients and weights.

Kills and signals are real, sent to a subprocess; "during a save" is hit on purpose by holding the
run at a named point (STRATALM_PAUSE_AT, checkpoint/fault_points.py) until it is killed there."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_char_corpus
from stratalm.checkpoint.training import load_training_checkpoint
from stratalm.errors import CheckpointError, ConfigError
from stratalm.loop import build_run_config, pretrain, pretraining_loop
from stratalm.loop.faults import NonFiniteError, RunInterrupted

MODEL = ["--model", "tiny", "model.n_layers=2", "model.d_model=64", "model.max_seq_len=32", "model.dropout=0.1",
         "train.batch_size=8", "train.eval_every=0", "train.log_every=1", "train.progress=false"]
STEPS = 8
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process compared


def command(data, out, steps=STEPS, save_every=2):
    return [sys.executable, "-m", "stratalm", "pretrain", "--data", str(data), "--out", str(out), "--max-steps",
            str(steps), "--save-every", str(save_every), "--resume", *MODEL]


def start(args, pause=None, **popen):
    env = {**ENV, **({"STRATALM_PAUSE_AT": pause} if pause else {})}
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, **popen)


def wait_until_paused(process, point):
    """Read the run's stderr until it says it holds at `point`."""
    for line in process.stderr:
        if line.strip() == f"stratalm: paused at {point}":
            return
    raise AssertionError(f"the run ended (status {process.wait()}) without reaching {point}")


def finish(args):
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_same_weights(a, b):
    for name in ("model.safetensors", "optimizer.safetensors"):
        x, y = load_file(os.path.join(a, name)), load_file(os.path.join(b, name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def losses(out):
    return [(r["step"], r["loss"]) for r in records(out) if "loss" in r]


def step_of(out):
    with open(os.path.join(out, "trainer_state.json")) as handle:
        return json.load(handle)["step"]


def digests(folder):
    """sha256 of every file under `folder` (the checkpoint's files, earlier ones included)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if name not in ("metrics.jsonl", "run.yaml"):  # written at start by any resumed run
                found[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_char_corpus(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    finish(command(data, out))
    return out


def run_config(data, out, **train):
    return build_run_config(None, {"data": str(data), "out": str(out), "model": {
        "preset": "tiny", "n_layers": 2, "d_model": 64, "max_seq_len": 32, "dropout": 0.1},
        "train": {"progress": False, "log_every": 1, "eval_every": 0, "batch_size": 8, **train}})


# -- kill -9 ------------------------------------------------------------------------------------------
def test_kill_inside_a_step_and_during_saves_then_resume_bitwise(data, reference, tmp_path):
    """Killed inside step 4, while the checkpoint of step 4 is staged, and after the one of step 6 is
    sealed but not moved in: each resumed run picks up where the folder says, and the last one ends
    with the weights, AdamW state and losses of the uninterrupted run."""
    out = tmp_path / "killed"
    expected_on_disk = {"step@3": 2, "save-staged@4": 2, "save-committed@6": 4}
    for point, saved in expected_on_disk.items():
        process = start(command(data, out), pause=point)
        wait_until_paused(process, point)
        process.kill()
        assert process.wait() == -signal.SIGKILL
        assert step_of(out) == saved, point
    assert os.path.isfile(out / ".pending" / "COMMITTED")  # the sealed update the next start finishes
    finish(command(data, out))
    assert_same_weights(reference, out)
    assert losses(out) == losses(reference)
    assert [r["step"] for r in records(out) if r.get("event") == "resume"] == [2, 6]
    assert sorted(os.listdir(out / "checkpoints")) == ["step-00000006"]  # keep_checkpoints = 2 by default


@pytest.mark.slow
def test_ten_kills_at_random_moments_each_resume_bitwise(data, tmp_path):
    """The issue's figure: 10 runs killed (5 at named points inside steps and saves, 5 at random
    moments), each resumed to the end: 10 of 10 end bitwise equal to the uninterrupted run."""
    steps, save_every = 200, 5
    reference = tmp_path / "reference"
    finish(command(data, reference, steps, save_every))
    rng = random.Random(18)
    points = ["step@7", "save-staged@10", "save-committed@25", "step@133", "save-committed@190"] + [None] * 5
    for i, point in enumerate(points):
        out = tmp_path / f"killed{i}"
        process = start(command(data, out, steps, save_every), pause=point)
        if point:
            wait_until_paused(process, point)
        else:
            while not (out / "trainer_state.json").exists() and process.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))  # anywhere after the first checkpoint: mid-step or mid-save
        process.kill()
        assert process.wait() == -signal.SIGKILL, f"run {i} ended before it could be killed"
        assert step_of(out) < steps
        finish(command(data, out, steps, save_every))
        assert_same_weights(reference, out)
        assert losses(out) == losses(reference)


# -- SIGTERM / SIGINT -----------------------------------------------------------------------------------
def test_sigterm_inside_a_step_and_during_a_save_checkpoints_and_exits_143(data, reference, tmp_path):
    out = tmp_path / "preempted"
    for point, stopped_at in (("step@4", 5), ("save-staged@6", 6)):
        process = start(command(data, out), pause=point)
        wait_until_paused(process, point)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert stderr.strip().splitlines()[-1] == (
            f"error: stopped by SIGTERM after step {stopped_at} of {STEPS}; its checkpoint is saved in '{out}', "
            f"and --resume continues the run from it.")
        assert "Traceback" not in stderr and step_of(out) == stopped_at
        assert not (out / ".pending").exists()
    finish(command(data, out))
    assert_same_weights(reference, out)
    assert losses(out) == losses(reference)


def test_sigint_stops_a_fine_tuning_run_after_its_step_and_resume_is_bitwise(tmp_path):
    from stratalm.tasks.finetune import FinetuneConfig, finetune, finetune_loop, finetuning_loop
    from test_tasks_framework import make_base, write_sentiment

    train = write_sentiment(tmp_path / "train.tsv", 64, 1)
    base = make_base(tmp_path / "base", [train.read_text()], n_layers=1, d_model=32, n_heads=2, d_ff=64, max_seq_len=48)

    def config(out):
        return FinetuneConfig(task="classification", model=str(base), train=str(train), out=str(out),
                              loop=finetune_loop(lr=1e-3, batch_size=16, max_steps=6, log_every=1, progress=False))

    finetune(config(tmp_path / "reference"))
    loop = finetuning_loop(config(tmp_path / "run"))
    original = loop.recipe.micro_batch

    def interrupted(step, index, count):
        if step == 2:  # Ctrl-C while step 3 draws its batch
            os.kill(os.getpid(), signal.SIGINT)
        return original(step, index, count)

    loop.recipe.micro_batch = interrupted
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(RunInterrupted, match="stopped by SIGINT after step 3 of 6") as stopped:
            loop.fit()
    finally:
        loop.close()
    assert stopped.value.exit_status == 130
    assert signal.getsignal(signal.SIGINT) is handler  # the loop's handler is gone again
    assert step_of(tmp_path / "run" / "last") == 3
    finetune(config(tmp_path / "run"), resume=True)
    assert_same_weights(tmp_path / "reference" / "last", tmp_path / "run" / "last")


# -- the last K checkpoints ----------------------------------------------------------------------------
def test_a_corrupt_latest_checkpoint_is_named_and_the_run_continues_from_the_last_good_one(data, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(run_config(data, out, max_steps=6, save_every=1, keep_checkpoints=3))
    assert sorted(os.listdir(out / "checkpoints")) == ["step-00000004", "step-00000005"]
    assert all(step_of(out / "checkpoints" / name) == int(name[5:]) for name in os.listdir(out / "checkpoints"))
    final = load_file(out / "model.safetensors")

    # The latest's optimizer state has bytes overwritten (a header that still parses), and the one
    # before is cut short: the run goes back to step 4 and takes steps 5 and 6 again.
    with open(out / "optimizer.safetensors", "r+b") as handle:
        handle.seek(os.path.getsize(out / "optimizer.safetensors") // 2)
        handle.write(b"\xff" * 64)
    earlier = out / "checkpoints" / "step-00000005" / "model.safetensors"
    earlier.write_bytes(earlier.read_bytes()[:1000])
    capsys.readouterr()
    pretrain(run_config(data, out, max_steps=6, save_every=1, keep_checkpoints=3), resume=True)
    warning = capsys.readouterr().err
    assert f"'{out}/optimizer.safetensors' is corrupt or truncated" in warning
    assert "continuing from the previous checkpoint instead, the one of step 4" in warning.lower()
    resumed = [r for r in records(out) if r.get("event") == "resume"]
    assert resumed[-1]["step"] == 4 and "optimizer.safetensors" in resumed[-1]["fallback"]
    again = load_file(out / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert step_of(out) == 6 and sorted(os.listdir(out / "checkpoints")) == ["step-00000004", "step-00000005"]

    # With no earlier checkpoint kept, a bad latest one is an error that names it.
    shutil.rmtree(out / "checkpoints")
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:500])
    with pytest.raises(CheckpointError, match=f"^'{out}/model.safetensors' is corrupt or truncated.*no earlier checkpoint is kept"):
        pretrain(run_config(data, out, max_steps=7, keep_checkpoints=1), resume=True)


def test_keep_checkpoints_and_nonfinite_are_checked_when_read():
    with pytest.raises(ConfigError, match="'train.keep_checkpoints' must be at least 1; got 0"):
        run_config("d", "o", keep_checkpoints=0)
    with pytest.raises(ConfigError, match="'train.nonfinite' must be one of skip, stop; got 'ignore'"):
        run_config("d", "o", nonfinite="ignore")


# -- a full disk, no permission --------------------------------------------------------------------------
def limit_file_size(size):
    """preexec_fn: files may not grow past `size` bytes; a write beyond fails with EFBIG (SIGXFSZ,
    which would kill the process instead, is ignored)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
    return apply


def test_a_file_too_large_while_saving_is_one_sentence_and_the_previous_checkpoint_survives(data, tmp_path):
    out = tmp_path / "run"
    pretrain(run_config(data, out, max_steps=4, save_every=2))
    before = digests(out)
    process = subprocess.run([sys.executable, "-m", "stratalm", "pretrain", "--out", str(out), "--resume", "--max-steps", "8"],
                             capture_output=True, text=True, env=ENV, timeout=600, preexec_fn=limit_file_size(64 * 1024))
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: could not write the checkpoint of step 6 into '{out}' (File too large"), lines
    assert "the previous checkpoint (step 4) is intact" in lines[-1] and "Traceback" not in process.stderr
    assert digests(out) == before and not (out / ".pending").exists()
    pretrain(run_config(data, out, max_steps=8, save_every=2), resume=True)  # the disk has room again
    assert step_of(out) == 8


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs: room for one checkpoint of the tiny model (about 2.1 MB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip() or 'mount failed'}); "
                    f"the RLIMIT_FSIZE test covers a full disk")
    try:
        yield mount
    finally:
        # --lazy: weights loaded from the disk may still be memory-mapped until garbage-collected.
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_no_space_left_while_saving_keeps_the_previous_checkpoint(data, small_disk):
    import stratalm

    out = small_disk / "run"
    with pytest.raises(CheckpointError) as failed:
        pretrain(run_config(data, out, max_steps=4, save_every=2, keep_checkpoints=1))
    assert str(failed.value).startswith(f"could not write the checkpoint of step 4 into '{out}' (No space left on device")
    assert "the previous checkpoint (step 2) is intact" in str(failed.value)
    assert step_of(out) == 2 and not (out / ".pending").exists()
    stratalm.load(str(out))
    loop = pretraining_loop(run_config(data, out, max_steps=4, save_every=2, keep_checkpoints=1), resume=True)
    try:
        assert loop.step == 2
    finally:
        loop.close()


def test_a_permission_error_while_saving_keeps_the_previous_checkpoint(data):
    folder = tempfile.mkdtemp()  # not under pytest's folders, whose parents only root may enter
    out = os.path.join(folder, "run")
    loop = pretraining_loop(run_config(data, out, max_steps=4))
    try:
        loop.train_step()
        loop.save()
        before = digests(out)
        loop.train_step()
        os.chmod(folder, 0o755)
        os.chmod(out, 0o555)  # readable, not writable
        as_root = os.geteuid() == 0
        if as_root:
            os.seteuid(65534)  # root writes anywhere: save as nobody instead
        try:
            with pytest.raises(CheckpointError) as failed:
                loop.save()
        finally:
            if as_root:
                os.seteuid(0)
        os.chmod(out, 0o755)
        assert f"could not write the checkpoint of step 2 into '{out}' (Permission denied" in str(failed.value)
        assert "the previous checkpoint (step 1) is intact" in str(failed.value)
        assert digests(out) == before and step_of(out) == 1
    finally:
        loop.close()
        shutil.rmtree(folder)


# -- non-finite losses, gradients, weights -----------------------------------------------------------------
def poison(loop, steps):
    """Steps (0-based, as the loop counts steps taken) whose loss is NaN ("loss") or whose loss is
    fine but whose gradients are NaN ("gradient")."""
    original = loop.recipe.micro_batch

    def with_nan(compute, kind):
        def compute_nan(model, inputs, targets):
            loss = compute(model, inputs, targets)
            if kind == "loss":
                return loss * float("nan")
            loss.register_hook(lambda grad: grad * float("nan"))
            return loss
        return compute_nan

    def micro_batch(step, index, count):
        parts = original(step, index, count)
        kind = steps.get(step)
        return [dataclasses.replace(p, compute=with_nan(p.compute, kind)) for p in parts] if kind else parts

    loop.recipe.micro_batch = micro_batch


class WeightsEachStep:
    """An observer that keeps a copy of the weights after every step."""

    def __init__(self):
        self.after = {}

    def observe(self, loop):
        self.after[loop.step] = {k: v.clone() for k, v in loop.model.state_dict().items()}
        return {}


def test_nonfinite_skip_leaves_the_weights_and_counts_the_step(data, tmp_path):
    out = tmp_path / "run"
    watch = WeightsEachStep()
    loop = pretraining_loop(run_config(data, out, max_steps=6, nonfinite="skip"), observers=[watch])
    poison(loop, {2: "loss", 4: "gradient"})  # steps 3 and 5
    try:
        loop.fit()
        adam_steps = {float(s["step"]) for s in loop.optimizer.state_dict()["state"].values()}
    finally:
        loop.close()
    after = watch.after
    for skipped in (3, 5):
        assert all(torch.equal(after[skipped][k], after[skipped - 1][k]) for k in after[skipped])
    assert not all(torch.equal(after[4][k], after[3][k]) for k in after[4])
    assert adam_steps == {4.0}
    events = [r for r in records(out) if r.get("event") == "skipped"]
    assert [(r["step"], r["skipped_steps"]) for r in events] == [(3, 1), (5, 2)]
    assert events[0]["reason"] == "the loss is nan" and events[1]["reason"] == "the gradient norm is nan"
    assert [s for s, _ in losses(out)] == [1, 2, 4, 6]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["skipped_steps"] == 2


def test_nonfinite_stop_ends_the_run_at_its_last_good_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    loop = pretraining_loop(run_config(data, out, max_steps=6, save_every=2))  # nonfinite=stop is the default
    poison(loop, {4: "loss"})  # step 5
    try:
        with pytest.raises(NonFiniteError) as stopped:
            loop.fit()
    finally:
        loop.close()
    assert str(stopped.value).startswith("in step 5 the loss is nan, so the run stopped before updating the weights; "
                                         f"the last good checkpoint, of step 4, is in '{out}'")
    assert step_of(out) == 4 and records(out)[-1] == {"step": 5, "event": "nonfinite", "action": "stop",
                                                       "reason": "the loss is nan"}
    pretrain(run_config(data, out, max_steps=6, save_every=2), resume=True)  # the batch is fine again
    assert step_of(out) == 6


def test_a_checkpoint_with_nonfinite_weights_is_never_written(data, tmp_path):
    out = tmp_path / "run"
    loop = pretraining_loop(run_config(data, out, max_steps=4))
    try:
        loop.train_step()
        loop.save()
        before = digests(out)
        loop.train_step()
        with torch.no_grad():
            loop.model.get_parameter("stack.blocks.1.attn.qkv.weight")[0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match=r"the weights after step 2 hold non-finite values \(first: "
                                                 r"'stack.blocks.1.attn.qkv.weight'\), so no checkpoint was written; "
                                                 r"the last good checkpoint, of step 1"):
            loop.save()
    finally:
        loop.close()
    assert digests(out) == before
    assert load_training_checkpoint(str(out), loop.model, loop.optimizer)["step"] == 1


def test_a_file_too_large_while_exporting_is_one_sentence_and_the_earlier_export_survives(tmp_path):
    """Every writer of a model folder goes through the checkpoint's guarded write, not only the
    training checkpoint: here `convert --to hf` (checkpoint/hf.py)."""
    import stratalm
    from stratalm.models import build_model

    source, export = tmp_path / "model", tmp_path / "hf"
    stratalm.save(build_model(stratalm.preset("tiny", n_layers=1, d_model=64, n_heads=2, vocab_size=256, max_seq_len=32)),
                  str(source))
    convert = [sys.executable, "-m", "stratalm", "convert", str(source), str(export), "--to", "hf", "--overwrite"]
    finish(convert)
    before = digests(export)
    process = subprocess.run(convert, capture_output=True, text=True, env=ENV, timeout=600,
                             preexec_fn=limit_file_size(64 * 1024))
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: could not write the Hugging Face model into '{export}' (File too large"), lines
    assert "what the folder held before is intact" in lines[0]
    assert digests(export) == before and not (export / ".pending").exists()


# -- a stop signal before the first step --------------------------------------------------------------
def stopped_at(args, point, sig):
    process = start(args, pause=point)
    wait_until_paused(process, point)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + sig and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines  # the pause line was read already: one sentence and nothing else
    return lines[0]


def test_a_stop_signal_while_the_run_is_built_exits_cleanly_and_writes_nothing(data, tmp_path):
    out = tmp_path / "run"
    assert stopped_at(command(data, out), "built@0", signal.SIGTERM) == (
        "error: stopped by SIGTERM before training started; nothing was written, so the run folder is as it was.")
    assert not out.exists()
    pretrain(run_config(data, out, max_steps=2))
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert stopped_at(command(data, out, steps=4), "built@0", signal.SIGINT).startswith("error: stopped by SIGINT before")
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


@pytest.mark.slow
def test_a_stop_signal_while_the_folder_is_set_up_waits_for_it_then_exits(data, tmp_path):
    out = tmp_path / "run"
    assert stopped_at(command(data, out, steps=2), "opened@0", signal.SIGTERM) == (
        f"error: stopped by SIGTERM before the first step; '{out}' is ready, and --resume continues the run.")
    assert (out / "run.yaml").is_file() and not (out / ".pending").exists()
    finish(command(data, out, steps=2))
    assert step_of(out) == 2
