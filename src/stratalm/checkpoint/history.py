"""The last K training checkpoints of a run: the newest is the run folder itself (so the folder
stays a model folder), the K - 1 before it are `checkpoints/step-NNNNNNNN/` inside it.

Keeping one costs no space or time when the run saves the next: the files about to be replaced are
hard-linked into `checkpoints/` first (a checkpoint's files are only ever replaced, never changed in
place). A folder is named in `checkpoints/` only when complete (it is built under a dot-name and
renamed), so a kill at any moment leaves nothing half-kept.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import Optional

from .transaction import atomic_update, link_tree

HISTORY = "checkpoints"
_NAME = re.compile(r"step-(\d+)$")


def history_folder(out: str) -> str:
    return os.path.join(out, HISTORY)


def earlier_checkpoints(out: str) -> list[tuple[int, str]]:
    """(step, folder) of every kept earlier checkpoint, the newest first."""
    folder = history_folder(out)
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name)) for name in os.listdir(folder) if (m := _NAME.match(name))]
    return sorted(found, reverse=True)


def _drop_unfinished(folder: str) -> None:
    """Remove what a kill left half-made or half-removed (dot-names) in `checkpoints/`."""
    for name in os.listdir(folder):
        if name.startswith("."):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def keep_latest(out: str, names: list[str], step: Optional[int]) -> None:
    """Before the files `names` of `out` are replaced: keep them as the checkpoint of `step` (None:
    the folder holds no readable checkpoint, which is not worth keeping)."""
    if step is None:
        return
    folder = history_folder(out)
    os.makedirs(folder, exist_ok=True)
    _drop_unfinished(folder)
    kept = os.path.join(folder, f"step-{step:08d}")
    if os.path.isdir(kept):  # from a save killed after this point, or a bad one of a step taken again
        _remove(out, kept, step)
    building = os.path.join(folder, f".building-{step:08d}")
    os.makedirs(building)
    for name in names:
        if os.path.exists(os.path.join(out, name)):
            link_tree(os.path.join(out, name), os.path.join(building, name))
    os.rename(building, kept)


def prune(out: str, keep: int, newest: int) -> None:
    """Keep the `keep - 1` latest earlier checkpoints before step `newest`; drop the rest (those of
    later steps too: a run that went back to an earlier checkpoint takes those steps again)."""
    if os.path.isdir(history_folder(out)):
        _drop_unfinished(history_folder(out))
    earlier = earlier_checkpoints(out)
    kept = [entry for entry in earlier if entry[0] < newest][:max(keep - 1, 0)]
    for step, path in earlier:
        if (step, path) not in kept:
            _remove(out, path, step)
    with contextlib.suppress(OSError):
        os.rmdir(history_folder(out))  # only when empty: no history kept


def promote(out: str, folder: str, step: int) -> None:
    """Make the kept checkpoint `folder` the latest again (the run folder's own one was bad)."""
    with atomic_update(out, f"the checkpoint of step {step}") as staging:
        for name in os.listdir(folder):
            link_tree(os.path.join(folder, name), os.path.join(staging, name))
    _remove(out, folder, step)


def _remove(out: str, folder: str, step: int) -> None:
    """Drop a kept checkpoint: renamed to a dot-name first, so a kill mid-removal leaves no half
    checkpoint under a step name."""
    doomed = os.path.join(history_folder(out), f".removing-{step:08d}")
    shutil.rmtree(doomed, ignore_errors=True)  # left by an earlier kill
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
