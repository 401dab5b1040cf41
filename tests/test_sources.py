"""Corpus readers (JSONL, text, CSV, gzip)."""

from __future__ import annotations

import gzip
import itertools
import json
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from twostage import sources
from twostage.document import Document
from twostage.errors import InvalidArgument
from twostage.sources import Record, count_lines, read_corpus

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SCIFACT = SHARED / "data" / "scifact"


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def summary(records: list[Record]) -> list[tuple[int, str | None, str | None]]:
    return [(r.line, r.doc.id if r.doc else None, r.error) for r in records]


# ---- JSONL ------------------------------------------------------------------------------


def test_jsonl_beir_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path / "corpus.jsonl",
        jsonl(
            {"_id": "d1", "title": "HNSW", "text": "A graph index.", "metadata": {"year": 2016}},
            {"_id": "d2", "text": "No title here."},
            {"_id": "d3", "title": "Title only", "text": ""},
            {"_id": "d4", "title": None, "text": "null title counts as empty", "metadata": None},
        ),
    )
    records = list(read_corpus(path))
    assert all(r.ok and r.error is None for r in records)
    assert [r.line for r in records] == [1, 2, 3, 4]
    docs = [r.doc for r in records]
    assert docs[0] == Document("d1", "A graph index.", title="HNSW", metadata={"year": 2016})
    assert docs[1] == Document("d2", "No title here.")
    assert docs[2] == Document("d3", "", title="Title only")
    assert docs[3] == Document("d4", "null title counts as empty")


def test_jsonl_id_fallback_and_coercion(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        jsonl(
            {"id": "plain-id", "text": "uses id when _id is absent"},
            {"_id": 42, "text": "integer id"},
            {"_id": 1.5, "text": "float id"},
            {"_id": "main", "id": "other", "text": "both present: _id wins, id is metadata"},
            {"_id": True, "text": "a boolean is not an id"},
            {"_id": None, "text": "null id"},
            {"_id": ["x"], "text": "array id"},
        ),
    )
    records = list(read_corpus(path))
    assert [r.doc.id for r in records[:4] if r.doc] == ["plain-id", "42", "1.5", "main"]
    assert records[3].doc is not None and records[3].doc.metadata == {"id": "other"}
    assert "'_id'" in str(records[4].error) and "boolean" in str(records[4].error)
    assert "null" in str(records[5].error)
    assert "array" in str(records[6].error)


def test_jsonl_custom_field_names_do_not_fall_back(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        jsonl(
            {"docid": 7, "body": "the body", "heading": "H", "id": "ignored"},
            {"id": 8, "body": "no docid"},
        ),
    )
    records = list(read_corpus(path, id_field="docid", text_field="body", title_field="heading"))
    assert records[0].doc == Document("7", "the body", title="H", metadata={"id": "ignored"})
    assert records[1].error == "missing id: no field 'docid'"


def test_jsonl_extra_fields_go_to_metadata(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        jsonl(
            {"_id": "a", "text": "t", "lang": "en", "tags": ["x", "y"]},
            {"_id": "b", "text": "t", "lang": "en", "metadata": {"lang": "fr", "n": 1}},
            {"_id": "c", "text": "t", "metadata": {}},
        ),
    )
    docs = [r.doc for r in read_corpus(path)]
    assert docs[0] is not None and docs[0].metadata == {"lang": "en", "tags": ["x", "y"]}
    # On a clash the metadata object's own key wins: it is the explicit one.
    assert docs[1] is not None and docs[1].metadata == {"lang": "fr", "n": 1}
    assert docs[2] is not None and docs[2].metadata is None


