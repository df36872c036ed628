"""A lock file beside what it protects, removed when the last holder is done.

`filelock` leaves its files behind on purpose: removing a lock file while another process
waits on it lets a third process lock a new file of the same name, and two processes then
hold "the" lock. This lock removes its file safely instead: the holder unlinks the file
while it still holds it, and a process that wakes up holding a file that is no longer the
one at that path lets go and tries again. Nothing is left in the temp folder or beside the
protected file once every holder is done (POSIX; elsewhere `filelock` keeps its file).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for the `with` block; the file
    is gone afterwards unless another process is already waiting to create it again."""
    path = os.fspath(path)
    if fcntl is None:
        from filelock import FileLock

        with FileLock(path):
            yield
        return
    fd = _acquire(path)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still held: a waiter on this file sees it gone and retries
        os.close(fd)  # closing releases the lock


def _acquire(path: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                return fd  # the file at `path` is the one we hold
        except FileNotFoundError:  # removed by the holder we waited for
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
