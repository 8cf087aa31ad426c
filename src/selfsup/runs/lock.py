"""One writer per run folder: an advisory lock file (``RUN_DIR/.lock``) held while a process writes.

``flock`` on ``RUN_DIR/.lock`` is held by the process that trains into the folder (rank 0 under
torchrun), by ``selfsup eval`` while it writes ``eval/``, and by ``--overwrite`` while it empties it.
A second process is refused with one line naming the holder (pid, command, start time, written into
the file). The kernel releases the lock when its process dies, so a lock file left by a killed
process (its process gone) is simply taken over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from selfsup.config import ConfigError

LOCK_FILE = ".lock"


class RunFolderLocked(ConfigError):
    """Another live process holds the run folder's lock (one-line message naming it)."""


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path, what: str) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` for the block (``what`` says who, for the refusal message of others)."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderLocked(f"{run_dir}: in use by {holder}; wait for it to finish, or use another "
                                  "--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} ({what}, since "
                      f"{_dt.datetime.now():%Y-%m-%d %H:%M:%S})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (a later holder truncates it)
