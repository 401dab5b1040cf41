"""A crash loop: seeded SIGKILLs at random points of ingest, writes, snapshots, HTTP and swaps.

    .venv/bin/python benches/crashloop.py --n 20 --seed 1          # ~15 minutes on 2 cores
    .venv/bin/python benches/crashloop.py --n 1 --kinds writer,ingest   # the CI's short run

Each trial runs real processes on a real collection of real text (the Python documentation's
passages, shipped with twostage) and kills one with SIGKILL at a seeded random moment, then
opens the collection and checks it as a user would rely on it:

* ``ingest``: ``twostage index build`` killed (up to twice), then run again to the end; the
  store's digest must equal an uninterrupted build's, bit for bit, and ``check()`` be clean.
* ``writer``: a process upserting batches, deleting, and saving snapshots (``flush``) in a
  loop, printing each acknowledgement; after the kill every acknowledged write is there
  with its text, every acknowledged delete is gone, the batch in flight is all or nothing.
* ``http``: ``twostage serve`` taking POST /documents and DELETE bursts from a client; the
  same rule for every 200 answer.
* ``swap``: the server swapping its reranker back and forth (PUT /models/reranker) under
  searches; after the kill it must come back ready, serving one of the models, with the
  collection sound.

The open after each kill must pass :meth:`Collection.check`. Prints a table and writes
``benches/out/crashloop/crashloop-<date>.json``; exits 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twostage.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benches" / "out" / "crashloop"
HOST = "127.0.0.1"
KINDS = ("ingest", "writer", "http", "swap")


@dataclass
class Trial:
    kind: str
    n: int
    kill_after_s: float
    acked: int = 0
    kills: int = 1  # SIGKILLs delivered (an ingest may end before its kill time)
    failures: list[str] = field(default_factory=list)
    note: str = ""


# ---- shared pieces -----------------------------------------------------------------------------


def corpus(path: Path, n: int) -> Path:
    from twostage.stdlib_docs import stdlib_docs

    with path.open("w", encoding="utf-8") as f:
        for d in stdlib_docs(n):
            f.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    return path


def base_collection(folder: Path, n: int) -> None:
    from twostage.collection import Collection
    from twostage.encoder import Encoder
    from twostage.stdlib_docs import stdlib_docs

    with Collection.create(folder, Encoder.load("minilm-l6")) as col:
        col.add(list(stdlib_docs(n)))


#: A document id and its acknowledged text (None: acknowledged deleted).
Acks = dict[str, str | None]


def verify(folder: Path, acked: Acks, pending: list[Acks]) -> list[str]:
    """Open, check, and compare with what was acknowledged.

    ``acked`` maps an id to its acknowledged text (``None``: acknowledged deleted);
    ``pending`` holds the batches in flight at the kill: each is all there or not at all.
    """
    from twostage.collection import Collection

    problems: list[str] = []
    try:
        col = Collection.open(folder)
    except Exception as e:  # the very thing this loop looks for
        return [f"open failed: {type(e).__name__}: {e}"]
    try:
        problems += [f"check: {p}" for p in col.check()]
        in_flight = {i for batch in pending for i in batch}
        for doc_id, text in acked.items():
            if doc_id in in_flight:
                continue
            if text is None:
                if doc_id in col:
                    problems.append(f"acknowledged delete of {doc_id} undone")
            elif doc_id not in col:
                problems.append(f"acknowledged write {doc_id} lost")
            elif col.get([doc_id])[0].text != text:
                problems.append(f"acknowledged write {doc_id} has other text")
        for batch in pending:
            state = set()
            for doc_id, text in batch.items():
                if text is None:
                    state.add(doc_id not in col)
                else:
                    state.add(doc_id in col and col.get([doc_id])[0].text == text)
            if len(state) > 1:
                problems.append(f"a batch in flight was half applied: {sorted(batch)[:3]}...")
    finally:
        col.close()
    return problems


def settle(folder: Path, acked: Acks, pending: list[Acks]) -> None:
    """What the check found for the batch in flight is the truth from now on: a document
    there keeps its stored text (an upsert that landed, or a delete that did not), one
    absent is deleted."""
    from twostage.collection import Collection

    with Collection.open(folder, read_only=True) as col:
        for batch in pending:
            for doc_id in batch:
                acked[doc_id] = col.get([doc_id])[0].text if doc_id in col else None


def keep_for_post_mortem(folder: Path, t: Trial) -> None:
    """A copy of the collection as the failing check saw it, once per kind."""
    dest = OUT / f"failed-{t.kind}-{t.n}"
    if not any(OUT.glob(f"failed-{t.kind}-*")):
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("writer.lock"))
        t.note += f" (copy: {dest})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def kill(p: subprocess.Popen[Any]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()


# ---- ingest ------------------------------------------------------------------------------------


def trial_ingest(rng: random.Random, work: Path, t: Trial, ref_digest: str, src: Path) -> None:
    folder = work / f"ingest-{t.n}"
    cmd = [sys.executable, "-m", "twostage", "index", "build", "--corpus", str(src)]
    cmd += ["--out", str(folder), "--no-progress", "--chunk-size", "32"]
    kills = 0
    for _ in range(2):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(t.kill_after_s if kills == 0 else rng.uniform(0.5, t.kill_after_s + 0.5))
        if p.poll() is not None:
            break
        kill(p)
        kills += 1
    t.kills = kills
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    t.note = f"{kills} kills"
    if done.returncode != 0:
        t.failures.append(f"the resumed build failed: {done.stderr.strip()[-300:]}")
        return
    from twostage.collection import Collection

    with Collection.open(folder, read_only=True) as col:
        t.failures += [f"check: {p}" for p in col.check()]
        if col.store.digest() != ref_digest:
            t.failures.append("the resumed build's digest differs from an uninterrupted one")
    shutil.rmtree(folder)


# ---- a writing process -------------------------------------------------------------------------

_WRITER = r"""
import sys
from twostage.collection import Collection
from twostage.document import Document
col = Collection.open(sys.argv[1])
step = int(sys.argv[2])
while True:
    ids = [f"w{step}_{j}" for j in range(8)]
    print("begin add " + str(step), flush=True)
    col.add([Document(i, f"Written at step {step}: note {i} on file locks.") for i in ids])
    print("ack add " + str(step), flush=True)
    if step % 3 == 2:
        print("begin del " + str(step - 1), flush=True)
        col.delete([f"w{step - 1}_{j}" for j in range(8)], missing_ok=True)
        print("ack del " + str(step - 1), flush=True)
    if step % 2 == 1:
        col.flush()
        print("ack flush " + str(step), flush=True)
    step += 1
