"""The validated hot swap across Ray replicas: one replica at a time, rolled back on a refusal.

A rollout installs a new reranker on every replica of a reranker deployment
(:mod:`twostage.distributed.serving`), then on every engine that pins its searches to the
replicas (the HTTP ingress, an :class:`EngineFollower` in a driver):

1. **one replica at a time**, each runs the checks the server's own swap runs
   (:func:`twostage.server.models.validate_reranker`: load, finite scores on the golden
   pairs, the sanity gate, the NDCG@10 floor when the deployment has a validation set) and
   installs the model through its :class:`~twostage.Slot`, keeping the model before it;
2. on the **first refusal** (or a replica that loaded another version than the first one
   did: files that differ between nodes) the rollout stops and **rolls back** the replicas it
   already swapped, to the model each held before; the rest never saw the new one;
3. once every replica holds the new model, the followers install it too: from then on
   searches pin the new version.

**One version per answer, no downtime.** A search's pairs carry the version its engine
pinned (:class:`~twostage.distributed.serving.RayScorer`) and a replica scores them with
exactly that model or not at all. A replica keeps its previous model beside the new one, and
the engines move only after every replica holds the new model, so whichever replica a
search reaches during a rollout (or a rollback) holds the version it asks for.

**How replicas are addressed.** Serve routes a handle's calls to any replica, and a
``user_config`` change reconfigures replicas in batches that Serve chooses, with no way to
stop at a refusal and undo the replicas already changed (a replica whose ``reconfigure``
raises is restarted, and the deployment is marked unhealthy). So each replica (and each
follower) joins a small coordinator actor per application (named ``twostage-rollout:<app>``,
namespace ``twostage``, detached, no CPU) and long-polls it for commands from a thread of
its own; the coordinator runs one rollout at a time and sends one command to one member at a
time. A replica that starts later (autoscaling, a restart) loads the model the last
successful rollout installed. :func:`forget` removes the coordinator when the application is
deleted.

>>> from twostage.distributed.rollout import rollout
>>> result = rollout("twostage", "/models/rerank-v2")  # doctest: +SKIP
>>> result.ok, [(o.member, o.status) for o in result.outcomes]  # doctest: +SKIP
(True, [('reranker#a1', 'swapped'), ('reranker#b2', 'swapped'), ('ingress#c3', 'followed')])
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from twostage.distributed import require_ray
from twostage.errors import InvalidArgument

if TYPE_CHECKING:
    from twostage.engine import Engine
    from twostage.reranker import Reranker

log = logging.getLogger("twostage.distributed")

#: The namespace of every coordinator actor, whatever namespace the caller's job runs in.
NAMESPACE = "twostage"
#: How long a member's poll waits for a command before it answers "still here".
POLL_S = 2.0
#: A member silent this long (no poll running or returned) is gone: a dead replica.
GONE_S = POLL_S + 8.0

Role = Literal["reranker", "engine"]
Op = Literal["install", "revert", "follow"]
Status = Literal[
    "swapped", "refused", "rolled_back", "rollback_failed", "followed", "gone", "unchanged"
]


@dataclass(frozen=True)
class ModelSpec:
    """A reranker as every node can load it: a built-in name or a folder path that is the
    same on every node (a shared filesystem, or baked into the image), and its precision."""

    spec: str
    precision: str = "int8"

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise InvalidArgument("a model spec must be a non-empty name or folder path")
        if self.precision not in ("int8", "fp32"):
            raise InvalidArgument(f"precision must be int8 or fp32, not {self.precision!r}")

    def load(self) -> Reranker:
        """Load it here."""
        from twostage.reranker import Reranker

        return Reranker.load(self.spec, precision=self.precision)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Command:
    """One step a member runs: install (validated), revert (to a model it held) or follow."""

    id: int
    op: Op
    model: ModelSpec
    #: The version the model must load as (the first replica's, or the one held before).
    version: str | None = None
    sanity_check: bool = True


@dataclass(frozen=True)
class Report:
    """What a member answers to a command."""

    command: int
    ok: bool
    version: str | None = None
    reason: str | None = None
    ms: float = 0.0
    validation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MemberState:
    """What a member serves now (sent with every poll)."""

    role: Role
    version: str | None
    model: ModelSpec | None
    configured: ModelSpec | None = None  # the model its configuration names


@dataclass(frozen=True)
class ReplicaOutcome:
    """What became of one member in a rollout."""

    member: str
    role: Role
    status: Status
    version: str | None = None  # what it serves when the rollout ends
    reason: str | None = None
    ms: float = 0.0  # its step (load, validate, swap), milliseconds
    validation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutResult:
    """A rollout's outcome: ``ok`` when every member serves ``version``; else the refusal
    (``reason``) and the replicas rolled back (each outcome says)."""

    ok: bool
    model: ModelSpec
    version: str | None  # the new model's version (None when no member loaded it)
    previous: str | None  # the version the replicas served before
    outcomes: list[ReplicaOutcome]
    reason: str | None = None
    seconds: float = 0.0

    @property
    def swapped(self) -> list[str]:
        """Members that serve the new model at the end."""
        return [o.member for o in self.outcomes if o.status in ("swapped", "followed", "unchanged")]

    @property
    def rolled_back(self) -> list[str]:
        """Replicas that had swapped and went back to their previous model."""
        return [o.member for o in self.outcomes if o.status == "rolled_back"]


@dataclass
class _Member:
    """The coordinator's view of one member."""

    id: str
    joined: int  # join order: rollouts go through replicas in it
    state: MemberState
    seen: float = field(default_factory=time.monotonic)
    polling: int = 0  # polls waiting now
    commands: list[Command] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: dict[int, asyncio.Future[Report]] = field(default_factory=dict)
    caught_up: str | None = None  # the serving version it was last told to load

    @property
    def alive(self) -> bool:
        return self.polling > 0 or time.monotonic() - self.seen < GONE_S


