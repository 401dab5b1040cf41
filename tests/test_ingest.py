"""The ingest pipeline: streaming, malformed lines, duplicates, and resume after a real kill.

The corpus is real text (the Python documentation's passages) written as BEIR JSONL.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from twostage.collection import Collection
from twostage.encoder import Encoder
from twostage.errors import IngestError
from twostage.ingest import build
from twostage.stdlib_docs import stdlib_docs


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


def write_corpus(path: Path, n: int, *, bad: dict[int, str] | None = None) -> Path:
    """n passages as BEIR JSONL; ``bad`` replaces given 1-based lines with raw text."""
    lines = [
        json.dumps({"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata})
        for d in stdlib_docs(n)
    ]
    for line_no, raw in (bad or {}).items():
        lines.insert(line_no - 1, raw)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def snapshot(path: Path) -> tuple[str, dict[str, np.ndarray], int]:
    """What makes two collections equal: documents + vectors (store), and the index's vectors."""
    with Collection.open(path) as col:
        keys = col.store.keys_of(list(col.store.ids()))
        vectors = {i: col.index.get(np.array([k], dtype=np.uint64))[0] for i, k in keys.items()}
        return col.store.digest(), vectors, len(col.index)


def same(
    a: tuple[str, dict[str, np.ndarray], int], b: tuple[str, dict[str, np.ndarray], int]
) -> None:
    assert a[0] == b[0], "store contents differ"
    assert a[2] == b[2]
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        np.testing.assert_array_equal(a[1][i], b[1][i], err_msg=i)


def test_malformed_lines_are_reported_and_duplicates_counted(
    tmp_path: Path, encoder: Encoder
) -> None:
    corpus = write_corpus(
        tmp_path / "c.jsonl.gz",
        150,
        bad={
            5: "{broken json",
            40: json.dumps({"_id": "no-text"}),
            41: json.dumps({"_id": "topic:assert", "text": "a replacement of the first passage"}),
        },
    )
    report = build(corpus, tmp_path / "out", encoder=encoder, chunk_size=64, progress=False)
    assert report.errors == 2
    assert [line for line, _ in report.error_lines] == [5, 40]
    assert "invalid JSON" in report.error_lines[0][1]
    assert "text" in report.error_lines[1][1]
    assert report.updated == 1  # the duplicate id is an upsert
    assert report.documents == 150
    assert report.lines == 153
    with Collection.open(tmp_path / "out", encoder) as col:
        assert len(col) == len(col.index) == 150
        assert col.get(["topic:assert"])[0].text == "a replacement of the first passage"
    text = str(report)
    assert "line 5: invalid JSON" in text and "malformed lines skipped: 2" in text


def test_on_error_fail_stops_at_the_line_and_keeps_what_was_committed(
    tmp_path: Path, encoder: Encoder
) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 100, bad={70: "[1, 2]"})
    with pytest.raises(IngestError, match=r"c\.jsonl:70: .*object"):
        build(corpus, tmp_path / "out", encoder=encoder, chunk_size=32, on_error="fail")
    with Collection.open(tmp_path / "out", encoder) as col:
        assert len(col) == 64  # two whole chunks were committed before line 70's chunk


def test_interrupted_build_resumes_to_the_same_collection(tmp_path: Path, encoder: Encoder) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 300, bad={100: "oops"})
    whole = build(corpus, tmp_path / "whole", encoder=encoder, chunk_size=64)

    def stop_after_two(line: int) -> None:
        if line >= 128:
            raise KeyboardInterrupt  # what Ctrl-C raises

    with pytest.raises(KeyboardInterrupt):
        build(corpus, tmp_path / "part", encoder=encoder, chunk_size=64, on_chunk=stop_after_two)
    resumed = build(corpus, tmp_path / "part", encoder=encoder, chunk_size=64)
    assert resumed.resumed_from == 128
    assert resumed.embedded == 300 - 127  # lines 129..301 minus the malformed one
    assert (resumed.documents, resumed.errors, resumed.updated) == (
        whole.documents,
        whole.errors,
        whole.updated,
    )
    same(snapshot(tmp_path / "whole"), snapshot(tmp_path / "part"))
    # Run once more: nothing to do.
    assert build(corpus, tmp_path / "part", encoder=encoder, chunk_size=64).already_complete


