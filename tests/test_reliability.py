"""Reliability of a collection folder: one writer, a store that cannot go back in time
unnoticed, poison input, interrupted creation, damaged files.

Each test reproduces a failure found on an earlier main (RELIABILITY.md lists them) with the
real encoder, real SQLite and, where a process must die, a real child process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from twostage.collection import Collection
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.engine import Engine
from twostage.errors import CollectionLocked, CorruptIndex, CorruptStore, InvalidArgument
from twostage.store import DocStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


def notes(prefix: str, n: int) -> list[Document]:
    topics = ["gzip files", "tcp sockets", "json parsing", "sqlite journals", "thread pools"]
    return [
        Document(f"{prefix}{i}", f"Note {prefix}{i}: how to work with {topics[i % 5]} ({i}).")
        for i in range(n)
    ]


@pytest.fixture()
def folder(tmp_path: Path, encoder: Encoder) -> Path:
    path = tmp_path / "col"
    with Collection.create(path, encoder) as col:
        col.add(notes("a", 20))
    return path


def child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a fresh process (it may die without closing anything)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twostage", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# ---- one writer per collection ----------------------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(folder: Path, encoder: Encoder) -> None:
    col = Collection.open(folder, encoder)
    with pytest.raises(CollectionLocked, match=rf"open for writing by pid {os.getpid()}"):
        Collection.open(folder, encoder)
    col.close()
    Collection.open(folder, encoder).close()  # closing dropped the lock


def test_cli_add_beside_a_writer_is_refused_and_writes_nothing(
    folder: Path, encoder: Encoder, tmp_path: Path
) -> None:
    corpus = tmp_path / "more.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in notes("b", 5))
    )
    col = Collection.open(folder, encoder)
    try:
        out = cli("index", "add", str(folder), str(corpus))
        assert out.returncode == 1, out.stderr
        assert f"open for writing by pid {os.getpid()}" in out.stderr
        assert "Traceback" not in out.stderr
        assert len(col) == 20 and "b0" not in col
    finally:
        col.close()
    assert cli("index", "add", str(folder), str(corpus)).returncode == 0
    with Collection.open(folder, encoder, read_only=True) as again:
        assert len(again) == 25 and len(again.index) == 25


def test_a_killed_writer_leaves_no_lock(folder: Path, encoder: Encoder) -> None:
    code = (
        "import os, sys, time\n"
        "from twostage.collection import Collection\n"
        "c = Collection.open(sys.argv[1])\n"
        "print('open', flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "open"
        with pytest.raises(CollectionLocked, match=f"pid {p.pid}"):
            Collection.open(folder, encoder)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
    Collection.open(folder, encoder).close()


def test_read_only_open_sees_what_the_writer_commits(folder: Path, encoder: Encoder) -> None:
    writer = Collection.open(folder, encoder)
    reader = Collection.open(folder, encoder, read_only=True)
    try:
        assert reader.read_only and not writer.read_only
        writer.add([Document("fresh", "Zebras migrate across the Serengeti every year.")])
        writer.delete(["a0"])
        assert "fresh" not in reader.index.search(reader.embed_query("zebra migration"), 1).keys
        assert reader.refresh() == 2
        assert len(reader.index) == len(writer) == 20
        hit = reader.fetch(reader.index.search(reader.embed_query("zebra migration"), 1).keys)
        assert hit[0] is not None and hit[0].id == "fresh"
        keys, _ = reader.lexical_search("zebras serengeti", 5)
        assert [d.id for d in reader.fetch(keys) if d] == ["fresh"]
        with pytest.raises(InvalidArgument, match="read-only"):
            reader.add([Document("nope", "A write through a reader.")])
    finally:
        reader.close()
        writer.close()
    assert not (folder / "index.tsidx").stat().st_size == 0


def test_engine_on_a_read_only_collection_follows_the_writer(
    folder: Path, encoder: Encoder
) -> None:
    writer = Collection.open(folder, encoder)
    reader = Collection.open(folder, encoder, read_only=True)
    try:
        engine = Engine(reader, reranker=None)
        writer.add([Document("fresh", "Zebras migrate across the Serengeti every year.")])
        time.sleep(Engine.REFRESH_S + 0.05)
        hits = engine.search("zebra migration", k=1).hits
        assert hits[0].id == "fresh"
    finally:
        reader.close()
        writer.close()


def test_snapshot_is_labelled_with_what_its_index_applied(folder: Path, encoder: Encoder) -> None:
    col = Collection.open(folder, encoder)
    applied = col.store.seq
    # A write that bypasses the collection (what a second writer did before the lock): the
    # store has it, this index does not, so the snapshot must not claim it.
    other = DocStore.open(folder / "store.sqlite")
    vec = encoder.encode(["Penguins huddle through the Antarctic winter."])
    other.upsert([Document("bypass", "Penguins huddle through the Antarctic winter.")], vec)
    other.close()
    col.flush()
    assert col.manifest["index"]["seq"] == applied < col.store.seq
    col.close()
    again = Collection.open(folder, encoder)
    try:
        assert again.recovery is not None and "replayed 1 upserts" in again.recovery
        hit = again.fetch(again.index.search(again.embed_query("penguins in winter"), 1).keys)
        assert hit[0] is not None and hit[0].id == "bypass"
    finally:
        again.close()


# ---- a store that goes back in time --------------------------------------------------------


_ADD_FLUSH_DIE = """
import os, sys
from twostage.collection import Collection
from twostage.document import Document
col = Collection.open(sys.argv[1])
col.add([Document(f"lost{i}", f"Lost note {i}: Iceland's volcanoes.") for i in range(10)])
col.flush()
os._exit(0)  # no close: the WAL is not checkpointed
"""


def test_store_behind_its_snapshot_is_detected_and_keys_never_reissued(
    folder: Path, encoder: Encoder
) -> None:
    out = child(_ADD_FLUSH_DIE, str(folder))
    assert out.returncode == 0, out.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    top_key = manifest["store"]["max_key"]
    assert top_key >= 30
    (folder / "store.sqlite-wal").unlink()  # the WAL is lost after the flush
    (folder / "store.sqlite-shm").unlink(missing_ok=True)
    col = Collection.open(folder, encoder)
    try:
        assert col.recovery is not None and "behind its index snapshot" in col.recovery
        assert len(col) == 20 and len(col.index) == 20 and "lost0" not in col
        assert col.lexical is not None and len(col.lexical) == 20
        res = col.add([Document(f"new{i}", f"New note {i} about baking bread.") for i in range(10)])
        keys = col.store.keys_of([f"new{i}" for i in range(10)])
        assert min(keys.values()) > top_key, "a lost document's key was reissued"
        assert res.inserted == 10
        # A query for a lost document must not find a new one in its place.
        hits = col.fetch(col.index.search(col.embed_query("volcanoes of Iceland"), 3).keys)
        assert not any(h is not None and h.id.startswith("new") for h in hits[:1])
        assert col.check() == []
    finally:
        col.close()


def test_replaced_store_is_detected(folder: Path, encoder: Encoder, tmp_path: Path) -> None:
    other = tmp_path / "other"
    with Collection.create(other, encoder) as o:
        o.add(notes("z", 25))
    for name in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
        (folder / name).unlink(missing_ok=True)
    shutil.copy(other / "store.sqlite", folder / "store.sqlite")
    with Collection.open(folder, encoder) as col:
        assert col.recovery is not None and "not the store the index snapshot" in col.recovery
        assert len(col.index) == 25 and "z0" in col


_WAL_DELETED_LIVE = """
import os, sys
from pathlib import Path
from twostage.collection import Collection
from twostage.document import Document
folder = Path(sys.argv[1])
col = Collection.open(folder)
col.add([Document(f"x{i}", f"Before: note {i} on tidal power.") for i in range(5)])
(folder / "store.sqlite-wal").unlink()  # an operator's mistake under a live process
col.add([Document(f"y{i}", f"After: note {i} on wind farms.") for i in range(5)])
col.add([Document(f"z{i}", f"Later: note {i} on solar cells.") for i in range(5)])
print("acknowledged", flush=True)
os._exit(0)
"""


def test_writes_after_the_wal_is_deleted_under_a_live_process_survive(
    folder: Path, encoder: Encoder
) -> None:
    out = child(_WAL_DELETED_LIVE, str(folder))
    assert out.returncode == 0 and "acknowledged" in out.stdout, out.stderr
    with Collection.open(folder, encoder) as col:
        for doc_id in ("x0", "x4", "y0", "y4", "z0", "z4"):
            assert doc_id in col, f"acknowledged write {doc_id} was lost"
        assert len(col) == 35 and len(col.index) == 35


# ---- poison input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": "bad\ud800", "text": "t"}, "document id"),
        ({"id": "d", "text": "bad \udcff"}, "text"),
        ({"id": "d", "text": "t", "title": "\ud800"}, "title"),
        ({"id": "d", "text": "t", "metadata": {"k\ud800": 1}}, "metadata key"),
        ({"id": "d", "text": "t", "metadata": {"k": ["ok", {"z": "\udfff"}]}}, "metadata['k']"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match="lone surrogate") as err:
        Document(**kwargs)
    assert field in str(err.value)


def test_query_with_a_lone_surrogate_is_refused(folder: Path, encoder: Encoder) -> None:
    with Collection.open(folder, encoder, read_only=True) as col:
        engine = Engine(col, reranker=None)
        with pytest.raises(InvalidArgument, match="query holds a lone surrogate"):
            engine.search("gzip \ud800")
        with pytest.raises(InvalidArgument, match="filter"):
            engine.search("gzip", filter={"lang\udcff": "en"})


def test_cli_query_that_is_not_utf8_gets_a_message_not_a_traceback(folder: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "twostage", "search", str(folder).encode(), b"caf\xff"],
        capture_output=True,
        timeout=300,
        cwd=ROOT,
    )
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 1
    assert "Traceback" not in err and "not UTF-8" in err


# ---- an interrupted creation -------------------------------------------------------------------


def test_creation_killed_after_the_store_appeared_resumes(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in notes("c", 30))
    )
    out_dir = tmp_path / "built"
    # What a build killed right after SQLite made the file leaves: a store, no manifest.
    out_dir.mkdir()
    DocStore.create(out_dir / "store.sqlite", dim=384)
    info = cli("index", "info", str(out_dir))
    assert info.returncode == 1 and "interrupted" in info.stderr and "index build" in info.stderr
    # And a real kill as soon as the store appears, then the same command again.
    shutil.rmtree(out_dir)
    build = ["index", "build", "--corpus", str(corpus), "--out", str(out_dir)]
    p = subprocess.Popen(
        [sys.executable, "-m", "twostage", *build],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out_dir / "store.sqlite").exists() and p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.wait()
    again = cli(*build)
    assert again.returncode == 0, again.stderr
    with Collection.open(out_dir, read_only=True) as col:
        assert len(col) == 30 and col.check() == []


# ---- damaged files ----------------------------------------------------------------------------


def test_damaged_store_is_refused_on_open_naming_the_file(folder: Path, encoder: Encoder) -> None:
    store = folder / "store.sqlite"
    data = bytearray(store.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    rng = np.random.default_rng(0)
    data[page * 2 : page * 4] = rng.integers(0, 256, page * 2, dtype=np.uint8).tobytes()
    store.write_bytes(bytes(data))
    with pytest.raises(CorruptStore, match=r"store\.sqlite is damaged"):
        Collection.open(folder, encoder)
    out = cli("index", "check", str(folder))
    assert out.returncode == 1 and "store.sqlite is damaged" in out.stderr
    assert "Traceback" not in out.stderr


def test_truncated_store_is_refused(folder: Path, encoder: Encoder) -> None:
    store = folder / "store.sqlite"
    store.write_bytes(store.read_bytes()[:5000])
    with pytest.raises(CorruptStore, match=r"truncated|damaged"):
        Collection.open(folder, encoder)


def test_damage_found_while_reading_is_a_corrupt_store_error(folder: Path) -> None:
    """A store too big for the check on open, damaged under a live process: reads say so by
    name, never with a raw sqlite3 error."""
    store = folder / "store.sqlite"
    s = DocStore.open(store, check=False)
    data = bytearray(store.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for p in range(2, len(data) // page):  # every page but the schema's
        data[p * page : p * page + 8] = b"\xff" * 8
    store.write_bytes(bytes(data))
    with pytest.raises(CorruptStore, match=r"store\.sqlite is damaged"):
        list(s.ids())
    s.close()


def test_index_file_replaced_by_a_directory(folder: Path, encoder: Encoder) -> None:
    (folder / "index.tsidx").unlink()
    (folder / "index.tsidx").mkdir()
    with pytest.raises(CorruptIndex, match=r"index\.tsidx is a directory"):
        Collection.open(folder, encoder)
    out = cli("index", "info", str(folder))
    assert out.returncode == 1 and "is a directory" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("field", "value"), [("seq", "abc"), ("documents", -1), ("index", {"file": "index.tsidx"})]
)
def test_bad_manifest_values_name_the_field(
    folder: Path, encoder: Encoder, field: str, value: object
) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m[field] = value
    path.write_text(json.dumps(m))
    with pytest.raises(CorruptStore, match=field):
        Collection.open(folder, encoder)


def test_bad_store_sequence_is_a_corrupt_store(folder: Path, encoder: Encoder) -> None:
    import sqlite3

    conn = sqlite3.connect(folder / "store.sqlite")
    with conn:
        conn.execute("UPDATE meta SET value='x' WHERE name='seq'")
    conn.close()
    with pytest.raises(CorruptStore, match=r"store\.sqlite: unreadable store settings"):
        Collection.open(folder, encoder)


def test_index_check_passes_a_sound_collection_beside_a_writer(
    folder: Path, encoder: Encoder
) -> None:
    with Collection.open(folder, encoder) as col:
        col.add(notes("w", 3))
        out = cli("index", "check", str(folder))
        assert out.returncode == 0, out.stderr
        assert "ok (23 documents" in out.stdout


def test_cli_beside_a_running_server(folder: Path, tmp_path: Path) -> None:
    """The issue's case: a server and a CLI `index add` on one folder. The add is refused
    naming the server; read-only commands (search, info, check) work beside it."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    serve = ["serve", str(folder), "--port", str(port), "--insecure-no-auth", "--reranker", "none"]
    server = subprocess.Popen(
        [sys.executable, "-m", "twostage", *serve, "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        corpus = tmp_path / "more.jsonl"
        corpus.write_text(json.dumps({"_id": "b0", "text": "Tides follow the moon."}) + "\n")
        out = cli("index", "add", str(folder), str(corpus))
        assert out.returncode == 1 and f"pid {server.pid}" in out.stderr, out.stderr
        assert "twostage serve" in out.stderr
        found = cli("search", str(folder), "tcp sockets", "--no-rerank", "--json")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["hits"]
        assert cli("index", "check", str(folder)).returncode == 0
        r = httpx.post(
            f"http://127.0.0.1:{port}/documents",
            json={"documents": [{"id": "b0", "text": "Tides follow the moon."}]},
            timeout=60,
        )
        assert r.status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    with Collection.open(folder, read_only=True) as col:
        assert "b0" in col and len(col.index) == 21


def test_read_only_server_follows_the_writer(
    folder: Path, encoder: Encoder, tmp_path: Path
) -> None:
    """A server beside the process that writes: without --read-only it will not start (and
    says who holds the folder); with it, it answers searches that see the writer's commits
    and refuses writes with 409."""
    import socket

    import httpx

    writer = Collection.open(folder, encoder)
    try:
        refused = cli("serve", str(folder), "--insecure-no-auth", "--reranker", "none")
        assert refused.returncode == 1 and f"pid {os.getpid()}" in refused.stderr
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = (tmp_path / "server.log").open("w")
        serve = ["serve", str(folder), "--port", str(port), "--read-only", "--insecure-no-auth"]
        server = subprocess.Popen(
            [sys.executable, "-m", "twostage", *serve, "--reranker", "none"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None and time.monotonic() < deadline
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            writer.add([Document("fresh", "Zebras migrate across the Serengeti every year.")])
            time.sleep(Engine.REFRESH_S + 0.1)
            r = httpx.post(f"{url}/search", json={"query": "zebra migration", "k": 1}, timeout=60)
            assert r.status_code == 200 and r.json()["hits"][0]["id"] == "fresh"
            w = httpx.post(
                f"{url}/documents", json={"documents": [{"id": "x", "text": "y"}]}, timeout=60
            )
            assert w.status_code == 409 and w.json()["error"]["code"] == "read_only"
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            log.close()
        assert "x" not in writer
    finally:
        writer.close()


def test_a_changed_byte_inside_a_row_is_caught_by_its_checksum(
    folder: Path, encoder: Encoder
) -> None:
    """SQLite checks page structure, not content: a bit flipped inside a text (here written
    behind the store's back) must not be served as if it were right."""
    import sqlite3

    conn = sqlite3.connect(folder / "store.sqlite")
    with conn:
        conn.execute("UPDATE docs SET text = replace(text, 'gzip', 'gzIp') WHERE id='a0'")
    conn.close()
    with Collection.open(folder, encoder) as col:
        with pytest.raises(CorruptStore, match=r"document 'a0' \(key \d+\) fails its checksum"):
            col.get(["a0"])
        assert col.get(["a1"])[0].id == "a1"  # the other rows still read
        assert any("fail their checksum" in p for p in col.check())
    out = cli("index", "check", str(folder))
    assert out.returncode == 1 and "'a0'" in out.stderr


def test_bm25_files_left_by_a_killed_commit_do_not_block_later_writes(
    folder: Path, encoder: Encoder
) -> None:
    """Found by benches/crashloop.py: a writer killed inside a BM25 commit leaves a deletes
    file named for the next opstamp; every later commit then failed with FileAlreadyExists
    and the collection could be neither written nor reopened."""
    with Collection.open(folder, encoder) as col:
        col.delete(["a1"])  # a segment with deletes, as in the crash
    lex = folder / "lexical"
    meta = json.loads((lex / "meta.json").read_text())
    managed = json.loads((lex / ".managed.json").read_text())
    for seg in meta["segments"]:
        for op in range(meta["opstamp"] + 1, meta["opstamp"] + 8):
            name = f"{seg['segment_id'].replace('-', '')}.{op}.del"
            (lex / name).write_bytes(b"left by a killed commit")
            managed.append(name)
    (lex / ".managed.json").write_text(json.dumps(managed))
    with Collection.open(folder, encoder) as col:
        col.delete(["a2"])
        col.add([Document("after", "Written after the crash, about lighthouses.")])
        keys, _ = col.lexical_search("lighthouses", 3)
        assert [d.id for d in col.fetch(keys) if d] == ["after"]
        assert col.check() == []
