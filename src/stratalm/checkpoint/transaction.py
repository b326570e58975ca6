"""Atomic updates of a folder: a crash never leaves a half-written checkpoint.

Everything is written into `<folder>/.pending/`, a COMMITTED marker is written, and only then are
the files moved into place (renames on the same file system). A crash before the marker leaves the
old files untouched; a crash after it is finished by `recover` on the next start. A write that
fails (disk full, no permission) drops the staging folder and says why in one sentence
(`atomic_update`), the old files untouched.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import Iterator, Optional

from safetensors import SafetensorError

from ..errors import CheckpointError
from .fault_points import pause_point

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
    seal(dest)
    finish(dest)


def seal(dest: str) -> None:
    """Flush every staged file to disk and write the COMMITTED marker: from here on the update
    happens, if need be by `recover` after a crash."""
    staging = os.path.join(dest, PENDING)
    for folder, _, names in os.walk(staging):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
    marker = os.path.join(staging, COMMITTED)
    with open(marker, "w") as handle:
        handle.flush()
        os.fsync(handle.fileno())


def finish(dest: str) -> None:
    """Move the files of a sealed update into place."""
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
        finish(dest)
    else:
        shutil.rmtree(staging)


def write_failure(exc: BaseException) -> str:
    """The operating system's reason for a failed write ("No space left on device"), from an
    OSError or from safetensors, which wraps it in its own message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": '{exc.filename}'" if exc.filename else "")
    found = re.search(r"I/O error: (.+?) \(os error \d+\)", str(exc))
    return found.group(1) if found else str(exc)


@contextlib.contextmanager
def atomic_update(dest: str, what: str, intact: str = "what the folder held before is intact",
                  step: Optional[int] = None) -> Iterator[str]:
    """Stage files in the yielded folder; on leaving, seal and move them into `dest`. A write that
    fails before the seal drops what was staged and raises one sentence naming `what`, the
    system's reason and `intact` (what is left as it was). `step` names the update for `pause_point`."""
    try:
        staging = pending_folder(dest)
        yield staging
        pause_point("save-staged", step)
        seal(dest)
    except (OSError, SafetensorError) as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(os.path.join(dest, PENDING))
        raise CheckpointError(f"could not write {what} into '{dest}' ({write_failure(exc)}); {intact}. Free some disk space or fix the folder's permissions, then try again.") from None
    pause_point("save-committed", step)
    finish(dest)


def link_tree(source: str, target: str) -> None:
    """`target` as a copy of the file or folder `source` made of hard links (no space, no time:
    the files of a checkpoint are never changed in place, only replaced); a plain copy where the
    file system has no hard links."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if os.path.isdir(source):
        shutil.copytree(source, target, copy_function=link)
    else:
        link(source, target)
