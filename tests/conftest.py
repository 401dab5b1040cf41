"""Fixtures every test module shares."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Under pytest-xdist (`--dist loadgroup`, what CI runs) a test module runs on one worker, so
# its module fixtures are built once; the modules that use an expensive session fixture run on
# one worker together, so it is built once too (SciFact's collection takes ~90 s, a Ray cluster
# seconds and a good share of memory). Modules using several of them join their groups.
_SHARED_FIXTURES = ("scifact_collection", "ray_cluster")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    uses: dict[str, set[str]] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        names = set(getattr(item, "fixturenames", ())) & set(_SHARED_FIXTURES)
        uses.setdefault(module, set()).update(names)
    group = {f: f for f in _SHARED_FIXTURES}  # union-find over the fixtures

    def root(f: str) -> str:
        while group[f] != f:
            f = group[f]
        return f

    for names in uses.values():
        roots = sorted({root(f) for f in names})
        for r in roots[1:]:
            group[r] = roots[0]
    for item in items:
        module = item.nodeid.split("::")[0]
        names = uses[module]
        name = f"shared-{root(min(names))}" if names else module
        item.add_marker(pytest.mark.xdist_group(name))


def free_port() -> int:
    """A loopback port nothing listens on now, for a real server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def twostage_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the whole session: MiniLM is exported and quantised once."""
    home = tmp_path_factory.mktemp("twostage_home")
    old = os.environ.get("TWOSTAGE_HOME")
    os.environ["TWOSTAGE_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["TWOSTAGE_HOME"]
    else:
        os.environ["TWOSTAGE_HOME"] = old


@pytest.fixture(scope="session")
def scifact_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All of SciFact (5,183 abstracts) built once per session with the CLI, as a user
    would (minutes on 2 cores): tests open it read-only, or copy it before changing it."""
    import subprocess
    import sys

    corpus = SHARED / "data" / "scifact" / "corpus.jsonl.gz"
    if not corpus.is_file():
        pytest.skip(f"SciFact not found at {corpus} (the shared data sets sit beside the clone)")
    out = tmp_path_factory.mktemp("scifact") / "col"
    cmd = [sys.executable, "-m", "twostage", "index", "build", "--no-progress"]
    done = subprocess.run(
        [*cmd, "--corpus", str(corpus), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr
    assert "5183 documents from 5183 lines" in done.stdout, done.stdout
    return out


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One local Ray cluster (2 CPUs, no dashboard) for every distributed test: starting
    Ray costs seconds, so the tests share it and clean up their own actors."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (the [ray] extra)")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace="twostage-tests",
        ignore_reinit_error=True,
    )
    yield ray
    ray.shutdown()
