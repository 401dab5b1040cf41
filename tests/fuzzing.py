"""Fuzzing harnesses shared by the CI tests (tests/test_fuzz_*.py, seconds) and the long runs
(benches/fuzz.py, minutes): the HTTP API from its OpenAPI schema, and the corpus readers on
arbitrary bytes.

HTTP: a real ``twostage serve`` process on loopback over a small real collection (stdlib
passages embedded by MiniLM, a tiny random cross-encoder as the reranker), driven by
schemathesis-generated requests for every operation in its ``/openapi.json``, valid
(positive) and schema-violating (negative), with the token so the write endpoints run too.
Checks: no 5xx, documented status codes and content types, responses that match their
schema, schema-violating input refused, and every error in the envelope
``{"error": {"code", "message"}}``. Distinct failures are collected (not just the first), so
one run reports everything it found.

Readers: one execution writes the fuzzer's bytes to a file and reads it through
``read_corpus`` / ``count_lines``; the only outcomes allowed are records (a document or a
per-line error) and the errors ``read_corpus`` documents (``InvalidArgument``, and
``OSError`` for a damaged gzip stream).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# ---- the HTTP API ---------------------------------------------------------------------------


def build_collection(folder: Path, docs: int = 30) -> tuple[Path, Path]:
    """A small real collection and a model root (tests/tinyce.py) under ``folder``."""
    from tinyce import model_root
    from twostage.collection import Collection
    from twostage.encoder import Encoder
    from twostage.stdlib_docs import stdlib_docs

    col = folder / "col"
    with Collection.create(col, Encoder.load("minilm-l6")) as c:
        c.add(list(stdlib_docs(docs)))
    return col, model_root(folder / "models")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    token: str
    log: Path
    proc: subprocess.Popen[bytes]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def serve(col: Path, roots: Path, workdir: Path, *extra: str) -> Iterator[Server]:
    """``python -m twostage serve`` on a free loopback port; SIGTERM on exit."""
    import httpx

    token = "fuzz-" + secrets.token_hex(16)
    token_file = workdir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "TWOSTAGE_TOKEN"}
    cmd = [
        sys.executable, "-m", "twostage", "serve", str(col), "--port", str(port),
        "--token-file", str(token_file), "--model-root", str(roots),
        "--reranker", str(roots / "ce1"), "--precision", "fp32", "--no-sanity-check",
        # Bounded work per request: a fuzzer's batch upsert embeds at most 8 documents.
        "--max-batch-docs", "8", "--log-level", "warning", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url, token, log, proc)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}):\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in 120 s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def envelope_check(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer has the one envelope: ``{"error": {"code", "message"[, "details"]}}``."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} with a body that is not JSON: {response.content[:200]!r}"
        ) from None
    err = body.get("error") if isinstance(body, dict) else None
    ok = (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(err, dict)
        and {"code", "message"} <= set(err) <= {"code", "message", "details"}
        and isinstance(err["code"], str)
        and err["code"]
        and isinstance(err["message"], str)
        and err["message"]
    )
    if not ok:
        raise AssertionError(f"{response.status_code} without the error envelope: {body!r}")
    return None


@dataclass
class HttpFailure:
    operation: str
    mode: str
    check: str
    status: int | None
    message: str
    curl: str
    known: str | None  # the known bug this is, or None for a new finding

    def key(self) -> tuple[str, str, int | None, str]:
        return (self.operation, self.check, self.status, self.known or self.message[:160])

    def show(self) -> str:
        tag = f"[known: {self.known}] " if self.known else ""
        curl = self.curl if len(self.curl) < 600 else self.curl[:500] + " ... " + self.curl[-80:]
        return (
            f"{tag}{self.operation} ({self.mode}) {self.check} -> {self.status}\n"
            f"  {self.message.strip()[:600]}\n  reproduce: {curl}"
        )


@dataclass
class HttpReport:
    executions: int = 0
    per_operation: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[tuple[str, str, int | None, str], HttpFailure] = field(default_factory=dict)
    client_errors: Counter[str] = field(default_factory=Counter)

    def new(self) -> list[HttpFailure]:
        return [f for f in self.failures.values() if f.known is None]

    def known(self) -> list[HttpFailure]:
        return [f for f in self.failures.values() if f.known is not None]

    def summary(self) -> str:
        lines = [
            f"executions: {self.executions}",
            "statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
            "per operation: "
            + ", ".join(f"{op} {n}" for op, n in sorted(self.per_operation.items())),
            f"distinct failures: {len(self.failures)} "
            f"({len(self.new())} new, {len(self.known())} known)",
        ]
        if self.client_errors:
            lines.append(f"requests the client could not send: {dict(self.client_errors)}")
        lines += [f.show() for f in self.failures.values()]
        return "\n".join(lines)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _has_lone_surrogate(case: Any) -> bool:
    parts = [case.body, case.path_parameters, case.query]
    for s in _strings(parts):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def _bool_for_int(case: Any) -> bool:
    """A JSON boolean where the schema wants an integer or number (pydantic's lax mode)."""
    numeric = {"k", "depth", "budget_ms", "seed", "share"}
    body = case.body if isinstance(case.body, dict) else {}

    def walk(obj: Any) -> bool:
        if isinstance(obj, dict):
            return any((k in numeric and isinstance(v, bool)) or walk(v) for k, v in obj.items())
        return False

    return walk(body)


def _sent_body(response: Any) -> bytes:
    body = getattr(getattr(response, "request", None), "body", None)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return body if isinstance(body, bytes) else b""


def _big_int(case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    return any(
        isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63
        for v in body.values()
    )


# What the server does wrong as this is written, each with a name: the CI test reports these
# as known (xfail, listing them) and fails on anything else. The first three were known and
# being fixed when the fuzzing started; the rest were found by it and reported. Remove an
# entry when its fix lands: the test then fails if it comes back.
KNOWN_HTTP_BUGS: dict[str, str] = {
    # Every bug found so far is fixed (RELIABILITY.md lists them): a new entry here names one
    # that is reported and not yet fixed, so the test xfails on it alone.
}


def classify(check: str, status: int | None, case: Any, response: Any, message: str) -> str | None:
    """The known, still open bug a failure is an instance of, or None (a fixed one is new)."""
    label = _pattern(check, status, case, response, message)
    return label if label in KNOWN_HTTP_BUGS else None


def _pattern(check: str, status: int | None, case: Any, response: Any, message: str) -> str | None:
    """Which pattern of a bug found earlier a failure matches, or None."""
    label = case.operation.label
    if status is not None and status >= 500:
        if _has_lone_surrogate(case):
            return "surrogate-500"
        if label == "POST /experiments" and _big_int(case):
            return "seed-overflow-500"
        if label in ("PUT /models/reranker", "POST /experiments") and any(
            len(x) > 255 for x in _strings(case.body)
        ):
            return "long-path-500"
        return None
    if check == "negative_data_rejection" and "`Authorization`" in message:
        return "auth-required-in-schema"
    if check == "negative_data_rejection" and status == 200 and _bool_for_int(case):
        return "bool-as-int"
    if check == "content_type_conformance" and label == "GET /metrics":
        return "metrics-content-type"
    if check == "status_code_conformance" and (
        (status == 409 and "rollback" in label)
        or (status == 403 and label == "PUT /models/reranker")
    ):
        return "undocumented-status"
    if status == 400 and b"error parsing the body" in (response.content or b""):
        try:
            _sent_body(response).decode("utf-8")
        except UnicodeDecodeError:
            return "utf8-400"
        return "parse-400"
    return None


def fuzz_http(
    server: Server,
    *,
    examples: int,
    seed: int = 0,
    modes: tuple[str, ...] = ("positive", "negative"),
    coverage: bool = True,
    edges: bool = True,
    operations: Callable[[str], bool] = lambda label: True,
    progress: Callable[[str], None] | None = None,
) -> HttpReport:
    """Every operation of the server's schema: schemathesis' coverage cases (with
    ``coverage``), the schema's own examples, then ``examples`` generated cases per mode, then
    (with ``edges``) one valid request with each field in turn set to each of ``EDGE_VALUES``.
    Collects distinct failures; never stops at the first."""
    import hypothesis
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    auth = {"Authorization": f"Bearer {server.token}"}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
        envelope_check,
    ]
    report = HttpReport()
    session = requests.Session()

    seeds: dict[str, Any] = {}

    def run_case(case: Any, mode: str, edge: tuple[str, Any] | None = None) -> None:
        label = case.operation.label
        report.executions += 1
        report.per_operation[label] += 1
        if label in GOOD_BODIES and label not in seeds and isinstance(case.body, dict):
            seeds[label] = case.derive()
            seeds[label].body = GOOD_BODIES[label]
        elif (
            mode == "positive"
            and label not in seeds
            and (isinstance(case.body, dict) or case.path_parameters)
        ):
            seeds[label] = case.derive()
        try:
            response = case.call(base_url=server.url, headers=auth, session=session, timeout=120)
        except (requests.RequestException, UnicodeError, ValueError) as e:
            # Requests that cannot be put on the wire (a path with a lone surrogate, a header
            # that is not latin-1) say nothing about the server.
            report.client_errors[type(e).__name__] += 1
            return
        report.statuses[response.status_code] += 1
        if label == "POST /experiments" and response.status_code == 201:
            # One experiment runs at a time: stop it, so the next request gets as far.
            with contextlib.suppress(Exception):
                exp_id = response.json()["id"]
                session.post(f"{server.url}/experiments/{exp_id}/stop", headers=auth, timeout=60)
        if edge is not None:
            problem = _edge_accepted(edge, response.status_code)
            if problem:
                known = "bool-as-int" if problem.startswith("a boolean") else None
                f = HttpFailure(
                    label, mode, "edge_value_refused", response.status_code, problem,
                    case.as_curl_command(headers=auth), known,
                )  # fmt: skip
                report.failures.setdefault(f.key(), f)
        try:
            case.validate_response(response, checks=checks, headers=auth)
        except FailureGroup as group:
            for failure in group.exceptions:
                check = _check_name(failure)
                if check == "not_a_server_error" and _shed(response):
                    continue
                f = HttpFailure(
                    operation=label,
                    mode=mode,
                    check=check,
                    status=response.status_code,
                    message=f"{failure.title}: {failure.message}",
                    curl=case.as_curl_command(headers=auth),
                    known=classify(
                        check, response.status_code, case, response, str(failure.message)
                    ),
                )
                report.failures.setdefault(f.key(), f)
        except AssertionError as e:  # a check outside schemathesis' own failure types
            f = HttpFailure(
                label, mode, "assertion", response.status_code, str(e),
                case.as_curl_command(headers=auth), None,
            )  # fmt: skip
            report.failures.setdefault(f.key(), f)

    common = settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
        verbosity=hypothesis.Verbosity.quiet,
    )
    for result in schema.get_all_operations():
        op = result.ok()
        if not operations(op.label):
            continue
        if coverage:
            # schemathesis' deterministic phase: boundary values, every missing or mistyped
            # field, wrong types for each parameter, unexpected methods.
            generation = schema.config.generation_for(operation=op, phase="coverage")
            for case in schema.iter_coverage_cases(
                op,
                generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                generation_config=generation,
            ):
                run_case(case, "coverage")
        strategies: list[tuple[str, Any]] = [
            ("example", s) for s in schema.get_strategies_from_examples(op)
        ]
        for mode in modes:
            gen = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
            strategies.append((mode, op.as_strategy(generation_mode=gen)))
        for mode, strategy in strategies:
            n = 1 if mode == "example" else examples
            run = given(case=strategy)(_bind(run_case, mode))
            try:
                hypothesis.seed(seed)(settings(common, max_examples=n)(run))()
            except hypothesis.errors.Unsatisfiable:
                pass
        if edges and op.label in seeds:
            for mutated, edge in _edge_cases(seeds[op.label]):
                run_case(mutated, "edge", edge)
        if progress:
            progress(f"{op.label}: {report.per_operation[op.label]} requests")
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"the server died ({server.proc.returncode}) during {op.label}:\n"
                + server.log_tail()
            )
    return report


