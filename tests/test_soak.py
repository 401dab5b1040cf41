"""The soak's short version: a few seconds of mixed search / upsert / delete traffic against
the real server, with no error answer and a collection that passes its check afterwards.

The 30-minute run (``benches/soak.py --minutes 30``, RELIABILITY.md) is what shows RSS and
p99 holding still; this keeps the harness working and catches errors under mixed load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_has_no_errors(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    args = ["--minutes", "0.3", "--interval", "9", "--small", "--json", str(report)]
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benches" / "soak.py"),
            *args,
            "--svg",
            str(tmp_path / "s.svg"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["errors"] == 0 and data["check"] == []
    assert sum(r["searches"] for r in data["rows"]) > 0
    writes = sum(n for r in data["rows"] for k, n in r["counts"].items() if k == "upsert 200")
    assert writes > 0
    assert (tmp_path / "s.svg").read_text().startswith("<svg")
