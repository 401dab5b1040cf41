"""Giving freed heap back to the OS.

glibc keeps what a process frees in its own lists: a service that builds and drops big
buffers (tantivy's 64 MiB indexing arena at every BM25 commit, a retired model's weights)
grows in RSS without leaking anything. ``release_memory`` after such work keeps it flat
(RELIABILITY.md, the soak).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def release_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; µs); a no-op
    elsewhere. Measured: 900 small BM25 commits grew RSS by 100 MB without it, 9 MB with it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
