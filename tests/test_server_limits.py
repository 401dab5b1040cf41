"""The server under abuse: admission bounds and deadline shedding, caps for callers without
the token, model files that lead out of their root or are too big to hash, strict request
bodies, and the reranker a swap chose surviving a restart.

Every test runs the real app on uvicorn on loopback (the helpers of test_server.py) and
calls it over HTTP. Slow searches are made the way a busy server makes them: the batcher
waits ``batch_wait_ms`` for more requests before it runs a batch smaller than
``batch_max_pairs``, so with one search thread each reranked search holds it that long.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import twostage
from test_server import AUTH, QUERY, envelope, serve, settings
from tinyce import model_root, random_cross_encoder
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.encoder import Encoder
from twostage.reranker import Reranker
from twostage.stdlib_docs import stdlib_docs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("limits") / "col"
    with Collection.create(path, Encoder.load("minilm-l6")) as col:
        col.add(list(stdlib_docs(200)))
    return path


@pytest.fixture()
def col(tmp_path: Path, built: Path) -> Path:
    shutil.copytree(built, tmp_path / "col")
    return tmp_path / "col"


@pytest.fixture()
def roots(tmp_path: Path) -> Path:
    """A fresh model root per test (these tests add and break models in it)."""
    return model_root(tmp_path / "models")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # The same seeds as model_root's ce1 and ce2: the version depends on the files only.
    root = tmp_path_factory.mktemp("v")
    return {
        name: Reranker.load(random_cross_encoder(root / name, seed=seed), precision="fp32").version
        for name, seed in (("ce1", 1), ("ce2", 2))
    }


def metric(text: str, line_start: str) -> float:
    """The value of the first /metrics line that starts with ``line_start`` (0 if none)."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def at_once(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``n`` calls released together from a barrier, each on its own connection."""
    barrier = threading.Barrier(n)
    out: list[httpx.Response | None] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        out[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


# ---- overload: admission bound, deadline shedding, caps ------------------------------------


def slow(col: Path, roots: Path, **kw: Any) -> Any:
    """One search thread, and each reranked search holds it ~0.8 s (the batcher's wait)."""
    base: dict[str, Any] = {"workers": 1, "batch_max_pairs": 256, "batch_wait_ms": 800.0}
    return settings(col, roots, **{**base, **kw})


def test_searches_over_the_bound_get_503_with_retry_after(col: Path, roots: Path) -> None:
    with serve(slow(col, roots, max_pending_searches=2)) as c:
        url = str(c.base_url)

        def search(i: int) -> httpx.Response:
            body = {"query": QUERY, "k": 3, "depth": 10, "budget_ms": 5000}
            return httpx.post(f"{url}/search", json=body, headers=AUTH, timeout=60)

        t0 = time.perf_counter()
        answers = at_once(6, search)
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 200, 503, 503, 503, 503], codes
        for r in answers:
            if r.status_code == 503:
                msg = envelope(r, 503, "overloaded")
                assert "bound of 2" in msg
                assert r.headers["retry-after"] == "1"
        assert time.perf_counter() - t0 < 10
        text = c.get("/metrics").text
        assert metric(text, 'twostage_shed_total{kind="search",reason="queue_full"}') == 4
        assert metric(text, 'twostage_pending{kind="search"}') == 0  # all places given back
        # The bound is on what is pending now: once they ended, searches are admitted again.
        ok = c.post("/search", json={"query": QUERY, "k": 3, "depth": 10}, headers=AUTH)
        assert ok.status_code == 200


