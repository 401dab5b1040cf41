"""Fixtures every test module shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


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
