"""Offline evaluation: how good is the first stage, how deep to rerank, is model B better than A.

On any BEIR-layout folder (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``;
only queries judged in the split count), through the same :class:`~twostage.engine.Engine`
that serves. The collection searched is, in this order: the one given for the dataset
(``collection=``, ``--collection``), the folder itself when it holds one (``twostage index
build --out`` into it), else one built by the ingest pipeline into a cache
(``$TWOSTAGE_HOME/eval``, or ``collections=``) and reused from there. A given or found
collection is used only if it holds exactly the corpus's ids and was embedded by the encoder
asked for; otherwise the reason is said and the cache is used.

Each first stage (dense, bm25, hybrid) retrieves 1,000 candidates per query; each reranked
run is what ``Engine.search(depth=d)`` returns with no budget (the cascade's top ``d``
scored and fused, the rest after them), one search per depth, each (query, document) pair
scored once thanks to the engine's score cache. Collections whose queries are also
documents (ArguAna, Quora) can drop each query's own document from its rankings
(``ignore_self``), as BEIR's evaluation does.

Metrics come from :mod:`twostage.metrics` (ir-measures, trec_eval's definitions): NDCG@10,
MRR@10 (``RR@10``), MAP@100 (``AP@100``), Recall@10/100/1000; a judged query with no result
counts as 0. Paired significance per query: Student's paired t-test and a paired
randomization (sign-flip) test.

Latency at each depth is measured on a sample of queries, depths interleaved per query, with
the engine's caches off and no budget: the whole cost of reranking that many candidates. The
depth this machine affords is the deepest whose p99 stays within the budget.

Modules: :mod:`twostage.beir` reads data and writes runs, :mod:`twostage.metrics` scores,
:mod:`twostage.results` holds what was measured, :mod:`twostage.report` writes it up; this
module runs the searches and imports them all (none imports it).

>>> from twostage.evaluation import evaluate
>>> result = evaluate(["scifact/"], depths=[10, 20, 50])  # doctest: +SKIP
>>> result.datasets[0].table()["dense"]["nDCG@10"]  # doctest: +SKIP
0.6475
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from twostage.beir import Dataset, corpus_ids, write_trec
from twostage.config import FIRST_STAGES, EngineConfig
from twostage.errors import InvalidArgument
from twostage.machine import machine_info
from twostage.metrics import (
    Qrels,
    Ranking,
    aggregate,
    paired_test,
    per_query,
)
from twostage.progress import Progress
from twostage.report import write_report
from twostage.results import Config, DatasetResult, Evaluation, short_name

log = logging.getLogger("twostage")

CANDIDATES = 1000  # first-stage candidates per query (for Recall@1000)
DEFAULT_DEPTHS = (10, 20, 50, 100, 200)
DEFAULT_ENCODER = "minilm-l6"

Notes = Callable[[str], None]


# ---- runs from the engine -----------------------------------------------------------------


def first_stage_ranking(
    engine: Any,
    queries: Mapping[str, str],
    first_stage: str,
    k: int = CANDIDATES,
    *,
    progress: bool | None = False,
    desc: str = "",
) -> tuple[Ranking, float]:
    """Each query's top ``k`` from one first stage, and the seconds it took."""
    t0 = time.perf_counter()
    out: Ranking = {}
    with Progress(
        desc or f"{first_stage} first stage",
        len(queries),
        unit="queries",
        progress=progress,
        leave=False,
    ) as bar:
        for qid, text in queries.items():
            resp = engine.search(text, k=k, rerank=False, first_stage=first_stage)
            out[qid] = [h.id for h in resp.hits]
            bar.update(1)
    return out, time.perf_counter() - t0


