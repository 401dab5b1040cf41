"""Progress of long work (ingest, re-embedding, evaluation) on stderr.

On a terminal, a tqdm bar. Elsewhere (a pipe, a log file, CI, ``nohup``), a plain line every
``TWOSTAGE_PROGRESS_INTERVAL`` seconds (default 10): what is done of the total, the rate and
the time left, and one line when the work ends::

    index build: 2,048/5,183 docs (40%), 38.1 docs/s, ETA 1m22s
    index build: 5,183/5,183 docs done in 2m16s (38.0 docs/s)

Callers advance it as work completes (per encoded batch, per query), so it moves however
big the commits are.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Literal, TextIO

INTERVAL_ENV = "TWOSTAGE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0

Mode = Literal["bar", "log", "off"]


def progress_mode(progress: bool | None, stream: TextIO | None = None) -> Mode:
    """``False``: nothing; otherwise a bar on a terminal and log lines elsewhere."""
    if progress is False:
        return "off"
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty else "log"


def interval_s() -> float:
    """Seconds between log lines: ``$TWOSTAGE_PROGRESS_INTERVAL``, else 10."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        v = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return v if math.isfinite(v) and v >= 0 else DEFAULT_INTERVAL_S


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h04m``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Work done out of a total, shown as a bar, as periodic lines, or not at all.

    ``progress``: ``False`` shows nothing; ``None`` or ``True`` a bar on a terminal, log
    lines elsewhere (see :func:`progress_mode`). ``initial`` is work done before this run
    (a resumed build): it counts toward the total but not toward the rate.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        unit: str = "docs",
        initial: int = 0,
        progress: bool | None = None,
        stream: TextIO | None = None,
        interval: float | None = None,
        leave: bool = True,
    ) -> None:
        self.desc = desc
        self.total = total
        self.unit = unit
        self.n = initial
        self._initial = initial
        self._stream = stream if stream is not None else sys.stderr
        self.mode = progress_mode(progress, self._stream)
        self._interval = interval_s() if interval is None else interval
        self._t0 = time.monotonic()
        self._last = self._t0
        self._closed = False
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=f" {unit}",
                dynamic_ncols=True,
                smoothing=0.1,
                leave=leave,
                file=self._stream,
            )

    # ---- advancing ----
    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        if n <= 0:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._last = now
                self._emit(self.line())

    def advance_to(self, n: int) -> None:
        """Done up to ``n`` (never moves back)."""
        self.update(n - self.n)

    def write(self, msg: str) -> None:
        """A message above the bar (or a plain line)."""
        if self._bar is not None:
            self._bar.write(msg, file=self._stream)
        else:
            self._emit(msg)

    def close(self) -> None:
        """End the bar; in log mode, one closing line if any work was done."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self.n > self._initial:
            self._emit(self.done_line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the lines ----
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    @property
    def rate(self) -> float:
        """Units per second in this run."""
        dt = self.elapsed
        return (self.n - self._initial) / dt if dt > 0 else 0.0

    def line(self) -> str:
        """``desc: done/total unit (pct), rate unit/s, ETA``."""
        rate = self.rate
        if self.total:
            pct = 100.0 * self.n / self.total
            left = max(self.total - self.n, 0)
            eta = fmt_duration(left / rate) if rate > 0 else "?"
            return (
                f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
                f"{rate:,.1f} {self.unit}/s, ETA {eta}"
            )
        return f"{self.desc}: {self.n:,} {self.unit}, {rate:,.1f} {self.unit}/s"

    def done_line(self) -> str:
        of = f"/{self.total:,}" if self.total else ""
        return (
            f"{self.desc}: {self.n:,}{of} {self.unit} done in {fmt_duration(self.elapsed)} "
            f"({self.rate:,.1f} {self.unit}/s)"
        )

    def _emit(self, msg: str) -> None:
        try:
            print(msg, file=self._stream, flush=True)
        except (OSError, ValueError):  # a closed pipe: progress is never worth a failure
            pass


__all__ = ["INTERVAL_ENV", "Progress", "fmt_duration", "interval_s", "progress_mode"]
