"""The reranker on Ray Serve replicas: same scores, the deadline kept, validated rollouts that
stop and roll back, and ``twostage serve --ray local`` answering the HTTP API.

Everything is real: the shared local Ray cluster (tests/conftest.py), Serve deployments of the
shipped reranker, its ONNX graph with the head zeroed as the model the sanity gate refuses
(benches/sanity_set.py), a MiniLM collection of stdlib passages, and a ``twostage serve``
subprocess on its own local cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (the [ray] extra)")
pytest.importorskip("fastapi", reason="the server extra is not installed")

import httpx
import twostage
from conftest import free_port
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.distributed.ingress import scaling_from
from twostage.distributed.rollout import EngineFollower, members, rollout
from twostage.distributed.serving import (
    RayScorer,
    ReplicaConfig,
    Scaling,
    ScoreRequest,
    deploy_reranker,
    shutdown,
)
from twostage.encoder import Encoder
from twostage.engine import Engine, SearchResponse
from twostage.errors import InvalidArgument
from twostage.reranker import Reranker
from twostage.stdlib_docs import stdlib_docs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
from sanity_set import broken_head

SHIPPED = Path(twostage.__file__).resolve().parent / "models" / "twostage-rerank"
QUERIES = [
    "how do I read a gzip file",
    "parse json from a string",
    "sort a list of dictionaries by a key",
    "spawn a subprocess and read its output",
    "format a date as ISO 8601",
]


@pytest.fixture(scope="module")
def serve_up(ray_cluster: Any) -> Iterator[Any]:
    """Serve on the shared cluster, no HTTP proxy (handles only); shut down after."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    yield serve
    serve.shutdown()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dserve") / "col"
    with Collection.create(path, Encoder.load("minilm-l6")) as col:
        col.add(list(stdlib_docs(300))[::3])
    return path


@pytest.fixture(scope="module")
def col(built: Path) -> Iterator[Collection]:
    c = Collection.open(built, read_only=True)
    yield c
    c.close()


@pytest.fixture(scope="module")
def shipped() -> Reranker:
    return Reranker.load(SHIPPED)


@pytest.fixture(scope="module")
def one_replica(serve_up: Any) -> Iterator[Any]:
    """One replica of the shipped model on one thread, for the score and deadline tests."""
    handle = deploy_reranker(
        ReplicaConfig(reranker=str(SHIPPED), threads=1),
        Scaling(1, replica_cpus=0.25),
        app="ts-one",
    )
    yield handle
    shutdown("ts-one")


def pairs_for(rr: Reranker, col: Collection, query: str, n: int) -> tuple[Any, list[str]]:
    keys = col.index.search(col.embed_query(query), n).keys
    texts = [d.document().content for d in col.fetch(keys) if d is not None]
    return rr.pack(rr.tokenize_query(query), rr.token_ids(texts)), texts


# ---- settings (no cluster) -------------------------------------------------------------------


def test_scaling_settings_are_serve_options() -> None:
    fixed = Scaling(3, replica_cpus=0.5).deployment_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5}
    auto = scaling_from("1-4").deployment_options()["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (
        1,
        4,
        2.0,
    )
    for bad in ("0", "3-2", "x", "1-"):
        with pytest.raises(InvalidArgument):
            scaling_from(bad)
    with pytest.raises(InvalidArgument, match="ndcg_floor"):
        ReplicaConfig(ndcg_floor=0.3)


def test_the_documented_serve_config_builds(built: Path, tmp_path: Path) -> None:
    """docs/distributed-serving.md's Serve config: its ``import_path`` and ``args`` make the
    application (paths pointed at this test's collection, token file and model root)."""
    import yaml
    from ray.serve import Application
    from twostage.distributed import ingress

    doc = (Path(__file__).resolve().parents[1] / "docs" / "distributed-serving.md").read_text()
    config = yaml.safe_load(doc.split("```yaml\n", 1)[1].split("```", 1)[0])
    (app,) = config["applications"]
    assert app["import_path"] == "twostage.distributed.ingress:build"
    (tmp_path / "token").write_text("a-token-of-some-length\n")
    (tmp_path / "token").chmod(0o600)
    args = {
        **app["args"],
        "collection": str(built),
        "token_file": str(tmp_path / "token"),
        "model_roots": [str(tmp_path)],
    }
    assert isinstance(ingress.build(args), Application)
    with pytest.raises(InvalidArgument, match="'replica'"):
        ingress.build({**args, "replica": 2})  # a misspelt key is refused, naming it