def reranked_rankings(
    engine: Any,
    queries: Mapping[str, str],
    first_stage: str,
    depths: Sequence[int],
    k: int = CANDIDATES,
    *,
    progress: bool | None = False,
    desc: str = "",
) -> tuple[dict[int, Ranking], float]:
    """Each query's ranking at each rerank depth: what ``engine.search(depth=d)`` answers
    with no budget, one search per depth.

    A depth-``d`` answer cannot be cut out of a deeper one: the cascade scores the top ``d``
    of its cheap order (not of the first stage's), and the fused score is normalised over
    the candidates scored. The cross-encoder's work is still paid once per pair: depths run
    shallow to deep and ``engine``'s score cache (keep it on) answers the pairs a shallower
    depth scored.
    """
    out: dict[int, Ranking] = {d: {} for d in depths}
    t0 = time.perf_counter()
    with Progress(
        desc or f"rerank {first_stage}@{','.join(map(str, sorted(depths)))}",
        len(queries),
        unit="queries",
        progress=progress,
        leave=False,
    ) as bar:
        for qid, text in queries.items():
            for d in sorted(depths):
                resp = engine.search(text, k=max(k, d), depth=d, first_stage=first_stage)
                if resp.degraded:
                    raise RuntimeError(f"query {qid}: reranking degraded ({resp.degraded_reason})")
                out[d][qid] = [h.id for h in resp.hits[:k]]
            bar.update(1)
    return out, time.perf_counter() - t0


def depth_latency(
    engine: Any,
    queries: Sequence[str],
    first_stages: Sequence[str],
    depths: Sequence[int],
    k: int = 10,
    *,
    progress: bool | None = False,
    desc: str = "latency",
) -> dict[str, dict[int, list[float]]]:
    """End-to-end milliseconds per query for each first stage and depth.

    Every (first stage, depth) cell is timed on each query, in an order rotated per query,
    so drift in the machine's load spreads over all cells instead of biasing the last.
    ``engine`` should have its query and score caches off (``query_cache_size=0``,
    ``score_cache_size=0``) so each search pays for all of its work.
    """
    cells = [(fs, d) for fs in first_stages for d in depths]
    out: dict[str, dict[int, list[float]]] = {fs: {d: [] for d in depths} for fs in first_stages}
    if queries:
        for fs in first_stages:  # warm each path once
            engine.search(queries[0], k=k, depth=max(depths), first_stage=fs)
    with Progress(
        desc, len(queries) * len(cells), unit="searches", progress=progress, leave=False
    ) as bar:
        for i, text in enumerate(queries):
            r = i % len(cells)
            for fs, d in cells[r:] + cells[:r]:
                resp = engine.search(text, k=k, depth=d, first_stage=fs)
                out[fs][d].append(resp.timings.total)
                bar.update(1)
    return out


def drop_self(ranking: Mapping[str, Sequence[str]]) -> Ranking:
    """Each query's ranking without the document whose id is the query's id (BEIR's
    ``ignore_identical_ids``: for collections whose queries are also documents)."""
    return {q: [d for d in docs if d != q] for q, docs in ranking.items()}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def self_matches(ds: Dataset, col: Any) -> tuple[int, int]:
    """``(same id, same text)``: how many judged queries have a document with their id, and
    how many of those documents are the query itself (equal texts, or one holding the
    other, whitespace and case aside)."""
    ids = [q for q in ds.queries if q in col]
    same_text = 0
    for i in range(0, len(ids), 512):
        part = ids[i : i + 512]
        for q, doc in zip(part, col.get(part), strict=True):
            qt, dt = _norm(ds.queries[q]), _norm(doc.text)
            short = min(len(qt), len(dt))
            if qt == dt or (short >= 10 and (qt in dt or dt in qt)):
                same_text += 1
    return len(ids), same_text


# ---- which collection to search -------------------------------------------------------------


def collections_home(cache: str | os.PathLike[str] | None = None) -> Path:
    """Where evaluation caches the collections it builds: ``cache``, else
    ``$TWOSTAGE_HOME/eval`` (``~/.cache/twostage/eval``)."""
    from twostage._models import cache_home

    return Path(cache).expanduser() if cache is not None else cache_home() / "eval"


