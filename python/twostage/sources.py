"""Where documents come from: corpus files (JSONL, plain text, CSV).

``read_corpus`` streams a file one line (or CSV row) at a time and yields a ``Record`` per
document: the ``Document``, or the reason that line is unusable. A bad line never stops
the iteration, so an ingest run can index what is good and report the rest with line
numbers. Gzip input is recognised by its magic bytes, whatever the file is called.

The demo's corpus, the standard library's own documentation, is :mod:`twostage.stdlib_docs`.

>>> import tempfile, pathlib
>>> from twostage.sources import read_corpus
>>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
>>> _ = path.write_text('{"_id": 1, "title": "HNSW", "text": "A graph index."}\\n{"_id": 2}\\n')
>>> [(r.line, r.doc.id if r.doc else r.error) for r in read_corpus(path)]
[(1, '1'), (2, 'text and title are both missing or empty')]
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from twostage.document import Document
from twostage.errors import InvalidArgument

__all__ = ["Format", "Record", "count_lines", "read_corpus"]

Format = Literal["auto", "jsonl", "text", "csv"]
_FORMATS = ("auto", "jsonl", "text", "csv")

# A document is at most MAX_TEXT_CHARS (1M) characters; as JSON with \uXXXX escapes that can
# approach 12 bytes per character, so 16 MiB admits every valid line while a file with no
# newlines at all (a binary dumped by mistake) cannot make one read take all memory.
_MAX_LINE_BYTES = 16 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    """One line (or CSV row) of a corpus file: a document, or why there is none.

    ``line`` is 1-based and physical: for a CSV row spanning several lines, the line it
    starts on. Exactly one of ``doc`` and ``error`` is ``None``.

    >>> Record(3, None, "invalid JSON: Expecting value (column 1)").ok
    False
    """

    line: int
    doc: Document | None
    error: str | None

    @property
    def ok(self) -> bool:
        """True when the line gave a document."""
        return self.doc is not None


# ---- reading files --------------------------------------------------------------------


def read_corpus(
    path: str | os.PathLike[str],
    *,
    format: Format = "auto",
    id_field: str = "_id",
    text_field: str = "text",
    title_field: str = "title",
    delimiter: str = ",",
    first_line: int = 1,
) -> Iterator[Record]:
    """Stream the documents of a corpus file, one ``Record`` per line (CSV: per row).

    Formats:

    - ``jsonl``: one JSON object per line, BEIR style (``_id``, ``title``, ``text``,
      ``metadata``). With the default ``id_field`` an ``id`` field is accepted when ``_id``
      is absent. Integer and float ids become strings; other top-level fields go into the
      metadata (on a clash the ``metadata`` object's own key wins). ``null`` title or text
      counts as empty.
    - ``text``: one document per non-empty line; its id is the line number.
    - ``csv``: a header row names the columns; ``id_field``/``text_field``/``title_field``
      pick them (the title column may be absent); every other column goes into the
      metadata as a string.
    - ``auto``: by suffix, ignoring a trailing ``.gz``: ``.jsonl``/``.json`` (JSON Lines),
      ``.csv``, ``.tsv`` (CSV with tab delimiter), ``.txt``.

    ``first_line``: records from that line on (line numbers stay the file's). JSONL and text
    lines before it are read but not parsed, so readers of a file's later parts (a
    distributed ingest, :mod:`twostage.distributed.ingest`) skip ahead cheaply; CSV rows
    can span lines, so CSV parses them and drops the records.

    Any format may be gzip-compressed. Blank lines are skipped silently; every other
    unusable line yields a record with ``doc=None`` and an ``error`` naming the field, and
    reading goes on. Memory stays flat however large the file is; duplicate ids are not
    checked here (that would need memory proportional to the corpus).

    Raises (at the call, before iteration): ``FileNotFoundError`` for a missing file,
    ``InvalidArgument`` for an unknown format or suffix or a bad delimiter. A CSV file
    without the named columns raises ``InvalidArgument`` when iteration starts; a
    truncated gzip stream raises ``OSError`` after the records before the damage.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = path.write_text("first note\\n\\nthird line\\n")
    >>> [(r.line, r.doc.id, r.doc.text) for r in read_corpus(path)]
    [(1, '1', 'first note'), (3, '3', 'third line')]
    """
    if format not in _FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(_FORMATS)}; got {format!r}")
    for name, value in (("id_field", id_field), ("text_field", text_field)):
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"{name} must be a non-empty string, got {value!r}")
    if not isinstance(title_field, str) or not title_field:
        raise InvalidArgument(f"title_field must be a non-empty string, got {title_field!r}")
    if isinstance(first_line, bool) or not isinstance(first_line, int) or first_line < 1:
        raise InvalidArgument(f"first_line must be a line number >= 1, got {first_line!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise InvalidArgument(
            f"delimiter must be one character other than a quote or newline, got {delimiter!r}"
        )
    path = os.fspath(path)
    # Checked now rather than at the first next(): a wrong path should fail where it is given.
    with open(path, "rb"):
        pass
    if format == "auto":
        format, tab = _format_from_suffix(path)
        if tab:
            delimiter = "\t"
    if format == "jsonl":
        return _read_jsonl(path, id_field, text_field, title_field, first_line)
    if format == "text":
        return _read_text(path, first_line)
    rows = _read_csv(path, id_field, text_field, title_field, delimiter)
    return rows if first_line <= 1 else (r for r in rows if r.line >= first_line)


def count_lines(path: str | os.PathLike[str]) -> int:
    """Count the lines of a file (gzip or not) without parsing it, for progress and ETA.

    A last line without a newline counts. For CSV with multi-line fields this is more
    than the number of rows; blank lines count too. A damaged gzip stream raises
    ``OSError`` (as ``read_corpus`` does).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = path.write_text("one\\ntwo\\nthree")
    >>> count_lines(path)
    3
    """
    lines = 0
    last = b"\n"
    path = os.fspath(path)
    with _open_binary(path) as f:
        try:
            while chunk := f.read(_CHUNK):
                lines += chunk.count(b"\n")
                last = chunk
        # As in _lines: a damaged archive is an OSError naming the file, not EOFError.
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise OSError(f"{path}: compressed stream is damaged after line {lines}: {e}") from e
    return lines + (not last.endswith(b"\n"))


def _format_from_suffix(path: str) -> tuple[Literal["jsonl", "text", "csv"], bool]:
    """The format ``auto`` means for this path, and whether its delimiter is a tab."""
    name = os.path.basename(path).lower()
    stem = name[:-3] if name.endswith(".gz") else name
    suffix = os.path.splitext(stem)[1]
    if suffix in (".jsonl", ".json"):
        return "jsonl", False
    if suffix == ".csv":
        return "csv", False
    if suffix == ".tsv":
        return "csv", True
    if suffix == ".txt":
        return "text", False
    shown = name[len(stem) - len(suffix) :] if suffix else "(none)"
    raise InvalidArgument(
        f"cannot tell the format of {path!r} from its suffix {shown}: pass "
        "format='jsonl', 'text' or 'csv' (auto knows .jsonl, .json, .csv, .tsv, .txt, "
        "each optionally .gz)"
    )


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator[BinaryIO]:
    """Open a file for binary reading, decompressing it when it starts with gzip's magic."""
    with open(path, "rb") as raw:
        # peek, not read+seek: works on pipes too, and costs no extra system call.
        if raw.peek(2)[:2] == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz  # type: ignore[misc]  # GzipFile is a BinaryIO in all but name
        else:
            yield raw


def _lines(path: str) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, bytes without the newline); ``None`` for an over-long line.

    Reads with a size cap so one giant line cannot take all memory; the rest of such a line
    is read in bounded pieces and thrown away.
    """
    with _open_binary(path) as f:
        number = 0
        try:
            while line := f.readline(_MAX_LINE_BYTES + 1):
                number += 1
                if number == 1 and line.startswith(_BOM):
                    line = line[len(_BOM) :]
                if len(line) > _MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while (rest := f.readline(_CHUNK)) and not rest.endswith(b"\n"):
                        pass
                    yield number, None
                    continue
                yield number, line.rstrip(b"\r\n") if line.endswith(b"\n") else line
        # Only the decompressor raises these; a damaged archive is a file-level failure, but
        # the records before the damage have been delivered.
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise OSError(f"{path}: compressed stream is damaged after line {number}: {e}") from e


def _too_long() -> str:
    return f"line is longer than {_MAX_LINE_BYTES} bytes"


def _utf8_error(e: UnicodeDecodeError, what: str) -> str:
    bad = e.object[e.start : e.start + 1].hex()
    return f"{what} is not valid UTF-8: byte 0x{bad} at byte {e.start} ({e.reason})"


def _read_text(path: str, first_line: int = 1) -> Iterator[Record]:
    for number, raw in _lines(path):
        if number < first_line:
            continue
        if raw is None:
            yield Record(number, None, _too_long())
            continue
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            yield Record(number, None, _utf8_error(e, "text"))
            continue
        if text:
            yield _record(number, str(number), text, "", None)


def _read_jsonl(
    path: str, id_field: str, text_field: str, title_field: str, first_line: int = 1
) -> Iterator[Record]:
    # "id" stands in for "_id" only under the default naming: a caller who names a field
    # means that field.
    fallback = "id" if id_field == "_id" else None
    for number, raw in _lines(path):
        if number < first_line:
            continue
        if raw is None:
            yield Record(number, None, _too_long())
            continue
        if not raw.strip():
            continue
        yield _jsonl_record(number, raw, id_field, fallback, text_field, title_field)


def _jsonl_record(
    number: int,
    raw: bytes,
    id_field: str,
    fallback: str | None,
    text_field: str,
    title_field: str,
) -> Record:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Record(number, None, _utf8_error(e, _field_with_bad_bytes(raw) or "line"))
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        hint = " (a JSON array? this reader wants one object per line)" if line == "[" else ""
        return Record(number, None, f"invalid JSON: {e.msg} (column {e.colno}){hint}")
    except RecursionError:
        return Record(number, None, "invalid JSON: arrays or objects nested too deeply")
    except ValueError as e:  # an integer over the interpreter's digit limit (4300)
        return Record(number, None, f"invalid JSON: {e}")
    if not isinstance(obj, dict):
        return Record(number, None, f"expected a JSON object, got {_json_type(obj)}")

    key = id_field if id_field in obj or fallback is None or fallback not in obj else fallback
    if key not in obj:
        also = f" or {fallback!r}" if fallback else ""
        return Record(number, None, f"missing id: no field {id_field!r}{also}")
    doc_id, error = _coerce_id(obj[key], key)
    if error:
        return Record(number, None, error)

    fields: dict[str, str] = {}
    for name in (text_field, title_field):
        value = obj.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            return Record(number, None, f"field {name!r} must be a string, got {_json_type(value)}")
        fields[name] = value

    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return Record(
            number, None, f"field 'metadata' must be an object, got {_json_type(metadata)}"
        )
    used = {key, text_field, title_field, "metadata"}
    extras = {k: v for k, v in obj.items() if k not in used}
    if extras:
        metadata = {**extras, **(metadata or {})}
    for name in (key, text_field, title_field):
        error = _surrogate_error(name, doc_id if name == key else fields[name])
        if error:
            return Record(number, None, error)
    if metadata:
        # Stored, filtered on and served as JSON text: the same UTF-8 rule holds there.
        bad = next((k for k, v in metadata.items() if _has_surrogate(k, v)), None)
        if bad is not None:
            return Record(number, None, f"metadata field {bad!r} contains an unpaired surrogate")
    return _record(number, doc_id, fields[text_field], fields[title_field], metadata or None)


def _coerce_id(value: object, name: str) -> tuple[str, str | None]:
    """An id as a string, or an error naming the field."""
    if isinstance(value, str):
        return value, None
    # bool is an int subclass, but True as an id is a bug in the producer, not a number.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if isinstance(value, float) and math.isfinite(value):
        return repr(value), None
    shown = _json_type(value) if not isinstance(value, float) else repr(value)
    return "", f"field {name!r} (the id) must be a string or a number, got {shown}"


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    if isinstance(value, (int, float)):
        return f"number ({value!r})"
    return type(value).__name__


def _surrogate_error(name: str, value: str) -> str | None:
    # json accepts "\udc80" escapes, but such a string cannot be encoded as UTF-8, which the
    # tokenizer and the index file both need; catch it here, on its line.
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"field {name!r} contains an unpaired surrogate at character {e.start}"
    return None


def _has_surrogate(*values: object) -> bool:
    """Whether a string anywhere in these JSON values (keys included) is not valid UTF-8."""
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _surrogate_error("", v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _field_with_bad_bytes(raw: bytes) -> str | None:
    """Name the top-level field holding undecodable bytes, for a sharper error message."""
    try:
        obj = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    for k, v in obj.items():
        if not (k + json.dumps(v, ensure_ascii=False)).isascii():
            try:
                (k + json.dumps(v, ensure_ascii=False)).encode("utf-8")
            except UnicodeEncodeError:
                return f"field {k!r}"
    return None


def _record(
    number: int, doc_id: str, text: str, title: str, metadata: dict[str, Any] | None
) -> Record:
    if not (text.strip() or title.strip()):
        return Record(number, None, "text and title are both missing or empty")
    try:
        return Record(number, Document(doc_id, text, title=title, metadata=metadata), None)
    except InvalidArgument as e:
        return Record(number, None, str(e))


class _CsvLines:
    """Decoded lines for ``csv.reader``, noting over-long lines for the row that holds them.

    Bytes that are not UTF-8 survive as surrogates (``surrogateescape``) so that the row
    can be parsed and the error can name the column.
    """

    def __init__(self, lines: Iterator[tuple[int, bytes | None]]) -> None:
        self._lines = lines
        self.too_long: list[int] = []

    def __iter__(self) -> Iterator[str]:
        for number, raw in self._lines:
            if raw is None:
                self.too_long.append(number)
                yield "\n"  # keeps the reader's line count right; the row is reported
            else:
                yield raw.decode("utf-8", "surrogateescape") + "\n"


def _read_csv(
    path: str, id_field: str, text_field: str, title_field: str, delimiter: str
) -> Iterator[Record]:
    # The csv module's default cap is 128 KiB per field, below a legal document (1M chars).
    # Raising it is process-wide, so only ever raise it; a cap stays so that an unclosed
    # quote cannot swallow the rest of a big file into one field.
    if csv.field_size_limit() < _MAX_LINE_BYTES:
        csv.field_size_limit(_MAX_LINE_BYTES)
    lines = _CsvLines(_lines(path))
    # strict: a quote in the wrong place is reported as an error instead of being silently
    # folded into the field.
    reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidArgument(f"{path}: empty CSV file, a header row is required") from None
    except csv.Error as e:
        raise InvalidArgument(f"{path}: cannot parse the CSV header: {e}") from e
    header = [h.strip() for h in header]
    if lines.too_long or any(_surrogate_error("", h) for h in header):
        raise InvalidArgument(f"{path}: the CSV header is not valid UTF-8 or is too long")
    columns = _csv_columns(path, header, id_field, text_field, title_field)
    id_col, text_col, title_col = columns
    meta_cols = [(i, h) for i, h in enumerate(header) if i not in columns]

    end = reader.line_num
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = reader.line_num
            lines.too_long.clear()
            yield Record(start, None, f"malformed CSV row: {e}")
            continue
        end = reader.line_num
        if lines.too_long:
            lines.too_long.clear()
            yield Record(start, None, _too_long())
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            yield Record(start, None, f"row has {len(row)} fields, the header has {len(header)}")
            continue
        bad = next((h for h, v in zip(header, row, strict=True) if _surrogate_error(h, v)), None)
        if bad is not None:
            value = row[header.index(bad)]
            yield Record(start, None, _csv_utf8_error(bad, value))
            continue
        doc_id = row[id_col]
        if not doc_id:
            yield Record(start, None, f"column {header[id_col]!r} (the id) is empty")
            continue
        title = row[title_col] if title_col is not None else ""
        metadata = {h: row[i] for i, h in meta_cols} or None
        yield _record(start, doc_id, row[text_col], title, metadata)


def _csv_columns(
    path: str, header: list[str], id_field: str, text_field: str, title_field: str
) -> tuple[int, int, int | None]:
    """Indexes of the id, text and (optional) title columns; raise naming what is missing."""
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise InvalidArgument(f"{path}: the CSV header repeats column(s) {duplicates}")
    have = ", ".join(repr(h) for h in header)
    if id_field in header:
        id_col = header.index(id_field)
    elif id_field == "_id" and "id" in header:
        id_col = header.index("id")
    else:
        also = " (or 'id')" if id_field == "_id" else ""
        raise InvalidArgument(
            f"{path}: no id column {id_field!r}{also} in the CSV header ({have}); "
            "pass id_field= to choose one"
        )
    if text_field not in header:
        raise InvalidArgument(
            f"{path}: no text column {text_field!r} in the CSV header ({have}); "
            "pass text_field= to choose one"
        )
    title_col = header.index(title_field) if title_field in header else None
    return id_col, header.index(text_field), title_col


def _csv_utf8_error(column: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        char = value[e.start]
        if "\udc80" <= char <= "\udcff":  # a byte surrogateescape could not decode
            return (
                f"column {column!r} is not valid UTF-8: byte 0x{ord(char) - 0xDC00:02x} "
                f"at character {e.start}"
            )
    return f"column {column!r} contains an unpaired surrogate"