def _shed(response: Any) -> bool:
    """A 503 by design: a search shed under load or past its deadline in the queue
    (``overloaded``, with Retry-After), or the service still loading (``not_ready``)."""
    if response.status_code != 503:
        return False
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return code in ("overloaded", "not_ready")


# Requests that get all the way through (given the collection and model root `serve` sets
# up): the edge values are tried in these, one field at a time.
GOOD_BODIES: dict[str, dict[str, Any]] = {
    "POST /search": {
        "query": "read a gzip file", "k": 3, "depth": 5, "budget_ms": 5000.0, "rerank": True,
        "filter": {"kind": "topic"}, "first_stage": "hybrid",
    },
    "POST /documents": {
        "documents": [{"id": "edge-1", "text": "edge text", "title": "t", "metadata": {"a": 1}}]
    },
    "PUT /models/reranker": {"path": "ce2", "precision": "fp32"},
    "POST /experiments": {
        "candidate": {"path": "ce2", "precision": "fp32"}, "control": "live", "share": 0.5,
        "method": "team_draft", "seed": 1,
    },
    "POST /feedback": {"impression_id": "imp-1", "clicks": ["topic:assert"]},
}  # fmt: skip

# Values that broke servers before: lone surrogates, NUL, booleans where numbers go (JSON
# parsers in lax mode read true as 1), integers past int64 (SQLite, numpy), huge floats, deep
# or empty containers, very long strings.
EDGE_VALUES: list[Any] = [
    "\ud800", "x\udfffy", "\x00", "", " ", "x" * 10_000, True, False, 0, -1, 2**31, 2**63,
    -(2**63) - 1, 2**64, 10**30, 1e308, -1e308, 5e-324, [], {}, None, [[[[[]]]]],
    {"\ud800": 1}, ["\ud800"], {"k": "\udc80"},
]  # fmt: skip


