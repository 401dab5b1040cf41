"""Where documents come from: corpus files (JSONL, plain text, CSV) and the stdlib's own docs.

``read_corpus`` streams a file one line (or CSV row) at a time and yields a ``Record`` per
document: the ``Document``, or the reason that line is unusable. A bad line never stops
the iteration, so an ingest run can index what is good and report the rest with line
numbers. Gzip input is recognised by its magic bytes, whatever the file is called.

``stdlib_docs`` is a real corpus every machine has: the language reference topics that
``help()`` shows, then the docstrings of the standard library, read with ``ast`` (no module
is imported, so nothing runs), cleaned and split into passages.

>>> import tempfile, pathlib
>>> from twostage.sources import read_corpus, stdlib_docs
>>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
>>> _ = path.write_text('{"_id": 1, "title": "HNSW", "text": "A graph index."}\\n{"_id": 2}\\n')
>>> [(r.line, r.doc.id if r.doc else r.error) for r in read_corpus(path)]
[(1, '1'), (2, 'text and title are both missing or empty')]
>>> docs = list(stdlib_docs(limit=3))
>>> [d.id for d in docs][0].startswith("topic:")
True
"""

from __future__ import annotations

import ast
import contextlib
import csv
import gzip
import itertools
import json
import math
import os
import re
import sysconfig
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from twostage.document import Document
from twostage.errors import InvalidArgument

__all__ = ["Format", "Record", "count_lines", "read_corpus", "stdlib_docs"]

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
        return _read_jsonl(path, id_field, text_field, title_field)
    if format == "text":
        return _read_text(path)
    return _read_csv(path, id_field, text_field, title_field, delimiter)


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


def _read_text(path: str) -> Iterator[Record]:
    for number, raw in _lines(path):
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


def _read_jsonl(path: str, id_field: str, text_field: str, title_field: str) -> Iterator[Record]:
    # "id" stands in for "_id" only under the default naming: a caller who names a field
    # means that field.
    fallback = "id" if id_field == "_id" else None
    for number, raw in _lines(path):
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


# ---- the standard library's documentation -------------------------------------------

# Modules people know, so that a small `limit` gives a corpus worth querying. They are
# interleaved one docstring at a time, so 2,000 passages cover all of them rather than
# the first few. C modules (math, itertools, time, ...) have no .py source: without an
# import there is nothing to read, and they are simply absent.
_WELL_KNOWN = (
    "json", "os", "pathlib", "re", "collections", "itertools", "functools", "datetime",
    "subprocess", "asyncio", "typing", "dataclasses", "logging", "sqlite3", "urllib", "http",
    "csv", "random", "math", "statistics", "threading", "argparse", "shutil", "tempfile",
    "contextlib", "enum", "string", "textwrap", "unittest", "email", "html", "xml", "socket",
    "ssl", "concurrent", "multiprocessing", "heapq", "bisect", "fractions", "hashlib",
    "base64", "zipfile", "tarfile", "gzip", "pickle", "copy", "pprint", "inspect", "ast",
    "traceback", "uuid", "secrets", "zoneinfo", "configparser", "difflib", "glob", "fnmatch",
    "shlex", "queue", "sched", "operator", "abc", "io", "codecs", "calendar", "locale",
    "gettext", "warnings", "weakref", "types", "importlib", "ipaddress", "selectors",
    "smtplib", "imaplib", "ftplib", "mimetypes", "platform", "getpass", "signal", "struct",
    "timeit", "cProfile", "pstats", "pdb", "doctest", "decimal", "numbers", "graphlib",
    "filecmp", "fileinput", "stat", "plistlib", "wave", "lzma", "bz2", "zipapp", "venv",
)  # fmt: skip

# Directories that are not documentation of the library: tests, the IDE and GUI demos,
# third-party packages, the frozen 2to3 grammar, bundled wheels and build configuration.
_SKIP_DIRS = frozenset(
    {
        "test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages",
        "dist-packages", "lib2to3", "ensurepip", "distutils", "__pycache__", "lib-dynload",
        "__phello__", "pydoc_data",
    }
)  # fmt: skip

_MIN_DOC_WORDS = 15

_UNDERLINE = re.compile(r"""([-=*~^+#"'`_.:])\1{2,}""")
_ROLE = re.compile(r":(?:[\w.+-]+:)+`~?!?([^`<]*?)\s*(?:<[^`>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")
_LINK = re.compile(r"`([^`]+?)(?:\s*<[^`>]*>)?`_{1,2}")
_OLD_QUOTE = re.compile(r"`(\w[^`'\n]*)'")  # `name' quoting, as in older docstrings
_INTERPRETED = re.compile(r"`([^`\n]+)`")
_DIRECTIVE = re.compile(r"\.\.(\s|$)")
_SPACE = re.compile(r"\s+")
_SENTENCE = re.compile(r"(?<=[.!?:;])\s+(?=\S)")


