"""Every command in the README runs as written.

The README's shell and Python blocks are extracted and run, in order, in an empty folder
outside the repository that holds what the README assumes a user has: a BEIR folder named
``scifact/`` (here 120 abstracts and 4 test claims judged on them, from the SciFact sample
the package ships) and the model folders its placeholders name (built from the shipped models).
``twostage serve`` is started in the background and the next block's ``curl`` talks to it.

Left out, each for a stated reason (``SKIPPED``): the quick start and development commands
(``./dev``, ``cargo``, the repository's own pytest and benches: they are what CI runs), and
``pip install`` lines (``tests/test_wheel.py`` installs the wheel into a fresh venv).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "python" / "twostage"
BIN = Path(sys.executable).parent
DOCS = 120
QUERIES = 4

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# A command that starts with one of these is not run here; the reason is in the docstring.
SKIPPED = ("./dev", "cargo ", ".venv/bin/python", "pip install")
# Folders and files the README's examples name as if the user had them.
PLACEHOLDER_MODELS = {"my-encoder": "minilm-l6", "path/to/cross-encoder": "twostage-rerank"}


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block, in order."""
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    ]


def shell_commands(body: str) -> list[str]:
    """One command per line (a trailing backslash continues it); comments dropped."""
    out: list[str] = []
    pending = ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            out.append(line)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder with ``scifact/`` (BEIR layout) and the placeholder model folders."""
    work = tmp_path_factory.mktemp("readme")
    beir = work / "scifact"
    (beir / "qrels").mkdir(parents=True)
    with gzip.open(PACKAGE / "data" / "scifact-1k.corpus.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    qrels = [
        line.split("\t")
        for line in (PACKAGE / "data" / "scifact-1k.qrels.tsv").read_text().splitlines()[1:]
    ]
    # The first QUERIES judged claims and their abstracts, then others up to DOCS: eval's cost
    # grows with the queries (every one is reranked at every depth), not with the corpus.
    qids = list(dict.fromkeys(q for q, _, _ in qrels))[:QUERIES]
    kept = [r for r in qrels if r[0] in qids]
    judged = {d for _, d, _ in kept}
    docs.sort(key=lambda d: d["_id"] not in judged)
    docs = docs[:DOCS]
    assert judged <= {d["_id"] for d in docs}
    with gzip.open(beir / "corpus.jsonl.gz", "wt") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept)
    )
    with (beir / "queries.jsonl").open("w") as out:
        for line in (PACKAGE / "data" / "scifact-1k.queries.jsonl").read_text().splitlines():
            if json.loads(line)["_id"] in qids:
                out.write(line + "\n")
    for placeholder, shipped in PLACEHOLDER_MODELS.items():
        shutil.copytree(PACKAGE / "models" / shipped, work / placeholder)
    # "A new encoder" for `index reembed`: the shipped one reading 128 tokens instead of 256,
    # a different encoder by its fingerprint (its vectors differ on longer abstracts).
    settings = work / "my-encoder" / "twostage.json"
    cfg = json.loads(settings.read_text())
    cfg["max_length"] = 128
    settings.write_text(json.dumps(cfg, indent=2))
    return work


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "TWOSTAGE_HOME": str(work / ".cache-twostage"),
        "TWOSTAGE_PROGRESS_INTERVAL": "5",
    }


def _wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the README's serve command exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the README's serve command did not answer {url}/readyz in {seconds}s")


@pytest.fixture(scope="module")
def readme_blocks() -> list[tuple[str, str]]:
    found = blocks(README.read_text())
    assert found, "no fenced blocks in README.md"
    return found


def test_readme_has_what_this_test_runs(readme_blocks: list[tuple[str, str]]) -> None:
    """A README rewritten past the extraction would silently test nothing: say so."""
    langs = [lang for lang, _ in readme_blocks]
    assert langs.count("bash") >= 3 and langs.count("python") >= 3, langs
    runnable = [text for kind, text in steps(readme_blocks) if kind == "sh"]
    assert any(" serve " in c for c in runnable) and any("curl " in c for c in runnable)
    assert any(c.startswith("twostage eval") for c in runnable)


def steps(readme_blocks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The README's runnable steps in order: ``("sh", command)`` or ``("py", block)``."""
    out: list[tuple[str, str]] = []
    for lang, body in readme_blocks:
        if lang == "bash":
            out += [("sh", c) for c in shell_commands(body) if not c.startswith(SKIPPED)]
        elif lang == "python":
            out.append(("py", body))
    return out


def _run(argv: list[str], what: str, cwd: Path, env: dict[str, str]) -> str:
    """Run one step; its stdout, or a failure naming the step and its output."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"README step failed ({done.returncode}): {what}\n"
        f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
    )
    return done.stdout


def test_every_readme_command_runs_as_written(
    readme_blocks: list[tuple[str, str]], workdir: Path
) -> None:
    env = _env(workdir)
    server: subprocess.Popen[bytes] | None = None
    port = 0
    ran: list[str] = []
    try:
        for kind, text in steps(readme_blocks):
            t0 = time.perf_counter()
            if kind == "py":
                _run([sys.executable, "-c", text], text, workdir, env)
            elif re.search(r"\btwostage serve\b", text):
                port = free_port()
                server = subprocess.Popen(
                    ["bash", "-c", text.replace("--port 8000", f"--port {port}")],
                    cwd=workdir,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # killpg below ends bash and the server
                )
                _wait_ready(f"http://127.0.0.1:{port}", server)
            else:
                if "localhost:8000" in text:
                    assert server is not None, f"{text!r} needs the server the README starts"
                    text = text.replace("localhost:8000", f"localhost:{port}")
                out = _run(["bash", "-euo", "pipefail", "-c", text], text, workdir, env)
                if text.startswith("curl "):
                    assert json.loads(out)["hits"], f"{text}: no hits in {out[:500]}"
            ran.append(f"{time.perf_counter() - t0:6.1f} s  {kind}: {text.splitlines()[0][:70]}")
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    print(f"ran {len(ran)} README steps:", *ran, sep="\n")
