"""The long fuzz runs (the CI suite runs a few seconds of each: tests/test_fuzz_http.py,
tests/test_fuzz_readers.py and the proptests in rust/src).

    .venv/bin/python benches/fuzz.py http --examples 300          # ~5 min on 2 cores
    .venv/bin/python benches/fuzz.py readers --seconds 300        # atheris, coverage-guided
    .venv/bin/python benches/fuzz.py readers --engine hypothesis --examples 20000
    .venv/bin/python benches/fuzz.py rust --cases 20000           # proptests, release build
    .venv/bin/python benches/fuzz.py all --seconds 120 --examples 200 --cases 5000

``http``: a real ``twostage serve`` process over 30 stdlib passages (MiniLM int8) with a tiny
random cross-encoder, every operation of its ``/openapi.json`` driven by schemathesis:
the deterministic coverage cases, the schema's examples, then ``--examples`` valid and as
many schema-violating requests per operation, with the token. Prints executions per
operation, status counts and each distinct failure with a curl line; exits 1 on a failure
that is not a known, reported bug (tests/fuzzing.py ``KNOWN_HTTP_BUGS``).

``readers``: every corpus reader (JSONL, CSV, TSV, text; by suffix and by name; plain and
gzip) on the fuzzer's bytes; the only outcomes allowed are records and the errors
``read_corpus`` documents. atheris (libFuzzer, coverage-guided over twostage.sources) by
default; a crash stops the run, prints the input and leaves it in ``--artifacts``. Replay
one with ``benches/fuzz.py readers --replay FILE``.

``rust``: ``cargo test --release`` of the property tests (merge, index against a
brute-force reference, file format against damaged files) with ``PROPTEST_CASES=--cases``.
Failures are shrunk and saved in rust/proptest-regressions/ (replayed first next time).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzzing  # noqa: E402  (tests/fuzzing.py: the harnesses the CI tests use)

OUT = ROOT / "benches" / "out" / "fuzz"


# ---- http --------------------------------------------------------------------------------


def run_http(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    with fuzzing.scratch() as work:
        col, roots = fuzzing.build_collection(work, docs=30)
        with fuzzing.serve(col, roots, work) as srv:
            print(f"server up at {srv.url} ({time.monotonic() - t0:.1f} s)", flush=True)
            report = fuzzing.fuzz_http(
                srv,
                examples=args.examples,
                seed=args.seed,
                progress=lambda line: print(f"  {line}", flush=True),
            )
            alive = srv.proc.poll() is None
            log = srv.log_tail(6000)
    print(f"\nhttp: {time.monotonic() - t0:.0f} s")
    print(report.summary())
    if not alive:
        print("THE SERVER DIED:\n" + log)
    for name in sorted({f.known for f in report.known() if f.known}):
        print(f"known bug {name}: {fuzzing.KNOWN_HTTP_BUGS[name]}")
    return 1 if report.new() or not alive else 0


# ---- readers -----------------------------------------------------------------------------


def _seed_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(fuzzing.SEEDS):
        for t in range(len(fuzzing.READER_TARGETS)):
            (folder / f"seed-{i}-{t}").write_bytes(bytes([t]) + seed)
            (folder / f"seed-{i}-{t}-gz").write_bytes(bytes([t | 0x80]) + seed)


def run_readers_atheris(args: argparse.Namespace) -> int:
    import atheris

    with atheris.instrument_imports(include=["twostage.sources", "twostage.document"]):
        import twostage.document
        import twostage.sources  # noqa: F401

    corpus = OUT / "readers-corpus"
    _seed_corpus(corpus)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_total_time={args.seconds}",
        "-max_len=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        f"-seed={args.seed or 1}",
        "-timeout=20",
        "-rss_limit_mb=4096",
    ]
    if args.runs:
        flags.append(f"-runs={args.runs}")
    with fuzzing.scratch() as folder:

        def test_one(data: bytes) -> None:
            fuzzing.read_one(folder, data)

        print(f"atheris: {' '.join(flags)} {corpus}", flush=True)
        atheris.Setup([sys.argv[0], *flags, str(corpus)], test_one)
        atheris.Fuzz()  # libFuzzer exits the process: 0 when time is up, non-zero on a crash
    return 0


def run_readers_hypothesis(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck, given, settings

    executions = 0
    found: dict[str, bytes] = {}
    t0 = time.monotonic()
    with fuzzing.scratch() as folder:

        @settings(
            max_examples=args.examples,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=fuzzing.reader_inputs())
        def run(data: bytes) -> None:
            nonlocal executions
            executions += 1
            try:
                fuzzing.read_one(folder, data)
            except fuzzing.ReaderBug as e:
                found.setdefault(str(e)[:200], data)

        run()
    print(f"readers (hypothesis): {executions} executions in {time.monotonic() - t0:.0f} s")
    for msg, data in found.items():
        print(f"FAILURE {msg}\n  input: {data[:300]!r}")
    return 1 if found else 0


def run_replay(path: str) -> int:
    data = Path(path).read_bytes()
    fmt, name, gz, _ = fuzzing.reader_target(data)
    print(f"replaying {path}: format={fmt} file={name} gzip={gz}")
    with fuzzing.scratch() as folder:
        print(f"{fuzzing.read_one(folder, data)} records, no contract breach")
    return 0


# ---- rust --------------------------------------------------------------------------------


def run_rust(args: argparse.Namespace) -> int:
    env = {**os.environ, "PROPTEST_CASES": str(args.cases)}
    cmd = ["cargo", "test", "--release", "--lib", "--", *args.filter, "--test-threads", "2"]
    print(f"PROPTEST_CASES={args.cases} {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    passed = re.findall(r"^test (\S+) \.\.\. ok$", out, re.M)
    failed = re.findall(r"^test (\S+) \.\.\. FAILED$", out, re.M)
    props = [t for t in passed + failed if t.split("::")[-1] in _proptest_names()]
    print(f"rust: {time.monotonic() - t0:.0f} s; {len(passed)} tests passed, {len(failed)} failed")
    print(
        f"property tests: {len(props)}, {args.cases} cases each: "
        f"{len(props) * args.cases} generated cases (plus saved regressions)"
    )
    if proc.returncode != 0:
        print(out[-12000:])
    return proc.returncode


def _proptest_names() -> set[str]:
    """Names of the tests inside ``proptest!`` blocks in rust/src."""
    names: set[str] = set()
    for src in (ROOT / "rust" / "src").glob("*.rs"):
        text = src.read_text()
        for block in re.finditer(r"proptest!\s*\{(.*?)\n    \}\n", text, re.S):
            names.update(re.findall(r"fn (\w+)\s*\(", block.group(1)))
    return names


# ---- main --------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", choices=["http", "readers", "rust", "all"])
    ap.add_argument("--examples", type=int, default=300, help="http: cases per operation/mode")
    ap.add_argument("--seconds", type=int, default=300, help="readers (atheris): time budget")
    ap.add_argument("--runs", type=int, default=0, help="readers (atheris): stop after N inputs")
    ap.add_argument("--engine", choices=["atheris", "hypothesis"], default="atheris")
    ap.add_argument("--cases", type=int, default=20000, help="rust: PROPTEST_CASES")
    ap.add_argument("--filter", nargs="*", default=[], help="rust: test name filters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--artifacts", default=str(OUT / "crashes"), help="readers: crash inputs")
    ap.add_argument("--replay", default=None, help="readers: run one saved input and exit")
    args = ap.parse_args()
    if args.replay:
        return run_replay(args.replay)
    if args.target == "all":
        # atheris never returns: the reader run goes last, in its own process.
        rc = run_http(args) | run_rust(args)
        cmd = [sys.executable, __file__, "readers", "--seconds", str(args.seconds)]
        return rc | subprocess.run(cmd).returncode
    if args.target == "http":
        return run_http(args)
    if args.target == "rust":
        return run_rust(args)
    if args.engine == "hypothesis":
        return run_readers_hypothesis(args)
    return run_readers_atheris(args)


if __name__ == "__main__":
    sys.exit(main())
