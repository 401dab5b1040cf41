"""The demo's corpus: the Python standard library's documentation on this machine.

A real corpus every machine has, with no download: the language reference topics that
``help()`` shows, then the docstrings of the standard library, read with ``ast`` (no module
is imported, so nothing runs), cleaned and split into passages. ``./dev demo`` indexes it,
and tests and benchmarks use it as a small real collection.

>>> from twostage.stdlib_docs import stdlib_docs
>>> docs = list(stdlib_docs(limit=3))
>>> [d.id for d in docs][0].startswith("topic:")
True
"""

from __future__ import annotations

import ast
import itertools
import math
import os
import re
import sysconfig
import warnings
from collections.abc import Iterator

from twostage.document import Document
from twostage.errors import InvalidArgument

__all__ = ["stdlib_docs"]

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
