"""The HTTP service: every endpoint, the error envelope, limits, security, model updates,
cross-request batching, a hammer of searches during swaps, and the real server process.

The collection is 200 real passages (the stdlib docs) embedded by MiniLM (int8); the
rerankers are small random cross-encoders (tests/tinyce.py, fp32: scores do not depend on
what else is in a batch, so answers can be checked pair for pair against the model alone).
Each app runs on real uvicorn on 127.0.0.1 in a thread (lifespan included) and is called over
HTTP with httpx; one test starts the ``twostage serve`` process itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port

pytest.importorskip("fastapi", reason="needs the server extra (fastapi)")
pytest.importorskip("httpx", reason="needs httpx")
pytest.importorskip("uvicorn", reason="needs uvicorn")

import httpx
import uvicorn
from tinyce import model_root, random_cross_encoder
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.encoder import Encoder
from twostage.errors import InvalidArgument
from twostage.reranker import Pairs, Reranker
from twostage.server import Batcher, ServerSettings, create_app, read_token
from twostage.server.models import ndcg_at_10
from twostage.stdlib_docs import stdlib_docs

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUERY = "how do I compress data with gzip"
QUERIES = ["read a csv file", "spawn a subprocess", "parse json", "regular expression groups"]


# ---- a real server in a thread -----------------------------------------------------------


class ServerThread:
    """A real uvicorn server on 127.0.0.1 (a free port), in a thread of this process."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextlib.contextmanager
def serve(cfg: ServerSettings) -> Iterator[httpx.Client]:
    """The app for ``cfg`` on uvicorn on loopback, and a client for it."""
    with ServerThread(create_app(cfg)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("srv") / "col"
    with Collection.create(path, Encoder.load("minilm-l6")) as col:
        col.add(list(stdlib_docs(200)))
    return path


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root: two good models, a folder whose model.onnx is not ONNX, a NaN model."""
    root = model_root(tmp_path_factory.mktemp("models"))
    outside = tmp_path_factory.mktemp("outside")
    random_cross_encoder(outside / "ce-out", seed=4)
    (root / "escape").symlink_to(outside / "ce-out")
    return root


def settings(col: Path, roots: Path, **kw: Any) -> ServerSettings:
    base: dict[str, Any] = {
        "collection": col,
        "token": TOKEN,
        "model_roots": (roots,),
        "reranker": str(roots / "ce1"),
        "reranker_precision": "fp32",
        "engine": EngineConfig(budget_ms=10_000),
        "batch_wait_ms": 1.0,
        # The models are random (mechanics only): they would fail the sanity check.
        "sanity_check": False,
    }
    base.update(kw)
    return ServerSettings(**base)


@pytest.fixture()
def col(tmp_path: Path, built: Path) -> Path:
    shutil.copytree(built, tmp_path / "col")
    return tmp_path / "col"


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, built: Path, roots: Path
) -> Iterator[httpx.Client]:
    """One app for the read-only tests (nothing here changes its documents or models)."""
    path = tmp_path_factory.mktemp("shared") / "col"
    shutil.copytree(built, path)
    with serve(settings(path, roots)) as client:
        yield client


@pytest.fixture(scope="module")
def versions(roots: Path) -> dict[str, str]:
    return {name: Reranker.load(roots / name, precision="fp32").version for name in ("ce1", "ce2")}


def envelope(resp: Any, status: int, code: str) -> str:
    """Check the one error shape (an httpx response, or the test client's); returns the message."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return str(body["error"]["message"])


# ---- reads -------------------------------------------------------------------------------


def test_search_answer(shared: httpx.Client, versions: dict[str, str]) -> None:
    r = shared.post("/search", json={"query": QUERY, "k": 5, "depth": 20})
    assert r.status_code == 200
    body = r.json()
    assert len(body["hits"]) == 5 and body["candidates"] == body["scored"] == 20
    assert not body["degraded"] and body["reranker_version"] == versions["ce1"]
    assert all(h["reranked"] and h["reranker_version"] == versions["ce1"] for h in body["hits"])
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert set(body["timings"]) == {"queue", "encode", "ann", "bm25", "fetch", "rerank", "total"}
    assert body["models"]["reranker"] == versions["ce1"]
    assert body["models"]["encoder"].startswith("minilm-l6@")
    first = shared.post("/search", json={"query": QUERY, "k": 5, "rerank": False}).json()
    assert [h["first_stage_rank"] for h in first["hits"]] == list(range(1, 6))
    assert first["reranker_version"] is None and not any(h["reranked"] for h in first["hits"])
    zero = shared.post("/search", json={"query": QUERY, "k": 3, "depth": 5, "budget_ms": 0})
    assert zero.status_code == 200 and zero.json()["degraded"]  # degraded, never an error


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"query": "x" * 3000}, "query_too_long"),
        ({"query": "   "}, "query_empty"),
        ({"query": "q", "k": 0}, "k_out_of_range"),
        ({"query": "q", "k": 100_000}, "k_out_of_range"),
        ({"query": "q", "depth": -1}, "depth_out_of_range"),
        ({"query": "q", "depth": 5000}, "depth_out_of_range"),
        ({"query": "q", "budget_ms": -1}, "budget_out_of_range"),
        ({"query": "q", "k": "ten"}, "invalid_request"),
        ({"query": "q", "colour": "red"}, "invalid_request"),
        ({"k": 3}, "invalid_request"),
        ({"query": "q", "filter": "lang=en"}, "invalid_request"),
    ],
)
def test_bad_search_requests(shared: httpx.Client, body: dict[str, Any], code: str) -> None:
    envelope(shared.post("/search", json=body), 422, code)


