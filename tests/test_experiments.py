"""Interleaving experiments in the server: create and refuse, interleaved answers, click
feedback and its rejections, reports, persistence across restarts, auth.

As in test_server.py: 200 real passages embedded by MiniLM (int8), small random
cross-encoders as the control (ce1, the live model) and the candidate (ce2), fp32 so that a
ranker's list can be checked against the same model run alone; each app on real uvicorn on
127.0.0.1, called over HTTP with httpx. The experiment store is read back with sqlite3.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="needs the server extra (fastapi)")
pytest.importorskip("httpx", reason="needs httpx")
pytest.importorskip("uvicorn", reason="needs uvicorn")

import httpx
from test_server import AUTH, QUERIES, TOKEN, ServerThread, envelope
from tinyce import model_root
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.encoder import Encoder
from twostage.engine import Engine
from twostage.interleave import Interleaving, outcome, sign_test
from twostage.reranker import Reranker
from twostage.server import ServerSettings, create_app
from twostage.stdlib_docs import stdlib_docs

K, DEPTH = 6, 20
CE2 = {"path": "ce2", "precision": "fp32"}


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exp") / "col"
    with Collection.create(path, Encoder.load("minilm-l6")) as col:
        col.add(list(stdlib_docs(200)))
    return path


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good models, one whose model.onnx is not ONNX, one that scores NaN."""
    root = model_root(tmp_path_factory.mktemp("models"))
    return root


@pytest.fixture(scope="module")
def versions(roots: Path) -> dict[str, str]:
    return {n: Reranker.load(roots / n, precision="fp32").version for n in ("ce1", "ce2")}


@pytest.fixture()
def col(tmp_path: Path, built: Path) -> Path:
    shutil.copytree(built, tmp_path / "col")
    return tmp_path / "col"


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


@contextlib.contextmanager
def serve(cfg: ServerSettings) -> Iterator[tuple[httpx.Client, Any]]:
    """A client for the app on loopback, and the app's service (to reach its collection)."""
    app = create_app(cfg)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c, app.state.service


def search(c: httpx.Client, query: str, **kw: Any) -> dict[str, Any]:
    r = c.post("/search", json={"query": query, "k": K, "depth": DEPTH, **kw})
    assert r.status_code == 200, r.text
    return dict(r.json())


