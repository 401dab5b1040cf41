"""The ``twostage`` command: thin calls into the library. ``twostage --help`` lists commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twostage.config import DEFAULT_BUDGET_MS
from twostage.errors import TwostageError

if TYPE_CHECKING:
    from twostage.engine import SearchResponse

EPILOG_ROOT = """examples:
  twostage index build --corpus corpus.jsonl.gz --out docs/
  twostage search docs/ "does vitamin D prevent fractures"
  twostage index info docs/
  twostage serve docs/ --token-file ~/.ts-token
  twostage eval --data scifact/ --first-stage dense,bm25,hybrid --out eval-out/
  twostage models list
"""


def _fmt(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="twostage",
        description="Two-stage semantic search: HNSW candidates, cross-encoder rerank.",
        epilog=EPILOG_ROOT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="store_true", help="print the version and exit")
    sub = root.add_subparsers(dest="command", metavar="COMMAND")

    # ---- index ----
    index = sub.add_parser(
        "index",
        help="build, update and inspect collections",
        description="Build, update and inspect collections.",
        epilog="example:\n  twostage index build --corpus corpus.jsonl.gz --out docs/",
    )
    _fmt(index)
    isub = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    b = isub.add_parser(
        "build",
        help="embed a corpus file into a new collection (resumable)",
        description=(
            "Embed a corpus file into a new collection folder: streamed, in length-sorted "
            "batches, committed chunk by chunk. Interrupted (Ctrl-C, kill), run the same "
            "command again: it resumes and ends with the same collection."
        ),
        epilog=(
            "examples:\n"
            "  twostage index build --corpus scifact/corpus.jsonl.gz --out scifact-idx/\n"
            "  twostage index build --corpus notes.txt --out notes/\n"
            "  twostage index build --corpus faq.csv --id-field qid --text-field answer "
            "--out faq/ --on-error fail"
        ),
    )
    _fmt(b)
    b.add_argument("--corpus", required=True, help="BEIR JSONL(.gz), text (a doc per line), CSV")
    b.add_argument("--out", required=True, help="the collection folder to create or resume")
    b.add_argument(
        "--encoder",
        default=None,
        help="built-in name or model folder (default minilm-l6). A new encoder means "
        "re-embedding: build into a new folder; an existing one built by another is refused",
    )
    b.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    b.add_argument("--format", default="auto", choices=["auto", "jsonl", "text", "csv"])
    b.add_argument("--id-field", default="_id")
    b.add_argument("--text-field", default="text")
    b.add_argument("--title-field", default="title")
    b.add_argument("--delimiter", default=",", help="CSV delimiter (a .tsv file uses tab)")
    b.add_argument(
        "--on-error",
        default="skip",
        choices=["skip", "fail"],
        help="a malformed line: report and skip it, or stop the build",
    )
    b.add_argument("--dtype", default="f16", choices=["f32", "f16", "i8"], help="index storage")
    b.add_argument(
        "--rescore",
        action="store_true",
        help="with --dtype i8: keep f16 copies in the index file and re-score each search's "
        "candidates with them (recall as f16's in ~0.6x of its memory)",
    )
    b.add_argument("--connectivity", type=int, default=16, help="HNSW M (links per node)")
    b.add_argument("--shards", type=int, default=1)
    b.add_argument("--chunk-size", type=int, default=1024, help="lines per commit")
    b.add_argument("--batch-size", type=int, default=32, help="texts per encoder call")
    b.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (default: a bar per encoded batch on a terminal; elsewhere a line "
        "every 10 s, $TWOSTAGE_PROGRESS_INTERVAL, with docs/s and the time left)",
    )

    a = isub.add_parser(
        "add",
        help="upsert documents from a corpus file (or - for JSONL on stdin)",
        description="Upsert documents into an existing collection: an id that exists is replaced.",
        epilog=(
            "examples:\n  twostage index add docs/ more.jsonl\n"
            '  echo \'{"_id": "n1", "text": "new note"}\' | twostage index add docs/ -'
        ),
    )
    _fmt(a)
    a.add_argument("dir", help="collection folder")
    a.add_argument("corpus", help="corpus file (same formats as build), or - for stdin JSONL")
    a.add_argument("--format", default="auto", choices=["auto", "jsonl", "text", "csv"])
    a.add_argument("--on-error", default="skip", choices=["skip", "fail"])

    d = isub.add_parser(
        "delete",
        help="delete documents by id",
        description="Delete documents by id. An unknown id fails the whole call unless "
        "--missing-ok (then unknown ids are ignored).",
        epilog="example:\n  twostage index delete docs/ 4983 5836",
    )
    _fmt(d)
    d.add_argument("dir")
    d.add_argument("ids", nargs="+")
    d.add_argument("--missing-ok", action="store_true")

    i = isub.add_parser(
        "info",
        help="show a collection's manifest and counts",
        description="Show a collection's manifest, counts and index state.",
        epilog="example:\n  twostage index info docs/ --json",
    )
    _fmt(i)
    i.add_argument("dir")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    c = isub.add_parser(
        "check",
        help="check a collection for damage (the full SQLite integrity_check and more)",
        description="Check a collection: the store's SQLite integrity_check, the index "
        "snapshot's checksum, the snapshot against its store, every stored key in the index, "
        "the BM25 count. Read-only: it runs beside a server. Exit status 1 when a problem is "
        "found (each is printed, naming the file).",
        epilog="example:\n  twostage index check docs/",
    )
    _fmt(c)
    c.add_argument("dir")
    c.add_argument("--quick", action="store_true", help="SQLite quick_check, no full checksum")

    r = isub.add_parser(
        "reembed",
        help="a new collection generation: every document of DIR, embedded by another encoder",
        description=(
            "Re-embed a collection with a new encoder (e.g. one from `python -m twostage.train "
            "encoder`). A new encoder changes every stored vector, so, unlike a reranker swap, "
            "it needs a new collection: --out gets the same documents and index settings, DIR "
            "is only read and keeps serving until you switch. Interrupted: run it again."
        ),
        epilog="example:\n  twostage index reembed docs/ --encoder enc-run/encoder --out docs-v2/",
    )
    _fmt(r)
    r.add_argument("dir", help="the collection to re-embed (read only)")
    r.add_argument("--encoder", required=True, help="built-in name or model folder")
    r.add_argument("--out", required=True, help="the new collection folder")
    r.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    r.add_argument("--batch-size", type=int, default=32, help="texts per encoder call")
    r.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (default: a bar on a terminal, a line every 10 s elsewhere)",
    )

    # ---- search ----
    s = sub.add_parser(
        "search",
        help="ask a collection a question",
        description="Two-stage search: first-stage candidates, reranked within the budget.",
        epilog=(
            "examples:\n"
            '  twostage search docs/ "how is HNSW built"\n'
            '  twostage search docs/ "gzip a file" -k 5 --depth 50 --budget-ms 100 --json\n'
            '  twostage search docs/ "tls" --filter module=ssl --no-rerank'
        ),
    )
    _fmt(s)
    s.add_argument("dir")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=10, help="hits to return")
    s.add_argument(
        "--depth",
        type=int,
        default=None,
        help="candidates the reranker scores (0: none; default: the reranker's measured "
        "default, see `twostage models list`)",
    )
    s.add_argument(
        "--budget-ms", type=float, default=None, help="deadline (default: the reranker's)"
    )
    s.add_argument("--no-rerank", action="store_true")
    s.add_argument(
        "--reranker",
        default=None,
        help="built-in name or model folder (default: the shipped reranker; 'none' for none)",
    )
    s.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata equality (repeatable; KEY=a,b matches either)",
    )
    s.add_argument(
        "--first-stage",
        choices=["dense", "bm25", "hybrid"],
        default=None,
        help="where candidates come from (default: the reranker's, hybrid for the shipped one; "
        "bm25 and hybrid use the lexical index)",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")

    # ---- eval ----
    ev = sub.add_parser(
        "eval",
        help="offline evaluation on BEIR-layout data: metrics, depth curve, significance",
        description=(
            "Evaluate first stages and rerankers on BEIR-layout folders (corpus.jsonl[.gz], "
            "queries.jsonl, qrels/<split>.tsv): NDCG@10, MRR@10, MAP@100, Recall@10/100/1000 "
            "(ir-measures), paired significance tests, TREC run files, and the depth curve "
            "with measured latency, from which the depth this machine affords is read. "
            "The collection searched: --collection DIR, else the --data folder itself when "
            "it holds one, else one built once (ingest pipeline) into the cache "
            "($TWOSTAGE_HOME/eval, --collections) and reused; a collection is used only if "
            "it holds the corpus's ids and the encoder asked for (else it says why)."
        ),
        epilog=(
            "examples:\n"
            "  twostage eval --data scifact/ --out eval-out/\n"
            "  twostage eval --data scifact/ --data cranfield/ --first-stage dense,bm25,hybrid \\\n"
            "      --depths 10,20,50,100,200 --reranker twostage-rerank --out eval-out/\n"
            "  twostage eval --data scifact/ --reranker none --first-stage bm25\n"
            "  twostage eval --data scifact/ --collection scifact-idx/ --out eval-out/\n"
            "  twostage eval --data arguana/ --ignore-self --out eval-out/"
        ),
    )
    _fmt(ev)
    ev.add_argument("--data", action="append", required=True, metavar="DIR", help="repeatable")
    ev.add_argument("--split", default="test", help="qrels split (default test)")
    ev.add_argument("--depths", default="10,20,50,100,200", help="rerank depths, comma-separated")
    ev.add_argument("--first-stage", default="dense", help="comma-separated: dense, bm25, hybrid")
    ev.add_argument(
        "--reranker",
        action="append",
        default=None,
        help="built-in name or model folder, repeatable to compare models (default: the "
        "shipped reranker; 'none': first stages only)",
    )
    ev.add_argument("--fusion", type=float, default=None, help="override score fusion weight")
    ev.add_argument(
        "--budget-ms",
        type=float,
        default=DEFAULT_BUDGET_MS,
        help="for the affordable depth (default: %(default)s, the serving default)",
    )
    ev.add_argument(
        "--latency-queries",
        type=int,
        default=30,
        help="queries timed at each depth (0: no latency measurement)",
    )
    ev.add_argument(
        "--collection",
        action="append",
        default=None,
        metavar="DIR",
        help="the collection to search for the n-th --data (repeatable), instead of "
        "building one: it must hold the corpus's ids and the encoder asked for. A --data "
        "folder that holds a collection (index build --out into it) is used the same way",
    )
    ev.add_argument(
        "--collections",
        default=None,
        metavar="DIR",
        help="where collections built for evaluation are cached (default "
        "$TWOSTAGE_HOME/eval, i.e. ~/.cache/twostage/eval)",
    )
    ev.add_argument(
        "--encoder",
        default=None,
        help="bi-encoder, built-in name or model folder (default: a reused collection's "
        "own, else minilm-l6)",
    )
    ev.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    selfm = ev.add_mutually_exclusive_group()
    selfm.add_argument(
        "--ignore-self",
        dest="ignore_self",
        action="store_const",
        const=True,
        default=None,
        help="drop each query's own document (the one with the query's id) from its "
        "rankings, as BEIR does for ArguAna and Quora. Default: on where the queries are "
        "documents of the corpus (same id and text)",
    )
    selfm.add_argument(
        "--keep-self",
        dest="ignore_self",
        action="store_const",
        const=False,
        help="never drop a query's own document",
    )
    ev.add_argument("--out", default=None, help="report folder: runs/, results.json, report.md")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (default: a bar on a terminal, a line every 10 s elsewhere)",
    )

    # ---- serve ----
    sv = sub.add_parser(
        "serve",
        help="serve a collection over HTTP (search, documents, models, metrics, a page)",
        description=(
            "Serve a collection over HTTP (FastAPI on uvicorn): POST /search, documents, "
            "model updates without downtime, /healthz, /readyz, /metrics, OpenAPI at /docs "
            "and a search page at /. Write and admin endpoints need a bearer token from "
            "$TWOSTAGE_TOKEN or --token-file. Needs the 'server' extra. SIGHUP reloads the "
            "serving reranker from its files."
        ),
        epilog=(
            "examples:\n"
            "  TWOSTAGE_TOKEN=$(cat ~/.ts-token) twostage serve docs/ --model-root ~/models\n"
            "  twostage serve docs/ --token-file /run/secrets/ts --port 9000 --protect-reads\n"
            "  twostage serve docs/ --insecure-no-auth     # a trusted machine, loopback only\n"
            "  twostage serve docs/ --ray local --replicas 2  # the reranker on Ray Serve replicas"
        ),
    )
    _fmt(sv)
    sv.add_argument("dir", help="collection folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--token-file", default=None, help="file holding the bearer token")
    sv.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve write and admin endpoints without a token (loopback only)",
    )
    sv.add_argument(
        "--protect-reads",
        action="store_true",
        help="search, documents and metrics need the token too",
    )
    sv.add_argument(
        "--model-root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder that model updates may load from (repeatable)",
    )
    sv.add_argument(
        "--reranker",
        default=None,
        help="reranker at start: built-in name or folder (default: the shipped one; 'none')",
    )
    sv.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    sv.add_argument("--no-batching", action="store_true", help="no cross-request batching")
    sv.add_argument("--batch-max-pairs", type=int, default=16, help="pairs per reranker run")
    sv.add_argument("--batch-wait-ms", type=float, default=2.0, help="wait for more requests")
    sv.add_argument("--batch-workers", type=int, default=2, help="threads running batches")
    sv.add_argument("--workers", type=int, default=4, help="search threads")
    sv.add_argument("--depth", type=int, default=None, help="default rerank depth")
    sv.add_argument("--budget-ms", type=float, default=None, help="default search deadline")
    sv.add_argument(
        "--first-stage",
        choices=["dense", "bm25", "hybrid"],
        default=None,
        help="default first stage (a request's first_stage overrides it)",
    )
    sv.add_argument(
        "--experiments-db",
        default=None,
        help="SQLite file for interleaving experiments (default DIR/experiments.sqlite)",
    )
    sv.add_argument(
        "--feedback-grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a stopped experiment still takes clicks for its impressions",
    )
    sv.add_argument(
        "--read-only",
        action="store_true",
        help="serve beside the process that writes DIR: no writes here (409), searches follow "
        "its commits",
    )
    sv.add_argument(
        "--max-pending-searches",
        type=int,
        default=None,
        help="searches waiting or running before 503 overloaded (default: workers x 4)",
    )
    sv.add_argument(
        "--max-pending-writes",
        type=int,
        default=None,
        help="writes waiting or running before 503 (default 8)",
    )
    sv.add_argument(
        "--max-anonymous-depth",
        type=int,
        default=None,
        help="most depth without the token (default: max(100, 2 x the default depth))",
    )
    sv.add_argument(
        "--max-anonymous-budget-ms",
        type=float,
        default=None,
        help="most budget_ms without the token (default 1000)",
    )
    sv.add_argument(
        "--max-model-bytes",
        type=int,
        default=None,
        help="largest model file a swap may load (default 2 GiB)",
    )
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20)
    sv.add_argument("--max-batch-docs", type=int, default=256)
    sv.add_argument("--validation-set", default=None, help="JSONL set for model updates")
    sv.add_argument("--ndcg-floor", type=float, default=None, help="refuse models below it")
    sv.add_argument(
        "--no-sanity-check",
        action="store_true",
        help="skip the check that a reranker ranks the shipped sanity set better than chance "
        '(at start and on every swap; one request can waive it with "sanity_check": false)',
    )
    sv.add_argument("--watch-models", action="store_true", help="reload on model file changes")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sv.add_argument("--access-log", action="store_true", help="log every request")
    sv.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="serve on a Ray cluster (the 'ray' extra): the same HTTP API from an ingress "
        "deployment, the reranker on Serve replicas; ADDRESS: ray://host:10001, host:6379, "
        "'auto' (this machine's cluster) or 'local' (start one here)",
    )
    sv.add_argument(
        "--replicas",
        default="1",
        metavar="N|MIN-MAX",
        help="with --ray: reranker replicas, a count or an autoscaled range (default 1)",
    )
    sv.add_argument(
        "--replica-cpus",
        type=float,
        default=1.0,
        help="with --ray: CPUs each reranker replica reserves and scores on (default 1)",
    )

    # ---- models ----
    m = sub.add_parser(
        "models",
        help="list and build the models",
        description="List built-in and cached models; build (export + quantise) one ahead.",
        epilog="examples:\n  twostage models list\n  twostage models build minilm-l6",
    )
    _fmt(m)
    msub = m.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    ml = msub.add_parser("list", help="built-in models and the local cache")
    ml.epilog = "example:\n  twostage models list --json"
    _fmt(ml)
    ml.add_argument("--json", action="store_true")
    mb = msub.add_parser("build", help="export and quantise a model into the cache")
    mb.epilog = "example:\n  twostage models build minilm-l6 --precision fp32"
    _fmt(mb)
    mb.add_argument("spec", help="built-in name or model folder")
    mb.add_argument("--kind", choices=["encoder", "reranker"], default=None)
    mb.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    return root


# ---- commands ---------------------------------------------------------------------------------


def _index_build(args: argparse.Namespace) -> int:
    from twostage.encoder import Encoder
    from twostage.ingest import build

    out = Path(args.out)
    encoder = None
    if args.encoder is not None or not (out / "manifest.json").exists():
        # Given for an existing collection, it is checked against the one that built it
        # (Collection.open refuses another fingerprint) instead of being ignored.
        encoder = Encoder.load(args.encoder or "minilm-l6", precision=args.precision)
    try:
        report = build(
            args.corpus,
            out,
            encoder=encoder,
            format=args.format,
            id_field=args.id_field,
            text_field=args.text_field,
            title_field=args.title_field,
            delimiter=args.delimiter,
            on_error=args.on_error,
            chunk_size=args.chunk_size,
            batch_size=args.batch_size,
            dtype=args.dtype,
            shards=args.shards,
            connectivity=args.connectivity,
            rescore=args.rescore,
            progress=False if args.no_progress else None,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: what was committed is kept; run the same command to resume into {out}",
            file=sys.stderr,
        )
        return 130
    print(report)
    return 0


def _index_add(args: argparse.Namespace) -> int:
    from twostage.collection import Collection
    from twostage.sources import read_corpus

    col = Collection.open(args.dir)
    inserted = updated = errors = 0
    batch: list[Any] = []
    t0 = time.perf_counter()
    try:
        source = args.corpus
        if source == "-":  # one parser for every input: spool stdin to a file
            import tempfile

            spool = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
            with spool:
                spool.write(sys.stdin.read())
            source = spool.name
        for rec in read_corpus(source, format=args.format):
            if rec.doc is None:
                if args.on_error == "fail":
                    print(f"line {rec.line}: {rec.error}; nothing after it added", file=sys.stderr)
                    return 1
                print(f"line {rec.line}: {rec.error} (skipped)", file=sys.stderr)
                errors += 1
                continue
            batch.append(rec.doc)
            if len(batch) >= 512:
                r = col.add(batch)
                inserted, updated, batch = inserted + r.inserted, updated + r.updated, []
        if batch:
            r = col.add(batch)
            inserted, updated = inserted + r.inserted, updated + r.updated
        total = len(col)
    finally:
        col.close()
        if args.corpus == "-":
            Path(source).unlink(missing_ok=True)
    took = time.perf_counter() - t0
    print(
        f"{args.dir}: {inserted} added, {updated} replaced, {errors} malformed lines skipped "
        f"in {took:.1f} s; {total} documents"
    )
    return 0


def _index_delete(args: argparse.Namespace) -> int:
    from twostage.collection import Collection

    with Collection.open(args.dir) as col:
        n = col.delete(args.ids, missing_ok=args.missing_ok)
        print(f"{args.dir}: deleted {n}; {len(col)} documents")
    return 0


def _index_reembed(args: argparse.Namespace) -> int:
    from twostage.encoder import Encoder
    from twostage.ingest import reembed

    encoder = Encoder.load(args.encoder, precision=args.precision)
    try:
        report = reembed(
            args.dir,
            args.out,
            encoder,
            batch_size=args.batch_size,
            progress=False if args.no_progress else None,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command to resume into {args.out}", file=sys.stderr)
        return 130
    print(report)
    return 0


def _index_check(args: argparse.Namespace) -> int:
    from twostage.collection import Collection

    t0 = time.perf_counter()
    with Collection.open(args.dir, read_only=True) as col:
        problems = col.check(full=not args.quick)
        n = len(col)
    took = time.perf_counter() - t0
    for p in problems:
        print(f"twostage: {args.dir}: {p}", file=sys.stderr)
    if problems:
        return 1
    what = "quick" if args.quick else "full"
    print(f"{args.dir}: ok ({n:,} documents, {what} check in {took:.1f} s)")
    return 0


def _index_info(args: argparse.Namespace) -> int:
    from twostage.collection import Collection

    with Collection.open(args.dir, read_only=True) as col:
        info = col.info()
        if col.recovery:
            info["recovery"] = col.recovery
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    enc = info["encoder"]
    rows = [
        ("path", info["path"]),
        ("documents", f"{info['documents']:,} (indexed {info['indexed']:,})"),
        ("encoder", f"{enc['name']} {enc['precision']} (fingerprint {enc['fingerprint']})"),
        (
            "index",
            f"{info['metric']} {info['dtype']}"
            + (" + f16 re-scoring" if info.get("rescore") else "")
            + f" dim={info['dim']} shards={info['shards']}",
        ),
        (
            "hnsw",
            f"M={info['connectivity']} efC={info['ef_construction']} ef="
            + (
                str(info["ef_search"])
                if info["ef_search"]
                else f"follows size ({info['search_ef_k100']} for k=100)"
            ),
        ),
        (
            "memory",
            f"{info['index_memory_bytes'] / 2**20:,.1f} MiB ({info['hardware_acceleration']})",
        ),
        (
            "lexical",
            "none (created with lexical=False)"
            if info["lexical_indexed"] is None
            else f"BM25, tantivy {info['lexical']['analyzer']}: {info['lexical_indexed']:,} docs",
        ),
        ("changes", f"seq {info['seq']} (index snapshot at {info['index']['seq']})"),
        ("updated", info["updated"]),
    ]
    if "recovery" in info:
        rows.append(("recovery", info["recovery"]))
    for key, value in rows:
        print(f"{key:>10}  {value}")
    return 0


def _parse_filter(items: Sequence[str]) -> dict[str, Any] | None:
    from twostage.errors import InvalidArgument

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--filter takes KEY=VALUE, not {item!r}")
        values = value.split(",")
        out[key] = values if len(values) > 1 else value
    return out or None


def render(resp: SearchResponse) -> str:
    """A search response as a readable table with per-stage timings."""
    lines = [f"query: {resp.query}"]
    t = resp.timings
    how = (
        f"reranked by {resp.reranker_version} ({resp.scored} of {resp.candidates} candidates)"
        if resp.reranker_version
        else "first stage only" + (f" ({'; '.join(resp.notes)})" if resp.notes else "")
    )
    lines.append(how + (f"  DEGRADED: {resp.degraded_reason}" if resp.degraded else ""))
    lines.append(f"{'#':>3}  {'score':>7}  {'model':>7}  {'1st':>4}  {'id':<22} title / snippet")
    for n, h in enumerate(resp.hits, start=1):
        mark = "*" if h.reranked else " "
        title = h.title or h.snippet[:60]
        model = "-" if h.reranker_score is None else f"{h.reranker_score:.3f}"
        lines.append(
            f"{n:>3}  {h.score:>7.3f}{mark} {model:>7}  {h.first_stage_rank:>4}  "
            f"{h.id[:22]:<22} {title[:60]}"
        )
    lines.append(
        f"timings (ms): encode {t.encode:.1f}  ann {t.ann:.1f}  bm25 {t.bm25:.1f}  "
        f"fetch {t.fetch:.1f}  rerank {t.rerank:.1f}  total {t.total:.1f}  "
        f"({resp.first_stage} first stage)"
    )
    lines.append(
        "score = the final score (* reranked: the cross-encoder fused with the first-stage "
        "signals; else the first stage's); model = the cross-encoder's own output; "
        "1st = first-stage rank"
    )
    return "\n".join(lines)


def _search(args: argparse.Namespace) -> int:
    from twostage.collection import Collection
    from twostage.config import default_reranker
    from twostage.engine import Engine
    from twostage.reranker import Reranker

    t0 = time.perf_counter()
    col = Collection.open(args.dir, read_only=True)
    spec = args.reranker if args.reranker is not None else default_reranker()
    reranker = None
    if spec and spec != "none" and not args.no_rerank and args.depth != 0:
        reranker = Reranker.load(spec)
    engine = Engine(col, reranker=reranker)  # its defaults: the reranker's, as everywhere
    load_s = time.perf_counter() - t0
    try:
        resp = engine.search(
            args.query,
            k=args.k,
            depth=args.depth,
            budget_ms=args.budget_ms,
            rerank=not args.no_rerank,
            filter=_parse_filter(args.filter),
            first_stage=args.first_stage,
        )
    finally:
        col.close()
    if args.json:
        print(json.dumps(resp.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(render(resp))
    print(f"(models and collection loaded in {load_s:.1f} s)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import shlex

    from twostage.config import default_reranker
    from twostage.errors import InvalidArgument
    from twostage.evaluation import evaluate

    try:
        depths = [int(x) for x in args.depths.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgument(
            f"--depths must be comma-separated integers, not {args.depths!r}"
        ) from None
    stages = [x.strip() for x in args.first_stage.split(",") if x.strip()]
    given: list[str | None] = args.reranker if args.reranker is not None else [default_reranker()]
    specs = [r for r in given if r and r != "none"]
    ev = evaluate(
        args.data,
        split=args.split,
        depths=depths,
        first_stages=stages,
        rerankers=specs,
        fusion_weight=args.fusion,
        budget_ms=args.budget_ms,
        latency_queries=args.latency_queries if specs else 0,
        collections=args.collections,
        collection=args.collection,
        encoder=args.encoder,
        precision=args.precision,
        ignore_self=args.ignore_self,
        out=args.out,
        seed=args.seed,
        progress=False if args.no_progress else None,
        notes=lambda msg: print(msg, file=sys.stderr, flush=True),
        command="twostage eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if sys.argv[1:2] == ["eval"]
        else "",
    )
    for ds in ev.datasets:
        print(f"{ds.name} ({ds.split}, {ds.queries} queries, {ds.documents} documents)")
        for c in ds.configs:
            m = c.metrics
            print(
                f"  {c.name:<32} NDCG@10 {m['nDCG@10']:.4f}  MRR@10 {m['RR@10']:.4f}  "
                f"R@100 {m['R@100']:.4f}  R@1000 {m['R@1000']:.4f}"
            )
        for rr in specs:
            for fs in stages:
                if ds.latency.get(rr):
                    print(
                        f"  {fs}+{rr}: deepest depth within {args.budget_ms:.0f} ms p99: "
                        f"{ds.affordable_text(rr, fs)}"
                    )
    if args.out:
        print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from twostage._models import BUILTINS, cache_home

    rows = []
    for name, b in sorted(BUILTINS.items()):
        try:
            where = str(b.source())
        except Exception as e:  # the package that carries it is not installed
            where = f"unavailable: {e}"
        rows.append({"name": name, "kind": b.kind, "source": where})
    cached = sorted(p.name for p in (cache_home() / "models").glob("*") if p.is_dir())
    if args.json:
        print(json.dumps({"builtin": rows, "cache": str(cache_home()), "cached": cached}, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<18} {r['kind']:<9} {r['source']}")
    print(f"cache: {cache_home()} ({len(cached)} built: {', '.join(cached) or 'none'})")
    return 0


def _models_build(args: argparse.Namespace) -> int:
    from twostage._models import BUILTINS

    kind = args.kind or (BUILTINS[args.spec].kind if args.spec in BUILTINS else "encoder")
    t0 = time.perf_counter()
    model: Any
    if kind == "encoder":
        from twostage.encoder import Encoder

        model = Encoder.load(args.spec, precision=args.precision)
    else:
        from twostage.reranker import Reranker

        model = Reranker.load(args.spec, precision=args.precision)
    print(f"{model!r} ready in {time.perf_counter() - t0:.1f} s")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from twostage.server import ServerSettings, create_app, read_token
    except ImportError as e:
        print(
            f"twostage: error: serve needs the server extra ({e.name} is missing): "
            "pip install 'twostage-search[server]'",
            file=sys.stderr,
        )
        return 1
    from twostage.config import EngineConfig

    overrides: dict[str, Any] = {}
    if args.depth is not None:
        overrides["depth"] = args.depth
    if args.budget_ms is not None:
        overrides["budget_ms"] = args.budget_ms
    if args.first_stage is not None:
        overrides["first_stage"] = args.first_stage
    token = None if args.insecure_no_auth else read_token(args.token_file)
    # Given flags only: the rest keep the settings' defaults (and TWOSTAGE_* variables).
    limits = {
        name: getattr(args, name)
        for name in (
            "max_pending_searches",
            "max_pending_writes",
            "max_anonymous_depth",
            "max_anonymous_budget_ms",
            "max_model_bytes",
        )
        if getattr(args, name) is not None
    }
    settings = ServerSettings(
        collection=Path(args.dir),
        read_only=args.read_only,
        host=args.host,
        port=args.port,
        token=token,
        insecure_no_auth=args.insecure_no_auth,
        protect_reads=args.protect_reads,
        model_roots=tuple(Path(p) for p in args.model_root),
        reranker=args.reranker,
        reranker_precision=args.precision,
        engine=EngineConfig(**overrides),
        batching=not args.no_batching,
        batch_max_pairs=args.batch_max_pairs,
        batch_wait_ms=args.batch_wait_ms,
        batch_workers=args.batch_workers,
        workers=args.workers,
        max_body_bytes=args.max_body_bytes,
        max_batch_docs=args.max_batch_docs,
        validation_set=Path(args.validation_set) if args.validation_set else None,
        ndcg_floor=args.ndcg_floor,
        sanity_check=not args.no_sanity_check,
        watch_models=args.watch_models,
        experiments_db=Path(args.experiments_db) if args.experiments_db else None,
        feedback_grace_s=args.feedback_grace,
        **limits,
    )
    if not (Path(args.dir) / "manifest.json").is_file():
        print(
            f"twostage: error: {args.dir} holds no collection (no manifest.json)", file=sys.stderr
        )
        return 1
    if not args.read_only:
        from twostage.lock import WriterLock

        # Say it before loading models and binding the port (the app takes it for real).
        WriterLock.acquire(Path(args.dir)).release()
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.ray is not None:
        return _serve_ray(args, settings)
    app = create_app(settings)

    def no_refusal_traceback(record: logging.LogRecord) -> bool:
        # A refused start (a model failing validation, a locked collection) is said once,
        # below, in a line; uvicorn would log the whole traceback of it.
        return not (
            getattr(app.state, "startup_error", None) and str(record.msg).startswith("Traceback")
        )

    logging.getLogger("uvicorn.error").addFilter(no_refusal_traceback)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_graceful_shutdown=10,
        )
    except SystemExit:
        refused = getattr(app.state, "startup_error", None)
        if refused is None:
            raise
        print(f"twostage: error: {refused}", file=sys.stderr)
        return 1
    return 0


def _serve_ray(args: argparse.Namespace, settings: Any) -> int:
    """``serve --ray``: the same app as an ingress deployment, the reranker on replicas."""
    try:
        from twostage.distributed.ingress import IngressOptions, run, scaling_from
    except ImportError as e:
        print(
            f"twostage: error: serve --ray needs the ray extra ({e.name} is missing): "
            "pip install 'twostage-search[ray,server]'",
            file=sys.stderr,
        )
        return 1
    scaling = scaling_from(args.replicas, replica_cpus=args.replica_cpus)
    return run(settings, IngressOptions(scaling=scaling), address=args.ray)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twostage`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from twostage import __version__

        print(f"twostage {__version__}")
        return 0
    handlers = {
        ("index", "build"): _index_build,
        ("index", "add"): _index_add,
        ("index", "delete"): _index_delete,
        ("index", "info"): _index_info,
        ("index", "check"): _index_check,
        ("index", "reembed"): _index_reembed,
        ("models", "list"): _models_list,
        ("models", "build"): _models_build,
    }
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "search":
        handler = _search
    elif args.command == "serve":
        handler = _serve
    elif args.command == "eval":
        handler = _eval
    else:
        sub = str(getattr(args, f"{args.command}_command", ""))
        handler = handlers[(args.command, sub)]
    try:
        return handler(args)
    except (TwostageError, FileNotFoundError, FileExistsError) as e:
        print(f"twostage: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `twostage search ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