def stdlib_docs(limit: int | None = None, *, max_words: int = 120) -> Iterator[Document]:
    """The Python standard library's documentation as passages: a corpus with no download.

    First the language reference topics behind ``help("assert")`` (``pydoc_data``; id
    ``topic:assert``, title ``assert``), then docstrings read with ``ast`` from the stdlib
    sources (never imported): modules, classes, public functions and methods with at least
    15 words, titled by qualified name (``json.dumps``, ``pathlib.Path.glob``). Well-known
    modules come first, interleaved, then the rest in sorted path order, so any ``limit``
    takes the same, varied subset on a given Python version.

    Texts are split on paragraph (then sentence, then word) boundaries into passages of at
    most ``max_words`` words, sized evenly; later passages get ids like ``json.dumps#2``.
    reST markup is reduced to its text (``:func:`x``` -> ``x``), whitespace inside a
    paragraph is collapsed, and doctest blocks (``>>>`` to the end of their paragraph) are
    dropped: they are code, not prose, and would crowd out the explanation.

    Metadata: ``source`` (``"pydoc-topics"`` or ``"docstring"``), ``module`` (``None`` for
    topics) and ``kind`` (``topic``, ``module``, ``class``, ``function``, ``method``).

    >>> docs = list(stdlib_docs(limit=2))
    >>> docs[0].id, docs[0].metadata["source"]
    ('topic:assert', 'pydoc-topics')
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidArgument(f"limit must be None or an integer >= 0, got {limit!r}")
    if not isinstance(max_words, int) or max_words < 1:
        raise InvalidArgument(f"max_words must be an integer >= 1, got {max_words!r}")
    return itertools.islice(_stdlib_passages(max_words), limit)


def _stdlib_passages(max_words: int) -> Iterator[Document]:
    seen: set[str] = set()
    for name, kind, module, text in itertools.chain(_topics(), _docstrings()):
        # A name can be defined twice (per platform, in if/else or try/except); the first
        # definition in source order is the one documented.
        base = f"topic:{name}" if kind == "topic" else name
        if base in seen:
            continue
        seen.add(base)
        metadata = {
            "source": "pydoc-topics" if kind == "topic" else "docstring",
            "module": module or None,
            "kind": kind,
        }
        for i, passage in enumerate(_split(_paragraphs(text), max_words), start=1):
            yield Document(base if i == 1 else f"{base}#{i}", passage, name, dict(metadata))


def _topics() -> Iterator[tuple[str, str, str, str]]:
    # Imported here, not at the top: the table is ~0.7 MB of text that readers of corpus
    # files never need. It is a plain data module, safe to import.
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield name, "topic", "", topics[name]


def _docstrings() -> Iterator[tuple[str, str, str, str]]:
    root = sysconfig.get_paths()["stdlib"]
    files = {m: _module_files(root, m) for m in _WELL_KNOWN}
    # One docstring from each well-known module in turn, until all are exhausted; files are
    # parsed only when their turn comes, so a small limit reads few of them.
    iterators: list[Iterator[tuple[str, str, str, str]]] = [
        itertools.chain.from_iterable(_file_docs(root, p) for p in paths)
        for paths in files.values()
        if paths
    ]
    while iterators:
        alive = []
        for it in iterators:
            item = next(it, None)
            if item is not None:
                yield item
                alive.append(it)
        iterators = alive
    known = {m for m, paths in files.items() if paths}
    for path in _walk(root):
        top = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".py")
        if top not in known:
            yield from _file_docs(root, path)


def _module_files(root: str, module: str) -> list[str]:
    """The source files of a top-level module or package, sorted; empty when it has none."""
    package = os.path.join(root, module)
    if os.path.isfile(os.path.join(package, "__init__.py")):
        return list(_walk(package))
    single = package + ".py"
    return [single] if os.path.isfile(single) else []


def _walk(top: str) -> Iterator[str]:
    """Public .py files under ``top`` in a fixed order (each package's __init__ first)."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIP_DIRS
            and not d.startswith(("_", ".", "config-"))
            and os.path.isfile(os.path.join(dirpath, d, "__init__.py"))
        )
        files = [
            f
            for f in filenames
            if f.endswith(".py") and (f == "__init__.py" or not f.startswith(("_", "test_")))
        ]
        for f in sorted(files, key=lambda f: (f != "__init__.py", f)):
            yield os.path.join(dirpath, f)


def _file_docs(root: str, path: str) -> Iterator[tuple[str, str, str, str]]:
    """(qualified name, kind, module, docstring) for the documented objects of one file."""
    rel = os.path.relpath(path, root).removesuffix(".py").split(os.sep)
    module = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
    try:
        with open(path, "rb") as f:
            source = f.read()
        # Old files may hold invalid escapes; parsing them warns, and that is not ours to report.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=path)
    except (OSError, SyntaxError, ValueError):
        return
    doc = _docstring(tree)
    if doc and _useful(doc):
        yield module, "module", module, doc
    yield from _definitions(tree.body, module, module, in_class=False)


