"""What a figure was measured on: one description of the machine for every report and bench."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python and onnxruntime versions, date and load average.

    ``load_average`` is ``None`` where the OS has none (printed as ``n/a``).
    """
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or "unknown CPU",
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


__all__ = ["machine_info"]
