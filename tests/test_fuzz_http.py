"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis), against a real
``twostage serve`` process over a small real collection, with the token (writes and model
updates run too). A short, fixed-seed run for CI; ``benches/fuzz.py http`` is the long one.

Checks on every answer: no 5xx; a status code, content type and body that the schema
documents; schema-violating requests refused; every error in the one envelope
``{"error": {"code", "message"}}``. Failures that are known server bugs (tests/fuzzing.py,
``KNOWN_HTTP_BUGS``, each reported) make the test xfail and name them; anything else fails it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("schemathesis", reason="needs schemathesis (requirements-dev.txt)")
pytest.importorskip("fastapi", reason="needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="needs uvicorn")

import fuzzing

EXAMPLES = int(os.environ.get("TWOSTAGE_FUZZ_HTTP_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzzing.Server]:
    work: Path = tmp_path_factory.mktemp("fuzz-http")
    col, roots = fuzzing.build_collection(work, docs=30)
    with fuzzing.serve(col, roots, work) as srv:
        yield srv


def test_http_api_from_its_schema(server: fuzzing.Server) -> None:
    report = fuzzing.fuzz_http(server, examples=EXAMPLES, seed=0)
    print(report.summary())
    # Every operation ran, each with more than its coverage cases.
    assert len(report.per_operation) >= 15, report.per_operation
    assert report.executions >= 300, report.summary()
    assert server.proc.poll() is None, server.log_tail()
    new = report.new()
    assert not new, "new failures:\n" + "\n".join(f.show() for f in new)
    known = sorted({f.known for f in report.known() if f.known})
    if known:
        pytest.xfail(
            "known server bugs, reported (tests/fuzzing.py KNOWN_HTTP_BUGS): "
            + "; ".join(f"{k}: {fuzzing.KNOWN_HTTP_BUGS[k]}" for k in known)
        )
