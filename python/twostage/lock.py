"""One writer per collection: an OS file lock held for the life of a writable open.

Two processes writing one folder (two ``twostage index add``, or a CLI beside a server) each
keep their own HNSW index in memory: the documents the other wrote reach the store and BM25
but never this index, and the snapshot each writes would claim them. So a writable open takes
an exclusive ``flock`` on ``DIR/writer.lock`` and writes who holds it (pid, host, command,
since) into the file; a second writer is refused with :class:`~twostage.errors.CollectionLocked`
naming the holder. The kernel drops the lock when the process dies (a SIGKILL leaves no stale
lock behind). Read-only opens take no lock.

>>> lock = WriterLock.acquire(Path("docs"))  # doctest: +SKIP
>>> lock.release()  # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from twostage.errors import CollectionLocked

LOCK_FILE = "writer.lock"


class WriterLock:
    """The exclusive writer lock of one collection folder; :meth:`release` (or process exit)
    drops it."""

    def __init__(self, path: Path, fd: int) -> None:
        """Internal: use :meth:`acquire`."""
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, folder: Path) -> WriterLock:
        """Lock ``folder`` for writing, or raise :class:`CollectionLocked` naming the holder."""
        path = folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(read_holder(path))
            os.close(fd)
            raise CollectionLocked(
                f"{folder} is open for writing by {holder}. One writer per collection: stop "
                "it, send the writes through it (a server takes POST /documents), or open "
                "read-only (twostage search and index info do)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command()[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays: deleting it would race a new holder."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None


def read_holder(path: Path) -> dict[str, Any] | None:
    """Who wrote the lock file last (the holder while it is locked), if readable."""
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _command() -> str:
    """The command line, as a user typed it (``python -m twostage`` reads as ``twostage``)."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    prog = Path(sys.argv[0])
    name = prog.parent.name if prog.name == "__main__.py" else prog.name
    return " ".join([name or "python", *sys.argv[1:]])


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    return (
        f"pid {info.get('pid')} on {info.get('host')} ({info.get('command') or '?'}) "
        f"since {info.get('since')}"
    )


__all__ = ["LOCK_FILE", "WriterLock", "read_holder"]
