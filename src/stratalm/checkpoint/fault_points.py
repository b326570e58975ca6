"""Named points of a training run where a test can hold it, to kill or signal it there and not at
a random moment: STRATALM_PAUSE_AT=NAME@STEP[,NAME@STEP...] makes the run print
`stratalm: paused at NAME@STEP` on stderr and wait there (until a stop signal arrives, at most
PAUSE_SECONDS). The points:

    built@0         the run's data and model are built, its folder not touched yet
    opened@0        the run's folder is set up (cleared or resumed from), no step taken yet
    evaluating      the evaluation after step STEP begins (at 0: a fine-tuning run's first, on its dev set)
    step            inside step STEP + 1, after its backward pass and before the optimizer update
    save-staged     the checkpoint of step STEP is written into .pending/, nothing committed yet
    save-committed  the same checkpoint is sealed (COMMITTED marker), its files not moved in yet

Unset (always, outside tests) it costs one dictionary lookup per point.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

PAUSE_ENV = "STRATALM_PAUSE_AT"
PAUSE_SECONDS = 120.0
_woken = False


def pause_point(name: str, step: Optional[int]) -> None:
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or f"{name}@{step}" not in wanted.split(","):
        return
    print(f"stratalm: paused at {name}@{step}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + PAUSE_SECONDS
    while not _woken and time.monotonic() < deadline:
        time.sleep(0.01)


def wake() -> None:
    """End a pause (called by the stop-signal handler, so a signalled run goes on to stop cleanly)."""
    global _woken
    _woken = True
