"""Atomic updates of a folder: a crash never leaves a half-written checkpoint.

Everything is written into `<folder>/.pending/`, a COMMITTED marker is written, and only then are
the files moved into place (renames on the same file system). A crash before the marker leaves the
old files untouched; a crash after it is finished by `recover` on the next start.
"""
from __future__ import annotations

import os
import shutil

PENDING, COMMITTED = ".pending", "COMMITTED"


def pending_folder(dest: str) -> str:
    """A clean staging folder inside `dest` (same file system, so the final moves are renames)."""
    os.makedirs(dest, exist_ok=True)
    recover(dest)
    staging = os.path.join(dest, PENDING)
    os.makedirs(staging)
    return staging


def commit_files(dest: str) -> None:
    """Move every file of `<dest>/.pending` into `dest`, as one all-or-nothing update."""
    staging = os.path.join(dest, PENDING)
    for folder, _, names in os.walk(staging):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
    marker = os.path.join(staging, COMMITTED)
    with open(marker, "w") as handle:
        handle.flush()
        os.fsync(handle.fileno())
    _finish(dest)


def _finish(dest: str) -> None:
    staging = os.path.join(dest, PENDING)
    for name in sorted(os.listdir(staging)):
        if name == COMMITTED:
            continue
        source, target = os.path.join(staging, name), os.path.join(dest, name)
        if os.path.isdir(source) and os.path.isdir(target):  # a sub-folder (ELECTRA's generator/) is replaced whole
            shutil.rmtree(target)
        os.replace(source, target)
    os.remove(os.path.join(staging, COMMITTED))
    os.rmdir(staging)


def recover(dest: str) -> None:
    """Finish an update that was committed before a crash, or drop one that was not."""
    staging = os.path.join(dest, PENDING)
    if not os.path.isdir(staging):
        return
    if os.path.exists(os.path.join(staging, COMMITTED)):
        _finish(dest)
    else:
        shutil.rmtree(staging)
