"""The HTTP service: an app factory, a lifespan that loads everything before it is ready.

``create_app(settings)`` returns a FastAPI app. Its lifespan opens the collection (which
loads the encoder), loads and validates the reranker, starts the cross-request batcher and
the thread pools, and only then serves; on shutdown it drains, closes the pools and writes
the index snapshot. Inference never runs on the event loop: searches run on a pool of
``workers`` threads, writes on one writer thread, model loads on one admin thread.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

==========================  =======  ================================================
``POST /search``            read     query, k, depth, budget_ms, rerank, filter
``GET /documents/{id}``     read     one stored document
``POST /documents``         write    batch upsert
``DELETE /documents/{id}``  write    delete one document
``GET /models``             read     serving versions, load and validation figures
``PUT /models/reranker``    admin    {"path"|"name", "precision"}: load, validate, swap
``POST /models/reranker/rollback``  admin  back to the previous model
``POST /experiments``       admin    start an interleaving experiment (control vs candidate)
``GET /experiments``        read     every experiment's report
``GET /experiments/{id}``   read     impressions, clicks, wins, ties, p-value, winner
``POST /experiments/{id}/stop``  admin  stop one (its results stay)
``POST /feedback``          read     the clicks on an interleaved answer (its impression id)
``GET /healthz``            open     the process is alive
``GET /readyz``             open     collection open and models loaded
``GET /metrics``            read     Prometheus text
``GET /``                   open     the search page
==========================  =======  ================================================

Overload: searches and writes pass a bounded admission count (``max_pending_searches``,
``max_pending_writes``); over it, or when a queued search's deadline passes before a thread
takes it, the answer is 503 ``overloaded`` with ``Retry-After``, counted in
``twostage_shed_total``. Without the token a search may not ask for more depth or budget than
``max_anonymous_depth`` / ``max_anonymous_budget_ms`` (422 ``depth_over_limit``,
``budget_over_limit``, naming the cap).

>>> from twostage.server import ServerSettings, create_app
>>> app = create_app(ServerSettings(collection="docs/", token="s3cret-token"))
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from twostage import __version__
from twostage._models import BUILTINS
from twostage.collection import Collection
from twostage.config import default_reranker
from twostage.document import Document
from twostage.engine import Engine, PairScorer, SearchResponse
from twostage.errors import TwostageError
from twostage.reranker import Reranker
from twostage.server.batching import Batcher
from twostage.server.errors import STATUS_CODES, ApiError, BodyTooLarge, Overloaded, from_library
from twostage.server.experiments import Experiments, ExperimentStore, ModelSpec
from twostage.server.metrics import CONTENT_TYPE, Metrics
from twostage.server.models import Installer, ModelRegistry, SanityRefused
from twostage.server.security import bearer_ok, require_token
from twostage.server.settings import Precision, ServerSettings

log = logging.getLogger("twostage.server")
STATIC = Path(__file__).resolve().parent / "static"
T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---- the HTTP edge: request and response bodies ------------------------------------------

# A UTF-16 surrogate alone: JSON's "\ud800" escape decodes to one, but it is not text (it
# cannot be encoded as UTF-8, so it would fail later, in the store, the index or an answer).
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_MSG = "holds a lone surrogate (U+D800..U+DFFF): not valid Unicode text"


def _text(value: Any) -> Any:
    # Before pydantic's own check, whose message for this case ("unable to parse raw data as
    # a unicode string") does not say what is wrong; non-strings are left to it.
    if isinstance(value, str) and _SURROGATE.search(value):
        raise ValueError(_SURROGATE_MSG)
    return value


def _json_text(value: Any, where: str = "") -> Any:
    """``value`` unchanged if no key or string in it holds a lone surrogate (the message
    names where: ``['a'][0]``)."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise ValueError(f"{where or 'the value'} {_SURROGATE_MSG}")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                raise ValueError(f"a key in {where or 'the object'} {_SURROGATE_MSG}")
            _json_text(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_text(item, f"{where}[{i}]")
    return value


#: Request strings: refused (422, naming the field) when they hold a lone surrogate.
Text = Annotated[str, BeforeValidator(_text)]
JsonObject = Annotated[dict[str, Any], BeforeValidator(_json_text)]
# Request numbers are StrictInt / StrictFloat / StrictBool: JSON true is not 1 (pydantic's
# lax mode reads it as one), "5" is not 5; an integer is still a valid float.


class SearchIn(BaseModel):
    """A search request."""

    model_config = ConfigDict(extra="forbid")
    query: Text = Field(description="The question", examples=["how do I read a gzip file"])
    k: StrictInt | None = Field(None, description="Hits to return (default: the server's k)")
    depth: StrictInt | None = Field(None, description="Candidates the reranker may score; 0: none")
    budget_ms: StrictFloat | None = Field(None, description="The deadline for the whole search")
    rerank: StrictBool = Field(True, description="False: the first stage alone")
    filter: JsonObject | None = Field(
        None, description="Metadata equality; a list value matches any of its items"
    )
    first_stage: Literal["dense", "bm25", "hybrid"] | None = Field(
        None,
        description="Where candidates come from: the bi-encoder and HNSW (dense), the BM25 "
        "index (bm25), or both fused by reciprocal rank (hybrid); default: the server's",
    )


class HitOut(BaseModel):
    id: str
    score: float = Field(
        description="the final score hits are ordered by: when reranked, the reranker's "
        "output fused with the first-stage signals; else the first-stage score"
    )
    first_stage_score: float
    first_stage_rank: int = Field(description="rank in the first stage's list, from 1")
    reranked: bool
    reranker_version: str | None
    title: str
    snippet: str
    metadata: dict[str, Any] | None = None
    reranker_score: float | None = Field(
        None, description="the cross-encoder's own output before fusion (null: not reranked)"
    )


class TimingsOut(BaseModel):
    queue: float = Field(description="waiting for a search thread (counts against the budget)")
    encode: float
    ann: float
    bm25: float = Field(description="the BM25 search (bm25 and hybrid first stages)")
    fetch: float
    rerank: float
    total: float


class ExperimentRef(BaseModel):
    id: str
    method: str
    control: str | None = Field(description="the version of team A's ranker")
    candidate: str | None = Field(description="the version of team B's ranker")


class SearchOut(BaseModel):
    """Hits, per-stage timings (ms), how the answer was made, the models serving."""

    query: str
    hits: list[HitOut]
    timings: TimingsOut
    degraded: bool
    degraded_reason: str | None
    reranker_version: str | None
    first_stage: str
    candidates: int
    scored: int
    cached_scores: int
    query_cached: bool
    notes: list[str]
    models: dict[str, str | None]
    impression_id: str | None = Field(
        None, description="Only in an interleaved answer: send it back with POST /feedback"
    )
    experiment: ExperimentRef | None = Field(
        None, description="Only in an interleaved answer: the experiment and its two versions"
    )


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Text = Field(min_length=1, max_length=512)
    text: Text = ""
    title: Text = ""
    metadata: JsonObject | None = None


class DocumentsIn(BaseModel):
    """A batch upsert: an id that exists is replaced."""

    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn]