def _encoder_label(e: Mapping[str, Any]) -> str:
    return f"{e.get('name', '?')} ({e.get('precision', '?')})"


def check_collection(
    folder: str | os.PathLike[str], ds: Dataset, encoder: Any | None = None
) -> tuple[Any | None, str]:
    """Open the collection in ``folder`` read-only if it holds exactly ``ds``'s corpus ids
    and was embedded by ``encoder`` (any encoder when None): ``(collection, "")``;
    otherwise ``(None, why not)``. Ids and count are compared, not texts."""
    from twostage.collection import Collection, read_manifest

    path = Path(folder)
    try:
        manifest = read_manifest(path)
    except Exception as e:
        return None, f"it is not a readable collection ({e})"
    made_by = manifest.get("encoder", {})
    if encoder is not None and made_by.get("fingerprint") != encoder.fingerprint:
        return None, (
            f"it was embedded by {_encoder_label(made_by)}, and this evaluation asks for "
            f"{encoder.name} ({encoder.precision})"
        )
    try:
        col = Collection.open(path, encoder, read_only=True)
    except Exception as e:
        return None, f"it could not be opened ({e})"
    try:
        have = set(col.store.ids())
        want = set(corpus_ids(ds.corpus))
    except Exception:
        col.close()
        raise
    if have != want:
        col.close()
        missing, extra = sorted(want - have), sorted(have - want)
        parts = [f"it holds {len(have):,} documents and {ds.corpus.name} has {len(want):,} ids"]
        if missing:
            parts.append(f"{len(missing):,} of the corpus's are not in it (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra):,} of its are not in the corpus (e.g. {extra[0]!r})")
        return None, "; ".join(parts)
    return col, ""


def collection_for(
    ds: Dataset,
    cache: str | os.PathLike[str] | None = None,
    *,
    progress: bool | None = False,
    encoder: Any | None = None,
    given: str | os.PathLike[str] | None = None,
    notes: Notes | None = None,
) -> Any:
    """The collection to evaluate ``ds`` on, opened read-only.

    ``given`` (a collection folder) must match the corpus (:func:`check_collection`) or
    ``InvalidArgument`` says why. Otherwise ``ds``'s own folder is used when it holds a
    matching collection; when it holds one that does not match, ``notes`` hears why and the
    cache is used: under ``cache`` (default ``$TWOSTAGE_HOME/eval``), one folder per
    dataset, corpus identity (path, size, modification time) and encoder, built by the
    ingest pipeline on first use (an interrupted build resumes) and reused after.
    ``encoder`` None: a given or found collection's own encoder, else MiniLM (int8).
    """
    from twostage import ingest
    from twostage.collection import MANIFEST, Collection
    from twostage.encoder import Encoder

    say: Notes = notes or log.info
    if given is not None:
        col, why = check_collection(given, ds, encoder)
        if col is None:
            raise InvalidArgument(
                f"{given} cannot be used for {ds.name}: {why}. Drop --collection to build "
                "one from the corpus"
            )
        say(f"{ds.name}: searching {given} ({len(col):,} documents, {col.encoder.name}): reused")
        return col
    if (ds.path / MANIFEST).is_file():
        col, why = check_collection(ds.path, ds, encoder)
        if col is not None:
            say(
                f"{ds.name}: searching the collection in {ds.path} ({len(col):,} documents, "
                f"{col.encoder.name} {col.encoder.precision}): reused, nothing re-embedded"
            )
            return col
        say(f"{ds.name}: not reusing the collection in {ds.path}: {why}")
    root = collections_home(cache)
    encoder = encoder or Encoder.load(DEFAULT_ENCODER)
    st = ds.corpus.stat()
    ident = f"{ds.corpus.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if encoder.name != DEFAULT_ENCODER or encoder.precision != "int8":
        ident += f":{encoder.fingerprint}"  # the default keeps the cache names it always had
    folder = root / f"{ds.name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    built = (folder / MANIFEST).is_file()
    say(
        f"{ds.name}: {'using the cached' if built else 'building a'} collection in {folder} "
        f"(evaluation's cache: {root}; --collections DIR moves it, --collection DIR "
        "names a collection to search instead)"
    )
    ingest.build(ds.corpus, folder, encoder=encoder, progress=progress)
    return Collection.open(folder, encoder, read_only=True)