def db_rows(col: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the experiment store as another process would (WAL: readers see commits)."""
    with contextlib.closing(sqlite3.connect(col / "experiments.sqlite")) as conn:
        return conn.execute(sql, args).fetchall()


def impression(col: Path, iid: str) -> Interleaving:
    (raw,) = db_rows(col, "SELECT interleaving FROM impressions WHERE id = ?", (iid,))[0]
    return Interleaving.from_dict(json.loads(raw))


def store_state(col: Path) -> list[list[tuple[Any, ...]]]:
    return [db_rows(col, f"SELECT * FROM {t} ORDER BY 1") for t in ("experiments", "feedback")]


# ---- creating experiments ----------------------------------------------------------------


def test_create_refuse_and_share_zero(col: Path, roots: Path, versions: dict[str, str]) -> None:
    with serve(settings(col, roots)) as (c, _):
        body = {"id": "e0", "candidate": CE2, "share": 0.0}
        envelope(c.post("/experiments", json=body), 401, "unauthorized")
        bad = {"Authorization": "Bearer wrong-token-xxxxxxxx"}
        envelope(c.post("/experiments", json=body, headers=bad), 401, "unauthorized")
        history = len(c.get("/models").json()["history"])
        cases: list[tuple[dict[str, Any], int, str, str]] = [
            ({"candidate": CE2, "share": 1.5}, 422, "invalid_share", "0..1"),
            ({"candidate": CE2, "share": -0.1}, 422, "invalid_share", "0..1"),
            ({"candidate": CE2, "share": "half"}, 422, "invalid_request", "share"),
            ({"candidate": CE2}, 422, "invalid_request", "share"),
            ({"candidate": CE2, "share": 1, "method": "coin"}, 422, "unknown_method", "team_draft"),
            ({"candidate": CE2, "share": 1, "id": "a b/c"}, 422, "invalid_experiment_id",
             "letters"),
            ({"candidate": {"path": "broken"}, "share": 1}, 422, "model_rejected",
             "could not load"),
            ({"candidate": {"path": "nan", "precision": "fp32"}, "share": 1}, 422,
             "model_rejected", "non-finite"),
            ({"candidate": {"path": "../x"}, "share": 1}, 403, "path_not_allowed", "outside"),
            ({"candidate": {"path": "nope"}, "share": 1}, 404, "model_not_found", "candidate"),
            ({"candidate": {"name": "minilm-l6"}, "share": 1}, 422, "model_rejected", "encoder"),
            ({"candidate": {}, "share": 1}, 422, "invalid_request", "exactly one"),
            ({"candidate": CE2, "control": {"path": "nan", "precision": "fp32"}, "share": 1},
             422, "model_rejected", "the control"),
            ({"candidate": CE2, "control": "old", "share": 1}, 422, "invalid_request", "control"),
            ({"candidate": CE2, "share": 1, "colour": "red"}, 422, "invalid_request", "colour"),
        ]  # fmt: skip
        for req, status, code, words in cases:
            msg = envelope(c.post("/experiments", json=req, headers=AUTH), status, code)
            assert words in msg, (req, msg)
        # Nothing was started, and the live service is as it was.
        assert c.get("/experiments").json() == {"experiments": []}
        models = c.get("/models").json()
        assert models["reranker"]["version"] == versions["ce1"]
        assert len(models["history"]) == history
        assert "impression_id" not in search(c, QUERIES[0])

        r = c.post("/experiments", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        rep = r.json()
        assert rep["state"] == "running" and rep["serving"] and rep["share"] == 0.0
        assert rep["method"] == "team_draft" and rep["impressions"] == 0
        assert rep["control"] == {
            "team": "A",
            "model": "live",
            "version": None,
            "versions_served": {},
        }
        assert rep["candidate"]["team"] == "B" and rep["candidate"]["version"] == versions["ce2"]
        assert rep["p_value"] == 1.0 and rep["winner"] is None
        for q in QUERIES * 2:  # share 0: nobody is drawn
            out = search(c, q)
            assert "impression_id" not in out and "experiment" not in out
            assert {h["reranker_version"] for h in out["hits"]} == {versions["ce1"]}
        assert c.get("/experiments/e0").json()["impressions"] == 0
        # One at a time; ids are unique.
        again = {"id": "e1", "candidate": CE2, "share": 1}
        msg = envelope(c.post("/experiments", json=again, headers=AUTH), 409, "experiment_running")
        assert "'e0'" in msg
        envelope(c.post("/experiments/e0/stop"), 401, "unauthorized")
        stopped = c.post("/experiments/e0/stop", headers=AUTH).json()
        assert stopped["state"] == "stopped" and not stopped["serving"] and stopped["stopped_at"]
        envelope(c.post("/experiments/e0/stop", headers=AUTH), 409, "experiment_stopped")
        envelope(c.post("/experiments/nope/stop", headers=AUTH), 404, "unknown_experiment")
        envelope(c.get("/experiments/nope"), 404, "unknown_experiment")
        envelope(
            c.post("/experiments", json={**again, "id": "e0"}, headers=AUTH),
            409,
            "experiment_exists",
        )
        assert c.post("/experiments", json=again, headers=AUTH).status_code == 201
        listed = [e["id"] for e in c.get("/experiments").json()["experiments"]]
        assert sorted(listed) == ["e0", "e1"]
        assert c.get("/models").json()["reranker"]["version"] == versions["ce1"]
        spec = c.get("/openapi.json").json()
        assert {"/experiments", "/experiments/{exp_id}", "/experiments/{exp_id}/stop"} <= set(
            spec["paths"]
        )
        clicks = spec["components"]["schemas"]["FeedbackIn"]["properties"]["clicks"]
        assert "ids of the documents clicked" in clicks["description"]


# ---- serving and feedback ----------------------------------------------------------------


def test_interleaved_answers_feedback_and_rejections(
    col: Path, roots: Path, versions: dict[str, str]
) -> None:
    with serve(settings(col, roots)) as (c, service):
        body = {"id": "e1", "candidate": CE2, "share": 1.0, "seed": 7}
        assert c.post("/experiments", json=body, headers=AUTH).status_code == 201
        # Each ranker alone, to check the lists the answer was interleaved from.
        alone = {
            "A": service.engine,
            "B": Engine(
                service.collection,
                reranker=Reranker.load(roots / "ce2", precision="fp32"),
                config=EngineConfig(budget_ms=10_000),
            ),
        }
        want_version = {"A": versions["ce1"], "B": versions["ce2"]}
        served: list[tuple[str, Interleaving]] = []
        for q in QUERIES:
            out = search(c, q)
            iid = out["impression_id"]
            assert out["experiment"] == {
                "id": "e1",
                "method": "team_draft",
                "control": versions["ce1"],
                "candidate": versions["ce2"],
            }
            assert out["models"]["candidate"] == versions["ce2"] and not out["degraded"]
            il = impression(col, iid)
            lists = {t: [h.id for h in e.search(q, K, DEPTH).hits] for t, e in alone.items()}
            assert list(il.a) == lists["A"] and list(il.b) == lists["B"]
            assert [h["id"] for h in out["hits"]] == list(il.docs) and len(il.docs) == K
            assert set(il.teams) == {"A", "B"}  # docs from both rankers' lists
            for h, team in zip(out["hits"], il.teams, strict=True):
                assert h["id"] in lists[team] and h["reranker_version"] == want_version[team]
            served.append((iid, il))
        # Not drawn: the first stage alone is the same for both sides.
        assert "impression_id" not in search(c, QUERIES[0], rerank=False)
        nothing = search(c, QUERIES[0], filter={"colour": "ultraviolet"})  # no hits to judge
        assert nothing["hits"] == [] and "impression_id" not in nothing

        def team_docs(il: Interleaving, team: str) -> list[str]:
            return [d for d, t in zip(il.docs, il.teams, strict=True) if t == team]

        # Clicks chosen by team: B; A and B; A, A; A.
        (i0, il0), (i1, il1), (i2, il2), (i3, il3) = served
        plan = [
            (i0, [team_docs(il0, "B")[0]], "candidate", {"control": 0, "candidate": 1}),
            (i1, [team_docs(il1, "B")[0], team_docs(il1, "A")[0]], "tie",
             {"control": 1, "candidate": 1}),
            (i2, team_docs(il2, "A")[:2], "control", {"control": 2, "candidate": 0}),
            (i3, [team_docs(il3, "A")[0]], "control", {"control": 1, "candidate": 0}),
        ]  # fmt: skip
        # Refusals first (one of them on i3, which must stay free of partial feedback).
        before = store_state(col)
        other = next(d for d in lists["A"] + lists["B"] + ["topic:nowhere"] if d not in il3.docs)
        rejections: list[tuple[Any, int, str, str]] = [
            ({"impression_id": "no-such-impression", "clicks": [il3.docs[0]]}, 404,
             "unknown_impression", "no-such-impression"),
            ({"impression_id": i3, "clicks": [il3.docs[0], other]}, 422, "click_not_shown", other),
            ({"impression_id": i3, "clicks": []}, 422, "no_clicks", "empty"),
            ({"impression_id": i3, "clicks": [il3.docs[1], il3.docs[1]]}, 422, "duplicate_click",
             "twice"),
            ({"impression_id": i3, "clicks": il3.docs[0]}, 422, "invalid_request", "clicks"),
            ({"impression_id": i3, "clicks": [1, 2]}, 422, "invalid_request", "clicks"),
            ({"impression_id": i3}, 422, "invalid_request", "clicks"),
            ({"clicks": [il3.docs[0]]}, 422, "invalid_request", "impression_id"),
            ({"impression_id": "", "clicks": [il3.docs[0]]}, 422, "invalid_request",
             "impression_id"),
            ({"impression_id": i3, "clicks": [il3.docs[0]], "when": 1}, 422, "invalid_request",
             "when"),
            ({}, 422, "invalid_request", "impression_id"),
        ]  # fmt: skip
        for fb, status, code, words in rejections:
            msg = envelope(c.post("/feedback", json=fb), status, code)
            assert words in msg, (fb, msg)
        envelope(
            c.post("/feedback", content=b'{"impression_id": ', headers=AUTH_JSON),
            422,
            "invalid_json",
        )
        envelope(c.post("/feedback", content=b"", headers=AUTH_JSON), 422, "invalid_request")
        assert store_state(col) == before
        assert c.get("/experiments/e1").json()["feedback"] == 0

        for iid, clicks, side, credit in plan:  # no token needed: whoever searched may send
            r = c.post("/feedback", json={"impression_id": iid, "clicks": clicks})
            assert r.status_code == 200, r.text
            assert r.json() == {
                "impression_id": iid,
                "experiment": "e1",
                "outcome": side,
                "credit": credit,
            }
        # Hand-checked against the library's own crediting.
        for (_, clicks, side, _), (_, il) in zip(plan, served, strict=True):
            pos = [il.docs.index(d) for d in clicks]
            assert {"A": "control", "B": "candidate", "tie": "tie"}[outcome(il, pos)] == side
        # A second feedback for an impression is a duplicate, even with other clicks.
        before = store_state(col)
        msg = envelope(
            c.post("/feedback", json={"impression_id": i0, "clicks": [il0.docs[0]]}),
            409,
            "duplicate_feedback",
        )
        assert i0 in msg and store_state(col) == before
        stored = db_rows(col, "SELECT clicks, outcome FROM feedback WHERE impression = ?", (i1,))
        assert stored == [(json.dumps(plan[1][1]), "tie")]

        rep = c.get("/experiments/e1").json()
        assert rep["impressions"] == 4 and rep["feedback"] == 4 and rep["clicks"] == 6
        assert rep["wins"] == {"control": 2, "candidate": 1}
        assert rep["losses"] == {"control": 1, "candidate": 2} and rep["ties"] == 1
        assert rep["p_value"] == pytest.approx(sign_test(2, 1)) and rep["winner"] is None
        assert rep["control"]["versions_served"] == {versions["ce1"]: 4}
        metrics = c.get("/metrics").text
        for line in (
            'twostage_experiment_impressions_total{experiment="e1"} 4.0',
            'twostage_experiment_feedback_total{experiment="e1",outcome="control"} 2.0',
            'twostage_experiment_feedback_total{experiment="e1",outcome="tie"} 1.0',
            'twostage_experiment_feedback_rejected_total{reason="duplicate_feedback"} 1.0',
            'twostage_experiment_feedback_rejected_total{reason="click_not_shown"} 1.0',
        ):
            assert line in metrics, line

        # Stopped: no more interleaving; feedback still taken within the grace period.
        late = search(c, QUERIES[0])["impression_id"]
        c.post("/experiments/e1/stop", headers=AUTH).raise_for_status()
        assert "impression_id" not in search(c, QUERIES[0])
        click = team_docs(impression(col, late), "B")[:1]
        r = c.post("/feedback", json={"impression_id": late, "clicks": click})
        assert r.status_code == 200 and r.json()["outcome"] == "candidate"
        rep = c.get("/experiments/e1").json()
        assert rep["state"] == "stopped" and rep["impressions"] == 5
        assert rep["wins"] == {"control": 2, "candidate": 2} and rep["ties"] == 1


AUTH_JSON = {**AUTH, "content-type": "application/json"}


# ---- persistence ---------------------------------------------------------------------------


def test_restart_resumes_and_keeps_counts(col: Path, roots: Path, versions: dict[str, str]) -> None:
    """Experiment, impressions and feedback survive restarts; the running one serves again
    (its models loaded anew); a stopped one takes no feedback past the grace period; one
    whose model files changed is not resumed."""
    ce1 = {"path": "ce1", "precision": "fp32"}
    body = {"id": "r1", "candidate": ce1, "control": CE2, "share": 1, "method": "balanced"}
    with serve(settings(col, roots)) as (c, _):
        assert c.post("/experiments", json=body, headers=AUTH).status_code == 201
        first = [search(c, q)["impression_id"] for q in QUERIES[:3]]
        il = impression(col, first[0])
        r = c.post("/feedback", json={"impression_id": first[0], "clicks": [il.docs[0]]})
        assert r.status_code == 200
        want = {"A": "control", "B": "candidate", "tie": "tie"}[outcome(il, [0])]
        assert r.json()["outcome"] == want
        rep1 = c.get("/experiments/r1").json()

    with serve(settings(col, roots)) as (c, _):  # a new app on the same collection
        rep = c.get("/experiments/r1").json()
        assert rep == rep1  # everything, counts included
        assert rep["state"] == "running" and rep["serving"]
        assert rep["control"]["version"] == versions["ce2"]
        assert rep["candidate"]["version"] == versions["ce1"]
        out = search(c, QUERIES[3])
        assert out["experiment"]["control"] == versions["ce2"]  # resumed, both models loaded
        envelope(
            c.post("/feedback", json={"impression_id": first[0], "clicks": [il.docs[1]]}),
            409,
            "duplicate_feedback",
        )
        il1 = impression(col, first[1])
        r = c.post("/feedback", json={"impression_id": first[1], "clicks": list(il1.docs[:2])})
        assert r.status_code == 200
        assert c.get("/experiments/r1").json()["impressions"] == 4
        c.post("/experiments/r1/stop", headers=AUTH).raise_for_status()
        # A running experiment on a model whose files will change before the next start.
        mutable = roots / "mutable"
        shutil.rmtree(mutable, ignore_errors=True)
        shutil.copytree(roots / "ce2", mutable)
        m = {"id": "m1", "candidate": {"path": "mutable", "precision": "fp32"}, "share": 1}
        assert c.post("/experiments", json=m, headers=AUTH).status_code == 201
    shutil.copy(roots / "ce1" / "model.safetensors", mutable / "model.safetensors")

    with serve(settings(col, roots, feedback_grace_s=0)) as (c, _):
        rep = c.get("/experiments/r1").json()
        assert rep["state"] == "stopped" and rep["impressions"] == 4 and rep["feedback"] == 2
        msg = envelope(
            c.post("/feedback", json={"impression_id": first[2], "clicks": [il.docs[0]]}),
            409,
            "experiment_stopped",
        )
        assert "'r1'" in msg
        m1 = c.get("/experiments/m1").json()
        assert m1["state"] == "stopped" and not m1["serving"]
        assert "could not resume" in m1["stop_reason"] and "files changed" in m1["stop_reason"]
        assert "impression_id" not in search(c, QUERIES[0])
    shutil.rmtree(mutable)
