"""The crash loop's short version: one seeded SIGKILL per kind, then every acknowledged write.

The long run (``benches/crashloop.py --n 20``, RELIABILITY.md) kills many more times; this keeps
the harness itself honest and catches a regression in seconds: a lost acknowledged write, a
half-applied batch, a build that cannot resume to the same digest, a server that does not
come back after a kill during a model swap.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_one_kill_of_each_kind_loses_nothing_acknowledged(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    # Ingest's kill-and-resume has its own tests (test_ingest.py, test_reliability.py).
    args = ["--n", "1", "--seed", "7", "--kinds", "writer,http,swap"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "crashloop.py"), *args, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    data = json.loads(report.read_text())
    kinds = [t["kind"] for t in data["trials"]]
    assert kinds == ["writer", "http", "swap"]
    assert data["failed"] == 0
    # The kills landed while work was being acknowledged, not before or after it.
    acks = {t["kind"]: t["acked"] for t in data["trials"]}
    assert acks["writer"] > 0 and acks["http"] > 0