# ---- the whole evaluation -----------------------------------------------------------------


def evaluate(
    datasets: Sequence[str | os.PathLike[str]],
    *,
    split: str = "test",
    depths: Sequence[int] = DEFAULT_DEPTHS,
    first_stages: Sequence[str] = ("dense",),
    rerankers: Sequence[str] = ("twostage-rerank",),
    fusion_weight: float | None = None,
    budget_ms: float = 150.0,
    latency_queries: int = 30,
    collections: str | os.PathLike[str] | None = None,
    collection: Sequence[str | os.PathLike[str] | None] | None = None,
    encoder: str | None = None,
    precision: str = "int8",
    ignore_self: bool | None = None,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    notes: Notes | None = None,
    command: str = "",
) -> Evaluation:
    """Evaluate first stages and rerankers on BEIR folders; write runs and a report to ``out``.

    Args:
        datasets: BEIR-layout folders.
        split: the qrels split to score (``qrels/<split>.tsv``).
        depths: rerank depths; the deepest is scored once per query and reused.
        first_stages: any of ``dense``, ``bm25``, ``hybrid``.
        rerankers: reranker specs (built-in name or folder); empty: first stages only.
        fusion_weight: overrides each reranker's own score fusion weight.
        budget_ms: the latency budget the affordable depth is judged against.
        latency_queries: queries sampled (seeded) for the latency at each depth; 0: skip.
        collections: where built collections are cached (default ``$TWOSTAGE_HOME/eval``).
        collection: per dataset, a collection folder to search (None: find or build one);
            see :func:`collection_for`.
        encoder: the bi-encoder (built-in name or folder) a collection must be embedded by;
            None: a found collection's own, else MiniLM.
        ignore_self: drop each query's own document (the one with the query's id) from its
            rankings. None (auto): on for a dataset where most queries that share an id
            with a document share its text too (the query is that document: ArguAna,
            Quora); ids alone decide nothing (ADI's queries 1-35 and documents 1-82 are
            unrelated).
        out: the report folder (runs/, results.json, report.md, PNG plots); None: no files.
        progress: ``False``: quiet; otherwise bars on a terminal, periodic lines elsewhere.
        notes: hears what was decided (the collection used or built, self-matches);
            default: the ``twostage`` logger.
    """
    from twostage.encoder import Encoder
    from twostage.engine import Engine
    from twostage.reranker import Reranker

    if not datasets:
        raise InvalidArgument("no dataset given")
    depths = sorted(set(int(d) for d in depths))
    if not depths or depths[0] < 1 or depths[-1] > CANDIDATES:
        raise InvalidArgument(f"depths must be in 1..{CANDIDATES}, not {depths}")
    for fs in first_stages:
        if fs not in FIRST_STAGES:
            raise InvalidArgument(f"first stage must be one of {FIRST_STAGES}, not {fs!r}")
    given = list(collection or [])
    if len(given) > len(datasets):
        raise InvalidArgument(
            f"{len(given)} collections given for {len(datasets)} datasets: one per --data at most"
        )
    given += [None] * (len(datasets) - len(given))
    loaded = [Dataset.load(p, split) for p in datasets]  # fail on bad input before any work
    models = {spec: Reranker.load(spec) for spec in rerankers}
    enc = Encoder.load(encoder, precision=precision) if encoder else None  # type: ignore[arg-type]
    cfg_kw: dict[str, Any] = dict(
        budget_ms=1e9, max_query_chars=1_000_000, max_k=CANDIDATES, max_depth=CANDIDATES
    )
    if fusion_weight is not None:
        cfg_kw["fusion_weight"] = fusion_weight
    say: Notes = notes or log.info
    out_dir = Path(out) if out is not None else None
    results = []
    for ds, folder in zip(loaded, given, strict=True):
        col = collection_for(
            ds, collections, progress=progress, encoder=enc, given=folder, notes=say
        )
        try:
            results.append(
                _evaluate_one(
                    ds,
                    col,
                    models,
                    Engine,
                    cfg_kw,
                    depths,
                    list(first_stages),
                    budget_ms,
                    latency_queries,
                    seed,
                    out_dir,
                    progress,
                    ignore_self,
                    say,
                    reused=folder is not None or Path(col.path).resolve() == ds.path.resolve(),
                )
            )
        finally:
            col.close()
    ev = Evaluation(
        datasets=results,
        depths=depths,
        first_stages=list(first_stages),
        rerankers=list(rerankers),
        command=command,
        machine=machine_info(),
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(ev.to_dict(), indent=1))
        write_report(ev, out_dir)
    return ev