def test_jsonl_malformed_lines_are_reported_and_reading_goes_on(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "ok1", "text": "fine"}),  # 1
        '{"_id": "x", "text": ',  # 2 bad JSON
        "",  # 3 blank: skipped, no record
        "[1, 2]",  # 4 not an object
        json.dumps({"title": "no id", "text": "t"}),  # 5
        json.dumps({"_id": "e", "title": "", "text": "  "}),  # 6 empty text and title
        json.dumps({"_id": "t", "text": ["a", "list"]}),  # 7 wrong type
        json.dumps({"_id": "u", "title": 3, "text": "t"}),  # 8 wrong type
        json.dumps({"_id": "m", "text": "t", "metadata": [1]}),  # 9 metadata not an object
        json.dumps({"_id": "x" * 600, "text": "t"}),  # 10 Document rejects the id
        json.dumps({"_id": "nan", "text": "t", "metadata": {"v": float("nan")}}),  # 11
        '{"_id": "s", "text": "lone \\udc80 surrogate"}',  # 12
        "   ",  # 13 whitespace only: skipped
        json.dumps({"_id": "ok2", "text": "still read after all that"}),  # 14
    ]
    path = write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    records = list(read_corpus(path))
    got = {r.line: (r.doc.id if r.doc else r.error) for r in records}
    assert sorted(got) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]
    assert got[1] == "ok1" and got[14] == "ok2"
    assert str(got[2]).startswith("invalid JSON: ") and "column" in str(got[2])
    assert got[4] == "expected a JSON object, got array"
    assert got[5] == "missing id: no field '_id' or 'id'"
    assert got[6] == "text and title are both missing or empty"
    assert got[7] == "field 'text' must be a string, got array"
    assert got[8] == "field 'title' must be a string, got number (3)"
    assert got[9] == "field 'metadata' must be an object, got array"
    assert "over 512 bytes" in str(got[10])
    assert "metadata is not JSON" in str(got[11])
    assert got[12] == "field 'text' contains an unpaired surrogate at character 5"
    for r in records:
        assert (r.doc is None) != (r.error is None)


def test_jsonl_invalid_utf8_names_the_field(tmp_path: Path) -> None:
    content = (
        b'{"_id": "a", "text": "caf\xe9 au lait"}\n'
        b'{"_id": "b", "text": "fine \xc3\xa9"}\n'
        b"\xff\xfe not even json\n"
    )
    records = list(read_corpus(write(tmp_path / "c.jsonl", content)))
    assert records[0].error == (
        "field 'text' is not valid UTF-8: byte 0xe9 at byte 25 (invalid continuation byte)"
    )
    assert records[1].doc is not None and records[1].doc.text == "fine é"
    assert str(records[2].error).startswith("line is not valid UTF-8: byte 0xff at byte 0")


def test_json_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '[\n  {"_id": "a", "text": "t"}\n]\n')
    first = next(read_corpus(path))
    assert first.line == 1 and "one object per line" in str(first.error)


def test_bom_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    content = b'\xef\xbb\xbf{"_id": "a", "text": "one"}\r\n{"_id": "b", "text": "two"}'
    records = list(read_corpus(write(tmp_path / "c.jsonl", content)))
    assert summary(records) == [(1, "a", None), (2, "b", None)]


# ---- gzip -------------------------------------------------------------------------------


def test_gzip_is_detected_by_magic_bytes(tmp_path: Path) -> None:
    body = jsonl({"_id": "a", "text": "one"}, {"_id": "b", "text": "two"})
    compressed = write(tmp_path / "c.jsonl.gz", gzip.compress(body.encode()))
    misnamed = write(tmp_path / "really-gzip.jsonl", gzip.compress(body.encode()))
    not_compressed = write(tmp_path / "plain.jsonl.gz", body)
    for path in (compressed, misnamed, not_compressed):
        assert summary(list(read_corpus(path))) == [(1, "a", None), (2, "b", None)], path
        assert count_lines(path) == 2


def test_gzip_text_and_csv(tmp_path: Path) -> None:
    text = write(tmp_path / "notes.txt.gz", gzip.compress(b"alpha\n\nbeta\n"))
    assert [r.doc.id for r in read_corpus(text) if r.doc] == ["1", "3"]
    table = write(tmp_path / "t.csv.gz", gzip.compress(b"id,text\n1,hello\n"))
    assert [r.doc.text for r in read_corpus(table) if r.doc] == ["hello"]


