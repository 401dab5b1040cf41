"""Fixtures every test module shares."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


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
