"""Offline evaluation: how good is the first stage, how deep to rerank, is model B better than A.

On any BEIR-layout folder (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``;
only queries judged in the split count), through the same :class:`~twostage.engine.Engine`
that serves: the collection is built with the ingest pipeline (and cached), each first stage
(dense, bm25, hybrid) retrieves 1,000 candidates per query, and each reranker scores the top
``max(depths)`` of them once; the run at a smaller depth reranks only that prefix and keeps
the rest in first-stage order, exactly what ``Engine.search(depth=d)`` returns with no budget.

Metrics come from ir-measures (trec_eval's definitions through pytrec_eval): NDCG@10,
MRR@10 (``RR@10``), MAP@100 (``AP@100``), Recall@10/100/1000. A judged query with no result
counts as 0 (ir-measures alone would leave it out of the mean). Paired significance per
query: Student's paired t-test and a paired randomization (sign-flip) test from scipy.

Latency at each depth is measured on a sample of queries, depths interleaved per query, with
the engine's caches off and no budget: the whole cost of reranking that many candidates. The
depth this machine affords is the deepest whose p99 stays within the budget.

>>> from twostage.evaluation import evaluate
>>> result = evaluate(["scifact/"], depths=[10, 20, 50])  # doctest: +SKIP
>>> result.datasets[0].table()["dense"]["nDCG@10"]  # doctest: +SKIP
0.6475
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twostage.config import FIRST_STAGES, EngineConfig
from twostage.errors import InvalidArgument

log = logging.getLogger("twostage")

Run = dict[str, dict[str, float]]  # query id -> document id -> score (higher is better)
Qrels = dict[str, dict[str, int]]
Ranking = dict[str, list[str]]  # query id -> document ids, best first

#: The measures every report shows, in ir-measures' notation (RR@10 is MRR@10, AP@100 MAP@100).
MEASURES = ("nDCG@10", "RR@10", "AP@100", "R@10", "R@100", "R@1000")
CANDIDATES = 1000  # first-stage candidates per query (for Recall@1000)
DEFAULT_DEPTHS = (10, 20, 50, 100, 200)


# ---- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A BEIR-layout test collection: the judged queries of one split and their qrels."""

    name: str
    path: Path
    split: str
    corpus: Path
    queries: dict[str, str]
    qrels: Qrels

    @classmethod
    def load(cls, folder: str | os.PathLike[str], split: str = "test") -> Dataset:
        """Read ``folder``'s queries and ``qrels/<split>.tsv`` (the corpus is streamed later).

        Raises ``FileNotFoundError`` naming what is missing, ``InvalidArgument`` for a
        malformed qrels row.
        """
        path = Path(folder)
        corpus = next(
            (path / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (path / n).is_file()),
            None,
        )
        if corpus is None:
            raise FileNotFoundError(f"{path}: no corpus.jsonl or corpus.jsonl.gz (BEIR layout)")
        qrels_file = path / "qrels" / f"{split}.tsv"
        if not qrels_file.is_file():
            have = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
            raise FileNotFoundError(f"{qrels_file} not found (splits here: {have or 'none'})")
        qrels = read_qrels(qrels_file)
        queries: dict[str, str] = {}
        with _open_text(path / "queries.jsonl") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    qid, text = str(row["_id"]), str(row["text"])
                except (ValueError, KeyError, TypeError) as e:
                    raise InvalidArgument(f"{path / 'queries.jsonl'} line {n}: {e}") from e
                if qid in qrels:
                    queries[qid] = text
        missing = [q for q in qrels if q not in queries]
        if missing:
            log.warning("%s: %d judged queries have no text: %s", path, len(missing), missing[:5])
            qrels = {q: r for q, r in qrels.items() if q in queries}
        if not qrels:
            raise InvalidArgument(f"{qrels_file}: no judged query has a text in queries.jsonl")
        return cls(path.name, path, split, corpus, queries, qrels)