class Coordinator:
    """The rollout coordinator of one application (an async Ray actor: see the module doc).

    Members poll it (:meth:`poll`); :meth:`rollout` sends them commands, one at a time.
    """

    def __init__(self, app: str) -> None:
        self.app = app
        self._members: dict[str, _Member] = {}
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        #: What the last successful rollout installed (None: the configured model serves),
        #: and the configured model it replaced.
        self._serving: tuple[ModelSpec, str | None] | None = None
        self._configured: ModelSpec | None = None

    # ---- members ----
    async def serving(
        self, configured: ModelSpec | None = None
    ) -> tuple[ModelSpec, str | None] | None:
        """The model a member that starts now should load (None: its ``configured`` one). A
        member configured with another model than the rollout replaced (the application was
        deployed again with a new one) is told None, and the rollout is forgotten: the
        operator's new configuration wins, as a server restarted with another --reranker."""
        if (
            self._serving is not None
            and configured is not None
            and self._configured is not None
            and configured != self._configured
        ):
            log.info(
                "rollout %s: the configured model is now %s: it serves, not %s",
                self.app,
                configured.spec,
                self._serving[0].spec,
            )
            self._serving = self._configured = None
        return self._serving

    async def poll(
        self, member: str, state: MemberState, report: Report | None, wait_s: float = POLL_S
    ) -> Command | None:
        """A member's heartbeat: its state, its answer to the last command, and the next
        command (waits up to ``wait_s`` for one; None: nothing to do)."""
        m = self._members.get(member)
        if m is None:
            m = _Member(member, next(self._order), state)
            self._members[member] = m
            log.info("rollout %s: %s joined serving %s", self.app, member, state.version)
        m.state, m.seen = state, time.monotonic()
        if report is not None:
            fut = m.waiting.pop(report.command, None)
            if fut is not None and not fut.done():
                fut.set_result(report)
        self._catch_up(m)
        m.polling += 1
        try:
            if not m.commands:
                m.wake.clear()
                try:
                    await asyncio.wait_for(m.wake.wait(), timeout=wait_s)
                except asyncio.TimeoutError:
                    return None
            return m.commands.pop(0) if m.commands else None
        finally:
            m.polling -= 1
            m.seen = time.monotonic()

    def _catch_up(self, m: _Member) -> None:
        """A member that started on another model than the last rollout installed (it read
        the coordinator before that rollout ended) loads the serving one, unchecked (the
        rollout checked it), once; rollouts in progress handle their own stragglers."""
        if self._serving is None or self._lock.locked():
            return
        if m.state.configured is not None and m.state.configured != self._configured:
            return  # deployed with another model since: its configuration wins
        model, version = self._serving
        if (
            version is None
            or m.state.version in (None, version)
            or m.caught_up == version
            or m.commands
            or m.waiting
        ):
            return
        m.caught_up = version
        m.commands.append(Command(next(self._ids), "follow", model, version, False))
        log.info("rollout %s: %s catches up to %s", self.app, m.id, version)

    async def leave(self, member: str) -> None:
        """A member that stops (a replica shut down) leaves at once."""
        m = self._members.pop(member, None)
        if m is not None:
            for fut in m.waiting.values():
                if not fut.done():
                    fut.cancel()

    async def members(self) -> list[tuple[str, MemberState, bool]]:
        """(member, state, alive) for each member, in join order."""
        ms = sorted(self._members.values(), key=lambda m: m.joined)
        return [(m.id, m.state, m.alive) for m in ms]

    def _alive(self, role: Role) -> list[_Member]:
        for m in [m for m in self._members.values() if not m.alive]:
            log.warning("rollout %s: %s stopped polling: gone", self.app, m.id)
            del self._members[m.id]
        return sorted(
            (m for m in self._members.values() if m.state.role == role), key=lambda m: m.joined
        )

    async def _ask(self, m: _Member, cmd: Command, timeout_s: float) -> Report | None:
        """Send ``cmd`` to ``m`` and wait for its report; None: it went away."""
        fut: asyncio.Future[Report] = asyncio.get_running_loop().create_future()
        m.waiting[cmd.id] = fut
        m.commands.append(cmd)
        m.wake.set()
        end = time.monotonic() + timeout_s
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout=1.0)
            except asyncio.TimeoutError:
                if self._members.get(m.id) is not m or not m.alive:
                    return None
                if time.monotonic() > end:
                    m.waiting.pop(cmd.id, None)
                    return Report(cmd.id, False, reason=f"no answer in {timeout_s:g} s")
            except asyncio.CancelledError:
                return None  # it left

    # ---- the rollout ----
    async def rollout(
        self,
        model: ModelSpec,
        *,
        sanity_check: bool = True,
        expect_version: str | None = None,
        pause_s: float = 0.0,
        step_timeout_s: float = 600.0,
        skip: tuple[str, ...] = (),
    ) -> RolloutResult:
        """Install ``model`` on every replica, one at a time, then on every follower; stop
        and roll back at the first refusal. ``skip``: followers that install it themselves
        (the one that asked for the rollout)."""
        async with self._lock:
            t0 = time.monotonic()
            result = await self._rollout(
                model, sanity_check, expect_version, pause_s, step_timeout_s, set(skip)
            )
            return replace(result, seconds=round(time.monotonic() - t0, 3))

    async def _rollout(
        self,
        model: ModelSpec,
        sanity_check: bool,
        expect: str | None,
        pause_s: float,
        timeout_s: float,
        skip: set[str],
    ) -> RolloutResult:
        outcomes: dict[str, ReplicaOutcome] = {}
        # Each swapped member and the model it served before (what a rollback returns to).
        swapped: list[tuple[_Member, ModelSpec | None, str | None]] = []
        before = (self._serving, self._configured)
        previous: str | None = None
        done: set[str] = set()
        first = True
        while True:
            todo = [m for m in self._alive("reranker") if m.id not in done]
            if not todo:
                break
            m = todo[0]
            done.add(m.id)
            if m.state.version is None:  # still loading its first model: wait for it
                m = await self._settled(m, timeout_s) or m
            if not first and pause_s > 0:
                await asyncio.sleep(pause_s)  # bake time: watch the swapped replicas first
            first = False
            old_model, old_version = m.state.model, m.state.version
            previous = previous or old_version
            cmd = Command(next(self._ids), "install", model, expect, sanity_check)
            rep = await self._ask(m, cmd, timeout_s)
            if rep is None:
                outcomes[m.id] = ReplicaOutcome(m.id, "reranker", "gone")
                continue
            if rep.ok and expect is not None and rep.version != expect:
                # It swapped, but to other files than the rest: undo it with the others.
                swapped.append((m, old_model, old_version))
                why = (
                    f"{m.id} loaded {model.spec} as {rep.version}, not {expect} as the "
                    "members before it (do the model files differ between nodes?)"
                )
                outcomes[m.id] = ReplicaOutcome(m.id, "reranker", "refused", rep.version, why)
                return await self._abort(model, expect, previous, outcomes, swapped, why, before)
            if not rep.ok:
                why = f"{m.id} refused {model.spec}: {rep.reason}"
                outcomes[m.id] = ReplicaOutcome(
                    m.id, "reranker", "refused", old_version, rep.reason, rep.ms, rep.validation
                )
                log.warning("rollout %s: %s", self.app, why)
                return await self._abort(model, expect, previous, outcomes, swapped, why, before)
            expect = expect or rep.version
            status: Status = "unchanged" if rep.version == old_version else "swapped"
            if status == "swapped":
                swapped.append((m, old_model, old_version))
            outcomes[m.id] = ReplicaOutcome(
                m.id, "reranker", status, rep.version, None, rep.ms, rep.validation
            )
            log.info("rollout %s: %s now serves %s", self.app, m.id, rep.version)
        # Every replica holds it: new replicas load it, and the engines may pin it now.
        configured = next((m.state.configured for m, _, _ in swapped), None)
        self._serving, self._configured = (model, expect), configured or self._configured
        for f in self._alive("engine"):
            if f.id in skip or (expect is not None and f.state.version == expect):
                continue
            old_model, old_version = f.state.model, f.state.version
            rep = await self._ask(
                f, Command(next(self._ids), "follow", model, expect, sanity_check), timeout_s
            )
            if rep is None:
                outcomes[f.id] = ReplicaOutcome(f.id, "engine", "gone")
                continue
            if not rep.ok:
                why = f"{f.id} could not follow to {model.spec}: {rep.reason}"
                outcomes[f.id] = ReplicaOutcome(f.id, "engine", "refused", old_version, rep.reason)
                return await self._abort(model, expect, previous, outcomes, swapped, why, before)
            swapped.append((f, old_model, old_version))
            outcomes[f.id] = ReplicaOutcome(f.id, "engine", "followed", rep.version, ms=rep.ms)
        return RolloutResult(True, model, expect, previous, list(outcomes.values()))

    async def _settled(self, m: _Member, timeout_s: float) -> _Member | None:
        end = time.monotonic() + timeout_s
        while m.state.version is None and time.monotonic() < end:
            if self._members.get(m.id) is not m:
                return None
            await asyncio.sleep(0.2)
        return m

    async def _abort(
        self,
        model: ModelSpec,
        version: str | None,
        previous: str | None,
        outcomes: dict[str, ReplicaOutcome],
        swapped: list[tuple[_Member, ModelSpec | None, str | None]],
        reason: str,
        before: tuple[tuple[ModelSpec, str | None] | None, ModelSpec | None],
    ) -> RolloutResult:
        """Roll the swapped members back, newest first, each to the model it held."""
        self._serving, self._configured = before
        for m, old_model, old_version in reversed(swapped):
            if old_model is None:
                continue
            op: Op = "revert" if m.state.role == "reranker" else "follow"
            cmd = Command(next(self._ids), op, old_model, old_version, False)
            rep = await self._ask(m, cmd, 600.0)
            prior = outcomes[m.id]
            if rep is not None and rep.ok:
                outcomes[m.id] = replace(prior, status="rolled_back", version=rep.version)
            else:
                why = "gone" if rep is None else rep.reason
                outcomes[m.id] = replace(prior, status="rollback_failed", reason=why)
                log.error("rollout %s: could not roll %s back: %s", self.app, m.id, why)
        return RolloutResult(False, model, version, previous, list(outcomes.values()), reason)


