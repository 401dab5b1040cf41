"""Interleaving experiments: a candidate reranker served beside the control, judged by clicks.

An experiment names a **control** (the live reranker in the engine's slot, or a model of its
own) and a **candidate**, the share of searches drawn into it and the interleaving method
(:mod:`twostage.interleave`). **Team A is always the control, team B the candidate.**

* A drawn search runs both rankers on the same query side by side, each under the request's
  whole deadline (so the answer is no later than a plain one; they share the cores and the
  reranker queue), interleaves their top-k and answers with the interleaved hits, an
  ``impression_id`` and the experiment; each hit still names the version that scored it.
* ``POST /feedback`` with that id and the clicked document ids credits the clicks to the
  teams (:func:`~twostage.interleave.outcome`): one feedback per impression, validated
  whole, stored whole or not at all.
* The report counts impressions, feedback, wins for each side, ties, and the sign test's
  p-value over the decided impressions, with the winner once it is significant.

Everything lives in one SQLite file (WAL, one transaction per event): experiments,
impressions with their interleaving, feedback with its outcome. It survives restarts: on
start the running experiment's models are loaded again (through the same checks as a model
update) and it serves on; if they cannot be loaded, or their files have changed (another
version would be measured under the same name), it is stopped with the reason.

At most one experiment runs at a time (the store enforces it).

>>> exps = Experiments(ExperimentStore(path), engine, registry)  # doctest: +SKIP
>>> exps.create(ModelSpec("path", "ce-v2"), share=0.1)["state"]  # doctest: +SKIP
'running'
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Literal

from twostage.engine import Engine, Hit, SearchResponse
from twostage.errors import CorruptStore
from twostage.interleave import Interleaving, compare, credit, interleave, outcome
from twostage.server.errors import ApiError, from_library
from twostage.server.metrics import Metrics
from twostage.server.models import ModelRegistry, ModelRejected
from twostage.server.settings import Precision

log = logging.getLogger("twostage.server")

METHODS = ("team_draft", "balanced")
SCHEMA_VERSION = 1
#: Team letters as the report and the feedback answer name them.
SIDES = {"A": "control", "B": "candidate", "tie": "tie"}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_SCHEMA = """
CREATE TABLE experiments (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'stopped')),
    stopped_at REAL,
    stop_reason TEXT,
    method TEXT NOT NULL,
    share REAL NOT NULL,
    seed INTEGER,
    control TEXT NOT NULL,            -- JSON: "live" or {"name"|"path", "precision"}
    candidate TEXT NOT NULL,          -- JSON: {"name"|"path", "precision"}
    control_version TEXT,             -- NULL for "live": each impression records its own
    candidate_version TEXT NOT NULL
);
-- At most one running experiment, whatever the callers do.
CREATE UNIQUE INDEX experiments_one_running ON experiments (state) WHERE state = 'running';
CREATE TABLE impressions (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL REFERENCES experiments (id),
    created_at REAL NOT NULL,
    query TEXT NOT NULL,
    control_version TEXT,
    candidate_version TEXT,
    interleaving TEXT NOT NULL        -- JSON: Interleaving.to_dict()
);
CREATE INDEX impressions_experiment ON impressions (experiment, control_version);
CREATE TABLE feedback (
    impression TEXT PRIMARY KEY REFERENCES impressions (id),   -- one per impression
    experiment TEXT NOT NULL REFERENCES experiments (id),
    received_at REAL NOT NULL,
    clicks TEXT NOT NULL,             -- JSON: the clicked document ids, in click order
    n_clicks INTEGER NOT NULL,
    credit_a INTEGER NOT NULL,
    credit_b INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('A', 'B', 'tie'))
);
CREATE INDEX feedback_experiment ON feedback (experiment, outcome);
"""


# ---- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A reranker as ``PUT /models/reranker`` takes it: a built-in name or a model folder."""

    kind: Literal["name", "path"]
    spec: str
    precision: Precision | None = None
    sanity_check: bool = True  # False: the request waived the sanity check for this model

    def to_dict(self) -> dict[str, Any]:
        """``{"path"|"name": spec, "precision": ...}``, the request's own shape."""
        out: dict[str, Any] = {self.kind: self.spec, "precision": self.precision}
        if not self.sanity_check:
            out["sanity_check"] = False
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """The inverse of :meth:`to_dict`."""
        kind: Literal["name", "path"] = "name" if "name" in d else "path"
        return cls(kind, str(d[kind]), d.get("precision"), d.get("sanity_check") is not False)