def _definitions(
    body: list[ast.stmt], prefix: str, module: str, *, in_class: bool
) -> Iterator[tuple[str, str, str, str]]:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith("_"):
                continue
            name = f"{prefix}.{node.name}"
            doc = _docstring(node)
            if isinstance(node, ast.ClassDef):
                if doc and _useful(doc):
                    yield name, "class", module, doc
                yield from _definitions(node.body, name, module, in_class=True)
            elif doc and _useful(doc):
                yield name, "method" if in_class else "function", module, doc
        elif isinstance(node, (ast.If, ast.Try, ast.With, *_TRY_STAR)):
            # Definitions per platform or per available C accelerator live in these blocks.
            for block in (
                getattr(node, "body", []),
                getattr(node, "orelse", []),
                *(h.body for h in getattr(node, "handlers", [])),
                getattr(node, "finalbody", []),
            ):
                yield from _definitions(block, prefix, module, in_class=in_class)


_TRY_STAR: tuple[type[ast.stmt], ...] = (ast.TryStar,) if hasattr(ast, "TryStar") else ()


def _docstring(node: ast.AST) -> str | None:
    # Not ast.get_docstring: its cleaning imports inspect (and inspect's own imports), and
    # the whitespace is collapsed here anyway.
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr):
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None


def _useful(doc: str) -> bool:
    return sum(len(p.split()) for p in _paragraphs(doc)) >= _MIN_DOC_WORDS


def _paragraphs(text: str) -> list[str]:
    """Clean paragraphs: reST reduced to text, doctest blocks and directives dropped."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text.expandtabs()):
        kept = []
        for line in block.splitlines():
            line = line.strip()
            if line.startswith(">>>"):
                break  # a doctest block runs to the end of its paragraph
            if not line or _UNDERLINE.fullmatch(line) or _DIRECTIVE.match(line):
                continue
            if line in ("::", "-[ Footnotes ]-"):
                continue
            kept.append(line[:-1] if line.endswith("::") else line)
        if kept:
            para = _SPACE.sub(" ", " ".join(kept))
            para = _ROLE.sub(r"\1", para)
            para = _OLD_QUOTE.sub(r"\1", para)
            para = _LITERAL.sub(r"\1", para)
            para = _LINK.sub(r"\1", para)
            para = _INTERPRETED.sub(r"\1", para).strip()
            if para:
                out.append(para)
    return out


def _split(paragraphs: list[str], max_words: int) -> Iterator[str]:
    """Pack paragraphs into the fewest passages of at most ``max_words`` words, evenly sized.

    Paragraphs stay whole where they fit; a longer one is cut between sentences, and a
    sentence longer than a passage between words. Among the packings with the fewest
    passages, the one closest to equal sizes wins (130 words: 65 + 65, not 120 + 10), and
    a cut inside a paragraph counts against a packing.
    """
    units: list[tuple[str, int, bool]] = []  # (text, words, starts a paragraph)
    for para in paragraphs:
        words = para.split()
        if len(words) <= max_words:
            units.append((para, len(words), True))
            continue
        first = True
        for sentence in _SENTENCE.split(para):
            sw = sentence.split()
            for i in range(0, len(sw), max_words):
                piece = sw[i : i + max_words]
                units.append((" ".join(piece), len(piece), first))
                first = False
    if not units:
        return
    prefix = [0, *itertools.accumulate(n for _, n, _ in units)]
    total = prefix[-1]
    target = total / math.ceil(total / max_words)
    mid_paragraph = target * target / 4
    # best[i]: (passages, cost, start of the last passage) for the first i units. A passage
    # holds at most max_words units, so each step looks back that far at most: linear.
    best: list[tuple[int, float, int]] = [(0, 0.0, 0)]
    for i in range(1, len(units) + 1):
        options = []
        for j in range(i - 1, -1, -1):
            span = prefix[i] - prefix[j]
            if span > max_words and j < i - 1:
                break
            count, cost, _ = best[j]
            penalty = mid_paragraph if j > 0 and not units[j][2] else 0.0
            options.append((count + 1, cost + (span - target) ** 2 + penalty, j))
        best.append(min(options))
    cuts = []
    i = len(units)
    while i > 0:
        cuts.append(best[i][2])
        i = best[i][2]
    bounds = [*reversed(cuts), len(units)]
    for start, end in itertools.pairwise(bounds):
        parts = []
        for k in range(start, end):
            if k > start:
                parts.append("\n\n" if units[k][2] else " ")
            parts.append(units[k][0])
        yield "".join(parts)