def read_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Qrels as ``{q: {doc: grade}}``: BEIR TSV (``query-id corpus-id score``, with a
    header) or TREC (``qid 0 doc grade``)."""
    qrels: Qrels = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            row = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
            if not row or not row[0] or (n == 1 and row[0] == "query-id"):
                continue
            if len(row) == 4:  # TREC: qid iteration doc grade
                row = [row[0], row[2], row[3]]
            if len(row) != 3:
                raise InvalidArgument(
                    f"{path} line {n}: expected 'qid doc grade' (BEIR) or 'qid 0 doc grade' (TREC)"
                )
            try:
                grade = int(float(row[2]))
            except ValueError:
                raise InvalidArgument(
                    f"{path} line {n}: grade {row[2]!r} is not a number"
                ) from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def _open_text(path: Path) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


# ---- TREC runs ----------------------------------------------------------------------------


def write_trec(ranking: Ranking, path: str | os.PathLike[str], tag: str) -> None:
    """Write ``ranking`` as a TREC run (``qid Q0 doc rank score tag``), scores by rank.

    The score is ``len(list) - rank``, so every tool that re-sorts by score (trec_eval
    breaks ties by document id) reads exactly this order.
    """
    if not tag or any(c.isspace() for c in tag):
        raise InvalidArgument(f"run tag must be one word, not {tag!r}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for qid in sorted(ranking):
            docs = ranking[qid]
            for rank, doc in enumerate(docs, 1):
                f.write(f"{qid} Q0 {doc} {rank} {len(docs) - rank + 1} {tag}\n")
    os.replace(tmp, path)


def read_trec(path: str | os.PathLike[str]) -> Ranking:
    """A TREC run file as ``{qid: [doc, ...]}``, ordered by score (ties by rank column)."""
    rows: dict[str, list[tuple[float, int, str]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InvalidArgument(f"{path} line {n}: expected 6 fields, got {len(parts)}")
            try:
                rank, score = int(parts[3]), float(parts[4])
            except ValueError:
                raise InvalidArgument(f"{path} line {n}: rank/score are not numbers") from None
            rows.setdefault(parts[0], []).append((-score, rank, parts[2]))
    return {q: [d for *_, d in sorted(r)] for q, r in rows.items()}


def as_run(ranking: Ranking) -> Run:
    """Scores that reproduce ``ranking``'s order exactly (strictly decreasing by rank)."""
    return {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in ranking.items()}


# ---- metrics and significance -------------------------------------------------------------


def per_query(
    qrels: Qrels, ranking: Ranking, measures: Sequence[str] = MEASURES
) -> dict[str, dict[str, float]]:
    """``{measure: {qid: value}}`` over every judged query (a query with no result is 0)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    out: dict[str, dict[str, float]] = {m: dict.fromkeys(qrels, 0.0) for m in measures}
    names = {str(p): m for p, m in zip(parsed, measures, strict=True)}
    run = {q: r for q, r in as_run(ranking).items() if q in qrels and r}
    for row in ir_measures.iter_calc(parsed, qrels, run):
        out[names[str(row.measure)]][row.query_id] = float(row.value)
    return out


def aggregate(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each measure over its queries."""
    return {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in values.items()}


@dataclass(frozen=True)
class Significance:
    """A paired comparison of two runs on one measure (B minus A)."""

    measure: str
    mean_a: float
    mean_b: float
    delta: float
    p_ttest: float
    p_randomization: float
    queries: int
    wins: int  # queries where B is better
    losses: int

    @property
    def significant(self) -> bool:
        """Both tests agree at p < 0.05."""
        return self.p_ttest < 0.05 and self.p_randomization < 0.05


def paired_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    measure: str = "nDCG@10",
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> Significance:
    """Paired t-test and randomization test of per-query values ``b`` against ``a``.

    >>> s = paired_test({"1": 0.1, "2": 0.2, "3": 0.3}, {"1": 0.2, "2": 0.3, "3": 0.5})
    >>> round(s.delta, 3), s.wins, s.losses
    (0.133, 3, 0)
    """
    from scipy import stats

    qids = sorted(set(a) | set(b))
    x = np.array([a.get(q, 0.0) for q in qids])
    y = np.array([b.get(q, 0.0) for q in qids])
    d = y - x
    if len(qids) < 2 or not np.any(d):
        p_t = p_r = 1.0
    else:
        if np.allclose(d, d[0]):  # no variance: the t statistic is infinite
            p_t = 0.0
        else:
            p_t = float(stats.ttest_rel(y, x).pvalue)
        perm = stats.permutation_test(
            (d,),
            np.mean,
            permutation_type="samples",
            n_resamples=resamples,
            alternative="two-sided",
            random_state=np.random.default_rng(seed),
        )
        p_r = float(perm.pvalue)
    return Significance(
        measure=measure,
        mean_a=float(x.mean()) if len(x) else 0.0,
        mean_b=float(y.mean()) if len(y) else 0.0,
        delta=float(d.mean()) if len(d) else 0.0,
        p_ttest=p_t,
        p_randomization=p_r,
        queries=len(qids),
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
    )