def _decide_ignore_self(
    ds: Dataset, col: Any, ignore_self: bool | None, say: Notes
) -> tuple[bool, int]:
    same_id, same_text = self_matches(ds, col)
    if ignore_self is None:
        on = same_id > 0 and same_text * 2 >= same_id
        if on:
            say(
                f"{ds.name}: {same_text:,} of {len(ds.queries):,} queries are documents of the "
                "corpus (same id, same text): each query's own document is left out of its "
                "rankings, as BEIR does (--keep-self to keep it)"
            )
        elif same_id:
            say(
                f"{ds.name}: {same_id:,} query ids are also document ids, but only "
                f"{same_text:,} of those documents are the query's text: self-matches are kept "
                "(--ignore-self drops them)"
            )
        return on, same_id
    return ignore_self, same_id


def _evaluate_one(
    ds: Dataset,
    col: Any,
    models: Mapping[str, Any],
    engine_cls: Any,
    cfg_kw: dict[str, Any],
    depths: list[int],
    first_stages: list[str],
    budget_ms: float,
    latency_queries: int,
    seed: int,
    out_dir: Path | None,
    progress: bool | None,
    ignore_self: bool | None,
    say: Notes,
    *,
    reused: bool,
) -> DatasetResult:
    skip_self, same_id = _decide_ignore_self(ds, col, ignore_self, say)
    keep: Callable[[Ranking], Ranking] = drop_self if skip_self else (lambda r: r)
    configs: list[Config] = []
    rankings: dict[str, Ranking] = {}
    seconds: dict[str, float] = {}
    base = engine_cls(col, reranker=None, config=EngineConfig(**cfg_kw, score_cache_size=0))
    for fs in first_stages:
        ranking, took = first_stage_ranking(
            base, ds.queries, fs, progress=progress, desc=f"{ds.name}: {fs}"
        )
        rankings[fs] = keep(ranking)
        seconds[fs] = took
        configs.append(Config(fs, fs))
    latency: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    sample = sorted(ds.queries)
    random.Random(seed).shuffle(sample)
    sample = sample[:latency_queries]
    for spec, rr in models.items():
        # One engine per model, its score cache shared by the first stages: a candidate
        # that dense and bm25 both fetch is scored once.
        eng = engine_cls(col, reranker=rr, config=EngineConfig(**cfg_kw))
        for fs in first_stages:
            by_depth, took = reranked_rankings(
                eng,
                ds.queries,
                fs,
                depths,
                progress=progress,
                desc=f"{ds.name}: {fs}+{short_name(spec)}",
            )
            seconds[f"{fs}+{spec}"] = took
            for d, ranking in by_depth.items():
                name = f"{fs}+{short_name(spec)}@{d}"
                rankings[name] = keep(ranking)
                configs.append(Config(name, fs, spec, d))
        if sample:
            lat_kw = {**cfg_kw, "budget_ms": 1e9}
            lat_eng = engine_cls(
                col,
                reranker=rr,
                config=EngineConfig(**lat_kw, score_cache_size=0, query_cache_size=0),
            )
            ms = depth_latency(
                lat_eng,
                [ds.queries[q] for q in sample],
                first_stages,
                depths,
                progress=progress,
                desc=f"{ds.name}: latency of {short_name(spec)}",
            )
            latency[spec] = {fs: {d: _dist(v) for d, v in by.items()} for fs, by in ms.items()}
    per: dict[str, dict[str, dict[str, float]]] = {}
    written: dict[str, str] = {}  # ranking digest -> run file, so equal runs share one file
    for c in configs:
        per[c.name] = per_query(ds.qrels, rankings[c.name])
        c.metrics = aggregate(per[c.name])
        for d in depths:  # a depth-d run's top d: the candidates its reranker scored
            c.metrics.setdefault(f"R@{d}", _recall_at(ds.qrels, rankings[c.name], d))
        if out_dir is not None:
            digest = _digest(rankings[c.name])
            if digest not in written:
                tag = f"twostage-{c.name.replace('@', '_at')}"
                path = out_dir / "runs" / ds.name / f"{c.name.replace('@', '_at')}.trec.gz"
                write_trec(rankings[c.name], path, tag)
                written[digest] = str(path.relative_to(out_dir))
            c.run_file = written[digest]
    comparisons = _comparisons(configs, per, first_stages, list(models), depths, seed)
    return DatasetResult(
        name=ds.name,
        split=ds.split,
        queries=len(ds.qrels),
        documents=len(col),
        configs=configs,
        latency=latency,
        comparisons=comparisons,
        seconds=seconds,
        budget_ms=budget_ms,
        collection=str(col.path),
        collection_reused=reused,
        encoder=f"{col.encoder.name} ({col.encoder.precision})",
        ignore_self=skip_self,
        self_matches=same_id,
    )


