"""One gateway daemon per store: an exclusive ``flock`` next to the database, held for the daemon's life.

Two daemons on one store would both drain the outbox and both quarantine a database they cannot read;
``gateway import`` into a store the daemon has open would swap the file under its connection. Both take
this lock first and refuse, saying who holds it, when they cannot.

``flock`` belongs to the open file: the kernel drops it when the process exits, however it exits (SIGKILL,
power cut, OOM), so there is never a stale lock to clean up. The pid written into the file is only for the
message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import StoreError
from gateway.store.startup import check_directory

LOCK_NAME = "gateway.lock"


class StoreInUse(StoreError):
    """Another process holds the store's instance lock (a running daemon, or an import in progress)."""


def lock_path(db_path: Path) -> Path:
    """The lock file of the store whose database is ``db_path``."""
    return db_path.with_name(LOCK_NAME)


@contextlib.contextmanager
def exclusive_store(db_path: Path, purpose: str) -> Iterator[Path]:
    """Hold the store's instance lock for the block, or raise :class:`StoreInUse` at once (never waits).

    ``purpose`` ("the gateway daemon", "gateway import") is written into the lock file for the next
    process's error message.
    """
    path = lock_path(db_path)
    check_directory(path.parent)  # a directory we may not use is StoreCannotOpen (owner, mode), not a traceback
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        writable = True
    except PermissionError:  # left by root (``sudo gateway import``): flock needs no write access
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        writable = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise StoreInUse(
                f"the store at {db_path} is in use by {holder}; stop it first "
                "(on the Pi: sudo systemctl stop clinic-gateway)"
            ) from None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{purpose} (pid {os.getpid()})\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
