"""File locks, released by the kernel when their process dies (so a killed job never leaves a stale one).

One non-blocking lock is shared by the jobs that must run one at a time (imports, embedding); a job's
work folder carries a lock so that a folder left by a killed job is told from a live one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

PID_MAX = 2**22  # Linux's largest pid_max


@contextmanager
def exclusive_lock(path: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; raise ``busy()`` if another process holds it.

    The lock dies with its process, so a killed job never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_lock(path: Path) -> IO[bytes]:
    """Create ``path`` already locked (``flock``) and return the open file: the lock lasts until it is closed.

    The file is locked under a temporary name and renamed into place, so nobody ever sees ``path``
    unlocked while its holder lives; the kernel drops the lock when the process dies (even ``kill -9``).
    """
    staging = path.with_name(f"{path.name}.{os.getpid()}.new")
    handle = open(staging, "wb")  # noqa: SIM115 - the caller owns the handle (the lock's lifetime)
    fcntl.flock(handle, fcntl.LOCK_EX)
    os.replace(staging, path)
    return handle


def is_locked(path: Path) -> bool:
    """True if some process holds a ``flock`` on ``path`` (False for a missing file)."""
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def process_alive(pid: int) -> bool:
    """True if a process with this id exists (whoever owns it; a zombie counts as alive)."""
    if not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