def test_a_search_whose_deadline_passed_in_the_queue_is_shed(col: Path, roots: Path) -> None:
    with serve(slow(col, roots)) as c:
        url = str(c.base_url)
        results: dict[str, httpx.Response] = {}

        def long_one() -> None:  # holds the one search thread ~0.8 s
            body = {"query": QUERY, "k": 3, "depth": 10, "budget_ms": 5000}
            results["long"] = httpx.post(f"{url}/search", json=body, headers=AUTH, timeout=60)

        t = threading.Thread(target=long_one)
        t.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        late = c.post("/search", json={"query": f"late: {QUERY}", "k": 3, "budget_ms": 200})
        took = time.perf_counter() - t0
        t.join(60)
        msg = envelope(late, 503, "overloaded")
        assert "past its 200 ms budget" in msg and late.headers["retry-after"] == "1"
        assert took < 0.6  # refused at its deadline, not when the thread came free
        assert results["long"].status_code == 200
        text = c.get("/metrics").text
        assert metric(text, 'twostage_shed_total{kind="search",reason="deadline"}') == 1
        assert metric(text, 'twostage_shed_total{kind="search",reason="queue_full"}') == 0
        # Waiting searches get the thread earliest deadline first, not in arrival order.
        got: dict[str, httpx.Response] = {}

        def search(name: str, budget: float, after: float) -> None:
            time.sleep(after)
            # A query of its own: cached scores would skip the batcher's wait.
            body = {"query": f"{name}: {QUERY}", "k": 3, "depth": 10, "budget_ms": budget}
            got[name] = httpx.post(f"{url}/search", json=body, headers=AUTH, timeout=60)

        plan = (("long", 5000, 0.0), ("patient", 4000, 0.15), ("urgent", 2000, 0.3))
        threads = [threading.Thread(target=search, args=args) for args in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(r.status_code == 200 for r in got.values()), {k: r.text for k, r in got.items()}
        queue = {k: r.json()["timings"]["queue"] for k, r in got.items()}
        assert queue["urgent"] < queue["patient"], queue
        # A budget of 0 asks for the first stage only: never shed, answered degraded.
        zero = c.post("/search", json={"query": QUERY, "k": 3, "budget_ms": 0})
        assert zero.status_code == 200 and zero.json()["degraded"]


def test_writes_over_the_bound_get_503_and_store_nothing(col: Path, roots: Path) -> None:
    words = " ".join(d.text for d in stdlib_docs(3))[:600]
    with serve(settings(col, roots, max_pending_writes=1)) as c:
        url = str(c.base_url)

        def write(i: int) -> httpx.Response:
            docs = [{"id": f"w{i}-{j}", "text": f"{j} {words}"} for j in range(200)]
            return httpx.post(
                f"{url}/documents", json={"documents": docs}, headers=AUTH, timeout=120
            )

        answers = at_once(4, write)
        ok = [i for i, r in enumerate(answers) if r.status_code == 200]
        refused = [i for i, r in enumerate(answers) if r.status_code == 503]
        assert len(ok) >= 1 and len(refused) >= 1 and len(ok) + len(refused) == 4
        for i in refused:
            envelope(answers[i], 503, "overloaded")
            assert answers[i].headers["retry-after"] == "1"
            envelope(c.get(f"/documents/w{i}-0"), 404, "not_found")
        assert c.get("/readyz").json()["documents"] == 200 + 200 * len(ok)
        text = c.get("/metrics").text
        assert metric(text, 'twostage_shed_total{kind="write",reason="queue_full"}') == len(refused)


def test_callers_without_the_token_are_capped(col: Path, roots: Path) -> None:
    cfg = settings(col, roots, engine=EngineConfig(depth=20, budget_ms=150))
    with serve(cfg) as c:
        # The abuse that made a normal search take 55 s: refused at once, naming the cap.
        abusive = {"query": QUERY, "depth": 1000, "budget_ms": 60000}
        msg = envelope(c.post("/search", json=abusive), 422, "depth_over_limit")
        assert "over 100" in msg and "max_anonymous_depth" in msg and "Bearer" in msg
        bad = {"Authorization": "Bearer wrong-token-xxxxxxxx"}
        envelope(c.post("/search", json=abusive, headers=bad), 422, "depth_over_limit")
        msg = envelope(
            c.post("/search", json={"query": QUERY, "budget_ms": 1001}), 422, "budget_over_limit"
        )
        assert "over 1000" in msg and "max_anonymous_budget_ms" in msg
        # At the caps: served.
        at_cap = {"query": QUERY, "k": 3, "depth": 100, "budget_ms": 1000}
        assert c.post("/search", json=at_cap).status_code == 200
        # With the token, the engine's own limits.
        r = c.post("/search", json={**abusive, "k": 3, "depth": 200}, headers=AUTH)
        assert r.status_code == 200 and r.json()["candidates"] >= 100
        text = c.get("/metrics").text
        assert metric(text, 'twostage_search_over_limit_total{limit="depth"}') == 2
        assert metric(text, 'twostage_search_over_limit_total{limit="budget"}') == 1
    # Configured caps; a cap never falls below what the server gives by default.
    cfg = settings(
        col,
        roots,
        engine=EngineConfig(depth=20, budget_ms=400),
        max_anonymous_depth=10,
        max_anonymous_budget_ms=300,
    )
    with serve(cfg) as c:
        envelope(c.post("/search", json={"query": QUERY, "depth": 21}), 422, "depth_over_limit")
        assert c.post("/search", json={"query": QUERY, "k": 2, "depth": 20}).status_code == 200
        msg = envelope(
            c.post("/search", json={"query": QUERY, "budget_ms": 401}), 422, "budget_over_limit"
        )
        assert "over 400" in msg
        ok = c.post("/search", json={"query": QUERY, "k": 2, "budget_ms": 400})
        assert ok.status_code == 200


# ---- model files --------------------------------------------------------------------------


def copy_model(src: Path, dst: Path, *, link: str | None = None, to: Path | None = None) -> Path:
    """A copy of model folder ``src`` where file ``link`` is a symlink to ``to``."""
    shutil.copytree(src, dst)
    if link is not None and to is not None:
        (dst / link).unlink()
        (dst / link).symlink_to(to)
    return dst


def test_a_symlinked_model_file_that_leads_out_is_refused(
    col: Path, roots: Path, tmp_path: Path, versions: dict[str, str]
) -> None:
    outside = random_cross_encoder(tmp_path / "outside" / "ce-out", seed=4)
    copy_model(
        roots / "ce2", roots / "leaky", link="model.safetensors", to=outside / "model.safetensors"
    )
    copy_model(roots / "ce1", roots / "subleak")
    (roots / "subleak" / "1_Pooling").symlink_to(outside)  # a folder link out, not a file
    # A link that stays inside the root is fine: it is ce2's own weights.
    copy_model(
        roots / "ce1",
        roots / "inside",
        link="model.safetensors",
        to=roots / "ce2" / "model.safetensors",
    )
    with serve(settings(col, roots)) as c:
        for name, shown in (("leaky", "leaky/model.safetensors"), ("subleak", "subleak/1_Pooling")):
            r = c.put("/models/reranker", json={"path": name, "precision": "fp32"}, headers=AUTH)
            msg = envelope(r, 403, "path_not_allowed")
            assert shown in msg and "outside the model roots" in msg, msg
            assert str(tmp_path) not in r.text
        ok = c.put("/models/reranker", json={"path": "inside", "precision": "fp32"}, headers=AUTH)
        assert ok.status_code == 200, ok.text
        assert ok.json()["model"]["source"] == "inside"
        served = c.post("/search", json={"query": QUERY, "k": 2, "depth": 5}).json()
        assert served["reranker_version"].startswith("inside@")
        history = c.get("/models").json()["history"]
        assert [h["status"] for h in history[:3]] == ["active", "rejected", "rejected"]


def test_big_or_fake_model_files_are_refused_before_hashing(
    col: Path, roots: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    huge = roots / "huge"
    huge.mkdir()
    shutil.copy(roots / "broken" / "tokenizer.json", huge / "tokenizer.json")
    with (huge / "model.onnx").open("wb") as f:  # 3 GiB, sparse: it costs no disk
        f.write(bytes([8, 8]))
        f.truncate(3 << 30)
    odd = roots / "odd"  # an ONNX-looking start, then garbage: onnxruntime refuses it
    odd.mkdir()
    shutil.copy(roots / "broken" / "tokenizer.json", odd / "tokenizer.json")
    fields = bytes([8, 8, 0x12, 1]) + b"x" + bytes([0x1A, 1]) + b"y" + bytes([0x22, 1]) + b"z"
    (odd / "model.onnx").write_bytes(fields + bytes([0x3A, 64]) + b"\xff" * 64)
    with serve(settings(col, roots)) as c:
        t0 = time.perf_counter()
        r = c.put("/models/reranker", json={"path": "huge", "precision": "fp32"}, headers=AUTH)
        took = time.perf_counter() - t0
        msg = envelope(r, 422, "model_rejected")
        assert "huge/model.onnx is 3.00 GiB; the limit is 2.00 GiB (max_model_bytes)" in msg
        assert took < 2.0, took
        msg = envelope(
            c.put("/models/reranker", json={"path": "broken", "precision": "fp32"}, headers=AUTH),
            422,
            "model_rejected",
        )
        assert "could not load broken: broken/model.onnx is not an ONNX model" in msg
        with caplog.at_level(logging.WARNING, logger="twostage.server"):
            r = c.put("/models/reranker", json={"path": "odd", "precision": "fp32"}, headers=AUTH)
        msg = envelope(r, 422, "model_rejected")
        assert "onnxruntime could not load the graph" in msg
        # Short reasons for the client; roots, absolute paths, onnxruntime's words in the log.
        assert str(roots) not in r.text and "ONNXRuntimeError" not in r.text, r.text
        assert str(roots / "odd") in caplog.text
        models = c.get("/models")
        assert str(roots) not in models.text and str(tmp_path) not in models.text
        body = models.json()
        assert body["model_roots"] == 1
        assert body["reranker"]["spec"] == "ce1" and body["reranker"]["source"] == "ce1"
        assert body["history"][0]["source"] == "odd"
    # A smaller cap: the 7.8 MB weights of ce2 are over it.
    with serve(settings(col, roots, max_model_bytes=1 << 20)) as c:
        msg = envelope(
            c.put("/models/reranker", json={"path": "ce2", "precision": "fp32"}, headers=AUTH),
            422,
            "model_rejected",
        )
        assert "ce2/model.safetensors is 0.01 GiB" in msg


def test_onnx_header_check_accepts_real_graphs() -> None:
    from twostage.server.security import onnx_header_problem

    graph = Path(twostage.__file__).parent / "models" / "twostage-rerank" / "model_int8.onnx"
    head = graph.read_bytes()[:4096]
    assert onnx_header_problem(head, graph.stat().st_size) is None
    assert onnx_header_problem(b"\x00" * 64, 64) is not None
    assert onnx_header_problem(b"", 0) is not None


# ---- the swap survives a restart ----------------------------------------------------------


def test_a_swapped_reranker_survives_a_restart(
    col: Path, roots: Path, versions: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(roots / "ce2", roots / "ce2-copy")
    v2copy = Reranker.load(roots / "ce2-copy", precision="fp32").version
    cfg = settings(col, roots)
    state = col / "reranker-state.json"

    def serving(c: httpx.Client) -> str:
        return str(c.get("/models").json()["reranker"]["version"])

    with serve(cfg) as c:
        assert serving(c) == versions["ce1"] and not state.exists()
        put = c.put(
            "/models/reranker", json={"path": "ce2-copy", "precision": "fp32"}, headers=AUTH
        )
        assert put.status_code == 200
    assert json.loads(state.read_text())["live"]["spec"] == str(roots / "ce2-copy")
    with serve(cfg) as c:
        assert serving(c) == v2copy
        models = c.get("/models").json()
        assert models["previous"]["version"] == versions["ce1"]  # a rollback target
        c.post("/models/reranker/rollback", headers=AUTH).raise_for_status()
    assert json.loads(state.read_text())["live"] is None
    with serve(cfg) as c:
        assert serving(c) == versions["ce1"]
        c.put(
            "/models/reranker", json={"name": "twostage-rerank", "precision": "int8"}, headers=AUTH
        ).raise_for_status()
    with serve(cfg) as c:
        assert c.get("/models").json()["reranker"]["source"] == "built-in"
        put = c.put(
            "/models/reranker", json={"path": "ce2-copy", "precision": "fp32"}, headers=AUTH
        )
        assert put.status_code == 200
    # The remembered model is gone: the configured one serves, and the start does not fail.
    shutil.rmtree(roots / "ce2-copy")
    with caplog.at_level(logging.WARNING, logger="twostage.server"), serve(cfg) as c:
        assert serving(c) == versions["ce1"]
        assert c.get("/models").json()["history"][0]["status"] == "rejected"
    assert "could not restore the reranker" in caplog.text
    # The operator configured another model since the swap: the configuration wins.
    c2 = settings(col, roots, reranker=str(roots / "ce2"))
    shutil.copytree(roots / "ce1", roots / "ce2-copy")  # restorable, but not asked for
    with serve(c2) as c:
        assert serving(c) == versions["ce2"]
    # A damaged state file is ignored.
    state.write_text("{not json")
    with serve(cfg) as c:
        assert serving(c) == versions["ce1"]


# ---- request bodies -----------------------------------------------------------------------


def raw(c: httpx.Client, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    """POST ``body`` as ASCII JSON: a lone surrogate goes as its escape, "\\ud800"."""
    h = {"content-type": "application/json", **(headers or {})}
    return c.post(path, content=json.dumps(body).encode("ascii"), headers=h)


def test_request_bodies_are_strict(col: Path, roots: Path) -> None:
    with serve(settings(col, roots)) as c:
        r = c.post(
            "/search", content=b'{"query": "caf\xe9"}', headers={"content-type": "application/json"}
        )
        envelope(r, 422, "invalid_json")
        for field, value in (("k", True), ("depth", True), ("budget_ms", False), ("rerank", 1)):
            msg = envelope(
                c.post("/search", json={"query": QUERY, field: value}), 422, "invalid_request"
            )
            assert msg.startswith(field), msg
        # A JSON integer is still a number.
        assert c.post("/search", json={"query": QUERY, "k": 2, "budget_ms": 150}).status_code == 200
        msg = envelope(raw(c, "/search", {"query": "gzip \ud800 data"}), 422, "invalid_request")
        assert msg.startswith("query: holds a lone surrogate"), msg
        msg = envelope(
            raw(c, "/search", {"query": QUERY, "filter": {"lang": ["en", "\udc00"]}}),
            422,
            "invalid_request",
        )
        assert msg.startswith("filter:") and "['lang'][1]" in msg

        good = {"id": "fine-1", "text": "a good document", "title": "ok"}
        cases: list[tuple[dict[str, Any], str]] = [
            ({"id": "bad-\ud800", "text": "x"}, "documents.1.id"),
            ({"id": "bad-2", "text": "broken \udfff text"}, "documents.1.text"),
            ({"id": "bad-3", "text": "x", "title": "\ud83d"}, "documents.1.title"),
            ({"id": "bad-4", "text": "x", "metadata": {"k\ud800": 1}}, "documents.1.metadata"),
            (
                {"id": "bad-5", "text": "x", "metadata": {"a": {"b": ["ok", "\ud800"]}}},
                "documents.1.metadata",
            ),
        ]
        for doc, where in cases:
            r = raw(c, "/documents", {"documents": [good, doc]}, AUTH)
            msg = envelope(r, 422, "invalid_request")
            assert msg.startswith(where) and "surrogate" in msg, (where, msg)
        assert "['a']['b'][1]" in msg
        envelope(c.get("/documents/fine-1"), 404, "not_found")  # all or nothing
        assert c.get("/readyz").json()["documents"] == 200
        # A surrogate pair is one character, and fine.
        ok = raw(c, "/documents", {"documents": [{"id": "emoji", "text": "\U0001f600 ok"}]}, AUTH)
        assert ok.status_code == 200, ok.text
        assert c.get("/documents/emoji").json()["text"] == "\U0001f600 ok"