def _edge_cases(seed: Any) -> Iterator[tuple[Any, tuple[str, Any]]]:
    """``seed`` with one field at a time (top level, one level into objects and into the first
    object of a list, path parameters) set to each edge value."""
    body = seed.body if isinstance(seed.body, dict) else None
    places: list[tuple[str, ...]] = []
    if body is not None:
        for k, v in body.items():
            places.append((k,))
            inner = v[0] if isinstance(v, list) and v and isinstance(v[0], dict) else v
            if isinstance(inner, dict):
                places += [(k, k2) for k2 in inner]
    for path in places:
        original = _get(body, path)
        for value in EDGE_VALUES:
            case = seed.derive()
            case.body = _put(body, path, value)
            yield case, (".".join(path), (original, value))
    for name in seed.path_parameters:
        for value in EDGE_VALUES:
            if isinstance(value, str) and value:
                case = seed.derive()
                case.path_parameters = {**seed.path_parameters, name: value}
                yield case, (name, (seed.path_parameters[name], value))


def _get(body: Any, path: tuple[str, ...]) -> Any:
    v = body[path[0]]
    if len(path) == 2:
        v = (v[0] if isinstance(v, list) else v)[path[1]]
    return v


def _put(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    if len(path) == 1:
        out[path[0]] = value
    else:
        v = out[path[0]]
        (v[0] if isinstance(v, list) else v)[path[1]] = value
    return out


def _edge_accepted(edge: tuple[str, Any], status: int) -> str | None:
    """Why accepting this edge value is wrong, or None."""
    if status >= 300:
        return None
    field, (original, value) = edge
    if (
        isinstance(value, bool)
        and isinstance(original, (int, float))
        and not isinstance(original, bool)
    ):
        return f"a boolean ({value}) for the number field {field!r} was accepted"
    if any(not _utf8(s) for s in _strings(value)):
        return f"a lone surrogate in {field!r} was accepted (it cannot be stored or echoed)"
    return None


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bind(fn: Callable[[Any, str], None], mode: str) -> Callable[[Any], None]:
    def run(case: Any) -> None:
        fn(case, mode)

    return run


def _check_name(failure: Any) -> str:
    checks = getattr(type(failure), "checks", ()) or ()
    if len(checks) == 1:
        return str(checks[0])
    title = str(getattr(failure, "title", ""))
    if "envelope" in title or "envelope" in str(getattr(failure, "message", "")):
        return "envelope_check"
    return checks[0] if checks else type(failure).__name__


# ---- the corpus readers ---------------------------------------------------------------------

# (format argument, file name): every reader, through auto-detection and explicitly.
READER_TARGETS: list[tuple[str, str]] = [
    ("auto", "corpus.jsonl"),
    ("auto", "corpus.csv"),
    ("auto", "corpus.tsv"),
    ("auto", "corpus.txt"),
    ("jsonl", "corpus.data"),
    ("csv", "corpus.data"),
    ("text", "corpus.data"),
]


class ReaderBug(AssertionError):
    """A reader broke its contract on some input."""


def read_bytes(data: bytes, fmt: str, name: str, folder: Path, **kwargs: Any) -> int:
    """One execution: ``data`` as a corpus file read through ``read_corpus`` (and
    ``count_lines``). Returns the records read; raises ``ReaderBug`` on a contract breach."""
    from twostage.document import Document
    from twostage.errors import InvalidArgument
    from twostage.sources import Record, count_lines, read_corpus

    path = folder / name
    path.write_bytes(data)
    n = 0
    try:
        for rec in read_corpus(path, format=fmt, **kwargs):  # type: ignore[arg-type]
            if not isinstance(rec, Record) or (rec.doc is None) == (rec.error is None):
                raise ReaderBug(f"not one of doc/error: {rec!r}")
            if rec.doc is not None:
                d = rec.doc
                if not isinstance(d, Document) or not (d.text.strip() or d.title.strip()):
                    raise ReaderBug(f"an empty or foreign document: {rec!r}")
                for s in (d.id, d.text, d.title):
                    s.encode("utf-8")  # a surrogate here would break the tokenizer and store
                if d.metadata is not None:
                    json.dumps(d.metadata, ensure_ascii=False).encode("utf-8")
            elif not isinstance(rec.error, str) or not rec.error:
                raise ReaderBug(f"an error record without a message: {rec!r}")
            n += 1
    except (InvalidArgument, OSError):
        # The documented refusals: a CSV without the named columns (InvalidArgument) and a
        # damaged gzip stream (OSError, after the records before the damage).
        pass
    except ReaderBug:
        raise
    except Exception as e:
        raise ReaderBug(f"{fmt}/{name}: {type(e).__name__}: {e}") from e
    try:
        count_lines(path)
    except OSError:
        pass
    except Exception as e:
        raise ReaderBug(f"count_lines: {type(e).__name__}: {e}") from e
    return n


SEEDS: list[bytes] = [
    b'{"_id": "1", "title": "HNSW", "text": "A graph index.", "metadata": {"a": 1}}\n'
    b'{"id": 2, "text": "second"}\n\n{"_id": 3.5, "text": null, "title": "t"}\n',
    b'_id,title,text,lang\n1,HNSW,A graph index.,en\n2,,"multi\nline",de\n',
    b"_id\ttitle\ttext\n1\tT\tsome text\n",
    b"first note\n\nthird line\r\n\xef\xbb\xbfbom\n",
    b"\xef\xbb\xbf" + b'{"_id": "bom", "text": "x"}\n',
    b'{"_id": "\\ud800", "text": "lone"}\n{"_id": "a", "text": "\\udc80"}\n',
    b'{"_id": "x", "text": "\xff\xfe"}\n[1, 2]\n"str"\n{"_id": true, "text": "t"}\n',
]


def reader_target(data: bytes) -> tuple[str, str, bool, bytes]:
    """A fuzzer's input as (format, file name, gzip it?, file bytes): the first byte picks
    the reader and gzip, the rest is the file."""
    if not data:
        return (*READER_TARGETS[0], False, b"")
    fmt, name = READER_TARGETS[data[0] % len(READER_TARGETS)]
    return fmt, name, bool(data[0] & 0x80), data[1:]


def read_one(folder: Path, data: bytes) -> int:
    """One execution on a fuzzer's input (see ``reader_target``)."""
    fmt, name, gz, body = reader_target(data)
    return read_bytes(gzip_bytes(body) if gz else body, fmt, name, folder)


def reader_inputs() -> Any:
    """A hypothesis strategy for ``read_one``: random bytes, the seeds with bytes spliced
    in, and truncated gzip streams of the seeds."""
    from hypothesis import strategies as st

    body = st.one_of(
        st.binary(max_size=512),
        st.tuples(st.sampled_from(SEEDS), st.binary(max_size=64), st.integers(0, 400)).map(
            lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
        ),
        st.sampled_from(SEEDS)
        .map(gzip_bytes)
        .flatmap(lambda z: st.integers(0, len(z)).map(lambda n: z[:n])),
    )
    # The gzip bit off for truncated streams would only re-wrap them whole: both ways.
    return st.tuples(st.integers(0, 255), body).map(lambda t: bytes([t[0]]) + t[1])


def gzip_bytes(data: bytes) -> bytes:
    import gzip

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="twostage-fuzz-") as d:
        yield Path(d)
