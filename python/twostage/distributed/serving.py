"""The reranker as a Ray Serve deployment, and the engine's scorer that calls it.

:class:`RerankerReplica` is the deployment: each replica holds a
:class:`~twostage.reranker.Reranker` in a :class:`~twostage.Slot` (with the model before it,
for searches pinned to it during a rollout) and scores the pairs of many requests together
with the project's cross-request :class:`~twostage.server.batching.Batcher`, which keeps
every request's deadline (earliest deadline first, a batch only when it is predicted to end
in time) and one model per batch. :class:`RayScorer` implements the engine's
:class:`~twostage.engine.PairScorer` over a deployment handle, so
``Engine(col, scorer=RayScorer(handle))`` reranks on the replicas.

**One version per answer.** The engine reads its reranker once per search and hands it to the
scorer; :class:`RayScorer` sends that model's version with the pairs (the engine tokenised
them with that model), a replica scores them with exactly that version (its current model or
the one before it) or not at all, and the scorer drops any reply from another version. So
the version a hit carries is the model that scored it. Keep the engine on the model the
replicas serve with :class:`~twostage.distributed.rollout.EngineFollower`.

**The deadline.** The pairs travel with the search's deadline (wall clock: replicas on other
nodes read it, good to the nodes' clock offset, milliseconds under NTP). A replica stops
scoring ``transit_ms`` before it and answers with what it scored; the scorer waits until the
deadline plus ``grace_ms`` at the most, then cancels the call and returns what it has: the
rest are unscored with a ``budget`` or ``timeout`` reason, never an error.

**Batching.** Measured against ``@serve.batch`` (``benches/distributed_serving.py``,
BENCHMARKS.md §15): the same throughput within the noise when every pair may be scored; at
the model's 150 ms budget with 4 callers, ``@serve.batch`` (batches of whole searches, no
notion of deadlines, a late run cancelled whole) scored no pair at all, the Batcher 6-9 % of
them on an overloaded 2-core box. The Batcher is kept.

>>> from twostage.distributed.serving import ReplicaConfig, Scaling, deploy_reranker, RayScorer
>>> config = ReplicaConfig(reranker="twostage-rerank")
>>> handle = deploy_reranker(config, Scaling(1, 4))  # doctest: +SKIP
>>> engine = Engine(Collection.open("docs/"), scorer=RayScorer(handle))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twostage._core import Slot
from twostage.config import default_reranker
from twostage.distributed import require_ray
from twostage.distributed.rollout import Command, Member, MemberState, ModelSpec, Report
from twostage.errors import InvalidArgument
from twostage.reranker import Pairs, Reranker

if TYPE_CHECKING:
    from twostage.engine import PairScorer

log = logging.getLogger("twostage.distributed")

#: The deployment's name inside its application.
DEPLOYMENT = "reranker"


@dataclass(frozen=True, kw_only=True)
class ReplicaConfig:
    """What each replica serves and how it batches.

    Args:
        reranker: a built-in name or a folder path valid on every node; None: the shipped
            default.
        precision: ``"int8"`` or ``"fp32"``.
        threads: pairs a replica scores at once (onnxruntime threads); None: its CPUs
            (:attr:`Scaling.replica_cpus`, rounded up).
        max_pairs: the most pairs in one model run (the Batcher's ``max_pairs``); None: two
            per thread. A CPU replica runs pair by pair anyway (batch-invariant scores), so
            a batch buys no speed, and a batch's scores come back only when it ends: small
            batches hand back a prefix by a tight deadline more often (BENCHMARKS.md §15).
        max_wait_ms: how long a replica waits for more requests before a smaller batch.
        transit_ms: how long before the search's deadline a replica stops, so its answer
            arrives in time.
        sanity_check: refuse a model that ranks the sanity set no better than chance (at the
            replica's start and in every rollout).
        validation_set: a JSONL validation set on every node; with ``ndcg_floor``, a
            rollout refuses a model below the floor (as the server's swap does).
    """

    reranker: str | None = None
    precision: str = "int8"
    threads: int | None = None
    max_pairs: int | None = None
    max_wait_ms: float = 2.0
    transit_ms: float = 5.0
    sanity_check: bool = True
    validation_set: Path | None = None
    ndcg_floor: float | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise InvalidArgument(f"threads must be >= 1, not {self.threads}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise InvalidArgument(f"max_pairs must be >= 1, not {self.max_pairs}")
        if self.max_wait_ms < 0 or self.transit_ms < 0:
            raise InvalidArgument("max_wait_ms and transit_ms must be >= 0")
        if self.ndcg_floor is not None and self.validation_set is None:
            raise InvalidArgument("ndcg_floor needs a validation_set to measure it on")
        ModelSpec(self.reranker or "default", self.precision)  # checks the precision

    @property
    def model(self) -> ModelSpec:
        """The configured model."""
        spec = self.reranker or default_reranker()
        if spec is None:
            raise InvalidArgument("no reranker given and this install ships none")
        return ModelSpec(spec, self.precision)


@dataclass(frozen=True)
class Scaling:
    """How many replicas, and what each one reserves.

    ``min_replicas == max_replicas`` is a fixed count; otherwise Serve's autoscaler keeps
    ``target_ongoing_requests`` searches in flight per replica, between the two.
    ``max_ongoing_requests`` is how many a replica takes at once (the rest queue in the
    callers' routers, up to ``max_queued_requests``; -1: no bound): enough for the Batcher to
    fill batches across requests.

    >>> Scaling(2).deployment_options()["num_replicas"]
    2
    >>> Scaling(1, 4).deployment_options()["autoscaling_config"]["max_replicas"]
    4
    """

    min_replicas: int = 1
    max_replicas: int | None = None  # None: min_replicas (a fixed count)
    target_ongoing_requests: float = 2.0
    replica_cpus: float = 1.0
    max_ongoing_requests: int = 8
    max_queued_requests: int = -1
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0

    def __post_init__(self) -> None:
        top = self.max_replicas if self.max_replicas is not None else self.min_replicas
        if self.min_replicas < 0 or top < max(self.min_replicas, 1):
            raise InvalidArgument(
                f"replicas must be 0 <= min <= max and max >= 1, not {self.min_replicas}..{top}"
            )
        if not self.target_ongoing_requests > 0 or not self.replica_cpus > 0:
            raise InvalidArgument("target_ongoing_requests and replica_cpus must be > 0")
        if self.max_ongoing_requests < 1:
            raise InvalidArgument(
                f"max_ongoing_requests must be >= 1, not {self.max_ongoing_requests}"
            )

    @property
    def fixed(self) -> bool:
        """No autoscaling: min_replicas replicas."""
        return self.max_replicas is None or self.max_replicas == self.min_replicas

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments of ``serve.deployment`` for these settings."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.replica_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            # A replica loads and validates its model before it is ready (seconds).
            "health_check_timeout_s": 60.0,
            "graceful_shutdown_timeout_s": 10.0,
        }
        if self.fixed:
            opts["num_replicas"] = self.min_replicas
        else:
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
            }
        return opts


@dataclass(frozen=True)
class ScoreRequest:
    """One search's pairs for a replica (tokenised by the model of ``version``)."""

    version: str
    ids: list[list[int]]
    type_ids: list[list[int]]
    deadline: float  # time.time() seconds: stop scoring before it
    per_token: float = 0.0  # the caller's estimate of seconds per padded token


@dataclass(frozen=True)
class ScoreReply:
    """Scores by pair index, the version that scored them, and why any pair was not scored.

    ``held`` (with ``version`` None) when the replica holds no model of the version asked
    for: the versions it holds.
    """

    version: str | None
    scores: dict[int, float]
    reason: str | None
    replica: str
    held: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Held:
    """A replica's models: the one it serves and the one before it (swapped together)."""

    model: ModelSpec
    current: Reranker
    previous: tuple[ModelSpec, Reranker] | None = None

    def find(self, version: str) -> Reranker | None:
        if self.current.version == version:
            return self.current
        if self.previous is not None and self.previous[1].version == version:
            return self.previous[1]
        return None

    @property
    def versions(self) -> tuple[str, ...]:
        prev = (self.previous[1].version,) if self.previous is not None else ()
        return (self.current.version, *prev)


class RerankerReplica:
    """The body of the Serve deployment (see :func:`reranker_app`): one reranker replica.

    ``score`` is what :class:`RayScorer` calls; ``info`` says what the replica serves. The
    replica is a member of its application's rollouts (:mod:`twostage.distributed.rollout`):
    it validates, installs and reverts models when the coordinator says.
    """

    def __init__(self, config: ReplicaConfig, cpus: float = 1.0) -> None:
        require_ray()
        from ray import serve

        from twostage.server.batching import Batcher

        ctx = serve.get_replica_context()
        self.id = f"{ctx.deployment}#{ctx.replica_tag}"
        self._config = config
        self._threads = config.threads or max(1, math.ceil(cpus))
        self._validation = None
        if config.validation_set is not None:
            from twostage.server.models import load_validation_set

            self._validation = load_validation_set(Path(config.validation_set))
        self._swap_lock = threading.Lock()
        # The models before the last install: what a rollback of that install restores.
        self._undo: _Held | None = None
        self._member = Member(ctx.app_name, self.id, self._state, self._command)
        serving = self._member.serving(config.model)
        if serving is not None:  # a rollout installed it (validated then): start on it
            model = serving[0]
            rr = self._load(model)
        else:  # the configured model passes the checks a server's start model does
            model = config.model
            rr = self._load(model)
            self._validate(rr, config.sanity_check, enforce_floor=False)
        self._slot = Slot(_Held(model, rr))
        # Requests wait for their scores on these threads (the Batcher's call blocks).
        self._waiters = ThreadPoolExecutor(64, thread_name_prefix="twostage-replica")
        self._batcher = Batcher(
            max_pairs=config.max_pairs or 2 * self._threads,
            max_wait_ms=config.max_wait_ms,
            grace_ms=0.0,  # the requester's deadline already keeps transit_ms in hand
            workers=self._threads,
        )
        self._member.start()
        log.info("replica %s serves %s (%d threads)", self.id, rr.version, self._threads)

    # ---- scoring ----
    async def score(self, request: ScoreRequest) -> ScoreReply:
        """Score ``request``'s pairs with the model of its version, by its deadline."""
        held: _Held = self._slot.get()[1]  # one read: the model cannot change under it
        rr = held.find(request.version)
        if rr is None:
            return ScoreReply(
                None,
                {},
                f"reranker failed: replica {self.id} holds no model {request.version} "
                f"(it serves {', '.join(held.versions)})",
                self.id,
                held.versions,
            )
        left = request.deadline - time.time() - self._config.transit_ms / 1000.0
        n = len(request.ids)
        if left <= 0:
            return ScoreReply(
                rr.version, {}, f"budget: {n} of {n} pairs not scored by the deadline", self.id
            )
        deadline = time.perf_counter() + left
        pairs = Pairs(request.ids, request.type_ids)
        loop = asyncio.get_running_loop()
        scores, reason = await loop.run_in_executor(
            self._waiters, self._batcher.score_pairs, rr, pairs, deadline, request.per_token
        )
        return ScoreReply(rr.version, scores, reason, self.id)

    async def info(self) -> dict[str, Any]:
        """The replica's id, the versions it holds (serving first) and its threads."""
        held: _Held = self._slot.get()[1]
        return {
            "replica": self.id,
            "versions": list(held.versions),
            "model": held.model.spec,
            "threads": self._threads,
            "queued_pairs": self._batcher.queued(),
        }

    # ---- rollouts ----
    def _state(self) -> MemberState:
        held: _Held = self._slot.get()[1]
        return MemberState("reranker", held.current.version, held.model, self._config.model)

    def _load(self, model: ModelSpec) -> Reranker:
        return Reranker.load(
            model.spec,
            precision=model.precision,  # type: ignore[arg-type]
            threads=self._threads,
        )

    def _validate(self, rr: Reranker, sanity_check: bool, enforce_floor: bool) -> dict[str, Any]:
        from twostage.server.models import validate_reranker

        return validate_reranker(
            rr,
            sanity=self._config.sanity_check,
            enforce_sanity=sanity_check,
            validation=self._validation,
            ndcg_floor=self._config.ndcg_floor,
            enforce_floor=enforce_floor,
        )

    def _command(self, cmd: Command) -> Report:
        with self._swap_lock:
            held: _Held = self._slot.get()[1]
            undo, self._undo = self._undo, None
            if cmd.op == "revert" and undo is not None and undo.current.version == cmd.version:
                # Exactly as before the install it undoes (the refused model is dropped).
                self._slot.swap(undo)
                return Report(cmd.id, True, cmd.version)
            quick = self._held_already(cmd, held, cmd.version)
            if quick is not None:
                return quick
            try:
                rr = self._load(cmd.model)
            except Exception as e:
                return Report(cmd.id, False, reason=f"could not load {cmd.model.spec}: {e}")
            # The same bytes as a model held here (the version is their hash): no new checks.
            quick = self._held_already(cmd, held, rr.version)
            if quick is not None:
                return quick
            figures: dict[str, Any] = {}
            if cmd.op == "install":
                try:
                    figures = self._validate(rr, cmd.sanity_check, enforce_floor=True)
                except Exception as e:
                    return Report(cmd.id, False, rr.version, f"validation failed: {e}")
            if cmd.version is not None and rr.version != cmd.version:
                # Checked after the validation: a broken model says so, not just "other".
                return Report(
                    cmd.id,
                    False,
                    rr.version,
                    f"{cmd.model.spec} loads here as {rr.version}, not {cmd.version} (do the "
                    "model files differ between nodes?)",
                )
            # Searches that read the slot before this keep the model they read.
            self._slot.swap(_Held(cmd.model, rr, (held.model, held.current)))
            if cmd.op == "install":
                self._undo = held
            from twostage._memory import release_memory

            release_memory()  # the model two swaps back is freed once its last search ends
            log.info("replica %s now serves %s", self.id, rr.version)
            return Report(cmd.id, True, rr.version, validation=figures)

    def _held_already(self, cmd: Command, held: _Held, version: str | None) -> Report | None:
        """Serve ``version`` from what the replica holds, if it does: the current model (no
        change) or the one before it (swapped back; it passed its checks when installed)."""
        if version is None:
            return None
        if held.current.version == version:
            return Report(cmd.id, True, version)
        if held.previous is not None and held.previous[1].version == version:
            prev_model, prev = held.previous
            self._slot.swap(_Held(prev_model, prev, (held.model, held.current)))
            if cmd.op == "install":
                self._undo = held
            return Report(cmd.id, True, version)
        return None

    def __del__(self) -> None:
        member = getattr(self, "_member", None)
        if member is not None:
            member.stop()
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.close(timeout=1.0)


def reranker_app(
    config: ReplicaConfig | None = None, scaling: Scaling | None = None, *, name: str = DEPLOYMENT
) -> Any:
    """The reranker deployment, bound (a ``serve.Application`` to run or to bind into
    another deployment, as the HTTP ingress does).

    >>> app = reranker_app(ReplicaConfig(reranker="twostage-rerank"), Scaling(2))  # doctest: +SKIP
    """
    require_ray()
    from ray import serve

    config = config or ReplicaConfig()
    scaling = scaling or Scaling()
    deployment = serve.deployment(name=name, **scaling.deployment_options())(RerankerReplica)
    return deployment.bind(config, scaling.replica_cpus)


def deploy_reranker(
    config: ReplicaConfig | None = None,
    scaling: Scaling | None = None,
    *,
    app: str = "twostage-reranker",
) -> Any:
    """Run the reranker deployment as the Serve application ``app`` (no HTTP route) and
    return its handle, once every replica has loaded and checked its model.

    >>> handle = deploy_reranker(ReplicaConfig(), Scaling(2), app="rr")  # doctest: +SKIP
    """
    require_ray()
    from ray import serve

    return serve.run(reranker_app(config, scaling), name=app, route_prefix=None)


def shutdown(app: str) -> None:
    """Delete the Serve application ``app`` and its rollout coordinator."""
    require_ray()
    from ray import serve

    from twostage.distributed.rollout import forget

    serve.delete(app)
    forget(app)


class RayScorer:
    """The engine's :class:`~twostage.engine.PairScorer` over a reranker deployment's handle.

    Args:
        handle: the deployment's handle (``deploy_reranker``'s, ``serve.get_deployment_handle``
            or one bound into a deployment).
        split: send a search's pairs as this many calls (round-robin, so each call's prefix
            is the best candidates) that Serve may route to different replicas: lower
            latency on idle replicas, more calls under load.
        grace_ms: how long past the deadline to wait for a reply already on its way.
        fallback: scores a version the replicas do not hold (an experiment's candidate the
            ingress loaded): e.g. a local :class:`~twostage.server.batching.Batcher`; None:
            those pairs are unscored (``reranker failed``).

    Never raises for a replica's failure: the pairs are unscored and the reason says why.
    """

    def __init__(
        self,
        handle: Any,
        *,
        split: int = 1,
        grace_ms: float = 5.0,
        fallback: PairScorer | None = None,
    ) -> None:
        require_ray()
        if split < 1 or grace_ms < 0:
            raise InvalidArgument(f"split must be >= 1 and grace_ms >= 0, not {split}, {grace_ms}")
        self.handle = handle
        self.split = split
        self.grace = grace_ms / 1000.0
        self.fallback = fallback
        self.calls = 0
        self.failures = 0

    def score_pairs(
        self, rr: Reranker, pairs: Pairs, deadline: float, per_token: float
    ) -> tuple[dict[int, float], str | None]:
        """Scores by pair index, as the engine's ``PairScorer`` (see the class doc)."""
        n = len(pairs)
        if n == 0:
            return {}, None
        left = deadline - time.perf_counter()
        if left <= 0:
            return {}, f"budget: spent before the replicas were asked; {n} pairs not scored"
        wall = time.time() + left
        parts = min(self.split, n)
        rows = [list(range(i, n, parts)) for i in range(parts)]
        calls: list[tuple[list[int], Any]] = []
        reasons: list[str] = []
        for part in rows:
            req = ScoreRequest(
                rr.version,
                [pairs.ids[i] for i in part],
                [pairs.type_ids[i] for i in part],
                wall,
                per_token,
            )
            try:
                calls.append((part, self.handle.score.remote(req)))
            except Exception as e:  # the router refused it (backpressure, no replica)
                reasons.append(_failure(e))
        self.calls += len(calls)
        scores: dict[int, float] = {}
        unknown: list[int] = []
        for part, response in calls:
            wait = deadline + self.grace - time.perf_counter()
            try:
                reply: ScoreReply = response.result(timeout_s=max(wait, 0.0))
            except TimeoutError:
                response.cancel()
                reasons.append(
                    f"timeout: {len(part)} pairs not back from a replica by the deadline"
                )
                continue
            except Exception as e:  # a replica died, the router gave up
                self.failures += 1
                reasons.append(_failure(e))
                continue
            if reply.version is None:
                unknown.extend(part)
                reasons.append(reply.reason or "reranker failed: no replica holds the model")
                continue
            if reply.version != rr.version:  # never mix versions in one answer
                self.failures += 1
                reasons.append(
                    f"reranker failed: {reply.replica} scored with {reply.version}, "
                    f"not {rr.version}"
                )
                continue
            for i, s in reply.scores.items():
                scores[part[i]] = s
            if reply.reason is not None:
                reasons.append(reply.reason)
        if unknown and self.fallback is not None and len(unknown) == n:
            return self.fallback.score_pairs(rr, pairs, deadline, per_token)
        return scores, _first_reason(reasons)


def _failure(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"reranker failed: {type(e).__name__}: {text[:200]}"


def _first_reason(reasons: Sequence[str]) -> str | None:
    """The reason an answer gives: the deadline's before failures (the engine's order)."""
    for prefix in ("budget", "timeout"):
        for r in reasons:
            if r.startswith(prefix):
                return r
    return reasons[0] if reasons else None


__all__ = [
    "DEPLOYMENT",
    "RayScorer",
    "ReplicaConfig",
    "RerankerReplica",
    "Scaling",
    "ScoreReply",
    "ScoreRequest",
    "deploy_reranker",
    "reranker_app",
    "shutdown",
]