def test_truncated_gzip_raises_after_the_good_records(tmp_path: Path) -> None:
    body = jsonl(*({"_id": str(i), "text": "x" * 200} for i in range(2000)))
    blob = gzip.compress(body.encode())
    path = write(tmp_path / "cut.jsonl.gz", blob[: len(blob) // 2])
    seen = 0
    with pytest.raises(OSError, match=r"cut\.jsonl\.gz: compressed stream is damaged"):
        for record in read_corpus(path):
            assert record.ok
            seen += 1
    assert seen > 100


# ---- plain text -------------------------------------------------------------------------


def test_text_one_document_per_nonblank_line(tmp_path: Path) -> None:
    content = b"first doc\n\n   \n  second doc, trimmed  \r\nbad \xff byte\nlast without newline"
    records = list(read_corpus(write(tmp_path / "notes.txt", content)))
    assert summary(records) == [
        (1, "1", None),
        (4, "4", None),
        (5, None, "text is not valid UTF-8: byte 0xff at byte 4 (invalid start byte)"),
        (6, "6", None),
    ]
    assert records[1].doc is not None and records[1].doc.text == "second doc, trimmed"
    assert records[3].doc is not None and records[3].doc.title == ""


# ---- CSV --------------------------------------------------------------------------------


def test_csv_columns_metadata_and_multiline_row_numbers(tmp_path: Path) -> None:
    content = textwrap.dedent(
        """\
        _id,title,text,lang
        a,T1,"first line
        second line",en
        b,,plain,fr

        c,T3,"x ""quoted""
        y
        z",de
        d,T4,too,many,fields
        e,T5,after the bad row,en
        f,T6,"unterminated
        """
    )
    records = list(read_corpus(write(tmp_path / "c.csv", content)))
    assert [(r.line, r.doc.id if r.doc else None) for r in records] == [
        (2, "a"),
        (4, "b"),
        (6, "c"),
        (9, None),
        (10, "e"),
        (11, None),
    ]
    a, b, c = (r.doc for r in records[:3])
    assert a == Document("a", "first line\nsecond line", title="T1", metadata={"lang": "en"})
    assert b == Document("b", "plain", metadata={"lang": "fr"})
    assert c is not None and c.text == 'x "quoted"\ny\nz'
    assert records[3].error == "row has 5 fields, the header has 4"
    assert str(records[5].error).startswith("malformed CSV row: ")


def test_csv_id_fallback_optional_title_and_field_names(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,body,source\n1,hello,web\n,empty id,web\n")
    records = list(read_corpus(path, text_field="body"))
    assert records[0].doc == Document("1", "hello", metadata={"source": "web"})
    assert records[1].error == "column 'id' (the id) is empty"
    path = write(tmp_path / "d.csv", "key;text\n9;semicolons\n")
    records = list(read_corpus(path, id_field="key", delimiter=";"))
    assert records[0].doc == Document("9", "semicolons")


def test_tsv_by_suffix_uses_tabs(tmp_path: Path) -> None:
    path = write(tmp_path / "c.tsv", "_id\ttitle\ttext\nq1\tA, B\tcommas, kept\n")
    (record,) = read_corpus(path)
    assert record.doc == Document("q1", "commas, kept", title="A, B")


def test_csv_header_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"no text column 'text'.*'_id', 'body'.*text_field="):
        list(read_corpus(write(tmp_path / "a.csv", "_id,body\n1,x\n")))
    with pytest.raises(InvalidArgument, match=r"no id column '_id' \(or 'id'\)"):
        list(read_corpus(write(tmp_path / "b.csv", "key,text\n1,x\n")))
    with pytest.raises(InvalidArgument, match="empty CSV file"):
        list(read_corpus(write(tmp_path / "c.csv", "")))
    with pytest.raises(InvalidArgument, match="repeats column"):
        list(read_corpus(write(tmp_path / "d.csv", "_id,text,text\n1,x,y\n")))


def test_csv_invalid_utf8_names_the_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", b"_id,text,note\n1,ok,caf\xe9\n2,fine,x\n")
    records = list(read_corpus(path))
    assert records[0].error == "column 'note' is not valid UTF-8: byte 0xe9 at character 3"
    assert records[1].doc == Document("2", "fine", metadata={"note": "x"})


def test_csv_fields_over_the_stdlib_default_limit(tmp_path: Path) -> None:
    big = "word " * 40_000  # 200k characters: over csv's default 128 KiB field limit
    path = write(tmp_path / "c.csv", f"_id,text\n1,{big}\n2,small\n")
    assert [r.doc.id for r in read_corpus(path) if r.doc] == ["1", "2"]


# ---- arguments, suffixes, missing files -------------------------------------------------


def test_auto_format_by_suffix(tmp_path: Path) -> None:
    body = jsonl({"_id": "a", "text": "t"})
    for name in ("c.jsonl", "C.JSONL", "c.json", "c.jsonl.gz"):
        assert next(read_corpus(write(tmp_path / name, body))).ok, name
    path = write(tmp_path / "corpus.parquet", "x")
    with pytest.raises(InvalidArgument, match=r"\.parquet.*format="):
        read_corpus(path)
    with pytest.raises(InvalidArgument, match=r"\(none\).*format="):
        read_corpus(write(tmp_path / "README", "x"))
    # An explicit format overrides the suffix.
    assert next(read_corpus(path, format="text")).doc == Document("1", "x")


def test_missing_file_and_bad_arguments_raise_at_the_call(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        read_corpus(missing)
    path = write(tmp_path / "c.jsonl", "")
    with pytest.raises(InvalidArgument, match="format must be one of"):
        read_corpus(path, format="xml")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="delimiter"):
        read_corpus(path, format="csv", delimiter="::")
    with pytest.raises(InvalidArgument, match="id_field"):
        read_corpus(path, id_field="")
    with pytest.raises(FileNotFoundError):
        count_lines(missing)
    assert list(read_corpus(path)) == []


def test_count_lines(tmp_path: Path) -> None:
    assert count_lines(write(tmp_path / "a", "")) == 0
    assert count_lines(write(tmp_path / "b", "x\ny\n")) == 2
    assert count_lines(write(tmp_path / "c", "x\ny")) == 2
    assert count_lines(write(tmp_path / "d", "\n\n\n")) == 3
    assert count_lines(write(tmp_path / "e.gz", gzip.compress(b"1\n2\n3\n4"))) == 4


# ---- streaming --------------------------------------------------------------------------


def test_over_long_line_is_an_error_not_a_memory_spike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_MAX_LINE_BYTES", 1000)
    long_line = json.dumps({"_id": "big", "text": "x" * 5000})
    body = jsonl({"_id": "a", "text": "t"}) + long_line + "\n" + jsonl({"_id": "b", "text": "u"})
    records = list(read_corpus(write(tmp_path / "c.jsonl", body)))
    assert summary(records) == [
        (1, "a", None),
        (2, None, "line is longer than 1000 bytes"),
        (3, "b", None),
    ]
    csv_body = "_id,text\n1," + "y" * 5000 + "\n2,ok\n"
    records = list(read_corpus(write(tmp_path / "c.csv", csv_body)))
    assert summary(records) == [(2, None, "line is longer than 1000 bytes"), (3, "2", None)]


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~60 MB of JSONL: big enough that reading it whole would show in time and memory."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    line = {"_id": "", "title": "t", "text": "lorem ipsum dolor sit amet " * 20}
    with path.open("w") as f:
        for i in range(100_000):
            line["_id"] = str(i)
            f.write(json.dumps(line) + "\n")
    return path


def test_reading_a_few_records_does_not_read_the_file(big_corpus: Path) -> None:
    start = time.perf_counter()
    first = list(itertools.islice(read_corpus(big_corpus), 3))
    elapsed = time.perf_counter() - start
    assert [r.doc.id for r in first if r.doc] == ["0", "1", "2"]
    assert elapsed < 0.25, f"3 records took {elapsed:.3f}s: the reader is not streaming"


def test_memory_stays_flat_over_a_large_file(big_corpus: Path) -> None:
    size = big_corpus.stat().st_size
    tracemalloc.start()
    try:
        n = sum(1 for r in itertools.islice(read_corpus(big_corpus), 20_000) if r.ok)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 20_000
    # 20k records are ~12 MB of file; holding them would be far above this.
    assert peak < 1 << 20, f"peak {peak} bytes while streaming a {size}-byte file"


# ---- the real BEIR file -----------------------------------------------------------------


def test_reads_the_real_scifact_corpus() -> None:
    candidates = sorted(SCIFACT.glob("corpus.jsonl*")) if SCIFACT.is_dir() else []
    if not candidates:
        pytest.skip(f"BEIR scifact corpus not found under {SCIFACT} (shared data absent)")
    path = candidates[0]
    head = list(itertools.islice(read_corpus(path), 5))
    assert len(head) == 5 and all(r.ok for r in head)
    assert [r.line for r in head] == [1, 2, 3, 4, 5]
    for r in head:
        assert r.doc is not None and r.doc.id and r.doc.title and r.doc.text
    records = list(read_corpus(path))
    assert all(r.ok for r in records)
    assert len(records) == count_lines(path)
    assert len({r.doc.id for r in records if r.doc}) == len(records)