"""


def _texts(step: int) -> dict[str, str | None]:
    return {
        f"w{step}_{j}": f"Written at step {step}: note w{step}_{j} on file locks." for j in range(8)
    }


def trial_writer(rng: random.Random, work: Path, t: Trial, state: dict[str, Any]) -> None:
    folder = state["folder"]
    acked: dict[str, str | None] = state["acked"]
    p = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(folder), str(state["step"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    time.sleep(t.kill_after_s)
    kill(p)
    reader.join()
    assert p.stdout is not None and p.stderr is not None
    err = p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    pending: list[dict[str, str | None]] = []
    last = state["step"] - 1
    for line in lines:
        word, what, num = line.split()
        step = int(num)
        if word == "begin":
            pending = [_texts(step) if what == "add" else dict.fromkeys(_texts(step))]
        elif what == "add":
            acked.update(_texts(step))
            pending, last = [], step
            t.acked += 1
        elif what == "del":
            acked.update(dict.fromkeys(_texts(step)))
            pending = []
            t.acked += 1
    if "-wal was deleted or replaced" in err:
        t.note += "the writer saw its WAL replaced; "
    if not lines and "Traceback" in err:
        t.failures.append(f"the writer failed to start: {err.strip()[-300:]}")
    t.failures += verify(folder, acked, pending)
    if t.failures:
        t.note = "writer's last lines: " + " | ".join(x.strip() for x in lines[-12:])
        t.note += " || stderr: " + err.strip()[-600:]
        keep_for_post_mortem(folder, t)
    settle(folder, acked, pending)
    state["step"] = last + 2


# ---- the server -----------------------------------------------------------------------------


class Server:
    def __init__(self, folder: Path, log: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.token = secrets.token_urlsafe(16)
        env = dict(os.environ, TWOSTAGE_TOKEN=self.token)
        cmd = [sys.executable, "-m", "twostage", "serve", str(folder), "--host", HOST]
        cmd += ["--port", str(self.port), "--log-level", "warning", *extra]
        self.log = log.open("a")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self, timeout: float = 300) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        return False

    def kill(self) -> None:
        kill(self.proc)
        self.log.close()


def trial_http(rng: random.Random, work: Path, t: Trial, state: dict[str, Any]) -> None:
    import httpx

    folder = state["folder"]
    acked: dict[str, str | None] = state["acked"]
    srv = Server(folder, work / "server.log", ["--reranker", "none"])
    if not srv.ready():
        srv.kill()
        t.failures.append("the server did not come up")
        return
    pending: list[dict[str, str | None]] = []
    stop = threading.Event()
    headers = {"authorization": f"Bearer {srv.token}"}

    def client() -> None:
        step = state["step"]
        with httpx.Client(base_url=srv.url, headers=headers, timeout=30) as c:
            while not stop.is_set():
                batch = {
                    f"h{step}_{j}": f"Posted at step {step}: note h{step}_{j} about sockets."
                    for j in range(16)
                }
                pending[:] = [batch]
                docs = [{"id": i, "text": x} for i, x in batch.items()]
                try:
                    r = c.post("/documents", json={"documents": docs})
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    acked.update(batch)
                    t.acked += 1
                pending[:] = []
                if step % 4 == 3:
                    victim = f"h{step - 1}_0"
                    pending[:] = [{victim: None}]
                    try:
                        r = c.delete(f"/documents/{victim}")
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        acked[victim] = None
                        t.acked += 1
                    pending[:] = []
                step += 1
                state["step"] = step

    th = threading.Thread(target=client)
    th.start()
    time.sleep(t.kill_after_s)
    srv.kill()
    stop.set()
    th.join()
    t.failures += verify(folder, acked, pending)
    if t.failures:
        keep_for_post_mortem(folder, t)
    settle(folder, acked, pending)
    state["step"] += 1


def trial_swap(rng: random.Random, work: Path, t: Trial, state: dict[str, Any]) -> None:
    import httpx

    folder, root = state["folder"], state["models"]
    names = ["ce-a", "ce-b"]
    # Random models (mechanics only): the sanity check would refuse them.
    models = ["--model-root", str(root), "--reranker", str(root / "ce-a"), "--no-sanity-check"]
    srv = Server(folder, work / "server.log", models)
    if not srv.ready():
        srv.kill()
        t.failures.append("the server did not come up")
        return
    stop = threading.Event()
    headers = {"authorization": f"Bearer {srv.token}"}
    versions: dict[str, str] = state.setdefault("versions", {})
    last: list[str | None] = [None, None]  # the last acknowledged model, the one in flight

    def swapper() -> None:
        i = 1
        with httpx.Client(base_url=srv.url, headers=headers, timeout=60) as c:
            while not stop.is_set():
                last[1] = names[i % 2]
                try:
                    r = c.put("/models/reranker", json={"path": names[i % 2]})
                    c.post("/search", json={"query": "read a gzip file", "k": 5})
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    t.acked += 1
                    versions[names[i % 2]] = r.json()["model"]["version"]
                    last[0] = names[i % 2]
                i += 1

    th = threading.Thread(target=swapper)
    th.start()
    time.sleep(t.kill_after_s)
    srv.kill()
    stop.set()
    th.join()
    t.failures += verify(folder, state["acked"], [])
    again = Server(folder, work / "server.log", models)
    try:
        if not again.ready():
            t.failures.append("the server did not come back after the kill")
            return
        r = httpx.post(f"{again.url}/search", json={"query": "sort a list", "k": 3}, timeout=60)
        if r.status_code != 200 or not r.json()["hits"]:
            t.failures.append(f"search after the restart answered {r.status_code}")
            return
        serving = r.json()["reranker_version"]
        t.note = f"serving {serving} after the restart"
        # The live choice is persisted: the last acknowledged swap's model, or the one in
        # flight at the kill (it may have been saved before its answer went out).
        allowed = {versions.get(n) for n in last if n is not None}
        if last[0] is not None and serving not in allowed:
            t.failures.append(
                f"after the restart the server serves {serving}, not the last acknowledged "
                f"{versions.get(last[0])} (or the one in flight)"
            )
    finally:
        again.kill()


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="kills per kind")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--docs", type=int, default=200, help="passages in the ingest corpus")
    ap.add_argument("--json", default=None, help="write the report here too")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}; kinds: {', '.join(KINDS)}")
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="twostage-crash-") as tmp:
        work = Path(tmp)
        if "ingest" in kinds:
            src = corpus(work / "corpus.jsonl", args.docs)
            ref = work / "ref"
            build = ["index", "build", "--corpus", str(src), "--out", str(ref)]
            t_ref = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "twostage", *build, "--no-progress", "--chunk-size", "32"],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            from twostage.collection import Collection

            with Collection.open(ref, read_only=True) as col:
                ref_digest = col.store.digest()
            took = time.perf_counter() - t_ref  # a kill lands within a build's span
            t0 = time.perf_counter()
            for n in range(args.n):
                t = Trial("ingest", n, rng.uniform(0.3, 0.9) * took)
                trial_ingest(rng, work, t, ref_digest, src)
                trials.append(t)
                print(f"ingest {n}: {t.note}, {len(t.failures)} failures", flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)")
        writes: dict[str, Any] = {}
        if {"writer", "http", "swap"} & set(kinds):
            base_collection(work / "col", 100)
            writes = {"folder": work / "col", "acked": {}, "step": 0}
        if "writer" in kinds:
            for n in range(args.n):
                t = Trial("writer", n, rng.uniform(2.0, 6.0))
                trial_writer(rng, work, t, writes)
                trials.append(t)
                print(f"writer {n}: {t.acked} acks, {len(t.failures)} failures", flush=True)
        if "http" in kinds:
            for n in range(args.n):
                t = Trial("http", n, rng.uniform(0.5, 4.0))
                trial_http(rng, work, t, writes)
                trials.append(t)
                print(f"http {n}: {t.acked} acks, {len(t.failures)} failures", flush=True)
        if "swap" in kinds:
            sys.path.insert(0, str(ROOT / "tests"))
            import tinyce

            writes["models"] = work / "models"
            for seed, name in enumerate(("ce-a", "ce-b"), start=1):
                tinyce.random_cross_encoder(writes["models"] / name, seed=seed)
            for n in range(args.n):
                t = Trial("swap", n, rng.uniform(1.0, 5.0))
                trial_swap(rng, work, t, writes)
                trials.append(t)
                print(
                    f"swap {n}: {t.acked} swaps, {t.note}, {len(t.failures)} failures", flush=True
                )
        if writes:
            final = verify(writes["folder"], writes["acked"], [])
            if final:
                trials.append(Trial("final", 0, 0.0, failures=final))
    failed = [t for t in trials if t.failures]
    print(f"\n{'kind':<8} {'trials':>6} {'kills':>6} {'survived':>9} {'acks':>6}")
    for k in kinds:
        ts = [t for t in trials if t.kind == k]
        ok = sum(1 for t in ts if not t.failures)
        kills = sum(t.kills for t in ts)
        print(f"{k:<8} {len(ts):>6} {kills:>6} {ok:>9} {sum(t.acked for t in ts):>6}")
    for t in failed:
        print(f"FAILED {t.kind} {t.n} (kill at {t.kill_after_s:.2f} s): {t.failures[:3]}")
    report = {
        "command": "python benches/crashloop.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "seconds": round(time.time() - t_start, 1),
        "trials": [asdict(t) for t in trials],
        "failed": len(failed),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(args.json) if args.json else OUT / f"crashloop-{dt.date.today()}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