def test_error_envelope_everywhere(shared: httpx.Client) -> None:
    bad_json = shared.post(
        "/search", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    envelope(bad_json, 422, "invalid_json")
    big = b'{"query": "' + b"a" * (1 << 20) + b'"}'
    msg = envelope(shared.post("/search", content=big), 413, "body_too_large")
    assert "1048576 bytes" in msg

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"query": "'
        for _ in range(300):
            yield b"a" * 4096
        yield b'"}'

    envelope(shared.post("/search", content=chunks()), 413, "body_too_large")
    envelope(shared.get("/no/such/thing"), 404, "not_found")
    envelope(shared.delete("/healthz"), 405, "method_not_allowed")
    envelope(shared.get("/documents/no-such-id"), 404, "not_found")


def test_health_ready_metrics_docs_page(shared: httpx.Client, versions: dict[str, str]) -> None:
    assert shared.get("/healthz").json()["status"] == "ok"
    ready = shared.get("/readyz").json()
    assert ready["status"] == "ready" and ready["documents"] == 200 and ready["batching"]
    assert ready["reranker"] == versions["ce1"]
    shared.post("/search", json={"query": QUERY, "k": 3, "depth": 10})
    shared.post("/search", json={"query": QUERY, "k": 3, "depth": 10})  # cached this time
    m = shared.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    text = m.text
    for family in (
        'twostage_http_requests_total{method="POST",route="/search",status="200"}',
        'twostage_http_request_duration_seconds_bucket{le="0.1",route="/search"}',
        'twostage_search_stage_seconds_count{stage="rerank"}',
        'twostage_cache_hits_total{cache="scores"}',
        'twostage_cache_hits_total{cache="query"}',
        "twostage_rerank_batch_pairs_count",
        "twostage_rerank_batch_requests_bucket",
        f'twostage_model_info{{kind="reranker",version="{versions["ce1"]}"}} 1.0',
        "twostage_documents 200.0",
        "twostage_ready 1.0",
    ):
        assert family in text, family
    hits = [
        ln for ln in text.splitlines() if ln.startswith('twostage_cache_hits_total{cache="scores"}')
    ]
    assert float(hits[0].split()[-1]) >= 10
    spec = shared.get("/openapi.json").json()
    assert {"/search", "/documents", "/documents/{doc_id}", "/models/reranker"} <= set(
        spec["paths"]
    )
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert shared.get("/docs").status_code == 200
    page = shared.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js = shared.get("/static/app.js")
    assert js.status_code == 200 and "textContent" in js.text and "innerHTML" not in js.text


# ---- writes and security -----------------------------------------------------------------


def test_the_server_uses_the_shipped_models_defaults(col: Path, roots: Path) -> None:
    """No reranker named, no engine setting: the shipped model and its twostage.json
    defaults, the same ones ``Engine(col)`` and the CLI use; the page reads them here."""
    shipped = Reranker.load("twostage-rerank")
    cfg = settings(col, roots, reranker=None, reranker_precision="int8", engine=EngineConfig())
    with serve(cfg) as c:
        ready = c.get("/readyz").json()
        assert ready["reranker"] == shipped.version
        d = shipped.defaults
        assert ready["defaults"] == {
            "first_stage": d["first_stage"],
            "depth": d["depth"],
            "budget_ms": float(d["budget_ms"]),
            "candidates": d["candidates"],
        }
        out = c.post("/search", json={"query": QUERY, "k": 5}).json()
        assert out["first_stage"] == d["first_stage"] and out["candidates"] == d["candidates"]
        assert out["reranker_version"] == shipped.version and out["scored"] >= 1


def test_documents_crud_and_tokens(col: Path, roots: Path) -> None:
    with serve(settings(col, roots, max_batch_docs=4)) as c:
        doc = {
            "id": "note/1",
            "title": "Zstandard",
            "text": "zstd compresses data quickly and well.",
        }
        envelope(c.post("/documents", json={"documents": [doc]}), 401, "unauthorized")
        bad = {"Authorization": "Bearer wrong-token-xxxxxxxx"}
        envelope(c.post("/documents", json={"documents": [doc]}, headers=bad), 401, "unauthorized")
        envelope(c.delete("/documents/topic:assert", headers=bad), 401, "unauthorized")
        r = c.post("/documents", json={"documents": [doc]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["inserted"] == 1 and r.json()["documents"] == 201
        again = c.post("/documents", json={"documents": [doc]}, headers=AUTH).json()
        assert again["updated"] == 1 and again["documents"] == 201
        got = c.get("/documents/note/1").json()
        assert got == {**doc, "metadata": None}
        hits = c.post(
            "/search", json={"query": "zstd compression", "k": 3, "rerank": False}
        ).json()["hits"]  # the random reranker's order means nothing
        assert "note/1" in [h["id"] for h in hits]
        five = [{"id": f"n{i}", "text": "x"} for i in range(5)]
        envelope(
            c.post("/documents", json={"documents": five}, headers=AUTH), 413, "batch_too_large"
        )
        empty = [{"id": "e", "text": "", "title": ""}]
        msg = envelope(
            c.post("/documents", json={"documents": empty}, headers=AUTH), 422, "invalid_argument"
        )
        assert "empty" in msg
        envelope(c.post("/documents", json={"documents": []}, headers=AUTH), 422, "invalid_request")
        assert c.delete("/documents/note/1", headers=AUTH).json() == {
            "deleted": 1,
            "documents": 200,
        }
        envelope(c.get("/documents/note/1"), 404, "not_found")
        envelope(c.delete("/documents/note/1", headers=AUTH), 404, "not_found")
        assert c.get("/readyz").json()["documents"] == 200


def test_protected_reads(col: Path, roots: Path) -> None:
    with serve(settings(col, roots, protect_reads=True)) as c:
        envelope(c.post("/search", json={"query": QUERY}), 401, "unauthorized")
        envelope(c.get("/metrics"), 401, "unauthorized")
        envelope(c.get("/models"), 401, "unauthorized")
        assert c.post("/search", json={"query": QUERY, "k": 2}, headers=AUTH).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_refuses_to_start_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="TWOSTAGE_TOKEN"):
        ServerSettings(collection=tmp_path)
    with pytest.raises(InvalidArgument, match="loopback"):
        ServerSettings(collection=tmp_path, insecure_no_auth=True, host="0.0.0.0")
    assert ServerSettings(collection=tmp_path, insecure_no_auth=True).token is None
    with pytest.raises(InvalidArgument, match="protect_reads needs a token"):
        ServerSettings(collection=tmp_path, insecure_no_auth=True, protect_reads=True)
    with pytest.raises(InvalidArgument, match="at least 8"):
        ServerSettings(collection=tmp_path, token="short")
    monkeypatch.setenv("TWOSTAGE_TOKEN", " from-the-env-123 ")
    assert read_token(None) == "from-the-env-123"
    f = tmp_path / "token"
    f.write_text("from-a-file-456\n")
    assert read_token(f) == "from-a-file-456"
    f.write_text("  \n")
    with pytest.raises(InvalidArgument, match="empty"):
        read_token(f)
    monkeypatch.setenv("TWOSTAGE_TOKEN", "")
    with pytest.raises(InvalidArgument, match="empty"):
        read_token(None)


# ---- model updates -----------------------------------------------------------------------


def test_model_updates_validate_swap_and_roll_back(
    col: Path, roots: Path, versions: dict[str, str]
) -> None:
    with serve(settings(col, roots)) as c:

        def serving() -> str:
            return str(
                c.post("/search", json={"query": QUERY, "k": 2, "depth": 5}).json()[
                    "reranker_version"
                ]
            )

        put = c.put("/models/reranker", json={"path": "ce2", "precision": "fp32"}, headers=AUTH)
        assert put.status_code == 200, put.text
        assert put.json()["model"]["version"] == versions["ce2"]
        assert put.json()["previous"]["version"] == versions["ce1"]
        assert serving() == versions["ce2"]
        models = c.get("/models").json()
        assert models["reranker"]["status"] == "active" and models["reranker"]["load_ms"] > 0
        assert models["reranker"]["validation"]["golden_pairs"] >= 8
        assert models["previous"]["version"] == versions["ce1"]
        back = c.post("/models/reranker/rollback", headers=AUTH).json()
        assert back["model"]["version"] == versions["ce1"] and serving() == versions["ce1"]
        assert (
            c.post("/models/reranker/rollback", headers=AUTH).json()["model"]["version"]
            == versions["ce2"]
        )

        # Refused: each leaves the serving model (ce2) as it was, and says why.
        cases: list[tuple[dict[str, Any], dict[str, str], int, str, str]] = [
            ({"path": "../outside"}, AUTH, 403, "path_not_allowed", "outside the model roots"),
            ({"path": str(roots.parent)}, AUTH, 403, "path_not_allowed", "outside"),
            ({"path": "escape"}, AUTH, 403, "path_not_allowed", "outside"),  # a symlink out
            ({"path": "no-such-model"}, AUTH, 404, "model_not_found", "no model folder"),
            (
                {"path": "broken", "precision": "fp32"},
                AUTH,
                422,
                "model_rejected",
                "could not load",
            ),
            ({"path": "nan", "precision": "fp32"}, AUTH, 422, "model_rejected", "non-finite"),
            ({"name": "minilm-l6"}, AUTH, 422, "model_rejected", "encoder"),
            ({"name": "no-such-builtin"}, AUTH, 404, "model_not_found", "built-in"),
            ({}, AUTH, 422, "invalid_request", "exactly one"),
            ({"path": "ce1", "name": "x"}, AUTH, 422, "invalid_request", "exactly one"),
            ({"path": "ce1"}, {}, 401, "unauthorized", "Bearer"),
        ]
        for body, headers, status, code, words in cases:
            msg = envelope(c.put("/models/reranker", json=body, headers=headers), status, code)
            assert words in msg, (body, msg)
            assert serving() == versions["ce2"], body
        rejected = c.put(
            "/models/reranker", json={"path": "nan", "precision": "fp32"}, headers=AUTH
        )
        assert rejected.json()["error"]["details"]["active"] == versions["ce2"]
        history = c.get("/models").json()["history"]
        assert [h["status"] for h in history[:3]] == ["rejected"] * 3
        assert 'twostage_model_updates_total{result="rejected"}' in c.get("/metrics").text


def test_ndcg_floor_refuses_a_model(col: Path, roots: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = [d.text for d in stdlib_docs(40)]
    lines = []
    for q in QUERIES:
        picked = rng.choice(len(docs), size=8, replace=False)
        lines.append(
            {
                "query": q,
                "documents": [
                    {"text": docs[i], "relevance": int(j == 0)} for j, i in enumerate(picked)
                ],
            }
        )
    vs = tmp_path / "validation.jsonl"
    vs.write_text("\n".join(json.dumps(x) for x in lines))
    with serve(settings(col, roots, validation_set=vs, ndcg_floor=0.999)) as c:
        start = c.get("/models").json()["reranker"]["validation"]
        assert 0 <= start["ndcg@10"] < 0.999  # served anyway: the operator's own model
        msg = envelope(
            c.put("/models/reranker", json={"path": "ce2", "precision": "fp32"}, headers=AUTH),
            422,
            "model_rejected",
        )
        assert "NDCG@10" in msg and "below 0.999" in msg
    assert ndcg_at_10(np.array([3.0, 2.0, 1.0]), [2, 1, 0]) == pytest.approx(1.0)


def test_watched_folder_reloads(
    col: Path, roots: Path, tmp_path: Path, versions: dict[str, str]
) -> None:
    watched = roots / "watched"
    shutil.rmtree(watched, ignore_errors=True)
    shutil.copytree(roots / "ce1", watched)
    cfg = settings(col, roots, reranker=str(watched), watch_models=True, watch_interval_s=0.2)
    with serve(cfg) as c:
        before = c.get("/models").json()["reranker"]["version"]
        # Only the fingerprint of the files matters: replace them with ce2's weights.
        time.sleep(0.5)
        shutil.copy(roots / "ce2" / "model.safetensors", watched / "model.safetensors")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = c.get("/models").json()["reranker"]["version"]
            if now != before:
                break
            time.sleep(0.2)
        assert now != before and now.split("@")[0] == "watched"
    shutil.rmtree(watched)


# ---- the batcher -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rr1(roots: Path) -> Reranker:
    return Reranker.load(roots / "ce1", precision="fp32")


@pytest.fixture(scope="module")
def rr2(roots: Path) -> Reranker:
    return Reranker.load(roots / "ce2", precision="fp32")


def make_pairs(rr: Reranker, query: str, n: int) -> tuple[Pairs, list[str]]:
    docs = [d.content for d in list(stdlib_docs(n))]
    return rr.pack(rr.tokenize_query(query), rr.token_ids(docs)), docs


def test_batcher_shares_runs_and_keeps_versions_apart(rr1: Reranker, rr2: Reranker) -> None:
    seen: list[tuple[int, int]] = []
    batcher = Batcher(max_pairs=48, max_wait_ms=20, on_batch=lambda p, r, t, s: seen.append((p, r)))
    try:
        jobs = [(rr1 if i % 2 else rr2, QUERIES[i % 4]) for i in range(8)]
        results: dict[int, tuple[dict[int, float], str | None]] = {}

        def ask(i: int) -> None:
            rr, q = jobs[i]
            pairs, _ = make_pairs(rr, q, 12)
            results[i] = batcher.score_pairs(rr, pairs, time.perf_counter() + 30, 0.0)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i, (rr, q) in enumerate(jobs):
            scores, reason = results[i]
            assert reason is None and len(scores) == 12
            _, docs = make_pairs(rr, q, 12)
            np.testing.assert_allclose([scores[j] for j in range(12)], rr.score(q, docs), atol=1e-4)
        assert max(r for _, r in seen) >= 2, seen  # requests shared runs
        assert sum(p for p, _ in seen) == 8 * 12
    finally:
        batcher.close()


def test_batcher_deadline_and_failures(rr1: Reranker, roots: Path) -> None:
    batcher = Batcher(max_pairs=8, max_wait_ms=0)
    try:
        pairs, _ = make_pairs(rr1, QUERY, 200)
        # Told 10 ms per token, not even one pair of ~100 tokens fits a 0.3 s budget.
        scores, reason = batcher.score_pairs(rr1, pairs, time.perf_counter() + 0.3, 1e-2)
        assert reason is not None and reason.startswith("budget") and scores == {}
        spent, reason = batcher.score_pairs(rr1, pairs, time.perf_counter() - 1, 0.0)
        assert spent == {} and reason is not None and reason.startswith("budget")

        class Hung(Reranker):
            def run(self, batch, options=None):  # type: ignore[no-untyped-def]
                time.sleep(1.5)  # not cancellable: the requester must not wait for it
                return super().run(batch, options)

        hung = Hung.load(roots / "ce1", precision="fp32")
        t0 = time.perf_counter()
        got, why = batcher.score_pairs(hung, make_pairs(hung, QUERY, 4)[0], t0 + 0.2, 0.0)
        assert got == {} and why is not None and why.startswith("timeout")
        assert time.perf_counter() - t0 < 0.2 + batcher.grace + 0.5

        class Exploding(Reranker):
            def run(self, batch, options=None):  # type: ignore[no-untyped-def]
                raise RuntimeError("provider crashed")

        class NaNs(Reranker):
            def postprocess(self, logits: np.ndarray) -> np.ndarray:
                return np.full(len(logits), np.nan, dtype=np.float32)

        for cls, words in ((Exploding, "provider crashed"), (NaNs, "non-finite")):
            rr = cls.load(roots / "ce1", precision="fp32")
            small, _ = make_pairs(rr, QUERY, 5)
            got, why = batcher.score_pairs(rr, small, time.perf_counter() + 10, 0.0)
            assert got == {} and why is not None and words in why
    finally:
        batcher.close()
    assert batcher.score_pairs(rr1, pairs, time.perf_counter() + 1, 0.0)[1] == (
        "reranker failed: the batch queue is closed"
    )


# ---- under load: the real server in a thread, many clients, swaps -------------------------


def test_hammer_searches_during_swaps(col: Path, roots: Path, versions: dict[str, str]) -> None:
    """Clients search while models are swapped, rolled back and refused: no failed request,
    every answer scored by exactly one version with that version's scores, and retired models
    are freed once their last search ends."""
    cfg = settings(col, roots, engine=EngineConfig(budget_ms=20_000, score_cache_size=0), workers=4)
    app = create_app(cfg)
    service = app.state.service
    truth: dict[tuple[str, str], dict[str, float]] = {}
    errors: list[str] = []
    answers: dict[str, int] = {}
    stop = threading.Event()
    retired: list[weakref.ref[Reranker]] = []

    with ServerThread(app) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for q in QUERIES:  # each model's own scores for each query's candidates
                cands = c.post("/search", json={"query": q, "k": 12, "rerank": False}).json()[
                    "hits"
                ]
                texts = [service.collection.get([h["id"]])[0].content for h in cands]
                for name in ("ce1", "ce2"):
                    rr = Reranker.load(roots / name, precision="fp32")
                    s = rr.score(q, texts)
                    truth[(rr.version, q)] = dict(
                        zip([h["id"] for h in cands], s.tolist(), strict=True)
                    )

        def client(n: int) -> None:
            i = n
            with httpx.Client(base_url=srv.url, timeout=60) as cl:
                while not stop.is_set():
                    q = QUERIES[i % len(QUERIES)]
                    i += 1
                    r = cl.post("/search", json={"query": q, "k": 12, "depth": 12})
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                    body = r.json()
                    v = body["reranker_version"]
                    answers[v] = answers.get(v, 0) + 1
                    if {h["reranker_version"] for h in body["hits"]} != {v} or body["scored"] != 12:
                        errors.append(f"torn or partial: {body['degraded_reason']}")
                        continue
                    want = truth[(v, q)]
                    errors.extend(
                        f"{h['id']}: {h['score']} is not {v}'s {want[h['id']]}"
                        for h in body["hits"]
                        if abs(h["score"] - want[h["id"]]) > 1e-3
                    )

        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        plan = [
            "ce2",
            "broken",
            "ce1",
            "nan",
            "rollback",
            "ce2",
            "ce1",
            "broken",
            "ce2",
            "rollback",
            "ce1",
        ]
        outcomes = []
        try:
            with httpx.Client(base_url=srv.url, timeout=120, headers=AUTH) as admin:
                for step in plan:
                    retired.append(weakref.ref(service.engine.reranker))
                    if step == "rollback":
                        r = admin.post("/models/reranker/rollback")
                    else:
                        r = admin.put("/models/reranker", json={"path": step, "precision": "fp32"})
                    outcomes.append(r.status_code)
                    time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert outcomes == [200, 422, 200, 422, 200, 200, 200, 422, 200, 200, 200], outcomes
        assert not errors, errors[:5]
        assert set(answers) == {versions["ce1"], versions["ce2"]} and sum(answers.values()) > 20
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'status="500"' not in metrics
        # Batches held pairs of several requests at once.
        batch = [
            ln for ln in metrics.splitlines() if ln.startswith("twostage_rerank_batch_requests_sum")
        ]
        count = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith("twostage_rerank_batch_requests_count")
        ]
        assert float(batch[0].split()[-1]) > float(count[0].split()[-1])
        # Only the serving model and the one a rollback returns to are still alive.
        gc.collect()
        alive = {id(r()) for r in retired if r() is not None}
        assert len(alive) <= 2, f"{len(alive)} models still alive"


# ---- the real process --------------------------------------------------------------------


def test_real_server_process(
    col: Path, roots: Path, tmp_path: Path, versions: dict[str, str]
) -> None:
    """`twostage serve` on loopback: ready, search, a write, SIGHUP reload, clean SIGTERM."""
    exe = [sys.executable, "-m", "twostage"]
    env = {k: v for k, v in os.environ.items() if k != "TWOSTAGE_TOKEN"}
    refused = subprocess.run(
        [*exe, "serve", str(col)], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and "TWOSTAGE_TOKEN" in refused.stderr
    live = roots / "live"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(roots / "ce1", live)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [*exe, "serve", str(col), "--port", str(port), "--token-file", str(token_file),
         "--model-root", str(roots), "--reranker", str(live), "--precision", "fp32",
         "--no-sanity-check"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in 90 s"
            time.sleep(0.2)
        r = httpx.post(f"{url}/search", json={"query": QUERY, "k": 3, "depth": 10}, timeout=30)
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
        before = r.json()["reranker_version"]
        w = httpx.post(
            f"{url}/documents",
            json={"documents": [{"id": "p1", "text": "process test"}]},
            headers=AUTH,
            timeout=30,
        )
        assert w.status_code == 200 and w.json()["documents"] == 201
        shutil.copy(roots / "ce2" / "model.safetensors", live / "model.safetensors")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = httpx.get(f"{url}/models", timeout=5).json()["reranker"]["version"]
            if now != before:
                break
            time.sleep(0.2)
        assert now != before, (tmp_path / "server.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        log.close()
        shutil.rmtree(live, ignore_errors=True)
    # uvicorn re-raises the signal it drained on (exit status -15), after a clean shutdown.
    text = (tmp_path / "server.log").read_text()
    assert rc in (0, -signal.SIGTERM) and "Application shutdown complete" in text, text
    # The shutdown wrote an index snapshot that holds the new document.
    with Collection.open(col) as reopened:
        assert "p1" in reopened and reopened.recovery is None