class ModelUpdateIn(BaseModel):
    """Exactly one of ``path`` (a folder under a model root) or ``name`` (a built-in)."""

    model_config = ConfigDict(extra="forbid")
    path: Text | None = Field(None, examples=["ce-v2"])
    name: Text | None = Field(None, examples=["twostage-rerank"])
    precision: Precision | None = None
    sanity_check: StrictBool = Field(
        True,
        description="false: install the model even if it ranks the shipped sanity set no "
        "better than chance (its figures are still measured and shown)",
    )


class ExperimentIn(BaseModel):
    """An interleaving experiment: the control is team A, the candidate team B."""

    model_config = ConfigDict(extra="forbid")
    id: Text | None = Field(None, description="default: exp-<random hex>", examples=["ce2-vs-live"])
    candidate: ModelUpdateIn = Field(description="the model to try, as PUT /models/reranker")
    control: Literal["live"] | ModelUpdateIn = Field(
        "live", description='"live": the serving reranker (whatever it is when a search runs)'
    )
    share: StrictFloat = Field(
        description="the share of searches drawn into it, 0..1", examples=[0.1]
    )
    method: Text = Field("team_draft", description="team_draft or balanced")
    seed: StrictInt | None = Field(
        None, ge=0, le=2**63 - 1, description="seeds the draws and the interleavings"
    )


class FeedbackIn(BaseModel):
    """The clicks on one interleaved answer, sent once per impression."""

    model_config = ConfigDict(extra="forbid")
    impression_id: Text = Field(min_length=1, max_length=128)
    clicks: list[Annotated[Text, Field(min_length=1, max_length=512)]] = Field(
        max_length=1000,
        description="the ids of the documents clicked, each once, in the order first clicked",
        examples=[["topic:gzip", "module:zlib"]],
    )


class FeedbackOut(BaseModel):
    impression_id: str
    experiment: str
    outcome: Literal["control", "candidate", "tie"]
    credit: dict[str, int] = Field(description="clicks credited to control and candidate")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    """The envelope of every error."""

    error: ErrorBody