# ---- runs from the engine -----------------------------------------------------------------


def first_stage_ranking(
    engine: Any, queries: Mapping[str, str], first_stage: str, k: int = CANDIDATES
) -> tuple[Ranking, float]:
    """Each query's top ``k`` from one first stage, and the seconds it took."""
    t0 = time.perf_counter()
    out: Ranking = {}
    for qid, text in queries.items():
        resp = engine.search(text, k=k, rerank=False, first_stage=first_stage)
        out[qid] = [h.id for h in resp.hits]
    return out, time.perf_counter() - t0


def reranked_rankings(
    engine: Any,
    queries: Mapping[str, str],
    first_stage: str,
    depths: Sequence[int],
    k: int = CANDIDATES,
    *,
    progress: bool = False,
) -> tuple[dict[int, Ranking], float]:
    """Rankings at each rerank depth from one reranked search per query at the deepest.

    The top ``d`` first-stage candidates ordered by the final (fused) score, then the
    rest in first-stage order: what ``engine.search(depth=d)`` answers with no budget.
    """
    deepest = max(depths)
    out: dict[int, Ranking] = {d: {} for d in depths}
    t0 = time.perf_counter()
    items = list(queries.items())
    bar = _bar(len(items), f"rerank {first_stage}@{deepest}", progress)
    for qid, text in items:
        resp = engine.search(text, k=max(k, deepest), depth=deepest, first_stage=first_stage)
        if resp.degraded:
            raise RuntimeError(f"query {qid}: reranking degraded ({resp.degraded_reason})")
        by_rank = sorted(resp.hits, key=lambda h: h.first_stage_rank)
        for d in depths:
            top = sorted(by_rank[:d], key=lambda h: (-h.score, h.first_stage_rank))
            out[d][qid] = [h.id for h in top] + [h.id for h in by_rank[d:k]]
        bar.update(1)
    bar.close()
    return out, time.perf_counter() - t0


