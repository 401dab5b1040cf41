"""Cross-request batching: one reranker queue shared by every search in the process.

On a small CPU a single search's 100 pairs already fill the cores, but many concurrent
searches each running their own small batches pay per-call overhead and fight over the
same cores (N onnxruntime calls x their intra-op threads). The :class:`Batcher` puts every
request's pairs on one queue; one worker thread forms batches from the heads of the
requests in earliest-deadline-first order, up to ``max_pairs`` pairs or ``max_wait_ms``
after the oldest request arrived, runs them, and hands each request its scores. ``workers``
threads (default 2) take batches from the queue, so two runs can share the cores: measured
here, one onnxruntime run does not keep 2 cores busy (benches/load.py).

What the engine promises still holds per request:

* **One model version per answer.** A batch holds pairs of one :class:`Reranker` object
  only; a request that started with model A is scored by A even after a swap to B.
* **Its own deadline.** A pair is put in a batch only when the batch's predicted cost
  (measured seconds per padded token x padded tokens) ends before the deadline of every
  request in it; a request whose next pair cannot fit any more stops with a ``budget``
  reason. The requester waits until its deadline plus a grace period and then takes what
  was scored (``timeout``); a run still going past the latest deadline in it is cancelled.
* **Failures fall back.** A run that raises or gives non-finite scores ends every request
  in that batch with the reason; scores already handed back are kept.

>>> from twostage.server.batching import Batcher
>>> batcher = Batcher(max_pairs=64, max_wait_ms=2.0)
>>> engine.scorer = batcher  # doctest: +SKIP
>>> batcher.close()
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from twostage._onnx import pad
from twostage.engine import _Cancel
from twostage.reranker import Pairs, Reranker

#: Called after each model run: (pairs, requests, padded tokens, seconds).
BatchHook = Callable[[int, int, int, float], None]


@dataclass(eq=False)
class _Job:
    """One request's pairs on the queue. Mutable fields change under the batcher's lock."""

    rr: Reranker
    pairs: Pairs
    deadline: float
    enqueued: float
    next: int = 0  # the next pair to schedule: pairs are taken in first-stage order
    scores: dict[int, float] = field(default_factory=dict)
    reason: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    closed: bool = False  # the requester stopped waiting: write nothing more
    inflight: int = 0  # its batches being run now (several workers may hold one each)

    @property
    def remaining(self) -> int:
        return len(self.pairs) - self.next


class Batcher:
    """A reranker queue with one worker thread; implements the engine's ``PairScorer``.

    Args:
        max_pairs: the most pairs in one model run.
        max_wait_ms: how long the worker waits for more requests before it runs a batch
            smaller than ``max_pairs`` (counted from the oldest waiting request).
        grace_ms: how long past its deadline a requester waits for a batch in flight.
        split_saving: split a batch in two length-sorted runs when that saves at least this
            share of the padded tokens (short and long pairs are padded apart).
        on_batch: a hook for metrics, called from the worker after each run.
        workers: threads that run batches (each may hold one batch at a time).
    """

    def __init__(
        self,
        *,
        max_pairs: int = 64,
        max_wait_ms: float = 2.0,
        grace_ms: float = 50.0,
        split_saving: float = 0.25,
        on_batch: BatchHook | None = None,
        workers: int = 2,
    ) -> None:
        if max_pairs < 1 or workers < 1:
            raise ValueError(f"max_pairs and workers must be >= 1, not {max_pairs}, {workers}")
        if max_wait_ms < 0 or grace_ms < 0:
            raise ValueError("max_wait_ms and grace_ms must be >= 0")
        self.max_pairs = max_pairs
        self.max_wait = max_wait_ms / 1000.0
        self.grace = grace_ms / 1000.0
        self.split_saving = split_saving
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        # Seconds per padded token, by model object (weak: a retired model is not kept alive).
        self._cost: weakref.WeakKeyDictionary[Reranker, float] = weakref.WeakKeyDictionary()
        self._closing = False
        self.batches = 0
        self.pairs_run = 0
        self._threads = [
            threading.Thread(target=self._worker, name=f"twostage-rerank-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # ---- the requester's side ----
    def score_pairs(
        self, rr: Reranker, pairs: Pairs, deadline: float, per_token: float
    ) -> tuple[dict[int, float], str | None]:
        """Queue ``pairs`` for ``rr`` and wait for their scores until ``deadline`` (+ grace).

        >>> scores, reason = batcher.score_pairs(rr, pairs, deadline, 0.0)  # doctest: +SKIP
        """
        n = len(pairs)
        if n == 0:
            return {}, None
        now = time.perf_counter()
        job = _Job(rr=rr, pairs=pairs, deadline=deadline, enqueued=now)
        with self._cond:
            if self._closing:
                return {}, "reranker failed: the batch queue is closed"
            self._cost.setdefault(rr, per_token)
            self._pending.append(job)
            self._cond.notify_all()
        finished = job.done.wait(timeout=max(deadline - now, 0.0) + self.grace)
        with self._cond:
            job.closed = True
            if job in self._pending:
                self._pending.remove(job)
            scores = dict(job.scores)
            reason = job.reason
        if not finished and reason is None:
            reason = f"timeout: {n - len(scores)} of {n} pairs not scored by the deadline"
        return scores, reason

    # ---- the worker ----
    def _worker(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
            rr, rows = batch
            self._run(rr, rows)

    def _next_batch(self) -> tuple[Reranker, list[tuple[_Job, int]]] | None:
        """Wait for work and form one batch (called with the lock held); None: closing."""
        while True:
            self._pending = [j for j in self._pending if not j.closed]
            if not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
                continue
            head = min(self._pending, key=lambda j: j.deadline)
            same = [j for j in self._pending if j.rr is head.rr]
            # Wait a little for more requests, unless the batch is full, the queue is
            # closing, or waiting would eat the most urgent request's slack.
            wait_until = min(
                min(j.enqueued for j in same) + self.max_wait,
                head.deadline - self._predict(head.rr, head, 1),
            )
            now = time.perf_counter()
            if (
                sum(j.remaining for j in same) < self.max_pairs
                and now < wait_until
                and not self._closing
            ):
                self._cond.wait(timeout=wait_until - now)
                continue
            rows = self._form(head.rr, sorted(same, key=lambda j: j.deadline), now)
            if rows:
                return head.rr, rows
            # Every candidate job was finalised as out of budget: look again.

    def _predict(self, rr: Reranker, job: _Job, count: int) -> float:
        lengths = [len(job.pairs.ids[i]) for i in range(job.next, job.next + count)]
        return self._cost.get(rr, 0.0) * count * max(lengths, default=0)

    def _form(self, rr: Reranker, jobs: list[_Job], now: float) -> list[tuple[_Job, int]]:
        """Take pairs from the jobs in deadline order while the batch ends in time for all."""
        per_token = self._cost.get(rr, 0.0)
        rows: list[tuple[_Job, int]] = []
        longest = 0
        earliest = float("inf")
        for job in jobs:
            room = self.max_pairs - len(rows)
            if room <= 0:
                break
            take = min(room, job.remaining)
            ids = job.pairs.ids
            if now + per_token * len(ids[job.next]) > job.deadline:
                # Not even its next pair alone fits: the engine's budget cut-off.
                job.reason = f"budget: {job.remaining} of {len(job.pairs)} pairs not scored"
                job.next = len(job.pairs)
                if job.inflight == 0:  # else the worker running its last batch finishes it
                    job.done.set()
                continue
            while take > 0:
                width = max(longest, *(len(ids[i]) for i in range(job.next, job.next + take)))
                end = now + per_token * (len(rows) + take) * width
                if end <= min(earliest, job.deadline):
                    break
                take //= 2
            if take == 0:
                continue  # fits alone, not beside this batch: the next batch
            for i in range(job.next, job.next + take):
                rows.append((job, i))
                longest = max(longest, len(ids[i]))
            job.next += take
            job.inflight += 1
            earliest = min(earliest, job.deadline)
        for job in jobs:  # scheduled in full: leaves the queue (its scores come back later)
            if job.remaining == 0 and job in self._pending:
                self._pending.remove(job)
        return rows

    def _groups(self, rows: list[tuple[_Job, int]]) -> list[list[tuple[_Job, int]]]:
        """One run, or two length-sorted runs when that pads much less."""
        rows = sorted(rows, key=lambda r: len(r[0].pairs.ids[r[1]]))
        lengths = [len(j.pairs.ids[i]) for j, i in rows]
        whole = len(rows) * lengths[-1]
        best, cut = whole, 0
        for c in range(1, len(rows)):
            cost = c * lengths[c - 1] + (len(rows) - c) * lengths[-1]
            if cost < best:
                best, cut = cost, c
        if cut and best <= (1.0 - self.split_saving) * whole:
            return [rows[:cut], rows[cut:]]
        return [rows]

    def _run(self, rr: Reranker, rows: list[tuple[_Job, int]]) -> None:
        jobs = list(dict.fromkeys(j for j, _ in rows))
        latest = max(j.deadline for j in jobs)
        failure: str | None = None
        for group in self._groups(rows):
            batch = pad(
                list(range(len(group))),
                [j.pairs.ids[i] for j, i in group],
                [j.pairs.type_ids[i] for j, i in group],
            )
            t0 = time.perf_counter()
            # A hung or slow run is cancelled once every request in it has given up.
            cancel = _Cancel(latest - t0 + self.grace)
            try:
                with cancel:
                    raw = rr.run(batch, cancel.options)
                scores = rr.postprocess(raw)
            except Exception as e:
                failure = (
                    "timeout: reranker run cancelled at the deadline"
                    if cancel.fired
                    else f"reranker failed: {type(e).__name__}: {e}"
                )
                break
            took = time.perf_counter() - t0
            self.batches += 1
            self.pairs_run += len(group)
            if self.on_batch is not None:
                self.on_batch(len(group), len({id(j) for j, _ in group}), batch.tokens, took)
            with self._cond:
                prev = self._cost.get(rr) or took / batch.tokens
                # A moving average: one slow batch (a busy machine) does not stall many.
                self._cost[rr] = 0.7 * prev + 0.3 * took / batch.tokens
            if not np.isfinite(scores).all():
                failure = "reranker returned non-finite scores"
                break
            with self._cond:
                for (job, i), s in zip(group, scores.tolist(), strict=True):
                    if not job.closed:
                        job.scores[i] = s
        with self._cond:
            for job in jobs:
                if failure is not None and job.reason is None:
                    job.reason = failure
                    job.next = len(job.pairs)
                    if job in self._pending:
                        self._pending.remove(job)
                job.inflight -= 1
                # Complete when nothing is left to schedule and no other batch of it runs.
                if job.remaining == 0 and job.inflight == 0:
                    job.done.set()

    # ---- lifecycle ----
    def queued(self) -> int:
        """Pairs waiting on the queue (not yet in a batch)."""
        with self._cond:
            return sum(j.remaining for j in self._pending if not j.closed)

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)


__all__ = ["BatchHook", "Batcher"]