# ---- scores and the deadline ---------------------------------------------------------------


def test_the_replicas_score_as_the_local_reranker(
    one_replica: Any, col: Collection, shipped: Reranker
) -> None:
    """The shipped model scores row-wise (batch-invariant): a replica's scores are the local
    model's, bit for bit, whatever else it batched them with; so are an engine's answers."""
    scorer = RayScorer(one_replica)
    pairs, texts = pairs_for(shipped, col, QUERIES[0], 30)
    got, reason = scorer.score_pairs(shipped, pairs, time.perf_counter() + 30.0, 0.0)
    assert reason is None and sorted(got) == list(range(len(texts)))
    local = shipped.score(QUERIES[0], texts)
    assert np.array_equal(np.asarray([got[i] for i in range(len(texts))], np.float32), local)
    # Concurrent requests share the replica's batches; each still gets its own scores.
    with ThreadPoolExecutor(3) as pool:
        done = list(
            pool.map(
                lambda q: (
                    q,
                    *scorer.score_pairs(
                        shipped, pairs_for(shipped, col, q, 12)[0], time.perf_counter() + 30.0, 0.0
                    ),
                ),
                QUERIES[1:4],
            )
        )
    for q, scores, why in done:
        assert why is None
        expect = shipped.score(q, pairs_for(shipped, col, q, 12)[1])
        assert np.array_equal(np.asarray([scores[i] for i in range(12)], np.float32), expect)
    # Through the engine: the same answer as in-process, each hit naming the version.
    cfg = EngineConfig(first_stage="dense", score_cache_size=0, budget_ms=30_000)
    here = Engine(col, reranker=shipped, config=cfg)
    there = Engine(col, reranker=shipped, config=cfg, scorer=scorer)
    a, b = here.search(QUERIES[1], k=10, depth=20), there.search(QUERIES[1], k=10, depth=20)
    assert not b.degraded and b.scored == 20 and b.reranker_version == shipped.version
    assert [(h.id, h.reranker_score) for h in a.hits] == [(h.id, h.reranker_score) for h in b.hits]
    assert {h.reranker_version for h in b.hits} == {shipped.version}


def test_a_sharded_engine_reranks_on_the_replicas(
    one_replica: Any, built: Path, tmp_path: Path, shipped: Reranker
) -> None:
    """The sharded collection's engine (twostage.distributed) takes the same scorer: its first
    stage on the shard actors, its pairs on the replica, each score the local model's."""
    from twostage.distributed import ShardedCollection, ShardedEngine

    sharded = ShardedCollection.from_collection(built, tmp_path / "sharded", 2, read_only=True)
    try:
        cfg = EngineConfig(first_stage="dense", score_cache_size=0, budget_ms=30_000)
        engine = ShardedEngine(sharded, reranker=shipped, config=cfg, scorer=RayScorer(one_replica))
        resp = engine.search(QUERIES[0], k=10, depth=20)
        assert not resp.degraded and resp.shards_answered == 2 and resp.scored == 20
        assert {h.reranker_version for h in resp.hits} == {shipped.version}
        docs = {d.id: d.content for d in sharded.get([h.id for h in resp.hits])}
        texts = [docs[h.id] for h in resp.hits]
        # The model's refine step scored the best of them again with longer pairs: each hit
        # reports the logit that placed it, at its own length.
        refine = shipped.fusion_refine
        assert refine is not None and len(resp.hits) <= refine.depth
        local = shipped.at_length(refine.max_length).score(QUERIES[0], texts)
        assert [h.reranker_score for h in resp.hits] == local.tolist()
    finally:
        sharded.close()


def test_a_replica_refuses_a_version_it_does_not_hold(
    one_replica: Any, col: Collection, models: Path
) -> None:
    """Pairs pinned to a model no replica holds are unscored with the reason: never scored by
    another version. (An engine on another model than the replicas gets this answer.)"""
    other = Reranker.load(models / "v2")  # the same weights under another name and version
    pairs, _ = pairs_for(other, col, QUERIES[2], 5)
    got, reason = RayScorer(one_replica).score_pairs(other, pairs, time.perf_counter() + 30, 0.0)
    assert got == {} and reason is not None
    assert reason.startswith("reranker failed") and other.version in reason
    reply = one_replica.score.remote(
        ScoreRequest(other.version, pairs.ids, pairs.type_ids, time.time() + 30)
    ).result(timeout_s=30)
    assert reply.version is None and reply.scores == {} and len(reply.held) == 1


