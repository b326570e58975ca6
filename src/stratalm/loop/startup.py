"""The `stratalm pretrain` / `finetune` process before its loop takes over: from the command's first
lines, while torch is imported and the settings and run folder are read (nothing is written yet),
a stop signal (SIGTERM from a scheduler's preemption, Ctrl-C's SIGINT) ends the process at once
with the loop's sentence for a run stopped before training started, and the shell's 128 + signal,
instead of Python's defaults: a silent death by SIGTERM, a KeyboardInterrupt traceback. The loop
(faults.StopSignals) takes the signals over when it starts, and hands them back as they were
before this guard. Also what a launcher is told of a process that failed (torchrun's error file).

No torch here, and nothing slow to import: the guard is in place before torch is imported."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
TRAINING_COMMANDS = ("pretrain", "finetune")
LAUNCHER_ERROR_FILE = "TORCHELASTIC_ERROR_FILE"  # set by torchrun for each process it starts
_replaced: dict[int, Any] = {}  # signal -> the handler the guard replaced


def stopped_before_training(signum: int) -> str:
    return (f"stopped by {signal.Signals(signum).name} before training started; nothing was written, so the run "
            f"folder is as it was.")


def _stop_now(signum: int, frame: Any) -> None:
    line = f"error: {stopped_before_training(signum)}"
    with contextlib.suppress(Exception):  # the signal may land inside a write to stdout
        sys.stdout.flush()
    os.write(2, (line + "\n").encode())
    tell_launcher(line)
    # Exit here, wherever the signal landed (inside torch's import, say): raising would leave a
    # half-imported torch to the interpreter's shutdown; nothing is open that needs closing.
    os._exit(128 + signum)


def guard_stop_signals() -> None:
    """Stop at once on SIGTERM or SIGINT until the loop starts (or release_stop_signals)."""
    if _replaced:
        return
    with contextlib.suppress(ValueError):  # not the main thread, which alone receives signals: no guard
        for sig in STOP_SIGNALS:
            _replaced[sig] = signal.signal(sig, _stop_now)


def guard_if_training(argv: list[str]) -> None:
    """The guard, when the process's command line (`sys.argv`) runs a training command."""
    if argv[1:2] and argv[1] in TRAINING_COMMANDS:
        guard_stop_signals()


def handler_before_guard(sig: int, handler: Any) -> Any:
    """What `handler` (just replaced by the loop's own) stands for: the handler the guard replaced,
    when it is the guard's; the guard is then over for good."""
    if handler is _stop_now:
        return _replaced.pop(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    return handler


def release_stop_signals() -> None:
    """Hand the signals back to the handlers the guard replaced (where it still holds them)."""
    for sig, handler in list(_replaced.items()):
        if signal.getsignal(sig) is _stop_now:
            signal.signal(sig, handler)
        del _replaced[sig]


def tell_launcher(line: str) -> None:
    """Under torchrun, leave the process's one-line reason in its error file: torchrun's summary of
    the failed processes shows it (instead of a link on how to enable tracebacks), and passes the
    first failure's on to its own launcher."""
    path = os.environ.get(LAUNCHER_ERROR_FILE)
    if not path:
        return
    import json

    with contextlib.suppress(OSError), open(path, "w") as handle:  # unwritable: the reason is on stderr all the same
        # torchrun's own layout (ErrorHandler.record_exception's) without a Python call stack: the
        # summary shows the message in its place, and may set the exit code in it.
        json.dump({"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}, handle)
