"""A stop signal before a run's loop starts: as soon as the `stratalm` command runs its own first
lines, while torch is imported, and while the config file is read, SIGTERM or SIGINT ends
`pretrain` / `finetune` with one sentence and the shell's 128 + signal, no traceback, nothing
written (loop/startup.py). Each moment is found for real in a subprocess, not guessed with a sleep:
the guard in place is the SIGTERM bit of /proc/PID/status's SigCgt, torch's import underway is its
library mapped into the process, and the config being read is a FIFO given as --config, which
blocks the reader until the test, holding its other end, lets it go."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LINE = "error: stopped by {} before training started; nothing was written, so the run folder is as it was."

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc to find the moments")


def start(args):
    return subprocess.Popen([sys.executable, "-m", "stratalm", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(process, condition, what, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the command ended (status {process.returncode}) before {what}: "
                                 f"{process.stderr.read()[-2000:]}")
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"no {what} within {timeout} s")


def catches_sigterm(pid):
    """Whether the process has a handler for SIGTERM (Python's default leaves it to the kernel)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            mask = next(int(line.split()[1], 16) for line in handle if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def imports_torch(pid):
    try:
        with open(f"/proc/{pid}/maps") as handle:
            return "libtorch" in handle.read()
    except OSError:
        return False


def opened_for_reading(fifo):
    """Whether a reader has the FIFO open (a non-blocking writer can only open it then); the
    writing end, held open and never written to, keeps the reader waiting inside the read."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


def stopped(process, sig):
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=600)  # a paused machine may hold it for minutes
    assert process.returncode == 128 + sig and "Traceback" not in stderr, (process.returncode, stderr)
    assert stderr.strip().splitlines() == [LINE.format(signal.Signals(sig).name)], stderr
    return stderr


def finetune_args(tmp_path, *extra):
    return ["finetune", "--task", "classification", "--model", tmp_path / "no-model", "--train", tmp_path / "no.tsv",
            "--out", tmp_path / "ft", *extra]


def test_sigterm_as_soon_as_the_command_runs_its_first_lines(tmp_path):
    out = tmp_path / "run"
    process = start(["pretrain", "--data", tmp_path / "no-data", "--out", out, "--max-steps", "2"])
    wait_for(process, lambda: catches_sigterm(process.pid), "a SIGTERM handler")
    assert not imports_torch(process.pid)  # still importing the command itself
    stopped(process, signal.SIGTERM)
    assert not out.exists()


def test_sigint_while_torch_is_imported(tmp_path):
    process = start(finetune_args(tmp_path))
    wait_for(process, lambda: imports_torch(process.pid), "torch's import")
    stopped(process, signal.SIGINT)  # Python's default: a KeyboardInterrupt traceback from inside torch
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("command,sig", [("pretrain", signal.SIGTERM), ("finetune", signal.SIGINT)])
def test_a_stop_signal_while_the_config_file_is_read_leaves_the_run_folder_as_it_was(tmp_path, command, sig):
    out = tmp_path / ("run" if command == "pretrain" else "ft")
    out.mkdir()
    (out / "run.yaml").write_text("kept: true\n")
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    args = (["pretrain", "--data", tmp_path / "no-data", "--out", out, "--resume"] if command == "pretrain"
            else finetune_args(tmp_path, "--resume"))
    process = start([*args, "--config", fifo])
    writer = []
    wait_for(process, lambda: writer.append(opened_for_reading(fifo)) or writer[-1] is not None, "the config's read")
    try:
        time.sleep(0.05)  # from open() into the read, which waits on the FIFO
        stopped(process, sig)
    finally:
        os.close(writer[-1])
    assert [path.name for path in out.iterdir()] == ["run.yaml"] and (out / "run.yaml").read_text() == "kept: true\n"


def test_the_loop_takes_the_signals_over_and_hands_back_those_from_before_the_guard():
    """Once the loop holds the signals (a stop then waits for the end of the step), the guard is
    over: a second signal, and any after the loop, act as they would have without it."""
    from stratalm.loop.faults import StopSignals
    from stratalm.loop.startup import guard_stop_signals, release_stop_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    guard_stop_signals()
    try:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs in this thread, at the next instruction
            assert stop.received == signal.SIGTERM
            assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]  # stepped aside, past the guard
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        release_stop_signals()
        for sig, handler in before.items():
            signal.signal(sig, handler)