def depth_latency(
    engine: Any,
    queries: Sequence[str],
    first_stages: Sequence[str],
    depths: Sequence[int],
    k: int = 10,
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
    for i, text in enumerate(queries):
        r = i % len(cells)
        for fs, d in cells[r:] + cells[:r]:
            resp = engine.search(text, k=k, depth=d, first_stage=fs)
            out[fs][d].append(resp.timings.total)
    return out


# ---- the whole evaluation -----------------------------------------------------------------


@dataclass
class Config:
    """One evaluated configuration: a first stage, optionally a reranker at a depth."""

    name: str
    first_stage: str
    reranker: str | None = None
    depth: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    run_file: str = ""


@dataclass
class DatasetResult:
    """Everything measured on one dataset."""

    name: str
    split: str
    queries: int
    documents: int
    configs: list[Config]
    latency: dict[str, dict[str, dict[int, dict[str, float]]]]  # reranker -> stage -> depth
    comparisons: list[dict[str, Any]]
    seconds: dict[str, float]
    budget_ms: float

    def table(self) -> dict[str, dict[str, float]]:
        """``{configuration name: {measure: value}}``."""
        return {c.name: c.metrics for c in self.configs}

    def affordable_depth(self, reranker: str, first_stage: str) -> int | None:
        """The deepest measured depth whose p99 latency fits the budget (None: none does)."""
        lat = self.latency.get(reranker, {}).get(first_stage, {})
        fits = [d for d, v in lat.items() if v["p99"] <= self.budget_ms]
        return max(fits) if fits else None


@dataclass
class Evaluation:
    """The result of :func:`evaluate` (also written as results.json)."""

    datasets: list[DatasetResult]
    depths: list[int]
    first_stages: list[str]
    rerankers: list[str]
    command: str
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


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
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = False,
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
        out: the report folder (runs/, results.json, report.md, PNG plots); None: no files.
    """
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
    loaded = [Dataset.load(p, split) for p in datasets]  # fail on bad input before any work
    models = {spec: Reranker.load(spec) for spec in rerankers}
    cfg_kw: dict[str, Any] = dict(
        budget_ms=1e9, max_query_chars=1_000_000, max_k=CANDIDATES, max_depth=CANDIDATES
    )
    if fusion_weight is not None:
        cfg_kw["fusion_weight"] = fusion_weight
    out_dir = Path(out) if out is not None else None
    results = []
    for ds in loaded:
        col = collection_for(ds, collections, progress=progress)
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
        from twostage.report import write_report

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(ev.to_dict(), indent=1))
        write_report(ev, out_dir)
    return ev


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
    progress: bool,
) -> DatasetResult:
    configs: list[Config] = []
    rankings: dict[str, Ranking] = {}
    seconds: dict[str, float] = {}
    base = engine_cls(col, reranker=None, config=EngineConfig(**cfg_kw, score_cache_size=0))
    for fs in first_stages:
        ranking, took = first_stage_ranking(base, ds.queries, fs)
        rankings[fs] = ranking
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
            by_depth, took = reranked_rankings(eng, ds.queries, fs, depths, progress=progress)
            seconds[f"{fs}+{spec}"] = took
            for d, ranking in by_depth.items():
                name = f"{fs}+{_short(spec)}@{d}"
                rankings[name] = ranking
                configs.append(Config(name, fs, spec, d))
        if sample:
            lat_kw = {**cfg_kw, "budget_ms": 1e9}
            lat_eng = engine_cls(
                col,
                reranker=rr,
                config=EngineConfig(**lat_kw, score_cache_size=0, query_cache_size=0),
            )
            ms = depth_latency(lat_eng, [ds.queries[q] for q in sample], first_stages, depths)
            latency[spec] = {fs: {d: _dist(v) for d, v in by.items()} for fs, by in ms.items()}
    per: dict[str, dict[str, dict[str, float]]] = {}
    for c in configs:
        per[c.name] = per_query(ds.qrels, rankings[c.name])
        c.metrics = aggregate(per[c.name])
        for d in depths:  # the recall of the candidates a depth-d rerank sees
            c.metrics.setdefault(f"R@{d}", _recall_at(ds.qrels, rankings[c.name], d))
        if out_dir is not None:
            path = out_dir / "runs" / ds.name / f"{c.name.replace('@', '_at')}.trec"
            write_trec(rankings[c.name], path, f"twostage-{c.name.replace('@', '_at')}")
            c.run_file = str(path.relative_to(out_dir))
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
    )


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
            names = [f"{fs}+{_short(r)}@{d}" for r in rerankers]
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


def _short(spec: str) -> str:
    return Path(spec).name if os.sep in spec else spec


def collection_for(
    ds: Dataset, cache: str | os.PathLike[str] | None = None, *, progress: bool = False
) -> Any:
    """The dataset's collection, built by the ingest pipeline on first use and then reused.

    Cached under ``cache`` (default ``$TWOSTAGE_HOME/eval``) by dataset name and corpus
    identity (path, size, modification time); an interrupted build resumes.
    """
    from twostage import ingest
    from twostage._models import cache_home
    from twostage.collection import Collection

    root = Path(cache) if cache is not None else cache_home() / "eval"
    st = ds.corpus.stat()
    ident = f"{ds.corpus.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    folder = root / f"{ds.name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    ingest.build(ds.corpus, folder, progress=progress)
    return Collection.open(folder, read_only=True)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="q", leave=False)


__all__ = [
    "CANDIDATES",
    "DEFAULT_DEPTHS",
    "MEASURES",
    "Config",
    "Dataset",
    "DatasetResult",
    "Evaluation",
    "Significance",
    "aggregate",
    "as_run",
    "collection_for",
    "depth_latency",
    "evaluate",
    "first_stage_ranking",
    "machine_info",
    "paired_test",
    "per_query",
    "read_qrels",
    "read_trec",
    "reranked_rankings",
    "write_trec",
]
