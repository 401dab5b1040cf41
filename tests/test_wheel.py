"""The way users get twostage: an abi3 wheel built by maturin, installed into a fresh
virtual environment, importable and searching there (not from the source tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATURIN = Path(sys.executable).with_name("maturin")

SMOKE = """
import numpy as np, twostage, pathlib
assert "site-packages" in twostage.__file__, twostage.__file__
ix = twostage.Index(8, dtype="f16")
ix.add(np.arange(100), np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32))
v = ix.get(7)
r = ix.search(v, k=3)
assert r.keys[0] == 7, r.keys
try:
    ix.search(np.ones(3, np.float32))
except twostage.errors.DimensionMismatch as e:
    print("ok", len(ix), str(e))
"""


@pytest.mark.slow
@pytest.mark.skipif(not MATURIN.exists(), reason="maturin is not installed in this environment")
def test_wheel_installs_into_fresh_venv_and_searches(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # Same profile and features as `./dev build`, so cargo reuses that build.
    subprocess.run(
        [str(MATURIN), "build", "--release", "--quiet", "--out", str(dist)],
        cwd=ROOT,
        check=True,
        timeout=1200,
    )
    (wheel,) = dist.glob("twostage-*.whl")
    assert "abi3" in wheel.name and "cp310" in wheel.name, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "twostage/_core.abi3.so",
        "twostage/_core.pyi",
        "twostage/py.typed",
        "twostage/models/twostage-rerank/model_int8.onnx",  # the shipped reranker
        "twostage/server/static/index.html",  # the search page
    ):
        assert expected in names, f"{expected} missing from {wheel.name}"
    assert any(n.startswith("twostage/data/scifact-1k") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=900, env=env
    )
    out = subprocess.run(
        [str(py), "-c", SMOKE],
        cwd=tmp_path,  # not the repo: the import must come from the installed wheel
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.stdout.startswith("ok 100 dimension mismatch"), out.stdout + out.stderr
    # The console script is installed and answers without the repository around it.
    cli = subprocess.run(
        [str(venv / "bin" / "twostage"), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert cli.returncode == 0 and cli.stdout.startswith("twostage 0.1.0"), cli.stdout + cli.stderr