# Declares the bearer scheme in OpenAPI; the guards below do the checking (one message).
_BEARER = HTTPBearer(auto_error=False, description="the server's token (TWOSTAGE_TOKEN)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


# ---- the service's state -----------------------------------------------------------------


class Service:
    """Everything the lifespan builds; endpoints read it through ``app.state.service``."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        *,
        scorer: PairScorer | None = None,
        install: Installer | None = None,
        on_load: Callable[[Service], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # Serving on Ray (twostage.distributed.ingress): the replicas score, a rollout installs.
        self._scorer = scorer
        self._install = install
        self._on_load = on_load
        self.ready = False
        self.collection: Collection | None = None
        self.engine: Engine | None = None
        self.registry: ModelRegistry | None = None
        self.experiments: Experiments | None = None
        self.batcher: Batcher | None = None
        self.search_pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="ts-search")
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="ts-write")
        self.admin_pool = ThreadPoolExecutor(1, thread_name_prefix="ts-admin")
        self.searches = Admission(
            "search", "searches", settings.search_limit, settings, metrics, settings.workers
        )
        self.writes = Admission("write", "writes", settings.max_pending_writes, settings, metrics)
        self.started = time.time()

    def load(self) -> None:
        """Open the collection, load the reranker, build the engine (blocking: admin pool)."""
        s = self.settings
        t0 = time.perf_counter()
        col = Collection.open(s.collection, read_only=s.read_only)
        self.collection = col
        col.embed_query("warm up the encoder")  # first-call kernel set-up, not a user's
        spec = s.reranker
        if spec is None:
            spec = default_reranker()
        rr: Reranker | None = None
        t1 = time.perf_counter()
        if spec and spec != "none":
            rr = Reranker.load(spec, precision=s.reranker_precision)
        load_ms = (time.perf_counter() - t1) * 1000.0
        if s.batching and self._scorer is None:
            self.batcher = Batcher(
                max_pairs=s.batch_max_pairs,
                max_wait_ms=s.batch_wait_ms,
                workers=s.batch_workers,
                grace_ms=s.engine.cancel_grace_ms,
                on_batch=self.metrics.observe_batch,
            )
        self.engine = Engine(col, reranker=rr, config=s.engine, scorer=self._scorer or self.batcher)
        self.registry = ModelRegistry(
            self.engine,
            s,
            on_update=lambda result: self.metrics.model_updates.labels(result=result).inc(),
            install=self._install,
        )
        if rr is not None and spec:
            # The operator's model passes the same golden-set and sanity checks (the floor
            # only warns).
            try:
                figures = self.registry.validate(rr, enforce_floor=False)
            except SanityRefused as e:
                raise SanityRefused(
                    f"the reranker {spec} is refused: {e} (serve it anyway with "
                    "--no-sanity-check, ServerSettings(sanity_check=False))"
                ) from None
            self.registry.adopt(rr, spec, s.reranker_precision, load_ms, figures)
        # The model a swap chose before a restart, checked as any swap; never fails the start.
        self.registry.restore()
        self.experiments = Experiments(
            ExperimentStore(s.experiments_path),
            self.engine,
            self.registry,
            grace_s=s.feedback_grace_s,
            metrics=self.metrics,
        )
        self.experiments.resume()
        self.metrics.live(self.live)
        if self._on_load is not None:
            self._on_load(self)
        log.info(
            "ready in %.1f s: %d documents, reranker %s, batching %s",
            time.perf_counter() - t0,
            len(col),
            rr.version if rr else "none",
            "on" if self.batcher else "off",
        )

    def live(self) -> dict[str, Any]:
        """Scrape-time figures for the metrics collector."""
        eng, col = self.engine, self.collection
        if eng is None or col is None:
            return {}
        rr = eng.reranker
        return {
            "caches": eng.cache_stats(),
            "models": {
                "encoder": f"{col.encoder.name}@{col.encoder.fingerprint}",
                "reranker": rr.version if rr else None,
            },
            "documents": len(col),
            "queued": self.batcher.queued() if self.batcher else 0,
            "ready": 1 if self.ready else 0,
        }

    def close(self) -> None:
        """Stop the batcher and the pools, then snapshot and close the collection."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()
        for pool in (self.search_pool, self.write_pool, self.admin_pool):
            pool.shutdown(wait=True)
        if self.experiments is not None:
            self.experiments.close()
        if self.collection is not None:
            self.collection.close()

    # ---- helpers for endpoints ----
    def need(self) -> tuple[Engine, Collection, ModelRegistry]:
        """The loaded parts, or 503 while starting or stopping."""
        if not self.ready or self.engine is None or self.collection is None:
            raise ApiError(503, "not_ready", "the service is starting or stopping; retry shortly")
        assert self.registry is not None
        return self.engine, self.collection, self.registry

    def need_experiments(self) -> Experiments:
        """The experiments, or 503 while starting or stopping."""
        self.need()
        assert self.experiments is not None
        return self.experiments

    async def run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn`` on ``pool``; library errors become envelopes."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, functools.partial(fn, *args))
        except ApiError:
            raise
        except Exception as e:
            err = from_library(e)
            if err.status >= 500:
                log.exception("internal error in %s", getattr(fn, "__name__", fn))
            raise err from e


class Admission:
    """A bound on the requests of one kind waiting for or holding its threads, and (for
    searches) the order in which waiting ones get a thread.

    Over the bound a request is refused at once (503 ``overloaded``, ``Retry-After``) rather
    than queued behind work it cannot overtake: a burst only makes every answer late. With
    ``threads``, a request also waits for one of that many places before it is handed to its
    pool: the earliest deadline first (a 150 ms search overtakes a 1 s one), and one still
    waiting when its deadline passes is refused then, not run late. Only the event loop calls
    these methods, so plain counters are enough.
    """

    def __init__(
        self,
        kind: str,
        plural: str,
        limit: int,
        settings: ServerSettings,
        metrics: Metrics,
        threads: int | None = None,
    ) -> None:
        self.kind = kind
        self._plural = plural
        self.limit = limit
        self.pending = 0
        self._retry = settings.retry_after_s
        self._metrics = metrics
        self._free = threads or 0
        # (deadline, arrival order, the future a freed place is handed through)
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def full(self) -> bool:
        """Whether one more request would be refused."""
        return self.pending >= self.limit

    def refusal(self) -> Overloaded:
        """The answer to a request over the bound (counted)."""
        self._metrics.shed.labels(kind=self.kind, reason="queue_full").inc()
        return Overloaded(
            f"the server is at its bound of {self.limit} {self._plural} waiting or "
            f"running; retry after {self._retry} s",
            reason="queue_full",
            retry_after_s=self._retry,
        )

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place while the request runs; counts what is shed inside it too."""
        if self.full:
            raise self.refusal()
        self.pending += 1
        self._metrics.pending.labels(kind=self.kind).set(self.pending)
        try:
            yield
        except Overloaded as e:
            self._metrics.shed.labels(kind=self.kind, reason=e.reason).inc()
            raise
        finally:
            self.pending -= 1
            self._metrics.pending.labels(kind=self.kind).set(self.pending)

    async def thread(self, arrived: float, budget_ms: float) -> None:
        """Wait for a thread, earliest deadline first; raise :meth:`late` at the deadline
        (``budget_ms`` after ``arrived``, a ``perf_counter``) if none came. A budget of 0
        asks for the first stage only: it waits in deadline order, and is never shed."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        deadline = arrived + budget_ms / 1000.0
        heapq.heappush(self._waiting, (deadline, next(self._order), fut))
        timer = None
        if budget_ms > 0:
            waited = max(0.0, deadline - time.perf_counter())
            timer = loop.call_later(waited, self._expire, fut, arrived, budget_ms)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # handed a thread just as the request was cancelled
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, fut: asyncio.Future[None], arrived: float, budget_ms: float) -> None:
        if not fut.done():
            waited = (time.perf_counter() - arrived) * 1000.0
            fut.set_exception(self.late(waited, budget_ms))

    def release(self) -> None:
        """Give a thread back: to the waiting request with the earliest deadline."""
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():  # else shed at its deadline, or cancelled
                fut.set_result(None)
                return
        self._free += 1

    def late(self, waited_ms: float, budget_ms: float) -> Overloaded:
        """The refusal of a search whose deadline passed while it waited for a thread."""
        return Overloaded(
            f"the search waited {waited_ms:.0f} ms for a thread, past its {budget_ms:g} ms "
            f"budget: refused rather than answered late; retry after {self._retry} s",
            reason="deadline",
            retry_after_s=self._retry,
        )


