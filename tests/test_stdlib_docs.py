"""The demo's corpus: the standard library's documentation (twostage.stdlib_docs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from twostage import stdlib_docs as stdlib_docs_module
from twostage.document import Document
from twostage.errors import InvalidArgument
from twostage.stdlib_docs import stdlib_docs


@pytest.fixture(scope="module")
def all_docs() -> list[Document]:
    return list(stdlib_docs())


def test_stdlib_docs_ids_unique_and_shapes(all_docs: list[Document]) -> None:
    ids = [d.id for d in all_docs]
    assert len(ids) == len(set(ids))
    assert len(all_docs) > 2000
    for d in all_docs:
        assert isinstance(d, Document)
        assert 1 <= len(d.text.split()) <= 120, d.id
        assert d.metadata is not None and d.metadata["source"] in ("pydoc-topics", "docstring")
        if d.metadata["source"] == "pydoc-topics":
            assert d.id.split("#")[0] == f"topic:{d.title}" and d.metadata["module"] is None
        else:
            assert d.id.split("#")[0] == d.title
            assert d.title.startswith(d.metadata["module"])
        assert ">>>" not in d.text and ":func:`" not in d.text


def test_stdlib_docs_order_topics_then_well_known(all_docs: list[Document]) -> None:
    kinds = [d.metadata["source"] for d in all_docs if d.metadata]
    n_topics = kinds.count("pydoc-topics")
    assert n_topics > 100 and set(kinds[:n_topics]) == {"pydoc-topics"}
    assert all_docs[0].id == "topic:assert"
    modules = {
        d.metadata["module"].split(".")[0]
        for d in all_docs[:2000]
        if d.metadata and d.metadata["module"]
    }
    for name in ("json", "os", "pathlib", "re", "collections", "functools", "subprocess"):
        assert name in modules
    for name in ("asyncio", "typing", "dataclasses", "logging", "urllib", "http", "csv"):
        assert name in modules
    for name in ("random", "statistics", "threading", "sqlite3", "argparse", "shutil"):
        assert name in modules
    by_id = {d.id: d for d in all_docs}
    assert "json.dumps" in by_id and "pathlib.Path.glob" in by_id
    assert by_id["json.dumps"].metadata == {
        "source": "docstring",
        "module": "json",
        "kind": "function",
    }
    assert by_id["json.dumps#2"].title == "json.dumps"
    # Excluded trees never appear.
    assert not any(m.split(".")[0] in ("test", "idlelib", "lib2to3") for m in modules)


def test_stdlib_docs_deterministic_and_limit() -> None:
    first = list(stdlib_docs(300))
    assert len(first) == 300
    assert first == list(stdlib_docs(300))
    assert list(stdlib_docs(100)) == first[:100]
    assert list(stdlib_docs(0)) == []


def test_stdlib_docs_max_words() -> None:
    docs = list(stdlib_docs(800, max_words=40))
    assert len(docs) == 800
    assert max(len(d.text.split()) for d in docs) <= 40
    with pytest.raises(InvalidArgument, match="max_words"):
        stdlib_docs(max_words=0)
    with pytest.raises(InvalidArgument, match="limit"):
        stdlib_docs(-1)


def test_split_prefers_even_passages_on_paragraph_boundaries() -> None:
    paras = ["a " * 50, "b " * 30, "c " * 50]  # 130 words: two passages, not 120 + 10
    passages = list(stdlib_docs_module._split([p.strip() for p in paras], 120))
    assert sorted(len(p.split()) for p in passages) == [50, 80]
    assert all("\n\n" in p or len(p.split()) == 50 for p in passages)
    long_sentence = " ".join(f"w{i}" for i in range(250))
    assert [len(p.split()) for p in stdlib_docs_module._split([long_sentence], 100)] == [
        100,
        100,
        50,
    ]


def test_markup_cleanup() -> None:
    text = """Return :func:`json.dumps` of ``obj``, see :class:`~pathlib.Path` and `name'.

    Example::

        >>> dumps(1)
        '1'

    .. versionadded:: 3.9

    Heading
    -------
    Body   text."""
    assert stdlib_docs_module._paragraphs(text) == [
        "Return json.dumps of obj, see pathlib.Path and name.",
        "Example:",
        "Heading Body text.",
    ]


def test_stdlib_docs_2000_in_a_few_seconds() -> None:
    start = time.perf_counter()
    docs = list(stdlib_docs(2000))
    elapsed = time.perf_counter() - start
    assert len(docs) == 2000
    assert elapsed < 8, f"2000 passages took {elapsed:.1f}s"


def test_stdlib_docs_imports_no_stdlib_module() -> None:
    # A fresh interpreter: pytest's own imports would hide an import made by the corpus code.
    code = textwrap.dedent(
        """
        import json, sys
        from twostage.stdlib_docs import stdlib_docs
        before = set(sys.modules)
        n = sum(1 for _ in stdlib_docs())
        print(json.dumps({"n": n, "new": sorted(set(sys.modules) - before)}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout)
    assert result["n"] > 2000
    # pydoc_data.topics is read on purpose (a data table); sysconfig loads its own build
    # data table when asked for the stdlib path. Nothing else may appear.
    unexpected = [
        m
        for m in result["new"]
        if m not in ("pydoc_data", "pydoc_data.topics") and not m.startswith("_sysconfigdata")
    ]
    assert unexpected == []
