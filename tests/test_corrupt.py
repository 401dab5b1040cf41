"""The corruption bench's short version: one damaged copy per kind of damage (15 kinds:
store, index, manifest, BM25), each detected by name or harmless, never silent, never a raw
exception. ``benches/corrupt.py --n 20`` is the long run (RELIABILITY.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_kind_of_damage_is_detected_or_harmless(tmp_path: Path) -> None:
    report = tmp_path / "corrupt.json"
    args = ["--n", "1", "--docs", "80", "--seed", "5", "--json", str(report)]
    out = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "corrupt.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    data = json.loads(report.read_text())
    assert data["totals"]["silent"] == 0 and data["totals"]["crash"] == 0
    assert len(data["trials"]) == 15
    # Most damage must be *reported*, not merely survived by luck.
    assert data["totals"]["detected"] >= 12