def _digest(ranking: Mapping[str, Sequence[str]]) -> str:
    h = hashlib.sha256()
    for q in sorted(ranking):
        h.update(q.encode())
        h.update(b"\0")
        h.update("\t".join(ranking[q]).encode())
        h.update(b"\n")
    return h.hexdigest()


def _comparisons(
    configs: list[Config],
    per: Mapping[str, Mapping[str, Mapping[str, float]]],
    first_stages: list[str],
    rerankers: list[str],
    depths: list[int],
    seed: int,
) -> list[dict[str, Any]]:
    """First stage vs two-stage, first stage vs first stage, reranker vs reranker."""
    pairs: list[tuple[str, str, str]] = []
    for i, a in enumerate(first_stages):
        for b in first_stages[i + 1 :]:
            pairs.append(("first stages", a, b))
    for c in configs:
        if c.reranker is not None:
            pairs.append(("reranking", c.first_stage, c.name))
    for fs in first_stages:
        for d in depths:
            names = [f"{fs}+{short_name(r)}@{d}" for r in rerankers]
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    pairs.append(("rerankers", a, b))
    out = []
    for kind, a, b in pairs:
        s = paired_test(per[a]["nDCG@10"], per[b]["nDCG@10"], "nDCG@10", seed=seed)
        out.append({"kind": kind, "a": a, "b": b, **asdict(s)})
    return out


def _recall_at(qrels: Qrels, ranking: Ranking, k: int) -> float:
    vals = []
    for q, rel in qrels.items():
        pos = {d for d, g in rel.items() if g > 0}
        if pos:
            vals.append(len(pos.intersection(ranking.get(q, [])[:k])) / len(pos))
    return float(np.mean(vals)) if vals else 0.0


def _dist(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "n": float(len(a)),
    }


__all__ = [
    "CANDIDATES",
    "DEFAULT_DEPTHS",
    "check_collection",
    "collection_for",
    "collections_home",
    "depth_latency",
    "drop_self",
    "evaluate",
    "first_stage_ranking",
    "reranked_rankings",
    "self_matches",
]