# ---- middleware: body limit, metrics, headers ----------------------------------------------


class Edge:
    """Pure ASGI middleware: body-size limit, request metrics, security headers."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc = self.service
        limit = svc.settings.max_body_bytes
        t0 = time.perf_counter()
        status = 500
        metrics = svc.metrics
        metrics.inflight.inc()
        refused_route: str | None = None
        try:
            length = _content_length(scope)
            if length is not None and length > limit:
                status = 413
                await _send_error(send, BodyTooLarge(limit))
                return
            # Over the bound, refuse before the body is read and validated: under overload
            # refusals are most of the traffic, and they must cost the loop next to nothing.
            gate = _admission_for(svc, scope["method"], scope["path"])
            if gate is not None and gate[0].full:
                status, refused_route = 503, gate[1]
                await _send_error(send, gate[0].refusal())
                return
            seen = 0
            too_large = False

            async def limited_receive() -> Message:
                nonlocal seen, too_large
                msg = await receive()
                if msg["type"] == "http.request":
                    seen += len(msg.get("body", b""))
                    if seen > limit:
                        too_large = True
                        raise BodyTooLarge(limit)
                return msg

            refusal = _error_response(BodyTooLarge(limit))

            async def send_with_headers(msg: Message) -> None:
                nonlocal status
                if too_large:
                    # The framework turns an error raised while it reads the body into its
                    # own 400; the client must see why: answer 413 with the envelope.
                    if msg["type"] == "http.response.start":
                        status = 413
                        msg = {
                            "type": "http.response.start",
                            "status": 413,
                            "headers": refusal.raw_headers,
                        }
                    elif msg["type"] == "http.response.body":
                        if msg.get("more_body", False):
                            return
                        msg = {"type": "http.response.body", "body": refusal.body}
                if msg["type"] == "http.response.start":
                    status = int(msg["status"])
                    headers = list(msg.get("headers", []))
                    headers.append((b"x-content-type-options", b"nosniff"))
                    headers.append((b"referrer-policy", b"no-referrer"))
                    msg["headers"] = headers
                await send(msg)

            await self.app(scope, limited_receive, send_with_headers)
        finally:
            metrics.inflight.dec()
            route = scope.get("route")
            path = getattr(route, "path", None) or refused_route or "unmatched"
            metrics.requests.labels(route=path, method=scope["method"], status=str(status)).inc()
            metrics.latency.labels(route=path).observe(time.perf_counter() - t0)


def _admission_for(svc: Service, method: str, path: str) -> tuple[Admission, str] | None:
    """The admission a request passes (and its route's name), if any."""
    if method == "POST" and path == "/search":
        return svc.searches, "/search"
    if method == "POST" and path == "/documents":
        return svc.writes, "/documents"
    if method == "DELETE" and path.startswith("/documents/"):
        return svc.writes, "/documents/{doc_id:path}"
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, err: ApiError) -> None:
    resp = _error_response(err)
    await send(
        {
            "type": "http.response.start",
            "status": resp.status_code,
            "headers": resp.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": resp.body})


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _validation_message(exc: RequestValidationError) -> ApiError:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return ApiError(422, "invalid_json", "the request body is not valid JSON")
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        # A validator's own message, without pydantic's "Value error, " in front.
        parts.append(f"{loc}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}")
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return ApiError(422, "invalid_request", "; ".join(parts) + more)


# ---- the factory ----------------------------------------------------------------------------


def create_app(
    settings: ServerSettings,
    *,
    scorer: PairScorer | None = None,
    install: Installer | None = None,
    on_load: Callable[[Service], None] | None = None,
) -> FastAPI:
    """The FastAPI app for ``settings``; nothing is loaded until its lifespan starts.

    ``scorer`` scores the reranker's pairs elsewhere instead of this process's batcher,
    ``install`` installs a validated model (before this engine's own swap), and ``on_load``
    runs once everything is loaded: how :mod:`twostage.distributed.ingress` serves the same app
    with the reranker on Ray replicas.

    >>> app = create_app(ServerSettings(collection="docs/", insecure_no_auth=True))
    >>> sorted(r.path for r in app.routes if "search" in r.path)
    ['/search']
    """
    metrics = Metrics()
    service = Service(settings, metrics, scorer=scorer, install=install, on_load=on_load)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(service.admin_pool, service.load)
        except BaseException as e:
            # What a refused start says in one line (the CLI prints it instead of a traceback).
            if isinstance(e, (TwostageError, ApiError)):
                app.state.startup_error = str(getattr(e, "message", None) or e)
            # A refused start (a model that fails validation) lets go of the collection's
            # writer lock and the pools, so the same process can start again.
            await loop.run_in_executor(None, service.close)
            raise
        tasks: list[asyncio.Task[None]] = []
        hup = _install_sighup(loop, service)
        if settings.watch_models:
            tasks.append(asyncio.create_task(_watch(service)))
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            for t in tasks:
                t.cancel()
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            await loop.run_in_executor(None, service.close)

    def write_guard(request: Request, _: Credentials) -> None:
        require_token(request.headers.get("authorization"), settings.token)

    def read_guard(request: Request, _: Credentials) -> None:
        if settings.protect_reads:
            require_token(request.headers.get("authorization"), settings.token)

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (401, 404, 413, 422, 503)
    }
    app = FastAPI(
        title="twostage",
        version=__version__,
        description="Two-stage semantic search: HNSW candidates, cross-encoder rerank, "
        "hot-swappable models. Every error is {'error': {'code', 'message'}}.",
        lifespan=lifespan,
        responses=errors,
        # /docs is served below from local assets (no CDN: it works offline); no ReDoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error")
        msg = str(exc.detail)
        if exc.status_code == 400:
            # FastAPI's only 400: a body it could not decode (not UTF-8): malformed JSON, as a
            # body that is UTF-8 but not JSON is.
            return _error_response(
                ApiError(422, "invalid_json", "the request body is not valid JSON (UTF-8)")
            )
        if exc.status_code == 404:
            msg = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        headers = dict(exc.headers) if exc.headers else None
        return _error_response(ApiError(exc.status_code, code, msg, headers=headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(from_library(exc))

    # ---- probes and metrics ----
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """The process is alive (answers while loading, too)."""
        return {"status": "ok", "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> dict[str, Any]:
        """Ready: the collection is open and the models are loaded; else 503 not_ready."""
        eng, col, _ = service.need()
        rr = eng.reranker
        return {
            "status": "ready",
            "documents": len(col),
            "encoder": col.encoder.name,
            "reranker": rr.version if rr else None,
            "batching": service.batcher is not None,
            # What a search that does not say gets: the page shows these.
            "defaults": dataclasses.asdict(eng.defaults),
        }

    @app.get(
        "/metrics",
        tags=["ops"],
        dependencies=[Depends(read_guard)],
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    )
    async def metrics_text() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # ---- search ----
    @app.post(
        "/search", response_model=SearchOut, tags=["search"], dependencies=[Depends(read_guard)]
    )
    async def search(body: SearchIn, request: Request) -> Response:
        """Two-stage search. A spent budget or a failing reranker never fails the request:
        the answer keeps first-stage order for what was not scored and says ``degraded``.

        Refused without running: 503 ``overloaded`` (``Retry-After``) when the server holds
        its bound of searches, or when this one's deadline passed while it waited for a
        thread; 422 ``depth_over_limit`` / ``budget_over_limit`` when a caller without the
        token asks for more than ``max_anonymous_depth`` / ``max_anonymous_budget_ms``
        (refused, not clamped: a clamped answer would pass for the one asked for)."""
        eng, col, _ = service.need()
        trusted = settings.token is not None and bearer_ok(
            request.headers.get("authorization"), settings.token
        )
        _check_search(body, settings, eng, trusted, metrics)
        with service.searches.admit():
            return await _search(body, eng, col)

    async def _search(body: SearchIn, eng: Engine, col: Collection) -> Response:
        arrived = time.perf_counter()
        budget = eng.defaults.budget_ms if body.budget_ms is None else body.budget_ms
        waited: list[float] = [0.0, 0.0]

        def run_search(engine: Engine, slot: int) -> SearchResponse:
            # The deadline counts from the request's arrival: time spent waiting for a
            # search thread (a burst of clients) comes out of its budget. One whose budget
            # is spent before it starts is shed: its answer would come late, and running it
            # makes every search queued behind it later still.
            waited[slot] = (time.perf_counter() - arrived) * 1000.0
            if budget > 0 and waited[slot] >= budget:
                raise service.searches.late(waited[slot], budget)
            return engine.search(
                body.query,
                body.k,
                body.depth,
                max(0.0, budget - waited[slot]),
                body.rerank,
                body.filter,
                body.first_stage,
            )

        exps = service.experiments
        depth = eng.defaults.depth if body.depth is None else body.depth
        # Only reranked searches are drawn: with the first stage alone both sides are equal.
        arm = exps.draw() if exps is not None and body.rerank and depth > 0 else None
        rr = eng.reranker
        models: dict[str, str | None] = {
            "encoder": f"{col.encoder.name}@{col.encoder.fingerprint}",
            "reranker": rr.version if rr else None,
        }

        async def on_a_thread(engine: Engine, slot: int) -> SearchResponse:
            await service.searches.thread(arrived, budget)
            try:
                return await service.run(service.search_pool, run_search, engine, slot)
            finally:
                service.searches.release()

        if arm is None:
            resp = await on_a_thread(eng, 0)
            metrics.observe_search(resp)
            out = resp.to_dict()
        else:
            # Both rankers side by side, each under the whole deadline: the answer is no
            # later than a plain one would be.
            assert exps is not None
            control, candidate = await asyncio.gather(
                on_a_thread(arm.control, 0), on_a_thread(arm.candidate, 1)
            )
            metrics.observe_search(control)
            k = settings.engine.k if body.k is None else body.k
            out = await service.run(
                service.search_pool, exps.answer, arm, body.query, k, control, candidate
            )
            if "impression_id" in out:  # the two models this answer was made with
                models["reranker"] = out["experiment"]["control"]
                models["candidate"] = out["experiment"]["candidate"]
        out["timings"]["queue"] = max(waited)
        out["models"] = models
        return JSONResponse(out)

    # ---- documents ----
    @app.get("/documents/{doc_id:path}", tags=["documents"], dependencies=[Depends(read_guard)])
    async def get_document(doc_id: str) -> dict[str, Any]:
        """One stored document; 404 ``not_found`` for an unknown id."""
        _, col, _ = service.need()
        docs = await service.run(service.search_pool, col.get, [doc_id])
        d = docs[0]
        return {"id": d.id, "text": d.text, "title": d.title, "metadata": d.metadata}

    @app.post("/documents", tags=["documents"], dependencies=[Depends(write_guard)])
    async def upsert_documents(body: DocumentsIn) -> dict[str, Any]:
        """Embed and upsert a batch (an id that exists is replaced), all or nothing."""
        _, col, _ = service.need()
        n = len(body.documents)
        if n > settings.max_batch_docs:
            raise ApiError(
                413,
                "batch_too_large",
                f"{n} documents in one request; the limit is {settings.max_batch_docs}: "
                "send smaller batches",
            )
        if n == 0:
            raise ApiError(422, "invalid_request", "documents is empty")
        try:
            docs = [Document(d.id, d.text, d.title, d.metadata) for d in body.documents]
        except ValueError as e:
            raise from_library(e) from None
        with service.writes.admit():
            res = await service.run(service.write_pool, col.add, docs)
        return {
            "inserted": res.inserted,
            "updated": res.updated,
            "seq": res.seq,
            "documents": len(col),
        }

    @app.delete("/documents/{doc_id:path}", tags=["documents"], dependencies=[Depends(write_guard)])
    async def delete_document(doc_id: str) -> dict[str, Any]:
        """Delete one document; 404 ``not_found`` for an unknown id."""
        _, col, _ = service.need()
        with service.writes.admit():
            n = await service.run(service.write_pool, col.delete, [doc_id])
        return {"deleted": n, "documents": len(col)}

    # ---- models ----
    @app.get("/models", tags=["models"], dependencies=[Depends(read_guard)])
    async def models() -> dict[str, Any]:
        """Serving versions, load times, validation figures, the recent update history."""
        _, _, reg = service.need()
        out = reg.describe()
        out["builtin_rerankers"] = sorted(n for n, b in BUILTINS.items() if b.kind == "reranker")
        return out

    @app.put(
        "/models/reranker",
        tags=["models"],
        dependencies=[Depends(write_guard)],
        responses={403: {"model": ErrorOut}, 409: {"model": ErrorOut}},
    )
    async def update_reranker(body: ModelUpdateIn) -> dict[str, Any]:
        """Load beside the serving model, validate, swap; on any failure the old one stays
        (422 ``model_rejected`` says why). Validation refuses a model that ranks the shipped
        sanity set no better than chance unless ``"sanity_check": false``."""
        _, _, reg = service.need()
        if (body.path is None) == (body.name is None):
            raise ApiError(
                422, "invalid_request", "give exactly one of 'path' (a model folder) or 'name'"
            )
        kind: Literal["name", "path"] = "name" if body.name is not None else "path"
        spec = body.name if body.name is not None else body.path
        assert spec is not None
        rec = await service.run(
            service.admin_pool,
            functools.partial(reg.update, kind=kind, sanity_check=body.sanity_check),
            spec,
            body.precision,
        )
        prev = reg.previous
        return {"status": "active", "model": rec.to_dict(), "previous": prev and prev.to_dict()}

    @app.post(
        "/models/reranker/rollback",
        tags=["models"],
        dependencies=[Depends(write_guard)],
        responses={409: {"model": ErrorOut}},
    )
    async def rollback_reranker() -> dict[str, Any]:
        """Return to the previous model (409 ``no_previous_model`` when there is none)."""
        _, _, reg = service.need()
        rec = await service.run(service.admin_pool, reg.rollback)
        prev = reg.previous
        return {"status": "active", "model": rec.to_dict(), "previous": prev and prev.to_dict()}

    # ---- experiments ----
    @app.post(
        "/experiments",
        status_code=201,
        tags=["experiments"],
        dependencies=[Depends(write_guard)],
        responses={409: {"model": ErrorOut}, 403: {"model": ErrorOut}},
    )
    async def create_experiment(body: ExperimentIn) -> JSONResponse:
        """Start an interleaving experiment: ``share`` of reranked searches get the control's
        (team A) and the candidate's (team B) hits interleaved, with an impression id. The
        models pass the checks of PUT /models/reranker (422 ``model_rejected``; the live
        model is untouched); one experiment runs at a time (409 ``experiment_running``)."""
        exps = service.need_experiments()
        candidate = _model_spec(body.candidate, "candidate")
        control = None if body.control == "live" else _model_spec(body.control, "control")
        report = await service.run(
            service.admin_pool,
            functools.partial(
                exps.create,
                candidate,
                control,
                share=body.share,
                method=body.method,
                exp_id=body.id,
                seed=body.seed,
            ),
        )
        return JSONResponse(report, status_code=201)

    @app.get("/experiments", tags=["experiments"], dependencies=[Depends(read_guard)])
    async def list_experiments() -> dict[str, Any]:
        """Every experiment's report, newest first."""
        exps = service.need_experiments()
        return {"experiments": await service.run(service.search_pool, exps.list)}

    @app.get("/experiments/{exp_id}", tags=["experiments"], dependencies=[Depends(read_guard)])
    async def get_experiment(exp_id: str) -> dict[str, Any]:
        """Impressions, feedback, clicks, wins and losses of control (team A) and candidate
        (team B), ties, the sign test's p-value and the winner once significant."""
        exps = service.need_experiments()
        return await service.run(service.search_pool, exps.report, exp_id)

    @app.post(
        "/experiments/{exp_id}/stop",
        tags=["experiments"],
        dependencies=[Depends(write_guard)],
        responses={409: {"model": ErrorOut}},
    )
    async def stop_experiment(exp_id: str) -> dict[str, Any]:
        """Stop drawing searches into it; its results stay (409 if already stopped)."""
        exps = service.need_experiments()
        return await service.run(service.admin_pool, exps.stop, exp_id)

    @app.post(
        "/feedback",
        response_model=FeedbackOut,
        tags=["experiments"],
        dependencies=[Depends(read_guard)],
        responses={409: {"model": ErrorOut}},
    )
    async def feedback(body: FeedbackIn) -> dict[str, Any]:
        """The clicks on an interleaved answer, once per impression. Refused with nothing
        stored: 404 ``unknown_impression``; 422 ``no_clicks``, ``duplicate_click``,
        ``click_not_shown``; 409 ``duplicate_feedback``, ``experiment_stopped``. Needs what a
        search needs: impression ids are unguessable, so only whoever got the answer can."""
        exps = service.need_experiments()
        return await service.run(
            service.search_pool, exps.feedback, body.impression_id, body.clicks
        )

    # ---- the page ----
    index_html = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        # The page runs only its own script: no inline code, nothing from elsewhere.
        return HTMLResponse(
            index_html,
            headers={
                "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                "frame-ancestors 'none'"
            },
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _mount_docs(app)
    # Outermost, so that refused bodies and errors are counted too.
    app.add_middleware(Edge, service=service)

    if not settings.protect_reads:
        # The read endpoints declare the bearer scheme (a token is accepted), but answer
        # without one: say so in the schema ({} = no requirement) so clients are not misled.
        reads = {
            (route.path, m.lower())
            for route in app.routes
            if isinstance(route, APIRoute)
            and any(d.dependency is read_guard for d in route.dependencies)
            for m in route.methods or ()
        }
        make_schema = app.openapi

        def openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                schema = make_schema()
                for (path, method), op in (
                    ((p, m), o) for p, ops in schema["paths"].items() for m, o in ops.items()
                ):
                    if (path, method) in reads and op.get("security"):
                        op["security"] = [{}, *op["security"]]
                app.openapi_schema = schema
            return app.openapi_schema

        app.openapi = openapi  # type: ignore[method-assign]
    return app


#: Where /docs loads Swagger UI's script, style and icon from: this server.
DOCS_ASSETS = "/docs-assets"


def _mount_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI from the ``swagger-ui-bundle`` package's files, served here
    (``/docs-assets/...``), so the page works with no network. Without that package (an
    install without the server extra), ``/docs`` says so and points to ``/openapi.json``."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger_ui_path is None:
            return HTMLResponse(
                "<!doctype html><title>twostage API</title><p>The interactive API docs need "
                "the swagger-ui-bundle package (the server extra). The schema: "
                '<a href="/openapi.json">/openapi.json</a>.</p>'
            )
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


def _model_spec(body: ModelUpdateIn, role: str) -> ModelSpec:
    if (body.path is None) == (body.name is None):
        raise ApiError(
            422, "invalid_request", f"{role}: give exactly one of 'path' (a model folder) or 'name'"
        )
    if body.name is not None:
        return ModelSpec("name", body.name, body.precision, body.sanity_check)
    assert body.path is not None
    return ModelSpec("path", body.path, body.precision, body.sanity_check)


def _check_search(
    body: SearchIn, settings: ServerSettings, eng: Engine, trusted: bool, metrics: Metrics
) -> None:
    """Request limits with their own codes (the engine checks again; these say more), and
    the caps on what a caller without the token may ask for."""
    cfg = settings.engine
    if len(body.query) > cfg.max_query_chars:
        raise ApiError(
            422,
            "query_too_long",
            f"the query is {len(body.query)} characters; the limit is {cfg.max_query_chars}",
        )
    if not body.query.strip():
        raise ApiError(422, "query_empty", "the query is empty")
    if body.k is not None and not 1 <= body.k <= cfg.max_k:
        raise ApiError(422, "k_out_of_range", f"k must be in 1..{cfg.max_k}, not {body.k}")
    if body.depth is not None and not 0 <= body.depth <= cfg.max_depth:
        raise ApiError(
            422, "depth_out_of_range", f"depth must be in 0..{cfg.max_depth}, not {body.depth}"
        )
    if body.budget_ms is not None and (
        not math.isfinite(body.budget_ms) or not 0 <= body.budget_ms <= 60_000
    ):
        raise ApiError(
            422, "budget_out_of_range", f"budget_ms must be in 0..60000, not {body.budget_ms}"
        )
    if trusted:
        return
    # A caller may always ask for what it would get by not asking: the caps never fall
    # below the serving defaults.
    d = eng.defaults
    max_depth = max(settings.max_anonymous_depth or max(100, 2 * d.depth), d.depth)
    if body.depth is not None and body.depth > max_depth:
        metrics.over_limit.labels(limit="depth").inc()
        raise ApiError(
            422,
            "depth_over_limit",
            f"depth {body.depth} is over {max_depth}, the most a search without the token may "
            f"ask for (max_anonymous_depth); with 'Authorization: Bearer <token>' up to "
            f"{cfg.max_depth}",
        )
    max_budget = max(settings.max_anonymous_budget_ms, d.budget_ms)
    if body.budget_ms is not None and body.budget_ms > max_budget:
        metrics.over_limit.labels(limit="budget").inc()
        raise ApiError(
            422,
            "budget_over_limit",
            f"budget_ms {body.budget_ms:g} is over {max_budget:g}, the most a search without "
            "the token may ask for (max_anonymous_budget_ms); with 'Authorization: Bearer "
            "<token>' up to 60000",
        )


def _install_sighup(loop: asyncio.AbstractEventLoop, service: Service) -> bool:
    """SIGHUP reloads the serving reranker from its files; only in the main thread."""

    running: set[asyncio.Task[None]] = set()  # a reference, so a reload is not collected

    def on_hup() -> None:
        task = asyncio.ensure_future(_reload(service, "SIGHUP"))
        running.add(task)
        task.add_done_callback(running.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        return False  # not the main thread (an embedded server), or no SIGHUP here
    return True


async def _reload(service: Service, why: str) -> None:
    reg = service.registry
    if reg is None:
        return
    try:
        rec = await service.run(service.admin_pool, reg.reload)
        log.info("%s: reranker reloaded: %s", why, rec.version if rec else "none serving")
    except ApiError as e:
        log.warning("%s: reload refused, the serving model stays: %s", why, e.message)


def folder_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of the files in a model folder: changes when a file does."""
    try:
        return tuple(
            sorted(
                (p.name, st.st_size, st.st_mtime_ns)
                for p in path.iterdir()
                if p.is_file() and (st := p.stat())
            )
        )
    except OSError:
        return ()


async def _watch(service: Service) -> None:
    """Reload when the serving model's folder changes and then holds still for one poll."""
    interval = service.settings.watch_interval_s
    loop = asyncio.get_running_loop()
    last: tuple[tuple[str, int, int], ...] | None = None
    pending: tuple[tuple[str, int, int], ...] | None = None
    watched: Path | None = None
    while True:
        await asyncio.sleep(interval)
        reg = service.registry
        cur = reg.current if reg else None
        if cur is None or cur.path is None:
            continue
        folder = cur.path
        sig = await loop.run_in_executor(service.admin_pool, folder_signature, folder)
        if watched != folder:  # a new model: its present files are the baseline
            watched, last, pending = folder, sig, None
            continue
        if sig == last:
            pending = None
            continue
        if sig != pending:  # still changing (a copy in progress): wait for it to settle
            pending = sig
            continue
        last, pending = sig, None
        await _reload(service, f"watched folder {folder}")


__all__ = ["Admission", "SearchIn", "SearchOut", "Service", "create_app", "folder_signature"]