# ---- the members' side ----------------------------------------------------------------------


def coordinator(app: str, *, create: bool = True) -> Any:
    """The coordinator actor of ``app`` (created when ``create`` and missing)."""
    require_ray()
    import ray

    name = f"twostage-rollout:{app}"
    if not create:
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            raise InvalidArgument(
                f"no twostage reranker deployment in the Ray application {app!r} (no "
                f"coordinator actor {name!r} in namespace {NAMESPACE!r})"
            ) from None
    actor = ray.remote(Coordinator).options(  # type: ignore[attr-defined]
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=0,
    )
    return actor.remote(app)


Handler = Callable[[Command], Report]


class Member:
    """A replica or an engine in an application's rollouts: a thread that long-polls the
    coordinator and runs the commands it gets with ``handler``.

    ``state`` says what it serves now (sent with each poll). Start with :meth:`start`, end
    with :meth:`stop` (it leaves at once; the thread ends within a poll).
    """

    def __init__(
        self,
        app: str,
        member_id: str,
        state: Callable[[], MemberState],
        handler: Handler,
    ) -> None:
        self.app = app
        self.id = member_id
        self._state = state
        self._handler = handler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._actor = coordinator(app)

    def serving(self, configured: ModelSpec | None) -> tuple[ModelSpec, str | None] | None:
        """The model the last successful rollout installed, if any (and if it replaced
        ``configured``: see :meth:`Coordinator.serving`)."""
        import ray

        result: tuple[ModelSpec, str | None] | None = ray.get(
            self._actor.serving.remote(configured), timeout=60
        )
        return result

    def start(self) -> None:
        """Join (the first poll) and keep polling on a daemon thread."""
        self._thread = threading.Thread(
            target=self._loop, name=f"twostage-rollout-{self.id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Leave the application's rollouts (does not wait for the thread)."""
        self._stop.set()
        try:
            self._actor.leave.remote(self.id)
        except Exception:  # the cluster is going away too
            pass

    def _loop(self) -> None:
        import ray

        report: Report | None = None
        failing = False
        while not self._stop.is_set():
            try:
                cmd = ray.get(
                    self._actor.poll.remote(self.id, self._state(), report, POLL_S),
                    timeout=POLL_S + 30.0,
                )
                report, failing = None, False
            except Exception as e:  # the coordinator restarts (Ray does), or was removed
                if self._stop.is_set():
                    return
                if not failing:
                    log.warning("rollout member %s: poll failed (%s); retrying", self.id, e)
                failing = True
                self._stop.wait(2.0)
                try:  # never made again here: forget() removed it on purpose
                    self._actor = coordinator(self.app, create=False)
                except Exception:
                    pass
                continue
            if cmd is None or self._stop.is_set():
                continue
            t0 = time.perf_counter()
            try:
                report = self._handler(cmd)
            except Exception as e:
                report = Report(cmd.id, False, reason=f"{type(e).__name__}: {e}")
            report = replace(report, ms=round((time.perf_counter() - t0) * 1000.0, 1))


class EngineFollower:
    """Keeps an :class:`~twostage.engine.Engine` that scores on an application's replicas
    (its ``scorer`` a :class:`~twostage.distributed.serving.RayScorer`) on the model they
    serve: after every successful rollout it loads the new model (the tokenizer, the fusion
    settings and the version its searches pin) and swaps it in. Needed by every engine that
    outlives a rollout; the HTTP ingress runs one.

    >>> follower = EngineFollower(engine, "twostage")  # doctest: +SKIP
    >>> follower.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: Engine,
        app: str,
        *,
        install: Callable[[Reranker, ModelSpec], None] | None = None,
        name: str = "engine",
    ) -> None:
        self._engine = engine
        self._install = install
        self._model: ModelSpec | None = None
        self.member = Member(app, f"{name}#{uuid.uuid4().hex[:8]}", self._state, self._run)
        self.member.start()

    @property
    def id(self) -> str:
        """This follower's member id (a rollout it starts skips it: ``skip=(id,)``)."""
        return self.member.id

    def _state(self) -> MemberState:
        rr = self._engine.reranker
        return MemberState("engine", rr.version if rr else None, self._model)

    def _run(self, cmd: Command) -> Report:
        rr = cmd.model.load()
        if cmd.version is not None and rr.version != cmd.version:
            return Report(
                cmd.id,
                False,
                reason=f"{cmd.model.spec} loads here as {rr.version}, not {cmd.version} "
                "as on the replicas (do the model files differ between nodes?)",
            )
        if self._install is not None:
            self._install(rr, cmd.model)
        else:
            self._engine.swap_reranker(rr, sanity_check=False)  # validated by the replicas
        self._model = cmd.model
        return Report(cmd.id, True, rr.version)

    def stop(self) -> None:
        """Stop following."""
        self.member.stop()


def rollout(
    app: str,
    model: str | ModelSpec,
    precision: str = "int8",
    *,
    sanity_check: bool = True,
    expect_version: str | None = None,
    pause_s: float = 0.0,
    step_timeout_s: float = 600.0,
    skip: tuple[str, ...] = (),
) -> RolloutResult:
    """Install ``model`` on the replicas of the application ``app``, one at a time, and on
    its followers; stop and roll back at the first refusal (see the module doc).

    Args:
        app: the Serve application that holds the reranker deployment.
        model: a built-in name or a folder path valid on every node (or a :class:`ModelSpec`).
        precision: ``"int8"`` or ``"fp32"`` (unless ``model`` is a :class:`ModelSpec`).
        sanity_check: False installs a model that ranks the sanity set no better than chance
            (as the server's ``"sanity_check": false``).
        expect_version: refuse unless the model loads as this version on every replica (the
            version the caller loaded, so its engine pins what the replicas serve).
        pause_s: bake time between replicas: how long the swapped ones serve before the
            next one swaps.
        step_timeout_s: the longest one replica's load and checks may take.
        skip: followers that install the model themselves once this returns.

    >>> rollout("twostage", "/models/rerank-v2", pause_s=30).ok  # doctest: +SKIP
    True
    """
    import ray

    spec = model if isinstance(model, ModelSpec) else ModelSpec(str(model), precision)
    if pause_s < 0 or step_timeout_s <= 0:
        raise InvalidArgument("pause_s must be >= 0 and step_timeout_s > 0")
    actor = coordinator(app, create=False)
    result: RolloutResult = ray.get(
        actor.rollout.remote(
            spec,
            sanity_check=sanity_check,
            expect_version=expect_version,
            pause_s=pause_s,
            step_timeout_s=step_timeout_s,
            skip=tuple(skip),
        )
    )
    return result


def members(app: str) -> list[tuple[str, MemberState, bool]]:
    """(member id, what it serves, alive) for each replica and follower of ``app``."""
    import ray

    out: list[tuple[str, MemberState, bool]] = ray.get(
        coordinator(app, create=False).members.remote()
    )
    return out


def forget(app: str) -> None:
    """Remove the coordinator of ``app`` (after ``serve.delete(app)``): a deployment made
    again starts on its configured model."""
    import ray

    try:
        ray.kill(coordinator(app, create=False))
    except InvalidArgument:
        pass


__all__ = [
    "Command",
    "Coordinator",
    "EngineFollower",
    "Member",
    "MemberState",
    "ModelSpec",
    "ReplicaOutcome",
    "Report",
    "RolloutResult",
    "coordinator",
    "forget",
    "members",
    "rollout",
]