# ---- the store -----------------------------------------------------------------------------


class ExperimentStore:
    """The SQLite file: one connection, one lock, one transaction per event. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a killed process loses nothing committed.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == 0 and not conn.execute("SELECT 1 FROM sqlite_master").fetchone():
                conn.executescript(
                    f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
            elif version != SCHEMA_VERSION:
                conn.close()
                raise CorruptStore(
                    f"{self.path}: experiment store schema {version}, this twostage reads "
                    f"{SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as e:
            raise CorruptStore(f"{self.path}: not a twostage experiment store ({e})") from e
        self._conn = conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; anything raised inside rolls all of it back."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the connection (a checkpoint folds the WAL into the file)."""
        with self._lock:
            self._conn.close()

    # ---- experiments ----
    def experiment(self, exp_id: str) -> sqlite3.Row | None:
        rows = self._read("SELECT * FROM experiments WHERE id = ?", (exp_id,))
        return rows[0] if rows else None

    def experiments(self) -> list[sqlite3.Row]:
        return self._read("SELECT * FROM experiments ORDER BY created_at DESC, id")

    def running(self) -> sqlite3.Row | None:
        rows = self._read("SELECT * FROM experiments WHERE state = 'running'")
        return rows[0] if rows else None

    def add_experiment(self, row: dict[str, Any]) -> None:
        """Insert a running experiment; 409 if the id is taken or another one runs."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM experiments WHERE id = ?", (row["id"],)).fetchone():
                raise ApiError(
                    409, "experiment_exists", f"an experiment {row['id']!r} exists already"
                )
            running = c.execute("SELECT id FROM experiments WHERE state = 'running'").fetchone()
            if running:
                raise _running(running["id"])
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            c.execute(f"INSERT INTO experiments ({cols}) VALUES ({marks})", tuple(row.values()))

    def stop(self, exp_id: str, at: float, reason: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE experiments SET state = 'stopped', stopped_at = ?, stop_reason = ? "
                "WHERE id = ? AND state = 'running'",
                (at, reason, exp_id),
            )

    def counts(self, exp_id: str) -> dict[str, Any]:
        """Impressions (by control version), feedback, clicks and outcomes of one experiment."""
        with self._lock:
            c = self._conn
            versions = {
                r[0]: int(r[1])
                for r in c.execute(
                    "SELECT control_version, COUNT(*) FROM impressions WHERE experiment = ? "
                    "GROUP BY control_version",
                    (exp_id,),
                )
            }
            outcomes = {"A": 0, "B": 0, "tie": 0}
            clicks = 0
            for r in c.execute(
                "SELECT outcome, COUNT(*), SUM(n_clicks) FROM feedback WHERE experiment = ? "
                "GROUP BY outcome",
                (exp_id,),
            ):
                outcomes[r[0]] = int(r[1])
                clicks += int(r[2] or 0)
        return {
            "impressions": sum(versions.values()),
            "control_versions": versions,
            "outcomes": outcomes,
            "clicks": clicks,
        }

    # ---- events ----
    def add_impression(self, row: dict[str, Any]) -> None:
        with self._tx() as c:
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            c.execute(f"INSERT INTO impressions ({cols}) VALUES ({marks})", tuple(row.values()))

    def add_feedback(
        self,
        impression_id: str,
        decide: Callable[[sqlite3.Row | None, sqlite3.Row | None, bool], dict[str, Any]],
    ) -> dict[str, Any]:
        """Read the impression, its experiment and whether it has feedback; ``decide`` raises
        to refuse or returns the feedback row, which is inserted in the same transaction."""
        with self._tx() as c:
            imp = c.execute("SELECT * FROM impressions WHERE id = ?", (impression_id,)).fetchone()
            exp = (
                c.execute("SELECT * FROM experiments WHERE id = ?", (imp["experiment"],)).fetchone()
                if imp is not None
                else None
            )
            done = (
                c.execute(
                    "SELECT 1 FROM feedback WHERE impression = ?", (impression_id,)
                ).fetchone()
                is not None
            )
            row = decide(imp, exp, done)
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            c.execute(f"INSERT INTO feedback ({cols}) VALUES ({marks})", tuple(row.values()))
            return row


def _running(exp_id: str) -> ApiError:
    return ApiError(
        409,
        "experiment_running",
        f"experiment {exp_id!r} is running and one runs at a time: stop it first "
        f"(POST /experiments/{exp_id}/stop)",
    )


# ---- the running experiment ----------------------------------------------------------------


@dataclass(eq=False)
class Arm:
    """The running experiment in this process: its two engines and its random draws."""

    id: str
    method: str
    share: float
    control: Engine
    candidate: Engine
    rng: random.Random
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drawn(self) -> bool:
        """Whether one search is drawn into the experiment (probability ``share``)."""
        with self.lock:
            return self.rng.random() < self.share


class Experiments:
    """Experiments over ``engine`` (the live one): create, stop, serve, record, report.

    Args:
        store: the SQLite file.
        engine: the service's engine; the control when the control is ``"live"``. A model
            of the experiment's own gets an :class:`Engine` over the same collection, with
            the same config and the same reranker queue.
        registry: checks models as a model update does (roots, load, golden set, floor).
        grace_s: how long after a stop the experiment's impressions still take feedback.
        metrics: counters for impressions and feedback (optional).
        clock: seconds since the epoch (tests move it).
    """

    def __init__(
        self,
        store: ExperimentStore,
        engine: Engine,
        registry: ModelRegistry,
        *,
        grace_s: float = 600.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._engine = engine
        self._registry = registry
        self._grace = grace_s
        self._metrics = metrics
        self._clock = clock
        self._arm: Arm | None = None
        self._lock = threading.Lock()  # creations and stops, one at a time

    @property
    def store(self) -> ExperimentStore:
        return self._store

    @property
    def arm(self) -> Arm | None:
        """The experiment serving now, if any."""
        return self._arm

    def close(self) -> None:
        self._arm = None
        self._store.close()

    # ---- lifecycle ----
    def resume(self) -> None:
        """Serve the stored running experiment again (at start): reload and check its models.

        One that cannot be served as it was (a model gone, refused, or changed on disk) is
        stopped with the reason; the service starts either way.
        """
        row = self._store.running()
        if row is None:
            return
        try:
            self._arm = self._load(
                row["id"],
                row["method"],
                float(row["share"]),
                row["seed"],
                _control(json.loads(row["control"])),
                ModelSpec.from_dict(json.loads(row["candidate"])),
                expect=(row["control_version"], row["candidate_version"]),
            )[0]
        except ApiError as e:
            reason = f"could not resume after a restart: {e.message}"
            self._store.stop(row["id"], self._clock(), reason)
            log.warning("experiment %s stopped: %s", row["id"], reason)
            return
        log.info("experiment %s resumed (share %s)", row["id"], row["share"])

    def create(
        self,
        candidate: ModelSpec,
        control: ModelSpec | None = None,
        *,
        share: float,
        method: str = "team_draft",
        exp_id: str | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Check, load and start an experiment; returns its report.

        ``control=None`` is the live reranker. Refusals: 422 ``invalid_share``,
        ``unknown_method``, ``invalid_experiment_id``, ``model_rejected`` (and the model
        update's 403/404 codes); 409 ``experiment_exists``, ``experiment_running``.
        """
        if isinstance(share, bool) or not isinstance(share, (int, float)):
            raise ApiError(422, "invalid_share", f"share must be a number in 0..1, not {share!r}")
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ApiError(422, "invalid_share", f"share must be in 0..1, not {share}")
        if method not in METHODS:
            raise ApiError(
                422,
                "unknown_method",
                f"unknown interleaving method {method!r}; use one of {', '.join(METHODS)}",
            )
        if exp_id is None:
            exp_id = f"exp-{secrets.token_hex(4)}"
        elif not isinstance(exp_id, str) or not _ID.fullmatch(exp_id):
            raise ApiError(
                422,
                "invalid_experiment_id",
                f"experiment id {exp_id!r}: 1-64 letters, digits, '.', '_' or '-', starting "
                "with a letter or digit",
            )
        with self._lock:
            if self._store.experiment(exp_id) is not None:
                raise ApiError(409, "experiment_exists", f"an experiment {exp_id!r} exists already")
            running = self._store.running()
            if running is not None:
                raise _running(running["id"])
            arm, versions = self._load(exp_id, method, float(share), seed, control, candidate)
            now = self._clock()
            self._store.add_experiment(
                {
                    "id": exp_id,
                    "created_at": now,
                    "state": "running",
                    "method": method,
                    "share": float(share),
                    "seed": seed,
                    "control": json.dumps(control.to_dict() if control else "live"),
                    "candidate": json.dumps(candidate.to_dict()),
                    "control_version": versions[0],
                    "candidate_version": versions[1],
                }
            )
            self._arm = arm
        log.info("experiment %s started: %s vs %s, share %s", exp_id, *versions, share)
        return self.report(exp_id)

    def stop(self, exp_id: str, reason: str = "stopped by request") -> dict[str, Any]:
        """Stop a running experiment (its results stay); 404 unknown, 409 already stopped."""
        with self._lock:
            row = self._row(exp_id)
            if row["state"] != "running":
                raise ApiError(
                    409, "experiment_stopped", f"experiment {exp_id!r} is already stopped"
                )
            self._store.stop(exp_id, self._clock(), reason)
            if self._arm is not None and self._arm.id == exp_id:
                self._arm = None  # searches holding it finish; its engines go with them
        log.info("experiment %s stopped: %s", exp_id, reason)
        return self.report(exp_id)

    def _load(
        self,
        exp_id: str,
        method: str,
        share: float,
        seed: int | None,
        control: ModelSpec | None,
        candidate: ModelSpec,
        *,
        expect: tuple[str | None, str] | None = None,
    ) -> tuple[Arm, tuple[str | None, str]]:
        """The experiment's engines; raises ApiError for a model that does not pass."""
        cand = self._engine_for(candidate, "candidate", expect[1] if expect else None)
        ctl = (
            self._engine
            if control is None
            else self._engine_for(control, "control", expect[0] if expect else None)
        )
        arm = Arm(exp_id, method, share, ctl, cand, random.Random(seed))
        ctl_version = None if control is None else _version(ctl)
        assert cand.reranker is not None
        return arm, (ctl_version, cand.reranker.version)

    def _engine_for(self, spec: ModelSpec, role: str, expect: str | None) -> Engine:
        try:
            rec, rr = self._registry.candidate(
                spec.spec, spec.precision, kind=spec.kind, sanity_check=spec.sanity_check
            )
        except ApiError as e:
            raise ApiError(
                e.status, e.code, f"the {role}: {e.message}", details=e.details
            ) from None
        active = self._registry.current
        try:
            # Built like the live engine: same config, same reranker queue; the constructor
            # warms the model and refuses non-finite warm-up scores.
            eng = Engine(
                self._engine.collection,
                reranker=rr,
                config=self._engine.config,
                scorer=self._engine.scorer,
            )
        except Exception as e:
            rec.status, rec.reason = "rejected", f"the warm-up failed: {from_library(e).message}"
            err = ModelRejected(rec.reason, active=active.version if active else None, record=rec)
            raise ApiError(422, err.code, f"the {role}: {err.message}", details=err.details) from e
        if expect is not None:
            _same(eng, role, expect)
        return eng

    # ---- serving ----
    def draw(self) -> Arm | None:
        """The running experiment if this search is drawn into it, else None."""
        arm = self._arm
        return arm if arm is not None and arm.drawn() else None

    def answer(
        self, arm: Arm, query: str, k: int, control: SearchResponse, candidate: SearchResponse
    ) -> dict[str, Any]:
        """The interleaved answer for two rankers' responses, recorded as an impression.

        The answer has the search response's shape: hits in interleaved order (each from the
        ranker that contributed it, with the version that scored it), timings the larger of
        the two per stage (they ran side by side), counts summed, ``degraded`` if either was;
        plus ``impression_id`` and ``experiment``. If the impression cannot be stored, the
        control's own answer is served without one: an experiment never fails a search.
        """
        with arm.lock:
            il = interleave(
                arm.method, [h.id for h in control.hits], [h.id for h in candidate.hits], k,
                rng=arm.rng,
            )  # fmt: skip
        if not il.docs:  # nothing matched (a filter): no impression that a click could judge
            return control.to_dict()
        ranks_a = {h.id: (i, h) for i, h in enumerate(control.hits)}
        ranks_b = {h.id: (i, h) for i, h in enumerate(candidate.hits)}
        hits: list[Hit] = []
        for doc, team in zip(il.docs, il.teams, strict=True):
            a, b = ranks_a.get(doc), ranks_b.get(doc)
            if team == "A" and a is not None:
                hits.append(a[1])
            elif team == "B" and b is not None:
                hits.append(b[1])
            else:  # no team (balanced): the list that ranks it higher, the control on a tie
                pick = min((r for r in (a, b) if r is not None), key=lambda r: r[0])
                hits.append(pick[1])
        v_a, v_b = control.reranker_version, candidate.reranker_version
        iid = secrets.token_urlsafe(16)
        base = control.to_dict()
        try:
            self._store.add_impression(
                {
                    "id": iid,
                    "experiment": arm.id,
                    "created_at": self._clock(),
                    "query": query,
                    "control_version": _version(arm.control),
                    "candidate_version": _version(arm.candidate),
                    "interleaving": json.dumps(il.to_dict()),
                }
            )
        except (sqlite3.Error, ApiError) as e:
            log.error(
                "experiment %s: impression not recorded, control answer served: %s", arm.id, e
            )
            base["notes"] = [*base["notes"], "experiment impression not recorded"]
            return base
        if self._metrics is not None:
            self._metrics.impressions.labels(experiment=arm.id).inc()
        ta, tb = asdict(control.timings), asdict(candidate.timings)
        reasons = [
            f"{side}: {r.degraded_reason}"
            for side, r in (("control", control), ("candidate", candidate))
            if r.degraded_reason
        ]
        base.update(
            hits=[asdict(h) for h in hits],
            timings={stage: max(ms, tb[stage]) for stage, ms in ta.items()},
            degraded=control.degraded or candidate.degraded,
            degraded_reason="; ".join(reasons) or None,
            reranker_version=v_a,
            candidates=control.candidates + candidate.candidates,
            scored=control.scored + candidate.scored,
            cached_scores=control.cached_scores + candidate.cached_scores,
            query_cached=control.query_cached and candidate.query_cached,
            notes=[
                *control.notes,
                *(n for n in candidate.notes if n not in control.notes),
                f"interleaved ({arm.method}): control {v_a or 'first stage'} and candidate "
                f"{v_b or 'first stage'}; hits are in interleaved order, not by score",
            ],
            impression_id=iid,
            experiment={
                "id": arm.id,
                "method": arm.method,
                "control": v_a,
                "candidate": v_b,
            },
        )
        return base

    # ---- feedback ----
    def feedback(self, impression_id: str, clicks: Sequence[str]) -> dict[str, Any]:
        """Record the clicks on one impression (document ids, in click order).

        Refused, with nothing stored: 422 ``no_clicks`` (an empty list), ``duplicate_click``
        (an id twice), ``click_not_shown`` (an id not in that answer); 404
        ``unknown_impression``; 409 ``duplicate_feedback`` (the impression has feedback
        already: one per impression, sent once its clicks are known), ``experiment_stopped``
        (stopped more than ``grace_s`` ago).
        """
        try:
            return self._feedback(impression_id, clicks)
        except ApiError as e:
            if self._metrics is not None:
                self._metrics.feedback_rejected.labels(reason=e.code).inc()
            raise

    def _feedback(self, impression_id: str, clicks: Sequence[str]) -> dict[str, Any]:
        if not clicks:
            raise ApiError(
                422,
                "no_clicks",
                "clicks is empty: send feedback only for an impression that was clicked (one "
                "without feedback counts as not clicked)",
            )
        seen: set[str] = set()
        for c in clicks:
            if c in seen:
                raise ApiError(
                    422,
                    "duplicate_click",
                    f"document {c!r} is listed twice: list each clicked document once, in the "
                    "order of its first click",
                )
            seen.add(c)
        now = self._clock()
        out: dict[str, Any] = {}

        def decide(imp: sqlite3.Row | None, exp: sqlite3.Row | None, done: bool) -> dict[str, Any]:
            if imp is None or exp is None:
                raise ApiError(
                    404, "unknown_impression", f"no impression {impression_id!r} was served"
                )
            if exp["state"] == "stopped" and now - float(exp["stopped_at"]) > self._grace:
                raise ApiError(
                    409,
                    "experiment_stopped",
                    f"experiment {exp['id']!r} stopped at {_iso(exp['stopped_at'])}; feedback "
                    f"is taken up to {self._grace:g} s after a stop",
                )
            if done:
                raise ApiError(
                    409,
                    "duplicate_feedback",
                    f"impression {impression_id!r} has feedback already (one per impression)",
                )
            try:
                il = Interleaving.from_dict(json.loads(imp["interleaving"]))
            except ValueError as e:
                raise CorruptStore(f"impression {impression_id}: {e}") from e
            where = {d: i for i, d in enumerate(il.docs)}
            missing = [c for c in clicks if c not in where]
            if missing:
                raise ApiError(
                    422,
                    "click_not_shown",
                    f"{len(missing)} clicked document(s) were not in impression "
                    f"{impression_id!r}: {', '.join(map(repr, missing[:5]))}",
                )
            positions = [where[c] for c in clicks]
            ca, cb = credit(il, positions)
            oc = outcome(il, positions)
            out.update(experiment=exp["id"], outcome=oc, credit=(ca, cb))
            return {
                "impression": impression_id,
                "experiment": exp["id"],
                "received_at": now,
                "clicks": json.dumps(list(clicks)),
                "n_clicks": len(clicks),
                "credit_a": ca,
                "credit_b": cb,
                "outcome": oc,
            }

        try:
            self._store.add_feedback(impression_id, decide)
        except sqlite3.IntegrityError:  # a racing duplicate that the read did not see
            raise ApiError(
                409,
                "duplicate_feedback",
                f"impression {impression_id!r} has feedback already (one per impression)",
            ) from None
        side = SIDES[out["outcome"]]
        if self._metrics is not None:
            self._metrics.feedback.labels(experiment=out["experiment"], outcome=side).inc()
        return {
            "impression_id": impression_id,
            "experiment": out["experiment"],
            "outcome": side,
            "credit": {"control": out["credit"][0], "candidate": out["credit"][1]},
        }

    # ---- reports ----
    def report(self, exp_id: str) -> dict[str, Any]:
        """What ``GET /experiments/{id}`` answers; 404 ``unknown_experiment``."""
        return self._report(self._row(exp_id))

    def list(self) -> list[dict[str, Any]]:
        """Every experiment's report, newest first."""
        return [self._report(r) for r in self._store.experiments()]

    def _row(self, exp_id: str) -> sqlite3.Row:
        row = self._store.experiment(exp_id)
        if row is None:
            raise ApiError(404, "unknown_experiment", f"no experiment {exp_id!r}")
        return row

    def _report(self, row: sqlite3.Row) -> dict[str, Any]:
        n = self._store.counts(row["id"])
        o = n["outcomes"]
        p_value: float | None = None
        winner: str | None = None
        try:
            cmp = compare(chain(repeat("A", o["A"]), repeat("B", o["B"]), repeat("tie", o["tie"])))
            p_value, winner = cmp.p_value, cmp.winner
        except ImportError:  # the sign test needs scipy, which the server extra lacks
            log.warning("no p-value for experiment %s: the sign test needs scipy", row["id"])
        control = json.loads(row["control"])
        arm = self._arm
        return {
            "id": row["id"],
            "state": row["state"],
            "serving": arm is not None and arm.id == row["id"],
            "method": row["method"],
            "share": row["share"],
            "seed": row["seed"],
            "created_at": _iso(row["created_at"]),
            "stopped_at": _iso(row["stopped_at"]) if row["stopped_at"] is not None else None,
            "stop_reason": row["stop_reason"],
            "control": {
                "team": "A",
                "model": control,
                "version": row["control_version"],
                "versions_served": n["control_versions"],
            },
            "candidate": {
                "team": "B",
                "model": json.loads(row["candidate"]),
                "version": row["candidate_version"],
            },
            "impressions": n["impressions"],
            "feedback": sum(o.values()),
            "clicks": n["clicks"],
            "wins": {"control": o["A"], "candidate": o["B"]},
            "losses": {"control": o["B"], "candidate": o["A"]},
            "ties": o["tie"],
            "p_value": p_value,
            "winner": SIDES[winner] if winner is not None else None,
        }


def _control(raw: Any) -> ModelSpec | None:
    return None if raw == "live" else ModelSpec.from_dict(raw)


def _version(engine: Engine) -> str | None:
    rr = engine.reranker
    return rr.version if rr is not None else None


def _same(engine: Engine, role: str, expect: str) -> None:
    now = _version(engine)
    if now != expect:
        raise ApiError(
            409,
            "model_changed",
            f"the {role} model is now {now}, not the {expect} the experiment started with "
            "(its files changed)",
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(float(ts), timezone.utc).isoformat(timespec="seconds")


__all__ = ["METHODS", "SIDES", "Arm", "ExperimentStore", "Experiments", "ModelSpec"]
