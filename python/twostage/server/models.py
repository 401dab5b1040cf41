"""Reranker updates without downtime: load beside, warm, validate, swap; or keep the old one.

An update (``PUT /models/reranker``, SIGHUP, a watched folder) runs in order, and any step
that fails leaves the serving model untouched and says why:

1. **resolve**: a built-in name, or a folder under the configured model roots;
2. **load**: a new :class:`~twostage.reranker.Reranker` beside the one serving;
3. **validate**: finite scores on a golden set of pairs; a ranking better than chance on
   the shipped sanity set (:mod:`twostage.sanity`, 240 judged pairs: refused below a pairwise
   accuracy of 0.716, 4 null standard deviations above chance) unless the request says
   ``"sanity_check": false`` or the server runs ``--no-sanity-check``; and, when a
   validation set is configured, NDCG@10 on it not below the floor;
4. **swap**: :meth:`Engine.swap_reranker` warms it and installs it atomically; searches
   already running finish with the model they started with.

The model before is kept for :meth:`ModelRegistry.rollback`; the one before that is
released, and freed once its last search ends. The model a swap or a rollback leaves serving
is remembered in a small JSON file (``ServerSettings.model_state_path``) and installed again,
through the same checks, when the server restarts with the same configured model
(:meth:`ModelRegistry.restore`); if it cannot be, the configured model serves.

Answers (``GET /models``, refusals) name model folders relative to their model root and
give a short reason; the full error, with paths and onnxruntime's words, is in the log.

>>> registry = ModelRegistry(engine, settings)  # doctest: +SKIP
>>> registry.update("ce-v2", precision="fp32").version  # doctest: +SKIP
'ce-v2@3f2a...'
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from twostage._memory import release_memory
from twostage._models import BUILTINS
from twostage.engine import Engine
from twostage.errors import InvalidModel
from twostage.metrics import ndcg10_of_scores
from twostage.reranker import Reranker
from twostage.sanity import check_reranker, load_judged_set
from twostage.server.errors import ApiError, from_library
from twostage.server.security import (
    check_model_files,
    check_model_path,
    model_file_problem,
    shown_path,
)
from twostage.server.settings import Precision, ServerSettings

log = logging.getLogger("twostage.server")

Status = Literal["active", "previous", "retired", "rejected", "candidate"]

#: Installs a validated reranker (its record says where it came from); raises if it cannot.
#: Default: the engine's own atomic swap. Serving on Ray, a rollout across the replicas first
#: (:mod:`twostage.distributed.rollout`).
Installer = Callable[[Reranker, "ModelRecord"], None]

#: Pairs every candidate must score with finite values: short and long, on- and off-topic,
#: an empty-ish document and non-ASCII text, so a model that breaks on any of them is refused.
GOLDEN: list[tuple[str, str]] = [
    ("how do I read a gzip file", "The gzip module reads and writes gzip-compressed files."),
    ("how do I read a gzip file", "A bird in the hand is worth two in the bush."),
    ("parse json", "json.loads deserializes a str containing a JSON document to an object."),
    ("sort a list", "list.sort() sorts the list in place, using only < comparisons."),
    ("sort a list", "." * 3),
    ("regular expression groups", "Match.group returns one or more subgroups of the match. " * 20),
    ("unicode normalisation", "unicodedata.normalize('NFC', 'café') — naïve résumé, 東京."),
    ("what is a coroutine", "Coroutines are declared with async def and awaited with await."),
]


@dataclass
class ModelRecord:
    """One model the server loaded or was offered, and what became of it."""

    spec: str
    precision: str
    status: Status
    version: str | None = None
    source: str | None = None  # the resolved folder, or "built-in"
    loaded_at: str | None = None
    load_ms: float | None = None
    validate_ms: float | None = None
    swap_ms: float | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why it was rejected
    # Kept from answers: the resolved folder (None for a built-in), how the spec was read,
    # and who chose the model (the operator's configuration or a request).
    path: Path | None = field(default=None, repr=False)
    kind: Literal["name", "path"] = "path"
    origin: Literal["config", "request"] = "request"
    shown_spec: str | None = None  # the spec as answers show it (relative to its root)
    sanity_check: bool = True  # False: installed with the sanity check waived

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: no absolute paths (they stay in the server's log)."""
        out = asdict(self)
        for private in ("path", "kind", "origin", "shown_spec", "sanity_check"):
            del out[private]
        out["spec"] = self.shown_spec if self.shown_spec is not None else self.spec
        return out


