"""The ``twostage`` command, run as a user runs it: a real process per call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from twostage.cli import main
from twostage.stdlib_docs import stdlib_docs

CMD = [sys.executable, "-m", "twostage"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *args], input=stdin, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["index"],
        ["index", "build"],
        ["index", "add"],
        ["index", "delete"],
        ["index", "info"],
        ["index", "reembed"],
        ["search"],
        ["models"],
        ["models", "list"],
        ["models", "build"],
    ],
)
def test_every_command_has_help_with_an_example(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "twostage" in out


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    corpus = tmp / "docs.csv"
    rows = ["id,title,text,module"]
    for d in stdlib_docs(40):
        text = d.text.replace('"', '""')
        rows.append(f'"{d.id}","{d.title}","{text}",{(d.metadata or {}).get("module") or ""}')
    corpus.write_text("\n".join(rows) + "\n")
    out = tmp / "col"
    done = run(
        "index",
        "build",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--id-field",
        "id",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert "40 documents from" in done.stdout
    return out


def test_search_table_and_json(collection: Path) -> None:
    table = run("search", str(collection), "what does the assert statement do", "-k", "3")
    assert table.returncode == 0, table.stderr
    assert "topic:assert" in table.stdout and "timings (ms): encode" in table.stdout
    js = run("search", str(collection), "assert statement", "-k", "2", "--json", "--no-rerank")
    resp = json.loads(js.stdout)
    assert resp["hits"][0]["id"].startswith("topic:assert")
    assert resp["reranker_version"] is None and not resp["degraded"]


def test_add_from_stdin_then_delete(collection: Path) -> None:
    doc = {"_id": "note-1", "title": "Zebra", "text": "Zebras have black and white stripes."}
    added = run("index", "add", str(collection), "-", stdin=json.dumps(doc) + "\n{bad\n")
    assert added.returncode == 0, added.stderr
    assert "1 added" in added.stdout and "1 malformed" in added.stdout
    assert "line 2: invalid JSON" in added.stderr
    found = json.loads(
        run("search", str(collection), "striped animals", "--json", "-k", "1", "--no-rerank").stdout
    )
    assert found["hits"][0]["id"] == "note-1"
    # The BM25 first stage sees the upsert too (the lexical index follows the store).
    lexical = run(
        "search", str(collection), "zebra", "--json", "-k", "1", "--no-rerank",
        "--first-stage", "bm25",
    )  # fmt: skip
    assert json.loads(lexical.stdout)["hits"][0]["id"] == "note-1", lexical.stderr
    missing = run("index", "delete", str(collection), "note-1", "nope")
    assert missing.returncode == 1 and "unknown document id" in missing.stderr
    gone = run("index", "delete", str(collection), "note-1")
    assert gone.returncode == 0 and "deleted 1" in gone.stdout
    info = json.loads(run("index", "info", str(collection), "--json").stdout)
    assert info["documents"] == 40 and info["lexical_indexed"] == 40
    assert "BM25, tantivy en_stem: 40 docs" in run("index", "info", str(collection)).stdout


def test_errors_are_one_line_and_exit_1(tmp_path: Path, collection: Path) -> None:
    for args, msg in [
        (["search", str(tmp_path / "nowhere"), "q"], "no manifest.json"),
        (["search", str(collection), ""], "query is empty"),
        (["search", str(collection), "q", "--filter", "novalue"], "KEY=VALUE"),
        (
            [
                "index",
                "build",
                "--corpus",
                str(tmp_path / "none.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ],
            "corpus not found",
        ),
    ]:
        done = run(*args)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.startswith("twostage: error:") and msg in done.stderr
        assert "Traceback" not in done.stderr


def test_plain_text_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "notes.txt"
    corpus.write_text("SQLite is an embedded database.\n\nHNSW is a graph index for vectors.\n")
    out = tmp_path / "notes"
    done = run("index", "build", "--corpus", str(corpus), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    hit = json.loads(run("search", str(out), "nearest neighbour graph", "--json", "-k", "1").stdout)
    assert hit["hits"][0]["id"] == "3"  # the line number


def test_build_an_i8_index_with_f16_rescoring(tmp_path: Path) -> None:
    """--dtype i8 --rescore --connectivity reach the index, `index info` says so, and a
    re-embedded generation keeps them; --rescore on an f16 index is refused, nothing made."""
    corpus = tmp_path / "notes.txt"
    corpus.write_text("SQLite is an embedded database.\n\nHNSW is a graph index for vectors.\n")
    out = tmp_path / "notes"
    flags = ("--no-progress", "--dtype", "i8", "--rescore", "--connectivity", "12")
    done = run("index", "build", "--corpus", str(corpus), "--out", str(out), *flags)
    assert done.returncode == 0, done.stderr
    shown = run("index", "info", str(out)).stdout
    assert "cos i8 + f16 re-scoring dim=384" in shown and "M=12" in shown
    hit = json.loads(run("search", str(out), "nearest neighbour graph", "--json", "-k", "1").stdout)
    assert hit["hits"][0]["id"] == "3"
    v2 = tmp_path / "notes-v2"
    args = ("--out", str(v2), "--no-progress", "--encoder", "minilm-l6", "--precision", "fp32")
    done = run("index", "reembed", str(out), *args)
    assert done.returncode == 0, done.stderr
    info = json.loads(run("index", "info", str(v2), "--json").stdout)
    assert (info["dtype"], info["rescore"], info["connectivity"]) == ("i8", True, 12)
    bad = run("index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "--rescore")
    assert bad.returncode == 1 and bad.stderr.startswith("twostage: error:")
    assert "rescore" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_build_refuses_another_encoder_for_an_existing_collection(collection: Path) -> None:
    """A different encoder means re-embedding into a new folder, never a silent no-op."""
    other = run("index", "build", "--corpus", str(collection / "manifest.json"), "--out",
                str(collection), "--encoder", "minilm-l6", "--precision", "fp32")  # fmt: skip
    assert other.returncode == 1
    assert "fingerprint" in other.stderr and "build a new collection" in other.stderr


def test_reembed_a_collection_into_a_new_generation(tmp_path: Path, collection: Path) -> None:
    out = tmp_path / "col-v2"
    args = ("index", "reembed", str(collection), "--no-progress", "--encoder", "minilm-l6")
    done = run(*args, "--out", str(out), "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    assert "40 documents" in done.stdout and "untouched" in done.stdout
    info = json.loads(run("index", "info", str(out), "--json").stdout)
    assert info["documents"] == info["indexed"] == 40 and info["encoder"]["precision"] == "fp32"
    hit = run("search", str(out), "assert statement", "-k", "1", "--json", "--no-rerank")
    assert json.loads(hit.stdout)["hits"][0]["id"].startswith("topic:assert")
    same = run(*args, "--out", str(tmp_path / "again"))  # int8: the collection's own encoder
    assert same.returncode == 1 and "nothing to re-embed" in same.stderr