def test_resume_refuses_a_changed_corpus(tmp_path: Path, encoder: Encoder) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 80)
    with pytest.raises(KeyboardInterrupt):
        build(corpus, tmp_path / "out", encoder=encoder, chunk_size=32, on_chunk=_interrupt)
    write_corpus(corpus, 90)
    with pytest.raises(IngestError, match="was being built from"):
        build(corpus, tmp_path / "out", encoder=encoder, chunk_size=32)


def _interrupt(line: int) -> None:
    raise KeyboardInterrupt


def _ingest_line(store: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute("SELECT value FROM meta WHERE name='ingest.line'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_kill_a_real_process_and_resume(tmp_path: Path, encoder: Encoder) -> None:
    """SIGKILL the CLI mid-build (no cleanup runs), run it again, compare with a clean build."""
    corpus = write_corpus(tmp_path / "c.jsonl.gz", 450)
    cmd = [sys.executable, "-m", "twostage", "index", "build", "--corpus", str(corpus)]
    opts = ["--chunk-size", "64", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(
        [*cmd, "--out", str(tmp_path / "whole"), *opts], check=True, env=env, timeout=300
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out), *opts], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _ingest_line(out / "store.sqlite") < 128:  # two chunks committed
        assert proc.poll() is None, "the build finished before it could be killed"
        assert time.monotonic() < deadline, "the build made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _ingest_line(out / "store.sqlite")
    assert 128 <= killed_at < 450

    done = subprocess.run(
        [*cmd, "--out", str(out), *opts], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"resumed after line {killed_at}" in done.stdout
    same(snapshot(tmp_path / "whole"), snapshot(out))


def test_reembed_builds_a_new_generation_and_leaves_the_source(
    tmp_path: Path, encoder: Encoder
) -> None:
    """A new encoder (here the same model unquantised: another fingerprint, other vectors)."""
    from twostage.errors import InvalidArgument
    from twostage.ingest import reembed

    src = tmp_path / "v1"
    build(write_corpus(tmp_path / "c.jsonl", 120), src, encoder=encoder, progress=False)
    before = snapshot(src)
    fp32 = Encoder.load("minilm-l6", precision="fp32")
    # Interrupted after one chunk: the rerun adds only what is missing.
    with pytest.raises(KeyboardInterrupt), pytest.MonkeyPatch.context() as mp:
        real_add = Collection.add_embedded  # what each chunk's embedded batch goes through
        calls = []

        def add_then_stop(self, docs, *a, **kw):  # type: ignore[no-untyped-def]
            calls.append(len(docs))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_add(self, docs, *a, **kw)

        mp.setattr(Collection, "add_embedded", add_then_stop)
        reembed(src, tmp_path / "v2", fp32, chunk_size=50, progress=False)
    report = reembed(src, tmp_path / "v2", fp32, chunk_size=50, progress=False)
    assert (report.documents, report.resumed, report.embedded) == (120, 50, 70)
    same(snapshot(src), before)  # the source is only read
    with Collection.open(src) as old, Collection.open(tmp_path / "v2", fp32) as new:
        assert new.manifest["encoder"]["precision"] == "fp32"
        ids = sorted(old.store.ids())
        assert sorted(new.store.ids()) == ids
        for a, b in zip(old.get(ids), new.get(ids), strict=True):
            assert (a.id, a.title, a.text, a.metadata) == (b.id, b.title, b.text, b.metadata)
        keys = new.store.keys_of(ids[:5])
        got = new.index.get(np.array([keys[i] for i in ids[:5]], dtype=np.uint64))
        want = fp32.encode([d.content for d in new.get(ids[:5])])
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, atol=2e-3)  # f16 index
        q = "how do I compress data with gzip"
        assert new.index.search(new.embed_query(q), 5).keys.size == 5
        assert new.lexical is not None and len(new.lexical) == 120
    with pytest.raises(InvalidArgument, match="already embedded by"):
        reembed(src, tmp_path / "v3", encoder, progress=False)
    with pytest.raises(InvalidArgument, match="another folder"):
        reembed(src, src, fp32, progress=False)
