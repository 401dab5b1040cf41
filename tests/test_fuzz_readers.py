"""The corpus readers on arbitrary bytes: records or the documented errors, nothing else.

A few seconds for CI (hypothesis, fixed seed, and a short atheris run of the long harness);
``benches/fuzz.py readers`` is the long, coverage-guided run. The inputs that found bugs are
kept below as regressions.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import fuzzing
import pytest
from hypothesis import HealthCheck, given, seed, settings
from twostage.sources import count_lines, read_corpus

ROOT = Path(__file__).resolve().parents[1]


@seed(0)
@settings(max_examples=400, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=fuzzing.reader_inputs())
def test_readers_on_arbitrary_bytes(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    fuzzing.read_one(tmp_path_factory.getbasetemp(), data)


@pytest.mark.parametrize("data", fuzzing.SEEDS)
@pytest.mark.parametrize(("fmt", "name"), fuzzing.READER_TARGETS)
def test_readers_on_the_seeds(data: bytes, fmt: str, name: str, tmp_path: Path) -> None:
    fuzzing.read_bytes(data, fmt, name, tmp_path)
    fuzzing.read_bytes(fuzzing.gzip_bytes(data), fmt, name, tmp_path)


# ---- what the fuzzing found ------------------------------------------------------------------


def records(tmp_path: Path, data: bytes, name: str = "c.jsonl") -> list[tuple[int, str | None]]:
    path = tmp_path / name
    path.write_bytes(data)
    return [(r.line, r.error) for r in read_corpus(path)]


def test_deeply_nested_json_is_an_error_record(tmp_path: Path) -> None:
    # json.loads raised RecursionError out of the reader.
    deep = b'{"_id": "1", "text": "t", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    got = records(tmp_path, deep + b"[" * 100_000 + b"\n" + b'{"_id": "2", "text": "ok"}\n')
    assert got == [
        (1, "invalid JSON: arrays or objects nested too deeply"),
        (2, "invalid JSON: arrays or objects nested too deeply"),
        (3, None),
    ]
    # The same with bytes that are not UTF-8 (the path that names the bad field).
    assert records(tmp_path, b"[" * 100_000 + b"\xff\n")[0][1].startswith("line is not valid")


def test_integer_over_the_digit_limit_is_an_error_record(tmp_path: Path) -> None:
    # json.loads raised ValueError (int max str digits) out of the reader.
    got = records(tmp_path, b'{"_id": ' + b"9" * 5000 + b', "text": "t"}\n')
    assert got[0][1] is not None and "4300 digits" in got[0][1]


def test_metadata_with_a_lone_surrogate_is_an_error_record(tmp_path: Path) -> None:
    # Accepted before, then unservable: such a string cannot be written as UTF-8 JSON.
    got = records(
        tmp_path,
        b'{"_id": "1", "text": "t", "m": {"\\udc80": 1}}\n'
        b'{"_id": "2", "text": "t", "metadata": {"a": ["\\ud800"]}}\n'
        b'{"_id": "3", "text": "t", "metadata": {"a": ["\\ud83d\\ude00"]}}\n',
    )
    assert got == [
        (1, "metadata field 'm' contains an unpaired surrogate"),
        (2, "metadata field 'a' contains an unpaired surrogate"),
        (3, None),  # a surrogate pair is one valid character
    ]


def test_count_lines_on_a_damaged_gzip_raises_oserror(tmp_path: Path) -> None:
    # count_lines raised EOFError; read_corpus already turned it into OSError.
    path = tmp_path / "c.jsonl"
    path.write_bytes(fuzzing.gzip_bytes(b'{"_id": "1", "text": "t"}\n' * 100)[:-12])
    with pytest.raises(OSError, match="compressed stream is damaged"):
        count_lines(path)
    path.write_bytes(b"\x1f\x8b")
    with pytest.raises(OSError, match="compressed stream is damaged"):
        count_lines(path)
    # An ingest with a progress bar counts lines first: a damaged archive must not fail it
    # there (before the good records), but where read_corpus finds the damage.
    from twostage.ingest import _progress

    bar = _progress(path, 0, True)
    bar.close()


# ---- the long harness, briefly ---------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="needs atheris")
def test_atheris_harness_runs(tmp_path: Path) -> None:
    cmd = [
        sys.executable, str(ROOT / "benches" / "fuzz.py"), "readers", "--runs", "1500",
        "--seconds", "60", "--artifacts", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    runs = re.search(r"stat::number_of_executed_units: (\d+)", out)
    assert runs and int(runs.group(1)) >= 1500, out[-3000:]