def test_the_deadline_holds_when_the_replica_is_busy(
    one_replica: Any, col: Collection, shipped: Reranker
) -> None:
    """A replica busy with long requests (real ones, 1 thread) cannot score a 60 ms search's
    100 pairs: the scorer returns at the deadline (plus its 5 ms grace), the pairs unscored with
    a budget or timeout reason; through the engine, a degraded first-stage-order answer."""
    scorer = RayScorer(one_replica)
    big, _ = pairs_for(shipped, col, QUERIES[3], 60)
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            scorer.score_pairs(shipped, big, time.perf_counter() + 3.0, 0.0)

    hogs = [threading.Thread(target=hog, daemon=True) for _ in range(4)]
    for t in hogs:
        t.start()
    try:
        time.sleep(0.5)  # the replica's queue is full of them now
        # 100 pairs: more than one thread can score in 60 ms even when it takes them first
        # (30 pairs at the shipped 64 tokens sometimes fit, and then nothing was late).
        small, _ = pairs_for(shipped, col, QUERIES[4], 100)
        for _ in range(3):
            t0 = time.perf_counter()
            got, reason = scorer.score_pairs(shipped, small, t0 + 0.060, 0.0)
            took = (time.perf_counter() - t0) * 1000.0
            assert took < 60 + 5 + 100, took  # at the deadline, not after the work
            assert reason is not None and reason.startswith(("budget", "timeout")), reason
            assert len(got) < len(small.ids)
        eng = Engine(col, reranker=shipped, config=EngineConfig(first_stage="dense"), scorer=scorer)
        resp = eng.search(QUERIES[4], k=10, depth=100, budget_ms=100)
        assert resp.degraded and (resp.degraded_reason or "").startswith(("budget", "timeout"))
        assert resp.timings.total < 100 + 100 and len(resp.hits) == 10
        assert {h.reranker_version for h in resp.hits if h.reranked} <= {shipped.version}
    finally:
        stop.set()
        for t in hogs:
            t.join(10)