class ModelRejected(ApiError):
    """An update failed; the serving model is unchanged."""

    def __init__(self, message: str, *, active: str | None, record: ModelRecord) -> None:
        super().__init__(
            422,
            "model_rejected",
            f"{message}; still serving {active or 'no reranker'}",
            details={"active": active, "candidate": record.to_dict()},
        )


class _Unfit(Exception):
    """A model that loaded badly or failed validation (the message says why)."""


class SanityRefused(InvalidModel):
    """A reranker that ranks the sanity set no better than chance (:mod:`twostage.sanity`)."""


class ModelRegistry:
    """The engine's reranker, its predecessor (for rollback) and the update history.

    One update at a time: a second one while the first runs gets 409 ``update_in_progress``.
    """

    def __init__(
        self,
        engine: Engine,
        settings: ServerSettings,
        *,
        on_update: Callable[[str], None] | None = None,
        install: Installer | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._installer = install
        self._lock = threading.Lock()
        self._current: tuple[ModelRecord, Reranker] | None = None
        self._previous: tuple[ModelRecord, Reranker] | None = None
        self._history: list[ModelRecord] = []
        self._on_update = on_update
        self._validation: list[tuple[str, list[str], list[int]]] | None = None
        if settings.validation_set is not None:
            self._validation = load_validation_set(settings.validation_set)

    # ---- reads ----
    @property
    def current(self) -> ModelRecord | None:
        """The serving model's record."""
        return self._current[0] if self._current else None

    @property
    def previous(self) -> ModelRecord | None:
        """The model a rollback returns to."""
        return self._previous[0] if self._previous else None

    def describe(self) -> dict[str, Any]:
        """What GET /models answers."""
        enc = self._engine.collection.encoder
        return {
            "reranker": self.current.to_dict() if self.current else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "history": [r.to_dict() for r in reversed(self._history)],
            "encoder": {
                "name": enc.name,
                "precision": enc.precision,
                "fingerprint": enc.fingerprint,
            },
            # How many, not where: model paths are shown relative to their root.
            "model_roots": len(self._settings.model_roots),
            "validation_set": self._settings.validation_set.name
            if self._settings.validation_set
            else None,
            "ndcg_floor": self._settings.ndcg_floor,
            "sanity_check": self._settings.sanity_check,
        }

    # ---- updates ----
    def adopt(
        self,
        rr: Reranker | None,
        spec: str,
        precision: str,
        load_ms: float,
        validation: dict[str, Any] | None = None,
    ) -> None:
        """Record the model the engine was started with (already installed)."""
        if rr is None:
            return
        rec = self._record(spec, precision, "active")
        rec.origin = "config"
        rec.validation = validation or {}
        rec.version, rec.loaded_at, rec.load_ms = rr.version, _now(), round(load_ms, 1)
        folder = Path(spec).expanduser()
        if spec in BUILTINS:
            rec.kind, rec.source = "name", "built-in"
        elif folder.is_dir():
            rec.path = folder.resolve()
            rec.source = shown_path(rec.path, self._settings.model_roots)
        else:  # a Hugging Face repo id: no folder of ours to watch or show
            rec.kind, rec.source = "name", spec
        self._current = (rec, rr)
        self._remember(rec)

    def update(
        self,
        spec: str,
        precision: Precision | None = None,
        *,
        kind: Literal["auto", "name", "path"] = "auto",
        trusted: bool = False,
        origin: Literal["config", "request"] = "request",
        sanity_check: bool = True,
    ) -> ModelRecord:
        """Load, validate and install the reranker ``spec``; raises :class:`ModelRejected`.

        ``kind``: ``"name"`` (a built-in), ``"path"`` (a folder under the model roots) or
        ``"auto"`` (a built-in name if there is one). ``trusted`` skips the model-root check:
        for specs the operator gave on the command line, never for a request's. ``origin``
        says who chose it: a request's choice is remembered across restarts.
        ``sanity_check=False`` installs a model that ranks the sanity set no better than
        chance (its figures are still measured and shown).
        """
        if not self._lock.acquire(blocking=False):
            raise ApiError(
                409, "update_in_progress", "another model update is running; retry when it ends"
            )
        try:
            prec = precision or self._settings.reranker_precision
            return self._update(spec, prec, kind, trusted, origin, sanity_check)
        finally:
            self._lock.release()

    def reload(self) -> ModelRecord | None:
        """Load the serving model again (its files changed): SIGHUP, watched folder."""
        cur = self.current
        if cur is None:
            return None
        precision: Precision = "fp32" if cur.precision == "fp32" else "int8"
        waived = cur.sanity_check
        if cur.kind == "name" or cur.path is None:
            return self.update(
                cur.spec, precision, kind="name", origin=cur.origin, sanity_check=waived
            )
        # Its resolved folder, not the spec (a request's spec is relative to a root). The
        # operator's own folder is trusted as at start; a request's is checked again: its
        # files may have changed into links that lead out.
        trusted = cur.origin == "config"
        return self.update(
            str(cur.path),
            precision,
            kind="path",
            trusted=trusted,
            origin=cur.origin,
            sanity_check=waived,
        )

    def rollback(self) -> ModelRecord:
        """Return to the previous model (the current one becomes the previous)."""
        if not self._lock.acquire(blocking=False):
            raise ApiError(
                409, "update_in_progress", "a model update is running; retry when it ends"
            )
        try:
            if self._previous is None:
                raise ApiError(
                    409, "no_previous_model", "there is no previous model to roll back to"
                )
            prev, cur = self._previous, self._current
            t0 = time.perf_counter()
            try:
                self._install(prev[1], prev[0])
            except Exception as e:
                log.warning("rollback to %s failed: %s", prev[0].version, e)
                reason = public_reason(e, self._settings.model_roots)
                active = cur[0].version if cur else None
                raise ApiError(
                    409,
                    "rollback_failed",
                    f"the rollback failed: {reason}; still serving {active or 'no reranker'}",
                ) from None
            prev[0].status, prev[0].swap_ms = "active", _ms(t0)
            if cur is not None:
                cur[0].status = "previous"
            self._current, self._previous = prev, cur
            self._notify("rollback")
            self._persist()
            log.info("rolled back to %s", prev[0].version)
            return prev[0]
        finally:
            self._lock.release()

    def follow(self, rr: Reranker, spec: str, precision: str) -> ModelRecord:
        """Record and install a reranker another process installed and validated (a rollout
        started elsewhere across the Ray replicas this server scores on): no checks, no
        rollout of its own; the current model becomes the previous one. Waits for an update
        running here to end."""
        with self._lock:
            rec = self._record(spec, precision, "active")
            rec.version, rec.loaded_at = rr.version, _now()
            folder = Path(spec).expanduser()
            if folder.is_dir():
                rec.path = folder.resolve()
                rec.source = shown_path(rec.path, self._settings.model_roots)
            else:
                rec.kind, rec.source = "name", "built-in" if spec in BUILTINS else spec
            t0 = time.perf_counter()
            self._engine.swap_reranker(rr, sanity_check=False)  # validated where it started
            rec.swap_ms = _ms(t0)
            old = self._current
            if old is not None:
                old[0].status = "previous"
            if self._previous is not None:
                self._previous[0].status = "retired"
            self._previous, self._current = old, (rec, rr)
            self._remember(rec)
            self._notify("ok")
            self._persist()
            release_memory()
            log.info("reranker %s installed by a rollout", rr.version)
            return rec

    def _install(self, rr: Reranker, rec: ModelRecord) -> None:
        if self._installer is not None:
            self._installer(rr, rec)
        # Validated (or the check waived): warms it, refuses non-finite warm-up scores. After a
        # rollout the replicas hold it, so this process may now pin its searches to it.
        self._engine.swap_reranker(rr, sanity_check=False)

    def candidate(
        self,
        spec: str,
        precision: Precision | None = None,
        *,
        kind: Literal["auto", "name", "path"] = "auto",
        trusted: bool = False,
        sanity_check: bool = True,
    ) -> tuple[ModelRecord, Reranker]:
        """Resolve, load and validate ``spec`` as :meth:`update` does, but install nothing.

        For a model served beside the live one (an experiment's candidate): the caller warms
        it (an :class:`Engine` built with it does). Raises as :meth:`update` does; refusals
        are not added to the update history, which is about the serving model.
        """
        prec: Precision = precision or self._settings.reranker_precision
        rec = self._record(spec, prec, "rejected")
        try:
            rr = self._prepare(rec, spec, prec, kind, trusted, sanity_check)
        except _Unfit as e:
            rec.reason = str(e)
            active = self.current.version if self.current else None
            raise ModelRejected(str(e), active=active, record=rec) from None
        except ApiError as e:
            rec.reason = e.message
            raise
        rec.status = "candidate"
        return rec, rr

    def _prepare(
        self,
        rec: ModelRecord,
        spec: str,
        precision: Precision,
        kind: Literal["auto", "name", "path"],
        trusted: bool,
        sanity_check: bool = True,
    ) -> Reranker:
        """Steps 1-3 (resolve, load, validate) into ``rec``: raises ApiError or _Unfit."""
        rec.sanity_check = sanity_check
        if not isinstance(spec, str) or not spec.strip():
            raise _Unfit("the model spec is empty")
        target: str | Path = spec
        if kind == "name" or (kind == "auto" and spec in BUILTINS):
            rerankers = sorted(n for n, b in BUILTINS.items() if b.kind == "reranker")
            if spec not in BUILTINS:
                raise ApiError(
                    404,
                    "model_not_found",
                    f"no built-in model {spec!r}; built-in rerankers: {rerankers}",
                )
            if BUILTINS[spec].kind != "reranker":
                raise ApiError(
                    422, "model_rejected", f"built-in {spec!r} is an encoder, not a reranker"
                )
            rec.source, rec.kind = "built-in", "name"
        else:
            roots = self._settings.model_roots
            if trusted:
                target = Path(spec).expanduser().resolve()
            else:
                target = check_model_path(spec, roots)
            rec.path, rec.kind, rec.source = target, "path", shown_path(target, roots)
            # Every file the loader may open: inside the roots (unless the operator's own),
            # bounded in size, and weights that start like weights, before anything hashes
            # or parses them (a 3 GiB file is refused in microseconds, not 35 s).
            for f in check_model_files(target, None if trusted else roots):
                problem = model_file_problem(f, self._settings.max_model_bytes, roots)
                if problem:
                    raise _Unfit(f"could not load {rec.shown_spec}: {problem}")
        t0 = time.perf_counter()
        try:
            rr = Reranker.load(target, precision=precision)
        except Exception as e:
            log.warning("model %s: could not load %s: %s", spec, target, e)
            reason = public_reason(e, self._settings.model_roots)
            raise _Unfit(f"could not load {rec.shown_spec}: {reason}") from None
        rec.version, rec.load_ms, rec.loaded_at = rr.version, _ms(t0), _now()
        t1 = time.perf_counter()
        try:
            rec.validation = self.validate(rr, sanity_check=sanity_check)
        except SanityRefused as e:
            hint = '(to install it anyway: "sanity_check": false)'
            raise _Unfit(f"validation failed: {e} {hint}") from None
        except ValueError as e:
            raise _Unfit(f"validation failed: {e}") from None
        rec.validate_ms = _ms(t1)
        return rr

    def _update(
        self,
        spec: str,
        precision: Precision,
        kind: Literal["auto", "name", "path"],
        trusted: bool,
        origin: Literal["config", "request"],
        sanity_check: bool = True,
    ) -> ModelRecord:
        rec = self._record(spec, precision, "rejected")
        rec.origin = origin
        active = self.current.version if self.current else None

        def reject(why: str) -> ModelRejected:
            rec.reason = why
            self._remember(rec)
            self._notify("rejected")
            log.warning("model update %s refused: %s", spec, why)
            return ModelRejected(why, active=active, record=rec)

        try:
            rr = self._prepare(rec, spec, precision, kind, trusted, sanity_check)
        except _Unfit as e:
            raise reject(str(e)) from None
        except ApiError as e:
            rec.reason = e.message
            self._remember(rec)
            self._notify("rejected")
            raise
        t2 = time.perf_counter()
        try:
            self._install(rr, rec)
        except Exception as e:
            what = "the warm-up failed" if self._installer is None else "the install failed"
            log.warning("model %s: %s: %s", spec, what, e)
            raise reject(f"{what}: {public_reason(e, self._settings.model_roots)}") from None
        rec.swap_ms = _ms(t2)
        rec.status = "active"
        old = self._current
        if old is not None:
            old[0].status = "previous"
        if self._previous is not None:
            self._previous[0].status = "retired"  # released: freed after its last search
        self._previous, self._current = old, (rec, rr)
        self._remember(rec)
        self._notify("ok")
        self._persist()
        # A retired model's weights and onnxruntime arenas stay in glibc's free lists.
        release_memory()
        log.info("reranker %s installed (load %.0f ms)", rr.version, rec.load_ms or 0.0)
        return rec

    def validate(
        self, rr: Reranker, *, enforce_floor: bool = True, sanity_check: bool = True
    ) -> dict[str, Any]:
        """Golden-set, sanity-set (and validation-set) figures for ``rr``; raises
        ValueError if unfit (:func:`validate_reranker` with the server's settings).

        ``enforce_floor=False`` measures NDCG@10 without refusing: the model the operator
        starts the server with is served even below the floor (with a warning).
        ``sanity_check=False`` measures the sanity set without refusing (with a warning);
        with the server's ``sanity_check`` off it is not run.
        """
        return validate_reranker(
            rr,
            sanity=self._settings.sanity_check,
            enforce_sanity=sanity_check,
            validation=self._validation,
            ndcg_floor=self._settings.ndcg_floor,
            enforce_floor=enforce_floor,
        )

    # ---- the live choice across restarts ----
    def _persist(self) -> None:
        """Remember what serves now: the model a request chose, or None for the configured
        one. Written atomically; a failure to write is logged, never a failed swap."""
        cur = self.current
        live: dict[str, Any] | None = None
        if cur is not None and cur.origin == "request":
            spec = str(cur.path) if cur.kind == "path" and cur.path is not None else cur.spec
            live = {
                "kind": cur.kind,
                "spec": spec,
                "precision": cur.precision,
                "version": cur.version,
                "sanity_check": cur.sanity_check,
            }
        state = {"format": 1, "configured": self._configured(), "live": live, "saved_at": _now()}
        path = self._settings.model_state_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(state, f, indent=1)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            log.warning("could not remember the live reranker in %s: %s", path, e)

    def _configured(self) -> dict[str, Any]:
        return {
            "reranker": self._settings.reranker,
            "precision": self._settings.reranker_precision,
        }

    def restore(self) -> ModelRecord | None:
        """Install again the reranker a swap left serving before the restart, through every
        check a swap makes (roots, files, load, golden set, floor, warm-up). Never raises:
        a missing, stale or refused choice is logged and the configured model serves. A
        choice made over another configured model than today's is ignored (the operator
        changed ``--reranker`` since: that wins)."""
        path = self._settings.model_state_path
        try:
            if not path.is_file():
                return None
            state = json.loads(path.read_text(encoding="utf-8"))
            live = state.get("live")
            configured = state.get("configured")
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring the remembered reranker in %s: %s", path, e)
            return None
        if live is None:
            return None
        if configured != self._configured():
            log.info(
                "the configured reranker changed since the last swap: serving it, not the "
                "remembered %s",
                live.get("spec") if isinstance(live, dict) else live,
            )
            return None
        kind, spec, precision = (
            (live.get("kind"), live.get("spec"), live.get("precision"))
            if isinstance(live, dict)
            else (None, None, None)
        )
        if (
            kind not in ("name", "path")
            or not isinstance(spec, str)
            or precision
            not in (
                "int8",
                "fp32",
            )
        ):
            log.warning("ignoring the remembered reranker in %s: malformed %r", path, live)
            return None
        waived = isinstance(live, dict) and live.get("sanity_check") is False
        try:
            rec = self.update(spec, precision, kind=kind, sanity_check=not waived)
        except ApiError as e:
            log.warning(
                "could not restore the reranker %s chosen before the restart (%s): serving "
                "the configured one",
                spec,
                e.message,
            )
            return None
        except Exception:
            log.exception("could not restore the reranker %s: serving the configured one", spec)
            return None
        log.info("restored the reranker chosen before the restart: %s", rec.version)
        return rec

    def _record(self, spec: str, precision: str, status: Status) -> ModelRecord:
        shown = spec
        if spec not in BUILTINS and Path(spec).expanduser().is_absolute():
            shown = shown_path(Path(spec).expanduser().resolve(), self._settings.model_roots)
        return ModelRecord(spec=spec, precision=precision, status=status, shown_spec=shown)

    def _remember(self, rec: ModelRecord) -> None:
        if rec not in self._history:
            self._history.append(rec)
        del self._history[: -self._settings.history]

    def _notify(self, result: str) -> None:
        if self._on_update is not None:
            self._on_update(result)


def validate_reranker(
    rr: Reranker,
    *,
    sanity: bool = True,
    enforce_sanity: bool = True,
    validation: list[tuple[str, list[str], list[int]]] | None = None,
    ndcg_floor: float | None = None,
    enforce_floor: bool = True,
) -> dict[str, Any]:
    """The checks a model swap runs, as figures: finite scores on :data:`GOLDEN`, the sanity
    gate (:mod:`twostage.sanity`) when ``sanity``, and NDCG@10 on ``validation`` (from
    :func:`load_validation_set`) against ``ndcg_floor`` when given.

    Raises :class:`SanityRefused` when the sanity gate refuses (unless not
    ``enforce_sanity``: then a warning), ``ValueError`` for a non-finite golden score or
    NDCG@10 below the floor (unless not ``enforce_floor``). The server's swaps and the Ray
    replicas' rollouts (:mod:`twostage.distributed.rollout`) both run it.

    >>> validate_reranker(Reranker.load("twostage-rerank"))["sanity"]["passed"]  # doctest: +SKIP
    True
    """
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    scores = np.concatenate([rr.score(q, [d]) for q, d in GOLDEN])
    out["golden_pairs"] = len(GOLDEN)
    out["golden_ms_per_pair"] = round(_ms(t0) / len(GOLDEN), 3)
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(
            f"non-finite score {scores[bad]} on golden pair {bad} ({GOLDEN[bad][0]!r})"
        )
    if sanity:
        result = check_reranker(rr)
        out["sanity"] = {**result.to_dict(), "enforced": enforce_sanity}
        if not result.passed and enforce_sanity:
            raise SanityRefused(result.reason)
        if not result.passed:
            log.warning("reranker %s installed without passing: %s", rr.version, result.reason)
    if validation is not None:
        ndcg = float(np.mean([ndcg_at_10(rr.score(q, docs), rels) for q, docs, rels in validation]))
        out["ndcg@10"] = round(ndcg, 4)
        out["validation_queries"] = len(validation)
        if ndcg_floor is not None:
            out["ndcg_floor"] = ndcg_floor
            below = not math.isfinite(ndcg) or ndcg < ndcg_floor
            if below and not enforce_floor:
                log.warning(
                    "reranker %s: NDCG@10 %.4f is below the floor %s", rr.version, ndcg, ndcg_floor
                )
            elif below:
                raise ValueError(f"NDCG@10 {ndcg:.4f} on the validation set is below {ndcg_floor}")
    return out


def load_validation_set(path: Path) -> list[tuple[str, list[str], list[int]]]:
    """A JSONL validation set: ``{"query": str, "documents": [{"text", "relevance"}]}``,
    relevance an integer grade (0 not relevant, 1, 2, ... more), as in qrels."""
    judged = load_judged_set(path, relevance=_grade, what="validation set")
    return [(q, docs, [int(r) for r in rels]) for q, docs, rels in judged]


def _grade(v: Any) -> int:
    g = float(v)
    if isinstance(v, bool) or not g.is_integer() or g < 0:
        raise ValueError(f"relevance must be an integer grade (0, 1, 2, ...), not {v!r}")
    return int(g)


def ndcg_at_10(scores: np.ndarray, relevance: list[int]) -> float:
    """NDCG@10 of the order ``scores`` gives (ties: input order), with integer graded
    ``relevance``: :func:`twostage.metrics.ndcg10_of_scores`, the project's one NDCG
    (ir-measures; gain = the grade, as in ``twostage eval``).

    >>> ndcg_at_10(np.array([0.9, 0.1]), [1, 0]), round(ndcg_at_10(np.array([0.1, 0.9]), [1, 0]), 4)
    (1.0, 0.6309)
    """
    return ndcg10_of_scores(scores, relevance)


# An absolute path in a library message (up to a quote, space or separator).
_ABS_PATH = re.compile(r"(?<![\w.])/[^\s'\",;:()\[\]]+")


def public_reason(exc: BaseException, roots: tuple[Path, ...]) -> str:
    """A short reason for an answer: paths relative to their model root (else their last
    part), onnxruntime's internals summarised. The caller logs the whole error."""
    msg = from_library(exc).message
    if "onnxruntime" in msg or "ONNXRuntimeError" in msg:
        return "onnxruntime could not load the graph (the server log has the details)"
    msg = _ABS_PATH.sub(lambda m: shown_path(Path(m.group(0)), roots), msg)
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "GOLDEN",
    "Installer",
    "ModelRecord",
    "ModelRegistry",
    "ModelRejected",
    "SanityRefused",
    "ndcg_at_10",
    "validate_reranker",
]
