"""Progress that moves: per encoded batch, and as plain periodic lines when stderr is a pipe.

The subprocess tests run the real CLI on real text (the Python docs' passages, ADI) with
stderr a pipe and ``TWOSTAGE_PROGRESS_INTERVAL=0``, so every step prints its line and the
lines can be checked without waiting ten seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED
from twostage.progress import INTERVAL_ENV, Progress, fmt_duration, progress_mode
from twostage.stdlib_docs import stdlib_docs

ADI = SHARED / "data" / "adi"
LINE = re.compile(
    r"^(?P<desc>.+?): (?P<n>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
    r"(?P<rate>[\d,.]+) (?P=unit)/s, ETA (?P<eta>\S+)$"
)


def _n(s: str) -> int:
    return int(s.replace(",", ""))


# ---- the object -------------------------------------------------------------------------------


def test_log_lines_carry_done_total_rate_and_eta() -> None:
    out = io.StringIO()  # not a terminal
    assert progress_mode(None, out) == "log" and progress_mode(False, out) == "off"
    with Progress("work", 10, unit="docs", stream=out, interval=0) as p:
        for _ in range(4):
            p.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one per step, and the closing line
    m = LINE.match(lines[1])
    assert m, lines[1]
    assert (m["desc"], _n(m["n"]), _n(m["total"]), m["pct"]) == ("work", 2, 10, "20")
    assert lines[-1].startswith("work: 4/10 docs done in ")


def test_interval_spaces_the_lines_and_quiet_is_quiet() -> None:
    out = io.StringIO()
    with Progress("work", 1000, stream=out, interval=3600) as p:
        for _ in range(1000):
            p.update(1)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # the done line
    quiet = io.StringIO()
    with Progress("work", 5, stream=quiet, progress=False) as p:
        p.update(5)
    assert quiet.getvalue() == ""


def test_resumed_work_counts_toward_the_total_not_the_rate() -> None:
    out = io.StringIO()
    p = Progress("build", 100, initial=60, stream=out, interval=0)
    p.advance_to(80)
    p.advance_to(70)  # never back
    assert p.n == 80 and "80/100" in out.getvalue()
    assert fmt_duration(5) == "5s" and fmt_duration(185) == "3m05s"
    assert fmt_duration(7500) == "2h05m"


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from twostage.progress import interval_s

    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert interval_s() == 2.5
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    assert interval_s() == 10.0


# ---- the real CLI, stderr a pipe -----------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, INTERVAL_ENV: "0", "PYTHONUNBUFFERED": "1"}


def test_index_build_reports_each_batch_through_a_pipe(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    docs = list(stdlib_docs(150))
    corpus.write_text(
        "".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs)
    )
    cmd = [sys.executable, "-m", "twostage", "index", "build", "--corpus", str(corpus)]
    cmd += ["--out", str(tmp_path / "col"), "--batch-size", "16"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    matches = map(LINE.match, done.stderr.splitlines())
    lines = [m for m in matches if m and m["desc"] == "index build"]
    # One chunk (1,024 lines) holds the whole corpus: before this change nothing moved until
    # it was committed. Now each batch of 16 moves the count.
    counts = [_n(m["n"]) for m in lines]
    assert len(counts) >= 150 // 16, done.stderr
    assert counts == sorted(counts) and counts[0] <= 16 and counts[-1] == 150
    assert all(_n(m["total"]) == 150 and m["unit"] == "docs" for m in lines)
    assert any(m["eta"] != "0s" for m in lines[:-1])
    assert "index build: 150/150 docs done in" in done.stderr
    assert "\r" not in done.stderr  # no bar redrawing into a log file
    assert "150 documents from 150 lines" in done.stdout


@pytest.mark.skipif(not (ADI / "corpus.jsonl").is_file(), reason=f"ADI not found at {ADI}")
def test_eval_reports_each_query_through_a_pipe(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "twostage", "eval", "--data", str(ADI), "--reranker", "none"]
    cmd += ["--first-stage", "bm25,dense", "--collections", str(tmp_path / "cache")]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    err = done.stderr.splitlines()
    assert any(line.startswith("index build: ") for line in err)  # the cache's build
    assert any(f"evaluation's cache: {tmp_path / 'cache'}" in line for line in err)
    for stage in ("bm25", "dense"):
        got = [m for m in map(LINE.match, err) if m and m["desc"] == f"adi: {stage}"]
        assert [_n(m["n"]) for m in got] == list(range(1, 36)), stage
        assert all(m["unit"] == "queries" and _n(m["total"]) == 35 for m in got)
        assert any(line.startswith(f"adi: {stage}: 35/35 queries done in") for line in err)
    assert "None" not in done.stdout + done.stderr