# ---- rollouts ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``v2``: the shipped weights under another name (another version, also good);
    ``flip``: the same until the test puts the zeroed head in it; ``zero``: that head."""
    root = tmp_path_factory.mktemp("dmodels")
    for name in ("v2", "flip"):
        shutil.copytree(SHIPPED, root / name)
    broken_head(SHIPPED, root / "zero", None)
    return root


def test_a_rollout_under_load_stops_at_a_broken_replica_and_rolls_back(
    serve_up: Any, col: Collection, shipped: Reranker, models: Path
) -> None:
    """Three replicas; searches run from two threads all along. Rollouts: to v2 (every
    replica validates and swaps, one at a time; then the engine follows); to ``flip``, whose
    model file turns into the zeroed head once the first replica has swapped (what a node
    with other files would see): the second replica's sanity gate refuses it, the rollout
    stops, the first replica goes back to v2, the third never sees it; back to the shipped
    model. No search fails, none mixes versions, none is scored by a model no engine pinned."""
    app = "ts-roll"
    deploy_reranker(
        ReplicaConfig(reranker=str(SHIPPED), threads=1), Scaling(3, replica_cpus=0.25), app=app
    )
    from ray import serve

    scorer = RayScorer(serve.get_deployment_handle("reranker", app_name=app))
    cfg = EngineConfig(first_stage="dense", score_cache_size=0, budget_ms=5000)
    engine = Engine(col, reranker=shipped, config=cfg, scorer=scorer)
    follower = EngineFollower(engine, app)
    answers: list[SearchResponse] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search(i: int) -> None:
        n = i
        while not stop.is_set():
            try:
                answers.append(engine.search(QUERIES[n % len(QUERIES)], k=10, depth=20))
            except BaseException as e:  # a failed search is what this test looks for
                errors.append(e)
            n += 1

    threads = [threading.Thread(target=search, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    v2 = Reranker.load(models / "v2").version
    flip = Reranker.load(models / "flip").version
    try:
        first = rollout(app, str(models / "v2"))
        assert first.ok, first
        assert [o.status for o in first.outcomes] == ["swapped"] * 3 + ["followed"]
        assert first.version == v2 and first.previous == shipped.version
        assert all(o.validation["sanity"]["passed"] for o in first.outcomes[:3])
        assert engine.reranker is not None and engine.reranker.version == v2
        settled = len(answers)

        # The second rollout: bake 1.5 s after each replica; the files change in between.
        result: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: result.update(r=rollout(app, str(models / "flip"), pause_s=1.5))
        )
        runner.start()
        deadline = time.monotonic() + 120
        while not any(s.version == flip for _, s, _ in members(app)):
            assert time.monotonic() < deadline and runner.is_alive(), "no replica swapped"
            time.sleep(0.05)
        tmp = models / "flip" / "model_int8.onnx.new"
        shutil.copy(models / "zero" / "model_int8.onnx", tmp)
        os.replace(tmp, models / "flip" / "model_int8.onnx")
        runner.join(180)
        second = result["r"]
        assert not second.ok and second.version == flip
        statuses = [(o.role, o.status) for o in second.outcomes]
        assert statuses == [("reranker", "rolled_back"), ("reranker", "refused")], statuses
        refused = second.outcomes[1]
        assert "no better than chance" in (refused.reason or ""), refused
        assert second.rolled_back == [second.outcomes[0].member]
        state = {m: s.version for m, s, _ in members(app)}
        assert sorted(state.values()) == sorted([v2] * 3 + [v2]), state  # 3 replicas + engine
        assert engine.reranker is not None and engine.reranker.version == v2

        third = rollout(app, str(SHIPPED))
        assert third.ok and third.version == shipped.version, third
        # Each replica still held the shipped model beside v2: swapped back without a reload.
        assert all(o.validation == {} for o in third.outcomes if o.role == "reranker")
        assert engine.reranker is not None and engine.reranker.version == shipped.version
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        follower.stop()
        shutdown(app)
    assert not errors, errors[:3]
    assert len(answers) > settled > 0
    seen: set[str | None] = set()
    for r in answers:
        assert not (r.degraded_reason or "").startswith("reranker failed"), r.degraded_reason
        versions = {h.reranker_version for h in r.hits if h.reranked}
        assert versions <= {r.reranker_version}, (versions, r.reranker_version)
        seen.add(r.reranker_version)
    assert flip not in seen
    assert {shipped.version, v2} <= seen, seen


# ---- twostage serve --ray ---------------------------------------------------------------------


def test_serve_ray_local_answers_the_http_api(built: Path, models: Path, tmp_path: Path) -> None:
    """``twostage serve --ray local`` in a subprocess: its own local cluster, the ingress and
    one replica; /search answers as ``twostage serve`` does, reranked on the replica;
    ``PUT /models/reranker`` rolls a model out; SIGINT deletes the app and exits 0."""
    shutil.copytree(built, tmp_path / "col")
    port = free_port()
    token = "ray-serve-" + "x" * 12
    env = {**os.environ, "TWOSTAGE_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twostage",
            "serve",
            str(tmp_path / "col"),
            "--port",
            str(port),
            "--ray",
            "local",
            "--replica-cpus",
            "0.5",
            "--model-root",
            str(models),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        r = httpx.post(f"{url}/search", json={"query": QUERIES[0], "budget_ms": 1000}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        version = body["reranker_version"]
        assert version is not None and version.startswith("twostage-rerank@"), body
        assert body["scored"] > 0 and body["hits"][0]["reranked"]
        assert r.headers["x-content-type-options"] == "nosniff"  # the same app's edge
        bad = httpx.post(f"{url}/search", json={"query": ""}, timeout=30)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "query_empty"
        auth = {"authorization": f"Bearer {token}"}
        put = httpx.put(f"{url}/models/reranker", json={"path": "v2"}, headers=auth, timeout=180)
        assert put.status_code == 200, put.text
        assert put.json()["model"]["version"].startswith("v2@")
        r = httpx.post(f"{url}/search", json={"query": QUERIES[1], "budget_ms": 1000}, timeout=30)
        assert r.status_code == 200 and r.json()["reranker_version"].startswith("v2@"), r.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait(30)
        log.close()
    out = (tmp_path / "serve.log").read_text()
    assert code == 0, out[-3000:]
    assert f"serving {tmp_path / 'col'} on {url}" in out
    json.dumps(body)  # a plain JSON answer
